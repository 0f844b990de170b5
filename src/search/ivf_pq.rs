//! IVF-PQ search: coarse probe selection, asymmetric-distance scan of the probed lists, and
//! optional exact re-ranking.
//!
//! 1. The `n_probes` lists whose centroids are nearest each query are found by exact k-NN over
//!    the centroids (the backend's GEMM stage).
//! 2. For each probed list a lookup table of `pq_dim × ksub` partial distances is built: for L2
//!    between the query's residual `q − c` and every codeword; for inner product between `q`
//!    and every codeword, plus `q·c` once per list.
//! 3. Every code in the list is scored by `pq_dim` table lookups and offered to the query's
//!    top-k (`k · refine_ratio` candidates when re-ranking).
//! 4. With `refine_ratio > 1` and raw vectors in the artifact, candidates are re-scored with
//!    exact distances and the best `k` kept.
//!
//! On the CPU queries are processed in parallel (rayon), each with its own table buffer; a GPU
//! scans each query's lists in a thread block ([`Backend::ivf_pq_scan`]), with the same
//! tables, sums and order.

use super::{SearchResults, NO_NEIGHBOR};
use crate::backend::{Backend, Loaded, Queries};
use crate::index::ivf_pq::coarse_metric;
use crate::index::pq::{ProductQuantizer, TABLE_STRIDE};
use crate::metric::squared_norms;
use crate::{Error, Metric, Neighbor, Result, TopK};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// An IVF-PQ index as search sees it: small parts owned, large parts borrowed (memory map).
pub struct IvfPqIndex<'a> {
    pub metric: Metric,
    /// `[n_lists, dim]`.
    pub centroids: ArrayView2<'a, f32>,
    pub centroid_sq_norms: &'a [f32],
    pub pq: &'a ProductQuantizer,
    /// The codebooks as [`ProductQuantizer::transposed`] lays them out.
    pub pq_transposed: &'a [f32],
    /// `[n_lists + 1]`.
    pub list_offsets: &'a [u64],
    /// `[n]`.
    pub list_rows: &'a [u64],
    /// `[n · pq_dim]`, list order.
    pub codes: &'a [u8],
    /// `[n, dim]`, row order: present when built with refine.
    pub vectors: Option<ArrayView2<'a, f32>>,
}

