// SPDX-License-Identifier: MPL-2.0
//! Latents over the transport, on real sockets (127.0.0.1, ephemeral ports):
//! `zmqmsgpacksink` sends `application/x-i2i-latent` buffers as
//! `[timestamp, index, payload, meta]`, `zmqmsgpacksrc` gives them back bit for bit (float32)
//! or widened (float16) with caps built from the meta; bad tensor messages (truncated,
//! meta of another shape, unknown dtype, absurd shapes) are dropped, counted per reason
//! and reported while the good frames around them come out. The same through the
//! scale-out pair: `zmqdispatchsink` sends latents to a `zmqworkersrc` as one tensor
//! message per frame, and the worker checks each frame of a latent job as
//! `zmqmsgpacksrc` does.

mod common;
mod scaleout_util;

use std::time::Duration;

use common::*;
use gst::prelude::*;
use gstzmqsink::scaleout::wire;
use i2i_core::protocol;
use i2i_core::tensor::{self, Dtype, TensorMeta};
use scaleout_util::FakePrimary;

const T: Duration = Duration::from_secs(20);

fn caps(w: i32, h: i32) -> gst::Caps {
    gst::Caps::builder("application/x-i2i-latent")
        .field("dtype", "float32")
        .field("layout", "nchw")
        .field("channels", 4i32)
        .field("width", w / 8)
        .field("height", h / 8)
        .field("image-width", w)
        .field("image-height", h)
        .field("scaling-factor", 0.18215f64)
        .field("framerate", gst::Fraction::new(25, 1))
        .build()
}

/// Float32 latents of a `w` x `h` picture, different for each `seed`, in native order.
fn latents(w: usize, h: usize, seed: u32) -> Vec<u8> {
    (0..4 * (w / 8) * (h / 8))
        .flat_map(|i| {
            (((i as u32 * 2654435761) ^ seed) as f32 / u32::MAX as f32 - 0.5).to_ne_bytes()
        })
        .collect()
}

fn meta(w: u32, h: u32, dtype: Dtype) -> TensorMeta {
    TensorMeta {
        dtype,
        shape: vec![1, 4, h as u64 / 8, w as u64 / 8],
        layout: "nchw".into(),
        scaling_factor: Some(0.18215),
        image_width: Some(w),
        image_height: Some(h),
    }
}

/// A sink harness (PUSH, connecting to `ep`) with latent caps of a `w` x `h` picture.
fn sink_harness(
    ep: &str,
    w: i32,
    h: i32,
    props: &[(&str, &str)],
) -> (gst_check::Harness, gst::Element, gst::Bus) {
    init();
    let sink = gst::ElementFactory::make("zmqmsgpacksink")
        .property_from_str("socket-type", "push")
        .property("bind", false)
        .property("endpoint", ep)
        .build()
        .unwrap();
    for (k, v) in props {
        sink.set_property_from_str(k, v);
    }
    let bus = gst::Bus::new();
    sink.set_bus(Some(&bus));
    let mut harness = gst_check::Harness::with_element(&sink, Some("sink"), None);
    harness.set_src_caps(caps(w, h));
    harness.play();
    (harness, sink, bus)
}

fn latent_buffer(data: Vec<u8>, index: u64) -> gst::Buffer {
    let mut b = gst::Buffer::from_mut_slice(data);
    {
        let b = b.get_mut().unwrap();
        b.set_offset(index);
        b.set_pts(gst::ClockTime::from_mseconds(40 * index));
    }
    b
}

