ALTER TABLE scheduled_job_runs DROP COLUMN last_error, DROP COLUMN attempts, DROP COLUMN lease_until;
