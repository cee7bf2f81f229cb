// SPDX-License-Identifier: MPL-2.0
//! Smooth changes on the engine: fades of the text conditioning and of the init noise over
//! `transition-frames` frames, and weighted prompt and seed blends.
//!
//! The engine's own `set_params` jumps: it encodes a new prompt and draws a new seed's
//! noise at once. [`Smoother::before_batch`], called before every model call (after
//! `set_params`), overrides the conditioning and the noise while a fade or a blend is
//! active, through [`Engine::set_conditioning`] and [`Engine::set_noise`]. When neither is
//! active it leaves the engine's own values alone, so going back to a plain prompt and
//! seed gives exactly the output the engine gives without any of this.
//!
//! A transition of `N` frames shows `N` frames in between: the k-th frame entering after
//! the change (k = 1..N) uses `t = k / (N + 1)`, and frame `N + 1` the target itself, bit
//! for bit (so `N = 1` is one half-way frame, and 0 a jump). All frames of one model call
//! share one value (the one of its last frame). A fade starts from what the engine used
//! last, so a change in the middle of a fade continues from where it was.

use std::collections::HashMap;
use std::sync::Arc;

use super::live::LiveSettings;
use crate::diffusion::{Embedding, Engine, EngineError, Noise, StreamParams};
use crate::settings::blend::{
    BlendMode, Fade, blend_embeddings, blend_noise, embedding_transition, noise_transition,
};

/// What the conditioning should be.
#[derive(Clone, Debug, PartialEq)]
enum CondTarget {
    Prompt(String),
    Blend(Vec<(String, f64)>, BlendMode),
}

/// What the init noise should be.
#[derive(Clone, Debug, PartialEq)]
enum NoiseTarget {
    Seed(u64),
    Blend(Vec<(u64, f64)>, BlendMode),
}

/// What the engine holds now.
#[derive(Clone, Debug, PartialEq)]
enum Holds<T> {
    /// The engine's own value from `set_params` (its prompt's encoding, its seed's noise).
    Own,
    /// Exactly the value of this target, set by us.
    Target(T),
    /// An intermediate value of a fade.
    Fading,
}

/// A fade in progress: from, to, progress, how to interpolate (embeddings only; noise
/// always takes the renormalised slerp).
struct FadeState {
    from: Vec<f32>,
    to: Vec<f32>,
    fade: Fade,
    mode: BlendMode,
}

/// One followed value (conditioning or noise).
struct Track<T> {
    target: Option<T>,
    holds: Holds<T>,
    fade: Option<FadeState>,
    /// The value of the last fade step: the start of a fade that interrupts it.
    shown: Option<Vec<f32>>,
}

impl<T> Default for Track<T> {
    fn default() -> Self {
        Track {
            target: None,
            holds: Holds::Own,
            fade: None,
            shown: None,
        }
    }
}

impl<T: PartialEq + Clone> Track<T> {
    /// Takes a new target; starts a fade from the value shown (or the old target's value)
    /// when `frames > 0` and there was a target before. Returns the old target when a fade
    /// needs its value.
    fn retarget(&mut self, target: &T, frames: u32) -> Option<(Option<Vec<f32>>, T)> {
        if self.target.as_ref() == Some(target) {
            return None;
        }
        let old = self.target.replace(target.clone());
        self.fade = None;
        let shown = self.shown.take();
        match old {
            Some(old) if frames > 0 => Some((shown, old)),
            _ => None,
        }
    }
}

/// Follows the live settings batch by batch; owned next to the engine.
#[derive(Default)]
pub struct Smoother {
    cond: Track<CondTarget>,
    noise: Track<NoiseTarget>,
    /// The encodings of the current conditioning target's prompts (each `77 * E` floats),
    /// so that moving a blend's weights runs no text encoder. Only the current target's:
    /// a show typing new prompts would otherwise keep every prompt it ever blended.
    encodings: HashMap<String, Arc<Vec<f32>>>,
    cond_shape: Option<[usize; 3]>,
}

impl std::fmt::Debug for Smoother {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smoother")
            .field("cond", &self.cond.target)
            .field("cond_fade", &self.cond.fade.as_ref().map(|f| f.fade))
            .field("noise", &self.noise.target)
            .field("noise_fade", &self.noise.fade.as_ref().map(|f| f.fade))
            .finish()
    }
}

