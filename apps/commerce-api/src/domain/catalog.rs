//! Brands, products and likes.
//!
//! Rules kept here: a product change and its event (`ProductCreated`, `ProductUpdated` with the
//! new version, `ProductLiked`/`ProductUnliked`) commit together; a like row and the product's
//! `like_count` change in one transaction, and the count moves only when a row was actually
//! inserted or deleted, so `like_count` always equals the number of like rows.

use chrono::{DateTime, Utc};
use commerce_events::{Event, LikeChanged, ProductSnapshot};
use commerce_web::FieldError;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{Error, Missing, Result, check, is_foreign_key_violation};
use crate::infra::outbox::{self, Topics};
use crate::infra::schema::{brands, product_likes, products};

/// Highest accepted price or stock.
pub const MAX_AMOUNT: i64 = 1_000_000_000;

/// A brand.
#[derive(Serialize, ToSchema, Debug)]
pub struct BrandView {
    pub id: i64,
    pub name: String,
    pub description: String,
    /// The partner that sells it.
    pub partner_id: i64,
}

/// The row a [`BrandView`] is read from.
#[derive(Queryable, Selectable)]
#[diesel(table_name = brands)]
pub(crate) struct BrandRow {
    id: i64,
    name: String,
    description: String,
    partner_id: i64,
}

impl From<BrandRow> for BrandView {
    fn from(row: BrandRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            description: row.description,
            partner_id: row.partner_id,
        }
    }
}

/// A product's detail.
#[derive(Serialize, ToSchema, Debug)]
pub struct ProductView {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub brand_id: i64,
    pub brand_name: String,
    /// The partner that sells it (its brand's).
    pub partner_id: i64,
    pub price: i64,
    pub stock: i64,
    pub like_count: i64,
    /// Units one user may hold across their standing orders; `null`: no limit.
    pub max_per_user: Option<i32>,
    /// On sale from (inclusive); `null`: since it was created.
    pub sale_starts_at: Option<DateTime<Utc>>,
    /// On sale until (exclusive); `null`: no end.
    pub sale_ends_at: Option<DateTime<Utc>>,
}

/// A limited drop's rules: a per-user limit and a sale window.
#[derive(Debug, Clone, Copy, Default)]
pub struct SaleRules {
    pub max_per_user: Option<i32>,
    pub sale_starts_at: Option<DateTime<Utc>>,
    pub sale_ends_at: Option<DateTime<Utc>>,
}

/// Largest `max_per_user`.
const MAX_PER_USER: i32 = 1_000_000;

fn check_rules(
    errors: &mut Vec<FieldError>,
    max_per_user: Option<i32>,
    starts: Option<DateTime<Utc>>,
    ends: Option<DateTime<Utc>>,
) {
    if max_per_user.is_some_and(|m| !(1..=MAX_PER_USER).contains(&m)) {
        errors.push(FieldError::new(
            "max_per_user",
            format!("must be 1..={MAX_PER_USER} or null"),
        ));
    }
    if let (Some(starts), Some(ends)) = (starts, ends)
        && ends <= starts
    {
        errors.push(FieldError::new(
            "sale_ends_at",
            "must be after sale_starts_at",
        ));
    }
}

/// A product in a list.
#[derive(Serialize, ToSchema, Debug)]
pub struct ProductSummary {
    pub id: i64,
    pub name: String,
    pub brand_id: i64,
    pub brand_name: String,
    pub price: i64,
    pub like_count: i64,
    /// Units sold: paid, and not cancelled or returned.
    pub sales_count: i64,
}

/// The columns a [`ProductSummaryRow`] is read from (products joined with brands).
#[allow(clippy::type_complexity)]
pub(crate) fn summary_columns() -> (
    products::id,
    products::name,
    products::brand_id,
    brands::name,
    products::price,
    products::like_count,
    products::sales_count,
) {
    (
        products::id,
        products::name,
        products::brand_id,
        brands::name,
        products::price,
        products::like_count,
        products::sales_count,
    )
}

/// The row a [`ProductSummary`] is read from.
#[derive(Queryable)]
pub(crate) struct ProductSummaryRow {
    id: i64,
    name: String,
    brand_id: i64,
    brand_name: String,
    price: i64,
    like_count: i64,
    sales_count: i64,
}

impl From<ProductSummaryRow> for ProductSummary {
    fn from(row: ProductSummaryRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            brand_id: row.brand_id,
            brand_name: row.brand_name,
            price: row.price,
            like_count: row.like_count,
            sales_count: row.sales_count,
        }
    }
}

