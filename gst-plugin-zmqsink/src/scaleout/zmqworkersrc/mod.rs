// SPDX-License-Identifier: MPL-2.0
//! `zmqworkersrc`: a worker's side of the scale-out. Connects to a `zmqdispatchsink` with a
//! ZeroMQ DEALER socket, asks for frames when it has room, and outputs the frames it gets
//! as `image/jpeg` buffers (offset = index, original time as a `timestamp/x-unix` meta).

use gst::glib;
use gst::prelude::*;

mod imp;

pub(crate) use imp::RENAMED;

glib::wrapper! {
    pub struct ZmqWorkerSrc(ObjectSubclass<imp::ZmqWorkerSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "zmqworkersrc",
        gst::Rank::NONE,
        ZmqWorkerSrc::static_type(),
    )
}
