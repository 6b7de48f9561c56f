//! Graceful drain of a real API process: on SIGTERM readiness turns 503 while requests are
//! still served, then the listener closes and in-flight requests finish; no request sent before
//! readiness turned fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pg_simulator::behaviour::Behaviour;

use crate::payments::{Gateway, child_api};
use crate::support::spawn_app;

/// One request of the load: when it was sent (since the start) and whether it got a 200.
type Sent = (Duration, bool);

#[tokio::test]
async fn on_sigterm_readiness_turns_first_and_no_request_sent_before_it_fails() {
    let setup = spawn_app().await;
    let gw = Gateway::start(Behaviour::reliable()).await;
    let brand = setup.brand().await;
    let product = setup.product(brand, 1000, 5).await;
    let (mut child, base) = child_api(
        &setup,
        &gw,
        &[
            ("SHUTDOWN_READINESS_DELAY_MS", "1500"),
            ("SHUTDOWN_DRAIN_SECONDS", "5"),
        ],
    )
    .await;
    commerce_testkit::until(
        "the child API is ready",
        Duration::from_secs(20),
        async || {
            reqwest::get(format!("{base}/health/ready"))
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;

    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let turned: Arc<Mutex<Option<Duration>>> = Arc::default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, done, sent) = (client.clone(), done.clone(), sent.clone());
        let url = format!("{base}/api/v1/products/{product}");
        workers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let at = start.elapsed();
                let ok = client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                sent.lock().unwrap().push((at, ok));
                if !ok {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    {
        let (client, done, turned) = (client.clone(), done.clone(), turned.clone());
        let url = format!("{base}/health/ready");
        workers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let at = start.elapsed();
                if let Ok(r) = client.get(&url).send().await
                    && r.status() == 503
                {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    assert_eq!(body["status"], "DRAINING", "{body}");
                    turned.lock().unwrap().get_or_insert(at);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    // Under load for a moment, then SIGTERM.
    commerce_testkit::until("the load is running", Duration::from_secs(10), async || {
        sent.lock().unwrap().iter().filter(|(_, ok)| *ok).count() >= 200
    })
    .await;
    let signalled = start.elapsed();
    let pid = child.id().expect("the child runs").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the API exits within its drain deadline")
        .unwrap();
    let exited = start.elapsed();
    done.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(exit.success(), "a drained API exits cleanly: {exit:?}");

    let turned = turned
        .lock()
        .unwrap()
        .expect("readiness answered 503 before the process exited");
    assert!(turned >= signalled, "readiness turned after the signal");
    let sent = sent.lock().unwrap();
    let before: Vec<&Sent> = sent.iter().filter(|(at, _)| *at < turned).collect();
    let failed: Vec<&&Sent> = before.iter().filter(|(_, ok)| !ok).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests sent before readiness turned failed: {failed:?}",
        failed.len(),
        before.len()
    );
    // Requests kept being served while readiness said 503 (the load balancer's grace).
    let served_while_draining = sent.iter().filter(|(at, ok)| *at >= turned && *ok).count();
    assert!(
        served_while_draining > 0,
        "no request served after readiness turned"
    );
    assert!(
        exited >= signalled + Duration::from_millis(1500),
        "the listener stayed open for the readiness delay"
    );
}

#[tokio::test]
async fn a_management_listener_serves_health_and_metrics_apart_from_the_api() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let management = format!("127.0.0.1:{port}");
    let app = crate::support::spawn_app_with(&[("MANAGEMENT_ADDR", &management)]).await;
    for path in ["/health/ready", "/health/live", "/metrics"] {
        let public = reqwest::get(format!("{}{path}", app.base)).await.unwrap();
        assert_eq!(public.status(), 404, "{path} is not on the public port");
        let body: serde_json::Value = public.json().await.unwrap();
        assert_eq!(body["code"], "ROUTE_NOT_FOUND", "{body}");
        let private = reqwest::get(format!("http://{management}{path}"))
            .await
            .unwrap();
        assert_eq!(private.status(), 200, "{path} is on the management port");
    }
    let metrics = reqwest::get(format!("http://{management}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("app_draining 0"),
        "the drain gauge is exported"
    );
    // The API itself is on the public port.
    let (status, _) = app.get("/api/v1/products", None).await;
    assert_eq!(status, 200);
}
