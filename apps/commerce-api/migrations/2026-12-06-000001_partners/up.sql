-- A marketplace: partners list brands and products; one checkout (an order) is split into one
-- partner order per partner present, each with its lines, its share of the total, of the coupon
-- discount and of the points, and its share of each payment as rows of their own.
--
-- Everything that existed before belongs to the house partner (id 1): its brands, its products,
-- and one partner order per existing goods order, with the order's amounts allocated to its
-- lines by the same largest-remainder rule the API uses. No row is dropped or rewritten in
-- meaning; the new columns only describe what was already there.

CREATE TABLE partners (
    id               BIGSERIAL   PRIMARY KEY,
    name             TEXT        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- Korean business registration number, NNN-NN-NNNNN.
    business_number  TEXT        NOT NULL UNIQUE CHECK (business_number ~ '^[0-9]{3}-[0-9]{2}-[0-9]{5}$'),
    status           TEXT        NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'SUSPENDED')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO partners (id, name, business_number) VALUES (1, 'House', '000-00-00000');
SELECT setval(pg_get_serial_sequence('partners', 'id'), 1);

-- A partner account is a user with the PARTNER role, tied to its partner.
ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('USER', 'ADMIN', 'PARTNER'));
ALTER TABLE users ADD COLUMN partner_id BIGINT REFERENCES partners (id);
ALTER TABLE users ADD CONSTRAINT users_partner_check CHECK ((role = 'PARTNER') = (partner_id IS NOT NULL));
CREATE INDEX users_partner_idx ON users (partner_id) WHERE partner_id IS NOT NULL;

-- A constant default fills existing rows without rewriting the table; it is dropped at once so
-- every new brand or product names its partner.
ALTER TABLE brands ADD COLUMN partner_id BIGINT NOT NULL DEFAULT 1 REFERENCES partners (id);
ALTER TABLE brands ALTER COLUMN partner_id DROP DEFAULT;
CREATE INDEX brands_partner_idx ON brands (partner_id, id);
-- A product belongs to its brand's partner (the API sets it from the brand); kept on the row so
-- placing an order reads it under the same lock as the stock.
ALTER TABLE products ADD COLUMN partner_id BIGINT NOT NULL DEFAULT 1 REFERENCES partners (id);
ALTER TABLE products ALTER COLUMN partner_id DROP DEFAULT;
CREATE INDEX products_partner_idx ON products (partner_id, id DESC);

CREATE TABLE partner_orders (
    id               BIGSERIAL   PRIMARY KEY,
    order_id         BIGINT      NOT NULL REFERENCES orders (id),
    partner_id       BIGINT      NOT NULL REFERENCES partners (id),
    status           TEXT        NOT NULL CHECK (status IN (
                         'PENDING_PAYMENT', 'PAYMENT_FAILED', 'PAID', 'PREPARING', 'SHIPPED',
                         'DELIVERED', 'PURCHASE_CONFIRMED', 'CANCELLED', 'RETURN_REQUESTED',
                         'RETURNED')),
    -- The sum of its lines (quantity x unit price), and its shares of the order's coupon
    -- discount and points, allocated at placement and never recomputed.
    items_total      BIGINT      NOT NULL CHECK (items_total >= 0),
    discount_share   BIGINT      NOT NULL CHECK (discount_share BETWEEN 0 AND items_total),
    points_share     BIGINT      NOT NULL CHECK (points_share >= 0),
    card_share       BIGINT      NOT NULL CHECK (card_share >= 0),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at          TIMESTAMPTZ,
    confirmed_at     TIMESTAMPTZ,
    cancelled_at     TIMESTAMPTZ,
    UNIQUE (order_id, partner_id),
    CHECK (items_total - discount_share = points_share + card_share)
);
-- A partner's orders, newest first, in all or by state.
CREATE INDEX partner_orders_partner_idx ON partner_orders (partner_id, id DESC);
CREATE INDEX partner_orders_partner_status_idx ON partner_orders (partner_id, status, id DESC);

-- Each line belongs to its partner order, keeps its shares of the discount and the points, and
-- counts what happened to its units; partial states are derived from these counts.
ALTER TABLE order_items ADD COLUMN partner_order_id BIGINT REFERENCES partner_orders (id);
ALTER TABLE order_items ADD COLUMN discount_share BIGINT NOT NULL DEFAULT 0 CHECK (discount_share >= 0);
ALTER TABLE order_items ADD COLUMN points_share BIGINT NOT NULL DEFAULT 0 CHECK (points_share >= 0);
ALTER TABLE order_items ADD COLUMN quantity_cancelled BIGINT NOT NULL DEFAULT 0 CHECK (quantity_cancelled >= 0);
ALTER TABLE order_items ADD COLUMN quantity_shipped BIGINT NOT NULL DEFAULT 0 CHECK (quantity_shipped >= 0);
ALTER TABLE order_items ADD COLUMN quantity_returned BIGINT NOT NULL DEFAULT 0 CHECK (quantity_returned >= 0);
ALTER TABLE order_items ADD CONSTRAINT order_items_quantities_check
    CHECK (quantity_cancelled + quantity_shipped <= quantity AND quantity_returned <= quantity_shipped);
ALTER TABLE order_items ADD CONSTRAINT order_items_shares_check
    CHECK (discount_share + points_share <= quantity * unit_price);
CREATE INDEX order_items_partner_order_idx ON order_items (partner_order_id);

