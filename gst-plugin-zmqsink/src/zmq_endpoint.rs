// SPDX-License-Identifier: MPL-2.0
//! ZeroMQ endpoint set-up shared by the elements: bind or connect, read back the endpoint
//! ZeroMQ really used (the port it picked for `tcp://HOST:*`), and hints for the usual
//! bind/connect errors.

/// Endpoint examples for the hint of the transport elements (port 5557).
pub const STREAM_EXAMPLES: &str = "tcp://HOST:5557, tcp://*:5557 or ipc:///path";
/// Endpoint examples for the hint of the scale-out elements (port 5555).
pub const SCALEOUT_EXAMPLES: &str = "tcp://HOST:5555, tcp://*:5555 or ipc:///path";

/// "bind" or "connect to", for error messages.
pub fn verb(bind: bool) -> &'static str {
    if bind { "bind" } else { "connect to" }
}

/// "bound" or "connected", for log lines.
pub fn done_verb(bind: bool) -> &'static str {
    if bind { "bound" } else { "connected" }
}

/// Binds or connects `socket` to `endpoint`; returns the endpoint ZeroMQ reports as its
/// last one (with the port it picked for `:*`), or `endpoint` when it cannot say.
pub fn bind_or_connect(
    socket: &zmq::Socket,
    endpoint: &str,
    bind: bool,
) -> Result<String, zmq::Error> {
    if bind {
        socket.bind(endpoint)?;
    } else {
        socket.connect(endpoint)?;
    }
    Ok(socket
        .get_last_endpoint()
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_else(|| endpoint.to_owned()))
}

/// Refuses an endpoint that ZeroMQ cannot take (it is passed on as a C string).
pub fn check_endpoint(endpoint: &str) -> Result<(), gst::ErrorMessage> {
    if endpoint.contains('\0') {
        return Err(gst::error_msg!(
            gst::ResourceError::Settings,
            ("Endpoint {endpoint:?} contains a NUL character")
        ));
    }
    Ok(())
}

/// The error for a failed socket set-up step (`what`: "create", "set linger on", ...) of a
/// `socket` ("PULL", "ROUTER", ...) socket, in the message users see.
pub fn socket_error(
    kind: gst::ResourceError,
    socket: &str,
    what: &str,
    e: zmq::Error,
) -> gst::ErrorMessage {
    gst::error_msg!(kind, ("Could not {what} the ZeroMQ {socket} socket: {e}"))
}

/// A hint for common ZeroMQ bind/connect errors (empty for the others), to append to the
/// error text; `examples` lists valid endpoints.
pub fn hint(e: zmq::Error, examples: &str) -> String {
    match e {
        zmq::Error::EADDRINUSE => {
            " (another program already uses this address: pick another port or stop it)".into()
        }
        zmq::Error::EINVAL | zmq::Error::EPROTONOSUPPORT => {
            format!(" (expected an endpoint like {examples})")
        }
        zmq::Error::EADDRNOTAVAIL | zmq::Error::ENODEV => {
            " (the address is not one of this machine's interfaces)".into()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_an_ephemeral_port_and_explains_failures() {
        let ctx = zmq::Context::new();
        let a = ctx.socket(zmq::PULL).unwrap();
        a.set_linger(0).unwrap();
        let bound = bind_or_connect(&a, "tcp://127.0.0.1:*", true).unwrap();
        assert!(bound.starts_with("tcp://127.0.0.1:"), "{bound}");
        assert!(!bound.ends_with(":*"), "{bound}");

        let b = ctx.socket(zmq::PULL).unwrap();
        b.set_linger(0).unwrap();
        let e = bind_or_connect(&b, &bound, true).unwrap_err();
        assert_eq!(e, zmq::Error::EADDRINUSE);
        assert!(hint(e, STREAM_EXAMPLES).contains("another program"));

        let e = bind_or_connect(&b, "nonsense", true).unwrap_err();
        assert_eq!(
            hint(e, SCALEOUT_EXAMPLES),
            " (expected an endpoint like tcp://HOST:5555, tcp://*:5555 or ipc:///path)"
        );
        assert_eq!(hint(zmq::Error::EAGAIN, STREAM_EXAMPLES), "");

        let c = ctx.socket(zmq::PUSH).unwrap();
        c.set_linger(0).unwrap();
        assert_eq!(bind_or_connect(&c, &bound, false).unwrap(), bound);
    }
}
