-- A restock is news only for a product on sale: a drop stocked before its window opens is told
-- by its pre-sale alert instead. And while a restock of a product is still being fanned out,
-- another (stock that flickers through a cancellation and a sale) adds no occasion: its
-- subscribers are being told already.
CREATE OR REPLACE FUNCTION wishlist_restock_occasion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM wishlist_items WHERE product_id = NEW.id)
       AND NOT EXISTS (SELECT 1 FROM wishlist_occasions
                        WHERE product_id = NEW.id AND kind = 'RESTOCK' AND fanned_out_at IS NULL)
    THEN
        INSERT INTO wishlist_occasions (product_id, kind, units) VALUES (NEW.id, 'RESTOCK', NEW.stock);
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER products_restocked ON products;
CREATE TRIGGER products_restocked AFTER UPDATE OF stock ON products
    FOR EACH ROW WHEN (OLD.stock = 0 AND NEW.stock > 0
                       AND (NEW.sale_starts_at IS NULL OR NEW.sale_starts_at <= now()))
    EXECUTE FUNCTION wishlist_restock_occasion();
