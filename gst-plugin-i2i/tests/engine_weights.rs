// SPDX-License-Identifier: MPL-2.0
//! Prompt weighting (`(word:1.3)`, `[word]`) against the numpy reference
//! (tests/python/reference_style.py, reference_stream.py):
//! - the parser gives the runs and weights of `parse_weights`, bit for bit, on a table and
//!   on a few thousand random prompts made of the syntax's characters;
//! - the weighted ids and weights equal `weighted_tokens` on transformers' CLIPTokenizer
//!   (tiny-sd15's tokenizer and tiny-sdxl's second one);
//! - the engine's embeddings (SD 1.5 and SDXL's two encoders) and frames (positive and
//!   negative prompts weighted, cfg full) are the reference's within 1e-4; a prompt blend
//!   weights its prompts too;
//! - a prompt without weighting syntax gives the embeddings of the text encoder run on the
//!   tokenizer's own ids, bit for bit (what the engine did before weighting existed).

mod engine_common;

use std::io::Write;
use std::process::{Command, Stdio};

use engine_common::*;
use gsti2i::diffusion::tokenizer::ClipTokenizer;
use gsti2i::diffusion::{CfgType, Engine, ExecutionProvider, StreamParams, weights};
use gsti2i::runtime::graph::Feed;
use gsti2i::runtime::provider::SessionFactory;

/// Runs `code` in the project's Python with `input` on stdin; its stdout.
fn python(code: &str, input: &str) -> String {
    let py = root().join(".venv").join("bin").join("python");
    assert!(
        py.is_file(),
        "{} missing: run scripts/setup.sh",
        py.display()
    );
    let mut child = Command::new(&py)
        .arg("-c")
        .arg(code)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed: {}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

const PROMPTS: &[&str] = &[
    "a red car",
    "a (red:1.5) car, [blurry]",
    "((a)) [[house]] on a (hill:0.7), \\(sunny\\)",
    "(unbalanced a red car",
    "a (red fox:1.3) in the [snow]",
    "",
];

fn long_prompt() -> String {
    format!("(word:2) {}", "cat ".repeat(100))
}

/// A few thousand prompts made of the characters the syntax uses (and a Unicode digit).
fn random_prompts(n: usize) -> Vec<String> {
    const PIECES: &[&str] = &[
        "a", "b", " ", "(", ")", "[", "]", ":", "\\", "1", ".", "5", "0", "-", "+", "\u{0663}",
        "é", "(", ")", ":1.2)",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = (next() % 24) as usize;
            (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect()
        })
        .collect()
}

#[test]
fn the_parser_agrees_with_the_reference() {
    let mut texts: Vec<String> = random_prompts(3000);
    texts.extend(PROMPTS.iter().map(|s| s.to_string()));
    texts.push(long_prompt());
    // Weights as the bits of the float64, so the comparison is exact.
    let code = "import json, struct, sys\n\
        sys.path.insert(0, 'tests/python')\n\
        from reference_style import parse_weights\n\
        out = [[[t, struct.pack('<d', w).hex()] for t, w in parse_weights(x)] for x in json.load(sys.stdin)]\n\
        print(json.dumps(out))\n";
    let out = python(code, &serde_json::to_string(&texts).unwrap());
    let want: Vec<Vec<(String, String)>> = serde_json::from_str(&out).unwrap();
    assert_eq!(want.len(), texts.len());
    let mut weighted = 0;
    for (text, want) in texts.iter().zip(want) {
        let want: Vec<(String, f64)> = want
            .into_iter()
            .map(|(t, hex)| {
                let bytes: Vec<u8> = (0..8)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                (t, f64::from_le_bytes(bytes.try_into().unwrap()))
            })
            .collect();
        let got = weights::parse(text);
        assert_eq!(got.len(), want.len(), "{text:?}: {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g.0 == w.0 && g.1.to_bits() == w.1.to_bits(),
                "{text:?}: {got:?} vs {want:?}"
            );
        }
        weighted += usize::from(want.iter().any(|(_, w)| *w != 1.0));
    }
    // Not vacuous: many of the random prompts carry weights.
    assert!(weighted > 500, "{weighted} weighted prompts");
}

