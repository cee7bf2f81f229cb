// SPDX-License-Identifier: MPL-2.0
//! ZeroMQ msgpack transport: `zmqmsgpacksink` and `zmqmsgpacksrc`.
//!
//! Frames travel as one ZeroMQ message each, a msgpack array
//! `[timestamp_ms, index, jpg]` (see [`protocol`]).

use gst::glib;

pub mod protocol;

fn plugin_init(_plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
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
