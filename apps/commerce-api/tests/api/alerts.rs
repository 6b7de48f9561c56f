//! Wishlist alerts end to end: decided in the transaction that restocks a product or by the
//! planner before a drop, fanned out in subscription order, delivered by real SMTP to a server of
//! the test's own (its Maildir is what the customer got), at most once per customer and occasion
//! with several instances and a sender killed mid-delivery.

use std::collections::HashMap;
use std::time::Duration;

use commerce_testkit::{Mail, SmtpOptions, SmtpSink, eventually, until};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, spawn_app_with};

/// Alert settings for a test talking to `sink`, with quick timings; `extra` on top.
fn alert_env(sink: &SmtpSink, extra: &[(&'static str, &'static str)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = vec![
        ("WISHLIST_ALERTS_ENABLED".into(), "true".into()),
        ("WISHLIST_ALERTS_INTERVAL_MS".into(), "100".into()),
        ("SMTP_PORT".into(), sink.port.to_string()),
        ("SMTP_TIMEOUT_MS".into(), "2000".into()),
        ("WISHLIST_ALERT_SEND_RATE".into(), "off".into()),
    ];
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push(((*k).into(), (*v).into()));
    }
    vars
}

fn borrowed(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `n` customers (`<prefix>-00@example.com`, …) who add `product` to their wishlists one after
/// another, so their subscription order is their number's. Returns (id, email) in that order.
async fn subscribers(app: &TestApp, prefix: &str, n: usize, product: i64) -> Vec<(i64, String)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let login = format!("{prefix}-{i:02}");
        let (id, token) = app.user_with_points(&login, 0).await;
        let (status, body) = app
            .call(
                Method::PUT,
                &format!("/api/v1/users/me/wishlist/{product}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        out.push((id, format!("{login}@example.com")));
    }
    out
}

/// An admin sets `product`'s stock (a restock when it was 0).
async fn set_stock(app: &TestApp, product: i64, stock: i64) {
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/admin/products/{product}"),
            Some(&app.admin),
            Some(json!({"stock": stock})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// How many messages each recipient got.
fn per_recipient(mails: &[Mail]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for mail in mails {
        *counts.entry(mail.to.clone()).or_insert(0) += 1;
    }
    counts
}

/// The alert id a message's Message-ID names.
fn alert_id(mail: &Mail) -> i64 {
    let id = mail.header("message-id").expect("a Message-ID");
    id.trim_start_matches("<wishlist-alert-")
        .split('@')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an alert's Message-ID: {id}"))
}

async fn status_count(app: &TestApp, status: &str) -> i64 {
    app.count(&format!(
        "SELECT count(*) AS n FROM wishlist_alerts WHERE status = '{status}'"
    ))
    .await
}

#[tokio::test]
async fn a_restock_by_cancellation_is_told_to_each_subscriber_once_with_two_instances_and_a_killed_sender()
 {
    let sink = SmtpSink::start().await;
    let app = spawn_app_with(&[("WISHLIST_ALERTS_ENABLED", "false")]).await;
    let brand = app.brand().await;
    let product = app.product(brand, 1000, 1).await;
    // A buyer takes the last unit; sixty customers wait for it.
    let (_, buyer) = app.user_with_points("alert-buyer", 10_000).await;
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&buyer),
            json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(app.stock(product).await, 0);
    let subs = subscribers(&app, "waiting", 60, product).await;

    // The cancellation puts the unit back: the restock is decided in its transaction.
    let (status, body) = app
        .post(
            &format!("/api/v1/orders/{}/cancel", order["order_id"]),
            Some(&buyer),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM wishlist_occasions
              WHERE product_id = {product} AND kind = 'RESTOCK' AND units = 1"
        ))
        .await,
        1
    );

    // A real API process sends alone, one message at a time, 20 a second; the SMTP server
    // stores the 20th customer's message and holds its answer.
    let held = subs[19].1.clone();
    sink.hold(&[&held], Duration::from_secs(15));
    let env = alert_env(
        &sink,
        &[
            ("WISHLIST_ALERT_SEND_RATE", "20/s"),
            ("SMTP_CONNECTIONS", "1"),
        ],
    );
    let (mut child, _) = app.child_process(&borrowed(&env)).await;
    until(
        "the child hands the 20th alert over",
        Duration::from_secs(30),
        async || {
            app.count(&format!(
                "SELECT count(*) AS n FROM wishlist_alerts
                  WHERE user_id = {} AND sending_since IS NOT NULL",
                subs[19].0
            ))
            .await
                == 1
                && sink.messages().iter().any(|m| m.to == held)
        },
    )
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let before_kill = sink.messages();
    assert_eq!(before_kill.len(), 20, "the child sent the first twenty");
    assert_eq!(
        before_kill.iter().map(|m| m.to.clone()).collect::<Vec<_>>(),
        subs[..20]
            .iter()
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>(),
        "in the order the customers subscribed"
    );

    // Two instances take over: the rest are sent, and the one the child was handing over is
    // not sent again once its claim runs out.
    sink.hold(&[], Duration::ZERO);
    let env = alert_env(&sink, &[("WISHLIST_ALERT_SEND_RATE", "20/s")]);
    let one = app.another_instance(&borrowed(&env)).await;
    let two = app.another_instance(&borrowed(&env)).await;
    until(
        "every alert is settled",
        Duration::from_secs(40),
        async || status_count(&app, "QUEUED").await == 0,
    )
    .await;
    assert_eq!(status_count(&app, "SENT").await, 59);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM wishlist_alerts
              WHERE status = 'UNCONFIRMED' AND user_id = {} AND last_error LIKE '%stopped%'",
            subs[19].0
        ))
        .await,
        1
    );
    let mails = sink.messages();
    assert_eq!(mails.len(), 60, "one message per subscriber, none twice");
    let counts = per_recipient(&mails);
    for (_, email) in &subs {
        assert_eq!(counts.get(email), Some(&1), "{email}");
    }
    // Alerts were numbered in subscription order.
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM (
                SELECT id, row_number() OVER (ORDER BY id) AS by_id,
                       row_number() OVER (ORDER BY subscribed_at, user_id) AS by_subscription
                  FROM wishlist_alerts) a WHERE by_id <> by_subscription"
        )
        .await,
        0
    );
    // The two survivors kept to the shared rate: 40 messages, 50 ms apart (recorded when each
    // server's answer came back, so give the first a head start of a few answers).
    let spread_ms = app
        .count(
            "SELECT (EXTRACT(EPOCH FROM max(sent_at) - min(sent_at)) * 1000)::bigint AS n
               FROM wishlist_alerts WHERE status = 'SENT' AND id > 20",
        )
        .await;
    assert!(spread_ms >= 39 * 50 - 150, "40 sends in {spread_ms} ms");

    // What the customer reads.
    let first = &mails[0];
    assert_eq!(first.subject(), "Back in stock: Widget");
    assert!(
        first.body.contains("first come, first served"),
        "one unit for sixty: {}",
        first.body
    );
    assert!(
        first.body.contains(&format!("/api/v1/products/{product}")),
        "{}",
        first.body
    );
    assert_eq!(
        app.count(&format!(
            "SELECT user_id AS n FROM wishlist_alerts WHERE id = {}",
            alert_id(first)
        ))
        .await,
        subs[0].0
    );
    drop((one, two));
}

