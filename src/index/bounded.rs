//! Lloyd iterations on the CPU that search in full only the rows whose nearest centroid may
//! have changed, for rows of at most [`SMALL_DIM`] floats: the product quantizer's sub-spaces.
//!
//! Each step first scores every row against the centroid it had (the objective needs that
//! score anyway), with the full search's arithmetic. A row nearer to its centroid `c` than half
//! the distance `h` from `c` to the nearest other centroid is nearer to `c` than to any other
//! (Elkan, "Using the triangle inequality to accelerate k-means", ICML 2003: every other
//! centroid lies more than `h / 2` from the row). The test is made on the float scores with
//! room for their rounding, so where it holds no other centroid's score can be as low: the
//! label stands exactly as a full search would leave it, ties included.
//!
//! The same argument narrows the search for most of the other rows: every centroid outside
//! `c`'s [`LOCAL`] nearest others (listed every [`RELIST`] steps) lies at least `R` from `c`,
//! so a row nearer to `c` than `R / 2` needs only those candidates scored, eight to a register
//! (ties again to the smaller centroid). Only the rest are searched in full
//! ([`cpu::nearest_rows`]).
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
    /// Each centroid's nearest others when last listed, and the steps since.
    lists: Option<(Vec<u32>, usize)>,
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
            lists: None,
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
            let open = check(flat, own, dim, &safe, &self.labels, &mut dists);
            if k >= 2 * LOCAL {
                let lists = match self.lists.take() {
                    Some((lists, age)) if age < RELIST => (lists, age + 1),
                    _ => (nearest_lists(own, &ct, k, dim), 1),
                };
                let lists = &self.lists.insert(lists).0;
                let local = Local::new(own, &ct, k, dim, lists);
                local_search(flat, dim, &local, &open, &mut self.labels, &mut dists)
            } else {
                open
            }
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
            round_down((h2 / 4.0) * (1.0 - RELATIVE) - ABSOLUTE)
        })
        .collect()
}

/// Candidates a row may be searched among instead of every centroid.
const LOCAL: usize = 32;
/// Steps a candidate list is kept (each step still bounds the centroids outside it afresh).
const RELIST: usize = 4;

/// Squared distances from centroid `a` to every centroid, in f32 (`ct: [dim, k]`).
fn centroid_distances(own: &[f32], ct: &[f32], k: usize, dim: usize, a: usize, out: &mut [f32]) {
    out.fill(0.0);
    for d in 0..dim {
        let x = own[a * dim + d];
        for (o, &c) in out.iter_mut().zip(&ct[d * k..(d + 1) * k]) {
            let t = c - x;
            *o += t * t;
        }
    }
}

/// `[k × LOCAL]`: each centroid's [`LOCAL`] nearest other centroids.
fn nearest_lists(own: &[f32], ct: &[f32], k: usize, dim: usize) -> Vec<u32> {
    let mut lists = Vec::with_capacity(k * LOCAL);
    let mut dist = vec![0f32; k];
    let mut order: Vec<u32> = Vec::with_capacity(k);
    for a in 0..k {
        centroid_distances(own, ct, k, dim, a, &mut dist);
        order.clear();
        order.extend((0..k as u32).filter(|&c| c as usize != a));
        order.select_nth_unstable_by(LOCAL - 1, |&x, &y| {
            dist[x as usize]
                .total_cmp(&dist[y as usize])
                .then(x.cmp(&y))
        });
        lists.extend_from_slice(&order[..LOCAL]);
    }
    lists
}

/// A step's candidates: each centroid's list, the candidates' coordinates `[k][dim][LOCAL]`,
/// and the score below which a row of that centroid is provably nearer to it than half the
/// distance `R` to every centroid outside its list: `(R² / 4)(1 − RELATIVE) − ABSOLUTE`, with
/// `R²` the smallest float distance outside the list less its rounding room.
struct Local<'a> {
    lists: &'a [u32],
    coords: Vec<f32>,
    safe: Vec<f32>,
}

impl<'a> Local<'a> {
    fn new(own: &[f32], ct: &[f32], k: usize, dim: usize, lists: &'a [u32]) -> Self {
        let mut coords = Vec::with_capacity(k * dim * LOCAL);
        let mut safe = Vec::with_capacity(k);
        let mut dist = vec![0f32; k];
        for (a, list) in lists.chunks_exact(LOCAL).enumerate() {
            for d in 0..dim {
                coords.extend(list.iter().map(|&c| own[c as usize * dim + d]));
            }
            centroid_distances(own, ct, k, dim, a, &mut dist);
            dist[a] = f32::INFINITY;
            for &c in list {
                dist[c as usize] = f32::INFINITY;
            }
            let outside = dist.iter().fold(f32::INFINITY, |m, &v| m.min(v));
            let r2 = (outside.min(f32::MAX) as f64 - ABSOLUTE) / (1.0 + RELATIVE);
            safe.push(round_down((r2 / 4.0) * (1.0 - RELATIVE) - ABSOLUTE));
        }
        Local {
            lists,
            coords,
            safe,
        }
    }
}

