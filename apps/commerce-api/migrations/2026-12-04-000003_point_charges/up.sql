-- Points charges made with an Idempotency-Key: a retry with the same key and amount answers
-- what the first answered and charges nothing more.
CREATE TABLE point_charges (
    user_id         bigint      NOT NULL REFERENCES users (id),
    idempotency_key text        NOT NULL,
    amount          bigint      NOT NULL,
    balance_after   bigint      NOT NULL,
    ledger_id       bigint      NOT NULL REFERENCES point_ledger (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idempotency_key)
);
