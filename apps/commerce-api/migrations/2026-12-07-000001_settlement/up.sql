-- Partner settlement.
--
-- A purchase confirmation accrues one settlement line per partner order, in its transaction:
-- the commission policy in force on its business day, frozen with its rate, fee and amount, and
-- the day whose settlement pays it (`settle_on`: the day it was confirmed, or the first day not
-- yet closed when that one is). Closing a day is one transaction that sums the day's lines and
-- clawbacks per partner (through covering indexes) into one settlement each, with a ledger
-- entry, and marks the day closed; lines are never updated, so a day is settled once.

-- The platform's commission: versions per partner (partner_id NULL: the platform default), each
-- in force from its business day until the next version's. Versions are never changed; a new
-- one may only start on a day not yet closed.
CREATE TABLE commission_policies (
    id BIGSERIAL PRIMARY KEY,
    partner_id BIGINT REFERENCES partners (id),
    rate_bps INTEGER NOT NULL CHECK (rate_bps BETWEEN 0 AND 10000),
    fixed_fee BIGINT NOT NULL DEFAULT 0 CHECK (fixed_fee BETWEEN 0 AND 1000000000),
    valid_from DATE NOT NULL,
    created_by BIGINT REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (partner_id, valid_from)
);
INSERT INTO commission_policies (partner_id, rate_bps, fixed_fee, valid_from)
VALUES (NULL, 1000, 0, DATE '2000-01-01');
CREATE FUNCTION commission_policies_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'commission policy versions are kept as written: % refused', TG_OP;
END
$$;
CREATE TRIGGER commission_policies_kept BEFORE UPDATE OR DELETE ON commission_policies
    FOR EACH ROW EXECUTE FUNCTION commission_policies_kept();

-- A line's commission: `rate_bps` of `gross` rounded half to even (a single rate on a single
-- amount), plus the fixed fee, never more than `gross`. The one definition: accrual uses it, and
-- replaying a line with it gives its stored commission.
CREATE FUNCTION commission_of(gross BIGINT, rate_bps INTEGER, fixed_fee BIGINT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT least(gross,
                 (gross * rate_bps) / 10000
                 + CASE WHEN (gross * rate_bps) % 10000 * 2 > 10000
                          OR ((gross * rate_bps) % 10000 * 2 = 10000 AND (gross * rate_bps) / 10000 % 2 = 1)
                        THEN 1 ELSE 0 END
                 + fixed_fee)
$$;

-- Closed business days: a day's row is written in the transaction that settles it.
CREATE TABLE settlement_days (
    business_date DATE PRIMARY KEY,
    settlements INTEGER NOT NULL DEFAULT 0,
    lines BIGINT NOT NULL DEFAULT 0,
    gross BIGINT NOT NULL DEFAULT 0,
    commission BIGINT NOT NULL DEFAULT 0,
    clawbacks BIGINT NOT NULL DEFAULT 0,
    payable BIGINT NOT NULL DEFAULT 0,
    closed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One line per purchase-confirmed partner order, written once, at confirmation. Its partner is
-- its partner order's and its policy a version that is never deleted: no foreign key checks
-- them again (each cost a confirmation batch a lookup per line).
CREATE TABLE settlement_lines (
    partner_order_id BIGINT PRIMARY KEY REFERENCES partner_orders (id),
    partner_id BIGINT NOT NULL,
    settle_on DATE NOT NULL,
    confirmed_on DATE NOT NULL,
    policy_id BIGINT NOT NULL,
    rate_bps INTEGER NOT NULL,
    fixed_fee BIGINT NOT NULL,
    gross BIGINT NOT NULL CHECK (gross >= 0),
    commission BIGINT NOT NULL CHECK (commission BETWEEN 0 AND gross),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (settle_on >= confirmed_on)
);
-- What a day's settlement reads, and nothing else: an index-only scan in partner order (and a
-- settlement's lines, in partner order id order, for paging and the CSV download).
CREATE INDEX settlement_lines_day ON settlement_lines (settle_on, partner_id, partner_order_id)
    INCLUDE (gross, commission);
-- Lines confirmed on a day that was closed already: few, counted apart.
CREATE INDEX settlement_lines_late ON settlement_lines (settle_on, partner_id)
    WHERE confirmed_on < settle_on;

-- One settlement per partner per closed day (with lines or clawbacks that day). `payable` is
-- what the partner is paid for it; a shortfall (`deficit`) is carried into its next settlement.
-- No foreign keys: its partner is that of its lines' partner orders and of its clawbacks (each
-- checked when written), and its day's row is written in the same transaction; checking them
-- again cost the close a lookup per partner for nothing.
CREATE TABLE settlements (
    id BIGSERIAL PRIMARY KEY,
    partner_id BIGINT NOT NULL,
    business_date DATE NOT NULL,
    line_count INTEGER NOT NULL,
    late_count INTEGER NOT NULL,
    gross BIGINT NOT NULL,
    commission BIGINT NOT NULL,
    clawbacks BIGINT NOT NULL CHECK (clawbacks >= 0),
    carried BIGINT NOT NULL CHECK (carried >= 0),
    payable BIGINT NOT NULL CHECK (payable >= 0),
    deficit BIGINT NOT NULL CHECK (deficit >= 0),
    paid_out_at TIMESTAMPTZ,
    payout_reference TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (partner_id, business_date),
    CHECK (payable - deficit = gross - commission - clawbacks - carried),
    CHECK (payable = 0 OR deficit = 0),
    CHECK ((paid_out_at IS NULL) = (payout_reference IS NULL))
);
CREATE INDEX settlements_day ON settlements (business_date, partner_id);
-- Settlements that carried a shortfall forward: few, read to carry it into the next one.
CREATE INDEX settlements_deficit ON settlements (partner_id, business_date) WHERE deficit > 0;

-- The partner ledger's other entries, append-only: CLAWBACK (−, money a confirmed partner order
-- gave back at the gateway; netted by the settlement of `settle_on`) and PAYOUT (−, a settlement
-- paid out). A settlement is itself the partner's EARNING entry (its gross less commission): the
-- view `partner_ledger_entries` lists all three; a partner's balance is the sum of its entries.
CREATE TABLE partner_ledger (
    id BIGSERIAL PRIMARY KEY,
    partner_id BIGINT NOT NULL REFERENCES partners (id),
    kind TEXT NOT NULL CHECK (kind IN ('CLAWBACK', 'PAYOUT')),
    amount BIGINT NOT NULL,
    settlement_id BIGINT REFERENCES settlements (id),
    partner_order_id BIGINT REFERENCES partner_orders (id),
    settle_on DATE,
    refunded_to BIGINT,
    reference TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (CASE kind
        WHEN 'PAYOUT' THEN amount < 0 AND settlement_id IS NOT NULL AND reference IS NOT NULL
        WHEN 'CLAWBACK' THEN amount < 0 AND partner_order_id IS NOT NULL AND settle_on IS NOT NULL
                             AND refunded_to IS NOT NULL
    END)
);
CREATE UNIQUE INDEX partner_ledger_payout_once ON partner_ledger (settlement_id) WHERE kind = 'PAYOUT';
CREATE UNIQUE INDEX partner_ledger_payout_reference ON partner_ledger (reference) WHERE kind = 'PAYOUT';
CREATE UNIQUE INDEX partner_ledger_clawback_step ON partner_ledger (partner_order_id, refunded_to)
    WHERE kind = 'CLAWBACK';