#[test]
fn latents_cross_the_wire_bit_for_bit_and_caps_follow_the_meta() {
    let (mut src_h, src, _bus, ep) = bound_src(&[("framerate", "25/1")]);
    let (mut sink_h, sink, _sbus) = sink_harness(&ep, 64, 48, &[]);
    let sent: Vec<Vec<u8>> = (0..5).map(|i| latents(64, 48, i)).collect();
    for (i, l) in sent.iter().enumerate() {
        sink_h
            .push(latent_buffer(l.clone(), 100 + i as u64))
            .unwrap();
    }
    for (i, l) in sent.iter().enumerate() {
        let b =
            pull_timeout(&mut src_h, T).unwrap_or_else(|| panic!("latent {i} did not come out"));
        assert_eq!(b.offset(), 100 + i as u64);
        assert!(unix_meta_ns(&b).is_some(), "the timestamp/x-unix meta");
        assert_eq!(
            &b.map_readable().unwrap()[..],
            &l[..],
            "latent {i} changed on the wire"
        );
    }
    let got = src_h.sinkpad().unwrap().current_caps().unwrap();
    assert!(got.is_subset(&caps(64, 48)), "{got}");
    assert_eq!(stats_u64(&src, "latents"), 5);
    // 64x48 latents are 4 * 6 * 8 float32 = 768 bytes; the message adds a small meta.
    let sent_bytes = stats_u64(&sink, "bytes");
    assert!(
        sent_bytes > 5 * 768 && sent_bytes < 5 * (768 + 160),
        "{sent_bytes}"
    );

    // A new size: new caps from the meta.
    sink_h.set_src_caps(caps(32, 16));
    let l = latents(32, 16, 9);
    sink_h.push(latent_buffer(l.clone(), 105)).unwrap();
    let b = pull_timeout(&mut src_h, T).expect("the 32x16 latent");
    assert_eq!(&b.map_readable().unwrap()[..], &l[..]);
    let got = src_h.sinkpad().unwrap().current_caps().unwrap();
    let s = got.structure(0).unwrap();
    assert_eq!(
        (
            s.get::<i32>("width").unwrap(),
            s.get::<i32>("height").unwrap()
        ),
        (4, 2)
    );
    assert_eq!(s.get::<i32>("image-width").unwrap(), 32);
    assert_eq!(s.get::<f64>("scaling-factor").unwrap(), 0.18215);

    // A JPEG after latents: JPEG caps again.
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &ep);
    push.send(protocol::encode_frame(1, 200, &make_jpeg(64, 48, 1)), 0)
        .unwrap();
    let b = pull_timeout(&mut src_h, T).expect("the JPEG after latents");
    assert_eq!(b.offset(), 200);
    let got = src_h.sinkpad().unwrap().current_caps().unwrap();
    assert_eq!(got.structure(0).unwrap().name(), "image/jpeg");
}

#[test]
fn float16_on_the_wire_is_half_the_bytes_and_comes_back_as_float32() {
    let (mut src_h, src, _bus, ep) = bound_src(&[]);
    let (mut sink_h, sink, _sbus) = sink_harness(&ep, 512, 512, &[("latent-dtype", "f16")]);
    // Several frames: the first must not change what the next are checked against.
    for k in 0..3 {
        let l = latents(512, 512, 3 + k);
        assert_eq!(l.len(), 64 * 1024);
        sink_h.push(latent_buffer(l.clone(), k as u64)).unwrap();
        let b = pull_timeout(&mut src_h, T).expect("the float16 latent");
        let got = b.map_readable().unwrap();
        assert_eq!(got.len(), l.len(), "widened to float32");
        for (a, b) in l.chunks_exact(4).zip(got.chunks_exact(4)) {
            let (a, b) = (
                f32::from_ne_bytes(a.try_into().unwrap()),
                f32::from_ne_bytes(b.try_into().unwrap()),
            );
            assert!((a - b).abs() <= 1e-3, "{a} came back as {b}");
        }
    }
    assert_eq!(stats_u64(&sink, "dropped-invalid"), 0);
    let bytes = stats_u64(&sink, "bytes");
    assert!(
        (3 * 32 * 1024..3 * (32 * 1024 + 160)).contains(&(bytes as usize)),
        "{bytes}"
    );
    let caps = src_h.sinkpad().unwrap().current_caps().unwrap();
    assert_eq!(
        caps.structure(0).unwrap().get::<&str>("dtype").unwrap(),
        "float32"
    );
    assert_eq!(stats_u64(&src, "frames"), 3);
}

#[test]
fn a_latent_buffer_that_does_not_match_its_caps_is_dropped_by_the_sink() {
    let ctx = zmq::Context::new();
    let (pull, ep) = bound_pull(&ctx);
    let (mut sink_h, sink, bus) = sink_harness(&ep, 64, 48, &[]);
    let good = latents(64, 48, 1);
    sink_h.push(latent_buffer(good[..100].to_vec(), 0)).unwrap();
    sink_h.push(latent_buffer(good.clone(), 1)).unwrap();
    let msg = recv_timeout(&pull, T).expect("the good latent after the bad one");
    let t = tensor::decode(&msg, 0).unwrap();
    assert_eq!((t.index, t.payload), (1, &good[..]));
    assert_eq!(stats_u64(&sink, "dropped-invalid"), 1);
    assert_eq!(stats_u64(&sink, "frames"), 1);
    let w = next_warning(&bus, T).expect("a warning for the short buffer");
    assert!(w.contains("100 bytes") && w.contains("768"), "{w}");
}

