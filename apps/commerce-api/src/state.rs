//! Shared application state handed to every handler.

use std::sync::Arc;

use commerce_cache::Cache;
use commerce_db::Pool;

use crate::config::Config;
use crate::domain::coupons::Coupons;
use crate::domain::payments::Payments;
use crate::infra::auth::Authenticator;
use crate::infra::limits::Limits;
use crate::infra::order_events::OrderEvents;
use crate::infra::outbox::Topics;
use crate::infra::product_cache::ProductCache;
use crate::infra::views::ViewPublisher;

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
    /// The rate limits (this instance's share; see [`crate::infra::limits`]).
    pub limits: Arc<Limits>,
    pub topics: Topics,
    /// Best-effort publisher of `ProductViewed` (no outbox row: views are high volume).
    pub views: Arc<ViewPublisher>,
    pub product_cache: Arc<ProductCache>,
    /// Order status changes for the order-status streams.
    pub order_events: Arc<OrderEvents>,
    /// First-come coupon issuing (the Redis gate and the terms cache).
    pub coupons: Arc<Coupons>,
    /// Card payments: the gateway's client, the card vault, settling and reconciliation.
    pub payments: Arc<Payments>,
    /// Where the administrator credentials stand ([`crate::startup::secure_admin`]).
    pub admin: Arc<AdminStatus>,
    /// Sessions that ended, as this instance knows them (a request checks them locally).
    pub revocations: Arc<crate::infra::revocations::Revocations>,
}

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// Where the administrator credentials stand: not checked yet, applied, or refused (in
/// production, an administrator accepts the development password: the instance is unready).
#[derive(Debug, Default)]
pub struct AdminStatus(std::sync::atomic::AtomicU8);

impl AdminStatus {
    const APPLIED: u8 = 1;
    const REFUSED: u8 = 2;

    pub fn applied(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) == Self::APPLIED
    }

    pub fn refused(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) == Self::REFUSED
    }

    pub fn set_applied(&self) {
        self.0
            .store(Self::APPLIED, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_refused(&self) {
        self.0
            .store(Self::REFUSED, std::sync::atomic::Ordering::Relaxed);
    }
}
