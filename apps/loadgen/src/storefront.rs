//! Storefront scenarios: cached reads, order creation against pgbench, a limited drop, coupon
//! issuance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

use crate::harness::{Id, authenticator, bulk_users, connect_db, run, run_id, signed_posts};
use crate::http;

pub(crate) async fn list(
    api: SocketAddr,
    hello: SocketAddr,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    let hello_req = http::request("GET", &hello, "/hello", None, None);
    let list_req = http::request("GET", &api, "/api/v1/products?page=0&size=20", None, None);
    // Warm the cache and both servers.
    let warm = list_req.clone();
    run(
        "warm-up",
        api,
        4,
        Duration::from_secs(1),
        None,
        move |_, _| warm.clone(),
    )
    .await?;
    let h = hello_req.clone();
    let base = run(
        "hello-world /hello",
        hello,
        connections,
        duration,
        None,
        move |_, _| h.clone(),
    )
    .await?;
    base.print();
    let detail_req = http::request("GET", &api, "/api/v1/products/1", None, None);
    for (what, req) in [("list", list_req), ("detail", detail_req)] {
        let cached = run(
            &format!("cached product {what}"),
            api,
            connections,
            duration,
            None,
            move |_, _| req.clone(),
        )
        .await?;
        cached.print();
        let ratio = cached.rps() / base.rps();
        println!(
            "ratio {what}/hello = {ratio:.2} (target >= 0.6); {what} p99 = {:.2} ms (target <= 5 ms)",
            cached.percentile_ms(0.99)
        );
        crate::summary::Row::against_hello(
            &format!("cached product {what}, {connections} connections"),
            &cached,
            &base,
            0.6,
            "≥ 0.6, p99 ≤ 5 ms",
        )
        .record();
    }
    Ok(())
}

