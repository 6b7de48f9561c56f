-- Product metrics and their rollups. Counters are signed running sums: likes and cancellations
-- subtract, so a figure always equals the sum of the events applied.

CREATE TABLE product_metrics (
    product_id      BIGINT      PRIMARY KEY,
    view_count      BIGINT      NOT NULL DEFAULT 0,
    like_count      BIGINT      NOT NULL DEFAULT 0,
    order_count     BIGINT      NOT NULL DEFAULT 0,
    sales_quantity  BIGINT      NOT NULL DEFAULT 0,
    sales_amount    BIGINT      NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Per business date (in the configured business time zone).
CREATE TABLE product_metrics_daily (
    business_date   DATE        NOT NULL,
    product_id      BIGINT      NOT NULL,
    view_count      BIGINT      NOT NULL DEFAULT 0,
    like_count      BIGINT      NOT NULL DEFAULT 0,
    order_count     BIGINT      NOT NULL DEFAULT 0,
    sales_quantity  BIGINT      NOT NULL DEFAULT 0,
    sales_amount    BIGINT      NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (business_date, product_id)
);
-- The nightly rollup re-reads only the days changed since its last run.
CREATE INDEX product_metrics_daily_updated_idx ON product_metrics_daily (updated_at);

-- ISO weeks (Monday start) and calendar months, rolled up from the daily table.
CREATE TABLE product_metrics_weekly (
    week_start      DATE   NOT NULL,
    product_id      BIGINT NOT NULL,
    view_count      BIGINT NOT NULL,
    like_count      BIGINT NOT NULL,
    order_count     BIGINT NOT NULL,
    sales_quantity  BIGINT NOT NULL,
    sales_amount    BIGINT NOT NULL,
    PRIMARY KEY (week_start, product_id)
);

CREATE TABLE product_metrics_monthly (
    month_start     DATE   NOT NULL,
    product_id      BIGINT NOT NULL,
    view_count      BIGINT NOT NULL,
    like_count      BIGINT NOT NULL,
    order_count     BIGINT NOT NULL,
    sales_quantity  BIGINT NOT NULL,
    sales_amount    BIGINT NOT NULL,
    PRIMARY KEY (month_start, product_id)
);

-- The collector's own projection of the catalog (it never reads the API's database), kept from
-- ProductCreated/ProductUpdated and guarded by version.
CREATE TABLE product_catalog (
    product_id  BIGINT      PRIMARY KEY,
    name        TEXT        NOT NULL,
    brand_name  TEXT        NOT NULL,
    price       BIGINT      NOT NULL,
    version     BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Materialized top-100 per period, written by the rollup.
CREATE TABLE ranking_top (
    period        TEXT             NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly')),
    period_start  DATE             NOT NULL,
    rank          INTEGER          NOT NULL,
    product_id    BIGINT           NOT NULL,
    score         DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (period, period_start, rank)
);

-- Share of yesterday's score carried into the new day's real-time ranking.
CREATE TABLE ranking_carryover (
    business_date  DATE             NOT NULL,
    product_id     BIGINT           NOT NULL,
    score          DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (business_date, product_id)
);

-- Scheduled jobs run once per period across all collector instances: the instance whose
-- insert succeeds runs it (in the spirit of ShedLock).
CREATE TABLE scheduled_job_runs (
    job          TEXT        NOT NULL,
    period_key   TEXT        NOT NULL,
    instance     TEXT        NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    PRIMARY KEY (job, period_key)
);
