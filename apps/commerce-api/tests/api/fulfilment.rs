//! An order's life after payment, per partner order: shipping, delivery, purchase confirmation,
//! the refusals, the races and the automatic passes.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::marketplace::{partner, partner_product};
use crate::support::{TestApp, spawn_app, spawn_app_with};

/// A checkout paid by points of one product of each partner (`tokens`): the order's id, and its
/// partner orders' ids in partner order.
async fn checkout(app: &TestApp, buyer: &str, products: &[i64]) -> (i64, Vec<i64>) {
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(buyer),
            json!({"items": products.iter().map(|p| json!({"product_id": p, "quantity": 1})).collect::<Vec<_>>(),
                   "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let parts = order["partner_orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["partner_order_id"].as_i64().unwrap())
        .collect();
    (order["order_id"].as_i64().unwrap(), parts)
}

async fn step(app: &TestApp, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    app.post(path, Some(token), body).await
}

fn ship_body(tracking: &str) -> Value {
    json!({"carrier": "CJ Logistics", "tracking_number": tracking})
}

async fn changed(app: &TestApp, partner_order: i64, to: &str) -> i64 {
    app.count(&format!(
        "SELECT count(*) AS n FROM outbox WHERE event_type = 'PartnerOrderChanged'
            AND (envelope->'payload'->>'partner_order_id')::bigint = {partner_order}
            AND envelope->'payload'->>'to' = '{to}'"
    ))
    .await
}

#[tokio::test]
async fn a_partner_order_is_prepared_shipped_delivered_and_confirmed_and_refused_steps_change_nothing()
 {
    let app = spawn_app().await;
    let (_, a) = partner(&app, "ship-a", "303-03-00001").await;
    let (_, b) = partner(&app, "ship-b", "303-03-00002").await;
    let products = [
        partner_product(&app, &a, 1_000, 5).await,
        partner_product(&app, &b, 2_000, 5).await,
    ];
    let (buyer_id, buyer) = app.user_with_points("ship-buyer", 10_000).await;
    let (_, stranger) = app.user_with_points("ship-stranger", 0).await;
    let (order, parts) = checkout(&app, &buyer, &products).await;
    let (mine, theirs) = (parts[0], parts[1]);
    let po = |id: i64, what: &str| format!("/api/v1/partner/orders/{id}/{what}");
    let confirm = |id: i64| format!("/api/v1/orders/{order}/partner-orders/{id}/confirm");

    // Refused steps answer 409 with the code and change nothing.
    for (token, path, body, code) in [
        (&a, po(mine, "deliver"), json!({}), "ILLEGAL_TRANSITION"),
        (&buyer, confirm(mine), json!({}), "ILLEGAL_TRANSITION"),
        // Another partner's, or another customer's: not found.
        (
            &b,
            po(mine, "prepare"),
            json!({}),
            "PARTNER_ORDER_NOT_FOUND",
        ),
        (
            &stranger,
            confirm(mine),
            json!({}),
            "PARTNER_ORDER_NOT_FOUND",
        ),
        (
            &buyer,
            format!("/api/v1/orders/{}/partner-orders/{mine}/confirm", order + 1),
            json!({}),
            "PARTNER_ORDER_NOT_FOUND",
        ),
        (
            &a,
            po(mine, "ship"),
            json!({"carrier": "", "tracking_number": "no spaces"}),
            "VALIDATION_FAILED",
        ),
    ] {
        let (status, problem) = step(&app, token, &path, body).await;
        assert_eq!(problem["code"], code, "{path}: {status} {problem}");
    }
    assert_eq!(
        app.count("SELECT count(*) AS n FROM partner_orders WHERE status = 'PAID'")
            .await,
        2
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM outbox WHERE event_type = 'PartnerOrderChanged'")
            .await,
        0
    );

    // Prepare (twice: the repeat changes nothing), ship.
    for _ in 0..2 {
        let (status, body) = step(&app, &a, &po(mine, "prepare"), json!({})).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("PREPARING"))
        );
    }
    assert_eq!(changed(&app, mine, "PREPARING").await, 1);
    let (status, shipped) = step(&app, &a, &po(mine, "ship"), ship_body("CJ-1001")).await;
    assert_eq!(status, StatusCode::OK, "{shipped}");
    assert_eq!(shipped["status"], "SHIPPED");
    assert_eq!(shipped["shipment"]["tracking_number"], "CJ-1001");
    assert_eq!(shipped["shipment"]["delivered_at"], Value::Null);
    assert_eq!(shipped["lines"][0]["quantity_shipped"], 1);
    // The same tracking again is a repeat; another one is refused.
    let (status, _) = step(&app, &a, &po(mine, "ship"), ship_body("CJ-1001")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, problem) = step(&app, &a, &po(mine, "ship"), ship_body("CJ-9999")).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("ILLEGAL_TRANSITION"))
    );
    assert_eq!(changed(&app, mine, "SHIPPED").await, 1);
    let (_, detail) = app
        .get(&format!("/api/v1/orders/{order}"), Some(&buyer))
        .await;
    assert_eq!(detail["fulfilment_status"], "PARTIALLY_SHIPPED");

    // Part of the checkout shipped: the checkout as a whole is no longer cancellable, and the
    // refusal changes nothing.
    let (status, problem) = app
        .post(
            &format!("/api/v1/orders/{order}/cancel"),
            Some(&buyer),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("ORDER_NOT_CANCELLABLE"))
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM orders WHERE id = {order} AND status = 'PAID'"
        ))
        .await,
        1
    );

    // Delivered by the partner, then confirmed by the customer: final.
    let (status, delivered) = step(&app, &a, &po(mine, "deliver"), json!({})).await;
    assert_eq!(
        (status, delivered["status"].as_str()),
        (StatusCode::OK, Some("DELIVERED"))
    );
    assert!(delivered["shipment"]["delivered_at"].is_string());
    assert!(delivered["confirm_due_at"].is_string());
    let (status, confirmed) = step(&app, &buyer, &confirm(mine), json!({})).await;
    assert_eq!(
        (status, confirmed["status"].as_str()),
        (StatusCode::OK, Some("PURCHASE_CONFIRMED")),
        "{confirmed}"
    );
    assert_eq!(confirmed["confirm_due_at"], Value::Null);
    for (token, path) in [
        (&a, po(mine, "prepare")),
        (&a, po(mine, "ship")),
        (&buyer, format!("/api/v1/orders/{order}/cancel")),
    ] {
        let body = if path.ends_with("ship") {
            ship_body("X-1")
        } else {
            json!({})
        };
        let (status, _) = step(&app, token, &path, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}");
    }
    assert_eq!(changed(&app, mine, "PURCHASE_CONFIRMED").await, 1);
    // The other partner's order is untouched, and the customer can confirm a shipped one
    // (receiving it is its delivery).
    let (_, other) = app
        .get(&format!("/api/v1/partner/orders/{theirs}"), Some(&b))
        .await;
    assert_eq!(other["status"], "PAID");
    step(&app, &b, &po(theirs, "ship"), ship_body("HJ-7")).await;
    let (status, body) = step(&app, &buyer, &confirm(theirs), json!({})).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("PURCHASE_CONFIRMED"))
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM shipments WHERE partner_order_id = {theirs} AND delivered_by = 'CUSTOMER'"
        ))
        .await,
        1
    );
    // Each confirmation earned 1 % of what was paid for it, once: 10 + 20 points.
    assert_eq!(app.balance(buyer_id).await, 10_000 - 3_000 + 30);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM point_ledger WHERE kind = 'EARN' AND order_id = {order}
                AND ((partner_order_id = {mine} AND amount = 10) OR (partner_order_id = {theirs} AND amount = 20))"
        ))
        .await,
        2
    );
    // Each event carries the partner order's amounts.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM outbox WHERE event_type = 'PartnerOrderChanged'
                AND (envelope->'payload'->>'partner_order_id')::bigint = {mine}
                AND (envelope->'payload'->>'items_total')::bigint = 1000
                AND (envelope->'payload'->>'points_share')::bigint = 1000"
        ))
        .await,
        4
    );
}

