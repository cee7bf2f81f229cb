// SPDX-License-Identifier: MPL-2.0
//! The `i2i-prompt` command line: holder, one-shot commands, console, keygen and CURVE,
//! run as a real process on 127.0.0.1 with ephemeral ports.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gsti2i::settings::state::{STATE_TOPIC, Snapshot};

const BIN: &str = env!("CARGO_BIN_EXE_i2i-prompt");

/// A running `i2i-prompt` holder; killed when dropped.
struct Holder {
    child: Child,
    state: String,
    control: String,
    stderr: mpsc::Receiver<String>,
}

impl Holder {
    fn start(args: &[&str]) -> Holder {
        let mut child = Command::new(BIN)
            .args(args)
            .args([
                "--state-bind",
                "tcp://127.0.0.1:*",
                "--control-bind",
                "tcp://127.0.0.1:*",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start i2i-prompt");
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = wait_line(&stderr, "publishing settings on", Duration::from_secs(10));
        // "i2i-prompt: publishing settings on tcp://127.0.0.1:P, commands on tcp://127.0.0.1:Q"
        let state = line
            .split("publishing settings on ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string();
        let control = line
            .split("commands on ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        Holder {
            child,
            state,
            control,
            stderr,
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line containing {needle:?}; saw {seen:?}");
}

/// Runs a one-shot command; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run i2i-prompt");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first snapshot a fresh subscriber sees, and how long it took.
fn first_snapshot(
    endpoint: &str,
    curve: Option<&gsti2i::settings::curve::KeyPair>,
    server: Option<&str>,
) -> (Snapshot, Duration) {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    if let (Some(k), Some(s)) = (curve, server) {
        gsti2i::settings::curve::make_client(&sub, k, s).unwrap();
    }
    sub.set_subscribe(STATE_TOPIC).unwrap();
    let start = Instant::now();
    sub.connect(endpoint).unwrap();
    assert!(
        sub.poll(zmq::POLLIN, 3000).unwrap() > 0,
        "no snapshot from {endpoint}"
    );
    let frames = sub.recv_multipart(0).unwrap();
    (Snapshot::decode(&frames[1]).unwrap(), start.elapsed())
}

#[test]
fn one_shot_commands_change_the_published_state() {
    let holder = Holder::start(&[
        "serve",
        "--init",
        "/prompt a red fox",
        "--heartbeat-ms",
        "200",
    ]);
    let (snap, _) = first_snapshot(&holder.state, None, None);
    assert_eq!(snap.settings.prompt.as_deref(), Some("a red fox"));
    assert_eq!(snap.seq, 0);

    let (code, out, err) = run(&["--endpoint", &holder.control, "/seed", "5"]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out.trim(), "ok seq=1 seed=5");
    let (code, out, _) = run(&[
        "--endpoint",
        &holder.control,
        r#"{"guidance": 1.5, "t": [20, 30]}"#,
    ]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ok seq=2"), "{out}");
    // The holder logs each change with where it came from.
    wait_line(
        &holder.stderr,
        "[seq 2] t-index-list=20,30 guidance-scale=1.5",
        Duration::from_secs(2),
    );

    // A late subscriber has the whole state at once.
    let (snap, took) = first_snapshot(&holder.state, None, None);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(snap.seq, 2);
    assert_eq!(snap.settings.seed, Some(5));
    assert_eq!(snap.settings.guidance_scale, Some(1.5));
    assert_eq!(snap.settings.t_index_list.as_deref(), Some("20,30"));
    assert_eq!(snap.settings.prompt.as_deref(), Some("a red fox"));

    // Bad commands are refused before sending, with exit code 1.
    let (code, _, err) = run(&["--endpoint", &holder.control, "/seed", "five"]);
    assert_eq!(code, 1);
    assert!(err.contains("/seed: \"five\" is not a seed"), "{err}");
    let (code, _, err) = run(&["--endpoint", &holder.control, "/warp", "9"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown command /warp"), "{err}");
    // /help is answered locally.
    let (code, out, _) = run(&["/help"]);
    assert_eq!(code, 0);
    assert!(out.contains("/seedblend 1:0.5 2:0.5"));
    // /status asks the holder.
    let (code, out, _) = run(&["--endpoint", &holder.control, "/status"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"seed\":5"), "{out}");
}

#[test]
fn no_holder_is_a_clear_error_in_bounded_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let (code, _, err) = run(&[
        "--endpoint",
        &format!("tcp://127.0.0.1:{port}"),
        "--timeout-ms",
        "500",
        "/seed 1",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no answer from"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let (code, _, err) = run(&["--bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown option --bogus"), "{err}");
}

#[test]
fn console_reads_commands_from_stdin() {
    let mut holder = Holder::start(&[]);
    let mut stdin = holder.child.stdin.take().unwrap();
    let stdout = holder.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    writeln!(stdin, "a quiet lake").unwrap();
    writeln!(stdin, "/seed 9").unwrap();
    writeln!(stdin, "/cfg sideways").unwrap();
    writeln!(stdin, "/help").unwrap();
    stdin.flush().unwrap();
    wait_line(
        &rx,
        "ok seq=1 prompt=\"a quiet lake\"",
        Duration::from_secs(3),
    );
    wait_line(&rx, "ok seq=2 seed=9", Duration::from_secs(3));
    wait_line(
        &rx,
        "error: /cfg: \"sideways\" is not a guidance mode",
        Duration::from_secs(3),
    );
    wait_line(&rx, "/transition N", Duration::from_secs(3));
    let (snap, _) = first_snapshot(&holder.state, None, None);
    assert_eq!(snap.settings.seed, Some(9));
    // End of input ends the console.
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = holder.child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "console did not end at end of input"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keygen_and_curve_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("i2i-prompt-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    for name in ["hub", "operator", "stranger"] {
        let (code, out, err) = run(&["keygen", &format!("{d}/{name}"), name]);
        assert_eq!(code, 0, "{out} {err}");
        assert!(out.contains(&format!("{name}.key_secret")));
    }
    let (code, _, err) = run(&["keygen", &format!("{d}/hub"), "hub"]);
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");

    let holder = Holder::start(&[
        "serve",
        "--key",
        &format!("{d}/hub/hub.key_secret"),
        "--allow",
        &format!("{d}/operator"),
    ]);
    let hub_pub = format!("{d}/hub/hub.key");
    let (code, out, err) = run(&[
        "--endpoint",
        &holder.control,
        "--key",
        &format!("{d}/operator/operator.key_secret"),
        "--server-key",
        &hub_pub,
        "/seed 42",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out.trim(), "ok seq=1 seed=42");
    let (code, _, err) = run(&[
        "--endpoint",
        &holder.control,
        "--key",
        &format!("{d}/stranger/stranger.key_secret"),
        "--server-key",
        &hub_pub,
        "--timeout-ms",
        "2000",
        "/seed 13",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("refused this CURVE key"), "{err}");
    wait_line(&holder.stderr, "REFUSED", Duration::from_secs(2));
    // Without keys there is no way in, and the state is encrypted.
    let (code, _, _) = run(&[
        "--endpoint",
        &holder.control,
        "--timeout-ms",
        "500",
        "/seed 14",
    ]);
    assert_eq!(code, 2);
    let server = gsti2i::settings::curve::load_public_key(&hub_pub).unwrap();
    let throwaway = gsti2i::settings::curve::KeyPair::generate().unwrap();
    let (snap, _) = first_snapshot(&holder.state, Some(&throwaway), Some(&server));
    assert_eq!(snap.settings.seed, Some(42));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn remote_console_sends_commands_and_shows_applied_reports() {
    let holder = Holder::start(&["serve"]);
    let mut console = Command::new(BIN)
        .args([
            "--endpoint",
            &holder.control,
            "--state-endpoint",
            &holder.state,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = console.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(console.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(console.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    writeln!(stdin, "/seed 77").unwrap();
    stdin.flush().unwrap();
    wait_line(&rx, "ok seq=1 seed=77", Duration::from_secs(5));
    // A transform reports what it applied (as settingssrc does), on the control socket.
    let report = gsti2i::settings::state::AppliedReport {
        source: "i2i0@stage-left".into(),
        seq: Some(1),
        frame: Some(120),
        settings: gsti2i::settings::SettingsUpdate {
            seed: Some(77),
            ..Default::default()
        },
        refused: Vec::new(),
        key: None,
    };
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.connect(&holder.control).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let mut frames = vec![Vec::new()];
        frames.extend(report.encode());
        dealer.send_multipart(frames, 0).unwrap();
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200))
            && l.contains("applied by")
        {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "the console never showed the report"
        );
    };
    assert_eq!(
        line,
        "applied by i2i0@stage-left from frame 120 (seq 1): seed=77"
    );
    // The holder shows it too.
    wait_line(
        &holder.stderr,
        "applied by i2i0@stage-left",
        Duration::from_secs(2),
    );
    drop(stdin);
    let status = console.wait().unwrap();
    assert!(status.success());
}

/// Output of a process on a pseudo-terminal, read on a thread.
struct Terminal {
    master: std::fs::File,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    /// Starts `i2i-prompt ARGS` with a pseudo-terminal as stdin, stdout and stderr.
    fn start(args: &[&str]) -> (Terminal, Child) {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty fills two descriptors; the name, termios and size are optional.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty failed");
        // SAFETY: each descriptor is owned once: the slave by three dups, the master by File.
        let (master, stdin, stdout, stderr) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                Stdio::from_raw_fd(libc::dup(slave)),
                Stdio::from_raw_fd(libc::dup(slave)),
                Stdio::from_raw_fd(slave),
            )
        };
        let child = Command::new(BIN)
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start i2i-prompt on a terminal");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (mut reader, out) = (master.try_clone().unwrap(), output.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (Terminal { master, output }, child)
    }

    fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Waits until the output (from `from` on) contains `what`; returns the end offset.
    fn wait_for(&self, from: usize, what: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let out = self.output.lock().unwrap();
                if let Some(i) = out.get(from..).and_then(|o| o.find(what)) {
                    return from + i + what.len();
                }
                assert!(
                    Instant::now() < deadline,
                    "the terminal never showed {what:?}; it showed {:?}",
                    out.get(from..).unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_console_edits_lines_in_a_terminal() {
    let dir = std::env::temp_dir().join(format!("i2i-prompt-tty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let history = dir.join("history");
    let (mut term, mut child) = Terminal::start(&[
        "--state-bind",
        "tcp://127.0.0.1:*",
        "--control-bind",
        "tcp://127.0.0.1:*",
        "--osc",
        "off",
        "--history",
        history.to_str().unwrap(),
    ]);
    let mut at = term.wait_for(0, "Tab completes");
    term.type_keys("/seed 7\r");
    at = term.wait_for(at, "ok seq=1 seed=7");
    // Up recalls the last line; Backspace edits it.
    term.type_keys("\x1b[A\x7f9\r");
    at = term.wait_for(at, "ok seq=2 seed=9");
    // Tab completes a command name.
    term.type_keys("/gu\t1.5\r");
    at = term.wait_for(at, "ok seq=3 guidance-scale=1.5");
    // Left moves the cursor: "/prompt fx", Left, "o" is "/prompt fox".
    term.type_keys("/prompt fx\x1b[Do\r");
    at = term.wait_for(at, "ok seq=4 prompt=\"fox\"");
    // Ctrl-R searches the history.
    term.type_keys("\x12seed 7\r");
    term.wait_for(at, "ok seq=5 seed=7");
    // Ctrl-D ends the console.
    term.type_keys("\x04");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "Ctrl-D did not end the console");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let kept = std::fs::read_to_string(&history).unwrap();
    for line in ["/seed 7", "/seed 9", "/guidance 1.5", "/prompt fox"] {
        assert!(kept.contains(line), "history lacks {line:?}: {kept:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_holder_on_a_busy_port_suggests_attaching_a_console() {
    let first = Holder::start(&["serve", "--osc", "off"]);
    let port = first.control.rsplit(':').next().unwrap().to_string();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--osc",
            "off",
            "--state-bind",
            "tcp://127.0.0.1:*",
            "--control-bind",
            &format!("tcp://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("i2i-prompt --endpoint tcp://localhost:{port}")),
        "{err}"
    );
}
