// SPDX-License-Identifier: MPL-2.0
//! Playout benchmark: how steady the collector's output is when the worker delivers its
//! results in bursts of a window (seed 004: a decoder that turns 17 frames out at once)
//! against a worker that delivers each frame as it comes.
//!
//! One primary (dispatcher and collector, in this process) takes a live `videotestsrc` at
//! `--fps`; one worker pipeline (in this process too, real ZeroMQ sockets on 127.0.0.1)
//! decodes, flips and encodes each frame. In the bursty run a queue in the worker lets its
//! frames out only in windows of `--window`. For each run the jitter of an interval is
//! |interval - frame duration|, reported as p50 / p95 / max for the worker's output (what
//! reaches the collector) and for the collector's output (wall clock when each buffer
//! left it, and its PTS).
//!
//!     cargo run --release -p gst-plugin-zmqsink --example playout-bench -- --repeat 3

#[path = "../tests/scaleout_util/mod.rs"]
mod scaleout_util;

use std::time::Duration;

use gst::prelude::*;
use scaleout_util::*;

const USAGE: &str = "\
Usage: playout-bench [OPTIONS]

  --fps N        frame rate of the live source (default 25)
  --window N     frames per burst in the bursty run (default 17)
  --frames N     frames per run (default 340: 20 windows of 17)
  --delay MS     the collector's playout-delay (default 1200: a window of 17 at 25 fps
                 is 680 ms)
  --max-queue N  the collector's max-queue (default 256)
  --policy P     the collector's queue-policy: play-early, drop-oldest, drop-newest
                 (default play-early)
  --repeat N     rounds of both runs, interleaved (default 1)
";

struct Options {
    fps: u64,
    window: u64,
    frames: u64,
    delay_ms: u64,
    max_frames: u64,
    policy: String,
    repeat: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        fps: 25,
        window: 17,
        frames: 340,
        delay_ms: 1200,
        max_frames: 256,
        policy: "play-early".into(),
        repeat: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{name}: expected a positive number, found '{v}'"))
        };
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--fps" => o.fps = number("--fps", value("--fps")?)?,
            "--window" => o.window = number("--window", value("--window")?)?,
            "--frames" => o.frames = number("--frames", value("--frames")?)?,
            "--delay" => o.delay_ms = number("--delay", value("--delay")?)?,
            "--max-queue" => o.max_frames = number("--max-queue", value("--max-queue")?)?,
            "--repeat" => o.repeat = number("--repeat", value("--repeat")?)? as usize,
            "--policy" => {
                o.policy = value("--policy")?;
                if !["play-early", "drop-oldest", "drop-newest"].contains(&o.policy.as_str()) {
                    return Err(format!(
                        "--policy: unknown policy '{}' (use play-early, drop-oldest, drop-newest)",
                        o.policy
                    ));
                }
            }
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if o.fps > 1000 {
        return Err("--fps: at most 1000".into());
    }
    if o.frames < 2 * o.window {
        return Err("--frames: use at least two windows".into());
    }
    Ok(o)
}

/// p50 / p95 / max of |interval - frame duration|, in ms.
struct Jitter {
    p50: f64,
    p95: f64,
    max: f64,
}

impl Jitter {
    fn of(times_us: &[i64], frame_ms: f64) -> Jitter {
        let dev: Vec<f64> = intervals_ms(times_us)
            .iter()
            .map(|iv| (iv - frame_ms).abs())
            .collect();
        let q = |p| quantile(&dev, p).unwrap_or(f64::NAN);
        Jitter {
            p50: q(0.5),
            p95: q(0.95),
            max: q(1.0),
        }
    }
}

impl std::fmt::Display for Jitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:6.2} {:6.2} {:7.2}", self.p50, self.p95, self.max)
    }
}

struct RunResult {
    name: String,
    worker: Jitter,
    release: Jitter,
    pts: Jitter,
    stats: gst::Structure,
}

fn run(o: &Options, window: u64) -> Result<RunResult, String> {
    let frame_ms = 1000.0 / o.fps as f64;
    let primary = Primary::new(
        &format!(
            "videotestsrc is-live=true num-buffers={} pattern=ball \
             ! video/x-raw,width=64,height=64,framerate={}/1 ! jpegenc",
            o.frames, o.fps
        ),
        "",
        &format!(
            "framerate={}/1 playout-delay={} max-queue={} queue-policy={}",
            o.fps, o.delay_ms, o.max_frames, o.policy
        ),
    );
    let worker = worker_pipeline(
        &primary.dispatch_endpoint(),
        &primary.collect_endpoint(),
        "bench",
        "queue name=window max-size-buffers=0 max-size-bytes=0 max-size-time=0 \
         ! videoflip method=vertical-flip",
    );
    // A window of 1 lets each frame out as it comes, and records when.
    let windows = Windows::attach(&worker, "window", window);
    worker
        .set_state(gst::State::Playing)
        .map_err(|e| format!("worker: {e}"))?;
    primary.wait_workers(1, Duration::from_secs(5));
    primary.play();
    let seconds = o.frames / o.fps + o.delay_ms / 1000 + 30;
    if !primary.wait_eos(Duration::from_secs(seconds)) {
        return Err(format!("no end of stream within {seconds} s"));
    }
    let stats = primary.collect_stats();
    worker.set_state(gst::State::Null).ok();
    if let Some(e) = primary.errors.lock().unwrap().first() {
        return Err(e.clone());
    }
    let outs = primary.outs.lock().unwrap().clone();
    let release: Vec<i64> = outs.iter().map(|o| o.arrived_us).collect();
    let pts: Vec<i64> = outs
        .iter()
        .filter_map(|o| o.pts_ns.map(|ns| (ns / 1000) as i64))
        .collect();
    Ok(RunResult {
        name: if window == 1 {
            "steady".into()
        } else {
            format!("bursts of {window}")
        },
        worker: Jitter::of(&windows.left_at_us(), frame_ms),
        release: Jitter::of(&release, frame_ms),
        pts: Jitter::of(&pts, frame_ms),
        stats,
    })
}

fn stat(s: &gst::Structure, field: &str) -> u64 {
    s.get::<u64>(field).unwrap_or(0)
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("playout-bench: {e}");
            std::process::exit(2);
        }
    };
    init();
    println!(
        "{} frames at {} fps (frame {:.1} ms), playout-delay {} ms, max-queue {}, queue-policy {}",
        o.frames,
        o.fps,
        1000.0 / o.fps as f64,
        o.delay_ms,
        o.max_frames,
        o.policy
    );
    println!(
        "jitter = |interval - frame duration|, ms: p50 p95 max\n\
         {:<14} {:<22} {:<22} {:<22} frames late missing dropped early",
        "arrival", "worker out", "collector out (wall)", "collector out (PTS)"
    );
    let mut failed = false;
    for _ in 0..o.repeat {
        for window in [1, o.window] {
            match run(&o, window) {
                Ok(r) => println!(
                    "{:<14} {:<22} {:<22} {:<22} {:6} {:4} {:7} {:7} {:5}",
                    r.name,
                    r.worker.to_string(),
                    r.release.to_string(),
                    r.pts.to_string(),
                    stat(&r.stats, "frames-out"),
                    stat(&r.stats, "dropped-late"),
                    stat(&r.stats, "missing"),
                    stat(&r.stats, "dropped-overflow"),
                    stat(&r.stats, "played-early"),
                ),
                Err(e) => {
                    eprintln!("window {window}: {e}");
                    failed = true;
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
