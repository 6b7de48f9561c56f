#!/usr/bin/env python3
"""Writes grafana/dashboards/*.json: the one source of the dashboards.

Every panel has one unit; every range is $__rate_interval (or $__range for totals over the
picked time range); every query is filtered by the job and instance variables. Edit the panels
here and run `python3 grafana/dashboards.py`; supports/dev/stack test proves each query against a
real Prometheus scraping the running apps (supports/dev/monitoring-check.py).
"""
import json
import pathlib

SEL = 'job=~"$job",instance=~"$instance"'
RI = "$__rate_interval"


def sel(extra=""):
    return "{" + SEL + ("," + extra if extra else "") + "}"


def rate(metric, extra="", by=None, fn="rate"):
    inner = f"{fn}({metric}{sel(extra)}[{RI}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def quantile(q, metric, by=None, extra=""):
    keys = "le" + (", " + by if by else "")
    return f"histogram_quantile({q}, sum by ({keys}) (rate({metric}_bucket{sel(extra)}[{RI}])))"


def panel(title, unit, targets, description="", kind="timeseries"):
    return {"title": title, "unit": unit, "targets": targets, "description": description, "type": kind}


def t(expr, legend=""):
    return {"expr": expr, "legend": legend}


HTTP = [
    panel("Requests per second by route", "reqps", [t(rate("http_requests_total", by="job, route"), "{{job}} {{route}}")]),
    panel("Server errors (5xx) per second", "reqps", [t(rate("http_requests_total", 'status=~"5.."', by="job, route, status"), "{{job}} {{route}} {{status}}")],
          "Every 5xx has a WARN access line with its trace id."),
    panel("Client errors (4xx) per second", "reqps", [t(rate("http_requests_total", 'status=~"4.."', by="job, route, status"), "{{job}} {{route}} {{status}}")]),
    panel("Latency p50 by route", "s", [t(quantile(0.5, "http_request_duration_seconds", by="job, route"), "{{job}} {{route}}")]),
    panel("Latency p99 by route", "s", [t(quantile(0.99, "http_request_duration_seconds", by="job, route"), "{{job}} {{route}}")],
          "SLO: under 500 ms on every route but the order event stream (long-lived by design)."),
    panel("Requests refused by rate limits", "reqps", [t(rate("http_rate_limited_total", by="limit"), "{{limit}}")]),
    panel("Sessions per minute by event", "short", [t(f"60 * {rate('auth_sessions_total', by='event')}", "{{event}}"),
                                                    t(f"60 * {rate('session_revocations_unannounced_total')}", "ends Redis did not take (found in PostgreSQL within 5 s)"),
                                                    t(f"max(sessions_ended_known{sel()})", "ended sessions remembered (per instance, max)")],
          "started: logins; refreshed: rotations; ended: logouts, logouts everywhere and admins' ends; reuse_detected: a refresh token presented twice (a copied token), which ends its session. Ended sessions are remembered for the access tokens' lifetime."),
    panel("Access log lines dropped per second", "short", [t(rate("log_lines_dropped_total", by="job"), "{{job}}")],
          "Lines the log writer's queue had no room for (a slow disk or pipe); requests are never held for a log line."),
    panel("Instances scraped (1 up, 0 down)", "short", [t(f"up{sel()}", "{{job}} {{instance}}")]),
    panel("Instances ready (1 ready, 0 not)", "short", [t(f"app_ready{sel()}", "{{job}} {{instance}}")]),
    panel("Instances draining (1 from SIGTERM to exit)", "short", [t(f"app_draining{sel()}", "{{job}} {{instance}}")],
          "A draining instance answers /health/ready with 503 while it finishes in-flight requests; one stuck at 1 has passed SHUTDOWN_DRAIN_SECONDS."),
    panel("Dependencies answering (1 up, 0 down)", "short", [t(f"health_dependency_up{sel()}", "{{job}} {{instance}} {{dependency}}")]),
    panel("Versions running", "short", [t(f"sum by (app, version) (app_build_info{sel()})", "{{app}} {{version}}")]),
]

