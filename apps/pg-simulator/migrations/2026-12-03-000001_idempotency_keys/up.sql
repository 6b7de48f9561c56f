-- Idempotency keys, as card gateways keep them: a payment request carrying a key the user has
-- used before gets the original transaction back (or an error if its body differs) instead of a
-- second payment. A key is reserved (transaction_key NULL) while its first request is being
-- processed, so a retry arriving meanwhile is told to wait, not charged again. Only a hash of the
-- request is kept, never the card number.
CREATE TABLE idempotency_keys (
    user_id          TEXT        NOT NULL,
    idempotency_key  TEXT        NOT NULL,
    request_hash     TEXT        NOT NULL,
    transaction_key  TEXT        REFERENCES payments (transaction_key),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idempotency_key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
