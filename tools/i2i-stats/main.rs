// SPDX-License-Identifier: MPL-2.0
//! `i2i-stats`: receives the frame stream of a `zmqmsgpacksink` (or any sender of msgpack
//! `[timestamp_ms, index, jpg]` messages) and reports whether it is real-time.

mod args;
mod stats;
mod ws;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use i2i_core::protocol::{self, Payload};

use args::{Command, Options};
use i2i_core::zmq_endpoint::ReceiveSocketType;
use stats::{FrameEvent, StreamStats};

/// Longest single wait in the receive loop, so Ctrl-C and the deadlines are noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// Messages taken in one go before the loop looks at its deadlines again.
const MAX_DRAIN: usize = 256;
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Malformed messages described on stderr as they come; the rest are only counted.
const MALFORMED_WARNINGS: u64 = 5;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // A second Ctrl-C: the user wants out now. _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// SIGINT and SIGTERM stop the receive loop, which then prints the report.
fn install_stop_handlers() {
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe;
    // the sigaction struct is fully initialised before use.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        // No SA_RESTART: a blocking zmq_poll returns EINTR at once.
        action.sa_flags = 0;
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Writes received JPEGs named by their frame index, as the input files are named:
/// DIR/0000.jpg, DIR/0001.jpg, ... (at least four digits). A repeated index keeps the first
/// arrival; after the sender restarted its count, run N's frames are DIR/N-0000.jpg, ...
struct Saver {
    dir: PathBuf,
    saved: u64,
    seen: std::collections::HashSet<(u64, u64)>,
    failed: bool,
}

impl Saver {
    fn new(dir: PathBuf) -> Result<Self, String> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("--save: cannot create directory {}: {e}", dir.display()))?;
        Ok(Saver {
            dir,
            saved: 0,
            seen: std::collections::HashSet::new(),
            failed: false,
        })
    }

    fn save(&mut self, jpeg: &[u8], index: u64, run: u64) {
        if self.failed || !self.seen.insert((run, index)) {
            return;
        }
        let name = if run == 0 {
            format!("{index:04}.jpg")
        } else {
            format!("{run}-{index:04}.jpg")
        };
        let path = self.dir.join(name);
        match std::fs::write(&path, jpeg) {
            Ok(()) => self.saved += 1,
            Err(e) => {
                eprintln!(
                    "i2i-stats: cannot write {}: {e}; no further frames are saved",
                    path.display()
                );
                self.failed = true;
            }
        }
    }
}

/// The live status line on stderr.
struct Progress {
    enabled: bool,
    tty: bool,
    last_draw: Instant,
    frames_at_last_draw: u64,
    drawn: bool,
}

impl Progress {
    fn new(enabled: bool, now: Instant) -> Self {
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            last_draw: now,
            frames_at_last_draw: 0,
            drawn: false,
        }
    }

    fn tick(&mut self, stats: &StreamStats, start: Instant) {
        let now = Instant::now();
        let dt = now.duration_since(self.last_draw);
        if !self.enabled || dt < PROGRESS_EVERY {
            return;
        }
        let rate = (stats.frames() - self.frames_at_last_draw) as f64 / dt.as_secs_f64();
        let latency = stats
            .last_latency_ms()
            .map_or_else(|| "-".to_owned(), |l| format!("{l:.0} ms"));
        let line = format!(
            "{:7.1}s  {} frames  {:5.1} fps  latency {}  lost {}  out-of-order {}  dup {}  restarts {}  malformed {}",
            now.duration_since(start).as_secs_f64(),
            stats.frames(),
            rate,
            latency,
            stats.lost_count(),
            stats.out_of_order(),
            stats.duplicates(),
            stats.restarts(),
            stats.malformed(),
        );
        // Padding instead of an erase escape, so a redirected --progress stays plain text.
        eprint!("\r{line:<110}");
        self.last_draw = now;
        self.frames_at_last_draw = stats.frames();
        self.drawn = true;
    }

    /// Moves off the status line before other text goes to stderr.
    fn interrupt(&mut self) {
        if self.drawn {
            eprint!("{}", if self.tty { "\r\x1b[K" } else { "\n" });
            self.drawn = false;
        }
    }
}

fn socket_error(what: &str, endpoint: &str, e: zmq::Error) -> String {
    format!("{what} {endpoint}: {e}")
}

