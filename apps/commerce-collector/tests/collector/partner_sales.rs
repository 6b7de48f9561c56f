//! Partners' confirmed sales: each purchase confirmation counted once, on the business day of
//! its instant, into the day, the week and the month.

use chrono::{TimeZone, Utc};
use commerce_events::{Envelope, Event, PartnerOrderChanged};
use serde_json::json;

use crate::support::{Pipeline, eventually, get_json};

fn changed(
    partner_order_id: i64,
    partner_id: i64,
    to: &str,
    items: i64,
    discount: i64,
) -> Envelope {
    let at = Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).unwrap();
    let mut envelope = Envelope::new(Event::PartnerOrderChanged(PartnerOrderChanged {
        partner_order_id,
        order_id: partner_order_id,
        partner_id,
        user_id: 1,
        from: "DELIVERED".into(),
        to: to.into(),
        items_total: items,
        discount_share: discount,
        points_share: 0,
        card_share: items - discount,
        at,
    }));
    envelope.occurred_at = at;
    envelope
}

#[tokio::test]
async fn each_confirmation_counts_once_per_partner_and_period() {
    let p = Pipeline::new().await;
    let collector = p.collector().await;
    let base = &collector.base;
    let first = changed(1, 7, "PURCHASE_CONFIRMED", 1000, 100);
    p.produce(&[
        first.clone(),
        changed(2, 7, "PURCHASE_CONFIRMED", 2000, 0),
        changed(3, 8, "PURCHASE_CONFIRMED", 5000, 0),
        // Not a confirmation: not a confirmed sale.
        changed(4, 7, "SHIPPED", 9000, 0),
        // The same event again (a redelivery): counted once.
        first,
    ])
    .await;
    let daily = format!("{base}/api/v1/partners/sales?period=daily&date=2026-12-01");
    let page = eventually(&daily, 60, |b| {
        b["content"].as_array().is_some_and(|c| c.len() == 2)
    })
    .await;
    p.wait_consumed().await;
    let expected = json!([
        {"partner_id": 8, "confirmed_orders": 1, "gmv": 5000, "paid_amount": 5000},
        {"partner_id": 7, "confirmed_orders": 2, "gmv": 3000, "paid_amount": 2900},
    ]);
    let page = get_json(&daily).await.unwrap_or(page);
    assert_eq!(page["content"], expected, "{page}");
    for (period, from, to) in [
        ("weekly", "2026-11-30", "2026-12-06"),
        ("monthly", "2026-12-01", "2026-12-31"),
    ] {
        let page = get_json(&format!(
            "{base}/api/v1/partners/sales?period={period}&date=2026-12-03"
        ))
        .await
        .unwrap();
        assert_eq!((&page["from"], &page["to"]), (&json!(from), &json!(to)));
        assert_eq!(page["content"], expected, "{period}: {page}");
    }
    let one = get_json(&format!(
        "{base}/api/v1/partners/sales?date=2026-12-01&partner_id=7"
    ))
    .await
    .unwrap();
    assert_eq!(one["content"], json!([expected[1]]));
    // Another day has none.
    let other = get_json(&format!("{base}/api/v1/partners/sales?date=2026-12-02"))
        .await
        .unwrap();
    assert_eq!(other["content"], json!([]));
}
