//! The error side of an app's OpenAPI description, completed in one place.
//!
//! Handlers document the refusals that belong to them (`409 INSUFFICIENT_STOCK`, …). What any
//! route can answer is added here to every operation, so the description is complete without a
//! copy per handler: `400` (a malformed path, query or body, text PostgreSQL cannot store),
//! `401` where a bearer token is required, `413` and `415` where a body is read, and `503` (a
//! dependency is down). Every error response gets the [`Problem`] schema under
//! `application/problem+json`, so clients and contract tests can check error bodies too.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, PartialSchema, ToSchema};

use crate::{FieldError, Problem};

/// `doc` with the error responses completed. Call it on the finished description (after every
/// route is added), not as an `#[openapi(modifiers)]`, which runs before the routes exist.
pub fn with_problem_responses(mut doc: OpenApi) -> OpenApi {
    ProblemResponses.modify(&mut doc);
    doc
}

/// The `utoipa` modifier behind [`with_problem_responses`].
pub struct ProblemResponses;

const PROBLEM_JSON: &str = "application/problem+json";

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .schemas
            .insert(Problem::name().into_owned(), Problem::schema());
        components
            .schemas
            .insert(FieldError::name().into_owned(), FieldError::schema());
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                complete(operation);
            }
        }
    }
}

fn complete(operation: &mut Operation) {
    let mut generic = vec![
        (
            "400",
            "`VALIDATION_FAILED`, `INVALID_TEXT`: a malformed or out-of-range path, query or body",
        ),
        (
            "503",
            "`SERVICE_UNAVAILABLE`: a dependency cannot be reached; retry shortly",
        ),
    ];
    if operation.request_body.is_some() {
        generic.push((
            "413",
            "`PAYLOAD_TOO_LARGE`: the body exceeds the configured limit",
        ));
        generic.push((
            "415",
            "`UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`",
        ));
    }
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        generic.push(("401", "`UNAUTHENTICATED`: a valid bearer token is required"));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in generic {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(description).build()));
    }
    for (status, response) in responses.iter_mut() {
        let is_error = status.starts_with('4') || status.starts_with('5');
        if let (true, RefOr::T(response)) = (is_error, response)
            && response.content.is_empty()
        {
            response.content.insert(
                PROBLEM_JSON.to_owned(),
                Content::new(Some(Ref::from_schema_name(Problem::name()))),
            );
        }
    }
}

/// Compares `doc` with the description committed at `path` (pretty JSON, one trailing newline),
/// so an unintended change to an app's API fails its tests. With `UPDATE_OPENAPI=1` set, writes
/// `doc` there instead: the diff is then reviewed and committed with the change that made it.
pub fn assert_committed(doc: &OpenApi, path: &std::path::Path) {
    let generated =
        serde_json::to_string_pretty(doc).expect("an OpenAPI document serialises") + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "the API description differs from {} from line {} on:\n  committed: {}\n  generated: {}\n\
             If the change is intended, run `UPDATE_OPENAPI=1 cargo test --lib openapi` and commit the file.",
            path.display(),
            line + 1,
            committed.lines().nth(line).unwrap_or("<end of file>"),
            generated.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}
