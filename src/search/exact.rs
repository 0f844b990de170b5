//! Exact k-NN over a base that arrives in blocks (a memory-mapped artifact in one block, or a
//! Parquet stream in many), on any [`Backend`].

use super::SearchResults;
use crate::backend::{Backend, Queries};
use crate::metric::squared_norms;
use crate::{Error, Metric, Result, TopK};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Checks queries against an index's dimension and metric and prepares them: finite values
/// required, rows normalised for cosine.
pub fn prepare_queries(
    queries: ArrayView2<'_, f32>,
    dim: usize,
    metric: Metric,
) -> Result<Array2<f32>> {
    if queries.ncols() != dim {
        return Err(Error::param(format!(
            "queries have dimension {} but the index has {dim}",
            queries.ncols()
        )));
    }
    if let Some(pos) = queries.iter().position(|v| !v.is_finite()) {
        return Err(Error::param(format!(
            "query row {} holds a non-finite value",
            pos / dim.max(1)
        )));
    }
    let mut q = queries.as_standard_layout().into_owned();
    if metric.normalizes() {
        if let Some(row) = crate::metric::normalize_rows(q.view_mut()) {
            return Err(Error::param(format!(
                "query row {row} is a zero vector, which has no cosine distance"
            )));
        }
    }
    Ok(q)
}

/// A running exact search of fixed queries over base blocks.
pub struct ExactSearch {
    metric: Metric,
    queries: Array2<f32>,
    q_norms: Vec<f32>,
    topk: Vec<TopK>,
    rows_seen: u64,
}

impl ExactSearch {
    /// `queries: [nq, dim]`, already prepared (see [`prepare_queries`]); `k ≥ 1`.
    pub fn new(queries: Array2<f32>, metric: Metric, k: usize) -> Self {
        let q_norms = if metric == Metric::L2 {
            squared_norms(queries.view())
        } else {
            Vec::new()
        };
        let topk = (0..queries.nrows()).map(|_| TopK::new(k)).collect();
        ExactSearch {
            metric,
            queries,
            q_norms,
            topk,
            rows_seen: 0,
        }
    }

    /// Scores the next block of base rows `[nb, dim]` (numbered after the previous blocks).
    /// `sq_norms` may carry the rows' squared norms when known (L2); they are computed otherwise.
    pub fn add(
        &mut self,
        backend: &dyn Backend,
        base: ArrayView2<'_, f32>,
        sq_norms: Option<&[f32]>,
    ) -> Result<()> {
        let computed;
        let norms: &[f32] = match (self.metric, sq_norms) {
            (Metric::L2, Some(n)) => n,
            (Metric::L2, None) => {
                computed = squared_norms(base);
                &computed
            }
            _ => &[],
        };
        let queries = Queries {
            vectors: self.queries.view(),
            sq_norms: &self.q_norms,
            metric: self.metric,
        };
        backend.knn_block(queries, base, norms, self.rows_seen, &mut self.topk)?;
        self.rows_seen += base.nrows() as u64;
        Ok(())
    }

    /// Scores the `rows` base rows that `backend` holds ([`Backend::load_flat`]), as [`Self::add`]
    /// would score them from the host.
    pub fn add_loaded(
        &mut self,
        backend: &dyn Backend,
        loaded: &crate::backend::Loaded,
        rows: usize,
    ) -> Result<()> {
        let queries = Queries {
            vectors: self.queries.view(),
            sq_norms: &self.q_norms,
            metric: self.metric,
        };
        backend.knn_loaded(loaded, queries, &mut self.topk)?;
        self.rows_seen += rows as u64;
        Ok(())
    }

    /// The results: `min(k, rows seen)` neighbours per query, best first.
    pub fn finish(self) -> SearchResults {
        let nq = self.topk.len();
        let k = self
            .topk
            .first()
            .map(|t| (t.k() as u64).min(self.rows_seen) as usize)
            .unwrap_or(0);
        // Each query's list sorted and reported on its own core.
        let mut rows = vec![0u64; nq * k];
        let mut distances = vec![0f32; nq * k];
        let (metric, q_norms) = (self.metric, &self.q_norms);
        rows.par_chunks_mut(k.max(1))
            .zip(distances.par_chunks_mut(k.max(1)))
            .zip(self.topk.into_par_iter())
            .enumerate()
            .for_each(|(i, ((rows, distances), t))| {
                let offset = Queries::offset(metric, q_norms, i);
                for (j, n) in t.into_sorted().into_iter().take(k).enumerate() {
                    rows[j] = n.row;
                    distances[j] = metric.report(n.score + offset);
                }
            });
        let rows = Array2::from_shape_vec((nq, k), rows).expect("nq × k rows");
        let distances = Array2::from_shape_vec((nq, k), distances).expect("nq × k distances");
        SearchResults { rows, distances }
    }
}
