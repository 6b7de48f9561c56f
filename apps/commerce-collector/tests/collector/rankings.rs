//! The ranking API serves exactly the ranking's definition, computed by brute force over
//! `product_metrics_daily`, for every period (day, three days, week, month) and the best
//! sellers, from Redis (live) and from PostgreSQL (snapshot): at several dates, on every page
//! and for every product, with ties, negative scores and carry-over; with Redis stopped, after
//! Redis lost its keys, and from two collectors at once; and at 100,000 products.

use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use commerce_collector::apply::{apply_batch, business_date};
use commerce_collector::ranking::{Period, Ranking, Weights};
use commerce_events::{Envelope, Event, LikeChanged, OrderLine, OrderPlaced, ProductViewed};
use diesel::sql_types::{BigInt, Date, Double};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde_json::Value;

use crate::support::{Pipeline, get_json, metric};

const TZ: Tz = chrono_tz::Asia::Seoul;
const WEIGHTS: Weights = Weights {
    view: 0.1,
    like: 0.2,
    order: 0.7,
};
const PRODUCTS: i64 = 40;
const PAGE: usize = 7;

fn today() -> NaiveDate {
    business_date(Utc::now(), TZ)
}

/// Days with activity: today, yesterday, earlier this month or last, and a past month.
fn active_days() -> Vec<NaiveDate> {
    let t = today();
    [0, 1, 3, 9, 40]
        .map(|d| t - chrono::Duration::days(d))
        .to_vec()
}

/// The dates the API is asked about (every period containing them is checked).
fn asked_dates() -> Vec<NaiveDate> {
    let t = today();
    [0, 1, 9, 40]
        .map(|d| t - chrono::Duration::days(d))
        .to_vec()
}

fn at(day: NaiveDate) -> chrono::DateTime<Utc> {
    TZ.from_local_datetime(&day.and_hms_opt(12, 0, 0).unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// Activity chosen for ties (small figures, many equal), negative scores (unlikes without a
/// like) and products absent on some days.
fn events() -> Vec<Envelope> {
    let mut out = Vec::new();
    for (n, day) in active_days().into_iter().enumerate() {
        let n = n as i64;
        let when = at(day);
        for p in 1..=PRODUCTS {
            if (p + n) % 5 == 0 {
                continue;
            }
            for _ in 0..(p * 7 + n) % 4 {
                out.push(Envelope::at(
                    Event::ProductViewed(ProductViewed {
                        product_id: p,
                        user_id: None,
                        count: 1,
                    }),
                    when,
                ));
            }
            let like = LikeChanged {
                product_id: p,
                user_id: 1,
            };
            match (p + 2 * n) % 3 {
                0 => out.push(Envelope::at(Event::ProductLiked(like), when)),
                1 => out.push(Envelope::at(Event::ProductUnliked(like), when)),
                _ => {}
            }
            let quantity = (p + n) % 3;
            if quantity > 0 {
                out.push(Envelope::at(
                    Event::OrderPaid(OrderPlaced {
                        order_id: n * 1000 + p,
                        user_id: 1,
                        lines: vec![OrderLine {
                            product_id: p,
                            quantity,
                            unit_price: 10,
                        }],
                        total_amount: quantity * 10,
                        discount_amount: 0,
                        final_amount: quantity * 10,
                        payment_method: commerce_events::PaymentKind::Point,
                    }),
                    when,
                ));
            }
        }
    }
    out
}

/// Applies the fixture to the pipeline's database, with yesterday carried into today.
async fn load_fixture(p: &Pipeline) {
    let mut conn = AsyncPgConnection::establish(&p.db.url).await.unwrap();
    for chunk in events().chunks(100) {
        apply_batch(&mut conn, "fixture", chunk, TZ).await.unwrap();
    }
    // Folded into weeks and months, as a running collector would have.
    commerce_collector::fold::fold(&mut conn)
        .await
        .unwrap()
        .expect("no collector runs yet");
    let yesterday = today() - chrono::Duration::days(1);
    commerce_collector::rollup::carry_over(&mut conn, WEIGHTS, yesterday, 0.1)
        .await
        .unwrap();
}

#[derive(diesel::QueryableByName, Debug, Clone, PartialEq)]
struct Expected {
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = Double)]
    score: f64,
}

