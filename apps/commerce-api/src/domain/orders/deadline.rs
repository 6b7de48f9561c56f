//! The time an order (or a top-up) may take to place: `ORDER_TIMEOUT_MS`.
//!
//! Inside the placing transaction, every statement runs under a `statement_timeout` of the
//! limit (so a statement waiting for a row lock gives up on the server), and the transaction's
//! body runs under the same limit on the client (so no sequence of statements outlasts it
//! either). Either way the transaction rolls back whole: no stock, points, coupon, payment row
//! or event is left behind, and the answer is [`Error::OrderTimedOut`] (503 `ORDER_TIMEOUT`).
//! The commit is sent only by a body that finished within the limit.

use std::time::{Duration, Instant};

use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::{Error, Result};

/// Sets the transaction's `statement_timeout` to `limit` (for this transaction only).
pub(crate) async fn arm(conn: &mut AsyncPgConnection, limit: Duration) -> Result<()> {
    diesel::sql_query("SELECT set_config('statement_timeout', $1, true)")
        .bind::<Text, _>(limit.as_millis().to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Runs `body` unless it outlasts `limit`.
pub(crate) async fn within<T>(limit: Duration, body: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or(Err(Error::OrderTimedOut(limit)))
}

/// The placing transaction's error as the caller should see it: a database error after the
/// limit passed is the server cancelling a statement for it.
pub(crate) fn timed_out(error: Error, started: Instant, limit: Duration) -> Error {
    let cancelled = matches!(&error, Error::Internal(e)
        if matches!(e.downcast_ref::<diesel::result::Error>(),
                    Some(diesel::result::Error::DatabaseError(..))));
    if cancelled && started.elapsed() >= limit {
        metrics::counter!("orders_timed_out_total").increment(1);
        Error::OrderTimedOut(limit)
    } else {
        if matches!(error, Error::OrderTimedOut(_)) {
            metrics::counter!("orders_timed_out_total").increment(1);
        }
        error
    }
}
