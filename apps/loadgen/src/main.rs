//! `loadgen`: the load generator behind BENCHMARKS.md.
//!
//! Every scenario runs a fixed number of connections, each with one request in flight, for a
//! bounded time (or a bounded count), against loopback addresses only, and stops by itself.
//! Setup that is not under test (bulk users and products) goes straight to the database.
//! `apps/loadgen/run-benchmarks` runs every scenario in order.

mod alerts;
mod cards;
mod fulfilment;
mod harness;
mod http;
mod logins;
mod pipeline;
mod rankings;
mod rolling;
mod settlement;
mod storefront;
mod summary;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

use cards::{CardRun, card_orders};
use harness::hello_server;
use storefront::{coupons, drop_sale, list, orders};

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
        /// Each order takes one product of each of this many partners (one partner order each).
        #[arg(long, default_value_t = 1)]
        partners: usize,
    },
    /// The automatic purchase confirmation of ROWS due partner orders against a plain UPDATE of
    /// the same rows (on a database of its own: it writes ROWS orders).
    AutoConfirm {
        #[arg(
            long,
            env = "CONFIRM_BENCH_DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/commerce_confirm_bench"
        )]
        database_url: String,
        #[arg(long, default_value_t = 1_000_000)]
        rows: i64,
    },
    /// Wishlist alerts: SUBSCRIBERS customers of one restocked product told through the
    /// development SMTP server (started here), against that server's own rate for the same
    /// messages (on a database of its own: it writes SUBSCRIBERS users).
    Alerts {
        #[arg(
            long,
            env = "ALERTS_BENCH_DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/commerce_alerts_bench"
        )]
        database_url: String,
        #[arg(long, default_value_t = 100_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// The daily settlement of ORDERS confirmed partner orders of PARTNERS partners against a
    /// plain `INSERT … SELECT … GROUP BY` of the same rows (on a fresh database of its own).
    Settlement {
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
        server: String,
        #[arg(long, default_value_t = 1_000_000)]
        orders: i64,
        #[arg(long, default_value_t = 1_000)]
        partners: i64,
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
    /// A rolling restart (SIGTERM, then start again) of two API and two collector instances
    /// under order load: fails unless every request succeeds and every order is counted once.
    RollingRestart {
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
        server: String,
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value = "target/release")]
        bin_dir: String,
        #[arg(long, default_value_t = 32)]
        connections: usize,
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
    /// Prints the rows the scenarios recorded in FILE (their `LOADGEN_SUMMARY`) as one table.
    Summary { file: std::path::PathBuf },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::HelloServer { addr } => hello_server(addr).await,
        Command::Summary { file } => summary::print(&file),
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
            partners,
        } => {
            orders(
                api,
                &database_url,
                products,
                connections,
                seconds,
                hot_stock,
                partners,
            )
            .await
        }
        Command::AutoConfirm { database_url, rows } => {
            fulfilment::auto_confirm(&database_url, rows).await
        }
        Command::Alerts {
            database_url,
            subscribers,
            connections,
        } => alerts::alerts(&database_url, subscribers, connections).await,
        Command::Settlement {
            server,
            orders,
            partners,
        } => settlement::settlement(&server, orders, partners).await,
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
        Command::RollingRestart {
            server,
            brokers,
            bin_dir,
            connections,
        } => rolling::rolling_restart(&server, &brokers, &bin_dir, connections).await,
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
