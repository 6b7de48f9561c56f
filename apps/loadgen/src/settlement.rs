//! The daily settlement at scale: ORDERS purchase-confirmed partner orders of PARTNERS partners
//! on one business day (accrued by the API's own accrual, half the partners on policies of
//! their own, a thousand clawbacks), closed by the API's `settle_day` against its ceiling: a
//! plain `INSERT … SELECT … GROUP BY` of the same rows. On a fresh database of its own, rounds
//! alternating, medians reported. Also two workers, each settling half the partners on its own
//! connection, to see whether sharing a day between instances pays on this machine.

use std::time::{Duration, Instant};

use anyhow::ensure;
use chrono::NaiveDate;
use diesel::sql_types::{Array, BigInt, Date, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::fulfilment::memory_mib;
use crate::harness::{bulk_users, connect_db, run_id};

const ROUNDS: usize = 3;

/// The ceiling's statement: the same rows, grouped per partner, inserted.
const CEILING: &str = "INSERT INTO settlement_ceiling
    SELECT partner_id, count(*), sum(gross), sum(commission)
      FROM settlement_lines WHERE settle_on = $1 GROUP BY partner_id";

/// One worker's share of the ceiling: partners in `[$2, $3)`.
const CEILING_PART: &str = "INSERT INTO settlement_ceiling
    SELECT partner_id, count(*), sum(gross), sum(commission)
      FROM settlement_lines WHERE settle_on = $1 AND partner_id >= $2 AND partner_id < $3
     GROUP BY partner_id";

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

pub(crate) async fn settlement(server: &str, orders: i64, partners: i64) -> anyhow::Result<()> {
    ensure!(
        orders > 0 && partners > 0,
        "--orders and --partners must be positive"
    );
    // A fresh database: the figures are for a day's rows just written (and vacuumed, as
    // autovacuum would have over the day), nothing left from an earlier run.
    let name = "commerce_settlement_bench";
    let mut admin = connect_db(&format!("{server}/postgres")).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let url = format!("{server}/{name}");
    commerce_db::run_migrations(&url, commerce_api::MIGRATIONS).await?;
    let mut db = connect_db(&url).await?;
    let day = NaiveDate::from_ymd_opt(2026, 11, 30).expect("a date");
    let started = Instant::now();
    let ids = setup(&mut db, orders, partners, day).await?;
    println!(
        "set up {orders} confirmed partner orders of {partners} partners in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let topics = commerce_api::infra::outbox::Topics {
        catalog: "catalog-events".into(),
        order: "order-events".into(),
    };
    let (mut ceiling, mut serial, mut parallel, mut pair) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (peak_before, rss_before) = memory_mib();
    let mut written = None;
    for _ in 0..ROUNDS {
        // The ceiling: the better of the planner's own plan and the covering-index plan.
        reset(&mut db, &ids).await?;
        let t = Instant::now();
        let n = diesel::sql_query(CEILING)
            .bind::<Date, _>(day)
            .execute(&mut db)
            .await?;
        let planner = t.elapsed();
        ensure!(n as i64 == partners, "the ceiling wrote {n} rows");
        db.batch_execute("TRUNCATE settlement_ceiling").await?;
        let t = Instant::now();
        diesel_async::AsyncConnection::transaction::<_, anyhow::Error, _>(&mut db, async |conn| {
            conn.batch_execute(
                "SET LOCAL jit = off; SET LOCAL enable_seqscan = off; SET LOCAL enable_hashagg = off",
            )
                .await?;
            // Its own statement text: a prepared statement keeps the plan it was made with.
            diesel::sql_query(format!("{CEILING} -- covering index"))
                .bind::<Date, _>(day)
                .execute(conn)
                .await?;
            Ok(())
        })
        .await?;
        ceiling.push(planner.min(t.elapsed()));

        for (workers, times) in [(0, &mut serial), (2, &mut parallel)] {
            reset(&mut db, &ids).await?;
            let t = Instant::now();
            let done = commerce_api::domain::settlement::settle_day(
                &mut db,
                &topics,
                day,
                commerce_api::domain::settlement::Workers(workers),
            )
            .await?;
            times.push(t.elapsed());
            ensure!(
                !done.already_closed && done.lines == orders && done.settlements == partners,
                "settled {done:?}"
            );
            written = Some(done);
        }

        // Two connections, half the partners each (what sharing a day between two instances
        // could split, each in a transaction of its own).
        diesel::sql_query("TRUNCATE settlement_ceiling")
            .execute(&mut db)
            .await?;
        let mid = 2 + partners / 2;
        let mut other = connect_db(&url).await?;
        let t = Instant::now();
        let (a, b) = tokio::join!(
            diesel::sql_query(CEILING_PART)
                .bind::<Date, _>(day)
                .bind::<BigInt, _>(0)
                .bind::<BigInt, _>(mid)
                .execute(&mut db),
            diesel::sql_query(CEILING_PART)
                .bind::<Date, _>(day)
                .bind::<BigInt, _>(mid)
                .bind::<BigInt, _>(i64::MAX)
                .execute(&mut other),
        );
        pair.push(t.elapsed());
        ensure!(
            (a? + b?) as i64 == partners,
            "the two workers missed partners"
        );
    }
    let (peak_after, _) = memory_mib();
    let done = written.expect("rounds ran");
    verify(&mut db, day, orders).await?;
    let (c, s, w, p) = (
        median(ceiling),
        median(serial),
        median(parallel),
        median(pair),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ratio = |d: Duration| d.as_secs_f64() / c.as_secs_f64();
    println!(
        "ceiling: INSERT … SELECT … GROUP BY of the same rows         {:>6.0} ms",
        ms(c)
    );
    println!(
        "settle_day, one session (the default)   {:>6.0} ms = {:.2}× the ceiling",
        ms(s),
        ratio(s)
    );
    println!(
        "settle_day, two parallel workers (SETTLEMENT_PARALLEL_WORKERS=2) {:>6.0} ms = {:.2}× the ceiling",
        ms(w),
        ratio(w)
    );
    println!(
        "the ceiling split over two connections, half the partners each {:>6.0} ms = {:.2}× the ceiling",
        ms(p),
        ratio(p)
    );
    println!(
        "{} settlements, {} lines, gross {}, commission {}, clawbacks {}, payable {}; medians of {ROUNDS} rounds",
        done.settlements, done.lines, done.gross, done.commission, done.clawbacks, done.payable
    );
    println!(
        "loadgen resident memory {rss_before:.0} MiB before the rounds, peak {peak_before:.0} → {peak_after:.0} MiB"
    );
    Ok(())
}

/// ORDERS confirmed partner orders on `day`, spread over PARTNERS partners (ids 2…), each
/// accrued by the API's accrual; half the partners have a policy of their own. A thousand of
/// them were charged back after confirmation. Returns the clawed-back partner orders.
async fn setup(
    db: &mut AsyncPgConnection,
    orders: i64,
    partners: i64,
    day: NaiveDate,
) -> anyhow::Result<Vec<i64>> {
    let tag = run_id();
    let users = bulk_users(db, &format!("{tag}-s-"), 1000, 0).await?;
    diesel::sql_query(
        "INSERT INTO partners (name, business_number)
         SELECT 'partner ' || g, lpad((g / 100000)::text, 3, '0') || '-' || lpad((g / 1000 % 100)::text, 2, '0')
                || '-' || lpad((g % 100000)::text, 5, '0')
           FROM generate_series(1, $1) g",
    )
    .bind::<BigInt, _>(partners)
    .execute(db)
    .await?;
    diesel::sql_query(
        "INSERT INTO commission_policies (partner_id, rate_bps, fixed_fee, valid_from)
         SELECT id, 500 + id % 700, (id % 3) * 100, DATE '2026-01-01'
           FROM partners WHERE id > 1 AND id % 2 = 0",
    )
    .execute(db)
    .await?;
    // Confirmed at noon of `day` in Seoul.
    diesel::sql_query(
        "INSERT INTO orders (user_id, status, total_amount, discount_amount, final_amount,
                             points_used, payment_method, request_hash, paid_at)
         SELECT ($1::bigint[])[1 + g % 1000], 'PAID', 1000 + (g * 7919) % 99000, 0,
                1000 + (g * 7919) % 99000, 1000 + (g * 7919) % 99000, 'POINT', $2, now()
           FROM generate_series(1, $3) g",
    )
    .bind::<Array<BigInt>, _>(&users)
    .bind::<Text, _>(&tag)
    .bind::<BigInt, _>(orders)
    .execute(db)
    .await?;
    diesel::sql_query(
        "INSERT INTO partner_orders (order_id, partner_id, status, items_total, discount_share,
                                     points_share, card_share, paid_at, confirmed_at)
         SELECT id, 2 + id % $2, 'PURCHASE_CONFIRMED', final_amount, 0, final_amount, 0, now(),
                ($3::date + time '12:00') AT TIME ZONE 'Asia/Seoul'
           FROM orders WHERE request_hash = $1",
    )
    .bind::<Text, _>(&tag)
    .bind::<BigInt, _>(partners)
    .bind::<Date, _>(day)
    .execute(db)
    .await?;
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let ids: Vec<i64> = diesel::sql_query("SELECT id FROM partner_orders ORDER BY id")
        .load::<Id>(db)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    // The confirmations' own accrual, a thousand at a time as the automatic pass does.
    diesel_async::AsyncConnection::transaction::<_, anyhow::Error, _>(db, async |conn| {
        for chunk in ids.chunks(1000) {
            commerce_api::domain::settlement::accrue(conn, chunk, chrono_tz::Asia::Seoul).await?;
        }
        Ok(())
    })
    .await?;
    let clawed: Vec<i64> = ids
        .iter()
        .step_by(ids.len().div_ceil(1000).max(1))
        .copied()
        .collect();
    db.batch_execute("VACUUM ANALYZE settlement_lines, partner_orders")
        .await?;
    db.batch_execute(
        "CREATE TABLE settlement_ceiling (partner_id BIGINT, lines BIGINT, gross NUMERIC, commission NUMERIC)",
    )
    .await?;
    Ok(clawed)
}