/// Receives until a stop condition, then reports. Returns the exit status.
fn run(opts: Options) -> Result<u8, String> {
    install_stop_handlers();
    let ctx = zmq::Context::new();
    // ws:// (i2i-web): a reader thread hands the frames to this loop in-process.
    let endpoint = ws::attach(&ctx, &opts)?;
    let sock = ctx
        .socket(opts.socket_type.zmq_type())
        .map_err(|e| format!("cannot create a ZeroMQ socket: {e}"))?;
    sock.set_linger(0)
        .map_err(|e| socket_error("cannot configure socket for", &opts.endpoint, e))?;
    // Retry a refused connection quickly: a sender that binds after we start (the usual
    // order in scripts) is then joined within a frame or two, not ZeroMQ's default 100 ms.
    sock.set_reconnect_ivl(10)
        .map_err(|e| socket_error("cannot configure socket for", &opts.endpoint, e))?;
    if opts.socket_type == ReceiveSocketType::Sub {
        sock.set_subscribe(b"")
            .map_err(|e| socket_error("cannot subscribe to", &opts.endpoint, e))?;
    }
    if opts.bind {
        sock.bind(&opts.endpoint)
            .map_err(|e| socket_error("cannot bind", &opts.endpoint, e))?;
    } else {
        sock.connect(&endpoint)
            .map_err(|e| socket_error("cannot connect to", &opts.endpoint, e))?;
    }
    let mut saver = opts.save.clone().map(Saver::new).transpose()?;

    let source = format!(
        "{} ({}, {})",
        opts.endpoint,
        opts.socket_type.nick(),
        if opts.bind { "bind" } else { "connect" }
    );
    if !opts.quiet {
        eprintln!("i2i-stats: receiving from {source}; Ctrl-C stops and reports");
    }

    let start = Instant::now();
    let mut last_activity = start;
    let mut stats = StreamStats::new();
    let mut progress = Progress::new(
        opts.progress
            .unwrap_or_else(|| std::io::stderr().is_terminal()),
        start,
    );
    let mut msg = zmq::Message::new();

    let stopped_by = 'receive: loop {
        if STOP.load(Ordering::SeqCst) {
            break "interrupted";
        }
        let now = Instant::now();
        let mut wait = POLL_SLICE;
        if let Some(d) = opts.duration {
            let left = d.saturating_sub(now.duration_since(start));
            if left.is_zero() {
                break "duration";
            }
            wait = wait.min(left);
        }
        if let Some(t) = opts.timeout {
            let left = t.saturating_sub(now.duration_since(last_activity));
            if left.is_zero() {
                break "timeout";
            }
            wait = wait.min(left);
        }

        match sock.poll(zmq::POLLIN, wait.as_millis().max(1) as i64) {
            Ok(0) | Err(zmq::Error::EINTR) => {}
            Ok(_) => {
                for _ in 0..MAX_DRAIN {
                    match sock.recv(&mut msg, zmq::DONTWAIT) {
                        Ok(()) => {}
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(e) => return Err(socket_error("receive failed on", &opts.endpoint, e)),
                    }
                    last_activity = Instant::now();
                    let at_s = last_activity.duration_since(start).as_secs_f64();
                    let now_ms = unix_ms();
                    stats.record_message();
                    match protocol::decode(&msg) {
                        Ok(frames) => {
                            let n = frames.len().max(1);
                            for (i, f) in frames.iter().enumerate() {
                                let jpeg = match &f.jpeg {
                                    Payload::Bytes(b) => Some(b),
                                    Payload::Path(_) => None,
                                };
                                // A batch message's bytes are shared out over its frames.
                                let wire_bytes =
                                    msg.len() / n + if i == 0 { msg.len() % n } else { 0 };
                                stats.record_frame(FrameEvent {
                                    at_s,
                                    latency_ms: now_ms - f.timestamp_ms as f64,
                                    index: f.index,
                                    timestamp_ms: f.timestamp_ms as f64,
                                    jpeg_bytes: jpeg.map_or(0, |b| b.len()),
                                    wire_bytes,
                                });
                                // After recording, so that a restart names its own run.
                                if let (Some(s), Some(b)) = (saver.as_mut(), jpeg) {
                                    s.save(b, f.index, stats.restarts());
                                }
                            }
                        }
                        Err(e) => {
                            stats.record_malformed(&e.0);
                            if stats.malformed() <= MALFORMED_WARNINGS {
                                progress.interrupt();
                                eprintln!(
                                    "i2i-stats: malformed message ({} bytes), counted and skipped: {e}",
                                    msg.len()
                                );
                                if stats.malformed() == MALFORMED_WARNINGS {
                                    eprintln!(
                                        "i2i-stats: further malformed messages are only counted"
                                    );
                                }
                            }
                        }
                    }
                    if opts.frames.is_some_and(|n| stats.frames() >= n) {
                        break 'receive "frames";
                    }
                }
            }
            Err(e) => return Err(socket_error("poll failed on", &opts.endpoint, e)),
        }
        progress.tick(&stats, start);
    };
    progress.interrupt();

    let mut report = stats.report(opts.thresholds, start.elapsed().as_secs_f64(), stopped_by);
    report.source = source;
    report.saved_frames = saver.as_ref().map(|s| s.saved);
    let text = if opts.json {
        serde_json::to_string(&report).map_err(|e| format!("cannot write the JSON report: {e}"))?
    } else {
        report.to_string()
    };
    // A closed stdout (e.g. piped into head) is not worth a panic.
    let _ = writeln!(std::io::stdout().lock(), "{text}");

    if report.messages == 0 {
        eprintln!(
            "i2i-stats: nothing received from {}: is anything publishing there?",
            opts.endpoint
        );
        return Ok(1);
    }
    if report.indices.as_ref().is_some_and(|ix| ix.restarts > 0) {
        eprintln!(
            "i2i-stats: the sender restarted {} time(s) (frame indices began again from a low value)",
            report.indices.as_ref().map_or(0, |ix| ix.restarts)
        );
    }
    Ok(if opts.require_realtime && !report.realtime.ok {
        1
    } else {
        0
    })
}

fn main() -> ExitCode {
    match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", args::HELP);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!(
                "i2i-stats {} ({})",
                env!("CARGO_PKG_VERSION"),
                env!("COMMIT_ID")
            );
            ExitCode::SUCCESS
        }
        Ok(Command::Run(opts)) => match run(opts) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("i2i-stats: {e}");
                ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("i2i-stats: {e}\nTry 'i2i-stats --help'.");
            ExitCode::from(2)
        }
    }
}
