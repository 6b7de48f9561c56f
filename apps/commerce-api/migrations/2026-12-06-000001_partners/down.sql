-- Reverts the marketplace tables. Only for a database where nothing but the house partner sold:
-- products, brands and partner orders of other partners would lose their owner, so this refuses
-- (by the first statement's error) when any exist.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM partners WHERE id <> 1) THEN
        RAISE EXCEPTION 'partners other than the house exist; reverting would lose their ownership';
    END IF;
END $$;
DROP TABLE payment_splits;
ALTER TABLE order_items DROP CONSTRAINT order_items_shares_check;
ALTER TABLE order_items DROP CONSTRAINT order_items_quantities_check;
ALTER TABLE order_items DROP COLUMN quantity_returned;
ALTER TABLE order_items DROP COLUMN quantity_shipped;
ALTER TABLE order_items DROP COLUMN quantity_cancelled;
ALTER TABLE order_items DROP COLUMN points_share;
ALTER TABLE order_items DROP COLUMN discount_share;
ALTER TABLE order_items DROP COLUMN partner_order_id;
DROP TABLE partner_orders;
ALTER TABLE products DROP COLUMN partner_id;
ALTER TABLE brands DROP COLUMN partner_id;
ALTER TABLE users DROP CONSTRAINT users_partner_check;
ALTER TABLE users DROP COLUMN partner_id;
ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('USER', 'ADMIN'));
DROP TABLE partners;
