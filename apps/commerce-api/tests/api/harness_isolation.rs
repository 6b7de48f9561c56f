//! The test harness isolates tests that run at the same time: each has its own database and
//! Redis key prefix, so two tests writing the same natural key never see each other's write.
//! nextest runs these two in parallel processes.

use commerce_testkit::TestDb;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

const SHARED_EVENT_ID: &str = "0193a000-0000-7000-8000-000000000001";

async fn write_same_key_and_see_only_own(marker: &str) {
    use commerce_api::infra::schema::outbox::dsl::*;
    let db = TestDb::new("commerce_api", commerce_api::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let shared = uuid_from(SHARED_EVENT_ID);
    // `event_id` is unique: in a shared database the second writer would fail here.
    diesel::insert_into(outbox)
        .values((
            event_id.eq(shared),
            topic.eq("t"),
            partition_key.eq(marker),
            event_type.eq("Test"),
            envelope.eq(serde_json::json!({})),
        ))
        .execute(&mut conn)
        .await
        .expect("the key is free in this test's own database");
    // Give the other test time to write too.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let keys: Vec<String> = outbox.select(partition_key).load(&mut conn).await.unwrap();
    assert_eq!(keys, [marker], "only this test's row is visible");

    let cache = commerce_testkit::redis().await;
    let mut redis = cache.conn().await.unwrap();
    let key = cache.key("shared");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(marker)
        .query_async(&mut redis)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let seen: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(seen, marker);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
}

fn uuid_from(s: &str) -> uuid::Uuid {
    s.parse().unwrap()
}

#[tokio::test]
async fn first_writer_sees_only_its_own_row() {
    write_same_key_and_see_only_own("first").await;
}

#[tokio::test]
async fn second_writer_sees_only_its_own_row() {
    write_same_key_and_see_only_own("second").await;
}
