// SPDX-License-Identifier: MPL-2.0
//! Noise generator "i2i-noise-v1": SplitMix64 in counter form, Box-Muller in f64.
//!
//! The same seed gives the same bits on every machine and execution provider, and a
//! numpy implementation (tests/python/i2i_noise.py) gives the same values:
//!
//! * draw `k` (k = 0, 1, ...), all arithmetic mod 2^64:
//!   `z = seed + (k + 1) * 0x9E3779B97F4A7C15`, `z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9`,
//!   `z = (z ^ (z >> 27)) * 0x94D049BB133111EB`, `z = z ^ (z >> 31)`;
//! * uniform `u_k = ((z >> 11) + 0.5) * 2^-53`, strictly inside (0, 1);
//! * normal `g_j`: pair `p = j / 2`, `r = sqrt(-2 ln u_{2p})`, `th = 2 pi u_{2p+1}`,
//!   `g_j = r cos th` (even j) or `r sin th` (odd j), in f64, rounded to f32;
//! * the init noise `[n, 4, h, w]` takes `g_0 ..` in C order, so slot i does not depend on n;
//! * the similarity filter's coin for the f-th filtered frame is `u_f` with
//!   `seed ^ COIN_SEED_XOR`.

use super::Noise;

/// Seed offset of the similarity filter's coin stream.
pub const COIN_SEED_XOR: u64 = 0x5EED_F11E_5EED_F11E;

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The `k`-th 64-bit output of SplitMix64 seeded with `seed`.
#[inline]
pub fn splitmix64(seed: u64, k: u64) -> u64 {
    let mut z = seed.wrapping_add(k.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `k`-th uniform draw in (0, 1).
#[inline]
pub fn uniform(seed: u64, k: u64) -> f64 {
    ((splitmix64(seed, k) >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// The `j`-th standard normal value.
pub fn normal(seed: u64, j: u64) -> f32 {
    let (c, s) = normal_pair(seed, j / 2);
    if j.is_multiple_of(2) { c } else { s }
}

#[inline]
fn normal_pair(seed: u64, p: u64) -> (f32, f32) {
    let u1 = uniform(seed, 2 * p);
    let u2 = uniform(seed, 2 * p + 1);
    let r = (-2.0 * u1.ln()).sqrt();
    let th = 2.0 * std::f64::consts::PI * u2;
    ((r * th.cos()) as f32, (r * th.sin()) as f32)
}

/// Fills `out` with `g_0, g_1, ...`.
pub fn fill_normal(seed: u64, out: &mut [f32]) {
    let last_index = out.len().saturating_sub(1) as u64;
    let mut pairs = out.chunks_exact_mut(2);
    for (p, pair) in (&mut pairs).enumerate() {
        let (c, s) = normal_pair(seed, p as u64);
        pair[0] = c;
        pair[1] = s;
    }
    let rest = pairs.into_remainder();
    if let Some(last) = rest.first_mut() {
        *last = normal(seed, last_index);
    }
}

/// The fixed init noise `[n, 4, h, w]` for `seed`.
pub fn init_noise(seed: u64, n: usize, h: usize, w: usize) -> Noise {
    let mut data = vec![0.0f32; n * 4 * h * w];
    fill_normal(seed, &mut data);
    Noise {
        shape: [n, 4, h, w],
        data,
    }
}

/// The similarity filter's coin for the `f`-th frame it sees.
pub fn coin(seed: u64, f: u64) -> f64 {
    uniform(seed ^ COIN_SEED_XOR, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_sequence() {
        // SplitMix64 with state 0: the well-known first outputs.
        assert_eq!(splitmix64(0, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0, 1), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(0, 2), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn uniform_is_strictly_inside() {
        for k in 0..10_000 {
            let u = uniform(12345, k);
            assert!(u > 0.0 && u < 1.0);
        }
    }

    #[test]
    fn normal_moments_are_standard() {
        let mut v = vec![0.0f32; 200_001];
        fill_normal(7, &mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        // fill_normal and normal agree, including the odd tail element.
        for j in [0usize, 1, 2, 3, 1001, 200_000] {
            assert_eq!(v[j], normal(7, j as u64));
        }
    }

    #[test]
    fn slots_do_not_depend_on_n() {
        let a = init_noise(3, 1, 8, 8);
        let b = init_noise(3, 3, 8, 8);
        assert_eq!(a.data[..], b.data[..a.data.len()]);
        assert_ne!(init_noise(4, 1, 8, 8).data, a.data);
    }

    #[test]
    fn coin_uses_its_own_stream() {
        assert_eq!(coin(5, 3), uniform(5 ^ COIN_SEED_XOR, 3));
        assert_ne!(coin(5, 3), uniform(5, 3));
    }
}
