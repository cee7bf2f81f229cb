// SPDX-License-Identifier: MPL-2.0
//! zmqmsgpacksink to zmqmsgpacksrc over PUSH/PULL on 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;
use gst::prelude::*;
use i2i_core::protocol;

#[test]
fn a_thousand_frames_keep_index_timestamp_and_bytes() {
    init();
    const N: u64 = 1000;
    let src = gst::ElementFactory::make("zmqmsgpacksrc")
        .property_from_str("socket-type", "pull")
        .property("bind", true)
        .property("endpoint", "tcp://127.0.0.1:*")
        .build()
        .unwrap();
    let mut rx = gst_check::Harness::with_element(&src, None, Some("src"));
    rx.play();
    let ep = src.property::<Option<String>>("last-endpoint").unwrap();

    // A few real JPEGs of different sizes, taken in turn.
    let jpegs: Vec<Vec<u8>> = (0..7)
        .map(|i| make_jpeg(16 + 8 * i, 16 + 4 * i, i as u32))
        .collect();
    let base_ns = 1_700_000_000_000_000_000u64;
    let sender = {
        let jpegs = jpegs.clone();
        std::thread::spawn(move || {
            let sink = gst::ElementFactory::make("zmqmsgpacksink")
                .property_from_str("socket-type", "push")
                .property("bind", false)
                .property("endpoint", &ep)
                .property("sync", false)
                .build()
                .unwrap();
            let mut tx = gst_check::Harness::with_element(&sink, Some("sink"), None);
            tx.set_src_caps_str("image/jpeg");
            for i in 0..N {
                // Offsets out of step with the count, timestamps 33 ms apart.
                let b = jpeg_buffer(
                    &jpegs[(i % 7) as usize],
                    Some(5000 + i * 2),
                    Some(base_ns + i * 33_000_000),
                );
                tx.push(b).unwrap();
            }
            let stats = sink.property::<gst::Structure>("stats");
            assert_eq!(stats.get::<u64>("frames").unwrap(), N);
            // Stop (closing the socket) only after everything went out.
            tx
        })
    };

    for i in 0..N {
        let b = pull_timeout(&mut rx, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("frame {i} did not arrive"));
        assert_eq!(b.offset(), 5000 + i * 2, "frame {i}: index");
        assert_eq!(
            unix_meta_ns(&b),
            Some(base_ns + i * 33_000_000),
            "frame {i}: timestamp"
        );
        let data = b.map_readable().unwrap();
        assert_eq!(
            data.as_slice(),
            jpegs[(i % 7) as usize].as_slice(),
            "frame {i}: bytes"
        );
    }
    let _tx = sender.join().unwrap();
    assert_eq!(
        src.property::<gst::Structure>("stats")
            .get::<u64>("frames")
            .unwrap(),
        N
    );
    assert!(rx.try_pull().is_none());
}

#[test]
fn the_original_timestamp_survives_a_relay() {
    init();
    let ctx = zmq::Context::new();
    let (out, out_ep) = bound_pull(&ctx);
    // Relay: receive on one port, send on to the next, as a worker machine would.
    let relay = gst::parse::launch(&format!(
        "zmqmsgpacksrc name=rx socket-type=pull bind=true endpoint=tcp://127.0.0.1:* \
         ! zmqmsgpacksink socket-type=push bind=false endpoint={out_ep} sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    relay.set_state(gst::State::Playing).unwrap();
    let in_ep = relay
        .by_name("rx")
        .unwrap()
        .property::<Option<String>>("last-endpoint")
        .unwrap();
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.set_linger(0).unwrap();
    push.connect(&in_ep).unwrap();
    let jpeg = make_jpeg(24, 16, 3);
    let captured_ms = unix_now_ms() - 1234;
    push.send(protocol::encode_frame(captured_ms, 77, &jpeg), 0)
        .unwrap();
    let msg = recv_timeout(&out, Duration::from_secs(5)).expect("relayed frame");
    relay.set_state(gst::State::Null).unwrap();
    let frames = protocol::decode(&msg).unwrap();
    assert_eq!(frames[0].timestamp_ms, captured_ms);
    assert_eq!(frames[0].index, 77);
    assert_eq!(
        frames[0].jpeg,
        protocol::Payload::Bytes(std::borrow::Cow::Borrowed(&jpeg[..]))
    );
}

#[test]
fn the_index_survives_a_decoder_and_an_encoder() {
    init();
    let ctx = zmq::Context::new();
    let (out, out_ep) = bound_pull(&ctx);
    // jpegdec and jpegenc set their output offsets to "none": only the frame index meta
    // that zmqmsgpacksrc attaches carries the index through them.
    let relay = gst::parse::launch(&format!(
        "zmqmsgpacksrc name=rx socket-type=pull bind=true endpoint=tcp://127.0.0.1:* \
         ! jpegdec ! jpegenc \
         ! zmqmsgpacksink socket-type=push bind=false endpoint={out_ep} sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    relay.set_state(gst::State::Playing).unwrap();
    let in_ep = relay
        .by_name("rx")
        .unwrap()
        .property::<Option<String>>("last-endpoint")
        .unwrap();
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.set_linger(0).unwrap();
    push.connect(&in_ep).unwrap();
    let jpeg = make_jpeg(32, 24, 5);
    let captured_ms = unix_now_ms() - 500;
    let indices = [1000u64, 1001, 1005];
    for (k, &index) in indices.iter().enumerate() {
        push.send(
            protocol::encode_frame(captured_ms + k as i64, index, &jpeg),
            0,
        )
        .unwrap();
    }
    let mut received = Vec::new();
    for k in 0..indices.len() {
        let msg = recv_timeout(&out, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("frame {k} did not come through the decoder"));
        let frames = protocol::decode(&msg).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].timestamp_ms, captured_ms + k as i64, "frame {k}");
        received.push(frames[0].index);
    }
    relay.set_state(gst::State::Null).unwrap();
    assert_eq!(received, indices);
}
