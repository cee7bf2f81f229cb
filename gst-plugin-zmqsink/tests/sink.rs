// SPDX-License-Identifier: MPL-2.0
//! zmqmsgpacksink on real sockets (127.0.0.1, ephemeral ports).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use i2i_core::protocol::{self, Payload};

fn decode_one(msg: &[u8]) -> (i64, u64, Vec<u8>) {
    let frames = protocol::decode(msg).expect("a frame message");
    assert_eq!(frames.len(), 1);
    let f = &frames[0];
    match &f.jpeg {
        Payload::Bytes(b) => (f.timestamp_ms, f.index, b.to_vec()),
        Payload::Path(p) => panic!("path {p} in a sink message"),
    }
}

fn sink_harness(props: &[(&str, &str)]) -> (gst_check::Harness, gst::Element) {
    init();
    let sink = gst::ElementFactory::make("zmqmsgpacksink")
        .property("sync", false)
        .build()
        .unwrap();
    for (k, v) in props {
        sink.set_property_from_str(k, v);
    }
    let h = gst_check::Harness::with_element(&sink, Some("sink"), None);
    (h, sink)
}

#[test]
fn jpeg_goes_out_as_is_with_index_and_timestamp() {
    let ctx = zmq::Context::new();
    let (pull, ep) = bound_pull(&ctx);
    let (mut h, sink) = sink_harness(&[
        ("socket-type", "push"),
        ("bind", "false"),
        ("endpoint", &ep),
    ]);
    h.set_src_caps_str("image/jpeg");

    let a = make_jpeg(64, 48, 1);
    let b = make_jpeg(32, 16, 2);
    let c = make_jpeg(16, 16, 3);
    let original_ns = 1_700_000_000_123_000_000u64;
    h.push(jpeg_buffer(&a, Some(42), Some(original_ns)))
        .unwrap();
    h.push(jpeg_buffer(&b, None, None)).unwrap();
    h.push(jpeg_buffer(&c, Some(7), None)).unwrap();
    // Byte positions (as multifilesrc sets them: offset_end - offset = size) are not frame
    // numbers: the count is used (fourth frame: 3).
    let mut d = jpeg_buffer(&a, Some(123_456), None);
    d.get_mut()
        .unwrap()
        .set_offset_end(123_456 + a.len() as u64);
    h.push(d).unwrap();

    let t = Duration::from_secs(5);
    let m1 = decode_one(&recv_timeout(&pull, t).expect("first frame"));
    let m2 = decode_one(&recv_timeout(&pull, t).expect("second frame"));
    let m3 = decode_one(&recv_timeout(&pull, t).expect("third frame"));
    // The meta's original time, in ms; the offset as index; the bytes untouched.
    assert_eq!(m1, (1_700_000_000_123, 42, a.clone()));
    // No offset: the count of frames seen (this is the second, so 1). No meta and no
    // timestamp: the time it entered, i.e. about now.
    assert_eq!((m2.1, &m2.2), (1, &b));
    assert!(
        (unix_now_ms() - m2.0).abs() < 2000,
        "timestamp {} not now",
        m2.0
    );
    assert_eq!((m3.1, &m3.2), (7, &c));
    let m4 = decode_one(&recv_timeout(&pull, t).expect("fourth frame"));
    assert_eq!((m4.1, &m4.2), (3, &a));

    let stats = sink.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames").unwrap(), 4);
    assert_eq!(stats.get::<u64>("dropped").unwrap(), 0);
    let sent: u64 = [&m1.2, &m2.2, &m3.2, &m4.2]
        .iter()
        .map(|j| protocol::encode_frame(0, 0, j).len() as u64)
        .sum();
    // Sizes of the messages as sent (headers of the real timestamps are larger).
    assert!(stats.get::<u64>("bytes").unwrap() >= sent);
}

