//! Lloyd iterations on the CPU that search in full only the rows whose nearest centroid may
//! have changed, for rows of at most [`SMALL_DIM`] floats: the product quantizer's sub-spaces.
//!
//! Each step first scores every row against the centroid it had (the objective needs that
//! score anyway), with the full search's arithmetic. A row nearer to its centroid `c` than half
//! the distance `h` from `c` to the nearest other centroid is nearer to `c` than to any other
//! (Elkan, "Using the triangle inequality to accelerate k-means", ICML 2003: every other
//! centroid lies more than `h / 2` from the row). The test is made on the float scores with
//! room for their rounding, so where it holds no other centroid's score can be as low: the
//! label stands exactly as a full search would leave it, ties included. Only the other rows are
//! searched in full ([`cpu::nearest_rows`]).
//!
//! So the labels, the distances and hence the centroids and the objective are those of
//! [`kmeans::host_step`] bit for bit (and the GPU's); only the work differs. On PQ training
//! (100k × 768, 384 sub-spaces of 2 floats, 256 codewords) the second step searches 55% of the
//! rows in full and the last ones about a third.

use super::kmeans;
use crate::backend::cpu::{self, SMALL_DIM};
use crate::backend::Step;
use ndarray::{Array2, ArrayView2};

/// Relative room for a float squared distance against the exact one: at most about
/// `(dim + 2) · 2⁻²⁴` (1.1·10⁻⁶ at 16 dimensions: a rounding per difference, square and
/// addition, all of the same sign), so ten times that is safe.
const RELATIVE: f64 = 1e-5;
/// Absolute room for scores near the bottom of the float range, where rounding is absolute.
const ABSOLUTE: f64 = 1e-36;

/// One k-means problem's rows and, between steps, each row's label.
#[derive(Debug)]
pub struct BoundedLloyd {
    /// `[n, dim]`, standard layout.
    data: Array2<f32>,
    /// Empty before the first step.
    labels: Vec<u32>,
    /// Rows searched in full over all steps.
    pub searched: u64,
}

impl BoundedLloyd {
    /// `data: [n, dim ≤ SMALL_DIM]`.
    pub fn new(data: Array2<f32>) -> Self {
        debug_assert!(data.ncols() <= SMALL_DIM);
        let data = data.as_standard_layout().into_owned();
        BoundedLloyd {
            data,
            labels: Vec::new(),
            searched: 0,
        }
    }

    /// One Lloyd iteration: the rows assigned to `centroids`, which then move to their rows'
    /// means ([`kmeans::update`]). Returns the cluster sizes and the objective (squared
    /// distances added in row order in f64), as [`kmeans::host_step`].
    pub fn step(&mut self, centroids: &mut Array2<f32>) -> Step {
        let dists = self.assign(centroids.view());
        let objective: f64 = dists.iter().map(|&d| d as f64).sum();
        (
            kmeans::update(self.data.view(), &self.labels, centroids),
            objective,
        )
    }

    /// Each row's nearest of `centroids` (into `labels`) and squared distance.
    fn assign(&mut self, centroids: ArrayView2<'_, f32>) -> Vec<f32> {
        let (k, dim) = centroids.dim();
        let n = self.data.nrows();
        let flat = self.data.as_slice().unwrap_or(&[]);
        let own = centroids.as_standard_layout();
        let own = own.as_slice().unwrap_or(&[]);
        let ct = cpu::transposed(centroids);
        let mut dists = vec![0f32; n];
        let open: Vec<u32> = if self.labels.len() == n {
            let safe = safe_scores(own, &ct, k, dim);
            check(flat, own, dim, &safe, &self.labels, &mut dists)
        } else {
            self.labels = vec![0; n];
            (0..n as u32).collect()
        };
        let mut rows = Vec::with_capacity(open.len() * dim);
        for &r in &open {
            rows.extend_from_slice(&flat[r as usize * dim..(r as usize + 1) * dim]);
        }
        let near = cpu::nearest_rows(&rows, &ct, k, dim, false);
        for ((&r, &l), &d) in open.iter().zip(&near.labels).zip(&near.dists) {
            self.labels[r as usize] = l;
            dists[r as usize] = d;
        }
        self.searched += open.len() as u64;
        dists
    }
}

/// Per centroid (`own: [k, dim]`, `ct` its [`cpu::transposed`]), the score below which a row
/// provably lies within half the distance `h` to its nearest other centroid:
/// `(h² / 4)(1 − RELATIVE) − ABSOLUTE`, rounded down, with `h²` at least the float runner-up
/// score less its rounding room. Copies of a centroid get 0: their rows are always searched.
fn safe_scores(own: &[f32], ct: &[f32], k: usize, dim: usize) -> Vec<f32> {
    let near = cpu::nearest_rows(own, ct, k, dim, true);
    near.runner_up
        .iter()
        .map(|&s| {
            let h2 = (s.min(f32::MAX) as f64 - ABSOLUTE) / (1.0 + RELATIVE);
            let safe = (h2 / 4.0) * (1.0 - RELATIVE) - ABSOLUTE;
            let f = safe.max(0.0) as f32;
            if f as f64 > safe {
                f.next_down().max(0.0)
            } else {
                f
            }
        })
        .collect()
}

