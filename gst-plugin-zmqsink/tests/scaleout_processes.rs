// SPDX-License-Identifier: MPL-2.0
//! Scale-out across processes on 127.0.0.1: one primary (this process), three workers
//! (gst-launch-1.0 processes), 1000 frames. One worker is killed with SIGKILL at frame
//! ~300 and started again at ~600: nothing is delivered twice or out of order, the loss
//! is at most what the killed worker had in flight, the output never stops for a second,
//! and the restarted worker gets frames again.

mod scaleout_util;

use std::time::{Duration, Instant};

use scaleout_util::*;

const FRAMES: u64 = 1000;
const FPS: u64 = 250;
const DELAY_MS: i64 = 800;

#[test]
fn three_workers_one_killed_and_restarted() {
    init();
    let primary = Primary::new(
        &format!(
            "videotestsrc num-buffers={FRAMES} pattern=ball \
             ! video/x-raw,width=32,height=32,framerate={FPS}/1 ! jpegenc"
        ),
        "sync=true worker-timeout=1000 heartbeat-interval=50",
        &format!("playout-delay={DELAY_MS}"),
    );
    let (d, c) = (primary.dispatch_endpoint(), primary.collect_endpoint());
    let flip = "videoflip method=horizontal-flip";
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|i| WorkerProcess::spawn(&d, &c, &format!("w{i}"), flip))
        .collect();
    primary.wait_workers(3, Duration::from_secs(20));
    primary.play();

    let t0 = Instant::now();
    let mut killed_in_flight = None;
    let mut restarted = false;
    while t0.elapsed() < Duration::from_secs(40) {
        let n = primary.output_count();
        if killed_in_flight.is_none() && n >= 300 {
            // What the dispatcher has out at w0 right now bounds the loss.
            let stats = primary.dispatch_stats();
            let list = stats.get::<gst::Array>("worker-list").unwrap();
            let in_flight = list
                .iter()
                .filter_map(|v| v.get::<gst::Structure>().ok())
                .find(|s| s.get::<String>("name").unwrap() == "w0")
                .map(|s| s.get::<u64>("in-flight").unwrap())
                .expect("w0 listed");
            workers[0].kill();
            killed_in_flight = Some(in_flight);
            eprintln!("killed w0 at output {n}, {in_flight} frames in flight there");
        }
        if !restarted && n >= 600 {
            workers[0] = WorkerProcess::spawn(&d, &c, "w0", flip);
            restarted = true;
            eprintln!("restarted w0 at output {n}");
        }
        if primary.wait_eos(Duration::from_millis(10)) {
            break;
        }
    }
    assert!(primary.wait_eos(Duration::ZERO), "no EOS within 40 s");
    assert!(
        primary.errors.lock().unwrap().is_empty(),
        "{:?}",
        primary.errors.lock().unwrap()
    );
    let outs = primary.outs.lock().unwrap().clone();
    let dstats = primary.dispatch_stats();
    let cstats = primary.collect_stats();
    eprintln!("dispatcher {dstats}");
    eprintln!("collector {cstats}");

    // In order, no duplicates, original timestamps kept.
    assert_in_order(&outs);
    let missing = cstats.get::<u64>("missing").unwrap();
    let late = cstats.get::<u64>("late").unwrap();
    let in_flight = killed_in_flight.expect("the kill happened");
    assert_eq!(
        outs.len() as u64 + missing,
        FRAMES,
        "every frame is delivered or counted missing"
    );
    assert_eq!(outs.first().unwrap().index, 0);
    assert_eq!(outs.last().unwrap().index, FRAMES - 1);
    assert!(
        missing <= in_flight,
        "{missing} frames missing, more than the {in_flight} the killed worker had"
    );
    assert_eq!(late, 0, "no frame arrived later than the playout delay");

    // The output never paused for a second, the kill included.
    let worst_gap = outs
        .windows(2)
        .map(|p| p[1].arrived_us - p[0].arrived_us)
        .max()
        .unwrap();
    assert!(worst_gap < 1_000_000, "output stopped for {worst_gap} µs");

    // Played at entry time + delay: the latency seen downstream is the delay.
    let mut lat: Vec<i64> = outs
        .iter()
        .map(|o| o.arrived_us / 1000 - o.timestamp_ms.unwrap())
        .collect();
    lat.sort();
    let median = lat[lat.len() / 2];
    assert!(
        (DELAY_MS - 5..DELAY_MS + 60).contains(&median),
        "median latency {median} ms, playout delay {DELAY_MS} ms"
    );

    // The kill was noticed, and the restarted worker rejoined and got frames.
    assert!(dstats.get::<u64>("workers-lost").unwrap() >= 1);
    let joined = primary.worker_events("joined");
    assert_eq!(
        joined.iter().filter(|n| *n == "w0").count(),
        2,
        "{joined:?}"
    );
    let list = dstats.get::<gst::Array>("worker-list").unwrap();
    let w0_frames = list
        .iter()
        .filter_map(|v| v.get::<gst::Structure>().ok())
        .find(|s| s.get::<String>("name").unwrap() == "w0")
        .map(|s| s.get::<u64>("frames").unwrap())
        .expect("restarted w0 listed");
    assert!(w0_frames > 0, "restarted w0 got no frames");
    drop(workers);
}
