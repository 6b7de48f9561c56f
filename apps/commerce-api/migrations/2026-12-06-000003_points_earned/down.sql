-- Only for a database where no points were earned: the CHECK below refuses otherwise.
DROP INDEX point_ledger_earn_once;
ALTER TABLE point_ledger DROP CONSTRAINT point_ledger_earn_check;
ALTER TABLE point_ledger DROP COLUMN partner_order_id;
ALTER TABLE point_ledger DROP CONSTRAINT point_ledger_kind_check;
ALTER TABLE point_ledger ADD CONSTRAINT point_ledger_kind_check
    CHECK (kind IN ('CHARGE', 'USE', 'REFUND', 'TOP_UP', 'TOP_UP_REVERSED', 'GRANT'));
