-- An order's life after payment, per partner order: PAID → PREPARING → SHIPPED → DELIVERED →
-- PURCHASE_CONFIRMED (see commerce-api's domain::fulfilment for every transition).
--
-- A shipment is one per partner order: the carrier and tracking number the partner gave, when it
-- shipped, when it was delivered (by the partner's word, or automatically `deliver_due_at`), and
-- who said so. A delivered partner order is confirmed automatically at `confirm_due_at` (N days
-- after delivery, or a backstop after shipping, whichever is first) unless the customer
-- confirmed first; the timer is cleared while a return is open.
CREATE TABLE shipments (
    partner_order_id  BIGINT      PRIMARY KEY REFERENCES partner_orders (id),
    carrier           TEXT        NOT NULL CHECK (length(carrier) BETWEEN 1 AND 50),
    tracking_number   TEXT        NOT NULL CHECK (length(tracking_number) BETWEEN 1 AND 50),
    shipped_at        TIMESTAMPTZ NOT NULL,
    deliver_due_at    TIMESTAMPTZ NOT NULL,
    delivered_at      TIMESTAMPTZ,
    delivered_by      TEXT        CHECK (delivered_by IN ('PARTNER', 'CUSTOMER', 'AUTOMATIC')),
    CHECK ((delivered_at IS NULL) = (delivered_by IS NULL))
);
-- The automatic delivery's work list: shipped, not delivered, due first.
CREATE INDEX shipments_deliver_due_idx ON shipments (deliver_due_at) WHERE delivered_at IS NULL;

ALTER TABLE partner_orders ADD COLUMN confirm_due_at TIMESTAMPTZ;
-- The automatic confirmation's work list: delivered, due first.
CREATE INDEX partner_orders_confirm_due_idx ON partner_orders (confirm_due_at)
    WHERE status = 'DELIVERED';

-- Tell every API instance when a partner order's status changes (`<order>:<partner order>:
-- <status>`), at commit, as orders' own changes are told on `order_status`.
CREATE FUNCTION notify_partner_order_status() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('partner_order_status',
                      NEW.order_id::text || ':' || NEW.id::text || ':' || NEW.status);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER partner_orders_status_changed
    AFTER UPDATE OF status ON partner_orders
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION notify_partner_order_status();
