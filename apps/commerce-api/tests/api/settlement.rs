//! Partner settlement: commission policies applied by confirmation day and frozen on each line,
//! the daily close (once, whole or not at all, across instances), late confirmations, clawbacks
//! netted into the next settlement, payouts and the reconciled ledger.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use commerce_api::domain::settlement::{self, DayClosed};
use commerce_api::domain::settlement_job;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Date};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use pg_simulator::behaviour::Behaviour;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::marketplace::{partner, partner_product};
use crate::payments::{CARD_NO, Gateway, api, assert_money_balances, place, reaches};
use crate::support::{TestApp, spawn_app, spawn_app_with};

/// Today, in the app's business time zone.
fn today(app: &TestApp) -> NaiveDate {
    settlement_job::business_date(Utc::now(), app.state.config.settlement.time_zone)
}

/// Closes every open day through `through` as the job and the command do.
async fn settle(app: &TestApp, through: NaiveDate) -> Vec<DayClosed> {
    let mut conn = app.conn().await;
    settlement::settle_through(
        &mut conn,
        &app.state.topics,
        through,
        settlement::Workers::default(),
        |_, _, _| {},
    )
    .await
    .expect("settles")
}

/// A checkout of `items` (product, quantity) paid with points, each partner order shipped by
/// its partner (`tokens` by partner id) and confirmed by the buyer: the partner orders' ids.
async fn confirmed(
    app: &TestApp,
    buyer: &str,
    tokens: &HashMap<i64, String>,
    items: &[(i64, i64)],
) -> Vec<i64> {
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(buyer),
            json!({"items": items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect::<Vec<_>>(),
                   "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    confirm_parts(app, buyer, tokens, &order).await
}

async fn confirm_parts(
    app: &TestApp,
    buyer: &str,
    tokens: &HashMap<i64, String>,
    order: &Value,
) -> Vec<i64> {
    let order_id = order["order_id"].as_i64().unwrap();
    let mut ids = Vec::new();
    for part in order["partner_orders"].as_array().unwrap() {
        let id = part["partner_order_id"].as_i64().unwrap();
        ship(app, &tokens[&part["partner_id"].as_i64().unwrap()], id).await;
        let (status, body) = app
            .post(
                &format!("/api/v1/orders/{order_id}/partner-orders/{id}/confirm"),
                Some(buyer),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "PURCHASE_CONFIRMED", "{body}");
        ids.push(id);
    }
    ids
}

async fn ship(app: &TestApp, token: &str, id: i64) {
    let (status, body) = app
        .post(
            &format!("/api/v1/partner/orders/{id}/ship"),
            Some(token),
            json!({"carrier": "CJ Logistics", "tracking_number": format!("T-{id}")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[derive(QueryableByName, Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Row {
    #[diesel(sql_type = BigInt)]
    partner_id: i64,
    #[diesel(sql_type = Date)]
    business_date: NaiveDate,
    #[diesel(sql_type = BigInt)]
    line_count: i64,
    #[diesel(sql_type = BigInt)]
    late_count: i64,
    #[diesel(sql_type = BigInt)]
    gross: i64,
    #[diesel(sql_type = BigInt)]
    commission: i64,
    #[diesel(sql_type = BigInt)]
    clawbacks: i64,
    #[diesel(sql_type = BigInt)]
    payable: i64,
    #[diesel(sql_type = BigInt)]
    deficit: i64,
}

/// Every settlement, by partner and day.
async fn settlements(app: &TestApp) -> Vec<Row> {
    let mut conn = app.conn().await;
    diesel::sql_query(
        "SELECT partner_id, business_date, line_count::bigint AS line_count,
                late_count::bigint AS late_count, gross, commission, clawbacks, payable, deficit
           FROM settlements ORDER BY partner_id, business_date",
    )
    .load(&mut conn)
    .await
    .unwrap()
}

fn row(
    partner_id: i64,
    business_date: NaiveDate,
    [
        line_count,
        late_count,
        gross,
        commission,
        clawbacks,
        payable,
        deficit,
    ]: [i64; 7],
) -> Row {
    Row {
        partner_id,
        business_date,
        line_count,
        late_count,
        gross,
        commission,
        clawbacks,
        payable,
        deficit,
    }
}

/// What the ledger, the settlements and the outbox hold, to compare before and after a re-run.
async fn footprint(app: &TestApp) -> (Vec<Row>, i64, i64, i64) {
    (
        settlements(app).await,
        app.count("SELECT count(*) AS n FROM partner_ledger_entries")
            .await,
        app.count("SELECT coalesce(sum(amount), 0)::bigint AS n FROM partner_ledger_entries")
            .await,
        app.count("SELECT count(*) AS n FROM outbox WHERE event_type = 'SettlementCompleted'")
            .await,
    )
}

#[tokio::test]
async fn a_day_is_settled_once_per_partner_with_frozen_commission_lines_and_a_reconciled_ledger() {
    let app = spawn_app().await;
    let (a, a_token) = partner(&app, "settle-a", "404-04-00001").await;
    let (b, b_token) = partner(&app, "settle-b", "404-04-00002").await;
    let tokens = HashMap::from([(a, a_token.clone()), (b, b_token.clone())]);
    let day = today(&app);
    // A's own policy, 12.5 % and 300 won per partner order since last month; B pays the default.
    let (status, policy) = app
        .post(
            "/api/v1/admin/commission-policies",
            Some(&app.admin),
            json!({"partner_id": a, "rate_bps": 1250, "fixed_fee": 300,
                   "valid_from": (day - chrono::Days::new(30)).to_string()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    let a1 = partner_product(&app, &a_token, 10_005, 10).await;
    let a2 = partner_product(&app, &a_token, 20_030, 10).await;
    let b1 = partner_product(&app, &b_token, 10_005, 10).await;
    let b2 = partner_product(&app, &b_token, 10_015, 10).await;
    let (_, buyer) = app.user_with_points("settle-buyer", 100_000).await;
    confirmed(&app, &buyer, &tokens, &[(a1, 1), (b1, 1)]).await;
    confirmed(&app, &buyer, &tokens, &[(a2, 1), (b2, 1)]).await;

    let closed = settle(&app, day).await;
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(!closed[0].already_closed);
    // A: 10,005 × 12.5 % = 1,250.625 → 1,251 and 20,030 × 12.5 % = 2,503.75 → 2,504, each + 300.
    // B (10 %, half to even): 10,005 → 1,000.5 → 1,000; 10,015 → 1,001.5 → 1,002.
    let expected = vec![
        row(a, day, [2, 0, 30_035, 4_355, 0, 25_680, 0]),
        row(b, day, [2, 0, 20_020, 2_002, 0, 18_018, 0]),
    ];
    assert_eq!(settlements(&app).await, expected);
    // Money balances: what the customer paid = what the partners are owed + the commission.
    assert_eq!(
        app.count("SELECT sum(points_share + card_share)::bigint AS n FROM partner_orders")
            .await,
        25_680 + 18_018 + 4_355 + 2_002
    );
    // The lines add up to the settlement, and each keeps what applied to it.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM settlement_lines
              WHERE partner_id = {a} AND policy_id = {} AND rate_bps = 1250 AND fixed_fee = 300",
            policy["id"]
        ))
        .await,
        2
    );
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM settlement_lines
              WHERE commission <> commission_of(gross, rate_bps, fixed_fee)"
        )
        .await,
        0,
        "every line replays to its stored commission"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM settlements s
              CROSS JOIN LATERAL (SELECT sum(gross)::bigint AS g, sum(commission)::bigint AS c,
                                         count(*) AS n FROM settlement_lines l
                                   WHERE l.partner_id = s.partner_id AND l.settle_on = s.business_date) l
              WHERE (s.gross, s.commission, s.line_count::bigint) IS DISTINCT FROM (l.g, l.c, l.n)"
        )
        .await,
        0
    );
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM partner_ledger_entries
              WHERE kind = 'EARNING' AND amount IN (25680, 18018)"
        )
        .await,
        2
    );
    let events = app
        .count(&format!(
            "SELECT count(*) AS n FROM outbox WHERE event_type = 'SettlementCompleted'
                AND envelope->>'aggregate_type' = 'Partner'
                AND (envelope->'payload'->>'partner_id')::bigint = {a}
                AND envelope->'payload'->>'business_date' = '{day}'
                AND (envelope->'payload'->>'payable')::bigint = 25680"
        ))
        .await;
    assert_eq!(events, 1);

    // A re-run changes nothing.
    let before = footprint(&app).await;
    let again = settle(&app, day).await;
    assert_eq!(again.len(), 1);
    assert!(again[0].already_closed);
    assert_eq!(again[0].payable, 25_680 + 18_018);
    assert_eq!(footprint(&app).await, before);

    // The partner reads its settlements, one with its lines, and the CSV.
    let (status, mine) = app.get("/api/v1/partner/settlements", Some(&a_token)).await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(mine["total_elements"], 1, "{mine}");
    let id = mine["content"][0]["id"].as_i64().unwrap();
    let (status, detail) = app
        .get(
            &format!("/api/v1/partner/settlements/{id}?size=1"),
            Some(&a_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["settlement"]["payable"], 25_680);
    assert_eq!(detail["lines"].as_array().unwrap().len(), 1);
    assert_eq!(detail["lines"][0]["gross"], 10_005);
    assert_eq!(detail["lines"][0]["commission"], 1_551);
    assert_eq!(detail["lines"][0]["rate_bps"], 1250);
    let after = detail["next_after"].as_i64().unwrap();
    let (_, rest) = app
        .get(
            &format!("/api/v1/partner/settlements/{id}?size=1&after={after}"),
            Some(&a_token),
        )
        .await;
    assert_eq!(rest["lines"][0]["gross"], 20_030);
    assert_eq!(rest["lines"][0]["net"], 20_030 - 2_804);
    let csv = app
        .client
        .get(format!(
            "{}/api/v1/partner/settlements/{id}/lines.csv",
            app.base
        ))
        .bearer_auth(&a_token)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("partner_order_id,order_id,confirmed_on"));
    assert!(lines[1].ends_with(",1250,300,10005,1551,8454"), "{csv}");
    assert!(lines[2].ends_with(",1250,300,20030,2804,17226"), "{csv}");

    // Another partner's settlement is not found, in every form.
    for path in [
        format!("/api/v1/partner/settlements/{id}"),
        format!("/api/v1/partner/settlements/{id}/lines.csv"),
    ] {
        let (status, body) = app.get(&path, Some(&b_token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["code"], "SETTLEMENT_NOT_FOUND");
    }
    // Customers and partners cannot use the admin routes.
    let (status, _) = app
        .get(
            &format!("/api/v1/admin/settlements?date={day}"),
            Some(&a_token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The admin lists the day, pays A out once, and A's balance follows.
    let (status, listed) = app
        .get(
            &format!("/api/v1/admin/settlements?date={day}"),
            Some(&app.admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["total_elements"], 2);
    let (status, bad) = app
        .get(
            "/api/v1/admin/settlements?date=2026-13-01",
            Some(&app.admin),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert_eq!(bad["code"], "VALIDATION_FAILED");
    let payout = format!("/api/v1/admin/settlements/{id}/payout");
    let (status, paid) = app
        .post(&payout, Some(&app.admin), json!({"reference": "TR-0001"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["payout_reference"], "TR-0001");
    let (status, twice) = app
        .post(&payout, Some(&app.admin), json!({"reference": "TR-0002"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{twice}");
    assert_eq!(twice["code"], "ALREADY_PAID_OUT");
    let b_id = listed["content"][1]["id"].as_i64().unwrap();
    let (status, reused) = app
        .post(
            &format!("/api/v1/admin/settlements/{b_id}/payout"),
            Some(&app.admin),
            json!({"reference": "TR-0001"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{reused}");
    assert_eq!(reused["code"], "PAYOUT_REFERENCE_USED");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM settlements WHERE id = {b_id} AND paid_out_at IS NULL"
        ))
        .await,
        1,
        "a refused payout changes nothing"
    );
    let (status, balance) = app.get("/api/v1/partner/balance", Some(&a_token)).await;
    assert_eq!(status, StatusCode::OK, "{balance}");
    assert_eq!(
        balance,
        json!({"partner_id": a, "earnings": 25_680, "payouts": 25_680, "clawbacks": 0,
               "balance": 0, "outstanding": 0, "deficit": 0, "pending_clawbacks": 0,
               "reconciled": true})
    );
    let (_, b_balance) = app
        .get(
            &format!("/api/v1/admin/partners/{b}/balance"),
            Some(&app.admin),
        )
        .await;
    assert_eq!(b_balance["balance"], 18_018);
    assert_eq!(b_balance["outstanding"], 18_018);
    assert_eq!(b_balance["reconciled"], true);
    // The ledger is append-only.
    let mut conn = app.conn().await;
    let refused = conn
        .batch_execute("UPDATE partner_ledger SET amount = 0")
        .await;
    assert!(refused.is_err(), "the ledger took an UPDATE");
    for statement in [
        format!("UPDATE settlements SET payable = 0 WHERE id = {b_id}"),
        format!("UPDATE settlements SET payout_reference = 'X' WHERE id = {id}"),
        format!("DELETE FROM settlements WHERE id = {b_id}"),
    ] {
        assert!(
            conn.batch_execute(&statement).await.is_err(),
            "a settlement took {statement}"
        );
    }
}

#[tokio::test]
async fn policy_versions_apply_by_confirmation_day_and_settled_days_refuse_new_ones() {
    let app = spawn_app().await;
    let (a, a_token) = partner(&app, "policy-a", "404-04-00011").await;
    let tokens = HashMap::from([(a, a_token.clone())]);
    let day = today(&app);
    let add = async |body: Value| {
        app.post("/api/v1/admin/commission-policies", Some(&app.admin), body)
            .await
    };
    let date = |offset: i64| (day + chrono::Duration::days(offset)).to_string();
    for (offset, rate) in [(-10, 500), (0, 700), (5, 900)] {
        let (status, body) =
            add(json!({"partner_id": a, "rate_bps": rate, "valid_from": date(offset)})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // Refusals, each with its code, and nothing written.
    for (body, status, code) in [
        (
            json!({"partner_id": a, "rate_bps": 800, "valid_from": date(0)}),
            StatusCode::CONFLICT,
            "POLICY_VERSION_EXISTS",
        ),
        (
            json!({"partner_id": a, "rate_bps": 10_001, "fixed_fee": -1, "valid_from": date(1)}),
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        ),
        (
            json!({"partner_id": 999_999, "rate_bps": 800, "valid_from": date(1)}),
            StatusCode::NOT_FOUND,
            "PARTNER_NOT_FOUND",
        ),
    ] {
        let (got, answer) = add(body).await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["code"], code, "{answer}");
    }
    let (status, _) = app
        .post(
            "/api/v1/admin/commission-policies",
            Some(&a_token),
            json!({"rate_bps": 0, "valid_from": date(1)}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM commission_policies")
            .await,
        4,
        "the default and A's three versions"
    );
    let (_, versions) = app
        .get(
            &format!("/api/v1/admin/commission-policies?partner_id={a}"),
            Some(&app.admin),
        )
        .await;
    let spans: Vec<(Value, Value, Value)> = versions["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["rate_bps"].clone(),
                v["valid_from"].clone(),
                v["valid_to"].clone(),
            )
        })
        .collect();
    assert_eq!(
        spans,
        vec![
            (json!(900), json!(date(5)), Value::Null),
            (json!(700), json!(date(0)), json!(date(5))),
            (json!(500), json!(date(-10)), json!(date(0))),
        ]
    );
    let (_, own) = app
        .get("/api/v1/partner/commission-policies", Some(&a_token))
        .await;
    assert_eq!(own["own"].as_array().unwrap().len(), 3);
    assert_eq!(own["defaults"][0]["rate_bps"], 1000);

    // Today's version applies to today's confirmation.
    let product = partner_product(&app, &a_token, 10_000, 5).await;
    let (_, buyer) = app.user_with_points("policy-buyer", 50_000).await;
    confirmed(&app, &buyer, &tokens, &[(product, 1)]).await;
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM settlement_lines l JOIN commission_policies p ON p.id = l.policy_id
              WHERE l.rate_bps = 700 AND p.rate_bps = 700 AND l.commission = 700"
        )
        .await,
        1
    );

    // Once today is settled, no version may start on it; tomorrow is still open.
    settle(&app, day).await;
    let (status, closed) =
        add(json!({"partner_id": a, "rate_bps": 100, "valid_from": date(0)})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{closed}");
    assert_eq!(closed["code"], "SETTLEMENT_DAY_CLOSED");
    let (status, body) = add(json!({"rate_bps": 1100, "valid_from": date(1)})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["partner_id"], Value::Null);
}

#[tokio::test]
async fn the_database_and_the_documented_commission_round_alike() {
    let app = spawn_app().await;
    let mut conn = app.conn().await;
    // Every rounding case around the half, and a spread of rates, fees and amounts.
    let mut cases = Vec::new();
    for gross in (0..400).map(|i| i * 2_501 + i % 7) {
        for (rate, fee) in [(1000, 0), (1250, 300), (333, 7), (10_000, 0), (1, 50_000)] {
            cases.push((gross, rate, fee));
        }
    }
    #[derive(QueryableByName)]
    struct C {
        #[diesel(sql_type = BigInt)]
        c: i64,
    }
    let grosses: Vec<i64> = cases.iter().map(|c| c.0).collect();
    let rates: Vec<i32> = cases.iter().map(|c| c.1).collect();
    let fees: Vec<i64> = cases.iter().map(|c| c.2).collect();
    let got: Vec<C> = diesel::sql_query(
        "SELECT commission_of(g, r, f) AS c FROM unnest($1, $2, $3) WITH ORDINALITY AS t(g, r, f, i) ORDER BY i",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(&grosses)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Integer>, _>(&rates)
    .bind::<diesel::sql_types::Array<BigInt>, _>(&fees)
    .load(&mut conn)
    .await
    .unwrap();
    assert_eq!(got.len(), cases.len());
    for ((gross, rate, fee), c) in cases.iter().zip(&got) {
        assert_eq!(
            settlement::commission(*gross, *rate, *fee),
            c.c,
            "{gross} at {rate} bps + {fee}"
        );
    }
}

#[tokio::test]
async fn a_confirmation_after_its_day_closed_lands_once_in_the_next_open_day() {
    let app = spawn_app().await;
    let (a, a_token) = partner(&app, "late-a", "404-04-00021").await;
    let tokens = HashMap::from([(a, a_token.clone())]);
    let day = today(&app);
    let tomorrow = day.succ_opt().unwrap();
    let product = partner_product(&app, &a_token, 10_000, 50).await;
    let (_, buyer) = app.user_with_points("late-buyer", 1_000_000).await;
    confirmed(&app, &buyer, &tokens, &[(product, 1)]).await;

    // Twelve more partner orders are confirmed while the day closes: each lands in exactly one
    // day, today's if its confirmation came first, tomorrow's if the close did.
    let mut orders = Vec::new();
    for _ in 0..12 {
        let (status, order) = app
            .post(
                "/api/v1/orders",
                Some(&buyer),
                json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        let id = order["partner_orders"][0]["partner_order_id"]
            .as_i64()
            .unwrap();
        ship(&app, &a_token, id).await;
        orders.push((order["order_id"].as_i64().unwrap(), id));
    }
    let confirming = async {
        for (order, id) in &orders {
            let (status, body) = app
                .post(
                    &format!("/api/v1/orders/{order}/partner-orders/{id}/confirm"),
                    Some(&buyer),
                    json!({}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    let ((), closed) = tokio::join!(confirming, async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        settle(&app, day).await
    });
    assert_eq!(closed.len(), 1);
    let late = app
        .count(&format!(
            "SELECT count(*) AS n FROM settlement_lines WHERE settle_on = '{tomorrow}' AND confirmed_on = '{day}'"
        ))
        .await;
    // One more after the close, for certain.
    let extra = confirmed(&app, &buyer, &tokens, &[(product, 1)]).await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM settlement_lines
              WHERE partner_order_id = {} AND settle_on = '{tomorrow}' AND confirmed_on = '{day}'",
            extra[0]
        ))
        .await,
        1
    );
    settle(&app, tomorrow).await;
    let rows = settlements(&app).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (first, second) = (&rows[0], &rows[1]);
    assert_eq!(first.business_date, day);
    assert_eq!(second.business_date, tomorrow);
    assert_eq!(first.late_count, 0);
    assert_eq!(second.late_count, late + 1);
    // 14 partner orders, each settled once.
    assert_eq!(first.line_count + second.line_count, 14);
    assert_eq!(first.gross + second.gross, 140_000);
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM partner_orders p
              WHERE p.status = 'PURCHASE_CONFIRMED'
                AND (SELECT count(*) FROM settlement_lines l JOIN settlements s
                        ON s.partner_id = l.partner_id AND s.business_date = l.settle_on
                      WHERE l.partner_order_id = p.id) <> 1"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_chargeback_after_settlement_is_netted_into_the_next_settlement_exactly() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[]).await;
    let (a, a_token) = partner(&app, "claw-a", "404-04-00031").await;
    let (b, b_token) = partner(&app, "claw-b", "404-04-00032").await;
    let tokens = HashMap::from([(a, a_token.clone()), (b, b_token.clone())]);
    let day = today(&app);
    let tomorrow = day.succ_opt().unwrap();
    let pa = partner_product(&app, &a_token, 10_000, 10).await;
    let pb = partner_product(&app, &b_token, 5_000, 10).await;
    let pa2 = partner_product(&app, &a_token, 30_000, 10).await;
    let (_, buyer) = app.user_with_points("claw-buyer", 30_000).await;
    let order = place(
        &app,
        &buyer,
        json!({"items": [{"product_id": pa, "quantity": 1}, {"product_id": pb, "quantity": 1}],
               "payment": {"method": "CARD", "card_type": "KB", "card_no": CARD_NO}}),
    )
    .await;
    let id = order["order_id"].as_i64().unwrap();
    let paid = reaches(&app, &buyer, id, "PAID", Duration::from_secs(10)).await;
    let key = paid["payment"]["transaction_key"]
        .as_str()
        .unwrap()
        .to_owned();
    confirm_parts(&app, &buyer, &tokens, &paid).await;
    settle(&app, day).await;
    assert_eq!(
        settlements(&app).await,
        vec![
            row(a, day, [1, 0, 10_000, 1_000, 0, 9_000, 0]),
            row(b, day, [1, 0, 5_000, 500, 0, 4_500, 0]),
        ]
    );

    // The card is charged back after the day was settled: both partners give back their net.
    gw.console(&key, "chargebacks").await;
    reaches(&app, &buyer, id, "REFUNDED", Duration::from_secs(10)).await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM partner_ledger WHERE kind = 'CLAWBACK' AND settle_on = '{tomorrow}'
                AND ((partner_id = {a} AND amount = -9000) OR (partner_id = {b} AND amount = -4500))"
        ))
        .await,
        2
    );
    // A sells on; B does not.
    confirmed(&app, &buyer, &tokens, &[(pa2, 1)]).await;
    settle(&app, tomorrow).await;
    assert_eq!(
        settlements(&app).await,
        vec![
            row(a, day, [1, 0, 10_000, 1_000, 0, 9_000, 0]),
            // Confirmed today, after today was settled: a late line, in tomorrow's.
            row(a, tomorrow, [1, 1, 30_000, 3_000, 9_000, 18_000, 0]),
            row(b, day, [1, 0, 5_000, 500, 0, 4_500, 0]),
            row(b, tomorrow, [0, 0, 0, 0, 4_500, 0, 4_500]),
        ]
    );
    // B's shortfall is listed for an admin, and its balance reconciles.
    let (status, short) = app
        .get("/api/v1/admin/settlements/shortfalls", Some(&app.admin))
        .await;
    assert_eq!(status, StatusCode::OK, "{short}");
    assert_eq!(short["total_elements"], 1, "{short}");
    assert_eq!(short["content"][0]["partner_id"], b);
    assert_eq!(short["content"][0]["deficit"], 4_500);
    assert_eq!(short["content"][0]["since"], tomorrow.to_string());
    let balance = async |partner: i64| {
        let (status, body) = app
            .get(
                &format!("/api/v1/admin/partners/{partner}/balance"),
                Some(&app.admin),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    };
    assert_eq!(
        balance(b).await,
        json!({"partner_id": b, "earnings": 4_500, "payouts": 0, "clawbacks": 4_500,
               "balance": 0, "outstanding": 4_500, "deficit": 4_500, "pending_clawbacks": 0,
               "reconciled": true})
    );
    // Paying out B's first settlement leaves it owing the platform what the chargeback took.
    let (_, listed) = app
        .get(
            &format!("/api/v1/admin/settlements?date={day}"),
            Some(&app.admin),
        )
        .await;
    let b_first = listed["content"][1]["id"].as_i64().unwrap();
    let (status, _) = app
        .post(
            &format!("/api/v1/admin/settlements/{b_first}/payout"),
            Some(&app.admin),
            json!({"reference": "TR-B-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let b_balance = balance(b).await;
    assert_eq!(b_balance["balance"], -4_500);
    assert_eq!(b_balance["reconciled"], true);
    let (_, listed) = app
        .get(
            &format!("/api/v1/admin/settlements?date={tomorrow}"),
            Some(&app.admin),
        )
        .await;
    let b_second = listed["content"][1]["id"].as_i64().unwrap();
    let (status, nothing) = app
        .post(
            &format!("/api/v1/admin/settlements/{b_second}/payout"),
            Some(&app.admin),
            json!({"reference": "TR-B-2"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{nothing}");
    assert_eq!(nothing["code"], "NOTHING_TO_PAY_OUT");
    assert_eq!(balance(a).await["reconciled"], true);

    // Money balances: the customer kept 30,000 spent (the card came back); the partners keep
    // 27,000 (A's two days; B's 4,500 is owed back); the platform keeps 3,000, the commission of
    // the sale that stood (the charged-back sales' commission went back with them).
    let partners_keep = app
        .count(
            "SELECT (sum(amount) FILTER (WHERE kind IN ('EARNING', 'CLAWBACK')))::bigint AS n FROM partner_ledger_entries",
        )
        .await;
    assert_eq!(partners_keep, 27_000);
    let customer_spent = app
        .count("SELECT (sum(captured) - sum(refunded))::bigint AS n FROM payment_splits")
        .await;
    assert_eq!(customer_spent, 30_000);
    assert_eq!(customer_spent - partners_keep, 3_000);
    assert_money_balances(&app, &gw).await;
}

#[tokio::test]
async fn two_instances_racing_the_job_settle_a_day_once() {
    let app = spawn_app().await;
    let mut tokens = HashMap::new();
    let mut products = Vec::new();
    for i in 0..3 {
        let (id, token) = partner(&app, &format!("race-{i}"), &format!("404-04-0004{i}")).await;
        products.push((partner_product(&app, &token, 1_000 * (i + 1), 10).await, 1));
        tokens.insert(id, token);
    }
    let (_, buyer) = app.user_with_points("race-buyer", 100_000).await;
    confirmed(&app, &buyer, &tokens, &products).await;

    // Two instances' pools, two runs each, all at once, as if the job had fired tomorrow.
    let other = commerce_db::pool(&app.db.url, 4).unwrap();
    let settings = app.state.config.settlement.clone();
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    let run = |pool: commerce_db::Pool| {
        let (topics, settings) = (app.state.topics.clone(), settings.clone());
        async move {
            settlement_job::settle_due(&pool, &topics, &settings, tomorrow)
                .await
                .expect("the job runs")
        }
    };
    let (r1, r2, r3, r4) = tokio::join!(
        run(app.state.db.clone()),
        run(other.clone()),
        run(app.state.db.clone()),
        run(other.clone())
    );
    let outcomes: Vec<DayClosed> = [r1, r2, r3, r4].into_iter().flatten().collect();
    assert_eq!(
        outcomes.iter().filter(|d| !d.already_closed).count(),
        1,
        "{outcomes:?}"
    );
    assert!(outcomes.iter().all(|d| d.business_date == today(&app)));
    assert_eq!(
        app.count("SELECT count(*) AS n FROM settlement_days").await,
        1
    );
    assert_eq!(
        app.count("SELECT count(DISTINCT partner_id) AS n FROM settlements")
            .await,
        3
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM settlements").await, 3);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM partner_ledger_entries WHERE kind = 'EARNING'")
            .await,
        3
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM outbox WHERE event_type = 'SettlementCompleted'")
            .await,
        3
    );
    assert_eq!(
        app.count("SELECT sum(payable)::bigint AS n FROM settlements")
            .await,
        (1_000 + 2_000 + 3_000) * 9 / 10
    );
}

/// The command, as an operator runs it, against `app`'s database, in `time_zone`.
fn settle_command(app: &TestApp, date: NaiveDate, time_zone: &str) -> std::process::Command {
    let config = &app.state.config;
    let vars = commerce_testkit::TestEnv::new(
        &app.db.url,
        &config.redis_key_prefix,
        &commerce_testkit::kafka_settings(),
    )
    .topics(&config.catalog_topic, &config.order_topic)
    .with(&[("BUSINESS_TIME_ZONE", time_zone), ("RUST_LOG", "warn")])
    .vars();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_commerce-api"));
    command
        .args(["settle", "--date", &date.to_string()])
        .env_clear()
        .envs(vars)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

#[tokio::test]
async fn a_settlement_killed_halfway_leaves_nothing_and_its_rerun_writes_the_whole_day() {
    // Confirmations dated in UTC−12 and a command run in UTC+14: the confirmations' day has
    // ended where the command runs, as yesterday has at 04:00.
    let app = spawn_app_with(&[("BUSINESS_TIME_ZONE", "Etc/GMT+12")]).await;
    let day = today(&app);
    let mut tokens = HashMap::new();
    let mut items = Vec::new();
    for i in 0..4 {
        let (id, token) = partner(&app, &format!("kill-{i}"), &format!("404-04-0005{i}")).await;
        items.push((partner_product(&app, &token, 1_500 * (i + 1), 10).await, 2));
        tokens.insert(id, token);
    }
    let (_, buyer) = app.user_with_points("kill-buyer", 100_000).await;
    confirmed(&app, &buyer, &tokens, &items).await;
    confirmed(&app, &buyer, &tokens, &items[..2]).await;

    // Hold the outbox: the run writes its settlements and ledger entries, then waits to write
    // its events, in the middle of its transaction.
    let mut holder = app.conn().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE outbox IN SHARE MODE")
        .await
        .unwrap();
    let mut child = settle_command(&app, day, "Pacific/Kiritimati")
        .spawn()
        .unwrap();
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock'
                      AND query LIKE '%INSERT INTO outbox %'";
    commerce_testkit::eventually(
        "the run waits to write its events",
        Duration::from_secs(30),
        async || match app.count(waiting).await {
            0 => Err("not yet"),
            _ => Ok(()),
        },
    )
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    holder.batch_execute("ROLLBACK").await.unwrap();
    commerce_testkit::eventually(
        "the killed run's session ends",
        Duration::from_secs(30),
        async || match app
            .count(
                "SELECT count(*) AS n FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND query LIKE '%INSERT INTO outbox %'",
            )
            .await
        {
            0 => Ok(()),
            _ => Err("still there"),
        },
    )
    .await;
    assert_eq!(
        footprint(&app).await,
        (Vec::new(), 0, 0, 0),
        "nothing of the day"
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM settlement_days").await,
        0
    );

    let out = settle_command(&app, day, "Pacific/Kiritimati")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{day}\tclosed now\t4 settlements\t6 lines")),
        "{stdout}"
    );
    // Exactly an uninterrupted run's rows: the lines summed per partner by brute force.
    let mut conn = app.conn().await;
    let expected: Vec<Row> = diesel::sql_query(
        "SELECT partner_id, settle_on AS business_date, count(*) AS line_count, 0::bigint AS late_count,
                sum(gross)::bigint AS gross, sum(commission)::bigint AS commission, 0::bigint AS clawbacks,
                sum(gross - commission)::bigint AS payable, 0::bigint AS deficit
           FROM settlement_lines GROUP BY partner_id, settle_on ORDER BY partner_id, settle_on",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert_eq!(expected.len(), 4);
    let (rows, entries, sum, events) = footprint(&app).await;
    assert_eq!(rows, expected);
    assert_eq!(entries, 4);
    assert_eq!(sum, expected.iter().map(|r| r.payable).sum::<i64>());
    assert_eq!(events, 4);
    // And once more: closed before, nothing written.
    let before = footprint(&app).await;
    let out = settle_command(&app, day, "Pacific/Kiritimati")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("closed before"));
    assert_eq!(footprint(&app).await, before);
    // A day that has not ended is refused.
    let out = settle_command(&app, day, "Etc/GMT+12").output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has not ended"),
        "{out:?}"
    );
}
