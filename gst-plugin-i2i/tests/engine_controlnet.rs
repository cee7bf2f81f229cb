// SPDX-License-Identifier: MPL-2.0
//! Fused UNet + ControlNet graphs (ONNX Runtime's demo layout with one ControlNet, SD and
//! SDXL; diffusers' export layout with two): the engine equals the numpy reference
//! (tests/python/reference_stream.py) within 1e-4 with control images and scales, cfg self
//! and full, batch 1 and 3; scale 0 turns a ControlNet off; a live scale change holds for new
//! frames only; wrong scale counts and control images are refused with clear errors.

mod engine_common;

use engine_common::*;
use gsti2i::diffusion::{CfgType, Engine, InputFrame, OutputFrame, StreamParams};

fn params(cfg: CfgType) -> StreamParams {
    StreamParams {
        prompt: "a castle on a hill".into(),
        negative_prompt: "blurry".into(),
        seed: 9,
        t_index_list: vec![32, 45],
        num_inference_steps: 50,
        guidance_scale: 1.6,
        delta: 0.8,
        cfg_type: cfg,
        add_noise: true,
        similarity_threshold: 0.0,
        max_skip_frames: 10,
        ..Default::default()
    }
}

/// A control picture unlike the frames: rings (an edge-map-like image).
fn control_picture(k: usize) -> Vec<u8> {
    let (w, h) = (W as usize, H as usize);
    let mut v = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f32 - 32.0, y as f32 - 20.0 - k as f32);
            let on = ((dx * dx + dy * dy).sqrt() as usize / 5).is_multiple_of(2);
            let i = (y * w + x) * 3;
            let c = if on { 255 } else { 0 };
            v[i..i + 3].copy_from_slice(&[c, c, c]);
        }
    }
    v
}

/// Frames through the engine with `controls[k]` (all ControlNets' images) per frame.
fn run_controlled(
    engine: &mut Engine,
    frames: &[Vec<u8>],
    controls: &[Vec<u8>],
) -> Vec<OutputFrame> {
    let batch = engine.options().batch_size;
    let mut out = Vec::new();
    for (c, chunk) in frames.chunks(batch).enumerate() {
        let input: Vec<InputFrame> = chunk
            .iter()
            .enumerate()
            .map(|(i, rgb)| InputFrame {
                tag: (c * batch + i) as u64,
                rgb: rgb.clone(),
            })
            .collect();
        let ctl = (0..chunk.len())
            .map(|i| controls.get(c * batch + i).cloned().unwrap_or_default())
            .collect();
        out.extend(engine.process_controlled(input, ctl).unwrap());
    }
    out.extend(engine.drain().unwrap());
    assert_eq!(out.len(), frames.len());
    out
}

