-- Limited drops: how many units one user may hold across their standing orders, and the window
-- in which a product is on sale. NULL: no limit, no start, no end (every existing product).
ALTER TABLE products
    ADD COLUMN max_per_user   integer     CHECK (max_per_user > 0),
    ADD COLUMN sale_starts_at timestamptz,
    ADD COLUMN sale_ends_at   timestamptz,
    ADD CONSTRAINT products_sale_window CHECK (sale_ends_at > sale_starts_at);
