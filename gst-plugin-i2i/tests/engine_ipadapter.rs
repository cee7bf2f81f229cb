// SPDX-License-Identifier: MPL-2.0
//! IP-Adapter in the engine against the numpy reference (tests/python/reference_style.py
//! through reference_stream.py --ip-adapter-image): the tiny IP-Adapter, IP-Adapter Plus and
//! SDXL IP-Adapter models, pictures as they are and resized (PIL's bicubic, bit for bit),
//! per-layer scales, and scale 0 equal to no picture.

mod engine_common;

use std::path::Path;
use std::sync::Arc;

use engine_common::*;
use gsti2i::diffusion::ipadapter::{ImageSide, PictureTokens, decode_picture};
use gsti2i::diffusion::{CfgType, Engine, StreamParams};

fn params(cfg: CfgType) -> StreamParams {
    StreamParams {
        prompt: "a red cat in the snow".into(),
        negative_prompt: "blurry".into(),
        seed: 5,
        t_index_list: vec![32, 45],
        num_inference_steps: 50,
        guidance_scale: 1.5,
        delta: 0.9,
        cfg_type: cfg,
        add_noise: true,
        ..Default::default()
    }
}

/// A 48x32 picture: its short side is the tiny encoders' 32, so CLIP's resize leaves it
/// as it is (the reference resizes with PIL) and the centre crop takes its middle.
fn write_picture(path: &Path, k: u32) {
    let img = image::RgbImage::from_fn(48, 32, |x, y| {
        image::Rgb([
            (x * 5 + k * 40) as u8,
            (y * 7 + x) as u8,
            ((x ^ y) * 9 + k * 90) as u8,
        ])
    });
    img.save(path).unwrap();
}

fn picture(model: &str, file: &Path) -> PictureTokens {
    let e = Engine::load(&opts(model, 1), &params(CfgType::None)).unwrap();
    let layout = e.ip_layout().expect("an IP-Adapter model");
    let mut side = ImageSide::load(&model_dir(model), layout, 1, true).unwrap();
    let (rgb, w, h) = decode_picture(file).unwrap();
    PictureTokens {
        tokens: Arc::new(side.tokens(&rgb, w, h).unwrap()),
        negative: Arc::new(side.negative_tokens().unwrap()),
    }
}

