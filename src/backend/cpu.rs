//! The CPU backend: the reference implementation of every stage, and fast enough to be the
//! production path where there is no GPU.
//!
//! Exact k-NN (`knn_block`):
//! 1. Queries are cut into tiles of [`QUERY_TILE`] rows and the base into tiles of
//!    [`BASE_TILE`] rows, so one tile of scores (`QUERY_TILE × BASE_TILE` f32, 512 KiB, the
//!    L2 size per core here) stays in cache and the full distance matrix never exists. Of the
//!    shapes tried on 200k × 128 (128×2048, 128×1024, 64×2048, 256×256, 256×512, 512×256,
//!    512×512), 256×512 was fastest on average over alternating runs.
//! 2. For each pair of tiles one GEMM computes `scale · Q·Xᵀ` (`scale` = −2 for L2, −1 for
//!    inner product and cosine) with the `gemm` crate, which measured 74–80 GFLOP/s per core on
//!    these tile shapes against 68–74 for `matrixmultiply`.
//! 3. Each cell's ranking score is `−2q·x + ‖x‖²` for L2 and `−q·x` otherwise: the per-query
//!    constants (`‖q‖²` for L2, `1` for cosine) do not change a query's ranking, so they are
//!    added when results are reported ([`Queries::offset`]). Cells go to the query's [`TopK`]
//!    in groups of 16 tested at once against its threshold; almost all fail together.
//! 4. Rayon parallelises over query tiles when there are enough of them; for small query
//!    batches it splits the base across threads instead and merges the per-thread selections.

use super::{Backend, Queries};
use crate::metric::squared_norms;
use crate::{Metric, Result, TopK};
use ndarray::ArrayView2;
use rayon::prelude::*;

/// Whether this CPU runs the AVX2+FMA kernels (std caches the detection).
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Queries per GEMM tile.
pub const QUERY_TILE: usize = 256;
/// Base rows per GEMM tile.
pub const BASE_TILE: usize = 512;

/// The CPU backend. Thread count is rayon's (the CLI's `--threads`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn knn_block(
        &self,
        queries: Queries<'_>,
        base: ArrayView2<'_, f32>,
        base_sq_norms: &[f32],
        first_row: u64,
        topk: &mut [TopK],
    ) -> Result<()> {
        knn_block(queries, base, base_sq_norms, first_row, topk);
        Ok(())
    }

    fn optimize_graph(
        &self,
        knn: &crate::index::cagra::Graph,
        d_out: usize,
        order: &[u32],
        laps: &mut crate::laps::Laps,
    ) -> Result<crate::index::cagra::Graph> {
        Ok(crate::index::cagra::optimize::optimize(
            knn, d_out, order, laps,
        ))
    }

    fn subspace_lloyds<'a>(
        &'a self,
        data: ArrayView2<'a, f32>,
        pq_dim: usize,
        _ksub: usize,
    ) -> Result<Option<Box<dyn crate::backend::Lloyds + 'a>>> {
        let held = crate::index::pq::HostSubspaces::hold(self, data, pq_dim);
        Ok(Some(Box::new(held)))
    }

    fn assign_nearest(
        &self,
        data: ArrayView2<'_, f32>,
        centroids: ArrayView2<'_, f32>,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        some_centroid(centroids)?;
        Ok(if data.ncols() <= SMALL_DIM {
            assign_small_dim(data, centroids)
        } else {
            assign_gemm(data, centroids)
        })
    }

    fn assign_nearest_rows(
        &self,
        data: ArrayView2<'_, f32>,
        rows: &[u32],
        centroids: ArrayView2<'_, f32>,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        some_centroid(centroids)?;
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= data.nrows()) {
            return Err(crate::Error::param(format!(
                "row {r} is past the {} rows being assigned",
                data.nrows()
            )));
        }
        Ok(assign_rows(data, rows, centroids))
    }
}

/// Refuses an assignment to no centroid at all.
fn some_centroid(centroids: ArrayView2<'_, f32>) -> Result<()> {
    match centroids.nrows() {
        0 => Err(crate::Error::param(
            "nearest-centroid assignment needs at least one centroid",
        )),
        _ => Ok(()),
    }
}

