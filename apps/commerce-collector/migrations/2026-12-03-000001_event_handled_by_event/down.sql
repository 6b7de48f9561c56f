-- Back to per-group rows: each event under the group that applied it first.
ALTER TABLE event_handled RENAME TO event_handled_by_event;

CREATE TABLE event_handled (
    consumer_group TEXT        NOT NULL,
    event_id       UUID        NOT NULL,
    handled_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);
CREATE INDEX event_handled_handled_at_idx ON event_handled (handled_at);

INSERT INTO event_handled (consumer_group, event_id, handled_at)
SELECT consumer_group, event_id, handled_at FROM event_handled_by_event;

DROP TABLE event_handled_by_event;
DROP FUNCTION event_handled_ensure_partition(DATE);
DROP FUNCTION event_recorded_at(UUID);