/// One bad latent message of each kind after `good` latents with meta `m` (64 x 48, float32),
/// each with the stats field of `zmqmsgpacksrc` that counts it.
fn bad_latent_messages(good: &[u8], m: &TensorMeta) -> Vec<(Vec<u8>, &'static str)> {
    let mut unknown = tensor::encode(1, 0, good, m);
    let at = unknown.windows(7).position(|w| w == b"float32").unwrap();
    unknown[at..at + 7].copy_from_slice(b"bfloat8");
    let huge = TensorMeta {
        shape: vec![1, 4, 100_000, 100_000],
        ..m.clone()
    };
    let image_huge = TensorMeta {
        image_width: Some(100_000),
        image_height: Some(100_000),
        ..m.clone()
    };
    let batch_of_two = TensorMeta {
        shape: vec![2, 4, 3, 8],
        ..m.clone()
    };
    let image_not_8x = TensorMeta {
        image_width: Some(65),
        ..m.clone()
    };
    // Another model's latents in the middle of the stream: 3 channels of 8 x 8.
    let other_model = TensorMeta {
        shape: vec![1, 3, 8, 8],
        image_height: Some(64),
        ..m.clone()
    };
    vec![
        // Truncated payload: the meta says 768 bytes.
        (tensor::encode(1, 0, &good[..700], m), "dropped-latent-size"),
        // Meta of another picture size for these bytes.
        (
            tensor::encode(1, 0, good, &meta(128, 96, Dtype::F32)),
            "dropped-latent-size",
        ),
        (unknown, "dropped-latent-dtype"),
        (tensor::encode(1, 0, good, &huge), "dropped-latent-shape"),
        (tensor::encode(1, 0, good, &image_huge), "dropped-oversize"),
        (
            tensor::encode(1, 0, good, &batch_of_two),
            "dropped-latent-shape",
        ),
        (
            tensor::encode(1, 0, good, &image_not_8x),
            "dropped-latent-meta",
        ),
        (
            tensor::encode(1, 0, good, &other_model),
            "dropped-latent-meta",
        ),
        // The message itself cut short.
        (
            tensor::encode(1, 0, good, m)[..500].to_vec(),
            "dropped-malformed",
        ),
    ]
}

#[test]
fn bad_latent_messages_are_dropped_counted_and_the_stream_goes_on() {
    let (mut h, src, bus, ep) = bound_src(&[("max-pixels", "1000000")]);
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &ep);
    let good = latents(64, 48, 2);
    let m = meta(64, 48, Dtype::F32);
    let bad = bad_latent_messages(&good, &m);
    let mut next = 1u64;
    let mut expected = std::collections::HashMap::<&str, u64>::new();
    for (msg, reason) in bad {
        push.send(msg, 0).unwrap();
        *expected.entry(reason).or_default() += 1;
        for _ in 0..3 {
            push.send(tensor::encode(1, next, &good, &m), 0).unwrap();
            let b = pull_timeout(&mut h, T)
                .unwrap_or_else(|| panic!("good latent {next} after a {reason} message"));
            assert_eq!(b.offset(), next);
            assert_eq!(&b.map_readable().unwrap()[..], &good[..]);
            next += 1;
        }
    }
    for (reason, n) in &expected {
        assert_eq!(stats_u64(&src, reason), *n, "{reason}");
    }
    assert_eq!(stats_u64(&src, "dropped"), 9);
    assert_eq!(stats_u64(&src, "latents"), 27);
    let w = next_warning(&bus, T).expect("a warning for the first bad message");
    assert!(
        w.contains("Dropped a latent message") && w.contains("700 bytes"),
        "{w}"
    );
}

