-- The two rankings' materialised ranks are derived (rebuilt from the figures by a newer
-- collector), so dropping them loses no data.
DELETE FROM ranking_ranks WHERE period IN ('three_day', 'best_sellers');
DELETE FROM ranking_snapshots WHERE period IN ('three_day', 'best_sellers');
ALTER TABLE ranking_ranks DROP CONSTRAINT ranking_ranks_period_check;
ALTER TABLE ranking_ranks ADD CONSTRAINT ranking_ranks_period_check
    CHECK (period IN ('daily', 'weekly', 'monthly'));
ALTER TABLE ranking_snapshots DROP CONSTRAINT ranking_snapshots_period_check;
ALTER TABLE ranking_snapshots ADD CONSTRAINT ranking_snapshots_period_check
    CHECK (period IN ('daily', 'weekly', 'monthly'));
