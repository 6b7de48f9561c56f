-- Only for a database without partial refunds: the UNIQUE below refuses otherwise.
DROP INDEX refunds_partner_order_once;
DROP INDEX refunds_transaction_once;
ALTER TABLE refunds ADD CONSTRAINT refunds_transaction_key_key UNIQUE (transaction_key);
ALTER TABLE refunds DROP CONSTRAINT refunds_partner_order_check;
ALTER TABLE refunds DROP CONSTRAINT refunds_cause_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_cause_check
    CHECK (cause IN ('ORDER_CANCELLED', 'CHARGED_AFTER_CLOSE', 'DUPLICATE_CHARGE',
                     'REFUNDED_AT_GATEWAY'));
ALTER TABLE refunds DROP COLUMN partner_order_id;