/// A cancel of the checkout racing a partner shipping its part: exactly one wins, whichever it
/// is, and the loser changes nothing.
#[tokio::test]
async fn a_cancel_racing_a_ship_has_exactly_one_winner() {
    let app = Arc::new(spawn_app().await);
    let (_, seller) = partner(&app, "race-seller", "404-04-00001").await;
    let product = partner_product(&app, &seller, 100, 1000).await;
    let (buyer_id, buyer) = app.user_with_points("race-buyer", 100_000).await;
    let (mut cancelled, mut shipped) = (0, 0);
    for round in 0..20 {
        let (order, parts) = checkout(&app, &buyer, &[product]).await;
        let cancel = {
            let (app, buyer) = (app.clone(), buyer.clone());
            tokio::spawn(async move {
                app.post(
                    &format!("/api/v1/orders/{order}/cancel"),
                    Some(&buyer),
                    json!({}),
                )
                .await
                .0
            })
        };
        let ship = {
            let (app, seller) = (app.clone(), seller.clone());
            let path = format!("/api/v1/partner/orders/{}/ship", parts[0]);
            tokio::spawn(async move {
                app.post(&path, Some(&seller), ship_body(&format!("R-{round}")))
                    .await
                    .0
            })
        };
        let (cancel, ship) = (cancel.await.unwrap(), ship.await.unwrap());
        let status: String = {
            let (_, body) = app
                .get(&format!("/api/v1/orders/{order}"), Some(&buyer))
                .await;
            body["partner_orders"][0]["status"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        match (cancel, ship, status.as_str()) {
            (StatusCode::OK, StatusCode::CONFLICT, "CANCELLED") => cancelled += 1,
            (StatusCode::CONFLICT, StatusCode::OK, "SHIPPED") => shipped += 1,
            other => panic!("round {round}: {other:?}"),
        }
    }
    assert_eq!(cancelled + shipped, 20);
    // Every cancelled checkout gave its 100 points back; every shipped one kept them.
    assert_eq!(app.balance(buyer_id).await, 100_000 - shipped * 100);
    assert_eq!(app.stock(product).await, 1000 - shipped);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM shipments").await,
        shipped
    );
}

/// Two confirmations of one partner order at once: one confirms, the other is a repeat; one
/// event.
#[tokio::test]
async fn two_confirmations_at_once_confirm_once() {
    let app = Arc::new(spawn_app().await);
    let (_, seller) = partner(&app, "twice-seller", "505-05-00001").await;
    let product = partner_product(&app, &seller, 100, 100).await;
    let (_, buyer) = app.user_with_points("twice-buyer", 10_000).await;
    for _ in 0..5 {
        let (order, parts) = checkout(&app, &buyer, &[product]).await;
        let id = parts[0];
        app.post(
            &format!("/api/v1/partner/orders/{id}/ship"),
            Some(&seller),
            ship_body("T-1"),
        )
        .await;
        let path = format!("/api/v1/orders/{order}/partner-orders/{id}/confirm");
        let tries: Vec<_> = (0..2)
            .map(|_| {
                let (app, buyer, path) = (app.clone(), buyer.clone(), path.clone());
                tokio::spawn(async move { app.post(&path, Some(&buyer), json!({})).await.0 })
            })
            .collect();
        for t in tries {
            assert_eq!(t.await.unwrap(), StatusCode::OK);
        }
        assert_eq!(changed(&app, id, "PURCHASE_CONFIRMED").await, 1);
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) AS n FROM point_ledger WHERE kind = 'EARN' AND partner_order_id = {id}"
            ))
            .await,
            1
        );
    }
}