#[test]
fn weighted_tokens_equal_the_reference() {
    let mut texts: Vec<String> = PROMPTS.iter().map(|s| s.to_string()).collect();
    texts.push(long_prompt());
    texts.extend(random_prompts(200));
    let dirs = ["models/tiny-sd15/tokenizer", "models/tiny-sdxl/tokenizer_2"];
    let code = "import json, sys\n\
        sys.path.insert(0, 'tests/python')\n\
        from transformers import CLIPTokenizer\n\
        from reference_style import weighted_tokens\n\
        req = json.load(sys.stdin)\n\
        out = {}\n\
        for d in req['dirs']:\n\
        \x20   tok = CLIPTokenizer.from_pretrained(d)\n\
        \x20   out[d] = [[ids.tolist(), w.view('<u4').tolist()] for ids, w in \
                          (weighted_tokens(tok, t) for t in req['texts'])]\n\
        print(json.dumps(out))\n";
    let req = serde_json::json!({ "dirs": dirs, "texts": texts });
    let out: serde_json::Value = serde_json::from_str(&python(code, &req.to_string())).unwrap();
    for d in dirs {
        let mut tok = ClipTokenizer::from_dir(&root().join(d)).unwrap();
        for (text, want) in texts.iter().zip(out[d].as_array().unwrap()) {
            let want_ids: Vec<u32> = serde_json::from_value(want[0].clone()).unwrap();
            // The float32 weights' bits: exact.
            let want_w: Vec<u32> = serde_json::from_value(want[1].clone()).unwrap();
            let (ids, w) = weights::weighted_ids(&mut tok, text).unwrap();
            assert_eq!(ids, want_ids, "{d}: {text:?}");
            let w: Vec<u32> = w.iter().map(|x| x.to_bits()).collect();
            assert_eq!(w, want_w, "{d}: {text:?}");
        }
    }
}

