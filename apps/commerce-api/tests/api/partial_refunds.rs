//! Cancelling one partner order of a checkout gives back exactly its paid share: its points at
//! once, its card share by a partial refund through the gateway, once; the coupon only with the
//! whole checkout. Every flow balances: what the customer paid equals what partners keep plus
//! what went back.

use std::time::Duration;

use commerce_testkit::eventually;
use pg_simulator::behaviour::Behaviour;
use reqwest::StatusCode;
use serde_json::json;

use crate::marketplace::{partner, partner_product};
use crate::payments::{CARD_NO, Gateway, api, reaches};
use crate::support::{TestApp, spawn_app};

async fn split_refunded(app: &TestApp, partner_order: i64, method: &str) -> i64 {
    app.count(&format!(
        "SELECT coalesce(sum(refunded), 0)::bigint AS n FROM payment_splits
          WHERE partner_order_id = {partner_order} AND method = '{method}'"
    ))
    .await
}

async fn wait_refunded(app: &TestApp, partner_order: i64, amount: i64) {
    eventually(
        &format!("partner order {partner_order}'s card share is refunded"),
        Duration::from_secs(15),
        async || {
            let n = split_refunded(app, partner_order, "CARD").await;
            if n == amount { Ok(()) } else { Err(n) }
        },
    )
    .await;
}

/// A card checkout of three partners with a 700 coupon: cancelling two partner orders one by one
/// refunds exactly their card shares through the gateway, once each; cancelling the last one
/// cancels the checkout, refunds what is left and gives the coupon back.
#[tokio::test]
async fn cancelling_partner_orders_of_a_card_checkout_refunds_exactly_their_shares_once() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[]).await;
    let mut sellers = Vec::new();
    let mut products = Vec::new();
    for (login, bn, price) in [
        ("pr-one", "909-09-00001", 1_000),
        ("pr-two", "909-09-00002", 2_000),
        ("pr-three", "909-09-00003", 4_000),
    ] {
        let (_, token) = partner(&app, login, bn).await;
        products.push(partner_product(&app, &token, price, 10).await);
        sellers.push(token);
    }
    let (_, buyer) = app.user_with_points("pr-buyer", 0).await;
    let (_, coupon) = app
        .post(
            "/api/v1/admin/coupons",
            Some(&app.admin),
            json!({"name": "700 off", "discount_type": "FIXED", "discount_value": 700}),
        )
        .await;
    let (_, issued) = app
        .post(
            &format!("/api/v1/coupons/{}/issue", coupon["id"]),
            Some(&buyer),
            json!({}),
        )
        .await;
    let uc = issued["user_coupon_id"].as_i64().unwrap();
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&buyer),
            json!({"items": products.iter().map(|p| json!({"product_id": p, "quantity": 1})).collect::<Vec<_>>(),
                   "user_coupon_id": uc,
                   "payment": {"method": "CARD", "card_type": "KB", "card_no": CARD_NO}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let order_id = order["order_id"].as_i64().unwrap();
    let paid = reaches(&app, &buyer, order_id, "PAID", Duration::from_secs(10)).await;
    // 700 off 1,000 / 2,000 / 4,000: 100 / 200 / 400; card shares 900 / 1,800 / 3,600.
    let parts: Vec<(i64, i64)> = paid["partner_orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partner_order_id"].as_i64().unwrap(),
                p["card_share"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        parts.iter().map(|p| p.1).collect::<Vec<_>>(),
        [900, 1_800, 3_600]
    );
    let transaction = paid["payment"]["transaction_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let gateway_refunded = async || {
        gw.count(&format!(
            "SELECT refunded_amount AS n FROM payments WHERE transaction_key = '{transaction}'"
        ))
        .await
    };

    // The customer cancels the second partner's part.
    let (status, cancelled) = app
        .post(
            &format!(
                "/api/v1/orders/{order_id}/partner-orders/{}/cancel",
                parts[1].0
            ),
            Some(&buyer),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["lines"][0]["quantity_cancelled"], 1);
    assert_eq!(app.stock(products[1]).await, 10);
    wait_refunded(&app, parts[1].0, 1_800).await;
    assert_eq!(gateway_refunded().await, 1_800);
    // The checkout stands: still paid, the coupon still used, the others untouched.
    let (_, now) = app
        .get(&format!("/api/v1/orders/{order_id}"), Some(&buyer))
        .await;
    assert_eq!(now["status"], "PAID");
    assert_eq!(now["payment"]["status"], "SUCCESS");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM user_coupons WHERE id = {uc} AND status = 'USED'"
        ))
        .await,
        1
    );
    let statuses: Vec<&str> = now["partner_orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["PAID", "CANCELLED", "PAID"]);
    // Cancelling it again changes nothing.
    let (status, _) = app
        .post(
            &format!(
                "/api/v1/orders/{order_id}/partner-orders/{}/cancel",
                parts[1].0
            ),
            Some(&buyer),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // The third partner cancels its own part (out of stock, say).
    let (status, _) = app
        .post(
            &format!("/api/v1/partner/orders/{}/cancel", parts[2].0),
            Some(&sellers[2]),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    wait_refunded(&app, parts[2].0, 3_600).await;
    assert_eq!(gateway_refunded().await, 5_400);

    // The last standing part cancelled: the checkout is cancelled, what is left (900) goes back
    // and the coupon comes back.
    let (status, _) = app
        .post(
            &format!(
                "/api/v1/orders/{order_id}/partner-orders/{}/cancel",
                parts[0].0
            ),
            Some(&buyer),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    reaches(&app, &buyer, order_id, "REFUNDED", Duration::from_secs(15)).await;
    wait_refunded(&app, parts[0].0, 900).await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM user_coupons WHERE id = {uc} AND status = 'AVAILABLE' AND order_id IS NULL"
        ))
        .await,
        1
    );
    // The gateway refunded the one payment in three parts adding up to it, each once; the
    // API's refunds say the same.
    assert_eq!(
        gw.count(&format!(
            "SELECT count(*) AS n FROM payments WHERE transaction_key = '{transaction}'
                AND status = 'REFUNDED' AND refunded_amount = 6300"
        ))
        .await,
        1
    );
    assert_eq!(
        gw.count(&format!(
            "SELECT count(*) AS n FROM refunds WHERE transaction_key = '{transaction}'
                AND amount IN (900, 1800, 3600)"
        ))
        .await,
        3
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM refunds WHERE order_id = {order_id} AND status = 'REFUNDED'
                AND ((cause = 'PARTNER_ORDER_CANCELLED' AND amount IN (1800, 3600))
                  OR (cause = 'ORDER_CANCELLED' AND amount = 900 AND partner_order_id IS NULL))"
        ))
        .await,
        3
    );
    // Money balances: the customer paid 6,300 and got 6,300 back; every share is refunded.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM payment_splits s JOIN partner_orders p ON p.id = s.partner_order_id
              WHERE p.order_id = {order_id} AND s.captured = s.amount AND s.refunded = s.amount"
        ))
        .await,
        3
    );
    for p in &products {
        assert_eq!(app.stock(*p).await, 10);
    }
}

