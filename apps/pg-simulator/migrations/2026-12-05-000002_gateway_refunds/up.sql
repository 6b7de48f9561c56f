-- Refunds and chargebacks the gateway makes itself (from its console: a customer's dispute, an
-- operator's decision), besides those the merchant asks for. The merchant learns of them by a
-- signed webhook to the payment's callback URL.
ALTER TABLE refunds ADD COLUMN initiated_by TEXT NOT NULL DEFAULT 'MERCHANT'
    CHECK (initiated_by IN ('MERCHANT', 'GATEWAY'));
ALTER TABLE refunds ADD COLUMN kind TEXT NOT NULL DEFAULT 'REFUND'
    CHECK (kind IN ('REFUND', 'CHARGEBACK'));
