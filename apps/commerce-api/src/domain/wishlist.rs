//! Wishlists: the products a customer wants to be told about.
//!
//! Distinct from likes: a like is public (the product's like count, the rankings' like signal)
//! and says nothing about wanting news; a wishlist is private to its owner and is what restock
//! and pre-sale alerts are sent for. Adding and removing are idempotent; a list holds at most
//! [`MAX_ITEMS`] products.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::catalog::{ProductSummary, ProductSummaryRow, summary_columns};
use crate::domain::{Error, Missing, Result};
use crate::infra::schema::{brands, products, wishlist_items};

/// Products one wishlist may hold.
pub const MAX_ITEMS: i64 = 500;

/// A product on a wishlist, and when it was added.
#[derive(Serialize, ToSchema, Debug)]
pub struct WishlistItem {
    pub product: ProductSummary,
    pub added_at: DateTime<Utc>,
}

/// Adds `product_id` to `user_id`'s wishlist. Returns the item and whether it was added now
/// (false: it was there already, unchanged).
pub async fn add(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    product_id: i64,
) -> Result<(WishlistItem, bool)> {
    conn.transaction::<_, Error, _>(async |conn| {
        let summary = summary(conn, product_id).await?;
        // Serialises one customer's additions, so the limit holds under concurrent requests.
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended('wishlist', $1))")
            .bind::<diesel::sql_types::BigInt, _>(user_id)
            .execute(conn)
            .await?;
        let existing: Option<DateTime<Utc>> = wishlist_items::table
            .find((user_id, product_id))
            .select(wishlist_items::created_at)
            .first(conn)
            .await
            .optional()?;
        if let Some(added_at) = existing {
            return Ok((
                WishlistItem {
                    product: summary,
                    added_at,
                },
                false,
            ));
        }
        let held: i64 = wishlist_items::table
            .filter(wishlist_items::user_id.eq(user_id))
            .count()
            .get_result(conn)
            .await?;
        if held >= MAX_ITEMS {
            return Err(Error::WishlistFull(MAX_ITEMS));
        }
        let added_at: DateTime<Utc> = diesel::insert_into(wishlist_items::table)
            .values((
                wishlist_items::user_id.eq(user_id),
                wishlist_items::product_id.eq(product_id),
            ))
            .returning(wishlist_items::created_at)
            .get_result(conn)
            .await?;
        Ok((
            WishlistItem {
                product: summary,
                added_at,
            },
            true,
        ))
    })
    .await
}

/// Removes `product_id` from `user_id`'s wishlist. Returns whether it was there.
pub async fn remove(conn: &mut AsyncPgConnection, user_id: i64, product_id: i64) -> Result<bool> {
    let removed = diesel::delete(wishlist_items::table.find((user_id, product_id)))
        .execute(conn)
        .await?;
    Ok(removed > 0)
}

/// A page of `user_id`'s wishlist, most recently added first, and the list's length.
pub async fn page(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    page: i64,
    size: i64,
) -> Result<(Vec<WishlistItem>, i64)> {
    let rows: Vec<(ProductSummaryRow, DateTime<Utc>)> = wishlist_items::table
        .inner_join(products::table.inner_join(brands::table))
        .filter(wishlist_items::user_id.eq(user_id))
        .order((
            wishlist_items::created_at.desc(),
            wishlist_items::product_id.desc(),
        ))
        .offset(page * size)
        .limit(size)
        .select((summary_columns(), wishlist_items::created_at))
        .load(conn)
        .await?;
    let total: i64 = wishlist_items::table
        .filter(wishlist_items::user_id.eq(user_id))
        .count()
        .get_result(conn)
        .await?;
    Ok((
        rows.into_iter()
            .map(|(row, added_at)| WishlistItem {
                product: row.into(),
                added_at,
            })
            .collect(),
        total,
    ))
}

async fn summary(conn: &mut AsyncPgConnection, product_id: i64) -> Result<ProductSummary> {
    products::table
        .inner_join(brands::table)
        .filter(products::id.eq(product_id))
        .select(summary_columns())
        .first::<ProductSummaryRow>(conn)
        .await
        .optional()?
        .map(Into::into)
        .ok_or(Error::NotFound(Missing::Product))
}
