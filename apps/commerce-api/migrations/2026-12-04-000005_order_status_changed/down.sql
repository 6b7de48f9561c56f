DROP TRIGGER orders_status_changed ON orders;
DROP FUNCTION notify_order_status();
