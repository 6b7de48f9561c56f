//! The storefront's transactional API.
//!
//! HTTP handlers parse requests into domain types, run one database transaction that writes the
//! change *and* its outbox event, and respond. Nothing another service needs to know about is
//! changed without an outbox row committed in the same transaction.

pub mod auth;
pub mod card;
pub mod config;
pub mod error;
pub mod gateway;
pub mod outbox;
pub mod payments;
pub mod product_cache;
pub mod reconcile;
pub mod relay;
pub mod routes;
pub mod schema;
pub mod seed;
pub mod startup;
pub mod state;
pub mod trace;
pub mod views;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};

/// This app's migrations, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");
