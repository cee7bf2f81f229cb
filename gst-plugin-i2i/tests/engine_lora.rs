// SPDX-License-Identifier: MPL-2.0
//! LoRA adapters bound as UNet inputs (models/tiny-lora): the engine's final latents and
//! pictures equal the numpy reference (tests/python/reference_stream.py `--lora`, i.e.
//! W + scale * A B through the bound inputs) within 1e-4 with no LoRA, one, two side by
//! side, batch 1 and 3; a live switch needs no new session and applies from the next call;
//! `off` is the base output bit for bit; files that do not fit are refused naming the first
//! mismatch and leave the running style as it was; a model without LoRA inputs refuses
//! `lora`; a fade binds both sides; with shared adapters a switch to a file not in memory
//! waits for a loader thread instead of reading it on the calling thread.

mod engine_common;

use std::process::Command;

use engine_common::*;
use gsti2i::diffusion::{CfgType, Engine, InputFrame, StreamParams};

fn lora_file(name: &str) -> String {
    model_dir("tiny-lora")
        .join("loras")
        .join(format!("{name}.onnx_adapter"))
        .display()
        .to_string()
}

fn params(lora: &str) -> StreamParams {
    StreamParams {
        prompt: "a castle on a hill".into(),
        negative_prompt: "blurry".into(),
        seed: 9,
        t_index_list: vec![32, 45],
        num_inference_steps: 50,
        guidance_scale: 1.6,
        delta: 0.8,
        cfg_type: CfgType::SelfNegative,
        lora: lora.into(),
        ..Default::default()
    }
}

/// Runs `frames` one per call; `switch(k)` may change the settings before frame k.
fn stream(
    e: &mut Engine,
    frames: &[Vec<u8>],
    mut switch: impl FnMut(usize, &mut Engine),
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for (k, f) in frames.iter().enumerate() {
        switch(k, e);
        let input = vec![InputFrame {
            tag: k as u64,
            rgb: f.clone(),
        }];
        out.extend(e.process(input).unwrap());
    }
    out.extend(e.drain().unwrap());
    out.into_iter().map(|o| o.pixels.to_vec()).collect()
}