RUNTIME = [
    panel("CPU used (cores)", "short", [t(f"rate(process_cpu_seconds_total{sel()}[{RI}])", "{{job}} {{instance}}")]),
    panel("Resident memory", "bytes", [t(f"process_resident_memory_bytes{sel()}", "{{job}} {{instance}}")]),
    panel("Virtual memory", "bytes", [t(f"process_virtual_memory_bytes{sel()}", "{{job}} {{instance}}"),
                                       t(f"process_virtual_memory_max_bytes{sel()}", "{{job}} {{instance}} limit")]),
    panel("Open file descriptors", "short", [t(f"process_open_fds{sel()}", "{{job}} {{instance}} open"), t(f"process_max_fds{sel()}", "{{job}} {{instance}} limit")]),
    panel("Threads", "short", [t(f"process_threads{sel()}", "{{job}} {{instance}}")]),
    panel("Process start time", "dateTimeAsIso", [t(f"process_start_time_seconds{sel()} * 1000", "{{job}} {{instance}}")]),
    panel("Database connections by state", "short", [t(f"sum by (job, pool, state) (db_pool_connections{sel()})", "{{pool}} {{state}}"),
                                                      t(f"max by (job, pool) (db_pool_max_connections{sel()})", "{{pool}} limit")]),
    panel("Tasks waiting for a database connection", "short", [t(f"max by (job, pool) (db_pool_waiting{sel()})", "{{pool}}")],
          "Non-zero for long: the pool is too small for the load, or the database is slow."),
    panel("Database checkout errors per second", "ops", [t(rate("db_pool_errors_total", by="pool, kind"), "{{pool}} {{kind}}")]),
    panel("Redis errors per second", "ops", [t(rate("redis_errors_total", by="job, op"), "{{job}} {{op}}"),
                                              t(rate("redis_memory_report_failures_total", by="job"), "{{job}} memory report failures")]),
    panel("Redis memory by node", "bytes", [t(f"max by (node) (redis_used_memory_bytes{sel()})", "{{node}} used"),
                                            t(f"max by (node) (redis_max_memory_bytes{sel()})", "{{node}} maxmemory (0: no limit)")],
          "Both apps report every node they use (each master of a cluster). Past 90% of maxmemory fires RedisMemoryHigh."),
    panel("Redis keys evicted per second by node", "ops", [t(f"max by (node) (rate(redis_evicted_keys_total{sel()}[$__rate_interval]))", "{{node}}")],
          "Evicted rankings are rebuilt and coupon gates reconciled from PostgreSQL; any eviction fires RedisEvicting."),
    panel("Kafka client errors per second", "ops", [t(rate("kafka_client_errors_total", by="job, client"), "{{job}} {{client}}")]),
    panel("Password hashing per second", "ops", [t(rate("auth_password_hashes_total", by="op"), "{{op}}"),
                                                  t(rate("auth_hashing_refused_total"), "refused (AUTH_BUSY)")]),
]