/// Rows per task of [`assign_rows`].
const ROWS_CHUNK: usize = 1024;
/// Rows scored together against each block of [`ROW_CENTROIDS`] centroids in [`assign_rows`].
const ROW_BLOCK: usize = 4;
/// Centroids per block of [`assign_rows`]: two AVX2 registers.
const ROW_CENTROIDS: usize = 16;

/// The CPU's [`Backend::assign_nearest_rows`]: rows read where they lie (no copy when `data`
/// is contiguous), scored against `centroids: [k, dim]` transposed to `[dim, k]` (padded to a
/// whole block with centroids that never win) [`ROW_BLOCK`] rows × [`ROW_CENTROIDS`]
/// centroids at a time, each dot product added in dimension order. Ranking score
/// `‖c‖² − 2x·c`, then `‖x‖²` added.
fn assign_rows(
    data: ArrayView2<'_, f32>,
    rows: &[u32],
    centroids: ArrayView2<'_, f32>,
) -> (Vec<u32>, Vec<f32>) {
    let t = Transposed::new(centroids);
    let dim = t.dim;
    // Rows in place where the rows are contiguous; otherwise only the named rows copied.
    let copied: ndarray::Array2<f32>;
    let renumbered: Vec<u32>;
    let (x, rows) = match data.as_slice() {
        Some(x) => (x, rows),
        None => {
            let picked: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
            copied = data.select(ndarray::Axis(0), &picked);
            renumbered = (0..rows.len() as u32).collect();
            (copied.as_slice().unwrap_or(&[]), &renumbered[..])
        }
    };
    let parts: Vec<(Vec<u32>, Vec<f32>)> = rows
        .par_chunks(ROWS_CHUNK)
        .map(|chunk| {
            let mut labels = vec![0u32; chunk.len()];
            let mut scores = vec![0f32; chunk.len()];
            nearest_indexed(x, chunk, &t, &mut labels, &mut scores);
            for (s, &r) in scores.iter_mut().zip(chunk) {
                let row = &x[r as usize * dim..(r as usize + 1) * dim];
                *s = (*s + crate::distance::dot(row, row)).max(0.0);
            }
            (labels, scores)
        })
        .collect();
    let mut labels = Vec::with_capacity(rows.len());
    let mut dists = Vec::with_capacity(rows.len());
    for (l, d) in parts {
        labels.extend(l);
        dists.extend(d);
    }
    (labels, dists)
}

/// Centroids transposed for [`assign_rows`]: `ct: [dim, padded]`, norms `cn: [padded]`, the
/// `padded − k` centroids past the last zero with infinite norms (they never win).
struct Transposed {
    ct: Vec<f32>,
    cn: Vec<f32>,
    padded: usize,
    dim: usize,
}

impl Transposed {
    fn new(centroids: ArrayView2<'_, f32>) -> Self {
        let (k, dim) = centroids.dim();
        let padded = k.next_multiple_of(ROW_CENTROIDS);
        let mut ct = vec![0f32; dim * padded];
        for (c, centroid) in centroids.rows().into_iter().enumerate() {
            for (d, &v) in centroid.iter().enumerate() {
                ct[d * padded + c] = v;
            }
        }
        let mut cn = squared_norms(centroids);
        cn.resize(padded, f32::INFINITY);
        Transposed {
            ct,
            cn,
            padded,
            dim,
        }
    }
}

/// Best ranking score and centroid of each row `rows[i]` of `x` (`[_, dim]`, flat) into
/// `labels[i]`, `scores[i]`, compiled for AVX2+FMA when the CPU has them (checked at run time).
fn nearest_indexed(
    x: &[f32],
    rows: &[u32],
    t: &Transposed,
    labels: &mut [u32],
    scores: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { nearest_indexed_avx2(x, rows, t, labels, scores) };
    }
    nearest_indexed_generic(x, rows, t, labels, scores)
}

