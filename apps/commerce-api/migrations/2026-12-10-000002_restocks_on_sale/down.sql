CREATE OR REPLACE FUNCTION wishlist_restock_occasion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM wishlist_items WHERE product_id = NEW.id) THEN
        INSERT INTO wishlist_occasions (product_id, kind, units) VALUES (NEW.id, 'RESTOCK', NEW.stock);
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER products_restocked ON products;
CREATE TRIGGER products_restocked AFTER UPDATE OF stock ON products
    FOR EACH ROW WHEN (OLD.stock = 0 AND NEW.stock > 0)
    EXECUTE FUNCTION wishlist_restock_occasion();
