-- Refunds: a settled, successful payment can be refunded in full, once. The refund is the
-- gateway's record of the money going back; the payment shows REFUNDED from then on. A request
-- carrying an Idempotency-Key the user has used for a refund before gets that refund back (or
-- 422 if it was for another payment), so a retried refund never refunds twice.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PENDING', 'SUCCESS', 'FAILED', 'REFUNDED'));

CREATE TABLE refunds (
    refund_key       TEXT        PRIMARY KEY,
    transaction_key  TEXT        NOT NULL UNIQUE REFERENCES payments (transaction_key),
    user_id          TEXT        NOT NULL,
    idempotency_key  TEXT,
    amount           BIGINT      NOT NULL CHECK (amount > 0),
    reason           TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key)
);