/// The shape of the engine's init noise: `[n, 4, h / 8, w / 8]`.
fn noise_shape(engine: &Engine) -> [usize; 4] {
    let o = engine.options();
    [
        engine.steps(),
        4,
        o.height as usize / 8,
        o.width as usize / 8,
    ]
}

/// A fade of `frames` transition frames: `frames + 1` steps, the last one the target.
fn fade_of(frames: u32) -> Fade {
    Fade::new(frames.saturating_add(1))
}

impl Smoother {
    pub fn new() -> Smoother {
        Smoother::default()
    }

    /// Tells the smoother what `Engine::set_params` just replaced: a changed prompt means
    /// the engine holds its own encoding again, a changed seed or number of steps its own
    /// noise (and a noise fade of the old shape cannot go on: it ends at once).
    pub fn params_changed(&mut self, old: &StreamParams, new: &StreamParams) {
        if old.prompt != new.prompt {
            self.cond.holds = Holds::Own;
        }
        let steps_changed = old.t_index_list.len() != new.t_index_list.len();
        if old.seed != new.seed || steps_changed {
            self.noise.holds = Holds::Own;
        }
        if steps_changed {
            self.noise.fade = None;
            self.noise.shown = None;
        }
    }

    fn encoding(&mut self, engine: &mut Engine, text: &str) -> Result<Arc<Vec<f32>>, EngineError> {
        if let Some(e) = self.encodings.get(text) {
            return Ok(e.clone());
        }
        let e = engine.encode_prompt(text)?;
        self.cond_shape = Some(e.shape);
        let data = Arc::new(e.data);
        self.encodings.insert(text.to_string(), data.clone());
        Ok(data)
    }

    fn cond_value(&mut self, engine: &mut Engine, t: &CondTarget) -> Result<Vec<f32>, EngineError> {
        match t {
            CondTarget::Prompt(p) => Ok(self.encoding(engine, p)?.to_vec()),
            CondTarget::Blend(items, mode) => {
                let mut encoded = Vec::with_capacity(items.len());
                for (text, w) in items {
                    encoded.push((self.encoding(engine, text)?, *w));
                }
                let refs: Vec<(&[f32], f64)> =
                    encoded.iter().map(|(e, w)| (e.as_slice(), *w)).collect();
                blend_embeddings(&refs, *mode, self.row_len())
                    .map_err(|e| EngineError::argument("prompt-blend", "weights with a sum > 0", e))
            }
        }
    }

    /// Forgets the encodings of prompts `target` does not name.
    fn keep_encodings_of(&mut self, target: &CondTarget) {
        match target {
            CondTarget::Prompt(p) => self.encodings.retain(|k, _| k == p),
            CondTarget::Blend(items, _) => self
                .encodings
                .retain(|k, _| items.iter().any(|(text, _)| text == k)),
        }
    }

    fn row_len(&self) -> usize {
        self.cond_shape.map_or(1, |s| s[2])
    }

    fn embedding(&self, data: Vec<f32>) -> Embedding {
        let shape = self.cond_shape.unwrap_or([1, 1, data.len()]);
        Embedding { shape, data }
    }

    fn noise_value(engine: &Engine, t: &NoiseTarget) -> Result<Noise, EngineError> {
        match t {
            NoiseTarget::Seed(s) => Ok(engine.noise_for_seed(*s)),
            NoiseTarget::Blend(items, mode) => {
                let noises: Vec<(Noise, f64)> = items
                    .iter()
                    .map(|(s, w)| (engine.noise_for_seed(*s), *w))
                    .collect();
                let shape = noise_shape(engine);
                let refs: Vec<(&[f32], f64)> = noises
                    .iter()
                    .map(|(n, w)| (n.data.as_slice(), *w))
                    .collect();
                let data = blend_noise(&refs, *mode).map_err(|e| {
                    EngineError::argument("seed-blend", "weights with a sum > 0", e)
                })?;
                Ok(Noise { shape, data })
            }
        }
    }

