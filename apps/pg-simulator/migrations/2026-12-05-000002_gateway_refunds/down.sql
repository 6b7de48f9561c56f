ALTER TABLE refunds DROP COLUMN kind;
ALTER TABLE refunds DROP COLUMN initiated_by;
