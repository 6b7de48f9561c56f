-- Card payments: one payment per card order, settled by the gateway's callback or by
-- reconciliation. Only a masked card number is kept for display; the full number is kept
-- encrypted (AES-256-GCM) only until the gateway has received the payment, so that
-- reconciliation can request it again after a gateway outage or a crash, and erased then.
CREATE TABLE payments (
    id               BIGSERIAL   PRIMARY KEY,
    order_id         BIGINT      NOT NULL UNIQUE REFERENCES orders (id),
    user_id          BIGINT      NOT NULL REFERENCES users (id),
    amount           BIGINT      NOT NULL CHECK (amount > 0),
    card_type        TEXT        NOT NULL CHECK (card_type IN ('SAMSUNG', 'KB', 'HYUNDAI')),
    card_no_masked   TEXT        NOT NULL,
    card_no_sealed   BYTEA,
    -- REFUND_REQUIRED: the gateway charged an order that had already been cancelled or failed.
    status           TEXT        NOT NULL DEFAULT 'PENDING'
                     CHECK (status IN ('PENDING', 'SUCCESS', 'FAILED', 'CANCELLED', 'REFUND_REQUIRED')),
    transaction_key  TEXT        UNIQUE,
    -- Further gateway payments that succeeded for this order: each one must be refunded.
    refund_keys      TEXT[]      NOT NULL DEFAULT '{}',
    reason           TEXT,
    -- Reconciliation: when this payment is next looked up at the gateway, and how often it was.
    -- A CANCELLED payment is still looked up until the gateway has settled it ('infinity'
    -- then), so a charge that lands after the cancel is caught even if its callback is lost.
    next_check_at    TIMESTAMPTZ NOT NULL,
    checks           INT         NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    settled_at       TIMESTAMPTZ
);
CREATE INDEX payments_due_idx ON payments (next_check_at) WHERE status IN ('PENDING', 'CANCELLED');
