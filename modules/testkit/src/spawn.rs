//! How a test starts an app: the environment it reads ([`TestEnv`]) and the app serving on a
//! port of its own until the test ends ([`Spawned`]).

use std::collections::HashMap;

use commerce_kafka::KafkaSettings;

use crate::redis_url;

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
