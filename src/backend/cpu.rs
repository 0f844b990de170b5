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

    fn pq_encode(
        &self,
        residuals: ArrayView2<'_, f32>,
        pq: &crate::index::pq::ProductQuantizer,
    ) -> Result<Option<ndarray::Array2<u8>>> {
        Ok((pq.dsub() <= SMALL_DIM).then(|| pq_encode_small(residuals, pq)))
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

/// Up to this dimension (PQ sub-spaces) assignment computes distances directly: a GEMM with
/// so short an inner dimension is almost all overhead.
pub const SMALL_DIM: usize = 16;
/// Rows per assignment task.
const ASSIGN_CHUNK: usize = 4096;

/// data: [n, dim ≤ SMALL_DIM], centroids: [k, dim] → (labels [n], squared distances [n]).
fn assign_small_dim(
    data: ArrayView2<'_, f32>,
    centroids: ArrayView2<'_, f32>,
) -> (Vec<u32>, Vec<f32>) {
    let (k, dim) = centroids.dim();
    let ct = transposed(centroids);
    let data = data.as_standard_layout();
    let flat = data.as_slice().unwrap_or(&[]);
    let parts: Vec<Nearest> = flat
        .par_chunks((ASSIGN_CHUNK * dim).max(1))
        .map(|chunk| nearest_rows(chunk, &ct, k, dim, false))
        .collect();
    let mut labels = Vec::with_capacity(data.nrows());
    let mut dists = Vec::with_capacity(data.nrows());
    for part in parts {
        labels.extend(part.labels);
        dists.extend(part.dists);
    }
    (labels, dists)
}

/// Rows per task of [`pq_encode_small`].
const ENCODE_ROWS: usize = 256;

/// PQ codes of `x: [n, dim]` for sub-spaces of at most [`SMALL_DIM`] floats: a task per
/// [`ENCODE_ROWS`] rows cuts each sub-space out of its rows while they are in cache and finds
/// the nearest codewords ([`nearest_rows`]); the codes of encoding one sub-space at a time.
fn pq_encode_small(
    x: ArrayView2<'_, f32>,
    pq: &crate::index::pq::ProductQuantizer,
) -> ndarray::Array2<u8> {
    let (n, dim) = x.dim();
    let (pq_dim, dsub, ksub) = (pq.pq_dim, pq.dsub(), pq.ksub());
    let books = pq.transposed();
    let x = x.as_standard_layout();
    let flat = x.as_slice().unwrap_or(&[]);
    let mut codes = ndarray::Array2::<u8>::zeros((n, pq_dim));
    let Some(out) = codes.as_slice_mut() else {
        return codes;
    };
    out.par_chunks_mut((ENCODE_ROWS * pq_dim).max(1))
        .zip(flat.par_chunks((ENCODE_ROWS * dim).max(1)))
        .for_each(|(codes, rows)| {
            let mut sub = vec![0f32; ENCODE_ROWS * dsub];
            for m in 0..pq_dim {
                let (lo, hi) = crate::index::pq::columns(dim, m, dsub);
                for (s, row) in sub.chunks_exact_mut(dsub).zip(rows.chunks_exact(dim)) {
                    let (cut, pad) = s.split_at_mut(hi - lo);
                    cut.copy_from_slice(&row[lo..hi]);
                    // Zero past the last column.
                    pad.fill(0.0);
                }
                let count = rows.len() / dim.max(1);
                let book = &books[m * dsub * ksub..(m + 1) * dsub * ksub];
                let near = nearest_rows(&sub[..count * dsub], book, ksub, dsub, false);
                for (c, &l) in codes.iter_mut().skip(m).step_by(pq_dim).zip(&near.labels) {
                    *c = l as u8;
                }
            }
        });
    codes
}

/// `centroids: [k, dim]` as `[dim, k]`, one row per dimension: the layout [`nearest_rows`]
/// reads.
pub fn transposed(centroids: ArrayView2<'_, f32>) -> Vec<f32> {
    (0..centroids.ncols())
        .flat_map(|d| centroids.column(d).to_vec())
        .collect()
}

/// Each row's nearest centroid and squared distance, and where asked the second-smallest
/// squared distance over all centroids (equal to the smallest where two centroids tie).
#[derive(Debug, Default, PartialEq)]
pub struct Nearest {
    pub labels: Vec<u32>,
    pub dists: Vec<f32>,
    /// Empty unless asked for.
    pub runner_up: Vec<f32>,
}

/// Nearest of `k` centroids (`ct: [dim, k]`, from [`transposed`]) for each row of
/// `chunk: [rows, dim]`, with each row's runner-up distance where `runner_up`; compiled for
/// AVX2+FMA when the CPU has them (checked at run time), else for the baseline target.
///
/// Every kernel scores a centroid as `Σ_d (x_d − c_d)²` added in dimension order by fused
/// multiply-adds from zero and keeps the first smallest score (ties to the smaller centroid):
/// the arithmetic of the GPU's `assign_small` and `pq_encode`, so labels and distances are the
/// same bits on either backend.
pub fn nearest_rows(chunk: &[f32], ct: &[f32], k: usize, dim: usize, runner_up: bool) -> Nearest {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() && (1..=SMALL_DIM).contains(&dim) {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { nearest_rows_avx2(chunk, ct, k, dim, runner_up) };
    }
    nearest_rows_generic(chunk, ct, k, dim, runner_up)
}

/// Rows scored at once by [`nearest_rows_avx2`]: one AVX2 register of floats.
const ROW_LANES: usize = 8;

/// The AVX2 kernel, vectorised over rows: the chunk is transposed to `[dim, rows]` (padded
/// with zero rows to whole registers, their results dropped), so a register holds one
/// dimension of eight rows; then for each centroid, broadcast once, each lane adds its own
/// row's score and keeps a running best value and label (and runner-up). No reduction across
/// lanes is needed, and each row's result does not depend on the rows beside it. The loop is
/// compiled for each dimension up to [`SMALL_DIM`], so a row's dimensions stay in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nearest_rows_avx2(
    chunk: &[f32],
    ct: &[f32],
    k: usize,
    dim: usize,
    runner_up: bool,
) -> Nearest {
    let rows = chunk.len() / dim.max(1);
    let padded = rows.next_multiple_of(ROW_LANES);
    let mut xt = vec![0f32; dim * padded];
    for (r, row) in chunk.chunks_exact(dim.max(1)).enumerate() {
        for (d, &v) in row.iter().enumerate() {
            xt[d * padded + r] = v;
        }
    }
    let mut out = Nearest {
        labels: vec![0u32; padded],
        dists: vec![0f32; padded],
        runner_up: vec![0f32; if runner_up { padded } else { 0 }],
    };
    macro_rules! by_dim {
        ($($d:literal)*) => {
            match (dim, runner_up) {
                // SAFETY (each arm): AVX2 and FMA as this function; the buffers are sized
                // by nearest_lanes' own assertion.
                $(
                    ($d, false) => unsafe { nearest_lanes::<$d, false>(&xt, ct, k, &mut out) },
                    ($d, true) => unsafe { nearest_lanes::<$d, true>(&xt, ct, k, &mut out) },
                )*
                _ => return nearest_rows_generic(chunk, ct, k, dim, runner_up),
            }
        };
    }
    by_dim!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    out.labels.truncate(rows);
    out.dists.truncate(rows);
    out.runner_up.truncate(rows);
    out
}

