// SPDX-License-Identifier: MPL-2.0
//! `i2itransform output=latent ! i2idecode` against `i2itransform` alone on the generated
//! tiny models (KL decoder in float32, TAESD in float16): byte-identical pictures, also with
//! the latents sent between two pipelines over ZeroMQ (`zmqmsgpacksink` -> `zmqmsgpacksrc`,
//! real sockets on 127.0.0.1), a decoder farm (`zmqdispatchsink` handing latents to two
//! `zmqworkersrc ! i2idecode` workers whose pictures return to a `zmqcollectsrc`), the
//! latent caps, and latent frames that do not match their caps (dropped, counted, the
//! stream goes on).

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod pipeline_common;

use gst::prelude::*;
use pipeline_common::*;

fn model(name: &str) -> String {
    model_dir(name, "vae_decoder/model.onnx")
        .display()
        .to_string()
}

/// Runs `desc` (an appsink named `out`; an appsrc named `src` gets `push`) to EOS.
fn run(desc: &str, push: impl FnOnce(&gst_app::AppSrc)) -> Result<Run, String> {
    run_launch_with(desc, |pipeline| {
        if let Some(src) = pipeline.by_name("src") {
            push(&src.downcast::<gst_app::AppSrc>().unwrap());
        }
    })
}

const SOURCE: &str =
    "videotestsrc num-buffers=8 pattern=ball ! video/x-raw,width=64,height=64,framerate=10/1";

fn transform(m: &str, extra: &str) -> String {
    format!(
        "i2itransform model={m} width=64 height=64 threads=1 wait-for-settings=false t-index-list=20,35 {extra}"
    )
}

/// `i2itransform` alone on `SOURCE`: the pictures to compare with.
fn alone(m: &str) -> Run {
    run(
        &format!(
            "{SOURCE} ! {} ! video/x-raw,format=RGB ! appsink name=out",
            transform(m, "")
        ),
        |_| (),
    )
    .unwrap()
}

#[test]
fn the_split_is_byte_identical_to_the_transform_alone() {
    for name in ["tiny-sd15", "tiny-fp16"] {
        let m = model(name);
        let alone = alone(&m);
        let split = run(
            &format!(
                "{SOURCE} ! {} ! i2idecode model={m} threads=1 ! video/x-raw,format=RGB ! appsink name=out",
                transform(&m, "output=latent")
            ),
            |_| (),
        )
        .unwrap();
        assert_eq!(alone.samples.len(), 8, "{name}");
        assert_eq!(split.samples.len(), 8, "{name}");
        for (i, (a, b)) in alone.samples.iter().zip(&split.samples).enumerate() {
            assert_eq!(bytes(a), bytes(b), "{name}: frame {i} differs");
            assert_eq!(a.buffer().unwrap().pts(), b.buffer().unwrap().pts());
        }
        // Not a trivial picture.
        let first = bytes(&alone.samples[0]);
        assert!(first.iter().any(|&v| v != first[0]), "{name}");
    }
}

#[test]
fn latent_frames_carry_their_shape_and_scaling_factor() {
    let m = model("tiny-sd15");
    let r = run(
        &format!(
            "{SOURCE} ! {} ! appsink name=out",
            transform(&m, "output=latent")
        ),
        |_| (),
    )
    .unwrap();
    assert_eq!(r.samples.len(), 8);
    let caps = r.samples[0]
        .caps()
        .unwrap()
        .structure(0)
        .unwrap()
        .to_owned();
    assert_eq!(caps.name(), "application/x-i2i-latent");
    assert_eq!(caps.get::<&str>("dtype").unwrap(), "float32");
    assert_eq!(caps.get::<i32>("channels").unwrap(), 4);
    assert_eq!(
        (
            caps.get::<i32>("width").unwrap(),
            caps.get::<i32>("height").unwrap()
        ),
        (8, 8)
    );
    let sf = gsti2i::diffusion::model::read_scaling_factor(&PathBuf::from(&m)).unwrap();
    assert_eq!(caps.get::<f64>("scaling-factor").unwrap(), sf as f64);
    // float32 [1, 4, 8, 8]: 1 KiB a frame against 12 KiB of RGB.
    assert_eq!(r.samples[0].buffer().unwrap().size(), 4 * 8 * 8 * 4);
}