/// Scores each row against its own centroid (`own: [k, dim]`) into `dists`; returns the rows
/// whose score is not below their centroid's `safe` score, to be searched in full.
fn check(
    flat: &[f32],
    own: &[f32],
    dim: usize,
    safe: &[f32],
    labels: &[u32],
    dists: &mut [f32],
) -> Vec<u32> {
    macro_rules! by_dim {
        ($($d:literal)*) => {
            match dim {
                $($d => {
                    #[cfg(target_arch = "x86_64")]
                    if cpu::has_avx2_fma() {
                        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                        return unsafe { check_fma::<$d>(flat, own, safe, labels, dists) };
                    }
                    check_generic::<$d>(flat, own, safe, labels, dists)
                })*
                // Wider rows are not held here ([`BoundedLloyd::new`]): search them all.
                _ => (0..labels.len() as u32).collect(),
            }
        };
    }
    by_dim!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// [`check_generic`] compiled with FMA, so each fused multiply-add is one instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn check_fma<const D: usize>(
    flat: &[f32],
    own: &[f32],
    safe: &[f32],
    labels: &[u32],
    dists: &mut [f32],
) -> Vec<u32> {
    check_generic::<D>(flat, own, safe, labels, dists)
}

#[inline(always)]
fn check_generic<const D: usize>(
    flat: &[f32],
    own: &[f32],
    safe: &[f32],
    labels: &[u32],
    dists: &mut [f32],
) -> Vec<u32> {
    // Every row's index written, the count advanced only for open ones: no branch to miss.
    let mut open = vec![0u32; labels.len() + 1];
    let mut count = 0;
    let rows = flat.chunks_exact(D);
    for (r, ((row, &a), dist)) in rows.zip(labels).zip(dists.iter_mut()).enumerate() {
        let a = a as usize;
        let (Some(centroid), Some(&limit)) = (own.get(a * D..(a + 1) * D), safe.get(a)) else {
            open[count] = r as u32;
            count += 1;
            continue;
        };
        // The full search's arithmetic: differences squared and added in dimension order by
        // fused multiply-adds from zero.
        let mut score = 0f32;
        for d in 0..D {
            let t = row[d] - centroid[d];
            score = t.mul_add(t, score);
        }
        *dist = score;
        open[count] = r as u32;
        count += usize::from(score >= limit || score.is_nan());
    }
    open.truncate(count);
    open
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    /// Steps on clustered and on uniform rows, dimensions 1, 2, 5 and 16, with duplicated rows
    /// and centroids starting on duplicates (exact ties): every step's labels, distances,
    /// centroids, sizes and objective are those of the plain step bit for bit, and in one and two
    /// dimensions late steps search only a share of the rows in full.
    #[test]
    fn bounded_steps_are_the_plain_steps_bit_for_bit() {
        let mut rng = crate::synth::Rng::new(11);
        for (dim, clustered) in [(1, false), (2, true), (2, false), (5, true), (16, true)] {
            let (n, k) = (3000, 64);
            let centres: Vec<f32> = (0..16 * dim).map(|_| 4.0 * rng.normal() as f32).collect();
            let mut data = Array2::<f32>::zeros((n, dim));
            for (r, mut row) in data.rows_mut().into_iter().enumerate() {
                let c = r % 16;
                for (d, v) in row.iter_mut().enumerate() {
                    let noise = rng.normal() as f32;
                    *v = if clustered {
                        centres[c * dim + d] + noise
                    } else {
                        5.0 * noise
                    };
                }
            }
            // Rows 1..=9 repeat row 0.
            for r in 1..10 {
                let first = data.row(0).to_owned();
                data.row_mut(r).assign(&first);
            }
            let mut plain = data.select(ndarray::Axis(0), &(0..k).collect::<Vec<_>>());
            // Centroids 0 and 1 both start on row 0: ties from the first step.
            let first = plain.row(0).to_owned();
            plain.row_mut(1).assign(&first);
            let mut bounded = plain.clone();
            let mut lloyd = BoundedLloyd::new(data.clone());
            let mut last = 0;
            for step in 0..12 {
                let before = lloyd.searched;
                let (labels, dists) =
                    kmeans::assign(&CpuBackend, data.view(), plain.view()).unwrap();
                let want = kmeans::host_step(&CpuBackend, data.view(), &mut plain).unwrap();
                let got = lloyd.step(&mut bounded);
                let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(lloyd.labels, labels, "dim {dim} step {step}");
                assert_eq!(got.1.to_bits(), want.1.to_bits(), "dim {dim} step {step}");
                assert_eq!(got.0, want.0, "dim {dim} step {step}");
                assert_eq!(bits(&bounded), bits(&plain), "dim {dim} step {step}");
                let objective: f64 = dists.iter().map(|&d| d as f64).sum();
                assert_eq!(objective.to_bits(), want.1.to_bits());
                last = lloyd.searched - before;
            }
            // In one and two dimensions (PQ's sub-spaces by default) the last step searched
            // fewer than half the rows in full.
            assert!(dim > 2 || last < n as u64 / 2, "dim {dim}: {last} of {n}");
        }
    }
}
