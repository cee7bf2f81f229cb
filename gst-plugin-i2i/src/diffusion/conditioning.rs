// SPDX-License-Identifier: MPL-2.0
//! The text conditioning and the init noise of new frames, with one owner: the engine.
//!
//! [`StreamParams`] says what they should be: a prompt, or a weighted prompt blend
//! (`prompt_blend`); a seed, or a weighted seed blend (`seed_blend`); combined by
//! `blend_mode`. A change jumps, or with `transition_frames` fades from what frames got
//! until then. A transition of `N` frames shows `N` frames in between: the k-th frame
//! entering after the change (k = 1..N) uses `t = k / (N + 1)`, and frame `N + 1` the target
//! itself, bit for bit (so `N = 1` is one half-way frame, and 0 a jump). All frames of one
//! model call share one value (that of its last frame). A change in the middle of a fade
//! fades on from where it was; a change of the number of steps (the noise's shape) ends a
//! noise fade at once.
//!
//! A prompt is encoded once for as long as the current target names it (moving a blend's
//! weights runs no text encoder); the encodings of prompts no longer named are dropped, so
//! a show typing new prompts keeps only what it shows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use i2i_core::settings::blend::{
    BlendMode, Fade, blend_embeddings, blend_noise, embedding_transition, noise_transition,
};

use super::stream::Emb;
use super::{EngineError, Noise, StreamParams, noise};

static NEXT_EMB_ID: AtomicU64 = AtomicU64::new(1);

/// A new conditioning value, with an id of its own (frames that share one share its rows).
pub(crate) fn emb(shape: [usize; 3], data: Vec<f32>) -> Arc<Emb> {
    Arc::new(Emb {
        id: NEXT_EMB_ID.fetch_add(1, Ordering::Relaxed),
        shape,
        data,
    })
}

/// What the conditioning should be.
#[derive(Clone, Debug, PartialEq)]
enum CondTarget {
    Prompt(String),
    Blend(Vec<(String, f64)>, BlendMode),
}

impl CondTarget {
    fn of(p: &StreamParams) -> CondTarget {
        match &p.prompt_blend {
            Some(b) if !b.is_empty() => CondTarget::Blend(b.clone(), p.blend_mode),
            _ => CondTarget::Prompt(p.prompt.clone()),
        }
    }

    /// Whether `text` is one of the prompts this target needs.
    fn names(&self, text: &str) -> bool {
        match self {
            CondTarget::Prompt(p) => p == text,
            CondTarget::Blend(items, _) => items.iter().any(|(t, _)| t == text),
        }
    }
}

/// What the init noise should be.
#[derive(Clone, Debug, PartialEq)]
enum NoiseTarget {
    Seed(u64),
    Blend(Vec<(u64, f64)>, BlendMode),
}

impl NoiseTarget {
    fn of(p: &StreamParams) -> NoiseTarget {
        match &p.seed_blend {
            Some(b) if !b.is_empty() => NoiseTarget::Blend(b.clone(), p.blend_mode),
            _ => NoiseTarget::Seed(p.seed),
        }
    }
}

/// How a fade interpolates.
#[derive(Clone, Copy, Debug)]
enum Interpolate {
    /// Embeddings: by `blend-mode`, per token row of `row_len` floats.
    Embedding(BlendMode, usize),
    /// Noise: always the renormalised slerp, which keeps its variance.
    Noise,
}

/// A fade in progress: from, to, progress, and how to interpolate.
struct FadeState {
    from: Vec<f32>,
    to: Vec<f32>,
    fade: Fade,
    how: Interpolate,
}

impl FadeState {
    /// Advances by the `frames` frames of one model call: the value they share, the target
    /// itself once the fade is over (then true).
    fn step(&mut self, frames: usize) -> (Vec<f32>, bool) {
        let mut t = self.fade.t();
        for _ in 0..frames.max(1) {
            t = self.fade.step();
        }
        if self.fade.finished() {
            return (self.to.clone(), true);
        }
        let value = match self.how {
            Interpolate::Embedding(mode, row_len) => {
                embedding_transition(&self.from, &self.to, t, mode, row_len)
            }
            Interpolate::Noise => noise_transition(&self.from, &self.to, t),
        };
        (value, false)
    }
}

