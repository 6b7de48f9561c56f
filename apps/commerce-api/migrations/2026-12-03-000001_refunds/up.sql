-- Refunds through the gateway. Every gateway transaction whose money must go back gets one row
-- (transaction_key is unique: a charge is refunded at most once), written in the transaction
-- that decided it: a paid card order cancelled, a charge that landed after its order was closed,
-- or a second charge of a paid order. The refund worker sends each to the gateway with a stable
-- idempotency key and records the gateway's confirmation; a paid order cancelled ends REFUNDED
-- then, and its payment too.
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'CANCELLED', 'REFUNDED'));
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PENDING', 'SUCCESS', 'FAILED', 'CANCELLED', 'REFUND_REQUIRED', 'REFUNDED'));

CREATE TABLE refunds (
    id                  BIGSERIAL   PRIMARY KEY,
    payment_id          BIGINT      NOT NULL REFERENCES payments (id),
    order_id            BIGINT      NOT NULL REFERENCES orders (id),
    user_id             BIGINT      NOT NULL REFERENCES users (id),
    transaction_key     TEXT        NOT NULL UNIQUE,
    amount              BIGINT      NOT NULL CHECK (amount > 0),
    cause               TEXT        NOT NULL
                        CHECK (cause IN ('ORDER_CANCELLED', 'CHARGED_AFTER_CLOSE', 'DUPLICATE_CHARGE')),
    -- REQUESTED: to be sent, or being retried; FAILED: the gateway refused it (an operator's
    -- turn: the admin retry sends it again); REFUNDED: the gateway confirmed it.
    status              TEXT        NOT NULL DEFAULT 'REQUESTED'
                        CHECK (status IN ('REQUESTED', 'FAILED', 'REFUNDED')),
    gateway_refund_key  TEXT        UNIQUE,
    attempts            INT         NOT NULL DEFAULT 0,
    last_error          TEXT,
    -- When the worker next sends it; a claim pushes it forward (a lease), so one instance at a
    -- time sends a refund, and a crashed instance's claim runs out.
    next_attempt_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    refunded_at         TIMESTAMPTZ
);
CREATE INDEX refunds_due_idx ON refunds (next_attempt_at) WHERE status = 'REQUESTED';
CREATE INDEX refunds_order_idx ON refunds (order_id);

-- What was flagged before refunds existed: a refund each, nothing dropped.
INSERT INTO refunds (payment_id, order_id, user_id, transaction_key, amount, cause)
SELECT p.id, p.order_id, p.user_id, p.transaction_key, p.amount,
       CASE WHEN o.status = 'CANCELLED' AND o.paid_at IS NOT NULL THEN 'ORDER_CANCELLED'
            ELSE 'CHARGED_AFTER_CLOSE' END
  FROM payments p JOIN orders o ON o.id = p.order_id
 WHERE p.status = 'REFUND_REQUIRED' AND p.transaction_key IS NOT NULL
ON CONFLICT (transaction_key) DO NOTHING;
INSERT INTO refunds (payment_id, order_id, user_id, transaction_key, amount, cause)
SELECT p.id, p.order_id, p.user_id, k.key, p.amount, 'DUPLICATE_CHARGE'
  FROM payments p CROSS JOIN LATERAL unnest(p.refund_keys) AS k(key)
ON CONFLICT (transaction_key) DO NOTHING;
ALTER TABLE payments DROP COLUMN refund_keys;
