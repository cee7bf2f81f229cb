// SPDX-License-Identifier: MPL-2.0
//! i2itransform with IP-Adapter models in real pipelines: the picture from the
//! `ip-adapter-image` property (before start and while playing), from the `ipadapter` pad
//! fed by a second videotestsrc, scale 0 equal to no picture, a picture that cannot be
//! decoded refused while the show goes on, and a model without IP-Adapter inputs refusing
//! the properties with an ERROR that names the missing input. Each output is compared with
//! the engine's own frames for the same picture (the engine matches the numpy reference:
//! tests/engine_ipadapter.rs).

mod pipeline_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gst::prelude::*;
use gsti2i::diffusion::ipadapter::{ImageSide, PictureTokens, decode_picture};
use gsti2i::diffusion::{CfgType, Engine, StreamParams};
use pipeline_common::*;

const W: u32 = 64;
const H: u32 = 64;
const PROPS: &str = "prompt=\"a red fox\" negative-prompt=blurry seed=5 t-index-list=32,45 \
                     cfg-type=full guidance-scale=1.5 delta=0.9 threads=1";

fn params() -> StreamParams {
    StreamParams {
        prompt: "a red fox".into(),
        negative_prompt: "blurry".into(),
        seed: 5,
        t_index_list: vec![32, 45],
        cfg_type: CfgType::Full,
        guidance_scale: 1.5,
        delta: 0.9,
        ..Default::default()
    }
}

/// The tokens of a packed RGB picture.
fn tokens(dir: &Path, rgb: &[u8], w: u32, h: u32) -> PictureTokens {
    let layout = Engine::load(&cpu_options(dir, (W, H)), &params())
        .unwrap()
        .ip_layout()
        .unwrap();
    let mut side = ImageSide::load(dir, layout, 1, true).unwrap();
    PictureTokens {
        tokens: Arc::new(side.tokens(rgb, w, h).unwrap()),
        negative: Arc::new(side.negative_tokens().unwrap()),
    }
}

/// The engine's outputs for `frames` pictures, with `picture` and `scale` set after load.
fn engine_outputs(
    dir: &Path,
    frames: u64,
    picture_tokens: Option<PictureTokens>,
    scale: &[f32],
) -> Vec<Vec<u8>> {
    let mut engine = Engine::load(&cpu_options(dir, (W, H)), &params()).unwrap();
    if let Some(p) = picture_tokens {
        engine.set_ip_picture(Some(p)).unwrap();
    }
    engine.set_ip_scale(scale).unwrap();
    engine_pictures(&mut engine, frames, (W, H), |_, _| {})
}

/// `appsrc ! i2itransform model=<dir> <props> ! appsink` with `frames` pictures, 1 frame/s;
/// `during(pipeline, k)` runs before frame k is pushed.
fn run_frames(
    dir: &Path,
    props: &str,
    frames: u64,
    during: impl Fn(&gst::Pipeline, u64),
) -> Result<Run, String> {
    run_frames_with(dir, props, "", frames, during)
}

/// [`run_frames`] with `more` added to the pipeline (another branch).
fn run_frames_with(
    dir: &Path,
    props: &str,
    more: &str,
    frames: u64,
    during: impl Fn(&gst::Pipeline, u64),
) -> Result<Run, String> {
    let desc = format!(
        "appsrc name=src format=time ! i2itransform name=i2i model=\"{}\" width={W} height={H} \
         {PROPS} {props} ! video/x-raw,format=RGB ! appsink name=out sync=false {more}",
        dir.display()
    );
    run_launch_with(&desc, |pipeline| {
        let src = appsrc(pipeline, "src");
        src.set_caps(Some(&video_caps("RGB", W, H, 1)));
        for k in 0..frames {
            during(pipeline, k);
            let buf = timed_picture(k, (W, H), gst::ClockTime::SECOND);
            src.push_buffer(buf).unwrap();
        }
        src.end_of_stream().unwrap();
    })
}

