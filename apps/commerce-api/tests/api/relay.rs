//! The outbox relay publishes what the API commits: one message per outbox row, keyed by the
//! aggregate, with `event_id`, `event_type` and a `traceparent` in the request's trace as
//! headers, and marks each row published only after the broker acknowledged it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::spawn_app;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn committed_events_reach_kafka_with_their_headers_and_are_marked() {
    let app = spawn_app().await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (_, token) = app.user_with_points("buyer", 10_000).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = app
        .client
        .post(format!("{}/api/v1/orders", app.base))
        .bearer_auth(&token)
        .header("traceparent", traceparent)
        .json(&json!({"items": [{"product_id": product, "quantity": 2}], "payment": {"method": "POINT"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    // The answer names the server's span in the caller's trace.
    let answered = res.headers()["traceparent"].to_str().unwrap().to_owned();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    assert_eq!(&answered[..36], &format!("00-{trace_id}-"), "{answered}");
    assert_ne!(&answered[36..52], "00f067aa0ba902b7", "{answered}");
    let order: serde_json::Value = res.json().await.unwrap();

    let kafka = commerce_testkit::TestKafka::new().await;
    let consumer: StreamConsumer = kafka
        .settings
        .consumer_config(&kafka.group("relay-check"))
        .create()
        .unwrap();
    consumer
        .subscribe(&[&app.state.config.order_topic])
        .unwrap();
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("published")
            .unwrap();
        assert!(msg.headers().is_some(), "relayed messages carry headers");
        let header = |name: &str| commerce_testkit::header(&msg, name);
        let envelope: serde_json::Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
        assert_eq!(msg.key(), Some(order["order_id"].to_string().as_bytes()));
        assert_eq!(
            header("event_id").unwrap(),
            envelope["event_id"].as_str().unwrap()
        );
        // Each message carries its publish span: in the request's trace, neither the caller's
        // span nor the server's.
        let sent = header("traceparent").unwrap();
        assert_eq!(&sent[..36], &format!("00-{trace_id}-"), "{sent}");
        assert_ne!(&sent[36..52], "00f067aa0ba902b7", "{sent}");
        assert_ne!(&sent[36..52], &answered[36..52], "{sent}");
        seen.insert(header("event_type").unwrap(), envelope);
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["OrderCreated", "OrderPaid"]
    );
    assert_eq!(seen["OrderPaid"]["payload"]["lines"][0]["quantity"], 2);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app
        .count("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
        .await
        > 0
    {
        assert!(tokio::time::Instant::now() < deadline, "rows left unmarked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_api_instances_share_one_relay_and_every_row_is_published_once() {
    let first = spawn_app().await;
    let second = crate::support::spawn_app_with(&[
        ("DATABASE_URL", first.db.url.as_str()),
        ("CATALOG_TOPIC", first.state.config.catalog_topic.as_str()),
        ("ORDER_TOPIC", first.state.config.order_topic.as_str()),
    ])
    .await;
    let product = first.product(first.brand().await, 10, 1000).await;
    let (_, token) = first.user_with_points("buyer", 1_000_000).await;
    for i in 0..20 {
        let app = if i % 2 == 0 { &first } else { &second };
        let (status, body) = app
            .post("/api/v1/orders", Some(&token), json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while first
        .count("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
        .await
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rows left unpublished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kafka = commerce_testkit::TestKafka::new().await;
    let consumer: StreamConsumer = kafka
        .settings
        .consumer_config(&kafka.group("count"))
        .create()
        .unwrap();
    consumer
        .subscribe(&[&first.state.config.order_topic])
        .unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut messages = 0;
    while let Ok(Ok(msg)) = tokio::time::timeout(
        Duration::from_secs(if messages < 40 { 60 } else { 3 }),
        consumer.recv(),
    )
    .await
    {
        let envelope: serde_json::Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
        ids.insert(envelope["event_id"].as_str().unwrap().to_owned());
        messages += 1;
    }
    assert_eq!(ids.len(), 40, "OrderCreated and OrderPaid of 20 orders");
    assert_eq!(messages, 40, "one leader: nothing published twice");
}

#[tokio::test]
async fn with_the_broker_frozen_the_backlog_and_its_age_rise_on_metrics() {
    let broker = commerce_testkit::PrivateBroker::start().await;
    let brokers = broker.settings().brokers;
    let app = crate::support::spawn_app_with(&[
        ("KAFKA_BROKERS", &brokers),
        ("OUTBOX_POLL_INTERVAL_MS", "100"),
    ])
    .await;
    let gauge = async |name: &str| commerce_testkit::metric(&app.base, name).await;
    let brand = app.brand().await;
    app.product(brand, 1000, 1).await;
    commerce_testkit::until(
        "the relay publishes while the broker runs",
        Duration::from_secs(20),
        async || {
            app.count("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
                .await
                == 0
                && gauge("outbox_pending").await == Some(0.0)
        },
    )
    .await;
    assert_eq!(gauge("outbox_relay_leader").await, Some(1.0));

    broker.pause();
    for _ in 0..3 {
        app.product(brand, 1000, 1).await;
    }
    // Read from the database on their own loop: the gauges move while nothing can be published.
    commerce_testkit::until(
        "outbox_pending reads the 3 stuck rows",
        Duration::from_secs(10),
        async || gauge("outbox_pending").await == Some(3.0),
    )
    .await;
    let first_age = gauge("outbox_oldest_pending_age_seconds").await.unwrap();
    commerce_testkit::until(
        "the oldest pending row's age keeps rising",
        Duration::from_secs(10),
        async || gauge("outbox_oldest_pending_age_seconds").await.unwrap() >= first_age + 2.0,
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
            .await,
        3
    );
    assert_eq!(
        gauge("outbox_relay_leader").await,
        Some(1.0),
        "still the leader, waiting"
    );

    broker.resume();
    commerce_testkit::until(
        "the backlog drains once the broker is back",
        Duration::from_secs(30),
        async || gauge("outbox_pending").await == Some(0.0),
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn a_relay_only_process_serves_metrics_and_health() {
    let app = crate::support::start_api(&[("OUTBOX_RELAY_ENABLED", "false")]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = &app.state.config;
    let _relay = tokio::process::Command::new(env!("CARGO_BIN_EXE_commerce-api"))
        .arg("relay")
        .env("APP_PROFILE", "dev")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &app.db.url)
        .env("KAFKA_BROKERS", &config.kafka.brokers)
        .env("CATALOG_TOPIC", &config.catalog_topic)
        .env("ORDER_TOPIC", &config.order_topic)
        .env("KAFKA_TOPIC_PARTITIONS", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the commerce-api binary starts");
    let base = format!("http://127.0.0.1:{port}");
    commerce_testkit::until(
        "the relay answers its health",
        Duration::from_secs(20),
        async || {
            reqwest::get(format!("{base}/health/ready"))
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    commerce_testkit::until(
        "the relay leads and reports its backlog",
        Duration::from_secs(20),
        async || {
            commerce_testkit::metric(&base, "outbox_relay_leader").await == Some(1.0)
                && commerce_testkit::metric(&base, "outbox_pending").await == Some(0.0)
        },
    )
    .await;
}

#[tokio::test]
async fn without_a_caller_trace_ids_are_still_minted_and_carried_to_the_outbox() {
    // No exporter is configured: spans are not recorded, but each request still has a trace.
    let app = spawn_app().await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (_, token) = app.user_with_points("untraced", 10_000).await;
    let res = app
        .client
        .post(format!("{}/api/v1/orders", app.base))
        .bearer_auth(&token)
        .json(&json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let answered = res.headers()["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = answered.split('-').collect();
    assert_eq!(parts.len(), 4, "{answered}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[3]),
        ("00", 32, "00"),
        "a fresh, unsampled trace: {answered}"
    );
    let order: serde_json::Value = res.json().await.unwrap();
    let stored: Vec<String> = {
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        let mut conn = AsyncPgConnection::establish(&app.db.url).await.unwrap();
        diesel::sql_query(format!(
            "SELECT traceparent AS t FROM outbox WHERE partition_key = '{}' \
             AND event_type IN ('OrderCreated', 'OrderPaid') ORDER BY id",
            order["order_id"]
        ))
        .load::<Traceparent>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.t)
        .collect()
    };
    assert_eq!(stored.len(), 2, "OrderCreated and OrderPaid: {stored:?}");
    for t in &stored {
        assert_eq!(
            &t[3..35],
            parts[1],
            "the outbox row is in the request's trace: {t}"
        );
    }
}

#[derive(diesel::QueryableByName)]
struct Traceparent {
    #[diesel(sql_type = diesel::sql_types::Text)]
    t: String,
}
