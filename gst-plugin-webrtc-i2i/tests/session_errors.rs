// SPDX-License-Identifier: MPL-2.0
//! WebRTC failing on one session ends that session, not the pipeline.
//!
//! A real pipeline with `i2iwhipsrc` (and one with `i2iwhepsink`) answers offers over HTTP on
//! 127.0.0.1; then a session's own webrtcbin posts an error, as it does when it cannot answer
//! an offer or its transport fails. `i2iwhipsrc` must turn it into a warning, end that session
//! (its resource is gone: DELETE answers 404), keep the pipeline free of errors and answer the
//! next offer. webrtcsink runs each viewer in a pipeline of its own and ends a failed one
//! itself: `i2iwhepsink`'s endpoint must follow (404 for it) while the other viewer stays.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Once;
use std::time::{Duration, Instant};

use gst::prelude::*;

fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        gst::init().unwrap();
        gstwebrtci2i::plugin_register_static().expect("register the webrtci2i plugin");
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; the status and the whole response.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

/// A browser-like offer with no peer behind it: webrtcbin answers it.
fn offer(direction: &str) -> String {
    let fingerprint = (0..32)
        .map(|i| format!("{:02X}", (i * 7 + 3) % 256))
        .collect::<Vec<_>>()
        .join(":");
    format!(
        "v=0\r\no=- 42 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
a=ice-ufrag:abcd1234\r\na=ice-pwd:abcdefghijklmnopqrstuvwxyz\r\n\
a=fingerprint:sha-256 {fingerprint}\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\n\
a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na={direction}\r\n"
    )
}

/// The webrtcbins inside `pipeline` (i2iwhipsrc keeps the publisher's there).
fn webrtcbins(pipeline: &gst::Pipeline) -> Vec<gst::Element> {
    pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.factory().is_some_and(|f| f.name() == "webrtcbin"))
        .collect()
}

/// Waits for a warning containing `text`; panics on any error message.
fn expect_warning(pipeline: &gst::Pipeline, text: &str) -> String {
    let bus = pipeline.bus().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Error(e) => panic!("the pipeline got an error: {e:?}"),
            gst::MessageView::Warning(w) if w.error().to_string().contains(text) => {
                return w.error().to_string();
            }
            _ => (),
        }
    }
    panic!("no warning with {text:?} within 30 s");
}

/// Starts `launch` (with `PORT` replaced by a free port) and waits for its endpoint.
fn start(launch: &str) -> (gst::Pipeline, u16) {
    init();
    let port = free_port();
    let pipeline = gst::parse::launch(&launch.replace("PORT", &port.to_string()))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the endpoint never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (pipeline, port)
}

/// The resource path of a 201 answer.
fn location(response: &str) -> String {
    response
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("a Location header")
        .trim()
        .to_string()
}

#[test]
fn a_failing_publisher_session_ends_and_the_next_is_taken() {
    let (pipeline, port) =
        start("i2iwhipsrc host-addr=http://127.0.0.1:PORT ! fakesink async=false");
    let (status, response) = http(port, "POST", "/whip/endpoint", &offer("sendonly")).unwrap();
    assert_eq!(status, 201, "{response}");
    let resource = location(&response);
    let webrtcbin = webrtcbins(&pipeline)
        .pop()
        .expect("the session's webrtcbin");
    gst::element_error!(
        webrtcbin,
        gst::StreamError::Failed,
        ["create-answer::Promise returned with no reply"]
    );
    let warning = expect_warning(&pipeline, "WebRTC failed");
    assert!(warning.contains("no reply"), "{warning}");
    // The session is gone (the warning follows its end), and the endpoint takes the next
    // publisher.
    let (status, response) = http(port, "DELETE", &resource, "").unwrap();
    assert_eq!(status, 404, "the failed session is still there: {response}");
    let (status, response) = http(port, "POST", "/whip/endpoint", &offer("sendonly")).unwrap();
    assert_eq!(status, 201, "{response}");
    assert_eq!(pipeline.current_state(), gst::State::Playing);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn a_failing_viewer_session_ends_and_the_others_stay() {
    let (pipeline, port) = start(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=15/1 \
         ! i2iwhepsink host-addr=http://127.0.0.1:PORT",
    );
    // Each viewer's webrtcbin, as webrtcsink announces it.
    let viewers = std::sync::Arc::new(std::sync::Mutex::new(Vec::<gst::Element>::new()));
    let sink = pipeline.by_name("whepserversink").expect("whepserversink");
    let seen = viewers.clone();
    sink.connect("consumer-added", false, move |args| {
        if let Some(webrtcbin) = args.get(2).and_then(|v| v.get::<gst::Element>().ok()) {
            seen.lock().unwrap().push(webrtcbin);
        }
        None
    });
    // The endpoint answers once frames flow (503 before).
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let (status, response) = http(port, "POST", "/whep/endpoint", &offer("recvonly")).unwrap();
        if status == 201 {
            break response;
        }
        assert!(Instant::now() < deadline, "no WHEP answer: {response}");
    };
    let (status, second) = http(port, "POST", "/whep/endpoint", &offer("recvonly")).unwrap();
    assert_eq!(status, 201, "{second}");
    let failing = viewers
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("a viewer's webrtcbin");
    gst::element_error!(failing, gst::StreamError::Failed, ["DTLS handshake failed"]);
    let (first, second) = (location(&first), location(&second));
    // webrtcsink ends that viewer; the endpoint follows (404), the other viewer stays (200).
    let deadline = Instant::now() + Duration::from_secs(20);
    let statuses = loop {
        let gone = [&first, &second]
            .map(|r| {
                http(port, "PATCH", r, "")
                    .map(|(s, _)| s)
                    .unwrap_or_default()
            })
            .to_vec();
        if gone.contains(&404) || Instant::now() > deadline {
            break gone;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // PATCH answers 405 for a live session, 404 for an ended one.
    assert!(
        statuses.contains(&404) && statuses.contains(&405),
        "{statuses:?}"
    );
    let bus = pipeline.bus().unwrap();
    while let Some(msg) = bus.pop() {
        assert!(
            !matches!(msg.view(), gst::MessageView::Error(_)),
            "the pipeline got an error: {msg:?}"
        );
    }
    assert_eq!(pipeline.current_state(), gst::State::Playing);
    pipeline.set_state(gst::State::Null).unwrap();
}