/// [`nearest_rows_avx2`] for `D` dimensions: `xt: [D, padded]` (`padded` a multiple of
/// [`ROW_LANES`], the length of `out`'s vectors; `runner_up` empty unless `S`), two registers
/// of rows at a time.
///
/// # Safety
/// AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nearest_lanes<const D: usize, const S: bool>(
    xt: &[f32],
    ct: &[f32],
    k: usize,
    out: &mut Nearest,
) {
    let padded = out.labels.len();
    assert!(
        padded.is_multiple_of(ROW_LANES)
            && out.dists.len() == padded
            && out.runner_up.len() == if S { padded } else { 0 }
            && xt.len() >= D * padded
            && ct.len() >= D * k
            && k <= i32::MAX as usize
    );
    let mut at = 0;
    while at + 2 * ROW_LANES <= padded {
        // SAFETY: AVX2 and FMA as this function; rows at..at + 16 lie within padded.
        unsafe { nearest_block::<D, 2, S>(xt, padded, at, ct, k, out) };
        at += 2 * ROW_LANES;
    }
    if at < padded {
        // SAFETY: as above, rows at..at + 8.
        unsafe { nearest_block::<D, 1, S>(xt, padded, at, ct, k, out) };
    }
}

/// Rows `at..at + R·8` of [`nearest_lanes`] against every centroid.
///
/// # Safety
/// AVX2 and FMA; `at + R·8 ≤ padded`, `xt` holds `D · padded` floats, `ct` holds `D · k`,
/// `out`'s vectors hold `padded` each (`runner_up` only if `S`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn nearest_block<const D: usize, const R: usize, const S: bool>(
    xt: &[f32],
    padded: usize,
    at: usize,
    ct: &[f32],
    k: usize,
    out: &mut Nearest,
) {
    use std::arch::x86_64::*;
    let mut x = [[_mm256_setzero_ps(); D]; R];
    for (r, xr) in x.iter_mut().enumerate() {
        for (d, v) in xr.iter_mut().enumerate() {
            // SAFETY: d·padded + at + r·8 + 8 ≤ D·padded (the caller's bounds).
            *v = unsafe { _mm256_loadu_ps(xt.as_ptr().add(d * padded + at + r * ROW_LANES)) };
        }
    }
    let mut best = [_mm256_set1_ps(f32::INFINITY); R];
    let mut second = [_mm256_set1_ps(f32::INFINITY); R];
    let mut label = [_mm256_setzero_ps(); R];
    let (mut j, one) = (_mm256_setzero_si256(), _mm256_set1_epi32(1));
    for c in 0..k {
        let mut w = [_mm256_setzero_ps(); D];
        for (d, w) in w.iter_mut().enumerate() {
            // SAFETY: d·k + c < D·k ≤ ct.len().
            *w = unsafe { _mm256_broadcast_ss(&*ct.as_ptr().add(d * k + c)) };
        }
        for r in 0..R {
            // (c − x)² is (x − c)² bit for bit: rounding to nearest is symmetric in sign.
            // The first square alone is the fused multiply-add onto zero.
            let t = _mm256_sub_ps(w[0], x[r][0]);
            let mut acc = _mm256_mul_ps(t, t);
            for d in 1..D {
                let t = _mm256_sub_ps(w[d], x[r][d]);
                acc = _mm256_fmadd_ps(t, t, acc);
            }
            if S {
                // The runner-up: the old best where this score beats it, else the smaller
                // of this score and the old runner-up.
                second[r] = _mm256_min_ps(second[r], _mm256_max_ps(acc, best[r]));
            }
            let better = _mm256_cmp_ps::<_CMP_LT_OQ>(acc, best[r]);
            // min(a, b) is a where a < b, else b: the same choice as `better`.
            best[r] = _mm256_min_ps(acc, best[r]);
            label[r] = _mm256_blendv_ps(label[r], _mm256_castsi256_ps(j), better);
        }
        j = _mm256_add_epi32(j, one);
    }
    for r in 0..R {
        let row = at + r * ROW_LANES;
        // SAFETY: row + 8 ≤ padded, the length of each output written.
        unsafe {
            _mm256_storeu_ps(out.dists.as_mut_ptr().add(row), best[r]);
            _mm256_storeu_si256(
                out.labels.as_mut_ptr().add(row).cast(),
                _mm256_castps_si256(label[r]),
            );
            if S {
                _mm256_storeu_ps(out.runner_up.as_mut_ptr().add(row), second[r]);
            }
        }
    }
}