/// A like's state after a like or unlike.
#[derive(Serialize, ToSchema, Debug)]
pub struct LikeView {
    pub product_id: i64,
    pub liked: bool,
    pub like_count: i64,
}

commerce_enums::text_enum! {
    /// How a product list is ordered (`?sort=`).
    pub enum Sort {
        /// Newest first (the default).
        Latest => "latest",
        PriceAsc => "price_asc",
        LikesDesc => "likes_desc",
        /// Most units sold first.
        SalesDesc => "sales_desc",
    }
}

/// A validated new brand.
#[derive(Debug)]
pub struct NewBrand {
    pub name: String,
    pub description: String,
}

impl NewBrand {
    pub fn parse(name: &str, description: String) -> Result<Self> {
        let mut errors = Vec::new();
        check_text(&mut errors, "name", name, 100);
        if description.chars().count() > 2000 {
            errors.push(FieldError::new(
                "description",
                "must be at most 2000 characters",
            ));
        }
        check(errors)?;
        Ok(Self {
            name: name.trim().to_owned(),
            description,
        })
    }
}

/// A validated new product.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub brand_id: i64,
    pub name: String,
    pub description: String,
    pub price: i64,
    pub stock: i64,
    pub rules: SaleRules,
}

impl NewProduct {
    pub fn parse(
        brand_id: i64,
        name: &str,
        description: String,
        price: i64,
        stock: i64,
        rules: SaleRules,
    ) -> Result<Self> {
        let mut errors = Vec::new();
        check_rules(
            &mut errors,
            rules.max_per_user,
            rules.sale_starts_at,
            rules.sale_ends_at,
        );
        check_text(&mut errors, "name", name, 200);
        check_amount(&mut errors, "price", price);
        check_amount(&mut errors, "stock", stock);
        if description.chars().count() > 5000 {
            errors.push(FieldError::new(
                "description",
                "must be at most 5000 characters",
            ));
        }
        check(errors)?;
        Ok(Self {
            brand_id,
            name: name.trim().to_owned(),
            description,
            price,
            stock,
            rules,
        })
    }
}

/// A validated change to any subset of a product's editable fields.
#[derive(AsChangeset, Debug)]
#[diesel(table_name = products)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price: Option<i64>,
    pub stock: Option<i64>,
    /// `Some(None)` clears the limit.
    pub max_per_user: Option<Option<i32>>,
    pub sale_starts_at: Option<Option<DateTime<Utc>>>,
    pub sale_ends_at: Option<Option<DateTime<Utc>>>,
}

/// A patch's drop rules: for each, absent (unchanged), `null` (cleared) or a value.
#[derive(Debug, Default)]
pub struct RulesPatch {
    pub max_per_user: Option<Option<i32>>,
    pub sale_starts_at: Option<Option<DateTime<Utc>>>,
    pub sale_ends_at: Option<Option<DateTime<Utc>>>,
}

impl ProductPatch {
    pub fn parse(
        name: Option<String>,
        description: Option<String>,
        price: Option<i64>,
        stock: Option<i64>,
        rules: RulesPatch,
    ) -> Result<Self> {
        let mut errors = Vec::new();
        // The window against the product's current ends is checked when it is applied.
        check_rules(
            &mut errors,
            rules.max_per_user.flatten(),
            rules.sale_starts_at.flatten(),
            rules.sale_ends_at.flatten(),
        );
        if let Some(name) = &name {
            check_text(&mut errors, "name", name, 200);
        }
        if let Some(price) = price {
            check_amount(&mut errors, "price", price);
        }
        if let Some(stock) = stock {
            check_amount(&mut errors, "stock", stock);
        }
        if description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 5000)
        {
            errors.push(FieldError::new(
                "description",
                "must be at most 5000 characters",
            ));
        }
        let no_rules = rules.max_per_user.is_none()
            && rules.sale_starts_at.is_none()
            && rules.sale_ends_at.is_none();
        if name.is_none() && description.is_none() && price.is_none() && stock.is_none() && no_rules
        {
            errors.push(FieldError::new(
                "",
                "at least one of name, description, price, stock, max_per_user, sale_starts_at, sale_ends_at is required",
            ));
        }
        check(errors)?;
        Ok(Self {
            name: name.map(|n| n.trim().to_owned()),
            description,
            price,
            stock,
            max_per_user: rules.max_per_user,
            sale_starts_at: rules.sale_starts_at,
            sale_ends_at: rules.sale_ends_at,
        })
    }
}

