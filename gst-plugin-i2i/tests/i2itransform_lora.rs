// SPDX-License-Identifier: MPL-2.0
//! i2itransform's `lora` property on the tiny LoRA model (models/tiny-lora, 64x64, two
//! steps) in real pipelines: a switch while playing changes the output within one batch
//! and loads no session (one `i2itransform-started`), `off` gives the base frames bit for
//! bit, a LoRA that does not fit is refused with a WARNING naming the file and the first
//! mismatch and leaves the frames bit for bit as they were, and a model without LoRA
//! inputs refuses `lora` at start naming what is missing.
//!
//! Frames are pushed one at a time, the next once all but the one in flight are out, so a
//! change made before frame k is applied from the batch of frame k (the frame in flight,
//! k - 1, takes its last step with it).

mod pipeline_common;

use gst::prelude::*;
use pipeline_common::*;

const W: u32 = 64;
const H: u32 = 64;

fn lora_model() -> String {
    model_dir("tiny-lora", "unet/model.onnx")
        .display()
        .to_string()
}

fn adapter(name: &str) -> String {
    format!("{}/loras/{name}.onnx_adapter", lora_model())
}

type Samples = std::sync::Arc<std::sync::Mutex<Vec<gst::Sample>>>;

/// `appsrc ! i2itransform <props> ! appsink` on the tiny LoRA model, playing, with an
/// `appsrc` named `settings` on the settings pad when `settings_pad`; the frames' source
/// and the samples collected.
fn lora_pipeline(props: &str, settings_pad: bool) -> (gst::Pipeline, gst_app::AppSrc, Samples) {
    let settings_src = if settings_pad {
        " appsrc name=settings caps=application/x-i2i-settings ! i2i.settings"
    } else {
        ""
    };
    let desc = format!(
        "appsrc name=src format=time ! i2itransform name=i2i model=\"{}\" width={W} height={H} \
         threads=1 t-index-list=32,45 {props} ! appsink name=out sync=false{settings_src}",
        lora_model()
    );
    let pipeline = launch(&desc);
    let src = appsrc(&pipeline, "src");
    src.set_caps(Some(&video_caps("RGB", W, H, 10)));
    let samples = collect_samples(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, src, samples)
}

