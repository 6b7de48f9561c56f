//! Every metric commerce-collector exports is described and registered at start: here, those
//! not registered by the part that owns them (the consumer's, the jobs' and the live rankings'
//! descriptions live beside their code; pool, process, Redis and Kafka client metrics in the
//! shared modules).

use commerce_telemetry::{register_counter as counter, register_histogram as histogram};

pub fn register() {
    commerce_cache::register_error_metrics(&["ranking_read"]);
    commerce_kafka::register_error_metrics(&["consumer", "dead_letters"]);
    let events = commerce_events::EventType::TEXTS;
    counter(
        "collector_events_applied_total",
        "Events applied for the first time, by type.",
        &[("event_type", events)],
    );
    counter(
        "collector_events_duplicate_total",
        "Redelivered events skipped (already handled).",
        &[],
    );
    counter(
        "sales_revenue_won_total",
        "Paid order amounts (final, after discounts), in won, as the pipeline applies each OrderPaid once, by payment method.",
        &[("payment_method", commerce_events::PaymentKind::TEXTS)],
    );
    counter(
        "sales_refunded_won_total",
        "Card refunds, in won, as the pipeline applies each PaymentRefunded once.",
        &[],
    );
    counter(
        "partner_orders_confirmed_total",
        "Purchase-confirmed partner orders, as the pipeline applies each confirmation once.",
        &[],
    );
    counter(
        "partner_confirmed_gmv_won_total",
        "Gross merchandise value of purchase-confirmed partner orders, in won, applied once each.",
        &[],
    );
    counter("collector_batches_total", "Batches committed.", &[]);
    counter(
        "collector_batch_failures_total",
        "Batch attempts that failed (database unavailable or refusing).",
        &[],
    );
    counter(
        "collector_consumer_restarts_total",
        "Times the consumer was recreated after an error.",
        &[],
    );
    counter(
        "collector_group_join_stalls_total",
        "Times the consumer was recreated because its group left it without an assignment longer than COLLECTOR_JOIN_TIMEOUT_MS.",
        &[],
    );
    counter(
        "collector_rebalances_total",
        "Consumer group rebalances seen by this instance, by kind.",
        &[("kind", &["revoke", "assign"])],
    );
    histogram(
        "collector_event_age_seconds",
        "An event's commit in the API to its application here (the pipeline's delay).",
        &[],
    );
    histogram(
        "collector_batch_duration_seconds",
        "A batch's application, retries included.",
        &[],
    );
    histogram("collector_batch_size", "Messages per batch.", &[]);
    histogram(
        "collector_job_duration_seconds",
        "Time a claimed scheduled job run took, by job.",
        &[("task", crate::jobs::Job::TEXTS)],
    );
    counter(
        "ranking_cache_hits_total",
        "Ranking responses served from this instance's short-lived response cache.",
        &[],
    );
    counter(
        "ranking_fallbacks_total",
        "Current-period ranking reads served from the database because the live rankings could not be used, by reason.",
        &[("reason", &["not_ready", "redis_unavailable"])],
    );
    counter(
        "ranking_reads_total",
        "Ranking reads by route (page, product) and source (live, snapshot).",
        &[
            ("route", &["page", "product"]),
            ("source", crate::ranking::http::Source::TEXTS),
        ],
    );
    histogram(
        "collector_fold_seconds",
        "Time a fold of the daily figures into the all-time, weekly and monthly ones took, when it folded.",
        &[],
    );
    counter(
        "collector_folded_rows_total",
        "Daily rows whose changes were folded into the all-time, weekly and monthly figures.",
        &[],
    );
    counter(
        "collector_fold_failures_total",
        "Folds that failed (retried at the next interval; nothing is lost).",
        &[],
    );
    histogram(
        "ranking_live_refresh_seconds",
        "Time to read changed scores from PostgreSQL and set them in Redis, per round.",
        &[],
    );
    counter(
        "ranking_live_refresh_failures_total",
        "Rounds of live ranking updates that failed (the sets are rebuilt afterwards).",
        &[],
    );
    counter(
        "ranking_live_rebuilds_total",
        "Live ranking sets rebuilt whole from PostgreSQL, by reason.",
        &[(
            "reason",
            &["start", "redis_restarted", "invalidated", "missing"],
        )],
    );
}
