// SPDX-License-Identifier: MPL-2.0
//! `zmqcollectsrc`: the primary's collector. Receives the workers' results (PULL), puts
//! them back in index order with a fixed playout delay, and outputs them at the source's
//! pace with each frame's original timestamp.

/**
 * SECTION:element-zmqcollectsrc
 * @see_also: zmqdispatchsink, zmqworkersrc
 *
 * The primary's collector: binds a PULL socket where the workers push their results, puts
 * them back in index order and plays each frame `playout-delay` after it entered the primary,
 * at the source's pace, also when workers deliver in bursts. Later frames are dropped and
 * counted (`dropped-late`), frames that never came are skipped (`missing`); a full reorder
 * buffer (`max-queue`) does what `queue-policy` says. The stream ends after the last frame of
 * the `zmqdispatchsink` of the same `group`. See docs/scaleout.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 multifilesrc location=frames/%04d.jpg caps=image/jpeg,framerate=15/1 \
 *   ! zmqdispatchsink endpoint=tcp://0.0.0.0:5555 \
 *   zmqcollectsrc endpoint=tcp://0.0.0.0:5558 playout-delay=1000 ! zmqmsgpacksink endpoint=tcp://0.0.0.0:5557
 * ```
 *
 * A primary whose output plays 1 s after each frame entered it, in order.
 */
use gst::glib;
use gst::prelude::*;

mod imp;

pub(crate) use imp::RENAMED;

glib::wrapper! {
    pub struct ZmqCollectSrc(ObjectSubclass<imp::ZmqCollectSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

/// What the collector does with a result that finds its reorder buffer (`max-queue`) full.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstZmqCollectQueuePolicy")]
pub enum CollectQueuePolicy {
    /// Keep every frame: the oldest held ones play at once, before their time.
    #[enum_value(
        name = "Play early: keep every frame, the oldest held play at once (the pacing breaks)",
        nick = "play-early"
    )]
    PlayEarly = 0,
    /// Drop the oldest held frame: what plays keeps its time, but a frame evicted before its
    /// time was waited for in vain, so a bound below fps x delay lets almost nothing through.
    #[enum_value(
        name = "Drop oldest: drop the next frame to play (the pacing holds; for a short excess only: below fps x delay almost nothing plays)",
        nick = "drop-oldest"
    )]
    DropOldest = 1,
    /// Drop the arriving frame: what is held keeps its place and time.
    #[enum_value(
        name = "Drop newest: drop the arriving frame (the pacing holds)",
        nick = "drop-newest"
    )]
    DropNewest = 2,
}

/// What the collector does with results that come after their play time before the
/// first frame of a stream was played (`late-start`).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstZmqCollectLateStart")]
pub enum CollectLateStart {
    /// Shift when the zmqdispatchsink of the group holds its source (queue-policy block) or
    /// when there is none in this process; drop when it drops frames (live input).
    #[enum_value(
        name = "Auto: shift when the group's zmqdispatchsink blocks (files) or is not in this process, drop when it drops (live)",
        nick = "auto"
    )]
    Auto = 0,
    /// Move the whole schedule back by the lateness: nothing is lost, latency grows once.
    #[enum_value(
        name = "Shift: move every play time back by how late the first results are (nothing lost, the latency grows by that once)",
        nick = "shift"
    )]
    Shift = 1,
    /// Drop them as late, like later frames.
    #[enum_value(
        name = "Drop: drop them as late (the latency stays the playout delay)",
        nick = "drop"
    )]
    Drop = 2,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "zmqcollectsrc",
        gst::Rank::NONE,
        ZmqCollectSrc::static_type(),
    )
}
