//! Accounts and points.
//!
//! Rules kept here: a login id is unique (the constraint decides, under any concurrency); the
//! point balance never goes negative (a CHECK constraint backs every deduction); every change
//! to a balance writes its ledger row in the same transaction.

use commerce_web::FieldError;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::states::LedgerKind;
use crate::domain::{Error, Missing, Result, check, is_unique_violation};
use crate::infra::auth::Role;
use crate::infra::schema::{point_ledger, users};

/// Largest single charge, in won.
pub const MAX_CHARGE: i64 = 10_000_000;

/// An account, as its owner sees it.
#[derive(Serialize, ToSchema, Queryable, Selectable, Debug)]
#[diesel(table_name = users)]
pub struct UserView {
    pub id: i64,
    pub login_id: String,
    pub name: String,
    pub email: String,
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
        let login_ok = (4..=32).contains(&login_id.chars().count())
            && login_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !login_ok {
            errors.push(FieldError::new(
                "login_id",
                "must be 4-32 characters of letters, digits, '_', '-' or '.'",
            ));
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
        .returning(UserView::as_returning())
        .get_result(conn)
        .await;
    match inserted {
        Ok(user) => {
            tracing::info!(user.id = user.id, "user signed up");
            Ok(user)
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
        .select(UserView::as_select())
        .first(conn)
        .await
        .optional()?
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

/// Adds `amount` points (1 ..= [`MAX_CHARGE`]) to user `id` with its ledger row; returns the
/// new balance.
pub async fn charge(conn: &mut AsyncPgConnection, id: i64, amount: i64) -> Result<i64> {
    if !(1..=MAX_CHARGE).contains(&amount) {
        return Err(Error::field(
            "amount",
            format!("must be between 1 and {MAX_CHARGE}"),
        ));
    }
    conn.transaction::<_, Error, _>(async |conn| {
        let balance: i64 = diesel::update(users::table.find(id))
            .set(users::point_balance.eq(users::point_balance + amount))
            .returning(users::point_balance)
            .get_result(conn)
            .await
            .optional()?
            .ok_or(Error::NotFound(Missing::User))?;
        diesel::insert_into(point_ledger::table)
            .values((
                point_ledger::user_id.eq(id),
                point_ledger::amount.eq(amount),
                point_ledger::kind.eq(LedgerKind::Charge),
            ))
            .execute(conn)
            .await?;
        Ok(balance)
    })
    .await
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
