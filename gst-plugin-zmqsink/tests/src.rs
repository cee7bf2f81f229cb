// SPDX-License-Identifier: MPL-2.0
//! zmqmsgpacksrc on real sockets (127.0.0.1, ephemeral ports).

mod common;

use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use i2i_core::protocol;

const T: Duration = Duration::from_secs(5);

fn map(b: &gst::Buffer) -> Vec<u8> {
    b.map_readable().unwrap().to_vec()
}

#[test]
fn frames_and_batches_become_buffers() {
    // Batch paths are read only under frame-folder.
    let dir = std::env::temp_dir().join(format!("zmqmsgpacksrc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut h, src, _bus, ep) = bound_src(&[
        ("framerate", "30/1"),
        ("frame-folder", dir.to_str().unwrap()),
    ]);
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &ep);

    let a = make_jpeg(64, 48, 1);
    push.send(protocol::encode_frame(1_700_000_000_123, 7, &a), 0)
        .unwrap();
    let b = pull_timeout(&mut h, T).expect("a buffer");
    assert_eq!(b.offset(), 7);
    assert_eq!(unix_meta_ns(&b), Some(1_700_000_000_123_000_000));
    assert_eq!(map(&b), a);
    assert!(b.pts().is_some());
    assert_eq!(b.duration(), Some(gst::ClockTime::SECOND / 30));
    assert!(b.flags().contains(gst::BufferFlags::DISCONT));

    // A batch: two JPEGs in the message and one as a path; the size change gives new caps.
    let c = make_jpeg(32, 24, 2);
    let d = make_jpeg(32, 24, 3);
    let e = make_jpeg(40, 30, 4);
    let path = dir.join("e.jpg");
    std::fs::write(&path, &e).unwrap();
    let mut msg = Vec::new();
    rmp::encode::write_map_len(&mut msg, 4).unwrap();
    rmp::encode::write_str(&mut msg, "timestamp").unwrap();
    rmp::encode::write_sint(&mut msg, 1_700_000_001_000).unwrap();
    rmp::encode::write_str(&mut msg, "index").unwrap();
    rmp::encode::write_uint(&mut msg, 10).unwrap();
    rmp::encode::write_str(&mut msg, "frames").unwrap();
    rmp::encode::write_array_len(&mut msg, 3).unwrap();
    rmp::encode::write_bin(&mut msg, &c).unwrap();
    rmp::encode::write_bin(&mut msg, &d).unwrap();
    rmp::encode::write_str(&mut msg, path.to_str().unwrap()).unwrap();
    rmp::encode::write_str(&mut msg, "indices").unwrap();
    rmp::encode::write_array_len(&mut msg, 3).unwrap();
    for i in [10u64, 11, 12] {
        rmp::encode::write_uint(&mut msg, i).unwrap();
    }
    push.send(msg, 0).unwrap();
    let mut last_pts = b.pts().unwrap();
    for (index, jpeg) in [(10, &c), (11, &d), (12, &e)] {
        let b = pull_timeout(&mut h, T).expect("a batch buffer");
        assert_eq!(b.offset(), index);
        assert_eq!(&map(&b), jpeg);
        assert_eq!(unix_meta_ns(&b), Some(1_700_000_001_000_000_000));
        assert!(b.pts().unwrap() >= last_pts);
        last_pts = b.pts().unwrap();
    }
    // Caps follow the JPEG headers: a new caps event when the size changes, not per frame.
    let mut sizes = Vec::new();
    while let Some(ev) = h.try_pull_event() {
        if let gst::EventView::Caps(c) = ev.view() {
            let s = c.caps().structure(0).unwrap();
            assert_eq!(s.name(), "image/jpeg");
            assert_eq!(
                s.get::<gst::Fraction>("framerate").unwrap(),
                gst::Fraction::new(30, 1)
            );
            sizes.push((
                s.get::<i32>("width").unwrap(),
                s.get::<i32>("height").unwrap(),
            ));
        }
    }
    assert_eq!(sizes, vec![(64, 48), (32, 24), (40, 30)]);
    std::fs::remove_dir_all(&dir).ok();

    let stats = src.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames").unwrap(), 4);
    assert_eq!(
        stats.get::<u64>("bytes").unwrap(),
        (a.len() + c.len() + d.len() + e.len()) as u64
    );
    assert_eq!(stats.get::<u64>("dropped").unwrap(), 0);
}

