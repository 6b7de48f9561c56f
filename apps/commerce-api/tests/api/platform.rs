//! Health, readiness, metrics and error envelope of the running API, over real HTTP against
//! real PostgreSQL and Redis.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::start_api;

#[tokio::test]
async fn ready_reports_every_dependency_up() {
    let app = start_api(&[]).await;
    let res = reqwest::get(format!("{}/health/ready", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "UP", "{body}");
    let names: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["database", "redis", "kafka", "admin_credentials"]);
}

#[tokio::test]
async fn ready_is_503_naming_the_database_when_it_is_unreachable() {
    // A closed port: nothing listens on port 1.
    let app = start_api(&[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/commerce")]).await;
    let res = reqwest::get(format!("{}/health/ready", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "DOWN");
    let db = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "database")
        .unwrap();
    assert_eq!(db["status"], "DOWN");
    // Liveness does not depend on the database.
    let live = reqwest::get(format!("{}/health/live", app.base))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn redis_outage_degrades_but_does_not_fail_readiness() {
    let app = start_api(&[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let res = reqwest::get(format!("{}/health/ready", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "DEGRADED", "{body}");
}

#[tokio::test]
async fn every_signal_is_exported_from_the_first_scrape_at_zero_until_something_happens() {
    let app = start_api(&[]).await;
    let base = app.base.as_str();
    // Registered while the API is built, so on the very first scrape.
    for series in [
        r#"orders_placed_total{payment_method="CARD"}"#,
        r#"orders_refused_total{reason="INSUFFICIENT_STOCK"}"#,
        r#"payment_gateway_calls_total{operation="request",outcome="unavailable"}"#,
        r#"payment_callbacks_total{result="accepted"}"#,
        r#"payments_refunds_total{result="refused"}"#,
        r#"coupon_issue_total{result="issued",path="redis"}"#,
        r#"product_cache_requests_total{level="redis",result="error"}"#,
        r#"http_rate_limited_total{limit="order_create"}"#,
        r#"redis_errors_total{op="coupon_gate"}"#,
        r#"kafka_client_errors_total{client="relay"}"#,
        r#"kafka_client_errors_total{client="views"}"#,
        "outbox_publish_failures_total",
        "payments_duplicate_charges_total",
        r#"product_views_total{result="dropped"}"#,
        r#"payment_gateway_call_duration_seconds_count{operation="refund"}"#,
        "outbox_publish_lag_seconds_count",
    ] {
        assert_eq!(
            commerce_testkit::metric(base, series).await,
            Some(0.0),
            "{series}"
        );
    }
    // Read from the operating system at every scrape.
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
    ] {
        let value = commerce_testkit::metric(base, series).await;
        assert!(value.is_some_and(|v| v > 0.0), "{series}: {value:?}");
    }
    assert!(
        commerce_testkit::metric(base, "process_cpu_seconds_total")
            .await
            .is_some()
    );
    // The pool's gauges come from their own loop; its errors are registered with it.
    let size =
        commerce_testkit::eventually("the pool gauges", Duration::from_secs(10), async || {
            commerce_testkit::metric(base, r#"db_pool_max_connections{pool="commerce-api"}"#)
                .await
                .ok_or("not yet")
        })
        .await;
    assert_eq!(size, 20.0, "DATABASE_POOL_SIZE of the test environment");
    assert_eq!(
        commerce_testkit::metric(
            base,
            r#"db_pool_errors_total{pool="commerce-api",kind="timeout_wait"}"#
        )
        .await,
        Some(0.0)
    );
    assert!(
        commerce_testkit::metric(
            base,
            r#"db_pool_connections{pool="commerce-api",state="in_use"}"#
        )
        .await
        .is_some()
    );
}

#[tokio::test]
async fn metrics_expose_request_histograms_labelled_by_route_template() {
    let app = start_api(&[]).await;
    let client = reqwest::Client::new();
    client
        .get(format!("{}/health/live", app.base))
        .send()
        .await
        .unwrap();
    let text = client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("# HELP http_requests_total"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains(r#"route="/health/live""#)
            && l.contains(r#"status="200""#)),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "latency is a histogram with buckets: {text}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.lines().any(|l| l.starts_with("app_build_info{")
            && l.contains(r#"app="commerce-api""#)
            && l.contains(&format!(r#"version="{version}""#))
            && l.ends_with(" 1")),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_route_is_a_problem_json_404() {
    let app = start_api(&[]).await;
    let res = reqwest::get(format!("{}/no/such/route", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "ROUTE_NOT_FOUND");
    reqwest::get(format!("{}/another/unknown", app.base))
        .await
        .unwrap();
    assert_eq!(
        commerce_testkit::metric(
            &app.base,
            r#"http_requests_total{method="GET",route="unmatched",status="404"}"#
        )
        .await,
        Some(2.0),
        "unknown routes are counted under one label, never their raw path"
    );
}

#[tokio::test]
async fn without_a_profile_the_api_is_production_and_refuses_the_dev_secrets() {
    let api = env!("CARGO_BIN_EXE_commerce-api");
    let refused = tokio::process::Command::new(api)
        .env_clear()
        .arg("serve")
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("commerce-api: ") && lines[0].contains("COMMERCE_JWT_SECRET"),
        "{stderr}"
    );
    let dev_secret = tokio::process::Command::new(api)
        .env_clear()
        .env("COMMERCE_JWT_SECRET", commerce_api::config::DEV_JWT_SECRET)
        .arg("serve")
        .output()
        .await
        .unwrap();
    assert_eq!(dev_secret.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&dev_secret.stderr).contains("development default"));

    // A migration job needs only the database.
    let db = commerce_testkit::TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
    let migrated = tokio::process::Command::new(api)
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .arg("migrate")
        .output()
        .await
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
}

#[tokio::test]
async fn migrate_without_creating_the_database_refuses_a_missing_one_and_migrates_an_existing_one()
{
    use diesel_async::RunQueryDsl;
    let api = env!("CARGO_BIN_EXE_commerce-api");
    let db = commerce_testkit::TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
    let missing = format!("{}_absent_{}", db.url, commerce_testkit::unique_suffix());
    let name = missing.rsplit('/').next().unwrap().to_owned();
    let refused = tokio::process::Command::new(api)
        .env_clear()
        .env("DATABASE_URL", &missing)
        .args(["migrate", "--no-create-database"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let mut conn = commerce_db::connect(&db.url).await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let created: N = diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(&name)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(created.n, 0, "nothing was created");

    // An operator-provisioned (empty) database is migrated without touching `postgres`.
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut conn,
        &format!("CREATE DATABASE \"{name}\""),
    )
    .await
    .unwrap();
    let migrated = tokio::process::Command::new(api)
        .env_clear()
        .env("DATABASE_URL", &missing)
        .args(["migrate", "--no-create-database"])
        .output()
        .await
        .unwrap();
    let outcome = String::from_utf8_lossy(&migrated.stderr).into_owned();
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut conn,
        &format!("DROP DATABASE \"{name}\" WITH (FORCE)"),
    )
    .await
    .unwrap();
    assert!(migrated.status.success(), "{outcome}");
}

#[tokio::test]
async fn an_instance_on_verified_tls_to_postgres_and_redis_serves_and_is_ready() {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
    let app = crate::support::spawn_app().await;
    let dir = std::env::var("COMMERCE_TEST_TLS_DIR")
        .unwrap_or_else(|_| "/var/tmp/commerce-test-tls".into());
    let ca = format!("{dir}/ca.crt");
    assert!(
        std::path::Path::new(&ca).is_file(),
        "the test TLS certificates are missing from {dir}: run `supports/dev/stack infra`"
    );
    // A database of its own on the private TLS server the stack runs (the machine's own
    // server is left without TLS).
    let server = std::env::var("COMMERCE_TEST_TLS_SERVER_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433".into());
    let name = format!("commerce_api_tls_{}", commerce_testkit::unique_suffix());
    let plain = format!("{server}/{name}");
    commerce_db::migrate(&plain, commerce_api::MIGRATIONS, true)
        .await
        .unwrap_or_else(|e| {
            panic!("the TLS test server at {server} (supports/dev/stack infra): {e:#}")
        });
    let database_url = format!("{plain}?sslmode=verify-full&sslrootcert={ca}");
    let tls = app
        .another_instance(&[
            ("DATABASE_URL", &database_url),
            ("REDIS_URL", "rediss://127.0.0.1:6390"),
            ("REDIS_CA_FILE", &ca),
        ])
        .await;
    let ready = format!("{}/health/ready", tls.base);
    commerce_testkit::eventually(
        "the instance on TLS finds its database and Redis up",
        std::time::Duration::from_secs(10),
        async || {
            let body: serde_json::Value = reqwest::get(&ready)
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let up = |name: &str| {
                body["checks"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["name"] == name && c["status"] == "UP"))
            };
            if up("database") && up("redis") {
                Ok(())
            } else {
                Err(body.to_string())
            }
        },
    )
    .await;
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/users", tls.base))
        .json(&serde_json::json!({"login_id": "over-tls", "password": "correct horse", "name": "T", "email": "t@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = commerce_db::connect(&plain).await.unwrap();
    let users: N = diesel::sql_query("SELECT count(*) AS n FROM users WHERE login_id = 'over-tls'")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(users.n, 1);
    // The instance's sessions are the encrypted ones; the test's own connection is plain.
    let encrypted: N = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
          WHERE a.datname = current_database() AND s.ssl",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert!(encrypted.n >= 1);
    drop(tls);
    drop(conn);
    let mut admin = commerce_db::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_browser_storefront_on_an_allowed_origin_passes_the_preflight_and_reads_the_headers() {
    let shop = "https://shop.example.com";
    let app = start_api(&[(
        "CORS_ALLOWED_ORIGINS",
        "https://shop.example.com,https://m.example.com",
    )])
    .await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/v1/orders", app.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let res = preflight(shop).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let header = |res: &reqwest::Response, name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(shop)
    );
    let allowed = header(&res, "access-control-allow-headers").unwrap();
    for h in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert!(
        header(&res, "access-control-allow-methods")
            .unwrap()
            .contains("post")
    );

    // A real cross-origin request may read Location, Retry-After and traceparent.
    let res = client
        .get(format!("{}/api/v1/products", app.base))
        .header("origin", shop)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(shop)
    );
    let exposed = header(&res, "access-control-expose-headers").unwrap();
    for h in ["location", "retry-after", "traceparent"] {
        assert!(exposed.contains(h), "{exposed}");
    }

    // Another origin is not allowed.
    let res = preflight("https://evil.example.net").await.unwrap();
    assert_eq!(header(&res, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn without_configured_origins_no_cross_origin_request_is_allowed() {
    let app = start_api(&[]).await;
    let res = reqwest::Client::new()
        .get(format!("{}/api/v1/products", app.base))
        .header("origin", "https://shop.example.com")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

/// `commerce-api relay` on a free port, its stdout piped, with `env` set.
fn relay_process(
    app: &crate::support::TestApp,
    env: &[(&str, &str)],
) -> (
    u16,
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut relay = tokio::process::Command::new(env!("CARGO_BIN_EXE_commerce-api"));
    relay
        .arg("relay")
        .env("APP_PROFILE", "dev")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &app.db.url)
        .env("KAFKA_BROKERS", &app.state.config.kafka.brokers)
        .env_remove("LOG_FORMAT")
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = relay.spawn().expect("the commerce-api binary starts");
    let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (port, child, lines)
}

/// The first line `lines` yields that contains `needle`, and every line before it.
async fn line_with(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> (String, Vec<String>) {
    let mut before = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the process logs");
            if line.contains(needle) {
                return (line, before);
            }
            before.push(line);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a line with {needle:?} within 20 s"))
}

#[tokio::test]
async fn logs_written_to_a_file_or_pipe_carry_no_colour_codes() {
    let app = start_api(&[("OUTBOX_RELAY_ENABLED", "false")]).await;
    let (_, _relay, mut lines) = relay_process(&app, &[]);
    let (line, _) = line_with(&mut lines, "starting commerce-api relay").await;
    assert!(!line.contains('\u{1b}'), "{line:?}");
    assert!(line.contains("INFO"), "{line:?}");
}

#[tokio::test]
async fn the_configuration_is_logged_at_start_with_its_secrets_redacted() {
    let app = start_api(&[("OUTBOX_RELAY_ENABLED", "false")]).await;
    // The server trusts local connections, so a password in the URL is accepted and unused.
    let url = app
        .db
        .url
        .replacen("postgres@", "postgres:url-password-4242@", 1);
    assert_ne!(url, app.db.url);
    let jwt = "a-jwt-secret-that-must-never-be-logged-0123456789";
    let (_, _relay, mut lines) = relay_process(
        &app,
        &[("DATABASE_URL", &url), ("COMMERCE_JWT_SECRET", jwt)],
    );
    let (config, before) = line_with(&mut lines, "configuration: ").await;
    let (_, more) = line_with(&mut lines, "starting commerce-api relay").await;
    for line in before.iter().chain([&config]).chain(&more) {
        assert!(!line.contains("url-password-4242"), "{line}");
        assert!(!line.contains(jwt), "{line}");
    }
    assert!(
        config.contains(" COMMERCE_JWT_SECRET=<redacted>"),
        "{config}"
    );
    assert!(
        config.contains(&format!(
            " DATABASE_URL={}",
            url.replace("url-password-4242", "<redacted>")
        )),
        "{config}"
    );
    // Variables left unset are named, with their defaults in force.
    assert!(config.contains(" DATABASE_POOL_SIZE=(default)"), "{config}");
}

#[tokio::test]
async fn every_request_logs_one_compact_line_with_its_trace_id_in_text_and_in_json() {
    let app = start_api(&[("OUTBOX_RELAY_ENABLED", "false")]).await;
    let client = reqwest::Client::new();
    for format in ["text", "json"] {
        let (port, _relay, mut lines) = relay_process(&app, &[("LOG_FORMAT", format)]);
        line_with(&mut lines, "starting commerce-api relay").await;
        let base = format!("http://127.0.0.1:{port}");
        let get = async |path: &str, trace_id: &str| {
            commerce_testkit::eventually("the relay answers", Duration::from_secs(20), async || {
                client
                    .get(format!("{base}{path}"))
                    .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
                    .send()
                    .await
                    .map(|r| r.status())
                    .map_err(|e| e.to_string())
            })
            .await
        };
        // A successful health check gets no access line, a request gets one at INFO.
        let health = "11111111111111111111111111111111";
        let unknown = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(get("/health/live", health).await, StatusCode::OK);
        assert_eq!(get("/no-such-route", unknown).await, StatusCode::NOT_FOUND);
        let (line, before) = line_with(&mut lines, unknown).await;
        assert!(
            before.iter().all(|l| !l.contains(health)),
            "{format}: the health check is not logged at INFO: {before:?}"
        );
        if format == "json" {
            let entry: Value = serde_json::from_str(&line).expect("a JSON line");
            assert_eq!(entry["trace_id"], unknown, "{line}");
            assert_eq!(entry["target"], "request", "{line}");
            assert_eq!(entry["level"], "INFO", "{line}");
            assert_eq!(entry["fields"]["status"], 404, "{line}");
            assert_eq!(entry["fields"]["route"], "unmatched", "{line}");
            assert!(entry["fields"]["latency_ms"].is_number(), "{line}");
            assert_eq!(entry["fields"]["method"], "GET", "{line}");
            assert_eq!(entry["fields"]["path"], "/no-such-route", "{line}");
        } else {
            assert!(line.ends_with(&format!(" trace_id={unknown}")), "{line}");
            assert!(!line.contains('\u{1b}'), "{line:?}");
            // Each field once: method, path, status, latency, route, trace id.
            assert!(
                line.contains(" INFO request: GET /no-such-route 404 "),
                "{line}"
            );
            assert!(line.contains("ms route=unmatched trace_id="), "{line}");
            assert_eq!(line.matches("404").count(), 1, "{line}");
            assert!(line.len() < 200, "{} bytes: {line}", line.len());
        }
    }
}

#[tokio::test]
async fn redis_memory_and_evictions_are_reported_per_node() {
    let app = start_api(&[]).await;
    // What the server itself says.
    let cache = commerce_cache::Cache::new(&commerce_testkit::redis_url(), "unused:").unwrap();
    let node = cache.node_name();
    let mut redis = cache.conn().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .arg("stats")
        .query_async(&mut redis)
        .await
        .unwrap();
    let server = commerce_cache::memory::Memory::parse(&info);

    let line = |text: &str, family: &str| -> Option<f64> {
        let prefix = format!("{family}{{node=\"{node}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
    };
    let mut text = String::new();
    commerce_testkit::until(
        "the API reports the Redis node's memory",
        Duration::from_secs(30),
        async || {
            text = reqwest::get(format!("{}/metrics", app.base))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            line(&text, "redis_used_memory_bytes").is_some()
        },
    )
    .await;
    assert!(
        line(&text, "redis_used_memory_bytes").unwrap() > 0.0,
        "{text}"
    );
    assert_eq!(
        line(&text, "redis_max_memory_bytes"),
        Some(server.max as f64),
        "{text}"
    );
    assert_eq!(
        line(&text, "redis_evicted_keys_total"),
        Some(server.evicted_keys as f64),
        "{text}"
    );
}