-- A partner order's share of each way the order was paid. `amount` is allocated at placement;
-- `captured` is what was taken (the card charge confirmed, the points deducted) and `refunded`
-- what went back. Stored, never recomputed from totals: after a partial refund the shares are
-- no longer proportional.
CREATE TABLE payment_splits (
    partner_order_id  BIGINT NOT NULL REFERENCES partner_orders (id),
    method            TEXT   NOT NULL CHECK (method IN ('CARD', 'POINT')),
    payment_id        BIGINT REFERENCES payments (id),
    amount            BIGINT NOT NULL CHECK (amount > 0),
    captured          BIGINT NOT NULL DEFAULT 0 CHECK (captured BETWEEN 0 AND amount),
    refunded          BIGINT NOT NULL DEFAULT 0 CHECK (refunded BETWEEN 0 AND captured),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_order_id, method),
    CHECK ((method = 'CARD') = (payment_id IS NOT NULL))
);
CREATE INDEX payment_splits_payment_idx ON payment_splits (payment_id) WHERE payment_id IS NOT NULL;

-- Existing orders: their lines' shares by largest remainder (floor each share, then one more
-- unit to the largest remainders, ties to the lower product id), first the discount over the
-- line amounts, then the points over what is left of each line.
WITH lines AS (
    SELECT i.order_id, i.product_id, i.quantity * i.unit_price AS amount,
           sum(i.quantity * i.unit_price) OVER (PARTITION BY i.order_id) AS total,
           o.discount_amount AS d
      FROM order_items i JOIN orders o ON o.id = i.order_id
), exact AS (
    SELECT order_id, product_id,
           CASE WHEN total = 0 THEN 0 ELSE floor(d::numeric * amount / total)::bigint END AS base,
           CASE WHEN total = 0 THEN 0 ELSE (d::numeric * amount) % total END AS rem,
           d
      FROM lines
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY order_id ORDER BY rem DESC, product_id) AS rank,
              d - sum(base) OVER (PARTITION BY order_id) AS leftover
      FROM exact
)
UPDATE order_items i
   SET discount_share = r.base + CASE WHEN r.rank <= r.leftover THEN 1 ELSE 0 END
  FROM ranked r
 WHERE i.order_id = r.order_id AND i.product_id = r.product_id;

WITH lines AS (
    SELECT i.order_id, i.product_id, i.quantity * i.unit_price - i.discount_share AS amount,
           sum(i.quantity * i.unit_price - i.discount_share) OVER (PARTITION BY i.order_id) AS total,
           o.points_used AS d
      FROM order_items i JOIN orders o ON o.id = i.order_id
), exact AS (
    SELECT order_id, product_id,
           CASE WHEN total = 0 THEN 0 ELSE floor(d::numeric * amount / total)::bigint END AS base,
           CASE WHEN total = 0 THEN 0 ELSE (d::numeric * amount) % total END AS rem,
           d
      FROM lines
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY order_id ORDER BY rem DESC, product_id) AS rank,
              d - sum(base) OVER (PARTITION BY order_id) AS leftover
      FROM exact
)
UPDATE order_items i
   SET points_share = r.base + CASE WHEN r.rank <= r.leftover THEN 1 ELSE 0 END
  FROM ranked r
 WHERE i.order_id = r.order_id AND i.product_id = r.product_id;

-- One house partner order per existing goods order, in the state its order stands in.
INSERT INTO partner_orders (order_id, partner_id, status, items_total, discount_share,
                            points_share, card_share, created_at, updated_at, paid_at, cancelled_at)
SELECT o.id, 1,
       CASE o.status WHEN 'REFUNDED' THEN 'CANCELLED' ELSE o.status END,
       s.items_total, s.discount_share, s.points_share,
       s.items_total - s.discount_share - s.points_share,
       o.created_at, now(), o.paid_at, o.cancelled_at
  FROM orders o
  JOIN (SELECT order_id, sum(quantity * unit_price) AS items_total,
               sum(discount_share) AS discount_share, sum(points_share) AS points_share
          FROM order_items GROUP BY order_id) s ON s.order_id = o.id
 WHERE o.kind = 'GOODS';
UPDATE order_items i SET partner_order_id = p.id FROM partner_orders p WHERE p.order_id = i.order_id;
ALTER TABLE order_items ALTER COLUMN partner_order_id SET NOT NULL;

-- Their payment splits: points deducted at placement (and given back if the order was
-- cancelled); a card share captured when the order was paid (and refunded if the gateway
-- confirmed the refund).
INSERT INTO payment_splits (partner_order_id, method, amount, captured, refunded)
SELECT p.id, 'POINT', p.points_share, p.points_share,
       CASE WHEN p.status = 'CANCELLED' THEN p.points_share ELSE 0 END
  FROM partner_orders p WHERE p.points_share > 0;
INSERT INTO payment_splits (partner_order_id, method, payment_id, amount, captured, refunded)
SELECT p.id, 'CARD', pay.id, p.card_share,
       CASE WHEN o.paid_at IS NOT NULL THEN p.card_share ELSE 0 END,
       CASE WHEN o.paid_at IS NOT NULL AND pay.status = 'REFUNDED' THEN p.card_share ELSE 0 END
  FROM partner_orders p
  JOIN orders o ON o.id = p.order_id
  JOIN payments pay ON pay.order_id = o.id
 WHERE p.card_share > 0;