/// The AVX2 kernel: [`ROW_BLOCK`] rows × [`ROW_CENTROIDS`] centroids in eight accumulators,
/// each lane adding its dot product in dimension order as the portable kernel does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nearest_indexed_avx2(
    x: &[f32],
    rows: &[u32],
    t: &Transposed,
    labels: &mut [u32],
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (dim, padded) = (t.dim, t.padded);
    assert!(t.ct.len() >= dim * padded && t.cn.len() >= padded);
    assert!(padded % ROW_CENTROIDS == 0 && labels.len() >= rows.len());
    assert!(rows.iter().all(|&r| (r as usize + 1) * dim <= x.len()));
    let mut lanes = [0f32; ROW_CENTROIDS];
    for (b, block) in rows.chunks(ROW_BLOCK).enumerate() {
        // Short last block: its missing rows repeat the first (their results are dropped).
        let row_ptr: [*const f32; ROW_BLOCK] = std::array::from_fn(|i| {
            let r = block.get(i).copied().unwrap_or(block[0]) as usize;
            // SAFETY: every row lies within x (asserted above).
            unsafe { x.as_ptr().add(r * dim) }
        });
        let mut best = [(f32::INFINITY, 0u32); ROW_BLOCK];
        for c0 in (0..padded).step_by(ROW_CENTROIDS) {
            let mut acc = [[_mm256_setzero_ps(); 2]; ROW_BLOCK];
            for d in 0..dim {
                // SAFETY: d < dim and c0 + 16 ≤ padded, so both loads lie within ct.
                let (lo, hi) = unsafe {
                    let p = t.ct.as_ptr().add(d * padded + c0);
                    (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
                };
                for (a, p) in acc.iter_mut().zip(&row_ptr) {
                    // SAFETY: d < dim, within the row.
                    let v = unsafe { _mm256_broadcast_ss(&*p.add(d)) };
                    a[0] = _mm256_fmadd_ps(v, lo, a[0]);
                    a[1] = _mm256_fmadd_ps(v, hi, a[1]);
                }
            }
            // SAFETY: c0 + 16 ≤ padded ≤ cn.len().
            let (n_lo, n_hi) = unsafe {
                let p = t.cn.as_ptr().add(c0);
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            };
            let m2 = _mm256_set1_ps(-2.0);
            for (a, best) in acc.iter().zip(best.iter_mut()) {
                // SAFETY: lanes holds 16 floats, two stores of 8.
                unsafe {
                    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_fmadd_ps(a[0], m2, n_lo));
                    _mm256_storeu_ps(lanes.as_mut_ptr().add(8), _mm256_fmadd_ps(a[1], m2, n_hi));
                }
                keep_best(&lanes, c0, best);
            }
        }
        for (i, &(s, c)) in best.iter().enumerate().take(block.len()) {
            labels[b * ROW_BLOCK + i] = c;
            scores[b * ROW_BLOCK + i] = s;
        }
    }
}

/// Folds a block's scores (centroids `c0..`) into a row's best: strictly better only, so ties
/// keep the smaller centroid.
#[inline(always)]
fn keep_best(lanes: &[f32], c0: usize, best: &mut (f32, u32)) {
    for (j, &s) in lanes.iter().enumerate() {
        if s < best.0 {
            *best = (s, (c0 + j) as u32);
        }
    }
}

/// The portable kernel (and the baseline the AVX2 one is tested against): the same scores,
/// each dot product added in dimension order with fused multiply-adds.
fn nearest_indexed_generic(
    x: &[f32],
    rows: &[u32],
    t: &Transposed,
    labels: &mut [u32],
    scores: &mut [f32],
) {
    let (dim, padded) = (t.dim, t.padded);
    let mut lanes = [0f32; ROW_CENTROIDS];
    for (i, &r) in rows.iter().enumerate() {
        let row = &x[r as usize * dim..(r as usize + 1) * dim];
        let mut best = (f32::INFINITY, 0u32);
        for c0 in (0..padded).step_by(ROW_CENTROIDS) {
            for (j, lane) in lanes.iter_mut().enumerate() {
                let dot = row
                    .iter()
                    .enumerate()
                    .fold(0f32, |a, (d, &v)| v.mul_add(t.ct[d * padded + c0 + j], a));
                *lane = dot.mul_add(-2.0, t.cn[c0 + j]);
            }
            keep_best(&lanes, c0, &mut best);
        }
        (labels[i], scores[i]) = (best.1, best.0);
    }
}

