-- Two more rankings are materialised beside days, weeks and months: the rolling three days
-- (`period_start` = the window's first day) and the all-time best sellers (`period_start` =
-- 2000-01-01, the start of "all time").
ALTER TABLE ranking_ranks DROP CONSTRAINT ranking_ranks_period_check;
ALTER TABLE ranking_ranks ADD CONSTRAINT ranking_ranks_period_check
    CHECK (period IN ('daily', 'three_day', 'weekly', 'monthly', 'best_sellers'));
ALTER TABLE ranking_snapshots DROP CONSTRAINT ranking_snapshots_period_check;
ALTER TABLE ranking_snapshots ADD CONSTRAINT ranking_snapshots_period_check
    CHECK (period IN ('daily', 'three_day', 'weekly', 'monthly', 'best_sellers'));
