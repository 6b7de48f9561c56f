//! Refunds through a real pg-simulator: under gateway failures, with two instances racing, across
//! a crash between the gateway's answer and the commit, and the operators' routes.

use std::time::Duration;

use commerce_testkit::until;
use pg_simulator::behaviour::Behaviour;
use reqwest::StatusCode;
use serde_json::json;

use crate::payments::{
    Gateway, api, assert_money_balances, card_order, child_api, events, history, place, reaches,
    settled,
};
use crate::support::TestApp;

/// `n` card orders of one product by one user, each paid and then cancelled. Returns the user's
/// token and the order ids.
async fn paid_then_cancelled(app: &TestApp, login: &str, n: usize) -> (String, Vec<i64>) {
    let product = app.product(app.brand().await, 1000, 1000).await;
    let (_, token) = app.user_with_points(login, 0).await;
    let mut ids = Vec::new();
    for _ in 0..n {
        let order = place(app, &token, card_order(product, 1, None)).await;
        ids.push(order["order_id"].as_i64().unwrap());
    }
    for id in &ids {
        assert_eq!(
            settled(app, &token, *id, Duration::from_secs(20)).await["status"],
            "PAID"
        );
        let (status, body) = app
            .post(
                &format!("/api/v1/orders/{id}/cancel"),
                Some(&token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    (token, ids)
}

async fn refunded_orders(app: &TestApp) -> i64 {
    app.count("SELECT count(*) AS n FROM orders WHERE status = 'REFUNDED'")
        .await
}

#[tokio::test]
async fn refunds_get_through_a_failing_gateway_each_exactly_once() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[]).await;
    gw.sim.dice.set(|b| b.refund_failure_rate = 0.6).unwrap();
    let before = gw.sim.dice.requests_received();
    paid_then_cancelled(&app, "refund-storm", 20).await;
    until(
        "every cancelled order is refunded",
        Duration::from_secs(30),
        async || refunded_orders(&app).await == 20,
    )
    .await;
    let requests = gw.sim.dice.requests_received() - before;
    assert!(
        requests > 40,
        "20 payments and 20 refunds, plus the failed refund attempts: {requests}"
    );
    assert_eq!(gw.count("SELECT count(*) AS n FROM refunds").await, 20);
    assert_eq!(
        gw.count("SELECT count(*) AS n FROM refunds WHERE idempotency_key = 'commerce-refund-' || transaction_key")
            .await,
        20,
        "every refund was made under its stable key"
    );
    assert_eq!(events(&app, "PaymentRefunded").await, 20);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM refunds WHERE status = 'REFUNDED' AND attempts >= 1 AND last_error IS NULL")
            .await,
        20
    );
    assert_money_balances(&app, &gw).await;
}

#[tokio::test]
async fn two_instances_racing_for_refunds_refund_each_charge_once() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let setup = api(&gw, &[("PAYMENT_REFUNDS_ENABLED", "false")]).await;
    paid_then_cancelled(&setup, "refund-race", 12).await;
    assert_eq!(
        setup
            .count("SELECT count(*) AS n FROM refunds WHERE status = 'REQUESTED'")
            .await,
        12
    );
    // Each refund's answer outlasts the claim, so the other instance claims and sends it too.
    gw.sim.dice.set(|b| b.response_delay_ms = 600).unwrap();
    let before = gw.sim.dice.requests_received();
    let shared = [
        ("DATABASE_URL", setup.db.url.as_str()),
        ("PAYMENT_RECHECK_AFTER_MS", "200"),
        ("PG_TIMEOUT_MS", "3000"),
    ];
    let (one, two) = tokio::join!(api(&gw, &shared), api(&gw, &shared));
    until(
        "every cancelled order is refunded",
        Duration::from_secs(30),
        async || refunded_orders(&setup).await == 12,
    )
    .await;
    let requests = gw.sim.dice.requests_received() - before;
    assert!(
        requests > 12,
        "the instances raced: {requests} refund requests"
    );
    assert_eq!(gw.count("SELECT count(*) AS n FROM refunds").await, 12);
    assert_eq!(events(&setup, "PaymentRefunded").await, 12);
    assert_money_balances(&setup, &gw).await;
    drop((one, two));
}

#[tokio::test]
async fn a_crash_between_the_gateways_answer_and_the_commit_refunds_once() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let setup = api(&gw, &[("PAYMENT_REFUNDS_ENABLED", "false")]).await;
    let (token, ids) = paid_then_cancelled(&setup, "refund-crash", 1).await;
    let id = ids[0];
    // The gateway records the refund, then takes its time to answer.
    gw.sim.dice.set(|b| b.response_delay_ms = 5000).unwrap();

    // A real API process sends the refund and is killed while it waits for the answer.
    let (mut child, _) = child_api(
        &setup,
        &gw,
        &[
            ("PAYMENT_RECONCILE_ENABLED", "false"),
            ("PAYMENT_RECONCILE_INTERVAL_MS", "100"),
            // The claim (a lease) outlasts the child, not the test.
            ("PAYMENT_RECHECK_AFTER_MS", "3000"),
            ("PG_TIMEOUT_MS", "10000"),
        ],
    )
    .await;
    until(
        "the gateway never recorded the child's refund",
        Duration::from_secs(20),
        async || gw.count("SELECT count(*) AS n FROM refunds").await == 1,
    )
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert_eq!(
        setup
            .count("SELECT count(*) AS n FROM refunds WHERE status = 'REQUESTED' AND attempts = 1")
            .await,
        1,
        "the child claimed the refund and died before recording the answer"
    );
    assert_eq!(events(&setup, "PaymentRefunded").await, 0);

    // Another instance takes the refund over once the claim runs out, and asks again.
    gw.sim.dice.set(|b| b.response_delay_ms = 0).unwrap();
    let survivor = api(&gw, &[("DATABASE_URL", setup.db.url.as_str())]).await;
    let now = reaches(&setup, &token, id, "REFUNDED", Duration::from_secs(20)).await;
    assert_eq!(now["payment"]["status"], "REFUNDED");
    assert_eq!(gw.count("SELECT count(*) AS n FROM refunds").await, 1);
    assert_eq!(
        setup
            .count("SELECT attempts::bigint AS n FROM refunds WHERE status = 'REFUNDED'")
            .await,
        2
    );
    assert_eq!(
        setup
            .count("SELECT count(*) AS n FROM refunds WHERE gateway_refund_key LIKE '%:RF:%'")
            .await,
        1,
        "the survivor recorded the gateway's one refund"
    );
    assert_eq!(events(&setup, "PaymentRefunded").await, 1);
    assert_money_balances(&setup, &gw).await;
    drop(survivor);
}

