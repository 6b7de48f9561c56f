//! Wishlist alerts at scale: one product with SUBSCRIBERS customers waiting for it comes back in
//! stock, and the API's planner and sender (run here, on a database of their own, the send rate
//! off) tell every one of them through a real SMTP server. The ceiling is the same SMTP client
//! handing the same number of messages of the same size to the same server over the same
//! connections, with no database at all: what the server and the client take by themselves.
//!
//! The server is the development one (`supports/dev/smtp-sink.py`, aiosmtpd writing a Maildir,
//! started by the test kit's `SmtpSink`), a fresh one for each phase on an empty Maildir, since
//! its cost per message grows with the directory; every message it stored is counted at the end
//! of each phase.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use commerce_api::domain::alerts::{self, AlertSettings};
use commerce_api::infra::limits::RateSpec;
use commerce_api::infra::mail::{Mailer, Security, SmtpSettings};
use commerce_testkit::SmtpSink;
use diesel::sql_types::{Array, BigInt};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use futures::StreamExt as _;

use crate::harness::{bulk_users, connect_db, run_id};

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

pub(crate) async fn alerts(
    database_url: &str,
    subscribers: usize,
    connections: usize,
) -> anyhow::Result<()> {
    ensure!(subscribers > 0, "--subscribers must be positive");
    commerce_db::run_migrations(database_url, commerce_api::MIGRATIONS).await?;
    let mut db = connect_db(database_url).await?;
    let tag = run_id();
    let sink = SmtpSink::start().await;
    let smtp_settings = SmtpSettings {
        host: "127.0.0.1".into(),
        port: sink.port,
        security: Security::None,
        ca_file: None,
        credentials: None,
        hello_name: "loadgen".into(),
        timeout: Duration::from_secs(10),
    };

    // The ceiling: the same client, the same server, messages of the alerts' size, no database.
    let mailer = Arc::new(Mailer::new(smtp_settings.clone())?);
    let sample = sample_message()?;
    let envelope = sample.envelope().clone();
    let bytes = Arc::new(sample.formatted());
    let started = Instant::now();
    let sent = futures::stream::iter(0..subscribers)
        .map(|_| {
            let (mailer, envelope, bytes) = (mailer.clone(), envelope.clone(), bytes.clone());
            async move { mailer.send(&envelope, &bytes).await.is_ok() }
        })
        .buffer_unordered(connections)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let ceiling_time = started.elapsed();
    mailer.close().await;
    ensure!(
        sent == subscribers && sink.count() == subscribers,
        "the SMTP server took {sent} of {subscribers} and stored {}",
        sink.count()
    );
    drop(sink);
    let sink = SmtpSink::start().await;
    let smtp_settings = SmtpSettings {
        port: sink.port,
        ..smtp_settings
    };

    // SUBSCRIBERS customers waiting for one sold-out product, in subscription order.
    let started = Instant::now();
    let users = bulk_users(&mut db, &format!("{tag}-w-"), subscribers, 0).await?;
    let brand: Id =
        diesel::sql_query("INSERT INTO brands (name, partner_id) VALUES ('Bench', 1) RETURNING id")
            .get_result(&mut db)
            .await?;
    let product: Id = diesel::sql_query(
        "INSERT INTO products (brand_id, partner_id, name, description, price, stock)
         VALUES ($1, 1, 'Bench item', '', 1000, 0) RETURNING id",
    )
    .bind::<BigInt, _>(brand.id)
    .get_result(&mut db)
    .await?;
    diesel::sql_query(
        "INSERT INTO wishlist_items (user_id, product_id, created_at)
         SELECT u, $2, now() - interval '1 day' + o * interval '1 millisecond'
           FROM unnest($1::bigint[]) WITH ORDINALITY AS w(u, o)",
    )
    .bind::<Array<BigInt>, _>(&users)
    .bind::<BigInt, _>(product.id)
    .execute(&mut db)
    .await?;
    db.batch_execute("ANALYZE wishlist_items; ANALYZE users;")
        .await?;
    println!(
        "set up {subscribers} subscribers in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The restock, then the API's planner and sender until every subscriber is told.
    let settings = AlertSettings {
        enabled: true,
        // The production default: the planner's backlog gauges count the queue each pass.
        interval: Duration::from_secs(1),
        drop_lead: Duration::from_secs(3600),
        restock_quiet: Duration::from_secs(3600),
        send_rate: RateSpec::OFF,
        connections,
        max_attempts: 5,
        retry_base: Duration::from_secs(1),
        from: "Commerce <alerts@commerce.localhost>".parse()?,
        product_url: "http://127.0.0.1:8080/api/v1/products/{id}".into(),
        time_zone: chrono_tz::Asia::Seoul,
        smtp: smtp_settings,
    };
    let pool = commerce_db::pool(database_url, connections + 4)?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    diesel::sql_query("UPDATE products SET stock = 10 WHERE id = $1")
        .bind::<BigInt, _>(product.id)
        .execute(&mut db)
        .await?;
    let planner = tokio::spawn(alerts::run_planner(
        pool.clone(),
        settings.clone(),
        stop.clone(),
    ));
    let sender = tokio::spawn(alerts::run_sender(pool.clone(), settings, stop));
    let count = |status: &'static str| {
        diesel::sql_query(
            "SELECT count(*) AS n FROM wishlist_alerts a JOIN wishlist_occasions o
                 ON o.id = a.occasion_id
              WHERE o.product_id = $1 AND a.status = $2",
        )
        .bind::<BigInt, _>(product.id)
        .bind::<diesel::sql_types::Text, _>(status)
    };
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let sent: Count = count("SENT").get_result(&mut db).await?;
        if sent.n as usize >= subscribers {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{} of {subscribers} sent within an hour",
            sent.n
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pipeline_time = started.elapsed();
    let _ = stop_tx.send(true);
    let _ = tokio::join!(planner, sender);
    let queued: Count = count("QUEUED").get_result(&mut db).await?;
    let all: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM wishlist_alerts a JOIN wishlist_occasions o ON o.id = a.occasion_id
          WHERE o.product_id = $1",
    )
    .bind::<BigInt, _>(product.id)
    .get_result(&mut db)
    .await?;
    ensure!(
        queued.n == 0 && all.n as usize == subscribers && sink.count() == subscribers,
        "{} alerts for {subscribers} subscribers, {} still queued, {} messages stored",
        all.n,
        queued.n,
        sink.count()
    );

    let rate = |d: Duration| subscribers as f64 / d.as_secs_f64();
    println!(
        "SMTP alone (same client, server, size)  {:>8.1} s  {:>8.0} messages/s",
        ceiling_time.as_secs_f64(),
        rate(ceiling_time)
    );
    println!(
        "restock → every subscriber told         {:>8.1} s  {:>8.0} alerts/s  (fan-out, claims, marks and SMTP)",
        pipeline_time.as_secs_f64(),
        rate(pipeline_time)
    );
    println!(
        "ratio alerts/ceiling = {:.2} ({subscribers} subscribers, {connections} SMTP connections)",
        rate(pipeline_time) / rate(ceiling_time)
    );
    Ok(())
}

/// A message of a restock alert's size and shape.
fn sample_message() -> anyhow::Result<lettre::Message> {
    let body = "Hello bench,\n\nBench item, on your wishlist, is back in stock.\n\nOnly 10 units came \
                back and 100000 customers are waiting for it: first come, first served.\n\n\
                http://127.0.0.1:8080/api/v1/products/1\n\n-- \nYou get this message because \
                Bench item is on your wishlist. Remove it from your wishlist to hear no more \
                about it.\n";
    Ok(lettre::Message::builder()
        .from("Commerce <alerts@commerce.localhost>".parse()?)
        .to("bench <bench@example.com>".parse()?)
        .subject("Back in stock: Bench item")
        .message_id(Some("<wishlist-alert-0@commerce.localhost>".into()))
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(body.to_owned())?)
}
