// SPDX-License-Identifier: MPL-2.0
//! i2itransform's conditioning properties in real pipelines: `latent-feedback` gives the
//! engine's frames with the same feedback (and 0 the frames without it); ControlNet models
//! with `controlnet-preprocess` canny and with a `control_0` pad fed by another appsrc give
//! the engine's frames for the same control images; mismatched ControlNet properties fail
//! the start with a message naming the model file, the property and the counts.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::glib;
mod pipeline_common;

use gst::prelude::*;
use gsti2i::diffusion::{self, CfgType, Engine, InputFrame, StreamParams};
use pipeline_common::*;

const W: u32 = 64;
const H: u32 = 64;
const TIMEOUT: Duration = Duration::from_secs(120);
const PROPS: &str = "prompt=\"a red fox\" seed=5 t-index-list=32,45 cfg-type=self \
                     guidance-scale=1.5 delta=0.9 threads=1";

/// `appsrc ! i2itransform model=<dir> <props> ! appsink` fed with `frames` RGB pictures
/// (at 1 frame/s, so that the idle timeout never drains the stream batch between frames
/// pushed back to back). Returns the packed RGB outputs.
fn run_pipeline(dir: &std::path::Path, props: &str, frames: u64) -> Vec<Vec<u8>> {
    init();
    let desc = format!(
        "appsrc name=src format=time ! i2itransform name=i2i model=\"{}\" width={W} height={H} \
         {PROPS} {props} ! video/x-raw,format=RGB ! appsink name=out sync=false",
        dir.display()
    );
    let pipeline = launch(&desc);
    let src = appsrc(&pipeline, "src");
    src.set_caps(Some(&video_caps("RGB", W, H, 1)));
    let out = collect_bytes(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    for k in 0..frames {
        let buf = timed_picture(k, (W, H), gst::ClockTime::SECOND);
        src.push_buffer(buf).unwrap();
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

fn params() -> StreamParams {
    StreamParams {
        prompt: "a red fox".into(),
        seed: 5,
        t_index_list: vec![32, 45],
        cfg_type: CfgType::SelfNegative,
        guidance_scale: 1.5,
        delta: 0.9,
        ..Default::default()
    }
}

/// The engine on the same frames, `set` applied after load.
fn engine_outputs(dir: &std::path::Path, frames: u64, set: impl Fn(&mut Engine)) -> Vec<Vec<u8>> {
    let opts = cpu_options(dir.to_path_buf(), (W, H));
    let mut engine = Engine::load(&opts, &params()).unwrap();
    set(&mut engine);
    engine_pictures(&mut engine, frames, (W, H), |_, _| {})
}

/// The engine's outputs as packed RGB pictures.
fn pictures(outs: &[diffusion::OutputFrame]) -> Vec<Vec<u8>> {
    outs.iter()
        .map(|o| {
            let mut rgb = Vec::new();
            diffusion::to_rgb8(&o.pixels, W, H, &mut rgb);
            rgb
        })
        .collect()
}

#[test]
fn latent_feedback_in_a_pipeline_equals_the_engine() {
    let dir = model_dir("tiny-sd15", "unet/model.onnx");
    let got = run_pipeline(&dir, "latent-feedback=0.3", 6);
    assert_eq!(got.len(), 6, "every frame comes out once");
    let want = engine_outputs(&dir, 6, |e| e.set_latent_feedback(0.3));
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "frame {k}");
    }
    let plain = engine_outputs(&dir, 6, |_| ());
    assert_eq!(got[..2], plain[..2], "no previous output yet: no feedback");
    assert_ne!(got[5], plain[5], "the feedback shows");
    let off = run_pipeline(&dir, "latent-feedback=0", 6);
    assert_eq!(off, plain, "0 is off");
}

#[test]
fn latent_feedback_range() {
    init();
    let i2i = gst::ElementFactory::make("i2itransform").build().unwrap();
    assert_eq!(i2i.property::<f64>("latent-feedback"), 0.0);
    i2i.set_property("latent-feedback", 0.25f64);
    assert_eq!(i2i.property::<f64>("latent-feedback"), 0.25);
    let pspec = i2i.find_property("latent-feedback").unwrap();
    let pspec = pspec.downcast_ref::<glib::ParamSpecDouble>().unwrap();
    assert_eq!((pspec.minimum(), pspec.maximum()), (0.0, 1.0));
    assert!(pspec.flags().contains(gst::PARAM_FLAG_MUTABLE_PLAYING));
}

/// A control picture unlike the frames: rings.
fn rings(k: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity((W * H * 3) as usize);
    for y in 0..H {
        for x in 0..W {
            let (dx, dy) = (x as f32 - 30.0, y as f32 - 24.0 - k as f32);
            let c = if ((dx * dx + dy * dy).sqrt() as u32 / 4).is_multiple_of(2) {
                255
            } else {
                0
            };
            v.extend_from_slice(&[c, c, c]);
        }
    }
    v
}

/// The engine with per-frame control images (`control(k)`: every ControlNet's image).
fn engine_controlled(
    dir: &std::path::Path,
    frames: u64,
    scales: &[f32],
    control: impl Fn(u64) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    let opts = cpu_options(dir.to_path_buf(), (W, H));
    let mut engine = Engine::load(&opts, &params()).unwrap();
    engine.set_controlnet_scales(scales).unwrap();
    let mut outs = Vec::new();
    for k in 0..frames {
        let input = vec![InputFrame {
            tag: k,
            rgb: picture(k, W, H),
        }];
        outs.extend(engine.process_controlled(input, vec![control(k)]).unwrap());
    }
    outs.extend(engine.drain().unwrap());
    pictures(&outs)
}

#[test]
fn canny_controlnet_in_a_pipeline_equals_the_engine() {
    let dir = model_dir("tiny-controlnet", "unet/model.onnx");
    let got = run_pipeline(
        &dir,
        "controlnet-preprocess=canny:50:120 controlnet-scales=0.9",
        5,
    );
    assert_eq!(got.len(), 5);
    let canny = |k| gsti2i::preprocess::canny(&picture(k, W, H), W, H, 50.0, 120.0).unwrap();
    assert!(canny(0).contains(&255), "the test picture has edges");
    let want = engine_controlled(&dir, 5, &[0.9], canny);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "frame {k}");
    }
    // Not the same as feeding the frame itself.
    let input = engine_controlled(&dir, 5, &[0.9], |k| picture(k, W, H));
    assert_ne!(got[0], input[0], "the canny image reaches the ControlNet");
    let also_input = run_pipeline(&dir, "controlnet-scales=0.9", 5);
    assert_eq!(
        also_input, input,
        "the default preprocessor is the frame itself"
    );
}

