-- Partial refunds: cancelling or returning one partner order of a checkout gives back exactly
-- that partner order's paid share. Its card share is a refund of its own (granted here, with
-- the partner order it is for; executed through the gateway by the refund worker, as any
-- refund), so a gateway transaction may now carry one refund per partner order besides the one
-- refund of the whole checkout.
ALTER TABLE refunds ADD COLUMN partner_order_id BIGINT REFERENCES partner_orders (id);
ALTER TABLE refunds DROP CONSTRAINT refunds_cause_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_cause_check
    CHECK (cause IN ('ORDER_CANCELLED', 'CHARGED_AFTER_CLOSE', 'DUPLICATE_CHARGE',
                     'REFUNDED_AT_GATEWAY', 'PARTNER_ORDER_CANCELLED', 'PARTNER_ORDER_RETURNED'));
ALTER TABLE refunds ADD CONSTRAINT refunds_partner_order_check
    CHECK ((cause IN ('PARTNER_ORDER_CANCELLED', 'PARTNER_ORDER_RETURNED')) = (partner_order_id IS NOT NULL));
ALTER TABLE refunds DROP CONSTRAINT refunds_transaction_key_key;
CREATE UNIQUE INDEX refunds_transaction_once ON refunds (transaction_key) WHERE partner_order_id IS NULL;
CREATE UNIQUE INDEX refunds_partner_order_once ON refunds (partner_order_id) WHERE partner_order_id IS NOT NULL;