/// A fade of `frames` transition frames: `frames + 1` steps, the last one the target.
fn fade_of(frames: u32) -> Fade {
    Fade::new(frames.saturating_add(1))
}

/// What the text encoder gives for a prompt: `[1, rows, E]` floats in row-major order.
pub(crate) type Encode<'a> = dyn FnMut(&str) -> Result<Vec<f32>, EngineError> + 'a;

/// The conditioning and init noise of the frames entering next, their targets and fades.
pub(crate) struct Conditioning {
    /// The text encoder's output shape `[1, rows, E]`.
    shape: [usize; 3],
    /// The latent size `(h / 8, w / 8)`.
    latent: (usize, usize),
    cond_target: CondTarget,
    cond: Arc<Emb>,
    cond_fade: Option<FadeState>,
    noise_target: NoiseTarget,
    noise: Arc<Noise>,
    noise_fade: Option<FadeState>,
    /// The encodings of the current conditioning target's prompts.
    encodings: HashMap<String, Arc<Vec<f32>>>,
}

impl std::fmt::Debug for Conditioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conditioning")
            .field("cond", &self.cond_target)
            .field("cond_fade", &self.cond_fade.as_ref().map(|f| f.fade))
            .field("noise", &self.noise_target)
            .field("noise_fade", &self.noise_fade.as_ref().map(|f| f.fade))
            .finish()
    }
}

impl Conditioning {
    /// What `p` asks for at once (no fade at load), `prompt_encoding` being the encoding of
    /// `p.prompt` the model load made, `steps` the number of denoising steps.
    pub fn new(
        p: &StreamParams,
        shape: [usize; 3],
        prompt_encoding: Vec<f32>,
        latent: (usize, usize),
        steps: usize,
        encode: &mut Encode,
    ) -> Result<Conditioning, EngineError> {
        let mut encodings = HashMap::new();
        encodings.insert(p.prompt.clone(), Arc::new(prompt_encoding));
        let mut c = Conditioning {
            shape,
            latent,
            cond_target: CondTarget::Prompt(p.prompt.clone()),
            cond: emb(shape, Vec::new()),
            cond_fade: None,
            noise_target: NoiseTarget::Seed(p.seed),
            noise: Arc::new(Noise {
                shape: [0; 4],
                data: Vec::new(),
            }),
            noise_fade: None,
            encodings,
        };
        let cond_target = CondTarget::of(p);
        let cond = c.cond_value(&cond_target, encode)?;
        c.keep_encodings_of(&cond_target);
        c.cond = emb(shape, cond);
        c.cond_target = cond_target;
        let noise_target = NoiseTarget::of(p);
        c.noise = Arc::new(c.noise_value(&noise_target, steps)?);
        c.noise_target = noise_target;
        Ok(c)
    }

    /// The conditioning of the frames entering next.
    pub fn cond(&self) -> &Arc<Emb> {
        &self.cond
    }

    /// The init noise of the frames entering next.
    pub fn noise(&self) -> &Arc<Noise> {
        &self.noise
    }

    /// The text encoder's output shape.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The init noise of one seed for `steps` denoising steps.
    pub fn noise_for_seed(&self, seed: u64, steps: usize) -> Noise {
        noise::init_noise(seed, steps, self.latent.0, self.latent.1)
    }

