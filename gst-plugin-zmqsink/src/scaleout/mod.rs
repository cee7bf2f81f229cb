// SPDX-License-Identifier: MPL-2.0
//! Scale-out over several machines: the logic behind `zmqdispatchsink` (primary: hands
//! frames to the next free worker), `zmqworkersrc` (worker: asks for frames and receives
//! them) and `zmqcollectsrc` (primary: puts the workers' results back in order at the
//! source's pace). Plain Rust with its own tests; the elements are thin glue around it.
//! [`socket_thread`] is the socket thread the three elements share (core, flags, wake-up,
//! unlock, poll-loop head, spawn and stop).

pub mod dispatch;
pub mod ledger;
pub mod playout;
pub mod socket_thread;
pub mod wire;
pub mod zmqcollectsrc;
pub mod zmqdispatchsink;
pub mod zmqworkersrc;

/// A random non-zero session number for a dispatcher run.
pub fn new_session() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(crate::unix_time::now_us());
    h.write_u32(std::process::id());
    h.finish().max(1)
}
