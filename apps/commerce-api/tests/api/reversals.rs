//! Refunds and chargebacks the gateway makes by itself: the API learns of them by the gateway's
//! signed webhook, or by auditing paid payments when the webhook is lost, and reverses the order
//! once.

use std::time::Duration;

use pg_simulator::behaviour::Behaviour;
use reqwest::StatusCode;
use serde_json::json;

use crate::payments::{
    CARD_NO, Gateway, api, assert_money_balances, card_order, events, history, place, reaches,
};

#[tokio::test]
async fn a_refund_made_at_the_gateway_reverses_the_paid_order_once_by_its_webhook() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    // No audits here: the webhook alone must do it.
    let app = api(&gw, &[("PAYMENT_AUDIT_WINDOW_HOURS", "0")]).await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (_, token) = app.user_with_points("refunded", 0).await;
    let order = place(&app, &token, card_order(product, 2, None)).await;
    let id = order["order_id"].as_i64().unwrap();
    let paid = reaches(&app, &token, id, "PAID", Duration::from_secs(10)).await;
    let key = paid["payment"]["transaction_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.stock(product).await, 8);

    gw.console(&key, "refunds").await;
    let reversed = reaches(&app, &token, id, "REFUNDED", Duration::from_secs(10)).await;
    assert_eq!(reversed["payment"]["status"], "REFUNDED");
    assert_eq!(
        history(&reversed).last().map(String::as_str),
        Some("REVERSED_AT_GATEWAY/callback")
    );
    assert_eq!(app.stock(product).await, 10, "the stock is back");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM refunds WHERE order_id = {id} AND status = 'REFUNDED'
                AND cause = 'REFUNDED_AT_GATEWAY' AND gateway_refund_key LIKE '%:RF:%'"
        ))
        .await,
        1
    );
    assert_eq!(
        events(&app, "OrderCancelled").await,
        1,
        "the sale is taken back"
    );
    assert_eq!(events(&app, "PaymentRefunded").await, 1);

    // The same webhook again (a gateway retry, a replay) changes nothing.
    let (status, body) = app
        .callback(json!({"event": "payment.refunded", "transaction_key": key,
                         "order_id": id.to_string(), "status": "REFUNDED", "amount": 2000}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["order_status"], "REFUNDED");
    let (_, again) = app.get(&format!("/api/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(history(&again), history(&reversed));
    assert_eq!(app.stock(product).await, 10);
    assert_eq!(events(&app, "OrderCancelled").await, 1);
    assert_eq!(events(&app, "PaymentRefunded").await, 1);
    assert_money_balances(&app, &gw).await;
}

#[tokio::test]
async fn a_chargeback_whose_webhook_is_lost_is_found_by_auditing_paid_payments() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    // Nothing the gateway sends reaches this API: reconciliation pays the order, and the audit
    // (every second, here) must find the chargeback.
    let app = api(
        &gw,
        &[
            (
                "PAYMENT_CALLBACK_URL",
                "http://127.0.0.1:9/api/v1/payments/callback",
            ),
            ("PAYMENT_RECHECK_AFTER_MS", "300"),
            ("PAYMENT_AUDIT_INTERVAL_SECONDS", "1"),
        ],
    )
    .await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (_, token) = app.user_with_points("disputed", 0).await;
    let order = place(&app, &token, card_order(product, 1, None)).await;
    let id = order["order_id"].as_i64().unwrap();
    let paid = reaches(&app, &token, id, "PAID", Duration::from_secs(10)).await;
    let key = paid["payment"]["transaction_key"]
        .as_str()
        .unwrap()
        .to_owned();

    gw.console(&key, "chargebacks").await;
    let reversed = reaches(&app, &token, id, "REFUNDED", Duration::from_secs(15)).await;
    assert_eq!(
        history(&reversed).last().map(String::as_str),
        Some("REVERSED_AT_GATEWAY/reconciliation")
    );
    assert_eq!(app.stock(product).await, 10);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM payments WHERE order_id = {id} AND next_check_at = 'infinity'"
        ))
        .await,
        1,
        "a reversed payment is audited no more"
    );
    assert_eq!(events(&app, "OrderCancelled").await, 1);
    assert_money_balances(&app, &gw).await;
}

#[tokio::test]
async fn a_top_up_reversed_after_its_points_were_spent_is_listed_for_an_operator() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[]).await;
    let (user, token) = app.user_with_points("chargeback", 0).await;
    let product = app.product(app.brand().await, 700, 5).await;
    let (status, top_up) = app
        .post(
            "/api/v1/points/charge",
            Some(&token),
            json!({"amount": 1000, "card_type": "KB", "card_no": CARD_NO}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{top_up}");
    let id = top_up["order_id"].as_i64().unwrap();
    let paid = reaches(&app, &token, id, "PAID", Duration::from_secs(10)).await;
    let key = paid["payment"]["transaction_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&token),
            json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(app.balance(user).await, 300);

    gw.console(&key, "chargebacks").await;
    reaches(&app, &token, id, "REFUNDED", Duration::from_secs(10)).await;
    assert_eq!(app.balance(user).await, 0, "what was left is taken back");
    let (status, attention) = app
        .get("/api/v1/admin/payments/attention", Some(&app.admin))
        .await;
    assert_eq!(status, StatusCode::OK, "{attention}");
    let listed: Vec<(i64, i64, &str)> = attention["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["order_id"].as_i64().unwrap(),
                a["amount"].as_i64().unwrap(),
                a["concern"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [(id, 700, "TOP_UP_SHORTFALL")]);
    assert_eq!(
        app.outbox_types()
            .await
            .iter()
            .filter(|t| t.as_str() == "OrderCancelled")
            .count(),
        0,
        "a top-up is no sale"
    );
    assert_money_balances(&app, &gw).await;
}
