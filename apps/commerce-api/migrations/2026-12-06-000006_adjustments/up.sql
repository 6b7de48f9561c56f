-- An administrator's adjustment of a purchase-confirmed partner order (a claim settled after
-- confirmation): part of its card share goes back (cause PARTNER_ORDER_ADJUSTED, once per
-- partner order, like every partner order's own refund) and the points it earned are taken back
-- (EARN_REVERSED).
ALTER TABLE refunds DROP CONSTRAINT refunds_cause_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_cause_check
    CHECK (cause IN ('ORDER_CANCELLED', 'CHARGED_AFTER_CLOSE', 'DUPLICATE_CHARGE',
                     'REFUNDED_AT_GATEWAY', 'PARTNER_ORDER_CANCELLED', 'PARTNER_ORDER_RETURNED',
                     'PARTNER_ORDER_ADJUSTED'));
ALTER TABLE refunds DROP CONSTRAINT refunds_partner_order_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_partner_order_check
    CHECK ((cause IN ('PARTNER_ORDER_CANCELLED', 'PARTNER_ORDER_RETURNED', 'PARTNER_ORDER_ADJUSTED'))
           = (partner_order_id IS NOT NULL));
