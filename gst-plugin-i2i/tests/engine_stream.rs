// SPDX-License-Identifier: MPL-2.0
//! The engine on the tiny test models: equal (within 1e-4) to the independent numpy +
//! onnxruntime reference (tests/python/reference_stream.py) for every guidance type,
//! n = 1, 2, 3 and batch sizes 1 and 3; determinism, seed and prompt sensitivity, the
//! similarity filter, drain and reset, live parameter changes.

mod engine_common;

use engine_common::*;
use gsti2i::diffusion::{CfgType, Engine, InputFrame, StreamParams};

fn params(cfg: CfgType, t_index: &[u32]) -> StreamParams {
    StreamParams {
        prompt: "a red cat in the snow".into(),
        negative_prompt: "blurry, low quality".into(),
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
    cfg: CfgType,
    t_index: Vec<u32>,
    add_noise: bool,
}

impl Case {
    fn dir(&self) -> String {
        let t: Vec<String> = self.t_index.iter().map(|t| t.to_string()).collect();
        format!(
            "{}-{}-{}-{}",
            self.model,
            cfg_name(self.cfg),
            t.join("_"),
            self.add_noise as u8
        )
    }

    fn params(&self) -> StreamParams {
        StreamParams {
            add_noise: self.add_noise,
            ..params(self.cfg, &self.t_index)
        }
    }
}

#[test]
fn matches_numpy_reference() {
    let frames: Vec<Vec<u8>> = (0..5).map(frame).collect();
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
                model: "tiny-sd15",
                cfg,
                t_index: t,
                add_noise: true,
            });
        }
    }
    for model in ["tiny-turbo", "tiny-fp16", "tiny-sdexport"] {
        for cfg in [CfgType::SelfNegative, CfgType::Full, CfgType::Initialize] {
            cases.push(Case {
                model,
                cfg,
                t_index: vec![32, 45],
                add_noise: true,
            });
        }
    }
    cases.push(Case {
        model: "tiny-sd15",
        cfg: CfgType::SelfNegative,
        t_index: vec![35, 45],
        add_noise: false,
    });
    let refs: Vec<RefCase> = cases
        .iter()
        .map(|c| RefCase {
            model: c.model,
            dir: c.dir(),
            params: c.params(),
        })
        .collect();
    run_reference(&refs, &inputs, &dir);

    let mut worst = 0.0f32;
    let mut first_frames = Vec::new();
    for c in &cases {
        // fp16 graphs: the reference casts the same way, but rounding to float16 inside the
        // graphs can differ by a unit between batch shapes.
        let tol = if c.model == "tiny-fp16" { 2e-3 } else { 1e-4 };
        for batch in [1usize, 3] {
            let mut engine = Engine::load(&opts(c.model, batch), &c.params())
                .unwrap_or_else(|e| panic!("{}: {e}", c.dir()));
            let out = run(&mut engine, &frames);
            for (k, o) in out.iter().enumerate() {
                assert!(!o.skipped);
                let want = read_f32(&dir.join(c.dir()).join(format!("frame_{k:03}.f32")));
                let d = max_abs(&o.pixels, &want);
                worst = worst.max(if c.model == "tiny-fp16" { 0.0 } else { d });
                assert!(
                    d <= tol,
                    "{} batch {batch} frame {k}: max abs diff {d}",
                    c.dir()
                );
            }
            if batch == 1 {
                first_frames.push((c.dir(), out[0].pixels.clone()));
            }
        }
    }
    // The comparison is not vacuous: outputs are pictures (not flat or saturated), and
    // each guidance type and step list gives a different one.
    for (name, px) in &first_frames {
        let mean = px.iter().sum::<f32>() / px.len() as f32;
        let var = px.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / px.len() as f32;
        let clipped = px.iter().filter(|&&v| v <= 0.0 || v >= 1.0).count();
        assert!(
            var.sqrt() > 0.02,
            "{name}: flat output (std {})",
            var.sqrt()
        );
        assert!(
            clipped < px.len() / 2,
            "{name}: {clipped} of {} pixels clipped",
            px.len()
        );
    }
    for (i, (na, a)) in first_frames.iter().enumerate() {
        for (nb, b) in &first_frames[i + 1..] {
            if na.starts_with("tiny-sd15") && nb.starts_with("tiny-sd15") {
                assert!(max_abs(a, b) > 1e-3, "{na} and {nb} give the same output");
            }
        }
    }
    eprintln!("worst float32 difference to the reference: {worst:e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deterministic_and_sensitive_to_seed_and_prompt() {
    let frames: Vec<Vec<u8>> = (0..3).map(frame).collect();
    let p = params(CfgType::SelfNegative, &[32, 45]);
    let mut e = Engine::load(&opts("tiny-sd15", 1), &p).unwrap();
    let a = run(&mut e, &frames);
    let mut e2 = Engine::load(&opts("tiny-sd15", 1), &p).unwrap();
    let b = run(&mut e2, &frames);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.pixels, y.pixels, "same seed, same output");
    }
    // Changing the seed live changes the output; changing it back restores it.
    e.set_params(&StreamParams {
        seed: 8,
        ..p.clone()
    })
    .unwrap();
    let c = run(&mut e, &frames);
    assert!(
        max_abs(&a[0].pixels, &c[0].pixels) > 1e-3,
        "seed must matter"
    );
    e.set_params(&StreamParams {
        prompt: "a blue boat".into(),
        ..p.clone()
    })
    .unwrap();
    let d = run(&mut e, &frames);
    assert!(
        max_abs(&a[0].pixels, &d[0].pixels) > 1e-3,
        "prompt must matter"
    );
    e.set_params(&p).unwrap();
    let again = run(&mut e, &frames);
    for (x, y) in a.iter().zip(&again) {
        assert_eq!(x.pixels, y.pixels, "back to the same settings, same output");
    }
    // The text encoder ran for the load and the two prompt changes only.
    assert_eq!(e.timings().text_calls, 3);
}

