//! Seeded synthetic embeddings for demos, tests and benchmarks: Gaussian clusters.
//!
//! `clusters` centres are drawn from N(0, 1) per dimension; each row picks a centre uniformly
//! and adds N(0, spread²) noise. Queries come from the same centres, so the nearest neighbours
//! of a query are mostly its cluster-mates, as with real embeddings. The generator is
//! SplitMix64 with Box–Muller normals: the same seed gives the same data on every machine.

use ndarray::Array2;

/// SplitMix64: small, fast, and good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A clustered dataset: `base: [n, dim]` and `queries: [nq, dim]` around the same centres.
#[derive(Debug, Clone)]
pub struct Clustered {
    pub base: Array2<f32>,
    pub queries: Array2<f32>,
}

/// Spread of points around their centre relative to the spread of the centres.
pub const DEFAULT_SPREAD: f32 = 0.35;

pub fn clustered(n: usize, nq: usize, dim: usize, clusters: usize, seed: u64) -> Clustered {
    clustered_with_spread(n, nq, dim, clusters, DEFAULT_SPREAD, seed)
}

/// [`clustered`] with the points' spread around their centre given (relative to the spread of
/// the centres): at the default 0.35 the clusters lie far apart; towards 1 they overlap and
/// nearest neighbours cross cluster borders, as in most real embeddings.
pub fn clustered_with_spread(
    n: usize,
    nq: usize,
    dim: usize,
    clusters: usize,
    spread: f32,
    seed: u64,
) -> Clustered {
    let mut rng = Rng::new(seed);
    let clusters = clusters.max(1);
    let centres = Array2::from_shape_fn((clusters, dim), |_| rng.normal() as f32);
    let draw = |rows: usize, rng: &mut Rng| {
        let mut out = Array2::<f32>::zeros((rows, dim));
        for mut row in out.rows_mut() {
            let c = centres.row(rng.below(clusters as u64) as usize);
            for (v, centre) in row.iter_mut().zip(c) {
                *v = centre + spread * rng.normal() as f32;
            }
        }
        out
    };
    let base = draw(n, &mut rng);
    let queries = draw(nq, &mut rng);
    Clustered { base, queries }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within one cluster every coordinate varies around its centre with variance spread².
    #[test]
    fn spread_sets_the_variance_around_the_centre() {
        for spread in [0.35f32, 0.8] {
            let data = clustered_with_spread(20_000, 0, 4, 1, spread, 3);
            for col in data.base.columns() {
                let mean = col.mean().unwrap_or(f32::NAN);
                let var = col.iter().map(|&v| (v - mean).powi(2)).sum::<f32>() / col.len() as f32;
                let want = spread * spread;
                assert!(
                    (var - want).abs() < 0.05 * want,
                    "spread {spread}: variance {var}, expected {want}"
                );
            }
        }
        assert_eq!(
            clustered(500, 10, 8, 7, 9).base,
            clustered_with_spread(500, 10, 8, 7, DEFAULT_SPREAD, 9).base
        );
    }
}
