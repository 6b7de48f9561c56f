//! Partners: administrators create, suspend and resume them (`/api/v1/admin/partners`), and
//! partner accounts manage their own catalog and orders (`/api/v1/partner/...`). The rules are in
//! [`crate::domain::partners`], [`crate::domain::catalog`] and
//! [`crate::domain::partner_orders`].

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::domain::accounts;
use crate::domain::catalog::{self, BrandView, ProductView, Scope};
use crate::domain::fulfilment::{self, Actor, Details, Step, Tracking};
use crate::domain::partner_orders::{self, PartnerOrderStatus, PartnerOrderView};
use crate::domain::partners::{self, CreatedPartner, PartnerStatus, PartnerView};
use crate::http::auth::{AdminUser, PartnerUser};
use crate::http::catalog::{NewBrand, NewProduct, ProductPatch, add_product, change_product};
use crate::http::error::{ApiError, ApiResult};
use crate::http::paging::{Page, PageParams, page_and_size};
use crate::http::users::SignUp;
use crate::http::{Json, Path, Query};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPartner {
    /// 1–100 characters.
    name: String,
    /// The business registration number, `NNN-NN-NNNNN`; unique.
    business_number: String,
    /// The partner's first account (role `PARTNER`), as for a sign-up.
    account: SignUp,
}

/// Create a partner with its first account (admin).
#[utoipa::path(post, path = "/api/v1/admin/partners", tag = "partners", security(("bearer" = [])),
    request_body = NewPartner,
    responses((status = 201, body = CreatedPartner), (status = 400), (status = 401), (status = 403),
        (status = 409, description = "BUSINESS_NUMBER_TAKEN, LOGIN_ID_TAKEN")))]
