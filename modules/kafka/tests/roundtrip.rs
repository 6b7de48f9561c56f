//! A message produced through this module is consumed back through a consumer group, and the
//! progress the group committed survives the consumer: a new member of the same group does not
//! receive the consumed messages again.

use std::collections::BTreeSet;
use std::time::Duration;

use commerce_kafka::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use commerce_kafka::rdkafka::message::Message;
use commerce_kafka::rdkafka::producer::FutureRecord;
use commerce_kafka::rdkafka::{Offset, TopicPartitionList};
use commerce_testkit::TestKafka;

async fn receive(consumer: &StreamConsumer, n: usize, wait: Duration) -> Vec<(i32, i64, String)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while got.len() < n {
        let Ok(msg) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let msg = msg.expect("consume");
        let payload = String::from_utf8(msg.payload().unwrap().to_vec()).unwrap();
        // Store only after "processing": offsets follow the side effect.
        consumer
            .store_offset_from_message(&msg)
            .expect("store offset");
        got.push((msg.partition(), msg.offset(), payload));
    }
    got
}

#[tokio::test]
async fn produced_messages_are_consumed_by_a_group_and_committed_progress_survives() {
    let kafka = TestKafka::new().await;
    let topics = kafka.create_topics(&[("roundtrip", 3)]).await;
    let topic = &topics[0];
    let group = kafka.group("roundtrip");

    let producer = kafka.settings.producer("test").unwrap();
    for i in 0..30 {
        let key = format!("key-{}", i % 7);
        let value = format!("message-{i}");
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }

    let consumer: StreamConsumer = kafka.settings.consumer_config(&group).create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let got = receive(&consumer, 30, Duration::from_secs(60)).await;
    let payloads: BTreeSet<String> = got.iter().map(|(_, _, p)| p.clone()).collect();
    assert_eq!(payloads.len(), 30, "every message arrives once: {got:?}");
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit stored offsets");

    // The group's committed offsets add up to every message consumed.
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 30, "committed offsets: {committed:?}");
    drop(consumer);

    // Ten more; a new member of the same group gets exactly those.
    for i in 30..40 {
        let value = format!("message-{i}");
        producer
            .send(
                FutureRecord::to(topic).key("later").payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
    let second: StreamConsumer = kafka.settings.consumer_config(&group).create().unwrap();
    second.subscribe(&[topic]).unwrap();
    let rest = receive(&second, 10, Duration::from_secs(60)).await;
    let rest: BTreeSet<String> = rest.into_iter().map(|(_, _, p)| p).collect();
    let expected: BTreeSet<String> = (30..40).map(|i| format!("message-{i}")).collect();
    assert_eq!(rest, expected);
    // Nothing else (no redelivery of the first thirty) arrives.
    let extra = receive(&second, 1, Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "redelivered: {extra:?}");
}