    /// New settings (`steps` denoising steps): a target that changed fades over
    /// `p.transition_frames` from what frames get now, or jumps. On error nothing changes.
    pub fn set(
        &mut self,
        p: &StreamParams,
        steps: usize,
        encode: &mut Encode,
    ) -> Result<(), EngineError> {
        let cond_target = CondTarget::of(p);
        let cond_to = if cond_target != self.cond_target {
            Some(self.cond_value(&cond_target, encode)?)
        } else {
            None
        };
        let noise_target = NoiseTarget::of(p);
        let retargeted = noise_target != self.noise_target;
        let reshaped = steps != self.noise.shape[0];
        let noise_to = if retargeted || reshaped {
            Some(self.noise_value(&noise_target, steps)?)
        } else {
            None
        };
        // A fade of the old shape cannot go on: a new one starts from the old target at
        // the new shape.
        let noise_from = if retargeted && reshaped && p.transition_frames > 0 {
            Some(self.noise_value(&self.noise_target, steps)?.data)
        } else {
            None
        };
        // Commit.
        if let Some(to) = cond_to {
            self.keep_encodings_of(&cond_target);
            self.cond_target = cond_target;
            if p.transition_frames > 0 {
                self.cond_fade = Some(FadeState {
                    from: self.cond.data.clone(),
                    to,
                    fade: fade_of(p.transition_frames),
                    how: Interpolate::Embedding(p.blend_mode, self.shape[2].max(1)),
                });
            } else {
                self.cond_fade = None;
                self.cond = emb(self.shape, to);
            }
        }
        if let Some(to) = noise_to {
            self.noise_target = noise_target;
            let from = match noise_from {
                Some(from) => Some(from),
                None if retargeted && p.transition_frames > 0 => Some(self.noise.data.clone()),
                None => None,
            };
            match from {
                Some(from) => {
                    self.noise = Arc::new(Noise {
                        shape: to.shape,
                        data: from.clone(),
                    });
                    self.noise_fade = Some(FadeState {
                        from,
                        to: to.data,
                        fade: fade_of(p.transition_frames),
                        how: Interpolate::Noise,
                    });
                }
                None => {
                    // The same target at another shape: the new noise at once.
                    self.noise_fade = None;
                    self.noise = Arc::new(to);
                }
            }
        }
        Ok(())
    }

    /// Before a model call of `frames` new frames: the fades move on. True when the values
    /// the frames get changed.
    pub fn step(&mut self, frames: usize) -> bool {
        let mut changed = false;
        if let Some(f) = &mut self.cond_fade {
            let (value, done) = f.step(frames);
            self.cond = emb(self.shape, value);
            if done {
                self.cond_fade = None;
            }
            changed = true;
        }
        if let Some(f) = &mut self.noise_fade {
            let (data, done) = f.step(frames);
            self.noise = Arc::new(Noise {
                shape: self.noise.shape,
                data,
            });
            if done {
                self.noise_fade = None;
            }
            changed = true;
        }
        changed
    }

    fn encoding(&mut self, text: &str, encode: &mut Encode) -> Result<Arc<Vec<f32>>, EngineError> {
        if let Some(e) = self.encodings.get(text) {
            return Ok(e.clone());
        }
        let e = Arc::new(encode(text)?);
        self.encodings.insert(text.to_string(), e.clone());
        Ok(e)
    }

    fn cond_value(&mut self, t: &CondTarget, encode: &mut Encode) -> Result<Vec<f32>, EngineError> {
        match t {
            CondTarget::Prompt(p) => Ok(self.encoding(p, encode)?.to_vec()),
            CondTarget::Blend(items, mode) => {
                let mut encoded = Vec::with_capacity(items.len());
                for (text, w) in items {
                    encoded.push((self.encoding(text, encode)?, *w));
                }
                let refs: Vec<(&[f32], f64)> =
                    encoded.iter().map(|(e, w)| (e.as_slice(), *w)).collect();
                blend_embeddings(&refs, *mode, self.shape[2].max(1))
                    .map_err(|e| EngineError::argument("prompt-blend", "weights with a sum > 0", e))
            }
        }
    }

    /// Forgets the encodings of prompts `target` does not name.
    fn keep_encodings_of(&mut self, target: &CondTarget) {
        self.encodings.retain(|k, _| target.names(k));
    }