/// Up to this dimension (PQ subspaces) assignment computes distances directly: a GEMM with
/// so short an inner dimension is almost all overhead (measured 46 s vs … for PQ training).
pub const SMALL_DIM: usize = 16;
/// Rows per assignment task.
const ASSIGN_CHUNK: usize = 4096;

/// data: [n, dim ≤ SMALL_DIM], centroids: [k, dim] → (labels [n], squared distances [n]).
/// The centroids are transposed to `[dim, k]` so the loop over centroids vectorises.
fn assign_small_dim(
    data: ArrayView2<'_, f32>,
    centroids: ArrayView2<'_, f32>,
) -> (Vec<u32>, Vec<f32>) {
    let (k, dim) = centroids.dim();
    let ct: Vec<f32> = (0..dim)
        .flat_map(|d| centroids.column(d).to_vec())
        .collect();
    let data = data.as_standard_layout();
    let flat = data.as_slice().unwrap_or(&[]);
    let parts: Vec<(Vec<u32>, Vec<f32>)> = flat
        .par_chunks((ASSIGN_CHUNK * dim).max(1))
        .map(|chunk| nearest_rows(chunk, &ct, k, dim))
        .collect();
    let mut labels = Vec::with_capacity(data.nrows());
    let mut dists = Vec::with_capacity(data.nrows());
    for (l, d) in parts {
        labels.extend(l);
        dists.extend(d);
    }
    (labels, dists)
}

/// Nearest of `k` centroids (`ct: [dim, k]`) for each row of `chunk: [rows, dim]`, compiled for
/// AVX2+FMA when the CPU has them (checked at run time), else for the baseline target.
fn nearest_rows(chunk: &[f32], ct: &[f32], k: usize, dim: usize) -> (Vec<u32>, Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { nearest_rows_avx2(chunk, ct, k, dim) };
    }
    nearest_rows_generic(chunk, ct, k, dim)
}

/// The AVX2 kernel: eight centroids per register, a running best value and index per lane
/// (indices carried as f32, exact below 2^24), one reduction per row. Rows go four at a time
/// (each centroid load serves four rows, four independent chains of comparisons), the last
/// ones alone, each row with the same operations either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nearest_rows_avx2(
    chunk: &[f32],
    ct: &[f32],
    k: usize,
    dim: usize,
) -> (Vec<u32>, Vec<f32>) {
    assert!(ct.len() >= k * dim && k < 1 << 24 && dim > 0);
    let rows = chunk.len() / dim;
    let mut out = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    let mut quads = chunk.chunks_exact(dim * 4);
    for quad in &mut quads {
        // SAFETY: AVX2 and FMA as this function; `ct` holds k·dim floats (asserted).
        unsafe { nearest_group::<4>(quad, ct, k, dim, &mut out) };
    }
    for row in quads.remainder().chunks_exact(dim) {
        // SAFETY: as above.
        unsafe { nearest_group::<1>(row, ct, k, dim, &mut out) };
    }
    out
}

/// [`nearest_rows_avx2`] for `R` rows (`rows: [R, dim]`), appending labels and distances.
///
/// # Safety
/// AVX2 and FMA; `ct` holds at least `k · dim` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn nearest_group<const R: usize>(
    rows: &[f32],
    ct: &[f32],
    k: usize,
    dim: usize,
    (labels, dists): &mut (Vec<u32>, Vec<f32>),
) {
    use std::arch::x86_64::*;
    const L: usize = 8;
    let blocks = k / L;
    let step = _mm256_set1_ps(L as f32);
    let mut best_v = [_mm256_set1_ps(f32::INFINITY); R];
    let mut best_i = [_mm256_setzero_ps(); R];
    let mut cur = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
    for b in 0..blocks {
        let mut acc = [_mm256_setzero_ps(); R];
        for d in 0..dim {
            // SAFETY: d < dim and b·8 + 8 ≤ k, so the 8 floats at d·k + b·8 lie within ct.
            let c = unsafe { _mm256_loadu_ps(ct.as_ptr().add(d * k + b * L)) };
            for (r, a) in acc.iter_mut().enumerate() {
                let t = _mm256_sub_ps(_mm256_set1_ps(rows[r * dim + d]), c);
                *a = _mm256_fmadd_ps(t, t, *a);
            }
        }
        for r in 0..R {
            let better = _mm256_cmp_ps::<_CMP_LT_OQ>(acc[r], best_v[r]);
            best_v[r] = _mm256_blendv_ps(best_v[r], acc[r], better);
            best_i[r] = _mm256_blendv_ps(best_i[r], cur, better);
        }
        cur = _mm256_add_ps(cur, step);
    }
    let (mut lane_v, mut lane_i) = ([0f32; L], [0f32; L]);
    for r in 0..R {
        // SAFETY: both arrays hold exactly 8 floats, the width of the stores.
        unsafe {
            _mm256_storeu_ps(lane_v.as_mut_ptr(), best_v[r]);
            _mm256_storeu_ps(lane_i.as_mut_ptr(), best_i[r]);
        }
        let row = &rows[r * dim..(r + 1) * dim];
        let (label, best) = finish_row(row, ct, k, blocks * L, &lane_v, &lane_i);
        labels.push(label);
        dists.push(best);
    }
}