impl IvfPqIndex<'_> {
    /// `queries: [nq, dim]` prepared (unit rows for cosine) → the `k` best per query: probes by
    /// `backend`'s exact k-NN, lists scanned by [`Backend::ivf_pq_scan`] (with what
    /// [`Backend::load_ivf_pq`] returned for this index), re-ranking on the host.
    pub fn search(
        &self,
        backend: &dyn Backend,
        loaded: Option<&Loaded>,
        queries: ArrayView2<'_, f32>,
        k: usize,
        n_probes: usize,
        refine_ratio: f32,
    ) -> Result<SearchResults> {
        if refine_ratio > 1.0 && self.vectors.is_none() {
            return Err(Error::param(
                "refine_ratio > 1 needs an index built with --refine (it keeps the raw vectors)",
            ));
        }
        let refine = refine_ratio > 1.0;
        let candidates = if refine {
            ((k as f32) * refine_ratio).ceil() as usize
        } else {
            k
        };
        let nq = queries.nrows();
        let part = crate::laps::span("ivf-pq search: probes chosen and lists scanned");
        let n_probes = n_probes.clamp(1, self.centroids.nrows().max(1));
        let found =
            match backend.ivf_pq_probe_and_scan(self, loaded, queries, n_probes, candidates)? {
                Some(found) => found,
                None => {
                    let part = crate::laps::span("ivf-pq search: probes chosen");
                    let probes = self.probes(backend, queries, n_probes)?;
                    drop(part);
                    let _part = crate::laps::span("ivf-pq search: lists scanned");
                    backend.ivf_pq_scan(self, loaded, queries, &probes, candidates)?
                }
            };
        drop(part);
        let _span = crate::laps::span("ivf-pq search: re-ranked and laid out");
        if found.len() != nq {
            return Err(Error::Gpu(format!(
                "{}: the IVF-PQ scan returned {} queries' candidates for {nq}",
                backend.name(),
                found.len()
            )));
        }

        // 4. Re-rank (each query's own): the candidates' exact scores from the backend where
        // it holds the raw vectors (a GPU), else on all cores here.
        let cm = coarse_metric(self.metric);
        let scores = match (refine, self.vectors) {
            (true, Some(_)) => backend.ivf_pq_rescore(self, loaded, queries, &found)?,
            _ => None,
        };
        if scores
            .as_ref()
            .is_some_and(|s| s.len() != found.iter().map(Vec::len).sum::<usize>())
        {
            return Err(Error::Gpu(format!(
                "{}: re-ranking returned scores for other candidates than the scan's",
                backend.name()
            )));
        }
        let starts: Vec<usize> = found
            .iter()
            .scan(0, |at, f| {
                let start = *at;
                *at += f.len();
                Some(start)
            })
            .collect();
        let per_query: Vec<Vec<Neighbor>> = found
            .into_par_iter()
            .zip(starts)
            .enumerate()
            .map(|(qi, (found, start))| match (refine, self.vectors) {
                (true, Some(vectors)) => {
                    let q = queries.row(qi);
                    let q = q.as_slice().unwrap_or(&[]);
                    let mut exact = TopK::new(k);
                    for (i, n) in found.into_iter().enumerate() {
                        let s = match &scores {
                            Some(scores) => scores[start + i],
                            None => {
                                let x = vectors.row(n.row as usize);
                                exact_score(cm, q, x.as_slice().unwrap_or(&[]))
                            }
                        };
                        exact.push(s, n.row);
                    }
                    exact.into_sorted()
                }
                _ => found,
            })
            .collect();

        // Every query keeps k columns; one whose probed lists hold fewer than k rows is padded.
        let mut rows = Array2::<u64>::from_elem((nq, k), NO_NEIGHBOR);
        let mut distances = Array2::<f32>::from_elem((nq, k), f32::NAN);
        for (i, found) in per_query.iter().enumerate() {
            for (j, n) in found.iter().take(k).enumerate() {
                rows[[i, j]] = n.row;
                distances[[i, j]] = match self.metric {
                    Metric::L2 => n.score.max(0.0),
                    // L2 on unit vectors is 2 − 2 cos.
                    Metric::Cosine => (n.score / 2.0).clamp(0.0, 2.0),
                    Metric::InnerProduct => -n.score,
                };
            }
        }
        Ok(SearchResults { rows, distances })
    }

    /// 1. The `n_probes` lists (clamped to `1..=n_lists`) whose centroids are nearest each
    ///    query, nearest first, by `backend`'s exact k-NN over the centroids: `row` is the list,
    ///    `score` its ranking score (`−q·c` for inner product, the list's constant).
    pub fn probes(
        &self,
        backend: &dyn Backend,
        queries: ArrayView2<'_, f32>,
        n_probes: usize,
    ) -> Result<Vec<Vec<Neighbor>>> {
        let n_probes = n_probes.clamp(1, self.centroids.nrows().max(1));
        let cm = coarse_metric(self.metric);
        let q_norms = if cm == Metric::L2 {
            squared_norms(queries)
        } else {
            Vec::new()
        };
        let mut probes: Vec<TopK> = (0..queries.nrows()).map(|_| TopK::new(n_probes)).collect();
        let qv = Queries {
            vectors: queries,
            sq_norms: &q_norms,
            metric: cm,
        };
        let c_norms: &[f32] = if cm == Metric::L2 {
            self.centroid_sq_norms
        } else {
            &[]
        };
        backend
            .knn_block(qv, self.centroids, c_norms, 0, &mut probes)
            .map_err(|e| match e {
                Error::Gpu(m) => Error::Gpu(format!("choosing {n_probes} lists per query: {m}")),
                other => other,
            })?;
        Ok(probes.into_iter().map(TopK::into_sorted).collect())
    }

    /// 2–3. The host's scan, on all cores: each query's `candidates` best rows of its probed
    /// lists ([`IvfPqIndex::probes`]) by asymmetric distance, best first (the ranking score:
    /// the squared L2 distance to the residual's code, or `−q·x̂` for inner product).
    pub fn scan(
        &self,
        queries: ArrayView2<'_, f32>,
        probes: &[Vec<Neighbor>],
        candidates: usize,
    ) -> Vec<Vec<Neighbor>> {
        let cm = coarse_metric(self.metric);
        let pq_dim = self.pq.pq_dim;
        probes
            .par_iter()
            .enumerate()
            .map_init(
                || {
                    (
                        vec![0f32; pq_dim * TABLE_STRIDE],
                        vec![0f32; self.centroids.ncols()],
                    )
                },
                |(table, residual), (qi, probe)| {
                    let q = queries.row(qi);
                    let q = q.as_slice().unwrap_or(&[]);
                    let mut top = TopK::new(candidates);
                    for p in probe {
                        let list = p.row as usize;
                        // The per-list constant: nothing for L2, −q·c for inner product.
                        let base = match cm {
                            Metric::L2 => {
                                for ((r, a), c) in
                                    residual.iter_mut().zip(q).zip(self.centroids.row(list))
                                {
                                    *r = a - c;
                                }
                                self.pq.table(self.pq_transposed, residual, false, table);
                                0.0
                            }
                            _ => {
                                self.pq.table(self.pq_transposed, q, true, table);
                                p.score
                            }
                        };
                        let (start, end) = (
                            self.list_offsets[list] as usize,
                            self.list_offsets[list + 1] as usize,
                        );
                        scan_list(
                            &self.codes[start * pq_dim..end * pq_dim],
                            pq_dim,
                            table,
                            base,
                            &self.list_rows[start..end],
                            &mut top,
                        );
                    }
                    top.into_sorted()
                },
            )
            .collect()
    }
}

