//! One card order is one trace: the storefront's request, the order's transaction, the gateway
//! call, the gateway's side, its callback and the callback's handling, and every event's
//! publish, with the collector's batches linked to it.

use std::time::Duration;

use commerce_telemetry::SpanData;
use serde_json::json;

use crate::support::{Api, Gateway, Pipeline, eventually};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";
/// What a paid card order publishes, in name order.
/// A card order's events: placed, paid, its payment, and its one partner order paid with it.
const EVENTS: [&str; 4] = [
    "OrderCreated",
    "OrderPaid",
    "PartnerOrderChanged",
    "PaymentCompleted",
];

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn kind(span: &SpanData) -> String {
    format!("{:?}", span.span_kind)
}

/// The one span of the trace named `name`, and its id.
fn one<'a>(trace: &[&'a SpanData], name: &str) -> &'a SpanData {
    let found: Vec<_> = trace.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "one {name:?} span in the trace; the trace has {:?}",
        trace.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

fn id(span: &SpanData) -> String {
    span.span_context.span_id().to_string()
}

#[tokio::test]
async fn one_card_order_is_one_trace_from_the_request_through_the_relay_and_collector_to_the_callback()
 {
    let exporter = commerce_telemetry::capture_spans("commerce")
        .expect("this test installs the process's first subscriber");
    let gateway = Gateway::reliable().await;
    let p = Pipeline::new().await;
    let api = Api::start_with(&p, &[("PG_BASE_URL", gateway.base.as_str())]).await;
    let collector = p.collector().await;
    let admin = api.admin().await;
    let brand = api.brand(&admin, "Acme").await;
    let product = api.product(&admin, brand, "Traced", 1000, 10).await;
    let buyer = api.customer("tracer").await;

    let res = api
        .client
        .post(format!("{}/api/v1/orders", api.base))
        .bearer_auth(&buyer)
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&json!({"items": [{"product_id": product, "quantity": 1}],
            "payment": {"method": "CARD", "card_type": "SAMSUNG", "card_no": "9876-5432-1098-7654"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // The collector counts the sale once the order is paid: every hop has happened.
    eventually(
        &format!("{}/api/v1/product-metrics/{product}", collector.base),
        60,
        |b| b["order_count"] == 1,
    )
    .await;

    // Every span of the trace has ended once the batch that applied OrderPaid has.
    let spans = commerce_testkit::eventually(
        "the trace's spans and the batches linked to it are exported",
        Duration::from_secs(20),
        async || {
            let spans = exporter.get_finished_spans().unwrap();
            let published: Vec<&SpanData> = spans
                .iter()
                .filter(|s| s.name.ends_with(" publish"))
                .filter(|s| s.span_context.trace_id().to_string() == TRACE_ID)
                .collect();
            let mut types: Vec<String> = published
                .iter()
                .filter_map(|s| attribute(s, "event.type"))
                .collect();
            types.sort();
            let linked = |publish: &&SpanData| {
                spans.iter().any(|s| {
                    s.name == "collector.batch"
                        && s.links
                            .links
                            .iter()
                            .any(|l| l.span_context.span_id() == publish.span_context.span_id())
                })
            };
            if types == EVENTS && published.iter().all(linked) {
                Ok(spans)
            } else {
                Err(format!("published {types:?}"))
            }
        },
    )
    .await;
    let trace: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == TRACE_ID)
        .collect();

    // The storefront's request continues the caller's trace.
    let request = one(&trace, "POST /api/v1/orders");
    assert_eq!(request.parent_span_id.to_string(), CALLER_SPAN);
    assert_eq!(kind(request), "Server");
    assert_eq!(
        attribute(request, "http.response.status_code").as_deref(),
        Some("201")
    );
    let place = one(&trace, "order.place");
    assert_eq!(place.parent_span_id.to_string(), id(request));
    // The gateway call, the gateway's own request span, its callback, and the API's handling of
    // the callback: each the child of the one before.
    let call = one(&trace, "payment gateway request");
    assert_eq!(
        (call.parent_span_id.to_string(), kind(call)),
        (id(request), "Client".into())
    );
    let gateway_side = one(&trace, "POST /api/v1/payments");
    assert_eq!(gateway_side.parent_span_id.to_string(), id(call));
    let callback = one(&trace, "callback");
    assert_eq!(callback.parent_span_id.to_string(), id(gateway_side));
    assert_eq!(attribute(callback, "status").as_deref(), Some("SUCCESS"));
    let handled = one(&trace, "POST /api/v1/payments/callback");
    assert_eq!(handled.parent_span_id.to_string(), id(callback));
    assert_eq!(
        attribute(handled, "http.response.status_code").as_deref(),
        Some("200")
    );

    // The relay publishes each event as the child of the span that wrote it: OrderCreated in
    // the order's transaction, OrderPaid in the callback's handling.
    let publish = |event_type: &str| {
        let found: Vec<_> = trace
            .iter()
            .filter(|s| attribute(s, "event.type").as_deref() == Some(event_type))
            .collect();
        assert_eq!(found.len(), 1, "one publish of {event_type}");
        assert_eq!(kind(found[0]), "Producer");
        *found[0]
    };
    assert_eq!(
        publish("OrderCreated").parent_span_id.to_string(),
        id(place)
    );
    let paid = publish("OrderPaid");
    let mut ancestor = paid.parent_span_id.to_string();
    while ancestor != id(handled) {
        let parent = trace
            .iter()
            .find(|s| id(s) == ancestor)
            .unwrap_or_else(|| panic!("OrderPaid's publish descends from the callback's handling"));
        ancestor = parent.parent_span_id.to_string();
    }
    // The collector's batches are traces of their own, linked to each publish.
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "collector.batch")
            .all(|s| s.span_context.trace_id().to_string() != TRACE_ID)
    );
}
