//! The marketplace: partners and their catalogs, and one checkout split per partner.

use std::time::Duration;

use pg_simulator::behaviour::Behaviour;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::payments::{CARD_NO, Gateway, api, reaches};
use crate::support::{TestApp, spawn_app};

/// A partner created by the admin, and its account's token (by a real login).
pub(crate) async fn partner(app: &TestApp, login: &str, business_number: &str) -> (i64, String) {
    let (status, created) = app
        .post(
            "/api/v1/admin/partners",
            Some(&app.admin),
            json!({"name": format!("{login} store"), "business_number": business_number,
                   "account": {"login_id": login, "password": "partner-pass-1", "name": login,
                               "email": format!("{login}@example.com")}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, token) = app
        .post(
            "/api/v1/auth/token",
            None,
            json!({"login_id": login, "password": "partner-pass-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{token}");
    (
        created["partner"]["id"].as_i64().unwrap(),
        token["access_token"].as_str().unwrap().to_owned(),
    )
}

/// A product of the calling partner (a brand of its own first), priced `price`.
pub(crate) async fn partner_product(app: &TestApp, token: &str, price: i64, stock: i64) -> i64 {
    let (status, brand) = app
        .post(
            "/api/v1/partner/brands",
            Some(token),
            json!({"name": "Own brand"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{brand}");
    let (status, product) = app
        .post(
            "/api/v1/partner/products",
            Some(token),
            json!({"brand_id": brand["id"], "name": "Own product", "price": price, "stock": stock}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{product}");
    product["id"].as_i64().unwrap()
}

async fn patch(app: &TestApp, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    app.call(Method::PATCH, path, Some(token), Some(body)).await
}

#[tokio::test]
async fn admins_create_suspend_and_resume_partners_and_bad_input_changes_nothing() {
    let app = spawn_app().await;
    let (id, token) = partner(&app, "seller1", "123-45-67890").await;
    let (status, me) = app.get("/api/v1/partner/me", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], id);
    assert_eq!(me["status"], "ACTIVE");
    assert_eq!(me["business_number"], "123-45-67890");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM users WHERE login_id = 'seller1' AND role = 'PARTNER' AND partner_id = {id}"
        ))
        .await,
        1
    );

    // Refusals, each with its code, and nothing written.
    let new = |bn: &str, login: &str| {
        json!({"name": "Other", "business_number": bn,
               "account": {"login_id": login, "password": "partner-pass-1", "name": "x", "email": "x@example.com"}})
    };
    let cases = [
        (
            new("123-45-67890", "seller2"),
            StatusCode::CONFLICT,
            "BUSINESS_NUMBER_TAKEN",
        ),
        (
            new("222-22-22222", "seller1"),
            StatusCode::CONFLICT,
            "LOGIN_ID_TAKEN",
        ),
        (
            new("12345", "seller3"),
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        ),
        (
            new("000-00-00000", "seller4"),
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        ),
    ];
    for (body, status, code) in cases {
        let (got, problem) = app
            .post("/api/v1/admin/partners", Some(&app.admin), body)
            .await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{problem}"
        );
    }
    let (status, problem) = app
        .post(
            "/api/v1/admin/partners",
            Some(&app.admin),
            json!({"name": "", "business_number": "1", "account": {"login_id": "x", "password": "short", "name": "x", "email": "nope"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "name",
            "business_number",
            "account.login_id",
            "account.password",
            "account.email"
        ],
        "{problem}"
    );
    // The house partner and the first partner; no account besides the admin and seller1.
    assert_eq!(app.count("SELECT count(*) AS n FROM partners").await, 2);
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 2);

    // Only admins manage partners; customers are not partners.
    let (_, customer) = app.user_with_points("customer", 0).await;
    let (status, _) = app.get("/api/v1/admin/partners", Some(&token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, problem) = app.get("/api/v1/partner/me", Some(&customer)).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN"))
    );

    // Suspended: no catalog changes (403 PARTNER_SUSPENDED); resumed: allowed again.
    let product = partner_product(&app, &token, 1000, 5).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/admin/partners/{id}/suspend"),
            Some(&app.admin),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("SUSPENDED"))
    );
    let (status, problem) = patch(
        &app,
        &format!("/api/v1/partner/products/{product}"),
        &token,
        json!({"stock": 50}),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("PARTNER_SUSPENDED"))
    );
    assert_eq!(app.stock(product).await, 5);
    // Its products cannot be ordered, and the refusal takes nothing.
    let (buyer, buyer_token) = app.user_with_points("buyer", 10_000).await;
    let (status, problem) = app
        .post(
            "/api/v1/orders",
            Some(&buyer_token),
            json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("PRODUCT_NOT_ON_SALE"))
    );
    assert_eq!(
        (app.stock(product).await, app.balance(buyer).await),
        (5, 10_000)
    );
    // The house partner is never suspended.
    let (status, _) = app
        .post(
            "/api/v1/admin/partners/1/suspend",
            Some(&app.admin),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = app
        .post(
            &format!("/api/v1/admin/partners/{id}/resume"),
            Some(&app.admin),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ACTIVE"))
    );
    let (status, body) = patch(
        &app,
        &format!("/api/v1/partner/products/{product}"),
        &token,
        json!({"stock": 50}),
    )
    .await;
    assert_eq!((status, body["stock"].as_i64()), (StatusCode::OK, Some(50)));
    let (status, _) = app
        .post(
            "/api/v1/orders",
            Some(&buyer_token),
            json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn partners_change_their_own_catalog_and_never_anothers() {
    let app = spawn_app().await;
    let (a, a_token) = partner(&app, "seller-a", "111-11-11111").await;
    let (_, b_token) = partner(&app, "seller-b", "222-22-22222").await;
    let a_product = partner_product(&app, &a_token, 1000, 5).await;
    let (_, a_products) = app.get("/api/v1/partner/products", Some(&a_token)).await;
    let a_brand = a_products["content"][0]["brand_id"].as_i64().unwrap();
    assert_eq!(a_products["total_elements"], 1);
    assert_eq!(a_products["content"][0]["partner_id"], a);

    // B cannot change A's product, nor list under A's brand, nor claim A as its partner.
    let (status, problem) = patch(
        &app,
        &format!("/api/v1/partner/products/{a_product}"),
        &b_token,
        json!({"price": 1}),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("PRODUCT_NOT_FOUND"))
    );
    let (status, problem) = app
        .post(
            "/api/v1/partner/products",
            Some(&b_token),
            json!({"brand_id": a_brand, "name": "Knock-off", "price": 1, "stock": 1}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("BRAND_NOT_FOUND"))
    );
    let (status, _) = app
        .post(
            "/api/v1/partner/brands",
            Some(&b_token),
            json!({"name": "Mine", "partner_id": a}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, b_products) = app.get("/api/v1/partner/products", Some(&b_token)).await;
    assert_eq!(b_products["total_elements"], 0);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM products WHERE id = {a_product} AND price = 1000"
        ))
        .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM products").await, 1);

    // Admins act on any partner's product, and brands they create belong to the house by
    // default or to the partner they name.
    let (status, body) = patch(
        &app,
        &format!("/api/v1/admin/products/{a_product}"),
        &app.admin,
        json!({"price": 1200}),
    )
    .await;
    assert_eq!(
        (status, body["price"].as_i64()),
        (StatusCode::OK, Some(1200))
    );
    let (_, house) = app
        .post(
            "/api/v1/admin/brands",
            Some(&app.admin),
            json!({"name": "House brand"}),
        )
        .await;
    assert_eq!(house["partner_id"], 1);
    let (_, named) = app
        .post(
            "/api/v1/admin/brands",
            Some(&app.admin),
            json!({"name": "For A", "partner_id": a}),
        )
        .await;
    assert_eq!(named["partner_id"], a);
    let (status, problem) = app
        .post(
            "/api/v1/admin/brands",
            Some(&app.admin),
            json!({"name": "Nobody's", "partner_id": 999_999}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("PARTNER_NOT_FOUND"))
    );
    // A product under A's brand created by an admin belongs to A.
    let (_, product) = app
        .post(
            "/api/v1/admin/products",
            Some(&app.admin),
            json!({"brand_id": named["id"], "name": "By admin", "price": 10, "stock": 1}),
        )
        .await;
    assert_eq!(product["partner_id"], a);
}

/// Three partners' products in one checkout with a 5,000 coupon, paid by points: one partner
/// order each, the discount allocated to the lines by largest remainder, the points covering
/// what is left of each, and every share adding up to the order's amounts.
#[tokio::test]
async fn a_checkout_of_three_partners_is_split_and_allocated_exactly() {
    let app = spawn_app().await;
    let mut partners = Vec::new();
    for (login, bn, price) in [
        ("p-one", "101-01-00001", 7_000),
        ("p-two", "101-01-00002", 3_333),
        ("p-three", "101-01-00003", 10_000),
    ] {
        let (id, token) = partner(&app, login, bn).await;
        let product = partner_product(&app, &token, price, 10).await;
        partners.push((id, token, product));
    }
    let (buyer, token) = app.user_with_points("buyer", 30_000).await;
    let (_, coupon) = app
        .post(
            "/api/v1/admin/coupons",
            Some(&app.admin),
            json!({"name": "5000 off", "discount_type": "FIXED", "discount_value": 5000}),
        )
        .await;
    let (_, issued) = app
        .post(
            &format!("/api/v1/coupons/{}/issue", coupon["id"]),
            Some(&token),
            json!({}),
        )
        .await;
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&token),
            json!({"items": [{"product_id": partners[0].2, "quantity": 2},
                             {"product_id": partners[1].2, "quantity": 1},
                             {"product_id": partners[2].2, "quantity": 1}],
                   "user_coupon_id": issued["user_coupon_id"], "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    // 14,000 + 3,333 + 10,000 = 27,333; 5,000 off; 22,333 in points.
    assert_eq!(
        (
            &order["total_amount"],
            &order["discount_amount"],
            &order["final_amount"]
        ),
        (&json!(27_333), &json!(5_000), &json!(22_333))
    );
    assert_eq!(app.balance(buyer).await, 30_000 - 22_333);
    // 5,000 × 14,000/27,333 = 2,561.007; × 3,333/27,333 = 609.70; × 10,000/27,333 = 1,829.29:
    // floors 2,561 + 609 + 1,829 = 4,999, and the one unit left goes to the largest remainder.
    let expected = [
        (partners[0].0, 14_000, 2_561, 11_439),
        (partners[1].0, 3_333, 610, 2_723),
        (partners[2].0, 10_000, 1_829, 8_171),
    ];
    let parts = order["partner_orders"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{order}");
    for (part, (partner, items, discount, points)) in parts.iter().zip(expected) {
        assert_eq!(part["partner_id"], partner, "{part}");
        assert_eq!(part["status"], "PAID");
        assert_eq!(
            (
                &part["items_total"],
                &part["discount_share"],
                &part["points_share"],
                &part["card_share"]
            ),
            (&json!(items), &json!(discount), &json!(points), &json!(0)),
            "{part}"
        );
        assert_eq!(part["lines"].as_array().unwrap().len(), 1);
        assert_eq!(part["lines"][0]["discount_share"], discount);
        assert_eq!(
            part["payments"],
            json!([{"method": "POINT", "amount": points, "captured": points, "refunded": 0}])
        );
    }
    // The database agrees, and the shares add up to the order exactly.
    let order_id = order["order_id"].as_i64().unwrap();
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM orders o
               JOIN (SELECT order_id, sum(items_total) t, sum(discount_share) d, sum(points_share) p,
                            sum(card_share) c, count(*) k
                       FROM partner_orders GROUP BY order_id) s ON s.order_id = o.id
              WHERE o.id = {order_id} AND s.k = 3 AND s.t = o.total_amount
                AND s.d = o.discount_amount AND s.p = o.points_used AND s.c = 0"
        ))
        .await,
        1
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM order_items i JOIN partner_orders p ON p.id = i.partner_order_id
              WHERE i.order_id = {order_id} AND p.order_id = i.order_id
                AND (i.discount_share, i.points_share) IN ((2561, 11439), (610, 2723), (1829, 8171))"
        ))
        .await,
        3
    );
    // The detail shows the same split.
    let (_, detail) = app
        .get(&format!("/api/v1/orders/{order_id}"), Some(&token))
        .await;
    assert_eq!(detail["partner_orders"], order["partner_orders"]);

    // Each partner sees its own part only; another partner's is not found.
    let (_, listed) = app
        .get("/api/v1/partner/orders", Some(&partners[1].1))
        .await;
    assert_eq!(listed["total_elements"], 1);
    let own = listed["content"][0]["partner_order_id"].as_i64().unwrap();
    assert_eq!(listed["content"][0], parts[1]);
    let (status, problem) = app
        .get(
            &format!("/api/v1/partner/orders/{own}"),
            Some(&partners[0].1),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("PARTNER_ORDER_NOT_FOUND"))
    );
    let (status, _) = app
        .get(
            &format!("/api/v1/partner/orders/{own}"),
            Some(&partners[1].1),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, by_state) = app
        .get(
            "/api/v1/partner/orders?status=SHIPPED",
            Some(&partners[1].1),
        )
        .await;
    assert_eq!(by_state["total_elements"], 0);
    let (status, problem) = app
        .get("/api/v1/partner/orders?status=LOST", Some(&partners[1].1))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED"))
    );

    // Cancelling the checkout cancels every partner order and gives each one's points back.
    let (status, _) = app
        .post(
            &format!("/api/v1/orders/{order_id}/cancel"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.balance(buyer).await, 30_000);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM partner_orders p JOIN payment_splits s ON s.partner_order_id = p.id
              WHERE p.order_id = {order_id} AND p.status = 'CANCELLED' AND p.cancelled_at IS NOT NULL
                AND s.refunded = s.captured AND s.captured = s.amount"
        ))
        .await,
        3
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM order_items WHERE order_id = {order_id} AND quantity_cancelled = quantity"
        ))
        .await,
        3
    );
}

