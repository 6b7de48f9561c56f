-- Units sold per product, for the product list's `sort=sales_desc`. Kept in the transaction
-- that records a sale's event (the outbox insert: `OrderPaid` adds its lines, a cancellation or
-- return of paid units subtracts them), so it always equals the collector's all-time sales
-- quantity of the product.
ALTER TABLE products ADD COLUMN sales_count BIGINT NOT NULL DEFAULT 0;

-- What was sold before: the paid units neither cancelled nor returned.
UPDATE products p SET sales_count = s.sold
  FROM (SELECT i.product_id, sum(i.quantity - i.quantity_cancelled - i.quantity_returned) AS sold
          FROM order_items i
          JOIN orders o ON o.id = i.order_id
         WHERE o.paid_at IS NOT NULL AND o.status NOT IN ('CANCELLED', 'REFUNDED')
         GROUP BY i.product_id) s
 WHERE p.id = s.product_id AND s.sold <> 0;

CREATE INDEX products_sales_idx ON products (sales_count DESC, id DESC);
CREATE INDEX products_brand_sales_idx ON products (brand_id, sales_count DESC, id DESC);
