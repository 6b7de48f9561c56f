//! Where the decision sites used to disagree, the order's state machine gives one answer on every
//! path: a transaction refunded at the gateway never pays an order, and a status the client does
//! not know is never read as closed.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::response::IntoResponse as _;
use commerce_testkit::until;
use pg_simulator::behaviour::Behaviour;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::payments::{Gateway, api, card_order, events, place, reaches};
use crate::support::TestApp;

/// Refunds `key` at the gateway as its owner, behind the API's back.
async fn refund_at_gateway(gw: &Gateway, user: i64, key: &str, amount: i64) {
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/payments/{key}/refunds", gw.base))
        .header("X-API-KEY", commerce_config::dev::GATEWAY_API_KEY)
        .header("X-USER-ID", user.to_string())
        .json(&json!({"amount": amount, "reason": "refunded from the gateway's console"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{:?}", res.text().await);
}

/// Waits until the gateway has charged transaction `key`.
async fn charged_at_gateway(gw: &Gateway, key: &str) {
    let charged = format!(
        "SELECT count(*) AS n FROM payments WHERE transaction_key = '{key}' AND status = 'SUCCESS'"
    );
    until(
        "the gateway never charged the payment",
        Duration::from_secs(10),
        async || gw.count(&charged).await == 1,
    )
    .await;
}

/// What the gateway kept (charged less refunded there) is what paid card orders owe plus the
/// refunds the API still has to send.
async fn assert_gateway_keeps_what_orders_owe(app: &TestApp, gw: &Gateway) {
    let kept = gw
        .count(
            "SELECT COALESCE(sum(amount), 0)::bigint AS n FROM payments WHERE status IN ('SUCCESS', 'REFUNDED')",
        )
        .await
        - gw.count("SELECT COALESCE(sum(amount), 0)::bigint AS n FROM refunds")
            .await;
    let owed = app
        .count(
            "SELECT COALESCE(sum(final_amount), 0)::bigint AS n FROM orders
              WHERE status = 'PAID' AND payment_method = 'CARD'",
        )
        .await
        + app
            .count(
                "SELECT COALESCE(sum(amount), 0)::bigint AS n FROM refunds WHERE status <> 'REFUNDED'",
            )
            .await;
    assert_eq!(kept, owed, "the gateway keeps what the orders owe");
}

/// A card order charged and then refunded at the gateway before the API saw the charge: the
/// order fails and gives its stock back, by callback (`via_callback`) or by reconciliation.
async fn refunded_before_settlement(via_callback: bool) {
    let gw = Gateway::start(Behaviour {
        callback_drop_rate: 1.0,
        ..Behaviour::reliable()
    })
    .await;
    // Reconciliation runs, but looks at the payment only when an operator asks.
    let app = api(&gw, &[("PAYMENT_RECHECK_AFTER_MS", "600000")]).await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (user, token) = app
        .user_with_points(if via_callback { "cb" } else { "rc" }, 0)
        .await;
    let order = place(&app, &token, card_order(product, 2, None)).await;
    let id = order["order_id"].as_i64().unwrap();
    let key = order["payment"]["transaction_key"]
        .as_str()
        .unwrap()
        .to_owned();
    charged_at_gateway(&gw, &key).await;
    refund_at_gateway(&gw, user, &key, 2000).await;
    assert_eq!(app.stock(product).await, 8, "held while pending");

    if via_callback {
        // The gateway's (late) report of the charge, as its callback would carry it.
        let (status, body) = app
            .callback(json!({"transaction_key": key, "order_id": id.to_string(),
                             "status": "SUCCESS", "amount": 2000}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["order_status"], "PAYMENT_FAILED");
    } else {
        let (status, body) = app
            .post(
                &format!("/api/v1/admin/orders/{id}/payment/retry"),
                Some(&app.admin),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["payment"], true, "{body}");
    }
    let now: Value = reaches(&app, &token, id, "PAYMENT_FAILED", Duration::from_secs(10)).await;
    assert_eq!(now["payment"]["status"], "FAILED");
    assert_eq!(
        now["payment"]["reason"],
        "the gateway refunded the payment before the order was paid"
    );
    assert_eq!(app.stock(product).await, 10, "the stock is back");
    assert_eq!(events(&app, "OrderPaid").await, 0, "not a sale");
    assert_eq!(events(&app, "PaymentFailed").await, 1);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM refunds").await,
        0,
        "the gateway gave the money back itself"
    );
    assert_gateway_keeps_what_orders_owe(&app, &gw).await;
}

#[tokio::test]
async fn a_charge_refunded_at_the_gateway_never_pays_the_order_by_callback() {
    refunded_before_settlement(true).await;
}

#[tokio::test]
async fn a_charge_refunded_at_the_gateway_never_pays_the_order_by_reconciliation() {
    refunded_before_settlement(false).await;
}

/// `payments_reconciled_total{result}` as exported (0 before the first).
async fn reconciled(app: &TestApp, result: &str) -> f64 {
    let series = format!("payments_reconciled_total{{result=\"{result}\"}}");
    commerce_testkit::metric(&app.base, &series)
        .await
        .unwrap_or(0.0)
}

/// A gateway in front of `gw` that reports the transactions in `disputed` as `DISPUTED`, a
/// status this client does not know; everything else passes through unchanged. Returns its base
/// URL.
async fn disputing_gateway(gw: &Gateway, disputed: Arc<Mutex<Vec<String>>>) -> String {
    let upstream = gw.base.clone();
    let http = reqwest::Client::new();
    let forward = move |request: Request| {
        let (upstream, http, disputed) = (upstream.clone(), http.clone(), disputed.clone());
        async move {
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
            let mut json: Value = answer.json().await.unwrap_or(Value::Null);
            let disputed = disputed.lock().unwrap().clone();
            if let Some(transactions) = json["transactions"].as_array_mut() {
                for t in transactions {
                    if disputed.iter().any(|k| t["transaction_key"] == k.as_str()) {
                        t["status"] = json!("DISPUTED");
                    }
                }
            }
            (status, axum::Json(json)).into_response()
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

/// A cancelled order's payment in a status the API does not know stays watched, so a charge
/// that surfaces later is still found and refunded. (It used to be read as closed.)
#[tokio::test]
async fn a_status_the_client_does_not_know_keeps_a_cancelled_payment_watched() {
    let gw = Gateway::start(Behaviour {
        settle_min_ms: 2_000,
        settle_max_ms: 2_000,
        callback_drop_rate: 1.0,
        ..Behaviour::reliable()
    })
    .await;
    let disputed = Arc::new(Mutex::new(Vec::new()));
    let gateway = disputing_gateway(&gw, disputed.clone()).await;
    let app = api(
        &gw,
        &[
            ("PG_BASE_URL", gateway.as_str()),
            ("PAYMENT_RECHECK_AFTER_MS", "200"),
        ],
    )
    .await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (_, token) = app.user_with_points("unknown", 0).await;
    let order = place(&app, &token, card_order(product, 1, None)).await;
    let id = order["order_id"].as_i64().unwrap();
    let key = order["payment"]["transaction_key"]
        .as_str()
        .unwrap()
        .to_owned();
    // The gateway reports the payment in a status of its own from now on.
    disputed.lock().unwrap().push(key.clone());
    let (status, body) = app
        .post(
            &format!("/api/v1/orders/{id}/cancel"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let before = reconciled(&app, "unknown_status").await;
    until(
        "reconciliation never looked at the payment twice",
        Duration::from_secs(10),
        async || reconciled(&app, "unknown_status").await >= before + 2.0,
    )
    .await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM payments WHERE order_id = {id}
                AND status = 'CANCELLED' AND next_check_at < 'infinity'"
        ))
        .await,
        1,
        "still watched"
    );
    assert_eq!(reconciled(&app, "cancelled_closed").await, 0.0);

    // The gateway settles it as a charge after all: the closed order's charge is refunded.
    charged_at_gateway(&gw, &key).await;
    disputed.lock().unwrap().clear();
    let now = reaches(&app, &token, id, "REFUNDED", Duration::from_secs(10)).await;
    assert_eq!(now["payment"]["status"], "REFUNDED");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM refunds WHERE order_id = {id} AND cause = 'CHARGED_AFTER_CLOSE'
                AND status = 'REFUNDED'"
        ))
        .await,
        1
    );
    assert_eq!(events(&app, "OrderPaid").await, 0);
    assert_gateway_keeps_what_orders_owe(&app, &gw).await;
}