/// A points checkout of two partners: cancelling one partner order gives exactly its points
/// share back at once; the other stands.
#[tokio::test]
async fn cancelling_a_partner_order_paid_by_points_gives_exactly_its_share_back() {
    let app = spawn_app().await;
    let (_, a) = partner(&app, "pp-a", "919-19-00001").await;
    let (_, b) = partner(&app, "pp-b", "919-19-00002").await;
    let products = [
        partner_product(&app, &a, 1_500, 5).await,
        partner_product(&app, &b, 2_500, 5).await,
    ];
    let (buyer_id, buyer) = app.user_with_points("pp-buyer", 10_000).await;
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&buyer),
            json!({"items": [{"product_id": products[0], "quantity": 2}, {"product_id": products[1], "quantity": 1}],
                   "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let order_id = order["order_id"].as_i64().unwrap();
    let first = order["partner_orders"][0]["partner_order_id"]
        .as_i64()
        .unwrap();
    assert_eq!(app.balance(buyer_id).await, 10_000 - 5_500);
    let (status, _) = app
        .post(
            &format!("/api/v1/partner/orders/{first}/cancel"),
            Some(&a),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.balance(buyer_id).await, 10_000 - 2_500);
    assert_eq!(app.stock(products[0]).await, 5);
    assert_eq!(split_refunded(&app, first, "POINT").await, 3_000);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM point_ledger WHERE order_id = {order_id} AND kind = 'REFUND' AND amount = 3000"
        ))
        .await,
        1
    );
    // The sale of its lines is subtracted for the rankings.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM outbox WHERE event_type = 'OrderCancelled'
                AND (envelope->'payload'->>'order_id')::bigint = {order_id}
                AND envelope->'payload'->'lines' = '[{{\"product_id\": {}, \"quantity\": 2, \"unit_price\": 1500}}]'::jsonb",
            products[0]
        ))
        .await,
        1
    );
    // The checkout cancelled as a whole afterwards gives back only what it still held.
    let (status, _) = app
        .post(
            &format!("/api/v1/orders/{order_id}/cancel"),
            Some(&buyer),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.balance(buyer_id).await, 10_000);
    assert_eq!(
        (app.stock(products[0]).await, app.stock(products[1]).await),
        (5, 5)
    );
}