fn check_text(errors: &mut Vec<FieldError>, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() || value.chars().count() > max {
        errors.push(FieldError::new(
            field,
            format!("must be 1-{max} characters"),
        ));
    }
}

fn check_amount(errors: &mut Vec<FieldError>, field: &str, value: i64) {
    if !(0..=MAX_AMOUNT).contains(&value) {
        errors.push(FieldError::new(
            field,
            format!("must be between 0 and {MAX_AMOUNT}"),
        ));
    }
}

/// A product joined with its brand's name.
#[derive(Queryable, Selectable, Debug)]
#[diesel(table_name = products)]
struct ProductRow {
    id: i64,
    brand_id: i64,
    name: String,
    description: String,
    price: i64,
    stock: i64,
    like_count: i64,
    version: i64,
    #[diesel(select_expression = brands::name)]
    brand_name: String,
    max_per_user: Option<i32>,
    sale_starts_at: Option<DateTime<Utc>>,
    sale_ends_at: Option<DateTime<Utc>>,
    partner_id: i64,
}

impl ProductRow {
    fn snapshot(&self) -> ProductSnapshot {
        ProductSnapshot {
            product_id: self.id,
            brand_id: self.brand_id,
            name: self.name.clone(),
            price: self.price,
            stock: self.stock,
            version: self.version,
            brand_name: self.brand_name.clone(),
        }
    }

    fn view(self) -> ProductView {
        ProductView {
            id: self.id,
            brand_id: self.brand_id,
            name: self.name,
            description: self.description,
            price: self.price,
            stock: self.stock,
            like_count: self.like_count,
            brand_name: self.brand_name,
            partner_id: self.partner_id,
            max_per_user: self.max_per_user,
            sale_starts_at: self.sale_starts_at,
            sale_ends_at: self.sale_ends_at,
        }
    }
}

async fn load(conn: &mut AsyncPgConnection, id: i64) -> Result<ProductRow> {
    products::table
        .inner_join(brands::table)
        .filter(products::id.eq(id))
        .select(ProductRow::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound(Missing::Product))
}

/// A product's detail.
pub async fn product(conn: &mut AsyncPgConnection, id: i64) -> Result<ProductView> {
    load(conn, id).await.map(ProductRow::view)
}

/// Who is changing the catalog: an administrator (any partner's brands and products) or a
/// partner (only its own; another partner's are "not found").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Any,
    Partner(i64),
}

impl Scope {
    fn allows(self, partner_id: i64) -> bool {
        match self {
            Scope::Any => true,
            Scope::Partner(own) => own == partner_id,
        }
    }
}

/// Creates a brand sold by `partner_id` ([`Missing::Partner`] if there is no such partner).
pub async fn create_brand(
    conn: &mut AsyncPgConnection,
    partner_id: i64,
    new: &NewBrand,
) -> Result<BrandView> {
    let inserted = diesel::insert_into(brands::table)
        .values((
            brands::name.eq(&new.name),
            brands::description.eq(&new.description),
            brands::partner_id.eq(partner_id),
        ))
        .returning(BrandRow::as_returning())
        .get_result::<BrandRow>(conn)
        .await;
    match inserted {
        Ok(row) => Ok(row.into()),
        Err(e) if is_foreign_key_violation(&e) => Err(Error::NotFound(Missing::Partner)),
        Err(e) => Err(e.into()),
    }
}

/// A brand.
pub async fn brand(conn: &mut AsyncPgConnection, id: i64) -> Result<BrandView> {
    brands::table
        .find(id)
        .select(BrandRow::as_select())
        .first::<BrandRow>(conn)
        .await
        .optional()?
        .map(Into::into)
        .ok_or(Error::NotFound(Missing::Brand))
}

/// A page of brands in creation order, and the number of brands.
pub async fn brands(
    conn: &mut AsyncPgConnection,
    page: i64,
    size: i64,
) -> Result<(Vec<BrandView>, i64)> {
    let total: i64 = brands::table.count().get_result(conn).await?;
    let content = brands::table
        .order(brands::id)
        .limit(size)
        .offset(page * size)
        .select(BrandRow::as_select())
        .load::<BrandRow>(conn)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok((content, total))
}