/// Reduces the lanes (ties to the smaller index), then scores centroids `from..k` directly.
#[inline(always)]
fn finish_row(
    row: &[f32],
    ct: &[f32],
    k: usize,
    from: usize,
    lane_v: &[f32],
    lane_i: &[f32],
) -> (u32, f32) {
    let (mut label, mut best) = (0u32, f32::INFINITY);
    for (&v, &i) in lane_v.iter().zip(lane_i) {
        let i = i as u32;
        if v < best || (v == best && i < label) {
            best = v;
            label = i;
        }
    }
    for j in from..k {
        let a: f32 = row
            .iter()
            .enumerate()
            .map(|(d, &x)| (x - ct[d * k + j]).powi(2))
            .sum();
        if a < best {
            best = a;
            label = j as u32;
        }
    }
    (label, best)
}

/// The portable kernel (and the baseline the AVX2 one is tested against): the same blocking
/// in plain Rust.
fn nearest_rows_generic(chunk: &[f32], ct: &[f32], k: usize, dim: usize) -> (Vec<u32>, Vec<f32>) {
    const L: usize = 8;
    let rows = chunk.len() / dim.max(1);
    let (mut labels, mut dists) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    let blocks = k / L;
    for row in chunk.chunks_exact(dim.max(1)) {
        let mut best_v = [f32::INFINITY; L];
        let mut best_i = [0f32; L];
        for b in 0..blocks {
            for l in 0..L {
                let j = b * L + l;
                let a: f32 = row
                    .iter()
                    .enumerate()
                    .map(|(d, &x)| (x - ct[d * k + j]).powi(2))
                    .sum();
                if a < best_v[l] {
                    best_v[l] = a;
                    best_i[l] = j as f32;
                }
            }
        }
        let (label, best) = finish_row(row, ct, k, blocks * L, &best_v, &best_i);
        labels.push(label);
        dists.push(best);
    }
    (labels, dists)
}

/// Position and value of the smallest element (the first, on ties). The minimum is found
/// lane-wise in a loop that compiles to packed `min`, then located with one scan.
#[inline(always)]
pub fn argmin(v: &[f32]) -> (usize, f32) {
    let mut lanes = [f32::INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x < *l { x } else { *l };
        }
    }
    let best = lanes
        .iter()
        .chain(tail)
        .fold(f32::INFINITY, |a, &b| if b < a { b } else { a });
    (v.iter().position(|&x| x == best).unwrap_or(0), best)
}

