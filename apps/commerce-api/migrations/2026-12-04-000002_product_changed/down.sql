DROP TRIGGER products_changed ON products;
DROP FUNCTION notify_product_changed();