/// The ranking of `period` containing `date`, by brute force over the daily rows:
/// (rank, product, score).
async fn brute_force(
    conn: &mut AsyncPgConnection,
    period: Period,
    date: NaiveDate,
) -> Vec<(i64, i64, f64)> {
    let (from, to) = period.bounds(date);
    let carry = if period == Period::Daily {
        "+ coalesce((SELECT c.score FROM ranking_carryover c
                      WHERE c.business_date = $1 AND c.product_id = d.product_id), 0)"
    } else {
        ""
    };
    let rows: Vec<Expected> = diesel::sql_query(format!(
        "SELECT d.product_id,
                ($3 * sum(d.view_count)::bigint + $4 * sum(d.like_count)::bigint
                  + $5 * sum(d.sales_quantity)::bigint {carry})::float8 AS score
           FROM product_metrics_daily d
          WHERE d.business_date BETWEEN $1 AND $2
          GROUP BY d.product_id"
    ))
    .bind::<Date, _>(from)
    .bind::<Date, _>(to)
    .bind::<Double, _>(WEIGHTS.view)
    .bind::<Double, _>(WEIGHTS.like)
    .bind::<Double, _>(WEIGHTS.order)
    .load(conn)
    .await
    .unwrap();
    ranked(rows)
}

/// `rows` ordered as a ranking (score descending, then product id) and numbered from 1.
fn ranked(mut rows: Vec<Expected>) -> Vec<(i64, i64, f64)> {
    rows.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap()
            .then(a.product_id.cmp(&b.product_id))
    });
    rows.into_iter()
        .zip(1..)
        .map(|(r, rank)| (rank, r.product_id, r.score))
        .collect()
}

/// The best sellers by brute force over the daily rows: every product's sales quantity summed
/// over all its days, the products that sold.
async fn brute_force_best_sellers(conn: &mut AsyncPgConnection) -> Vec<(i64, i64, f64)> {
    let rows: Vec<Expected> = diesel::sql_query(
        "SELECT product_id, sum(sales_quantity)::float8 AS score
           FROM product_metrics_daily GROUP BY product_id HAVING sum(sales_quantity) > 0",
    )
    .load(conn)
    .await
    .unwrap();
    ranked(rows)
}

