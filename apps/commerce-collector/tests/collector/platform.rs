//! Readiness of the collector over real HTTP: the database is critical to serving; Kafka and the
//! consumer to consuming (`/health/consuming`).

use commerce_collector::config::Config;
use commerce_collector::startup::Application;
use commerce_config::Reader;
use commerce_testkit::{Spawned, TestDb, TestEnv};

/// The readiness answer of a collector with `overrides`, once `settled` accepts it (the consumer
/// reports UP only once it has subscribed).
async fn ready_when(
    overrides: &[(&str, &str)],
    settled: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let prefix = format!("test:{}:", commerce_testkit::unique_suffix());
    // Topics and a group of its own: its consumer joins a group no other run has touched.
    let suffix = commerce_testkit::unique_suffix();
    let group = format!("collector-{suffix}");
    let vars = TestEnv::new(&db.url, &prefix, &commerce_testkit::kafka_settings())
        .topics(
            &format!("catalog-events-{suffix}"),
            &format!("order-events-{suffix}"),
        )
        .with(&[("COLLECTOR_GROUP_ID", group.as_str())])
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
    let (status, body) = ready_when(&[], |_, body| body["status"] == "UP").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "UP");
    assert_eq!(check(&body, "consumer")["status"], "UP");
}

#[tokio::test]
async fn without_a_broker_rankings_stay_ready_and_the_consuming_check_names_kafka() {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let prefix = format!("test:{}:", commerce_testkit::unique_suffix());
    let vars = TestEnv::new(&db.url, &prefix, &commerce_testkit::kafka_settings())
        .with(&[("KAFKA_BROKERS", "127.0.0.1:1")])
        .vars();
    let app = Application::build(Config::read(&Reader::new(vars)).unwrap())
        .await
        .unwrap();
    let running = Spawned::start(app.into_server());
    let (ready, consuming) = commerce_testkit::eventually(
        "readiness and the consuming check see no broker",
        std::time::Duration::from_secs(20),
        async || {
            let mut seen = Vec::new();
            for path in ["/health/ready", "/health/consuming"] {
                let res = reqwest::get(format!("{}{path}", running.base))
                    .await
                    .map_err(|e| e.to_string())?;
                let status = res.status().as_u16();
                let body: serde_json::Value = res.json().await.map_err(|e| e.to_string())?;
                seen.push((status, body));
            }
            let kafka_down = seen.iter().all(|(_, b)| {
                b["checks"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["name"] == "kafka" && c["status"] == "DOWN")
                })
            });
            if kafka_down {
                Ok((seen.remove(0), seen.remove(0)))
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    // The ranking API stays in the load balancer, degraded.
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(ready.1["status"], "DEGRADED");
    assert_eq!(check(&ready.1, "kafka")["critical"], false);
    let (status, body) = reqwest::get(format!("{}/api/v1/rankings?period=daily", running.base))
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!((status, body), (200, ()), "rankings are served");
    // Consuming is down, and says why.
    assert_eq!(consuming.0, 503, "{}", consuming.1);
    assert_eq!(check(&consuming.1, "kafka")["critical"], true);
}
