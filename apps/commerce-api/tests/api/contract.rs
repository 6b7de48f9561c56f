//! The OpenAPI description is the contract: Schemathesis generates requests from it (valid and
//! invalid, fixed seed) and every answer must be documented, well-formed and never a 500.

use serde_json::json;

use crate::support::spawn_app;

#[tokio::test]
async fn generated_requests_get_no_server_error_and_only_documented_answers() {
    let app = spawn_app().await;
    // Something for the id-taking routes to find.
    let brand = app.brand().await;
    app.product(brand, 1000, 50).await;
    let (status, _) = app
        .post(
            "/api/v1/admin/coupons",
            Some(&app.admin),
            json!({"name": "c", "discount_type": "FIXED", "discount_value": 100, "total_quantity": 10}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let bearer = format!("Bearer {}", app.admin);
    commerce_testkit::schemathesis(&app.base, &[("Authorization", &bearer)], 30).await;
}
