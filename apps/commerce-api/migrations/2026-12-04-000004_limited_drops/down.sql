ALTER TABLE products
    DROP CONSTRAINT products_sale_window,
    DROP COLUMN sale_ends_at,
    DROP COLUMN sale_starts_at,
    DROP COLUMN max_per_user;