/// With two API instances running the automatic passes, every shipped partner order is
/// delivered once and confirmed once; the confirmation timer is the delivery's, or the
/// backstop from shipping when that comes first.
#[tokio::test]
async fn automatic_delivery_and_confirmation_run_once_across_two_instances() {
    let timings = [
        ("FULFILMENT_AUTO_INTERVAL_MS", "50"),
        ("DELIVERY_AUTO_AFTER_SECONDS", "1"),
        ("PURCHASE_CONFIRM_AFTER_SECONDS", "1"),
        ("PURCHASE_CONFIRM_BACKSTOP_SECONDS", "3600"),
    ];
    let app = spawn_app_with(&timings).await;
    let _second = app.another_instance(&timings).await;
    let (_, seller) = partner(&app, "auto-seller", "606-06-00001").await;
    let product = partner_product(&app, &seller, 100, 1000).await;
    let (buyer_id, buyer) = app.user_with_points("auto-buyer", 100_000).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let (_, parts) = checkout(&app, &buyer, &[product]).await;
        let (status, _) = app
            .post(
                &format!("/api/v1/partner/orders/{}/ship", parts[0]),
                Some(&seller),
                ship_body(&format!("A-{i}")),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        ids.push(parts[0]);
    }
    commerce_testkit::eventually(
        "every shipped partner order is confirmed",
        Duration::from_secs(20),
        async || {
            let n = app
                .count(
                    "SELECT count(*) AS n FROM partner_orders WHERE status = 'PURCHASE_CONFIRMED'",
                )
                .await;
            if n == 30 { Ok(()) } else { Err(n) }
        },
    )
    .await;
    for id in ids {
        assert_eq!(changed(&app, id, "DELIVERED").await, 1, "{id}");
        assert_eq!(changed(&app, id, "PURCHASE_CONFIRMED").await, 1, "{id}");
    }
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM shipments s JOIN partner_orders p ON p.id = s.partner_order_id
              WHERE s.delivered_by = 'AUTOMATIC' AND s.delivered_at >= s.deliver_due_at
                AND p.confirmed_at >= s.delivered_at + interval '1 second'"
        )
        .await,
        30
    );
    // Each confirmation earned 1 point (1 % of 100), once.
    assert_eq!(
        app.count("SELECT count(*) AS n FROM point_ledger WHERE kind = 'EARN' AND amount = 1")
            .await,
        30
    );
    assert_eq!(app.balance(buyer_id).await, 100_000 - 30 * 100 + 30);
}

