// SPDX-License-Identifier: MPL-2.0
//! Scale-out elements in one process, on real ZeroMQ sockets on 127.0.0.1: load
//! balancing around a slow worker, a primary restart, the queue policies, the collector's
//! reordering and loss counting, and each element against a hand-written peer speaking
//! the wire protocol (including bad input).

mod scaleout_util;

use std::time::{Duration, Instant};

use gst::prelude::*;
use gstzmqsink::scaleout::wire::{self, JobFrame, PrimaryMsg, Ready, WorkerMsg};
use gstzmqsink::scaleout::zmqdispatchsink::worker_list;
use i2i_core::protocol;
use scaleout_util::*;

fn worker_frames(stats: &gst::Structure, name: &str) -> u64 {
    worker_list(stats)
        .iter()
        .find(|s| s.get::<String>("name").unwrap() == name)
        .map(|s| s.get::<u64>("frames").unwrap())
        .unwrap_or(0)
}

#[test]
fn a_slow_worker_takes_only_its_share() {
    init();
    const FRAMES: u64 = 300;
    let primary = Primary::new(
        &format!(
            "videotestsrc num-buffers={FRAMES} ! video/x-raw,width=32,height=32,framerate=1000/1 ! jpegenc"
        ),
        "sync=false",
        // At about 1000 frames/s, a second of delay holds up to 1000 frames.
        "playout-delay=1000 max-queue=2000",
    );
    let (d, c) = (primary.dispatch_endpoint(), primary.collect_endpoint());
    let fast = worker_pipeline(&d, &c, "fast", "videoflip method=vertical-flip");
    // 40 ms per frame: a tenth or less of the fast worker's speed.
    let slow = worker_pipeline(&d, &c, "slow", "identity sleep-time=40000 ! videoflip");
    fast.set_state(gst::State::Playing).unwrap();
    slow.set_state(gst::State::Playing).unwrap();
    primary.wait_workers(2, Duration::from_secs(5));
    let t0 = Instant::now();
    primary.play();
    assert!(primary.wait_eos(Duration::from_secs(20)), "no EOS");
    let elapsed = t0.elapsed();
    let outs = primary.outs.lock().unwrap().clone();
    let stats = primary.dispatch_stats();
    fast.set_state(gst::State::Null).unwrap();
    slow.set_state(gst::State::Null).unwrap();

    assert_in_order(&outs);
    assert_eq!(outs.len() as u64, FRAMES, "{}", primary.collect_stats());
    let slow_frames = worker_frames(&stats, "slow");
    let fast_frames = worker_frames(&stats, "fast");
    eprintln!("{elapsed:?}: fast {fast_frames}, slow {slow_frames}");
    assert_eq!(slow_frames + fast_frames, FRAMES);
    // The slow worker got about what it could do while frames were handed out (one per
    // begun 40 ms, plus the one it holds ahead), not half of them. A run of 39 ms still
    // lets it finish its first frame and take one more as the last ones go out.
    let span_ms = outs.last().unwrap().timestamp_ms.unwrap() - outs[0].timestamp_ms.unwrap();
    let its_share = (span_ms as u64).div_ceil(40) + 2;
    assert!(
        slow_frames <= its_share,
        "slow worker got {slow_frames} frames in {span_ms} ms (its share: {its_share})"
    );
    assert!(fast_frames > FRAMES / 2);
}

