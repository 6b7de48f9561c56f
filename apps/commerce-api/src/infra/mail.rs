//! Email over SMTP (`lettre`), driven one step at a time so that every failure is known to be
//! before the message was handed over (it was not delivered: safe to send again) or after it
//! (the server may have it: sending again could deliver it twice).
//!
//! Production points at any relay with STARTTLS and AUTH (PLAIN or LOGIN);
//! the connection's certificate is checked against the system's roots, or `SMTP_CA_FILE`.
//! Connections are kept open between messages (at most as many as are sending at once) and
//! dropped after any error or an idle minute.

use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailParameter};
use tokio::sync::Mutex;

commerce_enums::text_enum! {
    /// How the connection to the SMTP server is protected (`SMTP_SECURITY`).
    pub enum Security {
        /// Plain connection, then STARTTLS before anything else (port 587).
        StartTls => "starttls",
        /// No TLS: a local relay or a development server only.
        None => "none",
    }
}

/// Where and how to send. Not `Debug`: it holds the relay's password.
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// PEM of the CA that signed the server's certificate, instead of the system's roots.
    pub ca_file: Option<String>,
    /// Login and password for AUTH, when the relay asks for them.
    pub credentials: Option<(String, String)>,
    /// The name this client greets with (EHLO).
    pub hello_name: String,
    /// Each step's limit: connecting (TLS and AUTH included), each command, the message.
    pub timeout: Duration,
}

/// Why a message was not sent. Details never carry an email address (servers repeat the
/// recipient in their answers): each is replaced by `<address>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The caller's last word before the hand-over said no (it no longer holds the message):
    /// nothing was handed over.
    Withheld,
    /// The server refused it, or it never reached the server: it was not delivered.
    /// `permanent`: the server said never (5xx); otherwise it may work later.
    NotDelivered { permanent: bool, detail: String },
    /// The message was handed over and no answer came (the connection broke, the time ran out):
    /// the server may have delivered it.
    Unknown(String),
}

