//! IVF-PQ: an inverted file over a coarse k-means, with residuals product-quantized.
//!
//! Build:
//! 1. Sample at most `max_train_rows` rows (seeded) and train `n_lists` coarse centroids by
//!    k-means ([`super::kmeans`]).
//! 2. Assign every row to its nearest centroid (its list). The residual `x − c(list)` is what PQ
//!    encodes, so codes spend their bits on where a row sits within its cell.
//! 3. Train the product quantizer ([`super::pq`]) on the residuals of (at most
//!    [`PQ_TRAIN_ROWS`]) sampled rows, then encode every row's residual in chunks.
//! 4. Sort rows by list (counting sort): codes are stored contiguously per list, with
//!    `list_offsets [n_lists + 1]` and `list_rows [n]` mapping positions back to rows.
//!
//! Metrics: `l2` as is; `cosine` runs as L2 on unit vectors (‖q − x‖² = 2 − 2 cos, so the
//! ranking is the same and the distance is halved at report time); `ip` uses inner-product
//! coarse search and inner-product lookup tables over the same residual codes.
//!
//! Known limits: the input is held in memory during the build (streaming the encode pass is
//! future work); codes are one byte per sub-quantizer even for `pq_bits < 8`.

use super::kmeans::{self, sample_indices};
use super::pq::ProductQuantizer;
use crate::backend::Backend;
use crate::synth::Rng;
use crate::{Error, Metric, Result};
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

/// Rows used to train the product quantizer (256 per codeword at 8 bits, as faiss caps it).
pub const PQ_TRAIN_ROWS: usize = 65_536;
/// Rows encoded per chunk.
const ENCODE_CHUNK: usize = 65_536;

/// IVF-PQ build parameters (names as in cuVS and faiss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IvfPqParams {
    /// Coarse clusters (inverted lists). Default: 4·√N rounded to a power of two, so a list
    /// holds about √N/4 rows, and at least 39 training rows per list (faiss's minimum).
    pub n_lists: usize,
    /// Sub-quantizers: bytes per encoded row. Default: dim / 2 (or what `--max-index-memory`
    /// allows). Need not divide the dimension.
    pub pq_dim: usize,
    /// Bits per sub-quantizer code, 4..=8 (default 8: 256 codewords per subspace).
    pub pq_bits: u32,
    /// k-means iterations for the coarse quantizer and each PQ codebook (default 20).
    pub kmeans_n_iters: usize,
    /// Rows sampled to train the coarse quantizer (default: 256 per list, at most N).
    pub max_train_rows: usize,
    /// Keep the raw vectors in the artifact so search can re-rank candidates exactly.
    pub refine: bool,
    /// Seed for sampling and initialisation.
    pub seed: u64,
}

/// How the automatic choice was made, for the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoReason {
    pub reason: String,
}

impl IvfPqParams {
    /// Chooses parameters for `n` rows of `dim` floats. With `max_memory` (bytes), `pq_dim` is
    /// the largest that fits the artifact (codes, row map, ids, centroids, codebooks, raw
    /// vectors when `refine`) in it.
    pub fn auto(
        n: usize,
        dim: usize,
        refine: bool,
        max_memory: Option<u64>,
    ) -> Result<(Self, String)> {
        let target = (4.0 * (n as f64).sqrt()).max(1.0);
        let pow2 = 1usize << (target.log2().round() as u32);
        let cap = (n / 39).max(1);
        let n_lists = pow2.min(cap);
        let mut pq_dim = (dim / 2).max(1);
        let mut reason = format!("n_lists = 4·√N = {target:.0} → power of two {pow2}");
        if n_lists < pow2 {
            reason.push_str(&format!(
                ", capped at N/39 = {cap} so every list trains on ≥ 39 rows"
            ));
        }
        reason.push_str(&format!("; pq_dim = dim/2 = {pq_dim}"));
        if let Some(budget) = max_memory {
            let fixed = (n as u64) * 16
                + (n_lists * dim * 4) as u64
                + if refine { (n * dim * 4) as u64 } else { 0 };
            let per_row = budget.saturating_sub(fixed) / (n as u64).max(1);
            if per_row < 1 {
                return Err(Error::param(format!(
                    "--max-index-memory {budget} bytes is too small: ids, list maps and centroids{} alone need {fixed}",
                    if refine { " and the raw vectors kept by --refine" } else { "" }
                )));
            }
            if (per_row as usize) < pq_dim {
                pq_dim = per_row as usize;
                reason.push_str(&format!(
                    ", capped to {pq_dim} bytes per row by --max-index-memory"
                ));
            }
        }
        let params = IvfPqParams {
            n_lists,
            pq_dim,
            pq_bits: 8,
            kmeans_n_iters: 20,
            max_train_rows: (n_lists * 256).min(n),
            refine,
            seed: 42,
        };
        Ok((params, reason))
    }

