//! Every metric pg-simulator exports of its own, described and registered at start.

use commerce_telemetry::register_counter as counter;

use crate::Caller;
use crate::payments::{CallbackOutcome, NoticeEvent, PaymentStatus, RequestOutcome};
use crate::refunds::RefundOutcome;

pub fn register() {
    counter(
        "pg_sim_requests_total",
        "Payment requests, by outcome (accepted, failed: a simulated 5xx, replayed, in_progress).",
        &[("outcome", RequestOutcome::TEXTS)],
    );
    counter(
        "pg_sim_settlements_total",
        "Payments settled, by status.",
        &[(
            "status",
            &[
                PaymentStatus::Success.as_str(),
                PaymentStatus::Failed.as_str(),
            ],
        )],
    );
    counter(
        "pg_sim_callbacks_total",
        "Settlement callbacks, by outcome (sent, failed, dropped on purpose).",
        &[("outcome", CallbackOutcome::TEXTS)],
    );
    counter(
        "pg_sim_refunds_total",
        "Refund requests, by outcome.",
        &[("outcome", RefundOutcome::TEXTS)],
    );
    counter(
        "pg_sim_reversals_total",
        "Payments refunded or charged back by the gateway itself (its console), by event.",
        &[(
            "event",
            &[
                NoticeEvent::Refunded.as_str(),
                NoticeEvent::ChargedBack.as_str(),
            ],
        )],
    );
    counter(
        "pg_sim_unauthenticated_total",
        "Requests refused for a missing or wrong key, by caller (merchant: X-API-KEY, console: X-CONSOLE-KEY).",
        &[("caller", Caller::TEXTS)],
    );
}
