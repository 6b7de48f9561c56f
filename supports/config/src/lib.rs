//! Configuration from the environment.
//!
//! Every app reads its settings in exactly one place (its `config.rs`) through these helpers, so
//! that a bad or missing value stops the process at start with one line naming the variable,
//! instead of failing later on first use. Values are never echoed back in errors: a variable may
//! hold a secret (a JWT key, a database password). Once read, the configuration is logged at
//! start, every variable the app read with secrets redacted ([`Reader::summary`]).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;
use std::sync::Mutex;

/// A configuration variable that is missing or cannot be parsed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration: {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: String,
    /// Why it was refused (never contains the value itself).
    pub reason: String,
}

impl ConfigError {
    pub fn new(var: &str, reason: impl Into<String>) -> Self {
        Self {
            var: var.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Reads an app's configuration from the process environment, or exits with code 2 and one line
/// naming the variable at fault (`<app>: invalid configuration: VAR: why`).
pub fn from_env_or_exit<T>(
    app: &str,
    read: impl FnOnce(&Reader<Env>) -> Result<T, ConfigError>,
) -> T {
    let reader = Reader::default();
    // A secret file that could not be read explains a "required" error better than it does.
    match read(&reader).and_then(|config| reader.file_error().map_or(Ok(config), Err)) {
        Ok(config) => {
            tracing::info!(target: "config", app, "configuration: {}", reader.summary());
            config
        }
        Err(e) => {
            let e = reader.file_error().unwrap_or(e);
            eprintln!("{app}: {e}");
            std::process::exit(2);
        }
    }
}

/// A source of variables: the process environment in production, a map in tests.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;

    /// The names of the variables set that start with `prefix`, sorted.
    fn names_with_prefix(&self, prefix: &str) -> Vec<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::env::vars()
            .filter(|(k, v)| k.starts_with(prefix) && !v.trim().is_empty())
            .map(|(k, _)| k)
            .collect();
        names.sort();
        names
    }
}

impl Source for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }

    fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .iter()
            .filter(|(k, v)| k.starts_with(prefix) && !v.trim().is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        names.sort();
        names
    }
}

/// Reads configuration variables from a [`Source`], remembering which it read.
pub struct Reader<S: Source = Env> {
    source: S,
    read: Mutex<BTreeMap<String, Option<String>>>,
    /// Variables whose `…_FILE` could not be used, with why.
    file_errors: Mutex<Vec<ConfigError>>,
}

impl Default for Reader<Env> {
    fn default() -> Self {
        Self::new(Env)
    }
}

impl<S: Source> Reader<S> {
    pub fn new(source: S) -> Self {
        Self {
            source,
            read: Mutex::default(),
            file_errors: Mutex::default(),
        }
    }

    /// The first variable whose `…_FILE` could not be read (or was set beside the variable),
    /// if any: apps check it after reading their configuration.
    pub fn file_error(&self) -> Option<ConfigError> {
        self.file_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned()
    }

