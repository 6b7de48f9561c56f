//! Orders: placing, listing, reading and cancelling (the rules are in
//! [`crate::domain::orders`]).
//!
//! Placing a card order commits first and only then calls the gateway, holding no database
//! connection while it waits.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use commerce_web::idempotency::IdempotencyKey;

use crate::domain::fulfilment::{Actor, Details, Step};
use crate::domain::orders::{self, OrderRequest, OrderView, Placed, Placement};
use crate::domain::partner_orders::{self, PartnerOrderStatus, PartnerOrderView};
use crate::domain::states::{OrderStatus, PaymentMethod};
use crate::http::auth::{AuthUser, admit};
use crate::http::error::{ApiError, ApiResult};
use crate::http::paging::{Page, PageParams};
use crate::http::{Json, Path, Query};
use crate::infra::order_events::{Change, StreamSlot};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// 1 ..= 50 lines; lines of the same product are merged.
    items: Vec<NewOrderItem>,
    user_coupon_id: Option<i64>,
    payment: Payment,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrderItem {
    product_id: i64,
    /// 1 ..= 100.
    quantity: i64,
}

/// How the order is paid. Deliberately not `Serialize` or `Debug`: it holds a card number.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    /// `POINT` or `CARD`.
    method: String,
    /// With `CARD`: `SAMSUNG`, `KB` or `HYUNDAI`.
    card_type: Option<String>,
    /// With `CARD`: `####-####-####-####`. Never stored in the clear, never logged.
    card_no: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CancelView {
    order_id: i64,
    status: OrderStatus,
}

/// Place an order paid by points or by card. Rate limited per user (`RATE_LIMIT_ORDERS`).
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; replays return the original order")),
    request_body = NewOrder,
    responses((status = 201, body = OrderView),
        (status = 400, description = "VALIDATION_FAILED, INVALID_IDEMPOTENCY_KEY"), (status = 401),
        (status = 404, description = "PRODUCT_NOT_FOUND"),
        (status = 409, description = "INSUFFICIENT_STOCK, INSUFFICIENT_POINTS, COUPON_NOT_USABLE"),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED"),
        (status = 429, description = "RATE_LIMITED, with Retry-After"),
        (status = 503, description = "ORDER_TIMEOUT: placing outlasted ORDER_TIMEOUT_MS and was rolled back whole (nothing reserved or charged), with Retry-After; SERVICE_UNAVAILABLE")))]
pub async fn place_order(
    State(state): State<AppState>,
    user: AuthUser,
    key: Option<IdempotencyKey>,
    Json(req): Json<NewOrder>,
) -> ApiResult<(StatusCode, Json<OrderView>)> {
    admit(&state.limits.orders, &user.id)?;
    let items: Vec<(i64, i64)> = req
        .items
        .iter()
        .map(|i| (i.product_id, i.quantity))
        .collect();
    let order = OrderRequest::parse(
        &items,
        req.user_coupon_id,
        &req.payment.method,
        req.payment.card_type.as_deref(),
        req.payment.card_no.as_deref(),
    )?;
    let placement = Placement::of(&state.payments, state.config.order_timeout);
    let placed = {
        let mut conn = state.db.get().await?;
        orders::place(
            &mut conn,
            &placement,
            user.id,
            &order,
            key.as_ref().map(IdempotencyKey::as_str),
        )
        .await?
        // The gateway call below must not hold a connection (or a transaction) while it waits.
    };
    match placed {
        Placed::Created(mut view) => {
            if view.status == OrderStatus::PendingPayment
                && let PaymentMethod::Card { card_type, card_no } = &order.payment
            {
                let (status, payment) = state
                    .payments
                    .submit(
                        view.order_id,
                        user.id,
                        view.final_amount,
                        *card_type,
                        card_no,
                    )
                    .await;
                view.status = status;
                view.payment = Some(payment);
            }
            Ok((StatusCode::CREATED, Json(view)))
        }
        Placed::Replayed(view) => Ok((StatusCode::CREATED, Json(view))),
    }
}

/// The caller's orders, newest first.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<OrderView>), (status = 400), (status = 401)))]
pub async fn list_orders(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<OrderView>>> {
    let (page, size) = params.parse()?;
    let mut conn = state.db.get().await?;
    let (content, total_elements) = orders::list(&mut conn, user.id, page, size).await?;
    Ok(Json(Page::new(content, page, size, total_elements)))
}

/// One of the caller's orders (404 for anyone else's).
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    responses((status = 200, body = OrderView), (status = 401), (status = 404)))]
pub async fn get_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<OrderView>> {
    let mut conn = state.db.get().await?;
    Ok(Json(orders::get(&mut conn, user.id, id).await?))
}

