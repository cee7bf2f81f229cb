// SPDX-License-Identifier: MPL-2.0
//! The first Ctrl-C ends a run whose sink waits for a reader: `gst-launch-1.0 -e`
//! processes (and `pipelines/primary.sh`) get SIGINT while a push sink has no puller or the
//! scale-out primary has no worker, and must exit by themselves, counting what was not
//! delivered.

mod scaleout_util;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use scaleout_util::*;

/// Starts `cmd` with this build's plugins; returns it once it printed that it plays, with
/// a channel of its later output lines.
fn start_playing(mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", plugin_dir().join("registry.bin"))
        .env("GST_DEBUG", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the process starts");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("Setting pipeline to PLAYING") => break,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("never played: {seen:#?}");
            }
        }
    }
    (child, rx)
}

/// Sends one SIGINT, then waits for the exit; returns how long it took and the output
/// after the signal. Kills the process and fails after `limit`.
fn interrupt(mut child: Child, rx: mpsc::Receiver<String>, limit: Duration) -> (Duration, String) {
    // Frames have been waiting for a reader for a while.
    std::thread::sleep(Duration::from_millis(1500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let took = t0.elapsed();
            std::thread::sleep(Duration::from_millis(200));
            let out: Vec<String> = rx.try_iter().collect();
            let out = out.join("\n");
            assert!(status.success(), "exit {status}: {out}");
            return (took, out);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let out: Vec<String> = rx.try_iter().collect();
            panic!("still running {limit:?} after the first SIGINT: {out:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_push_sink_without_a_reader_ends_on_the_first_sigint() {
    let port = free_port();
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.args(["-e", "videotestsrc", "is-live=true", "!"])
        .args([
            "video/x-raw,width=64,height=48,framerate=30/1",
            "!",
            "jpegenc",
            "!",
        ])
        .args(["zmqmsgpacksink", "socket-type=push", "linger-timeout=0"])
        .arg(format!("endpoint=tcp://127.0.0.1:{port}"));
    let (child, rx) = start_playing(cmd);
    // The limit is generous for a loaded machine; the figure is printed.
    let (took, out) = interrupt(child, rx, Duration::from_secs(15));
    eprintln!("ended {took:?} after SIGINT");
    assert!(out.contains("Got EOS from element"), "{out}");
    assert!(out.contains("not delivered"), "{out}");
}

#[test]
fn the_primary_script_without_workers_ends_on_the_first_sigint() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/primary.sh");
    let [dispatch, collect, output] = free_ports::<3>();
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .args(["--test", "--size", "64x48", "--fps", "30", "--no-settings"])
        .args(["--dispatch-port", &dispatch.to_string()])
        .args(["--collect-port", &collect.to_string()])
        .args(["--output-port", &output.to_string()]);
    let (child, rx) = start_playing(cmd);
    // SIGINT to the script's PID reaches gst-launch (the script execs it).
    let (took, out) = interrupt(child, rx, Duration::from_secs(15));
    eprintln!("ended {took:?} after SIGINT");
    assert!(out.contains("Got EOS from element"), "{out}");
    assert!(out.contains("not delivered"), "{out}");
}