/// A delivered partner order returned: the customer asks (then withdraws, and asks again), the
/// partner rejects or accepts on receipt; accepted, exactly its share goes back, its card share
/// through the gateway once. The window closes the return; the confirmation timer stops while
/// it is open and goes on where it stopped.
#[tokio::test]
async fn a_returned_partner_order_gives_back_exactly_its_share() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[("FULFILMENT_AUTO_ENABLED", "false")]).await;
    let (_, a) = partner(&app, "ret-a", "929-29-00001").await;
    let (_, b) = partner(&app, "ret-b", "929-29-00002").await;
    let products = [
        partner_product(&app, &a, 3_000, 5).await,
        partner_product(&app, &b, 5_000, 5).await,
    ];
    let (_, buyer) = app.user_with_points("ret-buyer", 0).await;
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&buyer),
            json!({"items": products.iter().map(|p| json!({"product_id": p, "quantity": 1})).collect::<Vec<_>>(),
                   "payment": {"method": "CARD", "card_type": "KB", "card_no": CARD_NO}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let order_id = order["order_id"].as_i64().unwrap();
    let paid = reaches(&app, &buyer, order_id, "PAID", Duration::from_secs(10)).await;
    let id = paid["partner_orders"][0]["partner_order_id"]
        .as_i64()
        .unwrap();
    let transaction = paid["payment"]["transaction_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let po = |what: &str| format!("/api/v1/partner/orders/{id}/{what}");
    let mine = |what: &str| format!("/api/v1/orders/{order_id}/partner-orders/{id}/{what}");
    let reason = json!({"reason": "the wrong size"});

    // Not delivered yet: no return.
    let (status, problem) = app
        .post(&mine("return"), Some(&buyer), reason.clone())
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("ILLEGAL_TRANSITION"))
    );
    for what in ["ship", "deliver"] {
        let body = if what == "ship" {
            json!({"carrier": "CJ", "tracking_number": "RET-1"})
        } else {
            json!({})
        };
        let (status, _) = app.post(&po(what), Some(&a), body).await;
        assert_eq!(status, StatusCode::OK);
    }
    let due_before = app
        .count(&format!(
            "SELECT extract(epoch FROM confirm_due_at - now())::bigint AS n FROM partner_orders WHERE id = {id}"
        ))
        .await;
    assert!(due_before > 6 * 86_400, "{due_before}");

    // Asked, then withdrawn: the timer stopped and goes on.
    let (status, asked) = app
        .post(&mine("return"), Some(&buyer), reason.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{asked}");
    assert_eq!(asked["status"], "RETURN_REQUESTED");
    assert_eq!(asked["confirm_due_at"], serde_json::Value::Null);
    let (status, withdrawn) = app
        .post(&mine("return/withdraw"), Some(&buyer), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(withdrawn["status"], "DELIVERED");
    assert!(withdrawn["confirm_due_at"].is_string());
    // Asked again, rejected by the partner.
    app.post(&mine("return"), Some(&buyer), reason.clone())
        .await;
    let (status, problem) = app.post(&po("return/reject"), Some(&b), json!({})).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("PARTNER_ORDER_NOT_FOUND")),
        "another partner's return"
    );
    let (status, rejected) = app.post(&po("return/reject"), Some(&a), json!({})).await;
    assert_eq!(
        (status, rejected["status"].as_str()),
        (StatusCode::OK, Some("DELIVERED"))
    );
    // Asked a third time, accepted on receipt: exactly its share goes back.
    app.post(&mine("return"), Some(&buyer), reason.clone())
        .await;
    let (status, returned) = app.post(&po("return/accept"), Some(&a), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{returned}");
    assert_eq!(returned["status"], "RETURNED");
    assert_eq!(returned["lines"][0]["quantity_returned"], 1);
    assert_eq!(app.stock(products[0]).await, 5);
    wait_refunded(&app, id, 3_000).await;
    assert_eq!(
        gw.count(&format!(
            "SELECT refunded_amount AS n FROM payments WHERE transaction_key = '{transaction}' AND status = 'SUCCESS'"
        ))
        .await,
        3_000
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM returns WHERE partner_order_id = {id}
                AND ((status = 'WITHDRAWN') OR (status = 'REJECTED') OR (status = 'ACCEPTED'))"
        ))
        .await,
        3
    );
    // Nothing moves after it; the rest of the checkout stands.
    let (status, _) = app.post(&mine("confirm"), Some(&buyer), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, now) = app
        .get(&format!("/api/v1/orders/{order_id}"), Some(&buyer))
        .await;
    assert_eq!(now["status"], "PAID");
    assert_eq!(now["partner_orders"][1]["status"], "PAID");
    assert_eq!(now["fulfilment_status"], "PARTIALLY_RETURNED");

    // Past the window the return is refused, and nothing changes.
    let other = now["partner_orders"][1]["partner_order_id"]
        .as_i64()
        .unwrap();
    app.post(
        &format!("/api/v1/partner/orders/{other}/ship"),
        Some(&b),
        json!({"carrier": "CJ", "tracking_number": "RET-2"}),
    )
    .await;
    app.post(
        &format!("/api/v1/partner/orders/{other}/deliver"),
        Some(&b),
        json!({}),
    )
    .await;
    app.count(&format!(
        "WITH u AS (UPDATE shipments SET delivered_at = now() - interval '8 days'
                     WHERE partner_order_id = {other} RETURNING 1) SELECT count(*) AS n FROM u"
    ))
    .await;
    let (status, problem) = app
        .post(
            &format!("/api/v1/orders/{order_id}/partner-orders/{other}/return"),
            Some(&buyer),
            reason,
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("RETURN_WINDOW_CLOSED"))
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM partner_orders WHERE id = {other} AND status = 'DELIVERED'
                AND confirm_due_at IS NOT NULL"
        ))
        .await,
        1
    );
}

