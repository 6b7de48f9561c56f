//! Accounts and points.
//!
//! Rules kept here: a login id is unique (the constraint decides, under any concurrency); the
//! point balance never goes negative (a CHECK constraint backs every deduction); every change
//! to a balance writes its ledger row in the same transaction.

use commerce_db::idempotency::{self, Replay};
use commerce_web::FieldError;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::points::{self, Credit};
use crate::domain::states::LedgerKind;
use crate::domain::{Error, Missing, Result, check, is_unique_violation};
use crate::infra::auth::Role;
use crate::infra::schema::{point_charges, point_ledger, users};

/// Largest single grant, in won.
pub const MAX_GRANT: i64 = 10_000_000;

/// An account, as its owner sees it.
#[derive(Serialize, ToSchema, Debug)]
pub struct UserView {
    pub id: i64,
    pub login_id: String,
    pub name: String,
    pub email: String,
}

/// The row a [`UserView`] is read from.
#[derive(Queryable, Selectable)]
#[diesel(table_name = users)]
pub(crate) struct UserRow {
    id: i64,
    login_id: String,
    name: String,
    email: String,
}

impl From<UserRow> for UserView {
    fn from(row: UserRow) -> Self {
        Self {
            id: row.id,
            login_id: row.login_id,
            name: row.name,
            email: row.email,
        }
    }
}

/// What a login id must look like.
pub const LOGIN_ID_RULE: &str = "must be 4-32 characters of letters, digits, '_', '-' or '.'";

/// Whether `login_id` is well formed ([`LOGIN_ID_RULE`]).
pub fn is_login_id(login_id: &str) -> bool {
    (4..=32).contains(&login_id.len())
        && login_id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// A validated sign-up. Not `Debug`: it holds a password.
pub struct SignUp {
    pub login_id: String,
    pub password: String,
    pub name: String,
    pub email: String,
}

impl SignUp {
    /// Validates every field; all invalid ones are reported.
    pub fn parse(login_id: String, password: String, name: &str, email: String) -> Result<Self> {
        let mut errors = Vec::new();
        if !is_login_id(&login_id) {
            errors.push(FieldError::new("login_id", LOGIN_ID_RULE));
        }
        if !(8..=128).contains(&password.chars().count()) {
            errors.push(FieldError::new("password", "must be 8-128 characters"));
        }
        if name.trim().is_empty() || name.chars().count() > 100 {
            errors.push(FieldError::new("name", "must be 1-100 characters"));
        }
        let email_ok = email.len() <= 254
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
            })
            && !email.contains(char::is_whitespace);
        if !email_ok {
            errors.push(FieldError::new("email", "must be an email address"));
        }
        check(errors)?;
        Ok(Self {
            login_id,
            password,
            name: name.trim().to_owned(),
            email,
        })
    }
}

/// Creates an account with an already hashed password.
pub async fn create(
    conn: &mut AsyncPgConnection,
    new: &SignUp,
    password_hash: &str,
) -> Result<UserView> {
    let inserted = diesel::insert_into(users::table)
        .values((
            users::login_id.eq(&new.login_id),
            users::password_hash.eq(password_hash),
            users::name.eq(&new.name),
            users::email.eq(&new.email),
        ))
        .returning(UserRow::as_returning())
        .get_result::<UserRow>(conn)
        .await;
    match inserted {
        Ok(user) => {
            tracing::info!(user.id = user.id, "user signed up");
            Ok(user.into())
        }
        Err(e) if is_unique_violation(&e) => Err(Error::LoginIdTaken),
        Err(e) => Err(e.into()),
    }
}

/// The id, password hash and role of the account with `login_id`.
pub async fn credentials(
    conn: &mut AsyncPgConnection,
    login_id: &str,
) -> Result<Option<(i64, String, Role)>> {
    Ok(users::table
        .filter(users::login_id.eq(login_id))
        .select((users::id, users::password_hash, users::role))
        .first(conn)
        .await
        .optional()?)
}