#[test]
fn workers_follow_a_restarted_primary() {
    init();
    let [dispatch, collect] = free_ports::<2>();
    let dispatch = format!("tcp://127.0.0.1:{dispatch}");
    let collect = format!("tcp://127.0.0.1:{collect}");
    let source =
        "videotestsrc num-buffers=40 ! video/x-raw,width=32,height=32,framerate=200/1 ! jpegenc";
    let worker = worker_pipeline(&dispatch, &collect, "w", "videoflip method=clockwise");
    let src = worker.by_name("src").unwrap();
    src.set_property("primary-timeout", 500u32);
    worker.set_state(gst::State::Playing).unwrap();

    for run in 0..2 {
        let primary = Primary::on(&dispatch, &collect, source, "", "playout-delay=500");
        primary.wait_workers(1, Duration::from_secs(5));
        primary.play();
        assert!(
            primary.wait_eos(Duration::from_secs(10)),
            "run {run}: no EOS"
        );
        let outs = primary.outs.lock().unwrap().clone();
        assert_in_order(&outs);
        assert_eq!(outs.len(), 40, "run {run}: {}", primary.collect_stats());
        drop(primary);
    }
    let stats = src.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("sessions").unwrap(), 2, "{stats}");
    assert_eq!(stats.get::<u64>("frames-out").unwrap(), 80, "{stats}");
    worker.set_state(gst::State::Null).unwrap();
}

#[test]
fn drop_oldest_keeps_the_queue_bounded_without_workers() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=100 ! video/x-raw,width=16,height=16 ! jpegenc \
         ! zmqdispatchsink name=d endpoint=tcp://127.0.0.1:* sync=false max-queue=8 \
           queue-policy=drop-oldest worker-timeout=100",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let d = pipeline.by_name("d").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    // At EOS the queue waits worker-timeout for a worker, then gives up with a warning.
    wait_end(&pipeline, Duration::from_secs(5)).unwrap();
    let stats = d.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(stats.get::<u64>("queued").unwrap(), 100, "{stats}");
    assert_eq!(stats.get::<u64>("dropped-overflow").unwrap(), 92, "{stats}");
    assert_eq!(stats.get::<u64>("dispatched").unwrap(), 0, "{stats}");
}

#[test]
fn block_policy_loses_nothing_before_the_first_worker() {
    init();
    const N: u64 = 30;
    let primary = Primary::new(
        &format!(
            "videotestsrc is-live=true num-buffers={N} pattern=ball \
             ! video/x-raw,width=16,height=16,framerate=30/1 ! jpegenc"
        ),
        "sync=false queue-policy=block max-queue=4",
        "playout-delay=1000",
    );
    primary.play();
    // The source runs for a while with nobody to take its frames (longer than the
    // playout delay: frames queued now would be late at the collector).
    std::thread::sleep(Duration::from_millis(2000));
    let stats = primary.dispatch_stats();
    assert_eq!(stats.get::<u64>("queued").unwrap(), 0, "{stats}");
    let worker = worker_pipeline(
        &primary.dispatch_endpoint(),
        &primary.collect_endpoint(),
        "late",
        "identity",
    );
    worker.set_state(gst::State::Playing).unwrap();
    assert!(primary.wait_eos(Duration::from_secs(60)), "no EOS");
    worker.set_state(gst::State::Null).unwrap();
    let outs = primary.outs.lock().unwrap().clone();
    assert_in_order(&outs);
    let indices: Vec<u64> = outs.iter().map(|o| o.index).collect();
    assert_eq!(
        indices,
        (0..N).collect::<Vec<_>>(),
        "collector {}",
        primary.collect_stats()
    );
    let stats = primary.dispatch_stats();
    assert_eq!(stats.get::<u64>("dropped-overflow").unwrap(), 0, "{stats}");
    assert_eq!(
        stats.get::<u64>("dropped-undelivered").unwrap(),
        0,
        "{stats}"
    );
}

#[test]
fn block_policy_holds_the_source_and_stopping_releases_it() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc ! video/x-raw,width=16,height=16 ! jpegenc \
         ! zmqdispatchsink name=d endpoint=tcp://127.0.0.1:* sync=false max-queue=4",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let d = pipeline.by_name("d").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // No worker joined yet: the source is held before anything is queued.
    let stats = d.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("queued").unwrap(), 0, "{stats}");
    assert_eq!(stats.get::<u64>("dropped-overflow").unwrap(), 0, "{stats}");
    let t0 = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "stopping a blocked dispatcher took {:?}",
        t0.elapsed()
    );
}

