-- Refused while any session is still open: reverting would sign everyone out without a trace
-- of who had been (ended sessions are history the tables keep).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM auth_sessions) THEN
        RAISE EXCEPTION 'sessions exist: reverting would lose them';
    END IF;
END $$;
DROP TABLE refresh_tokens;
DROP TABLE auth_sessions;
