// SPDX-License-Identifier: MPL-2.0
//! A message of the other kind than downstream takes, on real sockets (127.0.0.1,
//! ephemeral ports) and real pipelines: one JPEG among latents before an element that
//! takes only latents (a capsfilter, as i2idecode's sink pad), or one latent message before
//! `jpegdec`, is dropped and counted (`dropped-kind`) with a warning, and the pipeline goes
//! on instead of stopping not-negotiated. For `zmqmsgpacksrc`, `zmqcollectsrc` and
//! `zmqworkersrc`.

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

/// Float32 latents of a `w` x `h` picture, different for each `seed`.
fn latents(w: usize, h: usize, seed: u32) -> Vec<u8> {
    (0..4 * (w / 8) * (h / 8))
        .flat_map(|i| ((i as u32 ^ seed) as f32 / 1000.0).to_ne_bytes())
        .collect()
}

fn meta(w: u32, h: u32) -> TensorMeta {
    TensorMeta {
        dtype: Dtype::F32,
        shape: vec![1, 4, h as u64 / 8, w as u64 / 8],
        layout: "nchw".into(),
        scaling_factor: Some(0.18215),
        image_width: Some(w),
        image_height: Some(h),
    }
}

/// A playing pipeline `SRC ! REST ! appsink name=out`, its source, appsink and bus.
struct Run {
    pipeline: gst::Pipeline,
    src: gst::Element,
    out: gst_app::AppSink,
}