/// A card checkout of three partners: each partner order's card share is captured when the
/// gateway confirms the one payment, and refunded when the cancelled checkout's refund is
/// confirmed. Partners never see a checkout that is not paid.
#[tokio::test]
async fn a_card_checkout_captures_each_partners_share_and_the_refund_gives_it_back() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[]).await;
    let mut products = Vec::new();
    let mut tokens = Vec::new();
    for (login, bn, price) in [
        ("c-one", "202-02-00001", 1_000),
        ("c-two", "202-02-00002", 2_000),
        ("c-three", "202-02-00003", 4_000),
    ] {
        let (_, token) = partner(&app, login, bn).await;
        products.push(partner_product(&app, &token, price, 10).await);
        tokens.push(token);
    }
    let (_, token) = app.user_with_points("card-buyer", 0).await;
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&token),
            json!({"items": products.iter().map(|p| json!({"product_id": p, "quantity": 1})).collect::<Vec<_>>(),
                   "payment": {"method": "CARD", "card_type": "KB", "card_no": CARD_NO}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let order_id = order["order_id"].as_i64().unwrap();
    let paid = reaches(&app, &token, order_id, "PAID", Duration::from_secs(10)).await;
    let shares: Vec<(i64, i64, i64)> = paid["partner_orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["status"], "PAID", "{p}");
            let card = &p["payments"][0];
            assert_eq!(card["method"], "CARD");
            (
                p["card_share"].as_i64().unwrap(),
                card["captured"].as_i64().unwrap(),
                card["refunded"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shares,
        [(1_000, 1_000, 0), (2_000, 2_000, 0), (4_000, 4_000, 0)]
    );
    let moved = async |to: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM outbox WHERE event_type = 'PartnerOrderChanged'
                AND (envelope->'payload'->>'order_id')::bigint = {order_id}
                AND envelope->'payload'->>'to' = '{to}'"
        ))
        .await
    };
    // Each partner order's move with its checkout is an event of its own.
    assert_eq!(moved("PAID").await, 3);
    assert_eq!(paid["fulfilment_status"], "UNFULFILLED");
    for partner in &tokens {
        let (_, listed) = app
            .get("/api/v1/partner/orders?status=PAID", Some(partner))
            .await;
        assert_eq!(listed["total_elements"], 1, "{listed}");
    }

    let (status, _) = app
        .post(
            &format!("/api/v1/orders/{order_id}/cancel"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let refunded = reaches(&app, &token, order_id, "REFUNDED", Duration::from_secs(10)).await;
    assert_eq!(moved("CANCELLED").await, 3);
    assert_eq!(refunded["fulfilment_status"], "CANCELLED");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM partner_orders p JOIN payment_splits s ON s.partner_order_id = p.id
              WHERE p.order_id = {order_id} AND p.status = 'CANCELLED' AND s.method = 'CARD'
                AND s.refunded = s.amount AND s.captured = s.amount"
        ))
        .await,
        3
    );
    // The gateway refunded the one payment, in full, once.
    assert_eq!(
        gw.count(&format!(
            "SELECT count(*) AS n FROM payments WHERE order_id = '{order_id}' AND status = 'REFUNDED' AND amount = 7000"
        ))
        .await,
        1
    );
}
