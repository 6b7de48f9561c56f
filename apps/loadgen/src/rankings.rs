//! The ranking API at catalog scale: PRODUCTS products with DAYS days of activity, rollups done,
//! events flowing in through the broker; each route against the hello-world route in the same
//! run; the same routes with Redis unreachable; freshness; memory.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chrono::{Duration as Days, Utc};
use commerce_events::{Envelope, Event, OrderLine, OrderPlaced, ProductViewed};
use commerce_kafka::KafkaSettings;
use diesel::sql_types::{BigInt, Date};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::harness::{Report, run};
use crate::http;
use crate::pipeline::{fresh_database, peak_rss_kb, stop};

const LIVE_PORT: u16 = 18091;
const FALLBACK_PORT: u16 = 18092;

pub struct Options<'a> {
    pub server: &'a str,
    pub brokers: &'a str,
    pub hello: SocketAddr,
    pub products: i64,
    pub days: i64,
    pub connections: usize,
    pub seconds: u64,
    pub bin_dir: &'a str,
}

fn paid(order_id: i64, product_id: i64, quantity: i64) -> Envelope {
    Envelope::new(Event::OrderPaid(OrderPlaced {
        order_id,
        user_id: 1,
        lines: vec![OrderLine {
            product_id,
            quantity,
            unit_price: 1000,
        }],
        total_amount: quantity * 1000,
        discount_amount: 0,
        final_amount: quantity * 1000,
        payment_method: commerce_events::PaymentKind::Point,
    }))
}

