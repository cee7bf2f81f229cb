// SPDX-License-Identifier: MPL-2.0
//! The built `i2i-stats` binary against real ZeroMQ senders on 127.0.0.1.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use i2i_core::protocol::encode_frame;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_i2i-stats");
/// No test waits longer than this for the binary.
const LIMIT: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("i2i-stats-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A socket bound on an ephemeral port of 127.0.0.1, and its endpoint.
fn bound(ctx: &zmq::Context, kind: zmq::SocketType) -> (zmq::Socket, String) {
    let s = ctx.socket(kind).unwrap();
    s.set_linger(2000).unwrap();
    // A PUSH with no peer blocks: never longer than this.
    s.set_sndtimeo(10_000).unwrap();
    s.bind("tcp://127.0.0.1:*").unwrap();
    let ep = s.get_last_endpoint().unwrap().unwrap();
    (s, ep)
}

fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start i2i-stats")
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Waits for the child, killing it (and failing) past `LIMIT`.
fn finish(mut child: Child, started: Instant) -> Finished {
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("i2i-stats still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Finished {
        status,
        stdout,
        stderr,
        elapsed,
    }
}

fn json(f: &Finished) -> Value {
    serde_json::from_str(f.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
            f.stdout, f.stderr
        )
    })
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["realtime"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

fn payload(index: u64) -> Vec<u8> {
    let mut jpeg = b"\xff\xd8\xff\xe0".to_vec();
    jpeg.extend(std::iter::repeat_n(index as u8, 100 + index as usize * 10));
    jpeg
}

#[test]
fn gaps_reordering_duplicates_malformed_and_latency() {
    // 4 and 10..=13 never come, 5 comes after 7, 8 and 2 come twice; two malformed messages.
    const ORDER: [u64; 17] = [0, 1, 2, 3, 6, 7, 5, 8, 8, 9, 2, 14, 15, 16, 17, 18, 19];
    const LATENCY_MS: i64 = 250;
    let save = scratch_dir("save");
    let ctx = zmq::Context::new();
    let (push, ep) = bound(&ctx, zmq::PUSH);
    let started = Instant::now();
    let child = spawn(&[
        "--socket-type",
        "pull",
        "--endpoint",
        &ep,
        "--json",
        "--frames",
        "17",
        "--timeout",
        "10",
        "--no-progress",
        "--save",
        save.to_str().unwrap(),
        // The stream is fast enough, its latency is not: the verdict must fail on latency.
        "--max-latency-ms",
        "100",
        "--require-realtime",
    ]);

    let mut expected_jpeg_bytes = 0;
    // Each frame carries its capture time (10 ms per index), as a real stream does: a
    // repeated frame carries the same time again. Older than the offset, so the
    // latency is at least LATENCY_MS.
    let t0 = now_ms() - LATENCY_MS - 100;
    for (k, &index) in ORDER.iter().enumerate() {
        if k == 4 {
            push.send(&b"not msgpack at all"[..], 0).unwrap();
        }
        if k == 9 {
            // A msgpack array of two: valid msgpack, wrong shape.
            push.send(&[0x92u8, 0x01, 0x02][..], 0).unwrap();
        }
        let jpeg = payload(index);
        expected_jpeg_bytes += jpeg.len() as u64;
        push.send(encode_frame(t0 + index as i64 * 10, index, &jpeg), 0)
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }

    let f = finish(child, started);
    let r = json(&f);
    assert_eq!(f.status.code(), Some(1), "verdict failed: exit 1\n{r:#}");
    assert_eq!(r["stopped_by"], "frames");
    assert_eq!(r["frames"], 17);
    assert_eq!(r["messages"], 19);
    assert_eq!(r["malformed"], 2);
    let examples = r["malformed_examples"].to_string();
    assert!(examples.contains("array of 2"), "{examples}");
    assert!(
        f.stderr.contains("malformed message"),
        "warning on stderr: {}",
        f.stderr
    );

    let ix = &r["indices"];
    assert_eq!(ix["first"], 0);
    assert_eq!(ix["last"], 19);
    assert_eq!(ix["lost"], 5);
    assert_eq!(ix["lost_ranges"], serde_json::json!([[4, 4], [10, 13]]));
    assert_eq!(ix["out_of_order"], 1);
    assert_eq!(ix["duplicates"], 2);

    let lat = &r["latency_ms"];
    let p50 = lat["p50"].as_f64().unwrap();
    assert!(
        lat["min"].as_f64().unwrap() >= (LATENCY_MS - 1) as f64,
        "latency below the offset: {lat}"
    );
    assert!(
        p50 < (LATENCY_MS + 1000) as f64,
        "latency far above the offset: {lat}"
    );
    assert_eq!(lat["count"], 17);
    assert_eq!(r["intervals_ms"]["count"], 16);

    assert_eq!(r["jpeg_bytes"].as_u64().unwrap(), expected_jpeg_bytes);
    assert!(r["bytes"].as_u64().unwrap() > expected_jpeg_bytes);

    assert_eq!(r["realtime"]["ok"], false);
    let latency = check(&r, "latency_p95_ms");
    assert_eq!(latency["ok"], false);
    assert_eq!(latency["limit"], 100.0);
    assert!(latency["value"].as_f64().unwrap() >= (LATENCY_MS - 1) as f64);
    assert_eq!(check(&r, "fps")["ok"], true, "{r:#}");
    assert_eq!(check(&r, "mean_interval_ms")["ok"], true, "{r:#}");

    // Saved named by index as the input files are (a repeated index once), byte for byte.
    assert_eq!(r["saved_frames"], 15);
    for &index in &ORDER {
        let saved = std::fs::read(save.join(format!("{index:04}.jpg"))).unwrap();
        assert_eq!(saved, payload(index), "saved frame {index}");
    }
    let files = std::fs::read_dir(&save).unwrap().count();
    assert_eq!(files, 15, "one file per index");
    let _ = std::fs::remove_dir_all(&save);
}

#[test]
fn pub_sub_stream_passes_the_verdict() {
    let ctx = zmq::Context::new();
    let (publisher, ep) = bound(&ctx, zmq::PUB);
    let started = Instant::now();
    let mut child = spawn(&[
        &ep,
        "--json",
        "--frames",
        "20",
        "--timeout",
        "10",
        "--require-realtime",
    ]);
    // A subscriber misses what was published before it joined: publish until it has enough.
    let mut index = 0u64;
    while child.try_wait().unwrap().is_none() && started.elapsed() < LIMIT {
        publisher
            .send(encode_frame(now_ms(), index, &payload(index)), 0)
            .unwrap();
        index += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let f = finish(child, started);
    let r = json(&f);
    assert_eq!(f.status.code(), Some(0), "{r:#}\n{}", f.stderr);
    assert_eq!(r["frames"], 20);
    assert_eq!(r["malformed"], 0);
    assert_eq!(r["indices"]["lost"], 0);
    assert_eq!(r["indices"]["out_of_order"], 0);
    assert_eq!(r["indices"]["duplicates"], 0);
    let first = r["indices"]["first"].as_u64().unwrap();
    assert_eq!(r["indices"]["last"].as_u64().unwrap(), first + 19);
    assert_eq!(r["realtime"]["ok"], true, "{r:#}");
    assert!(r["source"].as_str().unwrap().contains("(sub, connect)"));
    let fps = r["average_fps"].as_f64().unwrap();
    assert!(fps > 22.5 && fps < 200.0, "fps {fps}");
}

#[test]
fn silence_times_out_with_an_empty_report() {
    // Nobody sends: the receiver gives up after --timeout and says so.
    let ctx = zmq::Context::new();
    let (_quiet_push, ep) = bound(&ctx, zmq::PUSH);
    let started = Instant::now();
    let child = spawn(&[
        "--socket-type",
        "pull",
        &ep,
        "--json",
        "--timeout",
        "0.5",
        "--require-realtime",
    ]);
    let f = finish(child, started);
    let r = json(&f);
    assert_eq!(f.status.code(), Some(1), "nothing received is a failure");
    assert!(
        f.stderr.contains(&format!(
            "nothing received from {ep}: is anything publishing there?"
        )),
        "{}",
        f.stderr
    );
    assert_eq!(r["stopped_by"], "timeout");
    assert_eq!(r["frames"], 0);
    assert!(r["average_fps"].is_null() && r["latency_ms"].is_null());
    assert!(f.elapsed < Duration::from_secs(10), "{:?}", f.elapsed);
    assert!(r["wall_s"].as_f64().unwrap() >= 0.5);
}

#[test]
fn interrupt_prints_the_report() {
    let ctx = zmq::Context::new();
    let (push, ep) = bound(&ctx, zmq::PUSH);
    let started = Instant::now();
    let child = spawn(&["--socket-type", "pull", &ep, "--timeout", "0"]);
    for index in 0..5 {
        push.send(encode_frame(now_ms(), index, &payload(index)), 0)
            .unwrap();
    }
    // Let them arrive, then Ctrl-C.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let f = finish(child, started);
    assert_eq!(f.status.code(), Some(0), "{}", f.stderr);
    assert!(f.stdout.contains("STREAM STATISTICS"), "{}", f.stdout);
    assert!(
        f.stdout.contains("Total Frames Received: 5"),
        "{}",
        f.stdout
    );
    assert!(f.stdout.contains("Stopped by: interrupted"), "{}", f.stdout);
    assert!(f.stdout.contains("REAL-TIME SUITABILITY:"), "{}", f.stdout);
}

#[test]
fn bad_usage_and_socket_errors_exit_2_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["--socket-type", "req"], "--socket-type"),
        (&["--frames", "-3"], "--frames"),
        (
            &["--bind", "--endpoint", "tcp://256.1.1.1:1"],
            "cannot bind tcp://256.1.1.1:1",
        ),
        (&["--endpoint", "bogus://x"], "bogus://x"),
    ];
    for (args, needle) in cases {
        let f = finish(spawn(args), Instant::now());
        assert_eq!(f.status.code(), Some(2), "{args:?}: {}", f.stderr);
        assert!(
            f.stderr.contains(needle),
            "{args:?}: stderr '{}' lacks '{needle}'",
            f.stderr
        );
    }
}

