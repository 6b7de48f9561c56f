//! Health, readiness, metrics and error envelope of the running API, over real HTTP against
//! real PostgreSQL and Redis.

use std::collections::HashMap;

use commerce_api::config::Config;
use commerce_api::startup::Application;
use commerce_config::Reader;
use commerce_testkit::TestDb;

struct TestApp {
    base: String,
    _db: TestDb,
}

async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let db = TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
    let mut vars: HashMap<String, String> = HashMap::from([
        ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ("DATABASE_URL".into(), db.url.clone()),
        ("REDIS_URL".into(), commerce_testkit::redis_url()),
        (
            "REDIS_KEY_PREFIX".into(),
            format!("test:{}:", commerce_testkit::unique_suffix()),
        ),
        (
            "KAFKA_BROKERS".into(),
            commerce_testkit::kafka_settings().brokers,
        ),
    ]);
    for (k, v) in overrides {
        vars.insert((*k).into(), (*v).into());
    }
    let config = Config::read(&Reader::new(vars)).expect("valid test config");
    let app = Application::build(config).await.expect("app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp { base, _db: db }
}

#[tokio::test]
async fn ready_reports_every_dependency_up() {
    let app = spawn_app_with(&[]).await;
    let res = reqwest::get(format!("{}/health/ready", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "UP", "{body}");
    let names: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["database", "redis", "kafka"]);
}

#[tokio::test]
async fn ready_is_503_naming_the_database_when_it_is_unreachable() {
    // A closed port: nothing listens on port 1.
    let app = spawn_app_with(&[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/commerce")]).await;
    let res = reqwest::get(format!("{}/health/ready", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "DOWN");
    let db = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "database")
        .unwrap();
    assert_eq!(db["status"], "DOWN");
    // Liveness does not depend on the database.
    let live = reqwest::get(format!("{}/health/live", app.base))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn redis_outage_degrades_but_does_not_fail_readiness() {
    let app = spawn_app_with(&[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let res = reqwest::get(format!("{}/health/ready", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "DEGRADED", "{body}");
}

#[tokio::test]
async fn metrics_expose_request_histograms_labelled_by_route_template() {
    let app = spawn_app_with(&[]).await;
    let client = reqwest::Client::new();
    client
        .get(format!("{}/health/live", app.base))
        .send()
        .await
        .unwrap();
    let text = client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("# HELP http_requests_total"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains(r#"route="/health/live""#)
            && l.contains(r#"status="200""#)),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "latency is a histogram with buckets: {text}"
    );
}

#[tokio::test]
async fn unknown_route_is_a_problem_json_404() {
    let app = spawn_app_with(&[]).await;
    let res = reqwest::get(format!("{}/no/such/route", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "ROUTE_NOT_FOUND");
}
