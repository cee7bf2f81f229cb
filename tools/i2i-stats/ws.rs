// SPDX-License-Identifier: MPL-2.0
//! `ws://` endpoints: reads the output frames that `i2i-web` sends to browsers (binary
//! WebSocket messages holding msgpack `[timestamp_ms, index, jpg]`, the elements' own
//! message), so a stream can be judged from wherever a browser would watch it.
//!
//! A reader thread passes each binary message to the receive loop over an in-process
//! ZeroMQ socket, so the loop, its statistics and its stop conditions are the same for
//! every endpoint. The thread waits for the loop's subscription before it connects, so no
//! frame is lost to the subscription's set-up, and reconnects (every second, saying so
//! once) while nobody answers, as a ZeroMQ connection would.

use std::net::TcpStream;
use std::time::Duration;

use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::args::Options;
use i2i_core::zmq_endpoint::ReceiveSocketType;

const RETRY: Duration = Duration::from_secs(1);

/// For a `ws://` endpoint, starts the reader and returns the in-process endpoint the
/// receive loop connects to; any other endpoint is returned as it is.
pub fn attach(ctx: &zmq::Context, opts: &Options) -> Result<String, String> {
    let url = opts.endpoint.as_str();
    if url.starts_with("wss://") {
        return Err(format!(
            "{url}: wss:// is not supported; read the stream on the i2i-web machine (ws://localhost:8765/ws) or through an SSH tunnel"
        ));
    }
    if !url.starts_with("ws://") {
        return Ok(opts.endpoint.clone());
    }
    if opts.bind || opts.socket_type != ReceiveSocketType::Sub {
        return Err(format!(
            "{url}: a WebSocket endpoint is always connected to; drop --bind and --socket-type"
        ));
    }
    let url = with_output_binary(url);
    let inproc = "inproc://i2i-stats-ws".to_string();
    let relay = ctx
        .socket(zmq::XPUB)
        .map_err(|e| format!("cannot create the in-process socket: {e}"))?;
    relay.set_sndhwm(1000).ok();
    relay
        .bind(&inproc)
        .map_err(|e| format!("cannot bind {inproc}: {e}"))?;
    std::thread::Builder::new()
        .name("i2i-stats-ws".into())
        .spawn(move || read(relay, &url))
        .map_err(|e| format!("cannot start the WebSocket reader: {e}"))?;
    Ok(inproc)
}

/// i2i-web sends output frames only to clients that ask (`output=binary`), and relayed
/// producer messages to everyone unless `relay=0`.
pub fn with_output_binary(url: &str) -> String {
    if url.contains("output=") {
        return url.to_string();
    }
    let (base, frag) = url.split_once('#').unwrap_or((url, ""));
    let mut out = base.to_string();
    if !out.contains('?') {
        // ws://host:8765 and ws://host:8765/ both mean the seed-001 endpoint at /.
        let after_scheme = &out["ws://".len()..];
        if !after_scheme.contains('/') {
            out.push('/');
        }
        out.push('?');
    } else if !out.ends_with('?') && !out.ends_with('&') {
        out.push('&');
    }
    out.push_str("output=binary&relay=0");
    if !frag.is_empty() {
        out.push('#');
        out.push_str(frag);
    }
    out
}

fn read(relay: zmq::Socket, url: &str) {
    // The loop's SUB socket subscribes once it has connected.
    if relay.recv_bytes(0).is_err() {
        return;
    }
    let mut said = false;
    loop {
        match tungstenite::connect(url) {
            Ok((socket, _)) => {
                said = false;
                if let Err(e) = forward(socket, &relay) {
                    eprintln!("\ni2i-stats: {url}: {e}; reconnecting");
                }
            }
            Err(e) => {
                if !said {
                    eprintln!("i2i-stats: {url}: cannot connect ({e}); retrying every second");
                    said = true;
                }
            }
        }
        std::thread::sleep(RETRY);
    }
}

fn forward(
    mut socket: WebSocket<MaybeTlsStream<TcpStream>>,
    relay: &zmq::Socket,
) -> Result<(), String> {
    loop {
        match socket.read() {
            // Frames; a full in-process queue (the loop stopped) drops them.
            Ok(Message::Binary(b)) => {
                let _ = relay.send(&b[..], zmq::DONTWAIT);
            }
            // i2i-web's once-a-second counters and answers: not frames.
            Ok(Message::Text(_))
            | Ok(Message::Ping(_))
            | Ok(Message::Pong(_))
            | Ok(Message::Frame(_)) => {}
            Ok(Message::Close(c)) => {
                return Err(match c {
                    Some(c) => format!("closed by the server ({}: {})", c.code, c.reason),
                    None => "closed by the server".into(),
                });
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_output_binary;

    #[test]
    fn asks_for_binary_frames() {
        assert_eq!(
            with_output_binary("ws://h:8765"),
            "ws://h:8765/?output=binary&relay=0"
        );
        assert_eq!(
            with_output_binary("ws://h:8765/ws"),
            "ws://h:8765/ws?output=binary&relay=0"
        );
        assert_eq!(
            with_output_binary("ws://h:8765/ws?token=x"),
            "ws://h:8765/ws?token=x&output=binary&relay=0"
        );
        assert_eq!(
            with_output_binary("ws://h/ws?output=json"),
            "ws://h/ws?output=json"
        );
    }
}
