//! Migrations keep the data they find.

use commerce_testkit::{TestDb, count};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

#[tokio::test]
async fn refunds_and_the_payment_history_take_over_every_payment_made_before_them() {
    let db = TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    // Back to the schema before refunds, with what it flagged: a cancelled paid order, a charge
    // that landed after its order was cancelled, and a paid order charged twice more.
    for down in [
        include_str!("../../migrations/2026-12-03-000002_payment_history/down.sql"),
        include_str!("../../migrations/2026-12-03-000001_refunds/down.sql"),
    ] {
        conn.batch_execute(down).await.unwrap();
    }
    conn.batch_execute(
        "DELETE FROM __diesel_schema_migrations WHERE version IN ('20261203000001', '20261203000002');
         INSERT INTO users (id, login_id, password_hash, name, email)
              VALUES (1, 'old', 'x', 'Old', 'old@example.com');
         INSERT INTO orders (id, user_id, status, total_amount, discount_amount, final_amount,
                             payment_method, paid_at)
              VALUES (1, 1, 'CANCELLED', 1000, 0, 1000, 'CARD', now()),
                     (2, 1, 'CANCELLED', 2000, 0, 2000, 'CARD', NULL),
                     (3, 1, 'PAID', 3000, 0, 3000, 'CARD', now());
         INSERT INTO payments (order_id, user_id, amount, card_type, card_no_masked, status,
                               transaction_key, refund_keys, next_check_at)
              VALUES (1, 1, 1000, 'KB', '1234-****-****-3456', 'REFUND_REQUIRED', 'T1', '{}', now()),
                     (2, 1, 2000, 'KB', '1234-****-****-3456', 'REFUND_REQUIRED', 'T2', '{}', now()),
                     (3, 1, 3000, 'KB', '1234-****-****-3456', 'SUCCESS', 'T3', '{T4,T5}', now());",
    )
    .await
    .unwrap();

    commerce_db::run_migrations(&db.url, commerce_api::MIGRATIONS)
        .await
        .unwrap();

    let refunds = |condition: &str| {
        format!("SELECT count(*) AS n FROM refunds WHERE status = 'REQUESTED' AND {condition}")
    };
    assert_eq!(
        count(
            &db.url,
            &refunds("order_id = 1 AND transaction_key = 'T1' AND amount = 1000 AND cause = 'ORDER_CANCELLED'")
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db.url,
            &refunds("order_id = 2 AND transaction_key = 'T2' AND amount = 2000 AND cause = 'CHARGED_AFTER_CLOSE'")
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db.url,
            &refunds("order_id = 3 AND transaction_key IN ('T4', 'T5') AND amount = 3000 AND cause = 'DUPLICATE_CHARGE'")
        )
        .await,
        2
    );
    assert_eq!(count(&db.url, "SELECT count(*) AS n FROM refunds").await, 4);
    // The payment history starts with what each payment was before it.
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) AS n FROM payment_events WHERE source = 'migration'
                AND ((kind = 'REQUESTED' AND status = 'PENDING')
                  OR (kind = 'RECORDED' AND status IN ('REFUND_REQUIRED', 'SUCCESS')))"
        )
        .await,
        6
    );
}
