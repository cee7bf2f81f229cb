// SPDX-License-Identifier: MPL-2.0
//! The engine on the tiny SDXL-family models (optimum layout with external UNet weights,
//! float16 with a TAESD-style VAE, ONNX Runtime's demo layout): equal (within 1e-4, fp32)
//! to the numpy reference (tests/python/reference_stream.py, which computes the SDXL
//! conditioning as diffusers does) for every guidance type, n = 1, 2, 3, batch 1 and 3;
//! tokenizer-2 ids equal transformers'; live prompt / seed / strength changes; batch-size
//! independence; model directories that mix families are refused at load with the file,
//! the tensor, what was expected and what was found.

mod engine_common;

use std::path::Path;
use std::process::Command;

use engine_common::*;
use gsti2i::diffusion::tokenizer::ClipTokenizer;
use gsti2i::diffusion::{CfgType, Engine, EngineError, InputFrame, StreamParams};

fn params(cfg: CfgType, t_index: &[u32], negative: &str) -> StreamParams {
    StreamParams {
        prompt: "a red cat in the snow".into(),
        negative_prompt: negative.into(),
        seed: 7,
        t_index_list: t_index.to_vec(),
        num_inference_steps: 50,
        guidance_scale: 1.8,
        delta: 0.8,
        cfg_type: cfg,
        add_noise: true,
        similarity_threshold: 0.0,
        max_skip_frames: 10,
        ..Default::default()
    }
}

struct Case {
    model: &'static str,
    p: StreamParams,
}

impl Case {
    fn dir(&self) -> String {
        let t: Vec<String> = self.p.t_index_list.iter().map(|t| t.to_string()).collect();
        format!(
            "{}-{}-{}-neg{}",
            self.model,
            cfg_name(self.p.cfg_type),
            t.join("_"),
            self.p.negative_prompt.len()
        )
    }
}

