// SPDX-License-Identifier: MPL-2.0
//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gst::prelude::*;
use i2i_core::jpeg::{Encoder, PackedFormat, Plane};

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstzmqsink::plugin_register_static().expect("register the zmqsink plugin");
    });
}

pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A smooth RGB test picture (a gradient with a diagonal), different for each `seed`.
pub fn rgb_picture(w: usize, h: usize, seed: u32) -> Vec<u8> {
    let mut v = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let p = &mut v[(y * w + x) * 3..(y * w + x) * 3 + 3];
            p[0] = ((x * 255) / w.max(1)) as u8;
            p[1] = ((y * 255) / h.max(1)) as u8;
            p[2] = (((x + y) * 128 / (w + h)) as u32 + seed * 37 % 128) as u8;
        }
    }
    v
}

/// A real JPEG of `w` x `h`, different for each `seed`.
pub fn make_jpeg(w: usize, h: usize, seed: u32) -> Vec<u8> {
    let img = rgb_picture(w, h, seed);
    let mut enc = Encoder::new(80).unwrap();
    enc.encode_packed(
        PackedFormat::Rgb,
        Plane {
            data: &img,
            stride: w * 3,
        },
        w,
        h,
    )
    .unwrap()
    .to_vec()
}

pub fn jpeg_buffer(data: &[u8], offset: Option<u64>, unix_ns: Option<u64>) -> gst::Buffer {
    let mut buffer = gst::Buffer::from_slice(data.to_vec());
    {
        let b = buffer.get_mut().unwrap();
        if let Some(o) = offset {
            b.set_offset(o);
        }
        if let Some(ns) = unix_ns {
            gst::ReferenceTimestampMeta::add(
                b,
                &gst::Caps::new_empty_simple("timestamp/x-unix"),
                gst::ClockTime::from_nseconds(ns),
                gst::ClockTime::NONE,
            );
        }
    }
    buffer
}

/// The `timestamp/x-unix` meta of a buffer, in ns.
pub fn unix_meta_ns(buffer: &gst::BufferRef) -> Option<u64> {
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|m| {
            m.reference()
                .structure(0)
                .is_some_and(|s| s.name() == "timestamp/x-unix")
        })
        .map(|m| m.timestamp().nseconds())
}

/// Pulls a buffer from a harness, waiting at most `timeout`.
pub fn pull_timeout(h: &mut gst_check::Harness, timeout: Duration) -> Option<gst::Buffer> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(b) = h.try_pull() {
            return Some(b);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Receives one message, waiting at most `timeout`.
pub fn recv_timeout(socket: &zmq::Socket, timeout: Duration) -> Option<Vec<u8>> {
    if socket.poll(zmq::POLLIN, timeout.as_millis() as i64).ok()? == 0 {
        return None;
    }
    socket.recv_bytes(zmq::DONTWAIT).ok()
}

/// A PULL socket bound on an ephemeral loopback port, and its endpoint.
pub fn bound_pull(ctx: &zmq::Context) -> (zmq::Socket, String) {
    let s = ctx.socket(zmq::PULL).unwrap();
    s.set_linger(0).unwrap();
    s.bind("tcp://127.0.0.1:*").unwrap();
    let ep = s.get_last_endpoint().unwrap().unwrap();
    (s, ep)
}

/// Waits for a warning on `bus`; returns its text (message and debug).
pub fn next_warning(bus: &gst::Bus, timeout: Duration) -> Option<String> {
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
        &[gst::MessageType::Warning],
    )?;
    match msg.view() {
        gst::MessageView::Warning(w) => Some(format!(
            "{} ({})",
            w.error(),
            w.debug().map(|d| d.to_string()).unwrap_or_default()
        )),
        _ => None,
    }
}

pub fn stats_u64(element: &gst::Element, field: &str) -> u64 {
    let s = element.property::<gst::Structure>("stats");
    s.get::<u64>(field)
        .unwrap_or_else(|e| panic!("stats field {field}: {e} in {s}"))
}

/// `jpeg` with its Huffman table counts overwritten: the header no longer decodes
/// ("Bogus Huffman table definition"), as a JPEG with 4 bytes changed in transit.
pub fn corrupt_huffman(jpeg: &[u8]) -> Vec<u8> {
    let mut bad = jpeg.to_vec();
    let dht = bad
        .windows(2)
        .position(|w| w == [0xff, 0xc4])
        .expect("a DHT segment");
    // Marker (2), length (2), class/id (1), then 16 code counts: make 4 of them 0xff.
    for b in &mut bad[dht + 5..dht + 9] {
        *b = 0xff;
    }
    bad
}

/// `jpeg` with the frame size in its SOF header replaced by `w` x `h`.
pub fn with_size(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let sof = out
        .windows(2)
        .position(|p| p == [0xff, 0xc0] || p == [0xff, 0xc2])
        .expect("a SOF segment");
    // Marker (2), length (2), precision (1), height (2), width (2).
    out[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    out
}

/// A source bound on an ephemeral port (PULL), started, its harness, bus and endpoint.
pub fn bound_src(props: &[(&str, &str)]) -> (gst_check::Harness, gst::Element, gst::Bus, String) {
    init();
    let src = gst::ElementFactory::make("zmqmsgpacksrc")
        .property_from_str("socket-type", "pull")
        .property("bind", true)
        .property("endpoint", "tcp://127.0.0.1:*")
        .build()
        .unwrap();
    for (k, v) in props {
        src.set_property_from_str(k, v);
    }
    let bus = gst::Bus::new();
    src.set_bus(Some(&bus));
    let mut h = gst_check::Harness::with_element(&src, None, Some("src"));
    h.play();
    let ep = src
        .property::<Option<String>>("last-endpoint")
        .expect("bound");
    (h, src, bus, ep)
}

/// A PUSH socket connected to `ep`.
pub fn pusher(ctx: &zmq::Context, ep: &str) -> zmq::Socket {
    let s = ctx.socket(zmq::PUSH).unwrap();
    s.set_linger(0).unwrap();
    s.connect(ep).unwrap();
    s
}

/// A batch message naming one file by path.
pub fn batch_with_path(path: &str, index: u64) -> Vec<u8> {
    let mut m = Vec::new();
    rmp::encode::write_map_len(&mut m, 4).unwrap();
    rmp::encode::write_str(&mut m, "timestamp").unwrap();
    rmp::encode::write_sint(&mut m, 1).unwrap();
    rmp::encode::write_str(&mut m, "index").unwrap();
    rmp::encode::write_uint(&mut m, index).unwrap();
    rmp::encode::write_str(&mut m, "frames").unwrap();
    rmp::encode::write_array_len(&mut m, 1).unwrap();
    rmp::encode::write_str(&mut m, path).unwrap();
    rmp::encode::write_str(&mut m, "indices").unwrap();
    rmp::encode::write_array_len(&mut m, 1).unwrap();
    rmp::encode::write_uint(&mut m, index).unwrap();
    m
}
