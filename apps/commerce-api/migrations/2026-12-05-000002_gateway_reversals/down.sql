-- Only for a database that never recorded a reversal: the CHECKs below refuse otherwise.
DROP INDEX payments_audit_idx;
ALTER TABLE payment_events DROP CONSTRAINT payment_events_kind_check;
ALTER TABLE payment_events ADD CONSTRAINT payment_events_kind_check CHECK (kind IN (
    'REQUESTED', 'ACCEPTED', 'GATEWAY_UNAVAILABLE', 'PAID', 'FAILED',
    'CANCELLED', 'CHARGED_AFTER_CLOSE', 'DUPLICATE_CHARGE',
    'REFUND_REQUESTED', 'REFUND_REFUSED', 'REFUND_CONFIRMED',
    'RETRY_REQUESTED', 'RECORDED'));
ALTER TABLE refunds DROP CONSTRAINT refunds_cause_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_cause_check
    CHECK (cause IN ('ORDER_CANCELLED', 'CHARGED_AFTER_CLOSE', 'DUPLICATE_CHARGE'));
