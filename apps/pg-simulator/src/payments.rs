//! The gateway's HTTP API: request a payment, read one, list an order's payments (refunds are
//! in [`crate::refunds`]).
//!
//! Every route needs the `X-USER-ID` header; a payment is visible only to the user who made it
//! (anyone else gets 404, as if it did not exist).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use commerce_db::idempotency::{self, Replay};
use commerce_web::idempotency::IdempotencyKey;
use commerce_web::{FieldError, Json, Path, Problem, Query};

use crate::error::SimError;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::Simulator;
use crate::schema::payments;

commerce_enums::text_enum! {
    sql;
    /// `payments.status`.
    pub enum PaymentStatus {
        /// Accepted, not settled yet.
        Pending => "PENDING",
        Success => "SUCCESS",
        Failed => "FAILED",
        /// Charged, then refunded in full.
        Refunded => "REFUNDED",
    }
}

commerce_enums::text_enum! {
    sql;
    /// The card types this gateway accepts (`payments.card_type`).
    pub enum CardType {
        Samsung => "SAMSUNG",
        Kb => "KB",
        Hyundai => "HYUNDAI",
    }
}

commerce_enums::text_enum! {
    sql;
    /// `payments.callback_status`: what became of a settled payment's callback.
    pub enum CallbackStatus {
        Sent => "SENT",
        /// Not delivered (not retried).
        Failed => "FAILED",
        /// Dropped on purpose (`callback_drop_rate`).
        Dropped => "DROPPED",
    }
}

commerce_enums::text_enum! {
    /// What became of a payment request (`pg_sim_requests_total{outcome}`).
    pub enum RequestOutcome {
        Accepted => "accepted",
        /// A simulated 5xx.
        Failed => "failed",
        /// The same request with its `Idempotency-Key` again: the original answer.
        Replayed => "replayed",
        /// The same key while the first request is still processed: 409.
        InProgress => "in_progress",
    }
}

impl RequestOutcome {
    pub fn count(self) {
        metrics::counter!("pg_sim_requests_total", "outcome" => self.as_str()).increment(1);
    }
}

commerce_enums::text_enum! {
    /// What became of a settlement's callback (`pg_sim_callbacks_total{outcome}`).
    pub enum CallbackOutcome {
        Sent => "sent",
        Failed => "failed",
        /// Dropped on purpose.
        Dropped => "dropped",
    }
}

impl CallbackOutcome {
    pub fn count(self) {
        metrics::counter!("pg_sim_callbacks_total", "outcome" => self.as_str()).increment(1);
    }
}

const MAX_ID_LEN: usize = 64;
const MAX_URL_LEN: usize = 2048;

type Result<T> = std::result::Result<T, SimError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    order_id: String,
    card_type: String,
    card_no: String,
    amount: i64,
    callback_url: String,
}

#[derive(Serialize)]
pub struct Accepted {
    transaction_key: String,
    status: PaymentStatus,
    reason: Option<String>,
}

/// A payment as the gateway shows it (card number masked). Also the callback's body.
#[derive(Serialize, Clone, Debug)]
pub struct Transaction {
    pub transaction_key: String,
    pub order_id: String,
    pub card_type: CardType,
    pub card_no: String,
    pub amount: i64,
    pub status: PaymentStatus,
    pub reason: Option<String>,
    /// The refund that gave the money back, once `REFUNDED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_key: Option<String>,
    /// How much of it went back so far (partial refunds); `amount` once `REFUNDED`.
    pub refunded_amount: i64,
}

/// The columns a [`Transaction`] is read from ([`columns`]).
#[derive(Queryable)]
pub(crate) struct TransactionRow {
    transaction_key: String,
    order_id: String,
    card_type: CardType,
    /// Stored masked.
    card_no: String,
    amount: i64,
    status: PaymentStatus,
    reason: Option<String>,
    refund_key: Option<String>,
    refunded_amount: i64,
}

