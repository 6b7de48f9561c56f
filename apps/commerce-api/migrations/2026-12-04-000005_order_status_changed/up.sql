-- Tell every API instance when an order's status changes, so order-status streams (SSE) on any
-- instance see it, whichever instance or background worker settled it. Delivered at commit.
CREATE FUNCTION notify_order_status() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('order_status', NEW.id::text || ':' || NEW.status);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER orders_status_changed
    AFTER UPDATE OF status ON orders
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION notify_order_status();
