//! Every metric commerce-api exports, described and registered at start: its own here, the
//! HTTP, pool, process and readiness metrics where they live (commerce-telemetry, commerce-db,
//! commerce-web), the outbox gauges by their loop.

use commerce_telemetry::{
    register_counter as counter, register_gauge as gauge, register_histogram as histogram,
};

use crate::domain::alerts::{AlertAttempt, OccasionKind};
use crate::domain::payments::CallbackOutcome;
use crate::domain::reconcile::Reconciled;
use crate::domain::refund_worker::RefundAttempt;
use crate::domain::states::RefundCause;
use crate::infra::views::ViewResult;

const OPERATIONS: &[&str] = &["request", "refund", "list"];

/// The serving API's metrics.
pub fn register() {
    commerce_cache::register_error_metrics(&[
        "product_cache_get",
        "product_cache_put",
        "product_cache_evict",
        "view_dedup",
        "coupon_gate",
        "coupon_release",
    ]);
    commerce_kafka::register_error_metrics(&["views"]);
    register_relay();

    counter(
        "auth_hashing_refused_total",
        "Sign-ups and logins refused with 503 AUTH_BUSY because the password-hashing queue was full.",
        &[],
    );
    counter(
        "auth_password_hashes_total",
        "Password hashes computed (sign-up) and verified (login).",
        &[("op", &["hash", "verify"])],
    );
    counter(
        "http_rate_limited_total",
        "Requests refused with 429 RATE_LIMITED, by limit.",
        &[(
            "limit",
            &[
                "sign_up",
                "token",
                "payment_callback",
                "order_create",
                "coupon_issue",
                "points_charge",
                "like",
            ],
        )],
    );

    counter(
        "points_credited_won_total",
        "Points credited without an order giving them back, in won: bought (a top-up the gateway confirmed), granted by an administrator, or earned by a purchase-confirmed partner order.",
        &[("via", &["top_up", "grant", "earn"])],
    );
    counter(
        "points_top_ups_reversed_won_total",
        "Points of cancelled or refunded top-ups taken back, in won.",
        &[],
    );
    counter(
        "points_top_up_shortfall_won_total",
        "Points of top-ups the gateway reversed that could not be taken back (spent), in won: listed for an operator.",
        &[],
    );
    counter(
        "payments_reversed_at_gateway_total",
        "Paid orders whose money the gateway gave back by itself (a refund from its console, a chargeback), as the API learned of them.",
        &[],
    );
    counter(
        "payment_gateway_calls_total",
        "Logical calls to the payment gateway (after retries), by operation and outcome.",
        &[
            ("operation", OPERATIONS),
            (
                "outcome",
                &["ok", "rejected", "unavailable", "busy", "refused"],
            ),
        ],
    );
    counter(
        "payment_gateway_retries_total",
        "Retried gateway attempts, by operation.",
        &[("operation", OPERATIONS)],
    );
    counter(
        "payment_gateway_rejected_total",
        "Gateway calls refused by the open circuit breaker.",
        &[],
    );
    histogram(
        "payment_gateway_call_duration_seconds",
        "Gateway call latency, retries included, by operation.",
        &[("operation", OPERATIONS)],
    );
    metrics::describe_gauge!(
        "payment_gateway_circuit_state",
        "The gateway circuit breaker: 0 closed, 1 open, 2 half-open."
    );

    counter(
        "product_views_total",
        "Product page views, by result: published (a viewer's first view of the product in PRODUCT_VIEW_WINDOW_SECONDS, handed to the Kafka client), repeated (not counted again), dropped (a queue was full).",
        &[("result", ViewResult::TEXTS)],
    );
    counter(
        "product_cache_requests_total",
        "Product cache lookups by level (local, redis) and result (hit, miss, error).",
        &[("level", &["redis"]), ("result", &["hit", "miss", "error"])],
    );
    // The local level only records hits (a local miss goes on to Redis).
    metrics::counter!("product_cache_requests_total", "level" => "local", "result" => "hit")
        .increment(0);

    counter(
        "coupon_issue_total",
        "First-come coupon issue attempts by result and path (redis: the gate decided; database: the gate was bypassed).",
        &[
            ("result", &["issued", "sold_out", "already_issued"]),
            ("path", &["redis", "database"]),
        ],
    );
    counter(
        "coupon_seats_reconciled_total",
        "Coupon gate seats given back by reconciliation (admitted in Redis, never issued).",
        &[],
    );
    counter(
        "coupon_gate_unavailable_total",
        "Coupon issues decided by the database alone because the Redis gate failed.",
        &[],
    );

    counter(
        "orders_placed_total",
        "Orders committed, by payment method.",
        &[("payment_method", &["POINT", "CARD"])],
    );
    counter(
        "orders_timed_out_total",
        "Orders and top-ups rolled back because placing them outlasted ORDER_TIMEOUT_MS (answered 503 ORDER_TIMEOUT).",
        &[],
    );
    counter(
        "orders_refused_total",
        "Orders refused, by reason.",
        &[(
            "reason",
            &[
                "INSUFFICIENT_STOCK",
                "INSUFFICIENT_POINTS",
                "PURCHASE_LIMIT_EXCEEDED",
                "PRODUCT_NOT_ON_SALE",
            ],
        )],
    );

    counter(
        "partner_order_transitions_total",
        "Partner orders moved by a partner's or a customer's request, by step.",
        &[(
            "step",
            &[
                "prepare",
                "ship",
                "deliver",
                "confirm",
                "cancel",
                "request_return",
                "withdraw_return",
                "reject_return",
                "accept_return",
            ],
        )],
    );
    counter(
        "partner_orders_auto_total",
        "Partner orders moved by the automatic passes, by step.",
        &[("step", &["delivered", "confirmed"])],
    );

    counter(
        "settlement_runs_total",
        "Business days this instance tried to close, by result (already_closed: another instance or run had).",
        &[("result", &["success", "already_closed", "failure"])],
    );
    histogram(
        "settlement_run_duration_seconds",
        "How long closing one business day took.",
        &[],
    );
    counter(
        "settlement_settlements_total",
        "Partner settlements written.",
        &[],
    );
    counter("settlement_lines_total", "Partner orders settled.", &[]);
    counter(
        "settlement_commission_won_total",
        "Commission settled (fixed fees included), in won.",
        &[],
    );
    counter(
        "settlement_payable_won_total",
        "Owed to partners by the settlements written, in won.",
        &[],
    );
    counter(
        "settlement_clawbacks_won_total",
        "Clawbacks netted by the settlements written, in won.",
        &[],
    );
    counter(
        "settlement_payouts_won_total",
        "Settlements recorded as paid out, in won.",
        &[],
    );
    gauge(
        "settlement_last_success_timestamp_seconds",
        "Unix time this instance last closed a business day (0: not yet).",
    );
    gauge(
        "settlement_closed_through_timestamp_seconds",
        "Unix time the last closed business day ended (its next midnight in the business time zone; 0: none closed yet).",
    );

    counter(
        "payments_settled_total",
        "Card payments settled, by resulting order status and by what settled them.",
        &[
            ("status", &["PAID", "PAYMENT_FAILED"]),
            ("via", &["order", "callback", "reconciliation"]),
        ],
    );
    counter(
        "payment_callbacks_total",
        "Gateway callbacks received, by result.",
        &[("result", CallbackOutcome::TEXTS)],
    );
    counter(
        "payments_duplicate_charges_total",
        "Second successful charges found for an order (each is refunded).",
        &[],
    );
    counter(
        "payments_refund_required_total",
        "Charges that need a refund (cancelled paid orders, charges after close).",
        &[],
    );
    counter(
        "payments_reconciled_total",
        "Pending payments examined by reconciliation, by result.",
        &[("result", Reconciled::TEXTS)],
    );
    gauge("payments_pending", "Card payments awaiting their outcome.");
    gauge(
        "payments_pending_oldest_seconds",
        "Age of the oldest card payment awaiting its outcome.",
    );
    counter(
        "payments_refunds_requested_total",
        "Refunds queued, by cause.",
        &[("cause", RefundCause::TEXTS)],
    );
    counter(
        "payments_refunds_total",
        "Refund attempts, by result.",
        &[("result", RefundAttempt::TEXTS)],
    );
    gauge(
        "payments_refunds_pending",
        "Refunds queued and not yet confirmed by the gateway.",
    );
    gauge(
        "payments_refunds_failed",
        "Refunds the gateway refused: they need an operator.",
    );
    gauge(
        "payments_refunds_pending_oldest_seconds",
        "Age of the oldest queued refund.",
    );

    counter(
        "wishlist_alerts_queued_total",
        "Wishlist alerts queued (one per subscriber and occasion), by occasion.",
        &[("kind", OccasionKind::TEXTS)],
    );
    counter(
        "wishlist_alerts_total",
        "Attempts at claimed wishlist alerts, by result.",
        &[("result", AlertAttempt::TEXTS)],
    );
    gauge(
        "wishlist_alerts_pending",
        "Wishlist alerts queued to be sent.",
    );
    gauge(
        "wishlist_alerts_dead",
        "Dead-lettered wishlist alerts (FAILED and UNCONFIRMED): they need an admin.",
    );
    gauge(
        "wishlist_alerts_oldest_unsent_seconds",
        "Age of the oldest unsent wishlist alert (or occasion not yet fanned out).",
    );

    counter(
        "auth_sessions_total",
        "Sessions started (logins), refreshed (rotations), ended (logouts, logouts everywhere, admins), and refresh tokens presented twice (which end their session).",
        &[(
            "event",
            &["started", "refreshed", "ended", "reuse_detected"],
        )],
    );
    counter(
        "session_revocations_unannounced_total",
        "Ended sessions Redis did not take: the other instances find them in PostgreSQL within 5 s.",
        &[],
    );
    gauge(
        "sessions_ended_known",
        "Ended sessions this instance remembers (for the access tokens' lifetime).",
    );
}

/// The relay's metrics (also all a `commerce-api relay` process exports of its own).
pub fn register_relay() {
    commerce_kafka::register_error_metrics(&["relay"]);
    counter(
        "outbox_published_total",
        "Outbox rows published and acknowledged by the broker.",
        &[],
    );
    counter(
        "outbox_publish_failures_total",
        "Outbox rows whose publish failed (retried later).",
        &[],
    );
    histogram(
        "outbox_publish_lag_seconds",
        "An outbox row's commit to its broker acknowledgement.",
        &[],
    );
}
