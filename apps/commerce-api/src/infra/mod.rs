//! Infrastructure: the database schema, the outbox and its relay, the payment gateway's client,
//! caches, tokens and trace context.
//!
//! Rule: nothing here imports `crate::domain` or `crate::http`. Infrastructure knows tables,
//! brokers and remote APIs, never business rules; the domain calls it, never the other way.

pub mod auth;
pub mod gateway;
pub mod jwt;
pub mod limits;
pub mod listener;
pub mod order_events;
pub mod outbox;
pub mod passwords;
pub mod product_cache;
pub mod relay;
pub mod schema;
pub mod views;

/// Declares a closed set of states stored as `TEXT` and sent as JSON strings, mapped once:
/// `as_str`, `FromStr`, diesel `ToSql`/`FromSql` for `Text`, serde and an OpenAPI schema all
/// come from the one list of `Variant => "TEXT"` pairs, so a `match` over the enum is
/// exhaustive and a new state is a compile error wherever it matters. The table's CHECK
/// constraint stays the database's own guard.
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash,
            diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
            serde::Serialize, serde::Deserialize)]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Every state's text, in declaration order (metric labels registered at zero).
            pub const TEXTS: &'static [&'static str] = &[$($text),+];

            /// The stored and serialised text.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        // Written out rather than derived: the derive does not see a `serde(rename)` that a
        // macro supplies, and would document the Rust variant names instead of the text.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(concat!("unknown ", stringify!($name), " {:?}"), other)),
                }
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                use std::io::Write as _;
                out.write_all(self.as_str().as_bytes())?;
                Ok(diesel::serialize::IsNull::No)
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = std::str::from_utf8(value.as_bytes())?;
                text.parse().map_err(Into::into)
            }
        }
    };
}
