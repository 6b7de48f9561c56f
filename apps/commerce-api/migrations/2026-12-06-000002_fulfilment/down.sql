DROP TRIGGER partner_orders_status_changed ON partner_orders;
DROP FUNCTION notify_partner_order_status();
DROP INDEX partner_orders_confirm_due_idx;
ALTER TABLE partner_orders DROP COLUMN confirm_due_at;
DROP TABLE shipments;