/// Inserts a product and its `ProductCreated` event in one transaction. The product belongs
/// to its brand's partner; within `scope`, a brand of another partner is [`Missing::Brand`].
pub async fn create_product(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    scope: Scope,
    new: &NewProduct,
) -> Result<ProductView> {
    let row = conn
        .transaction::<_, Error, _>(async |conn| {
            let partner_id: i64 = brands::table
                .find(new.brand_id)
                .select(brands::partner_id)
                .first(conn)
                .await
                .optional()?
                .filter(|p| scope.allows(*p))
                .ok_or(Error::NotFound(Missing::Brand))?;
            let inserted = diesel::insert_into(products::table)
                .values((
                    products::brand_id.eq(new.brand_id),
                    products::partner_id.eq(partner_id),
                    products::name.eq(&new.name),
                    products::description.eq(&new.description),
                    products::price.eq(new.price),
                    products::stock.eq(new.stock),
                    products::max_per_user.eq(new.rules.max_per_user),
                    products::sale_starts_at.eq(new.rules.sale_starts_at),
                    products::sale_ends_at.eq(new.rules.sale_ends_at),
                ))
                .returning(products::id)
                .get_result::<i64>(conn)
                .await;
            let id = match inserted {
                Ok(id) => id,
                Err(e) if is_foreign_key_violation(&e) => {
                    return Err(Error::NotFound(Missing::Brand));
                }
                Err(e) => return Err(e.into()),
            };
            let row = load(conn, id).await?;
            outbox::record(conn, topics, vec![Event::ProductCreated(row.snapshot())]).await?;
            Ok(row)
        })
        .await?;
    tracing::info!(product.id = row.id, "product created");
    Ok(row.view())
}

/// Changes a product and records `ProductUpdated` with its new version, in one transaction.
/// Within `scope`, another partner's product is [`Missing::Product`].
pub async fn update_product(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    scope: Scope,
    id: i64,
    patch: &ProductPatch,
) -> Result<ProductView> {
    let row = conn
        .transaction::<_, Error, _>(async |conn| {
            // A product never changes partner: its owner read unlocked stays its owner.
            let owner: Option<i64> = products::table
                .find(id)
                .select(products::partner_id)
                .first(conn)
                .await
                .optional()?;
            if !owner.is_some_and(|p| scope.allows(p)) {
                return Err(Error::NotFound(Missing::Product));
            }
            let updated = diesel::update(products::table.find(id))
                .set((
                    patch,
                    products::version.eq(products::version + 1),
                    products::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await
                .map_err(|e| match e {
                    // The window as it would stand (one end may be the product's current one).
                    diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::CheckViolation,
                        _,
                    ) => Error::field("sale_ends_at", "must be after sale_starts_at"),
                    e => e.into(),
                })?;
            if updated == 0 {
                return Err(Error::NotFound(Missing::Product));
            }
            let row = load(conn, id).await?;
            outbox::record(conn, topics, vec![Event::ProductUpdated(row.snapshot())]).await?;
            Ok(row)
        })
        .await?;
    Ok(row.view())
}

/// A page of partner `partner_id`'s products, newest first, and how many it has.
pub async fn of_partner(
    conn: &mut AsyncPgConnection,
    partner_id: i64,
    page: i64,
    size: i64,
) -> Result<(Vec<ProductView>, i64)> {
    let total = products::table
        .filter(products::partner_id.eq(partner_id))
        .count()
        .get_result(conn)
        .await?;
    let rows: Vec<ProductRow> = products::table
        .inner_join(brands::table)
        .filter(products::partner_id.eq(partner_id))
        .order(products::id.desc())
        .limit(size)
        .offset(page * size)
        .select(ProductRow::as_select())
        .load(conn)
        .await?;
    Ok((rows.into_iter().map(ProductRow::view).collect(), total))
}

/// Up to `size` products (optionally of one brand) from `at` on, and how many there are in all.
/// A brand that does not exist is [`Missing::Brand`].
pub async fn list(
    conn: &mut AsyncPgConnection,
    brand_id: Option<i64>,
    sort: Sort,
    at: Position,
    size: i64,
) -> Result<(Vec<ProductSummary>, i64)> {
    let mut query = products::table
        .inner_join(brands::table)
        .select(summary_columns())
        .into_boxed();
    let mut count = products::table.count().into_boxed();
    if let Some(brand_id) = brand_id {
        query = query.filter(products::brand_id.eq(brand_id));
        count = count.filter(products::brand_id.eq(brand_id));
    }
    query = match sort {
        Sort::PriceAsc => query.order((products::price.asc(), products::id.asc())),
        Sort::LikesDesc => query.order((products::like_count.desc(), products::id.desc())),
        Sort::SalesDesc => query.order((products::sales_count.desc(), products::id.desc())),
        Sort::Latest => query.order(products::id.desc()),
    };
    query = match at {
        Position::Page(page) => query.offset(page * size),
        // Keyset: the rows after the cursor's in the sort order, found through the sort's index
        // however deep the cursor is.
        Position::After { value, id } => match sort {
            Sort::Latest => query.filter(products::id.lt(id)),
            Sort::PriceAsc => query.filter(
                products::price
                    .gt(value)
                    .or(products::price.eq(value).and(products::id.gt(id))),
            ),
            Sort::LikesDesc => query.filter(
                products::like_count
                    .lt(value)
                    .or(products::like_count.eq(value).and(products::id.lt(id))),
            ),
            Sort::SalesDesc => query.filter(
                products::sales_count
                    .lt(value)
                    .or(products::sales_count.eq(value).and(products::id.lt(id))),
            ),
        },
    };
    let content: Vec<ProductSummary> = query
        .limit(size)
        .load::<ProductSummaryRow>(conn)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    let total: i64 = count.get_result(conn).await?;
    if let Some(brand_id) = brand_id
        && total == 0
    {
        // An empty brand, or none: only a brand that exists gets a page (and a cache entry).
        let exists: bool = diesel::select(diesel::dsl::exists(brands::table.find(brand_id)))
            .get_result(conn)
            .await?;
        if !exists {
            return Err(Error::NotFound(Missing::Brand));
        }
    }
    Ok((content, total))
}

/// Where a list page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Page `n` of the list (an offset: bounded by the caller).
    Page(i64),
    /// Right after the row with this sort value (price, like or sales count; the id for `latest`)
    /// and id.
    After { value: i64, id: i64 },
}