PAYMENTS = [
    panel("Gateway calls per second by outcome", "ops", [t(rate("payment_gateway_calls_total", by="operation, outcome"), "{{operation}} {{outcome}}")]),
    panel("Gateway call latency p50 / p99 (after retries)", "s", [t(quantile(0.5, "payment_gateway_call_duration_seconds", by="operation"), "p50 {{operation}}"),
                                                                   t(quantile(0.99, "payment_gateway_call_duration_seconds", by="operation"), "p99 {{operation}}")]),
    panel("Circuit breaker (0 closed, 1 open, 2 half-open)", "short", [t(f"max by (instance) (payment_gateway_circuit_state{sel()})", "{{instance}}")]),
    panel("Retries and breaker rejections per second", "ops", [t(rate("payment_gateway_retries_total", by="operation"), "retry {{operation}}"),
                                                                t(rate("payment_gateway_rejected_total"), "rejected")]),
    panel("Payments settled per second", "ops", [t(rate("payments_settled_total", by="status, via"), "{{status}} via {{via}}")]),
    panel("Card payments awaiting their outcome", "short", [t(f"max(payments_pending{sel()})", "pending")]),
    panel("Oldest payment awaiting its outcome", "s", [t(f"max(payments_pending_oldest_seconds{sel()})", "oldest")]),
    panel("Callbacks per second by result", "ops", [t(rate("payment_callbacks_total", by="result"), "{{result}}")]),
    panel("Reconciliation per second by result", "ops", [t(rate("payments_reconciled_total", by="result"), "{{result}}")]),
    panel("Refunds required and duplicate charges", "short", [t(rate("payments_refund_required_total", fn="increase"), "refund required"),
                                                               t(rate("payments_duplicate_charges_total", fn="increase"), "duplicate charges"),
                                                               t(rate("payments_reversed_at_gateway_total", fn="increase"), "reversed at the gateway")],
          "Counts per interval. Reversed at the gateway: refunds and chargebacks the gateway made by itself (its webhook, or the audit of paid payments)."),
    panel("Refunds queued per second by cause", "ops", [t(rate("payments_refunds_requested_total", by="cause"), "{{cause}}")]),
    panel("Refund attempts per second by result", "ops", [t(rate("payments_refunds_total", by="result"), "{{result}}")]),
    panel("Refunds queued and refused", "short", [t(f"max(payments_refunds_pending{sel()})", "queued"), t(f"max(payments_refunds_failed{sel()})", "refused: need an operator")]),
    panel("Oldest queued refund", "s", [t(f"max(payments_refunds_pending_oldest_seconds{sel()})", "oldest")]),
    panel("Gateway (simulator) requests per second", "ops", [t(rate("pg_sim_requests_total", by="outcome"), "{{outcome}}")]),
    panel("Gateway (simulator) settlements per second", "ops", [t(rate("pg_sim_settlements_total", by="status"), "{{status}}")]),
    panel("Gateway (simulator) callbacks per second", "ops", [t(rate("pg_sim_callbacks_total", by="outcome"), "{{outcome}}")]),
    panel("Gateway (simulator) refunds per second", "ops", [t(rate("pg_sim_refunds_total", by="outcome"), "{{outcome}}")]),
    panel("Gateway (simulator) reversals and refused keys per second", "ops",
          [t(rate("pg_sim_reversals_total", by="event"), "reversed: {{event}}"),
           t(rate("pg_sim_unauthenticated_total", by="caller"), "refused key: {{caller}}")],
          "Refunds and chargebacks the gateway made itself (each tells the API by a signed webhook), and requests refused for a missing or wrong key."),
]

