// SPDX-License-Identifier: MPL-2.0
//! `zmqdispatchsink`: the primary's side of the scale-out. Hands each frame (or each batch
//! of consecutive frames) to the next free worker (`zmqworkersrc`) over a ZeroMQ ROUTER
//! socket, following the workers' ready requests.

/**
 * SECTION:element-zmqdispatchsink
 * @see_also: zmqworkersrc, zmqcollectsrc
 *
 * The primary's side of a worker farm: hands each frame (or batch of frames) to the next
 * free `zmqworkersrc` over a ROUTER socket, as the workers ask for them. `queue-policy=block`
 * (default) holds the source until a worker takes the frames (files: nothing lost),
 * `drop-oldest` keeps the newest `max-queue` frames (live sources). Workers joining, leaving
 * and lost are posted as messages; per-worker figures are in `stats` (`worker-list`). A
 * `zmqcollectsrc` of the same `group` in the process puts the results back in order. See
 * docs/scaleout.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 multifilesrc location=frames/%04d.jpg caps=image/jpeg,framerate=15/1 \
 *   ! zmqdispatchsink endpoint=tcp://0.0.0.0:5555 \
 *   zmqcollectsrc endpoint=tcp://0.0.0.0:5558 ! zmqmsgpacksink endpoint=tcp://0.0.0.0:5557
 * ```
 *
 * A primary: JPEG files out to the workers on 5555, their results back in order on 5558,
 * published on 5557 (`pipelines/primary.sh` runs one like it).
 */
use gst::glib;
use gst::prelude::*;

mod imp;

pub(crate) use imp::RENAMED;

glib::wrapper! {
    pub struct ZmqDispatchSink(ObjectSubclass<imp::ZmqDispatchSink>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

/// What the dispatcher does with a new frame when its queue is full.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstZmqDispatchQueuePolicy")]
pub enum DispatchQueuePolicy {
    /// Wait for room: backpressure to the source (files: nothing is lost).
    #[enum_value(
        name = "Block: wait for a free worker, slowing the source down (files)",
        nick = "block"
    )]
    Block = 0,
    /// Drop the oldest waiting frame: the output stays current (live cameras).
    #[enum_value(
        name = "Drop oldest: drop the oldest waiting frame and stay current (live sources)",
        nick = "drop-oldest"
    )]
    DropOldest = 1,
}

/// The per-worker structures of the dispatcher's `stats` (`worker-list`: name, frames,
/// in-flight, ...), in the order the dispatcher lists them.
pub fn worker_list(stats: &gst::StructureRef) -> Vec<gst::Structure> {
    stats
        .get::<gst::Array>("worker-list")
        .map(|list| {
            list.iter()
                .filter_map(|v| v.get::<gst::Structure>().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "zmqdispatchsink",
        gst::Rank::NONE,
        ZmqDispatchSink::static_type(),
    )
}
