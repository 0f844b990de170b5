//! IVF-PQ: an inverted file over a coarse k-means, with residuals product-quantized.
//!
//! Build:
//! 1. A seeded sample of rows ([`training_rows`]) is collected; `n_lists` coarse centroids are
//!    trained by k-means ([`super::kmeans`]) on at most `max_train_rows` of it.
//! 2. The product quantizer ([`super::pq`]) is trained on the residuals `x − c(list)` of at most
//!    [`PQ_TRAIN_ROWS`] sampled rows: codes spend their bits on where a row sits in its cell.
//! 3. Every row is assigned to its list and its residual encoded, batch by batch
//!    ([`Trained::encode`]), so a streaming build holds only the codes and one batch.
//! 4. Rows are sorted by list (counting sort): codes are stored contiguously per list, with
//!    `list_offsets [n_lists + 1]` and `list_rows [n]` mapping positions back to rows.
//!
//! Metrics: `l2` as is; `cosine` runs as L2 on unit vectors (‖q − x‖² = 2 − 2 cos, so the
//! ranking is the same and the distance is halved at report time); `ip` uses inner-product
//! coarse search and inner-product lookup tables over the same residual codes.
//!
//! Known limits: codes are one byte per sub-quantizer even for `pq_bits < 8` (the faiss export
//! packs them).

use super::kmeans::{self, sample_indices};
use super::pq::ProductQuantizer;
use crate::backend::Backend;
use crate::synth::Rng;
use crate::{Error, Metric, Result};
use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Rows used to train the product quantizer (256 per codeword at 8 bits, as faiss caps it).
pub const PQ_TRAIN_ROWS: usize = 65_536;
/// Rows encoded per chunk.
pub const ENCODE_CHUNK: usize = 65_536;

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

/// The rows (sorted) a build trains on: a seeded sample of `max(max_train_rows, PQ_TRAIN_ROWS)`
/// of `n`, so a streaming build can collect them in one pass over its input.
pub fn training_rows(n: usize, params: &IvfPqParams) -> Vec<usize> {
    let mut rng = Rng::new(params.seed);
    let mut rows = sample_indices(n, params.max_train_rows.max(PQ_TRAIN_ROWS).min(n), &mut rng);
    rows.sort_unstable();
    rows
}

/// The trained quantizers, ready to encode rows batch by batch.
#[derive(Debug, Clone)]
pub struct Trained {
    pub metric: Metric,
    /// `[n_lists, dim]`.
    pub centroids: Array2<f32>,
    pub pq: ProductQuantizer,
    pub coarse_objective: Vec<f64>,
    /// For assigning rows to lists by [`kmeans::assign_bounded`] (L2 lists on the CPU).
    pub bounds: Option<std::sync::Arc<kmeans::Bounds>>,
}

/// Trains the coarse quantizer and the product quantizer on `sample` (the rows of
/// [`training_rows`] for `n` total rows; unit rows for cosine).
pub fn train(
    backend: &dyn Backend,
    sample: ArrayView2<'_, f32>,
    n: usize,
    metric: Metric,
    params: &IvfPqParams,
    progress: Option<&dyn Fn(&str)>,
) -> Result<Trained> {
    params.validate(n, sample.ncols())?;
    let say = |s: &str| {
        if let Some(p) = progress {
            p(s)
        }
    };
    let mut rng = Rng::new(params.seed ^ 0x7261_696e);
    // 1. Coarse quantizer on a random subset of the sample.
    say("training coarse quantizer");
    let coarse_rows = sample_indices(
        sample.nrows(),
        params.max_train_rows.min(sample.nrows()),
        &mut rng,
    );
    let coarse = kmeans::train_local(
        backend,
        sample.select(Axis(0), &coarse_rows).view(),
        params.n_lists,
        params.kmeans_n_iters,
        params.seed,
        None,
    )?;
    // 2. Product quantizer on the residuals of another random subset.
    say("training product quantizer");
    let pq_rows = sample_indices(sample.nrows(), PQ_TRAIN_ROWS.min(sample.nrows()), &mut rng);
    let pq_sample = sample.select(Axis(0), &pq_rows);
    let bounds = match coarse_metric(metric) {
        Metric::L2 => kmeans::Bounds::new(backend, coarse.centroids.view())?.map(Arc::new),
        _ => None,
    };
    let labels = assign_lists(
        backend,
        pq_sample.view(),
        coarse.centroids.view(),
        metric,
        bounds.as_deref(),
    )?;
    let pq_train = residuals(pq_sample.view(), &labels, coarse.centroids.view());
    let pq = ProductQuantizer::train(
        backend,
        pq_train.view(),
        params.pq_dim,
        params.pq_bits,
        params.kmeans_n_iters,
        params.seed ^ 0x5051,
    )?;
    Ok(Trained {
        metric,
        centroids: coarse.centroids,
        pq,
        coarse_objective: coarse.objective,
        bounds,
    })
}

/// Rows encoded so far, in row order.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    labels: Vec<u32>,
    codes: Vec<u8>,
}

