//! commerce-collector's integration tests: one binary (one link), one module per area. Every
//! test runs collectors (and, for end-to-end tests, an API and a gateway) in-process against
//! real PostgreSQL, Redis and the broker, with topics, a group and a database of its own.

mod broker_outage;
mod card_sales;
mod contract;
mod dead_letters;
mod end_to_end;
mod fold;
mod group;
mod lag;
mod migrations;
mod partner_sales;
mod pipeline;
mod platform;
mod rankings;
mod rollup;
mod support;
mod topics;
mod tracing;