/// Waits (at most 60 s) until the element's stats field `name` reaches `min`.
fn wait_stat(i2i: &gst::Element, name: &str, min: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = i2i.property::<gst::Structure>("stats");
        let v = stats
            .get::<u64>(name)
            .or_else(|_| stats.get::<u32>(name).map(u64::from))
            .unwrap_or_else(|e| panic!("stats {name}: {e} in {stats}"));
        if v >= min {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stats {name} stayed at {v} (wanted {min}): {stats}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn outputs(run: &Run) -> Vec<Vec<u8>> {
    (0..run.samples.len()).map(|i| run.bytes(i)).collect()
}

/// A 48x32 PNG (short side = the tiny encoder's 32).
fn write_style(path: &Path, k: u32) -> (Vec<u8>, u32, u32) {
    let img = image::RgbImage::from_fn(48, 32, |x, y| {
        image::Rgb([
            (x * 5 + k * 40) as u8,
            (y * 7 + x) as u8,
            ((x ^ y) * 9 + k * 90) as u8,
        ])
    });
    img.save(path).unwrap();
    decode_picture(path).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("i2i-ip-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn picture_from_the_property_equals_the_engine_and_scale_zero_is_none() {
    let dir = model_dir("tiny-ipadapter", "image_encoder/model.onnx");
    let t = tmp("property");
    let style = t.join("style.png");
    let (rgb, w, h) = write_style(&style, 1);
    let props = format!(
        "ip-adapter-image=\"{}\" ip-adapter-scale=0.5,1.5",
        style.display()
    );
    let got = outputs(&run_frames(&dir, &props, 4, |_, _| ()).unwrap());
    let want = engine_outputs(&dir, 4, Some(tokens(&dir, &rgb, w, h)), &[0.5, 1.5]);
    assert_eq!(got.len(), 4, "every frame once");
    assert!(
        got == want,
        "the element's frames are the engine's with the picture"
    );
    let plain = engine_outputs(&dir, 4, None, &[1.0]);
    assert!(
        got.iter().zip(&plain).all(|(a, b)| a != b),
        "the picture acts"
    );

    let props = format!(
        "ip-adapter-image=\"{}\" ip-adapter-scale=0",
        style.display()
    );
    let zero = outputs(&run_frames(&dir, &props, 4, |_, _| ()).unwrap());
    assert!(zero == plain, "scale 0 gives the frames without a picture");
    let _ = std::fs::remove_dir_all(&t);
}

#[test]
fn a_new_picture_while_playing_reaches_the_output_and_a_bad_one_is_refused() {
    let dir = model_dir("tiny-ipadapter-plus", "image_encoder/model.onnx");
    let t = tmp("live");
    let style = t.join("style.png");
    let (rgb, w, h) = write_style(&style, 2);
    let broken = t.join("broken.png");
    std::fs::write(&broken, b"not a picture").unwrap();
    let frames = 8;
    let run = run_frames(&dir, "", frames, |pipeline, k| {
        let i2i = pipeline.by_name("i2i").unwrap();
        if k == 2 {
            // Frames 0 and 1 ran without a picture; the picture is encoded before frame 2.
            wait_stat(&i2i, "batches", 2);
            i2i.set_property("ip-adapter-image", style.to_str().unwrap());
            wait_stat(&i2i, "ip-adapter-pictures", 1);
        }
        if k == 5 {
            i2i.set_property("ip-adapter-image", broken.to_str().unwrap());
            wait_stat(&i2i, "ip-adapter-refused", 1);
        }
    })
    .unwrap();
    let got = outputs(&run);
    let with = engine_outputs(&dir, frames, Some(tokens(&dir, &rgb, w, h)), &[1.0]);
    let plain = engine_outputs(&dir, frames, None, &[1.0]);
    assert!(got[..2] == plain[..2], "no picture before it is set");
    // Frames entering after the picture arrived have it on every step; the broken file
    // leaves the picture as it was.
    for k in 2..frames as usize {
        assert!(
            got[k] == with[k],
            "frame {k}: the picture set while playing"
        );
    }
    let warnings = run.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("broken.png") && w.contains("ip-adapter-refused")),
        "a warning names the refused file: {warnings:?}"
    );
    let _ = std::fs::remove_dir_all(&t);
}

/// `appsrc ! i2itransform ! appsink` with `frames` pictures and a second `videotestsrc`
/// (`pad_caps`) on the `ipadapter` pad; frame 1 waits until the pad's picture is encoded.
fn run_with_pad(dir: &Path, pad_caps: &str, frames: u64) -> Vec<Vec<u8>> {
    let desc = format!(
        "appsrc name=src format=time ! i2itransform name=i2i model=\"{}\" width={W} height={H} \
         ip-adapter-interval=0 {PROPS} ! video/x-raw,format=RGB ! appsink name=out sync=false \
         videotestsrc num-buffers=5 pattern=spokes ! {pad_caps} ! i2i.ipadapter",
        dir.display()
    );
    let run = run_launch_with(&desc, |pipeline| {
        let src = appsrc(pipeline, "src");
        src.set_caps(Some(&video_caps("RGB", W, H, 1)));
        for k in 0..frames {
            if k == 1 {
                // The pad's frames reach the encoder while the stream runs.
                wait_stat(&pipeline.by_name("i2i").unwrap(), "ip-adapter-pictures", 1);
            }
            let buf = timed_picture(k, (W, H), gst::ClockTime::SECOND);
            src.push_buffer(buf).unwrap();
        }
        src.end_of_stream().unwrap();
    })
    .unwrap();
    outputs(&run)
}

#[test]
fn picture_from_the_ipadapter_pad_fed_by_a_second_videotestsrc() {
    let dir = model_dir("tiny-ipadapter", "image_encoder/model.onnx");
    // The frame the second source gives (spokes: the same picture in every frame), as the
    // engine-side reference.
    let caps = "video/x-raw,format=RGB,width=48,height=32";
    let probe = run_launch(&format!(
        "videotestsrc num-buffers=1 pattern=spokes ! {caps} ! appsink name=out sync=false"
    ))
    .unwrap();
    let rgb = probe.bytes(0);
    let frames = 10u64;
    let got = run_with_pad(&dir, caps, frames);
    assert_eq!(got.len(), frames as usize);
    let with = engine_outputs(&dir, frames, Some(tokens(&dir, &rgb, 48, 32)), &[1.0]);
    let plain = engine_outputs(&dir, frames, None, &[1.0]);
    let last = frames as usize - 1;
    assert!(got[last] != plain[last], "the pad's picture acts");
    assert!(got[last] == with[last], "the pad's picture is the style");
    // Any raw video: I420 at another size is converted on the pad and acts too.
    let i420 = run_with_pad(&dir, "video/x-raw,format=I420,width=160,height=120", 4);
    assert!(i420[3] != plain[3], "the I420 pad's picture acts");
}

#[test]
fn a_model_without_ip_adapter_inputs_refuses_the_properties() {
    let dir = model_dir("tiny-sd15", "unet/model.onnx");
    let err = run_frames(&dir, "ip-adapter-image=/nonexistent.png", 2, |_, _| ()).unwrap_err();
    assert!(
        err.contains("ipadapter_scale") && err.contains("ip-adapter-image"),
        "{err}"
    );
    let err = run_frames(&dir, "ip-adapter-scale=0.5", 2, |_, _| ()).unwrap_err();
    assert!(err.contains("ipadapter_scale"), "{err}");
    // A scale list of the wrong length for the model.
    let ip = model_dir("tiny-ipadapter", "image_encoder/model.onnx");
    let err = run_frames(&ip, "ip-adapter-scale=1,1,1", 2, |_, _| ()).unwrap_err();
    assert!(err.contains("IP-Adapter layers"), "{err}");
}

#[test]
fn the_sdxl_ip_adapter_model_runs_with_a_picture() {
    let dir = model_dir("tiny-sdxl-ipadapter", "image_encoder/model.onnx");
    let t = tmp("sdxl");
    let style = t.join("style.png");
    let (rgb, w, h) = write_style(&style, 3);
    let props = format!("ip-adapter-image=\"{}\"", style.display());
    let got = outputs(&run_frames(&dir, &props, 3, |_, _| ()).unwrap());
    let want = engine_outputs(&dir, 3, Some(tokens(&dir, &rgb, w, h)), &[1.0]);
    assert!(
        got == want,
        "the element's frames are the engine's with the picture"
    );
    let plain = engine_outputs(&dir, 3, None, &[1.0]);
    assert!(got[2] != plain[2], "the picture acts");
    let _ = std::fs::remove_dir_all(&t);
}

/// `size-from-input`: 64x64 frames, then 48x48 ones (the model loaded again); the outputs.
fn run_resized(dir: &Path, props: &str) -> Vec<Vec<u8>> {
    let desc = format!(
        "appsrc name=src format=time ! i2itransform name=i2i model=\"{}\" size-from-input=true \
         {PROPS} {props} ! video/x-raw,format=RGB ! appsink name=out sync=false",
        dir.display()
    );
    let run = run_launch_with(&desc, |pipeline| {
        let src = appsrc(pipeline, "src");
        for k in 0..6u64 {
            let s = if k < 3 { 64 } else { 48 };
            src.set_caps(Some(&video_caps("RGB", s, s, 1)));
            let buf = timed_picture(k, (s, s), gst::ClockTime::SECOND);
            src.push_buffer(buf).unwrap();
        }
        src.end_of_stream().unwrap();
    })
    .unwrap();
    outputs(&run)
}

#[test]
fn the_picture_and_scale_survive_a_reload_at_another_size() {
    let dir = model_dir("tiny-ipadapter", "image_encoder/model.onnx");
    let t = tmp("reload");
    let style = t.join("style.png");
    write_style(&style, 4);
    let with = run_resized(&dir, &format!("ip-adapter-image=\"{}\"", style.display()));
    let plain = run_resized(&dir, "");
    assert_eq!(with.len(), 6);
    assert_eq!(
        with[5].len(),
        48 * 48 * 3,
        "the last frames at the new size"
    );
    for k in [0, 5] {
        assert!(with[k] != plain[k], "frame {k}: the picture acts");
    }
    let zero = run_resized(
        &dir,
        &format!(
            "ip-adapter-image=\"{}\" ip-adapter-scale=0",
            style.display()
        ),
    );
    assert!(zero[5] == plain[5], "scale 0 after the reload");
    let _ = std::fs::remove_dir_all(&t);
}

/// `/style` on the settings pad (from whoever reaches the settings holder) reads a picture
/// only under `settings-folder`: a name relative to it is applied; a path outside, a `..`
/// escape and a link out are refused with a WARNING naming the path and the property,
/// nothing is read (no picture encoded) and the frames go on with the picture they had.
/// Unset, the settings pad's picture is refused while the property still applies.
#[test]
fn the_settings_pad_reads_style_pictures_only_under_settings_folder() {
    let dir = model_dir("tiny-ipadapter", "image_encoder/model.onnx");
    let t = tmp("folder");
    std::fs::create_dir_all(t.join("show/styles")).unwrap();
    std::fs::create_dir_all(t.join("elsewhere")).unwrap();
    let (rgb, w, h) = write_style(&t.join("show/styles/ink.png"), 5);
    let outside = t.join("elsewhere/other.png");
    write_style(&outside, 6);
    std::os::unix::fs::symlink(&outside, t.join("show/styles/link.png")).unwrap();
    let folder = t.join("show");
    let ink = folder.canonicalize().unwrap().join("styles/ink.png");
    let refused = [
        outside.display().to_string(),
        "styles/../../elsewhere/other.png".to_string(),
        "styles/link.png".to_string(),
    ];
    let frames = 7;
    let send = |pipeline: &gst::Pipeline, path: &str| {
        let json = format!(r#"{{"ip-adapter-image": "{path}"}}"#);
        send_settings(pipeline, &json, "ip-adapter-image");
    };
    let settings_pad = "appsrc name=settings caps=application/x-i2i-settings ! i2i.settings";
    let props = format!(
        "wait-for-settings=false settings-folder=\"{}\"",
        folder.display()
    );
    let run = run_frames_with(&dir, &props, settings_pad, frames, |pipeline, k| {
        let i2i = pipeline.by_name("i2i").unwrap();
        if k == 2 {
            wait_stat(&i2i, "batches", 2);
            send(pipeline, "styles/ink.png");
            assert_eq!(
                i2i.property::<Option<String>>("ip-adapter-image"),
                Some(ink.display().to_string())
            );
            wait_stat(&i2i, "ip-adapter-pictures", 1);
        }
        if k == 3 {
            for path in &refused {
                send(pipeline, path);
            }
        }
    })
    .unwrap();
    let got = outputs(&run);
    let with = engine_outputs(&dir, frames, Some(tokens(&dir, &rgb, w, h)), &[1.0]);
    for k in 2..frames as usize {
        assert!(
            got[k] == with[k],
            "frame {k}: the picture under the folder, kept"
        );
    }
    let stats = run.elements("i2itransform-stats");
    let stats = stats.last().unwrap();
    assert_eq!(
        stats.get::<u64>("ip-adapter-pictures").unwrap(),
        1,
        "nothing else read"
    );
    for path in &refused {
        assert_warned(&run, &[path, "outside settings-folder"]);
    }

    // Unset: the settings pad's picture is refused; the property still applies.
    let run = run_frames_with(
        &dir,
        "wait-for-settings=false",
        settings_pad,
        frames,
        |pipeline, k| {
            let i2i = pipeline.by_name("i2i").unwrap();
            if k == 2 {
                wait_stat(&i2i, "batches", 2);
                send(pipeline, ink.to_str().unwrap());
                assert_eq!(i2i.property::<Option<String>>("ip-adapter-image"), None);
                i2i.set_property("ip-adapter-image", ink.to_str().unwrap());
                wait_stat(&i2i, "ip-adapter-pictures", 1);
            }
        },
    )
    .unwrap();
    let got = outputs(&run);
    for k in 2..frames as usize {
        assert!(got[k] == with[k], "frame {k}: the property's picture");
    }
    assert_warned(
        &run,
        &["ink.png", "settings-folder property, which is not set"],
    );
    let _ = std::fs::remove_dir_all(&t);
}