#[tokio::test]
async fn an_edit_restock_is_told_once_within_the_quiet_period_and_a_drop_once_before_it_opens() {
    let sink = SmtpSink::start().await;
    let env = alert_env(&sink, &[]);
    let app = spawn_app_with(&borrowed(&env)).await;
    let brand = app.brand().await;
    let product = app.product(brand, 1000, 0).await;
    let subs = subscribers(&app, "restock", 3, product).await;

    // An admin's edit restocks it with more units than subscribers.
    set_stock(&app, product, 5).await;
    until(
        "three restock alerts are sent",
        Duration::from_secs(20),
        async || status_count(&app, "SENT").await == 3,
    )
    .await;
    // Sold out and back within the quiet period: a second occasion, nobody told twice.
    set_stock(&app, product, 0).await;
    set_stock(&app, product, 4).await;
    until(
        "the second restock is fanned out",
        Duration::from_secs(20),
        async || {
            app.count(
                "SELECT count(*) AS n FROM wishlist_occasions
                  WHERE kind = 'RESTOCK' AND fanned_out_at IS NOT NULL",
            )
            .await
                == 2
        },
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) AS n FROM wishlist_alerts").await,
        3
    );
    let mails = sink.messages();
    assert_eq!(mails.len(), 3);
    assert!(
        !mails[0].body.contains("first come"),
        "five units for three: {}",
        mails[0].body
    );

    // A drop opening in 30 minutes, inside the one-hour lead: its subscribers are told once,
    // however many passes the planners make.
    let (status, body) = app
        .post(
            "/api/v1/admin/products",
            Some(&app.admin),
            json!({"brand_id": brand, "name": "Limited", "description": "", "price": 5000, "stock": 0,
                   "sale_starts_at": (chrono::Utc::now() + chrono::Duration::minutes(30)).to_rfc3339(),
                   "max_per_user": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let drop_id = body["id"].as_i64().unwrap();
    let fans = subscribers(&app, "drop", 4, drop_id).await;
    // Stocked before its window opens: not a restock anyone is told of (the pre-sale alert is).
    set_stock(&app, drop_id, 10).await;
    until(
        "four pre-sale alerts are sent",
        Duration::from_secs(20),
        async || status_count(&app, "SENT").await == 7,
    )
    .await;
    let settings = app.state.config.alerts.clone();
    for _ in 0..3 {
        commerce_api::domain::alerts::plan(&app.state.db, &settings)
            .await
            .unwrap();
    }
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM wishlist_occasions WHERE product_id = {drop_id}"
        ))
        .await,
        1,
        "one pre-sale occasion, and no restock"
    );
    let mails = sink.messages();
    assert_eq!(mails.len(), 7);
    let counts = per_recipient(&mails);
    for (_, email) in subs.iter().chain(&fans) {
        assert_eq!(counts.get(email), Some(&1), "{email}");
    }
    let presale: Vec<&Mail> = mails.iter().filter(|m| m.to.starts_with("drop-")).collect();
    assert!(
        presale[0].subject().starts_with("Limited goes on sale at "),
        "{}",
        presale[0].subject()
    );
    assert!(
        presale[0].subject().ends_with("KST"),
        "in the business time zone"
    );
}