/// Cancel an order: stock restored, points refunded, coupon returned, in one transaction; a
/// paid card order's refund is sent to the gateway in the background, and the order ends
/// `REFUNDED` once the gateway confirms it. Cancelling again returns the order's status and
/// refunds nothing.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    responses((status = 200, body = CancelView), (status = 401), (status = 404), (status = 409, description = "ORDER_NOT_CANCELLABLE")))]
pub async fn cancel_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<CancelView>> {
    let mut conn = state.db.get().await?;
    let status = orders::cancel(&mut conn, &state.topics, user.id, id).await?;
    Ok(Json(CancelView {
        order_id: id,
        status,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FollowParams {
    /// `payment` (default): the stream ends once the payment is settled. `delivery`: it goes on
    /// through each partner order's life and ends once every one is final
    /// (`PURCHASE_CONFIRMED`, `CANCELLED`, `RETURNED`) or the order closed.
    follow: Option<String>,
}

/// Follow an order as Server-Sent Events: its current status and each partner order's at once,
/// then each change as it commits, whichever instance made it; a comment line every
/// `ORDER_EVENTS_HEARTBEAT_SECONDS` meanwhile. `event: status` carries
/// `{"order_id":…,"status":…}` (`PAID`, `PAYMENT_FAILED`, `CANCELLED`, `REFUNDED`, …);
/// `event: partner_order` carries `{"order_id":…,"partner_order_id":…,"partner_id":…,
/// "status":…,"carrier":…,"tracking_number":…}`. With `follow=payment` (default) the stream
/// ends after a settled status (`PAID`, `PAYMENT_FAILED`, `REFUNDED`, or `CANCELLED` with no
/// refund to come); with `follow=delivery` once every partner order is final or the order
/// closed. At most `ORDER_EVENTS_PER_USER` streams per user per instance (429 beyond).
#[utoipa::path(get, path = "/api/v1/orders/{id}/events", tag = "orders", security(("bearer" = [])),
    params(FollowParams),
    responses((status = 200, content_type = "text/event-stream", description = "the order's status and its partner orders', then each change"),
        (status = 400), (status = 401), (status = 404, description = "ORDER_NOT_FOUND (also for another user's order)"),
        (status = 429, description = "RATE_LIMITED: too many open streams, with Retry-After")))]
pub async fn order_events(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
    Query(params): Query<FollowParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let delivery = match params.follow.as_deref() {
        None | Some("payment") => false,
        Some("delivery") => true,
        Some(_) => return Err(ApiError::field("follow", "must be payment or delivery")),
    };
    let slot = state
        .order_events
        .open(user.id)
        .ok_or(ApiError::RateLimited(Duration::from_secs(1)))?;
    // Subscribed before the first read: no change after it is missed.
    let changes = state.order_events.subscribe();
    let mut watch = Watch {
        state,
        user_id: user.id,
        id,
        delivery,
        changes,
        queue: std::collections::VecDeque::new(),
        last: None,
        parts: std::collections::BTreeMap::new(),
        settled: false,
        done: false,
        _slot: slot,
    };
    watch.read_all().await?;
    let heartbeat = watch.state.config.order_events_heartbeat;
    // The stream ends within a second or so of its session's end (a logout, an admin).
    let (revocations, session) = (watch.state.revocations.clone(), user.session);
    let ended = async move {
        let Some(session) = session else {
            return std::future::pending().await;
        };
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        while !revocations.has_ended(&session) {
            ticks.tick().await;
        }
    };
    let events = futures::stream::unfold(watch, |mut w| async move {
        let event = w.next_event().await?;
        Some((Ok(event), w))
    })
    .take_until(ended);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(heartbeat)))
}

/// What a stream last sent of a partner order: its status and tracking.
type PartSeen = (PartnerOrderStatus, Option<String>);

/// One order stream's state.
struct Watch {
    state: AppState,
    user_id: i64,
    id: i64,
    /// Follow the partner orders to the end (`follow=delivery`).
    delivery: bool,
    changes: tokio::sync::broadcast::Receiver<Change>,
    /// Events to send before waiting for changes.
    queue: std::collections::VecDeque<Event>,
    last: Option<OrderStatus>,
    /// Each partner order as last sent.
    parts: std::collections::BTreeMap<i64, PartSeen>,
    /// The order's status is settled.
    settled: bool,
    done: bool,
    _slot: StreamSlot,
}

