//! A rolling restart under load: two API and two collector instances (release binaries, fresh
//! databases, topics and group of their own), orders placed through whichever API instance a
//! load balancer would route to (one that answered its last readiness probe), and each of the
//! four instances stopped with SIGTERM and started again in turn. It passes when no request
//! failed and the collectors counted every order exactly once.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::harness::{Id, authenticator, bulk_users, run_id};
use crate::http;
use crate::pipeline::{count, fresh_database, log_file};

const API_PORTS: [u16; 2] = [18280, 18281];
const COLLECTOR_PORTS: [u16; 2] = [18290, 18291];
/// How often the emulated load balancer probes each API instance's readiness.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// One instance: how to start it again, and the running process.
struct Instance {
    name: String,
    port: u16,
    command: Box<dyn Fn() -> anyhow::Result<Child>>,
    child: Option<Child>,
    /// The path that says it is in service.
    ready: &'static str,
}

impl Instance {
    fn start(&mut self) -> anyhow::Result<()> {
        self.child = Some((self.command)()?);
        Ok(())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if probe(addr, self.ready).await {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not answer {} within 90 s",
                self.name,
                self.ready
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for the process to exit (it drains first).
    async fn stop(&mut self) -> anyhow::Result<Duration> {
        let mut child = self.child.take().context("not running")?;
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(status.success(), "{} exited with {status}", self.name);
                return Ok(started.elapsed());
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "{} did not exit within 60 s of SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn probe(addr: SocketAddr, path: &str) -> bool {
    let request = http::request("GET", &addr, path, None, None);
    match tokio::time::timeout(Duration::from_millis(500), async {
        let mut conn = http::Conn::open(addr).await?;
        conn.send(&request).await
    })
    .await
    {
        Ok(Ok((status, _))) => status == 200,
        _ => false,
    }
}

pub async fn rolling_restart(
    server: &str,
    brokers: &str,
    bin_dir: &str,
    connections: usize,
) -> anyhow::Result<()> {
    let tag = run_id();
    let api_url =
        fresh_database(server, "commerce_bench_rolling", commerce_api::MIGRATIONS).await?;
    let metrics_url = fresh_database(
        server,
        "commerce_metrics_bench_rolling",
        commerce_collector::MIGRATIONS,
    )
    .await?;
    let mut db = AsyncPgConnection::establish(&api_url).await?;
    let brand: Id = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query("INSERT INTO brands (name, partner_id) VALUES ($1, 1) RETURNING id")
            .bind::<Text, _>(&tag),
        &mut db,
    )
    .await?;
    let products: Vec<i64> = diesel_async::RunQueryDsl::load::<Id>(
        diesel::sql_query(
            "INSERT INTO products (brand_id, partner_id, name, price, stock)
             SELECT $1, 1, 'rolling ' || g, 1000, 1000000 FROM generate_series(1, 50) g
             RETURNING id",
        )
        .bind::<BigInt, _>(brand.id),
        &mut db,
    )
    .await?
    .into_iter()
    .map(|r| r.id)
    .collect();
    let users = bulk_users(&mut db, &format!("{tag}-r-"), connections, 1_000_000_000).await?;
    let auth = authenticator();
    let tokens: Vec<String> = users
        .iter()
        .map(|id| {
            auth.issue(*id, commerce_api::infra::auth::Role::User)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<_, _>>()?;

    let catalog_topic = format!("bench-rolling-catalog-{tag}");
    let order_topic = format!("bench-rolling-orders-{tag}");
    let common = [
        ("APP_PROFILE", "dev".to_owned()),
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("CATALOG_TOPIC", catalog_topic.clone()),
        ("ORDER_TOPIC", order_topic.clone()),
        ("REDIS_KEY_PREFIX", format!("bench:{tag}:")),
        // A load balancer probing every 100 ms notices within the delay.
        ("SHUTDOWN_READINESS_DELAY_MS", "1000".to_owned()),
        ("SHUTDOWN_DRAIN_SECONDS", "10".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let mut instances = Vec::new();
    for (i, port) in API_PORTS.into_iter().enumerate() {
        let (bin, env, url) = (
            format!("{bin_dir}/commerce-api"),
            common.clone(),
            api_url.clone(),
        );
        let name = format!("commerce-api-{i}");
        let log = name.clone();
        instances.push(Instance {
            name,
            port,
            ready: "/health/ready",
            child: None,
            command: Box::new(move || {
                Command::new(&bin)
                    .arg("serve")
                    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                    .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
                    .env("DATABASE_URL", &url)
                    .env("RATE_LIMITS_ENABLED", "false")
                    .env("SETTLEMENT_ENABLED", "false")
                    .env("PG_BASE_URL", "http://127.0.0.1:1")
                    .stdout(log_file(&log)?)
                    .stderr(log_file(&format!("{log}-stderr"))?)
                    .spawn()
                    .context("starting target/release/commerce-api (build it first)")
            }),
        });
    }
    for (i, port) in COLLECTOR_PORTS.into_iter().enumerate() {
        let (bin, env, url, group) = (
            format!("{bin_dir}/commerce-collector"),
            common.clone(),
            metrics_url.clone(),
            format!("bench-rolling-{tag}"),
        );
        let name = format!("commerce-collector-{i}");
        let log = name.clone();
        instances.push(Instance {
            name,
            port,
            ready: "/health/consuming",
            child: None,
            command: Box::new(move || {
                Command::new(&bin)
                    .arg("serve")
                    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                    .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
                    .env("DATABASE_URL", &url)
                    .env("COLLECTOR_GROUP_ID", &group)
                    .stdout(log_file(&log)?)
                    .stderr(log_file(&format!("{log}-stderr"))?)
                    .spawn()
                    .context("starting target/release/commerce-collector (build it first)")
            }),
        });
    }
    for instance in &mut instances {
        instance.start()?;
    }
    for instance in &instances {
        instance.wait_ready().await?;
    }
    println!("two API and two collector instances up; load with {connections} connections");

    // The load balancer: an API instance is in rotation while its last probe answered 200.
    let in_rotation: Arc<[AtomicBool; 2]> =
        Arc::new([AtomicBool::new(true), AtomicBool::new(true)]);
    // Each API instance's process generation: a connection kept from before a restart is
    // closed (as any HTTP client's pool would notice before reusing it) and opened again.
    let generation: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (in_rotation, stop) = (in_rotation.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, port) in API_PORTS.into_iter().enumerate() {
                    let up = probe(([127, 0, 0, 1], port).into(), "/health/ready").await;
                    in_rotation[i].store(up, Ordering::Relaxed);
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
        })
    };
    let sent = Arc::new(AtomicUsize::new(0));
    let placed = Arc::new(AtomicUsize::new(0));
    let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let products = Arc::new(products);
    let mut workers = Vec::new();
    for (c, token) in tokens.into_iter().enumerate() {
        let generation = generation.clone();
        let (in_rotation, stop, sent, placed, failures, products) = (
            in_rotation.clone(),
            stop.clone(),
            sent.clone(),
            placed.clone(),
            failures.clone(),
            products.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut conns: [Option<(usize, http::Conn)>; 2] = [None, None];
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let target = (0..2)
                    .map(|k| (i + k) % 2)
                    .find(|k| in_rotation[*k].load(Ordering::Relaxed));
                let Some(target) = target else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let addr: SocketAddr = ([127, 0, 0, 1], API_PORTS[target]).into();
                let product = products[(c * 7919 + i * 104_729) % products.len()];
                let body = format!(
                    r#"{{"items":[{{"product_id":{product},"quantity":1}}],"payment":{{"method":"POINT"}}}}"#
                );
                let request = http::request("POST", &addr, "/api/v1/orders", Some(&token), Some(&body));
                sent.fetch_add(1, Ordering::Relaxed);
                let current = generation[target].load(Ordering::Relaxed);
                if conns[target].as_ref().is_some_and(|(g, _)| *g != current) {
                    conns[target] = None;
                }
                let outcome = async {
                    if conns[target].is_none() {
                        conns[target] = Some((current, http::Conn::open(addr).await?));
                    }
                    conns[target]
                        .as_mut()
                        .expect("opened above")
                        .1
                        .send(&request)
                        .await
                }
                .await;
                match outcome {
                    Ok((201, _)) => {
                        placed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, body)) => {
                        conns[target] = None;
                        failures.lock().expect("not poisoned").push(format!(
                            "{addr}: {status} {}",
                            String::from_utf8_lossy(&body)
                        ));
                    }
                    Err(e) => {
                        conns[target] = None;
                        failures
                            .lock()
                            .expect("not poisoned")
                            .push(format!("{addr}: {e}"));
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, instance) in instances.iter_mut().enumerate() {
        let before = placed.load(Ordering::Relaxed);
        let drained = instance.stop().await?;
        if let Some(g) = generation.get(i) {
            g.fetch_add(1, Ordering::Relaxed);
        }
        instance.start()?;
        instance.wait_ready().await?;
        println!(
            "restarted {:<20} drained in {:.1} s, back in service; orders placed meanwhile: {}",
            instance.name,
            drained.as_secs_f64(),
            placed.load(Ordering::Relaxed) - before
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    prober.await?;

    let orders = count(&mut db, "SELECT count(*) AS n FROM orders").await?;
    let mut metrics = AsyncPgConnection::establish(&metrics_url).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let counted = loop {
        let counted = count(
            &mut metrics,
            "SELECT coalesce(sum(order_count), 0)::bigint AS n FROM product_metrics",
        )
        .await?;
        if counted >= orders || Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let failures = failures.lock().expect("not poisoned");
    println!(
        "requests {}  orders placed {}  failed {}  orders in the database {orders}  counted by the collectors {counted}",
        sent.load(Ordering::Relaxed),
        placed.load(Ordering::Relaxed),
        failures.len()
    );
    for failure in failures.iter().take(10) {
        println!("  failed: {failure}");
    }
    ensure!(failures.is_empty(), "{} requests failed", failures.len());
    ensure!(
        counted == orders,
        "the collectors counted {counted} orders of {orders} (each once is the only right answer)"
    );
    ensure!(
        orders as usize == placed.load(Ordering::Relaxed),
        "{orders} orders in the database but {} acknowledged",
        placed.load(Ordering::Relaxed)
    );
    println!("rolling restart: zero failed requests; every order counted exactly once");
    Ok(())
}