/// The GEMM path: exact 1-NN of each row among the centroids, in chunks of rows.
fn assign_gemm(data: ArrayView2<'_, f32>, centroids: ArrayView2<'_, f32>) -> (Vec<u32>, Vec<f32>) {
    let c_norms = squared_norms(centroids);
    let mut labels = Vec::with_capacity(data.nrows());
    let mut dists = Vec::with_capacity(data.nrows());
    for chunk in data.axis_chunks_iter(ndarray::Axis(0), 65_536) {
        let norms = squared_norms(chunk);
        let mut topk: Vec<TopK> = (0..chunk.nrows()).map(|_| TopK::new(1)).collect();
        let queries = Queries {
            vectors: chunk,
            sq_norms: &norms,
            metric: Metric::L2,
        };
        knn_block(queries, centroids, &c_norms, 0, &mut topk);
        for (t, qn) in topk.into_iter().zip(&norms) {
            let best = t.into_sorted().first().copied().unwrap_or(crate::Neighbor {
                score: f32::INFINITY,
                row: 0,
            });
            labels.push(best.row as u32);
            dists.push((best.score + qn).max(0.0));
        }
    }
    (labels, dists)
}

/// `queries: [nq, dim]`, `base: [nb, dim]`, `base_sq_norms: [nb]` (L2) → folds scores into `topk: [nq]`.
pub fn knn_block(
    queries: Queries<'_>,
    base: ArrayView2<'_, f32>,
    base_sq_norms: &[f32],
    first_row: u64,
    topk: &mut [TopK],
) {
    let q = queries.vectors.as_standard_layout();
    let x = base.as_standard_layout();
    let (nq, dim) = q.dim();
    let nb = x.nrows();
    assert_eq!(x.ncols(), dim, "query and base dimensions differ");
    assert_eq!(topk.len(), nq, "one TopK per query");
    if queries.metric == Metric::L2 {
        assert_eq!(
            base_sq_norms.len(),
            nb,
            "L2 needs the base rows' squared norms"
        );
        assert_eq!(
            queries.sq_norms.len(),
            nq,
            "L2 needs the queries' squared norms"
        );
    }
    if nq == 0 || nb == 0 {
        return;
    }
    let (q, x) = (q.as_slice().unwrap_or(&[]), x.as_slice().unwrap_or(&[]));
    let tile = TileArgs {
        metric: queries.metric,
        dim,
        x,
        x_norms: base_sq_norms,
        first_row,
    };

    let threads = rayon::current_num_threads();
    let query_tiles = nq.div_ceil(QUERY_TILE);
    if query_tiles >= threads || nb <= BASE_TILE {
        topk.par_chunks_mut(QUERY_TILE)
            .enumerate()
            .for_each(|(t, states)| {
                let q0 = t * QUERY_TILE;
                let mut scores = vec![0f32; states.len() * BASE_TILE.min(nb)];
                tile.scan(q, q0, states, 0..nb, &mut scores);
            });
    } else {
        // Few queries: every thread scans a share of the base for all of them, then merge.
        let share = nb.div_ceil(threads).next_multiple_of(BASE_TILE);
        let partial: Vec<Vec<TopK>> = (0..nb.div_ceil(share))
            .into_par_iter()
            .map(|s| {
                let rows = s * share..((s + 1) * share).min(nb);
                let mut local: Vec<TopK> = topk.iter().map(|t| TopK::new(t.k())).collect();
                let mut scores = vec![0f32; QUERY_TILE.min(nq) * BASE_TILE];
                for (t, states) in local.chunks_mut(QUERY_TILE).enumerate() {
                    tile.scan(q, t * QUERY_TILE, states, rows.clone(), &mut scores);
                }
                local
            })
            .collect();
        for local in partial {
            for (dst, src) in topk.iter_mut().zip(&local) {
                dst.merge(src);
            }
        }
    }
}

struct TileArgs<'a> {
    metric: Metric,
    dim: usize,
    x: &'a [f32],
    x_norms: &'a [f32],
    first_row: u64,
}

impl TileArgs<'_> {
    /// Scores queries `q0..q0 + states.len()` against base rows `rows`, tile by tile.
    fn scan(
        &self,
        q: &[f32],
        q0: usize,
        states: &mut [TopK],
        rows: std::ops::Range<usize>,
        scores: &mut [f32],
    ) {
        let (dim, m) = (self.dim, states.len());
        let q_tile = &q[q0 * dim..(q0 + m) * dim];
        let scale = if self.metric == Metric::L2 {
            -2.0
        } else {
            -1.0
        };
        let mut b0 = rows.start;
        while b0 < rows.end {
            let n = BASE_TILE.min(rows.end - b0);
            let x_tile = &self.x[b0 * dim..(b0 + n) * dim];
            let s = &mut scores[..m * n];
            gemm_abt(q_tile, x_tile, m, n, dim, scale, s);
            let x_norms = (self.metric == Metric::L2).then(|| &self.x_norms[b0..b0 + n]);
            select_rows(s, n, x_norms, self.first_row + b0 as u64, states);
            b0 += n;
        }
    }
}

