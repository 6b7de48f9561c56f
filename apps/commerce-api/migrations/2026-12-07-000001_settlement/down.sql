-- Refused once any day is settled or any payout recorded: settlements are money owed.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM settlement_days) OR EXISTS (SELECT 1 FROM partner_ledger) THEN
        RAISE EXCEPTION 'settlements exist: reverting would lose them';
    END IF;
END
$$;
DROP VIEW partner_ledger_entries;
DROP TABLE partner_ledger;
DROP FUNCTION partner_ledger_append_only();
DROP TABLE settlements;
DROP FUNCTION settlements_written_once();
DROP TABLE settlement_lines;
DROP TABLE settlement_days;
DROP FUNCTION commission_of(BIGINT, INTEGER, BIGINT);
DROP TABLE commission_policies;
DROP FUNCTION commission_policies_kept();
