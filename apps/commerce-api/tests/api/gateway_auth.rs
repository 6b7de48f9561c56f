//! The gateway and this API know each other: the API sends its merchant key, the gateway signs
//! its callbacks, and a callback without a valid signature costs nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse as _;
use commerce_testkit::until;
use pg_simulator::behaviour::Behaviour;
use reqwest::StatusCode;
use serde_json::json;

use crate::payments::{Gateway, api, card_order, events, place, reaches};

const NEW_SECRET: &str = "new-callback-secret-0123456789abcdef";
const OLD_SECRET: &str = "old-callback-secret-0123456789abcdef";

/// A gateway in front of `gw` that counts the requests reaching it. Returns its base URL.
async fn counting_gateway(gw: &Gateway, requests: Arc<AtomicUsize>) -> String {
    let upstream = gw.base.clone();
    let http = reqwest::Client::new();
    let forward = move |request: Request| {
        let (upstream, http, requests) = (upstream.clone(), http.clone(), requests.clone());
        async move {
            requests.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let mut sent = http.request(
                parts.method,
                format!("{upstream}{}", parts.uri.path_and_query().unwrap()),
            );
            for (name, value) in &parts.headers {
                if name != "host" && name != "content-length" {
                    sent = sent.header(name, value);
                }
            }
            let answer = sent.body(body).send().await.unwrap();
            let status = answer.status();
            let bytes = answer.bytes().await.unwrap();
            (status, [("content-type", "application/json")], bytes).into_response()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(forward))
            .await
            .unwrap();
    });
    base
}

/// `payment_callbacks_total{result="bad_signature"}` as exported (0 before the first).
async fn bad_signatures(app: &crate::support::TestApp) -> f64 {
    commerce_testkit::metric(
        &app.base,
        "payment_callbacks_total{result=\"bad_signature\"}",
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test]
async fn callbacks_without_a_valid_signature_are_refused_before_the_gateway_is_asked() {
    // The gateway never calls back by itself here: every callback below is the test's.
    let gw = Gateway::start(Behaviour {
        callback_drop_rate: 1.0,
        ..Behaviour::reliable()
    })
    .await;
    let requests = Arc::new(AtomicUsize::new(0));
    let proxy = counting_gateway(&gw, requests.clone()).await;
    let secrets = format!("{NEW_SECRET},{OLD_SECRET}");
    let app = api(
        &gw,
        &[
            ("PG_BASE_URL", proxy.as_str()),
            ("PAYMENT_RECONCILE_ENABLED", "false"),
            ("PG_CALLBACK_SECRETS", secrets.as_str()),
        ],
    )
    .await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (_, token) = app.user_with_points("signed", 0).await;
    let order = place(&app, &token, card_order(product, 1, None)).await;
    let id = order["order_id"].as_i64().unwrap();
    let key = order["payment"]["transaction_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let charged = format!(
        "SELECT count(*) AS n FROM payments WHERE transaction_key = '{key}' AND status = 'SUCCESS'"
    );
    until(
        "the gateway never charged the payment",
        Duration::from_secs(10),
        async || gw.count(&charged).await == 1,
    )
    .await;
    let history_before = app.count("SELECT count(*) AS n FROM payment_events").await;
    let asked_before = requests.load(Ordering::SeqCst);
    let body = json!({"transaction_key": key, "order_id": id.to_string(), "status": "SUCCESS"});
    let now = chrono::Utc::now().timestamp();

    let mut refused = Vec::new();
    // Unsigned, and a flood of unsigned callbacks for other orders.
    refused.push(
        app.post("/api/v1/payments/callback", None, body.clone())
            .await,
    );
    for other in id + 1..id + 30 {
        let forged = json!({"transaction_key": key, "order_id": other.to_string()});
        refused.push(app.post("/api/v1/payments/callback", None, forged).await);
    }
    // Signed with a secret this API does not hold (the development one, here).
    refused.push(
        app.callback_signed(&body, commerce_config::dev::GATEWAY_CALLBACK_SECRET, now)
            .await,
    );
    // Signed right, but ten minutes ago or ten minutes ahead: a replay, or a forged clock.
    refused.push(app.callback_signed(&body, NEW_SECRET, now - 600).await);
    refused.push(app.callback_signed(&body, NEW_SECRET, now + 600).await);
    for (status, problem) in &refused {
        assert_eq!(
            (*status, problem["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("INVALID_SIGNATURE")),
            "{problem}"
        );
    }
    assert_eq!(bad_signatures(&app).await, refused.len() as f64);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        asked_before,
        "no refused callback reached the gateway"
    );
    let (_, still) = app.get(&format!("/api/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(still["status"], "PENDING_PAYMENT");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM payment_events").await,
        history_before
    );
    assert_eq!(events(&app, "OrderPaid").await, 0);

    // The gateway still signs with the old secret while this API already holds the new one too.
    let (status, settled) = app.callback_signed(&body, OLD_SECRET, now).await;
    assert_eq!(status, StatusCode::OK, "{settled}");
    assert_eq!(settled["order_status"], "PAID");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        asked_before + 1,
        "one lookup confirms a signed callback"
    );
    assert_eq!(events(&app, "OrderPaid").await, 1);
}

#[tokio::test]
async fn the_gateway_knows_this_api_by_its_key_and_a_wrong_key_fails_no_order() {
    let gw = Gateway::start_with(Behaviour::reliable(), |config| {
        config.api_keys = vec![
            "merchant-key-new-0002".into(),
            "merchant-key-old-0001".into(),
        ];
    })
    .await;
    // Mid-rotation: the API still sends the old key, which the gateway accepts alongside the new.
    let app = api(&gw, &[("PG_API_KEY", "merchant-key-old-0001")]).await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (_, token) = app.user_with_points("keyed", 0).await;
    let order = place(&app, &token, card_order(product, 1, None)).await;
    let id = order["order_id"].as_i64().unwrap();
    reaches(&app, &token, id, "PAID", Duration::from_secs(10)).await;

    // An instance with a key the gateway does not know: its orders wait, they do not fail.
    let wrong = api(
        &gw,
        &[
            ("PG_API_KEY", "merchant-key-typo-0003"),
            ("PAYMENT_RECONCILE_ENABLED", "false"),
        ],
    )
    .await;
    let product = wrong.product(wrong.brand().await, 1000, 10).await;
    let (_, token) = wrong.user_with_points("mistyped", 0).await;
    let order = place(&wrong, &token, card_order(product, 1, None)).await;
    assert_eq!(order["status"], "PENDING_PAYMENT", "{order}");
    assert_eq!(order["payment"]["status"], "PENDING", "{order}");
    assert_eq!(wrong.stock(product).await, 9, "held for reconciliation");
    assert_eq!(gw.count("SELECT count(*) AS n FROM payments").await, 1);
}
