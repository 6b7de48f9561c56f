//! The collector's OpenAPI description is its contract: Schemathesis generates requests from it
//! (fixed seed) and every answer must be documented, well-formed and never a 500.

use crate::support::Pipeline;

#[tokio::test]
async fn generated_requests_get_no_server_error_and_only_documented_answers() {
    let pipeline = Pipeline::new().await;
    let collector = pipeline.collector().await;
    commerce_testkit::schemathesis(&collector.base, &[], 50).await;
}
