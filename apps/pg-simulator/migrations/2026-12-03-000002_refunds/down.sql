-- Refunded payments go back to SUCCESS (what they were before the refund existed as a state).
DROP TABLE refunds;
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
UPDATE payments SET status = 'SUCCESS' WHERE status = 'REFUNDED';
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PENDING', 'SUCCESS', 'FAILED'));