#[test]
fn matches_numpy_reference() {
    let frames: Vec<Vec<u8>> = (0..5).map(frame).collect();
    let dir = tmp("ipadapter-reference");
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    for (k, f) in frames.iter().enumerate() {
        std::fs::write(inputs.join(format!("frame_{k:03}.rgb")), f).unwrap();
    }
    let style = dir.join("style.png");
    write_picture(&style, 1);
    // Pictures CLIP's preprocessing resizes (down and up, PIL's bicubic) before the crop.
    let wide = dir.join("wide.png");
    image::RgbImage::from_fn(300, 200, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 7 + x) as u8, ((x ^ y) * 9) as u8])
    })
    .save(&wide)
    .unwrap();
    let small = dir.join("small.jpg");
    let px = image::RgbImage::from_fn(31, 45, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    });
    let jpeg = turbojpeg::compress(
        turbojpeg::Image {
            pixels: px.as_raw().as_slice(),
            width: 31,
            pitch: 31 * 3,
            height: 45,
            format: turbojpeg::PixelFormat::RGB,
        },
        90,
        turbojpeg::Subsamp::Sub2x2,
    )
    .unwrap();
    std::fs::write(&small, &*jpeg).unwrap();
    // (model, cfg, scale text, scale values, picture)
    let runs: Vec<(&'static str, CfgType, &str, Vec<f32>, &Path)> = vec![
        (
            "tiny-ipadapter",
            CfgType::Full,
            "0.5,1.5",
            vec![0.5, 1.5],
            &style,
        ),
        (
            "tiny-ipadapter-plus",
            CfgType::SelfNegative,
            "0.8",
            vec![0.8],
            &wide,
        ),
        (
            "tiny-sdxl-ipadapter",
            CfgType::Full,
            "1.2",
            vec![1.2],
            &small,
        ),
    ];
    let cases: Vec<RefCase> = runs
        .iter()
        .map(|(m, cfg, _, _, _)| RefCase {
            model: m,
            dir: m.to_string(),
            params: params(*cfg),
        })
        .collect();
    let extra: Vec<Vec<String>> = runs
        .iter()
        .map(|(_, _, s, _, pic)| {
            vec![
                "--ip-adapter-image".to_string(),
                pic.display().to_string(),
                "--ip-adapter-scale".to_string(),
                s.to_string(),
                "--dump".to_string(),
            ]
        })
        .collect();
    run_reference_with(&cases, &extra, &inputs, &dir);
    // The reference's final latents (x0 of the last step, scaled) as float32 files.
    let python = root().join(".venv").join("bin").join("python");
    let convert = "import sys, glob, numpy as np\n\
        for f in glob.glob(sys.argv[1] + '/*/frame_*.npz'):\n    \
        np.load(f)['x0_final'].astype('<f4').tofile(f[:-4] + '.x0.f32')\n";
    let status = std::process::Command::new(&python)
        .args(["-c", convert])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "converting the reference's latents");

    let (mut worst, mut worst_latent) = (0.0f32, 0.0f32);
    for (model, cfg, _, scale, pic) in &runs {
        let mut e = Engine::load(&opts(model, 1), &params(*cfg)).unwrap();
        e.set_ip_picture(Some(picture(model, pic))).unwrap();
        e.set_ip_scale(scale).unwrap();
        let out = run(&mut e, &frames);
        let mut plain = Engine::load(&opts(model, 1), &params(*cfg)).unwrap();
        let without = run(&mut plain, &frames);
        let mut changed = 0;
        for (k, o) in out.iter().enumerate() {
            let want = read_f32(&dir.join(model).join(format!("frame_{k:03}.f32")));
            let d = max_abs(&o.pixels, &want);
            worst = worst.max(d);
            assert!(d <= 1e-4, "{model} frame {k}: max abs diff {d}");
            if max_abs(&o.pixels, &without[k].pixels) > 1e-4 {
                changed += 1;
            }
        }
        assert_eq!(
            changed,
            frames.len(),
            "{model}: the picture changes every frame"
        );

        // The latents themselves: the engine's latent output (x0 / scaling factor).
        let mut e = Engine::load(&opts(model, 1), &params(*cfg)).unwrap();
        e.set_ip_picture(Some(picture(model, pic))).unwrap();
        e.set_ip_scale(scale).unwrap();
        e.set_latent_output(true);
        let sf = e.scaling_factor();
        let pre = e.preprocessor();
        let mut latents = Vec::new();
        for (k, f) in frames.iter().enumerate() {
            let p = pre.prepare(k as u64, f, W, H).unwrap();
            latents.extend(e.process_prepared(vec![p]).unwrap());
        }
        latents.extend(e.drain_decoded().unwrap());
        assert_eq!(latents.len(), frames.len());
        for (k, l) in latents.iter().enumerate() {
            let x0 = read_f32(&dir.join(model).join(format!("frame_{k:03}.x0.f32")));
            let want: Vec<f32> = x0.iter().map(|v| v / sf).collect();
            let d = max_abs(l.decoded(), &want);
            worst_latent = worst_latent.max(d);
            assert!(d <= 1e-4, "{model} frame {k}: latent max abs diff {d}");
        }
    }
    eprintln!(
        "worst difference to the reference with IP-Adapter: pixels {worst:e}, latents {worst_latent:e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scale_zero_is_no_picture_and_none_is_zero_tokens() {
    let frames: Vec<Vec<u8>> = (0..4).map(frame).collect();
    let dir = tmp("ipadapter-zero");
    let style = dir.join("style.png");
    write_picture(&style, 2);
    let model = "tiny-ipadapter";
    let p = params(CfgType::Full);
    let mut plain = Engine::load(&opts(model, 1), &p).unwrap();
    let want = run(&mut plain, &frames);

    let mut e = Engine::load(&opts(model, 1), &p).unwrap();
    e.set_ip_picture(Some(picture(model, &style))).unwrap();
    e.set_ip_scale(&[0.0]).unwrap();
    let zero = run(&mut e, &frames);
    for (k, (a, b)) in zero.iter().zip(&want).enumerate() {
        assert_eq!(a.pixels, b.pixels, "frame {k}: scale 0 is no picture");
    }
    e.set_ip_scale(&[1.0]).unwrap();
    let one = run(&mut e, &frames);
    assert!(max_abs(&one[3].pixels, &want[3].pixels) > 1e-4);
    e.set_ip_picture(None).unwrap();
    let none = run(&mut e, &frames);
    for (k, (a, b)) in none.iter().zip(&want).enumerate() {
        assert_eq!(a.pixels, b.pixels, "frame {k}: no picture is zero tokens");
    }
    let err = e.set_ip_scale(&[1.0, 2.0, 3.0]).unwrap_err().to_string();
    assert!(err.contains("IP-Adapter layers"), "{err}");

    let mut sd = Engine::load(&opts("tiny-sd15", 1), &p).unwrap();
    assert!(sd.ip_layout().is_none());
    let err = sd.set_ip_scale(&[1.0]).unwrap_err().to_string();
    assert!(err.contains("ipadapter_scale"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn transition_frames_fade_the_image_tokens_and_end_exactly_at_the_picture() {
    let frames: Vec<Vec<u8>> = (0..6).map(frame).collect();
    let dir = tmp("ipadapter-fade");
    let style = dir.join("style.png");
    write_picture(&style, 3);
    let model = "tiny-ipadapter";
    let tokens = picture(model, &style);
    let mut p = params(CfgType::SelfNegative);
    let mut jump = Engine::load(&opts(model, 1), &p).unwrap();
    jump.set_ip_picture(Some(tokens.clone())).unwrap();
    let with = run(&mut jump, &frames);
    let mut plain = Engine::load(&opts(model, 1), &p).unwrap();
    let without = run(&mut plain, &frames);

    p.transition_frames = 3;
    let mut e = Engine::load(&opts(model, 1), &p).unwrap();
    e.set_ip_picture(Some(tokens)).unwrap();
    let faded = run(&mut e, &frames);
    // Frames 0..3 get the tokens 1/4, 2/4, 3/4 of the way; frame 3 on the picture's.
    for k in 0..3 {
        assert!(
            max_abs(&faded[k].pixels, &with[k].pixels) > 1e-5,
            "frame {k}"
        );
        assert!(
            max_abs(&faded[k].pixels, &without[k].pixels) > 1e-5,
            "frame {k}"
        );
    }
    for k in 3..frames.len() {
        assert_eq!(faded[k].pixels, with[k].pixels, "frame {k}: the fade ended");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