#[test]
fn running_time_becomes_unix_time() {
    // A buffer whose running time is 300 ms before the clock's now entered 300 ms ago.
    let ctx = zmq::Context::new();
    let (pull, ep) = bound_pull(&ctx);
    let (mut h, sink) = sink_harness(&[
        ("socket-type", "push"),
        ("bind", "false"),
        ("endpoint", &ep),
    ]);
    h.use_systemclock();
    h.set_src_caps_str("image/jpeg");
    h.play();
    let clock = sink.clock().expect("a clock");
    let base = sink.base_time().expect("a base time");
    let now_running = clock.time() - base;
    let pts = now_running.saturating_sub(gst::ClockTime::from_mseconds(300));
    let mut buffer = jpeg_buffer(&make_jpeg(16, 16, 0), None, None);
    buffer.get_mut().unwrap().set_pts(pts);
    let before = unix_now_ms();
    h.push(buffer).unwrap();
    let (ts, _, _) = decode_one(&recv_timeout(&pull, Duration::from_secs(5)).unwrap());
    let age = before - ts;
    assert!(
        (250..=400).contains(&age),
        "frame entered {age} ms ago, expected ~300"
    );
}

fn raw_pipeline(format: &str, w: usize, h: usize, ep: &str) -> (gst::Pipeline, gst_app::AppSrc) {
    init();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width={w},height={h},framerate=30/1 \
         ! videoconvert ! video/x-raw,format={format} \
         ! zmqmsgpacksink socket-type=push bind=false endpoint={ep} sync=false quality=95"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    (pipeline, src)
}

#[test]
fn raw_video_is_encoded_to_the_right_size_and_colours() {
    // Odd sizes exercise the chroma rounding and padding of the YUV path.
    for (format, w, h) in [
        ("RGB", 64, 48),
        ("RGBx", 64, 48),
        ("BGRA", 64, 48),
        ("BGR", 50, 30),
        ("I420", 64, 48),
        ("I420", 33, 17),
        ("NV12", 64, 48),
        ("NV12", 35, 21),
        ("GRAY8", 64, 48),
    ] {
        let ctx = zmq::Context::new();
        let (pull, ep) = bound_pull(&ctx);
        let (pipeline, src) = raw_pipeline(format, w, h, &ep);
        pipeline.set_state(gst::State::Playing).unwrap();
        let rgb = rgb_picture(w, h, 5);
        // Rows at GStreamer's stride for RGB (a multiple of 4).
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w as u32, h as u32)
            .build()
            .unwrap();
        let stride = info.stride()[0] as usize;
        let mut data = vec![0u8; info.size()];
        for y in 0..h {
            data[y * stride..y * stride + w * 3].copy_from_slice(&rgb[y * w * 3..(y + 1) * w * 3]);
        }
        let mut buffer = gst::Buffer::from_slice(data);
        buffer.get_mut().unwrap().set_pts(gst::ClockTime::ZERO);
        src.push_buffer(buffer).unwrap();
        let msg = recv_timeout(&pull, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{format} {w}x{h}: no message"));
        pipeline.set_state(gst::State::Null).unwrap();
        let (_, index, jpeg) = decode_one(&msg);
        assert_eq!(index, 0, "{format}");
        let header = turbojpeg::read_header(&jpeg).unwrap();
        assert_eq!((header.width, header.height), (w, h), "{format}");
        let out = turbojpeg::decompress(&jpeg, turbojpeg::PixelFormat::RGB).unwrap();
        let (mut sum, mut max, mut n) = (0i64, 0i32, 0i64);
        for y in 0..h {
            for x in 0..w {
                let o = &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
                let d = &out.pixels[y * out.pitch + x * 3..y * out.pitch + x * 3 + 3];
                if format == "GRAY8" {
                    let luma = (0.299 * o[0] as f64 + 0.587 * o[1] as f64 + 0.114 * o[2] as f64)
                        .round() as i32;
                    for c in d {
                        let e = (*c as i32 - luma).abs();
                        sum += e as i64;
                        max = max.max(e);
                        n += 1;
                    }
                } else {
                    for c in 0..3 {
                        let e = (o[c] as i32 - d[c] as i32).abs();
                        sum += e as i64;
                        max = max.max(e);
                        n += 1;
                    }
                }
            }
        }
        let mean = sum as f64 / n as f64;
        // Chroma subsampling and the odd edges cost a little; a wrong range or stride
        // costs tens on average.
        assert!(
            mean < 4.0 && max < 48,
            "{format} {w}x{h}: mean error {mean:.2}, max {max}"
        );
    }
}