PIPELINE = [
    panel("Outbox backlog (rows)", "short", [t(f"max(outbox_pending{sel()})", "pending")]),
    panel("Oldest unpublished event", "s", [t(f"max(outbox_oldest_pending_age_seconds{sel()})", "oldest")]),
    panel("Relay publishes and failures per second", "ops", [t(rate("outbox_published_total"), "published"), t(rate("outbox_publish_failures_total"), "failed")]),
    panel("Commit to broker ack, p50 / p99", "s", [t(quantile(0.5, "outbox_publish_lag_seconds"), "p50"), t(quantile(0.99, "outbox_publish_lag_seconds"), "p99")]),
    panel("Active relay leader", "short", [t(f"outbox_relay_leader{sel()}", "{{instance}}")]),
    panel("Consumer lag (messages) by topic", "short", [t(f"sum by (topic) (max by (topic, partition) (collector_consumer_lag{sel()}))", "{{topic}}")]),
    panel("Pipeline delay (commit to applied), p50 / p99", "s", [t(quantile(0.5, "collector_event_age_seconds"), "p50"), t(quantile(0.99, "collector_event_age_seconds"), "p99")]),
    panel("Events applied per second by type", "ops", [t(rate("collector_events_applied_total", by="event_type"), "{{event_type}}")]),
    panel("Duplicates skipped and dead letters per second", "ops", [t(rate("collector_events_duplicate_total"), "duplicates"),
                                                                     t(rate("collector_poison_messages_total", by="reason"), "dead letter: {{reason}}")]),
    panel("Batches committed per second", "ops", [t(rate("collector_batches_total"), "batches")]),
    panel("Batch size p50 / p99 (messages)", "short", [t(quantile(0.5, "collector_batch_size"), "p50"), t(quantile(0.99, "collector_batch_size"), "p99")]),
    panel("Batch duration p50 / p99", "s", [t(quantile(0.5, "collector_batch_duration_seconds"), "p50"), t(quantile(0.99, "collector_batch_duration_seconds"), "p99")]),
    panel("Batch failures, consumer restarts and rebalances per second", "ops", [t(rate("collector_batch_failures_total"), "batch failures"),
                                                                                   t(rate("collector_consumer_restarts_total"), "consumer restarts"),
                                                                                   t(rate("collector_rebalances_total", by="kind"), "rebalance {{kind}}"),
                                                                                   t(rate("collector_group_join_stalls_total"), "stalled joins (consumer recreated)")]),
    panel("Partitions held and group membership per collector", "short", [t(f"collector_assigned_partitions{sel()}", "{{instance}} partitions"),
                                                                          t(f"collector_group_joined{sel()}", "{{instance}} joined (1) / waiting (0)")],
          "A collector waiting for its group longer than COLLECTOR_JOIN_TIMEOUT_MS is recreated; no collector holding any partition fires NoCollectorHoldsPartitions."),
    panel("Scheduled job runs per second", "ops", [t(rate("collector_job_runs_total", by="task, result"), "{{task}} {{result}}")]),
    panel("Scheduled job duration p99", "s", [t(quantile(0.99, "collector_job_duration_seconds", by="task"), "{{task}}")]),
    panel("Since each job last succeeded", "s", [t(f"time() - max by (task) (collector_job_last_success_timestamp_seconds{sel()} > 0)", "{{task}}")]),
    panel("Ranking reads per second", "ops", [t(rate("ranking_reads_total", by="route, source"), "{{route}} from {{source}}"),
                                               t(rate("ranking_cache_hits_total"), "response cache hits"),
                                               t(rate("ranking_fallbacks_total", by="reason"), "fallback: {{reason}}")]),
    panel("Live ranking refresh p99", "s", [t(quantile(0.99, "ranking_live_refresh_seconds"), "p99")]),
    panel("Fold of day figures into weeks, months and all-time", "short", [t(rate("collector_folded_rows_total"), "day rows folded per second"),
                                                                          t(rate("collector_fold_failures_total"), "failures per second"),
                                                                          t(quantile(0.99, "collector_fold_seconds"), "p99 seconds per fold")],
          "One collector folds at a time, every COLLECTOR_FOLD_INTERVAL_MS; failures with nothing folded fire FoldStalled."),
    panel("Live ranking refresh failures and rebuilds per second", "ops", [t(rate("ranking_live_refresh_failures_total"), "refresh failures"),
                                                                            t(rate("ranking_live_rebuilds_total", by="reason"), "rebuild: {{reason}}")]),
    panel("Product cache lookups per second", "ops", [t(rate("product_cache_requests_total", by="level, result"), "{{level}} {{result}}")]),
    panel("Product views per second by result", "ops", [t(rate("product_views_total", by="result"), "{{result}}")],
          "published: a viewer's first view of the product in the window (what the rankings count); repeated: not counted again; dropped: a queue was full."),
    panel("Coupon issue attempts per second", "ops", [t(rate("coupon_issue_total", by="result, path"), "{{result}} via {{path}}"),
                                                       t(rate("coupon_gate_unavailable_total"), "gate unavailable"),
                                                       t(rate("coupon_seats_reconciled_total"), "seats given back")]),
]

PAID = 'status="PAID"'