#[test]
fn matches_numpy_reference_in_latents_and_pixels() {
    let frames: Vec<Vec<u8>> = (0..4).map(frame).collect();
    let dir = tmp("lora-reference");
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    for (k, f) in frames.iter().enumerate() {
        std::fs::write(inputs.join(format!("frame_{k:03}.rgb")), f).unwrap();
    }
    let a = lora_file("style-a");
    let b = lora_file("style-b");
    let cases = [
        ("none", String::new()),
        ("a", format!("{a}:0.8")),
        ("ab", format!("{a}:0.8,{b}:0.5")),
    ];
    let refs: Vec<RefCase> = cases
        .iter()
        .map(|(name, l)| RefCase {
            model: "tiny-lora",
            dir: name.to_string(),
            params: params(l),
        })
        .collect();
    let extra: Vec<Vec<String>> = cases
        .iter()
        .map(|(_, l)| vec!["--lora".into(), l.clone(), "--dump".into()])
        .collect();
    run_reference_with(&refs, &extra, &inputs, &dir);
    // The reference's final latents (x0, scaled) as float32 files beside its frames.
    let python = root().join(".venv").join("bin").join("python");
    let ok = Command::new(python)
        .arg("-c")
        .arg(
            "import sys, numpy as np, pathlib\n\
             for d in sys.argv[1:]:\n\
             \x20   for f in sorted(pathlib.Path(d).glob('frame_*.npz')):\n\
             \x20       np.load(f)['x0_final'].astype('<f4').tofile(f.with_suffix('.x0'))\n",
        )
        .args(cases.iter().map(|(n, _)| dir.join(n)))
        .status()
        .unwrap();
    assert!(ok.success());

    let mut worst = (0.0f32, 0.0f32);
    let mut firsts = Vec::new();
    for (name, l) in &cases {
        for batch in [1usize, 3] {
            // Pictures.
            let mut e = Engine::load(&opts("tiny-lora", batch), &params(l)).unwrap();
            assert_eq!(e.lora_projections(), 16);
            let out = run(&mut e, &frames);
            // Latents: the decoder's input, x0 / scaling factor.
            let mut el = Engine::load(&opts("tiny-lora", batch), &params(l)).unwrap();
            el.set_latent_output(true);
            let sf = el.scaling_factor();
            let pre = el.preprocessor();
            let mut lat = Vec::new();
            for (c, chunk) in frames.chunks(batch).enumerate() {
                let prepared = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, f)| pre.prepare((c * batch + i) as u64, f, W, H).unwrap())
                    .collect();
                lat.extend(el.process_prepared(prepared).unwrap());
            }
            lat.extend(el.drain_decoded().unwrap());
            assert_eq!(lat.len(), frames.len());
            for (k, (o, z)) in out.iter().zip(&lat).enumerate() {
                let want = read_f32(&dir.join(name).join(format!("frame_{k:03}.f32")));
                let d = max_abs(&o.pixels, &want);
                let want_x0 = read_f32(&dir.join(name).join(format!("frame_{k:03}.x0")));
                let x0: Vec<f32> = z.decoded().iter().map(|v| v * sf).collect();
                let dz = max_abs(&x0, &want_x0);
                worst = (worst.0.max(dz), worst.1.max(d));
                assert!(
                    dz <= 1e-4 && d <= 1e-4,
                    "{name} batch {batch} frame {k}: latents {dz}, pixels {d} from the reference"
                );
            }
            if batch == 1 {
                firsts.push((name, out[0].pixels.clone()));
            }
        }
    }
    for (i, (na, a)) in firsts.iter().enumerate() {
        for (nb, b) in &firsts[i + 1..] {
            assert!(max_abs(a, b) > 1e-3, "{na} and {nb} give the same output");
        }
    }
    eprintln!(
        "worst difference to the reference with LoRA: latents {:e}, pixels {:e}",
        worst.0, worst.1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_live_switch_applies_from_the_next_call_and_off_is_the_base() {
    let frames: Vec<Vec<u8>> = (0..6).map(frame).collect();
    let a = format!("{}:0.8", lora_file("style-a"));
    let mut base_e = Engine::load(&opts("tiny-lora", 1), &params("")).unwrap();
    let base = stream(&mut base_e, &frames, |_, _| {});
    let mut styled_e = Engine::load(&opts("tiny-lora", 1), &params(&a)).unwrap();
    let styled = stream(&mut styled_e, &frames, |_, _| {});
    assert!(max_abs(&base[0], &styled[0]) > 1e-3, "the LoRA shows");

    // One engine: base, then style-a from frame 2, then off from frame 4.
    let mut e = Engine::load(&opts("tiny-lora", 1), &params("")).unwrap();
    let out = stream(&mut e, &frames, |k, e| match k {
        2 => e.set_params(&params(&a)).unwrap(),
        4 => e.set_params(&params("off")).unwrap(),
        _ => {}
    });
    // The first output after a switch (frame 1 leaves the two-step pipeline in the call
    // that takes frame 2) already differs from what it would have been.
    assert_eq!(out[0], base[0], "before the switch: the base");
    assert!(
        max_abs(&out[1], &base[1]) > 1e-4,
        "the switch shows in the next call's output"
    );
    // Frame 2 ran both steps with style-a: as the styled stream.
    assert_eq!(out[2], styled[2], "a frame all in style-a is style-a's");
    // From frame 4 on (both steps without LoRA): the base bit for bit.
    assert_eq!(out[4], base[4], "off is the base output");
    assert_eq!(out[5], base[5], "off is the base output");
}

#[test]
fn refused_loras_name_the_first_mismatch_and_change_nothing() {
    let frames: Vec<Vec<u8>> = (0..5).map(frame).collect();
    let a = format!("{}:0.8", lora_file("style-a"));
    let mut ref_e = Engine::load(&opts("tiny-lora", 1), &params(&a)).unwrap();
    let want = stream(&mut ref_e, &frames, |_, _| {});
    let cases = [
        (
            "wrong-name",
            "attn3.to_v.lora_A.weight: the UNet (",
            "has no input of that name",
        ),
        (
            "wrong-shape",
            "attn1.to_q.lora_A.weight: shape [17, 2], the UNet takes [16, r]",
            "",
        ),
        (
            "wrong-dtype",
            "attn1.to_q.lora_A.weight: float16, the UNet takes float32",
            "",
        ),
    ];
    let mut e = Engine::load(&opts("tiny-lora", 1), &params(&a)).unwrap();
    let mut errors = Vec::new();
    let out = stream(&mut e, &frames, |k, e| {
        if let Some((name, _, _)) = cases.get(k) {
            let bad = format!("{a},{}:0.5", lora_file(name));
            let err = e.set_params(&params(&bad)).unwrap_err().to_string();
            errors.push((name.to_string(), err));
            assert_eq!(e.params().lora, a, "the running list stays");
        }
    });
    assert_eq!(out, want, "refused LoRAs leave the output bit for bit");
    for ((name, first, second), (n, err)) in cases.iter().zip(&errors) {
        assert_eq!(name, n);
        assert!(
            err.contains(&format!("{name}.onnx_adapter")) && err.contains(first),
            "{err}"
        );
        assert!(err.contains(second), "{err}");
    }
    // A missing file and a damaged one.
    let err = e
        .set_params(&params("/nonexistent.onnx_adapter"))
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent.onnx_adapter"),
        "{err}"
    );
    let dir = tmp("lora-damaged");
    let cut = dir.join("cut.onnx_adapter");
    let bytes = std::fs::read(lora_file("style-a")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = e
        .set_params(&params(&cut.display().to_string()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.onnx_adapter") && err.contains("outside the file"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_model_without_lora_inputs_refuses_lora() {
    let a = lora_file("style-a");
    let err = Engine::load(&opts("tiny-sd15", 1), &params(&a))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lora_A.weight") && err.contains("unet"),
        "{err}"
    );
    let mut e = Engine::load(&opts("tiny-sd15", 1), &params("")).unwrap();
    assert_eq!(e.lora_projections(), 0);
    let err = e.set_params(&params(&a)).unwrap_err().to_string();
    assert!(err.contains("without LoRA inputs"), "{err}");
}

#[test]
fn a_fade_binds_both_sides_and_ends_at_the_target() {
    let frames: Vec<Vec<u8>> = (0..8).map(frame).collect();
    let a = lora_file("style-a");
    let b = lora_file("style-b");
    let mut pa = params(&a);
    pa.transition_frames = 3;
    let mut pb = params(&b);
    pb.transition_frames = 3;
    let mut target_e = Engine::load(&opts("tiny-lora", 1), &pb).unwrap();
    let target = stream(&mut target_e, &frames, |_, _| {});
    let mut from_e = Engine::load(&opts("tiny-lora", 1), &pa).unwrap();
    let from = stream(&mut from_e, &frames, |_, _| {});
    let mut e = Engine::load(&opts("tiny-lora", 1), &pa).unwrap();
    let out = stream(&mut e, &frames, |k, e| {
        if k == 1 {
            e.set_params(&pb).unwrap();
        }
    });
    // Frames 1..=4 run while the fade goes (3 frames in between, then b): neither side.
    assert!(max_abs(&out[2], &from[2]) > 1e-4 && max_abs(&out[2], &target[2]) > 1e-4);
    // Frame 5 on: both of its steps with b alone.
    assert_eq!(out[6], target[6], "the fade ends at the target exactly");
}

#[test]
fn the_adapter_reader_reads_the_exported_files() {
    use gsti2i::runtime::adapter_file;
    let a = adapter_file::read(std::path::Path::new(&lora_file("style-a"))).unwrap();
    assert_eq!(a.parameters.len(), 32);
    let b = adapter_file::read(std::path::Path::new(&lora_file("style-b"))).unwrap();
    assert_eq!(b.parameters.len(), 16);
    let p = &b.parameters[0];
    assert!(p.name.ends_with(".lora_A.weight"), "{}", p.name);
    assert_eq!(p.dims[1], 3);
    assert_eq!(p.data.len(), p.dims[0] * p.dims[1]);
}

/// With shared adapters (as in `i2itransform`) the engine does not read a new file: asked
/// whether a list is ready, it answers at once and hands the file to a loader thread. The
/// file here is a FIFO nobody writes yet, so a read on this thread would never return;
/// frames go on in the running style, and once the bytes are written the list is ready
/// and the switch binds from memory.
#[test]
fn with_shared_adapters_a_switch_waits_for_a_loader_thread() {
    use gsti2i::diffusion::lora::AdapterCache;
    let frames: Vec<Vec<u8>> = (0..7).map(frame).collect();
    let dir = tmp("lora-fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("slow.onnx_adapter");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let list = format!("{}:0.8", fifo.display());
    let a = format!("{}:0.8", lora_file("style-a"));
    let mut styled_e = Engine::load(&opts("tiny-lora", 1), &params(&a)).unwrap();
    let styled = stream(&mut styled_e, &frames, |_, _| {});

    let cache = AdapterCache::default();
    let mut e = Engine::load_sharing(&opts("tiny-lora", 1), &params(""), &cache).unwrap();
    let mut writer = None;
    let out = stream(&mut e, &frames, |k, e| match k {
        1 => assert!(!e.lora_ready(&list), "nothing written yet"),
        2 => {
            assert!(!e.lora_ready(&list), "nothing written yet");
            let (fifo, bytes) = (fifo.clone(), std::fs::read(lora_file("style-a")).unwrap());
            writer = Some(std::thread::spawn(move || {
                std::fs::write(fifo, bytes).unwrap()
            }));
        }
        4 => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !e.lora_ready(&list) {
                assert!(std::time::Instant::now() < deadline, "the loader thread");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            e.set_params(&params(&list)).unwrap();
        }
        _ => {}
    });
    writer.unwrap().join().unwrap();
    assert_eq!(e.params().lora, list);
    assert_eq!(cache.reads(), 1, "read once, by the loader thread");
    assert!(
        max_abs(&out[2], &styled[2]) > 1e-4,
        "the running style before"
    );
    assert_eq!(out[4..], styled[4..], "then the style's frames");
    let _ = std::fs::remove_dir_all(&dir);
}
