//! Helpers for pipeline tests: collectors (and an API) wired to one test's topics, database,
//! consumer group and Redis prefix.

use std::time::Duration;

use commerce_collector::config::Config;
use commerce_collector::startup::Application;
use commerce_config::Reader;
use commerce_events::Envelope;
use commerce_testkit::{Spawned, TestDb, TestEnv, TestKafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
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
        commerce_telemetry::init_tracing("commerce-collector");
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

    /// The collector's environment for this pipeline.
    pub fn env(&self) -> TestEnv {
        TestEnv::new(&self.db.url, &self.redis_prefix, &self.kafka.settings)
            .topics(&self.catalog_topic, &self.order_topic)
            .with(&[
                ("COLLECTOR_GROUP_ID", &self.group),
                ("COLLECTOR_BATCH_WAIT_MS", "50"),
            ])
    }

    /// Starts a collector. Keep the returned value alive; [`Spawned::kill`] "kills" it (no
    /// graceful shutdown, no final offset commit).
    pub async fn collector(&self) -> Spawned {
        self.collector_with(&[]).await
    }

    /// A collector with extra settings.
    pub async fn collector_with(&self, extra: &[(&str, &str)]) -> Spawned {
        let vars = self.env().with(extra).vars();
        let config = Config::read(&Reader::new(vars)).expect("valid collector config");
        let app = Application::build(config).await.expect("collector builds");
        Spawned::start(app.into_server())
    }

    /// `Ok` once the collectors' group has committed every message of both topics: every
    /// message produced so far (redeliveries included) has been applied or deduplicated. The
    /// positive signal to wait for before asserting that nothing was counted twice.
    pub async fn consumed_all(&self) -> Result<(), String> {
        self.consumed_all_by(&self.group).await
    }

    /// [`Pipeline::consumed_all`] for another consumer group.
    pub async fn consumed_all_by(&self, group: &str) -> Result<(), String> {
        let settings = self.kafka.settings.clone();
        let group = group.to_owned();
        let topics = [self.catalog_topic.clone(), self.order_topic.clone()];
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = settings
                .consumer_config(&group)
                .create()
                .map_err(|e| e.to_string())?;
            let timeout = Duration::from_secs(5);
            let mut wanted = TopicPartitionList::new();
            for topic in &topics {
                for partition in 0..3 {
                    wanted.add_partition(topic, partition);
                }
            }
            let committed = consumer
                .committed_offsets(wanted, timeout)
                .map_err(|e| e.to_string())?;
            let mut behind = Vec::new();
            for entry in committed.elements() {
                let (_, high) = consumer
                    .fetch_watermarks(entry.topic(), entry.partition(), timeout)
                    .map_err(|e| e.to_string())?;
                let at = match entry.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                };
                if at < high {
                    behind.push(format!(
                        "{}[{}] at {at} of {high}",
                        entry.topic(),
                        entry.partition()
                    ));
                }
            }
            if behind.is_empty() {
                Ok(())
            } else {
                Err(behind.join(", "))
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Waits until [`Pipeline::consumed_all`] holds.
    pub async fn wait_consumed(&self) {
        commerce_testkit::eventually(
            "the collector group commits every message",
            Duration::from_secs(60),
            async || self.consumed_all().await,
        )
        .await;
    }

    /// Waits until the collectors have folded every daily change into the all-time, weekly and
    /// monthly figures (and so queued the weeks' and months' live rankings for refresh).
    pub async fn wait_folded(&self) {
        commerce_testkit::until(
            "the collectors fold every daily change",
            Duration::from_secs(30),
            async || {
                commerce_testkit::count(
                    &self.db.url,
                    "SELECT count(*) AS n FROM product_metrics_daily
                      WHERE (view_count, like_count, order_count, sales_quantity, sales_amount)
                            <> (folded_views, folded_likes, folded_orders, folded_quantity,
                                folded_amount)",
                )
                .await
                    == 0
            },
        )
        .await;
    }

    /// Waits until [`Pipeline::consumed_all_by`] holds for `group`.
    pub async fn wait_consumed_by(&self, group: &str) {
        commerce_testkit::eventually(
            &format!("group {group} commits every message"),
            Duration::from_secs(60),
            async || self.consumed_all_by(group).await,
        )
        .await;
    }

    /// Sets the group's committed offsets back to the start of both topics (as
    /// `kafka-consumer-groups --reset-offsets --to-earliest` does; no member may be running).
    pub async fn reset_offsets_to_earliest(&self) {
        let settings = self.kafka.settings.clone();
        let group = self.group.clone();
        let topics = [self.catalog_topic.clone(), self.order_topic.clone()];
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = settings.consumer_config(&group).create().unwrap();
            let mut earliest = TopicPartitionList::new();
            for topic in &topics {
                for partition in 0..3 {
                    earliest
                        .add_partition_offset(topic, partition, Offset::Offset(0))
                        .unwrap();
                }
            }
            consumer
                .commit(&earliest, rdkafka::consumer::CommitMode::Sync)
                .expect("offsets reset");
            let committed = consumer
                .committed_offsets(earliest, Duration::from_secs(5))
                .unwrap();
            assert!(
                committed
                    .elements()
                    .iter()
                    .all(|e| e.offset() == Offset::Offset(0)),
                "the reset took: {committed:?}"
            );
        })
        .await
        .unwrap();
    }

    /// Reads `n` dead letters of `topic` (its dead-letter topic is read), failing after a minute.
    pub async fn dead_letters(&self, topic: &str, n: usize) -> Vec<DeadLetter> {
        use rdkafka::consumer::StreamConsumer;
        use rdkafka::message::Message;
        let dlq: StreamConsumer = self
            .kafka
            .settings
            .consumer_config(&self.kafka.group("dlq-reader"))
            .create()
            .unwrap();
        dlq.subscribe(&[&format!("{topic}.dlq")]).unwrap();
        let mut letters = Vec::new();
        while letters.len() < n {
            let msg = tokio::time::timeout(Duration::from_secs(60), dlq.recv())
                .await
                .unwrap_or_else(|_| panic!("{n} dead letters arrive; got {letters:?}"))
                .unwrap();
            let header = |name: &str| commerce_testkit::header(&msg, name).unwrap_or_default();
            letters.push(DeadLetter {
                reason: header("dlq_reason"),
                error: header("dlq_error"),
                source_topic: header("dlq_source_topic"),
                source_offset: header("dlq_source_offset"),
                payload: msg
                    .payload()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
            });
        }
        letters
    }

    /// Produces envelopes straight to their topic (as the relay would).
    pub async fn produce(&self, envelopes: &[Envelope]) {
        let producer = self.kafka.settings.producer("test").unwrap();
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
        producer: &commerce_kafka::Producer,
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

/// A dead letter as read back from a dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub reason: String,
    pub error: String,
    pub source_topic: String,
    pub source_offset: String,
    pub payload: Option<String>,
}

