//! Capability: the guest's standard output and error. What a component writes there —
//! `console.log`/`console.error` in JavaScript, `print` and uncaught-exception
//! tracebacks in Python, a Rust panic message written by std — goes to the driver's log,
//! line by line, within the same budget as `host.log` (stdout at info, stderr at warn;
//! target `mailpush::wasm::guest`). The last lines are kept: when a call then fails (an
//! uncaught exception ends in a trap), they are the failure's reason, before the trap.
//!
//! Bounds: a line is cut at [`MAX_LINE`](super::log::MAX_LINE) bytes, the kept tail at
//! [`TAIL_LINES`] lines; writes past the log budget cost the host nothing but the
//! tail's bounded copy.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamResult};

use super::bindings::mailpush::driver::host::Level;
use super::log::{self, DriverTag, SharedLog, MAX_LINE};

/// Lines of guest output kept for a failure's reason.
pub const TAIL_LINES: usize = 6;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One instance's guest output: the partial lines, the recent ones and where they are
/// logged.
pub struct Output {
    tag: Arc<DriverTag>,
    log: SharedLog,
    /// The transaction being handled (for the log lines).
    pub txn: Option<String>,
    partial: [Vec<u8>; 2],
    tail: VecDeque<(Stream, String)>,
}

/// Shared between the instance's state and its two streams.
pub type SharedOutput = Arc<Mutex<Output>>;

impl Output {
    pub fn shared(tag: Arc<DriverTag>, log: SharedLog) -> SharedOutput {
        Arc::new(Mutex::new(Output {
            tag,
            log,
            txn: None,
            partial: [Vec::new(), Vec::new()],
            tail: VecDeque::new(),
        }))
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        let i = stream as usize;
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial[i]);
                self.line(stream, &line);
            } else if self.partial[i].len() < MAX_LINE {
                self.partial[i].push(b);
            }
        }
    }

    fn line(&mut self, stream: Stream, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes)
            .trim_end_matches('\r')
            .to_string();
        if text.trim().is_empty() {
            return;
        }
        let level = match stream {
            Stream::Stdout => Level::Info,
            Stream::Stderr => Level::Warn,
        };
        log::guest_line(
            &self.tag,
            self.txn.as_deref(),
            &self.log,
            level,
            text.clone(),
        );
        self.keep(stream, text);
    }

    /// Keeps a line among the last [`TAIL_LINES`].
    fn keep(&mut self, stream: Stream, text: String) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back((stream, log::cap(text, 512)));
    }

    /// Keeps a line the guest logged at error level (already logged) with the stderr
    /// lines that explain a failed call.
    pub fn remember(&mut self, line: &str) {
        self.keep(Stream::Stderr, line.to_string());
    }

    /// Ends a call: partial lines are written out.
    pub fn flush(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.partial[stream as usize]);
            if !line.is_empty() {
                self.line(stream, &line);
            }
        }
    }

    /// The last lines (stderr's if there are any), joined, and forgets them: what a
    /// failing call said last.
    pub fn take_tail(&mut self) -> Option<String> {
        self.flush();
        let tail = std::mem::take(&mut self.tail);
        let errors: Vec<&str> = tail
            .iter()
            .filter(|(s, _)| *s == Stream::Stderr)
            .map(|(_, l)| l.as_str())
            .collect();
        let lines: Vec<&str> = if errors.is_empty() {
            tail.iter().map(|(_, l)| l.as_str()).collect()
        } else {
            errors
        };
        (!lines.is_empty()).then(|| lines.join(" | "))
    }

    /// Forgets the kept lines (a call that succeeded).
    pub fn clear_tail(&mut self) {
        self.flush();
        self.tail.clear();
    }
}

/// One of the guest's standard streams, for the WASI context.
#[derive(Clone)]
pub struct GuestStream {
    output: SharedOutput,
    stream: Stream,
}

impl GuestStream {
    pub fn new(output: SharedOutput, stream: Stream) -> Self {
        GuestStream { output, stream }
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(AsyncGuestStream(self.clone()))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.lock().write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

/// The same stream for WASI 0.3-style async writers.
struct AsyncGuestStream(GuestStream);

impl tokio::io::AsyncWrite for AsyncGuestStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.output.lock().write(self.0.stream, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::log::{LogBudget, LogRate};

    fn output() -> SharedOutput {
        Output::shared(
            Arc::new(DriverTag {
                number: 1,
                name: "wasm".into(),
            }),
            LogBudget::shared(100, Arc::new(LogRate::new(100, 100))),
        )
    }

    #[test]
    fn lines_are_split_kept_and_stderr_preferred_for_the_reason() {
        let o = output();
        let mut out = GuestStream::new(o.clone(), Stream::Stdout);
        let mut err = GuestStream::new(o.clone(), Stream::Stderr);
        out.write(Bytes::from_static(b"hello\nwor")).unwrap();
        out.write(Bytes::from_static(b"ld\n")).unwrap();
        assert_eq!(o.lock().take_tail().as_deref(), Some("hello | world"));
        out.write(Bytes::from_static(b"noise\n")).unwrap();
        err.write(Bytes::from_static(
            b"Error: boom\n  at deliver (driver.js:3)",
        ))
        .unwrap();
        assert_eq!(
            o.lock().take_tail().as_deref(),
            Some("Error: boom |   at deliver (driver.js:3)")
        );
        assert_eq!(o.lock().take_tail(), None, "taken");
    }

    #[test]
    fn the_tail_and_lines_are_bounded() {
        let o = output();
        let mut err = GuestStream::new(o.clone(), Stream::Stderr);
        for i in 0..100 {
            err.write(Bytes::from(format!("line {i}\n"))).unwrap();
        }
        err.write(Bytes::from(vec![b'x'; 1 << 20])).unwrap();
        let tail = o.lock().take_tail().unwrap();
        assert!(tail.starts_with("line 95 |"), "{tail}");
        assert!(tail.len() < 600 + 6 * 10, "{}", tail.len());
    }
}
