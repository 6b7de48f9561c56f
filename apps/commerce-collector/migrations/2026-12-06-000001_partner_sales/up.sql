-- Confirmed sales per partner: purchase-confirmed partner orders, their gross merchandise value
-- (the sum of their lines) and what was paid for them (less their share of the discount), per
-- business day, ISO week and calendar month of the confirmation. Applied in the batch's one
-- statement like every other figure, so each confirmation counts once.
CREATE TABLE partner_sales (
    period            TEXT        NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly')),
    period_start      DATE        NOT NULL,
    partner_id        BIGINT      NOT NULL,
    confirmed_orders  BIGINT      NOT NULL,
    gmv               BIGINT      NOT NULL,
    paid_amount       BIGINT      NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (period, period_start, partner_id)
);
-- A period's partners by GMV.
CREATE INDEX partner_sales_gmv_idx ON partner_sales (period, period_start, gmv DESC, partner_id);
