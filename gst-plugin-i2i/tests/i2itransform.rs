// SPDX-License-Identifier: MPL-2.0
//! i2itransform in real pipelines on the generated tiny models (64x64) and the demo model.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod pipeline_common;

use gst::prelude::*;
use gsti2i::diffusion::{Engine, StreamParams};
use pipeline_common::*;

const W: u32 = 64;
const H: u32 = 64;

fn tiny() -> String {
    model_dir("tiny-sd15", "unet/model.onnx")
        .display()
        .to_string()
}

fn caps_of(sample: &gst::Sample) -> (String, i32, i32) {
    let s = sample.caps().unwrap().structure(0).unwrap().to_owned();
    (
        s.get::<String>("format").unwrap(),
        s.get::<i32>("width").unwrap(),
        s.get::<i32>("height").unwrap(),
    )
}

/// A pipeline `appsrc name=src ! i2itransform name=i2i <props> ! appsink name=out`
/// fed with RGB pictures at 64x64.
struct AppPipeline {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    i2i: gst::Element,
    samples: Arc<Mutex<Vec<gst::Sample>>>,
}

impl AppPipeline {
    fn new(props: &str, extra: &str) -> AppPipeline {
        init();
        let desc = format!(
            "appsrc name=src format=time ! i2itransform name=i2i model=\"{}\" width={W} height={H} {props} ! appsink name=out {extra}",
            tiny()
        );
        let pipeline = launch(&desc);
        let src = appsrc(&pipeline, "src");
        src.set_caps(Some(&video_caps("RGB", W, H, 10)));
        let i2i = pipeline.by_name("i2i").unwrap();
        let samples = collect_samples(&pipeline);
        AppPipeline {
            pipeline,
            src,
            i2i,
            samples,
        }
    }

    fn push(&self, index: u64) {
        let mut buf = gst::Buffer::from_mut_slice(picture(index, W, H));
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(100 * index));
            b.set_dts(gst::ClockTime::from_mseconds(100 * index));
            b.set_duration(gst::ClockTime::from_mseconds(100));
            b.set_offset(index);
            b.set_offset_end(index + 1);
        }
        self.src.push_buffer(buf).unwrap();
    }

    fn wait_samples(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.samples.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} frames"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> Run {
        finish_run(&self.pipeline, &self.src, &self.samples)
    }
}

#[test]
fn jpegdec_links_directly() {
    let run = run_launch(&format!(
        "videotestsrc num-buffers=5 ! video/x-raw,width=96,height=72,framerate=15/1 ! jpegenc ! jpegdec \
         ! i2itransform model=\"{}\" width={W} height={H} ! appsink name=out",
        tiny()
    ))
    .unwrap();
    assert_eq!(run.samples.len(), 5);
    let caps = run.samples[0]
        .caps()
        .unwrap()
        .structure(0)
        .unwrap()
        .to_owned();
    assert_eq!(caps.get::<&str>("format").unwrap(), "RGB");
    assert_eq!(caps.get::<i32>("width").unwrap(), W as i32);
    assert_eq!(caps.get::<i32>("height").unwrap(), H as i32);
    assert_eq!(
        caps.get::<gst::Fraction>("framerate").unwrap(),
        gst::Fraction::new(15, 1)
    );
    assert_eq!(run.bytes(0).len(), (W * H * 3) as usize);
}

/// `cpu-arena=false` (each model call frees what it used) changes memory, not pictures: the
/// frames equal the default's byte for byte, calls of two sizes included (a last half batch).
#[test]
fn without_the_cpu_arena_the_frames_are_the_same() {
    let frames = |arena: bool| {
        let run = run_launch(&format!(
            "videotestsrc num-buffers=5 pattern=ball ! video/x-raw,format=RGB,width={W},height={H},framerate=15/1 \
             ! i2itransform name=i2i model=\"{}\" width={W} height={H} batch-size=2 threads=1 cpu-arena={arena} \
             ! appsink name=out",
            tiny()
        ))
        .unwrap();
        assert_eq!(run.samples.len(), 5);
        (0..5).map(|i| run.bytes(i)).collect::<Vec<_>>()
    };
    assert_eq!(frames(false), frames(true));
}

#[test]
fn every_input_format_is_accepted() {
    // YUY2 and UYVY: USB cameras and capture cards; GRAY8: machine-vision cameras.
    for format in [
        "RGB", "RGBx", "RGBA", "BGR", "BGRx", "BGRA", "I420", "NV12", "YUY2", "UYVY", "GRAY8",
    ] {
        let run = run_launch(&format!(
            "videotestsrc num-buffers=3 pattern=smpte ! video/x-raw,format={format},width=80,height=60,framerate=10/1 \
             ! i2itransform model=\"{}\" width={W} height={H} ! appsink name=out",
            tiny()
        ))
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(run.samples.len(), 3, "{format}");
        assert_eq!(caps_of(&run.samples[0]), ("RGB".into(), W as i32, H as i32));
    }
}

