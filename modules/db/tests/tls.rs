//! TLS to PostgreSQL against the private instance `supports/dev/stack infra` starts for these
//! tests (127.0.0.1:5433, `COMMERCE_TEST_TLS_SERVER_URL`), which serves a certificate for
//! 127.0.0.1 signed by a test CA. The machine's own server is left as it is.

use std::path::PathBuf;

use diesel::QueryableByName;
use diesel::sql_types::Bool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

fn tls_dir() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("COMMERCE_TEST_TLS_DIR")
            .unwrap_or_else(|_| "/var/tmp/commerce-test-tls".into()),
    );
    assert!(
        dir.join("ca.crt").is_file(),
        "the test TLS certificates are missing from {}: run `supports/dev/stack infra`",
        dir.display()
    );
    dir
}

/// The TLS test server's URL (`COMMERCE_TEST_TLS_SERVER_URL`, host 127.0.0.1) with `host`
/// and `query`.
fn url(host: &str, query: &str) -> String {
    let server = std::env::var("COMMERCE_TEST_TLS_SERVER_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433".into());
    let server = server.replace("127.0.0.1", host);
    format!("{server}/postgres?{query}")
}

fn ca(name: &str) -> String {
    tls_dir().join(name).display().to_string()
}

#[derive(QueryableByName)]
struct Ssl {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

/// Whether the connection's own session is encrypted, as the server sees it.
async fn encrypted(conn: &mut AsyncPgConnection) -> bool {
    diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result::<Ssl>(conn)
        .await
        .expect("pg_stat_ssl answers")
        .ssl
}

#[tokio::test]
async fn verify_full_with_the_test_ca_connects_encrypted() {
    let mut conn = commerce_db::connect(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", ca("ca.crt")),
    ))
    .await
    .expect("verify-full with the right CA connects");
    assert!(encrypted(&mut conn).await);
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let err = commerce_db::connect(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", ca("wrong-ca.crt")),
    ))
    .await
    .err()
    .expect("a certificate the wrong CA did not sign is refused");
    assert!(format!("{err:#}").contains("certificate"), "{err:#}");
    // verify-ca checks the chain too.
    assert!(
        commerce_db::connect(&url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={}", ca("wrong-ca.crt")),
        ))
        .await
        .is_err()
    );
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    // The certificate names 127.0.0.1 only; `localhost` reaches the same server.
    let err = commerce_db::connect(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca("ca.crt")),
    ))
    .await
    .err()
    .expect("a certificate for another name is refused by verify-full");
    assert!(format!("{err:#}").contains("certificate"), "{err:#}");
    let mut conn = commerce_db::connect(&url(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", ca("ca.crt")),
    ))
    .await
    .expect("verify-ca accepts the right chain under another name");
    assert!(encrypted(&mut conn).await);
}

#[tokio::test]
async fn require_encrypts_and_no_sslmode_stays_plain() {
    let mut conn = commerce_db::connect(&url("127.0.0.1", "sslmode=require"))
        .await
        .expect("require connects without checking the certificate");
    assert!(encrypted(&mut conn).await);
    let mut conn = commerce_db::connect(&url("127.0.0.1", "application_name=plain"))
        .await
        .unwrap();
    assert!(!encrypted(&mut conn).await);
}

#[tokio::test]
async fn pooled_connections_use_tls_too() {
    let url = url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", ca("ca.crt")),
    );
    let pool = commerce_db::pool(&url, 2).unwrap();
    let mut conn = pool.get().await.expect("a pooled TLS connection");
    assert!(encrypted(&mut conn).await);
    let wrong = url.replace("ca.crt", "wrong-ca.crt");
    let pool = commerce_db::pool(&wrong, 2).unwrap();
    assert!(
        pool.get().await.is_err(),
        "the pool refuses the wrong CA too"
    );
}
