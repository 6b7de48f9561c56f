//! Table definitions, kept in step with `migrations/` by hand (the project builds without libpq,
//! so `diesel print-schema` is not part of the workflow).

diesel::table! {
    outbox (id) {
        id -> BigInt,
        event_id -> Uuid,
        topic -> Text,
        partition_key -> Text,
        event_type -> Text,
        envelope -> Jsonb,
        traceparent -> Nullable<Text>,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
        attempts -> Integer,
        last_error -> Nullable<Text>,
    }
}