/// Mean absolute difference between two runs' first frames.
fn mean_diff(a: &Run, b: &Run) -> f64 {
    let (a, b) = (a.bytes(0), b.bytes(0));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn resize_modes_crop_and_fit_keep_the_aspect_ratio() {
    // A 2:1 input into the 1:1 model size.
    let src = "videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,format=RGB,width=128,height=64,framerate=10/1";
    let run = |pre: &str, props: &str| {
        run_launch(&format!(
            "{src} {pre} ! i2itransform model=\"{}\" width={W} height={H} t-index-list=49 {props} ! appsink name=out",
            tiny()
        ))
        .unwrap()
    };
    let stretch = run("", "");
    let crop = run("", "resize-mode=crop");
    let fit = run("", "resize-mode=fit");
    // The same pictures made by GStreamer's own elements in front of a stretching element:
    // the middle 64x64 (crop) and the whole picture scaled into 64x32 with black borders (fit).
    let crop_ref = run("! videocrop left=32 right=32", "");
    let fit_ref = run(
        "! videoscale add-borders=true ! video/x-raw,width=64,height=64,pixel-aspect-ratio=1/1",
        "",
    );
    let (c, f) = (mean_diff(&crop, &crop_ref), mean_diff(&fit, &fit_ref));
    eprintln!(
        "crop vs reference {c:.2}, fit vs reference {f:.2}, crop vs stretch {:.2}, fit vs stretch {:.2}",
        mean_diff(&crop, &stretch),
        mean_diff(&fit, &stretch)
    );
    assert!(c < 1.5 && f < 1.5, "crop {c}, fit {f}");
    assert!(mean_diff(&crop, &stretch) > 3.0 * c.max(1.0));
    assert!(mean_diff(&fit, &stretch) > 3.0 * f.max(1.0));
}

#[test]
fn size_from_input_rounds_to_what_the_model_needs() {
    let run = |props: &str| {
        run_launch(&format!(
            "videotestsrc num-buffers=2 ! video/x-raw,width=100,height=76,framerate=10/1 \
             ! i2itransform model=\"{}\" size-from-input=true {props} ! appsink name=out",
            tiny()
        ))
        .unwrap()
    };
    let r = run("");
    assert_eq!(r.samples.len(), 2);
    assert_eq!(caps_of(&r.samples[0]), ("RGB".into(), 96, 72));
    assert_eq!(r.bytes(0).len(), 96 * 72 * 3);
    let r = run("size-multiple=64");
    assert_eq!(caps_of(&r.samples[0]), ("RGB".into(), 64, 64));
    let err = run_launch(&format!(
        "videotestsrc num-buffers=1 ! i2itransform model=\"{}\" size-from-input=true size-multiple=12 ! appsink name=out",
        tiny()
    ))
    .unwrap_err();
    assert!(err.contains("size-multiple 12"), "{err}");
}

#[test]
fn size_from_input_follows_an_input_size_change() {
    let p = AppPipeline::new("size-from-input=true", "");
    p.pipeline.set_state(gst::State::Playing).unwrap();
    let push = |i: u64, w: u32, h: u32| {
        let mut buf = gst::Buffer::from_mut_slice(picture(i, w, h));
        let b = buf.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(100 * i));
        b.set_offset(i);
        p.src.push_buffer(buf).unwrap();
    };
    push(0, W, H);
    push(1, W, H);
    p.src.set_caps(Some(&video_caps("RGB", 128, 72, 10)));
    push(2, 128, 72);
    push(3, 128, 72);
    let run = p.finish();
    // The frames in flight leave at the old size, then the model runs at the new one.
    let sizes: Vec<_> = run.samples.iter().map(caps_of).collect();
    assert_eq!(
        sizes,
        vec![
            ("RGB".to_string(), 64, 64),
            ("RGB".to_string(), 64, 64),
            ("RGB".to_string(), 128, 72),
            ("RGB".to_string(), 128, 72),
        ]
    );
    assert_eq!(run.bytes(3).len(), 128 * 72 * 3);
}

#[test]
fn output_format_follows_downstream() {
    for (filter, format, size) in [
        ("video/x-raw,format=RGBA", "RGBA", W * H * 4),
        ("video/x-raw,format=I420", "I420", W * H * 3 / 2),
        ("video/x-raw,format=RGB", "RGB", W * H * 3),
        // Downstream's order wins over ours.
        ("video/x-raw,format={I420,RGB}", "I420", W * H * 3 / 2),
    ] {
        let run = run_launch(&format!(
            "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=48,framerate=10/1 \
             ! i2itransform model=\"{}\" width={W} height={H} ! {filter} ! appsink name=out",
            tiny()
        ))
        .unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(run.samples.len(), 2);
        assert_eq!(caps_of(&run.samples[0]).0, format, "{filter}");
        assert_eq!(run.bytes(0).len(), size as usize, "{filter}");
    }
}

#[test]
fn rgba_and_i420_outputs_hold_the_same_picture_as_rgb() {
    let rgb = run_launch(&format!(
        "videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,width=64,height=64,framerate=10/1 \
         ! i2itransform model=\"{}\" width={W} height={H} ! video/x-raw,format=RGB ! appsink name=out",
        tiny()
    ))
    .unwrap()
    .bytes(0);
    let rgba = run_launch(&format!(
        "videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,width=64,height=64,framerate=10/1 \
         ! i2itransform model=\"{}\" width={W} height={H} ! video/x-raw,format=RGBA ! appsink name=out",
        tiny()
    ))
    .unwrap()
    .bytes(0);
    for (i, px) in rgba.chunks_exact(4).enumerate() {
        assert_eq!(&px[..3], &rgb[i * 3..i * 3 + 3], "pixel {i}");
        assert_eq!(px[3], 255);
    }
}