/// A candidate's exact re-ranking score against query `q`, by the lists' metric `cm`
/// ([`coarse_metric`]): for L2 the squared differences, else the negated dot product (cosine
/// rows are unit vectors), summed from zero in dimension order. A GPU's re-ranking
/// (`rescore_exact` in kernels/select.cu) does the same additions, so the same scores.
pub fn exact_score(cm: Metric, q: &[f32], x: &[f32]) -> f32 {
    match cm {
        Metric::L2 => q
            .iter()
            .zip(x)
            .fold(0.0f32, |s, (a, b)| s + (a - b) * (a - b)),
        _ => -q.iter().zip(x).fold(0.0f32, |s, (a, b)| s + a * b),
    }
}

/// Scores every code of one list: `codes: [len · pq_dim]`, `table: [pq_dim · 256]`.
#[inline]
fn scan_list(codes: &[u8], pq_dim: usize, table: &[f32], base: f32, rows: &[u64], top: &mut TopK) {
    // One [f32; 256] per subspace: a u8 code indexes it with no bounds check.
    let tables: Vec<&[f32; TABLE_STRIDE]> = table
        .chunks_exact(TABLE_STRIDE)
        .filter_map(|t| t.try_into().ok())
        .collect();
    let mut threshold = top.threshold();
    for (code, &row) in codes.chunks_exact(pq_dim).zip(rows) {
        // Four independent sums keep four lookups in flight.
        let mut acc = [0f32; 4];
        let mut quads = code.chunks_exact(4).zip(tables.chunks_exact(4));
        for (c, t) in &mut quads {
            acc[0] += t[0][c[0] as usize];
            acc[1] += t[1][c[1] as usize];
            acc[2] += t[2][c[2] as usize];
            acc[3] += t[3][c[3] as usize];
        }
        let done = pq_dim - pq_dim % 4;
        for (c, t) in code[done..].iter().zip(&tables[done..]) {
            acc[0] += t[*c as usize];
        }
        let s = base + (acc[0] + acc[1]) + (acc[2] + acc[3]);
        if s <= threshold {
            top.push(s, row);
            threshold = top.threshold();
        }
    }
}
