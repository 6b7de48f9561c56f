//! commerce-api's integration tests: one binary (one link), one module per area. Every test
//! runs the API in-process on a port of its own against real PostgreSQL, Redis and the broker
//! (see `commerce_testkit`), and asserts on the wire and in the database.

mod accounts;
mod alerts;
mod catalog;
mod contract;
mod coupons;
mod discovery;
mod drain;
mod drops;
mod edge;
mod fulfilment;
mod gateway_auth;
mod harness_isolation;
mod lifecycle;
mod marketplace;
mod migrations;
mod order_events;
mod orders;
mod partial_refunds;
mod payments;
mod platform;
mod points;
mod product_cache;
mod redis_cluster;
mod refunds;
mod relay;
mod reversals;
mod sessions;
mod settlement;
mod support;
mod views;
mod wishlist;
