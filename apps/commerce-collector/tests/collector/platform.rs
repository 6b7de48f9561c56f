//! Readiness of the collector over real HTTP: the database and Kafka are critical to it.

use commerce_collector::config::Config;
use commerce_collector::startup::Application;
use commerce_config::Reader;
use commerce_testkit::{Spawned, TestDb, TestEnv};

/// The readiness answer of a collector with `overrides`, once `settled` accepts it (the consumer
/// reports UP only once it has subscribed).
async fn ready(overrides: &[(&str, &str)]) -> (u16, serde_json::Value) {
    ready_when(overrides, |_, _| true).await
}

async fn ready_when(
    overrides: &[(&str, &str)],
    settled: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let prefix = format!("test:{}:", commerce_testkit::unique_suffix());
    let vars = TestEnv::new(&db.url, &prefix, &commerce_testkit::kafka_settings())
        .with(overrides)
        .vars();
    let app = Application::build(Config::read(&Reader::new(vars)).unwrap())
        .await
        .unwrap();
    let running = Spawned::start(app.into_server());
    let url = format!("{}/health/ready", running.base);
    commerce_testkit::eventually(&url, std::time::Duration::from_secs(20), async || {
        let res = reqwest::get(&url).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let body: serde_json::Value = res.json().await.map_err(|e| e.to_string())?;
        if settled(status, &body) {
            Ok((status, body))
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await
}

fn check<'a>(body: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {body}"))
}

#[tokio::test]
async fn ready_when_database_redis_and_kafka_answer_and_the_consumer_runs() {
    let (status, body) = ready_when(&[], |status, _| status == 200).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "UP");
    assert_eq!(check(&body, "consumer")["status"], "UP");
}

#[tokio::test]
async fn unready_naming_kafka_when_no_broker_answers() {
    let (status, body) = ready(&[("KAFKA_BROKERS", "127.0.0.1:1")]).await;
    assert_eq!(status, 503, "{body}");
    let kafka = check(&body, "kafka");
    assert_eq!(kafka["status"], "DOWN");
    assert_eq!(kafka["critical"], true);
}
