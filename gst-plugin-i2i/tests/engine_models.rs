// SPDX-License-Identifier: MPL-2.0
//! Wrong and unusual model directories: every broken case is a clear `EngineError` naming
//! the file, the tensor, what was expected and what was found (never a panic); a UNet
//! with a fixed batch of 1 still works, and gives the same frames.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gsti2i::diffusion::{
    CfgType, Engine, EngineError, ExecutionProvider, InputFrame, LoadOptions, StreamParams,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tiny() -> PathBuf {
    let d = root().join("models").join("tiny-sd15");
    assert!(
        d.join("unet").join("model.onnx").is_file(),
        "{} is missing: run scripts/setup.sh",
        d.display()
    );
    d
}

fn opts(dir: &Path) -> LoadOptions {
    LoadOptions {
        model_dir: dir.to_path_buf(),
        width: 64,
        height: 64,
        batch_size: 2,
        execution_provider: ExecutionProvider::Cpu,
        device_id: 0,
        fp16: false,
        engine_cache_dir: None,
        intra_threads: 1,
        ..Default::default()
    }
}

fn params() -> StreamParams {
    StreamParams {
        prompt: "a cat".into(),
        negative_prompt: "fog".into(),
        guidance_scale: 1.5,
        cfg_type: CfgType::Full,
        ..StreamParams::default()
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("i2i-models-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    /// A fresh copy of tiny-sd15 named `name`.
    fn model(&self, name: &str) -> PathBuf {
        let d = self.0.join(name);
        copy_dir(&tiny(), &d);
        d
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(o: &LoadOptions) -> (EngineError, String) {
    match Engine::load(o, &params()) {
        Ok(_) => panic!("{} loaded, expected an error", o.model_dir.display()),
        Err(e) => {
            let s = e.to_string();
            (e, s)
        }
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    eprintln!("error as users see it: {msg}");
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} does not mention {p:?}");
    }
}

#[test]
fn broken_files_are_named() {
    let s = Scratch::new("files");
    let check = |dir: &Path, parts: &[&str]| {
        let (_, msg) = load_err(&opts(dir));
        assert_mentions(&msg, parts);
    };

    check(&s.0.join("nope"), &["nope", "missing model directory"]);

    let d = s.model("no-unet");
    std::fs::remove_dir_all(d.join("unet")).unwrap();
    check(&d, &["no-unet/unet", "missing unet directory"]);

    let d = s.model("no-unet-file");
    std::fs::remove_file(d.join("unet").join("model.onnx")).unwrap();
    check(&d, &["unet/model.onnx", "missing ONNX graph"]);

    let d = s.model("corrupt-unet");
    let f = d.join("unet").join("model.onnx");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 3]).unwrap();
    check(
        &d,
        &["corrupt-unet/unet/model.onnx", "cannot load the ONNX graph"],
    );

    let d = s.model("garbage-vae");
    std::fs::write(
        d.join("vae_decoder").join("model.onnx"),
        b"not a protobuf at all",
    )
    .unwrap();
    check(
        &d,
        &["vae_decoder/model.onnx", "cannot load the ONNX graph"],
    );

    let d = s.model("no-scheduler");
    std::fs::remove_file(d.join("scheduler").join("scheduler_config.json")).unwrap();
    check(&d, &["scheduler_config.json", "missing"]);

    let d = s.model("v-pred");
    std::fs::write(
        d.join("scheduler").join("scheduler_config.json"),
        r#"{"_class_name": "EulerDiscreteScheduler", "prediction_type": "v_prediction"}"#,
    )
    .unwrap();
    check(
        &d,
        &[
            "scheduler_config.json",
            "prediction_type",
            "epsilon",
            "v_prediction",
        ],
    );

    let d = s.model("beta-schedule");
    std::fs::write(
        d.join("scheduler").join("scheduler_config.json"),
        r#"{"beta_schedule": "sigmoid"}"#,
    )
    .unwrap();
    check(&d, &["beta_schedule", "sigmoid"]);

    let d = s.model("bad-json");
    std::fs::write(d.join("scheduler").join("scheduler_config.json"), "{ nope").unwrap();
    check(&d, &["scheduler_config.json", "invalid JSON"]);

    let d = s.model("no-tokenizer");
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        std::fs::remove_file(d.join("tokenizer").join(f)).unwrap();
    }
    check(
        &d,
        &["tokenizer", "tokenizer.json, or vocab.json and merges.txt"],
    );

    let d = s.model("bad-tokenizer");
    std::fs::write(d.join("tokenizer").join("tokenizer.json"), "[1, 2").unwrap();
    check(&d, &["tokenizer/tokenizer.json", "invalid JSON"]);

    let d = s.model("bad-pad");
    std::fs::write(
        d.join("tokenizer").join("special_tokens_map.json"),
        r#"{"pad_token": "<not-a-token>"}"#,
    )
    .unwrap();
    check(
        &d,
        &["special_tokens_map.json", "pad_token", "<not-a-token>"],
    );

    let d = s.model("bad-scale");
    std::fs::write(
        d.join("vae_decoder").join("config.json"),
        r#"{"scaling_factor": "big"}"#,
    )
    .unwrap();
    check(
        &d,
        &["vae_decoder/config.json", "scaling_factor", "a number"],
    );

    // Graphs in the wrong place: names are checked.
    let d = s.model("swapped");
    std::fs::copy(
        d.join("vae_decoder").join("model.onnx"),
        d.join("unet").join("model.onnx"),
    )
    .unwrap();
    check(&d, &["unet/model.onnx", "'sample'", "latent_sample"]);

    let d = s.model("swapped-text");
    std::fs::copy(
        d.join("unet").join("model.onnx"),
        d.join("text_encoder").join("model.onnx"),
    )
    .unwrap();
    check(&d, &["text_encoder/model.onnx", "input_ids"]);

    let d = s.model("swapped-enc");
    std::fs::copy(
        d.join("vae_decoder").join("model.onnx"),
        d.join("vae_encoder").join("model.onnx"),
    )
    .unwrap();
    check(&d, &["vae_encoder/model.onnx", "'sample'"]);

    // Settings the model cannot take.
    let d = tiny();
    let (_, msg) = load_err(&LoadOptions {
        width: 60,
        ..opts(&d)
    });
    assert_mentions(&msg, &["width/height", "multiples of 8", "60x64"]);
    let (_, msg) = load_err(&LoadOptions {
        batch_size: 0,
        ..opts(&d)
    });
    assert_mentions(&msg, &["batch-size"]);
    let e = Engine::load(
        &opts(&d),
        &StreamParams {
            t_index_list: vec![],
            ..params()
        },
    )
    .unwrap_err();
    assert_mentions(&e.to_string(), &["t-index-list"]);
    let e = Engine::load(
        &opts(&d),
        &StreamParams {
            num_inference_steps: 80,
            ..params()
        },
    )
    .unwrap_err();
    assert_mentions(&e.to_string(), &["num-inference-steps", "80"]);
}

