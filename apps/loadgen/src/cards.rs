//! Card orders through pg-simulator: throughput, and the money balance afterwards.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::ensure;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::harness::{Id, authenticator, bulk_users, connect_db, run, run_id};
use crate::{http, pipeline};

pub(crate) struct CardRun<'a> {
    pub(crate) api: SocketAddr,
    pub(crate) database_url: &'a str,
    pub(crate) gateway_database_url: &'a str,
    pub(crate) n_orders: usize,
    pub(crate) connections: usize,
    pub(crate) settle_timeout: Duration,
}

pub(crate) async fn card_orders(run_config: CardRun<'_>, cancel_paid: bool) -> anyhow::Result<()> {
    let CardRun {
        api,
        database_url,
        gateway_database_url,
        n_orders,
        connections,
        settle_timeout,
    } = run_config;
    let mut db = connect_db(database_url).await?;
    let mut gateway_db = connect_db(gateway_database_url).await?;
    let tag = run_id();
    let brand: Id =
        diesel::sql_query("INSERT INTO brands (name, partner_id) VALUES ($1, 1) RETURNING id")
            .bind::<Text, _>(&tag)
            .get_result(&mut db)
            .await?;
    let products: Vec<i64> = diesel::sql_query(
        "INSERT INTO products (brand_id, partner_id, name, price, stock)
         SELECT $1, 1, 'bench card product ' || g, 1000, 1000000 FROM generate_series(1, 100) g RETURNING id",
    )
    .bind::<BigInt, _>(brand.id)
    .load::<Id>(&mut db)
    .await?
    .into_iter()
    .map(|r| r.id)
    .collect();
    let users = bulk_users(&mut db, &format!("{tag}-c-"), connections, 0).await?;
    let auth = authenticator();
    let tokens: Vec<String> = users
        .iter()
        .map(|id| {
            auth.issue(*id, commerce_api::infra::auth::Role::User)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<_, _>>()?;
    let token_of: std::collections::HashMap<i64, String> =
        users.iter().copied().zip(tokens.iter().cloned()).collect();
    let started = Instant::now();
    let report = run(
        "card orders accepted",
        api,
        connections,
        Duration::from_secs(3600),
        Some(n_orders),
        move |c, i| {
            let pid = products[(c * 31 + i * 17) % products.len()];
            let body = format!(
                r#"{{"items":[{{"product_id":{pid},"quantity":1}}],"payment":{{"method":"CARD","card_type":"KB","card_no":"1234-5678-9012-3456"}}}}"#
            );
            http::request("POST", &api, "/api/v1/orders", Some(&tokens[c]), Some(&body))
        },
    )
    .await?;
    report.print();
    let accepted_at = started.elapsed();

    #[derive(diesel::QueryableByName)]
    struct States {
        #[diesel(sql_type = BigInt)]
        pending: i64,
        #[diesel(sql_type = BigInt)]
        paid: i64,
        #[diesel(sql_type = BigInt)]
        failed: i64,
    }
    let deadline = Instant::now() + settle_timeout;
    let states = loop {
        let states: States = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE o.status = 'PENDING_PAYMENT') AS pending,
                    count(*) FILTER (WHERE o.status = 'PAID') AS paid,
                    count(*) FILTER (WHERE o.status = 'PAYMENT_FAILED') AS failed
               FROM orders o JOIN users u ON u.id = o.user_id WHERE u.login_id LIKE $1",
        )
        .bind::<Text, _>(format!("{tag}-c-%"))
        .get_result(&mut db)
        .await?;
        if states.pending == 0 || Instant::now() > deadline {
            break states;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all_final = started.elapsed();
    println!(
        "accepted {} orders in {:.1} s; all final after {:.1} s ({:.1} s after the last was accepted): {} PAID, {} PAYMENT_FAILED, {} still pending",
        report.latencies_us.len(),
        accepted_at.as_secs_f64(),
        all_final.as_secs_f64(),
        (all_final - accepted_at).as_secs_f64(),
        states.paid,
        states.failed,
        states.pending
    );
    ensure!(states.pending == 0, "orders left pending");

    // What the gateway holds for these orders: never two charges for one.
    let orders: Vec<OrderOf> = diesel::sql_query(
        "SELECT o.id, o.user_id, o.status FROM orders o JOIN users u ON u.id = o.user_id
          WHERE u.login_id LIKE $1 ORDER BY o.id",
    )
    .bind::<Text, _>(format!("{tag}-c-%"))
    .load(&mut db)
    .await?;
    let ids: Vec<String> = orders.iter().map(|o| o.id.to_string()).collect();
    let twice = gateway_count(
        &mut gateway_db,
        "SELECT count(*) AS n FROM (SELECT order_id FROM payments
          WHERE order_id = ANY($1) AND status IN ('SUCCESS', 'REFUNDED')
          GROUP BY order_id HAVING count(*) > 1) t",
        &ids,
    )
    .await?;
    let payments = gateway_count(
        &mut gateway_db,
        "SELECT count(*) AS n FROM payments WHERE order_id = ANY($1)",
        &ids,
    )
    .await?;
    println!(
        "gateway: {payments} payments for {} orders; {twice} orders charged twice",
        ids.len()
    );
    ensure!(twice == 0, "orders charged twice");
    if cancel_paid {
        let paid: Vec<&OrderOf> = orders.iter().filter(|o| o.status == "PAID").collect();
        refund_all(
            api,
            &mut db,
            &mut gateway_db,
            &paid,
            &token_of,
            settle_timeout,
        )
        .await?;
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
pub(crate) struct OrderOf {
    #[diesel(sql_type = BigInt)]
    pub(crate) id: i64,
    #[diesel(sql_type = BigInt)]
    pub(crate) user_id: i64,
    #[diesel(sql_type = Text)]
    pub(crate) status: String,
}

/// A count over pg-simulator's rows of `order_ids` (its order ids are text), bound as `$1`.
pub(crate) async fn gateway_count(
    db: &mut AsyncPgConnection,
    sql: &str,
    order_ids: &[String],
) -> anyhow::Result<i64> {
    Ok(diesel::sql_query(sql)
        .bind::<diesel::sql_types::Array<Text>, _>(order_ids)
        .get_result::<pipeline::N>(db)
        .await?
        .n)
}

/// A count over the API's rows of `order_ids`, bound as `$1`.
pub(crate) async fn orders_count(
    db: &mut AsyncPgConnection,
    sql: &str,
    order_ids: &[i64],
) -> anyhow::Result<i64> {
    Ok(diesel::sql_query(sql)
        .bind::<diesel::sql_types::Array<BigInt>, _>(order_ids)
        .get_result::<pipeline::N>(db)
        .await?
        .n)
}

/// Cancels every paid order (each user's in turn, users concurrently) and waits until all are
/// `REFUNDED`; then checks one refund per order at the gateway and one `PaymentRefunded` each.
pub(crate) async fn refund_all(
    api: SocketAddr,
    db: &mut AsyncPgConnection,
    gateway_db: &mut AsyncPgConnection,
    paid: &[&OrderOf],
    token_of: &std::collections::HashMap<i64, String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut per_user: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for o in paid {
        per_user.entry(o.user_id).or_default().push(o.id);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (user, ids) in per_user {
        let token = token_of[&user].clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = http::Conn::open(api).await?;
            let mut refused = 0usize;
            for id in ids {
                let req = http::request(
                    "POST",
                    &api,
                    &format!("/api/v1/orders/{id}/cancel"),
                    Some(&token),
                    None,
                );
                let (status, _) = conn.send(&req).await?;
                refused += usize::from(status != 200);
            }
            anyhow::Ok(refused)
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await??;
    }
    let cancelled_in = started.elapsed();
    ensure!(refused == 0, "{refused} cancels were refused");
    let ids: Vec<i64> = paid.iter().map(|o| o.id).collect();
    let deadline = Instant::now() + timeout;
    let refunded = loop {
        let n = orders_count(
            db,
            "SELECT count(*) AS n FROM orders WHERE id = ANY($1) AND status = 'REFUNDED'",
            &ids,
        )
        .await?;
        if n as usize == ids.len() || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all_refunded = started.elapsed();
    let events = orders_count(
        db,
        "SELECT count(*) AS n FROM outbox WHERE event_type = 'PaymentRefunded'
            AND (envelope->'payload'->>'order_id')::bigint = ANY($1)",
        &ids,
    )
    .await?;
    let attempts = orders_count(
        db,
        "SELECT COALESCE(sum(attempts), 0)::bigint AS n FROM refunds WHERE order_id = ANY($1)",
        &ids,
    )
    .await?;
    let texts: Vec<String> = ids.iter().map(i64::to_string).collect();
    let at_gateway = gateway_count(
        gateway_db,
        "SELECT count(*) AS n FROM refunds r JOIN payments p USING (transaction_key)
          WHERE p.order_id = ANY($1)",
        &texts,
    )
    .await?;
    let doubled = gateway_count(
        gateway_db,
        "SELECT count(*) AS n FROM (SELECT p.order_id FROM refunds r
          JOIN payments p USING (transaction_key) WHERE p.order_id = ANY($1)
          GROUP BY p.order_id HAVING count(*) > 1) t",
        &texts,
    )
    .await?;
    println!(
        "refunds: {} paid orders cancelled in {:.1} s; all refunded after {:.1} s: {refunded} REFUNDED, {} attempts, {at_gateway} refunds at the gateway, {doubled} orders refunded twice, {} PaymentRefunded events",
        ids.len(),
        cancelled_in.as_secs_f64(),
        all_refunded.as_secs_f64(),
        attempts,
        events,
    );
    ensure!(refunded as usize == ids.len(), "orders left unrefunded");
    ensure!(
        doubled == 0 && at_gateway == refunded && events == refunded,
        "refunds do not balance"
    );
    Ok(())
}