#[test]
fn prompts_without_weighting_syntax_give_the_tokenizers_own_ids() {
    let p = root().join("tests/fixtures/tokenizer_ids.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let plain: Vec<&str> = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .filter(|p| !p.contains(['(', ')', '[', ']', '\\']))
        .collect();
    assert!(plain.len() > 80, "{}", plain.len());
    for d in ["models/tiny-sd15/tokenizer", "models/tiny-sdxl/tokenizer_2"] {
        let mut tok = ClipTokenizer::from_dir(&root().join(d)).unwrap();
        for text in &plain {
            let (ids, w) = weights::weighted_ids(&mut tok, text).unwrap();
            assert_eq!(ids, tok.encode(text), "{d}: {text:?}");
            assert!(w.iter().all(|&x| x == 1.0), "{d}: {text:?}");
        }
    }
}

fn engine(model: &str, p: &StreamParams) -> Engine {
    Engine::load(&opts(model, 1), p).unwrap_or_else(|e| panic!("{model}: {e}"))
}

#[test]
fn embeddings_match_the_reference() {
    let mut texts: Vec<String> = PROMPTS.iter().map(|s| s.to_string()).collect();
    texts.push(long_prompt());
    let dir = tmp("weights-emb");
    let code = "import json, sys\n\
        sys.path.insert(0, 'tests/python')\n\
        import reference_stream as rs\n\
        req = json.load(sys.stdin)\n\
        for name in req['models']:\n\
        \x20   m = rs.Model(rs.Path('models') / name, 1)\n\
        \x20   for i, t in enumerate(req['texts']):\n\
        \x20       e = m.encode_prompt(t)\n\
        \x20       e['encoder_hidden_states'].astype('<f4').tofile(f\"{req['out']}/{name}-{i}.ehs\")\n\
        \x20       if 'text_embeds' in e:\n\
        \x20           e['text_embeds'].astype('<f4').tofile(f\"{req['out']}/{name}-{i}.pooled\")\n";
    let models = ["tiny-sd15", "tiny-sdxl"];
    let req = serde_json::json!({ "models": models, "texts": texts, "out": dir });
    python(code, &req.to_string());
    for model in models {
        let mut e = engine(model, &StreamParams::default());
        let mut encodings = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let got = e.encode_prompt(text).unwrap();
            let [_, _, width] = got.shape;
            let ehs = read_f32(&dir.join(format!("{model}-{i}.ehs")));
            let rows = ehs.len() / width;
            assert_eq!(rows, 77);
            let d = max_abs(&got.data[..rows * width], &ehs);
            assert!(d <= 1e-4, "{model} {text:?}: hidden states differ by {d}");
            let pooled = dir.join(format!("{model}-{i}.pooled"));
            if pooled.is_file() {
                // SDXL: the row after the hidden states holds the pooled vector, unweighted.
                let pooled = read_f32(&pooled);
                let start = rows * width;
                let d = max_abs(&got.data[start..start + pooled.len()], &pooled);
                assert!(d <= 1e-4, "{model} {text:?}: pooled differs by {d}");
            }
            encodings.push(got.data);
        }
        // Not vacuous: the weights moved the hidden states ("a red car" and its weighted form).
        let d = max_abs(&encodings[0], &encodings[1]);
        assert!(d > 1e-3, "{model}: weighting changed nothing ({d})");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The text encoder's output on the tokenizer's own ids, as the engine computed it before
/// prompts had weights: SD 1.5's `last_hidden_state`, SDXL's packed rows.
fn unweighted(model: &str, text: &str) -> Vec<f32> {
    let dir = model_dir(model);
    let factory = SessionFactory {
        env: gsti2i::runtime::environment().unwrap(),
        provider: ExecutionProvider::Cpu,
        intra_threads: 1,
        device_id: 0,
        fp16: false,
        cache_dir: None,
        cpu_arena: true,
    };
    let run = |encoder: &str, tokenizer: &str, outputs: &[&str]| -> Vec<Vec<f32>> {
        let mut tok = ClipTokenizer::from_dir(&dir.join(tokenizer)).unwrap();
        let ids: Vec<i64> = tok.encode(text).iter().map(|&i| i64::from(i)).collect();
        let mut g = factory
            .open(&dir.join(encoder).join("model.onnx"), None)
            .unwrap();
        let shape = [1i64, ids.len() as i64];
        outputs
            .iter()
            .map(|name| {
                let mut out = Vec::new();
                g.run(
                    &[("input_ids", &shape[..], Feed::I64(&ids))],
                    name,
                    &mut out,
                )
                .unwrap();
                out
            })
            .collect()
    };
    if model != "tiny-sdxl" {
        return run("text_encoder", "tokenizer", &["last_hidden_state"]).remove(0);
    }
    // optimum's layout: the penultimate of hidden_states.0 .. hidden_states.N.
    let penultimate = |encoder: &str| {
        let g = factory
            .open(&dir.join(encoder).join("model.onnx"), None)
            .unwrap();
        let top = g
            .outputs
            .iter()
            .filter_map(|s| s.name.strip_prefix("hidden_states.")?.parse::<usize>().ok())
            .max()
            .unwrap();
        format!("hidden_states.{}", top - 1)
    };
    let (p1, p2) = (penultimate("text_encoder"), penultimate("text_encoder_2"));
    let h1 = run("text_encoder", "tokenizer", &[&p1]).remove(0);
    let mut r2 = run("text_encoder_2", "tokenizer_2", &[&p2, "text_embeds"]);
    let (h2, pooled) = (r2.remove(0), r2.remove(0));
    let (e1, e2) = (h1.len() / 77, h2.len() / 77);
    let mut packed = Vec::new();
    for r in 0..77 {
        packed.extend_from_slice(&h1[r * e1..(r + 1) * e1]);
        packed.extend_from_slice(&h2[r * e2..(r + 1) * e2]);
    }
    packed.extend_from_slice(&pooled);
    packed.resize(packed.len().div_ceil(e1 + e2) * (e1 + e2), 0.0);
    packed
}

#[test]
fn plain_prompts_give_the_same_bits_as_before() {
    for model in ["tiny-sd15", "tiny-sdxl"] {
        let mut e = engine(model, &StreamParams::default());
        for text in ["a red fox in the snow", "", "oil painting: a lake, 4k"] {
            let got = e.encode_prompt(text).unwrap().data;
            assert!(got == unweighted(model, text), "{model}: {text:?}");
        }
        // Weight 1 and brackets that close nothing are the plain prompt.
        let plain = e.encode_prompt("a red fox").unwrap().data;
        assert!(e.encode_prompt("a (red:1.0) fox").unwrap().data == plain);
        assert!(e.encode_prompt("a (red:1) (fox:1)").unwrap().data == plain);
        assert!(
            e.encode_prompt("a red fox").unwrap().data
                != e.encode_prompt("a red (fox)").unwrap().data
        );
    }
}

fn params(prompt: &str, negative: &str) -> StreamParams {
    StreamParams {
        prompt: prompt.into(),
        negative_prompt: negative.into(),
        seed: 7,
        t_index_list: vec![32, 45],
        num_inference_steps: 50,
        guidance_scale: 1.8,
        delta: 0.8,
        cfg_type: CfgType::Full,
        ..Default::default()
    }
}

#[test]
fn frames_match_the_reference_and_blends_weight_their_prompts() {
    let frames: Vec<Vec<u8>> = (0..3).map(frame).collect();
    let dir = tmp("weights-frames");
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    for (k, f) in frames.iter().enumerate() {
        std::fs::write(inputs.join(format!("frame_{k:03}.rgb")), f).unwrap();
    }
    let weighted = params(
        "a (red:1.6) cat in the [[snow]]",
        "(blurry:1.4), [low] quality",
    );
    let plain = params("a red cat in the snow", "blurry, low quality");
    let mut cases = Vec::new();
    for model in ["tiny-sd15", "tiny-sdxl"] {
        for (name, p) in [("weighted", &weighted), ("plain", &plain)] {
            cases.push(RefCase {
                model,
                dir: format!("{model}-{name}"),
                params: p.clone(),
            });
        }
    }
    run_reference(&cases, &inputs, &dir);
    for model in ["tiny-sd15", "tiny-sdxl"] {
        let mut outs = Vec::new();
        for (name, p) in [("weighted", &weighted), ("plain", &plain)] {
            let out = run(&mut engine(model, p), &frames);
            for (k, o) in out.iter().enumerate() {
                let want = read_f32(&dir.join(format!("{model}-{name}/frame_{k:03}.f32")));
                let d = max_abs(&o.pixels, &want);
                assert!(d <= 1e-4, "{model} {name} frame {k}: max abs diff {d}");
            }
            outs.push(out);
        }
        let d = max_abs(&outs[0][0].pixels, &outs[1][0].pixels);
        assert!(d > 1e-3, "{model}: the weights changed no pixel ({d})");
        // A blend of the weighted prompt alone is the weighted prompt.
        let blend = StreamParams {
            prompt: "unused".into(),
            prompt_blend: Some(vec![(weighted.prompt.clone(), 1.0)]),
            ..weighted.clone()
        };
        let out = run(&mut engine(model, &blend), &frames);
        let d = max_abs(&out[0].pixels, &outs[0][0].pixels);
        assert!(d <= 1e-6, "{model}: the blend lost the weights ({d})");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_weight_out_of_range_is_refused_naming_it() {
    let mut tok = ClipTokenizer::from_dir(&root().join("models/tiny-sd15/tokenizer")).unwrap();
    let err = weights::weighted_ids(&mut tok, "a (red:99999999999999999999999) fox")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"red\"") && err.contains("100"), "{err}");
    // Brackets nested 60 deep weigh 1.1^60 = 304: refused too; 40 deep (45) is taken.
    let deep = |n: usize| format!("{}fox{}", "(".repeat(n), ")".repeat(n));
    assert!(weights::weighted_ids(&mut tok, &deep(60)).is_err());
    assert!(weights::weighted_ids(&mut tok, &deep(40)).is_ok());
    let mut e = engine("tiny-sd15", &StreamParams::default());
    let err = e.encode_prompt("(fox:1e9999)").err().map(|e| e.to_string());
    // `1e9999` is no weight in the syntax (the number takes digits and points only): literal.
    assert!(err.is_none(), "{err:?}");
    let err = e.encode_prompt("(fox:9999)").unwrap_err().to_string();
    assert!(err.contains("\"fox\""), "{err}");
}
