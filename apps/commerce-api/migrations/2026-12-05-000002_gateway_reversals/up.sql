-- Refunds and chargebacks the gateway makes itself. The API learns of them by the gateway's
-- signed webhook or by looking recently paid payments up again (an audit), and records each as
-- a confirmed refund (cause REFUNDED_AT_GATEWAY), so every refund at the gateway has its row
-- here, and the payment history says when the API learned of it.
ALTER TABLE refunds DROP CONSTRAINT refunds_cause_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_cause_check
    CHECK (cause IN ('ORDER_CANCELLED', 'CHARGED_AFTER_CLOSE', 'DUPLICATE_CHARGE',
                     'REFUNDED_AT_GATEWAY'));

ALTER TABLE payment_events DROP CONSTRAINT payment_events_kind_check;
ALTER TABLE payment_events ADD CONSTRAINT payment_events_kind_check CHECK (kind IN (
    'REQUESTED', 'ACCEPTED', 'GATEWAY_UNAVAILABLE', 'PAID', 'FAILED',
    'CANCELLED', 'CHARGED_AFTER_CLOSE', 'DUPLICATE_CHARGE',
    'REFUND_REQUESTED', 'REFUND_REFUSED', 'REFUND_CONFIRMED',
    'RETRY_REQUESTED', 'RECORDED', 'REVERSED_AT_GATEWAY'));

-- The audit: a paid payment is looked up at the gateway again every so often while it is
-- recent (next_check_at; 'infinity' once it is not). Payments paid in the last three days start
-- being audited, spread over the next hour; older ones are not.
UPDATE payments
   SET next_check_at = CASE
         WHEN settled_at > now() - interval '3 days'
         THEN now() + random() * interval '1 hour'
         ELSE 'infinity' END
 WHERE status = 'SUCCESS';
CREATE INDEX payments_audit_idx ON payments (next_check_at) WHERE status = 'SUCCESS';
