// SPDX-License-Identifier: MPL-2.0
//! ZeroMQ msgpack transport: `zmqmsgpacksink` and `zmqmsgpacksrc`.
//!
//! Frames travel as one ZeroMQ message each, a msgpack array
//! `[timestamp_ms, index, jpg]` (see [`protocol`]).

use gst::glib;

pub mod protocol;
pub mod scaleout;
mod zmqcollectsrc;
mod zmqdispatchsink;
mod zmqworkersrc;

pub use zmqcollectsrc::ZmqCollectSrc;
pub use zmqdispatchsink::{DispatchQueuePolicy, ZmqDispatchSink};
pub use zmqworkersrc::ZmqWorkerSrc;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
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
