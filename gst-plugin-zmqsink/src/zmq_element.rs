// SPDX-License-Identifier: MPL-2.0
//! What the five ZeroMQ elements share as GStreamer elements, around the socket set-up of
//! [`i2i_core::zmq_endpoint`]: [`open`] with its failures as element errors and its CURVE
//! warnings on the bus ([`bus_warnings`]); their `change_state`, the socket opened just
//! before the base class starts ([`source_change_state`], [`sink_change_state`]); their
//! pad template ([`frames_pad_templates`]).

use std::sync::Arc;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use i2i_core::curve::{ElementCurve, Warn};
use i2i_core::zmq_endpoint::{self, Opened, OptionError, Options, SetupError};

/// CURVE warnings of `element`: each in its debug log, those the rate limit lets through
/// also on the bus.
pub fn bus_warnings(element: &gst::Element) -> Warn {
    let element = element.downgrade();
    Arc::new(move |text: &str, post: bool| {
        let Some(element) = element.upgrade() else {
            return;
        };
        gst::warning!(gst::CAT_DEFAULT, obj = element, "{text}");
        if post {
            gst::element_warning!(element, gst::ResourceError::OpenRead, ("{text}"));
        }
    })
}

/// A failed set-up as the element error users see: `open_error` (OpenRead for the
/// sources, OpenWrite for the sinks) when the socket could not be made, bound or connected.
pub fn error_message(e: SetupError, open_error: gst::ResourceError) -> gst::ErrorMessage {
    match e {
        SetupError::Settings(text) => gst::error_msg!(gst::ResourceError::Settings, ("{text}")),
        SetupError::Open(text) => gst::error_msg!(open_error, ("{text}")),
    }
}

/// [`zmq_endpoint::open`] for `element`: its CURVE warnings on its bus, its failures as
/// element errors (`open_error`: OpenRead for the sources, OpenWrite for the sinks).
pub fn open<T>(
    kind: zmq::SocketType,
    options: &Options,
    open_error: gst::ResourceError,
    element: &gst::Element,
    curve: &ElementCurve,
    configure: impl FnOnce(&zmq::Context, &mut zmq::Socket) -> Result<T, OptionError>,
    own_monitor: impl FnOnce(&T) -> bool,
) -> Result<(Opened, T), gst::ErrorMessage> {
    zmq_endpoint::open(
        kind,
        options,
        bus_warnings(element),
        curve,
        configure,
        own_monitor,
    )
    .map_err(|e| error_message(e, open_error))
}

/// The five elements' `change_state`: opens the socket (`start`, which must do nothing when
/// already started) just before the base class would, at `at` (NULL -> READY for
/// GstBaseSink, READY -> PAUSED for GstBaseSrc). Both base classes follow a failed
/// `start()` with a second, generic error ("state change failed and some element failed to
/// post a proper error message"), after the element's own; opened here first, a failure (a
/// port in use) posts only the element's error, which names the fix.
pub fn start_before_base(
    element: &gst::Element,
    transition: gst::StateChange,
    at: gst::StateChange,
    start: impl FnOnce() -> Result<(), gst::ErrorMessage>,
    stop: impl FnOnce(),
    parent: impl FnOnce(gst::StateChange) -> Result<gst::StateChangeSuccess, gst::StateChangeError>,
) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
    if transition == at
        && let Err(e) = start()
    {
        element.post_error_message(e);
        return Err(gst::StateChangeError);
    }
    let result = parent(transition);
    if result.is_err() && transition == at {
        stop();
    }
    result
}

/// The `endpoint` property's new value: `default` when it is unset.
pub fn endpoint_or(value: &glib::Value, default: &str) -> String {
    value
        .get::<Option<String>>()
        .expect("type checked upstream")
        .unwrap_or_else(|| default.into())
}

/// `change_state` of the three sources: the socket opens at READY to PAUSED, just before
/// GstBaseSrc starts (see [`start_before_base`]).
pub fn source_change_state<T: BaseSrcImpl>(
    imp: &T,
    transition: gst::StateChange,
) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
    start_before_base(
        imp.obj().upcast_ref(),
        transition,
        gst::StateChange::ReadyToPaused,
        || BaseSrcImpl::start(imp),
        || {
            let _ = BaseSrcImpl::stop(imp);
        },
        |t| imp.parent_change_state(t),
    )
}

/// `change_state` of the two sinks: the socket opens at NULL to READY, just before
/// GstBaseSink starts (see [`start_before_base`]).
pub fn sink_change_state<T: BaseSinkImpl>(
    imp: &T,
    transition: gst::StateChange,
) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
    start_before_base(
        imp.obj().upcast_ref(),
        transition,
        gst::StateChange::NullToReady,
        || BaseSinkImpl::start(imp),
        || {
            let _ = BaseSinkImpl::stop(imp);
        },
        |t| imp.parent_change_state(t),
    )
}

/// The one always pad (`src` or `sink`) of an element that carries JPEG frames or latents
/// (`caps`: those, or more).
pub fn frames_pad_templates(
    direction: gst::PadDirection,
    caps: &gst::Caps,
) -> Vec<gst::PadTemplate> {
    let name = if direction == gst::PadDirection::Src {
        "src"
    } else {
        "sink"
    };
    vec![
        gst::PadTemplate::new(name, direction, gst::PadPresence::Always, caps)
            .expect("a valid pad template"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_properties_change_only_in_null_and_ready() {
        gst::init().unwrap();
        for spec in ElementCurve::param_specs("peers") {
            assert!(
                spec.flags().contains(gst::PARAM_FLAG_MUTABLE_READY),
                "{}",
                spec.name()
            );
            assert!(spec.flags().contains(glib::ParamFlags::READWRITE));
        }
    }
}
