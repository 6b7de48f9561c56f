//! Partners: the sellers of the marketplace.
//!
//! A partner is a record (name, business number, status) and one or more accounts with the
//! `PARTNER` role tied to it. Administrators create partners (with their first account), suspend
//! and resume them. Every brand and product belongs to a partner; partners write only their own
//! (another partner's brand, product or order is "not found", as another customer's order is).
//!
//! A suspended partner's products cannot be ordered, and the partner cannot create or change
//! products; it still serves the orders it has (shipping, returns). Everything that existed
//! before partners belongs to the house partner ([`HOUSE`]).

use chrono::{DateTime, Utc};
use commerce_web::FieldError;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::accounts::SignUp;
use crate::domain::{Error, Missing, Result, check, is_unique_violation};
use crate::infra::auth::Role;
use crate::infra::schema::{partners, users};

/// The house partner: the platform selling on its own account, owner of everything that was
/// sold before partners existed.
pub const HOUSE: i64 = 1;

commerce_enums::text_enum! {
    sql, schema;
    /// `partners.status`.
    pub enum PartnerStatus {
        Active => "ACTIVE",
        /// Its products cannot be ordered and it cannot change its catalog.
        Suspended => "SUSPENDED",
    }
}

/// A partner.
#[derive(Serialize, ToSchema, Debug, Queryable, Selectable)]
#[diesel(table_name = partners)]
pub struct PartnerView {
    pub id: i64,
    pub name: String,
    /// `NNN-NN-NNNNN`.
    pub business_number: String,
    pub status: PartnerStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A partner created with its first account.
#[derive(Serialize, ToSchema, Debug)]
pub struct CreatedPartner {
    pub partner: PartnerView,
    /// The id of its first account (role `PARTNER`).
    pub user_id: i64,
}

/// A validated new partner. Not `Debug`: its account holds a password.
pub struct NewPartner {
    pub name: String,
    pub business_number: String,
    pub account: SignUp,
}

/// Whether `number` is a business registration number, `NNN-NN-NNNNN`.
fn is_business_number(number: &str) -> bool {
    let parts: Vec<&str> = number.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .zip([3, 2, 5])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_digit()))
}

impl NewPartner {
    /// Validates every field (the account's as for a sign-up); all invalid ones are reported.
    pub fn parse(name: &str, business_number: String, account: Result<SignUp>) -> Result<Self> {
        let mut errors = Vec::new();
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            errors.push(FieldError::new("name", "must be 1-100 characters"));
        }
        if !is_business_number(&business_number) || business_number == "000-00-00000" {
            errors.push(FieldError::new(
                "business_number",
                "must be a business registration number, NNN-NN-NNNNN",
            ));
        }
        let account = match account {
            Ok(account) => Some(account),
            Err(Error::Invalid(fields)) => {
                errors.extend(fields.into_iter().map(|f| f.prefixed("account.")));
                None
            }
            Err(e) => return Err(e),
        };
        check(errors)?;
        Ok(Self {
            name: name.to_owned(),
            business_number,
            account: account.expect("checked above"),
        })
    }
}

/// Creates a partner and its first account (password already hashed) in one transaction.
pub async fn create(
    conn: &mut AsyncPgConnection,
    new: &NewPartner,
    password_hash: &str,
) -> Result<CreatedPartner> {
    let created = conn
        .transaction::<_, Error, _>(async |conn| {
            let partner = diesel::insert_into(partners::table)
                .values((
                    partners::name.eq(&new.name),
                    partners::business_number.eq(&new.business_number),
                ))
                .returning(PartnerView::as_returning())
                .get_result::<PartnerView>(conn)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        Error::BusinessNumberTaken
                    } else {
                        e.into()
                    }
                })?;
            let user_id = diesel::insert_into(users::table)
                .values((
                    users::login_id.eq(&new.account.login_id),
                    users::password_hash.eq(password_hash),
                    users::name.eq(&new.account.name),
                    users::email.eq(&new.account.email),
                    users::role.eq(Role::Partner),
                    users::partner_id.eq(partner.id),
                ))
                .returning(users::id)
                .get_result::<i64>(conn)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        Error::LoginIdTaken
                    } else {
                        e.into()
                    }
                })?;
            Ok(CreatedPartner { partner, user_id })
        })
        .await?;
    tracing::info!(
        partner.id = created.partner.id,
        user.id = created.user_id,
        "partner created"
    );
    Ok(created)
}

/// Partner `id`.
pub async fn get(conn: &mut AsyncPgConnection, id: i64) -> Result<PartnerView> {
    partners::table
        .find(id)
        .select(PartnerView::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound(Missing::Partner))
}

/// A page of partners in creation order, and how many there are.
pub async fn list(
    conn: &mut AsyncPgConnection,
    page: i64,
    size: i64,
) -> Result<(Vec<PartnerView>, i64)> {
    let total = partners::table.count().get_result(conn).await?;
    let content = partners::table
        .order(partners::id)
        .limit(size)
        .offset(page * size)
        .select(PartnerView::as_select())
        .load(conn)
        .await?;
    Ok((content, total))
}

/// Sets partner `id`'s status (suspending or resuming it); setting the status it has changes
/// nothing. The house partner is never suspended.
pub async fn set_status(
    conn: &mut AsyncPgConnection,
    id: i64,
    status: PartnerStatus,
) -> Result<PartnerView> {
    if id == HOUSE && status == PartnerStatus::Suspended {
        return Err(Error::field("id", "the house partner cannot be suspended"));
    }
    let updated = diesel::update(partners::table.find(id).filter(partners::status.ne(status)))
        .set((
            partners::status.eq(status),
            partners::updated_at.eq(diesel::dsl::now),
        ))
        .returning(PartnerView::as_returning())
        .get_result::<PartnerView>(conn)
        .await
        .optional()?;
    match updated {
        Some(partner) => {
            tracing::info!(partner.id = id, status = %status, "partner status changed");
            Ok(partner)
        }
        None => get(conn, id).await,
    }
}

/// The partner an account acts for, and its status: `None` unless the user is a partner
/// account.
pub async fn of_user(
    conn: &mut AsyncPgConnection,
    user_id: i64,
) -> Result<Option<(i64, PartnerStatus)>> {
    Ok(users::table
        .inner_join(partners::table)
        .filter(users::id.eq(user_id))
        .select((partners::id, partners::status))
        .first(conn)
        .await
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_numbers() {
        assert!(is_business_number("123-45-67890"));
        for bad in [
            "123-45-6789",
            "12-345-67890",
            "123456-7890",
            "123-45-6789a",
            "",
        ] {
            assert!(!is_business_number(bad), "{bad}");
        }
    }
}
