// SPDX-License-Identifier: MPL-2.0
//! What `i2itransform`'s inference task holds from start to stop ([`Worker`]: the engine and
//! the frames in flight) and what it waits for before the first frame ([`FirstSettings`]);
//! what it does with them is [`super::task`].

use std::collections::VecDeque;

use super::live::LiveSettings;
use crate::diffusion::{Engine, LoadOptions, PreparedFrame};
use crate::infer::input::{Deferred, Queued};

/// What came first on the settings pad since the element started (`wait-for-settings`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum FirstSettings {
    #[default]
    Waiting,
    /// The settings holder's state, empty: it has no settings yet.
    Empty,
    /// Settings (or an update the transform refused: the holder is there all the same).
    Settings,
}

pub struct FrameMeta {
    pub tag: u64,
    pub meta: gst::Buffer,
}

/// Task side: the engine and everything in flight. Exists from start to stop.
pub struct Worker {
    pub engine: Engine,
    /// What the engine was loaded with (`size-from-input` reloads it at another size).
    pub load: LoadOptions,
    pub batch_size: usize,
    pub batch: Vec<Queued<PreparedFrame>>,
    /// Frames handed to the engine and not out yet, in input order.
    pub in_flight: VecDeque<FrameMeta>,
    /// Events waiting for the output of the frame (tag) that came before them.
    pub deferred: VecDeque<(u64, Deferred)>,
    /// The live settings the engine runs with.
    pub applied: LiveSettings,
    /// The first batch ran (after waiting for the first settings).
    pub started: bool,
}

impl Worker {
    pub fn new(engine: Engine, load: LoadOptions, applied: LiveSettings) -> Self {
        Worker {
            engine,
            batch_size: load.batch_size,
            load,
            batch: Vec::new(),
            in_flight: VecDeque::new(),
            deferred: VecDeque::new(),
            applied,
            started: false,
        }
    }

    /// Tag of the last frame taken from the queue that has not been pushed yet.
    pub fn last_pending_tag(&self) -> Option<u64> {
        self.batch
            .last()
            .map(|f| f.tag)
            .or_else(|| self.in_flight.back().map(|f| f.tag))
    }
}
