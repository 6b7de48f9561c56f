//! A JSON extractor whose rejection is a [`Problem`].
//!
//! axum's own `Json` rejects with plain text. Ours maps each rejection to a stable code:
//! `MALFORMED_JSON` (syntax), `VALIDATION_FAILED` (wrong type, missing or unknown field, with
//! the field path), `UNSUPPORTED_MEDIA_TYPE`, `PAYLOAD_TOO_LARGE`, and `INVALID_TEXT` for a NUL
//! character in any string ([`crate::text`]).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::{FieldError, Problem};

/// JSON body extractor and response type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "expected `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| problem_from(JsonRejection::BytesRejection(e)))?;
        Self::from_bytes(&bytes)
    }
}

impl<T: DeserializeOwned> Json<T> {
    /// Parses a body already read (one whose signature was checked over its raw bytes, say),
    /// with the extractor's rejections.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Problem> {
        if crate::text::json_has_nul(bytes) {
            return Err(crate::text::invalid_text("request body"));
        }
        match axum::Json::<T>::from_bytes(bytes) {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(problem_from(rejection)),
        }
    }
}

/// `application/json` or `application/<anything>+json`, parameters allowed.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn problem_from(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(err) => {
            // serde's message reads like "items[0].quantity: invalid type: ..., expected u32 at
            // line 1 column 20"; the path before the first ": " names the field.
            let text = std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_else(|| err.body_text());
            let (field, message) = match text.split_once(": ") {
                Some((path, msg)) if !path.contains(' ') => (path.to_owned(), msg.to_owned()),
                _ => (String::new(), text.clone()),
            };
            let field = if field == "." { String::new() } else { field };
            Problem::validation(vec![FieldError::new(field, message)])
        }
        JsonRejection::JsonSyntaxError(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
            "the request body is not valid JSON",
        ),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "expected `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(err) => {
            if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    "the request body is too large",
                )
            } else {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "MALFORMED_BODY",
                    "the request body could not be read",
                )
            }
        }
        other => Problem::new(other.status(), "MALFORMED_BODY", other.body_text()),
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use serde::Deserialize;
    use tower::ServiceExt;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body1 {
        quantity: u32,
    }

    async fn status_and_code(body: &str, content_type: &str) -> (StatusCode, serde_json::Value) {
        let app = Router::new().route("/", post(|Json(_b): Json<Body1>| async { "ok" }));
        let res = app
            .oneshot(
                Request::post("/")
                    .header("content-type", content_type)
                    .body(Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = res.status();
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "error bodies are problem+json"
        );
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn syntax_error_is_malformed_json() {
        let (status, body) = status_and_code("{", "application/json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "MALFORMED_JSON");
    }

    #[tokio::test]
    async fn wrong_type_names_the_field() {
        let (status, body) = status_and_code(r#"{"quantity":-1}"#, "application/json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "VALIDATION_FAILED");
        assert_eq!(body["errors"][0]["field"], "quantity");
    }

    #[tokio::test]
    async fn unknown_field_is_rejected() {
        let (status, body) =
            status_and_code(r#"{"quantity":1,"role":"admin"}"#, "application/json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "VALIDATION_FAILED");
    }

    #[tokio::test]
    async fn wrong_content_type_is_415() {
        let (status, body) = status_and_code(r#"{"quantity":1}"#, "text/plain").await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["code"], "UNSUPPORTED_MEDIA_TYPE");
    }
}
