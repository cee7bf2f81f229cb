// SPDX-License-Identifier: MPL-2.0
//! settingssrc in real pipelines (`settingssrc ! appsink`) against a real settings holder
//! (the state holder of i2i-prompt) and real publishers, on 127.0.0.1 with ephemeral ports.

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use gst::prelude::*;
use i2i_core::curve::{AllowList, KeyPair, curve_available};
use i2i_core::settings::hub::{ControlClient, Hub, HubConfig, HubCurve, HubEvent, HubHandle};
use i2i_core::settings::message::MAX_MESSAGE_BYTES;
use i2i_core::settings::{CfgType, SettingsUpdate};

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gsti2i::plugin_register_static().expect("register i2i plugin");
    });
}

/// A settings holder on ephemeral ports; events are kept for inspection.
fn hub(initial: SettingsUpdate, curve: Option<HubCurve>) -> (HubHandle, Arc<Mutex<Vec<HubEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let config = HubConfig {
        state_bind: "tcp://127.0.0.1:*".into(),
        control_bind: "tcp://127.0.0.1:*".into(),
        heartbeat: Duration::from_millis(300),
        curve,
        initial,
        ..Default::default()
    };
    let hub = Hub::bind(&config, Arc::new(move |e| ev.lock().unwrap().push(e))).unwrap();
    (hub.spawn().unwrap(), events)
}

/// `settingssrc ! appsink`, with every received update kept and merged.
struct Receiver {
    pipeline: gst::Pipeline,
    src: gst::Element,
    sink: gst_app::AppSink,
    updates: Vec<SettingsUpdate>,
    state: SettingsUpdate,
    warnings: Vec<String>,
}

impl Receiver {
    fn start(props: &[(&str, &str)]) -> Receiver {
        init();
        let pipeline = gst::Pipeline::new();
        let mut b = gst::ElementFactory::make("settingssrc");
        for (k, v) in props {
            b = b.property_from_str(k, v);
        }
        let src = b.build().unwrap();
        let sink = gst_app::AppSink::builder().sync(false).build();
        pipeline.add_many([&src, sink.upcast_ref()]).unwrap();
        src.link(&sink).unwrap();
        if pipeline.set_state(gst::State::Playing).is_err() {
            let msg = pipeline
                .bus()
                .unwrap()
                .timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error]);
            let text = match msg.as_ref().map(|m| m.view()) {
                Some(gst::MessageView::Error(e)) => e.error().to_string(),
                _ => "no error message".to_string(),
            };
            panic!("settingssrc {props:?} did not start: {text}");
        }
        Receiver {
            pipeline,
            src,
            sink,
            updates: Vec::new(),
            state: SettingsUpdate::default(),
            warnings: Vec::new(),
        }
    }

    /// Collects buffers and bus warnings for up to `timeout`, or until `done` holds.
    fn pump_until(&mut self, timeout: Duration, done: impl Fn(&Receiver) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain_bus();
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let wait = left.min(Duration::from_millis(20));
            if let Some(sample) = self
                .sink
                .try_pull_sample(gst::ClockTime::from_nseconds(wait.as_nanos() as u64))
            {
                let buf = sample.buffer().unwrap();
                let map = buf.map_readable().unwrap();
                let u = SettingsUpdate::from_json(&map).expect("settingssrc pushes valid updates");
                // Only a holder's first state may be empty (it has no settings yet).
                assert!(
                    !u.is_empty() || self.updates.is_empty(),
                    "empty update pushed after {:?}",
                    self.updates
                );
                assert_eq!(
                    sample.caps().unwrap().structure(0).unwrap().name(),
                    "application/x-i2i-settings"
                );
                self.state.merge(u.clone());
                self.updates.push(u);
            }
        }
    }

    fn drain_bus(&mut self) {
        let bus = self.pipeline.bus().unwrap();
        while let Some(msg) = bus.pop() {
            match msg.view() {
                gst::MessageView::Warning(w) => self.warnings.push(w.error().to_string()),
                gst::MessageView::Error(e) => {
                    panic!("pipeline error: {} ({:?})", e.error(), e.debug())
                }
                _ => {}
            }
        }
    }

    fn stat<T: for<'a> gst::glib::value::FromValue<'a> + 'static>(&self, name: &str) -> T {
        let s = self.src.property::<gst::Structure>("stats");
        s.get::<T>(name).unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn seed(n: u64) -> SettingsUpdate {
    SettingsUpdate {
        seed: Some(n),
        ..Default::default()
    }
}