impl From<TransactionRow> for Transaction {
    fn from(row: TransactionRow) -> Self {
        Self {
            transaction_key: row.transaction_key,
            order_id: row.order_id,
            card_type: row.card_type,
            card_no: row.card_no,
            amount: row.amount,
            status: row.status,
            reason: row.reason,
            refund_key: row.refund_key,
            refunded_amount: row.refunded_amount,
        }
    }
}

#[derive(Serialize)]
pub struct OrderTransactions {
    order_id: String,
    transactions: Vec<Transaction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderQuery {
    order_id: String,
}

pub(crate) fn columns() -> (
    payments::transaction_key,
    payments::order_id,
    payments::card_type,
    payments::card_no,
    payments::amount,
    payments::status,
    payments::reason,
    payments::refund_key,
    payments::refunded_amount,
) {
    (
        payments::transaction_key,
        payments::order_id,
        payments::card_type,
        payments::card_no,
        payments::amount,
        payments::status,
        payments::reason,
        payments::refund_key,
        payments::refunded_amount,
    )
}

pub(crate) fn user_id(headers: &HeaderMap) -> Result<String> {
    headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= MAX_ID_LEN)
        .map(str::to_owned)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "USER_ID_REQUIRED",
                "the X-USER-ID header is required",
            )
            .into()
        })
}

fn is_card_no(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 4
        && groups
            .iter()
            .all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_digit()))
}

/// `1234-5678-9012-3456` → `1234-****-****-3456`.
pub fn mask(card_no: &str) -> String {
    format!("{}-****-****-{}", &card_no[..4], &card_no[15..])
}

fn validate(req: &PaymentRequest, callback_hosts: &[String]) -> Result<()> {
    let mut errors = Vec::new();
    if req.order_id.trim().is_empty() || req.order_id.len() > MAX_ID_LEN {
        errors.push(FieldError::new(
            "order_id",
            format!("must be 1-{MAX_ID_LEN} characters"),
        ));
    }
    if req.card_type.parse::<CardType>().is_err() {
        errors.push(FieldError::new(
            "card_type",
            format!("must be {}", CardType::expected()),
        ));
    }
    if !is_card_no(&req.card_no) {
        errors.push(FieldError::new(
            "card_no",
            "must look like ####-####-####-####",
        ));
    }
    if req.amount <= 0 {
        errors.push(FieldError::new("amount", "must be positive"));
    }
    let url = reqwest::Url::parse(&req.callback_url).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && req.callback_url.len() <= MAX_URL_LEN
    });
    match url {
        None => errors.push(FieldError::new("callback_url", "must be an http(s) URL")),
        // Callbacks go only where the operator allows: the gateway must not be a way to make
        // requests to arbitrary hosts.
        Some(u) if !callback_hosts.iter().any(|allowed| allows(allowed, &u)) => {
            errors.push(FieldError::new(
                "callback_url",
                "the URL is not on the callback allowlist (PG_SIM_CALLBACK_HOSTS)",
            ));
        }
        Some(_) => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::validation(errors).into())
    }
}

/// Whether allowlist entry `allowed` admits callback URL `url`: an origin
/// (`https://shop.example.com:8443`) pins scheme, host and port; a bare host (development, where
/// ports are ephemeral) pins the host alone.
fn allows(allowed: &str, url: &reqwest::Url) -> bool {
    match reqwest::Url::parse(allowed) {
        Ok(origin) if allowed.contains("://") => {
            origin.scheme() == url.scheme()
                && origin.host_str() == url.host_str()
                && origin.port_or_known_default() == url.port_or_known_default()
        }
        _ => url.host_str() == Some(allowed),
    }
}

/// How long a key's first request may stay in progress before another request may take the key
/// over (a simulator that crashed mid-request never finishes it).
const ABANDONED_AFTER: chrono::Duration = chrono::Duration::seconds(60);