#[test]
fn latency_query_answers_live() {
    let (h, _src, _bus, _ep) = bound_src(&[]);
    let mut q = gst::query::Latency::new();
    assert!(h.sinkpad().unwrap().peer_query(&mut q));
    let (live, min, _max) = q.result();
    assert!(live);
    assert_eq!(min, gst::ClockTime::ZERO);
}

#[test]
fn bad_input_is_reported_counted_and_skipped() {
    let max = 100_000i64;
    let dir = std::env::temp_dir().join(format!("zmqmsgpacksrc-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut h, src, bus, ep) = bound_src(&[
        ("max-message-size", &max.to_string()),
        ("frame-folder", dir.to_str().unwrap()),
    ]);
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &ep);
    let good = make_jpeg(16, 16, 9);
    let not_jpeg_file = dir.join("notes.txt");
    std::fs::write(
        &not_jpeg_file,
        b"these are not the pixels you are looking for",
    )
    .unwrap();
    let big_file = dir.join("big.jpg");
    let mut big = make_jpeg(16, 16, 1);
    big.resize(max as usize + 10, 0);
    std::fs::write(&big_file, &big).unwrap();
    let missing = dir.join("missing.jpg");

    let mut wrong_types = Vec::new();
    rmp::encode::write_array_len(&mut wrong_types, 3).unwrap();
    rmp::encode::write_str(&mut wrong_types, "yesterday").unwrap();
    rmp::encode::write_uint(&mut wrong_types, 1).unwrap();
    rmp::encode::write_bin(&mut wrong_types, &good).unwrap();

    let cases: Vec<(&str, Vec<Vec<u8>>, &str, &str)> = vec![
        (
            "not msgpack",
            vec![b"\xc4\xff only a few bytes".to_vec()],
            "dropped-malformed",
            "not a msgpack message",
        ),
        (
            "wrong shape",
            vec![vec![0x92, 0x01, 0x02]],
            "dropped-malformed",
            "array of 2",
        ),
        (
            "wrong types",
            vec![wrong_types],
            "dropped-malformed",
            "timestamp (element 0)",
        ),
        (
            "not a JPEG",
            vec![protocol::encode_frame(1, 5, b"GIF89a\x01\x00\x01\x00")],
            "dropped-not-jpeg",
            "not a JPEG",
        ),
        (
            "JPEG marker, broken header",
            vec![protocol::encode_frame(
                1,
                5,
                &[0xff, 0xd8, 0xff, 0xe0, 0, 0, 1, 2, 3],
            )],
            "dropped-not-jpeg",
            "does not decode",
        ),
        (
            "missing path",
            vec![batch_with_path(missing.to_str().unwrap(), 5)],
            "dropped-missing-file",
            "missing.jpg",
        ),
        (
            "path to a non-JPEG",
            vec![batch_with_path(not_jpeg_file.to_str().unwrap(), 5)],
            "dropped-not-jpeg",
            "notes.txt",
        ),
        (
            "path to a file over max-message-size",
            vec![batch_with_path(big_file.to_str().unwrap(), 5)],
            "dropped-oversize",
            "max-message-size",
        ),
        (
            "multipart",
            vec![b"part one".to_vec(), b"part two".to_vec()],
            "dropped-malformed",
            "multipart",
        ),
    ];

    let mut index = 100u64;
    for (what, parts, counter, expected) in cases {
        // Warnings are rate-limited to one a second: let the interval pass, so each case
        // has its own.
        std::thread::sleep(Duration::from_millis(1100));
        let before = stats_u64(&src, counter);
        let dropped_before = stats_u64(&src, "dropped");
        let n = parts.len();
        for (i, p) in parts.into_iter().enumerate() {
            let flags = if i + 1 < n { zmq::SNDMORE } else { 0 };
            push.send(p, flags).unwrap();
        }
        index += 1;
        push.send(protocol::encode_frame(1, index, &good), 0)
            .unwrap();
        let b = pull_timeout(&mut h, T).unwrap_or_else(|| panic!("{what}: stream stopped"));
        assert_eq!(b.offset(), index, "{what}: the next good frame");
        let warning = next_warning(&bus, T).unwrap_or_else(|| panic!("{what}: no warning"));
        assert!(warning.contains(expected), "{what}: warning {warning:?}");
        assert_eq!(stats_u64(&src, counter), before + 1, "{what}: {counter}");
        assert_eq!(
            stats_u64(&src, "dropped"),
            dropped_before + 1,
            "{what}: dropped"
        );
        assert!(
            h.try_pull().is_none(),
            "{what}: a bad message made a buffer"
        );
    }

    // A message over max-message-size never reaches the element: ZeroMQ closes the
    // connection. The monitor sees it; the sender reconnects and the stream goes on.
    push.send(
        protocol::encode_frame(1, 1, &vec![0u8; max as usize * 2]),
        0,
    )
    .unwrap();
    let deadline = Instant::now() + T;
    while stats_u64(&src, "disconnects") == 0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection was not counted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        index += 1;
        push.send(protocol::encode_frame(1, index, &good), 0)
            .unwrap();
        if let Some(b) = pull_timeout(&mut h, Duration::from_millis(300)) {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "no frame after the oversize message"
        );
    };
    assert!(got.offset() <= index && got.offset() > 109);
    std::fs::remove_dir_all(&dir).ok();
}