/// Waits until every frame before `k` but the one in flight is out, so that what is done
/// next lands at frame `k`.
fn wait_out(samples: &Samples, k: u64) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while (samples.lock().unwrap().len() as u64) + 1 < k {
        assert!(
            std::time::Instant::now() < deadline,
            "frames stopped at {k}: the inference thread waits"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Pushes test picture `k`.
fn push(src: &gst_app::AppSrc, k: u64) {
    src.push_buffer(timed_picture(k, (W, H), gst::ClockTime::from_mseconds(100)))
        .unwrap();
}

/// Pushes test picture `k` once [`wait_out`] allows.
fn push_in_step(src: &gst_app::AppSrc, samples: &Samples, k: u64) {
    wait_out(samples, k);
    push(src, k);
}

/// Runs `n` frames through `i2itransform model=<the LoRA model> <props>`, setting `lora` to
/// `changes[i].1` before frame `changes[i].0`; returns the run and each output's bytes.
fn scenario(props: &str, changes: &[(u64, String)], n: u64) -> (Run, Vec<Vec<u8>>) {
    let (pipeline, src, samples) = lora_pipeline(props, false);
    let i2i = pipeline.by_name("i2i").unwrap();
    for k in 0..n {
        if let Some((_, lora)) = changes.iter().find(|(at, _)| *at == k) {
            wait_out(&samples, k);
            i2i.set_property("lora", lora.as_str());
        }
        push(&src, k);
    }
    let run = finish_run(&pipeline, &src, &samples);
    let frames = (0..run.samples.len()).map(|i| run.bytes(i)).collect();
    (run, frames)
}

#[test]
fn a_switch_changes_the_output_within_one_batch_and_loads_no_session() {
    let a = format!("{}:0.8", adapter("style-a"));
    let (_, base) = scenario("", &[], 9);
    let (_, styled) = scenario(&format!("lora=\"{a}\""), &[], 9);
    let (run, out) = scenario("", &[(3, a.clone()), (6, "off".to_string())], 9);
    assert_eq!(out.len(), 9);
    assert_ne!(base[2], styled[2], "the LoRA shows");
    let started = run.elements("i2itransform-started");
    assert_eq!(started.len(), 1, "one model load");
    assert_eq!(started[0].get::<u32>("lora-projections").unwrap(), 16);
    assert_eq!(out[..2], base[..2], "before the switch: the base");
    // Frame 2 was in flight: its last step, in frame 3's batch, already has the LoRA.
    assert_ne!(out[2], base[2], "the switch shows in the next batch");
    assert_eq!(
        out[3..5],
        styled[3..5],
        "frames all in style-a are style-a's"
    );
    // `off` before frame 6: from there the base, bit for bit.
    assert_eq!(out[6..], base[6..], "off gives the base frames");
    let applied = run.elements("i2i-settings-applied");
    let lora_changes: Vec<(u64, String)> = applied
        .iter()
        .map(|s| {
            (
                s.get::<u64>("frame-index").unwrap(),
                s.get::<String>("lora").unwrap(),
            )
        })
        .collect();
    assert!(lora_changes.contains(&(3, a.clone())), "{lora_changes:?}");
    assert!(
        lora_changes.contains(&(6, String::new())),
        "{lora_changes:?}"
    );
    assert!(run.warnings().is_empty(), "{:?}", run.warnings());
}

#[test]
fn a_lora_that_does_not_fit_is_refused_and_the_frames_stay() {
    let a = format!("{}:0.8", adapter("style-a"));
    let props = format!("lora=\"{a}\"");
    let (_, styled) = scenario(&props, &[], 7);
    let (run, out) = scenario(
        &props,
        &[
            (2, format!("{a},{}:0.5", adapter("wrong-shape"))),
            (4, adapter("wrong-name")),
            (5, adapter("wrong-dtype")),
        ],
        7,
    );
    assert_eq!(out, styled, "refused LoRAs leave every frame as it was");
    assert_eq!(run.elements("i2itransform-started").len(), 1);
    let warnings = run.warnings();
    for (name, mismatch) in [
        (
            "wrong-shape",
            "attn1.to_q.lora_A.weight: shape [17, 2], the UNet takes [16, r]",
        ),
        ("wrong-name", "has no input of that name"),
        ("wrong-dtype", "float16, the UNet takes float32"),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("{name}.onnx_adapter")) && w.contains(mismatch)),
            "{name}: {warnings:?}"
        );
    }
}

#[test]
fn a_model_without_lora_inputs_refuses_lora_naming_what_is_missing() {
    let tiny = model_dir("tiny-sd15", "unet/model.onnx");
    let err = run_launch(&format!(
        "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=64 ! i2itransform model=\"{}\" \
         width=64 height=64 lora=\"{}\" ! appsink name=out",
        tiny.display(),
        adapter("style-a")
    ))
    .unwrap_err();
    assert!(
        err.contains("lora_A.weight") && err.contains("without LoRA inputs"),
        "{err}"
    );
    // A list that is not one: refused when set, the property keeps its value.
    init();
    let e = gst::ElementFactory::make("i2itransform").build().unwrap();
    e.set_property("lora", "a.onnx_adapter:0.5");
    e.set_property("lora", "a.onnx_adapter:99");
    assert_eq!(e.property::<String>("lora"), "a.onnx_adapter:0.5");
    e.set_property("lora", "off");
    assert_eq!(e.property::<String>("lora"), "");
}

