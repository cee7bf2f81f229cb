// SPDX-License-Identifier: MPL-2.0
//! Temporal latent feedback in the engine: equal (within 1e-4) to the numpy reference
//! (tests/python/reference_stream.py `--latent-feedback`) for n = 1 and 2 at batch sizes 1
//! and 3; 0 gives the same bits as an engine that never had feedback; a reset forgets the
//! previous latent; the feedback reaches the output.

mod engine_common;

use engine_common::*;
use gsti2i::diffusion::{CfgType, Engine, StreamParams};

fn params(t_index: &[u32]) -> StreamParams {
    StreamParams {
        prompt: "a red cat in the snow".into(),
        negative_prompt: "blurry".into(),
        seed: 5,
        t_index_list: t_index.to_vec(),
        num_inference_steps: 50,
        guidance_scale: 1.5,
        delta: 0.9,
        cfg_type: CfgType::SelfNegative,
        add_noise: true,
        similarity_threshold: 0.0,
        max_skip_frames: 10,
        ..Default::default()
    }
}

#[test]
fn matches_numpy_reference() {
    let frames: Vec<Vec<u8>> = (0..7).map(frame).collect();
    let dir = tmp("feedback-reference");
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    for (k, f) in frames.iter().enumerate() {
        std::fs::write(inputs.join(format!("frame_{k:03}.rgb")), f).unwrap();
    }
    let s = 0.3f32;
    let mut cases = Vec::new();
    let mut extra = Vec::new();
    let mut runs = Vec::new();
    for t in [vec![45], vec![32, 45]] {
        for batch in [1usize, 3] {
            let name = format!("n{}-b{batch}", t.len());
            cases.push(RefCase {
                model: "tiny-sd15",
                dir: name.clone(),
                params: params(&t),
            });
            extra.push(vec![
                "--latent-feedback".to_string(),
                s.to_string(),
                "--batch-size".to_string(),
                batch.to_string(),
            ]);
            runs.push((name, t.clone(), batch));
        }
    }
    run_reference_with(&cases, &extra, &inputs, &dir);

    let mut worst = 0.0f32;
    for (name, t, batch) in &runs {
        let mut engine = Engine::load(&opts("tiny-sd15", *batch), &params(t)).unwrap();
        engine.set_latent_feedback(s);
        let out = run(&mut engine, &frames);
        let mut plain = Engine::load(&opts("tiny-sd15", *batch), &params(t)).unwrap();
        let without = run(&mut plain, &frames);
        let mut changed = 0;
        for (k, o) in out.iter().enumerate() {
            let want = read_f32(&dir.join(name).join(format!("frame_{k:03}.f32")));
            let d = max_abs(&o.pixels, &want);
            worst = worst.max(d);
            assert!(d <= 1e-4, "{name} frame {k}: max abs diff {d}");
            if max_abs(&o.pixels, &without[k].pixels) > 1e-3 {
                changed += 1;
            }
        }
        // Frames entering before any frame is out have nothing to blend with; every later
        // one does, and the feedback shows in its output.
        let warm = (t.len() - 1) * batch + batch;
        assert_eq!(
            changed,
            frames.len() - warm,
            "{name}: frames changed by the feedback"
        );
    }
    eprintln!("worst difference to the reference with latent feedback: {worst:e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zero_is_off_bit_for_bit_and_reset_forgets() {
    let frames: Vec<Vec<u8>> = (0..5).map(frame).collect();
    let p = params(&[32, 45]);
    let mut plain = Engine::load(&opts("tiny-sd15", 1), &p).unwrap();
    let want = run(&mut plain, &frames);
    assert_eq!(plain.latent_feedback(), 0.0, "off by default");

    // Feedback on, then back to 0: the same bits as an engine that never had it.
    let mut e = Engine::load(&opts("tiny-sd15", 1), &p).unwrap();
    e.set_latent_feedback(0.5);
    let with = run(&mut e, &frames);
    assert!(
        max_abs(&with[4].pixels, &want[4].pixels) > 1e-3,
        "feedback 0.5 must change a warm frame"
    );
    e.set_latent_feedback(0.0);
    let off = run(&mut e, &frames);
    for (k, (a, b)) in off.iter().zip(&want).enumerate() {
        assert_eq!(a.pixels, b.pixels, "frame {k}: feedback 0 is off");
    }

    // After a reset the first frames have no previous latent: as a fresh engine.
    e.set_latent_feedback(0.5);
    let _ = run(&mut e, &frames);
    e.reset();
    let after_reset = run(&mut e, &frames);
    for (k, (a, b)) in after_reset.iter().zip(&with).enumerate() {
        assert_eq!(a.pixels, b.pixels, "frame {k}: reset starts afresh");
    }
    // Out-of-range values are clamped.
    e.set_latent_feedback(7.0);
    assert_eq!(e.latent_feedback(), 1.0);
    e.set_latent_feedback(f32::NAN);
    assert_eq!(e.latent_feedback(), 0.0);
}
