// SPDX-License-Identifier: MPL-2.0
//! ZeroMQ msgpack transport: `zmqmsgpacksink` and `zmqmsgpacksrc`.
//!
//! Frames travel as one ZeroMQ message each, a msgpack array
//! `[timestamp_ms, index, jpg]` (see [`protocol`]).

use gst::glib;

pub mod curve;
pub mod frame_index;
pub mod interrupt;
pub mod jpeg;
pub mod protocol;
pub mod scaleout;
pub mod zmq_endpoint;
mod zmqcollectsrc;
mod zmqdispatchsink;
mod zmqmsgpacksink;
mod zmqmsgpacksrc;
mod zmqworkersrc;

pub use zmqcollectsrc::ZmqCollectSrc;
pub use zmqdispatchsink::{DispatchQueuePolicy, ZmqDispatchSink};
pub use zmqmsgpacksink::{SinkSocketType, ZmqMsgpackSink};
pub use zmqmsgpacksrc::{SrcSocketType, ZmqMsgpackSrc};
pub use zmqworkersrc::ZmqWorkerSrc;

/// Caps name of the reference timestamp meta that carries a frame's original Unix time
/// (ns since the epoch) between pipelines.
pub const UNIX_TIMESTAMP_CAPS: &str = "timestamp/x-unix";

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    frame_index::register();
    zmqmsgpacksink::register(plugin)?;
    zmqmsgpacksrc::register(plugin)?;
    zmqdispatchsink::register(plugin)?;
    zmqworkersrc::register(plugin)?;
    zmqcollectsrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    zmqmsgpack,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