    /// Every variable read so far, in name order, as `NAME=value` (`NAME=(default)` when unset),
    /// with secrets redacted: values of variables named like a secret, and passwords in URLs.
    pub fn summary(&self) -> String {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, value) in read.iter() {
            if !out.is_empty() {
                out.push(' ');
            }
            match value {
                Some(v) => out.push_str(&format!("{name}={}", redact(name, v))),
                None => out.push_str(&format!("{name}=(default)")),
            }
        }
        out
    }

    /// A variable's value, or else the contents of the file `NAME_FILE` names (a mounted
    /// secret; one trailing newline dropped). Every variable can be given either way.
    fn get(&self, name: &str) -> Option<String> {
        let file_variable = format!("{name}_FILE");
        let direct = self.source.get(name);
        let value = match (direct, self.source.get(&file_variable)) {
            (Some(_), Some(_)) => {
                self.file_failed(ConfigError::new(
                    &file_variable,
                    format!("set {name} or {file_variable}, not both"),
                ));
                None
            }
            (Some(value), None) => Some(value),
            (None, Some(path)) => match std::fs::read_to_string(path.trim()) {
                Ok(text) => {
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    let text = text.strip_suffix('\r').unwrap_or(text);
                    (!text.trim().is_empty()).then(|| text.to_owned())
                }
                Err(e) => {
                    self.file_failed(ConfigError::new(
                        &file_variable,
                        format!("cannot read {}: {e}", path.trim()),
                    ));
                    None
                }
            },
            (None, None) => None,
        };
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), value.clone());
        value
    }

    fn file_failed(&self, error: ConfigError) {
        self.file_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(error);
    }

    /// Every variable set whose name starts with `prefix`, as (name, value), sorted by name.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.source
            .names_with_prefix(prefix)
            .into_iter()
            .filter_map(|name| {
                let value = self.get(&name)?;
                Some((name, value))
            })
            .collect()
    }

    /// A variable that must be present.
    pub fn required<T>(&self, name: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let raw = self
            .get(name)
            .ok_or_else(|| ConfigError::new(name, "is required but not set"))?;
        parse(name, &raw)
    }

    /// A variable with a default used when it is unset or empty.
    pub fn or<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            Some(raw) => parse(name, &raw),
            None => Ok(default),
        }
    }

    /// A string variable with a default.
    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }

    /// A variable that may be absent.
    pub fn optional<T>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(name).map(|raw| parse(name, &raw)).transpose()
    }

    /// A number that must fall within `range`.
    pub fn in_range<T>(
        &self,
        name: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let value = self.or(name, default)?;
        if !range.contains(&value) {
            return Err(ConfigError::new(
                name,
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
        Ok(value)
    }
}

/// `value` as it may be logged: `<redacted>` for a variable named like a secret; in a URL, the
/// password and any query parameter named like one (`?password=`, `sslpassword=`) replaced.
fn redact(name: &str, value: &str) -> String {
    const SECRET: [&str; 7] = [
        "SECRET",
        "PASSWORD",
        "PASSPHRASE",
        "TOKEN",
        "CREDENTIAL",
        "OAUTHBEARER_CONFIG",
        "JAAS",
    ];
    if SECRET.iter().any(|s| name.contains(s))
        || name.ends_with("_KEY")
        || name.ends_with("_KEYS")
        || name.ends_with("_PEM")
    {
        return "<redacted>".to_owned();
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    // scheme://user:password@host...: keep the user, drop the password.
    let location = match location.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:<redacted>@{host}"),
            None => location.to_owned(),
        },
        None => location.to_owned(),
    };
    let Some(query) = query else {
        return format!("{scheme}://{location}");
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if SECRET.iter().any(|s| key.to_ascii_uppercase().contains(s)) => {
                format!("{key}=<redacted>")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{scheme}://{location}?{}", query.join("&"))
}

fn parse<T>(name: &str, raw: &str) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    raw.trim()
        .parse()
        .map_err(|e: T::Err| ConfigError::new(name, format!("cannot be parsed: {e}")))
}

/// The deployment profile. `dev` allows insecure defaults (a well-known JWT secret); any other
/// profile refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Prod,
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "dev" | "development" | "test" => Ok(Self::Dev),
            "prod" | "production" | "staging" => Ok(Self::Prod),
            other => Err(format!("unknown profile `{other}` (expected dev or prod)")),
        }
    }
}

/// What an app connects to, for [`refuse_plaintext`].
#[derive(Debug, Clone, Copy)]
pub struct Connections<'a> {
    /// `DATABASE_URL`.
    pub database_url: &'a str,
    /// `DATABASE_DIRECT_URL`, when an app has one.
    pub database_direct_url: Option<&'a str>,
    /// `REDIS_URL`.
    pub redis_url: &'a str,
    /// Whether the Kafka brokers are reached over TLS (`KAFKA_SECURITY_PROTOCOL`).
    pub kafka_encrypted: bool,
}

/// One connection, whether it is encrypted, and the variables that say so.
struct Transport {
    what: &'static str,
    configured_by: &'static str,
    allow: &'static str,
    encrypted: bool,
}

