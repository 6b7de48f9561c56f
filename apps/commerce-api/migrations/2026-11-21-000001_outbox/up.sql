-- The transactional outbox: every event other services care about is written here in the same
-- transaction as the change it describes. The relay publishes rows to Kafka and marks them.
CREATE TABLE outbox (
    id             BIGSERIAL   PRIMARY KEY,
    event_id       UUID        NOT NULL UNIQUE,
    topic          TEXT        NOT NULL,
    -- Kafka message key: events with one key are published in commit order.
    partition_key  TEXT        NOT NULL,
    event_type     TEXT        NOT NULL,
    -- The full event envelope, published as the message value.
    envelope       JSONB       NOT NULL,
    -- W3C trace context of the request that wrote the event, carried as a Kafka header.
    traceparent    TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at   TIMESTAMPTZ,
    attempts       INTEGER     NOT NULL DEFAULT 0,
    last_error     TEXT
);

-- The relay only ever scans unpublished rows.
CREATE INDEX outbox_pending_idx ON outbox (id) WHERE published_at IS NULL;
-- The retention job purges published rows by age.
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