CREATE INDEX partner_ledger_clawbacks_day ON partner_ledger (settle_on, partner_id) INCLUDE (amount)
    WHERE kind = 'CLAWBACK';
CREATE INDEX partner_ledger_partner ON partner_ledger (partner_id, id);

CREATE FUNCTION partner_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'partner_ledger is append-only: % refused', TG_OP;
END
$$;
CREATE TRIGGER partner_ledger_append_only BEFORE UPDATE OR DELETE ON partner_ledger
    FOR EACH ROW EXECUTE FUNCTION partner_ledger_append_only();

-- A settlement is written once; the only change it takes is its payout mark, once.
CREATE FUNCTION settlements_written_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR OLD.paid_out_at IS NOT NULL
       OR (OLD.partner_id, OLD.business_date, OLD.line_count, OLD.late_count, OLD.gross,
           OLD.commission, OLD.clawbacks, OLD.carried, OLD.payable, OLD.deficit)
          IS DISTINCT FROM
          (NEW.partner_id, NEW.business_date, NEW.line_count, NEW.late_count, NEW.gross,
           NEW.commission, NEW.clawbacks, NEW.carried, NEW.payable, NEW.deficit) THEN
        RAISE EXCEPTION 'settlement % is written once: % refused', OLD.id, TG_OP;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER settlements_written_once BEFORE UPDATE OR DELETE ON settlements
    FOR EACH ROW EXECUTE FUNCTION settlements_written_once();

CREATE VIEW partner_ledger_entries AS
    SELECT partner_id, 'EARNING' AS kind, gross - commission AS amount, id AS settlement_id,
           NULL::bigint AS partner_order_id, business_date AS settle_on, created_at
      FROM settlements WHERE line_count > 0
    UNION ALL
    SELECT partner_id, kind, amount, settlement_id, partner_order_id, settle_on, created_at
      FROM partner_ledger;

-- Partner orders confirmed before settlement existed are accrued under the platform default,
-- each on its confirmation day in the default business time zone (Asia/Seoul): the first
-- settlement run closes those days in order.
INSERT INTO settlement_lines (partner_order_id, partner_id, settle_on, confirmed_on, policy_id,
                              rate_bps, fixed_fee, gross, commission)
SELECT p.id, p.partner_id, d.day, d.day, c.id, c.rate_bps, c.fixed_fee, p.items_total,
       commission_of(p.items_total, c.rate_bps, c.fixed_fee)
  FROM partner_orders p
 CROSS JOIN LATERAL (SELECT (p.confirmed_at AT TIME ZONE 'Asia/Seoul')::date AS day) d
 CROSS JOIN (SELECT id, rate_bps, fixed_fee FROM commission_policies WHERE partner_id IS NULL) c
 WHERE p.status = 'PURCHASE_CONFIRMED' AND p.confirmed_at IS NOT NULL;
