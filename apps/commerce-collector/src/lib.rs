//! The read side: consumes commerce events from Kafka, applies each exactly once in effect
//! (through `event_handled`, written in the same transaction as the metric update), keeps
//! product metrics and their rollups, and serves the ranking API.
//!
//! The collector owns its database and never reads the API's.

pub mod apply;
pub mod config;
pub mod consumer;
pub mod dedupe;
pub mod dlq;
pub mod error;
pub mod fold;
pub mod jobs;
pub mod metrics;
pub mod partner_sales;
pub mod ranking;
pub mod rollup;
pub mod schema;
pub mod startup;
pub mod state;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};

/// This app's migrations, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");
