//! Order status changes, as they commit, for the order-status streams of this instance.
//!
//! Triggers NOTIFY `order_status` (`<id>:<status>`) and `partner_order_status`
//! (`<order>:<partner order>:<status>`) at commit; one listener per channel and instance
//! ([`listen`], [`listen_partner_orders`]) fans each change out to every stream here. A stream that falls behind, or a
//! listener that reconnected (changes may have been missed), is told to read the order again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use crate::infra::listener::Heard;

/// What a stream hears.
#[derive(Debug, Clone)]
pub enum Change {
    /// Order `id` has this status now.
    Status(i64, String),
    /// Partner order (second) of order (first) has this status now.
    PartnerOrder(i64, i64, String),
    /// Changes may have been missed: read the order again.
    Resync,
}

/// The fan-out, and how many streams each user has open on this instance.
pub struct OrderEvents {
    changes: broadcast::Sender<Change>,
    open: Mutex<HashMap<i64, usize>>,
    per_user: usize,
}

/// One open stream; closing it (dropping this) frees the user's slot.
pub struct StreamSlot {
    events: Arc<OrderEvents>,
    user_id: i64,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.events.open.lock().expect("lock poisoned");
        if let Some(n) = open.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user_id);
            }
        }
    }
}

impl OrderEvents {
    /// At most `per_user` open streams per user on this instance.
    pub fn new(per_user: usize) -> Arc<Self> {
        let (changes, _) = broadcast::channel(1024);
        Arc::new(Self {
            changes,
            open: Mutex::new(HashMap::new()),
            per_user,
        })
    }

    /// A slot for one more stream of `user_id`, unless they have `per_user` open already.
    pub fn open(self: &Arc<Self>, user_id: i64) -> Option<StreamSlot> {
        let mut open = self.open.lock().expect("lock poisoned");
        let n = open.entry(user_id).or_default();
        if *n >= self.per_user {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            events: self.clone(),
            user_id,
        })
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

/// Feeds [`OrderEvents`] from `LISTEN order_status` until `stop` turns.
pub async fn listen(events: Arc<OrderEvents>, database_url: String, stop: watch::Receiver<bool>) {
    let on = |heard: Heard| {
        let change = match heard {
            Heard::Connected => Some(Change::Resync),
            Heard::Notified(payload) => payload
                .split_once(':')
                .and_then(|(id, status)| Some(Change::Status(id.parse().ok()?, status.to_owned()))),
        };
        if let Some(change) = change {
            // No stream open: nobody to tell.
            let _ = events.changes.send(change);
        }
        async {}
    };
    crate::infra::listener::listen(database_url, "order_status", on, stop).await;
}

/// Feeds [`OrderEvents`] from `LISTEN partner_order_status` until `stop` turns.
pub async fn listen_partner_orders(
    events: Arc<OrderEvents>,
    database_url: String,
    stop: watch::Receiver<bool>,
) {
    let on = |heard: Heard| {
        let change = match heard {
            Heard::Connected => Some(Change::Resync),
            Heard::Notified(payload) => {
                let mut parts = payload.splitn(3, ':');
                (|| {
                    let order = parts.next()?.parse().ok()?;
                    let partner_order = parts.next()?.parse().ok()?;
                    Some(Change::PartnerOrder(
                        order,
                        partner_order,
                        parts.next()?.to_owned(),
                    ))
                })()
            }
        };
        if let Some(change) = change {
            let _ = events.changes.send(change);
        }
        async {}
    };
    crate::infra::listener::listen(database_url, "partner_order_status", on, stop).await;
}