/// `v` as an f32 no larger, and no smaller than 0.
fn round_down(v: f64) -> f32 {
    let f = v.max(0.0) as f32;
    if f as f64 > v {
        f.next_down().max(0.0)
    } else {
        f
    }
}

/// For the `open` rows (their score against their own centroid in `dists`): where the score
/// is below the centroid's local safe score, the nearest among the centroid and its list goes
/// to `labels` and `dists`. Returns the rows still to search in full.
fn local_search(
    flat: &[f32],
    dim: usize,
    local: &Local<'_>,
    open: &[u32],
    labels: &mut [u32],
    dists: &mut [f32],
) -> Vec<u32> {
    let mut full = Vec::new();
    macro_rules! by_dim {
        ($($d:literal)*) => {
            match dim {
                $($d => {
                    #[cfg(target_arch = "x86_64")]
                    if cpu::has_avx2_fma() {
                        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                        unsafe {
                            local_search_avx2::<$d>(flat, local, open, labels, dists, &mut full)
                        };
                        return full;
                    }
                    local_search_generic::<$d>(flat, local, open, labels, dists, &mut full);
                })*
                _ => full.extend_from_slice(open),
            }
        };
    }
    by_dim!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    full
}

/// [`local_search`]'s loop for rows of `D` floats: rows past their centroid's local safe
/// score go to `full`; the others get `nearest(row, a, score, coords, list)`, the nearest of
/// the row's centroid `a` (at `score`) and `a`'s list (`coords: [D][LOCAL]`).
#[inline(always)]
fn local_search_rows<const D: usize>(
    flat: &[f32],
    local: &Local<'_>,
    open: &[u32],
    labels: &mut [u32],
    dists: &mut [f32],
    full: &mut Vec<u32>,
    nearest: impl Fn(&[f32], usize, f32, &[f32], &[u32]) -> (u32, f32),
) {
    for &r in open {
        let r = r as usize;
        let (a, score) = (labels[r] as usize, dists[r]);
        if score >= local.safe[a] || score.is_nan() {
            full.push(r as u32);
            continue;
        }
        let row = &flat[r * D..(r + 1) * D];
        let coords = &local.coords[a * D * LOCAL..(a + 1) * D * LOCAL];
        let list = &local.lists[a * LOCAL..(a + 1) * LOCAL];
        (labels[r], dists[r]) = nearest(row, a, score, coords, list);
    }
}

/// [`local_search`] a candidate at a time, ties to the smaller centroid, scored with the full
/// search's arithmetic.
fn local_search_generic<const D: usize>(
    flat: &[f32],
    local: &Local<'_>,
    open: &[u32],
    labels: &mut [u32],
    dists: &mut [f32],
    full: &mut Vec<u32>,
) {
    let nearest = |row: &[f32], a: usize, score: f32, coords: &[f32], list: &[u32]| {
        let (mut label, mut best) = (a as u32, score);
        for (j, &c) in list.iter().enumerate() {
            let s = (0..D).fold(0f32, |acc, d| {
                let t = row[d] - coords[d * LOCAL + j];
                t.mul_add(t, acc)
            });
            if s < best || (s == best && c < label) {
                (label, best) = (c, s);
            }
        }
        (label, best)
    };
    local_search_rows::<D>(flat, local, open, labels, dists, full, nearest);
}