#[test]
fn similarity_filter_skips_identical_frames_within_limit() {
    let p = StreamParams {
        similarity_threshold: 0.98,
        max_skip_frames: 3,
        ..params(CfgType::SelfNegative, &[32, 45])
    };
    let mut e = Engine::load(&opts("tiny-sd15", 2), &p).unwrap();
    let still = frame(0);
    let mut frames = vec![still.clone(); 12];
    frames.push(frame(9));
    frames.push(frame(9));
    let out = run(&mut e, &frames);
    let skipped: Vec<bool> = out.iter().map(|o| o.skipped).collect();
    // Identical frames: cos = 1, p_skip = 1 beats every coin, so exactly the limit forces
    // a frame through; the new scene is processed.
    assert_eq!(
        skipped,
        [
            false, true, true, true, false, true, true, true, false, true, true, true, false, true
        ]
    );
    let mut run_len = 0;
    for (k, o) in out.iter().enumerate() {
        if o.skipped {
            run_len += 1;
            assert!(run_len <= 3);
            assert!(
                std::sync::Arc::ptr_eq(&o.pixels, &out[k - 1].pixels),
                "frame {k} repeats the previous output"
            );
        } else {
            run_len = 0;
        }
    }
    assert_eq!(e.timings().frames_skipped, 10);
}

#[test]
fn pipeline_latency_drain_and_reset() {
    let p = params(CfgType::SelfNegative, &[20, 32, 45]);
    let mut e = Engine::load(&opts("tiny-sd15", 2), &p).unwrap();
    assert_eq!(e.steps(), 3);
    assert_eq!(e.latency_frames(), 4);
    let f = |t: u64| InputFrame {
        tag: t,
        rgb: frame(t as usize),
    };
    // n = 3: a frame entering at call c comes out at call c + 2.
    assert!(e.process(vec![f(0), f(1)]).unwrap().is_empty());
    assert!(e.process(vec![f(2), f(3)]).unwrap().is_empty());
    assert_eq!(e.in_flight(), 4);
    let out = e.process(vec![f(4), f(5)]).unwrap();
    assert_eq!(out.iter().map(|o| o.tag).collect::<Vec<_>>(), [0, 1]);
    // A partial batch, then drain: everything left comes out once, in order.
    assert!(
        e.process(vec![f(6)])
            .unwrap()
            .iter()
            .map(|o| o.tag)
            .eq([2, 3])
    );
    let rest = e.drain().unwrap();
    assert_eq!(rest.iter().map(|o| o.tag).collect::<Vec<_>>(), [4, 5, 6]);
    assert!(e.drain().unwrap().is_empty());
    // Reset forgets frames in flight.
    e.process(vec![f(7)]).unwrap();
    assert_eq!(e.in_flight(), 1);
    e.reset();
    assert_eq!(e.in_flight(), 0);
    assert!(e.drain().unwrap().is_empty());
    // Bad input is an error, not a panic, and leaves the engine usable.
    let err = e
        .process(vec![InputFrame {
            tag: 9,
            rgb: vec![0; 10],
        }])
        .unwrap_err();
    assert!(err.to_string().contains("64x64"), "{err}");
    let err = e.process(vec![f(1), f(2), f(3)]).unwrap_err();
    assert!(err.to_string().contains("batch-size"), "{err}");
    let err = e
        .set_params(&StreamParams {
            t_index_list: vec![50],
            ..p.clone()
        })
        .unwrap_err();
    assert!(err.to_string().contains("t-index-list"), "{err}");
    assert_eq!(e.params(), &p);
    assert_eq!(e.process(vec![f(1)]).unwrap().len(), 0);
    assert_eq!(e.drain().unwrap().len(), 1);
}