/// The current role of user `id`, `None` when the user does not exist.
pub async fn role_of(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<Role>> {
    Ok(users::table
        .find(id)
        .select(users::role)
        .first(conn)
        .await
        .optional()?)
}

/// User `id`'s account.
pub async fn user(conn: &mut AsyncPgConnection, id: i64) -> Result<UserView> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first::<UserRow>(conn)
        .await
        .optional()?
        .map(Into::into)
        .ok_or(Error::NotFound(Missing::User))
}

/// User `id`'s point balance.
pub async fn balance(conn: &mut AsyncPgConnection, id: i64) -> Result<i64> {
    users::table
        .find(id)
        .select(users::point_balance)
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound(Missing::User))
}

/// Grants user `id` `amount` points (1 ..= [`MAX_GRANT`]) as administrator `by`, for `reason`
/// (1-500 characters), with its ledger row naming both; returns the new balance. This is the
/// only way to credit points without paying for them. With an idempotency `key`, a repeat with
/// the same key, amount and reason grants nothing and returns the balance the first one
/// returned (also when the two race: the key is locked); the same key with another request is
/// refused with [`Error::IdempotencyKeyReused`].
pub async fn grant(
    conn: &mut AsyncPgConnection,
    by: i64,
    id: i64,
    amount: i64,
    reason: &str,
    key: Option<&str>,
) -> Result<i64> {
    let reason = reason.trim();
    let mut errors = Vec::new();
    if !(1..=MAX_GRANT).contains(&amount) {
        errors.push(FieldError::new(
            "amount",
            format!("must be between 1 and {MAX_GRANT}"),
        ));
    }
    if reason.is_empty() || reason.chars().count() > 500 {
        errors.push(FieldError::new("reason", "must be 1-500 characters"));
    }
    check(errors)?;
    let balance = conn
        .transaction::<_, Error, _>(async |conn| {
            let fingerprint =
                idempotency::fingerprint(&[amount.to_string().as_bytes(), reason.as_bytes()]);
            if let Some(key) = key {
                let earlier = async |conn: &mut AsyncPgConnection| {
                    point_charges::table
                        .find((id, key))
                        .inner_join(point_ledger::table)
                        .select((
                            point_charges::amount,
                            point_ledger::note,
                            point_charges::balance_after,
                        ))
                        .first::<(i64, Option<String>, i64)>(conn)
                        .await
                        .optional()
                        .map(|c| {
                            c.map(|(amount, note, balance)| {
                                let note = note.unwrap_or_default();
                                let seen = idempotency::fingerprint(&[
                                    amount.to_string().as_bytes(),
                                    note.as_bytes(),
                                ]);
                                (Some(seen), balance)
                            })
                        })
                };
                match idempotency::lock_and_find(
                    conn,
                    "points-grant:",
                    id,
                    key,
                    &fingerprint,
                    earlier,
                )
                .await?
                {
                    Replay::New => {}
                    Replay::Same(balance_after) => return Ok(balance_after),
                    Replay::Reused => return Err(Error::IdempotencyKeyReused),
                }
            }
            let (ledger_id, balance) =
                points::credit(conn, id, amount, Credit::Grant { by, reason }).await?;
            if let Some(key) = key {
                diesel::insert_into(point_charges::table)
                    .values((
                        point_charges::user_id.eq(id),
                        point_charges::idempotency_key.eq(key),
                        point_charges::amount.eq(amount),
                        point_charges::balance_after.eq(balance),
                        point_charges::ledger_id.eq(ledger_id),
                    ))
                    .execute(conn)
                    .await?;
            }
            tracing::info!(user.id = id, admin.id = by, amount, "points granted");
            Ok(balance)
        })
        .await?;
    Ok(balance)
}

