// SPDX-License-Identifier: MPL-2.0
//! What the three sources (`zmqmsgpacksrc`, `zmqworkersrc`, `zmqcollectsrc`) put on their
//! src pad: the caps of the stream, JPEG of a size (set when the frame size changes and sent
//! again on a renegotiation) or latents ([`crate::latent`], [`ensure_latent_caps`]), and
//! each buffer's frame index, PTS (running time when it is pushed or arrived), duration and
//! `timestamp/x-unix` meta ([`stamp`]). A frame of
//! the other kind than the stream so far (or the first frame) is first offered to
//! downstream with an ACCEPT_CAPS query: where downstream takes that kind too, the caps
//! change; where it does not (`i2idecode` and a JPEG, `jpegdec` and latents) the frame is
//! refused ([`Offered::WrongKind`]) and the source drops and counts it (`dropped-kind`),
//! so one stray message cannot stop the pipeline not-negotiated.

use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst_base::prelude::*;

use crate::{frame_index, unix_time};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "zmqsourceoutput",
        gst::DebugColorFlags::empty(),
        Some("Caps and buffers of the ZeroMQ sources"),
    )
});

/// The duration of one frame at `framerate`; `None` for a variable (0/1) rate.
pub fn frame_duration(framerate: gst::Fraction) -> Option<gst::ClockTime> {
    let (num, den) = (framerate.numer(), framerate.denom());
    if num <= 0 || den <= 0 {
        return None;
    }
    gst::ClockTime::SECOND.mul_div_floor(den as u64, num as u64)
}

/// The element's running time now (0 before its base time); `None` without a clock.
pub fn running_time_now(element: &impl IsA<gst::Element>) -> Option<gst::ClockTime> {
    let clock = element.clock()?;
    let base_time = element.base_time()?;
    Some(clock.time().saturating_sub(base_time))
}

/// `image/jpeg` caps for frames of `size` (when known) at `framerate`.
pub fn jpeg_caps(size: Option<(usize, usize)>, framerate: gst::Fraction) -> gst::Caps {
    let mut b = gst::Caps::builder("image/jpeg");
    if let Some((w, h)) = size {
        b = b.field("width", w as i32).field("height", h as i32);
    }
    b.field("framerate", framerate).build()
}

/// Default `framerate` of the three sources: variable (0/1).
pub const DEFAULT_FRAMERATE: gst::Fraction = gst::Fraction::from_integer(0);
/// Default `max-message-size` of the three sources.
pub const DEFAULT_MAX_MESSAGE_SIZE: i64 = 64 * 1024 * 1024;

/// The `framerate` property of the three sources.
pub fn framerate_pspec() -> glib::ParamSpec {
    gst::ParamSpecFraction::builder("framerate")
        .nick("Frame rate")
        .blurb(
            "Frame rate written in the output caps and buffer durations (0/1 = variable, unknown)",
        )
        .minimum(gst::Fraction::from_integer(0))
        .maximum(gst::Fraction::new(i32::MAX, 1))
        .default_value(DEFAULT_FRAMERATE)
        .mutable_ready()
        .build()
}

/// The `max-message-size` property of the three sources; `what` names the messages
/// ("result message").
pub fn max_message_size_pspec(what: &str) -> glib::ParamSpec {
    glib::ParamSpecInt64::builder("max-message-size")
        .nick("Maximum message size")
        .blurb(&format!(
            "Largest {what} accepted, in bytes (-1 = no limit); set as ZMQ_MAXMSGSIZE, so ZeroMQ closes a connection that sends a larger one"
        ))
        .minimum(-1)
        .default_value(DEFAULT_MAX_MESSAGE_SIZE)
        .mutable_ready()
        .build()
}

/// The `max-pixels` property of the three sources.
pub fn max_pixels_pspec() -> glib::ParamSpec {
    glib::ParamSpecUInt64::builder("max-pixels")
        .nick("Maximum pixels")
        .blurb("Frames whose JPEG header declares more pixels (width x height) are dropped, counted and reported, before a decoder allocates them (0 = no limit); the default takes every 8K format")
        .default_value(i2i_core::jpeg::DEFAULT_MAX_PIXELS)
        .mutable_ready()
        .build()
}

/// The caps a source has announced, kept per element beside its state.
#[derive(Debug)]
pub struct SourceOutput {
    framerate: gst::Fraction,
    size: Option<(usize, usize)>,
    /// The latent caps announced last, while latents are flowing.
    latent: Option<gst::Caps>,
}

impl Default for SourceOutput {
    fn default() -> Self {
        SourceOutput {
            framerate: gst::Fraction::from_integer(0),
            size: None,
            latent: None,
        }
    }
}

impl SourceOutput {
    /// Forgets the announced caps, for a new stream at `framerate`.
    pub fn reset(&mut self, framerate: gst::Fraction) {
        self.framerate = framerate;
        self.size = None;
        self.latent = None;
    }

    pub fn framerate(&self) -> gst::Fraction {
        self.framerate
    }

    pub fn duration(&self) -> Option<gst::ClockTime> {
        frame_duration(self.framerate)
    }

    fn current_caps(&self) -> Option<gst::Caps> {
        self.latent
            .clone()
            .or_else(|| self.size.map(|s| jpeg_caps(Some(s), self.framerate)))
    }
}

/// Whether a frame can go downstream with its caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    Yes,
    /// Its kind (JPEG or latents) is not the stream's and downstream does not take it: the
    /// text says what downstream takes, for the warning.
    WrongKind(String),
}