impl Trained {
    /// Assigns a batch of rows `[b, dim]` to lists and encodes their residuals, appending to
    /// `out` (memory: the codes so far plus this batch).
    pub fn encode(
        &self,
        backend: &dyn Backend,
        batch: ArrayView2<'_, f32>,
        out: &mut Encoded,
    ) -> Result<()> {
        for chunk in batch.axis_chunks_iter(Axis(0), ENCODE_CHUNK) {
            let part = crate::laps::span("ivf-pq encode: lists assigned");
            let labels = assign_lists(
                backend,
                chunk,
                self.centroids.view(),
                self.metric,
                self.bounds.as_deref(),
            )?;
            drop(part);
            let part = crate::laps::span("ivf-pq encode: residuals");
            let r = residuals(chunk, &labels, self.centroids.view());
            drop(part);
            let part = crate::laps::span("ivf-pq encode: residuals encoded");
            let codes = self.pq.encode(backend, r.view())?;
            drop(part);
            match codes.as_slice() {
                Some(flat) => out.codes.extend_from_slice(flat),
                None => out.codes.extend(codes.iter()),
            }
            out.labels.extend(labels);
        }
        Ok(())
    }

    /// Sorts the encoded rows into lists (counting sort).
    pub fn finish(self, encoded: Encoded) -> IvfPq {
        let n_lists = self.centroids.nrows();
        let pq_dim = self.pq.pq_dim;
        let n = encoded.labels.len();
        let mut list_offsets = vec![0u64; n_lists + 1];
        for &l in &encoded.labels {
            list_offsets[l as usize + 1] += 1;
        }
        for l in 0..n_lists {
            list_offsets[l + 1] += list_offsets[l];
        }
        let mut next = list_offsets.clone();
        let mut list_rows = vec![0u64; n];
        let mut codes = Array2::<u8>::zeros((n, pq_dim));
        for (row, &l) in encoded.labels.iter().enumerate() {
            let pos = next[l as usize] as usize;
            list_rows[pos] = row as u64;
            codes
                .row_mut(pos)
                .as_slice_mut()
                .unwrap_or(&mut [])
                .copy_from_slice(&encoded.codes[row * pq_dim..(row + 1) * pq_dim]);
            next[l as usize] += 1;
        }
        IvfPq {
            metric: self.metric,
            centroids: self.centroids,
            pq: self.pq,
            list_offsets,
            list_rows,
            codes,
            coarse_objective: self.coarse_objective,
        }
    }
}

/// Builds over `data: [n, dim]` held in memory (unit rows for cosine): [`train`] on the rows of
/// [`training_rows`], [`Trained::encode`] in chunks, [`Trained::finish`]. `progress` receives
/// short stage names.
pub fn build(
    backend: &dyn Backend,
    data: ArrayView2<'_, f32>,
    metric: Metric,
    params: &IvfPqParams,
    progress: Option<&dyn Fn(&str)>,
) -> Result<IvfPq> {
    let n = data.nrows();
    params.validate(n, data.ncols())?;
    let sample = data.select(Axis(0), &training_rows(n, params));
    let trained = train(backend, sample.view(), n, metric, params, progress)?;
    if let Some(p) = progress {
        p("encoding");
    }
    let mut encoded = Encoded::default();
    trained.encode(backend, data, &mut encoded)?;
    Ok(trained.finish(encoded))
}

/// The list of every row: nearest centroid by L2 ([`kmeans::assign_bounded`] with `bounds`),
/// or largest inner product for `ip`.
fn assign_lists(
    backend: &dyn Backend,
    data: ArrayView2<'_, f32>,
    centroids: ArrayView2<'_, f32>,
    metric: Metric,
    bounds: Option<&kmeans::Bounds>,
) -> Result<Vec<u32>> {
    if coarse_metric(metric) == Metric::L2 {
        return Ok(kmeans::assign_bounded(backend, data, centroids, bounds)?.0);
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

/// Residuals `x − c(list)` of `data: [n, dim]` with `labels: [n]`, blocks of rows on all cores
/// (the same subtractions as row by row).
fn residuals(
    data: ArrayView2<'_, f32>,
    labels: &[u32],
    centroids: ArrayView2<'_, f32>,
) -> Array2<f32> {
    let (n, dim) = data.dim();
    // Borrowed where `data` is already row-major; written straight into the output (no serial
    // copy of the rows first).
    let rows = data.as_standard_layout();
    let rows = rows.as_slice().unwrap_or(&[]);
    let mut out = vec![0f32; n * dim];
    let block = dim.max(1) * 1024;
    out.par_chunks_mut(block)
        .zip(rows.par_chunks(block))
        .zip(labels.par_chunks(1024))
        .for_each(|((out, rows), labels)| {
            for ((o, x), &l) in out
                .chunks_mut(dim.max(1))
                .zip(rows.chunks(dim.max(1)))
                .zip(labels)
            {
                for ((o, x), c) in o.iter_mut().zip(x).zip(centroids.row(l as usize)) {
                    *o = *x - *c;
                }
            }
        });
    Array2::from_shape_vec((n, dim), out).expect("n · dim residuals")
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