#[test]
fn the_collector_puts_latent_results_back_in_order_and_drops_bad_ones() {
    init();
    let c = gst::ElementFactory::make("zmqcollectsrc")
        .property("endpoint", "tcp://127.0.0.1:*")
        .property("playout-delay", 300u32)
        .property("idle-timeout", 0u32)
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    c.set_bus(Some(&bus));
    let mut h = gst_check::Harness::with_element(&c, None, Some("src"));
    h.play();
    let ep = c
        .property::<Option<String>>("last-endpoint")
        .expect("bound");
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &ep);
    let m = meta(64, 48, Dtype::F32);
    let frames: Vec<Vec<u8>> = (0..4).map(|i| latents(64, 48, 10 + i)).collect();
    let now = unix_now_ms();
    // Results of two workers, out of order, one of them truncated.
    push.send(tensor::encode(now, 0, &frames[0], &m), 0)
        .unwrap();
    push.send(tensor::encode(now + 40, 2, &frames[2], &m), 0)
        .unwrap();
    push.send(tensor::encode(now + 20, 1, &frames[1][..500], &m), 0)
        .unwrap();
    push.send(tensor::encode(now + 20, 1, &frames[1], &m), 0)
        .unwrap();
    push.send(tensor::encode(now + 60, 3, &frames[3], &m), 0)
        .unwrap();
    for (i, f) in frames.iter().enumerate() {
        let b = pull_timeout(&mut h, T).unwrap_or_else(|| panic!("result {i}"));
        assert_eq!(b.offset(), i as u64);
        assert_eq!(&b.map_readable().unwrap()[..], &f[..], "result {i}");
    }
    let caps = h.sinkpad().unwrap().current_caps().unwrap();
    assert!(caps.is_subset(&caps_without_framerate(64, 48)), "{caps}");
    let stats = c.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("dropped-latent").unwrap(), 1, "{stats}");
    assert_eq!(
        stats.get::<u64>("dropped-latent-size").unwrap(),
        1,
        "{stats}"
    );
    for other in ["dtype", "shape", "meta"] {
        let n = stats
            .get::<u64>(&format!("dropped-latent-{other}"))
            .unwrap();
        assert_eq!(n, 0, "{stats}");
    }
    let w = next_warning(&bus, T).expect("a warning for the truncated result");
    assert!(w.contains("500 bytes"), "{w}");
}

fn caps_without_framerate(w: i32, h: i32) -> gst::Caps {
    let mut c = caps(w, h);
    c.get_mut()
        .unwrap()
        .structure_mut(0)
        .unwrap()
        .remove_field("framerate");
    c
}

/// A started `zmqworkersrc` connecting to `ep`, its harness and bus.
fn worker_harness(
    ep: &str,
    props: &[(&str, &str)],
) -> (gst_check::Harness, gst::Element, gst::Bus) {
    init();
    let w = gst::ElementFactory::make("zmqworkersrc")
        .property("endpoint", ep)
        .property("heartbeat-interval", 50u32)
        .build()
        .unwrap();
    for (k, v) in props {
        w.set_property_from_str(k, v);
    }
    let bus = gst::Bus::new();
    w.set_bus(Some(&bus));
    let mut h = gst_check::Harness::with_element(&w, None, Some("src"));
    h.play();
    (h, w, bus)
}

