//! `LISTEN` on a session of its own, for as long as the app runs: each notification's payload
//! is handed to the caller, and a (re)connect is announced, because notifications sent while the
//! session was down are lost and the caller must assume anything changed meanwhile.

use std::future::Future;
use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use futures::StreamExt;
use tokio::sync::watch;

/// What a listener hears.
pub enum Heard {
    /// The session is (again) listening: whatever was notified before may have been missed.
    Connected,
    /// One notification's payload.
    Notified(String),
}

/// Listens on `channel` until `stop` turns, calling `on` for every [`Heard`]; reconnects with
/// backoff after a lost session, and proves an idle session alive every 5 s.
pub async fn listen<F, Fut>(
    database_url: String,
    channel: &'static str,
    mut on: F,
    mut stop: watch::Receiver<bool>,
) where
    F: FnMut(Heard) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match listen_once(&database_url, channel, &mut on, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(channel, error = %format!("{e:#}"), "listener session lost; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once<F, Fut>(
    database_url: &str,
    channel: &'static str,
    on: &mut F,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    F: FnMut(Heard) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut conn = commerce_db::connect(database_url).await?;
    conn.batch_execute(&format!("LISTEN {channel}")).await?;
    on(Heard::Connected).await;
    loop {
        let heard = {
            let mut notifications = std::pin::pin!(conn.notifications_stream());
            tokio::select! {
                n = notifications.next() => match n {
                    Some(Ok(n)) => Some(n.payload),
                    Some(Err(e)) => return Err(anyhow::Error::new(e)),
                    None => anyhow::bail!("the listening session closed"),
                },
                _ = tokio::time::sleep(Duration::from_secs(5)) => None,
                _ = stop.changed() => return Ok(()),
            }
        };
        match heard {
            Some(payload) => on(Heard::Notified(payload)).await,
            // A dead connection delivers nothing: prove it is alive.
            None => conn.batch_execute("SELECT 1").await?,
        }
    }
}
