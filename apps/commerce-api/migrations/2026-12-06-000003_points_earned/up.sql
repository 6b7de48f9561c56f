-- Points earned on purchase confirmation: a confirmed partner order credits its customer a rate
-- of what was paid for it (ledger EARN, naming the partner order), once; EARN_REVERSED takes
-- them back, once, should a confirmed partner order be adjusted.
ALTER TABLE point_ledger DROP CONSTRAINT point_ledger_kind_check;
ALTER TABLE point_ledger ADD CONSTRAINT point_ledger_kind_check
    CHECK (kind IN ('CHARGE', 'USE', 'REFUND', 'TOP_UP', 'TOP_UP_REVERSED', 'GRANT', 'EARN',
                    'EARN_REVERSED'));
ALTER TABLE point_ledger ADD COLUMN partner_order_id BIGINT REFERENCES partner_orders (id);
ALTER TABLE point_ledger ADD CONSTRAINT point_ledger_earn_check
    CHECK ((kind IN ('EARN', 'EARN_REVERSED')) = (partner_order_id IS NOT NULL));
CREATE UNIQUE INDEX point_ledger_earn_once ON point_ledger (partner_order_id, kind)
    WHERE kind IN ('EARN', 'EARN_REVERSED');