/// `appsrc ! i2itransform ! appsink` with a second appsrc on `control_0`; every control frame
/// (`controls`: running time in seconds, picture) is in before the first main frame.
fn run_with_control_pad(
    dir: &std::path::Path,
    props: &str,
    frames: u64,
    controls: &[(u64, Vec<u8>)],
) -> (Vec<Vec<u8>>, u64) {
    init();
    let caps = video_caps("RGB", W, H, 1);
    run_with_control_caps(dir, props, frames, controls, &caps)
}

/// [`run_with_control_pad`] with `control_caps` on the control appsrc.
fn run_with_control_caps(
    dir: &std::path::Path,
    props: &str,
    frames: u64,
    controls: &[(u64, Vec<u8>)],
    control_caps: &gst::Caps,
) -> (Vec<Vec<u8>>, u64) {
    init();
    let desc = format!(
        "appsrc name=src format=time ! i2itransform name=i2i model=\"{}\" width={W} height={H} \
         {PROPS} {props} ! video/x-raw,format=RGB ! appsink name=out sync=false \
         appsrc name=csrc format=time ! i2i.control_0",
        dir.display()
    );
    let pipeline = launch(&desc);
    let caps = video_caps("RGB", W, H, 1);
    let app = |name: &str, caps: &gst::Caps| {
        let a = pipeline
            .by_name(name)
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        a.set_caps(Some(caps));
        a
    };
    let (src, csrc) = (app("src", &caps), app("csrc", control_caps));
    let i2i = pipeline.by_name("i2i").unwrap();
    let cpad = i2i.static_pad("control_0").expect("the request pad");
    let control_done = Arc::new(Mutex::new(false));
    let d = control_done.clone();
    cpad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(e)) = &info.data
            && e.type_() == gst::EventType::Eos
        {
            *d.lock().unwrap() = true;
        }
        gst::PadProbeReturn::Ok
    });
    let out = collect_bytes(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    let push = |a: &gst_app::AppSrc, pts: u64, data: Vec<u8>| {
        let mut buf = gst::Buffer::from_mut_slice(data);
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_seconds(pts));
            b.set_duration(gst::ClockTime::from_seconds(1));
        }
        a.push_buffer(buf).unwrap();
    };
    for (t, c) in controls {
        push(&csrc, *t, c.clone());
    }
    csrc.end_of_stream().unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !*control_done.lock().unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "control frames not taken"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for k in 0..frames {
        push(&src, k, picture(k, W, H));
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
    let stats = i2i.property::<gst::Structure>("stats");
    let fallbacks = stats.get::<u64>("control-fallbacks").unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    (std::mem::take(&mut out.lock().unwrap()), fallbacks)
}