fn served(page: &Value) -> Vec<(i64, i64, f64)> {
    page["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rank"].as_i64().unwrap(),
                r["product_id"].as_i64().unwrap(),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn is_current(period: Period, date: NaiveDate) -> bool {
    Ranking::current(today()).contains(&Ranking::of(period, date))
}

/// Checks every page and every product's rank of every asked ranking against the brute force;
/// `source(period, date)` is the source each must come from. Returns the number of requests
/// made for current rankings.
async fn check_everything(
    base: &str,
    conn: &mut AsyncPgConnection,
    source: impl Fn(Period, NaiveDate) -> &'static str,
) -> usize {
    let mut current_requests = 0;
    for date in asked_dates() {
        for period in Period::POPULARITY {
            let expected = brute_force(conn, period, date).await;
            assert!(
                expected.len() > PAGE * 2,
                "the fixture ranks {} products in {period:?} {date}",
                expected.len()
            );
            let what = format!("{} {date}", period.as_str());
            let pages = expected.len().div_ceil(PAGE);
            // Every page, and one past the end (empty, with the total).
            for page in 0..=pages {
                let body = get_json(&format!(
                    "{base}/api/v1/rankings?period={}&date={date}&page={page}&size={PAGE}",
                    period.as_str()
                ))
                .await
                .unwrap();
                let want: Vec<_> = expected
                    .iter()
                    .skip(page * PAGE)
                    .take(PAGE)
                    .cloned()
                    .collect();
                assert_eq!(served(&body), want, "{what} page {page}");
                assert_eq!(body["total_elements"], expected.len(), "{what}");
                assert_eq!(body["source"], source(period, date), "{what}");
                if is_current(period, date) {
                    current_requests += 1;
                }
            }
            for (rank, product, score) in &expected {
                let body = get_json(&format!(
                    "{base}/api/v1/rankings/products/{product}?period={}&date={date}",
                    period.as_str()
                ))
                .await
                .unwrap();
                assert_eq!(body["rank"], *rank, "{what} product {product}");
                assert_eq!(
                    body["score"].as_f64().unwrap(),
                    *score,
                    "{what} product {product}"
                );
                assert_eq!(body["source"], source(period, date), "{what}");
                if is_current(period, date) {
                    current_requests += 1;
                }
            }
            let unranked = get_json(&format!(
                "{base}/api/v1/rankings/products/999999?period={}&date={date}",
                period.as_str()
            ))
            .await
            .unwrap();
            assert_eq!(unranked["rank"], Value::Null, "{what}");
            assert_eq!(unranked["total_elements"], expected.len(), "{what}");
            if is_current(period, date) {
                current_requests += 1;
            }
        }
    }
    current_requests + check_best_sellers(base, conn, source(Period::BestSellers, today())).await
}

/// Checks every page of the best sellers, and every product's place in them, against the brute
/// force; returns the number of requests made.
async fn check_best_sellers(base: &str, conn: &mut AsyncPgConnection, source: &str) -> usize {
    let expected = brute_force_best_sellers(conn).await;
    assert!(expected.len() > PAGE * 2, "{} best sellers", expected.len());
    let mut requests = 0;
    for page in 0..=expected.len().div_ceil(PAGE) {
        let body = get_json(&format!(
            "{base}/api/v1/rankings/best-sellers?page={page}&size={PAGE}"
        ))
        .await
        .unwrap();
        let want: Vec<_> = expected
            .iter()
            .skip(page * PAGE)
            .take(PAGE)
            .cloned()
            .collect();
        assert_eq!(served(&body), want, "best sellers page {page}");
        for (entry, (_, _, quantity)) in body["content"].as_array().unwrap().iter().zip(&want) {
            assert_eq!(entry["sales_quantity"].as_f64().unwrap(), *quantity);
        }
        assert_eq!(body["total_elements"], expected.len());
        assert_eq!(body["source"], source, "best sellers page {page}");
        requests += 1;
    }
    for (rank, product, score) in &expected {
        let body = get_json(&format!(
            "{base}/api/v1/rankings/products/{product}?period=best_sellers"
        ))
        .await
        .unwrap();
        assert_eq!(body["rank"], *rank, "best seller {product}");
        assert_eq!(
            body["score"].as_f64().unwrap(),
            *score,
            "best seller {product}"
        );
        assert_eq!(body["source"], source, "best seller {product}");
        requests += 1;
    }
    requests
}

fn live_when_current(period: Period, date: NaiveDate) -> &'static str {
    if is_current(period, date) {
        "live"
    } else {
        "snapshot"
    }
}

/// Waits until the collector at `base` serves the current rankings from Redis.
async fn wait_live(base: &str) {
    for url in current_urls(base) {
        crate::support::eventually(&url, 30, |b| b["source"] == "live").await;
    }
}

/// A page of each current ranking.
fn current_urls(base: &str) -> Vec<String> {
    let mut urls: Vec<String> = Period::POPULARITY
        .iter()
        .map(|p| format!("{base}/api/v1/rankings?period={}", p.as_str()))
        .collect();
    urls.push(format!("{base}/api/v1/rankings/best-sellers"));
    urls
}

#[tokio::test]
async fn every_period_page_and_product_matches_a_brute_force_ranking() {
    let p = Pipeline::new().await;
    load_fixture(&p).await;
    let collector = p.collector_with(&[("COLLECTOR_CONSUME", "false")]).await;
    wait_live(&collector.base).await;
    let mut conn = AsyncPgConnection::establish(&p.db.url).await.unwrap();
    check_everything(&collector.base, &mut conn, live_when_current).await;
}

#[tokio::test]
async fn with_redis_stopped_rankings_come_from_postgresql_exactly_and_readiness_is_degraded() {
    let p = Pipeline::new().await;
    load_fixture(&p).await;
    // Nothing listens on port 1: Redis is down for this collector from the start.
    let collector = p
        .collector_with(&[
            ("COLLECTOR_CONSUME", "false"),
            ("REDIS_URL", "redis://127.0.0.1:1"),
        ])
        .await;
    let base = &collector.base;
    let mut conn = AsyncPgConnection::establish(&p.db.url).await.unwrap();
    let current_requests = check_everything(base, &mut conn, |_, _| "snapshot").await;

    let res = reqwest::get(format!("{base}/health/ready")).await.unwrap();
    assert_eq!(res.status(), 200);
    let health: Value = res.json().await.unwrap();
    assert_eq!(health["status"], "DEGRADED", "{health}");
    assert_eq!(
        metric(
            base,
            "ranking_fallbacks_total{reason=\"redis_unavailable\"}"
        )
        .await,
        current_requests as f64,
        "every read of a current ranking fell back, and was counted"
    );
}

