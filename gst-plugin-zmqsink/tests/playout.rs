// SPDX-License-Identifier: MPL-2.0
//! The collector's playout with workers that deliver in bursts (seed 004: a decoder that
//! turns a window of 17 frames out at once), on real ZeroMQ sockets on 127.0.0.1: a
//! live 25 fps source, the dispatcher and collector in one pipeline, and a worker pipeline
//! whose queue lets the frames out in windows of 17.
//!
//! The timing bounds are wide (a median within 30 % of the frame duration): they separate
//! a steady output (median interval 40 ms) from a bursty one (median near 0 ms) on a
//! loaded machine, not a good scheduler from a slightly worse one.

mod scaleout_util;

use std::time::Duration;

use gst::prelude::*;
use scaleout_util::*;

const FPS: u64 = 25;
const FRAME_MS: f64 = 1000.0 / FPS as f64;
const WINDOW: u64 = 17;
/// Four windows.
const FRAMES: u64 = 4 * WINDOW;

struct Run {
    outs: Vec<Out>,
    stats: gst::Structure,
    warnings: Vec<String>,
    /// When each frame left the worker's window queue (µs since the epoch).
    worker_out_us: Vec<i64>,
}

/// `FRAMES` frames at `FPS` through one worker that delivers them in windows of `WINDOW`.
fn bursty_run(collect_props: &str) -> Run {
    init();
    let primary = Primary::new(
        &format!(
            "videotestsrc is-live=true num-buffers={FRAMES} pattern=ball \
             ! video/x-raw,width=16,height=16,framerate={FPS}/1 ! jpegenc"
        ),
        "",
        &format!("framerate={FPS}/1 {collect_props}"),
    );
    let worker = worker_pipeline(
        &primary.dispatch_endpoint(),
        &primary.collect_endpoint(),
        "bursty",
        "queue name=window max-size-buffers=0 max-size-bytes=0 max-size-time=0 \
         ! videoflip method=vertical-flip",
    );
    let windows = Windows::attach(&worker, "window", WINDOW);
    worker.set_state(gst::State::Playing).unwrap();
    primary.wait_workers(1, Duration::from_secs(5));
    primary.play();
    assert!(primary.wait_eos(Duration::from_secs(30)), "no EOS");
    let stats = primary.collect_stats();
    worker.set_state(gst::State::Null).unwrap();
    let run = Run {
        outs: primary.outs.lock().unwrap().clone(),
        stats,
        warnings: primary.warnings.lock().unwrap().clone(),
        worker_out_us: windows.left_at_us(),
    };
    assert!(
        primary.errors.lock().unwrap().is_empty(),
        "{:?}",
        primary.errors.lock().unwrap()
    );
    run
}

fn stat(stats: &gst::Structure, field: &str) -> u64 {
    stats
        .get::<u64>(field)
        .unwrap_or_else(|e| panic!("{field}: {e} in {stats}"))
}

/// How far each frame left the collector after its play time (entry + delay), in ms.
fn offsets_from_due_ms(outs: &[Out], delay_ms: i64) -> Vec<f64> {
    outs.iter()
        .map(|o| o.arrived_us as f64 / 1000.0 - (o.timestamp_ms.unwrap() + delay_ms) as f64)
        .collect()
}

fn report(name: &str, run: &Run) {
    let worker = intervals_ms(&run.worker_out_us);
    let out: Vec<i64> = run.outs.iter().map(|o| o.arrived_us).collect();
    let out = intervals_ms(&out);
    eprintln!(
        "{name}: worker out intervals p50 {:.1} max {:.1} ms; collector out intervals p50 {:.1} max {:.1} ms; {}",
        quantile(&worker, 0.5).unwrap_or(f64::NAN),
        quantile(&worker, 1.0).unwrap_or(f64::NAN),
        quantile(&out, 0.5).unwrap_or(f64::NAN),
        quantile(&out, 1.0).unwrap_or(f64::NAN),
        run.stats
    );
}

