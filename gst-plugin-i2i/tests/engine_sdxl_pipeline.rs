// SPDX-License-Identifier: MPL-2.0
//! i2itransform on the tiny SDXL models in real GStreamer pipelines: frames come out once,
//! in order, equal to the engine's output for the same frames and settings, and a live
//! prompt change reaches the pictures.

use std::time::{Duration, Instant};

mod pipeline_common;

use gst::prelude::*;
use gsti2i::diffusion::{CfgType, Engine, StreamParams};
use pipeline_common::*;

const W: u32 = 64;
const H: u32 = 64;
const TIMEOUT: Duration = Duration::from_secs(60);
const PROPS: &str = "prompt=\"a red fox\" negative-prompt=\"\" seed=5 t-index-list=20,35 \
                     cfg-type=full guidance-scale=1.5 delta=1.0 threads=1";

/// `appsrc ! i2itransform model=<name> ! appsink` fed with `frames` RGB pictures;
/// `change(i2i, k)` runs before frame k is pushed. Returns the packed RGB outputs.
fn run_pipeline(name: &str, frames: u64, change: impl Fn(&gst::Element, u64)) -> Vec<Vec<u8>> {
    init();
    let desc = format!(
        "appsrc name=src format=time ! i2itransform name=i2i model=\"{}\" width={W} height={H} \
         {PROPS} ! video/x-raw,format=RGB ! appsink name=out sync=false",
        model_dir(name, "unet/model.onnx").display()
    );
    let pipeline = launch(&desc);
    let src = appsrc(&pipeline, "src");
    src.set_caps(Some(&video_caps("RGB", W, H, 10)));
    let i2i = pipeline.by_name("i2i").unwrap();
    let out = collect_bytes(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    for k in 0..frames {
        change(&i2i, k);
        let buf = timed_picture(k, (W, H), gst::ClockTime::from_mseconds(100));
        src.push_buffer(buf).unwrap();
        // One frame at a time, so that a property change lands between known frames.
        let deadline = Instant::now() + TIMEOUT;
        while (out.lock().unwrap().len() as u64) + 1 < k + 1 && k >= 1 {
            assert!(Instant::now() < deadline, "timed out at frame {k}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    src.end_of_stream().unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(TIMEOUT.as_secs()),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS or an error");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{}: {:?}", e.error(), e.debug());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    std::mem::take(&mut out.lock().unwrap())
}

fn engine_outputs(name: &str, params: &[(u64, StreamParams)], frames: u64) -> Vec<Vec<u8>> {
    let opts = cpu_options(model_dir(name, "unet/model.onnx"), (W, H));
    let mut engine = Engine::load(&opts, &params[0].1).unwrap();
    engine_pictures(&mut engine, frames, (W, H), |engine, k| {
        if let Some((_, p)) = params.iter().find(|(at, _)| *at == k) {
            engine.set_params(p).unwrap();
        }
    })
}

fn base_params() -> StreamParams {
    StreamParams {
        prompt: "a red fox".into(),
        negative_prompt: String::new(),
        seed: 5,
        t_index_list: vec![20, 35],
        cfg_type: CfgType::Full,
        guidance_scale: 1.5,
        delta: 1.0,
        ..Default::default()
    }
}

#[test]
fn sdxl_pipeline_equals_engine_and_follows_a_live_prompt_change() {
    for name in ["tiny-sdxl", "tiny-sdxl-ortdemo"] {
        let change = |i2i: &gst::Element, k: u64| {
            if k == 3 {
                i2i.set_property("prompt", "a blue boat at night");
            }
        };
        let got = run_pipeline(name, 6, change);
        assert_eq!(got.len(), 6, "{name}: every frame comes out once");
        let changed = StreamParams {
            prompt: "a blue boat at night".into(),
            ..base_params()
        };
        let want = engine_outputs(name, &[(0, base_params()), (3, changed)], 6);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{name}: frame {k}");
        }
        let unchanged = engine_outputs(name, &[(0, base_params())], 6);
        assert_eq!(got[..3], unchanged[..3]);
        assert_ne!(got[4], unchanged[4], "{name}: the prompt change shows");
    }
}