#[test]
fn receives_changes_and_heartbeats_apply_nothing() {
    let (hub, _events) = hub(SettingsUpdate::default(), None);
    let mut rx = Receiver::start(&[("endpoint", &hub.info.state_endpoint)]);
    let client = ControlClient::connect(&hub.info.control_endpoint, None).unwrap();
    // The first snapshot may arrive before or after the connection; commands are
    // confirmed by the holder, and the state reaches the element within a heartbeat.
    let answer = client.request(b"/seed 5", Duration::from_secs(3)).unwrap();
    assert!(answer.starts_with("ok seq=1"), "{answer}");
    assert!(rx.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(5)));
    client
        .request(b"a red fox", Duration::from_secs(3))
        .unwrap();
    client
        .request(b"/guidance 1.4", Duration::from_secs(3))
        .unwrap();
    assert!(rx.pump_until(Duration::from_secs(2), |r| {
        r.state.prompt.as_deref() == Some("a red fox") && r.state.guidance_scale == Some(1.4)
    }));
    // Several heartbeats later nothing more was pushed.
    let pushed = rx.updates.len();
    rx.pump_until(Duration::from_millis(1000), |_| false);
    assert_eq!(
        rx.updates.len(),
        pushed,
        "heartbeats re-applied settings: {:?}",
        rx.updates
    );
    assert!(rx.stat::<u64>("snapshots") >= 3);
    // An error answer for a bad command; the element never sees it.
    let answer = client.request(b"/seed x", Duration::from_secs(3)).unwrap();
    assert!(
        answer.starts_with("error: /seed: \"x\" is not a seed"),
        "{answer}"
    );
    assert!(rx.warnings.is_empty(), "{:?}", rx.warnings);
}

#[test]
fn late_joiner_gets_the_state_within_one_second() {
    let initial = SettingsUpdate {
        prompt: Some("oil painting".into()),
        seed: Some(7),
        t_index_list: Some(vec![22, 32]),
        ..Default::default()
    };
    let (hub, _events) = hub(initial, None);
    hub.send(b"/guidance 2").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let start = Instant::now();
    let mut rx = Receiver::start(&[("endpoint", &hub.info.state_endpoint)]);
    assert!(rx.pump_until(Duration::from_secs(3), |r| r.state.seed == Some(7)));
    let took = start.elapsed();
    println!("late join: full state after {} ms", took.as_millis());
    assert!(took < Duration::from_secs(1), "late join took {took:?}");
    assert_eq!(rx.state.prompt.as_deref(), Some("oil painting"));
    assert_eq!(rx.state.t_index_list.as_deref(), Some(&[22, 32][..]));
    assert_eq!(rx.state.guidance_scale, Some(2.0));
    // Everything came in one update.
    assert_eq!(rx.updates.len(), 1, "{:?}", rx.updates);
}

#[test]
fn two_elements_both_follow_every_change() {
    let (hub, _events) = hub(seed(0), None);
    let mut a = Receiver::start(&[("endpoint", &hub.info.state_endpoint)]);
    let mut b = Receiver::start(&[
        ("endpoint", &hub.info.state_endpoint),
        ("min-push-interval", "0"),
    ]);
    for r in [&mut a, &mut b] {
        assert!(r.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(0)));
    }
    let client = ControlClient::connect(&hub.info.control_endpoint, None).unwrap();
    for n in 1..=10u64 {
        client
            .request(format!("/seed {n}").as_bytes(), Duration::from_secs(3))
            .unwrap();
        for r in [&mut a, &mut b] {
            assert!(
                r.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(n)),
                "seed {n} did not arrive"
            );
        }
    }
    for r in [&a, &b] {
        let seeds: Vec<u64> = r.updates.iter().filter_map(|u| u.seed).collect();
        assert_eq!(seeds, (0..=10).collect::<Vec<_>>());
    }
}

/// A program that publishes straight to a settingssrc with bind=true.
fn publisher(endpoint: &str) -> zmq::Socket {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::PUB).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    s
}

/// Sends `msg` until the element has it (the PUB learns the subscription after connecting).
fn send_until(rx: &mut Receiver, sock: &zmq::Socket, msg: &[u8], done: impl Fn(&Receiver) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        sock.send(msg, 0).unwrap();
        if rx.pump_until(Duration::from_millis(100), &done) {
            return;
        }
    }
    panic!(
        "the element never received {:?}",
        String::from_utf8_lossy(msg)
    );
}

