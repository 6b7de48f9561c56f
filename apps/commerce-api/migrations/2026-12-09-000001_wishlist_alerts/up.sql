-- Wishlist alerts: a customer is told once when a product on their wishlist comes back in stock,
-- and once shortly before a limited drop's sale window opens.
--
-- An occasion is decided in the transaction that causes it (a restock, by the trigger below,
-- whatever path put the stock back; a drop, by the planner's insert, unique per window), then
-- fanned out to the product's subscribers in the order they subscribed (one alert per customer
-- and occasion, unique), and each alert is handed to the SMTP server by a sender that records
-- when it started, so an alert is never sent twice (see the API's `domain::alerts`).
CREATE TABLE wishlist_occasions (
    id                   BIGSERIAL   PRIMARY KEY,
    product_id           BIGINT      NOT NULL REFERENCES products (id),
    kind                 TEXT        NOT NULL CHECK (kind IN ('RESTOCK', 'DROP')),
    -- RESTOCK: the units in stock the moment it came back.
    units                BIGINT,
    -- DROP: when the sale window opens.
    opens_at             TIMESTAMPTZ,
    -- Customers who subscribed by then are told.
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- How many customers had subscribed by then: counted when the fan-out starts.
    subscribers          BIGINT,
    -- The fan-out's progress: the last subscriber given an alert, in subscription order.
    cursor_subscribed_at TIMESTAMPTZ,
    cursor_user_id       BIGINT,
    fanned_out_at        TIMESTAMPTZ,
    CHECK ((kind = 'RESTOCK') = (units IS NOT NULL)),
    CHECK ((kind = 'DROP') = (opens_at IS NOT NULL))
);
-- One pre-sale occasion per product and window (the planner inserts it on every pass).
CREATE UNIQUE INDEX wishlist_occasions_drop_idx ON wishlist_occasions (product_id, opens_at)
    WHERE kind = 'DROP';
CREATE INDEX wishlist_occasions_pending_idx ON wishlist_occasions (id) WHERE fanned_out_at IS NULL;

CREATE TABLE wishlist_alerts (
    id              BIGSERIAL   PRIMARY KEY,
    occasion_id     BIGINT      NOT NULL REFERENCES wishlist_occasions (id),
    user_id         BIGINT      NOT NULL REFERENCES users (id),
    subscribed_at   TIMESTAMPTZ NOT NULL,
    status          TEXT        NOT NULL DEFAULT 'QUEUED'
                    CHECK (status IN ('QUEUED', 'SENT', 'FAILED', 'UNCONFIRMED', 'WITHDRAWN')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    -- QUEUED: when it may next be claimed (a claim pushes it forward: a lease).
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set just before the message is handed to the SMTP server, cleared when the server has
    -- answered. Found set by a later claim, the sender stopped mid-delivery: the message may
    -- have been delivered, so it is not sent again (UNCONFIRMED) unless an admin says so.
    sending_since   TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ,
    UNIQUE (occasion_id, user_id)
);
-- Due alerts, in the order they were queued (subscription order within an occasion).
CREATE INDEX wishlist_alerts_queued_idx ON wishlist_alerts (id) WHERE status = 'QUEUED';
-- The dead letters an admin lists and retries.
CREATE INDEX wishlist_alerts_dead_idx ON wishlist_alerts (id) WHERE status IN ('FAILED', 'UNCONFIRMED');

-- The send rate, shared by every instance: the next free moment to send at. A claim of n alerts
-- takes the next n moments (a GCRA schedule kept in one row, one update per claim).
CREATE TABLE wishlist_alert_pace (
    id        BOOLEAN     PRIMARY KEY DEFAULT true CHECK (id),
    next_slot TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
INSERT INTO wishlist_alert_pace DEFAULT VALUES;

-- When the customer was last told the product was back: restocks closer together than the quiet
-- period (a cancellation, then a sale, then another cancellation) tell them once.
ALTER TABLE wishlist_items ADD COLUMN restock_alerted_at TIMESTAMPTZ;

-- Drops whose window opens soon.
CREATE INDEX products_sale_starts_idx ON products (sale_starts_at) WHERE sale_starts_at IS NOT NULL;

-- A restock is decided where the stock changes: any update that takes a product from none to
-- some (a partner's or admin's edit, a cancellation, a failed payment, a return) records the
-- occasion in its own transaction, if anyone is waiting for it. Orders only take stock away, so
-- the condition is false for them and the function never runs.
CREATE FUNCTION wishlist_restock_occasion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM wishlist_items WHERE product_id = NEW.id) THEN
        INSERT INTO wishlist_occasions (product_id, kind, units) VALUES (NEW.id, 'RESTOCK', NEW.stock);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER products_restocked AFTER UPDATE OF stock ON products
    FOR EACH ROW WHEN (OLD.stock = 0 AND NEW.stock > 0)
    EXECUTE FUNCTION wishlist_restock_occasion();