/// A return asked for just as the automatic confirmation comes due: exactly one wins. Either
/// the return is open and the purchase is never confirmed, or it was confirmed first and the
/// return is refused.
#[tokio::test]
async fn a_return_racing_the_automatic_confirmation_has_exactly_one_winner() {
    let app = crate::support::spawn_app_with(&[
        ("FULFILMENT_AUTO_INTERVAL_MS", "10"),
        ("PURCHASE_CONFIRM_AFTER_SECONDS", "3600"),
    ])
    .await;
    let (_, seller) = partner(&app, "race-ret", "939-39-00001").await;
    let product = partner_product(&app, &seller, 100, 1000).await;
    let (_, buyer) = app.user_with_points("race-ret-buyer", 100_000).await;
    let (mut returned, mut confirmed) = (0, 0);
    for round in 0..10 {
        let mut ids = Vec::new();
        let mut orders = Vec::new();
        // The partner order raced, and a sentinel confirmed by the same passes.
        for _ in 0..2 {
            let (_, order) = app
                .post(
                    "/api/v1/orders",
                    Some(&buyer),
                    json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}),
                )
                .await;
            let id = order["partner_orders"][0]["partner_order_id"]
                .as_i64()
                .unwrap();
            for what in ["ship", "deliver"] {
                let body = json!({"carrier": "CJ", "tracking_number": format!("R-{round}")});
                let (status, _) = app
                    .post(
                        &format!("/api/v1/partner/orders/{id}/{what}"),
                        Some(&seller),
                        body,
                    )
                    .await;
                assert_eq!(status, StatusCode::OK);
            }
            ids.push(id);
            orders.push(order["order_id"].as_i64().unwrap());
        }
        // Both come due now.
        app.count(&format!(
            "WITH u AS (UPDATE partner_orders SET confirm_due_at = now()
                         WHERE id IN ({}, {}) RETURNING 1) SELECT count(*) AS n FROM u",
            ids[0], ids[1]
        ))
        .await;
        let (status, _) = app
            .post(
                &format!(
                    "/api/v1/orders/{}/partner-orders/{}/return",
                    orders[0], ids[0]
                ),
                Some(&buyer),
                json!({"reason": "changed my mind"}),
            )
            .await;
        // A pass ran after the request: the sentinel is confirmed.
        eventually("the sentinel is confirmed", Duration::from_secs(10), async || {
            let n = app
                .count(&format!(
                    "SELECT count(*) AS n FROM partner_orders WHERE id = {} AND status = 'PURCHASE_CONFIRMED'",
                    ids[1]
                ))
                .await;
            if n == 1 { Ok(()) } else { Err(n) }
        })
        .await;
        let state = |status: &str| {
            format!(
                "SELECT count(*) AS n FROM partner_orders WHERE id = {} AND status = '{status}'",
                ids[0]
            )
        };
        match status {
            StatusCode::OK => {
                assert_eq!(
                    app.count(&state("RETURN_REQUESTED")).await,
                    1,
                    "round {round}"
                );
                returned += 1;
            }
            StatusCode::CONFLICT => {
                assert_eq!(
                    app.count(&state("PURCHASE_CONFIRMED")).await,
                    1,
                    "round {round}"
                );
                confirmed += 1;
            }
            other => panic!("round {round}: {other}"),
        }
    }
    assert_eq!(returned + confirmed, 10);
    // No partner order was both: every confirmation event is of a confirmed one.
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM outbox o JOIN partner_orders p
                ON p.id = (o.envelope->'payload'->>'partner_order_id')::bigint
              WHERE o.event_type = 'PartnerOrderChanged' AND o.envelope->'payload'->>'to' = 'PURCHASE_CONFIRMED'
                AND p.status <> 'PURCHASE_CONFIRMED'"
        )
        .await,
        0
    );
}

