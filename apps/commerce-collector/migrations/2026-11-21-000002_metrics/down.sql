DROP TABLE scheduled_job_runs;
DROP TABLE ranking_carryover;
DROP TABLE ranking_top;
DROP TABLE product_catalog;
DROP TABLE product_metrics_monthly;
DROP TABLE product_metrics_weekly;
DROP TABLE product_metrics_daily;
DROP TABLE product_metrics;
