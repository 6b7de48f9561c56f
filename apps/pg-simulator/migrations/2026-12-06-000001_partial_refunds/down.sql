-- Only for a database without partial refunds: the UNIQUE below refuses a payment refunded in
-- parts.
ALTER TABLE payments DROP CONSTRAINT payments_refunded_amount_check;
ALTER TABLE payments DROP COLUMN refunded_amount;
DROP INDEX refunds_transaction_idx;
ALTER TABLE refunds ADD CONSTRAINT refunds_transaction_key_key UNIQUE (transaction_key);