#[test]
fn push_waits_for_a_slow_puller_then_goes_on() {
    init();
    let ctx = zmq::Context::new();
    // A small, fixed kernel receive buffer (no autotuning up to tens of MB), so a reader
    // that does not read fills the way quickly.
    let pull = ctx.socket(zmq::PULL).unwrap();
    pull.set_rcvhwm(1).unwrap();
    pull.set_rcvbuf(128 * 1024).unwrap();
    pull.set_linger(0).unwrap();
    pull.bind("tcp://127.0.0.1:*").unwrap();
    let ep = pull.get_last_endpoint().unwrap().unwrap();
    let frame = vec![0xabu8; 512 * 1024];
    const N: usize = 60;
    let pushed = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let t = {
        let pushed = pushed.clone();
        let ep = ep.clone();
        let frame = frame.clone();
        std::thread::spawn(move || {
            let (mut h, sink) = sink_harness(&[
                ("socket-type", "push"),
                ("bind", "false"),
                ("endpoint", &ep),
                ("send-hwm", "1"),
                ("linger-timeout", "0"),
            ]);
            tx.send(sink).unwrap();
            h.set_src_caps_str("image/jpeg");
            for i in 0..N {
                h.push(jpeg_buffer(&frame, Some(i as u64), None)).unwrap();
                pushed.fetch_add(1, Ordering::SeqCst);
            }
            // Returned, not dropped: stopping with linger-timeout=0 would discard frames still queued.
            h
        })
    };
    let _sink = rx.recv().unwrap();
    // Nobody reads: the socket buffers fill and the sink stops taking frames.
    std::thread::sleep(Duration::from_millis(1000));
    let stalled_at = pushed.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        pushed.load(Ordering::SeqCst),
        stalled_at,
        "the sink did not wait"
    );
    assert!(
        stalled_at < N,
        "all {N} frames went out with nobody reading"
    );

    // Reading lets it go on; every frame arrives, in order.
    for i in 0..N {
        let msg = recv_timeout(&pull, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("frame {i} missing"));
        let (_, index, jpeg) = decode_one(&msg);
        assert_eq!(index, i as u64);
        assert_eq!(jpeg.len(), frame.len());
    }
    let _h = t.join().unwrap();
    assert_eq!(pushed.load(Ordering::SeqCst), N);
}

#[test]
fn state_change_ends_a_blocked_push() {
    init();
    // A PUSH socket with no puller at all waits for one: going to NULL must end that.
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let (mut h, sink) = sink_harness(&[
            ("socket-type", "push"),
            ("endpoint", "tcp://127.0.0.1:*"),
            ("linger-timeout", "0"),
        ]);
        tx.send(sink).unwrap();
        h.set_src_caps_str("image/jpeg");
        h.push(jpeg_buffer(&make_jpeg(16, 16, 0), None, None))
    });
    let sink = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!t.is_finished(), "push returned with nobody to send to");
    let start = Instant::now();
    sink.set_state(gst::State::Null).unwrap();
    let result = t.join().unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_millis(200), "took {took:?}");
    assert_eq!(result, Err(gst::FlowError::Flushing));
}

/// A SUB socket connected to `ep` with a receive high-water mark of `rcvhwm`, once the
/// sink has seen its subscription (frames pushed until one arrives).
fn subscribed(
    ctx: &zmq::Context,
    h: &mut gst_check::Harness,
    sink: &gst::Element,
    ep: &str,
    rcvhwm: i32,
) -> zmq::Socket {
    let subscribers0 = stats_u64(sink, "subscribers");
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvhwm(rcvhwm).unwrap();
    sub.set_linger(0).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub.connect(ep).unwrap();
    let small = make_jpeg(16, 16, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        h.push(jpeg_buffer(&small, None, None)).unwrap();
        if stats_u64(sink, "subscribers") > subscribers0
            && recv_timeout(&sub, Duration::from_millis(50)).is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(Instant::now() < deadline, "subscriber never got a frame");
    }
    while recv_timeout(&sub, Duration::from_millis(100)).is_some() {}
    sub
}