#[tokio::test]
async fn a_refused_delivery_is_retried_then_dead_lettered_and_an_admin_sends_it_again() {
    let sink = SmtpSink::start().await;
    let env = alert_env(
        &sink,
        &[
            ("WISHLIST_ALERT_MAX_ATTEMPTS", "3"),
            ("WISHLIST_ALERT_RETRY_BASE_MS", "50"),
        ],
    );
    let app = spawn_app_with(&borrowed(&env)).await;
    let brand = app.brand().await;
    let product = app.product(brand, 1000, 0).await;
    let subs = subscribers(&app, "refused", 3, product).await;
    // The first customer's mailbox refuses mail for now.
    sink.reject(&[&subs[0].1], 451);
    set_stock(&app, product, 2).await;
    until(
        "the refused alert is dead-lettered",
        Duration::from_secs(20),
        async || status_count(&app, "FAILED").await == 1 && status_count(&app, "SENT").await == 2,
    )
    .await;
    assert_eq!(
        app.count(&format!(
            "SELECT attempts::bigint AS n FROM wishlist_alerts
              WHERE user_id = {} AND status = 'FAILED' AND last_error LIKE '%451%'",
            subs[0].0
        ))
        .await,
        3,
        "three attempts, then the dead letter"
    );
    assert_eq!(per_recipient(&sink.messages()).get(&subs[0].1), None);

    // An admin lists it and sends it again once the mailbox takes mail.
    let (status, list) = app
        .get(
            "/api/v1/admin/wishlist-alerts?status=FAILED",
            Some(&app.admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total_elements"], 1);
    let alert = &list["content"][0];
    assert_eq!(alert["user_id"], subs[0].0);
    assert_eq!(alert["product_id"], product);
    assert_eq!(alert["kind"], "RESTOCK");
    assert_eq!(alert["attempts"], 3);
    let id = alert["id"].as_i64().unwrap();
    sink.reject(&[], 451);
    let (status, body) = app
        .post(
            &format!("/api/v1/admin/wishlist-alerts/{id}/retry"),
            Some(&app.admin),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "QUEUED");
    let sent = eventually(
        "the retried alert is sent",
        Duration::from_secs(20),
        async || {
            let counts = per_recipient(&sink.messages());
            match counts.get(&subs[0].1) {
                Some(n) => Ok(*n),
                None => Err(counts.len()),
            }
        },
    )
    .await;
    assert_eq!(sent, 1);
    until("it is recorded sent", Duration::from_secs(10), async || {
        status_count(&app, "SENT").await == 3
    })
    .await;

    // What cannot be retried, and bad requests.
    let (status, body) = app
        .post(
            &format!("/api/v1/admin/wishlist-alerts/{id}/retry"),
            Some(&app.admin),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("NOTHING_TO_RETRY"))
    );
    let (status, body) = app
        .post(
            "/api/v1/admin/wishlist-alerts/999999/retry",
            Some(&app.admin),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("WISHLIST_ALERT_NOT_FOUND"))
    );
    let (status, body) = app
        .get(
            "/api/v1/admin/wishlist-alerts?status=SENT",
            Some(&app.admin),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = app
        .get(
            "/api/v1/admin/wishlist-alerts",
            Some(&subs_token(&app).await),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A permanent refusal is dead-lettered at once.
    let other = app.product(brand, 1000, 0).await;
    let late = subscribers(&app, "never", 1, other).await;
    sink.reject(&[&late[0].1], 550);
    set_stock(&app, other, 1).await;
    until(
        "the permanent refusal is dead-lettered",
        Duration::from_secs(20),
        async || {
            app.count(&format!(
                "SELECT count(*) AS n FROM wishlist_alerts
              WHERE user_id = {} AND status = 'FAILED' AND attempts = 1",
                late[0].0
            ))
            .await
                == 1
        },
    )
    .await;
}

async fn subs_token(app: &TestApp) -> String {
    app.user_with_points("not-an-admin", 0).await.1
}

#[tokio::test]
async fn alerts_go_through_starttls_with_credentials_read_from_a_file() {
    let dir = std::env::var("COMMERCE_TEST_TLS_DIR")
        .unwrap_or_else(|_| "/var/tmp/commerce-test-tls".into());
    let sink = SmtpSink::start_with(SmtpOptions {
        tls: Some((
            format!("{dir}/server.crt").into(),
            format!("{dir}/server.key").into(),
        )),
        auth: Some(("shop".into(), "relay-password".into())),
    })
    .await;
    let password = std::env::temp_dir().join(format!(
        "smtp-password-{}",
        commerce_testkit::unique_suffix()
    ));
    std::fs::write(&password, "relay-password\n").unwrap();
    let ca = format!("{dir}/ca.crt");
    let password_file = password.to_string_lossy().into_owned();
    let mut env = alert_env(&sink, &[]);
    env.extend([
        ("SMTP_SECURITY".to_owned(), "starttls".to_owned()),
        ("SMTP_CA_FILE".to_owned(), ca),
        ("SMTP_USERNAME".to_owned(), "shop".to_owned()),
        ("SMTP_PASSWORD_FILE".to_owned(), password_file),
    ]);
    let app = spawn_app_with(&borrowed(&env)).await;
    let brand = app.brand().await;
    let product = app.product(brand, 1000, 0).await;
    let subs = subscribers(&app, "secure", 2, product).await;
    set_stock(&app, product, 1).await;
    until(
        "both alerts are sent",
        Duration::from_secs(20),
        async || status_count(&app, "SENT").await == 2,
    )
    .await;
    let counts = per_recipient(&sink.messages());
    for (_, email) in &subs {
        assert_eq!(counts.get(email), Some(&1), "{email}");
    }
    let _ = std::fs::remove_file(password);
}

#[tokio::test]
async fn a_customer_who_takes_the_product_off_their_wishlist_before_the_send_is_not_told() {
    let sink = SmtpSink::start().await;
    // This instance plans but does not send: the fan-out is run here, then a sender starts.
    let app = spawn_app_with(&[("WISHLIST_ALERTS_ENABLED", "false")]).await;
    let brand = app.brand().await;
    let product = app.product(brand, 1000, 0).await;
    let subs = subscribers(&app, "changed-mind", 2, product).await;
    set_stock(&app, product, 3).await;
    commerce_api::domain::alerts::plan(&app.state.db, &app.state.config.alerts)
        .await
        .unwrap();
    assert_eq!(status_count(&app, "QUEUED").await, 2);
    let token = app
        .state
        .auth
        .issue(subs[0].0, commerce_api::infra::auth::Role::User)
        .unwrap();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/users/me/wishlist/{product}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let env = alert_env(&sink, &[]);
    let _sender = app.another_instance(&borrowed(&env)).await;
    until(
        "both alerts are settled",
        Duration::from_secs(20),
        async || status_count(&app, "QUEUED").await == 0,
    )
    .await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM wishlist_alerts WHERE status = 'WITHDRAWN' AND user_id = {}",
            subs[0].0
        ))
        .await,
        1
    );
    let mails = sink.messages();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, subs[1].1);
}