#[test]
fn timestamps_offsets_and_metas_stay_with_their_frame() {
    let p = AppPipeline::new("t-index-list=20,35", "");
    let unix = gst::Caps::new_empty_simple("timestamp/x-unix");
    p.pipeline.set_state(gst::State::Playing).unwrap();
    for i in 0..6u64 {
        let mut buf = gst::Buffer::from_mut_slice(picture(i, W, H));
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(1000 + 100 * i));
            b.set_dts(gst::ClockTime::from_mseconds(990 + 100 * i));
            b.set_duration(gst::ClockTime::from_mseconds(90 + i));
            b.set_offset(100 + i);
            b.set_offset_end(101 + i);
            gst::ReferenceTimestampMeta::add(
                b,
                &unix,
                gst::ClockTime::from_mseconds(1_700_000_000_000 + i),
                gst::ClockTime::NONE,
            );
        }
        p.src.push_buffer(buf).unwrap();
    }
    let run = p.finish();
    assert_eq!(run.samples.len(), 6);
    for (i, s) in run.samples.iter().enumerate() {
        let i = i as u64;
        let b = s.buffer().unwrap();
        assert_eq!(b.pts(), Some(gst::ClockTime::from_mseconds(1000 + 100 * i)));
        assert_eq!(b.dts(), Some(gst::ClockTime::from_mseconds(990 + 100 * i)));
        assert_eq!(b.duration(), Some(gst::ClockTime::from_mseconds(90 + i)));
        assert_eq!(b.offset(), 100 + i);
        assert_eq!(b.offset_end(), 101 + i);
        let metas: Vec<_> = b
            .iter_meta::<gst::ReferenceTimestampMeta>()
            .map(|m| (m.reference().to_owned(), m.timestamp()))
            .collect();
        assert_eq!(
            metas,
            vec![(
                unix.clone(),
                gst::ClockTime::from_mseconds(1_700_000_000_000 + i)
            )],
            "frame {i}"
        );
        // The input's VideoMeta (if any) describes the input picture: it must not travel.
        assert!(
            b.meta::<gst_video::VideoMeta>()
                .is_none_or(|m| m.width() == W)
        );
    }
}

#[test]
fn every_frame_comes_out_once_in_order() {
    // 7 frames: with batch-size 3 the last batch is partial at EOS.
    for batch in [1u32, 3] {
        for t in ["20", "20,35", "10,25,40"] {
            let p = AppPipeline::new(&format!("batch-size={batch} t-index-list={t}"), "");
            p.pipeline.set_state(gst::State::Playing).unwrap();
            for i in 0..7 {
                p.push(i);
            }
            let run = p.finish();
            let offsets: Vec<u64> = run
                .samples
                .iter()
                .map(|s| s.buffer().unwrap().offset())
                .collect();
            assert_eq!(offsets, (0..7).collect::<Vec<_>>(), "batch {batch}, t {t}");
            let expect: Vec<_> = (0..7)
                .map(|i| Some(gst::ClockTime::from_mseconds(100 * i)))
                .collect();
            assert_eq!(run.pts(), expect, "batch {batch}, t {t}");
        }
    }
}

#[test]
fn batch_size_does_not_change_the_pictures() {
    let run_with = |batch: u32| {
        let p = AppPipeline::new(
            &format!("batch-size={batch} t-index-list=10,25,40 threads=1"),
            "",
        );
        p.pipeline.set_state(gst::State::Playing).unwrap();
        for i in 0..5 {
            p.push(i);
        }
        p.finish()
    };
    let (a, b) = (run_with(1), run_with(3));
    for i in 0..5 {
        assert_eq!(a.bytes(i), b.bytes(i), "frame {i}");
    }
}

/// Output of the element == the engine's output for the same RGB frames.
#[test]
fn element_output_equals_engine_output() {
    let p = AppPipeline::new(
        "t-index-list=20,35 prompt=\"a red fox\" seed=7 threads=1",
        "",
    );
    p.pipeline.set_state(gst::State::Playing).unwrap();
    for i in 0..4 {
        p.push(i);
    }
    let i2i = p.i2i.clone();
    let run = p.finish();
    assert_eq!(
        i2i.property::<Option<String>>("provider").as_deref(),
        Some("cpu")
    );
    let stats = i2i.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames-in").unwrap(), 4, "{stats}");
    assert_eq!(stats.get::<u64>("frames-out").unwrap(), 4, "{stats}");
    assert_eq!(stats.get::<&str>("provider").unwrap(), "cpu", "{stats}");
    assert!(stats.get::<u64>("batches").unwrap() >= 4, "{stats}");

    let opts = cpu_options(model_dir("tiny-sd15", "unet/model.onnx"), (W, H));
    let params = StreamParams {
        prompt: "a red fox".into(),
        seed: 7,
        t_index_list: vec![20, 35],
        ..Default::default()
    };
    let mut engine = Engine::load(&opts, &params).unwrap();
    let want = engine_pictures(&mut engine, 4, (W, H), |_, _| {});
    assert_eq!(want.len(), 4);
    for (i, rgb) in want.iter().enumerate() {
        assert_eq!(&run.bytes(i), rgb, "frame {i}");
    }
}

/// Pushes 8 identical pictures and applies `change` once 2 frames are out.
fn run_with_change(props: &str, change: impl FnOnce(&AppPipeline)) -> Run {
    let p = AppPipeline::new(props, "");
    p.pipeline.set_state(gst::State::Playing).unwrap();
    let push_same = |i: u64| {
        let mut buf = gst::Buffer::from_mut_slice(picture(0, W, H));
        let b = buf.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(100 * i));
        b.set_offset(i);
        p.src.push_buffer(buf).unwrap();
    };
    for i in 0..4 {
        push_same(i);
    }
    p.wait_samples(2);
    change(&p);
    for i in 4..8 {
        push_same(i);
    }
    p.finish()
}

