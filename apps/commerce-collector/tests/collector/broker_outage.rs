//! Broker outages, on a broker of the test's own: the API keeps taking orders while the broker
//! is frozen, and once it is back every order reaches the collector exactly once, the relay and
//! the consumer recovering by themselves.
//!
//! The freeze outlasts the relay's message timeout (10 s) and the consumer's session timeout
//! (6 s), so publishes fail and are retried, and the group rebalances on resume.
//!
//! Not covered here: stopping the development broker and starting an empty one on the same
//! port. librdkafka 2.12 crashed (SIGSEGV in `rd_kafka_metadata_cache_find`) on the metadata the
//! development broker returned after such a restart; see README, "Known issues".

use std::time::{Duration, Instant};

use crate::support::{Api, Pipeline, eventually};
use commerce_testkit::PrivateBroker;
use serde_json::json;

struct Shop {
    api: Api,
    buyer: String,
    product: i64,
}

impl Shop {
    async fn open(p: &Pipeline) -> Self {
        let api = Api::start(p).await;
        let admin = api
            .token("admin", commerce_api::config::DEV_ADMIN_PASSWORD)
            .await;
        let brand = api
            .post("/api/v1/admin/brands", &admin, json!({"name": "Acme"}))
            .await["id"]
            .as_i64()
            .unwrap();
        let product = api
            .post(
                "/api/v1/admin/products",
                &admin,
                json!({"brand_id": brand, "name": "Thing", "price": 100, "stock": 10_000}),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        let signup = json!({"login_id": "buyer", "password": "buyer-password", "name": "B", "email": "b@example.com"});
        api.client
            .post(format!("{}/api/v1/users", api.base))
            .json(&signup)
            .send()
            .await
            .unwrap();
        let buyer = api.token("buyer", "buyer-password").await;
        api.grant_points(&admin, &buyer, 1_000_000).await;
        Self {
            api,
            buyer,
            product,
        }
    }

    /// Places `n` orders; each must be accepted promptly whatever the broker does.
    async fn order(&self, n: usize) {
        for _ in 0..n {
            let started = Instant::now();
            self.api
                .post(
                    "/api/v1/orders",
                    &self.buyer,
                    json!({"items": [{"product_id": self.product, "quantity": 1}], "payment": {"method": "POINT"}}),
                )
                .await;
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "an order took {:?}",
                started.elapsed()
            );
        }
    }
}

async fn pipeline_on(broker: &PrivateBroker) -> Pipeline {
    Pipeline::on(commerce_testkit::TestKafka::with_settings(broker.settings()).await).await
}

#[tokio::test]
async fn a_frozen_broker_delays_events_but_loses_none() {
    let broker = PrivateBroker::start().await;
    let p = pipeline_on(&broker).await;
    let shop = Shop::open(&p).await;
    let _task = p.collector().await;
    let collector = _task.base.clone();
    let metrics = format!("{collector}/api/v1/product-metrics/{}", shop.product);

    shop.order(10).await;
    eventually(&metrics, 60, |b| b["order_count"] == 10).await;

    broker.pause();
    shop.order(10).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    broker.resume();

    let m = eventually(&metrics, 120, |b| b["order_count"] == 20).await;
    assert_eq!(m["sales_quantity"], 20);
}

/// `/health/consuming` of the collector at `base`: its status and body.
async fn consuming(base: &str) -> (u16, serde_json::Value) {
    let res = reqwest::get(format!("{base}/health/consuming"))
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_consumer_left_without_an_assignment_is_reported_and_recreated() {
    let broker = PrivateBroker::start().await;
    let p = pipeline_on(&broker).await;
    let running = p
        .collector_with(&[("COLLECTOR_JOIN_TIMEOUT_MS", "8000")])
        .await;
    let base = running.base.clone();
    let joined = commerce_testkit::eventually(
        "the collector joins its group",
        Duration::from_secs(60),
        async || match consuming(&base).await {
            (200, _) => Ok(()),
            other => Err(other),
        },
    )
    .await;
    let () = joined;
    assert_eq!(
        crate::support::metric(&base, "collector_assigned_partitions").await,
        6.0,
        "both topics' three partitions"
    );

    // The coordinator stops answering: past the session timeout the member loses its
    // assignment and cannot get another.
    broker.pause();
    let reported = commerce_testkit::eventually(
        "the consuming check reports the member waiting for its group",
        Duration::from_secs(30),
        async || match consuming(&base).await {
            (503, body) if body.to_string().contains("waiting") => Ok(body),
            other => Err(other),
        },
    )
    .await;
    assert!(reported.to_string().contains("assign"), "{reported}");
    assert_eq!(
        crate::support::metric(&base, "collector_group_joined").await,
        0.0
    );
    commerce_testkit::eventually(
        "the stalled consumer is recreated",
        Duration::from_secs(30),
        async || match crate::support::metric(&base, "collector_group_join_stalls_total").await {
            n if n >= 1.0 => Ok(()),
            n => Err(n),
        },
    )
    .await;

    // (Apache Kafka completes the next rebalance once the lost member's session expires, and
    // the recreated consumer joins. The development broker never expires it: the group stays
    // wedged after the broker answers again, which the consuming check keeps reporting; see
    // README, "Known issues".)
    broker.resume();
    assert_eq!(
        crate::support::metric(&base, "collector_assigned_partitions").await,
        0.0,
        "no partition is held while the member waits"
    );
    // The broker itself serves: a member of a new group is assigned the same topic at once.
    let probe_settings = broker.settings();
    let topic = p.order_topic.clone();
    let group = p.kafka.group("probe");
    let assigned = tokio::task::spawn_blocking(move || {
        use commerce_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
        let probe: BaseConsumer = probe_settings.consumer_config(&group).create().unwrap();
        probe.subscribe(&[&topic]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let _ = probe.poll(Duration::from_millis(200));
            let held = probe.assignment().map_or(0, |a| a.count());
            if held > 0 {
                return held;
            }
        }
        0
    })
    .await
    .unwrap();
    assert_eq!(assigned, 3, "a new group joins the resumed broker");
}
