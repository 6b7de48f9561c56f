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
    }
}