#[tokio::test]
async fn rankings_lost_by_redis_are_rebuilt_by_the_collector() {
    let p = Pipeline::new().await;
    load_fixture(&p).await;
    let collector = p.collector_with(&[("COLLECTOR_CONSUME", "false")]).await;
    let base = &collector.base;
    wait_live(base).await;
    assert_eq!(
        metric(base, "ranking_live_rebuilds_total{reason=\"start\"}").await,
        5.0
    );

    // Redis loses every key of this collector (as FLUSHALL or a restart without persistence
    // would), in one command.
    let cache =
        commerce_cache::Cache::new(&commerce_testkit::redis_url(), &p.redis_prefix).unwrap();
    let mut redis = cache.conn().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", p.redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        keys.len(),
        10,
        "five sets and their ready markers: {keys:?}"
    );
    let () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();

    rebuilt_then_exact(&p, base, "missing").await;
    // Every set expires after its period but the best sellers' (whose rebuild renamed a build
    // key that expires in ten minutes over it).
    for ranking in Ranking::current(today()) {
        let key = commerce_collector::ranking::live::key(&cache, ranking);
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if ranking.period == Period::BestSellers {
            assert_eq!(ttl, -1, "{ranking} never expires");
        } else {
            assert!(ttl > 2 * 24 * 3600 - 60, "{ranking} expires in {ttl} s");
        }
    }
}

/// Waits until the collector at `base` has rebuilt the five current rankings for `reason`,
/// then checks everything it serves live.
async fn rebuilt_then_exact(p: &Pipeline, base: &str, reason: &str) {
    let series = format!("ranking_live_rebuilds_total{{reason=\"{reason}\"}}");
    commerce_testkit::eventually(
        "the collector rebuilds the five current rankings",
        Duration::from_secs(15),
        async || match metric(base, &series).await {
            5.0 => Ok(()),
            n => Err(format!("{n} rebuilt")),
        },
    )
    .await;
    wait_live(base).await;
    let mut conn = AsyncPgConnection::establish(&p.db.url).await.unwrap();
    check_everything(base, &mut conn, live_when_current).await;
}

#[tokio::test]
async fn two_collectors_consuming_together_serve_the_same_exact_ranking() {
    let p = Pipeline::new().await;
    let a = p.collector().await;
    let b = p.collector().await;
    // Today's activity only, through the broker: both collectors apply a share of it.
    let today = today();
    let events: Vec<Envelope> = events()
        .into_iter()
        .filter(|e| business_date(e.occurred_at, TZ) == today)
        .map(|e| Envelope::new(e.event))
        .collect();
    p.produce(&events).await;
    p.wait_consumed().await;
    let mut conn = AsyncPgConnection::establish(&p.db.url).await.unwrap();
    let expected = brute_force(&mut conn, Period::Daily, today).await;
    assert!(expected.len() > PAGE, "{} ranked", expected.len());
    for base in [&a.base, &b.base] {
        let url = format!("{base}/api/v1/rankings?period=daily&size=100");
        let page = crate::support::eventually(&url, 10, |b| {
            b["source"] == "live" && served(b) == expected
        })
        .await;
        assert_eq!(page["total_elements"], expected.len());
    }
    for period in [Period::ThreeDay, Period::Weekly] {
        let expected = brute_force(&mut conn, period, today).await;
        for base in [&a.base, &b.base] {
            let url = format!("{base}/api/v1/rankings?period={}&size=100", period.as_str());
            crate::support::eventually(&url, 10, |b| {
                b["source"] == "live" && served(b) == expected
            })
            .await;
        }
    }
    let best = brute_force_best_sellers(&mut conn).await;
    assert!(best.len() > PAGE, "{} best sellers", best.len());
    for base in [&a.base, &b.base] {
        let url = format!("{base}/api/v1/rankings/best-sellers?size=100");
        crate::support::eventually(&url, 10, |b| b["source"] == "live" && served(b) == best).await;
    }
}