/// Polls `url` until `check` accepts the JSON body, or fails after `secs` seconds.
pub async fn eventually(url: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
    commerce_testkit::eventually(url, Duration::from_secs(secs), async || {
        let body = get_json(url).await?;
        if check(&body) {
            Ok(body)
        } else {
            Err(body.to_string())
        }
    })
    .await
}

/// The JSON body of `url`.
pub async fn get_json(url: &str) -> Result<Value, String> {
    let res = reqwest::get(url).await.map_err(|e| e.to_string())?;
    res.json::<Value>().await.map_err(|e| e.to_string())
}

/// The value of a counter or gauge on `base`'s `/metrics` (0 when absent): `name` is the series
/// as exported, with its labels if it has any (`ranking_fallbacks_total{reason="not_ready"}`).
pub async fn metric(base: &str, name: &str) -> f64 {
    commerce_testkit::metric(base, name).await.unwrap_or(0.0)
}

/// A running commerce-api wired to the pipeline's topics and Redis prefix.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    pub _running: Spawned,
}

impl Api {
    pub async fn start(p: &Pipeline) -> Self {
        Self::start_with(p, &[]).await
    }

    /// An API with extra settings (e.g. `PG_BASE_URL`).
    pub async fn start_with(p: &Pipeline, extra: &[(&str, &str)]) -> Self {
        let db = TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
        let vars = TestEnv::new(&db.url, &p.redis_prefix, &p.kafka.settings)
            .topics(&p.catalog_topic, &p.order_topic)
            .with(&[("OUTBOX_POLL_INTERVAL_MS", "200")])
            .with(extra)
            .vars();
        let config = commerce_api::config::Config::read(&Reader::new(vars)).unwrap();
        let app = commerce_api::startup::Application::build(config)
            .await
            .unwrap();
        let running = Spawned::start(app.into_server());
        Self {
            base: running.base.clone(),
            client: reqwest::Client::new(),
            db,
            _running: running,
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

    /// Grants the holder of `token` `amount` points, as the admin (`admin`'s token).
    pub async fn grant_points(&self, admin: &str, token: &str, amount: i64) {
        let me: Value = self
            .client
            .get(format!("{}/api/v1/users/me", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = me["id"].as_i64().expect("the user's id");
        self.post(
            &format!("/api/v1/admin/users/{id}/points"),
            admin,
            json!({"amount": amount, "reason": "test purchases"}),
        )
        .await;
    }

    /// The admin's token.
    pub async fn admin(&self) -> String {
        self.token("admin", commerce_api::config::DEV_ADMIN_PASSWORD)
            .await
    }

    /// A new brand's id.
    pub async fn brand(&self, admin: &str, name: &str) -> i64 {
        self.post("/api/v1/admin/brands", admin, json!({"name": name}))
            .await["id"]
            .as_i64()
            .unwrap()
    }

    /// A new product's id.
    pub async fn product(
        &self,
        admin: &str,
        brand: i64,
        name: &str,
        price: i64,
        stock: i64,
    ) -> i64 {
        self.post(
            "/api/v1/admin/products",
            admin,
            json!({"brand_id": brand, "name": name, "price": price, "stock": stock}),
        )
        .await["id"]
            .as_i64()
            .unwrap()
    }

    /// Signs `login` up (password `<login>-password`) and returns its token.
    pub async fn customer(&self, login: &str) -> String {
        let password = format!("{login}-password");
        let signup = json!({"login_id": login, "password": password, "name": login, "email": format!("{login}@example.com")});
        let res = self
            .client
            .post(format!("{}/api/v1/users", self.base))
            .json(&signup)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "signing {login} up");
        self.token(login, &password).await
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

/// A running pg-simulator that settles every payment, on a database of its own.
pub struct Gateway {
    pub base: String,
    pub simulator: std::sync::Arc<pg_simulator::Simulator>,
    pub _running: Spawned,
    pub _db: TestDb,
}

impl Gateway {
    pub async fn reliable() -> Self {
        let db = TestDb::new("pg_simulator", pg_simulator::MIGRATIONS).await;
        let app = pg_simulator::Application::build(pg_simulator::config::Config::local(
            &db.url,
            pg_simulator::behaviour::Behaviour::reliable(),
            1,
        ))
        .await
        .unwrap();
        let simulator = app.simulator();
        let running = Spawned::start(app.into_server());
        Self {
            base: running.base.clone(),
            simulator,
            _running: running,
            _db: db,
        }
    }
}