#[test]
fn matches_numpy_reference() {
    let frames: Vec<Vec<u8>> = (0..4).map(frame).collect();
    let dir = tmp("reference");
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    for (k, f) in frames.iter().enumerate() {
        std::fs::write(inputs.join(format!("frame_{k:03}.rgb")), f).unwrap();
    }
    let mut cases = Vec::new();
    for cfg in [
        CfgType::None,
        CfgType::SelfNegative,
        CfgType::Initialize,
        CfgType::Full,
    ] {
        for t in [vec![32], vec![32, 45], vec![20, 32, 45]] {
            cases.push(Case {
                model: "tiny-sdxl",
                p: params(cfg, &t, "blurry, low quality"),
            });
        }
    }
    // An empty negative prompt: zeros (force_zeros_for_empty_prompt).
    for cfg in [CfgType::Full, CfgType::Initialize] {
        cases.push(Case {
            model: "tiny-sdxl",
            p: params(cfg, &[32, 45], ""),
        });
    }
    for model in ["tiny-sdxl-ortdemo", "tiny-sdxl-fp16"] {
        for cfg in [CfgType::SelfNegative, CfgType::Full, CfgType::Initialize] {
            cases.push(Case {
                model,
                p: params(
                    cfg,
                    &[32, 45],
                    if cfg == CfgType::Full { "" } else { "blurry" },
                ),
            });
        }
    }
    let refs: Vec<RefCase> = cases
        .iter()
        .map(|c| RefCase {
            model: c.model,
            dir: c.dir(),
            params: c.p.clone(),
        })
        .collect();
    run_reference(&refs, &inputs, &dir);

    let mut worst = 0.0f32;
    let mut first = Vec::new();
    for c in &cases {
        // float16 graphs round inside differently for different batch shapes.
        let fp16 = c.model == "tiny-sdxl-fp16";
        let tol = if fp16 { 2e-3 } else { 1e-4 };
        for batch in [1usize, 3] {
            let mut engine = Engine::load(&opts(c.model, batch), &c.p)
                .unwrap_or_else(|e| panic!("{}: {e}", c.dir()));
            let out = run(&mut engine, &frames);
            for (k, o) in out.iter().enumerate() {
                let want = read_f32(&dir.join(c.dir()).join(format!("frame_{k:03}.f32")));
                let d = max_abs(&o.pixels, &want);
                if !fp16 {
                    worst = worst.max(d);
                }
                assert!(
                    d <= tol,
                    "{} batch {batch} frame {k}: max abs diff {d}",
                    c.dir()
                );
            }
            if batch == 1 {
                first.push((c.dir(), out[0].pixels.clone()));
            }
        }
    }
    // Not vacuous: pictures, not flat or saturated, and each setting gives its own.
    for (name, px) in &first {
        let mean = px.iter().sum::<f32>() / px.len() as f32;
        let var = px.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / px.len() as f32;
        let clipped = px.iter().filter(|&&v| v <= 0.0 || v >= 1.0).count();
        assert!(var.sqrt() > 0.02, "{name}: flat output");
        assert!(clipped < px.len() / 2, "{name}: {clipped} pixels clipped");
    }
    for (i, (na, a)) in first.iter().enumerate() {
        for (nb, b) in &first[i + 1..] {
            if na.starts_with("tiny-sdxl-") || nb.starts_with("tiny-sdxl-") {
                continue;
            }
            assert!(max_abs(a, b) > 1e-3, "{na} and {nb} give the same output");
        }
    }
    eprintln!("worst float32 difference to the reference: {worst:e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokenizer_2_ids_equal_transformers() {
    let p = root().join("tests/fixtures/tokenizer_2_ids.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let mut checked = 0;
    for (name, info) in fx["tokenizers"].as_object().unwrap() {
        let dir = root().join(info["dir"].as_str().unwrap());
        let mut tok = ClipTokenizer::from_dir(&dir).unwrap();
        assert_eq!(u64::from(tok.pad_id()), info["pad_id"].as_u64().unwrap());
        for case in fx["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let want: Vec<u32> = case["ids"][name]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(prompt), want, "{name}: {prompt:?}");
            checked += 1;
        }
    }
    assert!(checked >= 100, "{checked}");
}

#[test]
fn live_changes_and_batch_size_independence() {
    let frames: Vec<Vec<u8>> = (0..6).map(frame).collect();
    let a = params(CfgType::SelfNegative, &[32, 45], "");
    let b = StreamParams {
        prompt: "a blue boat at night".into(),
        seed: 11,
        t_index_list: vec![20, 40],
        ..a.clone()
    };
    // Fresh streams with A and with B from the start, batch 1 and batch 3.
    let mut outs = Vec::new();
    for p in [&a, &b] {
        let mut per_batch = Vec::new();
        for batch in [1, 3] {
            let mut e = Engine::load(&opts("tiny-sdxl", batch), p).unwrap();
            per_batch.push(run(&mut e, &frames));
        }
        for (x, y) in per_batch[0].iter().zip(&per_batch[1]) {
            assert!(
                max_abs(&x.pixels, &y.pixels) <= 1e-6,
                "batch size changed a frame"
            );
        }
        outs.push(per_batch.swap_remove(0));
    }
    assert!(max_abs(&outs[0][0].pixels, &outs[1][0].pixels) > 1e-3);
    // One stream: A for frames 0..3, then B (prompt, seed and strength at once).
    let mut e = Engine::load(&opts("tiny-sdxl", 1), &a).unwrap();
    let mut got = Vec::new();
    for (k, f) in frames.iter().enumerate() {
        if k == 3 {
            e.set_params(&b).unwrap();
        }
        got.extend(
            e.process(vec![InputFrame {
                tag: k as u64,
                rgb: f.clone(),
            }])
            .unwrap(),
        );
    }
    got.extend(e.drain().unwrap());
    assert_eq!(got.len(), 6);
    for (k, o) in got.iter().enumerate() {
        let want = if k < 3 { &outs[0][k] } else { &outs[1][k] };
        assert!(
            max_abs(&o.pixels, &want.pixels) <= 1e-6,
            "frame {k}: a frame's result is that of the settings it entered with"
        );
    }
    // Each prompt change ran both encoders once (load, then the change).
    assert_eq!(e.timings().text_calls, 2);
}

/// Writes SDXL graphs with other sizes through the model generator (scripts/i2i_models).
fn python_graph(code: &str) {
    let python = root().join(".venv").join("bin").join("python");
    let out = Command::new(&python)
        .arg("-c")
        .arg(format!(
            "import sys\nsys.path.insert(0, 'scripts')\nfrom i2i_models import sdxl\n\
             from i2i_models.graph import save\nv = sdxl.VARIANTS[0]\n{code}\n"
        ))
        .current_dir(root())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path, skip: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == skip {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if src.is_dir() {
            copy_dir(&src, &dst, skip);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn load_error(dir: &Path) -> String {
    let p = params(CfgType::SelfNegative, &[32, 45], "");
    let e = Engine::load(&opts_dir(dir.to_path_buf(), 1), &p).unwrap_err();
    assert!(matches!(e, EngineError::Tensor { .. }), "{e}");
    eprintln!("error as users see it: {e}");
    e.to_string()
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} should mention {p:?}");
    }
}

#[test]
fn mixed_families_are_refused_at_load() {
    let dir = tmp("mixed");
    // An SDXL UNet with one text encoder.
    let one = dir.join("one-encoder");
    copy_dir(&model_dir("tiny-sdxl"), &one, "text_encoder_2");
    let msg = load_error(&one);
    assert_mentions(
        &msg,
        &[
            "unet/model.onnx",
            "'text_embeds'",
            "text_encoder_2",
            "mixes model families",
        ],
    );
    // An SD 1.5 UNet next to a second text encoder.
    let sd = dir.join("sd15-two-encoders");
    copy_dir(&model_dir("tiny-sd15"), &sd, "");
    copy_dir(
        &model_dir("tiny-sdxl").join("text_encoder_2"),
        &sd.join("text_encoder_2"),
        "",
    );
    let msg = load_error(&sd);
    assert_mentions(
        &msg,
        &[
            "sd15-two-encoders",
            "unet/model.onnx",
            "'text_embeds'",
            "SD 1.x",
        ],
    );
    // text_encoder_2 with a pooled size (48) that the UNet's text_embeds (40) does not take.
    let pooled = dir.join("pooled");
    copy_dir(&model_dir("tiny-sdxl"), &pooled, "");
    let file = pooled.join("text_encoder_2").join("model.onnx");
    python_graph(&format!(
        "sdxl.POOLED = 48\nsave(sdxl.text_encoder(v, True).model(), {:?})",
        file.display().to_string()
    ));
    let msg = load_error(&pooled);
    assert_mentions(
        &msg,
        &[
            "unet/model.onnx",
            "'text_embeds'",
            "[batch, 48]",
            "text_encoder_2/model.onnx",
            "float32 [?, 40]",
        ],
    );
    // A UNet whose time_ids have 5 values (the refiner's form).
    let tid = dir.join("time-ids");
    copy_dir(&model_dir("tiny-sdxl"), &tid, "unet");
    std::fs::create_dir_all(tid.join("unet")).unwrap();
    let file = tid.join("unet").join("model.onnx");
    python_graph(&format!(
        "sdxl.TIME_IDS = 5\nsave(sdxl.unet(v).model(), {:?})",
        file.display().to_string()
    ));
    let msg = load_error(&tid);
    assert_mentions(
        &msg,
        &[
            "unet/model.onnx",
            "'time_ids'",
            "[batch, 6]",
            "float32 [?, 5]",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