/// [`local_search_generic`] with the candidates scored eight to a register, their minimum
/// found across lanes, and the smallest centroid among those at it picked from a bit mask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn local_search_avx2<const D: usize>(
    flat: &[f32],
    local: &Local<'_>,
    open: &[u32],
    labels: &mut [u32],
    dists: &mut [f32],
    full: &mut Vec<u32>,
) {
    use std::arch::x86_64::*;
    const V: usize = LOCAL / 8;
    let nearest = |row: &[f32], a: usize, score: f32, coords: &[f32], list: &[u32]| {
        assert!(coords.len() >= D * LOCAL && list.len() >= LOCAL);
        let mut v = [_mm256_setzero_ps(); V];
        for (j, v) in v.iter_mut().enumerate() {
            for (d, &x) in row.iter().enumerate() {
                // SAFETY: d·LOCAL + 8j + 8 ≤ D·LOCAL ≤ coords.len() (asserted).
                let c = unsafe { _mm256_loadu_ps(coords.as_ptr().add(d * LOCAL + 8 * j)) };
                let t = _mm256_sub_ps(_mm256_set1_ps(x), c);
                *v = if d == 0 {
                    _mm256_mul_ps(t, t)
                } else {
                    _mm256_fmadd_ps(t, t, *v)
                };
            }
        }
        let mut m = v[0];
        for x in &v[1..] {
            m = _mm256_min_ps(m, *x);
        }
        m = _mm256_min_ps(m, _mm256_permute2f128_ps::<1>(m, m));
        m = _mm256_min_ps(m, _mm256_shuffle_ps::<0b0100_1110>(m, m));
        m = _mm256_min_ps(m, _mm256_shuffle_ps::<0b1011_0001>(m, m));
        let least = _mm256_cvtss_f32(m);
        let best = if least < score { least } else { score };
        let at = _mm256_set1_ps(best);
        let mut mask = 0u32;
        for (j, x) in v.iter().enumerate() {
            let eq = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(*x, at)) as u32;
            mask |= eq << (8 * j);
        }
        let mut label = if score == best { a as u32 } else { u32::MAX };
        while mask != 0 {
            label = label.min(list[mask.trailing_zeros() as usize]);
            mask &= mask - 1;
        }
        (label, best)
    };
    local_search_rows::<D>(flat, local, open, labels, dists, full, nearest);
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

    /// The local search's AVX2 and portable kernels give the same labels and distances, bit
    /// for bit, with rows sitting on copies of centroids (exact ties), and each label is the
    /// full search's.
    #[test]
    fn local_search_kernels_agree_with_each_other_and_the_full_search() {
        let mut rng = crate::synth::Rng::new(5);
        let (n, k, dim) = (2000, 96, 2);
        let mut own: Vec<f32> = (0..k * dim).map(|_| rng.normal() as f32).collect();
        // Centroid 7 repeats centroid 3; rows 0..10 sit on it.
        for d in 0..dim {
            own[7 * dim + d] = own[3 * dim + d];
        }
        let mut flat: Vec<f32> = (0..n * dim).map(|_| 0.3 * rng.normal() as f32).collect();
        for r in 0..10 {
            for d in 0..dim {
                flat[r * dim + d] = own[3 * dim + d];
            }
        }
        let centroids = ndarray::ArrayView2::from_shape((k, dim), &own).unwrap();
        let ct = cpu::transposed(centroids);
        let lists = nearest_lists(&own, &ct, k, dim);
        let local = Local::new(&own, &ct, k, dim, &lists);
        // Each row starts at centroid (r mod k), rows 0..10 at the copy 7, scored as the full
        // search scores.
        let labels: Vec<u32> = (0..n)
            .map(|r| if r < 10 { 7 } else { (r % k) as u32 })
            .collect();
        let dists: Vec<f32> = (0..n)
            .map(|r| {
                let a = labels[r] as usize;
                (0..dim).fold(0f32, |acc, d| {
                    let t = flat[r * dim + d] - own[a * dim + d];
                    t.mul_add(t, acc)
                })
            })
            .collect();
        let open: Vec<u32> = (0..n as u32).collect();
        let (mut l1, mut d1, mut f1) = (labels.clone(), dists.clone(), Vec::new());
        local_search_generic::<2>(&flat, &local, &open, &mut l1, &mut d1, &mut f1);
        let near = cpu::nearest_rows(&flat, &ct, k, dim, false);
        let searched: std::collections::HashSet<u32> = f1.iter().copied().collect();
        let mut local_rows = 0;
        for r in (0..n).filter(|r| !searched.contains(&(*r as u32))) {
            assert_eq!(
                (l1[r], d1[r].to_bits()),
                (near.labels[r], near.dists[r].to_bits()),
                "row {r}"
            );
            local_rows += 1;
        }
        assert!(local_rows > 0 && l1[0] == 3);
        #[cfg(target_arch = "x86_64")]
        if cpu::has_avx2_fma() {
            let (mut l2, mut d2, mut f2) = (labels, dists, Vec::new());
            // SAFETY: the CPU supports AVX2 and FMA, checked above.
            unsafe { local_search_avx2::<2>(&flat, &local, &open, &mut l2, &mut d2, &mut f2) };
            let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!((l1, bits(&d1), f1), (l2, bits(&d2), f2));
        }
    }
}