#[test]
fn frames_that_do_not_match_their_caps_are_dropped_and_counted() {
    init();
    let m = model("tiny-sd15");
    let caps = latent_caps(8, 8);
    let desc = format!(
        "appsrc name=src format=time caps=\"{caps}\" ! i2idecode name=d model={m} threads=1 ! appsink name=out"
    );
    let r = run(&desc, |src| {
        for (i, len) in [1024usize, 1000, 1024, 0, 2048, 1024]
            .into_iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..len / 4)
                .flat_map(|k| (((k % 13) as f32 - 6.0) * 0.1).to_ne_bytes())
                .collect();
            let mut b = gst::Buffer::from_mut_slice(data);
            b.get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_mseconds(100 * i as u64));
            src.push_buffer(b).unwrap();
        }
        src.end_of_stream().unwrap();
    })
    .unwrap();
    // Three good frames out, with their timestamps; three dropped and counted.
    let pts: Vec<u64> = r
        .samples
        .iter()
        .map(|s| s.buffer().unwrap().pts().unwrap().mseconds())
        .collect();
    assert_eq!(pts, vec![0, 200, 500]);
    let stats = r
        .messages
        .iter()
        .find_map(|m| match m.view() {
            gst::MessageView::Element(e) => e
                .structure()
                .filter(|s| s.name() == "i2idecode-stats")
                .map(|s| s.to_owned()),
            _ => None,
        })
        .expect("stats at EOS");
    assert_eq!(stats.get::<u64>("dropped-invalid").unwrap(), 3);
    assert_eq!(stats.get::<u64>("frames-out").unwrap(), 3);
    // One warning (rate-limited) naming the sizes.
    let warning = r
        .messages
        .iter()
        .find_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .expect("a warning");
    assert!(
        warning.contains("1000 bytes") && warning.contains("1024 bytes"),
        "{warning}"
    );
}

