-- Events this consumer group has applied. Inserted in the same transaction as the metric
-- updates an event causes, so an event redelivered after a crash is recognised and skipped:
-- exactly-once effect on top of at-least-once delivery.
CREATE TABLE event_handled (
    consumer_group TEXT        NOT NULL,
    event_id       UUID        NOT NULL,
    handled_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);

-- Pruning removes rows older than the broker's retention window by age.
CREATE INDEX event_handled_handled_at_idx ON event_handled (handled_at);