#[test]
fn the_dispatcher_sends_latents_to_a_worker_bit_for_bit_and_drops_bad_buffers() {
    init();
    let d = gst::ElementFactory::make("zmqdispatchsink")
        .property("endpoint", "tcp://127.0.0.1:*")
        .property("group", "latent-dispatch-test")
        .build()
        .unwrap();
    let dbus = gst::Bus::new();
    d.set_bus(Some(&dbus));
    let mut dh = gst_check::Harness::with_element(&d, Some("sink"), None);
    dh.set_src_caps(caps(64, 48));
    dh.play();
    let ep = d
        .property::<Option<String>>("last-endpoint")
        .expect("bound");
    let (mut wh, w, _wbus) = worker_harness(&ep, &[("framerate", "25/1"), ("batch-size", "2")]);

    // A buffer whose size does not match its caps: dropped before it takes an index.
    let good: Vec<Vec<u8>> = (0..4).map(|i| latents(64, 48, 20 + i)).collect();
    dh.push(latent_buffer(good[0][..100].to_vec(), 0)).unwrap();
    for (i, l) in good.iter().enumerate() {
        dh.push(latent_buffer(l.clone(), i as u64)).unwrap();
    }
    for (i, l) in good.iter().enumerate() {
        let b = pull_timeout(&mut wh, T).unwrap_or_else(|| panic!("latent {i} at the worker"));
        assert_eq!(b.offset(), i as u64, "indices count the frames sent");
        assert!(unix_meta_ns(&b).is_some(), "the timestamp/x-unix meta");
        assert_eq!(
            &b.map_readable().unwrap()[..],
            &l[..],
            "latent {i} changed on the way"
        );
    }
    let got = wh.sinkpad().unwrap().current_caps().unwrap();
    assert!(got.is_subset(&caps(64, 48)), "{got}");
    assert_eq!(stats_u64(&d, "dropped-invalid"), 1);
    assert_eq!(stats_u64(&d, "dispatched"), 4);
    assert_eq!(stats_u64(&w, "latents"), 4);
    assert_eq!(stats_u64(&w, "dropped"), 0);
    let warning = next_warning(&dbus, T).expect("a warning for the short buffer");
    assert!(
        warning.contains("100 bytes") && warning.contains("768"),
        "{warning}"
    );

    // float16 on the wire: widened back to float32 at the worker.
    d.set_property_from_str("latent-dtype", "f16");
    let l = latents(64, 48, 30);
    dh.push(latent_buffer(l.clone(), 4)).unwrap();
    let b = pull_timeout(&mut wh, T).expect("the float16 latent");
    let back = b.map_readable().unwrap();
    assert_eq!(back.len(), l.len());
    for (a, b) in l.chunks_exact(4).zip(back.chunks_exact(4)) {
        let (a, b) = (
            f32::from_ne_bytes(a.try_into().unwrap()),
            f32::from_ne_bytes(b.try_into().unwrap()),
        );
        assert!((a - b).abs() <= 1e-3, "{a} came back as {b}");
    }
}

#[test]
fn a_worker_drops_bad_latent_jobs_by_reason_and_goes_on() {
    let mut primary = FakePrimary::new();
    let (mut h, w, bus) = worker_harness(
        &primary.endpoint,
        &[("max-pixels", "1000000"), ("client-name", "decoder")],
    );
    primary.ready_where(|_| true);
    primary.send(&wire::encode_heartbeat(3));
    primary.ready_where(|r| r.session == 3);

    let good = latents(64, 48, 2);
    let m = meta(64, 48, Dtype::F32);
    let job = |messages: &[Vec<u8>]| {
        primary.send(
            &wire::latent_job_parts(messages.iter().map(|m| m.as_slice()))
                .into_iter()
                .map(|p| p.to_vec())
                .collect::<Vec<_>>(),
        )
    };
    let bad = bad_latent_messages(&good, &m);
    let n_bad = bad.len() as u64;
    let mut next = 1u64;
    let mut expected = std::collections::HashMap::<&str, u64>::new();
    for (msg, reason) in bad {
        *expected.entry(reason).or_default() += 1;
        // The bad frame in a batch between two good ones: only it is dropped.
        job(&[
            tensor::encode(1, next, &good, &m),
            msg,
            tensor::encode(1, next + 1, &good, &m),
        ]);
        for _ in 0..2 {
            let b = pull_timeout(&mut h, T)
                .unwrap_or_else(|| panic!("good latent {next} beside a {reason} frame"));
            assert_eq!(b.offset(), next);
            assert_eq!(&b.map_readable().unwrap()[..], &good[..]);
            next += 1;
        }
    }
    // Every frame is credited, dropped ones included, so the primary keeps sending.
    let r = primary.ready_where(|r| r.taken == 3 * n_bad);
    assert_eq!(r.name, "decoder");
    for (reason, n) in &expected {
        assert_eq!(stats_u64(&w, reason), *n, "{reason}");
    }
    assert_eq!(stats_u64(&w, "dropped"), n_bad);
    assert_eq!(stats_u64(&w, "latents"), 2 * n_bad);
    let warning = next_warning(&bus, T).expect("a warning for the first bad frame");
    assert!(
        warning.contains("Dropped a latent message")
            && warning.contains("700 bytes")
            && warning.contains(&primary.endpoint),
        "{warning}"
    );

    // A JPEG job after latents: JPEG caps again.
    primary.job(protocol::encode_frame(1, 100, &make_jpeg(64, 48, 1)));
    let b = pull_timeout(&mut h, T).expect("the JPEG after latents");
    assert_eq!(b.offset(), 100);
    let got = h.sinkpad().unwrap().current_caps().unwrap();
    assert_eq!(got.structure(0).unwrap().name(), "image/jpeg");
}
