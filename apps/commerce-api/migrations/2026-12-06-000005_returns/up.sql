-- Returns: a customer asks to return a delivered partner order within the return window, with
-- a reason; the customer may withdraw it, the partner rejects it or accepts it on receipt (then
-- its paid share goes back). While a return is open the purchase is not confirmed
-- automatically: the confirmation timer's remaining time is kept here and restored if the
-- return does not go through.
CREATE TABLE returns (
    id                BIGSERIAL   PRIMARY KEY,
    partner_order_id  BIGINT      NOT NULL REFERENCES partner_orders (id),
    reason            TEXT        NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    status            TEXT        NOT NULL DEFAULT 'REQUESTED'
                      CHECK (status IN ('REQUESTED', 'ACCEPTED', 'REJECTED', 'WITHDRAWN')),
    requested_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at       TIMESTAMPTZ,
    confirm_left_ms   BIGINT      CHECK (confirm_left_ms >= 0),
    CHECK ((status = 'REQUESTED') = (resolved_at IS NULL))
);
-- At most one open return per partner order.
CREATE UNIQUE INDEX returns_open_once ON returns (partner_order_id) WHERE status = 'REQUESTED';
CREATE INDEX returns_partner_order_idx ON returns (partner_order_id, id);