#[test]
fn unavailable_gpu_providers_are_errors_not_cpu() {
    let d = tiny();
    for (p, name) in [
        (ExecutionProvider::Cuda, "cuda"),
        (ExecutionProvider::TensorRt, "tensorrt"),
    ] {
        let (e, msg) = load_err(&LoadOptions {
            execution_provider: p,
            ..opts(&d)
        });
        assert!(matches!(e, EngineError::Provider { .. }), "{msg}");
        assert_mentions(&msg, &[&format!("'{name}'"), "onnxruntime-gpu"]);
    }
    // auto falls back to what exists here and says which.
    let e = Engine::load(
        &LoadOptions {
            execution_provider: ExecutionProvider::Auto,
            ..opts(&d)
        },
        &params(),
    )
    .unwrap();
    assert_eq!(e.provider(), ExecutionProvider::Cpu);
}

/// Writes edited and hand-built graphs with the onnx Python package (bounded in time).
fn make_graphs(out: &Path) {
    let python = root().join(".venv").join("bin").join("python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    let script = r#"
import sys, onnx
from onnx import helper, TensorProto as T
src, out = sys.argv[1], sys.argv[2]

def save(m, name):
    onnx.save(m, f"{out}/{name}.onnx")

def dims(vi, values):
    for d, v in zip(vi.type.tensor_type.shape.dim, values):
        if v is not None:
            d.ClearField("dim_param"); d.dim_value = v

# The real tiny UNet with a fixed batch of 1 (an export without dynamic batch).
m = onnx.load(f"{src}/unet/model.onnx")
for vi in list(m.graph.input) + list(m.graph.output):
    dims(vi, [1])
save(m, "unet_batch1")

# The real tiny UNet fixed to 16x16 latents (a 128x128 export).
m = onnx.load(f"{src}/unet/model.onnx")
for vi in list(m.graph.input) + list(m.graph.output):
    if vi.name in ("sample", "out_sample"):
        dims(vi, [None, None, 16, 16])
save(m, "unet_size16")

def graph(inputs, outputs, nodes, name):
    g = helper.make_graph(nodes, "g", inputs, outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    save(m, name)

V = helper.make_tensor_value_info
# UNet whose sample is int64.
graph([V("sample", T.INT64, ["b", 4, "h", "w"]), V("timestep", T.INT64, ["b"]),
       V("encoder_hidden_states", T.FLOAT, ["b", 77, 32])],
      [V("out_sample", T.FLOAT, ["b", 4, "h", "w"])],
      [helper.make_node("Cast", ["sample"], ["out_sample"], to=T.FLOAT)], "unet_int_sample")
# UNet with a rank-2 timestep.
graph([V("sample", T.FLOAT, ["b", 4, "h", "w"]), V("timestep", T.INT64, ["b", 1]),
       V("encoder_hidden_states", T.FLOAT, ["b", 77, 32])],
      [V("out_sample", T.FLOAT, ["b", 4, "h", "w"])],
      [helper.make_node("Identity", ["sample"], ["out_sample"])], "unet_timestep_rank2")
# UNet without encoder_hidden_states.
graph([V("sample", T.FLOAT, ["b", 4, "h", "w"]), V("timestep", T.INT64, ["b"])],
      [V("out_sample", T.FLOAT, ["b", 4, "h", "w"])],
      [helper.make_node("Identity", ["sample"], ["out_sample"])], "unet_no_hidden")
# SDXL-like UNet with an extra input.
graph([V("sample", T.FLOAT, ["b", 4, "h", "w"]), V("timestep", T.INT64, ["b"]),
       V("encoder_hidden_states", T.FLOAT, ["b", 77, 32]), V("text_embeds", T.FLOAT, ["b", 1280])],
      [V("out_sample", T.FLOAT, ["b", 4, "h", "w"])],
      [helper.make_node("Identity", ["sample"], ["out_sample"])], "unet_sdxl")
# UNet for a text encoder with another hidden size.
graph([V("sample", T.FLOAT, ["b", 4, "h", "w"]), V("timestep", T.INT64, ["b"]),
       V("encoder_hidden_states", T.FLOAT, ["b", 77, 64])],
      [V("out_sample", T.FLOAT, ["b", 4, "h", "w"])],
      [helper.make_node("Identity", ["sample"], ["out_sample"])], "unet_hidden64")
# VAE encoder giving 6 channels.
graph([V("sample", T.FLOAT, ["b", 3, 64, 64])], [V("latent_sample", T.FLOAT, ["b", 6, 8, 8])],
      [helper.make_node("AveragePool", ["sample"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
       helper.make_node("Concat", ["p", "p"], ["latent_sample"], axis=1)], "vae_encoder_6ch")
"#;
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(tiny())
        .arg(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn python");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("graph generation did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "graph generation failed: {status}");
    let _ = std::io::stdout().flush();
}

#[test]
fn wrong_signatures_and_fixed_batch() {
    let s = Scratch::new("graphs");
    let graphs = s.0.join("graphs");
    std::fs::create_dir_all(&graphs).unwrap();
    make_graphs(&graphs);
    let with = |name: &str, comp: &str| -> PathBuf {
        let d = s.model(name);
        std::fs::copy(
            graphs.join(format!("{name}.onnx")),
            d.join(comp).join("model.onnx"),
        )
        .unwrap();
        d
    };
    let check = |dir: &Path, parts: &[&str]| {
        let (e, msg) = load_err(&opts(dir));
        assert!(matches!(e, EngineError::Tensor { .. }), "{msg}");
        assert_mentions(&msg, parts);
    };
    check(
        &with("unet_size16", "unet"),
        &[
            "unet/model.onnx",
            "'sample'",
            "[batch, 4, 8, 8]",
            "64x64",
            "[?, 4, 16, 16]",
        ],
    );
    check(
        &with("unet_int_sample", "unet"),
        &["unet/model.onnx", "'sample'", "float32 or float16", "int64"],
    );
    check(
        &with("unet_timestep_rank2", "unet"),
        &["'timestep'", "rank 0", "[?, 1]"],
    );
    check(
        &with("unet_no_hidden", "unet"),
        &[
            "'encoder_hidden_states'",
            "inputs [\"sample\", \"timestep\"]",
        ],
    );
    check(
        &with("unet_sdxl", "unet"),
        &["'text_embeds'", "text_encoder_2", "mixes model families"],
    );
    check(
        &with("unet_hidden64", "unet"),
        &["'encoder_hidden_states'", "hidden size 32", "64"],
    );
    check(
        &with("vae_encoder_6ch", "vae_encoder"),
        &[
            "vae_encoder/model.onnx",
            "'latent_sample'",
            "8 channels",
            "6",
        ],
    );

    // A UNet exported with a fixed batch of 1 runs row by row and gives the same frames.
    let fixed = with("unet_batch1", "unet");
    let frames: Vec<Vec<u8>> = (0..3u8).map(|k| vec![40 + 60 * k; 64 * 64 * 3]).collect();
    let mut outs = Vec::new();
    for dir in [tiny(), fixed] {
        let mut e = Engine::load(&opts(&dir), &params()).unwrap();
        let mut out = Vec::new();
        for (k, f) in frames.chunks(2).enumerate() {
            let input = f
                .iter()
                .enumerate()
                .map(|(i, rgb)| InputFrame {
                    tag: (2 * k + i) as u64,
                    rgb: rgb.clone(),
                })
                .collect();
            out.extend(e.process(input).unwrap());
        }
        out.extend(e.drain().unwrap());
        assert_eq!(out.len(), 3);
        let t = e.timings();
        outs.push((out, t.unet_calls, t.unet_rows));
    }
    let (dynamic, fixed) = (&outs[0], &outs[1]);
    for (a, b) in dynamic.0.iter().zip(&fixed.0) {
        let d = a
            .pixels
            .iter()
            .zip(b.pixels.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(d <= 1e-5, "frame {}: {d}", a.tag);
    }
    assert_eq!(dynamic.2, fixed.2, "same rows");
    assert_eq!(fixed.1, fixed.2, "one call per row with a fixed batch of 1");
    assert!(
        dynamic.1 < dynamic.2,
        "rows share calls with a dynamic batch"
    );
}

#[test]
fn declared_inputs_read_from_the_file_match_onnx_runtime() {
    use gsti2i::runtime::onnx_proto::graph_inputs;
    use ort::value::ValueType;
    let env = gsti2i::runtime::environment().unwrap();
    let mut checked = 0;
    for model in ["tiny-sd15", "tiny-turbo", "tiny-fp16", "tiny-sdexport"] {
        for comp in ["text_encoder", "unet", "vae_encoder", "vae_decoder"] {
            let file = root()
                .join("models")
                .join(model)
                .join(comp)
                .join("model.onnx");
            let declared = graph_inputs(&file).unwrap();
            let session = ort::session::Session::builder(&env)
                .unwrap()
                .commit_from_file(&file)
                .unwrap();
            let want: Vec<(String, Vec<Option<i64>>)> = session
                .inputs()
                .iter()
                .map(|o| match o.dtype() {
                    ValueType::Tensor { shape, .. } => (
                        o.name().to_string(),
                        shape.iter().map(|&d| (d >= 0).then_some(d)).collect(),
                    ),
                    other => panic!("{other}"),
                })
                .collect();
            let got: Vec<(String, Vec<Option<i64>>)> = declared
                .iter()
                .map(|d| (d.name.clone(), d.dims.clone()))
                .collect();
            assert_eq!(got, want, "{model}/{comp}");
            checked += 1;
        }
    }
    assert_eq!(checked, 16);
    // The scalar timestep of an optimum >= 1.24 export has no dimensions.
    let turbo = graph_inputs(&root().join("models/tiny-turbo/unet/model.onnx")).unwrap();
    let t = turbo.iter().find(|d| d.name == "timestep").unwrap();
    assert!(t.dims.is_empty() && !t.is_dynamic() && t.elem_type == 1);
    // A broken file is an error, not a panic.
    let s = Scratch::new("proto");
    let f = s.0.join("broken.onnx");
    let bytes = std::fs::read(tiny().join("unet/model.onnx")).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let _ = graph_inputs(&f);
    std::fs::write(&f, [0xffu8; 64]).unwrap();
    assert!(graph_inputs(&f).is_err());
}
