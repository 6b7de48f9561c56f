-- The ranking read model.
--
-- 1. Every rank of a period, materialised (not only the top 100): what the ranking API serves for
--    past periods, and for the current ones while Redis is unavailable. The top-100 rows written
--    so far are kept; each period is rewritten whole when it is next materialised.
ALTER TABLE ranking_top RENAME TO ranking_ranks;
ALTER TABLE ranking_ranks RENAME CONSTRAINT ranking_top_pkey TO ranking_ranks_pkey;
ALTER TABLE ranking_ranks RENAME CONSTRAINT ranking_top_period_check TO ranking_ranks_period_check;
-- A product's rank in a period, by index.
CREATE INDEX ranking_ranks_product_idx ON ranking_ranks (period, period_start, product_id);

-- One row per materialised period: how many products it ranks and when it was taken. A period
-- without a row here has not been materialised whole yet.
CREATE TABLE ranking_snapshots (
    period           TEXT        NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly')),
    period_start     DATE        NOT NULL,
    total            BIGINT      NOT NULL,
    materialized_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (period, period_start)
);

-- 2. Weeks and months are now kept live by every batch (deltas, in the batch's transaction)
--    instead of only by the rollup. Recompute them from the daily rows once, so the deltas start
--    from exact figures (the rollup may have been up to one run behind).
INSERT INTO product_metrics_weekly AS r
       (week_start, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
SELECT date_trunc('week', business_date)::date, product_id, sum(view_count), sum(like_count),
       sum(order_count), sum(sales_quantity), sum(sales_amount)
  FROM product_metrics_daily
 GROUP BY 1, 2
ON CONFLICT (week_start, product_id) DO UPDATE SET
    view_count = EXCLUDED.view_count, like_count = EXCLUDED.like_count,
    order_count = EXCLUDED.order_count, sales_quantity = EXCLUDED.sales_quantity,
    sales_amount = EXCLUDED.sales_amount;

INSERT INTO product_metrics_monthly AS r
       (month_start, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
SELECT date_trunc('month', business_date)::date, product_id, sum(view_count), sum(like_count),
       sum(order_count), sum(sales_quantity), sum(sales_amount)
  FROM product_metrics_daily
 GROUP BY 1, 2
ON CONFLICT (month_start, product_id) DO UPDATE SET
    view_count = EXCLUDED.view_count, like_count = EXCLUDED.like_count,
    order_count = EXCLUDED.order_count, sales_quantity = EXCLUDED.sales_quantity,
    sales_amount = EXCLUDED.sales_amount;