#[test]
fn collector_restores_order_at_the_source_pace_and_counts_losses() {
    init();
    let frames = jpegs(6);
    let pipeline = gst::parse::launch(
        "zmqcollectsrc name=c endpoint=tcp://127.0.0.1:* playout-delay=300 idle-timeout=600 \
         ! appsink name=out sync=false",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let c = pipeline.by_name("c").unwrap();
    let outs = play_recording(&pipeline);
    let endpoint = c.property::<Option<String>>("last-endpoint").unwrap();
    let ctx = zmq::Context::new();
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.connect(&endpoint).unwrap();

    // Frames entered 20 ms apart; results come back out of order, 4 never in time.
    let base = unix_now_us() / 1000 + 50;
    let ts = |i: u64| base + 20 * i as i64;
    let wait_until_ms = |t: i64| {
        while unix_now_us() < t * 1000 {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    for (at, i) in [(0u64, 0u64), (2, 2), (2, 1), (3, 3), (5, 5)] {
        wait_until_ms(ts(at));
        push.send(protocol::encode_frame(ts(i), i, &frames[i as usize]), 0)
            .unwrap();
    }
    push.send(&b"not msgpack"[..], 0).unwrap();
    push.send(protocol::encode_frame(ts(3), 3, b"GIF89a....."), 0)
        .unwrap();
    // Frame 4 shows up after frame 5 was played: late.
    wait_until_ms(ts(5) + 300 + 50);
    push.send(protocol::encode_frame(ts(4), 4, &frames[4]), 0)
        .unwrap();
    wait_end(&pipeline, Duration::from_secs(5)).unwrap();
    let stats = c.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();

    let outs = outs.lock().unwrap().clone();
    let order: Vec<u64> = outs.iter().map(|o| o.index).collect();
    assert_eq!(order, vec![0, 1, 2, 3, 5], "{stats}");
    for o in &outs {
        assert_eq!(o.timestamp_ms, Some(ts(o.index)), "original timestamp kept");
        let late_by_ms = o.arrived_us / 1000 - (ts(o.index) + 300);
        assert!(
            (-2..40).contains(&late_by_ms),
            "frame {} played {late_by_ms} ms off its time",
            o.index
        );
    }
    assert_eq!(stats.get::<u64>("missing").unwrap(), 1, "{stats}");
    assert_eq!(stats.get::<u64>("dropped-late").unwrap(), 1, "{stats}");
    assert_eq!(stats.get::<u64>("dropped-malformed").unwrap(), 1, "{stats}");
    assert_eq!(stats.get::<u64>("dropped-not-jpeg").unwrap(), 1, "{stats}");
}

#[test]
fn worker_source_asks_for_frames_and_survives_bad_jobs() {
    init();
    let frames = jpegs(4);
    let mut primary = FakePrimary::new();
    // jpegdec resets buffer offsets: the index travels on in the frame-index meta.
    let dir = std::env::temp_dir().join(unique("frames"));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = gst::parse::launch(&format!(
        "zmqworkersrc name=w endpoint={} batch-size=2 heartbeat-interval=50 client-name=box \
         frame-folder={} ! jpegdec ! appsink name=out sync=false",
        primary.endpoint,
        dir.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let w = pipeline.by_name("w").unwrap();
    let drains_seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let d = drains_seen.clone();
    pipeline
        .by_name("out")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, move |_, info| {
            if let Some(gst::PadProbeData::Query(q)) = &info.data
                && matches!(q.view(), gst::QueryView::Drain(_))
            {
                d.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            gst::PadProbeReturn::Ok
        });
    let outs = play_recording(&pipeline);

    // Hello before any session, then the session handshake.
    let hello = primary.ready_where(|_| true);
    assert_eq!(
        (hello.session, hello.batch, hello.name.as_str()),
        (0, 2, "box")
    );
    primary.send(&wire::encode_heartbeat(7));
    let r = primary.ready_where(|r| r.session == 7);
    assert_eq!((r.credit, r.taken), (2, 0), "room for one batch");

    // A batch of two frames with their own timestamps.
    primary.job(wire::encode_job(&[
        JobFrame {
            index: 10,
            timestamp_ms: 1_700_000_000_000,
            jpeg: &frames[0],
        },
        JobFrame {
            index: 11,
            timestamp_ms: 1_700_000_000_040,
            jpeg: &frames[1],
        },
    ]));
    let r = primary.ready_where(|r| r.taken == 2);
    assert_eq!(r.credit, 4, "taking frames asks for more");

    // Bad input: dropped, counted, and still credited so the primary keeps sending.
    primary.job(b"\x93\x01".to_vec());
    primary.job(protocol::encode_frame(1, 12, b"not a jpeg at all"));
    let file = dir.join("f.jpg");
    std::fs::write(&file, &frames[2]).unwrap();
    let mut batch = Vec::new();
    rmp::encode::write_map_len(&mut batch, 4).unwrap();
    rmp::encode::write_str(&mut batch, "timestamp").unwrap();
    rmp::encode::write_uint(&mut batch, 1_700_000_000_080).unwrap();
    rmp::encode::write_str(&mut batch, "index").unwrap();
    rmp::encode::write_uint(&mut batch, 13).unwrap();
    rmp::encode::write_str(&mut batch, "frames").unwrap();
    rmp::encode::write_array_len(&mut batch, 2).unwrap();
    rmp::encode::write_str(&mut batch, file.to_str().unwrap()).unwrap();
    // Missing under frame-folder (a path outside it would be refused before any look-up).
    let gone = dir.join("gone.jpg");
    rmp::encode::write_str(&mut batch, gone.to_str().unwrap()).unwrap();
    rmp::encode::write_str(&mut batch, "indices").unwrap();
    rmp::encode::write_array_len(&mut batch, 2).unwrap();
    rmp::encode::write_uint(&mut batch, 13).unwrap();
    rmp::encode::write_uint(&mut batch, 14).unwrap();
    primary.job(batch);
    let r = primary.ready_where(|r| r.taken == 6);
    assert_eq!(r.credit, 8);

    // The input ended on the primary: the worker sends a drain query downstream, through
    // the decoder, so elements holding frames can finish them.
    primary.send(&wire::encode_drain(7));
    let t0 = Instant::now();
    while drains_seen.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "no drain query reached the sink"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = w.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    // Leaving says bye.
    assert!(
        std::iter::from_fn(|| Some(primary.recv()))
            .take(50)
            .any(|m| m == WorkerMsg::Bye)
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let outs = outs.lock().unwrap().clone();
    let got: Vec<(u64, Option<i64>)> = outs.iter().map(|o| (o.index, o.timestamp_ms)).collect();
    assert_eq!(
        got,
        vec![
            (10, Some(1_700_000_000_000)),
            (11, Some(1_700_000_000_040)),
            (13, Some(1_700_000_000_080)),
        ]
    );
    assert_eq!(stats.get::<u64>("dropped-malformed").unwrap(), 1, "{stats}");
    assert_eq!(stats.get::<u64>("dropped-not-jpeg").unwrap(), 1, "{stats}");
    assert_eq!(
        stats.get::<u64>("dropped-missing-file").unwrap(),
        1,
        "{stats}"
    );
    assert_eq!(stats.get::<u64>("sessions").unwrap(), 1, "{stats}");
    assert_eq!(stats.get::<u64>("drains").unwrap(), 1, "{stats}");
}

/// A hand-written worker: a DEALER socket speaking the wire protocol.
fn fake_worker(endpoint: &str) -> (zmq::Context, zmq::Socket) {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_identity(b"fake").unwrap();
    s.set_rcvtimeo(3000).unwrap();
    s.connect(endpoint).unwrap();
    (ctx, s)
}

fn ready(s: &zmq::Socket, session: u64, credit: u64, taken: u64, batch: u32) {
    let r = Ready {
        session,
        credit,
        taken,
        batch,
        name: "fake".into(),
    };
    s.send_multipart(wire::encode_ready(&r), 0).unwrap();
}

#[test]
fn dispatcher_sends_whole_batches_on_credit_only() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=12 ! video/x-raw,width=16,height=16 ! jpegenc \
         ! zmqdispatchsink name=d endpoint=tcp://127.0.0.1:* sync=false max-queue=16",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let d = pipeline.by_name("d").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let endpoint = d.property::<Option<String>>("last-endpoint").unwrap();
    let (_ctx, w) = fake_worker(&endpoint);

    ready(&w, 0, 0, 0, 4);
    let session = loop {
        let parts = w.recv_multipart(0).unwrap();
        if let PrimaryMsg::Heartbeat { session } = wire::decode_primary(&parts).unwrap() {
            break session;
        }
    };
    // The source is held until a worker joined: wait until all 12 frames are queued.
    let t0 = Instant::now();
    while d
        .property::<gst::Structure>("stats")
        .get::<u64>("queue-length")
        .unwrap()
        < 12
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "frames not queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Nothing is sent without credit; then each credit of 4 brings one batch of 4.
    let mut jobs = Vec::new();
    for (credit, taken) in [(4, 0), (8, 4), (12, 8)] {
        ready(&w, session, credit, taken, 4);
        let body = loop {
            let parts = w.recv_multipart(0).unwrap();
            if let PrimaryMsg::Job(body) = wire::decode_primary(&parts).unwrap() {
                break body.to_vec();
            }
        };
        jobs.push(body);
    }
    for (j, body) in jobs.iter().enumerate() {
        let frames = protocol::decode(body).unwrap();
        let indices: Vec<u64> = frames.iter().map(|f| f.index).collect();
        let first = 4 * j as u64;
        assert_eq!(indices, (first..first + 4).collect::<Vec<_>>());
        let ts = wire::batch_timestamps(body).expect("per-frame timestamps");
        assert!(ts.windows(2).all(|p| p[0] <= p[1]));
        assert!((ts[0] - unix_now_us() / 1000).abs() < 5000);
    }
    // Garbage from a peer is counted, not fatal.
    w.send_multipart([b"hello".to_vec()], 0).unwrap();
    let t0 = Instant::now();
    while d
        .property::<gst::Structure>("stats")
        .get::<u64>("malformed")
        .unwrap()
        == 0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "malformed not counted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = d.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("dispatched").unwrap(), 12, "{stats}");
    assert_eq!(stats.get::<u64>("jobs").unwrap(), 3, "{stats}");
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn with_curve_strangers_get_no_frames_and_push_none_in() {
    use i2i_core::curve::{KeyPair, curve_available, make_client};
    if !curve_available() {
        eprintln!("libzmq without CURVE: skipped");
        return;
    }
    init();
    let dir = std::env::temp_dir().join(unique("curve-keys"));
    let primary_keys = KeyPair::generate().unwrap();
    let worker_keys = KeyPair::generate().unwrap();
    let stranger_keys = KeyPair::generate().unwrap();
    primary_keys.write(&dir, "primary").unwrap();
    worker_keys.write(&dir, "worker").unwrap();
    std::fs::create_dir(dir.join("allowed")).unwrap();
    std::fs::copy(dir.join("worker.key"), dir.join("allowed/worker.key")).unwrap();
    stranger_keys.write(&dir, "stranger").unwrap();
    let secret = |name: &str| dir.join(format!("{name}.key_secret")).display().to_string();
    let server = dir.join("primary.key").display().to_string();
    let allowed = dir.join("allowed").display().to_string();
    let on_primary = format!("curve-key={} curve-allow={allowed}", secret("primary"));

    const N: u64 = 40;
    let primary = Primary::new(
        &format!(
            "videotestsrc is-live=true num-buffers={N} pattern=ball \
             ! video/x-raw,width=16,height=16,framerate=30/1 ! jpegenc"
        ),
        &format!("sync=false queue-policy=block {on_primary}"),
        &format!("playout-delay=1500 {on_primary}"),
    );
    let (d, c) = (primary.dispatch_endpoint(), primary.collect_endpoint());
    let worker_desc = |name: &str| {
        let keys = format!("curve-key={} curve-server-key={server}", secret(name));
        format!(
            "zmqworkersrc name=src endpoint={d} client-name={name} heartbeat-interval=100 {keys} \
             ! jpegdec ! videoflip method=horizontal-flip ! jpegenc \
             ! zmqmsgpacksink endpoint={c} bind=false socket-type=push sync=false {keys}"
        )
    };
    let stranger = gst::parse::launch(&worker_desc("stranger"))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    stranger.set_state(gst::State::Playing).unwrap();
    let stranger_src = stranger.by_name("src").unwrap();

    // A stranger pushing results straight into the collector, and a plain-text one.
    let ctx = zmq::Context::new();
    let jpeg = jpegs(1).remove(0);
    let mut pushers = Vec::new();
    for keys in [Some(&stranger_keys), None] {
        let s = ctx.socket(zmq::PUSH).unwrap();
        s.set_linger(0).unwrap();
        if let Some(k) = keys {
            make_client(&s, k, &primary_keys.public).unwrap();
        }
        s.connect(&c).unwrap();
        for i in 0..20 {
            s.send(
                protocol::encode_frame(unix_now_us() / 1000, 1000 + i, &jpeg),
                zmq::DONTWAIT,
            )
            .ok();
        }
        pushers.push(s);
    }
    primary.play();
    // Nothing is dispatched to the stranger: block holds the source until a worker joins.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(primary.dispatch_stats().get::<u64>("workers").unwrap(), 0);

    let worker = gst::parse::launch(&worker_desc("worker"))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    worker.set_state(gst::State::Playing).unwrap();
    // An allowed peer's bad frame is dropped and counted; the output goes on.
    let friend = ctx.socket(zmq::PUSH).unwrap();
    friend.set_linger(0).unwrap();
    make_client(&friend, &worker_keys, &primary_keys.public).unwrap();
    friend.connect(&c).unwrap();
    friend
        .send(
            protocol::encode_frame(unix_now_us() / 1000, 3, b"GIF89a not a jpeg"),
            0,
        )
        .unwrap();

    assert!(primary.wait_eos(Duration::from_secs(60)), "no EOS");
    let stranger_stats = stranger_src.property::<gst::Structure>("stats");
    stranger.set_state(gst::State::Null).unwrap();
    worker.set_state(gst::State::Null).unwrap();
    let outs = primary.outs.lock().unwrap().clone();
    assert_in_order(&outs);
    let indices: Vec<u64> = outs.iter().map(|o| o.index).collect();
    let cstats = primary.collect_stats();
    assert_eq!(indices, (0..N).collect::<Vec<_>>(), "{cstats}");
    assert_eq!(
        cstats.get::<u64>("dropped-not-jpeg").unwrap(),
        1,
        "{cstats}"
    );
    assert!(cstats.get::<u64>("refused").unwrap() >= 2, "{cstats}");
    let dstats = primary.dispatch_stats();
    assert!(dstats.get::<u64>("refused").unwrap() >= 1, "{dstats}");
    assert_eq!(primary.worker_events("joined"), vec!["worker".to_string()]);
    assert_eq!(stranger_stats.get::<u64>("frames-in").unwrap(), 0);
    assert!(
        stranger_stats.get::<u64>("refused").unwrap() >= 1,
        "{stranger_stats}"
    );
    let warnings = primary.warnings.lock().unwrap().join("\n");
    assert!(warnings.contains(&stranger_keys.public), "{warnings}");
    std::fs::remove_dir_all(&dir).unwrap();
}
