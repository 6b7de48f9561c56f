//! The simulator's configuration, read from the environment in one place.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `HTTP_ADDR` | `127.0.0.1:8082` | listen address (`0.0.0.0:8082` in containers) |

use std::net::SocketAddr;

use commerce_config::{ConfigError, Reader};

/// Everything the simulator reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let r = Reader::default();
        Ok(Self {
            http_addr: r.or("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8082)))?,
        })
    }
}
