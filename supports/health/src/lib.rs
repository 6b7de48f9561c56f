//! The readiness check every dependency (PostgreSQL, Redis, the broker, the consumer loop)
//! implements, with nothing else: the infrastructure crates implement it without depending on
//! the web stack, and `commerce_web::health` serves the checks at `/health/ready`.

use std::future::Future;
use std::pin::Pin;

/// What a check resolves to: `Err(reason)` when the dependency is unusable.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A dependency whose reachability decides readiness.
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Short name shown in the readiness body, e.g. `database`.
    fn name(&self) -> &'static str;
    /// Resolves to `Err(reason)` when the dependency is unusable.
    fn check(&self) -> CheckFuture<'_>;
}

/// A shared check, for one dependency listed under two routes.
impl<T: ReadinessCheck> ReadinessCheck for std::sync::Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn check(&self) -> CheckFuture<'_> {
        (**self).check()
    }
}
