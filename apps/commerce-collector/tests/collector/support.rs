//! Helpers for pipeline tests: collectors (and an API) wired to one test's topics, database,
//! consumer group and Redis prefix.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use commerce_collector::config::Config;
use commerce_collector::startup::Application;
use commerce_config::Reader;
use commerce_events::Envelope;
use commerce_testkit::{TestDb, TestKafka};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};

pub struct Pipeline {
    pub kafka: TestKafka,
    pub db: TestDb,
    pub catalog_topic: String,
    pub order_topic: String,
    pub group: String,
    pub redis_prefix: String,
}

impl Pipeline {
    pub async fn new() -> Self {
        Self::on(TestKafka::new().await).await
    }

    /// A pipeline on a given broker.
    pub async fn on(kafka: TestKafka) -> Self {
        // Logs show up in a failing test's output.
        commerce_telemetry::init_tracing();
        let topics = kafka
            .create_topics(&[("catalog-events", 3), ("order-events", 3)])
            .await;
        let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
        Self {
            group: kafka.group("collector"),
            catalog_topic: topics[0].clone(),
            order_topic: topics[1].clone(),
            redis_prefix: format!("test:{}:", commerce_testkit::unique_suffix()),
            kafka,
            db,
        }
    }

    pub fn vars(&self) -> HashMap<String, String> {
        HashMap::from([
            ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("DATABASE_URL".into(), self.db.url.clone()),
            ("REDIS_URL".into(), commerce_testkit::redis_url()),
            ("REDIS_KEY_PREFIX".into(), self.redis_prefix.clone()),
            ("KAFKA_BROKERS".into(), self.kafka.settings.brokers.clone()),
            ("CATALOG_TOPIC".into(), self.catalog_topic.clone()),
            ("ORDER_TOPIC".into(), self.order_topic.clone()),
            ("KAFKA_TOPIC_PARTITIONS".into(), "3".into()),
            ("COLLECTOR_GROUP_ID".into(), self.group.clone()),
            ("COLLECTOR_BATCH_WAIT_MS".into(), "50".into()),
        ])
    }

    /// Starts a collector; returns its base URL and the task serving it (abort it to "kill" it:
    /// no graceful shutdown, no final offset commit).
    pub async fn collector(&self) -> (String, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let config = Config::read(&Reader::new(self.vars())).expect("valid collector config");
        let app = Application::build(config).await.expect("collector builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let task = tokio::spawn(app.run_until_stopped(std::future::pending()));
        (base, task)
    }

    /// Produces envelopes straight to their topic (as the relay would).
    pub async fn produce(&self, envelopes: &[Envelope]) {
        let producer = self.kafka.settings.producer().unwrap();
        for e in envelopes {
            let topic = match e.event.stream() {
                commerce_events::Stream::Catalog => &self.catalog_topic,
                commerce_events::Stream::Order => &self.order_topic,
            };
            self.produce_raw(
                &producer,
                topic,
                &e.aggregate_id.to_string(),
                &serde_json::to_vec(e).unwrap(),
            )
            .await;
        }
    }

    pub async fn produce_raw(
        &self,
        producer: &rdkafka::producer::FutureProducer,
        topic: &str,
        key: &str,
        payload: &[u8],
    ) {
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

/// Polls `url` until `check` accepts the JSON body, or fails after `secs` seconds.
pub async fn eventually(
    url: &str,
    secs: u64,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut last = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        if let Ok(res) = reqwest::get(url).await
            && let Ok(body) = res.json::<serde_json::Value>().await
        {
            if check(&body) {
                return body;
            }
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{url} never satisfied the check; last body: {last}");
}

/// A running commerce-api wired to the pipeline's topics and Redis prefix.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub db: TestDb,
}

impl Api {
    pub async fn start(p: &Pipeline) -> Self {
        Self::start_with(p, &[]).await
    }

    /// An API with extra settings (e.g. `PG_BASE_URL`).
    pub async fn start_with(p: &Pipeline, extra: &[(&str, &str)]) -> Self {
        let db = TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
        let mut vars: HashMap<String, String> = HashMap::from([
            ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("DATABASE_URL".into(), db.url.clone()),
            ("REDIS_URL".into(), commerce_testkit::redis_url()),
            ("REDIS_KEY_PREFIX".into(), p.redis_prefix.clone()),
            ("KAFKA_BROKERS".into(), p.kafka.settings.brokers.clone()),
            ("CATALOG_TOPIC".into(), p.catalog_topic.clone()),
            ("ORDER_TOPIC".into(), p.order_topic.clone()),
            ("KAFKA_TOPIC_PARTITIONS".into(), "3".into()),
            ("OUTBOX_POLL_INTERVAL_MS".into(), "200".into()),
        ]);
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = commerce_api::config::Config::read(&Reader::new(vars)).unwrap();
        let app = commerce_api::startup::Application::build(config)
            .await
            .unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        Self {
            base,
            client: reqwest::Client::new(),
            db,
        }
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().await.unwrap()
    }

    pub async fn token(&self, login: &str, password: &str) -> String {
        for _ in 0..100 {
            let res = self
                .client
                .post(format!("{}/api/v1/auth/token", self.base))
                .json(&json!({"login_id": login, "password": password}))
                .send()
                .await
                .unwrap();
            if res.status().is_success() {
                return res.json::<Value>().await.unwrap()["access_token"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("could not log in as {login}");
    }
}
