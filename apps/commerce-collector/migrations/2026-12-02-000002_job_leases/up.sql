-- Scheduled job runs hold a lease: a run whose claimer crashed or failed (finished_at still
-- NULL) is taken over by any instance once the lease has passed. Runs left unfinished before
-- this migration get a lease that has already ended, so they are retried.
ALTER TABLE scheduled_job_runs
    ADD COLUMN lease_until TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN attempts    INTEGER     NOT NULL DEFAULT 1,
    ADD COLUMN last_error  TEXT;
