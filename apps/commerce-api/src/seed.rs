//! `commerce-api seed`: a small demo catalog for local development.
//!
//! Idempotent: does nothing when any product exists. Products go through the same insert as
//! the admin route, so their `ProductCreated` events reach the collector like any other.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::domain::catalog::{self, NewProduct, Scope};
use crate::domain::partners;
use crate::domain::states::DiscountType;
use crate::infra::outbox::Topics;
use crate::infra::schema::{brands, coupons, products};

/// A brand and its products: (name, price, stock).
type DemoBrand = (&'static str, &'static [(&'static str, i64, i64)]);

const CATALOG: &[DemoBrand] = &[
    (
        "Northwind",
        &[
            ("Trail Runner", 89_000, 120),
            ("Rain Shell", 129_000, 60),
            ("Wool Socks", 12_000, 500),
        ],
    ),
    (
        "Hanbit",
        &[
            ("Ceramic Mug", 18_000, 300),
            ("Pour-over Kettle", 54_000, 80),
            ("Tea Sampler", 24_000, 200),
        ],
    ),
    (
        "Seoul Tech",
        &[
            ("Wireless Earbuds", 149_000, 150),
            ("USB-C Charger", 35_000, 400),
            ("Desk Lamp", 67_000, 90),
        ],
    ),
];

/// Seeds brands, products and one coupon unless the catalog has products already.
pub async fn seed(database_url: &str, topics: &Topics) -> anyhow::Result<()> {
    let pool = commerce_db::pool(database_url, 2)?;
    let mut conn = pool.get().await?;
    let existing: i64 = products::table.count().get_result(&mut conn).await?;
    if existing > 0 {
        tracing::info!(
            products = existing,
            "catalog already present; nothing seeded"
        );
        return Ok(());
    }
    for (brand, items) in CATALOG {
        let brand_id: i64 = diesel::insert_into(brands::table)
            .values((
                brands::name.eq(brand),
                brands::description.eq("demo brand"),
                brands::partner_id.eq(partners::HOUSE),
            ))
            .returning(brands::id)
            .get_result(&mut conn)
            .await?;
        for (name, price, stock) in *items {
            let req = NewProduct {
                brand_id,
                name: (*name).to_owned(),
                description: format!("{name} by {brand}"),
                price: *price,
                stock: *stock,
                rules: Default::default(),
            };
            catalog::create_product(&mut conn, topics, Scope::Any, &req)
                .await
                .map_err(|e| anyhow::anyhow!("seeding {name}: {e}"))?;
        }
    }
    diesel::insert_into(coupons::table)
        .values((
            coupons::name.eq("Welcome 10% (max 5,000 won)"),
            coupons::discount_type.eq(DiscountType::Rate),
            coupons::discount_value.eq(10),
            coupons::max_discount_amount.eq(Some(5_000)),
            coupons::total_quantity.eq(Some(100)),
        ))
        .execute(&mut conn)
        .await?;
    tracing::info!("demo catalog seeded: 3 brands, 9 products, 1 coupon");
    Ok(())
}
