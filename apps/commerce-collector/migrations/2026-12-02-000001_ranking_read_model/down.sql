-- Ranks beyond the top 100 stay in the table; the old code only reads the first 100.
DROP TABLE ranking_snapshots;
DROP INDEX ranking_ranks_product_idx;
ALTER TABLE ranking_ranks RENAME CONSTRAINT ranking_ranks_period_check TO ranking_top_period_check;
ALTER TABLE ranking_ranks RENAME CONSTRAINT ranking_ranks_pkey TO ranking_top_pkey;
ALTER TABLE ranking_ranks RENAME TO ranking_top;
