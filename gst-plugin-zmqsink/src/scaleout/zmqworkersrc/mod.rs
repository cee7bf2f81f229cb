// SPDX-License-Identifier: MPL-2.0
//! `zmqworkersrc`: a worker's side of the scale-out. Connects to a `zmqdispatchsink` with a
//! ZeroMQ DEALER socket, asks for frames when it has room, and outputs the frames it gets
//! as `image/jpeg` buffers (offset = index, original time as a `timestamp/x-unix` meta).

/**
 * SECTION:element-zmqworkersrc
 * @see_also: zmqdispatchsink, zmqcollectsrc
 *
 * A worker's side of the farm: connects a DEALER socket to the primary's `zmqdispatchsink`,
 * asks for frames only when it has room (`batch-size` x `prefetch`), and outputs them as
 * `image/jpeg` (or latents), offset = index, original time kept. It finds a restarted
 * primary again by itself (`primary-timeout`); `client-name` names it in the primary's stats.
 * Bad frames are dropped and counted as in `zmqmsgpacksrc`. See docs/scaleout.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 zmqworkersrc endpoint=tcp://PRIMARY:5555 ! jpegdec \
 *   ! i2itransform model=models/demo drop-frames=never \
 *   ! zmqmsgpacksink endpoint=tcp://PRIMARY:5558 bind=false socket-type=push
 * ```
 *
 * A worker: frames from the primary, transformed, pushed back to its `zmqcollectsrc`
 * (`pipelines/worker.sh` runs one like it).
 */
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
