//! The search loader: [`Searcher`] opens an artifact by memory map and answers batches of
//! queries, in parallel over queries (rayon).
//!
//! ```no_run
//! use vecbuild::{Searcher, SearchParams};
//! let searcher = Searcher::open("emb.vbx")?;
//! let queries = ndarray::Array2::<f32>::zeros((4, searcher.manifest().dim));
//! let results = searcher.search(queries.view(), 10, &SearchParams::default())?;
//! for (q, row) in results.rows.outer_iter().enumerate() {
//!     let ids: Vec<String> = row.iter().map(|&r| searcher.ids().get(r as usize).to_string()).collect();
//!     println!("query {q}: {ids:?}");
//! }
//! # Ok::<(), vecbuild::Error>(())
//! ```

pub mod exact;

use crate::artifact::container::DType;
use crate::artifact::{Artifact, IndexKind, Manifest};
use crate::backend::CpuBackend;
use crate::ids::IdsView;
use crate::{Error, Metric, Result};
use exact::{prepare_queries, ExactSearch};
use ndarray::{Array2, ArrayView2};
use std::path::Path;

/// Per-search knobs. Flat indexes have none; fields for approximate indexes join as they land.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchParams {}

/// Results of a batch: `rows` and `distances` are `[nq, k]`, best first. `rows` are internal
/// row numbers; [`Searcher::ids`] maps them to the user's ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    pub rows: Array2<u64>,
    pub distances: Array2<f32>,
}

/// An opened artifact, ready to answer queries.
pub struct Searcher {
    artifact: Artifact,
}

impl Searcher {
    /// Opens and verifies an artifact (sizes, offsets, checksums).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let artifact = Artifact::open(path.as_ref())?;
        let m = &artifact.manifest;
        match m.kind {
            IndexKind::Flat => {
                artifact.tensor::<f32>("vectors", DType::F32, &[m.count as usize, m.dim])?;
                if m.metric == Metric::L2 {
                    artifact.tensor::<f32>("sq_norms", DType::F32, &[m.count as usize])?;
                }
            }
            other => {
                return Err(Error::artifact(
                    path.as_ref(),
                    "manifest",
                    format!("holds a {other} index, which this vecbuild cannot search yet"),
                ))
            }
        }
        Ok(Searcher { artifact })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.artifact.manifest
    }

    /// The user's ids, by internal row number.
    pub fn ids(&self) -> IdsView<'_> {
        // Checked on open.
        self.artifact.ids().unwrap_or(IdsView::Int64(&[]))
    }

    /// The stored vectors `[count, dim]` (flat indexes).
    pub fn vectors(&self) -> Result<ArrayView2<'_, f32>> {
        let m = &self.artifact.manifest;
        let data =
            self.artifact
                .tensor::<f32>("vectors", DType::F32, &[m.count as usize, m.dim])?;
        ArrayView2::from_shape((m.count as usize, m.dim), data)
            .map_err(|e| Error::param(e.to_string()))
    }

    /// The `k` nearest rows of each query `[nq, dim]`.
    pub fn search(
        &self,
        queries: ArrayView2<'_, f32>,
        k: usize,
        _params: &SearchParams,
    ) -> Result<SearchResults> {
        let m = &self.artifact.manifest;
        if k == 0 {
            return Err(Error::param("k must be at least 1"));
        }
        if k as u64 > m.count {
            return Err(Error::param(format!(
                "k = {k} exceeds the {} rows in the index",
                m.count
            )));
        }
        let q = prepare_queries(queries, m.dim, m.metric)?;
        let norms = match m.metric {
            Metric::L2 => Some(self.artifact.tensor::<f32>(
                "sq_norms",
                DType::F32,
                &[m.count as usize],
            )?),
            _ => None,
        };
        let mut search = ExactSearch::new(q, m.metric, k);
        search.add(&CpuBackend, self.vectors()?, norms)?;
        Ok(search.finish())
    }
}