pub async fn create_partner(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<NewPartner>,
) -> ApiResult<(StatusCode, Json<CreatedPartner>)> {
    let account = accounts::SignUp::parse(
        req.account.login_id,
        req.account.password,
        &req.account.name,
        req.account.email,
    );
    let new = partners::NewPartner::parse(&req.name, req.business_number, account)?;
    let hash = state
        .auth
        .hash_password(new.account.password.clone())
        .await?;
    let mut conn = state.db.get().await?;
    let created = partners::create(&mut conn, &new, &hash).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Partners, in creation order (admin).
#[utoipa::path(get, path = "/api/v1/admin/partners", tag = "partners", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, body = Page<PartnerView>), (status = 400), (status = 401), (status = 403)))]
pub async fn list_partners(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<PartnerView>>> {
    let (page, size) = params.parse()?;
    let mut conn = state.db.get().await?;
    let (content, total) = partners::list(&mut conn, page, size).await?;
    Ok(Json(Page::new(content, page, size, total)))
}

/// A partner (admin).
#[utoipa::path(get, path = "/api/v1/admin/partners/{id}", tag = "partners", security(("bearer" = [])),
    responses((status = 200, body = PartnerView), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_NOT_FOUND")))]
pub async fn get_partner(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<PartnerView>> {
    let mut conn = state.db.get().await?;
    Ok(Json(partners::get(&mut conn, id).await?))
}

/// Suspend a partner (admin): its products can no longer be ordered and it cannot change its
/// catalog; it still serves the orders it has. Suspending a suspended partner changes nothing.
#[utoipa::path(post, path = "/api/v1/admin/partners/{id}/suspend", tag = "partners",
    security(("bearer" = [])),
    responses((status = 200, body = PartnerView), (status = 400, description = "VALIDATION_FAILED: the house partner"),
        (status = 401), (status = 403), (status = 404, description = "PARTNER_NOT_FOUND")))]
pub async fn suspend_partner(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<PartnerView>> {
    set_status(&state, id, PartnerStatus::Suspended).await
}

/// Resume a suspended partner (admin). Resuming an active partner changes nothing.
#[utoipa::path(post, path = "/api/v1/admin/partners/{id}/resume", tag = "partners",
    security(("bearer" = [])),
    responses((status = 200, body = PartnerView), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_NOT_FOUND")))]
pub async fn resume_partner(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<PartnerView>> {
    set_status(&state, id, PartnerStatus::Active).await
}

async fn set_status(
    state: &AppState,
    id: i64,
    status: PartnerStatus,
) -> ApiResult<Json<PartnerView>> {
    let mut conn = state.db.get().await?;
    let partner = partners::set_status(&mut conn, id, status).await?;
    drop(conn);
    // Product pages do not show the partner's status, but lists and details were cached
    // while it could be ordered: nothing to evict.
    Ok(Json(partner))
}

/// The calling partner.
#[utoipa::path(get, path = "/api/v1/partner/me", tag = "partners", security(("bearer" = [])),
    responses((status = 200, body = PartnerView), (status = 401),
        (status = 403, description = "FORBIDDEN: not a partner account")))]
pub async fn me(
    State(state): State<AppState>,
    partner: PartnerUser,
) -> ApiResult<Json<PartnerView>> {
    let mut conn = state.db.get().await?;
    Ok(Json(partners::get(&mut conn, partner.partner_id).await?))
}

/// Create a brand of the calling partner.
#[utoipa::path(post, path = "/api/v1/partner/brands", tag = "partners", security(("bearer" = [])),
    request_body = NewBrand,
    responses((status = 201, body = BrandView), (status = 400), (status = 401),
        (status = 403, description = "FORBIDDEN, PARTNER_SUSPENDED")))]
pub async fn create_brand(
    State(state): State<AppState>,
    partner: PartnerUser,
    Json(req): Json<NewBrand>,
) -> ApiResult<(StatusCode, Json<BrandView>)> {
    let partner = partner.active()?;
    if req.partner_id.is_some_and(|p| p != partner.partner_id) {
        return Err(ApiError::field(
            "partner_id",
            "a partner creates brands of its own only; leave it out",
        ));
    }
    let new = catalog::NewBrand::parse(&req.name, req.description)?;
    let mut conn = state.db.get().await?;
    let brand = catalog::create_brand(&mut conn, partner.partner_id, &new).await?;
    Ok((StatusCode::CREATED, Json(brand)))
}

/// Create a product of one of the calling partner's brands (another partner's brand: 404).
/// Emits `ProductCreated`.
#[utoipa::path(post, path = "/api/v1/partner/products", tag = "partners", security(("bearer" = [])),
    request_body = NewProduct,
    responses((status = 201, body = ProductView), (status = 400), (status = 401),
        (status = 403, description = "FORBIDDEN, PARTNER_SUSPENDED"),
        (status = 404, description = "BRAND_NOT_FOUND")))]
pub async fn create_product(
    State(state): State<AppState>,
    partner: PartnerUser,
    Json(req): Json<NewProduct>,
) -> ApiResult<(StatusCode, Json<ProductView>)> {
    let partner = partner.active()?;
    add_product(&state, Scope::Partner(partner.partner_id), req).await
}

/// Change one of the calling partner's products, its stock included (another partner's: 404).
/// Emits `ProductUpdated`.
#[utoipa::path(patch, path = "/api/v1/partner/products/{id}", tag = "partners",
    security(("bearer" = [])), request_body = ProductPatch,
    responses((status = 200, body = ProductView), (status = 400), (status = 401),
        (status = 403, description = "FORBIDDEN, PARTNER_SUSPENDED"),
        (status = 404, description = "PRODUCT_NOT_FOUND")))]
pub async fn update_product(
    State(state): State<AppState>,
    partner: PartnerUser,
    Path(id): Path<i64>,
    Json(patch): Json<ProductPatch>,
) -> ApiResult<Json<ProductView>> {
    let partner = partner.active()?;
    change_product(&state, Scope::Partner(partner.partner_id), id, patch).await
}