fn check_change(run: &Run, name: &str) -> u64 {
    assert_eq!(run.samples.len(), 8);
    let applied = run.elements("i2i-settings-applied");
    assert_eq!(applied.len(), 1, "{applied:?}");
    let changed = applied[0].get::<gst::Array>("changed").unwrap();
    assert!(
        changed.iter().any(|v| v.get::<&str>().unwrap() == name),
        "{applied:?}"
    );
    let index = applied[0].get::<u64>("frame-index").unwrap();
    // Frames 0 and 1 were out before the change; it holds from a later frame on.
    assert!((2..8).contains(&index), "{applied:?}");
    // Same input picture throughout: the first output (old settings) and the last
    // (new settings) differ.
    assert_ne!(
        run.bytes(0),
        run.bytes(7),
        "the change did not change the picture"
    );
    index
}

#[test]
fn live_prompt_change_changes_output_and_is_announced() {
    let run = run_with_change("t-index-list=20,35", |p| {
        p.i2i.set_property("prompt", "a blue ocean");
    });
    check_change(&run, "prompt");
    assert_eq!(
        run.elements("i2i-settings-applied")[0]
            .get::<&str>("prompt")
            .unwrap(),
        "a blue ocean"
    );
    // The last frame equals a run that had the new prompt from the start.
    let fresh = run_with_change("t-index-list=20,35 prompt=\"a blue ocean\"", |_| ());
    assert_eq!(fresh.bytes(7), run.bytes(7));
}

#[test]
fn live_seed_change_changes_output() {
    let run = run_with_change("t-index-list=20", |p| {
        p.i2i.set_property("seed", 12345u64);
    });
    check_change(&run, "seed");
    assert_eq!(
        run.elements("i2i-settings-applied")[0]
            .get::<u64>("seed")
            .unwrap(),
        12345
    );
}

fn settings_buffer(json: &str) -> gst::Buffer {
    gst::Buffer::from_slice(json.as_bytes().to_vec())
}

/// Video from `src`, settings from `settings`.
fn settings_pipeline(props: &str) -> (AppPipeline, gst_app::AppSrc) {
    // These runs send settings mid-stream: the first frame need not wait for them.
    let p = AppPipeline::new(&format!("wait-for-settings=false {props}"), "");
    let settings = gst_app::AppSrc::builder()
        .name("settings")
        .caps(&gst::Caps::new_empty_simple("application/x-i2i-settings"))
        .build();
    p.pipeline.add(&settings).unwrap();
    settings
        .static_pad("src")
        .unwrap()
        .link(&p.i2i.static_pad("settings").unwrap())
        .unwrap();
    (p, settings)
}

#[test]
fn settings_pad_update_is_applied() {
    let (p, settings) = settings_pipeline("t-index-list=20");
    let i2i = p.i2i.clone();
    p.pipeline.set_state(gst::State::Playing).unwrap();
    for i in 0..4 {
        p.push(i);
    }
    p.wait_samples(2);
    settings
        .push_buffer(settings_buffer(
            r#"{"prompt":"a green forest","seed":99,"guidance-scale":1.5,"t-index-list":"15,30"}"#,
        ))
        .unwrap();
    // The settings stream ends: the video goes on.
    settings.end_of_stream().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while i2i.property::<u64>("seed") != 99 {
        assert!(Instant::now() < deadline, "settings were not taken");
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 4..8 {
        p.push(i);
    }
    let run = p.finish();
    assert_eq!(run.samples.len(), 8);
    let applied = run.elements("i2i-settings-applied");
    assert_eq!(applied.len(), 1, "{applied:?}");
    let a = &applied[0];
    assert_eq!(a.get::<&str>("prompt").unwrap(), "a green forest");
    assert_eq!(a.get::<u64>("seed").unwrap(), 99);
    assert_eq!(a.get::<&str>("t-index-list").unwrap(), "15,30");
    assert!((a.get::<f64>("guidance-scale").unwrap() - 1.5).abs() < 1e-6);
    assert_eq!(i2i.property::<String>("prompt"), "a green forest");
    assert_eq!(i2i.property::<String>("t-index-list"), "15,30");
}

#[test]
fn first_frame_waits_for_the_first_settings() {
    // wait-for-settings is on by default; the settings come 300 ms after the video.
    let (p, settings) = settings_pipeline("wait-for-settings=true");
    p.pipeline.set_state(gst::State::Playing).unwrap();
    for i in 0..3 {
        p.push(i);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        p.samples.lock().unwrap().is_empty(),
        "a frame left before the settings"
    );
    settings
        .push_buffer(settings_buffer(r#"{"prompt":"a red fox"}"#))
        .unwrap();
    let run = p.finish();
    assert_eq!(run.samples.len(), 3);
    assert!(run.warnings().is_empty(), "{:?}", run.warnings());
    // Applied from the very first frame on.
    let applied = run.elements("i2i-settings-applied");
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0].get::<u64>("frame-index").unwrap(), 0);
    assert_eq!(applied[0].get::<&str>("prompt").unwrap(), "a red fox");
}

#[test]
fn no_first_settings_gives_a_warning_after_the_timeout() {
    let (p, _settings) = settings_pipeline("wait-for-settings=true settings-timeout=300");
    p.pipeline.set_state(gst::State::Playing).unwrap();
    for i in 0..3 {
        p.push(i);
    }
    let run = p.finish();
    assert_eq!(run.samples.len(), 3);
    let warnings = run.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("No settings arrived") && warnings[0].contains("300 ms"),
        "{warnings:?}"
    );
}

