//! What every scenario shares: loopback-only targets, the hello-world ceiling, the connection
//! loop and its report, bulk setup straight into the database, signed requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::http;

pub(crate) fn loopback_only(addr: &SocketAddr) -> anyhow::Result<()> {
    ensure!(
        addr.ip().is_loopback(),
        "refusing to send load to {addr}: loopback only"
    );
    Ok(())
}

pub(crate) async fn hello_server(addr: SocketAddr) -> anyhow::Result<()> {
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
pub(crate) struct Report {
    pub(crate) label: String,
    pub(crate) elapsed: Duration,
    pub(crate) latencies_us: Vec<u32>,
    pub(crate) statuses: std::collections::BTreeMap<u16, usize>,
}

impl Report {
    pub(crate) fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len())
            - 1;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    pub(crate) fn print(&self) {
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
pub(crate) async fn run<F>(
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

pub(crate) async fn connect_db(url: &str) -> anyhow::Result<AsyncPgConnection> {
    AsyncPgConnection::establish(url)
        .await
        .with_context(|| "connecting to the API database (DATABASE_URL)".to_string())
}

#[derive(diesel::QueryableByName)]
pub(crate) struct Id {
    #[diesel(sql_type = BigInt)]
    pub(crate) id: i64,
}

/// Creates `n` users with `points` each directly in the database; returns their ids.
pub(crate) async fn bulk_users(
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

pub(crate) fn authenticator() -> commerce_api::infra::auth::Authenticator {
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
pub(crate) fn signed_posts(
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

pub(crate) fn run_id() -> String {
    format!("bench{}", std::process::id())
}
