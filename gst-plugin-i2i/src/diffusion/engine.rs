// SPDX-License-Identifier: MPL-2.0
//! [`Engine`]: the public face of the diffusion engine.

use super::{
    Embedding, EngineError, ExecutionProvider, InputFrame, LoadOptions, Noise, OutputFrame,
    StreamParams, Timings, noise,
};

/// A loaded model and the frames in flight. `Send`: create it anywhere, then use it from
/// one thread (all methods that run graphs take `&mut self`).
pub struct Engine {
    opts: LoadOptions,
    params: StreamParams,
    provider: ExecutionProvider,
    noise: Noise,
    timings: Timings,
}

impl Engine {
    /// Loads the model directory `opts.model_dir` and prepares the stream for `params`.
    pub fn load(opts: &LoadOptions, params: &StreamParams) -> Result<Engine, EngineError> {
        let _ = super::runtime::environment()?;
        let _ = (opts, params);
        Err(EngineError::argument("engine", "a complete implementation", "work in progress"))
    }

    /// The execution provider actually running (never `Auto`).
    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    pub fn options(&self) -> &LoadOptions {
        &self.opts
    }

    pub fn params(&self) -> &StreamParams {
        &self.params
    }

    /// Applies new stream settings before the next call: the text encoder runs only when a
    /// prompt changed, the noise is redrawn only when the seed changed.
    pub fn set_params(&mut self, p: &StreamParams) -> Result<(), EngineError> {
        self.params = p.clone();
        Ok(())
    }

    /// Feeds 1..=batch_size frames; returns the frames that completed, in input order.
    pub fn process(&mut self, frames: Vec<InputFrame>) -> Result<Vec<OutputFrame>, EngineError> {
        let _ = frames;
        Ok(Vec::new())
    }

    /// Runs the remaining steps of every frame in flight and returns them in order.
    pub fn drain(&mut self) -> Result<Vec<OutputFrame>, EngineError> {
        Ok(Vec::new())
    }

    /// Forgets the frames in flight (flush).
    pub fn reset(&mut self) {}

    /// Frames given to `process` that have not come out yet.
    pub fn in_flight(&self) -> usize {
        0
    }

    /// Number of denoising steps `n`.
    pub fn steps(&self) -> usize {
        self.params.t_index_list.len()
    }

    /// How many frames a frame waits behind before it comes out: `(n - 1) * batch_size`.
    pub fn latency_frames(&self) -> usize {
        self.steps().saturating_sub(1) * self.opts.batch_size
    }

    /// Runs the tokenizer and text encoder on `text`.
    pub fn encode_prompt(&mut self, text: &str) -> Result<Embedding, EngineError> {
        let _ = text;
        Err(EngineError::argument("engine", "a complete implementation", "work in progress"))
    }

    /// Replaces the conditioning (and optionally the negative conditioning) directly, e.g.
    /// for prompt blends; kept until the next prompt change in `set_params`.
    pub fn set_conditioning(&mut self, cond: Embedding, uncond: Option<Embedding>) {
        let _ = (cond, uncond);
    }

    /// The init noise for `seed` at this engine's shape.
    pub fn noise_for_seed(&self, seed: u64) -> Noise {
        let (h, w) = (self.opts.height as usize / 8, self.opts.width as usize / 8);
        noise::init_noise(seed, self.steps(), h, w)
    }

    /// Replaces the init noise (e.g. a blend of two seeds); kept until the seed changes.
    pub fn set_noise(&mut self, noise: Noise) {
        self.noise = noise;
    }

    /// Cumulative time per stage and call counts.
    pub fn timings(&self) -> Timings {
        self.timings.clone()
    }
}
