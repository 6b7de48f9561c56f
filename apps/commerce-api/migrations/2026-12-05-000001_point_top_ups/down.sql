-- Only for a database that never took a top-up or a grant: the CHECKs below refuse otherwise.
DROP INDEX point_ledger_top_up_once;
ALTER TABLE point_ledger DROP CONSTRAINT point_ledger_grant_check;
ALTER TABLE point_ledger DROP COLUMN granted_by;
ALTER TABLE point_ledger DROP COLUMN note;
ALTER TABLE point_ledger DROP CONSTRAINT point_ledger_kind_check;
ALTER TABLE point_ledger ADD CONSTRAINT point_ledger_kind_check
    CHECK (kind IN ('CHARGE', 'USE', 'REFUND'));
ALTER TABLE orders DROP COLUMN kind;
COMMENT ON TABLE point_charges IS NULL;
