//! Shared application state handed to every handler.

use std::sync::Arc;

use commerce_cache::Cache;
use commerce_db::Pool;

use crate::config::Config;

/// Cheap-to-clone handle to everything a handler needs.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

/// The app's long-lived resources.
pub struct App {
    pub config: Config,
    /// The primary's pool: every write and every read that must see the latest write.
    pub db: Pool,
    pub cache: Cache,
}

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}
