-- The simulator's own record of every payment it accepted. A payment it refused (HTTP 500) is
-- never written. Card numbers are kept masked.
CREATE TABLE payments (
    transaction_key  TEXT        PRIMARY KEY,
    user_id          TEXT        NOT NULL,
    order_id         TEXT        NOT NULL,
    card_type        TEXT        NOT NULL CHECK (card_type IN ('SAMSUNG', 'KB', 'HYUNDAI')),
    card_no          TEXT        NOT NULL,
    amount           BIGINT      NOT NULL CHECK (amount > 0),
    callback_url     TEXT        NOT NULL,
    status           TEXT        NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SUCCESS', 'FAILED')),
    reason           TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When the settlement worker decides the outcome (survives a restart: overdue rows are
    -- settled as soon as the simulator is back).
    settle_at        TIMESTAMPTZ NOT NULL,
    settled_at       TIMESTAMPTZ,
    -- What became of the one callback: SENT, DROPPED (deliberately), FAILED (not delivered).
    callback_status  TEXT
);
CREATE INDEX payments_order_idx ON payments (user_id, order_id, created_at);
CREATE INDEX payments_due_idx ON payments (settle_at) WHERE status = 'PENDING';