#[test]
fn a_slow_subscriber_loses_only_its_own_frames() {
    let ctx = zmq::Context::new();
    let (mut h, sink) = sink_harness(&[("endpoint", "tcp://127.0.0.1:*"), ("send-hwm", "2")]);
    h.set_src_caps_str("image/jpeg");
    let small = make_jpeg(16, 16, 0);
    // Before anyone subscribes: sent to no one, and counted as such.
    for _ in 0..3 {
        h.push(jpeg_buffer(&small, None, None)).unwrap();
    }
    assert_eq!(stats_u64(&sink, "no-subscriber"), 3);
    assert_eq!(stats_u64(&sink, "subscribers"), 0);

    let ep = sink.property::<Option<String>>("last-endpoint").unwrap();
    // One viewer that never reads, one that reads every frame.
    let slow = subscribed(&ctx, &mut h, &sink, &ep, 1);
    let fast = subscribed(&ctx, &mut h, &sink, &ep, 1);
    assert_eq!(stats_u64(&sink, "subscribers"), 2);
    let frames0 = stats_u64(&sink, "frames");

    // 200 frames of 256 KiB overflow every buffer on the slow viewer's way many times
    // over. The sink never waits for it, and the reading viewer gets each frame.
    const N: u64 = 200;
    let mut big = vec![0x5au8; 256 * 1024];
    for i in 0..N {
        big[0] = i as u8;
        h.push(jpeg_buffer(&big, Some(1000 + i), None)).unwrap();
        let msg = recv_timeout(&fast, Duration::from_secs(10)).unwrap_or_else(|| {
            panic!("the reading viewer did not get frame {i}: the slow one held it back")
        });
        let (_, index, jpg) = decode_one(&msg);
        assert_eq!((index, jpg[0]), (1000 + i, i as u8));
    }
    assert_eq!(stats_u64(&sink, "frames") - frames0, N);
    assert_eq!(stats_u64(&sink, "dropped"), 0);

    // The slow viewer lost frames of its own, in order, with gaps in the index.
    let mut received = 0u64;
    let mut last = None;
    while let Some(msg) = recv_timeout(&slow, Duration::from_millis(1000)) {
        let (_, index, jpg) = decode_one(&msg);
        // The small frames sent while the other one subscribed are numbered by the sink's
        // own count: only the big ones are the frames under test.
        if jpg.len() != big.len() {
            continue;
        }
        assert!(
            last.is_none_or(|l| index > l),
            "out of order: {index} after {last:?}"
        );
        last = Some(index);
        received += 1;
    }
    assert!(
        received < N,
        "the slow viewer got all {N} frames: nothing overflowed"
    );

    // A viewer that leaves is no longer counted.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats_u64(&sink, "subscribers") != 1 {
        h.push(jpeg_buffer(&small, None, None)).unwrap();
        assert!(
            Instant::now() < deadline,
            "the leaving subscriber stays counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_endpoint_in_use_is_named_in_the_error() {
    init();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=1 ! zmqmsgpacksink endpoint={endpoint}"
    ))
    .unwrap();
    let bus = pipeline.bus().unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("an error");
    pipeline.set_state(gst::State::Null).unwrap();
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    let text = e.error().to_string();
    assert!(text.contains(&endpoint), "{text}");
    assert!(text.to_lowercase().contains("in use"), "{text}");

    // A malformed endpoint is named too.
    let sink = gst::ElementFactory::make("zmqmsgpacksink")
        .property("endpoint", "nonsense")
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    sink.set_bus(Some(&bus));
    assert!(sink.set_state(gst::State::Paused).is_err());
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])
        .expect("an error");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    assert!(e.error().to_string().contains("nonsense"), "{}", e.error());
    sink.set_state(gst::State::Null).unwrap();
}

#[test]
fn a_push_blocked_across_pause_and_resume_still_delivers() {
    init();
    let ctx = zmq::Context::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let (mut h, sink) = sink_harness(&[
            ("socket-type", "push"),
            ("endpoint", "tcp://127.0.0.1:*"),
            ("linger-timeout", "0"),
        ]);
        tx.send(sink).unwrap();
        h.set_src_caps_str("image/jpeg");
        let r = h.push(jpeg_buffer(&make_jpeg(16, 16, 0), Some(3), None));
        (r, h)
    });
    let sink = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // PLAYING -> PAUSED unlocks the blocked send; the frame waits in preroll, then goes
    // on once PLAYING again and a puller is there.
    sink.set_state(gst::State::Paused).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!t.is_finished());
    sink.set_state(gst::State::Playing).unwrap();
    let ep = sink.property::<Option<String>>("last-endpoint").unwrap();
    let pull = ctx.socket(zmq::PULL).unwrap();
    pull.set_linger(0).unwrap();
    pull.connect(&ep).unwrap();
    let msg = recv_timeout(&pull, Duration::from_secs(5)).expect("the frame after resume");
    assert_eq!(decode_one(&msg).1, 3);
    let (r, _h) = t.join().unwrap();
    assert_eq!(r, Ok(gst::FlowSuccess::Ok));
}
