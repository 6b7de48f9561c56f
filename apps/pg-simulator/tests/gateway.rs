//! The simulator on the wire, against its own real database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use pg_simulator::Simulator;
use pg_simulator::behaviour::Behaviour;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

struct Sim {
    base: String,
    sim: Arc<Simulator>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A client speaking as the merchant: the development API key on every request.
fn merchant() -> reqwest::Client {
    keyed("x-api-key", commerce_config::dev::GATEWAY_API_KEY)
}

/// A client sending `value` in `header` on every request.
fn keyed(header: &'static str, value: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::HeaderName::from_static(header),
            value.parse().unwrap(),
        )]))
        .build()
        .unwrap()
}

impl Sim {
    async fn start(database_url: &str, behaviour: Behaviour, seed: u64) -> Self {
        Self::start_with(pg_simulator::config::Config::local(
            database_url,
            behaviour,
            seed,
        ))
        .await
    }

    async fn start_with(config: pg_simulator::config::Config) -> Self {
        let app = pg_simulator::Application::build(config).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let sim = app.simulator();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        Self {
            base,
            sim,
            stop: Some(tx),
            task,
        }
    }

    /// A graceful stop, as on SIGTERM.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    async fn pay(&self, user: &str, body: &Value) -> (StatusCode, Value) {
        let res = merchant()
            .post(format!("{}/api/v1/payments", self.base))
            .header("X-USER-ID", user)
            .json(body)
            .send()
            .await
            .unwrap();
        (res.status(), res.json().await.unwrap_or(Value::Null))
    }

    /// A payment request with an `Idempotency-Key`, given up on after `timeout`.
    async fn pay_with_key(
        &self,
        user: &str,
        key: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<(StatusCode, Option<String>, Value), reqwest::Error> {
        let res = merchant()
            .post(format!("{}/api/v1/payments", self.base))
            .header("X-USER-ID", user)
            .header("Idempotency-Key", key)
            .json(body)
            .timeout(timeout)
            .send()
            .await?;
        let retry_after = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok((
            res.status(),
            retry_after,
            res.json().await.unwrap_or(Value::Null),
        ))
    }

    async fn refund(
        &self,
        user: &str,
        transaction_key: &str,
        key: Option<&str>,
        body: &Value,
    ) -> (StatusCode, Value) {
        let mut req = merchant()
            .post(format!(
                "{}/api/v1/payments/{transaction_key}/refunds",
                self.base
            ))
            .header("X-USER-ID", user)
            .json(body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let res = req.send().await.unwrap();
        (res.status(), res.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, user: &str, path: &str) -> (StatusCode, Value) {
        let res = merchant()
            .get(format!("{}{path}", self.base))
            .header("X-USER-ID", user)
            .send()
            .await
            .unwrap();
        (res.status(), res.json().await.unwrap_or(Value::Null))
    }
}

/// Collects the callbacks the simulator sends.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> Self {
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let store = received.clone();
        // Records each body whose signature verifies under the development secret, and a
        // marker for any other.
        let app = Router::new().route(
            "/callback",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let store = store.clone();
                    async move {
                        let signature = headers
                            .get(commerce_web::signature::HEADER)
                            .and_then(|v| v.to_str().ok());
                        let checked = commerce_web::signature::verify(
                            signature,
                            &body,
                            &[commerce_config::dev::GATEWAY_CALLBACK_SECRET],
                            chrono::Utc::now().timestamp(),
                            60,
                        );
                        store.lock().unwrap().push(match checked {
                            Ok(()) => serde_json::from_slice(&body).unwrap(),
                            Err(refused) => json!({"bad_signature": refused.as_str()}),
                        });
                        "ok"
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/callback", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, received }
    }

    fn all(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.all();
            if all.len() >= n {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} callbacks arrived",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn payment(order_id: &str, callback_url: &str) -> Value {
    json!({"order_id": order_id, "card_type": "SAMSUNG", "card_no": "1234-5678-9814-1451",
           "amount": 5000, "callback_url": callback_url})
}

async fn recorded(url: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query("SELECT count(*) AS n FROM payments")
        .get_result::<N>(&mut conn)
        .await
        .unwrap()
        .n
}

async fn db() -> commerce_testkit::TestDb {
    commerce_testkit::TestDb::new("pg_simulator", pg_simulator::MIGRATIONS).await
}

#[tokio::test]
async fn a_payment_is_accepted_pending_visible_to_its_owner_and_settled_with_one_callback() {
    let db = db().await;
    let sim = Sim::start(&db.url, Behaviour::reliable(), 1).await;
    let receiver = Receiver::start().await;

    let (status, accepted) = sim
        .pay("135135", &payment("1351039135", &receiver.url))
        .await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["status"], "PENDING");
    let key = accepted["transaction_key"].as_str().unwrap().to_owned();
    let (date, rest) = key.split_once(":TR:").unwrap();
    assert_eq!(date.len(), 8);
    assert!(rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_hexdigit()));

    let (status, tx) = sim.get("135135", &format!("/api/v1/payments/{key}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tx["order_id"], "1351039135");
    assert_eq!(tx["card_no"], "1234-****-****-1451", "masked");
    assert_eq!(tx["amount"], 5000);
    let (status, _) = sim
        .get("someone-else", &format!("/api/v1/payments/{key}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "only the owner sees it");
    let (_, listed) = sim
        .get("135135", "/api/v1/payments?order_id=1351039135")
        .await;
    assert_eq!(listed["transactions"].as_array().unwrap().len(), 1);
    let (_, none) = sim
        .get("someone-else", "/api/v1/payments?order_id=1351039135")
        .await;
    assert_eq!(none["transactions"], json!([]));

    let callbacks = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(callbacks[0]["transaction_key"], key.as_str());
    assert_eq!(callbacks[0]["status"], "SUCCESS");
    assert_eq!(callbacks[0]["card_no"], "1234-****-****-1451");
    let (_, tx) = sim.get("135135", &format!("/api/v1/payments/{key}")).await;
    assert_eq!(tx["status"], "SUCCESS");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.all().len(), 1, "one callback, never repeated");
}

#[tokio::test]
async fn bad_requests_get_400_and_failed_requests_record_nothing() {
    let db = db().await;
    let sim = Sim::start(
        &db.url,
        Behaviour {
            request_failure_rate: 1.0,
            ..Behaviour::reliable()
        },
        2,
    )
    .await;
    let good = payment("1", "http://127.0.0.1:9/callback");
    let mut bad = Vec::new();
    for (field, value) in [
        ("card_type", json!("VISA")),
        ("card_no", json!("1234567898141451")),
        ("amount", json!(0)),
        ("callback_url", json!("ftp://example.com")),
        ("order_id", json!("")),
    ] {
        let mut body = good.clone();
        body[field] = value;
        bad.push(body);
    }
    for body in bad {
        let (status, problem) = sim.pay("1", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(problem["code"], "VALIDATION_FAILED");
    }
    let (status, problem) = sim.pay(" ", &good).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["code"], "USER_ID_REQUIRED");

    let (status, problem) = sim.pay("1", &good).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(problem["code"], "GATEWAY_ERROR");
    assert_eq!(recorded(&db.url).await, 0);
}

#[tokio::test]
async fn a_fixed_seed_reproduces_the_same_answers() {
    let behaviour = Behaviour {
        request_failure_rate: 0.5,
        ..Behaviour::reliable()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let db = db().await;
        let sim = Sim::start(&db.url, behaviour, 42).await;
        let mut answers = Vec::new();
        for i in 0..20 {
            let (status, body) = sim
                .pay("7", &payment(&i.to_string(), "http://127.0.0.1:9/cb"))
                .await;
            // The key's suffix is drawn; its date prefix is the clock's.
            let suffix = body["transaction_key"]
                .as_str()
                .and_then(|k| k.split_once(":TR:"))
                .map(|(_, s)| s.to_owned());
            answers.push((status, suffix));
        }
        runs.push(answers);
        assert_eq!(sim.sim.dice.requests_received(), 20);
        sim.stop().await;
    }
    assert_eq!(runs[0], runs[1]);
    let failures = runs[0]
        .iter()
        .filter(|(s, _)| *s == StatusCode::INTERNAL_SERVER_ERROR)
        .count();
    assert!((3..=17).contains(&failures), "{failures} of 20 failed");
}

#[tokio::test]
async fn accepted_payments_survive_a_restart_and_two_simulators_settle_each_once() {
    let db = db().await;
    let slow = Behaviour {
        settle_min_ms: 1500,
        settle_max_ms: 1500,
        ..Behaviour::reliable()
    };
    let receiver = Receiver::start().await;
    let first = Sim::start(&db.url, slow, 3).await;
    let mut keys = Vec::new();
    for i in 0..10 {
        let (status, body) = first
            .pay("9", &payment(&format!("r{i}"), &receiver.url))
            .await;
        assert_eq!(status, StatusCode::OK);
        keys.push(body["transaction_key"].as_str().unwrap().to_owned());
    }
    // Stopped before anything settled; two fresh simulators share the database.
    first.stop().await;
    assert!(receiver.all().is_empty());
    let a = Sim::start(&db.url, Behaviour::reliable(), 4).await;
    let b = Sim::start(&db.url, Behaviour::reliable(), 5).await;
    let callbacks = receiver.wait_for(10, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for c in receiver.all() {
        *per_key
            .entry(c["transaction_key"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(callbacks.len(), 10);
    for key in &keys {
        assert_eq!(per_key.get(key), Some(&1), "{key} settled once");
    }
    for sim in [&a, &b] {
        let (_, tx) = sim.get("9", &format!("/api/v1/payments/{}", keys[0])).await;
        assert_eq!(tx["status"], "SUCCESS");
    }
}

#[tokio::test]
async fn an_idempotency_key_returns_the_original_payment_and_refuses_another_body() {
    let db = db().await;
    let sim = Sim::start(&db.url, Behaviour::reliable(), 7).await;
    let receiver = Receiver::start().await;
    let body = payment("700", &receiver.url);
    let long = Duration::from_secs(10);
    let (status, _, first) = sim.pay_with_key("7", "k-700", &body, long).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, _, again) = sim.pay_with_key("7", "k-700", &body, long).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["transaction_key"], first["transaction_key"]);
    let mut other = body.clone();
    other["amount"] = json!(9999);
    let (status, _, refused) = sim.pay_with_key("7", "k-700", &other, long).await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["code"], "IDEMPOTENCY_KEY_REUSED");
    // Keys are per user: another user's same key is another payment.
    let (status, _, theirs) = sim.pay_with_key("8", "k-700", &body, long).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_ne!(theirs["transaction_key"], first["transaction_key"]);
    assert_eq!(recorded(&db.url).await, 2);
    let (status, bad) = {
        let res = merchant()
            .post(format!("{}/api/v1/payments", sim.base))
            .header("X-USER-ID", "7")
            .header("Idempotency-Key", "has space")
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bad["code"], "INVALID_IDEMPOTENCY_KEY");
}

#[tokio::test]
async fn a_late_recording_gateway_finishes_after_the_client_hung_up_and_a_retry_waits_for_it() {
    let db = db().await;
    let sim = Sim::start(
        &db.url,
        Behaviour {
            record_delay_ms: 1000,
            ..Behaviour::reliable()
        },
        8,
    )
    .await;
    let receiver = Receiver::start().await;
    let body = payment("800", &receiver.url);
    let gave_up = sim
        .pay_with_key("8", "k-800", &body, Duration::from_millis(200))
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()), "the client hung up");
    // Still being processed: a retry with the key is asked to come back, and records nothing.
    let (status, retry_after, busy) = sim
        .pay_with_key("8", "k-800", &body, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{busy}");
    assert_eq!(busy["code"], "REQUEST_IN_PROGRESS");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // The first request is recorded although nobody waits for it any more.
    commerce_testkit::until(
        "the payment is recorded",
        Duration::from_secs(10),
        async || recorded(&db.url).await == 1,
    )
    .await;
    let (status, _, replayed) = sim
        .pay_with_key("8", "k-800", &body, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = sim.get("8", "/api/v1/payments?order_id=800").await;
    assert_eq!(listed["transactions"].as_array().unwrap().len(), 1);
    assert_eq!(
        replayed["transaction_key"],
        listed["transactions"][0]["transaction_key"]
    );
}

#[tokio::test]
async fn a_settled_payment_is_refunded_in_full_once_whatever_the_retries() {
    let db = db().await;
    let sim = Sim::start(&db.url, Behaviour::reliable(), 11).await;
    let receiver = Receiver::start().await;
    let long = Duration::from_secs(10);
    let (status, _, paid) = sim
        .pay_with_key("7", "pay-1", &payment("900", &receiver.url), long)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{paid}");
    let key = paid["transaction_key"].as_str().unwrap().to_owned();
    let full = json!({"amount": 5000, "reason": "order cancelled"});

    // Not settled yet: come back later.
    let (status, early) = sim.refund("7", &key, Some("rf-1"), &full).await;
    assert_eq!(status, StatusCode::CONFLICT, "{early}");
    assert_eq!(early["code"], "PAYMENT_NOT_SETTLED");
    receiver.wait_for(1, long).await;

    // Someone else's payment does not exist; nothing or more than the payment is refused;
    // failures record nothing.
    let (status, _) = sim.refund("8", &key, Some("rf-1"), &full).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, nothing) = sim
        .refund("7", &key, Some("rf-1"), &json!({"amount": 0}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{nothing}");
    let (status, more) = sim
        .refund("7", &key, Some("rf-1"), &json!({"amount": 5001}))
        .await;
    assert_eq!(
        (status, more["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("REFUND_EXCEEDS_REMAINING")
        )
    );
    sim.sim
        .dice
        .set(|b| {
            b.refund_failure_rate = 1.0;
            b.failure_status = 503;
        })
        .unwrap();
    let (status, failed) = sim.refund("7", &key, Some("rf-1"), &full).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{failed}");
    sim.sim.dice.set(|b| b.refund_failure_rate = 0.0).unwrap();
    let (_, still) = sim.get("7", &format!("/api/v1/payments/{key}")).await;
    assert_eq!(still["status"], "SUCCESS");

    let (status, refund) = sim.refund("7", &key, Some("rf-1"), &full).await;
    assert_eq!(status, StatusCode::OK, "{refund}");
    assert_eq!(refund["transaction_key"], key.as_str());
    assert_eq!(refund["amount"], 5000);
    assert_eq!(refund["status"], "REFUNDED");
    let (status, again) = sim.refund("7", &key, Some("rf-1"), &full).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again["refund_key"], refund["refund_key"],
        "a repeat gets the original"
    );
    let (status, other_key) = sim.refund("7", &key, Some("rf-2"), &full).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{other_key}");
    assert_eq!(other_key["code"], "ALREADY_REFUNDED");
    let (status, no_key) = sim.refund("7", &key, None, &full).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{no_key}");
    let (_, now) = sim.get("7", &format!("/api/v1/payments/{key}")).await;
    assert_eq!(now["status"], "REFUNDED");

    // The key belongs to that refund: using it for another payment is refused.
    let (_, _, second) = sim
        .pay_with_key("7", "pay-2", &payment("901", &receiver.url), long)
        .await
        .unwrap();
    receiver.wait_for(2, long).await;
    let second_key = second["transaction_key"].as_str().unwrap();
    let (status, reused) = sim.refund("7", second_key, Some("rf-1"), &full).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reused}");
    assert_eq!(reused["code"], "IDEMPOTENCY_KEY_REUSED");

    // A declined payment has nothing to refund.
    sim.sim.dice.set(|b| b.success_rate = 0.0).unwrap();
    let (_, _, declined) = sim
        .pay_with_key("7", "pay-3", &payment("902", &receiver.url), long)
        .await
        .unwrap();
    receiver.wait_for(3, long).await;
    let declined_key = declined["transaction_key"].as_str().unwrap();
    let (status, refused) = sim.refund("7", declined_key, Some("rf-3"), &full).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["code"], "PAYMENT_NOT_REFUNDABLE");

    let refunds = {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
        diesel::sql_query("SELECT count(*) AS n FROM refunds")
            .get_result::<N>(&mut conn)
            .await
            .unwrap()
            .n
    };
    assert_eq!(refunds, 1);
}

/// A payment refunded in parts: each part up to what is left, each idempotent by its key; the
/// payment counts what went back and is `REFUNDED` once all of it did.
#[tokio::test]
async fn a_payment_is_refunded_in_parts_never_beyond_what_was_captured() {
    let db = db().await;
    let sim = Sim::start(&db.url, Behaviour::reliable(), 12).await;
    let receiver = Receiver::start().await;
    let long = Duration::from_secs(10);
    let (_, _, paid) = sim
        .pay_with_key("7", "pay-p", &payment("920", &receiver.url), long)
        .await
        .unwrap();
    receiver.wait_for(1, long).await;
    let key = paid["transaction_key"].as_str().unwrap().to_owned();
    let part = |amount: i64| json!({"amount": amount, "reason": "one partner's part cancelled"});

    let (status, first) = sim.refund("7", &key, Some("rf-a"), &part(2000)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["amount"], 2000);
    let (_, payment_now) = sim.get("7", &format!("/api/v1/payments/{key}")).await;
    assert_eq!(
        (&payment_now["status"], &payment_now["refunded_amount"]),
        (&json!("SUCCESS"), &json!(2000)),
        "{payment_now}"
    );
    // The same part again is the same refund; the key with another amount is refused.
    let (_, again) = sim.refund("7", &key, Some("rf-a"), &part(2000)).await;
    assert_eq!(again["refund_key"], first["refund_key"]);
    let (status, reused) = sim.refund("7", &key, Some("rf-a"), &part(1000)).await;
    assert_eq!(
        (status, reused["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("IDEMPOTENCY_KEY_REUSED")
        )
    );
    // Never more than what is left (3,000).
    let (status, more) = sim.refund("7", &key, Some("rf-b"), &part(3001)).await;
    assert_eq!(
        (status, more["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("REFUND_EXCEEDS_REMAINING")
        )
    );
    let (status, last) = sim.refund("7", &key, Some("rf-c"), &part(3000)).await;
    assert_eq!(status, StatusCode::OK, "{last}");
    let (_, done) = sim.get("7", &format!("/api/v1/payments/{key}")).await;
    assert_eq!(
        (
            &done["status"],
            &done["refunded_amount"],
            &done["refund_key"]
        ),
        (&json!("REFUNDED"), &json!(5000), &last["refund_key"]),
        "{done}"
    );
    let (status, after) = sim.refund("7", &key, Some("rf-d"), &part(1)).await;
    assert_eq!(
        (status, after["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("ALREADY_REFUNDED"))
    );
    #[derive(QueryableByName)]
    struct Sum {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        total: i64,
    }
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let sum: Sum = diesel::sql_query(
        "SELECT count(*) AS n, coalesce(sum(amount), 0)::bigint AS total FROM refunds",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!((sum.n, sum.total), (2, 5000));
}

#[tokio::test]
async fn callbacks_go_only_to_allowed_hosts() {
    let db = db().await;
    let sim = Sim::start(&db.url, Behaviour::reliable(), 13).await;
    let long = Duration::from_secs(10);
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://example.com/callback",
        "http://127.0.0.1.example.com/callback",
    ] {
        let (status, _, refused) = sim
            .pay_with_key("7", &format!("k-{url}"), &payment("950", url), long)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {refused}");
        assert_eq!(refused["errors"][0]["field"], "callback_url", "{refused}");
    }
    assert_eq!(recorded(&db.url).await, 0, "nothing was accepted");
    let receiver = Receiver::start().await;
    let (status, _, accepted) = sim
        .pay_with_key("7", "k-local", &payment("951", &receiver.url), long)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{accepted}");
    receiver.wait_for(1, long).await;
}

#[tokio::test]
async fn nul_characters_are_refused_in_paths_queries_and_bodies() {
    let db = db().await;
    let sim = Sim::start(&db.url, Behaviour::reliable(), 17).await;
    let (status, body) = sim.get("7", "/api/v1/payments/a%00b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "INVALID_TEXT");
    let (status, body) = sim.get("7", "/api/v1/payments?order_id=1%00").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "INVALID_TEXT");
    let (status, _, body) = sim
        .pay_with_key(
            "7",
            "k-nul",
            &payment("9\u{0}60", "http://127.0.0.1:9/cb"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "INVALID_TEXT");
    assert_eq!(recorded(&db.url).await, 0);
}

#[tokio::test]
async fn only_the_merchants_keys_open_the_gateway_and_two_are_valid_while_rotating() {
    let db = db().await;
    let sim = Sim::start_with(pg_simulator::config::Config {
        api_keys: vec![
            "old-merchant-key-0001".into(),
            "new-merchant-key-0002".into(),
        ],
        ..pg_simulator::config::Config::local(&db.url, Behaviour::reliable(), 21)
    })
    .await;
    let receiver = Receiver::start().await;
    let pay = |client: reqwest::Client, order: &'static str| {
        let (base, body) = (sim.base.clone(), payment(order, &receiver.url));
        async move {
            let res = client
                .post(format!("{base}/api/v1/payments"))
                .header("X-USER-ID", "7")
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    for client in [
        reqwest::Client::new(),
        keyed("x-api-key", "a-guessed-merchant-key"),
        keyed("x-api-key", "old-merchant-key-000"),
        merchant(),
    ] {
        let (status, body) = pay(client, "1").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("INVALID_API_KEY")),
            "{body}"
        );
    }
    assert_eq!(recorded(&db.url).await, 0);
    let (status, old) = pay(keyed("x-api-key", "old-merchant-key-0001"), "2").await;
    assert_eq!(status, StatusCode::OK, "{old}");
    let (status, new) = pay(keyed("x-api-key", "new-merchant-key-0002"), "3").await;
    assert_eq!(status, StatusCode::OK, "{new}");
    assert_eq!(recorded(&db.url).await, 2);
    receiver.wait_for(2, Duration::from_secs(10)).await;

    // Reading and refunding need a key too: nobody else can refund the merchant's payments.
    let key = old["transaction_key"].as_str().unwrap();
    let anyone = reqwest::Client::new();
    let read = anyone
        .get(format!("{}/api/v1/payments/{key}", sim.base))
        .header("X-USER-ID", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::UNAUTHORIZED);
    let refund = anyone
        .post(format!("{}/api/v1/payments/{key}/refunds", sim.base))
        .header("X-USER-ID", "7")
        .json(&json!({"amount": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(refund.status(), StatusCode::UNAUTHORIZED);
    let (_, still) = {
        let res = keyed("x-api-key", "new-merchant-key-0002")
            .get(format!("{}/api/v1/payments/{key}", sim.base))
            .header("X-USER-ID", "7")
            .send()
            .await
            .unwrap();
        (res.status(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(still["status"], "SUCCESS");
}

#[tokio::test]
async fn the_gateway_reverses_payments_from_its_console_and_tells_the_merchant_by_a_signed_webhook()
{
    commerce_telemetry::init_tracing("pg-simulator");
    let db = db().await;
    let sim = Sim::start(&db.url, Behaviour::reliable(), 22).await;
    let receiver = Receiver::start().await;
    let long = Duration::from_secs(10);
    let mut keys = Vec::new();
    for order in ["31", "32"] {
        let (status, accepted) = sim.pay("7", &payment(order, &receiver.url)).await;
        assert_eq!(status, StatusCode::OK, "{accepted}");
        keys.push(accepted["transaction_key"].as_str().unwrap().to_owned());
    }
    let settled = receiver.wait_for(2, long).await;
    assert!(
        settled.iter().all(|c| c["event"] == "payment.settled"),
        "signed settlement callbacks: {settled:?}"
    );

    let console = |key: &str, what: &str| format!("{}/console/v1/payments/{key}/{what}", sim.base);
    // The merchant's key does not open the console.
    let res = merchant()
        .post(console(&keys[0], "refunds"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let operator = keyed("x-console-key", pg_simulator::config::DEV_CONSOLE_KEY);
    let res = operator
        .post(console(&keys[0], "refunds"))
        .json(&json!({"reason": "the customer disputed it by phone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
    let res = operator
        .post(console(&keys[1], "chargebacks"))
        .json(&json!({"reason": "fraudulent use reported by the issuer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let again = operator
        .post(console(&keys[0], "chargebacks"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let all = receiver.wait_for(4, long).await;
    let webhooks: Vec<(String, String, String)> = all[2..]
        .iter()
        .map(|w| {
            (
                w["event"].as_str().unwrap_or("?").to_owned(),
                w["transaction_key"].as_str().unwrap_or("?").to_owned(),
                w["status"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut want = vec![
        (
            "payment.charged_back".to_owned(),
            keys[1].clone(),
            "REFUNDED".to_owned(),
        ),
        (
            "payment.refunded".to_owned(),
            keys[0].clone(),
            "REFUNDED".to_owned(),
        ),
    ];
    want.sort();
    assert_eq!(webhooks, want, "{all:?}");
    for key in &keys {
        let (_, now) = sim.get("7", &format!("/api/v1/payments/{key}")).await;
        assert_eq!(now["status"], "REFUNDED");
    }
}

#[tokio::test]
async fn callbacks_are_pinned_to_an_origin_and_never_follow_redirects() {
    let db = db().await;
    let receiver = Receiver::start().await;
    let target = reqwest::Url::parse(&receiver.url).unwrap();
    let origin = format!("http://127.0.0.1:{}", target.port().unwrap());
    // A listener that redirects every callback to the receiver.
    let redirect_to = receiver.url.clone();
    let app = Router::new().route(
        "/callback",
        post(move || {
            let to = redirect_to.clone();
            async move { axum::response::Redirect::temporary(&to) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector = format!("http://{}/callback", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sim = Sim::start_with(pg_simulator::config::Config {
        callback_hosts: vec![origin.clone(), "127.0.0.1".into()],
        ..pg_simulator::config::Config::local(&db.url, Behaviour::reliable(), 23)
    })
    .await;
    let pinned = Sim::start_with(pg_simulator::config::Config {
        callback_hosts: vec![origin],
        ..pg_simulator::config::Config::local(&db.url, Behaviour::reliable(), 24)
    })
    .await;
    let long = Duration::from_secs(10);
    let other_port = redirector.clone();
    let other_scheme = receiver.url.replace("http://", "https://");
    for url in [other_port.as_str(), other_scheme.as_str()] {
        let (status, _, refused) = pinned
            .pay_with_key("7", &format!("k-{url}"), &payment("960", url), long)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {refused}");
        assert_eq!(refused["errors"][0]["field"], "callback_url");
    }
    let (status, _, _) = pinned
        .pay_with_key("7", "k-pinned", &payment("961", &receiver.url), long)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    receiver.wait_for(1, long).await;

    // A callback answered with a redirect is not delivered anywhere else.
    let (status, _, redirected) = sim
        .pay_with_key("7", "k-redirect", &payment("962", &redirector), long)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{redirected}");
    let key = redirected["transaction_key"].as_str().unwrap().to_owned();
    commerce_testkit::until(
        "the redirected callback is recorded as failed",
        long,
        async || {
            commerce_testkit::count(
                &db.url,
                &format!(
                    "SELECT count(*) AS n FROM payments
                      WHERE transaction_key = '{key}' AND callback_status = 'FAILED'"
                ),
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(receiver.all().len(), 1, "the redirect was not followed");
}

#[tokio::test]
async fn request_digests_are_keyed_so_the_card_number_cannot_be_recovered() {
    let db = db().await;
    let sim = Sim::start(&db.url, Behaviour::reliable(), 25).await;
    let receiver = Receiver::start().await;
    let body = payment("970", &receiver.url);
    let (status, _, _) = sim
        .pay_with_key("7", "k-digest", &body, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let parts: Vec<String> = ["order_id", "card_type", "card_no", "amount", "callback_url"]
        .iter()
        .map(|f| match &body[f] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    let unkeyed = commerce_db::idempotency::fingerprint(&parts);
    let keyed = commerce_web::signature::keyed_digest(
        pg_simulator::config::DEV_REQUEST_HASH_KEY.as_bytes(),
        &parts,
    );
    let stored = |hash: &str| {
        format!("SELECT count(*) AS n FROM idempotency_keys WHERE request_hash = '{hash}'")
    };
    assert_eq!(commerce_testkit::count(&db.url, &stored(&keyed)).await, 1);
    assert_eq!(commerce_testkit::count(&db.url, &stored(&unkeyed)).await, 0);
}
