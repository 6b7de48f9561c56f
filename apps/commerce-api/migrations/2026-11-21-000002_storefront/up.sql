-- Accounts, catalog, likes, coupons and orders. Money is integer won (BIGINT). Every invariant
-- the API promises (no negative stock or balance, no coupon issued past its quantity) is also a
-- CHECK constraint: the database is the last line of defence under any concurrency.

CREATE TABLE users (
    id             BIGSERIAL   PRIMARY KEY,
    login_id       TEXT        NOT NULL UNIQUE,
    password_hash  TEXT        NOT NULL,
    name           TEXT        NOT NULL,
    email          TEXT        NOT NULL,
    role           TEXT        NOT NULL DEFAULT 'USER' CHECK (role IN ('USER', 'ADMIN')),
    point_balance  BIGINT      NOT NULL DEFAULT 0 CHECK (point_balance >= 0),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every change of a balance, so a balance can always be explained (and audited) from history.
CREATE TABLE point_ledger (
    id          BIGSERIAL   PRIMARY KEY,
    user_id     BIGINT      NOT NULL REFERENCES users (id),
    amount      BIGINT      NOT NULL CHECK (amount <> 0),
    kind        TEXT        NOT NULL CHECK (kind IN ('CHARGE', 'USE', 'REFUND')),
    order_id    BIGINT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX point_ledger_user_idx ON point_ledger (user_id, id);

CREATE TABLE brands (
    id           BIGSERIAL   PRIMARY KEY,
    name         TEXT        NOT NULL,
    description  TEXT        NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id           BIGSERIAL   PRIMARY KEY,
    brand_id     BIGINT      NOT NULL REFERENCES brands (id),
    name         TEXT        NOT NULL,
    description  TEXT        NOT NULL DEFAULT '',
    price        BIGINT      NOT NULL CHECK (price >= 0),
    stock        BIGINT      NOT NULL CHECK (stock >= 0),
    like_count   BIGINT      NOT NULL DEFAULT 0 CHECK (like_count >= 0),
    version      BIGINT      NOT NULL DEFAULT 1,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The list's three sort orders, with and without a brand filter; `id` breaks ties so paging is
-- stable.
CREATE INDEX products_latest_idx ON products (id DESC);
CREATE INDEX products_price_idx ON products (price, id);
CREATE INDEX products_likes_idx ON products (like_count DESC, id DESC);
CREATE INDEX products_brand_latest_idx ON products (brand_id, id DESC);
CREATE INDEX products_brand_price_idx ON products (brand_id, price, id);
CREATE INDEX products_brand_likes_idx ON products (brand_id, like_count DESC, id DESC);

CREATE TABLE product_likes (
    user_id     BIGINT      NOT NULL REFERENCES users (id),
    product_id  BIGINT      NOT NULL REFERENCES products (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, product_id)
);
CREATE INDEX product_likes_product_idx ON product_likes (product_id);

CREATE TABLE coupons (
    id                   BIGSERIAL   PRIMARY KEY,
    name                 TEXT        NOT NULL,
    discount_type        TEXT        NOT NULL CHECK (discount_type IN ('FIXED', 'RATE')),
    discount_value       BIGINT      NOT NULL CHECK (discount_value > 0),
    min_order_amount     BIGINT      NOT NULL DEFAULT 0 CHECK (min_order_amount >= 0),
    max_discount_amount  BIGINT      CHECK (max_discount_amount > 0),
    -- NULL: unlimited.
    total_quantity       BIGINT      CHECK (total_quantity > 0),
    issued_count         BIGINT      NOT NULL DEFAULT 0,
    valid_from           TIMESTAMPTZ,
    valid_until          TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (discount_type <> 'RATE' OR discount_value <= 100),
    CHECK (total_quantity IS NULL OR issued_count <= total_quantity),
    CHECK (valid_from IS NULL OR valid_until IS NULL OR valid_from < valid_until)
);

CREATE TABLE user_coupons (
    id          BIGSERIAL   PRIMARY KEY,
    coupon_id   BIGINT      NOT NULL REFERENCES coupons (id),
    user_id     BIGINT      NOT NULL REFERENCES users (id),
    status      TEXT        NOT NULL DEFAULT 'AVAILABLE' CHECK (status IN ('AVAILABLE', 'USED')),
    order_id    BIGINT,
    issued_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    used_at     TIMESTAMPTZ,
    -- At most one per user, whatever the concurrency.
    UNIQUE (coupon_id, user_id)
);
CREATE INDEX user_coupons_user_idx ON user_coupons (user_id, id);

CREATE TABLE orders (
    id               BIGSERIAL   PRIMARY KEY,
    user_id          BIGINT      NOT NULL REFERENCES users (id),
    status           TEXT        NOT NULL CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'CANCELLED')),
    total_amount     BIGINT      NOT NULL CHECK (total_amount >= 0),
    discount_amount  BIGINT      NOT NULL CHECK (discount_amount >= 0),
    final_amount     BIGINT      NOT NULL CHECK (final_amount >= 0),
    points_used      BIGINT      NOT NULL DEFAULT 0 CHECK (points_used >= 0),
    user_coupon_id   BIGINT      REFERENCES user_coupons (id),
    payment_method   TEXT        NOT NULL CHECK (payment_method IN ('POINT', 'CARD')),
    idempotency_key  TEXT,
    -- SHA-256 of the canonical request, to tell a replay from a reuse of the key.
    request_hash     TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at          TIMESTAMPTZ,
    cancelled_at     TIMESTAMPTZ,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX orders_user_idx ON orders (user_id, id DESC);

CREATE TABLE order_items (
    order_id    BIGINT NOT NULL REFERENCES orders (id),
    product_id  BIGINT NOT NULL REFERENCES products (id),
    quantity    BIGINT NOT NULL CHECK (quantity > 0),
    unit_price  BIGINT NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, product_id)
);

-- Wake the outbox relay as soon as an event row commits (NOTIFY is delivered at commit).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
