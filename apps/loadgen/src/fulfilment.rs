//! The automatic purchase confirmation at scale: ROWS delivered partner orders, all due,
//! confirmed by the API's own pass (batches of 1000, each with its events and earned points),
//! against a plain UPDATE of the same rows' status, in the same run on the same database.

use std::time::{Duration, Instant};

use anyhow::ensure;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

use crate::harness::{bulk_users, connect_db, run_id};

/// Peak and current resident memory of this process, in MiB (Linux `/proc`).
pub(crate) fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

pub(crate) async fn auto_confirm(database_url: &str, rows: i64) -> anyhow::Result<()> {
    ensure!(rows > 0, "--rows must be positive");
    commerce_db::run_migrations(database_url, commerce_api::MIGRATIONS).await?;
    let mut db = connect_db(database_url).await?;
    let tag = run_id();
    let users = bulk_users(&mut db, &format!("{tag}-c-"), 1000, 0).await?;
    let started = Instant::now();
    // ROWS paid checkouts of one 1,000-won line each, delivered and due for confirmation.
    diesel::sql_query(
        "INSERT INTO orders (user_id, status, total_amount, discount_amount, final_amount,
                             points_used, payment_method, request_hash, paid_at)
         SELECT ($1::bigint[])[1 + g % 1000], 'PAID', 1000, 0, 1000, 1000, 'POINT', $2, now()
           FROM generate_series(1, $3) g",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(&users)
    .bind::<Text, _>(&tag)
    .bind::<BigInt, _>(rows)
    .execute(&mut db)
    .await?;
    diesel::sql_query(
        "INSERT INTO partner_orders (order_id, partner_id, status, items_total, discount_share,
                                     points_share, card_share, paid_at, confirm_due_at)
         SELECT id, 1, 'DELIVERED', 1000, 0, 1000, 0, now(), now() - interval '1 day'
           FROM orders WHERE request_hash = $1",
    )
    .bind::<Text, _>(&tag)
    .execute(&mut db)
    .await?;
    db.batch_execute("ANALYZE orders; ANALYZE partner_orders;")
        .await?;
    println!(
        "set up {rows} delivered partner orders in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The ceiling: one UPDATE of the same rows' status, nothing else.
    let started = Instant::now();
    let plain = diesel::sql_query(
        "UPDATE partner_orders p SET status = 'PURCHASE_CONFIRMED', confirmed_at = now(),
                confirm_due_at = NULL, updated_at = now()
           FROM orders o
          WHERE o.id = p.order_id AND o.request_hash = $1 AND p.status = 'DELIVERED'
            AND p.confirm_due_at <= now()",
    )
    .bind::<Text, _>(&tag)
    .execute(&mut db)
    .await?;
    let plain_time = started.elapsed();
    ensure!(plain as i64 == rows, "the plain UPDATE moved {plain} rows");
    diesel::sql_query(
        "UPDATE partner_orders p SET status = 'DELIVERED', confirmed_at = NULL,
                confirm_due_at = now() - interval '1 day'
           FROM orders o WHERE o.id = p.order_id AND o.request_hash = $1",
    )
    .bind::<Text, _>(&tag)
    .execute(&mut db)
    .await?;
    db.batch_execute("VACUUM ANALYZE partner_orders;").await?;

    // The API's pass: batches of 1000 under SKIP LOCKED, each with its events and points.
    let pool = commerce_db::pool(database_url, 2)?;
    let topics = commerce_api::infra::outbox::Topics {
        catalog: "catalog-events".into(),
        order: "order-events".into(),
    };
    let settings = commerce_api::domain::fulfilment::FulfilmentSettings {
        enabled: true,
        interval: Duration::from_secs(60),
        deliver_after: Duration::from_secs(3 * 86_400),
        confirm_after: Duration::from_secs(7 * 86_400),
        confirm_backstop: Duration::from_secs(28 * 86_400),
        earn_rate_bps: 100,
        return_window: Duration::from_secs(7 * 86_400),
        time_zone: chrono_tz::Asia::Seoul,
    };
    let (_, stop) = tokio::sync::watch::channel(false);
    let (peak_before, rss_before) = memory_mib();
    let started = Instant::now();
    let (_, confirmed) =
        commerce_api::domain::fulfilment::pass(&pool, &topics, &settings, &stop).await?;
    let pass_time = started.elapsed();
    let (peak_after, _) = memory_mib();
    ensure!(
        confirmed as i64 >= rows,
        "the pass confirmed {confirmed} of {rows}"
    );
    #[derive(diesel::QueryableByName)]
    struct Check {
        #[diesel(sql_type = BigInt)]
        confirmed: i64,
        #[diesel(sql_type = BigInt)]
        events: i64,
        #[diesel(sql_type = BigInt)]
        earned: i64,
    }
    let check: Check = diesel::sql_query(
        "SELECT (SELECT count(*) FROM partner_orders p JOIN orders o ON o.id = p.order_id
                  WHERE o.request_hash = $1 AND p.status = 'PURCHASE_CONFIRMED') AS confirmed,
                (SELECT count(*) FROM outbox WHERE event_type = 'PartnerOrderChanged'
                  AND envelope->'payload'->>'to' = 'PURCHASE_CONFIRMED') AS events,
                (SELECT count(*) FROM point_ledger l JOIN orders o ON o.id = l.order_id
                  WHERE o.request_hash = $1 AND l.kind = 'EARN' AND l.amount = 10) AS earned",
    )
    .bind::<Text, _>(&tag)
    .get_result(&mut db)
    .await?;
    ensure!(
        check.confirmed == rows && check.earned == rows && check.events >= rows,
        "confirmed {}, events {}, points earned {} of {rows}",
        check.confirmed,
        check.events,
        check.earned
    );
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!(
        "plain UPDATE of the same rows  {:>8.1} s  {:>10.0} rows/s",
        plain_time.as_secs_f64(),
        rate(plain_time)
    );
    println!(
        "automatic confirmation pass    {:>8.1} s  {:>10.0} rows/s  (each with its event and points)",
        pass_time.as_secs_f64(),
        rate(pass_time)
    );
    println!(
        "ratio pass/plain = {:.2}; loadgen resident memory {rss_before:.0} MiB before, peak {peak_before:.0} → {peak_after:.0} MiB",
        rate(pass_time) / rate(plain_time)
    );
    Ok(())
}
