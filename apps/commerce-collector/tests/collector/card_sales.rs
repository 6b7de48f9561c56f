//! Card orders through the whole pipeline: only an order whose payment succeeded is a sale.

use std::time::Duration;

use crate::support::{Api, Gateway, Pipeline, eventually};
use serde_json::{Value, json};

use commerce_testkit::count;

/// The order's status, as its owner reads it.
async fn status(api: &Api, token: &str, order_id: &Value) -> String {
    let body: Value = api
        .client
        .get(format!("{}/api/v1/orders/{order_id}", api.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["status"].as_str().unwrap().to_owned()
}

async fn settled(api: &Api, token: &str, order: &Value) -> String {
    commerce_testkit::eventually(
        "the card order settles",
        Duration::from_secs(20),
        async || {
            let now = status(api, token, &order["order_id"]).await;
            if now != "PENDING_PAYMENT" {
                Ok(now)
            } else {
                Err(now)
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_card_sale_counts_once_paid_never_declined_and_leaves_once_when_refunded() {
    let gateway = Gateway::reliable().await;
    let sim = gateway.simulator.clone();
    let gw_base = gateway.base.clone();

    let p = Pipeline::new().await;
    let api = Api::start_with(&p, &[("PG_BASE_URL", gw_base.as_str())]).await;
    let _task = p.collector().await;
    let collector = _task.base.clone();
    let admin = api
        .token("admin", commerce_api::config::DEV_ADMIN_PASSWORD)
        .await;
    let brand = api
        .post("/api/v1/admin/brands", &admin, json!({"name": "Acme"}))
        .await["id"]
        .as_i64()
        .unwrap();
    let product = |name: &str| {
        api.post(
            "/api/v1/admin/products",
            &admin,
            json!({"brand_id": brand, "name": name, "price": 1000, "stock": 100}),
        )
    };
    let paid = product("Paid").await["id"].as_i64().unwrap();
    let declined = product("Declined").await["id"].as_i64().unwrap();
    let signup = json!({"login_id": "carder", "password": "carder-password", "name": "C", "email": "c@example.com"});
    api.client
        .post(format!("{}/api/v1/users", api.base))
        .json(&signup)
        .send()
        .await
        .unwrap();
    let buyer = api.token("carder", "carder-password").await;
    let card = |product: i64| {
        json!({"items": [{"product_id": product, "quantity": 2}],
        "payment": {"method": "CARD", "card_type": "SAMSUNG", "card_no": "9876-5432-1098-7654"}})
    };

    let paid_order = api.post("/api/v1/orders", &buyer, card(paid)).await;
    assert_eq!(settled(&api, &buyer, &paid_order).await, "PAID");
    sim.dice
        .set(|b| {
            b.success_rate = 0.0;
            b.limit_exceeded_rate = 1.0;
        })
        .unwrap();
    let order = api.post("/api/v1/orders", &buyer, card(declined)).await;
    assert_eq!(settled(&api, &buyer, &order).await, "PAYMENT_FAILED");

    let m = eventually(
        &format!("{collector}/api/v1/product-metrics/{paid}"),
        60,
        |b| b["order_count"] == 1,
    )
    .await;
    assert_eq!(m["sales_quantity"], 2);
    assert_eq!(m["sales_amount"], 2000);
    // Once the collector has handled every event the API wrote (OrderCreated and PaymentFailed
    // included), the declined order has still not counted.
    commerce_testkit::eventually(
        "the collector handles every event the API wrote",
        Duration::from_secs(60),
        async || {
            let written = count(&api.db.url, "SELECT count(*) AS n FROM outbox").await;
            let handled = count(&p.db.url, "SELECT count(*) AS n FROM event_handled").await;
            if handled >= written {
                Ok(())
            } else {
                Err(format!("{handled} of {written}"))
            }
        },
    )
    .await;
    p.wait_consumed().await;
    assert_eq!(
        count(
            &api.db.url,
            "SELECT count(*) AS n FROM outbox WHERE event_type = 'PaymentFailed'"
        )
        .await,
        1
    );
    let res = reqwest::get(format!("{collector}/api/v1/product-metrics/{declined}"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let m: Value = res.json().await.unwrap();
    assert_eq!(
        (
            m["product_id"].as_i64(),
            m["order_count"].as_i64(),
            m["sales_quantity"].as_i64()
        ),
        (Some(declined), Some(0), Some(0)),
        "{m}"
    );

    // The paid order is cancelled and refunded: its sale leaves the figures once, not twice.
    let order_url = format!("{}/api/v1/orders/{}", api.base, paid_order["order_id"]);
    let res = api
        .client
        .post(format!("{order_url}/cancel"))
        .bearer_auth(&buyer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    commerce_testkit::until(
        "the refund is confirmed",
        Duration::from_secs(20),
        async || status(&api, &buyer, &paid_order["order_id"]).await == "REFUNDED",
    )
    .await;
    commerce_testkit::until(
        "the collector handles the cancellation and the refund",
        Duration::from_secs(60),
        async || {
            count(
                &p.db.url,
                &format!(
                    "SELECT count(*) AS n FROM event_handled WHERE event_id IN ({})",
                    outbox_ids(&api, "('OrderCancelled', 'PaymentRefunded')").await
                ),
            )
            .await
                == 2
        },
    )
    .await;
    p.wait_consumed().await;
    let m: Value = reqwest::get(format!("{collector}/api/v1/product-metrics/{paid}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            m["order_count"].as_i64(),
            m["sales_quantity"].as_i64(),
            m["sales_amount"].as_i64()
        ),
        (Some(0), Some(0), Some(0)),
        "{m}"
    );
}

/// The event ids of the API's outbox rows of `types`, as a SQL list.
async fn outbox_ids(api: &Api, types: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        event_id: uuid::Uuid,
    }
    use diesel_async::{AsyncConnection, RunQueryDsl};
    let mut conn = diesel_async::AsyncPgConnection::establish(&api.db.url)
        .await
        .unwrap();
    let ids: Vec<Id> = diesel::sql_query(format!(
        "SELECT event_id FROM outbox WHERE event_type IN {types}"
    ))
    .load(&mut conn)
    .await
    .unwrap();
    assert_eq!(ids.len(), 2, "one cancellation and one refund");
    ids.iter()
        .map(|i| format!("'{}'", i.event_id))
        .collect::<Vec<_>>()
        .join(", ")
}