#[test]
fn invalid_settings_are_warned_about_and_the_stream_continues() {
    let (p, settings) = settings_pipeline("t-index-list=20");
    let i2i = p.i2i.clone();
    p.pipeline.set_state(gst::State::Playing).unwrap();
    p.push(0);
    for bad in [
        "{not json",
        r#"{"sed": 1}"#,
        r#"{"t-index-list": "a,b"}"#,
        r#"{"guidance-scale": 1000}"#,
        r#"{"cfg-type": "half"}"#,
    ] {
        settings.push_buffer(settings_buffer(bad)).unwrap();
    }
    let deadline = Instant::now() + TIMEOUT;
    while i2i
        .property::<gst::Structure>("stats")
        .get::<u64>("settings-rejected")
        .unwrap()
        < 5
    {
        assert!(Instant::now() < deadline, "settings were not all read");
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 1..4 {
        p.push(i);
    }
    let run = p.finish();
    assert_eq!(run.samples.len(), 4);
    assert!(run.elements("i2i-settings-applied").is_empty());
    let warnings = run.warnings().join("\n");
    for needle in ["\"a,b\"", "sed", "guidance-scale: 1000", "\"half\""] {
        assert!(warnings.contains(needle), "{needle} not in {warnings}");
    }
    assert_eq!(i2i.property::<String>("t-index-list"), "20");
}

#[test]
fn invalid_property_values_are_refused_and_the_old_value_stays() {
    // While the stream runs: refused, the old value stays, a WARNING names the value.
    let p = AppPipeline::new("", "");
    p.pipeline.set_state(gst::State::Playing).unwrap();
    // n = 2: the first frame comes out when the second goes in.
    p.push(0);
    p.push(1);
    p.wait_samples(1);
    let bus = p.pipeline.bus().unwrap();
    let i2i = &p.i2i;
    let warning = || {
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(5),
                &[gst::MessageType::Warning],
            )
            .expect("a warning");
        let gst::MessageView::Warning(w) = msg.view() else {
            unreachable!()
        };
        w.error().to_string()
    };
    for bad in ["a,b", "45,32", "50", ""] {
        i2i.set_property("t-index-list", bad);
        assert_eq!(i2i.property::<String>("t-index-list"), "32,45");
        let text = warning();
        assert!(text.contains(&format!("\"{bad}\"")), "{text}");
    }
    // The default t-index-list "32,45" needs at least 46 steps.
    i2i.set_property("num-inference-steps", 46u32);
    assert_eq!(i2i.property::<u32>("num-inference-steps"), 46);
    i2i.set_property("num-inference-steps", 45u32);
    assert_eq!(i2i.property::<u32>("num-inference-steps"), 46);
    assert!(warning().contains("num-inference-steps 45"));
    // A load-time property.
    i2i.set_property("width", 128u32);
    assert_eq!(i2i.property::<u32>("width"), W);
    assert!(warning().contains("width"));
    i2i.set_property("t-index-list", "0, 10 ,20");
    assert_eq!(i2i.property::<String>("t-index-list"), "0,10,20");
    p.push(2);
    assert_eq!(p.finish().samples.len(), 3);
}

/// Runs a short pipeline with `props` on the element (set in the order given, as
/// gst-launch does) and returns the error text, if any.
fn start_with(props: &str) -> Result<Run, String> {
    run_launch(&format!(
        "videotestsrc num-buffers=3 ! video/x-raw,width=64,height=64 ! i2itransform name=i2i model=\"{}\" width=64 height=64 {props} ! appsink name=out",
        tiny()
    ))
}

#[test]
fn properties_set_before_start_are_checked_together_in_any_order() {
    // Steps before or after the list that needs them: both run with 30 steps.
    for props in [
        "num-inference-steps=30 t-index-list=5,20",
        "t-index-list=5,20 num-inference-steps=30",
    ] {
        let run = start_with(props).unwrap_or_else(|e| panic!("{props}: {e}"));
        let started = &run.elements("i2itransform-started")[0];
        assert_eq!(
            started.get::<u32>("num-inference-steps").unwrap(),
            30,
            "{props}"
        );
        assert_eq!(started.get::<String>("t-index-list").unwrap(), "5,20");
        assert!(run.warnings().is_empty(), "{props}: {:?}", run.warnings());
        assert_eq!(run.samples.len(), 3);
    }
}

#[test]
fn an_invalid_property_fails_the_start_naming_it() {
    for (props, expect) in [
        (
            "width=1366",
            &["width", "1366", "multiple of 8", "1360"][..],
        ),
        ("height=60", &["height", "60", "multiple of 8"][..]),
        ("t-index-list=a,b", &["t-index-list", "\"a,b\""][..]),
        ("t-index-list=20,60", &["t-index-list", "60", "0 to 49"][..]),
        (
            "num-inference-steps=40",
            &["num-inference-steps", "40", "45"][..],
        ),
        ("prompt-blend=nonsense:x", &["prompt-blend", "nonsense"][..]),
    ] {
        let err = start_with(props).expect_err(props);
        for e in expect {
            assert!(err.contains(e), "{props}: {e} not in {err}");
        }
    }
}

#[test]
fn stats_and_provider_are_posted_as_element_messages() {
    // stats-interval=1: a stats message after (nearly) every frame, and one at EOS.
    let run = start_with("stats-interval=1").unwrap();
    let started = run.elements("i2itransform-started");
    assert_eq!(started.len(), 1);
    let s = &started[0];
    assert_eq!(s.get::<String>("provider").unwrap(), "cpu");
    assert!(s.get::<String>("model").unwrap().contains("tiny-sd15"));
    assert_eq!(s.get::<u32>("width").unwrap(), 64);
    assert_eq!(s.get::<u32>("height").unwrap(), 64);
    let stats = run.elements("i2itransform-stats");
    assert!(stats.len() >= 2, "{stats:?}");
    let last = stats.last().unwrap();
    assert_eq!(last.get::<u64>("frames-out").unwrap(), 3);
    assert_eq!(last.get::<String>("provider").unwrap(), "cpu");
}

