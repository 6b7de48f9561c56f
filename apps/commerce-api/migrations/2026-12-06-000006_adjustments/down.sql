-- Only for a database without adjustments: the CHECKs below refuse otherwise.
ALTER TABLE refunds DROP CONSTRAINT refunds_partner_order_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_partner_order_check
    CHECK ((cause IN ('PARTNER_ORDER_CANCELLED', 'PARTNER_ORDER_RETURNED')) = (partner_order_id IS NOT NULL));
ALTER TABLE refunds DROP CONSTRAINT refunds_cause_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_cause_check
    CHECK (cause IN ('ORDER_CANCELLED', 'CHARGED_AFTER_CLOSE', 'DUPLICATE_CHARGE',
                     'REFUNDED_AT_GATEWAY', 'PARTNER_ORDER_CANCELLED', 'PARTNER_ORDER_RETURNED'));