BUSINESS = [
    panel("Orders per minute by payment method", "short", [t(f"60 * {rate('orders_placed_total', by='payment_method')}", "{{payment_method}}")]),
    panel("Orders refused per minute by reason", "short", [t(f"60 * {rate('orders_refused_total', by='reason')}", "{{reason}}"),
                                                           t(f"60 * {rate('orders_timed_out_total')}", "timed out (ORDER_TIMEOUT_MS)")]),
    panel("Revenue per minute (won)", "short", [t(f"60 * {rate('sales_revenue_won_total', by='payment_method')}", "{{payment_method}}"),
                                                 t(f"-60 * {rate('sales_refunded_won_total')}", "refunded")],
          "Paid order amounts as the pipeline applied them (each once); refunds below zero."),
    panel("Revenue in the time range (won)", "short", [t(f"sum(increase(sales_revenue_won_total{sel()}[$__range])) - sum(increase(sales_refunded_won_total{sel()}[$__range]))", "net")], kind="stat"),
    panel("Card payment success rate", "percentunit", [t(rate("payments_settled_total", PAID) + " / " + rate("payments_settled_total"), "paid / settled")]),
    panel("Refunds per minute", "short", [t("60 * " + rate("payments_refunds_total", 'result="refunded"'), "refunded")]),
    panel("Points credited per minute (won)", "short", [t(f"60 * {rate('points_credited_won_total', by='via')}", "{{via}}"),
                                                         t(f"-60 * {rate('points_top_ups_reversed_won_total')}", "top-ups taken back"),
                                                         t(f"-60 * {rate('points_top_up_shortfall_won_total')}", "reversed top-ups already spent")],
          "Points are bought (top_up: a card payment the gateway confirmed) or granted by an administrator (grant); nothing else credits them."),
    panel("Coupons issued per minute", "short", [t("60 * " + rate("coupon_issue_total", 'result="issued"'), "issued")]),
    panel("Wishlist alerts per minute", "short", [t(f"60 * {rate('wishlist_alerts_queued_total', by='kind')}", "queued: {{kind}}"),
                                                  t(f"60 * {rate('wishlist_alerts_total', by='result')}", "{{result}}")],
          "Restock and pre-sale alerts queued (one per subscriber and occasion) and what each attempt came to: sent (the SMTP server accepted it), retried (refused for now), failed and unconfirmed (dead letters: GET /api/v1/admin/wishlist-alerts), withdrawn (taken off the wishlist first)."),
    panel("Wishlist alerts waiting", "short", [t(f"max(wishlist_alerts_pending{sel()})", "queued"),
                                               t(f"max(wishlist_alerts_dead{sel()})", "dead letters: need an admin"),
                                               t(f"max(wishlist_alerts_oldest_unsent_seconds{sel()})", "oldest unsent (s)")],
          "Queued alerts drain at WISHLIST_ALERT_SEND_RATE (100,000 subscribers at 50/s take 33 minutes); WishlistAlertsStuck fires when the oldest waits past an hour."),
    panel("Partner orders moved per minute", "short", [t(f"60 * {rate('partner_order_transitions_total', by='step')}", "{{step}}"),
                                                        t(f"60 * {rate('partner_orders_auto_total', by='step')}", "{{step}} automatically")],
          "Partner orders prepared, shipped, delivered and purchase-confirmed by their partners and customers, and delivered and confirmed by the automatic passes."),
    panel("Confirmed sales per minute (won)", "short", [t(f"60 * {rate('partner_confirmed_gmv_won_total')}", "GMV confirmed"),
                                                         t(f"60 * {rate('partner_orders_confirmed_total')}", "partner orders confirmed")],
          "Purchase-confirmed partner orders as the pipeline applied them (each once): what settlement pays partners for. Per partner: GET /api/v1/partners/sales on the collector (the table below)."),
    panel("Pipeline delay p99 (rankings' freshness)", "s", [t(quantile(0.99, "collector_event_age_seconds"), "p99")]),
    panel("Partner settlement in the time range (won)", "short",
          [t(f"sum(increase(settlement_payable_won_total{sel()}[$__range]))", "owed to partners"),
           t(f"sum(increase(settlement_commission_won_total{sel()}[$__range]))", "commission"),
           t(f"sum(increase(settlement_payouts_won_total{sel()}[$__range]))", "paid out"),
           t(f"sum(increase(settlement_clawbacks_won_total{sel()}[$__range]))", "clawbacks netted")], kind="stat"),
    panel("Partner settlement written per minute (won)", "short",
          [t(f"60 * {rate('settlement_payable_won_total')}", "owed to partners"),
           t(f"60 * {rate('settlement_commission_won_total')}", "commission"),
           t(f"60 * {rate('settlement_payouts_won_total')}", "paid out"),
           t(f"60 * {rate('settlement_clawbacks_won_total')}", "clawbacks netted"),
           t(f"60 * {rate('settlement_lines_total')}", "partner orders settled"),
           t(f"60 * {rate('settlement_settlements_total')}", "settlements written")],
          "What each day's close wrote (a spike at SETTLEMENT_CRON; the instance that closed the day counts it) and the payouts recorded. Per partner: GET /api/v1/admin/settlements?date=."),
    panel("Settlement job", "s",
          [t(f"time() - max(settlement_closed_through_timestamp_seconds{sel()} > 0)", "since the last closed day ended"),
           t(f"time() - max(settlement_last_success_timestamp_seconds{sel()} > 0)", "since a day last closed here"),
           t(quantile(0.99, "settlement_run_duration_seconds"), "close duration p99")],
          "Yesterday closes at SETTLEMENT_CRON (04:00); the SettlementLate alert fires when it has not by 06:00 (the first line then passes 30 h)."),
    panel("Settlement runs per minute by result", "short", [t(f"60 * {rate('settlement_runs_total', by='result')}", "{{result}}")],
          "success: a day closed here; already_closed: another instance (or run) had closed it; failure: retried with backoff (SettlementRunsFailing)."),
]

