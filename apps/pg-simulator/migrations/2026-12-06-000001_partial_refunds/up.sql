-- Partial refunds: a successful payment is refunded in parts, each up to what is left of it,
-- until its whole amount is back. The payment counts what went back (`refunded_amount`) and
-- shows REFUNDED only once all of it did. A chargeback or a console refund takes back what is
-- left.
ALTER TABLE refunds DROP CONSTRAINT refunds_transaction_key_key;
CREATE INDEX refunds_transaction_idx ON refunds (transaction_key);
ALTER TABLE payments ADD COLUMN refunded_amount BIGINT NOT NULL DEFAULT 0;
UPDATE payments SET refunded_amount = amount WHERE status = 'REFUNDED';
ALTER TABLE payments ADD CONSTRAINT payments_refunded_amount_check
    CHECK (refunded_amount BETWEEN 0 AND amount AND (status = 'REFUNDED') = (refunded_amount = amount));
