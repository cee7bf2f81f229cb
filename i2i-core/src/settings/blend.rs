// SPDX-License-Identifier: MPL-2.0
//! Blends and transitions of text embeddings and of initial noise.
//!
//! * Noise: a weighted blend of several seeds' noise, and the fade from one seed's noise to
//!   another's, must stay Gaussian-like with the variance the scheduler expects. A plain
//!   average of independent normals shrinks it, so the linear blend is divided by
//!   `sqrt(sum w_i^2)` (weights normalised to sum 1), and spherical interpolation (slerp) is
//!   rescaled to the interpolated norm ("renormalised").
//! * Embeddings: linear interpolation (weights normalised to sum 1), or slerp per token row
//!   (each of the 77 rows of `[1, 77, E]` separately), rescaled to the interpolated norm.
//!
//! Transitions end exactly on the target: at `t >= 1` the target is returned bit for bit.
//! All arithmetic is in f64 and rounded to f32 once.

/// How several inputs are combined: the `blend-mode` setting and property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default)]
#[cfg_attr(feature = "glib", derive(glib::Enum))]
#[cfg_attr(feature = "glib", enum_type(name = "GstI2iBlendMode"))]
#[repr(u32)]
pub enum BlendMode {
    #[default]
    #[cfg_attr(
        feature = "glib",
        enum_value(name = "Linear: weighted mean", nick = "linear")
    )]
    Linear = 0,
    #[cfg_attr(
        feature = "glib",
        enum_value(
            name = "Slerp: spherical interpolation, renormalised (per token row for prompts)",
            nick = "slerp"
        )
    )]
    Slerp = 1,
}

impl BlendMode {
    /// Every blend mode.
    pub const ALL: [BlendMode; 2] = [BlendMode::Linear, BlendMode::Slerp];

    /// The `blend-mode` name of this mode.
    pub fn nick(self) -> &'static str {
        match self {
            BlendMode::Linear => "linear",
            BlendMode::Slerp => "slerp",
        }
    }

    /// From a `blend-mode` name; the error names the value and the accepted ones.
    pub fn parse(name: &str) -> Result<BlendMode, String> {
        BlendMode::ALL
            .into_iter()
            .find(|m| m.nick() == name)
            .ok_or_else(|| {
                format!(
                    "blend-mode: \"{name}\" is not a blend mode (accepted: {})",
                    BlendMode::ALL.map(BlendMode::nick).join(", ")
                )
            })
    }
}

impl std::fmt::Display for BlendMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.nick())
    }
}

/// On the wire (JSON and the holder's state) a blend mode is its name.
impl serde::Serialize for BlendMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.nick())
    }
}

impl<'de> serde::Deserialize<'de> for BlendMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        BlendMode::parse(&name).map_err(serde::de::Error::custom)
    }
}

fn norm(a: &[f32]) -> f64 {
    a.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// Spherical interpolation between `a` and `b` at `t` in [0, 1], with the result's norm
/// set to `(1 - t)|a| + t|b|`. Falls back to linear interpolation when the vectors are
/// (anti)parallel or zero, where the great circle is not defined.
fn slerp_into(a: &[f32], b: &[f32], t: f64, out: &mut [f32]) {
    let (na, nb) = (norm(a), norm(b));
    let target = (1.0 - t) * na + t * nb;
    if na == 0.0 || nb == 0.0 {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = ((1.0 - t) * f64::from(x) + t * f64::from(y)) as f32;
        }
        return;
    }
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum::<f64>()
        / (na * nb);
    let dot = dot.clamp(-1.0, 1.0);
    let theta = dot.acos();
    let sin = theta.sin();
    // Unit directions, interpolated on the great circle, scaled to the target norm.
    let (wa, wb) = if sin.abs() < 1e-6 {
        (1.0 - t, t)
    } else {
        (((1.0 - t) * theta).sin() / sin, (t * theta).sin() / sin)
    };
    let mut tmp: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| wa * f64::from(x) / na + wb * f64::from(y) / nb)
        .collect();
    let n: f64 = tmp.iter().map(|v| v * v).sum::<f64>().sqrt();
    let scale = if n > 0.0 { target / n } else { 0.0 };
    for (o, v) in out.iter_mut().zip(tmp.iter_mut()) {
        *o = (*v * scale) as f32;
    }
}