    /// Checks the parameters against `n` rows of `dim` floats.
    pub fn validate(&self, n: usize, dim: usize) -> Result<()> {
        let fail = |m: String| Err(Error::param(m));
        if self.n_lists == 0 || self.n_lists > n {
            return fail(format!(
                "n_lists = {} must be between 1 and the number of rows ({n})",
                self.n_lists
            ));
        }
        if self.pq_dim == 0 || self.pq_dim > dim {
            return fail(format!(
                "pq_dim = {} must be between 1 and the dimension ({dim})",
                self.pq_dim
            ));
        }
        if !(4..=8).contains(&self.pq_bits) {
            return fail(format!(
                "pq_bits = {} must be between 4 and 8",
                self.pq_bits
            ));
        }
        if self.max_train_rows < self.n_lists {
            return fail(format!(
                "max_train_rows = {} must be at least n_lists = {}",
                self.max_train_rows, self.n_lists
            ));
        }
        let ksub = 1usize << self.pq_bits;
        if n < ksub {
            return fail(format!(
                "pq_bits = {} needs at least {ksub} rows to train its codebooks, got {n}",
                self.pq_bits
            ));
        }
        if self.kmeans_n_iters == 0 {
            return fail("kmeans_n_iters must be at least 1".into());
        }
        Ok(())
    }
}

/// A built IVF-PQ index.
#[derive(Debug, Clone)]
pub struct IvfPq {
    pub metric: Metric,
    /// `[n_lists, dim]`.
    pub centroids: Array2<f32>,
    pub pq: ProductQuantizer,
    /// `[n_lists + 1]`: list `l` holds positions `list_offsets[l]..list_offsets[l + 1]`.
    pub list_offsets: Vec<u64>,
    /// `[n]`: the row at each position.
    pub list_rows: Vec<u64>,
    /// `[n, pq_dim]`, in position (list) order.
    pub codes: Array2<u8>,
    /// Coarse k-means objective per iteration.
    pub coarse_objective: Vec<f64>,
}

/// List sizes at a glance: `imbalance` is n_lists · Σ size² / N² (1.0 when perfectly even),
/// as faiss reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListStats {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub imbalance: f64,
}

impl IvfPq {
    pub fn list_stats(&self) -> ListStats {
        let sizes: Vec<u64> = self.list_offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let n: u64 = sizes.iter().sum();
        let sq: f64 = sizes.iter().map(|&s| (s as f64).powi(2)).sum();
        ListStats {
            min: sizes.iter().copied().min().unwrap_or(0),
            max: sizes.iter().copied().max().unwrap_or(0),
            mean: n as f64 / sizes.len().max(1) as f64,
            imbalance: sizes.len() as f64 * sq / (n as f64).powi(2).max(1.0),
        }
    }
}

/// The coarse metric: inner product for `ip`, L2 otherwise.
pub fn coarse_metric(metric: Metric) -> Metric {
    if metric == Metric::InnerProduct {
        Metric::InnerProduct
    } else {
        Metric::L2
    }
}

/// Builds over `data: [n, dim]` (unit rows for cosine). `progress` receives short stage names.
pub fn build(
    backend: &dyn Backend,
    data: ArrayView2<'_, f32>,
    metric: Metric,
    params: &IvfPqParams,
    progress: Option<&dyn Fn(&str)>,
) -> Result<IvfPq> {
    let (n, dim) = data.dim();
    params.validate(n, dim)?;
    let say = |s: &str| {
        if let Some(p) = progress {
            p(s)
        }
    };
    let mut rng = Rng::new(params.seed);

    // 1. Coarse quantizer on a sample.
    say("training coarse quantizer");
    let train_rows = sample_indices(n, params.max_train_rows.min(n), &mut rng);
    let train = data.select(Axis(0), &train_rows);
    let coarse = kmeans::train(
        backend,
        train.view(),
        params.n_lists,
        params.kmeans_n_iters,
        params.seed,
        None,
    )?;
    let centroids = coarse.centroids;

    // 2. Lists of every row (inner-product search picks lists by inner product).
    say("assigning rows to lists");
    let labels = assign_lists(backend, data, centroids.view(), metric)?;

    // 3. Product quantizer on sampled residuals, then every row's code.
    say("training product quantizer");
    let pq_rows = sample_indices(n, PQ_TRAIN_ROWS.min(n), &mut rng);
    let pq_train = residuals(data, &pq_rows, &labels, centroids.view());
    let pq = ProductQuantizer::train(
        backend,
        pq_train.view(),
        params.pq_dim,
        params.pq_bits,
        params.kmeans_n_iters,
        params.seed ^ 0x5051,
    )?;
    say("encoding");
    let mut codes_by_row = Array2::<u8>::zeros((n, params.pq_dim));
    for start in (0..n).step_by(ENCODE_CHUNK) {
        let rows: Vec<usize> = (start..(start + ENCODE_CHUNK).min(n)).collect();
        let r = residuals(data, &rows, &labels, centroids.view());
        let c = pq.encode(backend, r.view())?;
        codes_by_row
            .slice_mut(ndarray::s![start..start + rows.len(), ..])
            .assign(&c);
    }

    // 4. Counting sort by list.
    let mut list_offsets = vec![0u64; params.n_lists + 1];
    for &l in &labels {
        list_offsets[l as usize + 1] += 1;
    }
    for l in 0..params.n_lists {
        list_offsets[l + 1] += list_offsets[l];
    }
    let mut next = list_offsets.clone();
    let mut list_rows = vec![0u64; n];
    for (row, &l) in labels.iter().enumerate() {
        list_rows[next[l as usize] as usize] = row as u64;
        next[l as usize] += 1;
    }
    let codes = codes_by_row.select(
        Axis(0),
        &list_rows.iter().map(|&r| r as usize).collect::<Vec<_>>(),
    );
    Ok(IvfPq {
        metric,
        centroids,
        pq,
        list_offsets,
        list_rows,
        codes,
        coarse_objective: coarse.objective,
    })
}