async fn send(producer: &FutureProducer, topic: &str, e: &Envelope) -> anyhow::Result<()> {
    let payload = serde_json::to_vec(e)?;
    producer
        .send(
            FutureRecord::to(topic)
                .key(&e.aggregate_id.to_string())
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
    Ok(())
}

/// A child process stopped when dropped, also when the benchmark fails half-way.
struct Running(Option<Child>);

impl Running {
    fn child(&self) -> &Child {
        self.0.as_ref().expect("running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            stop(child);
        }
    }
}

fn collector(
    o: &Options<'_>,
    url: &str,
    port: u16,
    topic: &str,
    tag: u32,
    redis_url: Option<&str>,
) -> anyhow::Result<Running> {
    let mut cmd = Command::new(format!("{}/commerce-collector", o.bin_dir));
    cmd.arg("serve")
        .env("APP_PROFILE", "dev")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", url)
        .env("KAFKA_BROKERS", o.brokers)
        .env("CATALOG_TOPIC", format!("bench-rank-catalog-{tag}"))
        .env("ORDER_TOPIC", topic)
        .env("COLLECTOR_GROUP_ID", format!("bench-rank-{tag}"))
        .env("REDIS_KEY_PREFIX", format!("bench:{tag}:"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    if let Some(redis) = redis_url {
        cmd.env("REDIS_URL", redis)
            .env("COLLECTOR_CONSUME", "false");
    }
    let child = cmd
        .spawn()
        .context("starting target/release/commerce-collector (build it first)")?;
    Ok(Running(Some(child)))
}

async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut conn = http::Conn::open(addr).await?;
    let (status, body) = conn
        .send(&http::request("GET", &addr, path, None, None))
        .await?;
    ensure!(status == 200, "{path}: {status}");
    Ok(serde_json::from_slice(&body)?)
}

async fn wait_for(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(body) = get_json(addr, path).await
            && ok(&body)
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{path} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The path of request `i` on connection `c`.
type PathFn = Box<dyn Fn(usize, usize) -> String + Send + Sync>;

/// The routes measured: (label, path maker).
fn routes(products: i64) -> Vec<(String, PathFn)> {
    let mut out: Vec<(String, PathFn)> = Vec::new();
    for period in ["daily", "three_day", "weekly", "monthly"] {
        out.push((
            format!("top-20 {period}"),
            Box::new(move |_, _| format!("/api/v1/rankings?period={period}&size=20")),
        ));
    }
    out.push((
        "top-20 best sellers".into(),
        Box::new(|_, _| "/api/v1/rankings/best-sellers?size=20".into()),
    ));
    out.push((
        "daily ranks 40,001-40,020".into(),
        Box::new(|_, _| "/api/v1/rankings?period=daily&page=2000&size=20".into()),
    ));
    for period in ["daily", "three_day", "weekly", "monthly", "best_sellers"] {
        out.push((
            format!("product rank {period}"),
            Box::new(move |c, i| {
                let id = ((c as i64) * 7919 + (i as i64) * 104_729) % products + 1;
                format!("/api/v1/rankings/products/{id}?period={period}")
            }),
        ));
    }
    out
}

/// A one-product page of each current ranking.
fn current_pages() -> Vec<String> {
    let mut pages: Vec<String> = ["daily", "three_day", "weekly", "monthly"]
        .iter()
        .map(|p| format!("/api/v1/rankings?period={p}&size=1"))
        .collect();
    pages.push("/api/v1/rankings/best-sellers?size=1".into());
    pages
}

async fn measure(
    addr: SocketAddr,
    label: &str,
    path: &(dyn Fn(usize, usize) -> String + Send + Sync),
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Report> {
    // Requests are built ahead (the load generator shares the cores with the server).
    let built: Vec<Vec<Vec<u8>>> = (0..connections)
        .map(|c| {
            (0..4096)
                .map(|i| http::request("GET", &addr, &path(c, i), None, None))
                .collect()
        })
        .collect();
    let built = std::sync::Arc::new(built);
    run(
        label,
        addr,
        connections,
        Duration::from_secs(seconds),
        None,
        move |c, i| built[c][i % 4096].clone(),
    )
    .await
}

pub async fn rankings(o: Options<'_>) -> anyhow::Result<()> {
    let tag = std::process::id();
    let url = fresh_database(
        o.server,
        "commerce_rankings_bench",
        commerce_collector::MIGRATIONS,
    )
    .await?;
    let mut conn = AsyncPgConnection::establish(&url).await?;
    let today = commerce_collector::apply::business_date(Utc::now(), chrono_tz::Asia::Seoul);
    let first = today - Days::days(o.days - 1);
    let started = Instant::now();
    diesel::sql_query(
        // History, already folded into weeks and months (the rollup below computes them).
        "INSERT INTO product_metrics_daily (business_date, product_id, view_count, like_count, order_count, sales_quantity, sales_amount,
                                            folded_views, folded_likes, folded_orders, folded_quantity, folded_amount)
         SELECT day, p, v, l, o, q, a, v, l, o, q, a FROM (
             SELECT $1 + d::int AS day, p, (p * 7 + d * 13) % 200 AS v, (p * 3 + d) % 20 AS l, (p + d) % 10 AS o,
                    (p * 11 + d * 5) % 30 AS q, ((p * 11 + d * 5) % 30) * 1000 AS a
               FROM generate_series(0, $2 - 1) d, generate_series(1, $3) p) s"
    )
    .bind::<Date, _>(first)
    .bind::<BigInt, _>(o.days)
    .bind::<BigInt, _>(o.products)
    .execute(&mut conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO product_catalog (product_id, name, brand_name, price, version)
         SELECT p, 'product ' || p, 'brand ' || (p % 500), 1000 + p % 9000, 1 FROM generate_series(1, $1) p",
    )
    .bind::<BigInt, _>(o.products)
    .execute(&mut conn)
    .await?;
    // The all-time figures the fold would have made of that history (the best sellers' truth).
    conn.batch_execute(
        "INSERT INTO product_metrics (product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
         SELECT product_id, sum(folded_views), sum(folded_likes), sum(folded_orders),
                sum(folded_quantity), sum(folded_amount)
           FROM product_metrics_daily GROUP BY product_id",
    )
    .await?;
    conn.batch_execute("VACUUM ANALYZE product_metrics_daily, product_metrics, product_catalog")
        .await?;
    let weights = commerce_collector::ranking::Weights {
        view: 0.1,
        like: 0.2,
        order: 0.7,
    };
    commerce_collector::rollup::rollup_range(&mut conn, first, today, weights, |_, _| {}).await?;
    commerce_collector::rollup::carry_over(&mut conn, weights, today - Days::days(1), 0.1).await?;
    println!(
        "prepared {} daily rows ({} products x {} days), rollups and ranks in {:.1} s",
        o.products * o.days,
        o.products,
        o.days,
        started.elapsed().as_secs_f64()
    );

    let settings = KafkaSettings::new(o.brokers);
    let topic = format!("bench-rank-orders-{tag}");
    settings.ensure_topics(&[(topic.as_str(), 6)]).await?;
    let producer: FutureProducer = settings.producer_config().create()?;

    let live_addr = SocketAddr::from(([127, 0, 0, 1], LIVE_PORT));
    let live = collector(&o, &url, LIVE_PORT, &topic, tag, None)?;
    let started = Instant::now();
    for path in current_pages() {
        wait_for(live_addr, &path, Duration::from_secs(120), |b| {
            b["source"] == "live"
        })
        .await?;
    }
    println!(
        "collector serving live rankings {:.1} s after start (five sets of {} products built from PostgreSQL)",
        started.elapsed().as_secs_f64(),
        o.products
    );

    // Background activity: ~1,000 events/s through the broker while everything is measured.
    let flowing = {
        let (producer, topic, products) = (producer.clone(), topic.clone(), o.products);
        tokio::spawn(async move {
            let mut i: i64 = 0;
            loop {
                let tick = Instant::now();
                for _ in 0..100 {
                    i += 1;
                    let product = (i * 7919) % products + 1;
                    let e = if i % 4 == 0 {
                        paid(i, product, 1)
                    } else {
                        Envelope::new(Event::ProductViewed(ProductViewed {
                            product_id: product,
                            user_id: None,
                            count: 1,
                        }))
                    };
                    let payload = serde_json::to_vec(&e).expect("serialisable");
                    let _ = producer.send_result(
                        FutureRecord::to(&topic)
                            .key(&e.aggregate_id.to_string())
                            .payload(&payload),
                    );
                }
                tokio::time::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed())).await;
            }
        })
    };

    let hello_req = http::request("GET", &o.hello, "/hello", None, None);
    let hello = run(
        "hello-world /hello",
        o.hello,
        o.connections,
        Duration::from_secs(o.seconds),
        None,
        move |_, _| hello_req.clone(),
    )
    .await?;
    hello.print();
    for (label, path) in routes(o.products) {
        let report = measure(live_addr, &label, path.as_ref(), o.connections, o.seconds).await?;
        report.print();
        let ratio = report.rps() / hello.rps();
        println!(
            "  ratio to hello-world = {ratio:.2} (target >= 0.5); p99 {:.2} ms (target <= 5 ms)",
            report.percentile_ms(0.99)
        );
        crate::summary::Row::against_hello(
            &format!("{label}, {} products", o.products),
            &report,
            &hello,
            0.5,
            "≥ 0.5, p99 ≤ 5 ms",
        )
        .record();
    }

    // Freshness: a new product's first sale, from the producer to its rank in the day and in
    // the best sellers (each polled until first seen at rank 1).
    let watched = ["daily", "best_sellers"];
    let mut from_produce = vec![Vec::new(); watched.len()];
    let mut from_applied = vec![Vec::new(); watched.len()];
    for k in 0..50 {
        let product = o.products + 1000 + k;
        // Each sample outsells every product before it, so it is rank 1 once visible.
        let e = paid(10_000_000 + k, product, 100_000 + k * 1000);
        let sent = Instant::now();
        send(&producer, &topic, &e).await?;
        let deadline = sent + Duration::from_secs(30);
        let mut seen: Vec<Option<(f64, chrono::DateTime<Utc>)>> = vec![None; watched.len()];
        while seen.iter().any(Option::is_none) {
            for (i, period) in watched.iter().enumerate() {
                if seen[i].is_some() {
                    continue;
                }
                let path = format!("/api/v1/rankings/products/{product}?period={period}");
                if get_json(live_addr, &path).await?["rank"] == 1 {
                    seen[i] = Some((sent.elapsed().as_secs_f64() * 1000.0, Utc::now()));
                }
            }
            ensure!(Instant::now() < deadline, "product {product} never ranked");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        #[derive(diesel::QueryableByName)]
        struct At {
            #[diesel(sql_type = diesel::sql_types::Timestamptz)]
            handled_at: chrono::DateTime<Utc>,
        }
        let at: At = diesel::sql_query("SELECT handled_at FROM event_handled WHERE event_id = $1")
            .bind::<diesel::sql_types::Uuid, _>(e.event_id)
            .get_result(&mut conn)
            .await?;
        for (i, (elapsed, visible)) in seen.into_iter().flatten().enumerate() {
            from_produce[i].push(elapsed);
            from_applied[i]
                .push((visible - at.handled_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    };
    for (i, period) in watched.iter().enumerate() {
        println!(
            "freshness, produced -> visible in the {period} rank: p50 {:.0} ms, p99 {:.0} ms (includes the broker and the collector's batch wait)",
            pct(&mut from_produce[i], 0.5),
            pct(&mut from_produce[i], 0.99)
        );
        println!(
            "freshness, applied (batch transaction start) -> visible in the {period} rank: p50 {:.0} ms, p99 {:.0} ms (target p99 <= 1000 ms)",
            pct(&mut from_applied[i], 0.5),
            pct(&mut from_applied[i], 0.99)
        );
    }

    // Redis unreachable: a second collector on the same database, serving only.
    let fallback_addr = SocketAddr::from(([127, 0, 0, 1], FALLBACK_PORT));
    let fallback = collector(
        &o,
        &url,
        FALLBACK_PORT,
        &topic,
        tag,
        Some("redis://127.0.0.1:1"),
    )?;
    for path in current_pages() {
        // The first read materialises the current period's snapshot if the job has not yet.
        wait_for(fallback_addr, &path, Duration::from_secs(120), |b| {
            b["source"] == "snapshot"
        })
        .await?;
    }
    for (label, path) in routes(o.products) {
        let label = format!("{label} (Redis down)");
        let report = measure(
            fallback_addr,
            &label,
            path.as_ref(),
            o.connections,
            o.seconds,
        )
        .await?;
        report.print();
        println!(
            "  {:.0} req/s (target >= 500); p99 {:.2} ms (target <= 50 ms)",
            report.rps(),
            report.percentile_ms(0.99)
        );
        crate::summary::Row {
            route: &label,
            figure: crate::summary::rate(&report),
            ceiling: String::new(),
            ratio: None,
            target: "≥ 500 req/s, p99 ≤ 50 ms",
            met: report.rps() >= 500.0 && report.percentile_ms(0.99) <= 50.0,
        }
        .record();
    }
    flowing.abort();

    if let Some(kb) = peak_rss_kb(live.child()) {
        println!(
            "collector peak RSS with {} ranked products: {} MB",
            o.products,
            kb / 1024
        );
    }
    let cache = commerce_cache::Cache::new("redis://127.0.0.1:6379", &format!("bench:{tag}:"))?;
    let mut redis = cache.conn().await?;
    for &period in commerce_collector::ranking::Period::ALL {
        let ranking = commerce_collector::ranking::Ranking::of(period, today);
        let key = commerce_collector::ranking::live::key(&cache, ranking);
        let bytes: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut redis)
            .await?;
        let members: i64 = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut redis)
            .await?;
        println!(
            "Redis {ranking}: {members} members, {:.1} MB",
            bytes.unwrap_or(0) as f64 / 1e6
        );
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .arg(format!("{key}:ready"))
            .query_async(&mut redis)
            .await?;
    }
    drop(fallback);
    drop(live);
    Ok(())
}