#[test]
fn control_pad_frames_are_matched_by_timestamp() {
    let dir = model_dir("tiny-controlnet", "unet/model.onnx");
    // Control frames at 0, 2 and 4 s: main frames 0..5 take the newest not later than
    // themselves (0, 0, 2, 2, 4).
    let controls: Vec<(u64, Vec<u8>)> = [0u64, 2, 4].iter().map(|&t| (t, rings(t))).collect();
    let (got, fallbacks) = run_with_control_pad(&dir, "controlnet-preprocess=pad", 5, &controls);
    assert_eq!(got.len(), 5);
    assert_eq!(fallbacks, 0);
    let want = engine_controlled(&dir, 5, &[1.0], |k| rings(k / 2 * 2));
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "frame {k}");
    }
    // Control frames only from 2 s on: frames 0 and 1 have none not later than them and
    // take the oldest kept (2 s).
    let late: Vec<(u64, Vec<u8>)> = [2u64, 4].iter().map(|&t| (t, rings(t))).collect();
    let (got, _) = run_with_control_pad(&dir, "controlnet-preprocess=pad", 5, &late);
    let want = engine_controlled(&dir, 5, &[1.0], |k| rings(if k < 4 { 2 } else { 4 }));
    assert_eq!(got, want);
}

#[test]
fn control_pad_without_frames_falls_back_to_the_frame() {
    let dir = model_dir("tiny-controlnet", "unet/model.onnx");
    let (got, fallbacks) = run_with_control_pad(&dir, "controlnet-preprocess=pad", 4, &[]);
    assert_eq!(fallbacks, 4, "every frame counted");
    let want = engine_controlled(&dir, 4, &[1.0], |k| picture(k, W, H));
    assert_eq!(got, want, "the frame itself stands in");
}

/// Starts `i2itransform` with `props` and returns the ERROR text it posts.
fn start_error(dir: &std::path::Path, props: &str) -> String {
    init();
    let desc = format!(
        "videotestsrc num-buffers=2 ! video/x-raw,width={W},height={H} ! i2itransform model=\"{}\" \
         width={W} height={H} threads=1 {props} ! fakesink",
        dir.display()
    );
    let pipeline = gst::parse::launch(&desc).unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(TIMEOUT.as_secs()),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS or an error");
    let _ = pipeline.set_state(gst::State::Null);
    match msg.view() {
        gst::MessageView::Error(e) => {
            let text = format!("{} {:?}", e.error(), e.debug());
            eprintln!("error as users see it: {text}");
            text
        }
        _ => panic!("{props}: started, expected an error"),
    }
}

#[test]
fn mismatched_controlnet_properties_fail_the_start() {
    let two = model_dir("tiny-controlnet2", "unet/model.onnx");
    let e = start_error(&two, "controlnet-scales=1,0.5,0.2");
    assert!(
        e.contains("unet/model.onnx")
            && e.contains("controlnet-scales has 3 values")
            && e.contains("2 ControlNet"),
        "{e}"
    );
    let e = start_error(&two, "controlnet-preprocess=canny,input,pad");
    assert!(e.contains("controlnet-preprocess has 3 values"), "{e}");
    let e = start_error(&two, "controlnet-preprocess=midas");
    assert!(
        e.contains("\"midas\" is not a ControlNet preprocessor"),
        "{e}"
    );
    let e = start_error(&two, "controlnet-preprocess=canny:300:100");
    assert!(e.contains("LOW <= HIGH"), "{e}");
    let plain = model_dir("tiny-sd15", "unet/model.onnx");
    let e = start_error(&plain, "controlnet-scales=0.5");
    assert!(e.contains("takes no control images"), "{e}");
}

