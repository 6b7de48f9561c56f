-- Failed logins per login id, for the login backoff. Kept for any login id tried, existing or
-- not, so that the backoff itself does not tell whether an account exists. A successful login
-- deletes its row; rows idle for a day are purged by the API.
CREATE TABLE login_failures (
    login_id text PRIMARY KEY,
    failures integer NOT NULL CHECK (failures > 0),
    blocked_until timestamptz,
    last_failed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX login_failures_last_failed_at ON login_failures (last_failed_at);
