// SPDX-License-Identifier: MPL-2.0
//! ZeroMQ msgpack transport, five elements:
//!
//! - [`transport`]: `zmqmsgpacksink` (frames out as ZeroMQ messages) and `zmqmsgpacksrc`
//!   (frames in);
//! - [`scaleout`]: `zmqdispatchsink` (primary: hands frames to the next free worker),
//!   `zmqworkersrc` (worker: asks for frames and receives them) and `zmqcollectsrc`
//!   (primary: puts the workers' results back in order).
//!
//! Frames travel as one ZeroMQ message each, a msgpack array `[timestamp_ms, index, jpg]`
//! (see [`i2i_core::protocol`]), latents as `[timestamp_ms, index, payload, meta]` (see
//! [`i2i_core::tensor`], and [`latent`] for the GStreamer side). Shared by all five:
//! [`interrupt`] (one wake-up), [`zmq_element`] (the socket set-up of
//! [`i2i_core::zmq_endpoint`] with CURVE from [`i2i_core::curve`], as an element),
//! [`source_output`] (the sources' caps and buffers), [`unix_time`] and
//! [`i2i_core::rate_limit`] (rate-limited warnings); [`eos_request`] lets the two sinks
//! that wait for peers hear an application's EOS request.

use gst::glib;

pub mod eos_request;
pub mod frame_file;
pub mod frame_index;
pub mod interrupt;
pub mod latent;
pub mod scaleout;
pub mod source_output;
pub mod transport;
pub mod unix_time;
pub mod zmq_element;

pub use scaleout::zmqcollectsrc::{CollectLateStart, CollectQueuePolicy, ZmqCollectSrc};
pub use scaleout::zmqdispatchsink::{DispatchQueuePolicy, ZmqDispatchSink};
pub use scaleout::zmqworkersrc::ZmqWorkerSrc;
pub use transport::zmqmsgpacksink::{LatentDtype, SinkSocketType, ZmqMsgpackSink};
pub use transport::zmqmsgpacksrc::ZmqMsgpackSrc;

/// Caps name of the reference timestamp meta that carries a frame's original Unix time
/// (ns since the epoch) between pipelines.
pub const UNIX_TIMESTAMP_CAPS: &str = "timestamp/x-unix";

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    frame_index::register();
    transport::zmqmsgpacksink::register(plugin)?;
    transport::zmqmsgpacksrc::register(plugin)?;
    scaleout::zmqdispatchsink::register(plugin)?;
    scaleout::zmqworkersrc::register(plugin)?;
    scaleout::zmqcollectsrc::register(plugin)?;
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
    // Origin: these plugins have no package origin of their own; they are built from source.
    "i2i plugins built from source (README.md)",
    env!("BUILD_REL_DATE")
);