/// The calling partner's products, newest first.
#[utoipa::path(get, path = "/api/v1/partner/products", tag = "partners", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, body = Page<ProductView>), (status = 400), (status = 401), (status = 403)))]
pub async fn list_products(
    State(state): State<AppState>,
    partner: PartnerUser,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<ProductView>>> {
    let (page, size) = params.parse()?;
    let mut conn = state.db.get().await?;
    let (content, total) = catalog::of_partner(&mut conn, partner.partner_id, page, size).await?;
    Ok(Json(Page::new(content, page, size, total)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PartnerOrderParams {
    /// Only partner orders in this state (`PAID`, `PREPARING`, `SHIPPED`, …); all by default.
    status: Option<String>,
    /// 0-based (default 0); `page × size` at most 10,000.
    page: Option<i64>,
    /// 1 ..= 100 (default 20).
    size: Option<i64>,
}

/// The calling partner's orders (its part of each checkout), newest first, optionally in one
/// state. Checkouts whose payment has not gone through are not listed.
#[utoipa::path(get, path = "/api/v1/partner/orders", tag = "partners", security(("bearer" = [])),
    params(PartnerOrderParams),
    responses((status = 200, body = Page<PartnerOrderView>), (status = 400), (status = 401), (status = 403)))]
pub async fn list_orders(
    State(state): State<AppState>,
    partner: PartnerUser,
    Query(params): Query<PartnerOrderParams>,
) -> ApiResult<Json<Page<PartnerOrderView>>> {
    let mut errors = Vec::new();
    let status = match params
        .status
        .as_deref()
        .map(str::parse::<PartnerOrderStatus>)
    {
        None => None,
        Some(Ok(status)) => Some(status),
        Some(Err(_)) => {
            errors.push(commerce_web::FieldError::new(
                "status",
                format!("must be {}", PartnerOrderStatus::expected()),
            ));
            None
        }
    };
    let (page, size) = page_and_size(params.page, params.size, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut conn = state.db.get().await?;
    let (content, total) =
        partner_orders::of_partner(&mut conn, partner.partner_id, status, page, size).await?;
    Ok(Json(Page::new(content, page, size, total)))
}

/// One of the calling partner's orders (another partner's: 404).
#[utoipa::path(get, path = "/api/v1/partner/orders/{id}", tag = "partners", security(("bearer" = [])),
    responses((status = 200, body = PartnerOrderView), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND")))]
pub async fn get_order(
    State(state): State<AppState>,
    partner: PartnerUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<PartnerOrderView>> {
    let mut conn = state.db.get().await?;
    Ok(Json(
        partner_orders::of_partner_one(&mut conn, partner.partner_id, id).await?,
    ))
}

/// Start preparing one of the calling partner's orders: `PAID` → `PREPARING` (a repeat changes
/// nothing). Emits `PartnerOrderChanged`.
#[utoipa::path(post, path = "/api/v1/partner/orders/{id}/prepare", tag = "partners",
    security(("bearer" = [])),
    responses((status = 200, body = PartnerOrderView), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "ILLEGAL_TRANSITION")))]
pub async fn prepare_order(
    State(state): State<AppState>,
    partner: PartnerUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<PartnerOrderView>> {
    step(
        &state,
        Actor::Partner(partner.partner_id),
        id,
        Step::Prepare,
        Details::default(),
    )
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ship {
    /// 1–50 characters.
    carrier: String,
    /// 1–50 letters, digits or `-`.
    tracking_number: String,
}

/// Ship one of the calling partner's orders with its carrier and tracking number: `PAID` or
/// `PREPARING` → `SHIPPED`. The same tracking again changes nothing; another is refused. It is
/// delivered automatically `DELIVERY_AUTO_AFTER_SECONDS` later unless marked delivered first.
/// Emits `PartnerOrderChanged`.
#[utoipa::path(post, path = "/api/v1/partner/orders/{id}/ship", tag = "partners",
    security(("bearer" = [])), request_body = Ship,
    responses((status = 200, body = PartnerOrderView), (status = 400), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "ILLEGAL_TRANSITION")))]
pub async fn ship_order(
    State(state): State<AppState>,
    partner: PartnerUser,
    Path(id): Path<i64>,
    Json(req): Json<Ship>,
) -> ApiResult<Json<PartnerOrderView>> {
    let tracking = Tracking::parse(&req.carrier, &req.tracking_number)?;
    step(
        &state,
        Actor::Partner(partner.partner_id),
        id,
        Step::Ship,
        Details {
            tracking: Some(tracking),
            reason: None,
        },
    )
    .await
}

/// Mark one of the calling partner's orders delivered: `SHIPPED` → `DELIVERED` (later news of a
/// delivery changes nothing). Its purchase is confirmed automatically
/// `PURCHASE_CONFIRM_AFTER_SECONDS` later. Emits `PartnerOrderChanged`.
#[utoipa::path(post, path = "/api/v1/partner/orders/{id}/deliver", tag = "partners",
    security(("bearer" = [])),
    responses((status = 200, body = PartnerOrderView), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "ILLEGAL_TRANSITION")))]
