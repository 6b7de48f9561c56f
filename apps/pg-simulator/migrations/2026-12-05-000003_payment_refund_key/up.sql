-- A refunded payment names its refund, so that a merchant looking the payment up learns which
-- refund gave the money back (also one the gateway made itself).
ALTER TABLE payments ADD COLUMN refund_key TEXT;
UPDATE payments p SET refund_key = r.refund_key FROM refunds r WHERE r.transaction_key = p.transaction_key;