/// A keyed digest of what the request asks for (HMAC-SHA256 under `key`): it covers the card
/// number, so an unkeyed hash could be reversed from the masked number by trying the eight
/// missing digits.
fn request_hash(key: &str, req: &PaymentRequest) -> String {
    commerce_web::signature::keyed_digest(
        key.as_bytes(),
        &[
            req.order_id.as_bytes(),
            req.card_type.as_bytes(),
            req.card_no.as_bytes(),
            req.amount.to_string().as_bytes(),
            req.callback_url.as_bytes(),
        ],
    )
}

/// What an earlier request with the same key left.
enum Earlier {
    /// This request holds the key now.
    None,
    /// The key's payment, as it stands.
    Done(Accepted),
    InProgress,
    OtherBody,
}

/// Reserves `key` for this request, or says what an earlier request with it left.
async fn reserve(sim: &Simulator, user: &str, key: &str, hash: &str) -> Result<Earlier> {
    use crate::schema::idempotency_keys as k;
    let mut conn = sim.db.get().await?;
    let now = Utc::now();
    let forgotten_before = now - sim.idempotency_ttl;
    conn.transaction::<_, SimError, _>(async |conn| {
        let earlier = async |conn: &mut AsyncPgConnection| {
            let found: Option<(String, Option<String>, DateTime<Utc>)> = k::table
                .find((user, key))
                .select((k::request_hash, k::transaction_key, k::created_at))
                .first(conn)
                .await
                .optional()?;
            match found {
                // Forgotten: the key may be used afresh.
                Some((_, _, created_at)) if created_at < forgotten_before => {
                    diesel::delete(k::table.find((user, key)))
                        .execute(conn)
                        .await?;
                    Ok(None)
                }
                found => Ok(found.map(|(hash, transaction, created_at)| {
                    (Some(hash), (transaction, created_at))
                })),
            }
        };
        let scope = format!("pg-sim:payment:{user}:");
        Ok(
            match idempotency::lock_and_find(conn, &scope, 0, key, hash, earlier).await? {
                Replay::New => {
                    diesel::insert_into(k::table)
                        .values((
                            k::user_id.eq(user),
                            k::idempotency_key.eq(key),
                            k::request_hash.eq(hash),
                        ))
                        .execute(conn)
                        .await?;
                    Earlier::None
                }
                Replay::Reused => Earlier::OtherBody,
                // Its simulator died mid-request: this request takes the key over.
                Replay::Same((None, created_at)) if created_at < now - ABANDONED_AFTER => {
                    diesel::update(k::table.find((user, key)))
                        .set(k::created_at.eq(now))
                        .execute(conn)
                        .await?;
                    Earlier::None
                }
                Replay::Same((None, _)) => Earlier::InProgress,
                Replay::Same((Some(transaction), _)) => {
                    let (status, reason): (PaymentStatus, Option<String>) = payments::table
                        .find(&transaction)
                        .select((payments::status, payments::reason))
                        .first(conn)
                        .await?;
                    Earlier::Done(Accepted {
                        transaction_key: transaction,
                        status,
                        reason,
                    })
                }
            },
        )
    })
    .await
}

/// Accepts a payment (after a simulated delay) or fails with HTTP 500, recording nothing.
///
/// With an `Idempotency-Key`, a repeat of an earlier request (same user, key and body) gets the
/// original transaction back; another body with the key gets 422; a repeat while the first is
/// still being processed gets 409 with `Retry-After`. Every request is processed to the end in a
/// task of its own, whether or not the client is still waiting, as a real gateway does.
pub async fn request_payment(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    key: Option<IdempotencyKey>,
    Json(req): Json<PaymentRequest>,
) -> Result<axum::response::Response> {
    sim.dice.receive();
    let user = user_id(&headers)?;
    let key = key.map(|k| k.as_str().to_owned());
    validate(&req, &sim.callback_hosts)?;
    // From the key's reservation on, in a task of its own: a client that disconnects while the
    // key is being reserved cannot leave a reservation that nothing processes.
    let traceparent = commerce_telemetry::traces::current_traceparent();
    tokio::spawn(commerce_telemetry::traces::carry(
        accept(sim, user, key, req, traceparent).instrument(tracing::Span::current()),
    ))
    .await
    .map_err(|e| anyhow::anyhow!("payment task failed: {e}"))?
}