/// Outside development, refuses every connection in plain text (PostgreSQL without
/// `sslmode=require|verify-ca|verify-full`, Redis without `rediss://`, Kafka without TLS) unless
/// its `…_ALLOW_PLAINTEXT` variable says `true` (a private network the operator vouches for), and
/// logs each one so allowed. Development allows everything.
pub fn refuse_plaintext<S: Source>(
    r: &Reader<S>,
    production: bool,
    connections: &Connections<'_>,
) -> Result<(), ConfigError> {
    if !production {
        return Ok(());
    }
    let transports = [
        Transport {
            what: "PostgreSQL",
            configured_by: "DATABASE_URL",
            allow: "DATABASE_ALLOW_PLAINTEXT",
            encrypted: postgres_encrypted(connections.database_url),
        },
        Transport {
            what: "PostgreSQL",
            configured_by: "DATABASE_DIRECT_URL",
            allow: "DATABASE_ALLOW_PLAINTEXT",
            encrypted: connections
                .database_direct_url
                .is_none_or(postgres_encrypted),
        },
        Transport {
            what: "Redis",
            configured_by: "REDIS_URL",
            allow: "REDIS_ALLOW_PLAINTEXT",
            encrypted: connections
                .redis_url
                .split(',')
                .all(|u| u.trim().starts_with("rediss://")),
        },
        Transport {
            what: "Kafka",
            configured_by: "KAFKA_SECURITY_PROTOCOL",
            allow: "KAFKA_ALLOW_PLAINTEXT",
            encrypted: connections.kafka_encrypted,
        },
    ];
    for t in transports.iter().filter(|t| !t.encrypted) {
        if r.or(t.allow, false)? {
            tracing::warn!(
                dependency = t.what,
                allowed_by = t.allow,
                "connecting to {} in plain text, as {} allows",
                t.what,
                t.allow
            );
        } else {
            return Err(ConfigError::new(
                t.configured_by,
                format!(
                    "connects to {} in plain text; production needs TLS, or {}=true for a private network",
                    t.what, t.allow
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a `postgres://` URL asks for TLS (`sslmode=require`, `verify-ca` or `verify-full`).
fn postgres_encrypted(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| {
            matches!(
                pair.split_once('='),
                Some(("sslmode", "require" | "verify-ca" | "verify-full"))
            )
        })
    })
}

/// Development secrets the API and the payment-gateway simulator share, so a local stack works
/// with no configuration. The API refuses each outside the dev profile.
pub mod dev {
    /// The merchant API key the API sends and the simulator accepts (`PG_API_KEY`,
    /// `PG_SIM_API_KEYS`).
    pub const GATEWAY_API_KEY: &str = "dev-only-insecure-gateway-api-key";
    /// The secret the simulator signs callbacks with and the API verifies them by
    /// (`PG_SIM_CALLBACK_SECRET`, `PG_CALLBACK_SECRETS`).
    pub const GATEWAY_CALLBACK_SECRET: &str = "dev-only-insecure-gateway-callback-secret";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn reader(pairs: &[(&str, &str)]) -> Reader<HashMap<String, String>> {
        Reader::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn unparsable_value_names_the_variable_but_not_the_value() {
        let err = reader(&[("PORT", "eighty")])
            .or::<u16>("PORT", 8080)
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("PORT"), "{text}");
        assert!(!text.contains("eighty"), "{text}");
    }

    #[test]
    fn any_variable_can_come_from_a_mounted_file() {
        let dir = std::env::temp_dir();
        let secret = dir.join(format!("config-secret-{}", std::process::id()));
        std::fs::write(&secret, "s3cret-from-a-file\n").unwrap();
        let path = secret.to_str().unwrap();
        let r = reader(&[("COMMERCE_JWT_SECRET_FILE", path)]);
        assert_eq!(
            r.required::<String>("COMMERCE_JWT_SECRET").unwrap(),
            "s3cret-from-a-file",
            "one trailing newline dropped"
        );
        assert!(r.file_error().is_none());
        assert!(!r.summary().contains("s3cret"), "{}", r.summary());

        let both = reader(&[("API_KEY", "x"), ("API_KEY_FILE", path)]);
        assert!(both.optional::<String>("API_KEY").unwrap().is_none());
        assert_eq!(both.file_error().unwrap().var, "API_KEY_FILE");

        let missing = reader(&[("API_KEY_FILE", "/nonexistent/secret")]);
        assert!(missing.required::<String>("API_KEY").is_err());
        let error = missing.file_error().unwrap();
        assert_eq!(error.var, "API_KEY_FILE");
        assert!(
            error.reason.contains("/nonexistent/secret"),
            "{}",
            error.reason
        );
        std::fs::remove_file(&secret).unwrap();
    }

    #[test]
    fn missing_required_variable_is_reported() {
        let err = reader(&[]).required::<String>("DATABASE_URL").unwrap_err();
        assert_eq!(err.var, "DATABASE_URL");
    }

    #[test]
    fn the_summary_names_every_variable_read_and_redacts_secrets() {
        let r = reader(&[
            ("DATABASE_URL", "postgres://app:hunter2@db:5432/commerce"),
            ("JWT_SECRET", "s3cret"),
            ("CARD_KEY", "00ff"),
            ("KAFKA_SASL_PASSWORD", "pw"),
            ("REDIS_KEY_PREFIX", "shop:"),
            (
                "REPLICA_URL",
                "postgres://db:5432/c?sslmode=require&password=hunter2",
            ),
            ("GATEWAY_KEYS", "k1,k2"),
            ("UNREAD", "x"),
        ]);
        for name in [
            "DATABASE_URL",
            "REPLICA_URL",
            "GATEWAY_KEYS",
            "JWT_SECRET",
            "CARD_KEY",
            "KAFKA_SASL_PASSWORD",
        ] {
            let _ = r.optional::<String>(name);
        }
        let _ = r.string_or("REDIS_KEY_PREFIX", "commerce:");
        let _ = r.or::<u16>("PORT", 8080);
        assert_eq!(
            r.summary(),
            "CARD_KEY=<redacted> DATABASE_URL=postgres://app:<redacted>@db:5432/commerce \
             GATEWAY_KEYS=<redacted> JWT_SECRET=<redacted> KAFKA_SASL_PASSWORD=<redacted> \
             PORT=(default) REDIS_KEY_PREFIX=shop: \
             REPLICA_URL=postgres://db:5432/c?sslmode=require&password=<redacted>"
        );
    }

    #[test]
    fn default_applies_when_unset_and_range_is_enforced() {
        let r = reader(&[("POOL", "500")]);
        assert_eq!(r.or::<u16>("PORT", 8080).unwrap(), 8080);
        assert!(r.in_range::<u32>("POOL", 10, 1..=100).is_err());
    }
}
