// SPDX-License-Identifier: MPL-2.0
//! What strangers can send to the sources, on real sockets (127.0.0.1, ephemeral ports):
//! a corrupted JPEG, a header that declares a huge frame, batch paths to files that are
//! not frames (a FIFO, /etc/passwd, /dev/zero), a message of millions of tiny values, and
//! senders that come and go. Each is dropped, counted and reported; the stream goes on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use i2i_core::protocol;

const T: Duration = Duration::from_secs(10);

/// Sends `bad`, then good frames `first..first + n`; all good ones must come out in order.
fn good_frames_follow(
    h: &mut gst_check::Harness,
    push: &zmq::Socket,
    bad: Vec<u8>,
    first: u64,
    n: u64,
) {
    let good = make_jpeg(64, 48, 3);
    push.send(bad, 0).unwrap();
    for i in first..first + n {
        push.send(protocol::encode_frame(1, i, &good), 0).unwrap();
    }
    for i in first..first + n {
        let b = pull_timeout(h, T).unwrap_or_else(|| panic!("good frame {i} did not come out"));
        assert_eq!(b.offset(), i);
    }
}

#[test]
fn a_corrupted_jpeg_does_not_poison_later_frames() {
    let (mut h, src, bus, ep) = bound_src(&[]);
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &ep);
    let bad = corrupt_huffman(&make_jpeg(64, 48, 1));
    good_frames_follow(&mut h, &push, protocol::encode_frame(1, 0, &bad), 1, 50);
    assert_eq!(stats_u64(&src, "dropped-not-jpeg"), 1);
    let w = next_warning(&bus, T).expect("a warning for the bad frame");
    assert!(w.contains("frame 0"), "{w}");
    // Again, interleaved: every good frame after each bad one.
    for round in 0..5u64 {
        let bad = protocol::encode_frame(1, 1000 + round, &bad);
        good_frames_follow(&mut h, &push, bad, 100 + round * 10, 10);
    }
    assert_eq!(stats_u64(&src, "dropped-not-jpeg"), 6);
    assert_eq!(stats_u64(&src, "frames"), 100);
}

#[test]
fn a_header_that_declares_a_huge_frame_is_dropped_and_counted() {
    init();
    // Through jpegdec, as a viewer runs it: the bomb never reaches the decoder.
    let pipeline = gst::parse::launch(
        "zmqmsgpacksrc name=s socket-type=pull bind=true endpoint=tcp://127.0.0.1:* \
         ! jpegdec ! appsink name=out sync=false",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("s").unwrap();
    let out = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let ep = src.property::<Option<String>>("last-endpoint").unwrap();
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &ep);
    let good = make_jpeg(64, 48, 2);
    let bus = pipeline.bus().unwrap();
    for (k, (w, h)) in [(60000u16, 60000u16), (20000, 20000)]
        .into_iter()
        .enumerate()
    {
        push.send(
            protocol::encode_frame(1, k as u64, &with_size(&good, w, h)),
            0,
        )
        .unwrap();
    }
    for i in 10..20 {
        push.send(protocol::encode_frame(1, i, &good), 0).unwrap();
    }
    for i in 10..20u64 {
        let s = out
            .try_pull_sample(gst::ClockTime::from_seconds(10))
            .unwrap_or_else(|| panic!("frame {i} did not come out"));
        let b = s.buffer().unwrap();
        assert_eq!(gstzmqsink::frame_index::index_of(b), Some(i));
    }
    assert_eq!(stats_u64(&src, "dropped-oversize"), 2);
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(5),
            &[gst::MessageType::Warning, gst::MessageType::Error],
        )
        .expect("a warning");
    match msg.view() {
        gst::MessageView::Warning(w) => {
            let text = w.error().to_string();
            assert!(
                text.contains("60000x60000") && text.contains("max-pixels"),
                "{text}"
            );
        }
        other => panic!("expected a warning, got {other:?}"),
    }
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn batch_paths_are_read_only_under_frame_folder_never_blocking() {
    let dir = std::env::temp_dir().join(format!("zmq-bad-paths-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good = make_jpeg(64, 48, 4);
    std::fs::write(dir.join("ok.jpg"), &good).unwrap();
    let fifo = dir.join("fifo.jpg");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o600) }, 0);

    // Without frame-folder, no path is read.
    {
        let (mut h, src, bus, ep) = bound_src(&[]);
        let ctx = zmq::Context::new();
        let push = pusher(&ctx, &ep);
        let ok = dir.join("ok.jpg");
        good_frames_follow(
            &mut h,
            &push,
            batch_with_path(ok.to_str().unwrap(), 0),
            1,
            3,
        );
        assert_eq!(stats_u64(&src, "dropped-refused-path"), 1);
        let w = next_warning(&bus, T).expect("a warning");
        assert!(w.contains("frame-folder"), "{w}");
    }
    let (mut h, src, _bus, ep) = bound_src(&[("frame-folder", dir.to_str().unwrap())]);
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &ep);
    let started = Instant::now();
    let mut next = 10;
    for p in [
        fifo.to_str().unwrap(),
        "/etc/passwd",
        "/dev/zero",
        "../../etc/passwd",
    ] {
        good_frames_follow(&mut h, &push, batch_with_path(p, 0), next, 2);
        next += 2;
    }
    // The FIFO did not block the stream (a plain open waits for a writer forever).
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(stats_u64(&src, "dropped-refused-path"), 4);
    // A file under the folder is read.
    push.send(batch_with_path("ok.jpg", 77), 0).unwrap();
    let b = pull_timeout(&mut h, T).expect("the file's frame");
    assert_eq!(b.offset(), 77);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_flood_of_tiny_msgpack_values_is_refused_at_once() {
    let (mut h, src, _bus, ep) = bound_src(&[]);
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &ep);
    // 30 MB of one-byte values: a generic decoder builds about 1 GB of values from it.
    let n = 30_000_000u32;
    let mut flood = Vec::new();
    rmp::encode::write_array_len(&mut flood, n).unwrap();
    flood.resize(flood.len() + n as usize, 0x01);
    good_frames_follow(&mut h, &push, flood, 1, 5);
    assert_eq!(stats_u64(&src, "dropped-malformed"), 1);
}

#[test]
fn a_sender_that_leaves_is_not_a_warning() {
    let (mut h, src, bus, ep) = bound_src(&[]);
    let good = make_jpeg(64, 48, 5);
    for i in 0..3u64 {
        let ctx = zmq::Context::new();
        let push = pusher(&ctx, &ep);
        push.send(protocol::encode_frame(1, i, &good), 0).unwrap();
        assert_eq!(pull_timeout(&mut h, T).expect("a frame").offset(), i);
        drop(push);
    }
    let deadline = Instant::now() + T;
    while stats_u64(&src, "disconnects") < 3 {
        assert!(Instant::now() < deadline, "disconnects not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(next_warning(&bus, Duration::from_millis(200)), None);
}

unsafe extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}
