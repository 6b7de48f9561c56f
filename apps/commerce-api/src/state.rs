//! Shared application state handed to every handler.

use std::sync::Arc;

use commerce_cache::Cache;
use commerce_db::Pool;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::outbox::Topics;

/// Cheap-to-clone handle to everything a handler needs.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

/// The app's long-lived resources.
pub struct App {
    pub config: Config,
    /// The primary's pool: every write and every read that must see the latest write.
    pub db: Pool,
    pub cache: Cache,
    pub auth: Arc<Authenticator>,
    pub topics: Topics,
    /// Best-effort publisher of `ProductViewed` (no outbox row: views are high volume).
    pub views: crate::views::ViewPublisher,
    pub product_cache: crate::product_cache::ProductCache,
    pub coupon_terms: crate::routes::coupons::CouponTermsCache,
    /// The payment gateway's client (timeouts, retries, circuit breaker).
    pub gateway: Arc<crate::gateway::Gateway>,
    /// Seals card numbers until the gateway has them.
    pub cards: crate::card::CardVault,
}

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}
