//! Infrastructure: the database schema, the outbox and its relay, the payment gateway's client,
//! caches, tokens and trace context.
//!
//! Rule: nothing here imports `crate::domain` or `crate::http`. Infrastructure knows tables,
//! brokers and remote APIs, never business rules; the domain calls it, never the other way.

pub mod auth;
pub mod gateway;
pub mod jwt;
pub mod limits;
pub mod listener;
pub mod mail;
pub mod order_events;
pub mod outbox;
pub mod passwords;
pub mod product_cache;
pub mod relay;
pub mod revocations;
pub mod schema;
pub mod views;
