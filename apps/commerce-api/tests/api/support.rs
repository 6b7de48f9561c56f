//! Shared test helpers: a running API on a port of its own, with a database, Redis prefix and
//! topics of its own, and an HTTP client speaking to it.

use commerce_api::config::Config;
use commerce_api::infra::auth::Role;
use commerce_api::startup::Application;
use commerce_api::state::AppState;
use commerce_config::Reader;
use commerce_testkit::{Spawned, TestDb, TestEnv};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A running API with its own database, Redis prefix and topics.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub db: TestDb,
    /// The admin's token (empty for [`start_api`], which does not wait for the admin).
    pub admin: String,
    /// The running API (stopped when the test ends).
    pub _running: Spawned,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// An API with `overrides` on top of the test environment, once its admin can log in.
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let mut test = start_api(overrides).await;
    // The admin account is ensured in the background at start.
    let body = commerce_testkit::eventually(
        "the admin account can log in",
        std::time::Duration::from_secs(10),
        async || {
            let (status, body) = test
                .call(
                    Method::POST,
                    "/api/v1/auth/token",
                    None,
                    Some(json!({"login_id": "admin", "password": commerce_api::config::DEV_ADMIN_PASSWORD})),
                )
                .await;
            if status == StatusCode::OK {
                Ok(body)
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
    test.admin = body["access_token"].as_str().unwrap().to_owned();
    test
}

/// An API with `overrides` on top of the test environment, as soon as it listens (for tests of
/// an API whose dependencies are down).
pub async fn start_api(overrides: &[(&str, &str)]) -> TestApp {
    // Logs show up in a failing test's output, each with its trace id.
    commerce_telemetry::init_tracing("commerce-api");
    let db = TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
    let suffix = commerce_testkit::unique_suffix();
    let env = TestEnv::new(
        &db.url,
        &format!("test:{suffix}:"),
        &commerce_testkit::kafka_settings(),
    )
    .topics(
        &format!("catalog-events-{suffix}"),
        &format!("order-events-{suffix}"),
    )
    // The settlement job settles at start: tests that want it turn it on.
    .with(&[
        ("DATABASE_POOL_SIZE", "20"),
        ("SETTLEMENT_ENABLED", "false"),
    ])
    .with(overrides);
    let config = Config::read(&Reader::new(env.vars())).expect("valid test config");
    let app = Application::build(config).await.expect("app builds");
    let state = app.state().clone();
    let running = Spawned::start(app.into_server());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    TestApp {
        base: running.base.clone(),
        client,
        state,
        db,
        admin: String::new(),
        _running: running,
    }
}

impl TestApp {
    /// Another API instance on this one's database, Redis prefix and topics, in this process,
    /// with the relay off and `overrides` on top.
    pub async fn another_instance(&self, overrides: &[(&str, &str)]) -> Spawned {
        let config = &self.state.config;
        let env = TestEnv::new(
            &self.db.url,
            &config.redis_key_prefix,
            &commerce_testkit::kafka_settings(),
        )
        .topics(&config.catalog_topic, &config.order_topic)
        .with(&[("OUTBOX_RELAY_ENABLED", "false")])
        .with(overrides);
        let config = Config::read(&Reader::new(env.vars())).expect("valid test config");
        let app = Application::build(config).await.expect("app builds");
        Spawned::start(app.into_server())
    }

    /// Another API on this one's database and Redis prefix, a real process (to be killed), with
    /// the relay off and `env` on top; once it is live. Returns the process and its base URL.
    pub async fn child_process(&self, env: &[(&str, &str)]) -> (tokio::process::Child, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_commerce-api"))
            .env("APP_PROFILE", "dev")
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", commerce_testkit::redis_url())
            .env("REDIS_KEY_PREFIX", &self.state.config.redis_key_prefix)
            .env("KAFKA_BROKERS", &self.state.config.kafka.brokers)
            .env("OUTBOX_RELAY_ENABLED", "false")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the commerce-api binary starts");
        let base = format!("http://127.0.0.1:{port}");
        commerce_testkit::until(
            "the child API never came up",
            std::time::Duration::from_secs(20),
            async || reqwest::get(format!("{base}/health/live")).await.is_ok(),
        )
        .await;
        (child, base)
    }

    /// Sends a request; returns the status and the JSON body (`null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status();
        let bytes = res.bytes().await.unwrap();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, json)
    }

    /// Holds the row `id` of `table` locked (as a long transaction elsewhere would) from another
    /// connection until the returned sender fires.
    pub async fn hold_row_lock(&self, table: &str, id: i64) -> tokio::sync::oneshot::Sender<()> {
        use diesel_async::SimpleAsyncConnection;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (locked, is_locked) = tokio::sync::oneshot::channel::<()>();
        let mut conn = self.conn().await;
        let lock = format!("BEGIN; SELECT id FROM {table} WHERE id = {id} FOR UPDATE");
        tokio::spawn(async move {
            conn.batch_execute(&lock).await.unwrap();
            locked.send(()).unwrap();
            let _ = released.await;
            conn.batch_execute("ROLLBACK").await.unwrap();
        });
        is_locked.await.unwrap();
        release
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Posts a payment callback signed as the gateway signs it, with `secret` at `timestamp`.
    pub async fn callback_signed(
        &self,
        body: &Value,
        secret: &str,
        timestamp: i64,
    ) -> (StatusCode, Value) {
        let raw = serde_json::to_vec(body).unwrap();
        let signature = commerce_web::signature::sign(secret.as_bytes(), timestamp, &raw);
        let res = self
            .client
            .post(format!("{}/api/v1/payments/callback", self.base))
            .header(commerce_web::signature::HEADER, signature)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .expect("request sent");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Posts a payment callback signed now with the development secret, as the gateway would.
    pub async fn callback(&self, body: Value) -> (StatusCode, Value) {
        self.callback_signed(
            &body,
            commerce_config::dev::GATEWAY_CALLBACK_SECRET,
            chrono::Utc::now().timestamp(),
        )
        .await
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db.url).await.unwrap()
    }

    /// A user created directly in the database (no password hashing: fast for mass tests),
    /// with a token minted by the app's own authenticator.
    pub async fn user_with_points(&self, login: &str, points: i64) -> (i64, String) {
        use commerce_api::infra::schema::users;
        let mut conn = self.conn().await;
        let id: i64 = diesel::insert_into(users::table)
            .values((
                users::login_id.eq(login),
                users::password_hash.eq("not-a-hash"),
                users::name.eq(login),
                users::email.eq(format!("{login}@example.com")),
                users::point_balance.eq(points),
            ))
            .returning(users::id)
            .get_result(&mut conn)
            .await
            .unwrap();
        (id, self.state.auth.issue(id, Role::User).unwrap())
    }

    pub async fn brand(&self) -> i64 {
        let (status, body) = self
            .post(
                "/api/v1/admin/brands",
                Some(&self.admin),
                json!({"name": "Acme", "description": "tools"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn product(&self, brand_id: i64, price: i64, stock: i64) -> i64 {
        let (status, body) = self
            .post(
                "/api/v1/admin/products",
                Some(&self.admin),
                json!({"brand_id": brand_id, "name": "Widget", "description": "", "price": price, "stock": stock}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn stock(&self, product_id: i64) -> i64 {
        use commerce_api::infra::schema::products;
        products::table
            .find(product_id)
            .select(products::stock)
            .first(&mut self.conn().await)
            .await
            .unwrap()
    }

    pub async fn balance(&self, user_id: i64) -> i64 {
        use commerce_api::infra::schema::users;
        users::table
            .find(user_id)
            .select(users::point_balance)
            .first(&mut self.conn().await)
            .await
            .unwrap()
    }

    /// Outbox event types, in insertion order.
    pub async fn outbox_types(&self) -> Vec<String> {
        use commerce_api::infra::schema::outbox;
        outbox::table
            .order(outbox::id)
            .select(outbox::event_type)
            .load(&mut self.conn().await)
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        commerce_testkit::count(&self.db.url, sql).await
    }

    /// How many of the order's `OrderPaid` and `OrderCancelled` events carry exactly the order's
    /// `paid_at` (as `occurred_at`, and as the cancellation's `paid_at`): the collector dates a
    /// sale and its cancellation by them, so they must agree to the microsecond.
    pub async fn events_dated_by_paid_at(&self, order_id: i64) -> i64 {
        self.count(&format!(
            "SELECT count(*) AS n FROM outbox e JOIN orders o ON o.id = {order_id}
              WHERE (e.envelope->'payload'->>'order_id')::bigint = o.id AND o.paid_at IS NOT NULL
                AND ((e.event_type = 'OrderPaid'
                      AND (e.envelope->>'occurred_at')::timestamptz = o.paid_at)
                  OR (e.event_type = 'OrderCancelled'
                      AND (e.envelope->'payload'->>'paid_at')::timestamptz = o.paid_at))"
        ))
        .await
    }
}