/// Lanes checked together before any candidate is looked at one by one.
const LANES: usize = 16;

/// Feeds each query's row of `scores: [states.len(), n]` to its selection, compiled for
/// AVX2+FMA when the CPU has them (checked at run time), else for the baseline target.
fn select_rows(
    scores: &[f32],
    n: usize,
    x_norms: Option<&[f32]>,
    base_row: u64,
    states: &mut [TopK],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { select_rows_avx2(scores, n, x_norms, base_row, states) };
    }
    select_rows_generic(scores, n, x_norms, base_row, states)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn select_rows_avx2(
    scores: &[f32],
    n: usize,
    x_norms: Option<&[f32]>,
    base_row: u64,
    states: &mut [TopK],
) {
    select_rows_generic(scores, n, x_norms, base_row, states)
}

#[inline(always)]
fn select_rows_generic(
    scores: &[f32],
    n: usize,
    x_norms: Option<&[f32]>,
    base_row: u64,
    states: &mut [TopK],
) {
    for (row, state) in scores.chunks_exact(n).zip(states.iter_mut()) {
        select_row(row, x_norms, base_row, state);
    }
}

/// Feeds one query's row of partial scores `[n]` (plus `x_norms` for L2) to its selection.
/// Almost every score fails the threshold, so lanes are first tested together in a loop the
/// compiler vectorises; only a lane group with a hit is walked one by one.
#[inline(always)]
fn select_row(row: &[f32], x_norms: Option<&[f32]>, base_row: u64, state: &mut TopK) {
    let mut threshold = state.threshold();
    let n = row.len();
    let mut j = 0;
    while j < n {
        let end = (j + LANES).min(n);
        let hit = match x_norms {
            Some(x) => row[j..end]
                .iter()
                .zip(&x[j..end])
                .fold(false, |any, (v, x)| any | (v + x <= threshold)),
            None => row[j..end]
                .iter()
                .fold(false, |any, v| any | (*v <= threshold)),
        };
        if hit {
            for l in j..end {
                let v = row[l] + x_norms.map_or(0.0, |x| x[l]);
                if v <= threshold {
                    state.push(v, base_row + l as u64);
                    threshold = state.threshold();
                }
            }
        }
        j = end;
    }
}

