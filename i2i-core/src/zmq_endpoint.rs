// SPDX-License-Identifier: MPL-2.0
//! ZeroMQ socket set-up shared by the ZeroMQ elements (the five frame elements and
//! `settingssrc`): [`open`] creates the context and the socket, sets the common options,
//! lets the element add its own, sets CURVE up ([`crate::curve::ElementCurve`]), binds or
//! connects, and reads back the endpoint ZeroMQ really used (the port it picked for
//! `tcp://HOST:*`); every failure is an error naming the step, the socket and the endpoint,
//! with a hint for the usual bind/connect mistakes. The plugins turn a [`SetupError`] into
//! their element error.

use std::fmt;

use crate::curve::{ElementCurve, Warn};

/// Endpoint examples for the hint of the transport elements (port 5557).
pub const STREAM_EXAMPLES: &str = "tcp://HOST:5557, tcp://*:5557 or ipc:///path";
/// Endpoint examples for the hint of the scale-out elements (port 5555).
pub const SCALEOUT_EXAMPLES: &str = "tcp://HOST:5555, tcp://*:5555 or ipc:///path";

/// The ZeroMQ pattern of a receiving socket: the `socket-type` of `zmqmsgpacksrc` and
/// `settingssrc` (the GStreamer enum type `GstI2iReceiveSocketType` with the `glib`
/// feature, see [`glib_enum`]), and `i2i-stats --socket-type`.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default)]
#[repr(u32)]
pub enum ReceiveSocketType {
    /// Subscribes to a publisher and gets every message.
    #[default]
    Sub = 0,
    /// Pulls from pushers; several pullers share the messages.
    Pull = 1,
}

impl ReceiveSocketType {
    /// "sub" or "pull".
    pub fn nick(self) -> &'static str {
        match self {
            ReceiveSocketType::Sub => "sub",
            ReceiveSocketType::Pull => "pull",
        }
    }

    /// The ZeroMQ socket type.
    pub fn zmq_type(self) -> zmq::SocketType {
        match self {
            ReceiveSocketType::Sub => zmq::SUB,
            ReceiveSocketType::Pull => zmq::PULL,
        }
    }
}

/// The options every element's socket has; `None` leaves ZeroMQ's default.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    pub endpoint: &'a str,
    pub bind: bool,
    pub linger_ms: i32,
    pub send_hwm: Option<i32>,
    pub rcv_hwm: Option<i32>,
    pub max_message_size: Option<i64>,
    /// The socket in messages: "pub", "PULL", "ROUTER", ...
    pub name: &'a str,
    /// What the socket is for, in the bind/connect error (", for the workers"), or "".
    pub purpose: &'a str,
    /// Valid endpoints, for the hint of a refused endpoint.
    pub examples: &'a str,
    /// Who connects to a binding element, in the CURVE warnings ("worker").
    pub peer: &'a str,
}

/// Why [`open`] failed, in the words users see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupError {
    /// A property is wrong (the endpoint, the CURVE keys): GStreamer's `Settings` error.
    Settings(String),
    /// The socket could not be made, bound or connected: `OpenRead` for sources,
    /// `OpenWrite` for sinks.
    Open(String),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Settings(t) | SetupError::Open(t) => f.write_str(t),
        }
    }
}

/// A socket set up by [`open`]. Field order is drop order: the socket closes before the
/// context terminates.
pub struct Opened {
    pub socket: zmq::Socket,
    pub context: zmq::Context,
    /// The endpoint bound or connected (with the port ZeroMQ picked for `:*`).
    pub endpoint: String,
}

