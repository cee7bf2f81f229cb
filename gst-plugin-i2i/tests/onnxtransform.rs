// SPDX-License-Identifier: MPL-2.0
//! onnxtransform in real pipelines on the generated style-tiny models: timestamps and
//! counts through batching, the live drop policy (every frame counted), a flushing seek,
//! load-time properties refused while running. The pixel values against onnxruntime-python
//! are checked in tests/python/test_onnxtransform.py.
//!
//! Models: `STYLE_MODELS` (a folder written by `scripts/make_models.py --style DIR`), else
//! models/style-tiny.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

mod pipeline_common;

use gst::prelude::*;
use pipeline_common::*;

fn model(name: &str) -> String {
    let dir = std::env::var_os("STYLE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("models")
                .join("style-tiny")
        });
    let file = dir.join(name);
    assert!(
        file.is_file(),
        "{} is missing: run scripts/setup.sh (or .venv/bin/python scripts/make_models.py --style {})",
        file.display(),
        dir.display()
    );
    file.display().to_string()
}

/// Runs `desc` (with an appsink named `out`) to EOS, feeding the appsrc named `src`
/// (if any) with `frames` RGB pictures of `w` x `h`, pts 1/30 s apart and offsets 0, 1, ...
fn run(desc: &str, frames: u64, w: i32, h: i32) -> Result<Run, String> {
    run_pictures(desc, frames, w, h, |i| {
        (0..(w * h * 3) as u64)
            .map(|v| ((v * 7 + i * 31) % 256) as u8)
            .collect()
    })
}

/// [`run`] with the pictures `picture(i)` (packed RGB).
fn run_pictures(
    desc: &str,
    frames: u64,
    w: i32,
    h: i32,
    picture: impl Fn(u64) -> Vec<u8>,
) -> Result<Run, String> {
    run_launch_with(desc, |pipeline| {
        if let Some(src) = pipeline.by_name("src") {
            let src = src.downcast::<gst_app::AppSrc>().unwrap();
            src.set_caps(Some(&video_caps("RGB", w as u32, h as u32, 30)));
            src.set_format(gst::Format::Time);
            for i in 0..frames {
                let mut buf = gst::Buffer::from_mut_slice(picture(i));
                {
                    let b = buf.get_mut().unwrap();
                    b.set_pts(gst::ClockTime::from_mseconds(i * 1000 / 30));
                    b.set_duration(gst::ClockTime::from_mseconds(33));
                    b.set_offset(i);
                }
                if src.push_buffer(buf).is_err() {
                    break;
                }
            }
            let _ = src.end_of_stream();
        }
    })
}

/// Width and height of a sample's caps.
fn size_of(s: &gst::Sample) -> (i32, i32) {
    let s = s.caps().unwrap().structure(0).unwrap();
    (s.get("width").unwrap(), s.get("height").unwrap())
}

/// The field `field` of the last `onnxtransform-stats` message.
fn count(r: &Run, field: &str) -> u64 {
    r.elements("onnxtransform-stats")
        .last()
        .expect("stats are posted at EOS")
        .get::<u64>(field)
        .unwrap()
}

#[test]
fn timestamps_and_counts_survive_batching() {
    let desc = format!(
        "appsrc name=src format=time ! onnxtransform model={} batch-size=4 threads=1 ! appsink name=out",
        model("model.onnx")
    );
    let r = run(&desc, 10, 32, 24).unwrap();
    assert_eq!(r.samples.len(), 10);
    for (i, s) in r.samples.iter().enumerate() {
        let b = s.buffer().unwrap();
        assert_eq!(b.offset(), i as u64);
        assert_eq!(
            b.pts(),
            Some(gst::ClockTime::from_mseconds(i as u64 * 1000 / 30))
        );
        assert_eq!(b.size(), 32 * 24 * 3);
    }
    assert_eq!((count(&r, "frames-in"), count(&r, "frames-out")), (10, 10));
    // 4 + 4 + the partial batch at EOS.
    assert_eq!(count(&r, "batches"), 3);
    let started = r
        .messages
        .iter()
        .find_map(|m| match m.view() {
            gst::MessageView::Element(e) => e
                .structure()
                .filter(|s| s.name() == "onnxtransform-started")
                .map(|s| s.to_owned()),
            _ => None,
        })
        .expect("a started message");
    assert_eq!(started.get::<&str>("provider").unwrap(), "cpu");
    assert_eq!(started.get::<&str>("input").unwrap(), "input1");
    assert_eq!(started.get::<&str>("layout").unwrap(), "nchw");
    // model.json next to model.onnx says pixels 0..255.
    assert_eq!(started.get::<f64>("scale").unwrap(), 1.0);
}