pub async fn deliver_order(
    State(state): State<AppState>,
    partner: PartnerUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<PartnerOrderView>> {
    step(
        &state,
        Actor::Partner(partner.partner_id),
        id,
        Step::Deliver,
        Details::default(),
    )
    .await
}

/// Takes `step` for `actor` on partner order `id`.
pub(crate) async fn step(
    state: &AppState,
    actor: Actor,
    id: i64,
    step: Step,
    details: Details,
) -> ApiResult<Json<PartnerOrderView>> {
    let mut conn = state.db.get().await?;
    let view = fulfilment::apply(
        &mut conn,
        &state.topics,
        &state.config.fulfilment,
        actor,
        id,
        step,
        &details,
    )
    .await?;
    Ok(Json(view))
}

/// Cancel one of the calling partner's orders before it ships (out of stock, say): `PAID` or
/// `PREPARING` → `CANCELLED`. Its units go back in stock, its points back to the customer and
/// its card share is refunded through the gateway; the checkout's coupon stays used unless this
/// was its last standing partner order (then the checkout is cancelled as a whole). Emits
/// `PartnerOrderChanged` and `OrderCancelled` (its lines).
#[utoipa::path(post, path = "/api/v1/partner/orders/{id}/cancel", tag = "partners",
    security(("bearer" = [])),
    responses((status = 200, body = PartnerOrderView), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "ILLEGAL_TRANSITION")))]
pub async fn cancel_order(
    State(state): State<AppState>,
    partner: PartnerUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<PartnerOrderView>> {
    step(
        &state,
        Actor::Partner(partner.partner_id),
        id,
        Step::Cancel,
        Details::default(),
    )
    .await
}

/// Accept the return of one of the calling partner's orders, on receipt: `RETURN_REQUESTED` →
/// `RETURNED`. Its returned units go back in stock, its points back to the customer and its
/// card share is refunded through the gateway. Emits `PartnerOrderChanged` and
/// `OrderCancelled` (its lines).
#[utoipa::path(post, path = "/api/v1/partner/orders/{id}/return/accept", tag = "partners",
    security(("bearer" = [])),
    responses((status = 200, body = PartnerOrderView), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "ILLEGAL_TRANSITION")))]
pub async fn accept_return(
    State(state): State<AppState>,
    partner: PartnerUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<PartnerOrderView>> {
    step(
        &state,
        Actor::Partner(partner.partner_id),
        id,
        Step::AcceptReturn,
        Details::default(),
    )
    .await
}

/// Refuse the return of one of the calling partner's orders: `RETURN_REQUESTED` → `DELIVERED`;
/// its confirmation timer goes on where it stopped. Emits `PartnerOrderChanged`.
#[utoipa::path(post, path = "/api/v1/partner/orders/{id}/return/reject", tag = "partners",
    security(("bearer" = [])),
    responses((status = 200, body = PartnerOrderView), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "ILLEGAL_TRANSITION")))]
pub async fn reject_return(
    State(state): State<AppState>,
    partner: PartnerUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<PartnerOrderView>> {
    step(
        &state,
        Actor::Partner(partner.partner_id),
        id,
        Step::RejectReturn,
        Details::default(),
    )
    .await
}
