// SPDX-License-Identifier: MPL-2.0
//! `settingssrc`: receives live settings over ZeroMQ and pushes them as
//! `application/x-i2i-settings` buffers for i2itransform's `settings` pad.

/**
 * SECTION:element-settingssrc
 * @see_also: i2itransform
 *
 * Live settings from the network for `i2itransform`'s `settings` pad: state snapshots from a
 * settings holder (`i2i-prompt`), chat-style commands (`/seed 123`), msgpack or JSON maps, over
 * ZeroMQ (SUB, or PULL with `socket-type=pull`). A flood of changes is merged into at most one
 * update per `min-push-interval`; what the transform applied or refused goes back to the
 * holder, named by `client-name`. Malformed messages are counted and warned about, at most a
 * few a second. See docs/settings.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 settingssrc endpoint=tcp://localhost:5556 ! i2i.settings \
 *   v4l2src ! videoconvert ! i2itransform name=i2i model=models/demo ! videoconvert ! autovideosink
 * ```
 *
 * A camera transformed with the settings `i2i-prompt` publishes on 5556 (type `/prompt ...` in
 * its console).
 */
use gst::glib;
use gst::prelude::*;

mod imp;

pub(crate) use imp::RENAMED;

glib::wrapper! {
    pub struct SettingsSrc(ObjectSubclass<imp::SettingsSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "settingssrc",
        gst::Rank::NONE,
        SettingsSrc::static_type(),
    )
}