/// Empties what a round writes and puts the clawbacks back (the ledger refuses deletes; a bench
/// database may be truncated).
async fn reset(db: &mut AsyncPgConnection, clawed: &[i64]) -> anyhow::Result<()> {
    db.batch_execute(
        "TRUNCATE settlement_ceiling, partner_ledger, settlements, settlement_days, outbox",
    )
    .await?;
    diesel::sql_query(
        "INSERT INTO partner_ledger (partner_id, kind, amount, partner_order_id, settle_on, refunded_to)
         SELECT l.partner_id, 'CLAWBACK', -(l.gross - l.commission), l.partner_order_id, l.settle_on, l.gross
           FROM settlement_lines l WHERE l.partner_order_id = ANY($1)",
    )
    .bind::<Array<BigInt>, _>(clawed)
    .execute(db)
    .await?;
    db.batch_execute("VACUUM ANALYZE partner_ledger, settlements, settlement_days, outbox")
        .await?;
    Ok(())
}

/// The settlement equals a brute-force sum of the lines and clawbacks, per partner.
async fn verify(db: &mut AsyncPgConnection, day: NaiveDate, orders: i64) -> anyhow::Result<()> {
    #[derive(diesel::QueryableByName)]
    struct Off {
        #[diesel(sql_type = BigInt)]
        off: i64,
        #[diesel(sql_type = BigInt)]
        lines: i64,
    }
    let check: Off = diesel::sql_query(
        "SELECT (SELECT count(*) FROM settlements s
                  WHERE (s.gross, s.commission, s.line_count::bigint, s.clawbacks) IS DISTINCT FROM
                        ((SELECT sum(gross)::bigint FROM settlement_lines l WHERE l.partner_id = s.partner_id AND l.settle_on = $1),
                         (SELECT sum(commission)::bigint FROM settlement_lines l WHERE l.partner_id = s.partner_id AND l.settle_on = $1),
                         (SELECT count(*) FROM settlement_lines l WHERE l.partner_id = s.partner_id AND l.settle_on = $1),
                         (SELECT coalesce(-sum(amount), 0)::bigint FROM partner_ledger c
                           WHERE c.kind = 'CLAWBACK' AND c.partner_id = s.partner_id AND c.settle_on = $1))) AS off,
                (SELECT sum(line_count)::bigint FROM settlements) AS lines",
    )
    .bind::<Date, _>(day)
    .get_result(db)
    .await?;
    ensure!(
        check.off == 0 && check.lines == orders,
        "{} settlements differ from their lines; {} lines settled of {orders}",
        check.off,
        check.lines
    );
    Ok(())
}
