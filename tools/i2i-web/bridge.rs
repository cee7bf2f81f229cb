// SPDX-License-Identifier: MPL-2.0
//! The ZeroMQ side: received images out on a PUB socket, a pipeline's output in from a SUB
//! socket. Each socket lives in its own thread (zmq sockets are blocking and not `Sync`);
//! the web side never waits on them: images are handed over through a bounded queue that
//! drops (and counts) when full, and output frames go into a `watch` channel that holds
//! only the newest frame, so every viewer takes frames at its own pace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Bytes;
use i2i_core::protocol::{self, Payload};
use tokio::sync::watch;

use crate::stats::Stats;

/// Images waiting for the publisher thread; more are dropped and counted.
pub const PUBLISH_QUEUE: usize = 16;
/// Frames ZeroMQ queues per subscriber of the PUB socket before it drops.
const SEND_HWM: i32 = 10;
const POLL_MS: i64 = 100;

/// One output frame of the pipeline, shared by every viewer.
#[derive(Debug)]
pub struct OutFrame {
    /// Counts frames received from the pipeline; a viewer that sees a gap lost frames.
    pub seq: u64,
    pub timestamp_ms: i64,
    pub index: u64,
    /// The frame as the elements carry it (msgpack `[timestamp_ms, index, jpg]`): the
    /// page's binary WebSocket message.
    pub message: Bytes,
    /// The JPEG alone (a slice of `message`): MJPEG and seed-001 JSON.
    pub jpeg: Bytes,
}

/// An image for the publisher thread.
pub struct Outgoing {
    pub timestamp_ms: i64,
    pub jpeg: Vec<u8>,
}

pub struct Bridge {
    pub publish: mpsc::SyncSender<Outgoing>,
    /// The PUB socket's address after binding (a `*` port resolved).
    pub publish_endpoint: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Bridge {
    pub fn start(
        ctx: &zmq::Context,
        publish: &str,
        subscribe: &str,
        output: watch::Sender<Option<Arc<OutFrame>>>,
        stats: Arc<Stats>,
        max_frame: usize,
    ) -> Result<Bridge, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let pub_sock = ctx
            .socket(zmq::PUB)
            .map_err(|e| format!("cannot create the PUB socket: {e}"))?;
        pub_sock.set_sndhwm(SEND_HWM).ok();
        pub_sock.set_linger(200).ok();
        pub_sock.bind(publish).map_err(|e| {
            format!("--publish {publish}: cannot bind: {e} (is another program using the port?)")
        })?;
        let publish_endpoint = pub_sock
            .get_last_endpoint()
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| publish.to_string());
        let sub_sock = ctx
            .socket(zmq::SUB)
            .map_err(|e| format!("cannot create the SUB socket: {e}"))?;
        sub_sock.set_subscribe(b"").ok();
        sub_sock.set_rcvhwm(4).ok();
        sub_sock.set_linger(0).ok();
        sub_sock
            .connect(subscribe)
            .map_err(|e| format!("--subscribe {subscribe}: cannot connect: {e}"))?;

        let (tx, rx) = mpsc::sync_channel::<Outgoing>(PUBLISH_QUEUE);
        let st = stats.clone();
        let stop1 = stop.clone();
        let publisher = std::thread::Builder::new()
            .name("i2i-web-publish".into())
            .spawn(move || {
                let mut index = 0u64;
                let mut msg = Vec::new();
                // Ends on stop, or when every sender is gone.
                while !stop1.load(Ordering::Relaxed) {
                    let img = match rx.recv_timeout(Duration::from_millis(POLL_MS as u64)) {
                        Ok(img) => img,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    protocol::encode_frame_into(&mut msg, img.timestamp_ms, index, &img.jpeg);
                    index += 1;
                    match pub_sock.send(&msg[..], zmq::DONTWAIT) {
                        Ok(()) => st.add(&st.published, 1),
                        Err(_) => st.add(&st.dropped_publish, 1),
                    }
                }
            })
            .map_err(|e| format!("cannot start the publisher thread: {e}"))?;

        let stop2 = stop.clone();
        let subscriber = std::thread::Builder::new()
            .name("i2i-web-subscribe".into())
            .spawn(move || {
                let mut seq = 0u64;
                let mut warned = 0u32;
                while !stop2.load(Ordering::Relaxed) {
                    if sub_sock.poll(zmq::POLLIN, POLL_MS).unwrap_or(0) == 0 {
                        continue;
                    }
                    let Ok(msg) = sub_sock.recv_bytes(0) else {
                        continue;
                    };
                    match decode_output(&msg, seq + 1, max_frame) {
                        Ok(frame) => {
                            seq += 1;
                            stats.add(&stats.output_frames, 1);
                            output.send_replace(Some(Arc::new(frame)));
                        }
                        Err(e) => {
                            stats.add(&stats.output_malformed, 1);
                            if warned < 5 {
                                warned += 1;
                                eprintln!("i2i-web: output stream: {e} (message ignored)");
                            }
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the subscriber thread: {e}"))?;
        Ok(Bridge {
            publish: tx,
            publish_endpoint,
            stop,
            threads: vec![publisher, subscriber],
        })
    }

    /// Stops both threads (open connections may still hold clones of `publish`).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.publish);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One output message into a frame; a batch message gives its first frame. A JPEG over
/// `max_frame` bytes is refused: every WebSocket client's write buffer has room for one
/// message of --max-message-size and no more.
pub fn decode_output(msg: &[u8], seq: u64, max_frame: usize) -> Result<OutFrame, String> {
    let frames = protocol::decode(msg).map_err(|e| e.to_string())?;
    let Some(first) = frames.first() else {
        return Err("a message without frames".into());
    };
    let Payload::Bytes(jpeg) = &first.jpeg else {
        return Err("a frame given as a file path".into());
    };
    if !protocol::looks_like_jpeg(jpeg) {
        return Err(format!("frame {}: not a JPEG", first.index));
    }
    if jpeg.len() > max_frame {
        return Err(format!(
            "frame {}: {} bytes, over the {max_frame} bytes an output frame may have (raise --max-message-size)",
            first.index,
            jpeg.len()
        ));
    }
    let message = Bytes::from(protocol::encode_frame(
        first.timestamp_ms,
        first.index,
        jpeg,
    ));
    let jpeg_len = jpeg.len();
    let jpeg = message.slice(message.len() - jpeg_len..);
    Ok(OutFrame {
        seq,
        timestamp_ms: first.timestamp_ms,
        index: first.index,
        message,
        jpeg,
    })
}