#[test]
fn matches_numpy_reference() {
    let frames: Vec<Vec<u8>> = (0..5).map(frame).collect();
    let dir = tmp("controlnet-reference");
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    for (k, f) in frames.iter().enumerate() {
        std::fs::write(inputs.join(format!("frame_{k:03}.rgb")), f).unwrap();
        // The second ControlNet of tiny-controlnet2 sees the rings; the first (and the only
        // one of tiny-controlnet) the frame itself.
        std::fs::write(
            inputs.join(format!("control_{k:03}_1.rgb")),
            control_picture(k),
        )
        .unwrap();
    }
    struct Case {
        model: &'static str,
        cfg: CfgType,
        scales: Vec<f32>,
    }
    let cases = [
        Case {
            model: "tiny-controlnet",
            cfg: CfgType::SelfNegative,
            scales: vec![0.8],
        },
        Case {
            model: "tiny-controlnet",
            cfg: CfgType::Full,
            scales: vec![1.0],
        },
        Case {
            model: "tiny-controlnet2",
            cfg: CfgType::SelfNegative,
            scales: vec![1.0, 0.5],
        },
        Case {
            model: "tiny-controlnet2",
            cfg: CfgType::Initialize,
            scales: vec![0.0, 1.2],
        },
        Case {
            model: "tiny-sdxl-controlnet",
            cfg: CfgType::Full,
            scales: vec![0.7],
        },
    ];
    let name = |c: &Case| {
        let s: Vec<String> = c.scales.iter().map(|v| v.to_string()).collect();
        format!("{}-{}-{}", c.model, cfg_name(c.cfg), s.join("_"))
    };
    let refs: Vec<RefCase> = cases
        .iter()
        .map(|c| RefCase {
            model: c.model,
            dir: name(c),
            params: params(c.cfg),
        })
        .collect();
    let extra: Vec<Vec<String>> = cases
        .iter()
        .map(|c| {
            let s: Vec<String> = c.scales.iter().map(|v| v.to_string()).collect();
            vec!["--controlnet-scales".into(), s.join(",")]
        })
        .collect();
    run_reference_with(&refs, &extra, &inputs, &dir);

    let mut worst = 0.0f32;
    let mut firsts = Vec::new();
    for c in &cases {
        for batch in [1usize, 3] {
            let mut e = Engine::load(&opts(c.model, batch), &params(c.cfg)).unwrap();
            e.set_controlnet_scales(&c.scales).unwrap();
            let num = e.controlnets();
            let controls: Vec<Vec<u8>> = (0..frames.len())
                .map(|k| {
                    let mut v = frames[k].clone();
                    if num == 2 {
                        v.extend(control_picture(k));
                    }
                    v
                })
                .collect();
            let out = run_controlled(&mut e, &frames, &controls);
            for (k, o) in out.iter().enumerate() {
                let want = read_f32(&dir.join(name(c)).join(format!("frame_{k:03}.f32")));
                let d = max_abs(&o.pixels, &want);
                worst = worst.max(d);
                assert!(
                    d <= 1e-4,
                    "{} batch {batch} frame {k}: max abs diff {d}",
                    name(c)
                );
            }
            if batch == 1 {
                firsts.push((name(c), out[0].pixels.clone()));
            }
        }
    }
    for (i, (na, a)) in firsts.iter().enumerate() {
        for (nb, b) in &firsts[i + 1..] {
            assert!(max_abs(a, b) > 1e-3, "{na} and {nb} give the same output");
        }
    }
    eprintln!("worst difference to the reference with ControlNets: {worst:e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scale_zero_turns_a_controlnet_off_and_scales_change_live() {
    let frames: Vec<Vec<u8>> = (0..6).map(frame).collect();
    let p = params(CfgType::SelfNegative);
    let rings: Vec<Vec<u8>> = (0..6).map(control_picture).collect();
    let run_with = |scales: &[f32], controls: &[Vec<u8>]| {
        let mut e = Engine::load(&opts("tiny-controlnet", 1), &p).unwrap();
        e.set_controlnet_scales(scales).unwrap();
        run_controlled(&mut e, &frames, controls)
    };
    // Scale 0: the control image does not matter (the frame itself or the rings).
    let off_a = run_with(&[0.0], &frames);
    let off_b = run_with(&[0.0], &rings);
    for (k, (a, b)) in off_a.iter().zip(&off_b).enumerate() {
        assert_eq!(
            a.pixels, b.pixels,
            "frame {k}: scale 0 ignores the control image"
        );
    }
    // Scale 1: it does.
    let on_a = run_with(&[1.0], &frames);
    let on_b = run_with(&[1.0], &rings);
    assert!(
        max_abs(&on_a[0].pixels, &on_b[0].pixels) > 1e-3,
        "the control image shows"
    );
    assert!(
        max_abs(&on_a[0].pixels, &off_a[0].pixels) > 1e-3,
        "the scale shows"
    );

    // A live change from frame 3 on: earlier frames as with 1, later ones as with 0, although
    // frames of both scales share a UNet call (they go in separate calls).
    let mut e = Engine::load(&opts("tiny-controlnet", 1), &p).unwrap();
    let mut out = Vec::new();
    for (k, f) in frames.iter().enumerate() {
        if k == 3 {
            e.set_controlnet_scales(&[0.0]).unwrap();
        }
        let input = vec![InputFrame {
            tag: k as u64,
            rgb: f.clone(),
        }];
        out.extend(e.process_controlled(input, vec![rings[k].clone()]).unwrap());
    }
    out.extend(e.drain().unwrap());
    for k in 0..6 {
        let want = if k < 3 { &on_b[k] } else { &off_b[k] };
        let d = max_abs(&out[k].pixels, &want.pixels);
        assert!(d <= 1e-5, "frame {k}: {d} from the stream with its scale");
    }
}

#[test]
fn wrong_scales_and_control_images_are_refused() {
    let p = params(CfgType::SelfNegative);
    let mut e = Engine::load(&opts("tiny-controlnet2", 1), &p).unwrap();
    assert_eq!(e.controlnets(), 2);
    assert_eq!(e.controlnet_scales(), [1.0, 1.0], "1 for each by default");
    e.set_controlnet_scales(&[0.5]).unwrap();
    assert_eq!(
        e.controlnet_scales(),
        [0.5, 0.5],
        "one value applies to all"
    );
    let err = e
        .set_controlnet_scales(&[1.0, 0.5, 0.2])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unet") && err.contains("2 scale(s)") && err.contains("3 scales"),
        "{err}"
    );
    assert_eq!(
        e.controlnet_scales(),
        [0.5, 0.5],
        "a refused change changes nothing"
    );
    let err = e
        .set_controlnet_scales(&[f32::NAN])
        .unwrap_err()
        .to_string();
    assert!(err.contains("finite"), "{err}");
    // Control images of the wrong size.
    let input = vec![InputFrame {
        tag: 0,
        rgb: frame(0),
    }];
    let err = e
        .process_controlled(input, vec![frame(0)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("one RGB8 image per ControlNet"), "{err}");

    // A model without ControlNets.
    let mut plain = Engine::load(&opts("tiny-sd15", 1), &p).unwrap();
    assert_eq!(plain.controlnets(), 0);
    let err = plain.set_controlnet_scales(&[1.0]).unwrap_err().to_string();
    assert!(err.contains("without ControlNet inputs"), "{err}");
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
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

/// Edits tiny-controlnet2's UNet with the onnx Python package: `edit` is Python acting on
/// the loaded model `m`.
fn edited_model(dir: &std::path::Path, name: &str, edit: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    copy_dir(&model_dir("tiny-controlnet2"), &d);
    let unet = d.join("unet").join("model.onnx");
    let script = format!(
        "import onnx, sys\nm = onnx.load(sys.argv[1])\n{edit}\nonnx.save(m, sys.argv[1])\n"
    );
    let python = root().join(".venv").join("bin").join("python");
    let status = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&unet)
        .status()
        .unwrap();
    assert!(status.success(), "editing {}", unet.display());
    d
}

#[test]
fn mismatched_controlnet_graphs_are_refused_at_load() {
    let dir = tmp("controlnet-broken");
    let p = params(CfgType::SelfNegative);
    let load_err = |d: std::path::PathBuf| match Engine::load(&opts_dir(d.clone(), 1), &p) {
        Ok(_) => panic!("{} loaded", d.display()),
        Err(e) => {
            let s = e.to_string();
            eprintln!("error as users see it: {s}");
            s
        }
    };
    // Control images without a scales input (renamed away).
    let d = edited_model(
        &dir,
        "no-scales",
        "for i in m.graph.input:\n    if i.name == 'conditioning_scales': i.name = 'other'\n\
         for n in m.graph.node:\n    n.input[:] = ['other' if x == 'conditioning_scales' else x for x in n.input]",
    );
    let e = load_err(d);
    assert!(
        e.contains("unet/model.onnx")
            && e.contains("controlnet_scales")
            && e.contains("controlnet_conds"),
        "{e}"
    );
    // A dynamic number of ControlNets.
    let d = edited_model(
        &dir,
        "dynamic-count",
        "d = [i for i in m.graph.input if i.name == 'controlnet_conds'][0].type.tensor_type.shape.dim[0]\n\
         d.ClearField('dim_value'); d.dim_param = 'num'",
    );
    let e = load_err(d);
    assert!(
        e.contains("controlnet_conds") && e.contains("number of ControlNets fixed"),
        "{e}"
    );
    // Control images of another size than the engine's.
    let d = edited_model(
        &dir,
        "fixed-size",
        "s = [i for i in m.graph.input if i.name == 'controlnet_conds'][0].type.tensor_type.shape\n\
         s.dim[3].ClearField('dim_param'); s.dim[3].dim_value = 32\n\
         s.dim[4].ClearField('dim_param'); s.dim[4].dim_value = 32",
    );
    let e = load_err(d);
    assert!(
        e.contains("controlnet_conds") && e.contains("64, 64") && e.contains("32"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
