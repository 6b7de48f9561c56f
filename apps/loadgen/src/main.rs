//! `loadgen`: the load generator behind BENCHMARKS.md.
//!
//! Every scenario runs a fixed number of connections, each with one request in flight, for a
//! bounded time (or a bounded count), against loopback addresses only, and stops by itself.
//! Setup that is not under test (bulk users and products) goes straight to the database.
//! `apps/loadgen/run-benchmarks` runs every scenario in order.

mod http;
mod logins;
mod pipeline;
mod rankings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

#[derive(Parser)]
#[command(about = "Load generator for the commerce benchmarks (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a hello-world axum JSON route (the baseline) on ADDR.
    HelloServer {
        #[arg(long, default_value = "127.0.0.1:18080")]
        addr: SocketAddr,
    },
    /// The cached first product-list page against the hello-world baseline.
    List {
        #[arg(long, default_value = "127.0.0.1:8080")]
        api: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:18080")]
        hello: SocketAddr,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Order creation paid by points, against the same transaction driven by pgbench.
    Orders {
        #[arg(long, default_value = "127.0.0.1:8080")]
        api: SocketAddr,
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/commerce"
        )]
        database_url: String,
        #[arg(long, default_value_t = 10_000)]
        products: i64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Every order on one product (hot row), with this much stock.
        #[arg(long)]
        hot_stock: Option<i64>,
    },
    /// Collector ingest: a topic pre-filled with EVENTS events, consume-only vs the collector.
    Ingest {
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
        server: String,
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 10_000)]
        products: u64,
        #[arg(long, default_value = "target/release")]
        bin_dir: String,
    },
    /// Relay drain throughput of ROWS pending rows, then idle commit-to-publish latency.
    Relay {
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
        server: String,
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value_t = 100_000)]
        rows: i64,
        #[arg(long, default_value = "target/release")]
        bin_dir: String,
    },
    /// The ranking API with PRODUCTS products and DAYS days of activity, events flowing in:
    /// each route vs hello-world, then with Redis unreachable; freshness; memory.
    Rankings {
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
        server: String,
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value = "127.0.0.1:18080")]
        hello: SocketAddr,
        #[arg(long, default_value_t = 100_000)]
        products: i64,
        #[arg(long, default_value_t = 31)]
        days: i64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        #[arg(long, default_value = "target/release")]
        bin_dir: String,
    },
    /// Rollup of DAYS × PRODUCTS daily rows into weekly and monthly tables.
    Rollup {
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
        server: String,
        #[arg(long, default_value_t = 100)]
        days: i64,
        #[arg(long, default_value_t = 10_000)]
        products: i64,
    },
    /// Card orders against pg-simulator (at the rates it was started with): acceptance
    /// throughput and latency, the time until every order is PAID or PAYMENT_FAILED, and how many
    /// orders the gateway charged twice. With --cancel-paid, every paid order is then cancelled
    /// and the time until all are REFUNDED measured, with the refunds checked at the gateway.
    CardOrders {
        #[arg(long, default_value = "127.0.0.1:8080")]
        api: SocketAddr,
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/commerce"
        )]
        database_url: String,
        #[arg(long, default_value_t = 1000)]
        orders: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Give up waiting for final states after this long.
        #[arg(long, default_value_t = 300)]
        settle_timeout_seconds: u64,
        /// pg-simulator's database, to count charges and refunds per order.
        #[arg(
            long,
            default_value = "postgres://postgres@127.0.0.1:5432/pg_simulator"
        )]
        gateway_database_url: String,
        /// Then cancel every paid order and wait until all are refunded.
        #[arg(long)]
        cancel_paid: bool,
    },
    /// Sign-ups, then a login flood (right, wrong and unknown passwords) against the release
    /// commerce-api in a child process: answers, latency, and the process's memory.
    Logins {
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
        server: String,
        #[arg(long, default_value_t = 300)]
        users: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value = "target/release")]
        bin_dir: String,
    },
    /// A limited drop: USERS customers try twice each for UNITS units at one per customer, the
    /// sale opening a second after the load starts (each customer's two attempts race).
    Drop {
        #[arg(long, default_value = "127.0.0.1:8080")]
        api: SocketAddr,
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/commerce"
        )]
        database_url: String,
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        #[arg(long, default_value_t = 500)]
        units: i64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// First-come coupon issuance: ATTEMPTS distinct users race for QUANTITY coupons.
    Coupons {
        #[arg(long, default_value = "127.0.0.1:8080")]
        api: SocketAddr,
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/commerce"
        )]
        database_url: String,
        #[arg(long, default_value_t = 10_000)]
        attempts: usize,
        #[arg(long, default_value_t = 100)]
        quantity: i64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::HelloServer { addr } => hello_server(addr).await,
        Command::List {
            api,
            hello,
            connections,
            seconds,
        } => list(api, hello, connections, seconds).await,
        Command::Orders {
            api,
            database_url,
            products,
            connections,
            seconds,
            hot_stock,
        } => {
            orders(
                api,
                &database_url,
                products,
                connections,
                seconds,
                hot_stock,
            )
            .await
        }
        Command::Ingest {
            server,
            brokers,
            events,
            products,
            bin_dir,
        } => pipeline::ingest(&server, &brokers, events, products, &bin_dir).await,
        Command::Relay {
            server,
            brokers,
            rows,
            bin_dir,
        } => pipeline::relay(&server, &brokers, rows, &bin_dir).await,
        Command::Rollup {
            server,
            days,
            products,
        } => pipeline::rollup(&server, days, products).await,
        Command::Rankings {
            server,
            brokers,
            hello,
            products,
            days,
            connections,
            seconds,
            bin_dir,
        } => {
            rankings::rankings(rankings::Options {
                server: &server,
                brokers: &brokers,
                hello,
                products,
                days,
                connections,
                seconds,
                bin_dir: &bin_dir,
            })
            .await
        }
        Command::Logins {
            server,
            users,
            connections,
            seconds,
            bin_dir,
        } => {
            logins::logins(logins::Logins {
                server: &server,
                bin_dir: &bin_dir,
                users,
                connections,
                seconds,
            })
            .await
        }
        Command::Drop {
            api,
            database_url,
            users,
            units,
            connections,
        } => drop_sale(api, &database_url, users, units, connections).await,
        Command::Coupons {
            api,
            database_url,
            attempts,
            quantity,
            connections,
        } => coupons(api, &database_url, attempts, quantity, connections).await,
        Command::CardOrders {
            api,
            database_url,
            orders,
            connections,
            settle_timeout_seconds,
            gateway_database_url,
            cancel_paid,
        } => {
            card_orders(
                CardRun {
                    api,
                    database_url: &database_url,
                    gateway_database_url: &gateway_database_url,
                    n_orders: orders,
                    connections,
                    settle_timeout: Duration::from_secs(settle_timeout_seconds),
                },
                cancel_paid,
            )
            .await
        }
    }
}