TOP_PRODUCTS = {
    "title": "Top products today",
    "type": "table",
    "description": "The collector's daily ranking (GET /api/v1/rankings), read through the Infinity datasource.",
    "datasource": {"type": "yesoreyeram-infinity-datasource", "uid": "rankings"},
    "targets": [{"refId": "A", "type": "json", "source": "url", "format": "table", "parser": "backend",
                 "url": "/api/v1/rankings?period=daily&size=10", "url_options": {"method": "GET"},
                 "root_selector": "content"}],
    "gridPos": None,
}

PARTNER_SALES = {
    "title": "Confirmed sales by partner today",
    "type": "table",
    "description": "The collector's confirmed sales per partner (GET /api/v1/partners/sales), read through the Infinity datasource.",
    "datasource": {"type": "yesoreyeram-infinity-datasource", "uid": "rankings"},
    "targets": [{"refId": "A", "type": "json", "source": "url", "format": "table", "parser": "backend",
                 "url": "/api/v1/partners/sales?period=daily&size=20", "url_options": {"method": "GET"},
                 "root_selector": "content"}],
    "gridPos": None,
}

DASHBOARDS = {
    "commerce-http": ("Commerce / HTTP", HTTP),
    "commerce-runtime": ("Commerce / Runtime", RUNTIME),
    "commerce-payments": ("Commerce / Card payments", PAYMENTS),
    "commerce-pipeline": ("Commerce / Event pipeline", PIPELINE),
    "commerce-business": ("Commerce / Business", BUSINESS),
}

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


def variable(name, query, label):
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".+",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def render(uid, title, panels, extra=()):
    out = []
    for i, p in enumerate(panels):
        out.append({
            "id": i + 1, "type": p["type"], "title": p["title"], "description": p["description"],
            "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(65 + j), "datasource": DATASOURCE, "expr": x["expr"], "legendFormat": x["legend"]}
                        for j, x in enumerate(p["targets"])],
        })
    for p in extra:
        p = dict(p, id=len(out) + 1, gridPos={"h": 8, "w": 24, "x": 0, "y": 8 * ((len(out) + 1) // 2)})
        out.append(p)
    return {
        "uid": uid, "title": title, "schemaVersion": 39, "version": 1, "editable": True,
        "refresh": "10s", "time": {"from": "now-30m", "to": "now"}, "tags": ["commerce"],
        "templating": {"list": [variable("job", "label_values(up, job)", "Job"),
                                variable("instance", 'label_values(up{job=~"$job"}, instance)', "Instance")]},
        "annotations": {"list": []},
        "panels": out,
    }


def main():
    root = pathlib.Path(__file__).resolve().parent / "dashboards"
    for uid, (title, panels) in DASHBOARDS.items():
        extra = [TOP_PRODUCTS, PARTNER_SALES] if uid == "commerce-business" else []
        doc = render(uid, title, panels, extra)
        (root / f"{uid}.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
