-- Derived from the orders (the up migration recomputes it), so dropping it loses no data.
DROP INDEX products_brand_sales_idx;
DROP INDEX products_sales_idx;
ALTER TABLE products DROP COLUMN sales_count;