/// Reserves the request's key (answering a repeat from the reservation) and processes it.
async fn accept(
    sim: Arc<Simulator>,
    user: String,
    key: Option<String>,
    req: PaymentRequest,
    traceparent: Option<String>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    if let Some(key) = &key {
        match reserve(&sim, &user, key, &request_hash(&sim.request_hash_key, &req)).await? {
            Earlier::None => {}
            Earlier::Done(accepted) => {
                RequestOutcome::Replayed.count();
                return Ok(Json(accepted).into_response());
            }
            Earlier::InProgress => {
                RequestOutcome::InProgress.count();
                let mut res = Problem::new(
                    StatusCode::CONFLICT,
                    "REQUEST_IN_PROGRESS",
                    "a request with this Idempotency-Key is still being processed; retry later",
                )
                .into_response();
                res.headers_mut()
                    .insert("retry-after", axum::http::HeaderValue::from_static("1"));
                return Ok(res);
            }
            Earlier::OtherBody => return Err(commerce_web::idempotency::reused().into()),
        }
    }
    // The payment keeps the request's trace context: its callback continues the trace.
    let accepted = process(sim, user, key, req, traceparent).await?;
    Ok(Json(accepted).into_response())
}

/// Processes one payment request to the end: latency, failure, recording, answer delay.
async fn process(
    sim: Arc<Simulator>,
    user: String,
    key: Option<String>,
    req: PaymentRequest,
    traceparent: Option<String>,
) -> Result<Accepted> {
    use crate::schema::idempotency_keys as k;
    let (latency, fails) = sim.dice.request();
    tokio::time::sleep(latency).await;
    if fails {
        RequestOutcome::Failed.count();
        if let Some(key) = &key {
            // Nothing was recorded: the key is free for the retry.
            let mut conn = sim.db.get().await?;
            diesel::delete(k::table.find((&user, key)))
                .filter(k::transaction_key.is_null())
                .execute(&mut conn)
                .await?;
        }
        return Err(Problem::new(
            sim.dice.failure_status(),
            "GATEWAY_ERROR",
            "the gateway could not process the request; try again",
        )
        .into());
    }
    tokio::time::sleep(sim.dice.record_delay()).await;
    let settle_at =
        Utc::now() + chrono::Duration::from_std(sim.dice.settlement_delay()).unwrap_or_default();
    let mut conn = sim.db.get().await?;
    // Six hex digits collide now and then: draw again.
    for _ in 0..8 {
        let transaction_key = format!(
            "{}:TR:{}",
            Utc::now().format("%Y%m%d"),
            sim.dice.key_suffix()
        );
        let recorded = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let inserted = diesel::insert_into(payments::table)
                    .values((
                        payments::transaction_key.eq(&transaction_key),
                        payments::user_id.eq(&user),
                        payments::order_id.eq(&req.order_id),
                        payments::card_type.eq(&req.card_type),
                        payments::card_no.eq(mask(&req.card_no)),
                        payments::amount.eq(req.amount),
                        payments::callback_url.eq(&req.callback_url),
                        payments::settle_at.eq(settle_at),
                        payments::traceparent.eq(&traceparent),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?;
                if inserted == 1
                    && let Some(key) = &key
                {
                    diesel::update(k::table.find((&user, key)))
                        .set(k::transaction_key.eq(&transaction_key))
                        .execute(conn)
                        .await?;
                }
                Ok(inserted == 1)
            })
            .await?;
        if recorded {
            RequestOutcome::Accepted.count();
            tracing::info!(%transaction_key, order_id = %req.order_id, amount = req.amount, "payment accepted");
            drop(conn);
            tokio::time::sleep(sim.dice.response_delay()).await;
            return Ok(Accepted {
                transaction_key,
                status: PaymentStatus::Pending,
                reason: None,
            });
        }
    }
    Err(anyhow::anyhow!("no free transaction key").into())
}