/// The list of every row: nearest centroid by L2, or largest inner product for `ip`.
fn assign_lists(
    backend: &dyn Backend,
    data: ArrayView2<'_, f32>,
    centroids: ArrayView2<'_, f32>,
    metric: Metric,
) -> Result<Vec<u32>> {
    if coarse_metric(metric) == Metric::L2 {
        return Ok(kmeans::assign(backend, data, centroids)?.0);
    }
    let mut labels = Vec::with_capacity(data.nrows());
    for chunk in data.axis_chunks_iter(Axis(0), 65_536) {
        let mut topk: Vec<crate::TopK> = (0..chunk.nrows()).map(|_| crate::TopK::new(1)).collect();
        let q = crate::backend::Queries {
            vectors: chunk,
            sq_norms: &[],
            metric: Metric::InnerProduct,
        };
        backend.knn_block(q, centroids, &[], 0, &mut topk)?;
        labels.extend(
            topk.into_iter()
                .map(|t| t.into_sorted().first().map_or(0, |b| b.row as u32)),
        );
    }
    Ok(labels)
}

/// Residuals `x − c(list)` of the given rows: `[rows.len(), dim]`.
fn residuals(
    data: ArrayView2<'_, f32>,
    rows: &[usize],
    labels: &[u32],
    centroids: ArrayView2<'_, f32>,
) -> Array2<f32> {
    let mut out = data.select(Axis(0), rows);
    for (mut r, &row) in out.rows_mut().into_iter().zip(rows) {
        r -= &centroids.row(labels[row] as usize);
    }
    out
}

/// Writes an IVF-PQ artifact. `vectors: [n, dim]` (row order) are stored when the index was
/// built with `refine`; `manifest` carries everything but the checksums.
pub fn write(
    path: &std::path::Path,
    index: &IvfPq,
    ids: &crate::Ids,
    vectors: Option<ArrayView2<'_, f32>>,
    manifest: crate::artifact::Manifest,
) -> Result<()> {
    use crate::artifact::container::{DType, TensorOut};
    let (n_lists, dim) = index.centroids.dim();
    let n = index.list_rows.len();
    let pq = &index.pq;
    let centroids = index.centroids.as_standard_layout();
    let codebooks = pq.codebooks.as_standard_layout();
    let codes = index.codes.as_standard_layout();
    let mut tensors = vec![
        TensorOut::new(
            "ivf.centroids",
            DType::F32,
            vec![n_lists, dim],
            centroids.as_slice().unwrap_or(&[]),
        ),
        TensorOut::new(
            "ivf.list_offsets",
            DType::U64,
            vec![n_lists + 1],
            &index.list_offsets,
        ),
        TensorOut::new("ivf.rows", DType::U64, vec![n], &index.list_rows),
        TensorOut::new(
            "ivf.codes",
            DType::U8,
            vec![n, pq.pq_dim],
            codes.as_slice().unwrap_or(&[]),
        ),
        TensorOut::new(
            "pq.codebooks",
            DType::F32,
            vec![pq.pq_dim, pq.ksub(), pq.dsub()],
            codebooks.as_slice().unwrap_or(&[]),
        ),
    ];
    let raw = vectors.map(|v| v.as_standard_layout().into_owned());
    if let Some(v) = &raw {
        tensors.push(TensorOut::new(
            "vectors",
            DType::F32,
            vec![n, dim],
            v.as_slice().unwrap_or(&[]),
        ));
    }
    tensors.extend(crate::artifact::ids_tensors(ids));
    crate::artifact::write(path, manifest, &tensors)
}
