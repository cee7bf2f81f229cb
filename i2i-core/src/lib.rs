// SPDX-License-Identifier: MPL-2.0
//! What the plugins (`gst-plugin-i2i`, `gst-plugin-zmqsink`) and the tools (`i2i-prompt`,
//! `i2i-web`, `i2i-stats`) share, free of GStreamer and of ONNX Runtime, so the tools link
//! neither:
//!
//! - [`protocol`]: the frame wire format `[timestamp_ms, index, jpg]`; [`tensor`]: its
//!   tensor form `[timestamp_ms, index, payload, meta]` (latents);
//! - [`jpeg`]: JPEG encoding and checks with libjpeg-turbo;
//! - [`zmq_endpoint`]: the ZeroMQ socket set-up of every ZeroMQ element, with CURVE
//!   ([`curve`]: key files, allow-lists, the ZAP handler, an element's three CURVE
//!   properties);
//! - [`rate_limit`]: rate-limited warnings;
//! - [`infer`]: the inference elements' enums (execution provider, resize mode, frame
//!   dropping); with [`settings::CfgType`], [`settings::blend::BlendMode`] and
//!   [`zmq_endpoint::ReceiveSocketType`] each is defined once, a GStreamer enum type with the
//!   `glib` feature;
//! - [`settings`]: the settings vocabulary (chat commands, msgpack and JSON messages, the
//!   holder's state and hub, blend math, limits), spoken by `settingssrc`, `i2itransform`,
//!   `i2i-prompt` and `i2i-web`.

pub mod curve;
pub mod files;
pub mod infer;
pub mod jpeg;
pub mod protocol;
pub mod rate_limit;
pub mod settings;
pub mod tensor;
pub mod zmq_endpoint;