impl Watch {
    /// Reads the order and its partner orders, and queues whatever differs from what was sent.
    async fn read_all(&mut self) -> ApiResult<()> {
        let mut conn = self.state.db.get().await?;
        let status = orders::status_of(&mut conn, self.user_id, self.id).await?;
        if Some(status) != self.last {
            self.settled = orders::is_settled(&mut conn, self.id, status).await?;
            self.last = Some(status);
            let data = serde_json::json!({"order_id": self.id, "status": status});
            self.queue
                .push_back(Event::default().event("status").data(data.to_string()));
        }
        let parts = partner_orders::of_orders(&mut conn, &[self.id])
            .await?
            .remove(&self.id)
            .unwrap_or_default();
        for part in parts {
            let seen = (
                part.status,
                part.shipment.as_ref().map(|s| s.tracking_number.clone()),
            );
            if self.parts.get(&part.partner_order_id) == Some(&seen) {
                continue;
            }
            self.parts.insert(part.partner_order_id, seen);
            let data = serde_json::json!({
                "order_id": self.id,
                "partner_order_id": part.partner_order_id,
                "partner_id": part.partner_id,
                "status": part.status,
                "carrier": part.shipment.as_ref().map(|s| &s.carrier),
                "tracking_number": part.shipment.as_ref().map(|s| &s.tracking_number),
            });
            self.queue.push_back(
                Event::default()
                    .event("partner_order")
                    .data(data.to_string()),
            );
        }
        Ok(())
    }

    /// Queues partner order `id`'s move to `status` (with its tracking once it shipped), unless
    /// that is what was sent last.
    async fn tell_part(&mut self, id: i64, status: PartnerOrderStatus) -> ApiResult<()> {
        let shipped = matches!(
            status,
            PartnerOrderStatus::Shipped
                | PartnerOrderStatus::Delivered
                | PartnerOrderStatus::PurchaseConfirmed
                | PartnerOrderStatus::ReturnRequested
                | PartnerOrderStatus::Returned
        );
        let mut conn = self.state.db.get().await?;
        let Some(part) = partner_orders::one(&mut conn, self.id, id).await? else {
            return Ok(());
        };
        let shipment = part.shipment.filter(|_| shipped);
        let seen = (status, shipment.as_ref().map(|s| s.tracking_number.clone()));
        if self.parts.get(&id) == Some(&seen) {
            return Ok(());
        }
        self.parts.insert(id, seen);
        let data = serde_json::json!({
            "order_id": self.id,
            "partner_order_id": id,
            "partner_id": part.partner_id,
            "status": status,
            "carrier": shipment.as_ref().map(|s| &s.carrier),
            "tracking_number": shipment.as_ref().map(|s| &s.tracking_number),
        });
        self.queue.push_back(
            Event::default()
                .event("partner_order")
                .data(data.to_string()),
        );
        Ok(())
    }

    /// Whether the stream has told everything it follows.
    fn finished(&self) -> bool {
        if !self.settled {
            return false;
        }
        if !self.delivery || self.last != Some(OrderStatus::Paid) {
            return true;
        }
        self.parts.values().all(|(status, _)| {
            matches!(
                status,
                PartnerOrderStatus::PurchaseConfirmed
                    | PartnerOrderStatus::Cancelled
                    | PartnerOrderStatus::Returned
                    | PartnerOrderStatus::PaymentFailed
            )
        })
    }

