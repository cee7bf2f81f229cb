// SPDX-License-Identifier: MPL-2.0
//! i2itransform's conditioning properties in real pipelines: `latent-feedback` gives the
//! engine's frames with the same feedback (and 0 the frames without it), and is refused
//! outside 0..1.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gsti2i::diffusion::{self, CfgType, Engine, InputFrame, LoadOptions, StreamParams};

const W: u32 = 64;
const H: u32 = 64;
const TIMEOUT: Duration = Duration::from_secs(120);
const PROPS: &str = "prompt=\"a red fox\" seed=5 t-index-list=32,45 cfg-type=self \
                     guidance-scale=1.5 delta=0.9 threads=1";

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gsti2i::plugin_register_static().unwrap();
    });
}

fn model(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join(name);
    assert!(
        dir.join("unet").join("model.onnx").exists(),
        "{} is missing: run scripts/setup.sh (it generates the test models)",
        dir.display()
    );
    dir
}

/// A distinct packed RGB test picture per frame index.
fn picture(index: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity((W * H * 3) as usize);
    for y in 0..H as u64 {
        for x in 0..W as u64 {
            for c in 0..3u64 {
                v.push(((x * 4 + y * 2 + c * 70 + index * 23) % 256) as u8);
            }
        }
    }
    v
}

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
    let pipeline = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(
        &gst::Caps::builder("video/x-raw")
            .field("format", "RGB")
            .field("width", W as i32)
            .field("height", H as i32)
            .field("framerate", gst::Fraction::new(1, 1))
            .build(),
    ));
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let o = out.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let map = sample.buffer().unwrap().map_readable().unwrap();
                o.lock().unwrap().push(map.as_slice().to_vec());
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    for k in 0..frames {
        let mut buf = gst::Buffer::from_mut_slice(picture(k));
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_seconds(k));
            b.set_duration(gst::ClockTime::from_seconds(1));
        }
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
    let opts = LoadOptions {
        model_dir: dir.to_path_buf(),
        width: W,
        height: H,
        batch_size: 1,
        execution_provider: diffusion::ExecutionProvider::Cpu,
        intra_threads: 1,
        ..Default::default()
    };
    let mut engine = Engine::load(&opts, &params()).unwrap();
    set(&mut engine);
    let mut outs = Vec::new();
    for k in 0..frames {
        outs.extend(
            engine
                .process(vec![InputFrame {
                    tag: k,
                    rgb: picture(k),
                }])
                .unwrap(),
        );
    }
    outs.extend(engine.drain().unwrap());
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
    let dir = model("tiny-sd15");
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