#[test]
fn bad_model_directory_is_an_element_error() {
    let err = run_launch(
        "videotestsrc num-buffers=2 ! i2itransform model=/nonexistent/model-dir width=64 height=64 ! appsink name=out",
    )
    .unwrap_err();
    assert!(err.contains("/nonexistent/model-dir"), "{err}");

    // A model directory with a missing graph names the missing file.
    let dir = std::env::temp_dir().join(format!("i2i-bad-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&model_dir("tiny-sd15", "unet/model.onnx"), &dir);
    std::fs::remove_file(dir.join("vae_decoder").join("model.onnx")).unwrap();
    let err = run_launch(&format!(
        "videotestsrc num-buffers=2 ! i2itransform model=\"{}\" width=64 height=64 ! appsink name=out",
        dir.display()
    ))
    .unwrap_err();
    assert!(err.contains("vae_decoder"), "{err}");
    assert!(err.contains("model.onnx"), "{err}");

    // No model at all.
    let err =
        run_launch("videotestsrc num-buffers=2 ! i2itransform ! appsink name=out").unwrap_err();
    assert!(err.contains("model"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_relative_model_path_names_where_it_was_looked_for() {
    // The tests run in gst-plugin-i2i/, which has no models/ folder: like a user who starts
    // the pipeline in another folder than the repository.
    let tried = std::env::current_dir().unwrap().join("models").join("demo");
    assert!(!tried.exists(), "{} exists", tried.display());
    let err = run_launch(
        "videotestsrc num-buffers=2 ! i2itransform model=models/demo width=64 height=64 ! appsink name=out",
    )
    .unwrap_err();
    assert!(err.contains(&tried.display().to_string()), "{err}");
    assert!(
        err.contains("a relative path starts at the current folder"),
        "{err}"
    );
    // A graph file where the model directory is meant.
    let file = model_dir("tiny-sd15", "unet/model.onnx").join("unet/model.onnx");
    let err = run_launch(&format!(
        "videotestsrc num-buffers=2 ! i2itransform model=\"{}\" width=64 height=64 ! appsink name=out",
        file.display()
    ))
    .unwrap_err();
    assert!(
        err.contains("is a file") && err.contains("the directory that holds"),
        "{err}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn flushing_seek_mid_stream() {
    init();
    let pipeline = launch(&format!(
        "videotestsrc ! video/x-raw,width=64,height=64,framerate=10/1 \
         ! i2itransform name=i2i model=\"{}\" width={W} height={H} t-index-list=10,25,40 batch-size=2 \
         ! appsink name=out",
        tiny()
    ));
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    sink.set_property("sync", false);
    pipeline.set_state(gst::State::Playing).unwrap();
    for _ in 0..5 {
        sink.try_pull_sample(gst::ClockTime::from_seconds(30))
            .expect("frame before the seek");
    }
    pipeline
        .seek(
            1.0,
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::SeekType::Set,
            gst::ClockTime::from_seconds(2),
            gst::SeekType::Set,
            gst::ClockTime::from_mseconds(3000),
        )
        .unwrap();
    let mut pts = Vec::new();
    let mut before = 0;
    loop {
        match sink.try_pull_sample(gst::ClockTime::from_seconds(30)) {
            Some(s) => {
                let p = s.buffer().unwrap().pts().unwrap();
                if p < gst::ClockTime::from_seconds(2) {
                    // Pulled before the flush reached the sink.
                    assert!(pts.is_empty(), "old frame {p} after new ones {pts:?}");
                    before += 1;
                    continue;
                }
                pts.push(p);
            }
            None => {
                assert!(sink.is_eos(), "no EOS after the seek");
                break;
            }
        }
    }
    let expect: Vec<_> = (20..30)
        .map(|i| gst::ClockTime::from_mseconds(100 * i))
        .collect();
    assert_eq!(pts, expect, "({before} old frames before the flush)");
    let stats = pipeline
        .by_name("i2i")
        .unwrap()
        .property::<gst::Structure>("stats");
    assert_eq!(
        stats.get::<u64>("frames-in").unwrap(),
        stats.get::<u64>("frames-out").unwrap() + stats.get::<u64>("dropped-flush").unwrap(),
        "{stats}"
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn state_changes_mid_stream_stop_cleanly() {
    init();
    let pipeline = launch(&format!(
        "videotestsrc ! video/x-raw,width=64,height=64,framerate=10/1 \
         ! i2itransform name=i2i model=\"{}\" width={W} height={H} max-queue=2 ! appsink name=out",
        tiny()
    ));
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    sink.set_property("sync", false);
    for _ in 0..2 {
        pipeline.set_state(gst::State::Playing).unwrap();
        for _ in 0..3 {
            sink.try_pull_sample(gst::ClockTime::from_seconds(30))
                .expect("frame");
        }
        // Load-time settings are refused while running.
        let i2i = pipeline.by_name("i2i").unwrap();
        i2i.set_property("width", 128u32);
        i2i.set_property("batch-size", 2u32);
        assert_eq!(i2i.property::<u32>("width"), W);
        assert_eq!(i2i.property::<u32>("batch-size"), 1);
        // Stop while upstream is blocked on the full queue.
        let t = Instant::now();
        pipeline.set_state(gst::State::Null).unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}

#[test]
fn latency_query_adds_batching_stream_batch_and_inference() {
    init();
    let pipeline = launch(&format!(
        "videotestsrc is-live=true name=src ! video/x-raw,width=64,height=64,framerate=10/1 \
         ! i2itransform name=i2i model=\"{}\" width={W} height={H} t-index-list=20,35 batch-size=2 \
         ! fakesink sync=true",
        tiny()
    ));
    let i2i = pipeline.by_name("i2i").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while i2i
        .property::<gst::Structure>("stats")
        .get::<u64>("frames-out")
        .unwrap()
        < 4
    {
        assert!(Instant::now() < deadline, "no frames");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut upstream = gst::query::Latency::new();
    assert!(i2i.static_pad("sink").unwrap().peer_query(&mut upstream));
    let mut ours = gst::query::Latency::new();
    assert!(i2i.static_pad("src").unwrap().query(&mut ours));
    let stats = i2i.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();

    let (up_live, up_min, _) = upstream.result();
    let (live, min, _) = ours.result();
    assert!(up_live && live);
    let added = min - up_min;
    // n = 2, batch 2: (n-1)*2 + (2-1) = 3 frames of 100 ms, plus one model call.
    let frames = gst::ClockTime::from_mseconds(300);
    let call_ms = stats.get::<f64>("avg-inference-ms").unwrap();
    assert!(call_ms > 0.0, "{stats}");
    assert!(added > frames, "added {added}");
    let extra_ms = (added - frames).nseconds() as f64 / 1e6;
    assert!(
        extra_ms >= call_ms * 0.5 && extra_ms <= call_ms * 2.0 + 1.0,
        "added {added}, {stats}"
    );

    // Not live upstream: live stays false.
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc ! video/x-raw,width=64,height=64,framerate=10/1 \
         ! i2itransform name=i2i model=\"{}\" width={W} height={H} ! fakesink",
        tiny()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Paused).unwrap();
    pipeline.state(gst::ClockTime::from_seconds(30)).0.unwrap();
    let mut q = gst::query::Latency::new();
    let i2i = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("i2i")
        .unwrap();
    assert!(i2i.static_pad("src").unwrap().query(&mut q));
    assert!(!q.result().0);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn guidance_scale_is_controllable() {
    let p = AppPipeline::new("t-index-list=20", "");
    let cs = gst_controller_source(&p.i2i);
    p.pipeline.set_state(gst::State::Playing).unwrap();
    for i in 0..6 {
        p.push(i);
    }
    let run = p.finish();
    drop(cs);
    let applied = run.elements("i2i-settings-applied");
    // The interpolation reaches 3.0 by the last frames.
    let last = applied.last().expect("controller changes are applied");
    assert!(
        last.get::<f64>("guidance-scale").unwrap() > 2.0,
        "{applied:?}"
    );
}

/// Drives `guidance-scale` from 1.2 at 0 s to 3.0 at 0.5 s.
fn gst_controller_source(el: &gst::Element) -> gst_controller::InterpolationControlSource {
    use gst_controller::prelude::*;
    let cs = gst_controller::InterpolationControlSource::new();
    cs.set_mode(gst_controller::InterpolationMode::Linear);
    cs.set(gst::ClockTime::ZERO, 1.2);
    cs.set(gst::ClockTime::from_mseconds(500), 3.0);
    let binding = gst_controller::DirectControlBinding::new_absolute(el, "guidance-scale", &cs);
    el.add_control_binding(&binding).unwrap();
    cs
}

/// The demo model at its real size, straight after a JPEG decoder, with a prompt.
#[test]
fn demo_model_at_512() {
    let demo = model_dir("demo", "unet/model.onnx").display().to_string();
    let launch = |prompt: &str| {
        run_launch(&format!(
            "videotestsrc num-buffers=3 pattern=smpte ! video/x-raw,width=640,height=480,framerate=15/1 \
             ! jpegenc ! jpegdec ! i2itransform model=\"{demo}\" prompt=\"{prompt}\" ! appsink name=out"
        ))
        .unwrap()
    };
    let red = launch("red");
    assert_eq!(red.samples.len(), 3);
    assert_eq!(caps_of(&red.samples[0]), ("RGB".into(), 512, 512));
    let pic = red.bytes(2);
    assert_eq!(pic.len(), 512 * 512 * 3);
    assert!(pic.iter().any(|&v| v != pic[0]), "a flat picture");
    // The prompt shows in the picture.
    let blue = launch("blue");
    assert_ne!(blue.bytes(2), pic);
}

/// Upstream blocks while `max-queue` frames wait: the queue never grows past it.
#[test]
fn backpressure_bounds_the_queue() {
    let p = AppPipeline::new("max-queue=2 t-index-list=10,25,40", "");
    let i2i = p.i2i.clone();
    p.pipeline.set_state(gst::State::Playing).unwrap();
    // appsrc holds everything; its streaming thread then pushes as fast as we take.
    for i in 0..40 {
        p.push(i);
    }
    let mut max_seen = 0;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let stats = i2i.property::<gst::Structure>("stats");
        max_seen = max_seen.max(stats.get::<u32>("queued").unwrap());
        if stats.get::<u64>("frames-in").unwrap() == 40 {
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        std::thread::sleep(Duration::from_micros(200));
    }
    let run = p.finish();
    assert_eq!(run.samples.len(), 40);
    assert!((1..=2).contains(&max_seen), "queue reached {max_seen}");
}

/// Identical frames with the similarity filter on: skipped frames still come out (the
/// previous picture again) and are counted.
#[test]
fn similarity_filter_skips_are_counted() {
    let p = AppPipeline::new(
        "t-index-list=20,35 similarity-threshold=0.95 max-skip-frames=3",
        "",
    );
    let i2i = p.i2i.clone();
    p.pipeline.set_state(gst::State::Playing).unwrap();
    for i in 0..10u64 {
        let mut buf = gst::Buffer::from_mut_slice(picture(0, W, H));
        let b = buf.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(100 * i));
        b.set_offset(i);
        p.src.push_buffer(buf).unwrap();
    }
    let run = p.finish();
    assert_eq!(run.samples.len(), 10);
    let offsets: Vec<u64> = run
        .samples
        .iter()
        .map(|s| s.buffer().unwrap().offset())
        .collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    let skipped = i2i
        .property::<gst::Structure>("stats")
        .get::<u64>("frames-skipped")
        .unwrap();
    // Never more than 3 in a row: at most 7 of the 9 after the first.
    assert!((1..=7).contains(&skipped), "skipped {skipped}");
}

/// A live change of the number of steps drains the frames in flight first: none is lost
/// or repeated, and the latency is announced again.
#[test]
fn live_t_index_list_change_keeps_every_frame() {
    for (from, to) in [("20,35", "10,25,40"), ("10,25,40", "30"), ("30", "20,35")] {
        let p = AppPipeline::new(&format!("t-index-list={from} batch-size=2"), "");
        let i2i = p.i2i.clone();
        p.pipeline.set_state(gst::State::Playing).unwrap();
        for i in 0..8 {
            p.push(i);
        }
        p.wait_samples(2);
        i2i.set_property("t-index-list", to);
        for i in 8..13 {
            p.push(i);
        }
        let run = p.finish();
        let offsets: Vec<u64> = run
            .samples
            .iter()
            .map(|s| s.buffer().unwrap().offset())
            .collect();
        assert_eq!(offsets, (0..13).collect::<Vec<_>>(), "{from} -> {to}");
        let applied = run.elements("i2i-settings-applied");
        assert_eq!(applied.len(), 1, "{applied:?}");
        assert_eq!(applied[0].get::<&str>("t-index-list").unwrap(), to);
        assert!(
            run.messages
                .iter()
                .any(|m| m.type_() == gst::MessageType::Latency),
            "no LATENCY message"
        );
    }
}

/// Downstream changes its mind mid-stream (RECONFIGURE): the next frames come in the new
/// format, none is lost.
#[test]
fn downstream_renegotiation_mid_stream() {
    init();
    let pipeline = launch(&format!(
        "appsrc name=src format=time ! i2itransform model=\"{}\" width={W} height={H} t-index-list=20,35 \
         ! capsfilter name=cf caps=video/x-raw,format=RGB ! appsink name=out",
        tiny()
    ));
    let src = appsrc(&pipeline, "src");
    src.set_caps(Some(&video_caps("RGB", W, H, 10)));
    let samples = collect_samples(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    let push = |i: u64| {
        let mut buf = gst::Buffer::from_mut_slice(picture(i, W, H));
        let b = buf.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(100 * i));
        b.set_offset(i);
        src.push_buffer(buf).unwrap();
    };
    for i in 0..4 {
        push(i);
    }
    let deadline = Instant::now() + TIMEOUT;
    while samples.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "no frames");
        std::thread::sleep(Duration::from_millis(5));
    }
    pipeline.by_name("cf").unwrap().set_property(
        "caps",
        gst::Caps::from_str("video/x-raw,format=I420").unwrap(),
    );
    for i in 4..8 {
        push(i);
    }
    src.end_of_stream().unwrap();
    let mut messages = Vec::new();
    wait_eos(&pipeline, &mut messages).unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    let samples = samples.lock().unwrap();
    assert_eq!(samples.len(), 8);
    let offsets: Vec<u64> = samples
        .iter()
        .map(|s| s.buffer().unwrap().offset())
        .collect();
    assert_eq!(offsets, (0..8).collect::<Vec<_>>());
    assert_eq!(caps_of(&samples[0]).0, "RGB");
    let last = &samples[7];
    assert_eq!(caps_of(last).0, "I420");
    assert_eq!(last.buffer().unwrap().size(), (W * H * 3 / 2) as usize);
}

/// A DRAIN query (a worker finishing its jobs, a decoder reconfiguring) returns only once
/// every frame sent before it is out: the partial batch and the stream batch included.
#[test]
fn drain_query_brings_every_frame_out() {
    let p = AppPipeline::new("batch-size=2 t-index-list=10,25,40", "");
    let i2i = p.i2i.clone();
    p.pipeline.set_state(gst::State::Playing).unwrap();
    for i in 0..5 {
        p.push(i);
    }
    let deadline = Instant::now() + TIMEOUT;
    while i2i
        .property::<gst::Structure>("stats")
        .get::<u64>("frames-in")
        .unwrap()
        < 5
    {
        assert!(
            Instant::now() < deadline,
            "frames did not reach the element"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // n = 3 steps in batches of 2: at most the first batch can be out before the drain.
    assert!(p.samples.lock().unwrap().len() < 5);
    let sinkpad = i2i.static_pad("sink").unwrap();
    let mut query = gst::query::Drain::new();
    assert!(sinkpad.query(&mut query), "drain query refused");
    let offsets: Vec<u64> = p
        .samples
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.buffer().unwrap().offset())
        .collect();
    assert_eq!(
        offsets,
        vec![0, 1, 2, 3, 4],
        "frames out when the query returned"
    );
    // The stream goes on after a drain.
    p.push(5);
    p.push(6);
    let run = p.finish();
    assert_eq!(run.samples.len(), 7);
}
