//! The host end of the serial channel: decodes frames from the guest into
//! stdout, stderr and the exit status, keeps console text for diagnostics,
//! and encodes stdin for the guest.

use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hutch_proto::{Frame, FrameDecoder, FrameKind, MAX_PAYLOAD};

use super::{ConsoleAction, LineCallback};

/// How much console text (kernel messages) is kept for error reports.
const CONSOLE_KEEP: usize = 64 * 1024;

/// What the guest reported at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestReport {
    /// The command's exit status.
    Exit(i32),
    /// Init failed before or around running the command.
    InitError(String),
}

/// Opens when init's first frame arrives: init sets its serial line raw and
/// then says so with an (empty) frame; stdin sent before that is lost.
#[derive(Clone, Default)]
pub struct ReadyGate(Arc<(Mutex<bool>, Condvar)>);

impl ReadyGate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the gate and wakes every waiter.
    pub fn open(&self) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0 .1.notify_all();
    }

    /// True once the gate has opened.
    pub fn is_open(&self) -> bool {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the gate opens (true) or `give_up` says so (false).
    pub fn wait(&self, give_up: &dyn Fn() -> bool) -> bool {
        let mut open = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            if give_up() {
                return false;
            }
            open = self
                .0
                 .1
                .wait_timeout(open, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Decodes the guest's serial output.
pub struct HostConsole<O: Write, E: Write> {
    decoder: FrameDecoder,
    stdout: O,
    stderr: E,
    echo_console: bool,
    console: Vec<u8>,
    report: Option<GuestReport>,
    init_error: Option<String>,
    line: Vec<u8>,
    observer: Option<LineObserver>,
    ready: ReadyGate,
}

/// Watches console lines; returns [`ConsoleAction::Stop`] to end the run.
pub type LineObserver = (LineCallback, Box<dyn Fn() + Send>);

impl<O: Write, E: Write> HostConsole<O, E> {
    /// Output goes to `stdout`/`stderr`; with `echo_console`, kernel console
    /// text is copied to `stderr` too (`--console`).
    pub fn new(stdout: O, stderr: E, echo_console: bool) -> Self {
        Self {
            decoder: FrameDecoder::new(),
            stdout,
            stderr,
            echo_console,
            console: Vec::new(),
            report: None,
            init_error: None,
            line: Vec::new(),
            observer: None,
            ready: ReadyGate::new(),
        }
    }

    /// The gate that opens when the guest is ready for stdin.
    pub fn ready_gate(&self) -> ReadyGate {
        self.ready.clone()
    }

    /// Calls `observe` with each complete console line; when it answers
    /// [`ConsoleAction::Stop`], calls `stop` (once).
    pub fn set_line_observer(&mut self, observe: LineCallback, stop: Box<dyn Fn() + Send>) {
        self.observer = Some((observe, stop));
    }

    fn observe(&mut self, text: &[u8]) {
        let Some((observe, stop)) = self.observer.as_mut() else {
            return;
        };
        for &b in text {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line)
                    .trim_end_matches('\r')
                    .to_string();
                self.line.clear();
                if observe(&line) == ConsoleAction::Stop {
                    stop();
                    self.observer = None;
                    return;
                }
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
    }

    /// Feeds bytes read from the serial line.
    pub fn feed(&mut self, bytes: &[u8]) {
        for unit in self.decoder.push(bytes) {
            if matches!(unit, Frame::Data(..)) {
                self.ready.open();
            }
            match unit {
                Frame::Data(FrameKind::Stdout, p) => {
                    let _ = self.stdout.write_all(&p).and_then(|_| self.stdout.flush());
                }
                Frame::Data(FrameKind::Stderr, p) => {
                    let _ = self.stderr.write_all(&p).and_then(|_| self.stderr.flush());
                }
                Frame::Data(FrameKind::Error, p) => {
                    self.init_error = Some(String::from_utf8_lossy(&p).into_owned());
                }
                Frame::Data(FrameKind::Exit, p) if p.len() == 4 => {
                    let status = i32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                    self.report = Some(match self.init_error.take() {
                        Some(msg) => GuestReport::InitError(msg),
                        None => GuestReport::Exit(status),
                    });
                }
                Frame::Data(..) => {}
                Frame::Console(text) => {
                    if self.echo_console {
                        let _ = self
                            .stderr
                            .write_all(&text)
                            .and_then(|_| self.stderr.flush());
                    }
                    self.observe(&text);
                    self.console.extend_from_slice(&text);
                    if self.console.len() > CONSOLE_KEEP {
                        let cut = self.console.len() - CONSOLE_KEEP;
                        self.console.drain(..cut);
                    }
                }
            }
        }
    }

    /// The final report, once the Exit frame arrived.
    pub fn report(&self) -> Option<GuestReport> {
        self.report.clone()
    }

    /// The last console text, for error messages.
    pub fn console_tail(&self, max_lines: usize) -> String {
        let text = String::from_utf8_lossy(&self.console);
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        lines[lines.len().saturating_sub(max_lines)..].join("\n")
    }

    /// True if the console shows a kernel panic.
    pub fn saw_panic(&self) -> bool {
        String::from_utf8_lossy(&self.console).contains("Kernel panic")
    }
}

/// A `Write` that feeds a shared console (the native serial device's sink).
pub struct ConsoleWriter<O: Write + Send, E: Write + Send>(pub Arc<Mutex<HostConsole<O, E>>>);

impl<O: Write + Send, E: Write + Send> Write for ConsoleWriter<O, E> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).feed(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads `input` to its end and hands each encoded stdin frame to `send`,
/// then a StdinEof frame. Stops early if `send` fails.
pub fn pump_stdin(mut input: impl Read, mut send: impl FnMut(&[u8]) -> std::io::Result<()>) {
    let mut buf = vec![0u8; MAX_PAYLOAD];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if send(&Frame::encode(FrameKind::Stdin, &buf[..n])).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = send(&Frame::encode(FrameKind::StdinEof, &[]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_streams_and_reports_exit() {
        let mut c = HostConsole::new(Vec::new(), Vec::new(), false);
        let mut wire = b"[    0.5] Linux version 6.1\r\n".to_vec();
        wire.extend(Frame::encode(FrameKind::Stdout, b"out"));
        wire.extend(Frame::encode(FrameKind::Stderr, b"err"));
        wire.extend(Frame::encode(FrameKind::Exit, &7i32.to_le_bytes()));
        for b in &wire {
            c.feed(std::slice::from_ref(b));
        }
        assert_eq!(c.stdout, b"out");
        assert_eq!(c.stderr, b"err");
        assert_eq!(c.report(), Some(GuestReport::Exit(7)));
        assert!(c.console_tail(5).contains("Linux version"));
        assert!(!c.saw_panic());
    }

    #[test]
    fn init_error_wins_over_status() {
        let mut c = HostConsole::new(Vec::new(), Vec::new(), false);
        let mut wire = Frame::encode(FrameKind::Error, b"mounting hutch-ws: ENOENT");
        wire.extend(Frame::encode(FrameKind::Exit, &125i32.to_le_bytes()));
        c.feed(&wire);
        assert_eq!(
            c.report(),
            Some(GuestReport::InitError("mounting hutch-ws: ENOENT".into()))
        );
    }

    #[test]
    fn echoes_console_only_when_asked_and_spots_panics() {
        let mut c = HostConsole::new(Vec::new(), Vec::new(), true);
        c.feed(b"Kernel panic - not syncing: VFS\r\n");
        assert_eq!(c.stderr, b"Kernel panic - not syncing: VFS\r\n");
        assert!(c.saw_panic());
        assert_eq!(c.report(), None);
    }

    #[test]
    fn observer_sees_lines_and_can_stop() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let stops = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut c = HostConsole::new(Vec::new(), Vec::new(), false);
        let (s2, seen2) = (stops.clone(), seen.clone());
        c.set_line_observer(
            Box::new(move |l| {
                seen2.lock().unwrap().push(l.to_string());
                if l.contains("Run /init") {
                    ConsoleAction::Stop
                } else {
                    ConsoleAction::Continue
                }
            }),
            Box::new(move || {
                s2.fetch_add(1, Ordering::SeqCst);
            }),
        );
        c.feed(b"Linux version 6.1\r\nRun /in");
        assert_eq!(stops.load(Ordering::SeqCst), 0);
        c.feed(b"it as init process\r\nmore\r\n");
        assert_eq!(stops.load(Ordering::SeqCst), 1);
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["Linux version 6.1", "Run /init as init process"]
        );
    }

    #[test]
    fn ready_gate_opens_on_the_first_frame() {
        let mut c = HostConsole::new(Vec::new(), Vec::new(), false);
        let gate = c.ready_gate();
        assert!(!gate.wait(&|| true));
        c.feed(b"console text only\r\n");
        assert!(!gate.wait(&|| true));
        assert!(!gate.is_open());
        let g2 = gate.clone();
        let waiter = std::thread::spawn(move || g2.wait(&|| false));
        c.feed(&Frame::encode(FrameKind::Stdout, &[]));
        assert!(waiter.join().unwrap());
        assert!(gate.is_open());
    }

    #[test]
    fn stdin_is_framed_and_ends_with_eof() {
        let data = vec![3u8; MAX_PAYLOAD + 10];
        let mut wire = Vec::new();
        pump_stdin(&data[..], |f| {
            wire.extend_from_slice(f);
            Ok(())
        });
        let frames = FrameDecoder::new().push(&wire);
        let mut got = Vec::new();
        let mut eof = false;
        for f in frames {
            match f {
                Frame::Data(FrameKind::Stdin, p) => got.extend(p),
                Frame::Data(FrameKind::StdinEof, _) => eof = true,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, data);
        assert!(eof);
    }
}
