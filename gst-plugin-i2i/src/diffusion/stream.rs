// SPDX-License-Identifier: MPL-2.0
//! The stream batch: frames in flight through the denoising steps.
//!
//! Each frame carries its own latent `X`, its own stock noise `S` and a snapshot of the
//! parameters it entered with ([`FrameParams`]), so its result depends only on its pixels,
//! those parameters and the fixed noise: not on `batch_size`, not on the frames around it.
//! Each [`Stream::advance`] moves every frame in flight one step with one UNet evaluation
//! over all their rows (conditional rows, plus the negative rows of full CFG and the
//! one-time negative rows of `initialize`). A frame entering at call `c` comes out at call
//! `c + n - 1`; outputs leave in input order, skipped frames repeat the output of the last
//! processed frame before them once that one is out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use ort::value::Tensor;

use super::model::{ControlRows, Model};
use super::scheduler::StepConstants;
use super::{CfgType, DecodedFrame, EngineError, Noise, Timings, noise};

/// A text embedding `[1, L, E]` with an identity, so the UNet's hidden-state batch is only
/// rebuilt when the rows' embeddings change.
#[derive(Debug)]
pub struct Emb {
    pub id: u64,
    pub shape: [usize; 3],
    pub data: Vec<f32>,
}

/// Everything a frame's trajectory depends on, fixed when it enters.
#[derive(Debug)]
pub struct FrameParams {
    pub steps: Vec<StepConstants>,
    pub noise: Arc<Noise>,
    pub cond: Arc<Emb>,
    /// Present when `cfg` needs it (full, initialize).
    pub uncond: Option<Arc<Emb>>,
    /// Effective guidance type: `None` whenever guidance_scale <= 1.
    pub cfg: CfgType,
    pub guidance: f32,
    pub delta: f32,
    pub add_noise: bool,
    /// Temporal feedback `s` in `[0, 1]`: the initial latent is
    /// `(1 - s) * z_in + s * z_prev` (see [`Stream::push_frame`]); 0 = off.
    pub feedback: f32,
    /// One scale per ControlNet (empty for a plain UNet).
    pub control_scales: Vec<f32>,
}

impl FrameParams {
    pub fn n(&self) -> usize {
        self.steps.len()
    }

    /// UNet rows one frame needs at step `i`.
    pub fn rows_at(&self, i: usize) -> usize {
        match self.cfg {
            CfgType::Full => 2,
            CfgType::Initialize if i == 0 => 2,
            _ => 1,
        }
    }
}

/// UNet rows per call for `batch` new frames per call once the pipeline is full.
pub fn rows_per_call(cfg: CfgType, guided: bool, n: usize, batch: usize) -> usize {
    match (cfg, guided) {
        (CfgType::Full, true) => 2 * n * batch,
        (CfgType::Initialize, true) => n * batch + batch,
        _ => n * batch,
    }
}

/// The stochastic similarity filter: skips a frame that looks like the last processed one,
/// with probability `max(0, 1 - (1 - cos) / (1 - threshold))`, never more than
/// `max_skip` frames in a row. The coin for the f-th frame it sees is spec B's `u_f` with
/// `seed ^ COIN_SEED_XOR`; `f` counts every frame the filter sees, the first one included.
#[derive(Debug, Default)]
pub struct SimilarityFilter {
    reference: Option<Vec<f32>>,
    skipped_in_row: u32,
    seen: u64,
}

impl SimilarityFilter {
    pub fn reset(&mut self) {
        *self = SimilarityFilter::default();
    }

    /// Frames seen so far (the next coin index).
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// True when the frame `x` (preprocessed) is to be skipped.
    pub fn skip(&mut self, x: &[f32], threshold: f32, max_skip: u32, seed: u64) -> bool {
        let f = self.seen;
        self.seen += 1;
        let Some(reference) = self.reference.as_mut() else {
            self.reference = Some(x.to_vec());
            return false;
        };
        let p_skip = if threshold >= 1.0 {
            0.0
        } else {
            let s = cosine(reference, x);
            (1.0 - (1.0 - s) / (1.0 - threshold as f64)).max(0.0)
        };
        let u = noise::coin(seed, f);
        if p_skip < u || self.skipped_in_row >= max_skip {
            reference.copy_from_slice(x);
            self.skipped_in_row = 0;
            false
        } else {
            self.skipped_in_row += 1;
            true
        }
    }
}

/// Cosine similarity in f64; 1 for two zero vectors, 0 when only one is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

struct Flight {
    seq: u64,
    step: usize,
    x: Vec<f32>,
    stock: Vec<f32>,
    /// Control images `[num, 3, H, W]` in `[0, 1]` (ControlNet models).
    control: Option<Vec<f32>>,
    p: Arc<FrameParams>,
}

