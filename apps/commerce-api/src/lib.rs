//! The storefront's transactional API.
//!
//! Layers, each importing only those below it (see `docs/architecture.md`):
//! - [`http`]: handlers parse requests into domain types, call the domain, map results to HTTP;
//! - [`domain`]: the business rules (orders, payments and their reconciliation, coupons,
//!   catalog writes, accounts), taking a connection or a context and returning domain errors;
//! - [`infra`]: the schema, the outbox and its relay, the gateway's client, caches, tokens.
//!
//! [`startup`] wires them together and [`state`] holds the wired resources. Nothing another
//! service needs to know about is changed without an outbox row committed in the same
//! transaction.

pub mod config;
pub mod domain;
pub mod http;
pub mod infra;
pub mod metrics;
pub mod seed;
pub mod startup;
pub mod state;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};

/// This app's migrations, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");