/// A frame of another kind than the stream so far (or the first one): does the element
/// downstream accept its caps? (Unlinked: yes, the push says what is wrong.)
fn offer(
    src: &(impl IsA<gst_base::BaseSrc> + IsA<gst::Element>),
    caps: &gst::Caps,
    what: &str,
) -> Offered {
    let pad = src.upcast_ref::<gst_base::BaseSrc>().src_pad();
    let Some(peer) = pad.peer() else {
        return Offered::Yes;
    };
    if pad.peer_query_accept_caps(caps) {
        return Offered::Yes;
    }
    let who = peer
        .parent_element()
        .map(|e| e.name().to_string())
        .unwrap_or_else(|| peer.name().to_string());
    let takes = peer
        .query_caps(None)
        .iter()
        .map(|s| s.name().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Offered::WrongKind(format!("downstream ({who}) takes {takes}, not {what}"))
}

/// Sets caps for frames of `size` when they differ from the last ones announced; an error
/// (posted on the bus) when downstream refuses them; [`Offered::WrongKind`] for a JPEG that
/// downstream does not take at all (latents expected).
pub fn ensure_caps(
    src: &(impl IsA<gst_base::BaseSrc> + IsA<gst::Element>),
    output: &Mutex<SourceOutput>,
    size: (usize, usize),
) -> Result<Offered, gst::FlowError> {
    let (caps, new_kind) = {
        let out = output.lock().unwrap_or_else(|e| e.into_inner());
        if out.size == Some(size) && out.latent.is_none() {
            return Ok(Offered::Yes);
        }
        (jpeg_caps(Some(size), out.framerate), out.size.is_none())
    };
    if new_kind && let Offered::WrongKind(text) = offer(src, &caps, "image/jpeg") {
        return Ok(Offered::WrongKind(text));
    }
    {
        let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
        out.size = Some(size);
        out.latent = None;
    }
    gst::debug!(CAT, obj = src, "caps {caps}");
    if src.set_caps(&caps).is_err() {
        gst::element_error!(
            src,
            gst::CoreError::Negotiation,
            ("Downstream does not accept {caps}: put jpegdec (or another element that takes image/jpeg of this size) after the source")
        );
        return Err(gst::FlowError::NotNegotiated);
    }
    Ok(Offered::Yes)
}

/// Sets latent `caps` ([`crate::latent`]) when they differ from the last ones announced;
/// an error (posted on the bus) when downstream refuses them; [`Offered::WrongKind`] for
/// latents that downstream does not take at all (JPEG expected).
pub fn ensure_latent_caps(
    src: &(impl IsA<gst_base::BaseSrc> + IsA<gst::Element>),
    output: &Mutex<SourceOutput>,
    caps: gst::Caps,
) -> Result<Offered, gst::FlowError> {
    let new_kind = {
        let out = output.lock().unwrap_or_else(|e| e.into_inner());
        if out.latent.as_ref() == Some(&caps) {
            return Ok(Offered::Yes);
        }
        out.latent.is_none()
    };
    if new_kind
        && let Offered::WrongKind(text) = offer(src, &caps, i2i_core::tensor::LATENT_CAPS_NAME)
    {
        return Ok(Offered::WrongKind(text));
    }
    {
        let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
        out.latent = Some(caps.clone());
        out.size = None;
    }
    gst::debug!(CAT, obj = src, "caps {caps}");
    if src.set_caps(&caps).is_err() {
        gst::element_error!(
            src,
            gst::CoreError::Negotiation,
            ("Downstream does not accept {caps}: put i2idecode (or another element that takes latents of this shape) after the source")
        );
        return Err(gst::FlowError::NotNegotiated);
    }
    Ok(Offered::Yes)
}

/// `negotiate()` of the sources: caps are only known from the first JPEG header, so they
/// are set when a frame comes; a later renegotiation sends the current ones again.
pub fn negotiate(
    src: &(impl IsA<gst_base::BaseSrc> + IsA<gst::Element>),
    output: &Mutex<SourceOutput>,
) -> Result<(), gst::LoggableError> {
    let caps = output
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .current_caps();
    match caps {
        Some(caps) => src
            .set_caps(&caps)
            .map_err(|_| gst::loggable_error!(CAT, "Downstream refused {caps}")),
        None => Ok(()),
    }
}

/// Writes a frame's index, PTS, duration and original Unix time (ms) on its buffer.
pub fn stamp(
    b: &mut gst::BufferRef,
    index: u64,
    pts: Option<gst::ClockTime>,
    duration: Option<gst::ClockTime>,
    timestamp_ms: i64,
) {
    frame_index::set(b, index);
    b.set_pts(pts);
    b.set_duration(duration);
    unix_time::add_meta(b, timestamp_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_caps() {
        gst::init().unwrap();
        assert_eq!(frame_duration(gst::Fraction::new(0, 1)), None);
        assert_eq!(
            frame_duration(gst::Fraction::new(25, 1)),
            Some(gst::ClockTime::from_mseconds(40))
        );
        let caps = jpeg_caps(Some((64, 48)), gst::Fraction::new(30, 1));
        let s = caps.structure(0).unwrap();
        assert_eq!(s.get::<i32>("width").unwrap(), 64);
        assert_eq!(s.get::<i32>("height").unwrap(), 48);
    }
}
