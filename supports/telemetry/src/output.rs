//! Where log lines go: one writer thread behind a bounded queue.
//!
//! Request threads format a line into a buffer and hand it over; the writer thread writes what
//! has queued in one go every 10 ms, so a burst of lines costs one `write` instead of one per
//! line, and no request wakes another thread. Access lines are offered ([`Output::offer`]): when the queue
//! is full they are dropped and counted in `log_lines_dropped_total`, so a slow disk or pipe
//! never holds a request. Every other line waits for room ([`Output::send`]): warnings and
//! errors are never lost.
//!
//! Lines go to stdout, or with `LOG_FILE` to that file, which is capped at `LOG_FILE_MAX_BYTES`
//! (default 64 MiB): when a line would take it past that, the file is renamed to `<name>.1`
//! (replacing the previous one) and a new one started, so a dev machine keeps at most twice the
//! cap.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

/// Lines queued for the writer; beyond this access lines are dropped.
const QUEUE: usize = 16_384;
/// How long the writer rests once the queue is empty (a line waits at most this long).
const PAUSE: Duration = Duration::from_millis(10);
const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

enum Msg {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// The process's log output.
pub struct Output {
    queue: SyncSender<Msg>,
}

/// The process's output, started on first use from `LOG_FILE` and `LOG_FILE_MAX_BYTES`.
pub fn output() -> &'static Output {
    static OUTPUT: OnceLock<Output> = OnceLock::new();
    OUTPUT.get_or_init(|| {
        let sink = match std::env::var("LOG_FILE") {
            Ok(path) if !path.trim().is_empty() => {
                let max = std::env::var("LOG_FILE_MAX_BYTES")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .filter(|&n: &u64| n > 0)
                    .unwrap_or(DEFAULT_MAX_BYTES);
                match Capped::open(PathBuf::from(&path), max) {
                    Ok(file) => Sink::File(file),
                    Err(e) => {
                        eprintln!("LOG_FILE={path} cannot be opened ({e}); logging to stdout");
                        Sink::Stdout(BufWriter::with_capacity(64 * 1024, io::stdout()))
                    }
                }
            }
            _ => Sink::Stdout(BufWriter::with_capacity(64 * 1024, io::stdout())),
        };
        Output::start(sink)
    })
}

impl Output {
    fn start(mut sink: Sink) -> Self {
        let (queue, lines) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(&lines, &mut sink))
            .expect("the log writer thread starts");
        Self { queue }
    }

    /// Queues a line if there is room; else drops and counts it.
    pub fn offer(&self, line: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Msg::Line(line))
        {
            metrics::counter!("log_lines_dropped_total").increment(1);
        }
    }

    /// Queues a line, waiting for room.
    pub fn send(&self, line: Vec<u8>) {
        let _ = self.queue.send(Msg::Line(line));
    }

    /// Waits (at most `timeout`) until every line queued so far is written.
    pub fn flush(&self, timeout: Duration) {
        let (done, written) = mpsc::channel();
        if self.queue.send(Msg::Flush(done)).is_ok() {
            let _ = written.recv_timeout(timeout);
        }
    }
}

/// Writes what has queued, flushes, and looks again after [`PAUSE`]: the writer does not wait
/// on the queue, since waking it for every line would cost each request a wake-up of another
/// thread (measured: a sixth of a cached read's time).
fn write_lines(lines: &Receiver<Msg>, sink: &mut Sink) {
    loop {
        loop {
            match lines.try_recv() {
                Ok(Msg::Line(line)) => sink.line(&line),
                Ok(Msg::Flush(done)) => {
                    sink.flush();
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    sink.flush();
                    return;
                }
            }
        }
        sink.flush();
        std::thread::sleep(PAUSE);
    }
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(Capped),
}

impl Sink {
    /// Write errors are ignored: there is nowhere left to report them.
    fn line(&mut self, line: &[u8]) {
        match self {
            Sink::Stdout(out) => {
                let _ = out.write_all(line);
            }
            Sink::File(file) => file.line(line),
        }
    }

    fn flush(&mut self) {
        let _ = match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(file) => file.out.flush(),
        };
    }
}

/// A log file kept under `max` bytes by rotating it to `<path>.1`.
struct Capped {
    path: PathBuf,
    max: u64,
    out: BufWriter<File>,
    written: u64,
}

impl Capped {
    fn open(path: PathBuf, max: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path,
            max,
            out: BufWriter::with_capacity(64 * 1024, file),
            written,
        })
    }

    fn line(&mut self, line: &[u8]) {
        if self.written > 0 && self.written + line.len() as u64 > self.max {
            let _ = self.rotate();
        }
        if self.out.write_all(line).is_ok() {
            self.written += line.len() as u64;
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, old)?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.written = 0;
        Ok(())
    }
}

/// A `MakeWriter` for the tracing subscriber: each event is formatted into a buffer of its own
/// and queued whole when the formatter is done with it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lines;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = EventLine;

    fn make_writer(&'a self) -> EventLine {
        EventLine(Vec::with_capacity(256))
    }
}

pub(crate) struct EventLine(Vec<u8>);

impl Write for EventLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            output().send(std::mem::take(&mut self.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_file_rotates_to_one_previous_file_and_keeps_every_line() {
        let dir = std::env::temp_dir().join(format!("log-cap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.log");
        let mut file = Capped::open(path.clone(), 100).unwrap();
        for i in 0..25 {
            file.line(format!("line {i:02} of the log\n").as_bytes()); // 19 bytes
        }
        file.out.flush().unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        let previous = std::fs::read_to_string(dir.join("app.log.1")).unwrap();
        // 5 lines (95 bytes) fit under 100; the sixth starts a new file.
        assert_eq!(previous.lines().count(), 5, "{previous}");
        assert_eq!(previous.lines().next(), Some("line 15 of the log"));
        assert_eq!(
            current,
            "line 20 of the log\nline 21 of the log\nline 22 of the log\nline 23 of the log\nline 24 of the log\n"
        );
        // Reopened, it keeps counting from its size.
        let mut again = Capped::open(path.clone(), 100).unwrap();
        assert_eq!(again.written, 95);
        again.line(b"one more line, too long\n");
        again.out.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "one more line, too long\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