impl Sort {
    /// The value a row is sorted by (with its id as the tie-break).
    pub fn value_of(self, row: &ProductSummary) -> i64 {
        match self {
            Sort::Latest => row.id,
            Sort::PriceAsc => row.price,
            Sort::LikesDesc => row.like_count,
            Sort::SalesDesc => row.sales_count,
        }
    }
}

/// Adds (`liked`) or removes a user's like. Returns the like's state and whether it changed.
pub async fn set_like(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    user_id: i64,
    product_id: i64,
    liked: bool,
) -> Result<(LikeView, bool)> {
    let (like_count, changed) = conn
        .transaction::<_, Error, _>(async |conn| {
            let changed = if liked {
                let inserted = diesel::insert_into(product_likes::table)
                    .values((
                        product_likes::user_id.eq(user_id),
                        product_likes::product_id.eq(product_id),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await;
                match inserted {
                    Ok(n) => n == 1,
                    Err(e) if is_foreign_key_violation(&e) => {
                        return Err(Error::NotFound(Missing::Product));
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                diesel::delete(product_likes::table.find((user_id, product_id)))
                    .execute(conn)
                    .await?
                    == 1
            };
            let delta: i64 = match (changed, liked) {
                (false, _) => 0,
                (true, true) => 1,
                (true, false) => -1,
            };
            let like_count: Option<i64> = if delta == 0 {
                products::table
                    .find(product_id)
                    .select(products::like_count)
                    .first(conn)
                    .await
                    .optional()?
            } else {
                diesel::update(products::table.find(product_id))
                    .set(products::like_count.eq(products::like_count + delta))
                    .returning(products::like_count)
                    .get_result(conn)
                    .await
                    .optional()?
            };
            let like_count = like_count.ok_or(Error::NotFound(Missing::Product))?;
            if changed {
                let change = LikeChanged {
                    product_id,
                    user_id,
                };
                let event = if liked {
                    Event::ProductLiked(change)
                } else {
                    Event::ProductUnliked(change)
                };
                outbox::record(conn, topics, vec![event]).await?;
            }
            Ok((like_count, changed))
        })
        .await?;
    Ok((
        LikeView {
            product_id,
            liked,
            like_count,
        },
        changed,
    ))
}

/// Products `user_id` likes, most recent first (at most 1,000).
pub async fn liked_by(conn: &mut AsyncPgConnection, user_id: i64) -> Result<Vec<ProductSummary>> {
    Ok(product_likes::table
        .inner_join(products::table.inner_join(brands::table))
        .filter(product_likes::user_id.eq(user_id))
        .order(product_likes::created_at.desc())
        .limit(1000)
        .select(summary_columns())
        .load::<ProductSummaryRow>(conn)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}