    /// Brings the engine's conditioning and noise to what `s` asks for the next `frames`
    /// frames (one model call): starts, advances or ends fades, applies blends.
    pub fn before_batch(
        &mut self,
        engine: &mut Engine,
        s: &LiveSettings,
        frames: u32,
    ) -> Result<(), EngineError> {
        let cond_target = match &s.prompt_blend {
            Some(b) if !b.is_empty() => CondTarget::Blend(b.clone(), s.blend_mode),
            _ => CondTarget::Prompt(s.params.prompt.clone()),
        };
        let noise_target = match &s.seed_blend {
            Some(b) if !b.is_empty() => NoiseTarget::Blend(b.clone(), s.blend_mode),
            _ => NoiseTarget::Seed(s.params.seed),
        };
        self.follow_cond(engine, cond_target, s, frames)?;
        self.follow_noise(engine, noise_target, s, frames)
    }

    fn follow_cond(
        &mut self,
        engine: &mut Engine,
        target: CondTarget,
        s: &LiveSettings,
        frames: u32,
    ) -> Result<(), EngineError> {
        if let Some((shown, old)) = self.cond.retarget(&target, s.transition_frames) {
            let from = match shown {
                Some(v) => v,
                None => self.cond_value(engine, &old)?,
            };
            let to = self.cond_value(engine, &target)?;
            self.keep_encodings_of(&target);
            self.cond.fade = Some(FadeState {
                from,
                to,
                fade: fade_of(s.transition_frames),
                mode: s.blend_mode,
            });
        }
        if let Some(mut f) = self.cond.fade.take() {
            let mut t = f.fade.t();
            for _ in 0..frames.max(1) {
                t = f.fade.step();
            }
            let value = embedding_transition(&f.from, &f.to, t, f.mode, self.row_len());
            engine.set_conditioning(self.embedding(value.clone()), None);
            if f.fade.finished() {
                self.cond.holds = Holds::Target(target);
            } else {
                self.cond.holds = Holds::Fading;
                self.cond.shown = Some(value);
                self.cond.fade = Some(f);
            }
            return Ok(());
        }
        let in_place = match (&self.cond.holds, &target) {
            (Holds::Own, CondTarget::Prompt(p)) => *p == engine.params().prompt,
            (Holds::Target(t), _) => *t == target,
            _ => false,
        };
        if !in_place {
            let value = self.cond_value(engine, &target)?;
            self.keep_encodings_of(&target);
            engine.set_conditioning(self.embedding(value), None);
            self.cond.holds = Holds::Target(target);
        }
        Ok(())
    }

    fn follow_noise(
        &mut self,
        engine: &mut Engine,
        target: NoiseTarget,
        s: &LiveSettings,
        frames: u32,
    ) -> Result<(), EngineError> {
        if let Some((shown, old)) = self.noise.retarget(&target, s.transition_frames) {
            let to = Self::noise_value(engine, &target)?;
            let from = match shown {
                Some(v) if v.len() == to.data.len() => v,
                _ => Self::noise_value(engine, &old)?.data,
            };
            self.noise.fade = Some(FadeState {
                from,
                to: to.data,
                fade: fade_of(s.transition_frames),
                mode: BlendMode::Slerp,
            });
        }
        if let Some(mut f) = self.noise.fade.take() {
            let shape = noise_shape(engine);
            if f.to.len() != shape.iter().product::<usize>() || f.from.len() != f.to.len() {
                // The number of steps changed under the fade: jump to the target.
                let value = Self::noise_value(engine, &target)?;
                engine.set_noise(value);
                self.noise.holds = Holds::Target(target);
                return Ok(());
            }
            let mut t = f.fade.t();
            for _ in 0..frames.max(1) {
                t = f.fade.step();
            }
            let value = noise_transition(&f.from, &f.to, t);
            engine.set_noise(Noise {
                shape,
                data: value.clone(),
            });
            if f.fade.finished() {
                self.noise.holds = Holds::Target(target);
            } else {
                self.noise.holds = Holds::Fading;
                self.noise.shown = Some(value);
                self.noise.fade = Some(f);
            }
            return Ok(());
        }
        let in_place = match (&self.noise.holds, &target) {
            (Holds::Own, NoiseTarget::Seed(seed)) => *seed == engine.params().seed,
            (Holds::Target(t), _) => *t == target,
            _ => false,
        };
        if !in_place {
            let value = Self::noise_value(engine, &target)?;
            engine.set_noise(value);
            self.noise.holds = Holds::Target(target);
        }
        Ok(())
    }
}