enum Entry {
    Frame { seq: u64, tag: u64 },
    Skip { tag: u64 },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RowKind {
    Cond,
    Uncond,
}

/// The frames in flight and the outputs waiting for their turn.
#[derive(Default)]
pub struct Stream {
    flights: Vec<Flight>,
    queue: VecDeque<Entry>,
    done: HashMap<u64, Arc<Tensor<f32>>>,
    last_output: Option<Arc<Tensor<f32>>>,
    next_seq: u64,
    pub filter: SimilarityFilter,
    spare: Vec<Vec<f32>>,
    rows: Vec<(usize, RowKind)>,
    sample: Vec<f32>,
    times: Vec<f32>,
    hidden: Vec<f32>,
    hidden_key: Vec<u64>,
    /// Counts rebuilds of `hidden`: the UNet keeps it bound while this stays.
    hidden_gen: u64,
    /// ControlNet rows: images `[rows, num, 3, H, W]` and scales `[rows, num]`.
    control_images: Vec<f32>,
    control_scales: Vec<f32>,
    eps: Vec<f32>,
    finals: Vec<f32>,
    /// The guided noise prediction of one frame (scratch).
    eps_buf: Vec<f32>,
    /// Per-step scratch kept across calls, so a steady stream allocates nothing per frame.
    scratch: StepScratch,
    /// Outputs handed out lately: once the caller drops them, their buffers are reused.
    recent: VecDeque<Arc<Tensor<f32>>>,
    /// The final (scaled) latent of the newest frame that finished: `z_prev` of latent
    /// feedback. Empty until a frame finished (and after a reset).
    feedback: Vec<f32>,
    /// Hand out the final latents (`[1, 4, h, w]`, already divided by the scaling factor:
    /// the decoder's input) instead of decoding them (`i2itransform output=latent`).
    pub latent_output: bool,
}

#[derive(Default)]
struct StepScratch {
    order: Vec<usize>,
    key: Vec<u64>,
    cond_row: Vec<usize>,
    uncond_row: Vec<usize>,
    finished: Vec<usize>,
    seqs: Vec<u64>,
    buffers: Vec<Option<Arc<Tensor<f32>>>>,
}

/// How many handed-out outputs are watched for reuse.
const RECENT_OUTPUTS: usize = 8;

impl Stream {
    /// Forgets frames in flight, waiting outputs and the similarity filter's state.
    pub fn reset(&mut self) {
        for f in std::mem::take(&mut self.flights) {
            self.recycle(f.x);
            self.recycle(f.stock);
        }
        self.queue.clear();
        self.done.clear();
        self.last_output = None;
        self.filter.reset();
        self.feedback.clear();
    }

    /// Frames given to the stream that have not come out yet.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    pub fn flights(&self) -> usize {
        self.flights.len()
    }

    /// Keeps a latent buffer for the next frame. A frame without guidance has no stock
    /// noise buffer (empty, never allocated): keeping those would grow `spare` by one entry
    /// per frame, each later filled and kept by a frame with guidance, so a stream switching
    /// between `cfg-type=none` and `self` kept every latent it ever made.
    fn recycle(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 {
            self.spare.push(v);
        }
    }

    fn buffer(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.spare.pop().unwrap_or_default();
        v.clear();
        v.resize(len, 0.0);
        v
    }

    /// Queues a skipped frame: it repeats the last processed frame's output.
    pub fn push_skip(&mut self, tag: u64) {
        self.queue.push_back(Entry::Skip { tag });
    }