#[test]
fn dropping_late_frames_counts_every_frame() {
    // Frames pushed as fast as possible at a size that takes the model a while: with
    // drop-frames=always only the newest waits. However many are dropped, each input frame
    // is either out or counted late, with a QoS message.
    let desc = format!(
        "appsrc name=src format=time ! onnxtransform model={} drop-frames=always threads=1 ! appsink name=out",
        model("model.onnx")
    );
    let r = run(&desc, 40, 320, 240).unwrap();
    let (fin, fout, late) = (
        count(&r, "frames-in"),
        count(&r, "frames-out"),
        count(&r, "dropped-late"),
    );
    assert_eq!(fin, 40);
    assert_eq!(fout + late, fin, "in {fin} out {fout} late {late}");
    assert_eq!(r.samples.len() as u64, fout);
    let qos = r
        .messages
        .iter()
        .filter(|m| matches!(m.view(), gst::MessageView::Qos(_)))
        .count() as u64;
    assert_eq!(qos, late);
    // What comes out is in order and the last frame is never dropped.
    let offsets: Vec<u64> = r
        .samples
        .iter()
        .map(|s| s.buffer().unwrap().offset())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert_eq!(offsets.last(), Some(&39));
}

#[test]
fn output_size_follows_the_model() {
    let desc = format!(
        "appsrc name=src format=time ! onnxtransform model={} ! appsink name=out",
        model("sr2x-gray.onnx")
    );
    let r = run(&desc, 2, 40, 24).unwrap();
    assert_eq!(r.samples.len(), 2);
    assert_eq!(size_of(&r.samples[0]), (80, 48));
    // A fixed-size model: the input is scaled to it, whatever its size.
    let desc = format!(
        "appsrc name=src format=time ! onnxtransform model={} ! video/x-raw,format=I420 ! appsink name=out",
        model("fixed-64x48.onnx")
    );
    let r = run(&desc, 2, 100, 30).unwrap();
    let s = r.samples[0]
        .caps()
        .unwrap()
        .structure(0)
        .unwrap()
        .to_owned();
    assert_eq!(
        (
            s.get::<&str>("format").unwrap(),
            s.get::<i32>("width").unwrap()
        ),
        ("I420", 64)
    );
}

#[test]
fn a_flushing_seek_keeps_the_stream_going() {
    init();
    let desc = format!(
        "videotestsrc num-buffers=60 ! video/x-raw,width=64,height=48,framerate=30/1 ! onnxtransform name=t model={} batch-size=2 ! fakesink name=out sync=false",
        model("nhwc-uint8.onnx")
    );
    let pipeline = launch(&desc);
    pipeline.set_state(gst::State::Paused).unwrap();
    let bus = pipeline.bus().unwrap();
    bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::AsyncDone],
    )
    .expect("prerolled");
    pipeline
        .seek_simple(
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::ClockTime::from_mseconds(500),
        )
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS or an error");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    let el = pipeline.by_name("t").unwrap();
    let stats = el.property::<gst::Structure>("stats");
    assert!(stats.get::<u64>("frames-out").unwrap() > 0);
    // Setting the model while running is refused with a warning; the stream was not hurt.
    el.set_property("model", "elsewhere.onnx");
    assert_ne!(
        el.property::<Option<String>>("model").as_deref(),
        Some("elsewhere.onnx")
    );
    let warn = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(5),
            &[gst::MessageType::Warning],
        )
        .expect("a warning");
    let gst::MessageView::Warning(w) = warn.view() else {
        unreachable!()
    };
    assert!(
        w.error()
            .to_string()
            .contains("model refused while the stream runs")
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn downstream_can_ask_for_another_format_mid_stream() {
    init();
    let desc = format!(
        "appsrc name=src format=time ! onnxtransform model={} threads=1 ! capsfilter name=cf caps=video/x-raw,format=RGB ! appsink name=out sync=false",
        model("model.onnx")
    );
    let pipeline = launch(&desc);
    let src = appsrc(&pipeline, "src");
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    src.set_caps(Some(&video_caps("RGB", 32, 24, 30)));
    pipeline.set_state(gst::State::Playing).unwrap();
    let push = |i: u64| {
        let mut b = gst::Buffer::from_mut_slice(vec![(i * 40) as u8; 32 * 24 * 3]);
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(i * 33));
        src.push_buffer(b).unwrap();
    };
    let format = |s: &gst::Sample| {
        s.caps()
            .unwrap()
            .structure(0)
            .unwrap()
            .get::<String>("format")
            .unwrap()
    };
    let timeout = gst::ClockTime::from_seconds(30);
    push(0);
    let first = sink.try_pull_sample(timeout).expect("a first frame");
    assert_eq!(format(&first), "RGB");
    pipeline.by_name("cf").unwrap().set_property(
        "caps",
        gst::Caps::from_str("video/x-raw,format=I420").unwrap(),
    );
    push(1);
    let second = sink.try_pull_sample(timeout).expect("a second frame");
    assert_eq!(format(&second), "I420");
    assert_eq!(second.buffer().unwrap().size(), 32 * 24 * 3 / 2);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn latency_adds_the_model_call_on_live_input() {
    init();
    let desc = format!(
        "videotestsrc name=v is-live=true ! video/x-raw,width=64,height=48,framerate=30/1 ! onnxtransform name=t model={} threads=1 ! fakesink sync=true",
        model("model.onnx")
    );
    let pipeline = launch(&desc);
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    // Once a model call has been measured, the element announces its latency again.
    let deadline = Instant::now() + TIMEOUT;
    let t = pipeline.by_name("t").unwrap();
    while t
        .property::<gst::Structure>("stats")
        .get::<u64>("frames-out")
        .unwrap()
        < 3
    {
        assert!(Instant::now() < deadline, "no frames out");
        if let Some(m) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Error],
        ) {
            panic!("{m:?}");
        }
    }
    let latency = |pad: gst::Pad| {
        let mut q = gst::query::Latency::new();
        assert!(pad.query(&mut q));
        q.result()
    };
    let (live, ours, _) = latency(t.static_pad("src").unwrap());
    let (_, upstream, _) = latency(pipeline.by_name("v").unwrap().static_pad("src").unwrap());
    assert!(live);
    assert!(ours > upstream, "{ours} vs upstream {upstream}");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Writes a model whose output is one pixel, the average colour (GlobalAveragePool on
/// `[N, 3, H, W]`, declared output `[N, 3, 1, 1]`), with onnx from the project's venv.
fn one_pixel_model() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv").join("bin").join("python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("onnxtransform-1x1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("average.onnx");
    let script = r#"
import sys, onnx
from onnx import TensorProto, helper
g = helper.make_graph(
    [helper.make_node("GlobalAveragePool", ["input"], ["output"])], "average",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, 1, 1])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, sys.argv[1])
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

