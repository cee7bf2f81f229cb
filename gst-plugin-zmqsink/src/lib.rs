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
use gst::prelude::*;

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

pub use i2i_compat::ElementAlias;
pub use scaleout::zmqcollectsrc::{CollectLateStart, CollectQueuePolicy, ZmqCollectSrc};
pub use scaleout::zmqdispatchsink::{DispatchQueuePolicy, ZmqDispatchSink};
pub use scaleout::zmqworkersrc::ZmqWorkerSrc;
pub use transport::zmqmsgpacksink::{LatentDtype, SinkSocketType, ZmqMsgpackSink};
pub use transport::zmqmsgpacksrc::ZmqMsgpackSrc;

/// Caps name of the reference timestamp meta that carries a frame's original Unix time
/// (ns since the epoch) between pipelines.
pub const UNIX_TIMESTAMP_CAPS: &str = "timestamp/x-unix";

/// The properties renamed for the one vocabulary (docs/properties.md): their old names
/// still work for one release, warning once per element.
pub fn renamed_properties() -> Vec<ElementAlias> {
    [
        ("zmqmsgpacksink", transport::zmqmsgpacksink::RENAMED),
        ("zmqmsgpacksrc", transport::zmqmsgpacksrc::RENAMED),
        ("zmqdispatchsink", scaleout::zmqdispatchsink::RENAMED),
        ("zmqworkersrc", scaleout::zmqworkersrc::RENAMED),
        ("zmqcollectsrc", scaleout::zmqcollectsrc::RENAMED),
    ]
    .into_iter()
    .flat_map(|(element, renamed)| {
        renamed.iter().map(move |a| ElementAlias {
            element,
            old: a.old,
            new: a.new,
        })
    })
    .collect()
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // The enums the properties use, for gst-inspect-1.0 and the documentation.
    for t in [
        SinkSocketType::static_type(),
        LatentDtype::static_type(),
        i2i_core::zmq_endpoint::ReceiveSocketType::static_type(),
        DispatchQueuePolicy::static_type(),
        CollectQueuePolicy::static_type(),
        CollectLateStart::static_type(),
    ] {
        t.mark_as_plugin_api(gst::PluginAPIFlags::empty());
    }
    frame_index::register();
    transport::zmqmsgpacksink::register(plugin)?;
    transport::zmqmsgpacksrc::register(plugin)?;
    scaleout::zmqdispatchsink::register(plugin)?;
    scaleout::zmqworkersrc::register(plugin)?;
    scaleout::zmqcollectsrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    zmqsink,
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
