//! Connecting to PostgreSQL, with TLS (rustls) as the URL's `sslmode` asks.
//!
//! | `sslmode` | encrypted | server certificate checked |
//! | --- | --- | --- |
//! | unset, `disable` | no | — |
//! | `allow`, `prefer` | if the server offers it | no |
//! | `require` | yes | no; against `sslrootcert` when one is given (as libpq does) |
//! | `verify-ca` | yes | chain up to a trusted root |
//! | `verify-full` | yes | chain, and the host name (or IP) in the URL |
//!
//! Trusted roots are `sslrootcert=<PEM file>`, or the system's store when it is unset or
//! `system`. Unlike libpq, an unset `sslmode` means plain text (as before TLS support): managed
//! servers need `sslmode=verify-full` (or `require`) set explicitly. Client certificates
//! (`sslcert`, `sslkey`) are not supported and are refused rather than ignored.

use std::str::FromStr;
use std::sync::Arc;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a connection is secured, from `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Everything needed to open a connection: the parsed URL and, when TLS is used, its client.
#[derive(Clone)]
pub struct ConnectOptions {
    config: tokio_postgres::Config,
    mode: SslMode,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds the password: only the mode is shown.
        f.debug_struct("ConnectOptions")
            .field("sslmode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Parses a `postgres://` URL, reading the TLS parameters out of its query and the trusted
    /// roots from disk. The error says what is wrong, never the URL (it may hold a password).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = None;
        let mut root_cert = None;
        let mut rest = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "sslmode" => mode = Some(value.parse::<SslMode>()?),
                "sslrootcert" => root_cert = Some(value.into_owned()),
                "sslcert" | "sslkey" | "sslpassword" => {
                    return Err(format!("{key} (client certificates) is not supported"));
                }
                _ => {
                    rest.append_pair(&key, &value);
                }
            }
        }
        let rest = rest.finish();
        let stripped = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{rest}")
        };
        let mut config = tokio_postgres::Config::from_str(&stripped)
            .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
        let mode = match (mode.unwrap_or(SslMode::Disable), &root_cert) {
            // libpq: `require` with a root certificate verifies the chain.
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        };
        config.ssl_mode(match mode {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            _ => WireMode::Require,
        });
        let tls = match mode {
            SslMode::Disable => None,
            mode => Some(MakeRustlsConnect::new(client_config(
                mode,
                root_cert.as_deref(),
            )?)),
        };
        Ok(Self { config, mode, tls })
    }

    /// The effective mode.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Opens a connection.
    pub async fn connect(&self) -> diesel::ConnectionResult<AsyncPgConnection> {
        // tokio-postgres's message leaves the cause out ("error performing TLS handshake"):
        // the chain is what tells an operator which certificate check failed.
        let failed = |e: tokio_postgres::Error| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            ConnectionError::BadConnection(message)
        };
        match &self.tls {
            None => {
                let (client, conn) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(failed)?;
                AsyncPgConnection::try_from_client_and_connection(client, conn).await
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await.map_err(failed)?;
                AsyncPgConnection::try_from_client_and_connection(client, conn).await
            }
        }
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: SslMode, root_cert: Option<&str>) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config =
        match mode {
            SslMode::Disable => unreachable!("no TLS client for sslmode=disable"),
            SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(
                    provider.signature_verification_algorithms,
                ))),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(roots(root_cert)?);
                let chain = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("TLS setup: {e}"))?;
                if mode == SslMode::VerifyFull {
                    builder.with_webpki_verifier(chain)
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
                }
            }
        };
    Ok(config.with_no_client_auth())
}

/// The trusted roots: a PEM file, or the system's store.
fn roots(root_cert: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match root_cert {
        Some(path) if path != "system" => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("sslrootcert {path} holds no certificate"));
            }
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "no trusted root certificates in the system's store; set sslrootcert".into(),
                );
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require`: encrypted, the server's certificate is not checked (libpq's meaning
/// of these modes). The handshake's signatures are still verified.
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name in it is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_read_out_of_the_url() {
        let plain = ConnectOptions::from_url("postgres://u:p@h:5432/db").unwrap();
        assert_eq!(plain.mode(), SslMode::Disable);
        let other = ConnectOptions::from_url(
            "postgres://u@h/db?application_name=api&sslmode=require&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(other.mode(), SslMode::Require);
        assert_eq!(other.config.get_application_name(), Some("api"));
        assert_eq!(
            ConnectOptions::from_url("postgres://h/db?sslmode=allow")
                .unwrap()
                .mode(),
            SslMode::Prefer
        );
    }

    #[test]
    fn bad_tls_parameters_are_refused_without_echoing_the_url() {
        for (url, expect) in [
            (
                "postgres://u:secret@h/db?sslmode=verify",
                "sslmode \"verify\"",
            ),
            (
                "postgres://u:secret@h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem",
                "sslrootcert /nonexistent.pem",
            ),
            ("postgres://u:secret@h/db?sslcert=/c.pem", "not supported"),
        ] {
            let err = ConnectOptions::from_url(url).unwrap_err();
            assert!(err.contains(expect), "{url}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
