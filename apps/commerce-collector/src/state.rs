//! Shared application state handed to every handler.

use std::sync::Arc;

use commerce_cache::Cache;
use commerce_db::Pool;

use crate::config::Config;
use crate::ranking::live::Live;

/// Cheap-to-clone handle to everything a handler needs.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

/// The app's long-lived resources.
pub struct App {
    pub config: Config,
    /// The primary's pool: every write and every read that must see the latest write.
    pub db: Pool,
    pub cache: Cache,
    /// The live rankings in Redis.
    pub live: Live,
    /// Ranking responses reused for `RANKING_CACHE_TTL_MS` (serialised bodies).
    pub responses: commerce_cache::Local<bytes::Bytes>,
    /// Rankings materialised on a first read are materialised one at a time.
    pub materializing: tokio::sync::Mutex<()>,
}

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}
