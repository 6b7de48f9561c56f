//! Lock-and-replay for `Idempotency-Key`s, inside the caller's transaction: the key is locked
//! (a transaction-scoped advisory lock, so racing requests with one key queue rather than fail),
//! then the earlier request made with it is looked up where the route keeps it, and compared by
//! fingerprint (what the request asked for). Every route that takes a key uses it; what a
//! fingerprint covers and what a replay answers is each route's own.

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// What an earlier request with the key left.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay<T> {
    /// None: go ahead (the key stays locked until the transaction ends).
    New,
    /// The same request, with what it left.
    Same(T),
    /// A different request: refuse (`IDEMPOTENCY_KEY_REUSED`).
    Reused,
}

/// Locks `key` for the rest of the caller's transaction, under `scope` (the route, and its
/// owner where keys are per owner) and `seed`, then asks `find` for the earlier request with it:
/// its fingerprint (`None`: unknown, never the same) and what it left.
pub async fn lock_and_find<T>(
    conn: &mut AsyncPgConnection,
    scope: &str,
    seed: i64,
    key: &str,
    fingerprint: &str,
    find: impl AsyncFnOnce(&mut AsyncPgConnection) -> diesel::QueryResult<Option<(Option<String>, T)>>,
) -> diesel::QueryResult<Replay<T>> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1 || $2, $3))")
        .bind::<Text, _>(scope)
        .bind::<Text, _>(key)
        .bind::<BigInt, _>(seed)
        .execute(conn)
        .await?;
    Ok(match find(conn).await? {
        None => Replay::New,
        Some((Some(earlier), left)) if earlier == fingerprint => Replay::Same(left),
        Some(_) => Replay::Reused,
    })
}

/// A fingerprint of a request's parts: hex SHA-256 over each part, length-prefixed (so parts
/// cannot run into each other). Holds nothing in the clear.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}
