-- The payments themselves keep their current state; only their history goes.
DROP TABLE payment_events;