/// Slerp of noise from `a` to `b` at `t`, renormalised; `t <= 0` gives `a` and `t >= 1`
/// gives `b` exactly.
pub fn noise_transition(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "noise tensors of different sizes");
    if t <= 0.0 {
        return a.to_vec();
    }
    if t >= 1.0 {
        return b.to_vec();
    }
    let mut out = vec![0.0; a.len()];
    slerp_into(a, b, t, &mut out);
    out
}

/// Embedding from `a` to `b` at `t`: linear, or slerp per row of `row_len` values;
/// `t <= 0` gives `a` and `t >= 1` gives `b` exactly.
pub fn embedding_transition(
    a: &[f32],
    b: &[f32],
    t: f64,
    mode: BlendMode,
    row_len: usize,
) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "embeddings of different sizes");
    if t <= 0.0 {
        return a.to_vec();
    }
    if t >= 1.0 {
        return b.to_vec();
    }
    match mode {
        BlendMode::Linear => a
            .iter()
            .zip(b)
            .map(|(&x, &y)| ((1.0 - t) * f64::from(x) + t * f64::from(y)) as f32)
            .collect(),
        BlendMode::Slerp => {
            let row_len = row_len.max(1);
            let mut out = vec![0.0; a.len()];
            for ((ra, rb), ro) in a
                .chunks(row_len)
                .zip(b.chunks(row_len))
                .zip(out.chunks_mut(row_len))
            {
                slerp_into(ra, rb, t, ro);
            }
            out
        }
    }
}

/// Keeps the entries with weight > 0 and checks sizes; the error names the problem.
fn positive<'a>(items: &[(&'a [f32], f64)]) -> Result<Vec<(&'a [f32], f64)>, String> {
    let len = items.first().map(|(v, _)| v.len()).unwrap_or(0);
    let mut kept = Vec::new();
    for (v, w) in items {
        if v.len() != len {
            return Err(format!(
                "blend inputs differ in size ({} and {len} values)",
                v.len()
            ));
        }
        if !w.is_finite() || *w < 0.0 {
            return Err(format!("blend weight {w} is not a number >= 0"));
        }
        if *w > 0.0 {
            kept.push((*v, *w));
        }
    }
    if kept.is_empty() {
        return Err("a blend needs at least one weight > 0".to_string());
    }
    Ok(kept)
}

/// Several slerps in a row: the running blend moves towards each next input by its share
/// of the weight so far, so equal weights give every input the same pull.
fn slerp_chain(items: &[(&[f32], f64)], row_len: usize) -> Vec<f32> {
    let mut acc = items[0].0.to_vec();
    let mut total = items[0].1;
    let mut next = vec![0.0; acc.len()];
    for (v, w) in &items[1..] {
        total += w;
        let t = w / total;
        for ((ra, rb), ro) in acc
            .chunks(row_len)
            .zip(v.chunks(row_len))
            .zip(next.chunks_mut(row_len))
        {
            slerp_into(ra, rb, t, ro);
        }
        std::mem::swap(&mut acc, &mut next);
    }
    acc
}

/// Weighted blend of noise tensors. A single input (or a single weight > 0) is returned
/// unchanged. Linear: `sum w_i n_i / sqrt(sum w_i^2)` (keeps unit variance for independent
/// normals); slerp: chained slerps over the whole tensor, renormalised.
pub fn blend_noise(items: &[(&[f32], f64)], mode: BlendMode) -> Result<Vec<f32>, String> {
    let kept = positive(items)?;
    if kept.len() == 1 {
        return Ok(kept[0].0.to_vec());
    }
    Ok(match mode {
        BlendMode::Linear => {
            let sum2: f64 = kept.iter().map(|(_, w)| w * w).sum::<f64>().sqrt();
            let mut acc = vec![0.0f64; kept[0].0.len()];
            for (v, w) in &kept {
                for (a, &x) in acc.iter_mut().zip(v.iter()) {
                    *a += w / sum2 * f64::from(x);
                }
            }
            acc.into_iter().map(|x| x as f32).collect()
        }
        BlendMode::Slerp => slerp_chain(&kept, kept[0].0.len().max(1)),
    })
}