impl Run {
    fn new(src: &str, rest: &str) -> Run {
        init();
        let pipeline = gst::parse::launch(&format!(
            "{src} name=src ! {rest} ! appsink name=out sync=false max-buffers=100"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let src = pipeline.by_name("src").unwrap();
        let out = pipeline
            .by_name("out")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        Run { pipeline, src, out }
    }

    fn endpoint(&self, property: &str) -> String {
        self.src
            .property::<Option<String>>(property)
            .expect("bound")
    }

    /// The next buffer out, or the error that stopped the pipeline.
    fn pull(&self) -> gst::Sample {
        if let Some(s) = self.out.try_pull_sample(gst::ClockTime::from_seconds(20)) {
            return s;
        }
        panic!("nothing came out: {:?}", self.errors());
    }

    fn errors(&self) -> Vec<String> {
        let bus = self.pipeline.bus().unwrap();
        std::iter::from_fn(|| bus.pop_filtered(&[gst::MessageType::Error]))
            .map(|m| format!("{m:?}"))
            .collect()
    }

    /// The text of the first warning naming `needle`.
    fn warning_with(&self, needle: &str) -> String {
        let bus = self.pipeline.bus().unwrap();
        let deadline = std::time::Instant::now() + T;
        while std::time::Instant::now() < deadline {
            if let Some(m) = bus.timed_pop_filtered(
                gst::ClockTime::from_mseconds(100),
                &[gst::MessageType::Warning],
            ) && let gst::MessageView::Warning(w) = m.view()
            {
                let text = w.error().to_string();
                if text.contains(needle) {
                    return text;
                }
            }
        }
        panic!("no warning with '{needle}'");
    }

    fn stats_u64(&self, field: &str) -> u64 {
        stats_u64(&self.src, field)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

const LATENT_ONLY: &str = "capsfilter caps=application/x-i2i-latent";

#[test]
fn a_jpeg_among_latents_is_dropped_before_an_element_that_takes_latents() {
    let run = Run::new(
        "zmqmsgpacksrc socket-type=pull bind=true endpoint=tcp://127.0.0.1:*",
        LATENT_ONLY,
    );
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &run.endpoint("last-endpoint"));
    let m = meta(64, 48);
    // A stray JPEG first, then between latents: neither fixes the stream's kind.
    push.send(protocol::encode_frame(1, 0, &make_jpeg(64, 48, 1)), 0)
        .unwrap();
    for i in 1..3u64 {
        push.send(tensor::encode(1, i, &latents(64, 48, i as u32), &m), 0)
            .unwrap();
    }
    push.send(protocol::encode_frame(1, 3, &make_jpeg(64, 48, 1)), 0)
        .unwrap();
    for i in 4..6u64 {
        push.send(tensor::encode(1, i, &latents(64, 48, i as u32), &m), 0)
            .unwrap();
    }
    for i in [1u64, 2, 4, 5] {
        let s = run.pull();
        let b = s.buffer().unwrap();
        assert_eq!(b.offset(), i);
        assert_eq!(
            &b.map_readable().unwrap()[..],
            &latents(64, 48, i as u32)[..]
        );
    }
    assert_eq!(run.stats_u64("dropped-kind"), 2);
    assert_eq!(run.stats_u64("dropped"), 2);
    assert_eq!(run.stats_u64("latents"), 4);
    let w = run.warning_with("dropped-kind");
    assert!(
        w.contains("JPEG frame 0") && w.contains("application/x-i2i-latent"),
        "{w}"
    );
    assert!(run.errors().is_empty());
}

#[test]
fn a_latent_among_jpegs_is_dropped_before_jpegdec() {
    let run = Run::new(
        "zmqmsgpacksrc socket-type=pull bind=true endpoint=tcp://127.0.0.1:*",
        "jpegdec",
    );
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &run.endpoint("last-endpoint"));
    push.send(protocol::encode_frame(1, 0, &make_jpeg(64, 48, 1)), 0)
        .unwrap();
    push.send(tensor::encode(1, 1, &latents(64, 48, 1), &meta(64, 48)), 0)
        .unwrap();
    push.send(protocol::encode_frame(1, 2, &make_jpeg(64, 48, 2)), 0)
        .unwrap();
    for _ in 0..2 {
        let s = run.pull();
        let name = s.caps().unwrap().structure(0).unwrap().name().to_string();
        assert_eq!(name, "video/x-raw");
    }
    assert_eq!(run.stats_u64("dropped-kind"), 1);
    let w = run.warning_with("dropped-kind");
    assert!(w.contains("latent frame 1"), "{w}");
    assert!(run.errors().is_empty());
}

#[test]
fn the_collector_drops_a_result_of_the_other_kind() {
    let run = Run::new(
        "zmqcollectsrc endpoint=tcp://127.0.0.1:* playout-delay=300",
        LATENT_ONLY,
    );
    let ctx = zmq::Context::new();
    let push = pusher(&ctx, &run.endpoint("last-endpoint"));
    let m = meta(64, 48);
    let now = unix_now_ms();
    push.send(tensor::encode(now, 0, &latents(64, 48, 0), &m), 0)
        .unwrap();
    push.send(
        protocol::encode_frame(now + 40, 1, &make_jpeg(64, 48, 1)),
        0,
    )
    .unwrap();
    push.send(tensor::encode(now + 80, 2, &latents(64, 48, 2), &m), 0)
        .unwrap();
    for i in [0u64, 2] {
        assert_eq!(run.pull().buffer().unwrap().offset(), i);
    }
    assert_eq!(run.stats_u64("dropped-kind"), 1);
    let w = run.warning_with("dropped-kind");
    assert!(w.contains("JPEG result 1"), "{w}");
    assert!(run.errors().is_empty());
}

#[test]
fn a_worker_drops_a_frame_of_the_other_kind_and_is_still_credited() {
    let mut primary = FakePrimary::new();
    let run = Run::new(
        &format!(
            "zmqworkersrc endpoint={} heartbeat-interval=50",
            primary.endpoint
        ),
        LATENT_ONLY,
    );
    primary.ready_where(|_| true);
    primary.send(&wire::encode_heartbeat(7));
    primary.ready_where(|r| r.session == 7);
    let m = meta(64, 48);
    let latent_job = |i: u64| {
        primary.send(
            &wire::latent_job_parts([tensor::encode(1, i, &latents(64, 48, 9), &m).as_slice()])
                .into_iter()
                .map(|p| p.to_vec())
                .collect::<Vec<_>>(),
        )
    };
    latent_job(0);
    assert_eq!(run.pull().buffer().unwrap().offset(), 0);
    primary.job(protocol::encode_frame(1, 1, &make_jpeg(64, 48, 1)));
    latent_job(2);
    assert_eq!(run.pull().buffer().unwrap().offset(), 2);
    // The dropped frame counts as taken, so the primary keeps sending.
    primary.ready_where(|r| r.taken == 3);
    assert_eq!(run.stats_u64("dropped-kind"), 1);
    assert_eq!(run.stats_u64("dropped"), 1);
    let w = run.warning_with("dropped-kind");
    assert!(w.contains("JPEG frame 1"), "{w}");
    assert!(run.errors().is_empty());
}