#[tokio::test]
async fn bad_ranking_requests_are_400_problems() {
    let p = Pipeline::new().await;
    let collector = p.collector_with(&[("COLLECTOR_CONSUME", "false")]).await;
    let base = &collector.base;
    let tomorrow = today() + chrono::Duration::days(1);
    for bad in [
        "/api/v1/rankings?period=yearly".to_owned(),
        "/api/v1/rankings?period=best_sellers".to_owned(),
        "/api/v1/rankings/best-sellers?size=0".to_owned(),
        "/api/v1/rankings/best-sellers?page=-1".to_owned(),
        "/api/v1/rankings/best-sellers?period=daily".to_owned(),
        format!(
            "/api/v1/rankings/products/1?period=best_sellers&date={}",
            today()
        ),
        "/api/v1/rankings?date=2026-13-01".to_owned(),
        "/api/v1/rankings?date=1999-12-31".to_owned(),
        format!("/api/v1/rankings?date={tomorrow}"),
        "/api/v1/rankings?size=0".to_owned(),
        "/api/v1/rankings?size=101".to_owned(),
        "/api/v1/rankings?page=-1".to_owned(),
        "/api/v1/rankings?page=100001".to_owned(),
        "/api/v1/rankings?page=abc".to_owned(),
        "/api/v1/rankings?sort=score".to_owned(),
        "/api/v1/rankings/products/abc".to_owned(),
        "/api/v1/rankings/products/1?period=hourly".to_owned(),
        "/api/v1/product-metrics/1?date=yesterday".to_owned(),
    ] {
        let res = reqwest::get(format!("{base}{bad}")).await.unwrap();
        assert_eq!(res.status(), 400, "{bad}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "VALIDATION_FAILED", "{bad}");
    }
    // A ranking with no products is an empty first page, not an error.
    let empty = get_json(&format!("{base}/api/v1/rankings?page=3"))
        .await
        .unwrap();
    assert_eq!(empty["content"], serde_json::json!([]));
    assert_eq!(empty["total_elements"], 0);
}

#[tokio::test]
async fn the_collector_describes_every_route_in_openapi_and_serves_swagger_ui() {
    let p = Pipeline::new().await;
    let collector = p.collector_with(&[("COLLECTOR_CONSUME", "false")]).await;
    let base = &collector.base;
    let doc = get_json(&format!("{base}/openapi.json")).await.unwrap();
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/partners/sales",
            "/api/v1/product-metrics/{product_id}",
            "/api/v1/rankings",
            "/api/v1/rankings/best-sellers",
            "/api/v1/rankings/products/{product_id}"
        ]
    );
    for path in &paths {
        let responses = &doc["paths"][path]["get"]["responses"];
        assert_eq!(
            responses["400"]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{path}"
        );
    }
    let ui = reqwest::get(format!("{base}/swagger-ui/")).await.unwrap();
    assert_eq!(ui.status(), 200);
    assert!(ui.text().await.unwrap().contains("swagger-ui"));
}

