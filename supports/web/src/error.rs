//! One error type for an app's HTTP routes, declared with [`service_error!`](crate::service_error)
//! in the app: refusals carry their problem (a stable `code`) and are sent as they are; a
//! database pool that cannot hand out a connection is a 503; anything else is logged once where
//! it becomes a response and answered with the generic 500 body.
//!
//! A macro rather than a generic type: the conversions from diesel's and the pool's errors must
//! be written where the type is declared (the orphan rule), and this crate knows no database.

/// Declares `$name`, an app's error type, logged and counted under `$app`:
///
/// ```ignore
/// commerce_web::service_error!(pub CollectorError, "commerce-collector");
/// ```
///
/// Needs `diesel` and `commerce_db` in the declaring crate.
#[macro_export]
macro_rules! service_error {
    ($(#[$meta:meta])* $vis:vis $name:ident, $app:literal) => {
        $(#[$meta])*
        #[derive(Debug)]
        $vis enum $name {
            /// Refused or answered on purpose (bad input, an unknown resource, a simulated
            /// failure): sent as it is.
            Refused($crate::Problem),
            /// A dependency cannot be reached right now: 503.
            Unavailable(String),
            /// Anything else: logged, and the generic 500.
            Internal(::anyhow::Error),
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self {
                    $name::Refused(p) => f.write_str(&p.detail),
                    $name::Unavailable(cause) => write!(f, "unavailable: {cause}"),
                    $name::Internal(cause) => ::std::fmt::Display::fmt(cause, f),
                }
            }
        }

        impl ::std::error::Error for $name {}

        impl $crate::__axum::response::IntoResponse for $name {
            fn into_response(self) -> $crate::__axum::response::Response {
                match self {
                    $name::Refused(p) => p.into_response(),
                    $name::Unavailable(cause) => $crate::unavailable_error($app, &cause),
                    $name::Internal(cause) => $crate::internal_error($app, &cause),
                }
            }
        }

        impl From<$crate::Problem> for $name {
            fn from(p: $crate::Problem) -> Self {
                $name::Refused(p)
            }
        }

        impl From<::anyhow::Error> for $name {
            fn from(e: ::anyhow::Error) -> Self {
                $name::Internal(e)
            }
        }

        impl From<::diesel::result::Error> for $name {
            fn from(e: ::diesel::result::Error) -> Self {
                $name::Internal(e.into())
            }
        }

        impl From<::commerce_db::PoolError> for $name {
            fn from(e: ::commerce_db::PoolError) -> Self {
                ::commerce_db::count_pool_error($app, &e);
                $name::Unavailable(format!("database pool: {e}"))
            }
        }
    };
}
