// SPDX-License-Identifier: MPL-2.0
//! What the engine tests share: the tiny models, test frames, running frames through an
//! engine, and the independent numpy reference (tests/python/reference_stream.py) with
//! the comparison of its outputs.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gsti2i::diffusion::{
    CfgType, Engine, ExecutionProvider, InputFrame, LoadOptions, OutputFrame, StreamParams,
};

pub const W: u32 = 64;
pub const H: u32 = 64;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn model_dir(name: &str) -> PathBuf {
    let mut d = root().join("models").join(name);
    // Models generated beside the shared folder (make_models.py --out models-local).
    let local = root().join("models-local").join(name);
    if !d.join("unet").join("model.onnx").is_file()
        && local.join("unet").join("model.onnx").is_file()
    {
        d = local;
    }
    assert!(
        d.join("unet").join("model.onnx").is_file(),
        "{} is missing: run scripts/setup.sh (or .venv/bin/python scripts/make_models.py --out models)",
        d.display()
    );
    d
}

/// CPU, one thread, W x H, `batch` frames per call.
pub fn opts_dir(dir: PathBuf, batch: usize) -> LoadOptions {
    LoadOptions {
        model_dir: dir,
        width: W,
        height: H,
        batch_size: batch,
        execution_provider: ExecutionProvider::Cpu,
        device_id: 0,
        fp16: false,
        engine_cache_dir: None,
        intra_threads: 1,
        ..Default::default()
    }
}

pub fn opts(model: &str, batch: usize) -> LoadOptions {
    opts_dir(model_dir(model), batch)
}

/// Frame k: gradients and a square moving with k.
pub fn frame(k: usize) -> Vec<u8> {
    let (w, h) = (W as usize, H as usize);
    let mut v = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) * 3;
            let inside = (x + 64 - (k * 7) % 64) % 64 < 20 && (y + k * 3) % 64 < 24;
            v[i] = ((x * 4 + k * 10) % 256) as u8;
            v[i + 1] = if inside { 230 } else { (y * 3) as u8 };
            v[i + 2] = (((x + y) * 2 + k * 30) % 256) as u8;
        }
    }
    v
}

/// Runs `frames` through the engine `batch` at a time, then drains; checks that every
/// frame comes out once, in order.
pub fn run(engine: &mut Engine, frames: &[Vec<u8>]) -> Vec<OutputFrame> {
    let batch = engine.options().batch_size;
    let mut out = Vec::new();
    for (c, chunk) in frames.chunks(batch).enumerate() {
        let input = chunk
            .iter()
            .enumerate()
            .map(|(i, rgb)| InputFrame {
                tag: (c * batch + i) as u64,
                rgb: rgb.clone(),
            })
            .collect();
        out.extend(engine.process(input).unwrap());
    }
    out.extend(engine.drain().unwrap());
    assert_eq!(engine.in_flight(), 0);
    let tags: Vec<u64> = out.iter().map(|o| o.tag).collect();
    assert_eq!(
        tags,
        (0..frames.len() as u64).collect::<Vec<_>>(),
        "every frame once, in order"
    );
    out
}

pub fn cfg_name(c: CfgType) -> &'static str {
    match c {
        CfgType::None => "none",
        CfgType::Full => "full",
        CfgType::SelfNegative => "self",
        CfgType::Initialize => "initialize",
    }
}

/// One reference run: a model, its settings and the folder its outputs go to.
pub struct RefCase {
    pub model: &'static str,
    pub dir: String,
    pub params: StreamParams,
}

/// Runs the numpy reference for every case in one Python process (bounded in time).
pub fn run_reference(cases: &[RefCase], inputs: &Path, out: &Path) {
    run_reference_with(cases, &[], inputs, out);
}

/// [`run_reference`] with more arguments for case `i` in `extra[i]` (when present), e.g.
/// `--latent-feedback 0.3 --batch-size 3`.
pub fn run_reference_with(cases: &[RefCase], extra: &[Vec<String>], inputs: &Path, out: &Path) {
    let python = root().join(".venv").join("bin").join("python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    let argvs: Vec<serde_json::Value> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = &c.params;
            let t: Vec<String> = p.t_index_list.iter().map(|t| t.to_string()).collect();
            let mut argv = serde_json::json!([
                "--model",
                model_dir(c.model),
                "--width",
                W.to_string(),
                "--height",
                H.to_string(),
                "--inputs",
                inputs,
                "--prompt",
                p.prompt,
                "--negative-prompt",
                p.negative_prompt,
                "--seed",
                p.seed.to_string(),
                "--t-index-list",
                t.join(","),
                "--num-inference-steps",
                p.num_inference_steps.to_string(),
                "--guidance-scale",
                p.guidance_scale.to_string(),
                "--delta",
                p.delta.to_string(),
                "--cfg-type",
                cfg_name(p.cfg_type),
                "--add-noise",
                (p.add_noise as u8).to_string(),
                "--out",
                out.join(&c.dir),
            ]);
            if let (Some(list), Some(more)) = (argv.as_array_mut(), extra.get(i)) {
                list.extend(more.iter().map(|a| serde_json::Value::from(a.as_str())));
            }
            argv
        })
        .collect();
    let script = "import json, sys\n\
        sys.path.insert(0, 'tests/python')\n\
        import reference_stream as rs\n\
        for argv in json.load(sys.stdin):\n    rs.run(rs.parse_args(argv))\n";
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the reference");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::Value::Array(argvs).to_string().as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("reference_stream.py did not finish in 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "reference_stream.py failed: {status}");
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("i2i-engine-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