/// A failed element-specific option: what was done ("subscribe", "set the identity of")
/// and the error.
pub type OptionError = (&'static str, zmq::Error);

/// Creates a `kind` socket in a new context with `options`, then `configure` (the
/// element's own options; its result `T` is returned along), CURVE from `curve` (its
/// warnings to `warn`; `own_monitor(&T)`: the element reads the socket monitor itself), and
/// binds or connects.
pub fn open<T>(
    kind: zmq::SocketType,
    options: &Options,
    warn: Warn,
    curve: &ElementCurve,
    configure: impl FnOnce(&zmq::Context, &mut zmq::Socket) -> Result<T, OptionError>,
    own_monitor: impl FnOnce(&T) -> bool,
) -> Result<(Opened, T), SetupError> {
    let endpoint = options.endpoint;
    check_endpoint(endpoint)?;
    let err = |what: &str, e: zmq::Error| socket_error(options.name, what, e);
    let context = zmq::Context::new();
    let mut socket = context.socket(kind).map_err(|e| err("create", e))?;
    socket
        .set_linger(options.linger_ms)
        .map_err(|e| err("set linger on", e))?;
    if let Some(hwm) = options.send_hwm {
        socket
            .set_sndhwm(hwm)
            .map_err(|e| err("set the send high-water mark on", e))?;
    }
    if let Some(hwm) = options.rcv_hwm {
        socket
            .set_rcvhwm(hwm)
            .map_err(|e| err("set the receive high-water mark on", e))?;
    }
    if let Some(size) = options.max_message_size {
        socket
            .set_maxmsgsize(size)
            .map_err(|e| err("set max-message-size on", e))?;
    }
    let extra = configure(&context, &mut socket).map_err(|(what, e)| err(what, e))?;
    let own = own_monitor(&extra);
    curve
        .secure(
            warn,
            options.peer,
            &context,
            &socket,
            options.bind,
            endpoint,
            own,
        )
        .map_err(SetupError::Settings)?;
    let endpoint = bind_or_connect(&socket, endpoint, options.bind).map_err(|e| {
        SetupError::Open(format!(
            "Could not {} {endpoint} ({} socket{}): {e}{}",
            verb(options.bind),
            options.name,
            options.purpose,
            hint(e, options.examples)
        ))
    })?;
    curve.set_endpoint(&endpoint);
    Ok((
        Opened {
            socket,
            context,
            endpoint,
        },
        extra,
    ))
}

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
pub fn check_endpoint(endpoint: &str) -> Result<(), SetupError> {
    if endpoint.contains('\0') {
        return Err(SetupError::Settings(format!(
            "Endpoint {endpoint:?} contains a NUL character"
        )));
    }
    Ok(())
}

/// The error for a failed socket set-up step (`what`: "create", "set linger on", ...) of a
/// `socket` ("PULL", "ROUTER", ...) socket, in the message users see.
pub fn socket_error(socket: &str, what: &str, e: zmq::Error) -> SetupError {
    SetupError::Open(format!("Could not {what} the ZeroMQ {socket} socket: {e}"))
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

/// [`ReceiveSocketType`] as a GStreamer enum type. Written out rather than derived
/// (`glib::Enum`): both plugins carry this crate, and a derived type panics when the second
/// plugin registers a name the first already has. This one takes the type already
/// registered under its name (the same values, from the same source) or registers it.
#[cfg(feature = "glib")]
pub mod glib_enum {
    use glib::translate::{FromGlib, IntoGlib, ToGlibPtr, ToGlibPtrMut, TryFromGlib};
    use glib::{Type, gobject_ffi};

    use super::ReceiveSocketType;

    const NAME: &std::ffi::CStr = c"GstI2iReceiveSocketType";

    /// The values with their names and nicks, ended by a zeroed entry, as GLib wants them.
    struct Values([gobject_ffi::GEnumValue; 3]);
    // SAFETY: read-only static strings.
    unsafe impl Sync for Values {}

    static VALUES: Values = Values([
        gobject_ffi::GEnumValue {
            value: ReceiveSocketType::Sub as i32,
            value_name: c"SUB: subscribe to a publisher (zmqmsgpacksink socket-type=pub, i2i-prompt, programs with PUB)".as_ptr(),
            value_nick: c"sub".as_ptr(),
        },
        gobject_ffi::GEnumValue {
            value: ReceiveSocketType::Pull as i32,
            value_name: c"PULL: pull from pushers (zmqmsgpacksink socket-type=push, programs with PUSH); several pullers share the messages".as_ptr(),
            value_nick: c"pull".as_ptr(),
        },
        gobject_ffi::GEnumValue {
            value: 0,
            value_name: std::ptr::null(),
            value_nick: std::ptr::null(),
        },
    ]);

    impl glib::prelude::StaticType for ReceiveSocketType {
        fn static_type() -> Type {
            static TYPE: std::sync::OnceLock<Type> = std::sync::OnceLock::new();
            *TYPE.get_or_init(|| unsafe {
                let existing = gobject_ffi::g_type_from_name(NAME.as_ptr());
                let t = if existing != gobject_ffi::G_TYPE_INVALID {
                    existing
                } else {
                    gobject_ffi::g_enum_register_static(NAME.as_ptr(), VALUES.0.as_ptr())
                };
                let t: Type = glib::translate::from_glib(t);
                assert!(t.is_valid());
                t
            })
        }
    }

    impl IntoGlib for ReceiveSocketType {
        type GlibType = i32;

        fn into_glib(self) -> i32 {
            self as i32
        }
    }

    impl TryFromGlib<i32> for ReceiveSocketType {
        type Error = i32;

        unsafe fn try_from_glib(value: i32) -> Result<Self, i32> {
            match value {
                0 => Ok(ReceiveSocketType::Sub),
                1 => Ok(ReceiveSocketType::Pull),
                other => Err(other),
            }
        }
    }

    impl FromGlib<i32> for ReceiveSocketType {
        unsafe fn from_glib(value: i32) -> Self {
            unsafe { Self::try_from_glib(value) }.unwrap_or_default()
        }
    }

    impl glib::value::ValueType for ReceiveSocketType {
        type Type = Self;
    }

    unsafe impl<'a> glib::value::FromValue<'a> for ReceiveSocketType {
        type Checker = glib::value::GenericValueTypeChecker<Self>;

        unsafe fn from_value(value: &'a glib::Value) -> Self {
            unsafe {
                glib::translate::from_glib(gobject_ffi::g_value_get_enum(value.to_glib_none().0))
            }
        }
    }

    impl glib::prelude::ToValue for ReceiveSocketType {
        fn to_value(&self) -> glib::Value {
            let mut value = glib::Value::for_value_type::<Self>();
            unsafe {
                gobject_ffi::g_value_set_enum(value.to_glib_none_mut().0, self.into_glib());
            }
            value
        }

        fn value_type(&self) -> Type {
            <Self as glib::prelude::StaticType>::static_type()
        }
    }

    impl From<ReceiveSocketType> for glib::Value {
        fn from(v: ReceiveSocketType) -> Self {
            glib::prelude::ToValue::to_value(&v)
        }
    }

    impl glib::HasParamSpec for ReceiveSocketType {
        type ParamSpec = glib::ParamSpecEnum;
        type SetValue = Self;
        type BuilderFn = fn(&str, Self) -> glib::ParamSpecEnumBuilder<'_, Self>;

        fn param_spec_builder() -> Self::BuilderFn {
            |name, default_value| Self::ParamSpec::builder_with_default(name, default_value)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use glib::prelude::*;

        #[test]
        fn one_enum_type_however_many_copies_register_it() {
            let t = ReceiveSocketType::static_type();
            assert_eq!(t.name(), "GstI2iReceiveSocketType");
            let v = ReceiveSocketType::Pull.to_value();
            assert_eq!(
                v.get::<ReceiveSocketType>().unwrap(),
                ReceiveSocketType::Pull
            );
            let class = glib::EnumClass::with_type(t).unwrap();
            assert_eq!(class.value_by_nick("sub").unwrap().value(), 0);
            assert_eq!(class.value_by_nick("pull").unwrap().value(), 1);
        }
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
