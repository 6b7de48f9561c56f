-- Sessions that can end: a login starts a session (a family of refresh tokens); each refresh
-- rotates the token, and a token used twice ends its session. Access tokens name their session
-- (`sid`), so ending it refuses them everywhere (see the API's `domain::sessions`).
CREATE TABLE auth_sessions (
    id             UUID        PRIMARY KEY,
    user_id        BIGINT      NOT NULL REFERENCES users (id),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    refreshed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- No refresh after this: the session's absolute end.
    expires_at     TIMESTAMPTZ NOT NULL,
    revoked_at     TIMESTAMPTZ,
    revoked_reason TEXT CHECK (revoked_reason IN ('LOGOUT', 'LOGOUT_ALL', 'ADMIN', 'REUSE')),
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
CREATE INDEX auth_sessions_user_idx ON auth_sessions (user_id) WHERE revoked_at IS NULL;
-- What every instance polls when Redis is unavailable: recent revocations.
CREATE INDEX auth_sessions_revoked_idx ON auth_sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Refresh tokens are opaque random values; only their SHA-256 is kept.
CREATE TABLE refresh_tokens (
    token_hash BYTEA       PRIMARY KEY,
    session_id UUID        NOT NULL REFERENCES auth_sessions (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Exchanged for a new one: a second use is a stolen token's use.
    used_at    TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);