#[test]
fn a_15_fps_stream_is_judged_by_its_input_rate_and_a_restart_is_named() {
    // 15 fps made and delivered for 2 s, then the sender restarts at index 0.
    let ctx = zmq::Context::new();
    let (push, ep) = bound(&ctx, zmq::PUSH);
    let started = Instant::now();
    let child = spawn(&[
        "--socket-type",
        "pull",
        &ep,
        "--json",
        "--frames",
        "45",
        "--timeout",
        "10",
        "--require-realtime",
    ]);
    let period = Duration::from_micros(66_667);
    let t0 = now_ms();
    for index in 0..30u64 {
        push.send(
            encode_frame(t0 + (index as i64 * 200) / 3, index, &payload(index)),
            0,
        )
        .unwrap();
        std::thread::sleep(period);
    }
    let t1 = now_ms();
    for index in 0..15u64 {
        push.send(
            encode_frame(t1 + (index as i64 * 200) / 3, index, &payload(index)),
            0,
        )
        .unwrap();
        std::thread::sleep(period);
    }
    let f = finish(child, started);
    let r = json(&f);
    assert_eq!(f.status.code(), Some(0), "{r:#}\n{}", f.stderr);
    assert_eq!(r["realtime"]["judged_by_input_rate"], true, "{r:#}");
    let input = r["input_fps"].as_f64().unwrap();
    assert!((input - 15.0).abs() < 0.5, "input fps {input}");
    assert_eq!(r["indices"]["restarts"], 1, "{r:#}");
    assert_eq!(r["indices"]["duplicates"], 0, "{r:#}");
    assert!(
        f.stderr.contains("the sender restarted 1 time"),
        "{}",
        f.stderr
    );
}