/// One line of a user's points ledger, as its owner sees it.
#[derive(Serialize, ToSchema, Debug)]
pub struct LedgerEntry {
    pub id: i64,
    /// Signed: positive for points bought, granted or given back; negative for points spent
    /// or a top-up taken back.
    pub amount: i64,
    /// The balance right after this entry.
    pub balance_after: i64,
    pub reason: LedgerKind,
    /// The order that spent, bought or got back the points, if any.
    pub order_id: Option<i64>,
    /// Why an administrator granted them (`GRANT` only).
    pub note: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The row a [`LedgerEntry`] is read from.
#[derive(diesel::QueryableByName)]
pub(crate) struct LedgerRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    amount: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    balance_after: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    reason: LedgerKind,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    order_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    note: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<LedgerRow> for LedgerEntry {
    fn from(row: LedgerRow) -> Self {
        Self {
            id: row.id,
            amount: row.amount,
            balance_after: row.balance_after,
            reason: row.reason,
            order_id: row.order_id,
            note: row.note,
            created_at: row.created_at,
        }
    }
}

/// A page of user `id`'s ledger, newest first, and the number of entries. Each entry's balance
/// after it is the current balance less everything newer (every change to a balance writes its
/// entry in the same transaction, so the two agree), read in one statement.
pub async fn points_history(
    conn: &mut AsyncPgConnection,
    id: i64,
    page: i64,
    size: i64,
) -> Result<(Vec<LedgerEntry>, i64)> {
    use diesel::sql_types::BigInt;
    let entries: Vec<LedgerEntry> = diesel::sql_query(
        "SELECT id, amount, kind AS reason, order_id, note, created_at,
                (balance - coalesce(sum(amount) OVER (ORDER BY id DESC
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0))::bigint AS balance_after
           FROM point_ledger,
                (SELECT point_balance AS balance FROM users WHERE id = $1) AS u
          WHERE user_id = $1
          ORDER BY id DESC
          LIMIT $2 OFFSET $3",
    )
    .bind::<BigInt, _>(id)
    .bind::<BigInt, _>(size)
    .bind::<BigInt, _>(page * size)
    .load::<LedgerRow>(conn)
    .await?
    .into_iter()
    .map(Into::into)
    .collect();
    let total: i64 = point_ledger::table
        .filter(point_ledger::user_id.eq(id))
        .count()
        .get_result(conn)
        .await?;
    Ok((entries, total))
}

/// Creates the admin account `login_id` with an already hashed password unless it exists
/// (several instances may start at once: the unique login id makes that safe).
pub async fn ensure_admin(
    conn: &mut AsyncPgConnection,
    login_id: &str,
    password_hash: &str,
) -> Result<()> {
    diesel::insert_into(users::table)
        .values((
            users::login_id.eq(login_id),
            users::password_hash.eq(password_hash),
            users::name.eq("Administrator"),
            users::email.eq("admin@localhost"),
            users::role.eq(Role::Admin),
        ))
        .on_conflict(users::login_id)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}

/// Every administrator account: id, login id and password hash.
pub async fn admins(conn: &mut AsyncPgConnection) -> Result<Vec<(i64, String, String)>> {
    Ok(users::table
        .filter(users::role.eq(Role::Admin))
        .order(users::id)
        .select((users::id, users::login_id, users::password_hash))
        .load(conn)
        .await?)
}

/// Replaces account `id`'s password hash.
pub async fn set_password_hash(
    conn: &mut AsyncPgConnection,
    id: i64,
    password_hash: &str,
) -> Result<()> {
    diesel::update(users::table.find(id))
        .set(users::password_hash.eq(password_hash))
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether an account with `login_id` exists.
pub async fn exists(conn: &mut AsyncPgConnection, login_id: &str) -> Result<bool> {
    Ok(users::table
        .filter(users::login_id.eq(login_id))
        .select(users::id)
        .first::<i64>(conn)
        .await
        .optional()?
        .is_some())
}
