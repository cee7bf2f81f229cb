// SPDX-License-Identifier: MPL-2.0
//! CURVE on the transport elements, on real sockets (127.0.0.1, ephemeral ports): a peer
//! whose key is in `curve-allow` gets frames in and out; a stranger's key and a plain-text
//! peer get nothing, and are counted in `stats.refused` with a warning; a bad frame from an
//! allowed peer is dropped and counted without stopping the stream. Also the settings
//! mistakes that must stop the start with a message naming the property.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use i2i_core::curve::{KeyPair, curve_available, make_client};
use i2i_core::protocol;

const T: Duration = Duration::from_secs(10);

/// Key pairs written as certificates: the element's, a friend's (in the allow-list folder)
/// and a stranger's.
struct Keys {
    dir: PathBuf,
    element: KeyPair,
    friend: KeyPair,
    stranger: KeyPair,
}

impl Keys {
    fn new(tag: &str) -> Keys {
        let dir = std::env::temp_dir().join(format!("zmq-curve-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let element = KeyPair::generate().unwrap();
        let friend = KeyPair::generate().unwrap();
        let stranger = KeyPair::generate().unwrap();
        element.write(&dir, "element").unwrap();
        friend.write(&dir.join("allowed"), "friend").unwrap();
        stranger.write(&dir, "stranger").unwrap();
        Keys {
            dir,
            element,
            friend,
            stranger,
        }
    }

    fn element_secret(&self) -> String {
        self.dir.join("element.key_secret").display().to_string()
    }

    fn allowed(&self) -> String {
        self.dir.join("allowed").display().to_string()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A socket of `kind`, a CURVE client with `keys` when given, connected to `ep`.
fn peer(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    keys: Option<(&KeyPair, &str)>,
    ep: &str,
) -> zmq::Socket {
    let s = ctx.socket(kind).unwrap();
    s.set_linger(0).unwrap();
    if let Some((k, server)) = keys {
        make_client(&s, k, server).unwrap();
    }
    if kind == zmq::SUB {
        s.set_subscribe(b"").unwrap();
    }
    s.connect(ep).unwrap();
    s
}

/// All warnings on `bus` within `wait`.
fn warnings(bus: &gst::Bus, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    while let Some(w) = next_warning(bus, deadline.saturating_duration_since(Instant::now())) {
        out.push(w);
    }
    out
}

fn wait_refused(element: &gst::Element, n: u64) {
    let deadline = Instant::now() + T;
    while stats_u64(element, "refused") < n {
        assert!(
            Instant::now() < deadline,
            "refused {} < {n}",
            stats_u64(element, "refused")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_sink_publishes_only_to_allowed_keys() {
    if !curve_available() {
        eprintln!("libzmq without CURVE: skipped");
        return;
    }
    init();
    let keys = Keys::new("sink");
    let sink = gst::ElementFactory::make("zmqmsgpacksink")
        .property("sync", false)
        .property("endpoint", "tcp://127.0.0.1:*")
        // Room for the 20 frames below on the friend's way, through the handshake.
        .property("send-hwm", 100)
        .property("curve-key", keys.element_secret())
        .property("curve-allow", keys.allowed())
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    sink.set_bus(Some(&bus));
    let mut h = gst_check::Harness::with_element(&sink, Some("sink"), None);
    h.set_src_caps_str("image/jpeg");
    let ep = sink.property::<Option<String>>("last-endpoint").unwrap();

    let ctx = zmq::Context::new();
    let server = keys.element.public.as_str();
    let friend = peer(&ctx, zmq::SUB, Some((&keys.friend, server)), &ep);
    let stranger = peer(&ctx, zmq::SUB, Some((&keys.stranger, server)), &ep);
    let plain = peer(&ctx, zmq::SUB, None, &ep);

    // Frames until the friend's subscription is in; then 20 more it must all get.
    let jpeg = make_jpeg(16, 16, 0);
    let deadline = Instant::now() + T;
    loop {
        h.push(jpeg_buffer(&jpeg, None, None)).unwrap();
        if recv_timeout(&friend, Duration::from_millis(50)).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the allowed subscriber got nothing"
        );
    }
    while recv_timeout(&friend, Duration::from_millis(100)).is_some() {}
    for i in 0..20 {
        h.push(jpeg_buffer(&jpeg, Some(100 + i), None)).unwrap();
    }
    for i in 0..20 {
        let msg = recv_timeout(&friend, T).expect("a frame for the allowed key");
        assert_eq!(protocol::decode(&msg).unwrap()[0].index, 100 + i);
    }
    assert_eq!(recv_timeout(&stranger, Duration::from_millis(300)), None);
    assert_eq!(recv_timeout(&plain, Duration::from_millis(300)), None);

    wait_refused(&sink, 2);
    let w = warnings(&bus, Duration::from_secs(2)).join("\n");
    assert!(
        w.contains(&keys.stranger.public) && w.contains("not in curve-allow"),
        "{w}"
    );
    assert!(w.contains("plain-text peer"), "{w}");
    assert!(!w.contains(&keys.friend.public), "{w}");
}

#[test]
fn the_source_takes_frames_only_from_allowed_keys_and_survives_their_bad_frames() {
    if !curve_available() {
        eprintln!("libzmq without CURVE: skipped");
        return;
    }
    let keys = Keys::new("src");
    let (mut h, src, bus, ep) = bound_src(&[
        ("curve-key", &keys.element_secret()),
        ("curve-allow", &keys.allowed()),
    ]);
    let ctx = zmq::Context::new();
    let server = keys.element.public.as_str();
    let stranger = peer(&ctx, zmq::PUSH, Some((&keys.stranger, server)), &ep);
    let plain = peer(&ctx, zmq::PUSH, None, &ep);
    let friend = peer(&ctx, zmq::PUSH, Some((&keys.friend, server)), &ep);
    let good = make_jpeg(32, 24, 1);
    for i in 0..5 {
        // The strangers' messages wait in their own queues: no connection takes them.
        stranger
            .send(
                protocol::encode_frame(unix_now_ms(), 900 + i, &good),
                zmq::DONTWAIT,
            )
            .ok();
        plain
            .send(
                protocol::encode_frame(unix_now_ms(), 800 + i, &good),
                zmq::DONTWAIT,
            )
            .ok();
    }
    // From the friend: good frames with a corrupted one in the middle.
    for i in 0..10u64 {
        let jpeg = if i == 4 {
            corrupt_huffman(&good)
        } else {
            good.clone()
        };
        friend
            .send(protocol::encode_frame(unix_now_ms(), i, &jpeg), 0)
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 9 {
        let b = pull_timeout(&mut h, T).expect("a frame from the allowed key");
        got.push(b.offset());
    }
    assert_eq!(got, vec![0, 1, 2, 3, 5, 6, 7, 8, 9]);
    assert!(pull_timeout(&mut h, Duration::from_millis(500)).is_none());
    assert_eq!(stats_u64(&src, "dropped-not-jpeg"), 1);
    wait_refused(&src, 2);
    let w = warnings(&bus, Duration::from_secs(2)).join("\n");
    assert!(w.contains(&keys.stranger.public), "{w}");
    assert!(w.contains("plain-text peer"), "{w}");
}

#[test]
fn curve_settings_mistakes_name_the_property() {
    if !curve_available() {
        eprintln!("libzmq without CURVE: skipped");
        return;
    }
    init();
    let keys = Keys::new("mistakes");
    // Element, properties, what the error must say.
    type Case = (&'static str, Vec<(&'static str, String)>, &'static str);
    let cases: [Case; 4] = [
        (
            "zmqmsgpacksink",
            vec![("curve-key", keys.element_secret())],
            "needs curve-allow",
        ),
        (
            "zmqmsgpacksrc",
            vec![("curve-key", keys.element_secret())],
            "needs curve-server-key",
        ),
        (
            "zmqdispatchsink",
            vec![
                ("curve-key", "/nonexistent/x.key_secret".into()),
                ("curve-allow", keys.allowed()),
            ],
            "curve-key: cannot read",
        ),
        (
            "zmqworkersrc",
            vec![("curve-server-key", "not-a-key".into())],
            "curve-server-key:",
        ),
    ];
    for (factory, props, expect) in cases {
        let e = gst::ElementFactory::make(factory)
            .property("endpoint", "tcp://127.0.0.1:*")
            .build()
            .unwrap();
        for (k, v) in &props {
            e.set_property(k, v);
        }
        let bus = gst::Bus::new();
        e.set_bus(Some(&bus));
        assert!(
            e.set_state(gst::State::Paused).is_err(),
            "{factory} started"
        );
        let msg = bus
            .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
            .expect("an error message");
        let gst::MessageView::Error(err) = msg.view() else {
            unreachable!()
        };
        let text = err.error().to_string();
        assert!(text.contains(expect), "{factory}: {text}");
        e.set_state(gst::State::Null).unwrap();
    }
}
