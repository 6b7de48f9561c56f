-- Refused once any alert was decided: reverting would lose what was sent to whom (and send it
-- again after a later upgrade).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM wishlist_occasions) THEN
        RAISE EXCEPTION 'wishlist alerts exist: reverting would lose them';
    END IF;
END $$;
DROP TRIGGER products_restocked ON products;
DROP FUNCTION wishlist_restock_occasion();
DROP INDEX products_sale_starts_idx;
ALTER TABLE wishlist_items DROP COLUMN restock_alerted_at;
DROP TABLE wishlist_alert_pace;
DROP TABLE wishlist_alerts;
DROP TABLE wishlist_occasions;
