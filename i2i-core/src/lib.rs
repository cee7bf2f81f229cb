// SPDX-License-Identifier: MPL-2.0
//! What the plugins (`gst-plugin-i2i`, `gst-plugin-zmqsink`) and the tools (`i2i-prompt`,
//! `i2i-web`, `i2i-stats`) share, free of GStreamer and of ONNX Runtime, so the tools link
//! neither:
//!
//! - [`protocol`]: the frame wire format `[timestamp_ms, index, jpg]`; [`tensor`]: its
//!   tensor form `[timestamp_ms, index, payload, meta]` (latents);
//! - [`jpeg`]: JPEG encoding and checks with libjpeg-turbo.

pub mod jpeg;
pub mod protocol;
pub mod tensor;
