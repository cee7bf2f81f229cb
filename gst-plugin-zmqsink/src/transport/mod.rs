// SPDX-License-Identifier: MPL-2.0
//! Point-to-point frame transport: `zmqmsgpacksink` sends frames as msgpack
//! `[timestamp_ms, index, jpg]` messages, `zmqmsgpacksrc` receives them. Their shared code
//! (wake-up, endpoint set-up, JPEG output, Unix time, rate-limited warnings) lives at the
//! crate root beside the scale-out elements'.

pub mod zmqmsgpacksink;
pub mod zmqmsgpacksrc;