#[test]
fn bursts_of_a_window_play_out_at_the_frame_rate() {
    // The delay covers a window (17 x 40 = 680 ms) and the work, with room to spare.
    const DELAY_MS: i64 = 1200;
    let run = bursty_run(&format!("playout-delay={DELAY_MS}"));
    report("delay 1200 ms", &run);

    // The worker really delivered in windows: each frame left with its window's last.
    assert_eq!(run.worker_out_us.len() as u64, FRAMES);
    let worker = intervals_ms(&run.worker_out_us);
    assert!(
        quantile(&worker, 0.5).unwrap() < FRAME_MS * 0.3,
        "the worker did not deliver in bursts: intervals {worker:?}"
    );

    // Every frame, in order, none late, skipped or played early.
    assert_in_order(&run.outs);
    let indices: Vec<u64> = run.outs.iter().map(|o| o.index).collect();
    assert_eq!(indices, (0..FRAMES).collect::<Vec<_>>(), "{}", run.stats);
    for field in ["dropped-late", "missing", "played-early"] {
        assert_eq!(stat(&run.stats, field), 0, "{field}: {}", run.stats);
    }
    let offsets = offsets_from_due_ms(&run.outs, DELAY_MS);
    assert!(
        offsets.iter().all(|&o| o > -2.0),
        "a frame left before its play time: {offsets:?}"
    );

    // Steady output: PTS and wall-clock intervals at the frame duration.
    let pts: Vec<i64> = run
        .outs
        .iter()
        .map(|o| (o.pts_ns.expect("output PTS") / 1000) as i64)
        .collect();
    let wall: Vec<i64> = run.outs.iter().map(|o| o.arrived_us).collect();
    for (what, times) in [("PTS", pts), ("release", wall)] {
        let iv = intervals_ms(&times);
        let median = quantile(&iv, 0.5).unwrap();
        assert!(
            (median - FRAME_MS).abs() < FRAME_MS * 0.3,
            "{what} intervals: median {median:.1} ms, frame duration {FRAME_MS} ms: {iv:?}"
        );
    }
}

#[test]
fn a_playout_delay_shorter_than_a_window_counts_the_lost_frames() {
    // A window's first frames wait 16 x 40 = 640 ms at the worker, more than this delay.
    const DELAY_MS: i64 = 300;
    let run = bursty_run(&format!("playout-delay={DELAY_MS}"));
    report("delay 300 ms", &run);

    assert_in_order(&run.outs);
    let (frames, late, missing) = (
        stat(&run.stats, "frames-out"),
        stat(&run.stats, "dropped-late"),
        stat(&run.stats, "missing"),
    );
    // Each window's first 8 frames (16 - i >= 8 frame durations behind its last) cannot
    // make their play time; they arrive, are dropped as late, and leave gaps.
    assert!(late > 0 && missing > 0, "{}", run.stats);
    assert_eq!(
        frames + missing,
        FRAMES,
        "every index is played or counted missing: {}",
        run.stats
    );
    assert_eq!(frames, run.outs.len() as u64);
    assert!(
        run.warnings.iter().any(|w| w.contains("Frames lost")
            && w.contains("playout-delay 300 ms")
            && w.contains("late")),
        "no loss warning on the bus: {:?}",
        run.warnings
    );
    // What was played still left at its time.
    let offsets = offsets_from_due_ms(&run.outs, DELAY_MS);
    assert!(
        offsets.iter().all(|&o| o > -2.0),
        "a frame left before its play time: {offsets:?}"
    );
}

#[test]
fn a_reorder_buffer_smaller_than_the_delay_plays_early_by_default() {
    // 1000 ms at 25 fps is 25 frames held; 17 fit.
    const DELAY_MS: i64 = 1000;
    let run = bursty_run(&format!("playout-delay={DELAY_MS} max-queue={WINDOW}"));
    report("max-queue 17, play-early", &run);

    assert_in_order(&run.outs);
    let overflow = stat(&run.stats, "played-early");
    assert!(overflow > 0, "{}", run.stats);
    assert_eq!(stat(&run.stats, "frames-out"), FRAMES, "{}", run.stats);
    // The frames pushed out of the full buffer left well before their play time.
    let early = offsets_from_due_ms(&run.outs, DELAY_MS)
        .iter()
        .filter(|&&o| o < -FRAME_MS)
        .count() as u64;
    assert!(
        early > 0 && early <= overflow,
        "{early} frames early, {overflow} overflow"
    );
    assert!(
        run.warnings
            .iter()
            .any(|w| w.contains("played early with the reorder buffer full")),
        "no warning on the bus: {:?}",
        run.warnings
    );
}

#[test]
fn a_full_reorder_buffer_with_drop_oldest_keeps_the_pacing_and_counts_the_drops() {
    const DELAY_MS: i64 = 1000;
    let run = bursty_run(&format!(
        "playout-delay={DELAY_MS} max-queue={WINDOW} queue-policy=drop-oldest"
    ));
    report("max-queue 17, drop-oldest", &run);

    assert_in_order(&run.outs);
    let (frames, missing, dropped) = (
        stat(&run.stats, "frames-out"),
        stat(&run.stats, "missing"),
        stat(&run.stats, "dropped-overflow"),
    );
    assert_eq!(stat(&run.stats, "played-early"), 0, "{}", run.stats);
    assert!(dropped > 0, "{}", run.stats);
    assert!(missing >= dropped, "each drop is a gap: {}", run.stats);
    assert_eq!(frames + missing, FRAMES, "{}", run.stats);
    let offsets = offsets_from_due_ms(&run.outs, DELAY_MS);
    assert!(
        offsets.iter().all(|&o| o > -2.0),
        "a frame left before its play time: {offsets:?}"
    );
    assert!(
        run.warnings
            .iter()
            .any(|w| w.contains("dropped with the reorder buffer full")
                && w.contains("queue-policy drop-oldest")),
        "no drop warning on the bus: {:?}",
        run.warnings
    );
}
