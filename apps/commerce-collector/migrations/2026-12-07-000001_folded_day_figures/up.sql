-- The all-time, weekly and monthly figures are folded from the daily rows about once a second
-- (`commerce_collector::fold`) instead of being upserted by every batch. Each daily row records
-- how much of it has been folded; the fold adds the difference to the three tables and to these
-- columns in one transaction, so each change is folded exactly once.
ALTER TABLE product_metrics_daily
    ADD COLUMN folded_views    BIGINT,
    ADD COLUMN folded_likes    BIGINT,
    ADD COLUMN folded_orders   BIGINT,
    ADD COLUMN folded_quantity BIGINT,
    ADD COLUMN folded_amount   BIGINT;

-- Every existing row is already counted in the all-time, weekly and monthly tables (batches
-- wrote all four until now).
UPDATE product_metrics_daily
   SET folded_views = view_count, folded_likes = like_count, folded_orders = order_count,
       folded_quantity = sales_quantity, folded_amount = sales_amount;

ALTER TABLE product_metrics_daily
    ALTER COLUMN folded_views SET DEFAULT 0,    ALTER COLUMN folded_views SET NOT NULL,
    ALTER COLUMN folded_likes SET DEFAULT 0,    ALTER COLUMN folded_likes SET NOT NULL,
    ALTER COLUMN folded_orders SET DEFAULT 0,   ALTER COLUMN folded_orders SET NOT NULL,
    ALTER COLUMN folded_quantity SET DEFAULT 0, ALTER COLUMN folded_quantity SET NOT NULL,
    ALTER COLUMN folded_amount SET DEFAULT 0,   ALTER COLUMN folded_amount SET NOT NULL;

-- The rows with something left to fold (about a second of changes): what the fold reads, and
-- what an all-time read adds to the folded totals to be exact.
CREATE INDEX product_metrics_daily_unfolded_idx ON product_metrics_daily (product_id, business_date)
 WHERE (view_count, like_count, order_count, sales_quantity, sales_amount)
       <> (folded_views, folded_likes, folded_orders, folded_quantity, folded_amount);
