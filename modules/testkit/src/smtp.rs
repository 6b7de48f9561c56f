//! A real SMTP server of the test's own: `supports/dev/smtp-sink.py` (aiosmtpd) on a free port,
//! writing every message it accepts to a Maildir the test reads, and misbehaving on request
//! (refusing or holding chosen recipients). Killed, and its Maildir removed, when dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::START_HINT;

/// One message as the server stored it for one recipient.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope recipient the server delivered it to.
    pub to: String,
    /// Header fields (names in lower case; unfolded). A field given twice keeps the last.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn subject(&self) -> &str {
        self.header("subject").unwrap_or_default()
    }
}

/// How the server wants to be spoken to.
#[derive(Debug, Clone, Default)]
pub struct SmtpOptions {
    /// A certificate and key: STARTTLS offered and required before MAIL.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A login and password: AUTH required before MAIL.
    pub auth: Option<(String, String)>,
}

pub struct SmtpSink {
    child: std::process::Child,
    pub port: u16,
    dir: PathBuf,
}

impl SmtpSink {
    /// The Python that has aiosmtpd: `SMTP_SINK_PYTHON`, or where `supports/dev/stack`
    /// installs it.
    fn python() -> PathBuf {
        if let Ok(bin) = std::env::var("SMTP_SINK_PYTHON") {
            return bin.into();
        }
        let cache = std::env::var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
            });
        cache.join("commerce-dev/aiosmtpd-1.4.6/bin/python")
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../supports/dev/smtp-sink.py")
    }

    /// A plain server that accepts anything.
    pub async fn start() -> Self {
        Self::start_with(SmtpOptions::default()).await
    }

    /// Starts a server on a free port and waits until it accepts connections.
    pub async fn start_with(options: SmtpOptions) -> Self {
        let python = Self::python();
        assert!(
            python.exists(),
            "the SMTP server's Python (with aiosmtpd) is missing at {}; {START_HINT}",
            python.display()
        );
        let dir = std::env::temp_dir().join(format!("commerce-smtp-{}", crate::unique_suffix()));
        std::fs::create_dir_all(dir.join("control")).expect("the sink's directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut command = std::process::Command::new(&python);
        command
            .arg(Self::script())
            .args(["--port", &port.to_string()])
            .arg("--maildir")
            .arg(dir.join("mail"))
            .arg("--control")
            .arg(dir.join("control"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some((cert, key)) = &options.tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        if let Some((login, password)) = &options.auth {
            command.args(["--auth", &format!("{login}:{password}")]);
        }
        let mut child = command.spawn().expect("starting the SMTP server");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self { child, port, dir };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the SMTP server did not listen on port {port} within 10 s");
    }

    /// `smtp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// How many messages the server has stored (without reading them).
    pub fn count(&self) -> usize {
        ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.dir.join("mail").join(sub)).ok())
            .map(|entries| entries.count())
            .sum()
    }

    /// Every message stored so far, in the order the server stored them.
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<(std::time::SystemTime, String, PathBuf)> = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join("mail").join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                let name = entry.file_name().to_string_lossy().into_owned();
                files.push((modified, name, entry.path()));
            }
        }
        // Maildir names start with the delivery time (seconds, then a sequence within it).
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, _, path)| std::fs::read(path).ok())
            .map(|raw| parse(&String::from_utf8_lossy(&raw)))
            .collect()
    }

    fn control(&self, file: &str, lines: &[(&str, String)]) {
        let text: String = lines.iter().map(|(a, v)| format!("{a} {v}\n")).collect();
        let path = self.dir.join("control").join(file);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("a control file");
        std::fs::rename(tmp, path).expect("a control file");
    }

    /// From now on, RCPT TO each of `addresses` is answered `code` (451: later, 550: never);
    /// replaces the previous list. An empty list accepts everyone again.
    pub fn reject(&self, addresses: &[&str], code: u16) {
        let lines: Vec<(&str, String)> = addresses.iter().map(|a| (*a, code.to_string())).collect();
        self.control("reject", &lines);
    }

    /// From now on, a message to each of `addresses` is stored, then answered after `hold`.
    pub fn hold(&self, addresses: &[&str], hold: Duration) {
        let lines: Vec<(&str, String)> = addresses
            .iter()
            .map(|a| (*a, format!("{:.3}", hold.as_secs_f64())))
            .collect();
        self.control("hold", &lines);
    }
}

/// A stored message: its header fields (unfolded) and body.
fn parse(raw: &str) -> Mail {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
    let mut headers: HashMap<String, String> = HashMap::new();
    let mut last: Option<String> = None;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(name) = &last
                && let Some(value) = headers.get_mut(name)
            {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            headers.insert(name.clone(), value.trim().to_owned());
            last = Some(name);
        }
    }
    let body = match headers.get("content-transfer-encoding") {
        Some(e) if e.eq_ignore_ascii_case("quoted-printable") => quoted_printable(body),
        _ => body.to_owned(),
    };
    Mail {
        to: headers.get("delivered-to").cloned().unwrap_or_default(),
        headers,
        body,
    }
}

/// A quoted-printable body as the text it encodes (RFC 2045 6.7): soft line breaks joined,
/// `=XX` octets decoded, as UTF-8.
fn quoted_printable(body: &str) -> String {
    let bytes = body.replace("=\n", "").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'=', Some(octet)) => {
                out.push(octet);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