#[test]
fn a_model_with_a_one_pixel_output_gives_one_pixel_pictures() {
    // GStreamer pads RGB rows to 4 bytes, so a 1-pixel-wide picture is not 3 bytes a row:
    // the output side lays the model's pixel out with that stride (it once failed with
    // "cannot map the RGB picture").
    let file = one_pixel_model();
    for format in ["RGB", "RGBA", "I420"] {
        let desc = format!(
            "appsrc name=src format=time ! onnxtransform model={} threads=1 ! video/x-raw,format={format} ! appsink name=out",
            file.display()
        );
        // Left half black, right half (200, 100, 50): the average is (100, 50, 25).
        let r = run_pictures(&desc, 3, 16, 12, |_| {
            (0..16 * 12)
                .flat_map(|p| {
                    if p % 16 < 8 {
                        [0, 0, 0]
                    } else {
                        [200, 100, 50]
                    }
                })
                .collect()
        })
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(r.samples.len(), 3, "{format}");
        assert_eq!(size_of(&r.samples[0]), (1, 1), "{format}");
        let px = bytes(&r.samples[0]);
        match format {
            "RGB" | "RGBA" => assert_eq!(&px[..3], &[100, 50, 25], "{format}: {px:?}"),
            // BT.601 luma of (100, 50, 25), limited range: about 68.
            _ => assert!((60..=76).contains(&px[0]), "{format}: {px:?}"),
        }
    }
}

#[test]
fn a_folder_as_the_model_says_it_takes_an_onnx_file() {
    let file = PathBuf::from(model("model.onnx"));
    let dir = file.parent().unwrap();
    let err = run(
        &format!(
            "appsrc name=src format=time ! onnxtransform model={} ! appsink name=out",
            dir.display()
        ),
        1,
        16,
        16,
    )
    .expect_err("a folder is refused");
    assert!(err.contains("takes an .onnx file"), "{err}");
    let usual = dir.join("model.onnx").display().to_string();
    assert!(err.contains(&format!("e.g. {usual}")), "{err}");
    // The files it could have meant.
    assert!(
        err.contains("model.onnx") && err.contains("fixed-64x48.onnx"),
        "{err}"
    );
    // A folder without any.
    let empty = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("onnxtransform-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = run(
        &format!(
            "appsrc name=src format=time ! onnxtransform model={} ! appsink name=out",
            empty.display()
        ),
        1,
        16,
        16,
    )
    .expect_err("a folder is refused");
    assert!(
        err.contains("takes an .onnx file") && err.contains("holds none"),
        "{err}"
    );
}
