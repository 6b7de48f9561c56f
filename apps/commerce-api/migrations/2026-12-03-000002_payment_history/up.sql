-- Payment history: every change of a card payment, appended in the transaction that made it
-- (what happened, where it came from, the payment's status afterwards, the gateway transaction
-- concerned and why). Rows are never updated. No card number, masked or not, is written here.
CREATE TABLE payment_events (
    id               BIGSERIAL   PRIMARY KEY,
    payment_id       BIGINT      NOT NULL REFERENCES payments (id),
    order_id         BIGINT      NOT NULL REFERENCES orders (id),
    at               TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    kind             TEXT        NOT NULL CHECK (kind IN (
                         'REQUESTED', 'ACCEPTED', 'GATEWAY_UNAVAILABLE', 'PAID', 'FAILED',
                         'CANCELLED', 'CHARGED_AFTER_CLOSE', 'DUPLICATE_CHARGE',
                         'REFUND_REQUESTED', 'REFUND_REFUSED', 'REFUND_CONFIRMED',
                         'RETRY_REQUESTED', 'RECORDED')),
    source           TEXT        NOT NULL CHECK (source IN (
                         'order', 'callback', 'reconciliation', 'cancel', 'refund_worker',
                         'admin', 'migration')),
    status           TEXT        NOT NULL,
    transaction_key  TEXT,
    reason           TEXT
);
CREATE INDEX payment_events_order_idx ON payment_events (order_id, id);

-- Payments made before the history existed: when each was requested, and where it stood.
INSERT INTO payment_events (payment_id, order_id, at, kind, source, status, reason)
SELECT id, order_id, created_at, 'REQUESTED', 'migration', 'PENDING',
       'recorded before the payment history existed'
  FROM payments ORDER BY id;
INSERT INTO payment_events (payment_id, order_id, at, kind, source, status, transaction_key, reason)
SELECT id, order_id, COALESCE(settled_at, created_at), 'RECORDED', 'migration', status,
       transaction_key, reason
  FROM payments WHERE status <> 'PENDING' ORDER BY id;