#[test]
fn malformed_messages_are_warnings_and_the_stream_goes_on() {
    let mut rx = Receiver::start(&[("endpoint", "tcp://127.0.0.1:*"), ("bind", "true")]);
    let endpoint: String = rx.stat("last-endpoint");
    assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{endpoint}");
    let pubs = publisher(&endpoint);
    send_until(&mut rx, &pubs, b"/seed 1", |r| r.state.seed == Some(1));

    let mut packed = Vec::new();
    rmpv::encode::write_value(
        &mut packed,
        &rmpv::Value::Map(vec![(rmpv::Value::from("seed"), rmpv::Value::from("five"))]),
    )
    .unwrap();
    let big = vec![b'a'; MAX_MESSAGE_BYTES + 10];
    let bad: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (vec![b"/sed 5".to_vec()], "unknown command /sed"),
        (vec![b"/guidance loud".to_vec()], "\"loud\" is not a number"),
        (vec![vec![0xff, 0xfe, 0x41]], "neither UTF-8 text"),
        (
            vec![packed],
            "seed: expected a whole number >= 0, found a string",
        ),
        (vec![br#"{"sed": 1}"#.to_vec()], "unknown key \"sed\""),
        (vec![big], "larger than the 65536-byte limit"),
        (
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
            "found 3 frames",
        ),
        (
            vec![b"i2i-state".to_vec(), b"{not json".to_vec()],
            "state snapshot is not valid",
        ),
    ];
    for (frames, want) in &bad {
        pubs.send_multipart(frames, 0).unwrap();
        assert!(
            rx.pump_until(Duration::from_secs(2), |r| r
                .warnings
                .iter()
                .any(|w| w.contains(want))),
            "no warning containing {want:?}; warnings: {:?}",
            rx.warnings
        );
        // Stay under the bus rate limit so every warning is posted.
        std::thread::sleep(Duration::from_millis(210));
    }
    // The stream is alive: a good message still works, nothing bad was pushed.
    pubs.send(&br#"{"prompt": "still here", "seed": 2}"#[..], 0)
        .unwrap();
    assert!(rx.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(2)));
    assert_eq!(rx.state.prompt.as_deref(), Some("still here"));
    assert_eq!(rx.stat::<u64>("rejected"), bad.len() as u64);
    assert_eq!(
        rx.updates.iter().filter_map(|u| u.seed).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn a_flood_of_commands_is_coalesced_and_ends_in_the_right_state() {
    init();
    let (hub, _events) = hub(seed(0), None);
    // A live video branch runs next to the settings branch in the same pipeline.
    let mut rx = Receiver::start(&[("endpoint", &hub.info.state_endpoint)]);
    let video = gst::parse::launch(
        "videotestsrc is-live=true pattern=black ! video/x-raw,width=64,height=64,framerate=50/1 ! appsink name=v sync=false",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let vsink = video
        .by_name("v")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let frames = Arc::new(Mutex::new(0u64));
    let f2 = frames.clone();
    vsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                *f2.lock().unwrap() += 1;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    video.set_state(gst::State::Playing).unwrap();
    assert!(rx.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(0)));
    let pushed_before: u64 = rx.stat("pushed");

    // 2000 commands at 1000 per second from a program on the command socket.
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.connect(&hub.info.control_endpoint).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let frames_at_start = *frames.lock().unwrap();
    let start = Instant::now();
    let total = 2000u64;
    for n in 1..=total {
        dealer
            .send_multipart([&b""[..], format!("/seed {n}").as_bytes()], 0)
            .unwrap();
        if n % 10 == 0 {
            // Pace to 1000 per second, and keep the element's queue drained.
            let due = start + Duration::from_millis(n);
            rx.pump_until(due.saturating_duration_since(Instant::now()), |_| false);
        }
    }
    let send_time = start.elapsed();
    assert!(
        rx.pump_until(Duration::from_secs(3), |r| r.state.seed == Some(total)),
        "final seed never arrived; last state {:?}",
        rx.state.seed
    );
    let elapsed = start.elapsed();
    let video_frames = *frames.lock().unwrap() - frames_at_start;
    video.set_state(gst::State::Null).unwrap();
    // Every command was answered by the holder.
    let mut answers = 0;
    while dealer.poll(zmq::POLLIN, 200).unwrap() > 0 {
        let reply = dealer.recv_multipart(0).unwrap();
        assert!(
            reply.last().unwrap().starts_with(b"ok"),
            "{:?}",
            String::from_utf8_lossy(reply.last().unwrap())
        );
        answers += 1;
    }
    let pushed: u64 = rx.stat::<u64>("pushed") - pushed_before;
    let coalesced: u64 = rx.stat("coalesced");
    let expected_video = elapsed.as_secs_f64() * 50.0;
    println!(
        "flood: {total} commands in {:.2} s ({:.0}/s), {answers} answers; settingssrc pushed {pushed} updates \
         ({coalesced} changes merged into waiting updates), seeds seen {}; video {video_frames} frames in {:.2} s \
         ({:.0}% of 50 fps)",
        send_time.as_secs_f64(),
        total as f64 / send_time.as_secs_f64(),
        rx.updates.iter().filter(|u| u.seed.is_some()).count(),
        elapsed.as_secs_f64(),
        100.0 * video_frames as f64 / expected_video
    );
    assert_eq!(answers, total);
    // Bounded: at most one update per min-push-interval (20 ms), plus slack.
    let bound = (elapsed.as_secs_f64() / 0.020).ceil() as u64 + 5;
    assert!(
        pushed <= bound,
        "{pushed} updates pushed in {elapsed:?} (bound {bound})"
    );
    assert!(pushed >= 2, "the flood produced {pushed} updates");
    // Seeds only ever move forward (nothing stale re-applied).
    let seeds: Vec<u64> = rx.updates.iter().filter_map(|u| u.seed).collect();
    assert!(seeds.windows(2).all(|w| w[0] < w[1]), "{seeds:?}");
    assert!(
        video_frames as f64 >= 0.8 * expected_video,
        "video slowed down: {video_frames} frames, expected about {expected_video:.0}"
    );
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("i2i-settings-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn curve_allowed_keys_work_and_unknown_keys_are_refused() {
    if !curve_available() {
        panic!("libzmq has no CURVE support; the settings link needs it");
    }
    let dir = temp_dir("curve");
    let make = |name: &str| {
        let k = KeyPair::generate().unwrap();
        let (public, secret) = k.write(&dir.join(name), name).unwrap();
        (k, public, secret)
    };
    let (hub_keys, hub_pub, _) = make("hub");
    let (_op, _, op_secret) = make("operator");
    let (_stranger, _, stranger_secret) = make("stranger");
    let (_tf, tf_pub, tf_secret) = make("transform");
    let (_other_tf, _, other_tf_secret) = make("intruder");
    let curve = HubCurve {
        keys: hub_keys.clone(),
        controllers: AllowList::load(&dir.join("operator")).unwrap(),
        subscribers: Some(AllowList::load(&tf_pub).unwrap()),
    };
    let (hub, events) = hub(seed(1), Some(curve));
    let state = hub.info.state_endpoint.clone();

    // The transform's element with its allowed key follows the state.
    let mut rx = Receiver::start(&[
        ("endpoint", &state),
        ("curve-key", tf_secret.to_str().unwrap()),
        ("curve-server-key", hub_pub.to_str().unwrap()),
    ]);
    assert!(rx.pump_until(Duration::from_secs(3), |r| r.state.seed == Some(1)));

    // An allowed operator key changes settings.
    let op = KeyPair::load(&op_secret).unwrap();
    let client =
        ControlClient::connect(&hub.info.control_endpoint, Some((&op, &hub_keys.public))).unwrap();
    let answer = client.request(b"/seed 11", Duration::from_secs(3)).unwrap();
    assert!(answer.starts_with("ok"), "{answer}");
    assert!(rx.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(11)));

    // An unknown key is refused, logged, and changes nothing.
    let stranger = KeyPair::load(&stranger_secret).unwrap();
    let intruder = ControlClient::connect(
        &hub.info.control_endpoint,
        Some((&stranger, &hub_keys.public)),
    )
    .unwrap();
    let e = intruder
        .request(b"/seed 66", Duration::from_secs(2))
        .unwrap_err();
    assert!(e.contains("refused this CURVE key"), "{e}");
    // The transform's key may subscribe and report, but not command.
    let tf = KeyPair::load(&tf_secret).unwrap();
    let as_transform =
        ControlClient::connect(&hub.info.control_endpoint, Some((&tf, &hub_keys.public))).unwrap();
    let answer = as_transform
        .request(b"/seed 67", Duration::from_secs(3))
        .unwrap();
    assert!(
        answer.contains("may subscribe and report but not change settings"),
        "{answer}"
    );
    // A report it sends naming another transform (and claiming the operator's key) is
    // shown with the key the holder authenticated, not the claim.
    let forged = i2i_core::settings::state::AppliedReport {
        source: "other-transform@stage-right".into(),
        seq: Some(1),
        frame: Some(5),
        settings: seed(99),
        refused: Vec::new(),
        key: Some(op.public.clone()),
    };
    assert!(as_transform.report(&forged));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let report = loop {
        let found = events.lock().unwrap().iter().find_map(|e| match e {
            HubEvent::Applied(r) if r.settings.seed == Some(99) => Some(r.clone()),
            _ => None,
        });
        if let Some(r) = found {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the report never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(report.key.as_deref(), Some(tf.public.as_str()));
    let shown = report.describe();
    assert!(
        shown.starts_with(&format!(
            "applied by key {}… (calls itself other-transform@stage-right)",
            &tf.public[..10]
        )),
        "{shown}"
    );
    // Plain (non-CURVE) clients get nowhere either.
    let plain = ControlClient::connect(&hub.info.control_endpoint, None).unwrap();
    assert!(
        plain
            .request(b"/seed 68", Duration::from_millis(800))
            .is_err()
    );

    // A subscriber with an unknown key is refused and says so on the bus; a plain one gets nothing.
    let mut intruder_rx = Receiver::start(&[
        ("endpoint", &state),
        ("curve-key", other_tf_secret.to_str().unwrap()),
        ("curve-server-key", &hub_keys.public),
    ]);
    let mut plain_rx = Receiver::start(&[("endpoint", &state)]);
    assert!(intruder_rx.pump_until(Duration::from_secs(3), |r| {
        r.warnings
            .iter()
            .any(|w| w.contains("refused this element's CURVE key"))
    }));
    plain_rx.pump_until(Duration::from_millis(700), |_| false);
    assert!(intruder_rx.updates.is_empty() && plain_rx.updates.is_empty());

    rx.pump_until(Duration::from_millis(400), |_| false);
    assert_eq!(rx.state.seed, Some(11));
    assert!(!rx.updates.iter().any(|u| matches!(u.seed, Some(66..=68))));
    let ev = events.lock().unwrap();
    let refusals: Vec<String> = ev
        .iter()
        .filter_map(|e| match e {
            HubEvent::Refused { key, reason, .. } => Some(format!("{key}: {reason}")),
            _ => None,
        })
        .collect();
    assert!(
        refusals.iter().any(|r| r.starts_with(&stranger.public)),
        "{refusals:?}"
    );
    assert!(
        refusals.iter().any(|r| r.contains("not change settings")),
        "{refusals:?}"
    );
    drop(ev);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn curve_on_a_bound_element_admits_only_allowed_publishers() {
    let dir = temp_dir("curve-bind");
    let element_keys = KeyPair::generate().unwrap();
    let (_, element_secret) = element_keys.write(&dir, "element").unwrap();
    let allowed = KeyPair::generate().unwrap();
    let stranger = KeyPair::generate().unwrap();
    let list = dir.join("allowed.txt");
    std::fs::write(&list, format!("{} lighting desk\n", allowed.public)).unwrap();
    let mut rx = Receiver::start(&[
        ("endpoint", "tcp://127.0.0.1:*"),
        ("bind", "true"),
        ("curve-key", element_secret.to_str().unwrap()),
        ("curve-allow", list.to_str().unwrap()),
    ]);
    let endpoint: String = rx.stat("last-endpoint");
    let ctx = zmq::Context::new();
    let make_pub = |keys: &KeyPair| {
        let s = ctx.socket(zmq::PUB).unwrap();
        s.set_linger(0).unwrap();
        i2i_core::curve::make_client(&s, keys, &element_keys.public).unwrap();
        s.connect(&endpoint).unwrap();
        s
    };
    let good = make_pub(&allowed);
    send_until(&mut rx, &good, b"/seed 21", |r| r.state.seed == Some(21));
    let bad = make_pub(&stranger);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        bad.send(&b"/seed 99"[..], 0).unwrap();
        rx.pump_until(Duration::from_millis(100), |_| false);
    }
    assert_eq!(rx.state.seed, Some(21));
    assert!(
        rx.warnings
            .iter()
            .any(|w| w.contains("refused a settings publisher") && w.contains(&stranger.public)),
        "{:?}",
        rx.warnings
    );
    assert!(rx.stat::<u64>("refused") >= 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configuration_is_an_error_naming_the_problem() {
    init();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("endpoint", "nonsense")], "Could not connect to nonsense"),
        (
            &[
                ("endpoint", "tcp://127.0.0.1:*"),
                ("bind", "true"),
                ("curve-key", "/nonexistent/x.key_secret"),
            ],
            "curve-key: cannot read CURVE key file /nonexistent/x.key_secret",
        ),
        (
            &[
                ("endpoint", "tcp://127.0.0.1:1"),
                ("curve-server-key", "tooshort"),
            ],
            "curve-server-key",
        ),
        (
            &[("endpoint", "tcp://256.1.1.1:5556"), ("bind", "true")],
            "Could not bind tcp://256.1.1.1:5556",
        ),
    ];
    for (props, want) in cases {
        let pipeline = gst::Pipeline::new();
        let mut b = gst::ElementFactory::make("settingssrc");
        for (k, v) in props {
            b = b.property_from_str(k, v);
        }
        let src = b.build().unwrap();
        let sink = gst::ElementFactory::make("fakesink").build().unwrap();
        pipeline.add_many([&src, &sink]).unwrap();
        src.link(&sink).unwrap();
        assert!(pipeline.set_state(gst::State::Playing).is_err());
        let bus = pipeline.bus().unwrap();
        let msg = bus
            .timed_pop_filtered(gst::ClockTime::from_seconds(2), &[gst::MessageType::Error])
            .expect("an error message");
        let gst::MessageView::Error(e) = msg.view() else {
            unreachable!()
        };
        let text = format!("{} {:?}", e.error(), e.debug());
        assert!(text.contains(want), "{props:?}: {text}");
        pipeline.set_state(gst::State::Null).unwrap();
    }
}

#[test]
fn push_programs_reach_a_pull_element() {
    let mut rx = Receiver::start(&[
        ("endpoint", "tcp://127.0.0.1:*"),
        ("bind", "true"),
        ("socket-type", "pull"),
    ]);
    let endpoint: String = rx.stat("last-endpoint");
    let ctx = zmq::Context::new();
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.set_linger(0).unwrap();
    push.connect(&endpoint).unwrap();
    // PUSH queues until connected: nothing is lost, in order.
    for n in 1..=50u64 {
        push.send(format!("/seed {n}").as_bytes(), 0).unwrap();
    }
    push.send(&b"/cfg full"[..], 0).unwrap();
    assert!(rx.pump_until(Duration::from_secs(3), |r| r.state.cfg_type
        == Some(CfgType::Full)));
    assert_eq!(rx.state.seed, Some(50));
    assert_eq!(rx.stat::<u64>("commands"), 51);
}

#[test]
fn stopping_while_waiting_for_settings_is_prompt() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rx = Receiver::start(&[("endpoint", &format!("tcp://127.0.0.1:{port}"))]);
    // Nothing publishes: the streaming thread waits in create().
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    rx.pipeline.set_state(gst::State::Null).unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_millis(500), "stopping took {took:?}");
    // And it starts again.
    rx.pipeline.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    rx.pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn applied_reports_travel_back_to_the_holder() {
    let (hub, events) = hub(seed(3), None);
    let mut rx = Receiver::start(&[("endpoint", &hub.info.state_endpoint)]);
    assert!(rx.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(3)));
    // What i2itransform sends upstream on its settings pad when it applies settings.
    let applied = SettingsUpdate {
        seed: Some(3),
        ..Default::default()
    };
    let event = gst::event::CustomUpstream::new(
        gst::Structure::builder(i2i_core::settings::state::APPLIED_EVENT)
            .field("frame-index", 42u64)
            .field("settings", String::from_utf8(applied.to_json()).unwrap())
            .build(),
    );
    let pad = rx.sink.static_pad("sink").unwrap();
    // Sent once, at once: the first report after a start waits for the connection to the
    // holder instead of being dropped.
    assert!(
        pad.push_event(event.clone()),
        "settingssrc did not take the event"
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    let report = loop {
        std::thread::sleep(Duration::from_millis(50));
        let found = events.lock().unwrap().iter().find_map(|e| match e {
            HubEvent::Applied(r) => Some(r.clone()),
            _ => None,
        });
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "no report reached the holder");
    };
    assert_eq!(report.frame, Some(42));
    assert_eq!(report.settings, applied);
    // Named after the element it feeds (the transform, in a real pipeline), with the
    // process id, so workers on one machine stay apart.
    assert!(
        report.source.starts_with(&format!("{}@", rx.sink.name()))
            && report.source.ends_with(&format!("/{}", std::process::id())),
        "{}",
        report.source
    );
    assert_eq!(rx.stat::<u64>("dropped-reports"), 0);
    assert!(rx.stat::<u64>("reported") >= 1);
    // A console subscribed to the holder's state socket sees the report too.
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_subscribe(i2i_core::settings::state::APPLIED_TOPIC)
        .unwrap();
    sub.connect(&hub.info.state_endpoint).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        pad.push_event(event.clone());
        if sub.poll(zmq::POLLIN, 100).unwrap() > 0 {
            let frames = sub.recv_multipart(0).unwrap();
            let r = i2i_core::settings::state::AppliedReport::decode(&frames[1]).unwrap();
            assert_eq!(r.frame, Some(42));
            break;
        }
        assert!(Instant::now() < deadline, "no report republished");
    }
}

#[test]
fn a_restarted_holder_is_followed_with_its_new_state() {
    let (first, _events) = hub(seed(5), None);
    let state = first.info.state_endpoint.clone();
    let control = first.info.control_endpoint.clone();
    let mut rx = Receiver::start(&[("endpoint", &state)]);
    assert!(rx.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(5)));
    let epoch: u64 = rx.stat("epoch");
    first.stop().unwrap();
    // The same ports, a new process' state: the subscription reconnects by itself.
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let config = HubConfig {
        state_bind: state.clone(),
        control_bind: control,
        heartbeat: Duration::from_millis(300),
        curve: None,
        initial: SettingsUpdate {
            seed: Some(5),
            prompt: Some("after the restart".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let second = Hub::bind(&config, Arc::new(move |e| ev.lock().unwrap().push(e)))
        .unwrap()
        .spawn()
        .unwrap();
    assert!(rx.pump_until(Duration::from_secs(5), |r| {
        r.state.prompt.as_deref() == Some("after the restart")
    }));
    assert_ne!(rx.stat::<u64>("epoch"), epoch);
    second.send(b"/seed 6").unwrap();
    assert!(rx.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(6)));
}

#[test]
fn oversize_degenerate_and_bare_values_are_answered_with_errors() {
    let (hub, _events) = hub(seed(1), None);
    let client = ControlClient::connect(&hub.info.control_endpoint, None).unwrap();
    let ask = |payload: &[u8]| client.request(payload, Duration::from_secs(5)).unwrap();
    // Larger than the message limit, up to what the holder reads: a clear error, not silence.
    let answer = ask(&vec![b'a'; 2 * 1024 * 1024]);
    assert!(
        answer.starts_with("error: message of 2097152 bytes is larger than the 65536-byte limit"),
        "{answer}"
    );
    for (payload, want) in [
        (
            &b"/seedblend 1:1e-320 2:1e-320"[..],
            "error: seed-blend: weight 1e-320",
        ),
        (
            &[0x05][..],
            "error: a msgpack integer is not a settings message",
        ),
        (
            br#"{"prompt": "a\u0000b"}"#,
            "error: prompt: text contains the control character U+0000",
        ),
        (
            br#"{"seed": 2, "seed": 3}"#,
            "error: key seed is given twice",
        ),
        (
            b"/t 10,60",
            "error: t-index-list \"10,60\": t-index 60 is out of range",
        ),
    ] {
        let answer = ask(payload);
        assert!(answer.starts_with(want), "{answer}");
    }
    // Nothing of it reached the state.
    assert!(ask(b"/status").contains(r#""seed":1"#));
}

#[test]
fn report_name_names_the_transform_in_reports() {
    let (hub, events) = hub(seed(4), None);
    let mut rx = Receiver::start(&[
        ("endpoint", &hub.info.state_endpoint),
        ("client-name", "worker-3"),
    ]);
    assert!(rx.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(4)));
    let event = gst::event::CustomUpstream::new(
        gst::Structure::builder(i2i_core::settings::state::REFUSED_EVENT)
            .field(
                "refused",
                "t-index-list \"10,60\" refused: t-index 60 is out of range",
            )
            .build(),
    );
    assert!(rx.sink.static_pad("sink").unwrap().push_event(event));
    let deadline = Instant::now() + Duration::from_secs(6);
    let report = loop {
        let found = events.lock().unwrap().iter().find_map(|e| match e {
            HubEvent::Applied(r) => Some(r.clone()),
            _ => None,
        });
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "no report reached the holder");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(report.source, "worker-3");
    assert!(report.settings.is_empty());
    assert_eq!(
        report.describe(),
        "refused by worker-3: t-index-list \"10,60\" refused: t-index 60 is out of range"
    );
}

#[test]
fn an_empty_holder_is_pushed_once_as_an_empty_update() {
    let (hub, _events) = hub(SettingsUpdate::default(), None);
    let mut rx = Receiver::start(&[("endpoint", &hub.info.state_endpoint)]);
    // The holder's first state, empty: one empty update, so a transform knows it is there.
    assert!(rx.pump_until(Duration::from_secs(3), |r| !r.updates.is_empty()));
    assert_eq!(rx.updates, vec![SettingsUpdate::default()]);
    // Heartbeats of the same empty state push nothing more; the first change does.
    rx.pump_until(Duration::from_millis(700), |_| false);
    assert_eq!(rx.updates.len(), 1, "{:?}", rx.updates);
    hub.send(b"/seed 9").unwrap();
    assert!(rx.pump_until(Duration::from_secs(2), |r| r.state.seed == Some(9)));
    assert_eq!(rx.updates.len(), 2, "{:?}", rx.updates);
}

/// The workspace's `i2i-prompt`, built in the same target directory as this test.
fn i2i_prompt() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/settingssrc-HASH -> target/release/i2i-prompt
    let bin = exe.parent().unwrap().parent().unwrap().join("i2i-prompt");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p i2i-tools`",
        bin.display()
    );
    bin
}

fn tiny_model() -> String {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-sd15");
    assert!(
        dir.join("unet/model.onnx").exists(),
        "{} is missing: run scripts/setup.sh",
        dir.display()
    );
    dir.display().to_string()
}

/// `i2i-prompt serve` with nothing set (no --init), on ephemeral ports; killed when dropped.
struct ServeProcess {
    child: std::process::Child,
    state: String,
    control: String,
}

impl ServeProcess {
    fn start() -> ServeProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(i2i_prompt())
            .args([
                "serve",
                "--state-bind",
                "tcp://127.0.0.1:*",
                "--control-bind",
                "tcp://127.0.0.1:*",
                "--osc",
                "off",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        // "i2i-prompt: publishing settings on tcp://127.0.0.1:P, commands on tcp://127.0.0.1:Q (...)"
        let line = lines
            .find(|l| {
                l.as_ref()
                    .is_ok_and(|l| l.contains("publishing settings on"))
            })
            .unwrap()
            .unwrap();
        std::thread::spawn(move || lines.for_each(drop));
        let after = |tag: &str| {
            line.split(tag)
                .nth(1)
                .unwrap()
                .split([',', ' '])
                .next()
                .unwrap()
                .to_string()
        };
        ServeProcess {
            state: after("settings on "),
            control: after("commands on "),
            child,
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `desc` until `frames` frames came out of the appsink `out`; returns the time to
/// the first frame and the bus messages (INFO and WARNING texts) seen on the way.
fn frames_out(
    desc: &str,
    frames: usize,
    timeout: Duration,
) -> (Duration, Vec<String>, Vec<String>) {
    init();
    let pipeline = gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let start = Instant::now();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (mut first, mut count) = (None, 0);
    let (mut infos, mut warnings) = (Vec::new(), Vec::new());
    let bus = pipeline.bus().unwrap();
    while count < frames {
        assert!(
            start.elapsed() < timeout,
            "{count} frames in {timeout:?}; warnings {warnings:?}"
        );
        if sink
            .try_pull_sample(gst::ClockTime::from_mseconds(20))
            .is_some()
        {
            first.get_or_insert(start.elapsed());
            count += 1;
        }
        while let Some(msg) = bus.pop() {
            match msg.view() {
                gst::MessageView::Info(m) => infos.push(m.error().to_string()),
                gst::MessageView::Warning(m) => warnings.push(m.error().to_string()),
                gst::MessageView::Error(e) => panic!("pipeline error: {}", e.error()),
                _ => {}
            }
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (first.unwrap(), infos, warnings)
}

#[test]
fn a_transform_runs_at_once_on_a_holder_without_settings_and_says_so_once() {
    let holder = ServeProcess::start();
    // A wait long enough that running into it could not pass for a slow start.
    let timeout_ms = 20_000;
    let desc = format!(
        "settingssrc endpoint={} ! i2i.settings \
         videotestsrc num-buffers=4 ! video/x-raw,width=64,height=64,framerate=30/1 ! videoconvert \
         ! i2itransform name=i2i model={} width=64 height=64 threads=1 prompt=\"a quiet lake\" \
           wait-for-settings=true settings-timeout={timeout_ms} \
         ! appsink name=out sync=false",
        holder.state,
        tiny_model()
    );
    let (first, infos, warnings) = frames_out(&desc, 4, Duration::from_secs(60));
    println!(
        "holder without settings: first frame after {} ms",
        first.as_millis()
    );
    assert!(
        first < Duration::from_millis(timeout_ms / 2),
        "the first frame waited {first:?}"
    );
    let said: Vec<&String> = infos
        .iter()
        .filter(|m| m.contains("has no settings yet"))
        .collect();
    assert_eq!(said.len(), 1, "{infos:?}");
    assert!(said[0].contains("prompt \"a quiet lake\""), "{said:?}");
    assert!(warnings.is_empty(), "{warnings:?}");
    // The holder is reachable all along: its commands answer.
    let client = ControlClient::connect(&holder.control, None).unwrap();
    let answer = client.request(b"/seed 5", Duration::from_secs(5)).unwrap();
    assert!(answer.starts_with("ok seq=1"), "{answer}");
}

#[test]
fn strength_sent_straight_to_a_transform_moves_its_own_list() {
    init();
    let desc = format!(
        "settingssrc name=s bind=true endpoint=tcp://127.0.0.1:* ! i2i.settings \
         videotestsrc is-live=true ! video/x-raw,width=64,height=64,framerate=10/1 ! videoconvert \
         ! i2itransform name=i2i model={} width=64 height=64 threads=1 t-index-list=20,35 \
           wait-for-settings=false ! fakesink",
        tiny_model()
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let src = pipeline.by_name("s").unwrap();
    let i2i = pipeline.by_name("i2i").unwrap();
    let endpoint = src
        .property::<gst::Structure>("stats")
        .get::<String>("last-endpoint")
        .unwrap();
    let sock = publisher(&endpoint);
    // The transform's list 20,35 moved as a whole: 1 = strongest (first index 0).
    for (message, want) in [
        (&br#"{"strength": 1}"#[..], "0,15"),
        (&br#"{"strength": 0}"#[..], "34,49"),
        (&b"/strength 0.5"[..], "17,32"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while i2i.property::<String>("t-index-list") != want {
            assert!(
                Instant::now() < deadline,
                "{}: t-index-list stayed {}",
                String::from_utf8_lossy(message),
                i2i.property::<String>("t-index-list")
            );
            sock.send(message, 0).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
}
