-- Points are bought, not handed out. A top-up is an order of kind POINT_TOP_UP paid by card
-- through the gateway: the same payment, callback, reconciliation and refund path as any card
-- order. Its points are credited when the gateway confirms the charge (ledger TOP_UP) and taken
-- back when the top-up is cancelled or refunded (TOP_UP_REVERSED). The only other credit is an
-- administrator's grant (GRANT), which names who granted it and why. CHARGE rows are the
-- charges made before points were bought; they stay as they were.
ALTER TABLE orders ADD COLUMN kind TEXT NOT NULL DEFAULT 'GOODS'
    CHECK (kind IN ('GOODS', 'POINT_TOP_UP'));

ALTER TABLE point_ledger DROP CONSTRAINT point_ledger_kind_check;
ALTER TABLE point_ledger ADD CONSTRAINT point_ledger_kind_check
    CHECK (kind IN ('CHARGE', 'USE', 'REFUND', 'TOP_UP', 'TOP_UP_REVERSED', 'GRANT'));
ALTER TABLE point_ledger ADD COLUMN note TEXT;
ALTER TABLE point_ledger ADD COLUMN granted_by BIGINT REFERENCES users (id);
ALTER TABLE point_ledger ADD CONSTRAINT point_ledger_grant_check
    CHECK ((kind = 'GRANT') = (note IS NOT NULL AND granted_by IS NOT NULL));
-- A top-up is credited at most once, and taken back at most once.
CREATE UNIQUE INDEX point_ledger_top_up_once ON point_ledger (order_id, kind)
    WHERE kind IN ('TOP_UP', 'TOP_UP_REVERSED');

COMMENT ON TABLE point_charges IS
    'Administrator grants made with an Idempotency-Key (and, before points were bought, free '
    'charges): a retry with the same key and amount answers what the first answered.';
