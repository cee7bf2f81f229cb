// SPDX-License-Identifier: MPL-2.0
//! What the inference elements (`i2itransform`, `onnxtransform`, `i2idecode`) share: the
//! bounded queue between their threads with the live drop policy, picture conversion
//! around the model, and the latency they add.
//!
//! Each element keeps its own pads, properties and threads; these modules hold the parts
//! that do not depend on what the model is.

pub mod convert;
pub mod latency;
pub mod queue;