/// An SMTP client keeping a few connections open between messages.
pub struct Mailer {
    settings: SmtpSettings,
    tls: Option<TlsParameters>,
    hello: ClientId,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

/// An idle connection older than this is closed rather than used: servers drop idle clients.
const MAX_IDLE: Duration = Duration::from_secs(60);

impl Mailer {
    pub fn new(settings: SmtpSettings) -> anyhow::Result<Self> {
        let tls = match settings.security {
            Security::None => None,
            Security::StartTls => {
                let mut builder = TlsParameters::builder(settings.host.clone());
                if let Some(file) = &settings.ca_file {
                    let pem = std::fs::read(file)
                        .map_err(|e| anyhow::anyhow!("SMTP_CA_FILE {file}: {e}"))?;
                    builder = builder.add_root_certificate(
                        Certificate::from_pem(&pem)
                            .map_err(|e| anyhow::anyhow!("SMTP_CA_FILE {file}: {e}"))?,
                    );
                }
                Some(builder.build_rustls()?)
            }
        };
        let hello = ClientId::Domain(settings.hello_name.clone());
        Ok(Self {
            settings,
            tls,
            hello,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `message` (a formatted RFC 5322 message) to `envelope`'s recipients.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<(), SendError> {
        self.send_marked(envelope, message, async || true).await
    }

    /// Sends `message` to `envelope`'s recipients, calling `mark` once the server has said it
    /// will take the message (after DATA) and just before the message is handed over: if it
    /// returns false, nothing is handed over ([`SendError::Withheld`]). A failure before that
    /// moment is known not to have delivered anything.
    pub async fn send_marked(
        &self,
        envelope: &Envelope,
        message: &[u8],
        mark: impl AsyncFnOnce() -> bool,
    ) -> Result<(), SendError> {
        let mut mark = Some(mark);
        // A kept connection the server has closed fails before the message is handed over:
        // then once more on a new one.
        let mut fresh_only = false;
        loop {
            let (mut conn, reused) = self.connection(fresh_only).await?;
            match self
                .hand_over(&mut conn, envelope, message, &mut mark)
                .await
            {
                Ok(()) => {
                    self.idle.lock().await.push((conn, Instant::now()));
                    return Ok(());
                }
                Err(Step::Before(Failure::Broken(_))) if reused => {
                    conn.abort().await;
                    fresh_only = true;
                }
                Err(Step::Before(e)) => {
                    conn.abort().await;
                    return Err(e.not_delivered());
                }
                Err(Step::After(e)) => {
                    conn.abort().await;
                    return Err(e);
                }
                Err(Step::Withheld) => {
                    conn.abort().await;
                    return Err(SendError::Withheld);
                }
            }
        }
    }

    /// A kept connection (unless `fresh_only`), or a new one: connected, secured, signed in.
    async fn connection(&self, fresh_only: bool) -> Result<(AsyncSmtpConnection, bool), SendError> {
        if !fresh_only {
            let mut idle = self.idle.lock().await;
            while let Some((conn, since)) = idle.pop() {
                if since.elapsed() < MAX_IDLE && !conn.has_broken() {
                    return Ok((conn, true));
                }
                let mut conn = conn;
                conn.abort().await;
            }
        }
        let connect = async {
            let s = &self.settings;
            // Without TCP_NODELAY, the message's end waits for the server's delayed ACK of its
            // body (40 ms per message on Linux).
            let tcp = tokio::net::TcpStream::connect((s.host.as_str(), s.port))
                .await
                .map_err(|e| Failure::Broken(format!("connecting to the SMTP server: {e}")))?;
            tcp.set_nodelay(true)
                .map_err(|e| Failure::Broken(format!("setting TCP_NODELAY: {e}")))?;
            let mut conn =
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello).await?;
            if s.security == Security::StartTls {
                if !conn.can_starttls() {
                    conn.abort().await;
                    return Err(Failure::Broken("the server does not offer STARTTLS".into()));
                }
                let tls = self.tls.clone().expect("TLS parameters for STARTTLS");
                conn.starttls(tls, &self.hello).await?;
            }
            if let Some((login, password)) = &s.credentials {
                conn.auth(
                    &[Mechanism::Plain, Mechanism::Login],
                    &Credentials::new(login.clone(), password.clone()),
                )
                .await?;
            }
            Ok(conn)
        };
        match tokio::time::timeout(self.settings.timeout * 3, connect).await {
            Ok(Ok(conn)) => Ok((conn, false)),
            Ok(Err(e)) => Err(e.not_delivered()),
            Err(_) => Err(SendError::NotDelivered {
                permanent: false,
                detail: "connecting to the SMTP server timed out".into(),
            }),
        }
    }

    /// MAIL, RCPT, DATA (before: nothing handed over), then the message (after).
    async fn hand_over<M: AsyncFnOnce() -> bool>(
        &self,
        conn: &mut AsyncSmtpConnection,
        envelope: &Envelope,
        message: &[u8],
        mark: &mut Option<M>,
    ) -> Result<(), Step> {
        let limit = self.settings.timeout;
        let mut options = Vec::new();
        let non_ascii = envelope
            .from()
            .is_some_and(|a| !AsRef::<str>::as_ref(a).is_ascii())
            || envelope
                .to()
                .iter()
                .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(Step::Before(Failure::Refused {
                    permanent: true,
                    detail: "an address is not ASCII and the server does not take SMTPUTF8".into(),
                }));
            }
            options.push(MailParameter::SmtpUtfEight);
        }
        let from = envelope.from().cloned();
        let before = async {
            conn.command(Mail::new(from, options)).await?;
            for to in envelope.to() {
                conn.command(Rcpt::new(to.clone(), vec![])).await?;
            }
            conn.command(Data).await?;
            Ok::<_, Failure>(())
        };
        match tokio::time::timeout(limit * 2, before).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Step::Before(e)),
            Err(_) => {
                return Err(Step::Before(Failure::Broken(
                    "the SMTP server did not answer in time".into(),
                )));
            }
        }
        let Some(mark) = mark.take() else {
            return Err(Step::Withheld);
        };
        if !mark().await {
            return Err(Step::Withheld);
        }
        match tokio::time::timeout(limit, conn.message(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match Failure::from(e) {
                // The server answered: it refused the message.
                refused @ Failure::Refused { .. } => Err(Step::After(refused.not_delivered())),
                Failure::Broken(e) => Err(Step::After(SendError::Unknown(format!(
                    "the connection failed after the message was handed over: {e}"
                )))),
            },
            Err(_) => Err(Step::After(SendError::Unknown(format!(
                "no answer within {} ms after the message was handed over",
                limit.as_millis()
            )))),
        }
    }

    /// Closes the kept connections (QUIT).
    pub async fn close(&self) {
        for (mut conn, _) in self.idle.lock().await.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.quit()).await;
        }
    }
}

/// Where a send failed.
enum Step {
    /// Before the message was handed over.
    Before(Failure),
    /// The mark said no.
    Withheld,
    /// After.
    After(SendError),
}

/// What went wrong in one step.
enum Failure {
    /// The server answered with a refusal (4xx or 5xx).
    Refused { permanent: bool, detail: String },
    /// No answer: the connection failed or the time ran out.
    Broken(String),
}

impl From<lettre::transport::smtp::Error> for Failure {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        if e.is_transient() || e.is_permanent() {
            Failure::Refused {
                permanent: e.is_permanent(),
                detail: without_addresses(&e.to_string()),
            }
        } else {
            Failure::Broken(without_addresses(&e.to_string()))
        }
    }
}

impl Failure {
    /// As the answer to a message that was not handed over.
    fn not_delivered(self) -> SendError {
        match self {
            Failure::Refused { permanent, detail } => SendError::NotDelivered { permanent, detail },
            Failure::Broken(detail) => SendError::NotDelivered {
                permanent: false,
                detail,
            },
        }
    }
}

/// `text` with every word holding an `@` replaced by `<address>`.
fn without_addresses(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            if word.contains('@') {
                "<address>"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn answers_lose_their_addresses() {
        assert_eq!(
            super::without_addresses("451 4.2.0 <someone@example.com>: try again later"),
            "451 4.2.0 <address> try again later"
        );
    }
}
