// SPDX-License-Identifier: MPL-2.0
//! The `i2i-prompt` command line: holder, one-shot commands, console, keygen and CURVE,
//! run as a real process on 127.0.0.1 with ephemeral ports.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use i2i_core::settings::state::{STATE_TOPIC, Snapshot};

const BIN: &str = env!("CARGO_BIN_EXE_i2i-prompt");

/// A running `i2i-prompt` holder; killed when dropped.
struct Holder {
    child: Child,
    state: String,
    control: String,
    stderr: mpsc::Receiver<String>,
    /// The start-up line: what listens where.
    started: String,
}

impl Holder {
    fn start(args: &[&str]) -> Holder {
        Holder::start_limited(args, None)
    }

    /// With `descriptors`: the process's descriptor limit (soft and hard), as `ulimit -n`.
    fn start_limited(args: &[&str], descriptors: Option<u64>) -> Holder {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .args([
                "--state-bind",
                "tcp://127.0.0.1:*",
                "--control-bind",
                "tcp://127.0.0.1:*",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = descriptors {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start i2i-prompt");
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
            started: line,
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
    curve: Option<&i2i_core::curve::KeyPair>,
    server: Option<&str>,
) -> (Snapshot, Duration) {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    if let (Some(k), Some(s)) = (curve, server) {
        i2i_core::curve::make_client(&sub, k, s).unwrap();
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
    assert_eq!(snap.settings.t_index_list.as_deref(), Some(&[20, 30][..]));
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
    let server = i2i_core::curve::load_public_key(&hub_pub).unwrap();
    let throwaway = i2i_core::curve::KeyPair::generate().unwrap();
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
    let report = i2i_core::settings::state::AppliedReport {
        source: "i2i0@stage-left".into(),
        seq: Some(1),
        frame: Some(120),
        settings: i2i_core::settings::SettingsUpdate {
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

    /// A holder with a console on a terminal, on ephemeral ports, without OSC.
    fn holder_console(history: &str) -> (Terminal, Child) {
        Terminal::start(&[
            "--state-bind",
            "tcp://127.0.0.1:*",
            "--control-bind",
            "tcp://127.0.0.1:*",
            "--osc",
            "off",
            "--history",
            history,
        ])
    }

    /// Types Ctrl-D, which ends the console, and waits for it to end.
    fn end_with_ctrl_d(&mut self, child: &mut Child) -> std::process::ExitStatus {
        self.type_keys("\x04");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "Ctrl-D did not end the console");
            std::thread::sleep(Duration::from_millis(20));
        }
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
    let (mut term, mut child) = Terminal::holder_console(history.to_str().unwrap());
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
    assert!(term.end_with_ctrl_d(&mut child).success());
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

/// Every line the holder writes on stdout and stderr, in one channel.
fn all_lines(holder: &mut Holder) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = holder.child.stdout.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx2.send(line).is_err() {
                break;
            }
        }
    });
    let err = std::mem::replace(&mut holder.stderr, mpsc::channel().1);
    std::thread::spawn(move || {
        while let Ok(line) = err.recv() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The lines that come within `quiet` of each other, until none does.
fn lines_until_quiet(rx: &mpsc::Receiver<String>, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(l) = rx.recv_timeout(quiet) {
        out.push(l);
    }
    out
}

/// The UDP port of the holder's "OSC on udp://HOST:PORT from ..." line.
fn osc_port(holder: &Holder) -> (String, u16) {
    let line = wait_line(&holder.stderr, "OSC on udp://", Duration::from_secs(10));
    let addr = line
        .split("udp://")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_string();
    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
    (line, port)
}

/// One OSC message as a controller sends it (encoded by rosc), from `source` (an address
/// of this machine: 127.0.0.2 is loopback too) to 127.0.0.1:`port`.
fn osc_send(source: &str, port: u16, addr: &str, args: Vec<rosc::OscType>) {
    let packet = rosc::encoder::encode(&rosc::OscPacket::Message(rosc::OscMessage {
        addr: addr.to_string(),
        args,
    }))
    .unwrap();
    let sock = std::net::UdpSocket::bind(format!("{source}:0")).unwrap();
    sock.send_to(&packet, ("127.0.0.1", port)).unwrap();
}

/// Runs i2i-prompt expecting it to end by itself within `timeout` (killed after that).
fn run_ending(args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (code, err)
}

fn keys(test: &str) -> (std::path::PathBuf, String, String) {
    let dir = std::env::temp_dir().join(format!("i2i-prompt-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for name in ["hub", "operator"] {
        let (code, out, err) = run(&["keygen", &format!("{}/{name}", dir.display()), name]);
        assert_eq!(code, 0, "{out} {err}");
    }
    let secret = format!("{}/hub/hub.key_secret", dir.display());
    let operators = format!("{}/operator", dir.display());
    (dir, secret, operators)
}

/// The first snapshot whose settings pass `want`, within `timeout`.
fn snapshot_where(
    endpoint: &str,
    curve: Option<(&i2i_core::curve::KeyPair, &str)>,
    timeout: Duration,
    want: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    if let Some((k, s)) = curve {
        i2i_core::curve::make_client(&sub, k, s).unwrap();
    }
    sub.set_subscribe(STATE_TOPIC).unwrap();
    sub.connect(endpoint).unwrap();
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no such snapshot from {endpoint}; last {last:?}"
        );
        if sub.poll(zmq::POLLIN, left.as_millis() as i64).unwrap() > 0 {
            let frames = sub.recv_multipart(0).unwrap();
            let snap = Snapshot::decode(&frames[1]).unwrap();
            if want(&snap) {
                return snap;
            }
            last = Some(snap);
        }
    }
}

#[test]
fn osc_with_keys_is_off_unless_asked_for_and_takes_only_allowed_senders() {
    use rosc::OscType;
    let (dir, secret, operators) = keys("osc-keys");
    let hub_key =
        i2i_core::curve::load_public_key(&format!("{}/hub/hub.key", dir.display())).unwrap();
    let reader = i2i_core::curve::KeyPair::generate().unwrap();
    // Keys and no OSC option: OSC is off, and the holder says why.
    let holder = Holder::start(&["serve", "--key", &secret, "--allow", &operators]);
    wait_line(
        &holder.stderr,
        "OSC is off: with --key",
        Duration::from_secs(5),
    );
    drop(holder);
    // Keys, OSC on every interface and no allow-list: refused at start.
    let (code, err) = run_ending(
        &[
            "serve",
            "--key",
            &secret,
            "--allow",
            &operators,
            "--osc",
            "0.0.0.0:0",
            "--state-bind",
            "tcp://127.0.0.1:*",
            "--control-bind",
            "tcp://127.0.0.1:*",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("say who may send with --osc-allow"), "{err}");
    // Keys, OSC asked for with an allow-list: only 127.0.0.2 is taken.
    let holder = Holder::start(&[
        "serve",
        "--key",
        &secret,
        "--allow",
        &operators,
        "--osc",
        "127.0.0.1:0",
        "--osc-allow",
        "127.0.0.2",
    ]);
    let (line, port) = osc_port(&holder);
    assert!(
        line.contains(" from 127.0.0.2 (no authentication"),
        "{line}"
    );
    osc_send("127.0.0.1", port, "/seed", vec![OscType::Int(11)]);
    let refused = wait_line(
        &holder.stderr,
        "osc: refused a packet",
        Duration::from_secs(5),
    );
    assert!(
        refused.contains("from 127.0.0.1:")
            && refused.contains("not an allowed sender (--osc-allow: 127.0.0.2)")
            && refused.contains("[1 refused so far]"),
        "{refused}"
    );
    osc_send("127.0.0.2", port, "/seed", vec![OscType::Int(22)]);
    let applied = wait_line(&holder.stderr, "[seq 1]", Duration::from_secs(5));
    assert!(
        applied.contains("seed=22 (from osc 127.0.0.2:"),
        "{applied}"
    );
    let snap = snapshot_where(
        &holder.state,
        Some((&reader, hub_key.as_str())),
        Duration::from_secs(5),
        |s| s.seq == 1,
    );
    assert_eq!(snap.settings.seed, Some(22));
    drop(holder);
    // Keys and a bare port (--osc-port, as pipelines/primary.sh passes it): this machine
    // only, on 127.0.0.1.
    let free = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let holder = Holder::start(&[
        "serve",
        "--key",
        &secret,
        "--allow",
        &operators,
        "--osc-port",
        &free.to_string(),
    ]);
    let (line, port) = osc_port(&holder);
    assert_eq!(port, free);
    assert!(
        line.contains(&format!("udp://127.0.0.1:{free} from 127.0.0.0/8, ::1")),
        "{line}"
    );
    osc_send(
        "127.0.0.2",
        port,
        "/prompt",
        vec![OscType::String("a lake".into())],
    );
    wait_line(&holder.stderr, "prompt=\"a lake\"", Duration::from_secs(5));
    std::fs::remove_dir_all(&dir).unwrap();
    // --osc-port 0 is off; both forms at once are refused.
    let holder = Holder::start(&["serve", "--osc-port", "0"]);
    wait_line(&holder.stderr, "OSC is off", Duration::from_secs(5));
    let (code, err) = run_ending(
        &["serve", "--osc-port", "9", "--osc", "off"],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("give --osc or --osc-port, not both"), "{err}");
}

#[test]
fn an_osc_flood_is_published_as_one_snapshot_per_interval_with_the_latest_values() {
    use rosc::OscType;
    let holder = Holder::start(&[
        "serve",
        "--osc",
        "127.0.0.1:0",
        "--min-publish-interval",
        "50",
        "--heartbeat-ms",
        "1000",
    ]);
    let (_, port) = osc_port(&holder);
    // Count every snapshot from before the flood to the last value.
    let state = holder.state.clone();
    let (tx, snapshots) = mpsc::channel();
    std::thread::spawn(move || {
        let ctx = zmq::Context::new();
        let sub = ctx.socket(zmq::SUB).unwrap();
        sub.set_subscribe(STATE_TOPIC).unwrap();
        sub.connect(&state).unwrap();
        while let Ok(frames) = sub.recv_multipart(0) {
            let bytes: usize = frames.iter().map(Vec::len).sum();
            let snap = Snapshot::decode(&frames[1]).unwrap();
            if tx.send((Instant::now(), bytes, snap)).is_err() {
                break;
            }
        }
    });
    // The subscriber is there once it has a snapshot.
    snapshots.recv_timeout(Duration::from_secs(5)).unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let total = 4000u64;
    let start = Instant::now();
    for k in 1..=total {
        let packet = rosc::encoder::encode(&rosc::OscPacket::Message(rosc::OscMessage {
            addr: "/seed".into(),
            args: vec![OscType::Int(k as i32)],
        }))
        .unwrap();
        sock.send_to(&packet, ("127.0.0.1", port)).unwrap();
        // Bursts of 100 (a fader or several at full speed), 5000 messages a second.
        if k % 100 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let sent_in = start.elapsed();
    let (mut count, mut bytes) = (0u64, 0usize);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (end, last_seq) = loop {
        let (at, b, snap) = snapshots
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the last value never arrived");
        count += 1;
        bytes += b;
        if snap.settings.seed == Some(total) {
            break (at, snap.seq);
        }
    };
    let took = end.duration_since(start);
    println!(
        "OSC flood: {total} messages in {:.2} s ({:.0}/s); {count} snapshots ({last_seq} changes) in {:.2} s, {:.0} bytes/s",
        sent_in.as_secs_f64(),
        total as f64 / sent_in.as_secs_f64(),
        took.as_secs_f64(),
        bytes as f64 / took.as_secs_f64()
    );
    // At most one per 50 ms, plus heartbeats (1 s) and one for the batch in flight.
    let bound = took.as_millis() as u64 / 50 + took.as_secs() + 3;
    assert!(
        count <= bound,
        "{count} snapshots in {took:?} (bound {bound})"
    );
    assert!(last_seq <= bound, "{last_seq} changes in {took:?}");
    // Changes went out during the flood, not only at its end.
    assert!(count >= 3, "{count}");
    // The holder's log names the merging.
    wait_line(&holder.stderr, "messages merged", Duration::from_secs(5));
}

#[test]
fn idle_connections_do_not_lock_out_operators_or_late_transforms() {
    // 128 descriptors: the holder holds 32 peers per socket.
    let holder = Holder::start_limited(&["serve", "--osc", "off"], Some(128));
    let line = &holder.started;
    assert!(
        line.contains("(no authentication: anyone who reaches these ports can change settings; at most 32 peers each: the descriptor limit is 128)"),
        "{line}"
    );
    let addr = |ep: &str| ep.trim_start_matches("tcp://").to_string();
    // 150 idle connections on each port, kept open: more than the limit holds.
    let idle: Vec<std::net::TcpStream> = [addr(&holder.state), addr(&holder.control)]
        .iter()
        .flat_map(|a| (0..150).map(move |_| std::net::TcpStream::connect(a).unwrap()))
        .collect();
    let warning = wait_line(&holder.stderr, "WARNING: closed", Duration::from_secs(10));
    assert!(warning.contains("closed so far"), "{warning}");
    // An operator still gets in (an idle connection makes room for it) ...
    let (code, out, err) = run(&[
        "--endpoint",
        &holder.control,
        "--timeout-ms",
        "20000",
        "--report-ms",
        "0",
        "/seed 5",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.starts_with("ok seq=1 seed=5"), "{out}");
    // ... and so does a transform that joins now.
    let snap = snapshot_where(&holder.state, None, Duration::from_secs(20), |s| {
        s.settings.seed == Some(5)
    });
    assert_eq!(snap.seq, 1);
    drop(idle);
}

#[test]
fn a_report_without_its_json_is_refused() {
    let holder = Holder::start(&["serve", "--osc", "off", "--init", "/prompt a fox"]);
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.connect(&holder.control).unwrap();
    dealer
        .send_multipart([&b""[..], b"i2i-applied"], 0)
        .unwrap();
    let line = wait_line(&holder.stderr, "rejected", Duration::from_secs(5));
    assert!(
        line.contains("an i2i-applied report needs its JSON as the next frame"),
        "{line}"
    );
    let (code, out, _) = run(&["--endpoint", &holder.control, "/status"]);
    assert_eq!(code, 0);
    assert!(out.contains(r#""prompt":"a fox""#), "{out}");
    // The text itself is a prompt when asked for as one.
    let (code, out, _) = run(&["--endpoint", &holder.control, "/prompt i2i-applied"]);
    assert_eq!(code, 0);
    assert!(out.contains("prompt=\"i2i-applied\""), "{out}");
}

#[test]
fn strength_moves_the_held_list_and_status_shows_it() {
    use rosc::OscType;
    let holder = Holder::start(&["serve", "--osc", "127.0.0.1:0"]);
    let (_, port) = osc_port(&holder);
    let ask = |command: &str| {
        let (code, out, err) = run(&["--endpoint", &holder.control, "--report-ms", "0", command]);
        assert_eq!(code, 0, "{command}: {out} {err}");
        out.trim().to_string()
    };
    // No list yet: the transforms' default 32,45 moves, its spacing kept.
    assert_eq!(ask("/strength 1"), "ok seq=1 t-index-list=0,13");
    assert_eq!(ask("/t 22,32"), "ok seq=2 t-index-list=22,32");
    assert_eq!(ask("/strength 0.5"), "ok seq=3 t-index-list=20,30");
    assert_eq!(ask(r#"{"strength": 0}"#), "ok seq=4 t-index-list=39,49");
    assert!(ask("/status").contains(r#""t-index-list":"39,49","strength":0.0"#));
    // OSC /strength runs the same way: 1 is the strongest change.
    osc_send("127.0.0.1", port, "/strength", vec![OscType::Float(1.0)]);
    let line = wait_line(&holder.stderr, "[seq 5]", Duration::from_secs(5));
    assert!(
        line.contains("t-index-list=0,10 (from osc 127.0.0.1:"),
        "{line}"
    );
    let (code, _, err) = run(&["--endpoint", &holder.control, "/strength 1.5"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("strength: 1.5 is out of range (accepted: 0 to 1)"),
        "{err}"
    );
}

#[test]
fn the_console_prints_each_answer_once_and_names_where_changes_came_from() {
    use rosc::OscType;
    let mut holder = Holder::start(&["--osc", "127.0.0.1:0"]);
    let (_, port) = osc_port(&holder);
    let control = holder.control.clone();
    let mut stdin = holder.child.stdin.take().unwrap();
    let lines = all_lines(&mut holder);
    writeln!(stdin, "/cfg sideways").unwrap();
    writeln!(stdin, "/sed 5").unwrap();
    writeln!(stdin, "/seed 4").unwrap();
    stdin.flush().unwrap();
    osc_send("127.0.0.1", port, "/seed", vec![OscType::Int(6)]);
    let (code, _, _) = run(&["--endpoint", &control, "--report-ms", "0", "/seed 7"]);
    assert_eq!(code, 0);
    // Every line until the last of them came and the output went quiet.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(seen
        .iter()
        .any(|l: &String| l.contains("(from osc 127.0.0.1:"))
        && seen.iter().any(|l| l.contains("seed=7 (from"))
        && seen.iter().any(|l| l.contains("seed=4")))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("the console did not show every change: {seen:?}"),
        }
    }
    seen.extend(lines_until_quiet(&lines, Duration::from_millis(1000)));
    let text = seen.join("\n");
    let count = |what: &str| seen.iter().filter(|l| l.contains(what)).count();
    // Typed commands: the answer, once (not the holder's log line besides).
    assert_eq!(count("\"sideways\" is not a guidance mode"), 1, "{text}");
    assert_eq!(
        count("unknown command /sed (did you mean /seed?"),
        1,
        "{text}"
    );
    assert_eq!(count("seed=4"), 1, "{text}");
    // Changes from elsewhere: labelled with where they came from.
    assert_eq!(count("seed=7 (from 127.0.0.1)"), 1, "{text}");
    assert!(!text.contains("(from console)"), "{text}");
    drop(stdin);
}

#[test]
fn lines_from_elsewhere_are_printed_above_the_line_being_typed() {
    let (mut term, mut child) = Terminal::holder_console("off");
    let at = term.wait_for(0, "Tab completes");
    let control = {
        let out = term.output.lock().unwrap();
        out.split("commands on ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .to_string()
    };
    // Half a command typed, then a change arrives from another machine.
    term.type_keys("/see");
    let at = term.wait_for(at, "/see");
    let (code, _, _) = run(&["--endpoint", &control, "--report-ms", "0", "/seed 3"]);
    assert_eq!(code, 0);
    let at = term.wait_for(at, "[seq 1] seed=3 (from 127.0.0.1)");
    // The prompt and the half-typed line are drawn again below it, and typing goes on.
    let at = term.wait_for(at, "> /see");
    term.type_keys("d 8\r");
    term.wait_for(at, "ok seq=2 seed=8");
    assert!(term.end_with_ctrl_d(&mut child).success());
}
