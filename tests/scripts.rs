// SPDX-License-Identifier: MPL-2.0
//! The shell tools end to end: pipelines/stream-images.sh, pipelines/show-stream.sh and
//! scripts/demo.sh with the real zmqmsgpacksink / zmqmsgpacksrc elements, received by the
//! built i2i-stats.
//!
//! The GStreamer elements come from the plugin found by gst-inspect-1.0 in the test's
//! environment (scripts/test.sh sources .deps/env.sh). Where zmqmsgpacksink or
//! zmqmsgpacksrc is not found, the end-to-end tests say so and return without checking.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const I2I_STATS: &str = env!("CARGO_BIN_EXE_i2i-stats");

fn script(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("scripts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// True when both transport elements can be instantiated; otherwise says why the caller skips.
fn transport_available(test: &str) -> bool {
    for element in ["zmqmsgpacksink", "zmqmsgpacksrc"] {
        let found = Command::new("gst-inspect-1.0")
            .arg(element)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!(
                "SKIPPED {test}: GStreamer element {element} not found by gst-inspect-1.0 \
                 (GST_PLUGIN_PATH={:?}); this test runs once the transport elements are built \
                 and '. .deps/env.sh' is sourced",
                std::env::var("GST_PLUGIN_PATH").unwrap_or_default()
            );
            return false;
        }
    }
    true
}

/// A TCP port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child in its own process group, with stdout and stderr in files, killed (group and all)
/// when dropped unless it was waited for.
struct Proc {
    child: Child,
    name: String,
    out: PathBuf,
    err: PathBuf,
    done: bool,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, cmd: &mut Command) -> Proc {
        let out = dir.join(format!("{name}.stdout"));
        let err = dir.join(format!("{name}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            child,
            name: name.to_owned(),
            out,
            err,
            done: false,
        }
    }

    /// Waits at most `limit`; past it, kills the group and fails with the output so far.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.done = true;
                return status;
            }
            if start.elapsed() > limit {
                self.kill();
                panic!(
                    "{} still running after {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if !self.done {
            // SAFETY: kill(2) on the process group this test created.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
            self.done = true;
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `count` small JPEG files dir/0000.jpg ... made by GStreamer's own encoder.
fn make_jpegs(dir: &Path, count: u32) -> Vec<Vec<u8>> {
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            "pattern=ball",
            &format!("num-buffers={count}"),
        ])
        .args(["!", "video/x-raw,width=96,height=64", "!", "jpegenc", "!"])
        .args([
            "multifilesink",
            &format!("location={}/%04d.jpg", dir.display()),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "making test JPEGs");
    (0..count)
        .map(|k| std::fs::read(dir.join(format!("{k:04}.jpg"))).unwrap())
        .collect()
}

/// Every JPEG file in `dir` is byte for byte one of `inputs`; returns how many there are.
fn all_identical_to_inputs(dir: &Path, inputs: &[Vec<u8>]) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jpg") {
            let data = std::fs::read(&path).unwrap();
            assert!(
                inputs.contains(&data),
                "{} is not one of the input files: re-encoded or corrupted",
                path.display()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn scripts_explain_themselves_and_reject_bad_arguments() {
    for (rel, needle) in [
        ("pipelines/stream-images.sh", "--input-folder"),
        ("pipelines/show-stream.sh", "PORT [HOST]"),
        ("scripts/demo.sh", "--port"),
    ] {
        let out = Command::new("bash")
            .arg(script(rel))
            .arg("--help")
            .current_dir("/")
            .output()
            .unwrap();
        assert!(out.status.success(), "{rel} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(needle),
            "{rel} --help lacks {needle}"
        );
    }
    for (rel, args, needle) in [
        ("pipelines/stream-images.sh", &["--fps", "0"][..], "--fps"),
        (
            "pipelines/stream-images.sh",
            &["--bogus"][..],
            "unknown argument",
        ),
        (
            "pipelines/stream-images.sh",
            &["--input-folder", "/nonexistent/frames"][..],
            "does not exist",
        ),
        ("pipelines/show-stream.sh", &[][..], "expected PORT [HOST]"),
        ("pipelines/show-stream.sh", &["99999"][..], "PORT"),
        ("scripts/demo.sh", &["--port", "x"][..], "--port"),
    ] {
        let out = Command::new("bash")
            .arg(script(rel))
            .args(args)
            .current_dir("/")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rel} {args:?} succeeded");
        assert!(
            stderr.contains(needle),
            "{rel} {args:?}: '{stderr}' lacks '{needle}'"
        );
    }
}

#[test]
fn stream_images_sends_the_file_bytes_at_the_frame_rate() {
    if !transport_available("stream_images_sends_the_file_bytes_at_the_frame_rate") {
        return;
    }
    let dir = scratch_dir("stream-images");
    let inputs = make_jpegs(&dir.join("in"), 10);
    let port = free_port();
    let mut stats = Proc::spawn(
        "i2i-stats",
        &dir,
        Command::new(I2I_STATS)
            .args(["--port", &port.to_string(), "--json", "--frames", "30"])
            .args(["--timeout", "15", "--no-progress", "--save"])
            .arg(dir.join("received")),
    );
    // Looping over 10 files, so the receiver sees indices keep counting past the last file.
    let mut sender = Proc::spawn(
        "stream-images",
        &dir,
        Command::new("bash")
            .arg(script("pipelines/stream-images.sh"))
            .arg("--input-folder")
            .arg(dir.join("in"))
            .args(["--fps", "25", "--port", &port.to_string()])
            .args(["--loop", "--num-frames", "100"])
            .current_dir("/"),
    );
    let status = stats.wait(Duration::from_secs(40));
    sender.kill();
    let stdout = stats.stdout();
    assert!(
        status.success(),
        "i2i-stats: {}\n{}",
        stdout,
        stats.stderr()
    );
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    let sender_log = sender.stderr();
    assert_eq!(r["frames"], 30, "{r:#}\nsender:\n{sender_log}");
    assert_eq!(r["malformed"], 0);
    let ix = &r["indices"];
    assert_eq!(ix["out_of_order"], 0, "{ix}");
    assert_eq!(ix["duplicates"], 0, "{ix}");
    assert_eq!(
        ix["lost"], 0,
        "indices must count frames (consecutive), not bytes: {ix}"
    );
    let fps = r["average_fps"].as_f64().unwrap();
    assert!(
        (15.0..40.0).contains(&fps),
        "paced at 25 fps, measured {fps}"
    );
    assert_eq!(all_identical_to_inputs(&dir.join("received"), &inputs), 30);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn show_stream_saves_frames_without_a_display() {
    if !transport_available("show_stream_saves_frames_without_a_display") {
        return;
    }
    let dir = scratch_dir("show-stream");
    let inputs = make_jpegs(&dir.join("in"), 10);
    let port = free_port();
    let _sender = Proc::spawn(
        "stream-images",
        &dir,
        Command::new("bash")
            .arg(script("pipelines/stream-images.sh"))
            .arg("--input-folder")
            .arg(dir.join("in"))
            .args(["--fps", "30", "--port", &port.to_string()])
            .args(["--loop", "--num-frames", "300"])
            .current_dir("/"),
    );
    let mut show = Proc::spawn(
        "show-stream",
        &dir,
        Command::new("bash")
            .arg(script("pipelines/show-stream.sh"))
            .args(["--frames", "8", "--out"])
            .arg(dir.join("shown"))
            .arg(port.to_string())
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .current_dir("/"),
    );
    let status = show.wait(Duration::from_secs(30));
    assert!(status.success(), "show-stream.sh: {}", show.stderr());
    assert!(show.stderr().contains("no display"), "{}", show.stderr());
    assert_eq!(all_identical_to_inputs(&dir.join("shown"), &inputs), 8);
    assert!(dir.join("shown/00007.jpg").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_runs_headless() {
    if !transport_available("demo_runs_headless") {
        return;
    }
    if !Path::new(ROOT).join(".deps/env.sh").exists() || !Path::new(ROOT).join(".venv").exists() {
        eprintln!("SKIPPED demo_runs_headless: run 'bash scripts/setup.sh' first");
        return;
    }
    let dir = scratch_dir("demo");
    let mut demo = Proc::spawn(
        "demo",
        &dir,
        Command::new("bash")
            .arg(script("scripts/demo.sh"))
            .args(["--skip-setup", "--frames", "30", "--port"])
            .arg(free_port().to_string())
            .arg("--out")
            .arg(&dir)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .current_dir("/"),
    );
    let started = Instant::now();
    let status = demo.wait(Duration::from_secs(60));
    let stdout = demo.stdout();
    assert!(status.success(), "demo.sh: {stdout}\n{}", demo.stderr());
    assert!(stdout.contains("STREAM STATISTICS"), "{stdout}");
    assert!(stdout.contains("Verdict:"), "{stdout}");
    let made = std::fs::read_dir(dir.join("frames")).unwrap().count();
    assert_eq!(made, 30);
    // A subscriber may miss the very first frames while it joins; the rest must be there.
    let received = std::fs::read_dir(dir.join("demo"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "jpg")
        })
        .count();
    assert!((25..=30).contains(&received), "received {received} of 30");
    // Named like the input files, and the same frames: 0000.jpg is the output of 0000.jpg.
    for entry in std::fs::read_dir(dir.join("demo")).unwrap().flatten() {
        let name = entry.file_name();
        if Path::new(&name).extension().is_some_and(|x| x == "jpg") {
            assert!(
                dir.join("frames").join(&name).exists(),
                "output {name:?} has no input of that name"
            );
        }
    }
    assert!(dir.join("demo/0029.jpg").exists());
    assert!(
        demo.stderr().contains("from each frame's capture"),
        "{}",
        demo.stderr()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "demo took {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The processes below `pid` (children, their children, ...), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "PID (comm) STATE PPID ...": the name may hold spaces, the last ')' ends it.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            parents.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its entry waits to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

/// Waits until `text` shows up in what `read` returns, at most `limit`.
fn wait_for(limit: Duration, what: &str, read: impl Fn() -> String, text: &str) -> String {
    let start = Instant::now();
    loop {
        let got = read();
        if got.contains(text) {
            return got;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: no '{text}' after {limit:?}:\n{got}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kill PID` (SIGTERM) of a script that runs gst-launch-1.0 as a child ends the child too.
fn kill_ends_children(name: &str, mut script: Proc) {
    let pid = script.child.id();
    let children = {
        let start = Instant::now();
        loop {
            let c = descendants(pid);
            // The pipeline runs as a child, or the script exec'd it (primary.sh: then its
            // children are the settings holder and the watcher that stops it).
            let gst = std::iter::once(&pid).chain(&c).any(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|n| n.trim() == "gst-launch-1.0")
            });
            if gst && !c.is_empty() && start.elapsed() > Duration::from_millis(500) {
                break c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name} started no gst-launch-1.0\n{}",
                script.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // SAFETY: kill(2) on the script's own PID, which this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let started = Instant::now();
    // children.sh gives a pipeline 5 s to drain after EOS, then 2 s after SIGTERM; on a
    // loaded machine the EOS of a transform and the report after it take longer: what
    // matters is that every child ends, so the bound is generous.
    let bound = Duration::from_secs(30);
    script.wait(bound);
    while children.iter().any(|c| alive(*c)) {
        assert!(
            started.elapsed() < bound,
            "{name}: children {:?} still running {bound:?} after kill {pid}\n{}",
            children.iter().filter(|c| alive(**c)).collect::<Vec<_>>(),
            script.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killing_a_script_ends_its_pipeline() {
    if !transport_available("killing_a_script_ends_its_pipeline") {
        return;
    }
    let dir = scratch_dir("kill");
    make_jpegs(&dir.join("in"), 5);
    let port = free_port();
    let sender = Proc::spawn(
        "stream-images",
        &dir,
        Command::new("bash")
            .arg(script("pipelines/stream-images.sh"))
            .arg("--input-folder")
            .arg(dir.join("in"))
            .args(["--fps", "30", "--port", &port.to_string(), "--loop"])
            .current_dir("/"),
    );
    let shower = Proc::spawn(
        "show-stream",
        &dir,
        Command::new("bash")
            .arg(script("pipelines/show-stream.sh"))
            .arg("--out")
            .arg(dir.join("shown"))
            .arg(port.to_string())
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .current_dir("/"),
    );
    kill_ends_children("show-stream.sh", shower);
    kill_ends_children("stream-images.sh", sender);
    let ports = PrimaryPorts::new();
    let primary = Proc::spawn(
        "primary",
        &dir,
        Command::new("bash")
            .arg(script("pipelines/primary.sh"))
            .args([
                "--test",
                "--fps",
                "10",
                "--size",
                "64x64",
                "--osc-port",
                "0",
            ])
            .args(ports.primary_args())
            .current_dir("/"),
    );
    kill_ends_children("primary.sh", primary);
    if Path::new(ROOT).join(".deps/env.sh").exists() && Path::new(ROOT).join(".venv").exists() {
        let demo = Proc::spawn(
            "demo",
            &dir,
            Command::new("bash")
                .arg(script("scripts/demo.sh"))
                .args(["--skip-setup", "--frames", "600", "--port"])
                .arg(free_port().to_string())
                .arg("--out")
                .arg(dir.join("demo"))
                .current_dir("/"),
        );
        kill_ends_children("demo.sh", demo);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// True when the scale-out scripts can run a real transform here; otherwise says why.
fn transform_available(test: &str) -> bool {
    let model = Path::new(ROOT).join("models/demo/unet/model.onnx");
    let found = Command::new("gst-inspect-1.0")
        .arg("i2itransform")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found || !model.exists() || !transport_available(test) {
        eprintln!("SKIPPED {test}: needs i2itransform and models/demo (bash scripts/setup.sh)");
        return false;
    }
    true
}

/// Ports for one primary: dispatch, settings, output, collect, control.
struct PrimaryPorts([u16; 5]);

impl PrimaryPorts {
    fn new() -> PrimaryPorts {
        PrimaryPorts(std::array::from_fn(|_| free_port()))
    }

    fn primary_args(&self) -> Vec<String> {
        let [d, s, o, c, k] = self.0;
        [
            ("--dispatch-port", d),
            ("--settings-port", s),
            ("--output-port", o),
            ("--collect-port", c),
            ("--control-port", k),
        ]
        .iter()
        .flat_map(|(n, p)| [n.to_string(), p.to_string()])
        .collect()
    }

    fn worker_args(&self) -> Vec<String> {
        let [d, s, _, c, _] = self.0;
        [
            ("--dispatch-port", d),
            ("--settings-port", s),
            ("--collect-port", c),
        ]
        .iter()
        .flat_map(|(n, p)| [n.to_string(), p.to_string()])
        .collect()
    }

    fn output(&self) -> u16 {
        self.0[2]
    }
}

/// pipelines/primary.sh on 120 files at 15 fps, one pipelines/worker.sh started a second
/// after it (or before it), and i2i-stats on the output port: what arrives.
fn scaleout_start(dir: &Path, init: Option<&str>, worker_first: bool) -> (Value, String) {
    let ports = PrimaryPorts::new();
    let mut stats = Proc::spawn(
        "i2i-stats",
        dir,
        Command::new(I2I_STATS)
            .args([
                "--port",
                &ports.output().to_string(),
                "--json",
                "--frames",
                "120",
            ])
            .args(["--timeout", "40", "--no-progress", "--save"])
            .arg(dir.join("out")),
    );
    let mut primary_cmd = Command::new("bash");
    primary_cmd
        .arg(script("pipelines/primary.sh"))
        .arg("--frames")
        .arg(dir.join("frames"))
        .args(["--fps", "15", "--num-frames", "120", "--osc-port", "0"])
        .args(ports.primary_args())
        .current_dir("/");
    if let Some(init) = init {
        primary_cmd.args(["--settings-init", init]);
    }
    let mut worker_cmd = Command::new("bash");
    worker_cmd
        .arg(script("pipelines/worker.sh"))
        .args(["--primary", "127.0.0.1", "--threads", "1", "--name", "w"])
        .arg("--model")
        .arg(Path::new(ROOT).join("models/demo"))
        .args(ports.worker_args())
        // A small picture: the frames count here, not the machine's speed.
        .args(["width=128", "height=128"])
        .current_dir("/");
    let (mut primary, _worker) = if worker_first {
        let worker = Proc::spawn("worker", dir, &mut worker_cmd);
        std::thread::sleep(Duration::from_secs(1));
        (Proc::spawn("primary", dir, &mut primary_cmd), worker)
    } else {
        let primary = Proc::spawn("primary", dir, &mut primary_cmd);
        std::thread::sleep(Duration::from_secs(1));
        (primary, Proc::spawn("worker", dir, &mut worker_cmd))
    };
    let status = primary.wait(Duration::from_secs(90));
    let log = primary.stdout() + &primary.stderr();
    assert!(status.success(), "primary.sh: {log}");
    stats.wait(Duration::from_secs(60));
    let report = serde_json::from_str(stats.stdout().trim())
        .unwrap_or_else(|e| panic!("i2i-stats: {e}\n{}\n{}", stats.stdout(), stats.stderr()));
    (report, log)
}

#[test]
fn scaleout_scripts_deliver_every_frame_from_the_start() {
    if !transform_available("scaleout_scripts_deliver_every_frame_from_the_start") {
        return;
    }
    let dir = scratch_dir("scaleout-start");
    make_jpegs(&dir.join("frames"), 120);
    // With initial settings, worker started a second after the primary; without, before it
    // (the worker waits for settings that do not come). Both at once: they share nothing.
    let cases = [(Some("/prompt a fox"), false), (None, true)];
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(k, &(init, worker_first))| {
                let d = dir.join(format!("case{k}"));
                std::fs::create_dir_all(&d).unwrap();
                std::os::unix::fs::symlink(dir.join("frames"), d.join("frames")).unwrap();
                s.spawn(move || (init, worker_first, scaleout_start(&d, init, worker_first)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (init, worker_first, (r, primary_log)) in runs {
        let case = format!("settings {init:?}, worker first: {worker_first}");
        let ix = &r["indices"];
        assert_eq!(r["frames"], 120, "{case}: {r:#}\nprimary:\n{primary_log}");
        assert_eq!(
            (ix["first"].as_u64(), ix["last"].as_u64()),
            (Some(0), Some(119)),
            "{case}"
        );
        assert_eq!(ix["lost"], 0, "{case}: {ix}");
        assert_eq!(ix["duplicates"], 0, "{case}: {ix}");
        assert_eq!(ix["out_of_order"], 0, "{case}: {ix}");
        assert!(
            !primary_log.contains("Frames lost") && !primary_log.contains("did not return"),
            "{case}: {primary_log}"
        );
        assert_eq!(r["saved_frames"], 120, "{case}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn primary_stops_when_its_settings_holder_cannot_start() {
    if !transport_available("primary_stops_when_its_settings_holder_cannot_start") {
        return;
    }
    let dir = scratch_dir("primary-holder");
    make_jpegs(&dir.join("frames"), 3);
    let ports = PrimaryPorts::new();
    // A stale holder (here a plain listener) has the settings port.
    let stale = std::net::TcpListener::bind(("0.0.0.0", ports.0[1])).unwrap();
    let mut primary = Proc::spawn(
        "primary",
        &dir,
        Command::new("bash")
            .arg(script("pipelines/primary.sh"))
            .arg("--frames")
            .arg(dir.join("frames"))
            .args(["--osc-port", "0"])
            .args(ports.primary_args())
            .current_dir("/"),
    );
    let status = primary.wait(Duration::from_secs(20));
    let err = primary.stderr();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("Address already in use") && err.contains("did not start"),
        "{err}"
    );
    assert!(!err.contains("Setting pipeline"), "nothing started: {err}");
    drop(stale);

    // --osc-port: the holder takes OSC on the port the user chose.
    let osc = free_port();
    let mut primary = Proc::spawn(
        "primary-osc",
        &dir,
        Command::new("bash")
            .arg(script("pipelines/primary.sh"))
            .arg("--frames")
            .arg(dir.join("frames"))
            .args(["--osc-port", &osc.to_string()])
            .args(ports.primary_args())
            .current_dir("/"),
    );
    wait_for(
        Duration::from_secs(20),
        "primary.sh --osc-port",
        || primary.stdout() + &primary.stderr(),
        &format!("OSC on udp://0.0.0.0:{osc}"),
    );
    assert!(
        std::net::UdpSocket::bind(("0.0.0.0", osc)).is_err(),
        "the holder holds udp {osc}"
    );
    primary.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn worker_says_when_no_primary_answers() {
    if !transport_available("worker_says_when_no_primary_answers") {
        return;
    }
    let dir = scratch_dir("worker-alone");
    for (host, says) in [
        ("127.0.0.2", "No primary answers at tcp://127.0.0.2:"),
        ("nonexistent.invalid", "does not resolve"),
    ] {
        let mut worker = Proc::spawn(
            "worker",
            &dir,
            Command::new("bash")
                .arg(script("pipelines/worker.sh"))
                .args(["--primary", host, "--passthrough"])
                .args(["--dispatch-port", &free_port().to_string()])
                .current_dir("/"),
        );
        // gst-launch-1.0 prints warnings on stdout.
        let err = wait_for(
            Duration::from_secs(15),
            "worker.sh",
            || worker.stdout() + &worker.stderr(),
            says,
        );
        assert!(err.contains("Still trying"), "{err}");
        assert!(
            worker.child.try_wait().unwrap().is_none(),
            "the worker keeps trying: {err}"
        );
        worker.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn python_with_gstreamer_runs_as_documented() {
    if !transport_available("python_with_gstreamer_runs_as_documented") {
        return;
    }
    let python = "/usr/bin/python3";
    let has_gi = Command::new(python)
        .args(["-c", "import gi; gi.require_version('Gst', '1.0')"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_gi {
        eprintln!(
            "SKIPPED python_with_gstreamer_runs_as_documented: {python} has no gi \
             (sudo apt install python3-gi gir1.2-gstreamer-1.0)"
        );
        return;
    }
    // The program exactly as docs/transport.md shows it.
    let doc = std::fs::read_to_string(script("docs/transport.md")).unwrap();
    let start = doc
        .find("#!/usr/bin/python3")
        .expect("the documented program");
    let program = &doc[start..start + doc[start..].find("```").unwrap()];
    let dir = scratch_dir("python-gst");
    let file = dir.join("publish.py");
    std::fs::write(&file, program).unwrap();
    let port = free_port();
    let mut stats = Proc::spawn(
        "i2i-stats",
        &dir,
        Command::new(I2I_STATS)
            .args(["--port", &port.to_string(), "--json", "--frames", "20"])
            .args(["--timeout", "20", "--no-progress"]),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut publisher = Proc::spawn(
        "publish.py",
        &dir,
        Command::new(python).arg(&file).arg(port.to_string()),
    );
    let status = publisher.wait(Duration::from_secs(30));
    assert!(status.success(), "{}", publisher.stderr());
    stats.wait(Duration::from_secs(30));
    let r: Value = serde_json::from_str(stats.stdout().trim()).unwrap();
    assert_eq!(r["frames"], 20, "{r:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
