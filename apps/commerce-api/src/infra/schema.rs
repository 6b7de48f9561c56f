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

diesel::table! {
    users (id) {
        id -> BigInt,
        login_id -> Text,
        password_hash -> Text,
        name -> Text,
        email -> Text,
        role -> Text,
        point_balance -> BigInt,
        created_at -> Timestamptz,
        partner_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    partners (id) {
        id -> BigInt,
        name -> Text,
        business_number -> Text,
        status -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    partner_orders (id) {
        id -> BigInt,
        order_id -> BigInt,
        partner_id -> BigInt,
        status -> Text,
        items_total -> BigInt,
        discount_share -> BigInt,
        points_share -> BigInt,
        card_share -> BigInt,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        paid_at -> Nullable<Timestamptz>,
        confirmed_at -> Nullable<Timestamptz>,
        cancelled_at -> Nullable<Timestamptz>,
        confirm_due_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    returns (id) {
        id -> BigInt,
        partner_order_id -> BigInt,
        reason -> Text,
        status -> Text,
        requested_at -> Timestamptz,
        resolved_at -> Nullable<Timestamptz>,
        confirm_left_ms -> Nullable<BigInt>,
    }
}

diesel::table! {
    shipments (partner_order_id) {
        partner_order_id -> BigInt,
        carrier -> Text,
        tracking_number -> Text,
        shipped_at -> Timestamptz,
        deliver_due_at -> Timestamptz,
        delivered_at -> Nullable<Timestamptz>,
        delivered_by -> Nullable<Text>,
    }
}

diesel::table! {
    payment_splits (partner_order_id, method) {
        partner_order_id -> BigInt,
        method -> Text,
        payment_id -> Nullable<BigInt>,
        amount -> BigInt,
        captured -> BigInt,
        refunded -> BigInt,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    point_charges (user_id, idempotency_key) {
        user_id -> BigInt,
        idempotency_key -> Text,
        amount -> BigInt,
        balance_after -> BigInt,
        ledger_id -> BigInt,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    point_ledger (id) {
        id -> BigInt,
        user_id -> BigInt,
        amount -> BigInt,
        kind -> Text,
        order_id -> Nullable<BigInt>,
        created_at -> Timestamptz,
        note -> Nullable<Text>,
        granted_by -> Nullable<BigInt>,
        partner_order_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    brands (id) {
        id -> BigInt,
        name -> Text,
        description -> Text,
        created_at -> Timestamptz,
        partner_id -> BigInt,
    }
}

diesel::table! {
    products (id) {
        id -> BigInt,
        brand_id -> BigInt,
        name -> Text,
        description -> Text,
        price -> BigInt,
        stock -> BigInt,
        like_count -> BigInt,
        sales_count -> BigInt,
        version -> BigInt,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        max_per_user -> Nullable<Integer>,
        sale_starts_at -> Nullable<Timestamptz>,
        sale_ends_at -> Nullable<Timestamptz>,
        partner_id -> BigInt,
    }
}

diesel::table! {
    product_likes (user_id, product_id) {
        user_id -> BigInt,
        product_id -> BigInt,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    wishlist_items (user_id, product_id) {
        user_id -> BigInt,
        product_id -> BigInt,
        created_at -> Timestamptz,
        restock_alerted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    coupons (id) {
        id -> BigInt,
        name -> Text,
        discount_type -> Text,
        discount_value -> BigInt,
        min_order_amount -> BigInt,
        max_discount_amount -> Nullable<BigInt>,
        total_quantity -> Nullable<BigInt>,
        issued_count -> BigInt,
        valid_from -> Nullable<Timestamptz>,
        valid_until -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    user_coupons (id) {
        id -> BigInt,
        coupon_id -> BigInt,
        user_id -> BigInt,
        status -> Text,
        order_id -> Nullable<BigInt>,
        issued_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    orders (id) {
        id -> BigInt,
        user_id -> BigInt,
        status -> Text,
        total_amount -> BigInt,
        discount_amount -> BigInt,
        final_amount -> BigInt,
        points_used -> BigInt,
        user_coupon_id -> Nullable<BigInt>,
        payment_method -> Text,
        idempotency_key -> Nullable<Text>,
        request_hash -> Nullable<Text>,
        created_at -> Timestamptz,
        paid_at -> Nullable<Timestamptz>,
        cancelled_at -> Nullable<Timestamptz>,
        kind -> Text,
    }
}

diesel::table! {
    order_items (order_id, product_id) {
        order_id -> BigInt,
        product_id -> BigInt,
        quantity -> BigInt,
        unit_price -> BigInt,
        partner_order_id -> BigInt,
        discount_share -> BigInt,
        points_share -> BigInt,
        quantity_cancelled -> BigInt,
        quantity_shipped -> BigInt,
        quantity_returned -> BigInt,
    }
}

diesel::table! {
    payments (id) {
        id -> BigInt,
        order_id -> BigInt,
        user_id -> BigInt,
        amount -> BigInt,
        card_type -> Text,
        card_no_masked -> Text,
        card_no_sealed -> Nullable<Binary>,
        status -> Text,
        transaction_key -> Nullable<Text>,
        reason -> Nullable<Text>,
        next_check_at -> Timestamptz,
        checks -> Integer,
        created_at -> Timestamptz,
        settled_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(products -> brands (brand_id));
diesel::table! {
    commission_policies (id) {
        id -> BigInt,
        partner_id -> Nullable<BigInt>,
        rate_bps -> Integer,
        fixed_fee -> BigInt,
        valid_from -> Date,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    settlement_days (business_date) {
        business_date -> Date,
        settlements -> Integer,
        lines -> BigInt,
        gross -> BigInt,
        commission -> BigInt,
        clawbacks -> BigInt,
        payable -> BigInt,
        closed_at -> Timestamptz,
    }
}

diesel::table! {
    settlement_lines (partner_order_id) {
        partner_order_id -> BigInt,
        partner_id -> BigInt,
        settle_on -> Date,
        confirmed_on -> Date,
        policy_id -> BigInt,
        rate_bps -> Integer,
        fixed_fee -> BigInt,
        gross -> BigInt,
        commission -> BigInt,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    settlements (id) {
        id -> BigInt,
        partner_id -> BigInt,
        business_date -> Date,
        line_count -> Integer,
        late_count -> Integer,
        gross -> BigInt,
        commission -> BigInt,
        clawbacks -> BigInt,
        carried -> BigInt,
        payable -> BigInt,
        deficit -> BigInt,
        paid_out_at -> Nullable<Timestamptz>,
        payout_reference -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    partner_ledger (id) {
        id -> BigInt,
        partner_id -> BigInt,
        kind -> Text,
        amount -> BigInt,
        settlement_id -> Nullable<BigInt>,
        partner_order_id -> Nullable<BigInt>,
        settle_on -> Nullable<Date>,
        refunded_to -> Nullable<BigInt>,
        reference -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(commission_policies -> partners (partner_id));
diesel::joinable!(settlement_lines -> partner_orders (partner_order_id));
diesel::joinable!(settlements -> partners (partner_id));

diesel::joinable!(users -> partners (partner_id));
diesel::joinable!(partner_orders -> orders (order_id));
diesel::joinable!(partner_orders -> partners (partner_id));
diesel::joinable!(order_items -> partner_orders (partner_order_id));
diesel::joinable!(payment_splits -> partner_orders (partner_order_id));
diesel::joinable!(shipments -> partner_orders (partner_order_id));
diesel::joinable!(returns -> partner_orders (partner_order_id));
diesel::joinable!(product_likes -> products (product_id));
diesel::joinable!(wishlist_items -> products (product_id));
diesel::joinable!(user_coupons -> coupons (coupon_id));
diesel::joinable!(order_items -> orders (order_id));
diesel::joinable!(point_charges -> point_ledger (ledger_id));

diesel::table! {
    refunds (id) {
        id -> BigInt,
        payment_id -> BigInt,
        order_id -> BigInt,
        user_id -> BigInt,
        transaction_key -> Text,
        amount -> BigInt,
        cause -> Text,
        status -> Text,
        gateway_refund_key -> Nullable<Text>,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        next_attempt_at -> Timestamptz,
        created_at -> Timestamptz,
        refunded_at -> Nullable<Timestamptz>,
        partner_order_id -> Nullable<BigInt>,
    }
}

diesel::joinable!(refunds -> payments (payment_id));

diesel::table! {
    payment_events (id) {
        id -> BigInt,
        payment_id -> BigInt,
        order_id -> BigInt,
        at -> Timestamptz,
        kind -> Text,
        source -> Text,
        status -> Text,
        transaction_key -> Nullable<Text>,
        reason -> Nullable<Text>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    outbox,
    users,
    point_ledger,
    point_charges,
    brands,
    products,
    product_likes,
    wishlist_items,
    coupons,
    user_coupons,
    orders,
    order_items,
    payments,
    refunds,
    payment_events,
    partners,
    partner_orders,
    payment_splits,
    shipments,
    returns,
    commission_policies,
    settlement_days,
    settlement_lines,
    settlements,
    partner_ledger,
);