#[tokio::test]
async fn a_refused_refund_is_listed_for_an_operator_and_retried_on_request() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[]).await;
    gw.sim
        .dice
        .set(|b| {
            b.refund_failure_rate = 1.0;
            b.failure_status = 422;
        })
        .unwrap();
    let (token, ids) = paid_then_cancelled(&app, "refund-refused", 1).await;
    let id = ids[0];
    until(
        "the refund is marked failed",
        Duration::from_secs(10),
        async || {
            app.count("SELECT count(*) AS n FROM refunds WHERE status = 'FAILED'")
                .await
                == 1
        },
    )
    .await;

    let (status, _) = app
        .get("/api/v1/admin/payments/attention", Some(&token))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, list) = app
        .get("/api/v1/admin/payments/attention", Some(&app.admin))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let items = list["content"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["order_id"], id);
    assert_eq!(items[0]["concern"], "REFUND_FAILED");
    assert_eq!(items[0]["cause"], "ORDER_CANCELLED");
    assert_eq!(items[0]["amount"], 1000);
    assert!(
        items[0]["detail"].as_str().unwrap().contains("422"),
        "{list}"
    );
    let (status, bad) = app
        .get("/api/v1/admin/payments/attention?limit=0", Some(&app.admin))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");

    // The gateway is fixed; the operator sends it again.
    gw.sim.dice.set(|b| b.refund_failure_rate = 0.0).unwrap();
    let retry = format!("/api/v1/admin/orders/{id}/payment/retry");
    let (status, retried) = app.post(&retry, Some(&app.admin), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
    assert_eq!(
        retried,
        json!({"order_id": id, "refunds": 1, "payment": false})
    );
    let refunded = reaches(&app, &token, id, "REFUNDED", Duration::from_secs(10)).await;
    assert_eq!(
        history(&refunded),
        [
            "REQUESTED/order",
            "ACCEPTED/order",
            "PAID/callback",
            "REFUND_REQUESTED/cancel",
            "REFUND_REFUSED/refund_worker",
            "RETRY_REQUESTED/admin",
            "REFUND_CONFIRMED/refund_worker"
        ]
    );
    let (_, list) = app
        .get("/api/v1/admin/payments/attention", Some(&app.admin))
        .await;
    assert_eq!(list["content"], json!([]));
    let (status, nothing) = app.post(&retry, Some(&app.admin), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{nothing}");
    assert_eq!(nothing["code"], "NOTHING_TO_RETRY");
    let (status, missing) = app
        .post(
            "/api/v1/admin/orders/999999/payment/retry",
            Some(&app.admin),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    assert_eq!(events(&app, "PaymentRefunded").await, 1);
    assert_money_balances(&app, &gw).await;
}

/// Every gateway answer that says "not now" leaves the payment to be tried again; only an
/// explicit refusal fails the order.
#[tokio::test]
async fn only_an_explicit_refusal_fails_a_card_order() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[("PAYMENT_RECHECK_AFTER_MS", "300")]).await;
    let product = app.product(app.brand().await, 1000, 100).await;
    let (_, token) = app.user_with_points("classified", 0).await;
    for status in [408, 409, 429, 500, 502, 503, 504] {
        gw.sim
            .dice
            .set(|b| {
                b.request_failure_rate = 1.0;
                b.failure_status = status;
            })
            .unwrap();
        let order = place(&app, &token, card_order(product, 1, None)).await;
        assert_eq!(order["status"], "PENDING_PAYMENT", "HTTP {status}: {order}");
        let id = order["order_id"].as_i64().unwrap();
        // Once the gateway is back, reconciliation requests the payment again.
        gw.sim.dice.set(|b| b.request_failure_rate = 0.0).unwrap();
        let paid = settled(&app, &token, id, Duration::from_secs(10)).await;
        assert_eq!(paid["status"], "PAID", "HTTP {status}: {paid}");
    }
    for status in [400, 402, 422] {
        gw.sim
            .dice
            .set(|b| {
                b.request_failure_rate = 1.0;
                b.failure_status = status;
            })
            .unwrap();
        let order = place(&app, &token, card_order(product, 1, None)).await;
        assert_eq!(order["status"], "PAYMENT_FAILED", "HTTP {status}: {order}");
    }
    assert_eq!(app.stock(product).await, 93, "seven paid, three given back");
    assert_eq!(events(&app, "OrderPaid").await, 7);
    assert_eq!(events(&app, "PaymentFailed").await, 3);
}
