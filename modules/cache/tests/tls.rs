//! `rediss://` against a Redis serving TLS on 127.0.0.1:6390 with a certificate signed by a test
//! CA (started by `supports/dev/stack infra`).

use std::path::PathBuf;

const TLS_URL: &str = "rediss://127.0.0.1:6390";

fn ca(name: &str) -> String {
    let dir = PathBuf::from(
        std::env::var("COMMERCE_TEST_TLS_DIR")
            .unwrap_or_else(|_| "/var/tmp/commerce-test-tls".into()),
    );
    assert!(
        dir.join(name).is_file(),
        "the test TLS certificates are missing from {}: run `supports/dev/stack infra`",
        dir.display()
    );
    dir.join(name).display().to_string()
}

#[tokio::test]
async fn rediss_with_the_test_ca_round_trips_a_value() {
    assert!(
        std::net::TcpStream::connect("127.0.0.1:6390").is_ok(),
        "Redis with TLS is not listening on 127.0.0.1:6390: run `supports/dev/stack infra`"
    );
    let cache = commerce_cache::Cache::with_ca(TLS_URL, "tls-test:", Some(&ca("ca.crt"))).unwrap();
    let mut conn = cache
        .conn()
        .await
        .expect("a TLS connection with the right CA");
    let key = cache.key(&format!("k{}", std::process::id()));
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("over tls")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, "over tls");
}

#[tokio::test]
async fn rediss_refuses_a_server_certificate_from_another_ca() {
    let cache =
        commerce_cache::Cache::with_ca(TLS_URL, "tls-test:", Some(&ca("wrong-ca.crt"))).unwrap();
    assert!(cache.conn().await.is_err(), "the wrong CA must not connect");
    // And a plain client cannot talk to the TLS port at all.
    let plain = commerce_cache::Cache::new("redis://127.0.0.1:6390", "tls-test:").unwrap();
    assert!(plain.conn().await.is_err());
}

#[test]
fn a_ca_file_for_a_plain_url_is_a_configuration_error() {
    let err = commerce_cache::Cache::with_ca("redis://127.0.0.1:6379", "p:", Some("/x.pem"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("REDIS_CA_FILE"), "{err}");
}