/// out: [m, n] = scale · a·bᵀ, with a: [m, dim] and b: [n, dim], all row-major.
pub fn gemm_abt(a: &[f32], b: &[f32], m: usize, n: usize, dim: usize, scale: f32, out: &mut [f32]) {
    assert!(a.len() >= m * dim && b.len() >= n * dim && out.len() >= m * n);
    // SAFETY: the assertion above bounds every access: `a` is read as m×dim with row stride dim,
    // `b` as the dim×n matrix bᵀ (column stride dim, row stride 1) within n×dim elements, and
    // `out` is written as m×n with row stride n; `out` is a distinct &mut borrow so it aliases
    // neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            dim,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            dim as isize,
            b.as_ptr(),
            dim as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 nearest-centroid kernel agrees with the portable baseline (labels equal except
    /// at near-ties, where FMA rounding may pick the other; distances within rounding).
    #[test]
    fn nearest_rows_avx2_matches_the_portable_kernel() {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            let mut rng = crate::synth::Rng::new(3);
            for (k, dim) in [(256, 2), (16, 4), (37, 3), (5, 16)] {
                let ct: Vec<f32> = (0..k * dim).map(|_| rng.normal() as f32).collect();
                // Not a multiple of four: the last three rows go one at a time.
                let rows: Vec<f32> = (0..503 * dim).map(|_| rng.normal() as f32).collect();
                let (l1, d1) = nearest_rows_generic(&rows, &ct, k, dim);
                // SAFETY: the CPU supports AVX2 and FMA, checked above.
                let (l2, d2) = unsafe { nearest_rows_avx2(&rows, &ct, k, dim) };
                for (i, row) in rows.chunks_exact(dim).enumerate() {
                    // A row alone takes the one-row path: the same bits as in a group of four.
                    // SAFETY: as above.
                    let (l, d) = unsafe { nearest_rows_avx2(row, &ct, k, dim) };
                    assert_eq!((l[0], d[0].to_bits()), (l2[i], d2[i].to_bits()), "row {i}");
                }
                for i in 0..503 {
                    assert!(
                        (d1[i] - d2[i]).abs() <= 1e-5 * (1.0 + d1[i]),
                        "k={k} dim={dim} row {i}: {} vs {}",
                        d1[i],
                        d2[i]
                    );
                    if l1[i] != l2[i] {
                        let row = &rows[i * dim..(i + 1) * dim];
                        let dist = |j: u32| -> f32 {
                            row.iter()
                                .enumerate()
                                .map(|(d, &x)| (x - ct[d * k + j as usize]).powi(2))
                                .sum()
                        };
                        assert!(
                            (dist(l1[i]) - dist(l2[i])).abs() <= 1e-5,
                            "k={k} dim={dim} row {i}: labels {} vs {}",
                            l1[i],
                            l2[i]
                        );
                    }
                }
            }
        }
    }

    /// Rows read in place against a few centroids: the AVX2 kernel gives the portable one's
    /// labels and scores bit for bit (same dimension order, same fused multiply-adds), on
    /// centroid counts that are not whole blocks, a short last block of rows and rows named
    /// twice; and each label is a nearest centroid.
    #[test]
    fn assign_rows_reads_rows_in_place_and_finds_the_nearest_centroid() {
        let mut rng = crate::synth::Rng::new(8);
        for (k, dim) in [(37usize, 33usize), (64, 128), (5, 7), (16, 1)] {
            let data = ndarray::Array2::from_shape_fn((300, dim), |_| rng.normal() as f32);
            let centroids = ndarray::Array2::from_shape_fn((k, dim), |_| rng.normal() as f32);
            let rows: Vec<u32> = (0..203)
                .map(|i| (i * 7 % 300) as u32)
                .chain([5, 5])
                .collect();
            let (labels, dists) = assign_rows(data.view(), &rows, centroids.view());
            // The same rows in column-major order (not contiguous by rows once dim > 1): the
            // named rows are copied, with the same results.
            let by_columns = data.t().as_standard_layout().to_owned();
            let strided = by_columns.t();
            assert_eq!(strided.as_slice().is_none(), dim > 1);
            let (l_strided, d_strided) = assign_rows(strided, &rows, centroids.view());
            assert_eq!(
                (&l_strided, &d_strided),
                (&labels, &dists),
                "k={k} dim={dim}"
            );
            for (i, &r) in rows.iter().enumerate() {
                let x = data.row(r as usize);
                let dist = |c: usize| -> f32 {
                    x.iter()
                        .zip(centroids.row(c))
                        .map(|(a, b)| (a - b).powi(2))
                        .sum()
                };
                let best = (0..k).map(dist).fold(f32::INFINITY, f32::min);
                let got = dist(labels[i] as usize);
                assert!(
                    got <= best + 1e-4 * (1.0 + best),
                    "k={k} row {r}: {got} vs {best}"
                );
                assert!(
                    (dists[i] - got).abs() <= 1e-3 * (1.0 + got),
                    "k={k} row {r}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                let t = Transposed::new(centroids.view());
                let x = data.as_slice().unwrap();
                let (mut l1, mut s1) = (vec![0u32; rows.len()], vec![0f32; rows.len()]);
                let (mut l2, mut s2) = (l1.clone(), s1.clone());
                nearest_indexed_generic(x, &rows, &t, &mut l1, &mut s1);
                // SAFETY: the CPU supports AVX2 and FMA, checked above.
                unsafe { nearest_indexed_avx2(x, &rows, &t, &mut l2, &mut s2) };
                assert_eq!(l1, l2, "k={k} dim={dim}");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&s1), bits(&s2), "k={k} dim={dim}");
            }
        }
    }
}
