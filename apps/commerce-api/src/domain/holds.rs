//! What an order holds while it stands: its lines' stock, the points it used, its coupon; and
//! the one place they are given back.
//!
//! Rule: [`release`] runs inside a transaction that holds the order's row lock, so it runs once
//! per order whoever triggers it (a cancellation, a failed payment) and whatever races it.

use chrono::{DateTime, Utc};
use commerce_events::OrderLine;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::Result;
use crate::domain::partner_orders;
pub use crate::domain::points::WhenSpent;
use crate::domain::points::{self, Credit};
use crate::domain::states::{CouponStatus, OrderKind};
use crate::infra::schema::{order_items, orders, user_coupons};

/// The order's lines, in product-id order.
pub async fn lines(conn: &mut AsyncPgConnection, order_id: i64) -> Result<Vec<OrderLine>> {
    let items: Vec<(i64, i64, i64)> = order_items::table
        .filter(order_items::order_id.eq(order_id))
        .order(order_items::product_id)
        .select((
            order_items::product_id,
            order_items::quantity,
            order_items::unit_price,
        ))
        .load(conn)
        .await?;
    Ok(items
        .into_iter()
        .map(|(product_id, quantity, unit_price)| OrderLine {
            product_id,
            quantity,
            unit_price,
        })
        .collect())
}

/// Puts `lines`' units back in stock, locking their products in product-id order (the order
/// every transaction takes them in), inside the caller's transaction.
pub(crate) async fn restock(conn: &mut AsyncPgConnection, lines: &[OrderLine]) -> Result<()> {
    let ids: Vec<i64> = lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    diesel::sql_query("SELECT id FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind::<Array<BigInt>, _>(&ids)
        .execute(conn)
        .await?;
    diesel::sql_query(
        "UPDATE products p SET stock = p.stock + l.quantity
           FROM unnest($1::bigint[], $2::bigint[]) AS l(id, quantity)
          WHERE p.id = l.id",
    )
    .bind::<Array<BigInt>, _>(&ids)
    .bind::<Array<BigInt>, _>(&quantities)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives back everything an order still holds, inside the caller's transaction (which must hold
/// the order's row lock, so this runs once per order): its stock (less the units of partner
/// orders cancelled or returned on their own, which went back then), its points (less those
/// already given back with such partner orders) and its coupon; a paid top-up's credited points
/// are taken back, as `when_spent` says if they are spent. Returns the lines given back, with
/// the units given back now.
pub async fn release(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    when_spent: WhenSpent,
) -> Result<Vec<OrderLine>> {
    let (user_id, points_used, user_coupon_id, kind): (i64, i64, Option<i64>, OrderKind) =
        orders::table
            .find(order_id)
            .select((
                orders::user_id,
                orders::points_used,
                orders::user_coupon_id,
                orders::kind,
            ))
            .first(conn)
            .await?;
    let held: Vec<(i64, i64, i64)> = order_items::table
        .filter(order_items::order_id.eq(order_id))
        .order(order_items::product_id)
        .select((
            order_items::product_id,
            order_items::quantity
                - order_items::quantity_cancelled
                - order_items::quantity_returned,
            order_items::unit_price,
        ))
        .load(conn)
        .await?;
    let lines: Vec<OrderLine> = held
        .into_iter()
        .filter(|(_, quantity, _)| *quantity > 0)
        .map(|(product_id, quantity, unit_price)| OrderLine {
            product_id,
            quantity,
            unit_price,
        })
        .collect();
    restock(conn, &lines).await?;
    // Points given back with partner orders cancelled or returned on their own.
    let given_back = partner_orders::points_given_back(conn, order_id).await?;
    let points_left = points_used - given_back;
    if points_left > 0 {
        points::credit(conn, user_id, points_left, Credit::Refund { order_id }).await?;
    }
    if kind == OrderKind::PointTopUp {
        // A paid top-up's points go back with it.
        points::reverse_top_up(conn, order_id, user_id, when_spent).await?;
    }
    if let Some(uc) = user_coupon_id {
        diesel::update(user_coupons::table.find(uc))
            .set((
                user_coupons::status.eq(CouponStatus::Available),
                user_coupons::used_at.eq(None::<DateTime<Utc>>),
                user_coupons::order_id.eq(None::<i64>),
            ))
            .execute(conn)
            .await?;
    }
    Ok(lines)
}
