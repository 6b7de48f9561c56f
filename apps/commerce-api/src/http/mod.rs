//! The HTTP API: every route, documented in one OpenAPI description served at
//! `/openapi.json` (Swagger UI at `/swagger-ui`, assets vendored so it works offline).
//!
//! Rule: a handler parses the request into domain types, calls the domain, and maps the result
//! to HTTP; it holds no business rule and writes no table itself. Nothing below this layer
//! imports it.

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod coupons;
pub mod error;
pub mod orders;
pub mod paging;
pub mod partners;
pub mod payments;
pub mod settlements;
pub mod users;
pub mod wishlist;

use axum::Router;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

pub use commerce_web::{Json, Path, Query};

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "commerce-api", description = "The storefront's transactional API. Errors are application/problem+json with a stable `code`."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// All API routes plus `/openapi.json` and `/swagger-ui`.
pub fn router() -> Router<AppState> {
    let (router, api) = parts();
    router.merge(SwaggerUi::new("/swagger-ui").url("/openapi.json", api))
}

/// The API's OpenAPI description, as `/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

/// The routes and their OpenAPI description.
fn parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::sign_up))
        .routes(routes!(users::token))
        .routes(routes!(users::refresh))
        .routes(routes!(users::logout))
        .routes(routes!(users::logout_all))
        .routes(routes!(users::my_sessions))
        .routes(routes!(admin::end_user_sessions))
        .routes(routes!(users::me))
        .routes(routes!(users::balance))
        .routes(routes!(users::charge))
        .routes(routes!(users::points_history))
        .routes(routes!(catalog::list_brands))
        .routes(routes!(coupons::open_campaigns))
        .routes(routes!(catalog::create_brand))
        .routes(routes!(catalog::get_brand))
        .routes(routes!(catalog::create_product))
        .routes(routes!(catalog::update_product))
        .routes(routes!(catalog::list_products))
        .routes(routes!(catalog::get_product))
        .routes(routes!(catalog::like, catalog::unlike))
        .routes(routes!(catalog::my_likes))
        .routes(routes!(wishlist::add, wishlist::remove))
        .routes(routes!(wishlist::list))
        .routes(routes!(wishlist::dead_letters))
        .routes(routes!(wishlist::retry_alert))
        .routes(routes!(coupons::create_coupon))
        .routes(routes!(coupons::issue))
        .routes(routes!(coupons::my_coupons))
        .routes(routes!(orders::place_order, orders::list_orders))
        .routes(routes!(orders::get_order))
        .routes(routes!(orders::cancel_order))
        .routes(routes!(orders::order_events))
        .routes(routes!(payments::callback))
        .routes(routes!(admin::attention))
        .routes(routes!(admin::retry_payment))
        .routes(routes!(admin::grant_points))
        .routes(routes!(partners::create_partner, partners::list_partners))
        .routes(routes!(partners::get_partner))
        .routes(routes!(partners::suspend_partner))
        .routes(routes!(partners::resume_partner))
        .routes(routes!(partners::me))
        .routes(routes!(partners::create_brand))
        .routes(routes!(partners::create_product, partners::list_products))
        .routes(routes!(partners::update_product))
        .routes(routes!(partners::list_orders))
        .routes(routes!(partners::get_order))
        .routes(routes!(partners::prepare_order))
        .routes(routes!(partners::ship_order))
        .routes(routes!(partners::deliver_order))
        .routes(routes!(orders::confirm_purchase))
        .routes(routes!(orders::cancel_partner_order))
        .routes(routes!(partners::cancel_order))
        .routes(routes!(orders::request_return))
        .routes(routes!(orders::withdraw_return))
        .routes(routes!(partners::accept_return))
        .routes(routes!(partners::reject_return))
        .routes(routes!(admin::adjust_partner_order))
        .routes(routes!(settlements::add_policy, settlements::list_policies))
        .routes(routes!(settlements::partner_policies))
        .routes(routes!(settlements::day_settlements))
        .routes(routes!(settlements::shortfalls))
        .routes(routes!(settlements::settlement_detail))
        .routes(routes!(settlements::pay_out))
        .routes(routes!(settlements::partner_balance))
        .routes(routes!(settlements::my_settlements))
        .routes(routes!(settlements::my_settlement))
        .routes(routes!(settlements::my_settlement_csv))
        .routes(routes!(settlements::my_balance))
        .split_for_parts();
    (router, commerce_web::openapi::with_problem_responses(api))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_states_are_documented_as_their_text() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        let status = &doc["components"]["schemas"]["CouponStatus"]["enum"];
        assert_eq!(
            status,
            &serde_json::json!(["AVAILABLE", "USED"]),
            "{status}"
        );
    }

    #[test]
    fn the_committed_openapi_description_is_current() {
        commerce_web::openapi::assert_committed(
            &super::openapi(),
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../docs/openapi/commerce-api.json"
            )),
        );
    }
}
