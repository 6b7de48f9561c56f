-- Back to flags: duplicate charges return to refund_keys, and refunded orders and payments to
-- the states that flagged them (CANCELLED, REFUND_REQUIRED). Confirmed refunds lose only their
-- gateway refund key, which the gateway keeps.
ALTER TABLE payments ADD COLUMN refund_keys TEXT[] NOT NULL DEFAULT '{}';
UPDATE payments p SET refund_keys = d.keys
  FROM (SELECT payment_id, array_agg(transaction_key ORDER BY id) AS keys
          FROM refunds WHERE cause = 'DUPLICATE_CHARGE' GROUP BY payment_id) d
 WHERE d.payment_id = p.id;
DROP TABLE refunds;
UPDATE payments SET status = 'REFUND_REQUIRED' WHERE status = 'REFUNDED';
UPDATE orders SET status = 'CANCELLED' WHERE status = 'REFUNDED';
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PENDING', 'SUCCESS', 'FAILED', 'CANCELLED', 'REFUND_REQUIRED'));
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'CANCELLED'));