/// Forgets idempotency keys older than their time to live.
pub async fn forget_expired_keys(sim: &Simulator) -> anyhow::Result<usize> {
    use crate::schema::idempotency_keys as k;
    let mut conn = sim.db.get().await?;
    Ok(
        diesel::delete(k::table.filter(k::created_at.lt(Utc::now() - sim.idempotency_ttl)))
            .execute(&mut conn)
            .await?,
    )
}

/// One payment, if it is the caller's.
pub async fn get_payment(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Transaction>> {
    let user = user_id(&headers)?;
    let mut conn = sim.db.get().await?;
    payments::table
        .filter(payments::transaction_key.eq(&key))
        .filter(payments::user_id.eq(&user))
        .select(columns())
        .first::<TransactionRow>(&mut conn)
        .await
        .optional()?
        .map(|row| Json(row.into()))
        .ok_or_else(|| Problem::not_found("PAYMENT_NOT_FOUND", "no such payment").into())
}

/// Every payment the caller made for one order, oldest first (empty when there is none).
pub async fn list_payments(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    Query(q): Query<OrderQuery>,
) -> Result<Json<OrderTransactions>> {
    let user = user_id(&headers)?;
    let mut conn = sim.db.get().await?;
    let transactions = payments::table
        .filter(payments::user_id.eq(&user))
        .filter(payments::order_id.eq(&q.order_id))
        .order(payments::created_at)
        .select(columns())
        .load::<TransactionRow>(&mut conn)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(OrderTransactions {
        order_id: q.order_id,
        transactions,
    }))
}

/// A due payment picked for settlement.
#[derive(Queryable)]
struct Due {
    transaction: TransactionRow,
    callback_url: String,
    traceparent: Option<String>,
}

/// Settles every payment whose time has come (up to `limit`), then sends each one callback.
/// Returns how many were settled. Safe with several simulators on one database: rows are
/// claimed with `SKIP LOCKED`.
pub async fn settle_due(sim: &Simulator, limit: i64) -> anyhow::Result<usize> {
    let mut conn = sim.db.get().await?;
    let settled = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            let due: Vec<Due> = payments::table
                .filter(payments::status.eq(PaymentStatus::Pending))
                .filter(payments::settle_at.le(diesel::dsl::now))
                .order(payments::settle_at)
                .limit(limit)
                .select((columns(), payments::callback_url, payments::traceparent))
                .for_update()
                .skip_locked()
                .load(conn)
                .await?;
            let mut settled = Vec::with_capacity(due.len());
            for mut d in due {
                let (status, reason) = match sim.dice.outcome() {
                    crate::behaviour::Outcome::Success => (PaymentStatus::Success, None),
                    crate::behaviour::Outcome::Failed(r) => (PaymentStatus::Failed, Some(r)),
                };
                let drop = sim.dice.drop_callback();
                diesel::update(payments::table.find(&d.transaction.transaction_key))
                    .set((
                        payments::status.eq(status),
                        payments::reason.eq(reason),
                        payments::settled_at.eq(diesel::dsl::now),
                        payments::callback_status.eq(drop.then_some(CallbackStatus::Dropped)),
                    ))
                    .execute(conn)
                    .await?;
                d.transaction.status = status;
                d.transaction.reason = reason.map(str::to_owned);
                metrics::counter!("pg_sim_settlements_total", "status" => status.as_str())
                    .increment(1);
                settled.push((d, drop));
            }
            Ok(settled)
        })
        .await?;
    drop(conn);
    let n = settled.len();
    for (due, dropped) in settled {
        let callback_url = due.callback_url;
        let traceparent = due.traceparent;
        let transaction = Transaction::from(due.transaction);
        if dropped {
            CallbackOutcome::Dropped.count();
            continue;
        }
        let sim_http = sim.http.clone();
        let db = sim.db.clone();
        let span = tracing::info_span!(
            "callback",
            otel.kind = "client",
            transaction_key = %transaction.transaction_key,
            status = %transaction.status,
        );
        commerce_telemetry::traces::continue_trace(&span, traceparent.as_deref());
        let secret = sim.callback_secret.clone();
        tokio::spawn(
            async move {
                let key = transaction.transaction_key.clone();
                let notice = Notice {
                    event: NoticeEvent::Settled,
                    transaction,
                };
                let outcome = deliver(&sim_http, &secret, &callback_url, &notice).await;
                if let Ok(mut conn) = db.get().await {
                    let _ = diesel::update(payments::table.find(&key))
                        .set(payments::callback_status.eq(outcome))
                        .execute(&mut conn)
                        .await;
                }
            }
            .instrument(span),
        );
    }
    Ok(n)
}