/// `frames` good latent frames through `i2idecode PROPS`, 30 ms apart; the stats messages.
fn decoder_stats(props: &str, frames: u64) -> Vec<gst::Structure> {
    let m = model("tiny-sd15");
    let caps = "application/x-i2i-latent,dtype=float32,channels=4,width=8,height=8,\
                image-width=64,image-height=64,framerate=10/1";
    let desc = format!(
        "appsrc name=src format=time caps=\"{caps}\" ! i2idecode model={m} threads=1 {props} \
         ! appsink name=out"
    );
    let r = run(&desc, |src| {
        for i in 0..frames {
            let mut b = gst::Buffer::from_mut_slice(vec![0u8; 1024]);
            b.get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_mseconds(100 * i));
            src.push_buffer(b).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        src.end_of_stream().unwrap();
    })
    .unwrap();
    assert_eq!(r.samples.len() as u64, frames);
    r.messages
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Element(e) => e
                .structure()
                .filter(|s| s.name() == "i2idecode-stats")
                .map(|s| s.to_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_decoder_takes_the_queue_and_stats_properties() {
    init();
    // By default the stats come at the end only.
    let default = decoder_stats("", 8);
    assert_eq!(default.len(), 1, "{default:?}");
    // With stats-interval they come while the frames flow (8 frames over 240 ms, every
    // 10 ms: one per frame or so, however loaded the machine), and the queue properties
    // are taken in a running pipeline.
    let every = decoder_stats("stats-interval=10 max-queue=2 drop-frames=never", 8);
    assert!(every.len() >= 4, "{every:?}");
    let last = every.last().unwrap();
    assert_eq!(last.get::<u64>("frames-out").unwrap(), 8, "{last}");
    assert_eq!(last.get::<u64>("dropped").unwrap(), 0, "{last}");
}

#[test]
fn caps_the_decoder_cannot_take_are_refused_by_name() {
    let m = model("tiny-sd15");
    let desc = format!(
        "appsrc name=src format=time caps=\"application/x-i2i-latent,dtype=float32,channels=3,width=8,height=8\" ! i2idecode model={m} ! appsink name=out"
    );
    let err = run(&desc, |src| {
        let _ = src.push_buffer(gst::Buffer::from_mut_slice(vec![0u8; 768]));
        let _ = src.end_of_stream();
    })
    .expect_err("refused");
    assert!(
        err.contains("3 channels") && err.contains("takes 4"),
        "{err}"
    );
    let err = run("appsrc name=src ! i2idecode ! appsink name=out", |_| ()).expect_err("no model");
    assert!(err.contains("No model set"), "{err}");
}

/// Latent caps for a `w` x `h` latent (a picture 8 times that) at 10 frames/s.
fn latent_caps(w: i32, h: i32) -> gst::Caps {
    gst::Caps::builder("application/x-i2i-latent")
        .field("dtype", "float32")
        .field("channels", 4i32)
        .field("width", w)
        .field("height", h)
        .field("image-width", 8 * w)
        .field("image-height", 8 * h)
        .field("framerate", gst::Fraction::new(10, 1))
        .build()
}

#[test]
fn latents_over_max_pixels_never_reach_the_decoder() {
    // A valid 4 MiB latent message whose picture is 4096x4096 (the demo model's decoder
    // once took 6.48 GB for it), between good ones, over a real ZeroMQ socket: it is
    // dropped before any decoder is loaded or run for it, counted, and the stream goes on.
    init();
    let m = model("tiny-sd15");
    let rx = launch(&format!(
        "zmqmsgpacksrc name=rx socket-type=pull bind=true endpoint=tcp://127.0.0.1:* \
         ! i2idecode name=d model={m} threads=1 ! video/x-raw,format=RGB ! appsink name=out"
    ));
    let samples = collect_samples(&rx);
    rx.set_state(gst::State::Playing).unwrap();
    let endpoint = rx
        .by_name("rx")
        .unwrap()
        .property::<Option<String>>("last-endpoint")
        .unwrap();
    let tx = launch(&format!(
        "appsrc name=src format=time ! zmqmsgpacksink socket-type=push bind=false endpoint={endpoint}"
    ));
    tx.set_state(gst::State::Playing).unwrap();
    let src = appsrc(&tx, "src");
    let latent = |w: i32, h: i32, i: u64| {
        let data: Vec<u8> = (0..(4 * w * h) as usize)
            .flat_map(|k| (((k % 13) as f32 - 6.0) * 0.1).to_ne_bytes())
            .collect();
        let mut b = gst::Buffer::from_mut_slice(data);
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(100 * i));
        b
    };
    let mut i = 0;
    for (w, h, n) in [(8, 8, 2), (512, 512, 1), (8, 8, 3)] {
        src.set_caps(Some(&latent_caps(w, h)));
        for _ in 0..n {
            src.push_buffer(latent(w, h, i)).unwrap();
            i += 1;
        }
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut warnings = Vec::new();
    let read_bus = |warnings: &mut Vec<String>| {
        while let Some(m) = rx.bus().unwrap().pop() {
            match m.view() {
                gst::MessageView::Error(e) => panic!("receiver failed: {e:?}"),
                gst::MessageView::Warning(w) => warnings.push(w.error().to_string()),
                _ => (),
            }
        }
    };
    while samples.lock().unwrap().len() < 5 && Instant::now() < deadline {
        read_bus(&mut warnings);
        std::thread::sleep(Duration::from_millis(20));
    }
    read_bus(&mut warnings);
    let stats = rx.by_name("d").unwrap().property::<gst::Structure>("stats");
    tx.set_state(gst::State::Null).unwrap();
    rx.set_state(gst::State::Null).unwrap();
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    // The five good frames, in order, at their size; the decoder ran five times.
    let indices: Vec<u64> = samples.iter().map(index_of).collect();
    assert_eq!(indices, vec![0, 1, 3, 4, 5], "{stats}");
    assert!(samples.iter().all(|s| bytes(s).len() == 64 * 64 * 3));
    assert_eq!(stats.get::<u64>("dropped-oversize").unwrap(), 1, "{stats}");
    assert_eq!(stats.get::<u64>("dropped-invalid").unwrap(), 0, "{stats}");
    assert_eq!(stats.get::<u64>("batches").unwrap(), 5, "{stats}");
    let warning = warnings
        .iter()
        .find(|w| w.contains("max-pixels"))
        .unwrap_or_else(|| panic!("a warning about max-pixels in {warnings:?}"));
    assert!(
        warning.contains("4096x4096") && warning.contains("dropped-oversize"),
        "{warning}"
    );
}

#[test]
fn max_pixels_is_a_property_with_a_default() {
    init();
    let d = gst::ElementFactory::make("i2idecode").build().unwrap();
    assert_eq!(d.property::<u64>("max-pixels"), 2048 * 2048);
    d.set_property("max-pixels", 64u64 * 64);
    assert_eq!(d.property::<u64>("max-pixels"), 4096);
}

/// `i2itransform output=latent ! zmqmsgpacksink` in one pipeline, `zmqmsgpacksrc !
/// i2idecode` in another, over a real socket: the decoded frames and the sender's and
/// receiver's stats.
fn split_over_zmq(m: &str, sink_props: &str) -> (Vec<gst::Sample>, gst::Structure, gst::Structure) {
    init();
    let rx = gst::parse::launch(&format!(
        "zmqmsgpacksrc name=rx socket-type=pull bind=true endpoint=tcp://127.0.0.1:* \
         ! i2idecode model={m} threads=1 ! video/x-raw,format=RGB ! appsink name=out"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let samples = collect_samples(&rx);
    rx.set_state(gst::State::Playing).unwrap();
    let src = rx.by_name("rx").unwrap();
    let endpoint = src.property::<Option<String>>("last-endpoint").unwrap();
    let tx = gst::parse::launch(&format!(
        "{SOURCE} ! {} ! zmqmsgpacksink name=tx socket-type=push bind=false endpoint={endpoint} {sink_props}",
        transform(m, "output=latent")
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    tx.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let bus = tx.bus().unwrap();
    // The sender ends at EOS, once ZeroMQ has taken every message.
    loop {
        let msg = bus
            .timed_pop(gst::ClockTime::from_seconds(1))
            .map(|m| m.type_());
        match msg {
            Some(gst::MessageType::Eos) => break,
            Some(gst::MessageType::Error) => panic!("sender failed"),
            _ => assert!(Instant::now() < deadline, "the sender did not finish"),
        }
    }
    while samples.lock().unwrap().len() < 8 && Instant::now() < deadline {
        if let Some(m) = rx.bus().unwrap().pop_filtered(&[gst::MessageType::Error]) {
            panic!("receiver failed: {m:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let tx_stats = tx
        .by_name("tx")
        .unwrap()
        .property::<gst::Structure>("stats");
    let rx_stats = src.property::<gst::Structure>("stats");
    tx.set_state(gst::State::Null).unwrap();
    rx.set_state(gst::State::Null).unwrap();
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    (samples, tx_stats, rx_stats)
}

#[test]
fn the_split_over_zeromq_is_byte_identical_to_the_transform_alone() {
    for name in ["tiny-sd15", "tiny-fp16"] {
        let m = model(name);
        let alone = alone(&m);
        let (split, tx, rx) = split_over_zmq(&m, "");
        assert_eq!(alone.samples.len(), 8, "{name}");
        assert_eq!(split.len(), 8, "{name}: frames over ZeroMQ");
        for (i, (a, b)) in alone.samples.iter().zip(&split).enumerate() {
            assert_eq!(bytes(a), bytes(b), "{name}: frame {i} differs over ZeroMQ");
        }
        assert_eq!(rx.get::<u64>("latents").unwrap(), 8, "{name}: {rx}");
        assert_eq!(rx.get::<u64>("dropped").unwrap(), 0, "{name}: {rx}");
        // float32 [1, 4, 8, 8] is 1 KiB; the meta adds a little.
        let sent = tx.get::<u64>("bytes").unwrap();
        assert!((8 * 1024..8 * (1024 + 160)).contains(&sent), "{name}: {tx}");
    }
}

#[test]
fn float16_latents_over_zeromq_are_half_the_bytes_and_close() {
    let m = model("tiny-sd15");
    let alone = alone(&m);
    let (split, tx, _rx) = split_over_zmq(&m, "latent-dtype=f16");
    assert_eq!(split.len(), 8);
    let sent = tx.get::<u64>("bytes").unwrap();
    assert!((8 * 512..8 * (512 + 160)).contains(&sent), "{tx}");
    for (i, (a, b)) in alone.samples.iter().zip(&split).enumerate() {
        let (a, b) = (bytes(a), bytes(b));
        assert_eq!(a.len(), b.len());
        let max = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        let mean = a
            .iter()
            .zip(&b)
            .map(|(x, y)| x.abs_diff(*y) as f64)
            .sum::<f64>()
            / a.len() as f64;
        eprintln!("float16 frame {i}: max difference {max}, mean {mean:.3}");
        assert!(max <= 4 && mean < 0.5, "frame {i}: max {max}, mean {mean}");
    }
}

/// The frame index a ZeroMQ source or the collector put on a buffer.
fn index_of(s: &gst::Sample) -> u64 {
    gstzmqsink::frame_index::index_of(s.buffer().unwrap()).expect("a frame index")
}

/// A decoder worker: latents from the dispatcher at `dispatch`, decoded, the RGB picture
/// kept (appsink `out`) and sent as JPEG (`quality`) to the collector at `collect`.
fn decoder_worker(
    m: &str,
    name: &str,
    dispatch: &str,
    collect: &str,
    quality: i32,
) -> gst::Pipeline {
    launch(&format!(
        "zmqworkersrc endpoint={dispatch} client-name={name} heartbeat-interval=50 \
         ! i2idecode model={m} threads=1 ! video/x-raw,format=RGB ! tee name=t \
         ! queue ! zmqmsgpacksink socket-type=push bind=false endpoint={collect} quality={quality} \
         t. ! queue ! appsink name=out sync=false"
    ))
}

/// The dispatcher's count of frames each worker took.
fn frames_per_worker(stats: &gst::Structure) -> Vec<(String, u64)> {
    gstzmqsink::scaleout::zmqdispatchsink::worker_list(stats)
        .iter()
        .map(|s| {
            (
                s.get::<String>("name").unwrap(),
                s.get::<u64>("frames").unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_decoder_farm_over_the_scaleout_elements_is_byte_identical_to_the_transform_alone() {
    // The return path is JPEG (what the collector takes besides latents): each worker's
    // decoded picture is compared with the transform alone before it is encoded (lossless,
    // byte for byte), and what the collector gives out with the same encoder's JPEG of the
    // transform alone's picture (libjpeg-turbo is deterministic: equal pictures, equal
    // bytes), so the whole round trip is checked exactly, without a tolerance.
    const QUALITY: i32 = 90;
    for name in ["tiny-sd15", "tiny-fp16"] {
        let m = model(name);
        let alone = alone(&m);
        assert_eq!(alone.samples.len(), 8, "{name}");

        let group = format!("farm-{name}-{}", std::process::id());
        let primary = launch(&format!(
            "{SOURCE} ! {} ! zmqdispatchsink name=d endpoint=tcp://127.0.0.1:* group={group} \
             sync=false \
             zmqcollectsrc name=c endpoint=tcp://127.0.0.1:* group={group} playout-delay=5000 \
             ! appsink name=out sync=false",
            transform(&m, "output=latent")
        ));
        let results = collect_samples(&primary);
        primary.set_state(gst::State::Paused).unwrap();
        let d = primary.by_name("d").unwrap();
        let endpoint = |e: &gst::Element| {
            e.property::<Option<String>>("last-endpoint")
                .expect("bound")
        };
        let (dispatch, collect) = (endpoint(&d), endpoint(&primary.by_name("c").unwrap()));
        let workers: Vec<gst::Pipeline> = ["decoder-a", "decoder-b"]
            .iter()
            .map(|w| decoder_worker(&m, w, &dispatch, &collect, QUALITY))
            .collect();
        let decoded: Vec<_> = workers.iter().map(collect_samples).collect();
        for w in &workers {
            w.set_state(gst::State::Playing).unwrap();
        }
        let deadline = Instant::now() + TIMEOUT;
        while d
            .property::<gst::Structure>("stats")
            .get::<u64>("workers")
            .unwrap()
            < 2
        {
            assert!(
                Instant::now() < deadline,
                "{name}: the workers did not join"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        primary.set_state(gst::State::Playing).unwrap();
        // The collector ends its stream after the dispatcher's last frame.
        let mut messages = Vec::new();
        let end = wait_eos(&primary, &mut messages);
        let dstats = d.property::<gst::Structure>("stats");
        let cstats = primary
            .by_name("c")
            .unwrap()
            .property::<gst::Structure>("stats");
        primary.set_state(gst::State::Null).unwrap();
        for w in &workers {
            w.set_state(gst::State::Null).unwrap();
        }
        end.unwrap_or_else(|e| panic!("{name}: {e}"));

        // Every worker's pictures are the transform alone's, byte for byte.
        let mut seen = Vec::new();
        for samples in &decoded {
            for s in samples.lock().unwrap().iter() {
                let i = index_of(s) as usize;
                assert_eq!(
                    bytes(s),
                    alone.bytes(i),
                    "{name}: frame {i} decoded on a worker differs"
                );
                seen.push(i);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<_>>(), "{name}: {dstats}");
        let split = frames_per_worker(&dstats);
        eprintln!("{name}: frames per worker {split:?}");
        assert_eq!(split.iter().map(|(_, n)| n).sum::<u64>(), 8, "{dstats}");
        assert_eq!(dstats.get::<u64>("dropped-invalid").unwrap(), 0, "{dstats}");

        // The collector gives them back in order, as the encoder makes them from the
        // transform alone's pictures.
        let results = results.lock().unwrap();
        assert_eq!(results.len(), 8, "{name}: {cstats}");
        let mut encoder = i2i_core::jpeg::Encoder::new(QUALITY).unwrap();
        for (i, r) in results.iter().enumerate() {
            assert_eq!(index_of(r), i as u64, "{name}: out of order");
            let expected = encoder
                .encode_packed(
                    i2i_core::jpeg::PackedFormat::Rgb,
                    i2i_core::jpeg::Plane {
                        data: &alone.bytes(i),
                        stride: 64 * 3,
                    },
                    64,
                    64,
                )
                .unwrap()
                .to_vec();
            assert_eq!(bytes(r), expected, "{name}: frame {i} after the round trip");
        }
    }
}
