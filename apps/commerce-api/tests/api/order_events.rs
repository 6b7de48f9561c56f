//! Order status as Server-Sent Events: the current status, each change as it commits on any
//! instance, heartbeats, the end after a settled status, and a bound per user.

use std::time::Duration;

use pg_simulator::behaviour::Behaviour;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::payments::{Gateway, api, card_order, place};

/// Reads an event stream until the server ends it (or `within` passes): the order statuses
/// sent (`event: status`), and how many heartbeat comments came.
async fn follow(res: reqwest::Response, within: Duration) -> (Vec<String>, usize) {
    let (events, heartbeats) = follow_all(res, within).await;
    let statuses = events
        .into_iter()
        .filter(|(name, _)| name == "status")
        .map(|(_, data)| data["status"].as_str().unwrap().to_owned())
        .collect();
    (statuses, heartbeats)
}

/// Reads an event stream until the server ends it (or `within` passes): every event's name and
/// data, in order, and how many heartbeat comments came.
pub(crate) async fn follow_all(
    mut res: reqwest::Response,
    within: Duration,
) -> (Vec<(String, Value)>, usize) {
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = res.chunk().await.expect("the stream reads") {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the stream ended by itself");
    let mut events = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event:") {
            name = n.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            events.push((
                name.clone(),
                serde_json::from_str::<Value>(d.trim()).unwrap(),
            ));
        }
    }
    let heartbeats = text.lines().filter(|l| l.starts_with(':')).count();
    (events, heartbeats)
}

async fn open(base: &str, order: i64, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}/api/v1/orders/{order}/events"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_card_order_settled_by_one_instance_is_followed_live_on_another() {
    let gw = Gateway::start(Behaviour {
        settle_min_ms: 2500,
        settle_max_ms: 3000,
        ..Behaviour::reliable()
    })
    .await;
    let app = api(&gw, &[("ORDER_EVENTS_HEARTBEAT_SECONDS", "1")]).await;
    let other = app
        .another_instance(&[
            ("PG_BASE_URL", &gw.base),
            ("ORDER_EVENTS_HEARTBEAT_SECONDS", "1"),
        ])
        .await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (_, token) = app.user_with_points("watcher", 0).await;
    let order = place(&app, &token, card_order(product, 1, None)).await;
    let id = order["order_id"].as_i64().unwrap();

    let res = open(&other.base, id, &token).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let (statuses, heartbeats) = follow(res, Duration::from_secs(20)).await;
    assert_eq!(statuses, ["PENDING_PAYMENT", "PAID"]);
    assert!(heartbeats >= 1, "no heartbeat while the payment settled");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM orders WHERE id = {id} AND status = 'PAID'"
        ))
        .await,
        1
    );

    // A settled order's stream sends its status and ends.
    let (statuses, _) = follow(open(&app.base, id, &token).await, Duration::from_secs(5)).await;
    assert_eq!(statuses, ["PAID"]);
}

#[tokio::test]
async fn streams_are_for_their_owner_bounded_per_user_and_end_when_settled() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(
        &gw,
        &[
            ("ORDER_EVENTS_PER_USER", "1"),
            ("ORDER_EVENTS_HEARTBEAT_SECONDS", "1"),
        ],
    )
    .await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (_, token) = app.user_with_points("owner", 10_000).await;
    let (_, stranger) = app.user_with_points("stranger", 0).await;
    let slow = Gateway::start(Behaviour {
        settle_min_ms: 60_000,
        settle_max_ms: 60_000,
        ..Behaviour::reliable()
    })
    .await;
    let pending_app = app
        .another_instance(&[
            ("PG_BASE_URL", &slow.base),
            ("ORDER_EVENTS_PER_USER", "1"),
            ("ORDER_EVENTS_HEARTBEAT_SECONDS", "1"),
        ])
        .await;
    let pending = {
        let (status, order) = app
            .client
            .post(format!("{}/api/v1/orders", pending_app.base))
            .bearer_auth(&token)
            .json(&card_order(product, 1, None))
            .send()
            .await
            .map(|r| (r.status(), r))
            .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        order.json::<Value>().await.unwrap()["order_id"]
            .as_i64()
            .unwrap()
    };

    // Not the owner's: 404, and no stream without a token.
    assert_eq!(
        open(&app.base, pending, &stranger).await.status(),
        StatusCode::NOT_FOUND
    );
    let res = reqwest::get(format!("{}/api/v1/orders/{pending}/events", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // One stream per user here: a second is refused while the first is open, and admitted once
    // it is closed.
    let first = open(&app.base, pending, &token).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = open(&app.base, pending, &token).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().contains_key("retry-after"));
    drop(first);
    commerce_testkit::until(
        "the closed stream's slot is free",
        Duration::from_secs(5),
        async || open(&app.base, pending, &token).await.status() == StatusCode::OK,
    )
    .await;

    // A points order is PAID at once: its stream sends that and ends.
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&token),
            json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = order["order_id"].as_i64().unwrap();
    let (statuses, _) = follow(open(&app.base, id, &token).await, Duration::from_secs(5)).await;
    assert_eq!(statuses, ["PAID"]);
}
