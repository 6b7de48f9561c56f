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

/// Everything sold before partners belongs to the house partner: brands, products, and one
/// partner order per goods order, its amounts allocated to the lines as the API allocates them.
#[tokio::test]
async fn partners_take_over_the_catalog_and_orders_made_before_them() {
    let db = TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    revert_from(&mut conn, "2026-12-06-000001").await;
    // A points order of three lines with 1,000 off (10,000 / 5,000 / 1: remainders decide the
    // last units), a card order paid and refunded, a pending card order and a top-up.
    conn.batch_execute(
        "INSERT INTO users (id, login_id, password_hash, name, email, point_balance)
              VALUES (1, 'old', 'x', 'Old', 'old@example.com', 0);
         INSERT INTO brands (id, name) VALUES (1, 'Old brand');
         INSERT INTO products (id, brand_id, name, price, stock)
              VALUES (1, 1, 'a', 10000, 5), (2, 1, 'b', 5000, 5), (3, 1, 'c', 1, 5);
         INSERT INTO orders (id, user_id, status, total_amount, discount_amount, final_amount,
                             points_used, payment_method, paid_at, kind)
              VALUES (1, 1, 'PAID', 15001, 1000, 14001, 14001, 'POINT', now(), 'GOODS'),
                     (2, 1, 'REFUNDED', 5000, 0, 5000, 0, 'CARD', now(), 'GOODS'),
                     (3, 1, 'PENDING_PAYMENT', 10000, 0, 10000, 0, 'CARD', NULL, 'GOODS'),
                     (4, 1, 'PAID', 0, 0, 7000, 0, 'CARD', now(), 'POINT_TOP_UP');
         INSERT INTO order_items (order_id, product_id, quantity, unit_price)
              VALUES (1, 1, 1, 10000), (1, 2, 1, 5000), (1, 3, 1, 1), (2, 2, 1, 5000), (3, 1, 1, 10000);
         INSERT INTO payments (id, order_id, user_id, amount, card_type, card_no_masked, status,
                               transaction_key, next_check_at)
              VALUES (2, 2, 1, 5000, 'KB', '1234-****-****-3456', 'REFUNDED', 'T2', now()),
                     (3, 3, 1, 10000, 'KB', '1234-****-****-3456', 'PENDING', NULL, now()),
                     (4, 4, 1, 7000, 'KB', '1234-****-****-3456', 'SUCCESS', 'T4', now());",
    )
    .await
    .unwrap();

    commerce_db::run_migrations(&db.url, commerce_api::MIGRATIONS)
        .await
        .unwrap();

    let n = async |sql: &str| count(&db.url, sql).await;
    assert_eq!(
        n("SELECT count(*) AS n FROM brands WHERE partner_id = 1").await
            + n("SELECT count(*) AS n FROM products WHERE partner_id = 1").await,
        4
    );
    // 1,000 × 10,000/15,001 = 666.62, × 5,000/15,001 = 333.31, × 1/15,001 = 0.07: floors 999,
    // the unit left to the largest remainder; the points cover the rest of each line.
    assert_eq!(
        n("SELECT count(*) AS n FROM order_items WHERE order_id = 1 AND
              (product_id, discount_share, points_share) IN ((1, 667, 9333), (2, 333, 4667), (3, 0, 1))")
        .await,
        3
    );
    assert_eq!(
        n("SELECT count(*) AS n FROM partner_orders p JOIN payment_splits s ON s.partner_order_id = p.id
            WHERE p.order_id = 1 AND p.partner_id = 1 AND p.status = 'PAID' AND p.items_total = 15001
              AND p.discount_share = 1000 AND p.points_share = 14001 AND p.card_share = 0
              AND s.method = 'POINT' AND s.amount = 14001 AND s.captured = 14001 AND s.refunded = 0")
        .await,
        1
    );
    assert_eq!(
        n("SELECT count(*) AS n FROM partner_orders p JOIN payment_splits s ON s.partner_order_id = p.id
            WHERE p.order_id = 2 AND p.status = 'CANCELLED' AND p.card_share = 5000
              AND s.method = 'CARD' AND s.payment_id = 2 AND s.captured = 5000 AND s.refunded = 5000")
        .await,
        1
    );
    assert_eq!(
        n("SELECT count(*) AS n FROM partner_orders p JOIN payment_splits s ON s.partner_order_id = p.id
            WHERE p.order_id = 3 AND p.status = 'PENDING_PAYMENT' AND s.captured = 0")
        .await,
        1
    );
    // A top-up sells nothing: no partner order.
    assert_eq!(
        n("SELECT count(*) AS n FROM partner_orders WHERE order_id = 4").await,
        0
    );
    assert_eq!(
        n("SELECT count(*) AS n FROM order_items WHERE partner_order_id IS NOT NULL").await,
        5
    );
}

/// Reverts every migration from `first` (a directory name's date and number) on, newest first,
/// as if the database had never taken them.
pub(crate) async fn revert_from(conn: &mut AsyncPgConnection, first: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.as_str() >= first)
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    for name in names {
        let down = std::fs::read_to_string(dir.join(&name).join("down.sql")).unwrap();
        conn.batch_execute(&down).await.unwrap();
        let version: String = name[..17].chars().filter(char::is_ascii_digit).collect();
        conn.batch_execute(&format!(
            "DELETE FROM __diesel_schema_migrations WHERE version = '{version}'"
        ))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn partner_orders_confirmed_before_settlement_are_accrued_on_their_days_under_the_default() {
    let db = TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    revert_from(&mut conn, "2026-12-07-000001").await;
    // Two confirmed partner orders, on 30 November and (in Seoul) 1 December, and one delivered.
    conn.batch_execute(
        "INSERT INTO users (id, login_id, password_hash, name, email, point_balance)
              VALUES (1, 'old', 'x', 'Old', 'old@example.com', 0);
         INSERT INTO orders (id, user_id, status, total_amount, discount_amount, final_amount,
                             points_used, payment_method, paid_at, kind)
              VALUES (1, 1, 'PAID', 10005, 0, 10005, 10005, 'POINT', now(), 'GOODS'),
                     (2, 1, 'PAID', 10015, 0, 10015, 10015, 'POINT', now(), 'GOODS'),
                     (3, 1, 'PAID', 20005, 0, 20005, 20005, 'POINT', now(), 'GOODS');
         INSERT INTO partner_orders (id, order_id, partner_id, status, items_total, discount_share,
                                     points_share, card_share, paid_at, confirmed_at)
              VALUES (1, 1, 1, 'PURCHASE_CONFIRMED', 10005, 0, 10005, 0, now(), '2026-11-30 03:00+00'),
                     (2, 2, 1, 'PURCHASE_CONFIRMED', 10015, 0, 10015, 0, now(), '2026-11-30 16:00+00'),
                     (3, 3, 1, 'DELIVERED', 20005, 0, 20005, 0, now(), NULL);",
    )
    .await
    .unwrap();

    commerce_db::run_migrations(&db.url, commerce_api::MIGRATIONS)
        .await
        .unwrap();

    let n = async |sql: &str| count(&db.url, sql).await;
    // 10 % rounded half to even: 1,000.5 → 1,000; 1,001.5 → 1,002.
    assert_eq!(
        n("SELECT count(*) AS n FROM settlement_lines l JOIN commission_policies p ON p.id = l.policy_id
            WHERE p.partner_id IS NULL AND l.rate_bps = 1000 AND l.fixed_fee = 0
              AND (l.partner_order_id, l.confirmed_on, l.settle_on, l.gross, l.commission) IN
                  ((1, DATE '2026-11-30', DATE '2026-11-30', 10005, 1000),
                   (2, DATE '2026-12-01', DATE '2026-12-01', 10015, 1002))")
        .await,
        2
    );
    assert_eq!(n("SELECT count(*) AS n FROM settlement_lines").await, 2);

    // Once a day is settled, reverting would lose money owed: refused, and nothing changes.
    conn.batch_execute("INSERT INTO settlement_days (business_date) VALUES ('2026-11-30')")
        .await
        .unwrap();
    let down = include_str!("../../migrations/2026-12-07-000001_settlement/down.sql");
    assert!(conn.batch_execute(down).await.is_err());
    assert_eq!(n("SELECT count(*) AS n FROM settlement_lines").await, 2);
}

#[tokio::test]
async fn products_sold_before_the_sales_count_keep_their_units_sold() {
    let db = TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    conn.batch_execute(include_str!(
        "../../migrations/2026-12-11-000001_product_sales_count/down.sql"
    ))
    .await
    .unwrap();
    // Product 1: paid 5, of which 1 cancelled and 1 returned (3 sold) plus 2 more in another
    // order; product 2: only in a cancelled paid order and an unpaid one (none sold); product 3:
    // never ordered.
    conn.batch_execute(
        "DELETE FROM __diesel_schema_migrations WHERE version = '20261211000001';
         INSERT INTO users (id, login_id, password_hash, name, email)
              VALUES (1, 'old', 'x', 'Old', 'old@example.com');
         INSERT INTO brands (id, name, partner_id) VALUES (1, 'Old brand', 1);
         INSERT INTO products (id, brand_id, name, price, stock, partner_id)
              VALUES (1, 1, 'a', 100, 10, 1), (2, 1, 'b', 100, 10, 1), (3, 1, 'c', 100, 10, 1);
         INSERT INTO orders (id, user_id, status, total_amount, discount_amount, final_amount,
                             payment_method, paid_at)
              VALUES (1, 1, 'PAID', 500, 0, 500, 'POINT', now()),
                     (2, 1, 'PAID', 200, 0, 200, 'POINT', now()),
                     (3, 1, 'CANCELLED', 400, 0, 400, 'POINT', now()),
                     (4, 1, 'PENDING_PAYMENT', 100, 0, 100, 'CARD', NULL);
         INSERT INTO partner_orders (id, order_id, partner_id, status, items_total, discount_share,
                                     points_share, card_share)
              VALUES (1, 1, 1, 'DELIVERED', 500, 0, 500, 0), (2, 2, 1, 'PAID', 200, 0, 200, 0),
                     (3, 3, 1, 'CANCELLED', 400, 0, 400, 0),
                     (4, 4, 1, 'PENDING_PAYMENT', 100, 0, 0, 100);
         INSERT INTO order_items (order_id, product_id, quantity, unit_price, partner_order_id,
                                  quantity_cancelled, quantity_shipped, quantity_returned)
              VALUES (1, 1, 5, 100, 1, 1, 4, 1), (2, 1, 2, 100, 2, 0, 0, 0),
                     (3, 2, 4, 100, 3, 4, 0, 0), (4, 2, 1, 100, 4, 0, 0, 0);",
    )
    .await
    .unwrap();

    commerce_db::run_migrations(&db.url, commerce_api::MIGRATIONS)
        .await
        .unwrap();

    for (product, sold) in [(1, 5), (2, 0), (3, 0)] {
        assert_eq!(
            count(
                &db.url,
                &format!("SELECT sales_count AS n FROM products WHERE id = {product}")
            )
            .await,
            sold,
            "product {product}"
        );
    }
}
