// SPDX-License-Identifier: MPL-2.0
//! What the inference elements (`i2itransform`, `onnxtransform`, `i2idecode`) share: the
//! element base with its three threads (the streaming thread's input side, the inference
//! task, the output thread), the bounded queue between them with the live drop policy,
//! picture conversion around the model, the stats, and the latency they add.
//!
//! The properties they share are defined once ([`props`]); each element keeps its own
//! properties, model binding and pre- and post-processing
//! ([`element::InferElement`]); these modules hold the parts that do not depend on what the
//! model is.

pub mod convert;
pub mod element;
pub mod input;
pub mod latency;
pub mod output;
pub mod pads;
pub mod props;
pub mod queue;
pub mod stats;
pub mod task;