fn time_to_null(launch: &str) -> Duration {
    init();
    let pipeline = gst::parse::launch(launch).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    // Let the source's thread reach its blocking wait.
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    start.elapsed()
}

#[test]
fn going_to_null_while_blocked_in_receive_is_prompt() {
    for launch in [
        "zmqmsgpacksrc socket-type=pull bind=true endpoint=tcp://127.0.0.1:* ! fakesink",
        // SUB connecting to nobody.
        "zmqmsgpacksrc endpoint=tcp://127.0.0.1:9 ! fakesink",
    ] {
        let took = time_to_null(launch);
        eprintln!("{launch}: to NULL in {took:?}");
        assert!(took < Duration::from_millis(200), "{launch}: {took:?}");
    }
}

#[test]
fn sub_receives_from_a_publisher() {
    init();
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.set_linger(0).unwrap();
    publisher.bind("tcp://127.0.0.1:*").unwrap();
    let ep = publisher.get_last_endpoint().unwrap().unwrap();
    let src = gst::ElementFactory::make("zmqmsgpacksrc")
        .property("endpoint", &ep)
        .build()
        .unwrap();
    let mut h = gst_check::Harness::with_element(&src, None, Some("src"));
    h.play();
    let jpeg = make_jpeg(16, 8, 0);
    // A subscription takes a moment to arrive: publish until something comes out.
    let deadline = Instant::now() + T;
    let mut i = 0u64;
    let b = loop {
        publisher
            .send(protocol::encode_frame(5, i, &jpeg), 0)
            .unwrap();
        i += 1;
        if let Some(b) = pull_timeout(&mut h, Duration::from_millis(50)) {
            break b;
        }
        assert!(Instant::now() < deadline, "no frame through SUB");
    };
    assert!(b.offset() < i);
    assert_eq!(map(&b), jpeg);
}

#[test]
fn pause_and_resume_keeps_receiving() {
    let (mut h, src, _bus, ep) = bound_src(&[]);
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &ep);
    let jpeg = make_jpeg(16, 16, 1);
    push.send(protocol::encode_frame(1, 1, &jpeg), 0).unwrap();
    assert_eq!(pull_timeout(&mut h, T).expect("first").offset(), 1);
    src.set_state(gst::State::Paused).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    src.set_state(gst::State::Playing).unwrap();
    push.send(protocol::encode_frame(1, 2, &jpeg), 0).unwrap();
    assert_eq!(pull_timeout(&mut h, T).expect("after resume").offset(), 2);
}