commerce_enums::text_enum! {
    /// What a callback or webhook tells the merchant happened (its `event` field).
    pub enum NoticeEvent {
        /// A payment was settled: `SUCCESS` or `FAILED`.
        Settled => "payment.settled",
        /// The gateway refunded a payment itself (from its console).
        Refunded => "payment.refunded",
        /// The card's issuer took the money back (a chargeback).
        ChargedBack => "payment.charged_back",
    }
}

/// A callback's or webhook's body: the payment as it now stands, and what happened to it.
#[derive(Serialize, Debug)]
pub struct Notice {
    pub event: NoticeEvent,
    #[serde(flatten)]
    pub transaction: Transaction,
}

/// Posts `notice` to `url` once (never retried), signed with `secret` (`X-Signature`, see
/// [`commerce_web::signature`]), continuing the current trace. Redirects are not followed.
pub(crate) async fn deliver(
    http: &reqwest::Client,
    secret: &str,
    url: &str,
    notice: &Notice,
) -> CallbackStatus {
    let key = &notice.transaction.transaction_key;
    let body = match serde_json::to_vec(notice) {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(transaction_key = %key, error = %e, "callback not serialisable");
            CallbackOutcome::Failed.count();
            return CallbackStatus::Failed;
        }
    };
    let signed = commerce_web::signature::sign(secret.as_bytes(), Utc::now().timestamp(), &body);
    let mut trace = axum::http::HeaderMap::new();
    commerce_telemetry::traces::inject(&mut trace);
    let sent = http
        .post(url)
        .headers(trace)
        .header(commerce_web::signature::HEADER, signed)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map(|r| r.status());
    match sent {
        // Only a 2xx is a delivery: a redirect is not followed, so it is not one either.
        Ok(status) if status.is_success() => {
            CallbackOutcome::Sent.count();
            CallbackStatus::Sent
        }
        Ok(status) => {
            tracing::info!(transaction_key = %key, event = %notice.event, %status, "callback not accepted (not retried)");
            CallbackOutcome::Failed.count();
            CallbackStatus::Failed
        }
        Err(e) => {
            tracing::info!(transaction_key = %key, event = %notice.event, error = %e, "callback not delivered (not retried)");
            CallbackOutcome::Failed.count();
            CallbackStatus::Failed
        }
    }
}

/// The settlement worker (which also forgets expired idempotency keys, once a minute): runs
/// until `stop` turns true.
pub async fn run_settler(sim: Arc<Simulator>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut forgotten_at = std::time::Instant::now();
    loop {
        if forgotten_at.elapsed() >= std::time::Duration::from_secs(60) {
            forgotten_at = std::time::Instant::now();
            if let Err(e) = forget_expired_keys(&sim).await {
                tracing::warn!(error = %format!("{e:#}"), "forgetting expired idempotency keys failed");
            }
        }
        let pause = match settle_due(&sim, 200).await {
            Ok(200) => std::time::Duration::ZERO,
            Ok(_) => std::time::Duration::from_millis(50),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "settlement pass failed; retrying");
                std::time::Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_checked_and_masked() {
        assert!(is_card_no("1234-5678-9012-3456"));
        assert!(!is_card_no("1234-5678-9012-345"));
        assert!(!is_card_no("1234567890123456"));
        assert!(!is_card_no("1234-5678-9012-345a"));
        assert_eq!(mask("1234-5678-9012-3456"), "1234-****-****-3456");
    }
}
