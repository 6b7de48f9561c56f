-- Tell every API instance when a product row changes (stock taken or given back, an edit, a
-- like), so each evicts its cached detail. NOTIFY is delivered at commit, and only then.
CREATE FUNCTION notify_product_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('product_changed', NEW.id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER products_changed
    AFTER UPDATE ON products
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION notify_product_changed();