#[test]
fn live_changes_apply_to_new_frames() {
    // Frames already in flight finish with the settings they entered with; frames after
    // the change use the new ones: the result of each frame is the same as in a stream
    // that had its settings from the start.
    let frames: Vec<Vec<u8>> = (0..4).map(frame).collect();
    let p1 = params(CfgType::SelfNegative, &[32, 45]);
    let p2 = StreamParams {
        prompt: "green hills".into(),
        t_index_list: vec![20, 32, 45],
        cfg_type: CfgType::Full,
        ..p1.clone()
    };
    let mut ref1 = Engine::load(&opts("tiny-sd15", 1), &p1).unwrap();
    let a = run(&mut ref1, &frames[..2]);
    let mut ref2 = Engine::load(&opts("tiny-sd15", 1), &p2).unwrap();
    let b = run(&mut ref2, &frames[2..]);

    let mut e = Engine::load(&opts("tiny-sd15", 1), &p1).unwrap();
    let mut out = Vec::new();
    for (k, f) in frames.iter().enumerate() {
        if k == 2 {
            e.set_params(&p2).unwrap();
        }
        out.extend(
            e.process(vec![InputFrame {
                tag: k as u64,
                rgb: f.clone(),
            }])
            .unwrap(),
        );
    }
    out.extend(e.drain().unwrap());
    assert_eq!(out.iter().map(|o| o.tag).collect::<Vec<_>>(), [0, 1, 2, 3]);
    for (o, r) in out.iter().zip(a.iter().chain(&b)) {
        assert!(max_abs(&o.pixels, &r.pixels) <= 1e-6, "frame {}", o.tag);
    }
}

#[test]
fn engine_moves_between_threads_and_errors_are_shareable() {
    fn send<T: Send>() {}
    fn share<T: Send + Sync + Clone + std::error::Error>() {}
    send::<Engine>();
    share::<gsti2i::diffusion::EngineError>();
}

