-- A customer's wishlist: private (likes are a public popularity signal the rankings count; a
-- wishlist is what a customer wants to be told about), and what restock and pre-sale alerts are
-- sent for.
CREATE TABLE wishlist_items (
    user_id     BIGINT      NOT NULL REFERENCES users (id),
    product_id  BIGINT      NOT NULL REFERENCES products (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, product_id)
);
-- A customer's list, newest first.
CREATE INDEX wishlist_items_user_idx ON wishlist_items (user_id, created_at DESC, product_id DESC);
-- A product's subscribers in the order they subscribed: alerts go out in that order.
CREATE INDEX wishlist_items_product_idx ON wishlist_items (product_id, created_at, user_id);
