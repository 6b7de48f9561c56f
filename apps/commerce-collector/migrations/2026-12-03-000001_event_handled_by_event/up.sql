-- Dedupe by event, whatever the consumer group. Rows were keyed by (consumer_group, event_id),
-- so a renamed group, a second deployment on the same database or an offset reset re-applied
-- every event still in the topic to the shared figures. They are now keyed by the event alone.
--
-- The table is partitioned by day of the event's recorded time: the timestamp inside its
-- UUIDv7 id, so a function of the id and the same on every redelivery. Retention is a
-- partition drop, not a DELETE over millions of rows; events older than the retention horizon
-- are refused by the consumer (dead-lettered), since their dedupe rows may be gone.
ALTER TABLE event_handled RENAME TO event_handled_by_group;

CREATE TABLE event_handled (
    event_id       UUID        NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    handled_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The group that applied it first: for diagnosis only.
    consumer_group TEXT        NOT NULL,
    PRIMARY KEY (event_id, recorded_at)
) PARTITION BY RANGE (recorded_at);

-- The recorded time of a UUIDv7 (its first 48 bits, Unix milliseconds); NULL for other versions.
CREATE FUNCTION event_recorded_at(id UUID) RETURNS TIMESTAMPTZ
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN substr(id::text, 15, 1) = '7' THEN
        to_timestamp(('x' || lpad(substr(replace(id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint / 1000.0)
    END
$$;

-- Creates the partition holding one UTC day, if missing. Safe to call from several collectors
-- at once (serialised by an advisory lock; the partition is checked again under it).
CREATE FUNCTION event_handled_ensure_partition(day DATE) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name TEXT := format('event_handled_p%s', to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('commerce-collector:event-handled-partitions'));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF event_handled FOR VALUES FROM (%L) TO (%L)',
        name,
        day::timestamp AT TIME ZONE 'UTC',
        (day + 1)::timestamp AT TIME ZONE 'UTC');
END
$$;

-- Every row moves over (one per event: the earliest handling is kept), into partitions for
-- the days they fall in, plus today and the next two days.
SELECT event_handled_ensure_partition(d::date)
  FROM (SELECT DISTINCT (coalesce(event_recorded_at(event_id), handled_at) AT TIME ZONE 'UTC')::date AS d
          FROM event_handled_by_group
        UNION
        SELECT ((now() AT TIME ZONE 'UTC')::date + i) FROM generate_series(0, 2) AS i) AS days;

INSERT INTO event_handled (event_id, recorded_at, handled_at, consumer_group)
SELECT DISTINCT ON (event_id)
       event_id, coalesce(event_recorded_at(event_id), handled_at), handled_at, consumer_group
  FROM event_handled_by_group
 ORDER BY event_id, handled_at;

DROP TABLE event_handled_by_group;