/// Weighted blend of text embeddings `[1, 77, E]` (`row_len` = E). A single input (or a
/// single weight > 0) is returned unchanged. Linear: weighted mean; slerp: chained slerps
/// per token row.
pub fn blend_embeddings(
    items: &[(&[f32], f64)],
    mode: BlendMode,
    row_len: usize,
) -> Result<Vec<f32>, String> {
    let kept = positive(items)?;
    if kept.len() == 1 {
        return Ok(kept[0].0.to_vec());
    }
    Ok(match mode {
        BlendMode::Linear => {
            let total: f64 = kept.iter().map(|(_, w)| w).sum();
            let mut acc = vec![0.0f64; kept[0].0.len()];
            for (v, w) in &kept {
                for (a, &x) in acc.iter_mut().zip(v.iter()) {
                    *a += w / total * f64::from(x);
                }
            }
            acc.into_iter().map(|x| x as f32).collect()
        }
        BlendMode::Slerp => slerp_chain(&kept, row_len.max(1)),
    })
}

/// Progress of a fade over `frames` frames: the k-th frame after the change (k = 1..)
/// uses `t = k / frames`; 0 frames is a jump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fade {
    pub frames: u32,
    pub done: u32,
}

impl Fade {
    pub fn new(frames: u32) -> Fade {
        Fade { frames, done: 0 }
    }

    /// Advances one frame and returns its `t` (1.0 from the last frame on).
    pub fn step(&mut self) -> f64 {
        if self.done < self.frames {
            self.done += 1;
        }
        self.t()
    }

    /// `t` of the frame stepped last (0 before the first step of a non-zero fade).
    pub fn t(&self) -> f64 {
        if self.frames == 0 {
            1.0
        } else {
            f64::from(self.done) / f64::from(self.frames)
        }
    }

