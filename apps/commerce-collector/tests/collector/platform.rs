//! Readiness of the collector over real HTTP: the database and Kafka are critical to it.

use commerce_collector::config::Config;
use commerce_collector::startup::Application;
use commerce_config::Reader;
use commerce_testkit::{Spawned, TestDb, TestEnv};

async fn ready(overrides: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let prefix = format!("test:{}:", commerce_testkit::unique_suffix());
    let vars = TestEnv::new(&db.url, &prefix, &commerce_testkit::kafka_settings())
        .with(overrides)
        .vars();
    let app = Application::build(Config::read(&Reader::new(vars)).unwrap())
        .await
        .unwrap();
    let running = Spawned::start(app.into_server());
    let res = reqwest::get(format!("{}/health/ready", running.base))
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn ready_when_database_redis_and_kafka_answer() {
    let (status, body) = ready(&[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "UP");
}

#[tokio::test]
async fn unready_naming_kafka_when_no_broker_answers() {
    let (status, body) = ready(&[("KAFKA_BROKERS", "127.0.0.1:1")]).await;
    assert_eq!(status, 503, "{body}");
    let kafka = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kafka")
        .unwrap();
    assert_eq!(kafka["status"], "DOWN");
    assert_eq!(kafka["critical"], true);
}
