//! The storefront's transactional API.
//!
//! HTTP handlers parse requests into domain types, run one database transaction that writes the
//! change *and* its outbox event, and respond. Nothing another service needs to know about is
//! changed without an outbox row committed in the same transaction.

pub mod config;
pub mod schema;
pub mod startup;
pub mod state;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};

/// This app's migrations, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");
