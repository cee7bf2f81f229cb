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
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "demo took {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