    pub fn finished(&self) -> bool {
        self.done >= self.frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard normals from a small deterministic generator (Box-Muller over SplitMix64).
    fn normals(seed: u64, n: usize) -> Vec<f32> {
        let mut k = 0u64;
        let mut u = || {
            k += 1;
            let mut z = seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
        };
        (0..n)
            .map(|_| {
                let (u1, u2) = (u(), u());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    }

    fn std_dev(a: &[f32]) -> f64 {
        (a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
    }

    #[test]
    fn noise_fade_ends_exactly_and_keeps_variance() {
        let a = normals(1, 4096);
        let b = normals(2, 4096);
        assert_eq!(noise_transition(&a, &b, 0.0), a);
        assert_eq!(noise_transition(&a, &b, 1.0), b);
        assert_eq!(noise_transition(&a, &b, 1.5), b);
        let mid = noise_transition(&a, &b, 0.5);
        // A plain average would have std ~0.71; the slerp keeps ~1.
        let plain: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
        assert!(
            (std_dev(&plain) - 0.707).abs() < 0.03,
            "{}",
            std_dev(&plain)
        );
        assert!((std_dev(&mid) - 1.0).abs() < 0.03, "{}", std_dev(&mid));
        // The norm is exactly the interpolated norm.
        let want = 0.5 * norm(&a) + 0.5 * norm(&b);
        assert!((norm(&mid) - want).abs() / want < 1e-5);
        // Intermediate steps move monotonically from a to b.
        let mut last = 0.0;
        for k in 1..10 {
            let m = noise_transition(&a, &b, f64::from(k) / 10.0);
            let d = m
                .iter()
                .zip(&a)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>();
            assert!(d > last);
            last = d;
        }
    }

    #[test]
    fn noise_blends() {
        let a = normals(1, 4096);
        let b = normals(2, 4096);
        // One seed (or one positive weight) is that seed's noise exactly.
        assert_eq!(blend_noise(&[(&a, 0.7)], BlendMode::Linear).unwrap(), a);
        assert_eq!(
            blend_noise(&[(&a, 0.0), (&b, 2.0)], BlendMode::Slerp).unwrap(),
            b
        );
        for mode in [BlendMode::Linear, BlendMode::Slerp] {
            let m = blend_noise(&[(&a, 0.5), (&b, 0.5)], mode).unwrap();
            assert!(
                (std_dev(&m) - 1.0).abs() < 0.03,
                "{mode:?}: {}",
                std_dev(&m)
            );
        }
        // Linear with equal weights is (a + b) / sqrt(2).
        let m = blend_noise(&[(&a, 1.0), (&b, 1.0)], BlendMode::Linear).unwrap();
        let s = std::f64::consts::FRAC_1_SQRT_2;
        assert!((f64::from(m[0]) - s * f64::from(a[0] + b[0])).abs() < 1e-5);
        // Slerp with equal weights equals the midpoint fade.
        let m = blend_noise(&[(&a, 1.0), (&b, 1.0)], BlendMode::Slerp).unwrap();
        let f = noise_transition(&a, &b, 0.5);
        assert!(m.iter().zip(&f).all(|(x, y)| (x - y).abs() < 1e-5));
        assert!(blend_noise(&[(&a, 0.0)], BlendMode::Linear).is_err());
        assert!(blend_noise(&[(&a, 1.0), (&b[..10], 1.0)], BlendMode::Linear).is_err());
        assert!(blend_noise(&[(&a, f64::NAN)], BlendMode::Linear).is_err());
    }

    #[test]
    fn embedding_blends_and_fades() {
        let a = normals(3, 4 * 8);
        let b = normals(4, 4 * 8);
        let m = blend_embeddings(&[(&a, 0.75), (&b, 0.25)], BlendMode::Linear, 8).unwrap();
        for i in 0..a.len() {
            let want = 0.75 * f64::from(a[i]) + 0.25 * f64::from(b[i]);
            assert!((f64::from(m[i]) - want).abs() < 1e-6);
        }
        let s = blend_embeddings(&[(&a, 1.0), (&b, 1.0)], BlendMode::Slerp, 8).unwrap();
        // Per row: the norm of each row is the mean of the two rows' norms.
        for r in 0..4 {
            let (ra, rb, rs) = (&a[r * 8..][..8], &b[r * 8..][..8], &s[r * 8..][..8]);
            let want = 0.5 * (norm(ra) + norm(rb));
            assert!((norm(rs) - want).abs() < 1e-5);
        }
        for mode in [BlendMode::Linear, BlendMode::Slerp] {
            assert_eq!(embedding_transition(&a, &b, 0.0, mode, 8), a);
            assert_eq!(embedding_transition(&a, &b, 1.0, mode, 8), b);
        }
        let l = embedding_transition(&a, &b, 0.25, BlendMode::Linear, 8);
        assert!((f64::from(l[5]) - (0.75 * f64::from(a[5]) + 0.25 * f64::from(b[5]))).abs() < 1e-6);
        // Parallel rows (same vector) do not produce NaN.
        let p = embedding_transition(&a, &a, 0.5, BlendMode::Slerp, 8);
        assert!(p.iter().zip(&a).all(|(x, y)| (x - y).abs() < 1e-5));
        let z = vec![0.0; a.len()];
        assert!(
            embedding_transition(&z, &a, 0.5, BlendMode::Slerp, 8)
                .iter()
                .all(|x| x.is_finite())
        );
    }

    #[test]
    fn fade_steps() {
        let mut f = Fade::new(4);
        assert_eq!(f.t(), 0.0);
        let ts: Vec<f64> = (0..6).map(|_| f.step()).collect();
        assert_eq!(ts, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        assert!(f.finished());
        let mut j = Fade::new(0);
        assert!(j.finished());
        assert_eq!(j.step(), 1.0);
    }
}
