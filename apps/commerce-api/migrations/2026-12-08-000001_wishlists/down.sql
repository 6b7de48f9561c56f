-- Refused while any customer has a wishlist: reverting would lose them.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM wishlist_items) THEN
        RAISE EXCEPTION 'wishlists exist: reverting would lose them';
    END IF;
END $$;
DROP TABLE wishlist_items;
