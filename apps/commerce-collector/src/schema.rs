//! Table definitions, kept in step with `migrations/` by hand.

diesel::table! {
    event_handled (consumer_group, event_id) {
        consumer_group -> Text,
        event_id -> Uuid,
        handled_at -> Timestamptz,
    }
}
