-- Back to batches writing all four tables: whatever is not folded yet is added to the
-- all-time, weekly and monthly figures first, so nothing is lost.
WITH pending AS (
    SELECT business_date AS day, product_id,
           view_count - folded_views AS v, like_count - folded_likes AS l,
           order_count - folded_orders AS o, sales_quantity - folded_quantity AS q,
           sales_amount - folded_amount AS a
      FROM product_metrics_daily
     WHERE (view_count, like_count, order_count, sales_quantity, sales_amount)
           <> (folded_views, folded_likes, folded_orders, folded_quantity, folded_amount)
),
totals AS (
    INSERT INTO product_metrics AS m
           (product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
    SELECT product_id, sum(v), sum(l), sum(o), sum(q), sum(a) FROM pending GROUP BY 1
    ON CONFLICT (product_id) DO UPDATE SET
        view_count = m.view_count + EXCLUDED.view_count,
        like_count = m.like_count + EXCLUDED.like_count,
        order_count = m.order_count + EXCLUDED.order_count,
        sales_quantity = m.sales_quantity + EXCLUDED.sales_quantity,
        sales_amount = m.sales_amount + EXCLUDED.sales_amount,
        updated_at = now()
),
weekly AS (
    INSERT INTO product_metrics_weekly AS m
           (week_start, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
    SELECT date_trunc('week', day)::date, product_id, sum(v), sum(l), sum(o), sum(q), sum(a)
      FROM pending GROUP BY 1, 2
    ON CONFLICT (week_start, product_id) DO UPDATE SET
        view_count = m.view_count + EXCLUDED.view_count,
        like_count = m.like_count + EXCLUDED.like_count,
        order_count = m.order_count + EXCLUDED.order_count,
        sales_quantity = m.sales_quantity + EXCLUDED.sales_quantity,
        sales_amount = m.sales_amount + EXCLUDED.sales_amount
)
INSERT INTO product_metrics_monthly AS m
       (month_start, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
SELECT date_trunc('month', day)::date, product_id, sum(v), sum(l), sum(o), sum(q), sum(a)
  FROM pending GROUP BY 1, 2
ON CONFLICT (month_start, product_id) DO UPDATE SET
    view_count = m.view_count + EXCLUDED.view_count,
    like_count = m.like_count + EXCLUDED.like_count,
    order_count = m.order_count + EXCLUDED.order_count,
    sales_quantity = m.sales_quantity + EXCLUDED.sales_quantity,
    sales_amount = m.sales_amount + EXCLUDED.sales_amount;

DROP INDEX product_metrics_daily_unfolded_idx;
ALTER TABLE product_metrics_daily
    DROP COLUMN folded_views, DROP COLUMN folded_likes, DROP COLUMN folded_orders,
    DROP COLUMN folded_quantity, DROP COLUMN folded_amount;
