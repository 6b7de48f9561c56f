//! Text PostgreSQL cannot store: a NUL character (`0x00`) is refused in `TEXT`, so a request
//! carrying one in any field would fail in the database. The extractors ([`crate::Json`],
//! [`crate::Query`], [`crate::Path`]) refuse it in one place, before any handler runs, with
//! 400 `INVALID_TEXT`. (Invalid UTF-8 and lone surrogates never get this far: the JSON and
//! query parsers refuse them.)

use axum::http::StatusCode;

use crate::problem::Problem;

/// The refusal.
pub fn invalid_text(where_: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "INVALID_TEXT",
        format!("the {where_} contains a NUL character, which text fields cannot hold"),
    )
}

/// Whether a JSON text has a `\u0000` escape in a string (a raw NUL byte is a syntax error
/// anyway). Escape-aware: `\\u0000` is a backslash followed by `u0000`, not a NUL.
pub fn json_has_nul(body: &[u8]) -> bool {
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\\' => {
                if body.get(i + 1) == Some(&b'u') && body.get(i + 2..i + 6) == Some(b"0000") {
                    return true;
                }
                i += 2; // the escaped character, whatever it is
            }
            0 => return true,
            _ => i += 1,
        }
    }
    false
}

/// Whether a percent-encoded URL part decodes to a NUL.
pub fn percent_has_nul(raw: &str) -> bool {
    raw.as_bytes().windows(3).any(|w| w == b"%00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not() {
        assert!(json_has_nul(br#"{"login_id":"a\u0000b"}"#));
        assert!(json_has_nul(br#"["\u0000"]"#));
        assert!(json_has_nul(b"{\"a\":\"\x00\"}"));
        assert!(
            !json_has_nul(br#"{"login_id":"a\\u0000b"}"#),
            "a backslash, then u0000"
        );
        assert!(
            json_has_nul(br#"{"a":"\\\u0000"}"#),
            "a backslash, then a NUL"
        );
        assert!(!json_has_nul(br#"{"a":"\u0001"}"#));
        assert!(!json_has_nul(br#"{"a":"\""}"#));
        assert!(!json_has_nul(b"\\"), "a trailing backslash is not a NUL");
    }

    #[test]
    fn percent_encoded_nul_is_found() {
        assert!(percent_has_nul("name=a%00b"));
        assert!(
            !percent_has_nul("name=a%2500b"),
            "%25 is the percent sign itself"
        );
        assert!(!percent_has_nul("page=0&size=100"));
    }
}