#[test]
fn feedback_preprocessor_blends_the_previous_output() {
    init();
    let dir = model_dir("tiny-controlnet", "unet/model.onnx");
    let desc = format!(
        "appsrc name=src format=time ! i2itransform name=i2i model=\"{}\" width={W} height={H} \
         {PROPS} controlnet-preprocess=feedback:0.6 ! video/x-raw,format=RGB ! appsink name=out sync=false",
        dir.display()
    );
    let pipeline = launch(&desc);
    let src = appsrc(&pipeline, "src");
    // 10 frames/s: after 200 ms without input the element finishes the frame in flight, so
    // each frame is out (and is the "previous output") before the next one is pushed.
    src.set_caps(Some(&video_caps("RGB", W, H, 10)));
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let frames = 4u64;
    let mut got = Vec::new();
    for k in 0..frames {
        let mut buf = gst::Buffer::from_mut_slice(picture(k, W, H));
        buf.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(100 * k));
        src.push_buffer(buf).unwrap();
        let sample = sink
            .try_pull_sample(gst::ClockTime::from_seconds(TIMEOUT.as_secs()))
            .expect("the frame comes out");
        got.push(sample.buffer().unwrap().map_readable().unwrap().to_vec());
    }
    src.end_of_stream().unwrap();
    pipeline.set_state(gst::State::Null).unwrap();

    // The engine, one frame and a drain at a time, with control k = 0.6 * output k-1 +
    // 0.4 * frame k (the frame itself for the first).
    let opts = cpu_options(dir.clone(), (W, H));
    let mut engine = Engine::load(&opts, &params()).unwrap();
    let mut prev: Option<Vec<u8>> = None;
    for k in 0..frames {
        let control = match &prev {
            Some(p) => gsti2i::preprocess::feedback(&picture(k, W, H), p, 0.6),
            None => picture(k, W, H),
        };
        let input = vec![InputFrame {
            tag: k,
            rgb: picture(k, W, H),
        }];
        let mut outs = engine.process_controlled(input, vec![control]).unwrap();
        outs.extend(engine.drain().unwrap());
        let mut rgb = Vec::new();
        diffusion::to_rgb8(&outs[0].pixels, W, H, &mut rgb);
        assert_eq!(got[k as usize], rgb, "frame {k}");
        prev = Some(rgb);
    }
    let plain = engine_controlled(&dir, frames, &[1.0], |k| picture(k, W, H));
    assert_ne!(
        got[3], plain[3],
        "the previous output reaches the ControlNet"
    );
}

#[test]
fn depth_preprocessor_equals_the_depth_model_and_bad_models_are_refused() {
    let dir = model_dir("tiny-controlnet", "unet/model.onnx");
    let depth_file = model_file("tiny-depth");
    let got = run_pipeline(
        &dir,
        &format!(
            "controlnet-preprocess=depth depth-model=\"{}\"",
            depth_file.display()
        ),
        4,
    );
    let mut depth = gsti2i::preprocess::depth::DepthModel::load(
        &depth_file,
        diffusion::ExecutionProvider::Cpu,
        0,
        1,
        true,
    )
    .unwrap();
    let maps: Vec<Vec<u8>> = (0..4)
        .map(|k| depth.run(&picture(k, W, H), W, H).unwrap())
        .collect();
    let (lo, hi) = (maps[0].iter().min().unwrap(), maps[0].iter().max().unwrap());
    assert!(
        hi - lo > 128,
        "the depth map spans most of 0..255: {lo}..{hi}"
    );
    let want = engine_controlled(&dir, 4, &[1.0], |k| maps[k as usize].clone());
    assert_eq!(got, want);

    // Not an image-to-depth graph: a UNet.
    let unet = model_dir("tiny-sd15", "unet/model.onnx")
        .join("unet")
        .join("model.onnx");
    let e = start_error(
        &dir,
        &format!(
            "controlnet-preprocess=depth depth-model=\"{}\"",
            unet.display()
        ),
    );
    assert!(
        e.contains("depth-model")
            && e.contains("tiny-sd15/unet/model.onnx")
            && e.contains("image-to-depth"),
        "{e}"
    );
    let e = start_error(&dir, "controlnet-preprocess=depth");
    assert!(e.contains("depth-model is not set"), "{e}");
    let e = start_error(
        &dir,
        "controlnet-preprocess=depth depth-model=/nonexistent/depth.onnx",
    );
    assert!(e.contains("/nonexistent/depth.onnx"), "{e}");
}

/// A single-file model (models/NAME/model.onnx).
fn model_file(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for base in ["models", "models-local"] {
        let f = root.join(base).join(name).join("model.onnx");
        if f.is_file() {
            return f;
        }
    }
    panic!("{name}/model.onnx is missing: run scripts/setup.sh (it generates the test models)");
}

#[test]
fn control_pad_frames_of_another_format_and_size_are_converted() {
    init();
    let dir = model_dir("tiny-controlnet", "unet/model.onnx");
    // GRAY8 rings at 32 x 32: converted to RGB at 64 x 64 on arrival.
    let small: Vec<u8> = rings(0)
        .chunks_exact(3)
        .enumerate()
        .filter(|(i, _)| (i / W as usize).is_multiple_of(2) && i.is_multiple_of(2))
        .map(|(_, px)| px[0])
        .collect();
    assert_eq!(small.len(), 32 * 32);
    let caps = video_caps("GRAY8", 32, 32, 1);
    let (got, fallbacks) =
        run_with_control_caps(&dir, "controlnet-preprocess=pad", 3, &[(0, small)], &caps);
    assert_eq!((got.len(), fallbacks), (3, 0));
    let itself = engine_controlled(&dir, 3, &[1.0], |k| picture(k, W, H));
    assert_ne!(
        got[0], itself[0],
        "the converted control frame reaches the ControlNet"
    );
}