    fn noise_value(&self, t: &NoiseTarget, steps: usize) -> Result<Noise, EngineError> {
        match t {
            NoiseTarget::Seed(s) => Ok(self.noise_for_seed(*s, steps)),
            NoiseTarget::Blend(items, mode) => {
                let noises: Vec<(Noise, f64)> = items
                    .iter()
                    .map(|(s, w)| (self.noise_for_seed(*s, steps), *w))
                    .collect();
                let refs: Vec<(&[f32], f64)> = noises
                    .iter()
                    .map(|(n, w)| (n.data.as_slice(), *w))
                    .collect();
                let data = blend_noise(&refs, *mode).map_err(|e| {
                    EngineError::argument("seed-blend", "weights with a sum > 0", e)
                })?;
                Ok(Noise {
                    shape: [steps, 4, self.latent.0, self.latent.1],
                    data,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in text encoder: each prompt's length, its bytes' sum and a count of calls.
    fn encoder(calls: &mut u32) -> impl FnMut(&str) -> Result<Vec<f32>, EngineError> + '_ {
        move |t: &str| {
            *calls += 1;
            let sum = t.bytes().map(f32::from).sum::<f32>();
            Ok(vec![t.len() as f32 + 1.0, sum + 1.0, 1.0, 2.0])
        }
    }

    fn params(prompt: &str, seed: u64, transition_frames: u32) -> StreamParams {
        StreamParams {
            prompt: prompt.into(),
            seed,
            transition_frames,
            ..Default::default()
        }
    }

    fn start(p: &StreamParams, calls: &mut u32) -> Conditioning {
        let first = encoder(calls)(&p.prompt).unwrap();
        Conditioning::new(p, [1, 2, 2], first, (2, 2), 2, &mut encoder(calls)).unwrap()
    }

    #[test]
    fn a_transition_shows_n_frames_in_between_then_the_target_exactly() {
        let mut calls = 0;
        let mut c = start(&params("a", 1, 0), &mut calls);
        let a = c.cond().data.clone();
        let noise_a = c.noise().data.clone();
        c.set(&params("bb", 2, 2), 2, &mut encoder(&mut calls))
            .unwrap();
        // Nothing moves before a frame enters.
        assert_eq!(c.cond().data, a);
        assert!(c.step(1));
        let first = c.cond().data.clone();
        assert!(first != a);
        assert!(c.noise().data != noise_a);
        assert!(c.step(1));
        assert!(c.step(1));
        let mut b_calls = 0;
        let b = encoder(&mut b_calls)("bb").unwrap();
        assert_eq!(c.cond().data, b, "the target, bit for bit");
        assert_eq!(c.noise().data, c.noise_for_seed(2, 2).data);
        assert!(!c.step(1), "over");
        // Load, then "bb": the text encoder ran once per prompt.
        assert_eq!(calls, 2);
    }

    #[test]
    fn a_jump_blends_and_a_new_step_count_redraws_the_noise_at_once() {
        let mut calls = 0;
        let mut c = start(&params("a", 1, 0), &mut calls);
        let blend = StreamParams {
            prompt_blend: Some(vec![("a".into(), 1.0), ("c".into(), 1.0)]),
            ..params("a", 1, 0)
        };
        c.set(&blend, 2, &mut encoder(&mut calls)).unwrap();
        // "a" was kept for the blend: only "c" ran the encoder.
        assert_eq!(calls, 2);
        assert!(!c.step(1));
        // Three steps: the noise's shape changes, even in the middle of a fade.
        c.set(&params("a", 5, 4), 2, &mut encoder(&mut calls))
            .unwrap();
        c.set(&params("a", 5, 4), 3, &mut encoder(&mut calls))
            .unwrap();
        assert_eq!(c.noise().shape[0], 3);
        assert_eq!(c.noise().data, c.noise_for_seed(5, 3).data);
        // A bad blend changes nothing.
        let bad = StreamParams {
            seed_blend: Some(vec![(1, 0.0)]),
            ..params("z", 5, 0)
        };
        let before = c.cond().data.clone();
        assert!(c.set(&bad, 3, &mut encoder(&mut calls)).is_err());
        assert_eq!(c.cond().data, before);
    }
}