/// The portable kernel (and the baseline the AVX2 one is tested against): the same scores and
/// choices, a row and a centroid at a time.
fn nearest_rows_generic(
    chunk: &[f32],
    ct: &[f32],
    k: usize,
    dim: usize,
    runner_up: bool,
) -> Nearest {
    let mut out = Nearest::default();
    for row in chunk.chunks_exact(dim.max(1)) {
        let (mut label, mut best, mut second) = (0u32, f32::INFINITY, f32::INFINITY);
        for c in 0..k {
            let score = row.iter().enumerate().fold(0f32, |acc, (d, &x)| {
                let t = x - ct[d * k + c];
                t.mul_add(t, acc)
            });
            if score < best {
                (label, best, second) = (c as u32, score, best);
            } else if score < second {
                second = score;
            }
        }
        out.labels.push(label);
        out.dists.push(best);
        if runner_up {
            out.runner_up.push(second);
        }
    }
    out
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

    /// The AVX2 nearest-centroid kernel gives the portable one's labels and distances bit for
    /// bit, for every dimension it is compiled for, centroid counts that are not whole
    /// registers, row counts that leave a short last group, a row alone, and exact ties (which
    /// go to the smaller centroid); and each label is a nearest centroid.
    #[test]
    fn nearest_rows_avx2_matches_the_portable_kernel() {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            let mut rng = crate::synth::Rng::new(3);
            for dim in 1..=SMALL_DIM {
                for k in [1, 5, 37, 256] {
                    let mut ct: Vec<f32> = (0..k * dim).map(|_| rng.normal() as f32).collect();
                    if k > 5 {
                        // Centroid 5 repeats centroid 2: rows nearest to it must say 2.
                        for d in 0..dim {
                            ct[d * k + 5] = ct[d * k + 2];
                        }
                    }
                    // 203 rows: whole pairs of registers, one register, then three rows.
                    let mut rows: Vec<f32> = (0..203 * dim).map(|_| rng.normal() as f32).collect();
                    for d in 0..dim {
                        rows[d] = ct[d * k + 2.min(k - 1)];
                    }
                    let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    let one = nearest_rows_generic(&rows, &ct, k, dim, false);
                    let both = nearest_rows_generic(&rows, &ct, k, dim, true);
                    let (l1, d1, s1) = (&both.labels, &both.dists, &both.runner_up);
                    assert_eq!((&one.labels, bits(&one.dists)), (l1, bits(d1)));
                    for runner_up in [false, true] {
                        // SAFETY: the CPU supports AVX2 and FMA, checked above.
                        let fast = unsafe { nearest_rows_avx2(&rows, &ct, k, dim, runner_up) };
                        let s2 = if runner_up { bits(s1) } else { Vec::new() };
                        assert_eq!(
                            (&fast.labels, bits(&fast.dists), bits(&fast.runner_up)),
                            (l1, bits(d1), s2),
                            "k={k} dim={dim} runner-up {runner_up}"
                        );
                    }
                    assert_eq!(
                        (l1[0], d1[0]),
                        (2.min(k as u32 - 1), 0.0),
                        "k={k} dim={dim}"
                    );
                    if k > 5 {
                        // Row 0 sits on centroid 2 and its copy 5: the runner-up is 0 too.
                        assert_eq!(s1[0], 0.0);
                    }
                    for (i, row) in rows.chunks_exact(dim).enumerate().step_by(17) {
                        // SAFETY: as above.
                        let alone = unsafe { nearest_rows_avx2(row, &ct, k, dim, true) };
                        let got = (alone.labels[0], alone.dists[0], alone.runner_up[0]);
                        assert_eq!(got, (l1[i], d1[i], s1[i]), "row {i}");
                        let exact = |c: usize| -> f64 {
                            row.iter()
                                .enumerate()
                                .map(|(d, &x)| (x as f64 - ct[d * k + c] as f64).powi(2))
                                .sum()
                        };
                        let nearest = (0..k).map(exact).fold(f64::INFINITY, f64::min);
                        assert!(
                            exact(l1[i] as usize) <= nearest + 1e-5,
                            "k={k} dim={dim} row {i}"
                        );
                        let others = (0..k).filter(|&c| c != l1[i] as usize).map(exact);
                        let runner_up = others.fold(f64::INFINITY, f64::min);
                        let close = (s1[i] as f64 - runner_up).abs() <= 1e-5 * (1.0 + runner_up);
                        assert!(close || k == 1, "k={k} dim={dim} row {i}");
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
