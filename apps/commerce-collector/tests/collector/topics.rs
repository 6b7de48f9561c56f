//! Topics on the broker: created with the configured retention, and a topic that would keep
//! events past the dedupe horizon, or is missing while the apps may not create it, is refused.

use std::time::Duration;

use commerce_kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication,
};
use commerce_kafka::rdkafka::client::DefaultClientContext;
use commerce_testkit::TestKafka;

fn admin(kafka: &TestKafka) -> AdminClient<DefaultClientContext> {
    let mut config = commerce_kafka::rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", &kafka.settings.brokers);
    config.create().unwrap()
}

async fn retention_ms(kafka: &TestKafka, topic: &str) -> Option<String> {
    let described = admin(kafka)
        .describe_configs(
            [ResourceSpecifier::Topic(topic)].iter(),
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    resource.get("retention.ms").and_then(|e| e.value.clone())
}

#[tokio::test]
async fn topics_are_created_with_their_retention_and_one_that_keeps_events_longer_is_refused() {
    let kafka = TestKafka::new().await;
    let mut settings = kafka.settings.clone();
    settings.topic_retention_hours = 72;
    let made = kafka.topic("made");
    settings.ensure_topics(&[(&made, 3)]).await.unwrap();
    assert_eq!(
        retention_ms(&kafka, &made).await.as_deref(),
        Some("259200000"),
        "72 hours"
    );

    // A topic someone else created to keep messages forever.
    let forever = kafka.topic("forever");
    admin(&kafka)
        .create_topics(
            [NewTopic::new(&forever, 3, TopicReplication::Fixed(1)).set("retention.ms", "-1")]
                .iter(),
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let refused = settings
        .ensure_topics(&[(&forever, 3)])
        .await
        .expect_err("a topic that keeps events forever is refused");
    assert!(
        format!("{refused:#}").contains("keeps messages for ever"),
        "{refused:#}"
    );

    // Not allowed to create topics: a missing one is named, and nothing is created.
    settings.manage_topics = false;
    let missing = kafka.topic("missing");
    let refused = settings
        .ensure_topics(&[(&missing, 3)])
        .await
        .expect_err("a missing topic is refused");
    assert!(
        format!("{refused:#}").contains(&format!("{missing} does not exist")),
        "{refused:#}"
    );
    // The topic the apps made passes the check without being created again.
    settings.ensure_topics(&[(&made, 3)]).await.unwrap();
}
