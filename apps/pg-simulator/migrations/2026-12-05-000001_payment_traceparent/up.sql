-- The trace context of the request that created a payment, so its callback continues the trace.
ALTER TABLE payments ADD COLUMN traceparent text;
