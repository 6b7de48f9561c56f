//! [`text_enum!`]: a closed set of states declared once, as `Variant => "TEXT"` pairs.
//!
//! What every declaration gets: the enum (`Debug, Clone, Copy, PartialEq, Eq, Hash`), `ALL`,
//! `TEXTS`, `as_str`, `FromStr`, `Display`, serde as the text, and [`expected`] (the message
//! for a field that must be one of them). On request, before the declaration:
//! - `sql;`: stored as PostgreSQL `TEXT` (diesel `AsExpression`, `FromSqlRow`, `ToSql`,
//!   `FromSql`), so queries bind the enum instead of repeating its text;
//! - `schema;`: an OpenAPI schema (utoipa) listing the texts;
//! - `sql, schema;`: both.
//!
//! The generated code names `serde`, `diesel` and `utoipa` by their crate names, so the crate
//! declaring an enum depends on what it asks for (serde always); this crate depends on none of
//! them. A `match` over the enum is exhaustive, so a new state is a compile error wherever it
//! matters; a table's CHECK constraint stays the database's own guard.
//!
//! ```
//! commerce_enums::text_enum! {
//!     /// How an order is paid.
//!     pub enum PaymentKind {
//!         Point => "POINT",
//!         Card => "CARD",
//!     }
//! }
//! assert_eq!(PaymentKind::Card.as_str(), "CARD");
//! assert_eq!("POINT".parse::<PaymentKind>(), Ok(PaymentKind::Point));
//! assert_eq!(PaymentKind::expected(), "POINT or CARD");
//! ```

/// `"A, B or C"`: the texts of a closed set, for "must be …" messages.
pub fn expected(texts: &[&str]) -> String {
    match texts {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Declares a closed set of states; see the [crate documentation](crate).
#[macro_export]
macro_rules! text_enum {
    // The enum and what every declaration gets; `$extra` are further attributes (derives).
    (@define [$($extra:tt)*]
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        $($extra)*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        $vis enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        // Not every declaration needs every helper.
        #[allow(dead_code)]
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

            /// The texts as a field's message says them: `A, B or C`.
            pub fn expected() -> ::std::string::String {
                $crate::expected(Self::TEXTS)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::string::String;
            fn from_str(s: &str) -> ::std::result::Result<Self, ::std::string::String> {
                match s {
                    $($text => ::std::result::Result::Ok($name::$variant),)+
                    other => ::std::result::Result::Err(::std::format!(
                        ::std::concat!("unknown ", ::std::stringify!($name), " {:?}"),
                        other
                    )),
                }
            }
        }
    };

    // Stored as TEXT.
    (@sql $name:ident [$($text:literal),+]) => {
        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                use ::std::io::Write as _;
                out.write_all(self.as_str().as_bytes())?;
                ::std::result::Result::Ok(diesel::serialize::IsNull::No)
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = ::std::str::from_utf8(value.as_bytes())?;
                text.parse().map_err(::std::convert::Into::into)
            }
        }
    };

    // Documented as its texts. Written out rather than derived: the derive does not see a
    // `serde(rename)` that a macro supplies, and would document the Rust variant names.
    (@schema $name:ident [$($text:literal),+]) => {
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };

    // A declaration with its capabilities.
    (@with [$($extra:tt)*] [$($cap:ident)*]
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)? }
    ) => {
        $crate::text_enum!(@define [$($extra)*]
            $(#[$meta])* $vis enum $name { $( $(#[$vmeta])* $variant => $text ),+ });
        $crate::text_enum!(@caps $name [$($text),+] $($cap)*);
    };
    (@caps $name:ident $texts:tt $cap:ident $($more:ident)*) => {
        $crate::text_enum!(@ $cap $name $texts);
        $crate::text_enum!(@caps $name $texts $($more)*);
    };
    (@caps $name:ident $texts:tt) => {};

    (sql, schema; $($rest:tt)+) => {
        $crate::text_enum!(@with [
            #[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
            #[diesel(sql_type = diesel::sql_types::Text)]
        ] [sql schema] $($rest)+);
    };
    (sql; $($rest:tt)+) => {
        $crate::text_enum!(@with [
            #[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
            #[diesel(sql_type = diesel::sql_types::Text)]
        ] [sql] $($rest)+);
    };
    (schema; $($rest:tt)+) => {
        $crate::text_enum!(@with [] [schema] $($rest)+);
    };
    ($($rest:tt)+) => {
        $crate::text_enum!(@with [] [] $($rest)+);
    };
}

#[cfg(test)]
mod tests {
    crate::text_enum! {
        sql, schema;
        /// A test set.
        pub enum Colour {
            Red => "RED",
            /// Documented.
            DarkBlue => "DARK_BLUE",
        }
    }

    crate::text_enum! {
        #[derive(PartialOrd, Ord)]
        enum Size { Small => "small", Large => "large" }
    }

    #[test]
    fn one_list_gives_text_json_parsing_and_schema() {
        assert_eq!(Colour::ALL, [Colour::Red, Colour::DarkBlue]);
        assert_eq!(Colour::TEXTS, ["RED", "DARK_BLUE"]);
        assert_eq!(Colour::DarkBlue.to_string(), "DARK_BLUE");
        assert_eq!("RED".parse::<Colour>(), Ok(Colour::Red));
        assert!("Red".parse::<Colour>().is_err());
        assert_eq!(
            serde_json::to_value(Colour::DarkBlue).unwrap(),
            serde_json::json!("DARK_BLUE")
        );
        assert_eq!(
            serde_json::from_value::<Colour>(serde_json::json!("RED")).unwrap(),
            Colour::Red
        );
        let schema = serde_json::to_value(<Colour as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(["RED", "DARK_BLUE"]));
        assert!(Size::Small < Size::Large);
        assert_eq!(Colour::expected(), "RED or DARK_BLUE");
        assert_eq!(crate::expected(&["A", "B", "C"]), "A, B or C");
        assert_eq!(crate::expected(&["A"]), "A");
    }
}
