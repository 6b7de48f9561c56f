//! A database per test, cloned from a template migrated once per run; and `count`.

use std::time::Duration;

use commerce_db::{quote_ident, with_database};
use diesel::OptionalExtension;
use diesel::migration::MigrationSource;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::EmbeddedMigrations;

use crate::{START_HINT, postgres_url, unique_suffix};

/// Runs `sql`, a query returning one row with a BIGINT column `n`, on the database at `url`.
pub async fn count(url: &str, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    diesel::sql_query(sql)
        .get_result::<N>(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// A freshly migrated database of its own for one test, dropped when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Connection URL of the test's database.
    pub url: String,
    name: String,
    server_url: String,
}

impl TestDb {
    /// Creates a database for one test, cloned from `{app}`'s template (built on first use).
    pub async fn new(app: &str, migrations: EmbeddedMigrations) -> Self {
        let server_url = postgres_url();
        let template = ensure_template(&server_url, app, migrations).await;
        let name = format!("{app}_test_{}", unique_suffix());
        let mut admin = connect_admin(&server_url).await;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE {}",
                quote_ident(&name),
                quote_ident(&template)
            ))
            .await
            .unwrap_or_else(|e| panic!("creating test database {name} from {template}: {e}"));
        Self {
            url: with_database(&server_url, &name),
            name,
            server_url,
        }
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Simulates an outage of this database (and its end): while unavailable, every open
    /// connection is terminated and new ones are refused, as a failed-over or restarting
    /// server does; the rest of the server keeps running for other tests.
    pub async fn set_available(&self, available: bool) {
        let mut admin = connect_admin(&self.server_url).await;
        let name = quote_ident(&self.name);
        let mut sql = format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {available};");
        if !available {
            sql.push_str(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = '{}' AND pid <> pg_backend_pid();",
                self.name.replace('\'', "''")
            ));
        }
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("changing the availability of {}: {e}", self.name));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside a runtime: do the cleanup on a thread with a
        // runtime of its own and wait for it.
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                if let Ok(mut admin) =
                    AsyncPgConnection::establish(&with_database(&server_url, "postgres")).await
                {
                    let _ = admin
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            quote_ident(&name)
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn connect_admin(server_url: &str) -> AsyncPgConnection {
    let url = with_database(server_url, "postgres");
    match tokio::time::timeout(Duration::from_secs(5), AsyncPgConnection::establish(&url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("PostgreSQL is not reachable at {url}: {e}; {START_HINT}"),
        Err(_) => panic!("PostgreSQL is not reachable at {url}: no answer in 5 s; {START_HINT}"),
    }
}

/// FNV-1a, stable across builds.
fn fnv(data: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Makes sure `{app}`'s template database exists and is migrated; returns its name.
///
/// The name hashes the migration names and, under nextest, the run id, so each test run
/// migrates a fresh template (an edited migration is picked up) while the tests of one run share
/// it. Test processes run concurrently: an advisory lock makes exactly one of them build it.
/// The name also carries its creation time: templates of other runs are dropped only once they
/// are an hour old, so two test runs against one server do not pull templates from under each
/// other.
async fn ensure_template(server_url: &str, app: &str, migrations: EmbeddedMigrations) -> String {
    let names: Vec<String> = MigrationSource::<diesel::pg::Pg>::migrations(&migrations)
        .expect("reading embedded migrations")
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let run = std::env::var("NEXTEST_RUN_ID").unwrap_or_default();
    let key = fnv(&format!("{app}|{}|{run}", names.join(",")));
    let prefix = format!("{app}_tpl_{:016x}_", key);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();

    let mut admin = connect_admin(server_url).await;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(key as i64)
        .execute(&mut admin)
        .await
        .expect("taking the template lock");

    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        datname: String,
    }
    let existing: Option<Name> = diesel::sql_query(
        "SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND datname NOT LIKE '%_building'",
    )
    .bind::<Text, _>(&prefix)
    .get_result(&mut admin)
    .await
    .optional()
    .expect("looking up the template database");
    let missing = existing.is_none();
    let template = match existing {
        Some(existing) => existing.datname,
        None => format!("{prefix}{now}"),
    };
    if missing {
        // Templates of earlier runs of this app are no longer needed once they are old enough
        // that no run can still be using them.
        let stale: Vec<Name> =
            diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE $1")
                .bind::<Text, _>(format!("{app}_tpl_%"))
                .load(&mut admin)
                .await
                .unwrap_or_default();
        let stale = stale
            .into_iter()
            .filter(|s| template_created_at(&s.datname, now).is_none_or(|t| t + 3600 < now));
        for s in stale {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&s.datname)
                ))
                .await;
        }
        let building = format!("{template}_building");
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&building)
            ))
            .await
            .expect("dropping a half-built template database");
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&building)))
            .await
            .expect("creating the template database");
        commerce_db::run_migrations(&with_database(server_url, &building), migrations)
            .await
            .unwrap_or_else(|e| panic!("migrating the {app} template database: {e:#}"));
        // Renamed only once complete, so a crashed build never leaves a half-migrated template.
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&building),
                quote_ident(&template)
            ))
            .await
            .expect("publishing the template database");
    }
    let _ = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(key as i64)
        .execute(&mut admin)
        .await;
    template
}

/// When a template (or a template being built) was created, from its name; `None` for names
/// of an older scheme, which are always stale.
fn template_created_at(name: &str, now: u64) -> Option<u64> {
    let name = name.strip_suffix("_building").unwrap_or(name);
    let (_, secs) = name.rsplit_once('_')?;
    secs.parse::<u64>()
        .ok()
        .filter(|t| secs.len() == 10 && *t <= now + 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_ages_are_read_from_their_names() {
        let now = 1_795_000_000;
        assert_eq!(
            template_created_at("commerce_api_tpl_00ff00ff00ff00ff_1794999000", now),
            Some(1_794_999_000)
        );
        assert_eq!(
            template_created_at("commerce_api_tpl_00ff00ff00ff00ff_1794999000_building", now),
            Some(1_794_999_000)
        );
        assert_eq!(
            template_created_at("commerce_api_tpl_0123456789012345", now),
            None
        );
    }
}