#[tokio::test]
async fn the_confirmation_timer_is_cut_short_by_the_backstop_from_shipping() {
    let app = spawn_app_with(&[
        ("FULFILMENT_AUTO_ENABLED", "false"),
        ("PURCHASE_CONFIRM_AFTER_SECONDS", "604800"),
        ("PURCHASE_CONFIRM_BACKSTOP_SECONDS", "3600"),
    ])
    .await;
    let (_, seller) = partner(&app, "stop-seller", "707-07-00001").await;
    let product = partner_product(&app, &seller, 100, 10).await;
    let (_, buyer) = app.user_with_points("stop-buyer", 1_000).await;
    let (_, parts) = checkout(&app, &buyer, &[product]).await;
    let id = parts[0];
    app.post(
        &format!("/api/v1/partner/orders/{id}/ship"),
        Some(&seller),
        ship_body("B-1"),
    )
    .await;
    let (status, _) = app
        .post(
            &format!("/api/v1/partner/orders/{id}/deliver"),
            Some(&seller),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM partner_orders p JOIN shipments s ON s.partner_order_id = p.id
              WHERE p.id = {id} AND s.delivered_by = 'PARTNER'
                AND p.confirm_due_at = s.shipped_at + interval '3600 seconds'"
        ))
        .await,
        1
    );
}

/// `follow=delivery`: the order's stream tells each partner order's move as it commits, with its
/// tracking, and ends by itself once every partner order is final.
#[tokio::test]
async fn the_order_stream_follows_each_partner_order_to_its_end() {
    let app = spawn_app().await;
    let (_, seller) = partner(&app, "sse-seller", "808-08-00001").await;
    let product = partner_product(&app, &seller, 100, 10).await;
    let (_, buyer) = app.user_with_points("sse-buyer", 1_000).await;
    let (order, parts) = checkout(&app, &buyer, &[product]).await;
    let id = parts[0];
    let url = |follow: &str| format!("{}/api/v1/orders/{order}/events?follow={follow}", app.base);
    let bad = app
        .client
        .get(url("forever"))
        .bearer_auth(&buyer)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let stream = app
        .client
        .get(url("delivery"))
        .bearer_auth(&buyer)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let reading = tokio::spawn(crate::order_events::follow_all(
        stream,
        Duration::from_secs(20),
    ));
    let po = |what: &str| format!("/api/v1/partner/orders/{id}/{what}");
    for (path, body) in [
        (po("prepare"), json!({})),
        (po("ship"), ship_body("SSE-1")),
        (po("deliver"), json!({})),
    ] {
        let (status, _) = app.post(&path, Some(&seller), body).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _) = app
        .post(
            &format!("/api/v1/orders/{order}/partner-orders/{id}/confirm"),
            Some(&buyer),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (events, _) = reading.await.unwrap();
    let told: Vec<(String, String, Value)> = events
        .iter()
        .map(|(name, data)| {
            (
                name.clone(),
                data["status"].as_str().unwrap().to_owned(),
                data["tracking_number"].clone(),
            )
        })
        .collect();
    let step =
        |status: &str, tracking: Value| ("partner_order".to_owned(), status.to_owned(), tracking);
    assert_eq!(
        told,
        vec![
            ("status".to_owned(), "PAID".to_owned(), Value::Null),
            step("PAID", Value::Null),
            step("PREPARING", Value::Null),
            step("SHIPPED", json!("SSE-1")),
            step("DELIVERED", json!("SSE-1")),
            step("PURCHASE_CONFIRMED", json!("SSE-1")),
        ]
    );
}
