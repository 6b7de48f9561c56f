//! A sign-up and login flood against the API's release binary in a child process: what the
//! bounded hashing pool answers (200, 401, 503), how long a login waits, and the process's
//! memory before, during and after (read from /proc).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::harness::run;
use crate::http;
use crate::pipeline::{fresh_database, log_file, status_kb, stop};

/// The process's resident and peak resident memory, in MB.
fn memory_mb(child: &Child) -> Option<(u64, u64)> {
    Some((
        status_kb(child.id(), "VmRSS:")? / 1024,
        status_kb(child.id(), "VmHWM:")? / 1024,
    ))
}

pub struct Logins<'a> {
    pub server: &'a str,
    pub bin_dir: &'a str,
    pub users: usize,
    pub connections: usize,
    pub seconds: u64,
}

pub async fn logins(o: Logins<'_>) -> anyhow::Result<()> {
    let url = fresh_database(o.server, "commerce_logins_bench", commerce_api::MIGRATIONS).await?;
    let addr: std::net::SocketAddr = "127.0.0.1:18090".parse()?;
    let child = Command::new(format!("{}/commerce-api", o.bin_dir))
        .arg("serve")
        .env("APP_PROFILE", "dev")
        .env("HTTP_ADDR", addr.to_string())
        .env("DATABASE_URL", &url)
        .env(
            "REDIS_KEY_PREFIX",
            format!("bench-logins-{}:", std::process::id()),
        )
        .env("OUTBOX_RELAY_ENABLED", "false")
        .env("PAYMENT_RECONCILE_ENABLED", "false")
        .env("PAYMENT_REFUNDS_ENABLED", "false")
        .env("RATE_LIMITS_ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log_file("logins-api")?)
        .spawn()
        .context("starting target/release/commerce-api serve (build it first)")?;
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the API did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The admin account is hashed at start; wait for it so the baseline includes it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, _) = memory_mb(&child).context("reading the API's memory")?;
    println!("commerce-api RSS at start    {idle} MB");

    let users = o.users;
    let tag = std::process::id();
    // Within what the hashing pool admits (threads + queue), so that every sign-up is hashed.
    let sign_up = run(
        "sign-ups (8 connections)",
        addr,
        8,
        Duration::from_secs(600),
        Some(users),
        move |c, i| {
            let n = c * 1_000_000 + i;
            let body = format!(
                r#"{{"login_id":"u{tag}-{n}","password":"correct horse","name":"N","email":"u{n}@example.com"}}"#
            );
            http::request("POST", &addr, "/api/v1/users", None, Some(&body))
        },
    )
    .await?;
    sign_up.print();
    let created: Vec<String> = {
        use diesel::sql_types::Text;
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Login {
            #[diesel(sql_type = Text)]
            login_id: String,
        }
        let mut conn = AsyncPgConnection::establish(&url).await?;
        diesel::sql_query("SELECT login_id FROM users WHERE role = 'USER' ORDER BY id")
            .load::<Login>(&mut conn)
            .await?
            .into_iter()
            .map(|l| l.login_id)
            .collect()
    };
    anyhow::ensure!(!created.is_empty(), "no user was created");

    // The flood: a third right passwords, a third wrong ones, a third unknown login ids, from
    // every connection at once, for as long as asked; memory sampled meanwhile.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pid = child.id();
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut highest = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kb) = status_kb(pid, "VmRSS:") {
                    highest = highest.max(kb / 1024);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            highest
        })
    };
    let logins = std::sync::Arc::new(created);
    let flood = {
        let logins = logins.clone();
        run(
            "login flood",
            addr,
            o.connections,
            Duration::from_secs(o.seconds),
            None,
            move |c, i| {
                let login = &logins[(c * 7919 + i) % logins.len()];
                let body = match i % 3 {
                    0 => format!(r#"{{"login_id":"{login}","password":"correct horse"}}"#),
                    1 => format!(r#"{{"login_id":"{login}","password":"wrong password"}}"#),
                    _ => format!(r#"{{"login_id":"nobody-{c}-{i}","password":"whatever1"}}"#),
                };
                http::request("POST", &addr, "/api/v1/auth/token", None, Some(&body))
            },
        )
    };
    // A real user signing in now and then during the flood.
    let probe = {
        let login = logins[0].clone();
        run(
            "one user during the flood",
            addr,
            1,
            Duration::from_secs(o.seconds),
            None,
            move |_, _| {
                let body = format!(r#"{{"login_id":"{login}","password":"correct horse"}}"#);
                http::request("POST", &addr, "/api/v1/auth/token", None, Some(&body))
            },
        )
    };
    let (flood, probe) = tokio::join!(flood, probe);
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let during = sampler.await?;
    flood?.print();
    probe?.print();
    let (after, peak) = memory_mb(&child).context("reading the API's memory")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (settled, _) = memory_mb(&child).context("reading the API's memory")?;
    println!(
        "commerce-api RSS             start {idle} MB, highest sampled during the flood {during} MB, right after {after} MB, 5 s later {settled} MB, peak (VmHWM) {peak} MB"
    );
    stop(child);
    Ok(())
}
