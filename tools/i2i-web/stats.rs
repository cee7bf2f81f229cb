// SPDX-License-Identifier: MPL-2.0
//! Counters of everything i2i-web received, sent, refused and dropped, shown on the page
//! (each second over the WebSocket) and at `/api/stats`, so no drop goes unseen.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        #[derive(Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
        }

        impl Stats {
            pub fn to_json(&self) -> serde_json::Value {
                let mut m = serde_json::Map::new();
                $(m.insert(stringify!($name).replace('_', "-"), self.$name.load(Ordering::Relaxed).into());)*
                serde_json::Value::Object(m)
            }
        }
    };
}

counters! {
    clients: "WebSocket clients connected now.",
    connections: "WebSocket connections since the start.",
    images_received: "Images received (JSON or binary) and accepted.",
    acks: "Acknowledgements sent to seed-001 producers.",
    relayed: "Image messages relayed to other clients.",
    dropped_relay: "Relayed messages dropped because a receiver was behind.",
    published: "Images published on ZeroMQ.",
    dropped_publish: "Images dropped because the publisher was behind.",
    rejected: "Messages refused as bad input (each answered with an error).",
    dropped_flood: "Messages (pings included) dropped because a client sent faster than --max-rate.",
    dropped_oversize: "Images refused because their header declares more than --max-pixels.",
    dropped_pixel_rate: "Images dropped because their client was over --max-pixel-rate.",
    output_frames: "Frames received from the pipeline.",
    output_malformed: "Messages from the pipeline that were not frames, or over --max-message-size.",
    dropped_viewer: "Output frames a slow viewer skipped (the newest is always sent).",
    mjpeg_viewers: "MJPEG viewers connected now.",
    controls: "Control messages passed to the settings holder.",
    control_errors: "Control messages refused (locally or by the holder) or unanswered.",
    controls_not_sent: "Control messages not sent because the holder did not answer (answered at once, never sent later).",
    refused_origin: "Requests refused for their Origin.",
    refused_token: "Requests refused for a missing or wrong token.",
    refused_host: "Requests refused for a Host that is not this machine's (DNS rebinding).",
    refused_connections: "Connections refused past --max-connections (answered 503).",
    closed_idle: "Connections closed after --idle-timeout without a byte (HTTP) or a message or pong (WebSocket).",
    closed_slow: "Connections closed because the peer took no data for --write-timeout, or a message took longer than --message-timeout.",
    closed_protocol: "WebSocket connections closed for a protocol error, invalid UTF-8 or a message over --max-message-size.",
}

impl Stats {
    pub fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}