/// The element's split: frames preprocessed on one thread, the model calls on another, the
/// conversion to pixels on a third give the same bits as `Engine::process` on one thread,
/// for batch sizes 1 and 3 and with the similarity filter on; a prepared frame of the wrong
/// size is refused by name.
#[test]
fn prepared_path_on_three_threads_matches_process() {
    use std::sync::mpsc;
    for (batch, threshold) in [(1usize, 0.0f32), (3, 0.0), (1, 0.9)] {
        let frames: Vec<Vec<u8>> = (0..7).map(|k| frame(k / 2)).collect();
        let p = StreamParams {
            similarity_threshold: threshold,
            ..params(CfgType::SelfNegative, &[32, 45])
        };
        let mut e = Engine::load(&opts("tiny-sd15", batch), &p).unwrap();
        let expected = run(&mut e, &frames);
        let mut rgb_expected = Vec::new();
        for o in &expected {
            let mut v = Vec::new();
            gsti2i::diffusion::to_rgb8(&o.pixels, W, H, &mut v);
            rgb_expected.push(v);
        }

        let mut e = Engine::load(&opts("tiny-sd15", batch), &p).unwrap();
        let pre = e.preprocessor();
        let (in_tx, in_rx) = mpsc::sync_channel(2);
        let (out_tx, out_rx) = mpsc::sync_channel(2);
        let input = std::thread::spawn({
            let frames = frames.clone();
            move || {
                for (c, chunk) in frames.chunks(batch).enumerate() {
                    let prepared: Vec<_> = chunk
                        .iter()
                        .enumerate()
                        .map(|(i, rgb)| pre.prepare((c * batch + i) as u64, rgb, W, H).unwrap())
                        .collect();
                    in_tx.send(prepared).unwrap();
                }
            }
        });
        let infer = std::thread::spawn(move || {
            for prepared in in_rx {
                for d in e.process_prepared(prepared).unwrap() {
                    out_tx.send(d).unwrap();
                }
            }
            for d in e.drain_decoded().unwrap() {
                out_tx.send(d).unwrap();
            }
            e
        });
        let mut got = Vec::new();
        for d in out_rx {
            let mut px = Vec::new();
            d.pixels(&mut px);
            let mut rgb = Vec::new();
            d.to_rgb8(W, H, &mut rgb);
            got.push((d.tag, d.skipped, px, rgb));
        }
        input.join().unwrap();
        let mut e = infer.join().unwrap();
        assert_eq!(got.len(), expected.len(), "batch {batch}");
        for (k, ((tag, skipped, px, rgb), o)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(*tag, o.tag);
            assert_eq!(*skipped, o.skipped);
            assert!(
                px.iter()
                    .zip(o.pixels.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "frame {k}, batch {batch}: pixels differ"
            );
            assert_eq!(
                rgb, &rgb_expected[k],
                "frame {k}, batch {batch}: RGB8 differs"
            );
        }
        if threshold > 0.0 {
            assert!(got.iter().any(|g| g.1), "repeated frames are skipped");
        }
        // A frame prepared for another size is refused, naming what it expected.
        let small = e
            .preprocessor()
            .prepare(0, &vec![0u8; 32 * 32 * 3], 32, 32)
            .unwrap();
        let err = e.process_prepared(vec![small]).unwrap_err().to_string();
        assert!(err.contains("prepared frame"), "{err}");
        let err = e
            .preprocessor()
            .prepare(0, &[0u8; 5], W, H)
            .unwrap_err()
            .to_string();
        assert!(err.contains("64x64"), "{err}");
    }
}

/// Calls of changing size (full batches, single frames, as a live element sends them)
/// rebind the graphs' inputs and outputs each time the shapes change, and give the same
/// frames as one frame per call.
#[test]
fn calls_of_changing_size_match_single_frames() {
    let frames: Vec<Vec<u8>> = (0..8).map(frame).collect();
    let p = params(CfgType::Full, &[32, 45]);
    let mut single = Engine::load(&opts("tiny-sd15", 1), &p).unwrap();
    let expected = run(&mut single, &frames);
    let mut e = Engine::load(&opts("tiny-sd15", 2), &p).unwrap();
    let mut out = Vec::new();
    let mut next = 0;
    for size in [2, 1, 2, 1, 1, 1] {
        let input = (next..next + size)
            .map(|k| InputFrame {
                tag: k as u64,
                rgb: frames[k].clone(),
            })
            .collect();
        next += size;
        out.extend(e.process(input).unwrap());
    }
    out.extend(e.drain().unwrap());
    assert_eq!(out.len(), expected.len());
    for (a, b) in out.iter().zip(&expected) {
        assert_eq!(a.tag, b.tag);
        assert!(
            max_abs(&a.pixels, &b.pixels) <= 1e-5,
            "frame {}: the batch must not change the result",
            a.tag
        );
    }
}

#[test]
fn the_engine_fades_the_prompt_and_seed_and_encodes_each_prompt_once() {
    let frames: Vec<Vec<u8>> = (0..6).map(frame).collect();
    let p = params(CfgType::SelfNegative, &[32, 45]);
    let q = StreamParams {
        prompt: "a blue boat".into(),
        seed: 8,
        ..p.clone()
    };
    // Where the fade ends: q from the start.
    let mut target = Engine::load(&opts("tiny-sd15", 1), &q).unwrap();
    let want = run(&mut target, &frames);
    let mut e = Engine::load(&opts("tiny-sd15", 1), &p).unwrap();
    let before = run(&mut e, &frames);
    e.set_params(&StreamParams {
        transition_frames: 2,
        ..q.clone()
    })
    .unwrap();
    let faded = run(&mut e, &frames);
    // Two frames in between, unlike both ends; the third one on is the target's.
    for k in 0..2 {
        assert!(
            max_abs(&faded[k].pixels, &want[k].pixels) > 1e-4,
            "frame {k}"
        );
        assert!(
            max_abs(&faded[k].pixels, &before[k].pixels) > 1e-4,
            "frame {k}"
        );
    }
    for k in 2..frames.len() {
        assert_eq!(faded[k].pixels, want[k].pixels, "frame {k}");
    }
    // The text encoder ran for the load and the new prompt, once each.
    assert_eq!(e.timings().text_calls, 2);
}
