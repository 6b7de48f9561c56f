//! Table definitions, kept in step with `migrations/` by hand.

diesel::table! {
    event_handled (event_id, recorded_at) {
        event_id -> Uuid,
        recorded_at -> Timestamptz,
        handled_at -> Timestamptz,
        consumer_group -> Text,
    }
}