#[test]
fn a_refused_lora_on_the_settings_pad_keeps_the_other_keys_of_the_update() {
    let (pipeline, src, samples) =
        settings_pad_pipeline(&format!("settings-folder=\"{}/loras\"", lora_model()));
    let settings = appsrc(&pipeline, "settings");
    let i2i = pipeline.by_name("i2i").unwrap();
    for k in 0..3 {
        push(&src, k);
    }
    let json = format!(r#"{{"seed": 7, "lora": "{}"}}"#, adapter("wrong-shape"));
    settings
        .push_buffer(gst::Buffer::from_slice(json.into_bytes()))
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while i2i.property::<u64>("seed") != 7 {
        assert!(std::time::Instant::now() < deadline, "settings not taken");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for k in 3..6 {
        push(&src, k);
    }
    let run = finish_run(&pipeline, &src, &samples);
    assert_eq!(run.samples.len(), 6);
    assert!(
        run.warnings()
            .iter()
            .any(|w| w.contains("wrong-shape.onnx_adapter") && w.contains("shape [17, 2]")),
        "{:?}",
        run.warnings()
    );
    let applied = run.elements("i2i-settings-applied");
    let last = applied.last().expect("the seed was applied");
    assert_eq!(last.get::<u64>("seed").unwrap(), 7);
    assert_eq!(last.get::<String>("lora").unwrap(), "");
    assert_eq!(i2i.property::<u64>("seed"), 7);
    assert_eq!(i2i.property::<String>("lora"), "");
}

/// The files of a switch are read off the inference thread: `lora` names a FIFO nobody
/// writes yet, so whoever reads it waits. Frames keep coming out in the running style
/// meanwhile (the thread that set the property waits, not the inference thread); once
/// the adapter's bytes are written the switch lands within a few batches, with no reload.
#[test]
fn the_files_of_a_switch_are_read_off_the_inference_thread() {
    switch_to_a_fifo(false);
}

/// The same with `{"lora": ...}` on the settings pad: its streaming thread waits.
#[test]
fn the_files_of_a_settings_pad_switch_are_read_off_the_inference_thread() {
    switch_to_a_fifo(true);
}

fn switch_to_a_fifo(via_settings_pad: bool) {
    const N: u64 = 14;
    let (_, base) = scenario("", &[], N);
    let (_, styled) = scenario(&format!("lora=\"{}:0.8\"", adapter("style-a")), &[], N);
    let dir = std::env::temp_dir().join(format!(
        "i2i-lora-fifo-{}-{via_settings_pad}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("slow.onnx_adapter");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let list = format!("{}:0.8", fifo.display());
    // The settings pad's list names the file it resolved (links followed).
    let applied_list = if via_settings_pad {
        format!("{}:0.8", fifo.canonicalize().unwrap().display())
    } else {
        list.clone()
    };

    let (pipeline, src, samples) = if via_settings_pad {
        settings_pad_pipeline(&format!("settings-folder=\"{}\"", dir.display()))
    } else {
        lora_pipeline("", false)
    };
    let i2i = pipeline.by_name("i2i").unwrap();
    let out_count = || samples.lock().unwrap().len() as u64;
    // Pushes frame k once all frames but the one in flight are out.
    let push = |k: u64| push_in_step(&src, &samples, k);
    for k in 0..3 {
        push(k);
    }
    let setter = if via_settings_pad {
        // The pad's streaming thread reads the file; the property follows once it is taken.
        let json = format!(r#"{{"lora": "{list}"}}"#);
        appsrc(&pipeline, "settings")
            .push_buffer(gst::Buffer::from_slice(json.into_bytes()))
            .unwrap();
        let (i2i, list) = (i2i.clone(), applied_list.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + TIMEOUT;
            while i2i.property::<String>("lora") != list {
                assert!(std::time::Instant::now() < deadline, "settings not taken");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    } else {
        let (i2i, list) = (i2i.clone(), list.clone());
        std::thread::spawn(move || i2i.set_property("lora", list.as_str()))
    };
    // Six batches while the file cannot be read: all come out, in the base style.
    for k in 3..9 {
        push(k);
    }
    push(9);
    assert!(out_count() >= 8, "frames kept coming out");
    assert!(!setter.is_finished(), "the file is still unread");
    std::fs::write(&fifo, std::fs::read(adapter("style-a")).unwrap()).unwrap();
    setter.join().unwrap();
    for k in 10..N {
        push(k);
    }
    let run = finish_run(&pipeline, &src, &samples);
    let _ = std::fs::remove_dir_all(&dir);
    let out: Vec<Vec<u8>> = (0..run.samples.len()).map(|i| run.bytes(i)).collect();
    assert_eq!(out.len() as u64, N);
    assert_eq!(
        out[..8],
        base[..8],
        "the running style while the file is read"
    );
    let at: Vec<u64> = run
        .elements("i2i-settings-applied")
        .iter()
        .filter(|s| s.get::<String>("lora").unwrap() == applied_list)
        .map(|s| s.get::<u64>("frame-index").unwrap())
        .collect();
    // The file arrives once frames 0-7 are out and frame 9 is pushed: the switch lands at
    // the first frame that has not entered the stream by then (8 or 9, as the threads
    // run) or within a few batches after it, never before.
    assert!(
        at.len() == 1 && (8..=12).contains(&at[0]),
        "the switch lands within a few batches of the file's arrival: {at:?}"
    );
    assert_eq!(
        out[N as usize - 1],
        styled[N as usize - 1],
        "then the style's frames"
    );
    assert_eq!(run.elements("i2itransform-started").len(), 1, "no reload");
    assert!(run.warnings().is_empty(), "{:?}", run.warnings());
}

/// [`lora_pipeline`] with `wait-for-settings=false` and an `appsrc` on the settings pad.
fn settings_pad_pipeline(props: &str) -> (gst::Pipeline, gst_app::AppSrc, Samples) {
    lora_pipeline(&format!("wait-for-settings=false {props}"), true)
}

/// Runs [`settings_pad_pipeline`]: `feed(i2i, send, push)` sends settings (returning once
/// they are taken) and pushes frames (each once all but the one in flight are out).
fn with_settings_pad(
    props: &str,
    feed: impl FnOnce(&gst::Element, &dyn Fn(&str), &dyn Fn(u64)),
) -> Run {
    let (pipeline, src, samples) = settings_pad_pipeline(props);
    let i2i = pipeline.by_name("i2i").unwrap();
    let send = |json: &str| send_settings(&pipeline, json, "lora");
    let push = |k: u64| push_in_step(&src, &samples, k);
    feed(&i2i, &send, &push);
    finish_run(&pipeline, &src, &samples)
}

/// LoRA files named on the settings pad (from whoever reaches the settings holder) are
/// read only under `settings-folder`: a relative name there is applied; a path outside, a
/// `..` escape and a link out are refused with a WARNING naming the path and the property,
/// and the frames go on in the running style; unset, every file is refused while the
/// `lora` property (the operator's own) still applies.
#[test]
fn the_settings_pad_reads_lora_files_only_under_settings_folder() {
    let t = std::env::temp_dir().join(format!("i2i-lora-folder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(t.join("show/styles")).unwrap();
    std::fs::create_dir_all(t.join("elsewhere")).unwrap();
    std::fs::copy(adapter("style-a"), t.join("show/styles/a.onnx_adapter")).unwrap();
    let outside = t.join("elsewhere/b.onnx_adapter");
    std::fs::copy(adapter("style-b"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, t.join("show/styles/link.onnx_adapter")).unwrap();
    let folder = t.join("show");
    let a = folder.canonicalize().unwrap().join("styles/a.onnx_adapter");
    const N: u64 = 12;
    let (_, styled) = scenario(&format!("lora=\"{}:0.8\"", adapter("style-a")), &[], N);

    let refused = [
        outside.display().to_string(),
        "styles/../../elsewhere/b.onnx_adapter".to_string(),
        "styles/link.onnx_adapter".to_string(),
    ];
    let run = with_settings_pad(
        &format!("settings-folder=\"{}\"", folder.display()),
        |i2i, send, push| {
            for k in 0..3 {
                push(k);
            }
            send(r#"{"lora": "styles/a.onnx_adapter:0.8"}"#);
            assert_eq!(
                i2i.property::<String>("lora"),
                format!("{}:0.8", a.display())
            );
            for (i, path) in refused.iter().enumerate() {
                push(3 + i as u64);
                send(&format!(r#"{{"lora": "{path}:0.5"}}"#));
            }
            for k in 6..N {
                push(k);
            }
        },
    );
    assert_eq!(run.samples.len() as u64, N, "the stream went on");
    for path in &refused {
        assert_warned(&run, &[path, "outside settings-folder"]);
    }
    let last = run.elements("i2i-settings-applied");
    let last = last.last().unwrap();
    assert_eq!(
        last.get::<String>("lora").unwrap(),
        format!("{}:0.8", a.display())
    );
    assert_eq!(
        run.bytes(N as usize - 1),
        styled[N as usize - 1],
        "the style read under the folder, and kept"
    );

    // Unset: the settings pad's file is refused; the property still applies.
    let run = with_settings_pad("", |i2i, send, push| {
        push(0);
        send(&format!(r#"{{"lora": "{}"}}"#, adapter("style-a")));
        assert_eq!(i2i.property::<String>("lora"), "");
        i2i.set_property("lora", format!("{}:0.8", adapter("style-a")));
        for k in 1..N {
            push(k);
        }
    });
    assert_eq!(run.samples.len() as u64, N);
    assert_warned(
        &run,
        &[
            "style-a.onnx_adapter",
            "settings-folder property, which is not set",
        ],
    );
    assert_eq!(
        run.bytes(N as usize - 1),
        styled[N as usize - 1],
        "the property's style"
    );
    let _ = std::fs::remove_dir_all(&t);
}

/// A flood of refused settings (whoever reaches the holder may send it) costs a few bus
/// warnings a second: every refusal is counted in `settings-rejected`, the warnings held back
/// are counted in the next one, and the frames go on.
#[test]
fn refused_settings_flood_the_bus_with_a_few_warnings_a_second() {
    const FLOOD: usize = 40;
    let (mut rejected, mut flood) = (0, std::time::Duration::ZERO);
    let run = with_settings_pad("", |i2i, send, push| {
        push(0);
        let start = std::time::Instant::now();
        for k in 0..FLOOD {
            send(&format!(r#"{{"lora": "/elsewhere/{k}.onnx_adapter"}}"#));
        }
        // One more after the second has passed: its warning says how many were held back.
        flood = start.elapsed();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        send(r#"{"lora": "/elsewhere/last.onnx_adapter"}"#);
        rejected = i2i
            .property::<gst::Structure>("stats")
            .get::<u64>("settings-rejected")
            .unwrap();
        for k in 1..4 {
            push(k);
        }
    });
    eprintln!("{FLOOD} refused settings in {flood:?}");
    assert_eq!(rejected, FLOOD as u64 + 1, "every refusal counted");
    assert_eq!(run.samples.len(), 4, "the stream went on");
    let warnings: Vec<String> = run
        .warnings()
        .into_iter()
        .filter(|w| w.contains("settings pad: refused"))
        .collect();
    // Five a second: the flood's seconds bound its warnings, and one for the last.
    let allowed = 5 * (flood.as_secs() as usize + 1) + 1;
    assert!(
        warnings.len() <= allowed.min(FLOOD),
        "{} warnings for {} refusals in {flood:?}: {warnings:?}",
        warnings.len(),
        FLOOD + 1
    );
    let last = warnings.last().expect("a warning for the last refusal");
    assert!(
        last.contains("last.onnx_adapter") && last.contains("more since the last report"),
        "{last}"
    );
}