struct CardRun<'a> {
    api: SocketAddr,
    database_url: &'a str,
    gateway_database_url: &'a str,
    n_orders: usize,
    connections: usize,
    settle_timeout: Duration,
}

async fn card_orders(run_config: CardRun<'_>, cancel_paid: bool) -> anyhow::Result<()> {
    let CardRun {
        api,
        database_url,
        gateway_database_url,
        n_orders,
        connections,
        settle_timeout,
    } = run_config;
    let mut db = connect_db(database_url).await?;
    let mut gateway_db = connect_db(gateway_database_url).await?;
    let tag = run_id();
    let brand: Id = diesel::sql_query("INSERT INTO brands (name) VALUES ($1) RETURNING id")
        .bind::<Text, _>(&tag)
        .get_result(&mut db)
        .await?;
    let products: Vec<i64> = diesel::sql_query(
        "INSERT INTO products (brand_id, name, price, stock)
         SELECT $1, 'bench card product ' || g, 1000, 1000000 FROM generate_series(1, 100) g RETURNING id",
    )
    .bind::<BigInt, _>(brand.id)
    .load::<Id>(&mut db)
    .await?
    .into_iter()
    .map(|r| r.id)
    .collect();
    let users = bulk_users(&mut db, &format!("{tag}-c-"), connections, 0).await?;
    let auth = authenticator();
    let tokens: Vec<String> = users
        .iter()
        .map(|id| {
            auth.issue(*id, commerce_api::infra::auth::Role::User)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<_, _>>()?;
    let token_of: std::collections::HashMap<i64, String> =
        users.iter().copied().zip(tokens.iter().cloned()).collect();
    let started = Instant::now();
    let report = run(
        "card orders accepted",
        api,
        connections,
        Duration::from_secs(3600),
        Some(n_orders),
        move |c, i| {
            let pid = products[(c * 31 + i * 17) % products.len()];
            let body = format!(
                r#"{{"items":[{{"product_id":{pid},"quantity":1}}],"payment":{{"method":"CARD","card_type":"KB","card_no":"1234-5678-9012-3456"}}}}"#
            );
            http::request("POST", &api, "/api/v1/orders", Some(&tokens[c]), Some(&body))
        },
    )
    .await?;
    report.print();
    let accepted_at = started.elapsed();

    #[derive(diesel::QueryableByName)]
    struct States {
        #[diesel(sql_type = BigInt)]
        pending: i64,
        #[diesel(sql_type = BigInt)]
        paid: i64,
        #[diesel(sql_type = BigInt)]
        failed: i64,
    }
    let deadline = Instant::now() + settle_timeout;
    let states = loop {
        let states: States = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE o.status = 'PENDING_PAYMENT') AS pending,
                    count(*) FILTER (WHERE o.status = 'PAID') AS paid,
                    count(*) FILTER (WHERE o.status = 'PAYMENT_FAILED') AS failed
               FROM orders o JOIN users u ON u.id = o.user_id WHERE u.login_id LIKE $1",
        )
        .bind::<Text, _>(format!("{tag}-c-%"))
        .get_result(&mut db)
        .await?;
        if states.pending == 0 || Instant::now() > deadline {
            break states;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all_final = started.elapsed();
    println!(
        "accepted {} orders in {:.1} s; all final after {:.1} s ({:.1} s after the last was accepted): {} PAID, {} PAYMENT_FAILED, {} still pending",
        report.latencies_us.len(),
        accepted_at.as_secs_f64(),
        all_final.as_secs_f64(),
        (all_final - accepted_at).as_secs_f64(),
        states.paid,
        states.failed,
        states.pending
    );
    ensure!(states.pending == 0, "orders left pending");

    // What the gateway holds for these orders: never two charges for one.
    let orders: Vec<OrderOf> = diesel::sql_query(
        "SELECT o.id, o.user_id, o.status FROM orders o JOIN users u ON u.id = o.user_id
          WHERE u.login_id LIKE $1 ORDER BY o.id",
    )
    .bind::<Text, _>(format!("{tag}-c-%"))
    .load(&mut db)
    .await?;
    let ids: Vec<String> = orders.iter().map(|o| o.id.to_string()).collect();
    let twice = gateway_count(
        &mut gateway_db,
        "SELECT count(*) AS n FROM (SELECT order_id FROM payments
          WHERE order_id = ANY($1) AND status IN ('SUCCESS', 'REFUNDED')
          GROUP BY order_id HAVING count(*) > 1) t",
        &ids,
    )
    .await?;
    let payments = gateway_count(
        &mut gateway_db,
        "SELECT count(*) AS n FROM payments WHERE order_id = ANY($1)",
        &ids,
    )
    .await?;
    println!(
        "gateway: {payments} payments for {} orders; {twice} orders charged twice",
        ids.len()
    );
    ensure!(twice == 0, "orders charged twice");
    if cancel_paid {
        let paid: Vec<&OrderOf> = orders.iter().filter(|o| o.status == "PAID").collect();
        refund_all(
            api,
            &mut db,
            &mut gateway_db,
            &paid,
            &token_of,
            settle_timeout,
        )
        .await?;
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct OrderOf {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = Text)]
    status: String,
}

/// A count over pg-simulator's rows of `order_ids` (its order ids are text), bound as `$1`.
async fn gateway_count(
    db: &mut AsyncPgConnection,
    sql: &str,
    order_ids: &[String],
) -> anyhow::Result<i64> {
    Ok(diesel::sql_query(sql)
        .bind::<diesel::sql_types::Array<Text>, _>(order_ids)
        .get_result::<pipeline::N>(db)
        .await?
        .n)
}

/// A count over the API's rows of `order_ids`, bound as `$1`.
async fn orders_count(
    db: &mut AsyncPgConnection,
    sql: &str,
    order_ids: &[i64],
) -> anyhow::Result<i64> {
    Ok(diesel::sql_query(sql)
        .bind::<diesel::sql_types::Array<BigInt>, _>(order_ids)
        .get_result::<pipeline::N>(db)
        .await?
        .n)
}

/// Cancels every paid order (each user's in turn, users concurrently) and waits until all are
/// `REFUNDED`; then checks one refund per order at the gateway and one `PaymentRefunded` each.
async fn refund_all(
    api: SocketAddr,
    db: &mut AsyncPgConnection,
    gateway_db: &mut AsyncPgConnection,
    paid: &[&OrderOf],
    token_of: &std::collections::HashMap<i64, String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut per_user: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for o in paid {
        per_user.entry(o.user_id).or_default().push(o.id);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (user, ids) in per_user {
        let token = token_of[&user].clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = http::Conn::open(api).await?;
            let mut refused = 0usize;
            for id in ids {
                let req = http::request(
                    "POST",
                    &api,
                    &format!("/api/v1/orders/{id}/cancel"),
                    Some(&token),
                    None,
                );
                let (status, _) = conn.send(&req).await?;
                refused += usize::from(status != 200);
            }
            anyhow::Ok(refused)
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await??;
    }
    let cancelled_in = started.elapsed();
    ensure!(refused == 0, "{refused} cancels were refused");
    let ids: Vec<i64> = paid.iter().map(|o| o.id).collect();
    let deadline = Instant::now() + timeout;
    let refunded = loop {
        let n = orders_count(
            db,
            "SELECT count(*) AS n FROM orders WHERE id = ANY($1) AND status = 'REFUNDED'",
            &ids,
        )
        .await?;
        if n as usize == ids.len() || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all_refunded = started.elapsed();
    let events = orders_count(
        db,
        "SELECT count(*) AS n FROM outbox WHERE event_type = 'PaymentRefunded'
            AND (envelope->'payload'->>'order_id')::bigint = ANY($1)",
        &ids,
    )
    .await?;
    let attempts = orders_count(
        db,
        "SELECT COALESCE(sum(attempts), 0)::bigint AS n FROM refunds WHERE order_id = ANY($1)",
        &ids,
    )
    .await?;
    let texts: Vec<String> = ids.iter().map(i64::to_string).collect();
    let at_gateway = gateway_count(
        gateway_db,
        "SELECT count(*) AS n FROM refunds r JOIN payments p USING (transaction_key)
          WHERE p.order_id = ANY($1)",
        &texts,
    )
    .await?;
    let doubled = gateway_count(
        gateway_db,
        "SELECT count(*) AS n FROM (SELECT p.order_id FROM refunds r
          JOIN payments p USING (transaction_key) WHERE p.order_id = ANY($1)
          GROUP BY p.order_id HAVING count(*) > 1) t",
        &texts,
    )
    .await?;
    println!(
        "refunds: {} paid orders cancelled in {:.1} s; all refunded after {:.1} s: {refunded} REFUNDED, {} attempts, {at_gateway} refunds at the gateway, {doubled} orders refunded twice, {} PaymentRefunded events",
        ids.len(),
        cancelled_in.as_secs_f64(),
        all_refunded.as_secs_f64(),
        attempts,
        events,
    );
    ensure!(refunded as usize == ids.len(), "orders left unrefunded");
    ensure!(
        doubled == 0 && at_gateway == refunded && events == refunded,
        "refunds do not balance"
    );
    Ok(())
}

fn loopback_only(addr: &SocketAddr) -> anyhow::Result<()> {
    ensure!(
        addr.ip().is_loopback(),
        "refusing to send load to {addr}: loopback only"
    );
    Ok(())
}

async fn hello_server(addr: SocketAddr) -> anyhow::Result<()> {
    loopback_only(&addr)?;
    let app = axum::Router::new().route(
        "/hello",
        axum::routing::get(|| async { axum::Json(serde_json::json!({"message": "hello"})) }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Latencies and statuses of one run.
struct Report {
    label: String,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    statuses: std::collections::BTreeMap<u16, usize>,
}

impl Report {
    fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len())
            - 1;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    fn print(&self) {
        println!(
            "{:<28} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  requests {:>8}  statuses {:?}",
            self.label,
            self.rps(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.percentile_ms(1.0),
            self.latencies_us.len(),
            self.statuses
        );
    }
}

/// Runs `connections` connections until `deadline` or until `budget` requests were sent in
/// all. `make` builds request number `i` for connection `c`.
async fn run<F>(
    label: &str,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    budget: Option<usize>,
    make: F,
) -> anyhow::Result<Report>
where
    F: Fn(usize, usize) -> Vec<u8> + Send + Sync + 'static,
{
    loopback_only(&addr)?;
    let make = Arc::new(make);
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (make, issued) = (make.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = http::Conn::open(addr).await?;
            let mut latencies = Vec::with_capacity(64 * 1024);
            let mut statuses = std::collections::BTreeMap::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let n = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if budget.is_some_and(|b| n >= b) {
                    break;
                }
                let req = make(c, i);
                let t = Instant::now();
                let (status, _) = conn.send(&req).await?;
                latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                *statuses.entry(status).or_insert(0usize) += 1;
                i += 1;
            }
            anyhow::Ok((latencies, statuses))
        }));
    }
    let mut report = Report {
        label: label.to_owned(),
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        statuses: Default::default(),
    };
    for t in tasks {
        let (lat, st) = t.await??;
        report.latencies_us.extend(lat);
        for (k, v) in st {
            *report.statuses.entry(k).or_insert(0) += v;
        }
    }
    report.elapsed = start.elapsed();
    report.latencies_us.sort_unstable();
    Ok(report)
}

async fn list(
    api: SocketAddr,
    hello: SocketAddr,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    let hello_req = http::request("GET", &hello, "/hello", None, None);
    let list_req = http::request("GET", &api, "/api/v1/products?page=0&size=20", None, None);
    // Warm the cache and both servers.
    let warm = list_req.clone();
    run(
        "warm-up",
        api,
        4,
        Duration::from_secs(1),
        None,
        move |_, _| warm.clone(),
    )
    .await?;
    let h = hello_req.clone();
    let base = run(
        "hello-world /hello",
        hello,
        connections,
        duration,
        None,
        move |_, _| h.clone(),
    )
    .await?;
    base.print();
    let detail_req = http::request("GET", &api, "/api/v1/products/1", None, None);
    for (what, req) in [("list", list_req), ("detail", detail_req)] {
        let cached = run(
            &format!("cached product {what}"),
            api,
            connections,
            duration,
            None,
            move |_, _| req.clone(),
        )
        .await?;
        cached.print();
        println!(
            "ratio {what}/hello = {:.2} (target >= 0.6); {what} p99 = {:.2} ms (target <= 5 ms)",
            cached.rps() / base.rps(),
            cached.percentile_ms(0.99)
        );
    }
    Ok(())
}

async fn connect_db(url: &str) -> anyhow::Result<AsyncPgConnection> {
    AsyncPgConnection::establish(url)
        .await
        .with_context(|| "connecting to the API database (DATABASE_URL)".to_string())
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Creates `n` users with `points` each directly in the database; returns their ids.
async fn bulk_users(
    db: &mut AsyncPgConnection,
    prefix: &str,
    n: usize,
    points: i64,
) -> anyhow::Result<Vec<i64>> {
    let rows: Vec<Id> = diesel::sql_query(
        "INSERT INTO users (login_id, password_hash, name, email, point_balance)
         SELECT $1 || g, 'bench-no-login', 'bench', 'bench@example.com', $2
           FROM generate_series(1, $3) g
         RETURNING id",
    )
    .bind::<Text, _>(prefix)
    .bind::<BigInt, _>(points)
    .bind::<BigInt, _>(n as i64)
    .load(db)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

fn authenticator() -> commerce_api::infra::auth::Authenticator {
    let secret = std::env::var("COMMERCE_JWT_SECRET")
        .unwrap_or_else(|_| commerce_api::config::DEV_JWT_SECRET.to_owned());
    // Only issues tokens: an idle hashing pool holds no memory.
    let hashing = commerce_api::infra::auth::HashingSettings {
        threads: 1,
        queue: 0,
    };
    commerce_api::infra::auth::Authenticator::new(secret.as_bytes(), 3600, hashing)
}

/// One `POST path` with `body` per user in `ids`, each with that user's token.
fn signed_posts(
    api: &SocketAddr,
    ids: &[i64],
    path: &str,
    body: &str,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let auth = authenticator();
    ids.iter()
        .map(|id| {
            let token = auth
                .issue(*id, commerce_api::infra::auth::Role::User)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(http::request("POST", api, path, Some(&token), Some(body)))
        })
        .collect()
}

fn run_id() -> String {
    format!("bench{}", std::process::id())
}

async fn orders(
    api: SocketAddr,
    database_url: &str,
    n_products: i64,
    connections: usize,
    seconds: u64,
    hot_stock: Option<i64>,
) -> anyhow::Result<()> {
    let mut db = connect_db(database_url).await?;
    let tag = run_id();
    let brand: Id = diesel::sql_query("INSERT INTO brands (name) VALUES ($1) RETURNING id")
        .bind::<Text, _>(&tag)
        .get_result(&mut db)
        .await?;
    let (count, stock) = match hot_stock {
        Some(s) => (1, s),
        None => (n_products, 1_000_000),
    };
    let products: Vec<i64> = diesel::sql_query(
        "INSERT INTO products (brand_id, name, price, stock)
         SELECT $1, 'bench product ' || g, 1000, $2 FROM generate_series(1, $3) g RETURNING id",
    )
    .bind::<BigInt, _>(brand.id)
    .bind::<BigInt, _>(stock)
    .bind::<BigInt, _>(count)
    .load::<Id>(&mut db)
    .await?
    .into_iter()
    .map(|r| r.id)
    .collect();
    let users = bulk_users(
        &mut db,
        &format!("{tag}-o-"),
        connections * 2,
        1_000_000_000,
    )
    .await?;
    let auth = authenticator();
    let tokens: Vec<String> = users[..connections]
        .iter()
        .map(|id| {
            auth.issue(*id, commerce_api::infra::auth::Role::User)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<_, _>>()?;
    let label = if hot_stock.is_some() {
        "orders, one hot product"
    } else {
        "orders, 10k products"
    };
    let products = Arc::new(products);
    let p = products.clone();
    let report = run(label, api, connections, Duration::from_secs(seconds), None, move |c, i| {
        let pid = p[(c * 7919 + i * 104_729) % p.len()];
        let body = format!(r#"{{"items":[{{"product_id":{pid},"quantity":1}}],"payment":{{"method":"POINT"}}}}"#);
        http::request("POST", &api, "/api/v1/orders", Some(&tokens[c]), Some(&body))
    })
    .await?;
    report.print();

    if let Some(initial) = hot_stock {
        #[derive(diesel::QueryableByName)]
        struct Check {
            #[diesel(sql_type = BigInt)]
            stock: i64,
            #[diesel(sql_type = BigInt)]
            sold: i64,
        }
        let check: Check = diesel::sql_query(
            "SELECT p.stock, coalesce((SELECT sum(quantity) FROM order_items WHERE product_id = p.id), 0)::bigint AS sold
               FROM products p WHERE p.id = $1",
        )
        .bind::<BigInt, _>(products[0])
        .get_result(&mut db)
        .await?;
        println!(
            "hot product: initial stock {initial}, sold {}, left {}, oversold {}",
            check.sold,
            check.stock,
            (check.sold + check.stock - initial).max(0)
        );
        ensure!(
            check.stock >= 0 && check.sold + check.stock == initial,
            "stock does not balance"
        );
    }

    // The same transaction, driven by pgbench with as many clients, in the same run.
    let (first, last) = (products[0], products[products.len() - 1]);
    let (ufirst, ulast) = (users[connections], users[users.len() - 1]);
    let script = format!(
        r"\set pid random({first}, {last})
\set uid random({ufirst}, {ulast})
BEGIN;
SELECT id, stock FROM products WHERE id = ANY(ARRAY[:pid]::bigint[]);
SELECT id, price, stock FROM products WHERE id = ANY(ARRAY[:pid]::bigint[]) ORDER BY id FOR UPDATE;
UPDATE products p SET stock = p.stock - 1 WHERE p.id = :pid AND p.stock >= 1;
UPDATE users SET point_balance = point_balance - 1000 WHERE id = :uid AND point_balance >= 1000;
WITH o AS (INSERT INTO orders (user_id, status, total_amount, discount_amount, final_amount, points_used, payment_method, request_hash, paid_at)
           VALUES (:uid, 'PAID', 1000, 0, 1000, 1000, 'POINT', 'pgbench', now()) RETURNING id),
     i AS (INSERT INTO order_items (order_id, product_id, quantity, unit_price) SELECT id, :pid, 1, 1000 FROM o),
     l AS (INSERT INTO point_ledger (user_id, amount, kind, order_id) SELECT :uid, -1000, 'USE', id FROM o)
INSERT INTO outbox (event_id, topic, partition_key, event_type, envelope)
SELECT gen_random_uuid(), 'order-events', o.id::text, t, '{{}}'::jsonb FROM o, unnest(ARRAY['OrderCreated', 'OrderPaid']) t;
COMMIT;
"
    );
    let (tps, latency) = pgbench(&script, connections, Some(seconds), database_url, &[]).await?;
    println!("pgbench same transaction      {tps:>9.0} tps    {latency}");
    println!(
        "ratio api/pgbench = {:.2} (target >= 0.7)",
        report.rps() / tps
    );
    Ok(())
}

/// Runs pgbench with `script` for `seconds` (or as `extra` says) with `clients` clients; returns
/// its transactions per second and its average latency line.
pub(crate) async fn pgbench(
    script: &str,
    clients: usize,
    seconds: Option<u64>,
    database_url: &str,
    extra: &[&str],
) -> anyhow::Result<(f64, String)> {
    let path = std::env::temp_dir().join(format!("loadgen-{}-{clients}.sql", std::process::id()));
    std::fs::write(&path, script)?;
    let out = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-r",
        ])
        .args(
            seconds
                .map(|s| ["-T".to_owned(), s.to_string()])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .arg("-f")
        .arg(&path)
        .arg(database_url)
        .output()
        .await
        .context("running pgbench (install postgresql-client / postgresql-contrib)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| {
            format!(
                "pgbench output: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let latency = text
        .lines()
        .find(|l| l.starts_with("latency average"))
        .unwrap_or("")
        .to_owned();
    Ok((tps, latency))
}

/// A limited drop: `users` customers with points, a product of `units` units at one per
/// customer whose sale opens a second after the load starts; every customer tries twice.
async fn drop_sale(
    api: SocketAddr,
    database_url: &str,
    users: usize,
    units: i64,
    connections: usize,
) -> anyhow::Result<()> {
    let mut db = connect_db(database_url).await?;
    let tag = run_id();
    let brand: Id = diesel::sql_query("INSERT INTO brands (name) VALUES ($1) RETURNING id")
        .bind::<Text, _>(&tag)
        .get_result(&mut db)
        .await?;
    let product: Id = diesel::sql_query(
        "INSERT INTO products (brand_id, name, price, stock, max_per_user, sale_starts_at)
         VALUES ($1, $2, 1000, $3, 1, now() + interval '1 hour') RETURNING id",
    )
    .bind::<BigInt, _>(brand.id)
    .bind::<Text, _>(format!("{tag} drop"))
    .bind::<BigInt, _>(units)
    .get_result(&mut db)
    .await?;
    let ids = bulk_users(&mut db, &format!("{tag}-d-"), users, 10_000).await?;
    let body = format!(
        r#"{{"items":[{{"product_id":{}, "quantity":1}}],"payment":{{"method":"POINT"}}}}"#,
        product.id
    );
    let requests = signed_posts(&api, &ids, "/api/v1/orders", &body)?;
    // The window opens a second into the load: the first attempts meet a closed sale.
    diesel::sql_query(
        "UPDATE products SET sale_starts_at = now() + interval '1 second' WHERE id = $1",
    )
    .bind::<BigInt, _>(product.id)
    .execute(&mut db)
    .await?;
    let requests = Arc::new(requests);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = requests.clone();
    let report = run(
        "drop order attempts",
        api,
        connections,
        Duration::from_secs(300),
        Some(users * 2),
        move |_, _| {
            // Each customer's two attempts go out one after the other, racing each other.
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r[(n / 2) % r.len()].clone()
        },
    )
    .await?;
    report.print();
    #[derive(diesel::QueryableByName)]
    struct Sold {
        #[diesel(sql_type = BigInt)]
        sold: i64,
        #[diesel(sql_type = BigInt)]
        most: i64,
        #[diesel(sql_type = BigInt)]
        stock: i64,
    }
    let sold: Sold = diesel::sql_query(
        "SELECT coalesce(sum(held), 0)::bigint AS sold, coalesce(max(held), 0)::bigint AS most,
                (SELECT stock FROM products WHERE id = $1) AS stock
           FROM (SELECT o.user_id, sum(i.quantity) AS held
                   FROM orders o JOIN order_items i ON i.order_id = o.id
                  WHERE i.product_id = $1 AND o.status IN ('PENDING_PAYMENT', 'PAID')
                  GROUP BY o.user_id) h",
    )
    .bind::<BigInt, _>(product.id)
    .get_result(&mut db)
    .await?;
    println!(
        "drop: {} attempts by {users} customers, {:.0} attempts/s, p99 {:.1} ms; {} units sold (expected {units}), most held by one customer {} (limit 1), stock left {}",
        report.latencies_us.len(),
        report.rps(),
        report.percentile_ms(0.99),
        sold.sold,
        sold.most,
        sold.stock
    );
    if sold.sold != units || sold.most > 1 || sold.stock != 0 {
        bail!("the drop oversold, undersold or let a customer above the limit");
    }
    Ok(())
}

async fn coupons(
    api: SocketAddr,
    database_url: &str,
    attempts: usize,
    quantity: i64,
    connections: usize,
) -> anyhow::Result<()> {
    let mut db = connect_db(database_url).await?;
    let tag = run_id();
    let coupon: Id = diesel::sql_query(
        "INSERT INTO coupons (name, discount_type, discount_value, total_quantity) VALUES ($1, 'FIXED', 1000, $2) RETURNING id",
    )
    .bind::<Text, _>(&tag)
    .bind::<BigInt, _>(quantity)
    .get_result(&mut db)
    .await?;
    let users = bulk_users(&mut db, &format!("{tag}-c-"), attempts, 0).await?;
    let path = format!("/api/v1/coupons/{}/issue", coupon.id);
    let requests = signed_posts(&api, &users, &path, "{}")?;
    let requests = Arc::new(requests);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = requests.clone();
    let report = run(
        "coupon issue attempts",
        api,
        connections,
        Duration::from_secs(120),
        Some(attempts),
        move |_, _| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r[n % r.len()].clone()
        },
    )
    .await?;
    report.print();
    let issued: Id =
        diesel::sql_query("SELECT count(*) AS id FROM user_coupons WHERE coupon_id = $1")
            .bind::<BigInt, _>(coupon.id)
            .get_result(&mut db)
            .await?;
    println!(
        "coupons: {} attempts, {} issued (expected {quantity}); {:.0} attempts/s (target >= 20000)",
        report.latencies_us.len(),
        issued.id,
        report.rps()
    );
    if issued.id != quantity {
        bail!("issued {} coupons, expected {quantity}", issued.id);
    }
    db.batch_execute("SELECT 1").await?;
    Ok(())
}
