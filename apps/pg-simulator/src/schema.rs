//! Table definitions, kept in step with `migrations/` by hand.

diesel::table! {
    payments (transaction_key) {
        transaction_key -> Text,
        user_id -> Text,
        order_id -> Text,
        card_type -> Text,
        card_no -> Text,
        amount -> BigInt,
        callback_url -> Text,
        status -> Text,
        reason -> Nullable<Text>,
        created_at -> Timestamptz,
        settle_at -> Timestamptz,
        settled_at -> Nullable<Timestamptz>,
        callback_status -> Nullable<Text>,
        traceparent -> Nullable<Text>,
        refund_key -> Nullable<Text>,
        refunded_amount -> BigInt,
    }
}

diesel::table! {
    idempotency_keys (user_id, idempotency_key) {
        user_id -> Text,
        idempotency_key -> Text,
        request_hash -> Text,
        transaction_key -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(idempotency_keys -> payments (transaction_key));
diesel::allow_tables_to_appear_in_same_query!(payments, idempotency_keys);

diesel::table! {
    refunds (refund_key) {
        refund_key -> Text,
        transaction_key -> Text,
        user_id -> Text,
        idempotency_key -> Nullable<Text>,
        amount -> BigInt,
        reason -> Nullable<Text>,
        created_at -> Timestamptz,
        initiated_by -> Text,
        kind -> Text,
    }
}

diesel::joinable!(refunds -> payments (transaction_key));
diesel::allow_tables_to_appear_in_same_query!(payments, refunds);