    /// The next event to send; `None` ends the stream.
    async fn next_event(&mut self) -> Option<Event> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.done || self.finished() {
                self.done = true;
                return None;
            }
            // Each change is told as notified, so a stream that reads late still tells every
            // step; a possible gap (a lagging or reconnected listener) reads everything again.
            match self.changes.recv().await {
                Ok(Change::Status(id, status)) if id == self.id => {
                    let Ok(status) = status.parse::<OrderStatus>() else {
                        self.read_all().await.ok()?;
                        continue;
                    };
                    if Some(status) == self.last {
                        continue;
                    }
                    let mut conn = self.state.db.get().await.ok()?;
                    self.settled = orders::is_settled(&mut conn, self.id, status).await.ok()?;
                    self.last = Some(status);
                    let data = serde_json::json!({"order_id": self.id, "status": status});
                    self.queue
                        .push_back(Event::default().event("status").data(data.to_string()));
                }
                Ok(Change::PartnerOrder(id, part, status)) if id == self.id => {
                    let Ok(status) = status.parse::<PartnerOrderStatus>() else {
                        self.read_all().await.ok()?;
                        continue;
                    };
                    self.tell_part(part, status).await.ok()?;
                }
                Ok(Change::Status(..) | Change::PartnerOrder(..)) => continue,
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                    self.read_all().await.ok()?;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Confirm the purchase of one partner order of the caller's order: `SHIPPED` or `DELIVERED` →
/// `PURCHASE_CONFIRMED` (a repeat changes nothing). Final: nothing is cancelled, returned or
/// refunded after it. Emits `PartnerOrderChanged`.
#[utoipa::path(post, path = "/api/v1/orders/{id}/partner-orders/{partner_order_id}/confirm",
    tag = "orders", security(("bearer" = [])),
    responses((status = 200, body = PartnerOrderView), (status = 401),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "ILLEGAL_TRANSITION")))]
pub async fn confirm_purchase(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, partner_order_id)): Path<(i64, i64)>,
) -> ApiResult<Json<PartnerOrderView>> {
    crate::http::partners::step(
        &state,
        Actor::Customer(user.id, id),
        partner_order_id,
        Step::Confirm,
        Details::default(),
    )
    .await
}

/// Cancel one partner order of the caller's order before it ships: `PAID` or `PREPARING` →
/// `CANCELLED`. Exactly its paid share goes back: its points at once, its card share by a
/// refund through the gateway; the coupon stays used unless this was the order's last standing
/// partner order (then the order is cancelled as a whole, and the coupon comes back). Emits
/// `PartnerOrderChanged` and `OrderCancelled` (its lines).
#[utoipa::path(post, path = "/api/v1/orders/{id}/partner-orders/{partner_order_id}/cancel",
    tag = "orders", security(("bearer" = [])),
    responses((status = 200, body = PartnerOrderView), (status = 401),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "ILLEGAL_TRANSITION")))]
pub async fn cancel_partner_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, partner_order_id)): Path<(i64, i64)>,
) -> ApiResult<Json<PartnerOrderView>> {
    crate::http::partners::step(
        &state,
        Actor::Customer(user.id, id),
        partner_order_id,
        Step::Cancel,
        Details::default(),
    )
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    /// Why (1–500 characters).
    reason: String,
}

/// Ask to return one delivered partner order of the caller's order, within
/// `RETURN_WINDOW_SECONDS` of its delivery: `DELIVERED` → `RETURN_REQUESTED` (409
/// `RETURN_WINDOW_CLOSED` after it). Its purchase is not confirmed automatically while the
/// return is open. Emits `PartnerOrderChanged`.
#[utoipa::path(post, path = "/api/v1/orders/{id}/partner-orders/{partner_order_id}/return",
    tag = "orders", security(("bearer" = [])), request_body = ReturnRequest,
    responses((status = 200, body = PartnerOrderView), (status = 400), (status = 401),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "ILLEGAL_TRANSITION, RETURN_WINDOW_CLOSED")))]
pub async fn request_return(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, partner_order_id)): Path<(i64, i64)>,
    Json(req): Json<ReturnRequest>,
) -> ApiResult<Json<PartnerOrderView>> {
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::field("reason", "must be 1-500 characters"));
    }
    crate::http::partners::step(
        &state,
        Actor::Customer(user.id, id),
        partner_order_id,
        Step::RequestReturn,
        Details {
            tracking: None,
            reason: Some(reason.to_owned()),
        },
    )
    .await
}

/// Withdraw the open return of one partner order of the caller's order: `RETURN_REQUESTED` →
/// `DELIVERED`; its confirmation timer goes on where it stopped. Emits `PartnerOrderChanged`.
#[utoipa::path(post, path = "/api/v1/orders/{id}/partner-orders/{partner_order_id}/return/withdraw",
    tag = "orders", security(("bearer" = [])),
    responses((status = 200, body = PartnerOrderView), (status = 401),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "ILLEGAL_TRANSITION")))]
pub async fn withdraw_return(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, partner_order_id)): Path<(i64, i64)>,
) -> ApiResult<Json<PartnerOrderView>> {
    crate::http::partners::step(
        &state,
        Actor::Customer(user.id, id),
        partner_order_id,
        Step::WithdrawReturn,
        Details::default(),
    )
    .await
}