    /// Starts a frame from its (unscaled) VAE latent `z`: `X_0 = alpha_0 * z * sf + beta_0 * N[0]`.
    ///
    /// With latent feedback `s > 0` and a frame finished before this one entered, the
    /// scaled latent is first blended with that frame's final latent `z_prev`:
    /// `X_0 = alpha_0 * ((1 - s) * z * sf + s * z_prev) + beta_0 * N[0]`. `z_prev` is the
    /// newest output when the frame enters: with `n` steps and `batch` frames per call,
    /// frame `k` (in call `c = k / batch`) blends with frame `(c - n + 1) * batch - 1`
    /// (with n = 1 and batch 1: the previous frame); none before the pipeline is warm.
    pub fn push_frame(
        &mut self,
        tag: u64,
        z: &[f32],
        scaling_factor: f32,
        control: Option<Vec<f32>>,
        p: Arc<FrameParams>,
    ) {
        let len = z.len();
        let mut x = self.buffer(len);
        let c = p.steps[0];
        let n0 = &p.noise.data[..len];
        let s = p.feedback;
        if s > 0.0 && self.feedback.len() == len {
            let keep = 1.0 - s;
            for (((x, &z), &zp), &nz) in x.iter_mut().zip(z).zip(&self.feedback).zip(n0) {
                *x = c.alpha * (keep * (z * scaling_factor) + s * zp) + c.beta * nz;
            }
        } else {
            for ((x, &z), &nz) in x.iter_mut().zip(z).zip(n0) {
                *x = c.alpha * (z * scaling_factor) + c.beta * nz;
            }
        }
        let mut stock = Vec::new();
        if matches!(p.cfg, CfgType::SelfNegative | CfgType::Initialize) {
            stock = self.buffer(len);
            stock.copy_from_slice(n0);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.flights.push(Flight {
            seq,
            step: 0,
            x,
            stock,
            control,
            p,
        });
        self.queue.push_back(Entry::Frame { seq, tag });
    }

    /// Runs one denoising step for every frame in flight and decodes the frames that
    /// finish.
    pub fn advance(&mut self, model: &mut Model, timings: &mut Timings) -> Result<(), EngineError> {
        if self.flights.is_empty() {
            return Ok(());
        }
        let lat = self.flights[0].x.len();
        // Rows ordered by timestep (descending, stable), so a scalar-timestep UNet gets
        // one call per distinct timestep.
        let mut order = std::mem::take(&mut self.scratch.order);
        order.clear();
        order.extend(0..self.flights.len());
        order.sort_by_key(|&i| {
            let f = &self.flights[i];
            std::cmp::Reverse(f.p.steps[f.step].timestep)
        });
        self.rows.clear();
        for &i in &order {
            let f = &self.flights[i];
            self.rows.push((i, RowKind::Cond));
            if f.p.rows_at(f.step) == 2 {
                self.rows.push((i, RowKind::Uncond));
            }
        }
        self.scratch.order = order;
        let nrows = self.rows.len();
        let seq_shape = {
            let c = &self.flights[0].p.cond;
            [c.shape[1], c.shape[2]]
        };
        let hid = seq_shape[0] * seq_shape[1];
        self.sample.resize(nrows * lat, 0.0);
        self.times.clear();
        let mut key = std::mem::take(&mut self.scratch.key);
        key.clear();
        for (r, &(i, kind)) in self.rows.iter().enumerate() {
            let f = &self.flights[i];
            self.sample[r * lat..(r + 1) * lat].copy_from_slice(&f.x);
            self.times.push(f.p.steps[f.step].timestep as f32);
            let emb = match kind {
                RowKind::Cond => &f.p.cond,
                RowKind::Uncond => f.p.uncond.as_ref().unwrap_or(&f.p.cond),
            };
            key.push(emb.id);
        }
        if key != self.hidden_key {
            self.hidden.resize(nrows * hid, 0.0);
            for (r, &(i, kind)) in self.rows.iter().enumerate() {
                let f = &self.flights[i];
                let emb = match kind {
                    RowKind::Cond => &f.p.cond,
                    RowKind::Uncond => f.p.uncond.as_ref().unwrap_or(&f.p.cond),
                };
                self.hidden[r * hid..(r + 1) * hid].copy_from_slice(&emb.data);
            }
            std::mem::swap(&mut self.hidden_key, &mut key);
            self.hidden_gen += 1;
        }
        self.scratch.key = key;
        let num = model.unet.control.as_ref().map_or(0, |c| c.count);
        let control = if num > 0 {
            self.control_images.clear();
            self.control_scales.clear();
            for &(i, _) in &self.rows {
                let f = &self.flights[i];
                if let Some(c) = &f.control {
                    self.control_images.extend_from_slice(c);
                }
                self.control_scales.extend_from_slice(&f.p.control_scales);
            }
            Some(ControlRows {
                images: &self.control_images,
                scales: &self.control_scales,
            })
        } else {
            None
        };
        let t0 = Instant::now();
        let calls = model.unet.predict(
            &self.sample,
            &self.times,
            &self.hidden,
            self.hidden_gen,
            seq_shape,
            control,
            &mut self.eps,
        )?;
        timings.unet += t0.elapsed();
        timings.unet_calls += calls as u64;
        timings.unet_rows += nrows as u64;

        // Where each frame's rows landed.
        let (cond_row, uncond_row) = (&mut self.scratch.cond_row, &mut self.scratch.uncond_row);
        cond_row.clear();
        cond_row.resize(self.flights.len(), 0);
        uncond_row.clear();
        uncond_row.resize(self.flights.len(), usize::MAX);
        for (r, &(i, kind)) in self.rows.iter().enumerate() {
            match kind {
                RowKind::Cond => cond_row[i] = r,
                RowKind::Uncond => uncond_row[i] = r,
            }
        }
        for (i, f) in self.flights.iter_mut().enumerate() {
            let ec = &self.eps[cond_row[i] * lat..(cond_row[i] + 1) * lat];
            let eu = (uncond_row[i] != usize::MAX)
                .then(|| &self.eps[uncond_row[i] * lat..(uncond_row[i] + 1) * lat]);
            step_frame(f, ec, eu, &mut self.eps_buf);
        }

        // Decode the frames that finished.
        let mut finished = std::mem::take(&mut self.scratch.finished);
        finished.clear();
        finished.extend(
            (0..self.flights.len()).filter(|&i| self.flights[i].step == self.flights[i].p.n()),
        );
        if finished.is_empty() {
            self.scratch.finished = finished;
            return Ok(());
        }
        // The newest finished frame is the next frames' feedback latent.
        if let Some(&i) = finished.iter().max_by_key(|&&i| self.flights[i].seq) {
            self.feedback.clear();
            self.feedback.extend_from_slice(&self.flights[i].x);
        }
        let sf = model.scaling_factor;
        self.finals.resize(finished.len() * lat, 0.0);
        for (k, &i) in finished.iter().enumerate() {
            let dst = &mut self.finals[k * lat..(k + 1) * lat];
            for (d, &x) in dst.iter_mut().zip(&self.flights[i].x) {
                *d = x / sf;
            }
        }
        let mut seqs = std::mem::take(&mut self.scratch.seqs);
        seqs.clear();
        seqs.extend(finished.iter().map(|&i| self.flights[i].seq));
        let mut buffers = std::mem::take(&mut self.scratch.buffers);
        buffers.clear();
        for _ in 0..finished.len() {
            let b = self.pixel_buffer();
            buffers.push(b);
        }
        if self.latent_output {
            // The decoder's input as it is: a second machine decodes it (`i2idecode`).
            let shape = model.vae_decoder.latent_shape();
            for (k, px) in buffers.iter_mut().enumerate() {
                let mut t = Tensor::<f32>::new(&ort::memory::Allocator::default(), shape)
                    .map_err(|e| EngineError::inference(&model.vae_decoder.graph.file, e))?;
                t.extract_tensor_mut()
                    .1
                    .copy_from_slice(&self.finals[k * lat..(k + 1) * lat]);
                *px = Some(Arc::new(t));
            }
        }
        let t0 = Instant::now();
        let calls = if self.latent_output {
            0
        } else {
            model
                .vae_decoder
                .decode(&self.finals, finished.len(), &mut buffers)?
        };
        for (&seq, px) in seqs.iter().zip(buffers.drain(..)) {
            if let Some(px) = px {
                self.done.insert(seq, px);
            }
        }
        self.scratch.seqs = seqs;
        self.scratch.buffers = buffers;
        self.scratch.finished = finished;
        // The copy out of ONNX Runtime's output counts with the decoder.
        timings.vae_decode += t0.elapsed();
        timings.vae_decode_calls += calls as u64;
        // Remove finished flights, keeping entry order.
        let mut flights = std::mem::take(&mut self.flights);
        flights.retain_mut(|f| {
            let keep = f.step < f.p.n();
            if !keep {
                self.recycle(std::mem::take(&mut f.x));
                self.recycle(std::mem::take(&mut f.stock));
            }
            keep
        });
        self.flights = flights;
        Ok(())
    }

    /// An output buffer nobody else holds: a recent output the caller has dropped (or
    /// none: the decoder makes one).
    fn pixel_buffer(&mut self) -> Option<Arc<Tensor<f32>>> {
        let i = self
            .recent
            .iter()
            .position(|a| Arc::strong_count(a) == 1 && Arc::weak_count(a) == 0)?;
        self.recent.remove(i)
    }

    /// Outputs ready to leave, in input order.
    pub fn collect(&mut self, out: &mut Vec<DecodedFrame>) {
        while let Some(front) = self.queue.front() {
            match *front {
                Entry::Frame { seq, tag } => {
                    let Some(px) = self.done.remove(&seq) else {
                        break;
                    };
                    self.last_output = Some(px.clone());
                    self.recent.push_back(px.clone());
                    if self.recent.len() > RECENT_OUTPUTS {
                        self.recent.pop_front();
                    }
                    out.push(DecodedFrame {
                        tag,
                        decoded: px,
                        skipped: false,
                    });
                }
                Entry::Skip { tag } => {
                    // The last processed frame before it has left already (order).
                    let Some(px) = self.last_output.clone() else {
                        break;
                    };
                    out.push(DecodedFrame {
                        tag,
                        decoded: px,
                        skipped: true,
                    });
                }
            }
            self.queue.pop_front();
        }
    }
}

/// One LCM step of one frame, with guidance and the stock-noise update, in place.
///
/// The guidance type, the residual update and the noise are decided once per frame, not
/// per element, so each loop below is branch-free and vectorises; every element gets the
/// same float32 operations in the same order as the formula reads.
fn step_frame(f: &mut Flight, ec: &[f32], eu: Option<&[f32]>, eps_buf: &mut Vec<f32>) {
    let p = &*f.p;
    let i = f.step;
    let n = p.n();
    let c = p.steps[i];
    let next = (i + 1 < n).then(|| p.steps[i + 1]);
    let lat = f.x.len();
    let g = p.guidance;
    let d = p.delta;
    let residual = matches!(p.cfg, CfgType::SelfNegative | CfgType::Initialize);
    if p.cfg == CfgType::Initialize
        && i == 0
        && let Some(eu) = eu
    {
        // The one-time negative: the uncond prediction replaces S_0.
        f.stock.copy_from_slice(eu);
    }
    // The guided noise prediction.
    let eps: &[f32] = match p.cfg {
        CfgType::None => &ec[..lat],
        CfgType::Full => match eu {
            Some(eu) => {
                eps_buf.resize(lat, 0.0);
                for ((e, &c), &u) in eps_buf.iter_mut().zip(&ec[..lat]).zip(&eu[..lat]) {
                    *e = u + g * (c - u);
                }
                eps_buf
            }
            None => {
                eps_buf.resize(lat, 0.0);
                // No negative row: the conditional prediction stands in for it.
                for (e, &c) in eps_buf.iter_mut().zip(&ec[..lat]) {
                    let u = c;
                    *e = u + g * (c - u);
                }
                eps_buf
            }
        },
        CfgType::SelfNegative | CfgType::Initialize => {
            eps_buf.resize(lat, 0.0);
            for ((e, &c), &s) in eps_buf.iter_mut().zip(&ec[..lat]).zip(&f.stock[..lat]) {
                let u = d * s;
                *e = u + g * (c - u);
            }
            eps_buf
        }
    };
    let (alpha, beta, c_out, c_skip) = (c.alpha, c.beta, c.c_out, c.c_skip);
    let x0 = |x: f32, eps: f32| c_out * (x - beta * eps) / alpha + c_skip * x;
    match next {
        Some(nx) => {
            let nn = &p.noise.data[(i + 1) * lat..(i + 2) * lat];
            if residual {
                let ratio = nx.alpha / nx.beta;
                for ((s, &e), &nz) in f.stock[..lat].iter_mut().zip(eps).zip(nn) {
                    let bs = beta * *s;
                    let dx = c_out * (bs - beta * e) / alpha + c_skip * bs;
                    *s = nz + ratio * dx;
                }
            }
            if p.add_noise {
                for ((x, &e), &nz) in f.x.iter_mut().zip(eps).zip(nn) {
                    *x = nx.alpha * x0(*x, e) + nx.beta * nz;
                }
            } else {
                for (x, &e) in f.x.iter_mut().zip(eps) {
                    *x = nx.alpha * x0(*x, e);
                }
            }
        }
        None => {
            for (x, &e) in f.x.iter_mut().zip(eps) {
                *x = x0(*x, e);
            }
        }
    }
    f.step += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_edges() {
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 0.0]), 0.0);
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
    }

    #[test]
    fn identical_frames_skip_at_most_max_in_a_row() {
        let mut f = SimilarityFilter::default();
        let x = vec![0.5f32; 16];
        assert!(
            !f.skip(&x, 0.98, 3, 1),
            "the first frame is always processed"
        );
        let decisions: Vec<bool> = (0..12).map(|_| f.skip(&x, 0.98, 3, 1)).collect();
        // cos = 1 gives p_skip = 1 > u: skipped until the limit forces one through.
        assert_eq!(
            decisions,
            [
                true, true, true, false, true, true, true, false, true, true, true, false
            ]
        );
        assert_eq!(f.seen(), 13);
    }

    #[test]
    fn different_frames_are_processed() {
        let mut f = SimilarityFilter::default();
        let a: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..64).map(|i| (i as f32 * 0.91).cos()).collect();
        assert!(!f.skip(&a, 0.98, 10, 1));
        for _ in 0..20 {
            assert!(!f.skip(&b, 0.98, 10, 1));
            assert!(!f.skip(&a, 0.98, 10, 1));
        }
    }
}