/// Order creation paid by points: each order takes one product of each of `partners` partners
/// (one line each, so one partner order each), against the same transaction driven by pgbench
/// in the same run.
pub(crate) async fn orders(
    api: SocketAddr,
    database_url: &str,
    n_products: i64,
    connections: usize,
    seconds: u64,
    hot_stock: Option<i64>,
    partners: usize,
) -> anyhow::Result<()> {
    ensure!((1..=10).contains(&partners), "--partners must be 1..=10");
    ensure!(
        hot_stock.is_none() || partners == 1,
        "--hot-stock takes one partner"
    );
    let mut db = connect_db(database_url).await?;
    let tag = run_id();
    let (count, stock) = match hot_stock {
        Some(s) => (1, s),
        None => ((n_products / partners as i64).max(1), 1_000_000),
    };
    // Per partner: its id and its products' ids (a contiguous range).
    let mut catalog: Vec<(i64, Vec<i64>)> = Vec::with_capacity(partners);
    for k in 0..partners {
        let partner: Id = if k == 0 {
            Id { id: 1 }
        } else {
            diesel::sql_query(
                "INSERT INTO partners (name, business_number)
                 SELECT $1, substr(d, 1, 3) || '-' || substr(d, 4, 2) || '-' || substr(d, 6, 5)
                   FROM (SELECT lpad((floor(random() * 1e10))::bigint::text, 10, '0') AS d) r
                 RETURNING id",
            )
            .bind::<Text, _>(format!("{tag} partner {k}"))
            .get_result(&mut db)
            .await?
        };
        let brand: Id =
            diesel::sql_query("INSERT INTO brands (name, partner_id) VALUES ($1, $2) RETURNING id")
                .bind::<Text, _>(&tag)
                .bind::<BigInt, _>(partner.id)
                .get_result(&mut db)
                .await?;
        let products: Vec<i64> = diesel::sql_query(
            "INSERT INTO products (brand_id, partner_id, name, price, stock)
             SELECT $1, $4, 'bench product ' || g, 1000, $2 FROM generate_series(1, $3) g
             RETURNING id",
        )
        .bind::<BigInt, _>(brand.id)
        .bind::<BigInt, _>(stock)
        .bind::<BigInt, _>(count)
        .bind::<BigInt, _>(partner.id)
        .load::<Id>(&mut db)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
        catalog.push((partner.id, products));
    }
    let users = bulk_users(
        &mut db,
        &format!("{tag}-o-"),
        connections * 2,
        1_000_000_000,
    )
    .await?;
    let auth = authenticator();
    let tokens: Vec<String> = users[..connections]
        .iter()
        .map(|id| {
            auth.issue(*id, commerce_api::infra::auth::Role::User)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<_, _>>()?;
    let label = match (hot_stock, partners) {
        (Some(_), _) => "orders, one hot product".to_owned(),
        (None, 1) => format!("orders, {} products", count),
        (None, n) => format!("orders of {n} partners' products, {count} each"),
    };
    let catalog = Arc::new(catalog);
    let c2 = catalog.clone();
    let report = run(
        &label,
        api,
        connections,
        Duration::from_secs(seconds),
        None,
        move |c, i| {
            let items: Vec<String> = c2
                .iter()
                .map(|(_, p)| {
                    let pid = p[(c * 7919 + i * 104_729) % p.len()];
                    format!(r#"{{"product_id":{pid},"quantity":1}}"#)
                })
                .collect();
            let body = format!(
                r#"{{"items":[{}],"payment":{{"method":"POINT"}}}}"#,
                items.join(",")
            );
            http::request(
                "POST",
                &api,
                "/api/v1/orders",
                Some(&tokens[c]),
                Some(&body),
            )
        },
    )
    .await?;
    report.print();

    if let Some(initial) = hot_stock {
        #[derive(diesel::QueryableByName)]
        struct Check {
            #[diesel(sql_type = BigInt)]
            stock: i64,
            #[diesel(sql_type = BigInt)]
            sold: i64,
        }
        let check: Check = diesel::sql_query(
            "SELECT p.stock, coalesce((SELECT sum(quantity) FROM order_items WHERE product_id = p.id), 0)::bigint AS sold
               FROM products p WHERE p.id = $1",
        )
        .bind::<BigInt, _>(catalog[0].1[0])
        .get_result(&mut db)
        .await?;
        println!(
            "hot product: initial stock {initial}, sold {}, left {}, oversold {}",
            check.sold,
            check.stock,
            (check.sold + check.stock - initial).max(0)
        );
        ensure!(
            check.stock >= 0 && check.sold + check.stock == initial,
            "stock does not balance"
        );
    }

    // The same transaction, driven by pgbench with as many clients, in the same run: the stock
    // precheck, the transaction's statement timeout (`ORDER_TIMEOUT_MS`), the products locked
    // with their partners, stock, points, the order, one partner order, line and points split
    // per partner, the ledger, the outbox and the units sold.
    let n = partners;
    let pick: String = catalog
        .iter()
        .enumerate()
        .map(|(k, (_, p))| format!("\\set p{k} random({}, {})\n", p[0], p[p.len() - 1]))
        .collect();
    let pids = (0..n)
        .map(|k| format!(":p{k}"))
        .collect::<Vec<_>>()
        .join(",");
    let partner_ids = catalog
        .iter()
        .map(|(id, _)| id.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let total = 1000 * n as i64;
    let units = vec!["1"; n].join(",");
    let (ufirst, ulast) = (users[connections], users[users.len() - 1]);
    let script = format!(
        r"{pick}\set uid random({ufirst}, {ulast})
SELECT id, stock FROM products WHERE id = ANY(ARRAY[{pids}]::bigint[]);
BEGIN;
SELECT set_config('statement_timeout', '10000', true);
SELECT p.id, p.price, p.stock, p.max_per_user, p.sale_starts_at, p.sale_ends_at, p.partner_id, pa.status = 'SUSPENDED' AS suspended FROM products p JOIN partners pa ON pa.id = p.partner_id WHERE p.id = ANY(ARRAY[{pids}]::bigint[]) ORDER BY p.id FOR UPDATE OF p;
UPDATE products p SET stock = p.stock - 1 WHERE p.id = ANY(ARRAY[{pids}]::bigint[]) AND p.stock >= 1;
UPDATE users SET point_balance = point_balance - {total} WHERE id = :uid AND point_balance >= {total};
WITH o AS (INSERT INTO orders (user_id, status, total_amount, discount_amount, final_amount, points_used, payment_method, request_hash, paid_at)
           VALUES (:uid, 'PAID', {total}, 0, {total}, {total}, 'POINT', 'pgbench', now()) RETURNING id),
     po AS (INSERT INTO partner_orders (order_id, partner_id, status, items_total, discount_share, points_share, card_share, paid_at)
            SELECT o.id, x, 'PAID', 1000, 0, 1000, 0, now() FROM o, unnest(ARRAY[{partner_ids}]::bigint[]) x RETURNING id, order_id, partner_id),
     i AS (INSERT INTO order_items (order_id, product_id, quantity, unit_price, partner_order_id, points_share)
           SELECT po.order_id, x.product, 1, 1000, po.id, 1000
             FROM po JOIN unnest(ARRAY[{partner_ids}]::bigint[], ARRAY[{pids}]::bigint[]) AS x(partner, product) ON x.partner = po.partner_id),
     s AS (INSERT INTO payment_splits (partner_order_id, method, amount, captured) SELECT id, 'POINT', 1000, 1000 FROM po),
     l AS (INSERT INTO point_ledger (user_id, amount, kind, order_id) SELECT :uid, -{total}, 'USE', id FROM o),
     sold AS (UPDATE products p SET sales_count = p.sales_count + 1 FROM unnest(ARRAY[{pids}]::bigint[], ARRAY[{units}]::bigint[]) AS s(id, units) WHERE p.id = s.id)
INSERT INTO outbox (event_id, topic, partition_key, event_type, envelope)
SELECT gen_random_uuid(), 'order-events', o.id::text, t, '{{}}'::jsonb FROM o, unnest(ARRAY['OrderCreated', 'OrderPaid']) t;
COMMIT;
"
    );
    let (tps, latency) = pgbench(&script, connections, Some(seconds), database_url, &[]).await?;
    println!("pgbench same transaction      {tps:>9.0} tps    {latency}");
    let ratio = report.rps() / tps;
    // Spread over the catalog the API must keep within a tenth of the database; a hot row and
    // several partners per order within three tenths.
    let target = if hot_stock.is_none() && partners == 1 {
        0.9
    } else {
        0.7
    };
    println!("ratio api/pgbench = {ratio:.2} (target >= {target})");
    let route = match (hot_stock, partners) {
        (Some(_), _) => format!("order creation, one hot product, {connections} connections"),
        (None, 1) => format!("order creation, {n_products} products, {connections} connections"),
        (None, n) => format!("order creation, {n} partners per order, {connections} connections"),
    };
    crate::summary::Row {
        route: &route,
        figure: crate::summary::rate(&report),
        ceiling: format!(
            "pgbench, the same transaction, {} tps",
            crate::summary::thousands(tps)
        ),
        ratio: Some(ratio),
        target: &format!("≥ {target}"),
        met: ratio >= target,
    }
    .record();
    Ok(())
}

/// Runs pgbench with `script` for `seconds` (or as `extra` says) with `clients` clients; returns
/// its transactions per second and its average latency line.
pub(crate) async fn pgbench(
    script: &str,
    clients: usize,
    seconds: Option<u64>,
    database_url: &str,
    extra: &[&str],
) -> anyhow::Result<(f64, String)> {
    let path = std::env::temp_dir().join(format!("loadgen-{}-{clients}.sql", std::process::id()));
    std::fs::write(&path, script)?;
    let out = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-r",
        ])
        .args(
            seconds
                .map(|s| ["-T".to_owned(), s.to_string()])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .arg("-f")
        .arg(&path)
        .arg(database_url)
        .output()
        .await
        .context("running pgbench (install postgresql-client / postgresql-contrib)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| {
            format!(
                "pgbench output: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let latency = text
        .lines()
        .find(|l| l.starts_with("latency average"))
        .unwrap_or("")
        .to_owned();
    Ok((tps, latency))
}

/// A limited drop: `users` customers with points, a product of `units` units at one per
/// customer whose sale opens a second after the load starts; every customer tries twice.
pub(crate) async fn drop_sale(
    api: SocketAddr,
    database_url: &str,
    users: usize,
    units: i64,
    connections: usize,
) -> anyhow::Result<()> {
    let mut db = connect_db(database_url).await?;
    let tag = run_id();
    let brand: Id =
        diesel::sql_query("INSERT INTO brands (name, partner_id) VALUES ($1, 1) RETURNING id")
            .bind::<Text, _>(&tag)
            .get_result(&mut db)
            .await?;
    let product: Id = diesel::sql_query(
        "INSERT INTO products (brand_id, partner_id, name, price, stock, max_per_user, sale_starts_at)
         VALUES ($1, 1, $2, 1000, $3, 1, now() + interval '1 hour') RETURNING id",
    )
    .bind::<BigInt, _>(brand.id)
    .bind::<Text, _>(format!("{tag} drop"))
    .bind::<BigInt, _>(units)
    .get_result(&mut db)
    .await?;
    let ids = bulk_users(&mut db, &format!("{tag}-d-"), users, 10_000).await?;
    let body = format!(
        r#"{{"items":[{{"product_id":{}, "quantity":1}}],"payment":{{"method":"POINT"}}}}"#,
        product.id
    );
    let requests = signed_posts(&api, &ids, "/api/v1/orders", &body)?;
    // The window opens a second into the load: the first attempts meet a closed sale.
    diesel::sql_query(
        "UPDATE products SET sale_starts_at = now() + interval '1 second' WHERE id = $1",
    )
    .bind::<BigInt, _>(product.id)
    .execute(&mut db)
    .await?;
    let requests = Arc::new(requests);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = requests.clone();
    let report = run(
        "drop order attempts",
        api,
        connections,
        Duration::from_secs(300),
        Some(users * 2),
        move |_, _| {
            // Each customer's two attempts go out one after the other, racing each other.
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r[(n / 2) % r.len()].clone()
        },
    )
    .await?;
    report.print();
    #[derive(diesel::QueryableByName)]
    struct Sold {
        #[diesel(sql_type = BigInt)]
        sold: i64,
        #[diesel(sql_type = BigInt)]
        most: i64,
        #[diesel(sql_type = BigInt)]
        stock: i64,
    }
    let sold: Sold = diesel::sql_query(
        "SELECT coalesce(sum(held), 0)::bigint AS sold, coalesce(max(held), 0)::bigint AS most,
                (SELECT stock FROM products WHERE id = $1) AS stock
           FROM (SELECT o.user_id, sum(i.quantity) AS held
                   FROM orders o JOIN order_items i ON i.order_id = o.id
                  WHERE i.product_id = $1 AND o.status IN ('PENDING_PAYMENT', 'PAID')
                  GROUP BY o.user_id) h",
    )
    .bind::<BigInt, _>(product.id)
    .get_result(&mut db)
    .await?;
    println!(
        "drop: {} attempts by {users} customers, {:.0} attempts/s, p99 {:.1} ms; {} units sold (expected {units}), most held by one customer {} (limit 1), stock left {}",
        report.latencies_us.len(),
        report.rps(),
        report.percentile_ms(0.99),
        sold.sold,
        sold.most,
        sold.stock
    );
    if sold.sold != units || sold.most > 1 || sold.stock != 0 {
        bail!("the drop oversold, undersold or let a customer above the limit");
    }
    Ok(())
}

pub(crate) async fn coupons(
    api: SocketAddr,
    database_url: &str,
    attempts: usize,
    quantity: i64,
    connections: usize,
) -> anyhow::Result<()> {
    let mut db = connect_db(database_url).await?;
    let tag = run_id();
    let coupon: Id = diesel::sql_query(
        "INSERT INTO coupons (name, discount_type, discount_value, total_quantity) VALUES ($1, 'FIXED', 1000, $2) RETURNING id",
    )
    .bind::<Text, _>(&tag)
    .bind::<BigInt, _>(quantity)
    .get_result(&mut db)
    .await?;
    let users = bulk_users(&mut db, &format!("{tag}-c-"), attempts, 0).await?;
    let path = format!("/api/v1/coupons/{}/issue", coupon.id);
    let requests = signed_posts(&api, &users, &path, "{}")?;
    let requests = Arc::new(requests);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = requests.clone();
    let report = run(
        "coupon issue attempts",
        api,
        connections,
        Duration::from_secs(120),
        Some(attempts),
        move |_, _| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r[n % r.len()].clone()
        },
    )
    .await?;
    report.print();
    let issued: Id =
        diesel::sql_query("SELECT count(*) AS id FROM user_coupons WHERE coupon_id = $1")
            .bind::<BigInt, _>(coupon.id)
            .get_result(&mut db)
            .await?;
    println!(
        "coupons: {} attempts, {} issued (expected {quantity}); {:.0} attempts/s (target >= 20000)",
        report.latencies_us.len(),
        issued.id,
        report.rps()
    );
    crate::summary::Row {
        route: &format!("coupon issue attempts, {attempts} users for {quantity} coupons"),
        figure: format!(
            "{} attempts/s, p99 {:.2} ms; {} issued",
            crate::summary::thousands(report.rps()),
            report.percentile_ms(0.99),
            issued.id
        ),
        ceiling: String::new(),
        ratio: None,
        target: "≥ 20,000/s, exactly the quantity issued",
        met: report.rps() >= 20_000.0 && issued.id == quantity,
    }
    .record();
    if issued.id != quantity {
        bail!("issued {} coupons, expected {quantity}", issued.id);
    }
    db.batch_execute("SELECT 1").await?;
    Ok(())
}
