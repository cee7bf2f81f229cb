// SPDX-License-Identifier: MPL-2.0
//! Real exports stay loadable: tiny pipelines built with diffusers' classes (random weights) and
//! exported by the real exporters (`optimum-cli export onnx`, ONNX Runtime's Stable Diffusion demo
//! for the fused ControlNet, the AutoencoderTiny script of docs/models.md), committed under
//! tests/fixtures/real-exports/ by scripts/fixtures/make_real_exports.py. Each goes through
//! `i2itransform` in a pipeline and its latents (`output=latent`) must equal, within 1e-3, those
//! StreamDiffusion's algorithm computed in PyTorch on the diffusers models (same i2i-noise-v1 noise),
//! stored beside the fixture; the decoded last frame must match too. No torch is needed here.
//!
//! Also the TensorRT size profile (`trt-profile`) as the element sees it on a CPU-only ONNX Runtime:
//! a malformed profile is refused at start with a message naming it.

mod pipeline_common;

use std::path::PathBuf;

use gst::prelude::*;
use pipeline_common::*;
use serde_json::Value;

/// Largest difference allowed between the element and PyTorch, in latents and in pixels.
const TOLERANCE: f32 = 1e-3;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/real-exports")
}

fn meta(name: &str) -> Value {
    let path = fixtures().join("reference").join(name).join("meta.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (scripts/fixtures/make_real_exports.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// The fixture's frame `index`: packed RGB8 by the formula in its meta.json.
fn frame(index: u64, size: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((size * size * 3) as usize);
    for y in 0..size as u64 {
        for x in 0..size as u64 {
            for c in 0..3u64 {
                v.push(((x * 4 + y * 2 + c * 70 + index * 23) % 256) as u8);
            }
        }
    }
    v
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn read_f32(name: &str, file: &str) -> Vec<f32> {
    let path = fixtures().join("reference").join(name).join(file);
    floats(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The fixture's frames through `appsrc ! i2itransform ! appsink` with the run's settings; the
/// buffers that came out, as floats (latents, or the picture as RGB8 scaled to [0, 1] planar).
fn element(name: &str, m: &Value, run: &Value, output: &str) -> Vec<Vec<f32>> {
    let size = m["size"].as_u64().unwrap() as u32;
    let t_index: Vec<String> = run["t_index_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let desc = format!(
        "appsrc name=src format=time ! i2itransform model=\"{}\" width={size} height={size} \
         t-index-list={} cfg-type={} prompt=\"{}\" seed={} num-inference-steps={} \
         execution-provider=cpu threads=1 output={output} ! appsink name=out",
        fixtures().join(name).display(),
        t_index.join(","),
        run["cfg_type"].as_str().unwrap(),
        m["prompt"].as_str().unwrap(),
        m["seed"],
        m["num_inference_steps"],
    );
    let pipeline = launch(&desc);
    let src = appsrc(&pipeline, "src");
    src.set_caps(Some(&video_caps("RGB", size, size, 15)));
    let got = collect_bytes(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    let frames = m["frames"].as_u64().unwrap();
    for i in 0..frames {
        let mut b = gst::Buffer::from_slice(frame(i, size));
        let r = b.get_mut().unwrap();
        r.set_pts(gst::ClockTime::from_mseconds(i * 66));
        r.set_duration(gst::ClockTime::from_mseconds(66));
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    let mut messages = Vec::new();
    let done = wait_eos(&pipeline, &mut messages);
    pipeline.set_state(gst::State::Null).unwrap();
    done.unwrap_or_else(|e| panic!("{name}: {e}"));
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len() as u64, frames, "{name}: frames out");
    match output {
        "latent" => got.iter().map(|b| floats(b)).collect(),
        _ => got
            .iter()
            .map(|rgb| {
                // packed RGB8 -> planar [3, H, W] in [0, 1], as the reference stores it
                let n = rgb.len() / 3;
                (0..3)
                    .flat_map(|c| (0..n).map(move |p| (c, p)))
                    .map(|(c, p)| rgb[p * 3 + c] as f32 / 255.0)
                    .collect()
            })
            .collect(),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every run of fixture `name`: latents within 1e-3 of PyTorch, the last picture within one
/// RGB8 step (the element rounds to 8 bits) plus 1e-3.
fn check(name: &str) {
    init();
    let m = meta(name);
    for run in m["runs"].as_array().unwrap() {
        let want = read_f32(name, run["latents"].as_str().unwrap());
        let got = element(name, &m, run, "latent");
        let per = want.len() / got.len();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (k, g) in got.iter().enumerate() {
            let d = max_diff(g, &want[k * per..(k + 1) * per]);
            assert!(
                d <= TOLERANCE,
                "{name} {run}: frame {k}: latents differ from PyTorch by {d} (largest value {scale})"
            );
        }
        // The outputs are real pictures: frames differ from each other.
        assert!(
            max_diff(&got[0], &got[got.len() - 1]) > 1e-3,
            "{name}: frames equal"
        );
        if let Some(file) = run["last_frame_pixels"].as_str() {
            let want = read_f32(name, file);
            let got = element(name, &m, run, "pixels");
            let d = max_diff(got.last().unwrap(), &want);
            assert!(
                d <= 0.5 / 255.0 + TOLERANCE,
                "{name} {run}: last picture differs from PyTorch by {d}"
            );
        }
    }
}

#[test]
fn sd15_optimum_export() {
    check("sd15");
}

#[test]
fn sd_turbo_optimum_export() {
    check("sd-turbo");
}

#[test]
fn sdxl_optimum_export() {
    check("sdxl");
}

#[test]
fn controlnet_ortdemo_fused_export() {
    check("controlnet");
}

#[test]
fn taesd_autoencodertiny_export() {
    check("taesd");
}

#[test]
fn taesdxl_autoencodertiny_export() {
    check("taesdxl");
}

/// Starts i2itransform on the sd15 fixture with `props` and returns the error it posts.
fn start_error(props: &str) -> String {
    let desc = format!(
        "appsrc name=src format=time ! i2itransform model=\"{}\" width=64 height=64 {props} ! fakesink",
        fixtures().join("sd15").display()
    );
    let pipeline = launch(&desc);
    appsrc(&pipeline, "src").set_caps(Some(&video_caps("RGB", 64, 64, 15)));
    let _ = pipeline.set_state(gst::State::Playing);
    let mut messages = Vec::new();
    let r = wait_eos(&pipeline, &mut messages);
    pipeline.set_state(gst::State::Null).unwrap();
    r.expect_err("the element must refuse to start")
}

#[test]
fn trt_profile_errors_name_the_range() {
    let e = start_error("trt-profile=512x512:256x256:1024x1024");
    assert!(
        e.contains("trt-profile") && e.contains("512x512:256x256:1024x1024"),
        "{e}"
    );
    // Whether TensorRT is there is known first: on this CPU-only ONNX Runtime a size outside the
    // profile still gets the missing provider's error (the range check, which comes before any
    // engine build where TensorRT exists, is tested in provider.rs).
    let e = start_error("execution-provider=tensorrt");
    assert!(
        e.contains("'tensorrt'") && !e.contains("trt-profile"),
        "{e}"
    );
}