/// A Redis server of the test's own, killed when dropped.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    /// Starts `redis-server` without persistence on `port` (0: a free one) and waits for it.
    async fn start(port: u16) -> Self {
        let port = match port {
            0 => std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            p => p,
        };
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (supports/dev/stack installs Redis)");
        let url = format!("redis://127.0.0.1:{port}");
        commerce_testkit::eventually(
            "the private Redis answers",
            Duration::from_secs(10),
            async || {
                let cache = commerce_cache::Cache::new(&url, "").map_err(|e| e.to_string())?;
                cache.ping().await.map_err(|e| e.to_string())
            },
        )
        .await;
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_restarted_redis_gets_its_rankings_back_from_the_collector() {
    let p = Pipeline::new().await;
    load_fixture(&p).await;
    let redis = PrivateRedis::start(0).await;
    let collector = p
        .collector_with(&[("COLLECTOR_CONSUME", "false"), ("REDIS_URL", &redis.url())])
        .await;
    let base = &collector.base;
    wait_live(base).await;

    // Redis goes away: the current rankings are served from PostgreSQL meanwhile.
    let port = redis.port;
    drop(redis);
    for url in current_urls(base) {
        crate::support::eventually(&url, 10, |b| b["source"] == "snapshot").await;
    }
    // It comes back empty, as a restart without persistence leaves it.
    let _redis = PrivateRedis::start(port).await;
    rebuilt_then_exact(&p, base, "redis_restarted").await;
}

#[tokio::test]
async fn live_rankings_on_a_redis_cluster_survive_a_master_failover_exactly() {
    let mut cluster = commerce_testkit::RedisCluster::start().await;
    let p = Pipeline::new().await;
    load_fixture(&p).await;
    let collector = p
        .collector_with(&[("REDIS_URL", &cluster.url()), ("REDIS_CLUSTER", "true")])
        .await;
    let base = &collector.base;
    wait_live(base).await;
    let mut conn = AsyncPgConnection::establish(&p.db.url).await.unwrap();
    check_everything(base, &mut conn, live_when_current).await;

    // Today's activity again, through the broker, while the master holding today's ranking
    // dies and its replica takes over.
    let cache = cluster.cache(&p.redis_prefix);
    let today_key =
        commerce_collector::ranking::live::key(&cache, Ranking::of(Period::Daily, today()));
    let master = cluster.master_of(&today_key).await;
    let activity: Vec<Envelope> = events()
        .into_iter()
        .filter(|e| business_date(e.occurred_at, TZ) == today())
        .map(|e| Envelope::new(e.event))
        .collect();
    let (first, second) = activity.split_at(activity.len() / 2);
    p.produce(first).await;
    cluster.kill(master);
    p.produce(second).await;
    p.wait_consumed().await;
    p.wait_folded().await;
    assert_ne!(
        cluster.master_of(&today_key).await,
        master,
        "a replica took over"
    );

    // The collector notices that another node serves the set and rebuilds it from PostgreSQL.
    commerce_testkit::eventually(
        "the collector rebuilds today's ranking on the node that took over",
        Duration::from_secs(20),
        async || match metric(
            base,
            "ranking_live_rebuilds_total{reason=\"redis_restarted\"}",
        )
        .await
        {
            n if n >= 1.0 => Ok(()),
            n => Err(n),
        },
    )
    .await;
    wait_live(base).await;
    check_everything(base, &mut conn, live_when_current).await;
    cluster.restart(master).await;
}

/// Every page of `expected` as the collector at `base` serves it at `url` (a ranking page URL
/// without `page` and `size`), pages of 100 fetched eight at a time, must equal it, from `source`.
async fn all_pages_equal(url: &str, expected: &[(i64, i64, f64)], source: &str) {
    use futures::StreamExt as _;
    let client = reqwest::Client::new();
    let pages = expected.len().div_ceil(100);
    let mut served_pages = futures::stream::iter(0..=pages)
        .map(|page| {
            let client = client.clone();
            async move {
                let body: Value = client
                    .get(format!("{url}&page={page}&size=100"))
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (page, body)
            }
        })
        .buffered(8);
    while let Some((page, body)) = served_pages.next().await {
        let want: Vec<_> = expected
            .iter()
            .skip(page * 100)
            .take(100)
            .cloned()
            .collect();
        assert_eq!(served(&body), want, "{url} page {page}");
        assert_eq!(body["total_elements"], expected.len(), "{url}");
        assert_eq!(body["source"], source, "{url} page {page}");
    }
}

/// Every 97th product's place in `expected` as served at `url` (a product rank URL with `{}`
/// for the product id).
async fn sampled_ranks_equal(url: &str, expected: &[(i64, i64, f64)], source: &str) {
    for (rank, product, score) in expected.iter().step_by(97) {
        let body = get_json(&url.replace("{}", &product.to_string()))
            .await
            .unwrap();
        assert_eq!(body["rank"], *rank, "{url} product {product}");
        assert_eq!(body["score"].as_f64().unwrap(), *score, "{url} {product}");
        assert_eq!(body["source"], source, "{url} {product}");
    }
}

#[tokio::test]
async fn at_100000_products_best_sellers_and_three_days_equal_a_brute_force_answer() {
    const CATALOG: i64 = 100_000;
    let p = Pipeline::new().await;
    let mut conn = AsyncPgConnection::establish(&p.db.url).await.unwrap();
    let today = today();
    // Four days (today and the three before: the oldest is outside today's window), products
    // absent on some days, small figures (so many ties), negative like figures, products that
    // never sold; everything folded, then a tenth of today's rows moved on by batches the fold
    // has not reached (best sellers read the folded totals plus those differences).
    diesel::sql_query(
        "INSERT INTO product_metrics_daily
                (business_date, product_id, view_count, like_count, order_count, sales_quantity,
                 sales_amount, folded_views, folded_likes, folded_orders, folded_quantity, folded_amount)
         SELECT $1 - d, p, v, l, o, q, q * 100, v, l, o, q, q * 100 FROM (
             SELECT d, p, (p * 7 + d * 13) % 50 AS v, (p * 3 + d) % 7 - 2 AS l, (p + d) % 3 AS o,
                    CASE WHEN p % 13 = 0 THEN 0 ELSE (p * 11 + d * 5) % 9 END AS q
               FROM generate_series(0, 3) d, generate_series(1, $2) p
              WHERE (p + d) % 6 <> 0) s",
    )
    .bind::<Date, _>(today)
    .bind::<BigInt, _>(CATALOG)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.batch_execute(
        "INSERT INTO product_metrics (product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
         SELECT product_id, sum(folded_views), sum(folded_likes), sum(folded_orders),
                sum(folded_quantity), sum(folded_amount)
           FROM product_metrics_daily GROUP BY product_id;
         ANALYZE product_metrics_daily, product_metrics;",
    )
    .await
    .unwrap();
    let unfolded = diesel::sql_query(
        "UPDATE product_metrics_daily
            SET sales_quantity = sales_quantity + 3, sales_amount = sales_amount + 300,
                view_count = view_count + 1
          WHERE business_date = $1 AND product_id % 10 = 0",
    )
    .bind::<Date, _>(today)
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(unfolded > 6_000, "{unfolded} rows left to fold");

    let best = brute_force_best_sellers(&mut conn).await;
    let window = brute_force(&mut conn, Period::ThreeDay, today).await;
    let yesterday = today - chrono::Duration::days(1);
    let past_window = brute_force(&mut conn, Period::ThreeDay, yesterday).await;
    assert!(
        best.len() > 90_000 && best.len() < CATALOG as usize,
        "{}",
        best.len()
    );
    assert_eq!(window.len(), CATALOG as usize);

    // The scheduled jobs stay out of the way (what they materialise is checked elsewhere; at
    // this size one run competes with the reads for the two cores).
    let quiet = [
        ("COLLECTOR_CONSUME", "false"),
        ("RANKING_SNAPSHOT_CRON", "0 0 0 1 1 *"),
        ("ROLLUP_CRON", "0 0 0 1 1 *"),
    ];
    let live = p.collector_with(&quiet).await;
    let base = &live.base;
    wait_live(base).await;
    all_pages_equal(
        &format!("{base}/api/v1/rankings/best-sellers?"),
        &best,
        "live",
    )
    .await;
    all_pages_equal(
        &format!("{base}/api/v1/rankings?period=three_day"),
        &window,
        "live",
    )
    .await;
    // A past window, from its snapshot (materialised on its first read).
    all_pages_equal(
        &format!("{base}/api/v1/rankings?period=three_day&date={yesterday}"),
        &past_window,
        "snapshot",
    )
    .await;
    sampled_ranks_equal(
        &format!("{base}/api/v1/rankings/products/{{}}?period=best_sellers"),
        &best,
        "live",
    )
    .await;
    sampled_ranks_equal(
        &format!("{base}/api/v1/rankings/products/{{}}?period=three_day"),
        &window,
        "live",
    )
    .await;

    // Redis unreachable: the same answers from PostgreSQL.
    let fallback = p
        .collector_with(&[quiet.as_slice(), &[("REDIS_URL", "redis://127.0.0.1:1")]].concat())
        .await;
    let base = &fallback.base;
    all_pages_equal(
        &format!("{base}/api/v1/rankings/best-sellers?"),
        &best,
        "snapshot",
    )
    .await;
    all_pages_equal(
        &format!("{base}/api/v1/rankings?period=three_day"),
        &window,
        "snapshot",
    )
    .await;
    sampled_ranks_equal(
        &format!("{base}/api/v1/rankings/products/{{}}?period=best_sellers"),
        &best,
        "snapshot",
    )
    .await;
}