/// After confirmation nothing is refunded, except by an administrator's adjustment: once, part
/// of the card share through the gateway, and the earned points taken back.
#[tokio::test]
async fn an_admin_adjusts_a_confirmed_partner_order_once_and_takes_its_points_back() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[("FULFILMENT_AUTO_ENABLED", "false")]).await;
    let (_, seller) = partner(&app, "adj-seller", "949-49-00001").await;
    let product = partner_product(&app, &seller, 10_000, 5).await;
    let (buyer_id, buyer) = app.user_with_points("adj-buyer", 0).await;
    let card_order = json!({"items": [{"product_id": product, "quantity": 1}],
                            "payment": {"method": "CARD", "card_type": "KB", "card_no": CARD_NO}});
    let mut ids = Vec::new();
    let mut transaction = String::new();
    for _ in 0..2 {
        let (status, order) = app
            .post("/api/v1/orders", Some(&buyer), card_order.clone())
            .await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        let order_id = order["order_id"].as_i64().unwrap();
        let paid = reaches(&app, &buyer, order_id, "PAID", Duration::from_secs(10)).await;
        ids.push((
            order_id,
            paid["partner_orders"][0]["partner_order_id"]
                .as_i64()
                .unwrap(),
        ));
        transaction = paid["payment"]["transaction_key"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    // The second checkout is confirmed and earns 1 % (100 points).
    let (order_id, id) = ids[1];
    app.post(
        &format!("/api/v1/partner/orders/{id}/ship"),
        Some(&seller),
        json!({"carrier": "CJ", "tracking_number": "ADJ-1"}),
    )
    .await;
    let (status, _) = app
        .post(
            &format!("/api/v1/orders/{order_id}/partner-orders/{id}/confirm"),
            Some(&buyer),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.balance(buyer_id).await, 100);
    let adjust = |id: i64| format!("/api/v1/admin/partner-orders/{id}/adjustments");
    let body = |amount: i64| json!({"amount": amount, "reason": "scratched on arrival"});

    // Refusals change nothing.
    for (path, token, body, status, code) in [
        (
            adjust(id),
            &buyer,
            body(100),
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        ),
        (
            adjust(id),
            &app.admin,
            body(0),
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        ),
        (
            adjust(id),
            &app.admin,
            body(10_001),
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        ),
        (
            adjust(ids[0].1),
            &app.admin,
            body(100),
            StatusCode::CONFLICT,
            "NOT_ADJUSTABLE",
        ),
        (
            adjust(999_999),
            &app.admin,
            body(100),
            StatusCode::NOT_FOUND,
            "PARTNER_ORDER_NOT_FOUND",
        ),
    ] {
        let (got, problem) = app.post(&path, Some(token), body).await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{path}: {problem}"
        );
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM refunds").await, 0);

    let (status, adjusted) = app.post(&adjust(id), Some(&app.admin), body(2_500)).await;
    assert_eq!(status, StatusCode::OK, "{adjusted}");
    assert_eq!(adjusted["status"], "PURCHASE_CONFIRMED");
    wait_refunded(&app, id, 2_500).await;
    assert_eq!(
        gw.count(&format!(
            "SELECT refunded_amount AS n FROM payments WHERE transaction_key = '{transaction}'"
        ))
        .await,
        2_500
    );
    assert_eq!(app.balance(buyer_id).await, 0);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM point_ledger WHERE partner_order_id = {id}
                AND ((kind = 'EARN' AND amount = 100) OR (kind = 'EARN_REVERSED' AND amount = -100))"
        ))
        .await,
        2
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM payment_events WHERE order_id = {order_id}
                AND kind = 'REFUND_REQUESTED' AND source = 'admin' AND reason LIKE '%scratched on arrival'"
        ))
        .await,
        1
    );
    // Once.
    let (status, problem) = app.post(&adjust(id), Some(&app.admin), body(100)).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("NOT_ADJUSTABLE"))
    );
}
