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

pub mod cagra;
pub mod exact;
pub mod ivf_pq;

use crate::artifact::container::DType;
use crate::artifact::{Artifact, IndexKind, Manifest};
use crate::backend::{Backend, CpuBackend, Loaded};
use crate::ids::IdsView;
use crate::index::cagra::hierarchy::HierarchyView;
use crate::index::pq::ProductQuantizer;
use crate::index::sq8::Sq8View;
use crate::metric::squared_norms;
use crate::{Error, Metric, Result};
use cagra::{CagraIndex, CagraSearchParams};
use exact::{prepare_queries, ExactSearch};
use ivf_pq::IvfPqIndex;
use ndarray::{Array2, ArrayView2};
use std::path::Path;
use std::sync::RwLock;

fn poisoned() -> Error {
    Error::Gpu("an earlier search panicked while loading the index".into())
}

/// Per-search knobs; `None` takes the artifact's stored default (`vecbuild info` shows them).
/// Flat indexes ignore them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchParams {
    /// IVF-PQ: lists scanned per query (more: higher recall, slower).
    pub n_probes: Option<usize>,
    /// IVF-PQ built with `refine`: re-rank `k · refine_ratio` candidates by exact distance
    /// (1 = no re-ranking).
    pub refine_ratio: Option<f32>,
    /// CAGRA: length of the internal top-k list (at least k).
    pub itopk_size: Option<usize>,
    /// CAGRA: parents expanded per iteration.
    pub search_width: Option<usize>,
    /// CAGRA: most expansions per query (0 = automatic).
    pub max_iterations: Option<usize>,
    /// CAGRA: walk the graph on the `f32` vectors even where the artifact stores 8-bit codes
    /// (the final list is re-ranked by exact distance either way). The GPU search always walks
    /// on the vectors.
    pub exact_walk: bool,
}

/// Lists probed when neither the caller nor the artifact says (cuVS's default).
pub const DEFAULT_N_PROBES: usize = 20;

/// Marks an empty slot in [`SearchResults::rows`] (its distance is NaN): an approximate index
/// can find fewer than `k` candidates for a query (IVF-PQ whose probed lists hold fewer rows).
pub const NO_NEIGHBOR: u64 = u64::MAX;

/// Results of a batch: `rows` and `distances` are `[nq, k]`, best first. `rows` are internal
/// row numbers; [`Searcher::ids`] maps them to the user's ids. Slots past what a query found
/// hold [`NO_NEIGHBOR`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    pub rows: Array2<u64>,
    pub distances: Array2<f32>,
}

/// An opened artifact, ready to answer queries.
pub struct Searcher {
    artifact: Artifact,
    engine: Engine,
    /// The index as the backend's `load_*` left it on a device, by backend name.
    loaded: RwLock<Option<(String, Option<Loaded>)>>,
}

/// What each index kind keeps in memory beside the map.
enum Engine {
    Flat,
    IvfPq {
        pq: ProductQuantizer,
        pq_transposed: Vec<f32>,
        centroid_sq_norms: Vec<f32>,
    },
    Cagra {
        degree: usize,
        entries: usize,
    },
}

impl Searcher {
    /// Opens and verifies an artifact (sizes, offsets, checksums).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let artifact = Artifact::open(path.as_ref())?;
        let m = &artifact.manifest;
        let engine = match m.kind {
            IndexKind::Flat => {
                artifact.tensor::<f32>("vectors", DType::F32, &[m.count as usize, m.dim])?;
                if m.metric == Metric::L2 {
                    artifact.tensor::<f32>("sq_norms", DType::F32, &[m.count as usize])?;
                }
                Engine::Flat
            }
            IndexKind::IvfPq => open_ivf_pq(&artifact)?,
            IndexKind::Cagra => open_cagra(&artifact)?,
        };
        Ok(Searcher {
            artifact,
            engine,
            loaded: RwLock::new(None),
        })
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

    /// The `k` nearest rows of each query `[nq, dim]`, on the CPU.
    pub fn search(
        &self,
        queries: ArrayView2<'_, f32>,
        k: usize,
        params: &SearchParams,
    ) -> Result<SearchResults> {
        self.search_on(&CpuBackend, queries, k, params)
    }

    /// Makes the index ready for searches on `backend`: a GPU gets its own copy of a CAGRA
    /// index (vectors, graph, upper levels), of an IVF-PQ index (centroids, codebooks, codes,
    /// row map) or of a flat index's rows (where they fit), kept until the searcher is dropped
    /// or loaded on another backend. [`Searcher::search_on`] does this on first use; calling it
    /// first keeps the copy out of the first batch's time.
    /// Returns whether `backend` now holds a copy (false on the CPU, and for a flat index too
    /// large for the device, whose rows then go with each query batch).
    pub fn load_on(&self, backend: &dyn Backend) -> Result<bool> {
        let name = backend.name();
        let current = |l: &Option<(String, Option<Loaded>)>| {
            l.as_ref()
                .filter(|(n, _)| *n == name)
                .map(|(_, l)| l.is_some())
        };
        if let Some(held) = current(&*self.loaded.read().map_err(|_| poisoned())?) {
            return Ok(held);
        }
        let mut slot = self.loaded.write().map_err(|_| poisoned())?;
        if let Some(held) = current(&slot) {
            return Ok(held);
        }
        // Free the old copy before making the new one.
        *slot = None;
        let loaded = match &self.engine {
            Engine::Cagra { .. } => backend.load_cagra(&self.cagra_index()?)?,
            Engine::IvfPq {
                pq,
                pq_transposed,
                centroid_sq_norms,
            } => {
                backend.load_ivf_pq(&self.ivf_pq_index(pq, pq_transposed, centroid_sq_norms)?)?
            }
            Engine::Flat => backend.load_flat(self.vectors()?, self.flat_norms()?)?,
        };
        let held = loaded.is_some();
        *slot = Some((name, loaded));
        Ok(held)
    }

    /// [`Searcher::search`] on a given backend: every index kind searches on any backend.
    pub fn search_on(
        &self,
        backend: &dyn Backend,
        queries: ArrayView2<'_, f32>,
        k: usize,
        params: &SearchParams,
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
        if let Engine::Cagra { .. } = &self.engine {
            let p = self.cagra_params(params);
            let mut index = self.cagra_index()?;
            if params.exact_walk {
                index.codes = None;
            }
            return self.with_held(backend, |held| {
                Ok(backend.cagra_search(&index, held, q.view(), k, &p)?.0)
            });
        }
        if let Engine::IvfPq {
            pq,
            pq_transposed,
            centroid_sq_norms,
        } = &self.engine
        {
            let index = self.ivf_pq_index(pq, pq_transposed, centroid_sq_norms)?;
            let defaults = &m.search_defaults;
            let n_probes = params
                .n_probes
                .or_else(|| self.stored_usize("n_probes"))
                .unwrap_or(DEFAULT_N_PROBES);
            let refine_ratio = params
                .refine_ratio
                .or_else(|| {
                    defaults
                        .get("refine_ratio")
                        .and_then(|v| v.as_f64())
                        .map(|v| v as f32)
                })
                .unwrap_or(1.0);
            if n_probes == 0 || refine_ratio.is_nan() || refine_ratio < 1.0 {
                return Err(Error::param(format!(
                    "n_probes = {n_probes} must be at least 1 and refine_ratio = {refine_ratio} at least 1"
                )));
            }
            return self.with_held(backend, |held| {
                index.search(backend, held, q.view(), k, n_probes, refine_ratio)
            });
        }
        let mut search = ExactSearch::new(q, m.metric, k);
        self.with_held(backend, |held| match held {
            Some(held) => search.add_loaded(backend, held, m.count as usize),
            None => search.add(backend, self.vectors()?, self.flat_norms()?),
        })?;
        Ok(search.finish())
    }

    /// Makes the index ready on `backend` ([`Searcher::load_on`]) and calls `f` with the copy
    /// it holds there (`None` where it searches the index where it lies).
    fn with_held<R>(
        &self,
        backend: &dyn Backend,
        f: impl FnOnce(Option<&Loaded>) -> Result<R>,
    ) -> Result<R> {
        self.load_on(backend)?;
        let loaded = self.loaded.read().map_err(|_| poisoned())?;
        f(held_for(&loaded, backend))
    }

    /// A flat index's stored squared norms (L2), else `None`.
    fn flat_norms(&self) -> Result<Option<&[f32]>> {
        let m = &self.artifact.manifest;
        Ok(match m.metric {
            Metric::L2 => Some(self.artifact.tensor::<f32>(
                "sq_norms",
                DType::F32,
                &[m.count as usize],
            )?),
            _ => None,
        })
    }
}

/// The copy `backend` holds of the index, if the slot holds one of its own (another thread may
/// have loaded the index on another backend since).
fn held_for<'a>(
    slot: &'a Option<(String, Option<Loaded>)>,
    backend: &dyn Backend,
) -> Option<&'a Loaded> {
    slot.as_ref()
        .filter(|(name, _)| *name == backend.name())
        .and_then(|(_, l)| l.as_ref())
}

impl Searcher {
    /// A whole-number search default stored in the artifact (`vecbuild info` shows them).
    fn stored_usize(&self, name: &str) -> Option<usize> {
        self.artifact
            .manifest
            .search_defaults
            .get(name)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    }

    /// CAGRA beam-search settings: the caller's, else the artifact's stored defaults, else
    /// cuVS's (itopk_size 64, search_width 1, automatic iterations).
    pub fn cagra_params(&self, params: &SearchParams) -> CagraSearchParams {
        let stored = |name: &str| self.stored_usize(name);
        let base = CagraSearchParams::default();
        CagraSearchParams {
            itopk_size: params
                .itopk_size
                .or_else(|| stored("itopk_size"))
                .unwrap_or(base.itopk_size),
            search_width: params
                .search_width
                .or_else(|| stored("search_width"))
                .unwrap_or(base.search_width),
            max_iterations: params
                .max_iterations
                .or_else(|| stored("max_iterations"))
                .unwrap_or(base.max_iterations),
        }
    }

    /// The CAGRA parts of the artifact, viewed in place (checked on open).
    pub fn cagra_index(&self) -> Result<CagraIndex<'_>> {
        let Engine::Cagra { degree, entries } = self.engine else {
            return Err(Error::param(format!(
                "the index is {}, not cagra",
                self.artifact.manifest.kind
            )));
        };
        let a = &self.artifact;
        let n = a.manifest.count as usize;
        Ok(CagraIndex {
            metric: a.manifest.metric,
            vectors: self.vectors()?,
            sq_norms: match a.manifest.metric {
                Metric::L2 => a.tensor::<f32>("sq_norms", DType::F32, &[n])?,
                _ => &[],
            },
            graph: a.tensor::<u32>("graph", DType::U32, &[n, degree])?,
            degree,
            entry_points: a.tensor::<u32>("graph.entry_points", DType::U32, &[entries])?,
            random_seeds: true,
            hierarchy: hierarchy_view(a)?,
            codes: codes_view(a)?,
        })
    }

    /// The IVF-PQ parts of the artifact, viewed in place.
    fn ivf_pq_index<'a>(
        &'a self,
        pq: &'a ProductQuantizer,
        pq_transposed: &'a [f32],
        centroid_sq_norms: &'a [f32],
    ) -> Result<IvfPqIndex<'a>> {
        let a = &self.artifact;
        let m = &a.manifest;
        let (n, dim, n_lists) = (m.count as usize, m.dim, centroid_sq_norms.len());
        let centroids = a.tensor::<f32>("ivf.centroids", DType::F32, &[n_lists, dim])?;
        let vectors = match a.container.tensors.contains_key("vectors") {
            true => Some(
                ArrayView2::from_shape(
                    (n, dim),
                    a.tensor::<f32>("vectors", DType::F32, &[n, dim])?,
                )
                .map_err(|e| Error::param(e.to_string()))?,
            ),
            false => None,
        };
        Ok(IvfPqIndex {
            metric: m.metric,
            centroids: ArrayView2::from_shape((n_lists, dim), centroids)
                .map_err(|e| Error::param(e.to_string()))?,
            centroid_sq_norms,
            pq,
            pq_transposed,
            list_offsets: a.tensor::<u64>("ivf.list_offsets", DType::U64, &[n_lists + 1])?,
            list_rows: a.tensor::<u64>("ivf.rows", DType::U64, &[n])?,
            codes: a.tensor::<u8>("ivf.codes", DType::U8, &[n, pq.pq_dim])?,
            vectors,
        })
    }
}

/// The shape of tensor `name`, or an error naming it when it is missing.
fn tensor_shape(a: &Artifact, name: &str) -> Result<Vec<usize>> {
    a.container
        .tensors
        .get(name)
        .map(|t| t.shape.clone())
        .ok_or_else(|| Error::artifact(a.container.path(), name, "tensor is missing"))
}

/// Checks a CAGRA artifact's graph: every edge and entry point names a row, so search never
/// indexes out of bounds.
fn open_cagra(a: &Artifact) -> Result<Engine> {
    let m = &a.manifest;
    let path = a.container.path();
    let n = m.count as usize;
    let bad = |section: &str, why: String| Error::artifact(path, section, why);
    a.tensor::<f32>("vectors", DType::F32, &[n, m.dim])?;
    if m.metric == Metric::L2 {
        a.tensor::<f32>("sq_norms", DType::F32, &[n])?;
    }
    let degree = match tensor_shape(a, "graph")?[..] {
        [rows, d] if rows == n && d > 0 => d,
        ref other => {
            return Err(bad(
                "graph",
                format!("has shape {other:?}, expected [{n}, degree]"),
            ))
        }
    };
    if a.tensor::<u32>("graph", DType::U32, &[n, degree])?
        .iter()
        .any(|&v| v as usize >= n)
    {
        return Err(bad("graph", format!("holds a row number ≥ {n}")));
    }
    let entries = match tensor_shape(a, "graph.entry_points")?[..] {
        [m] if m > 0 => m,
        ref other => {
            return Err(bad(
                "graph.entry_points",
                format!("has shape {other:?}, expected [m ≥ 1]"),
            ))
        }
    };
    if a.tensor::<u32>("graph.entry_points", DType::U32, &[entries])?
        .iter()
        .any(|&v| v as usize >= n)
    {
        return Err(bad(
            "graph.entry_points",
            format!("holds a row number ≥ {n}"),
        ));
    }
    if let Some(h) = hierarchy_view(a)? {
        h.check(n).map_err(|why| bad("upper.graph", why))?;
    }
    if let Some(c) = codes_view(a)? {
        let bad_range = |v: &f32| !v.is_finite();
        if c.min.iter().any(bad_range) || c.scale.iter().any(|v| bad_range(v) || *v < 0.0) {
            return Err(bad(
                "codes.scale",
                "holds a non-finite or negative range".into(),
            ));
        }
    }
    Ok(Engine::Cagra { degree, entries })
}

/// A CAGRA artifact's 8-bit codes, when it has them (shapes checked).
pub fn codes_view(a: &Artifact) -> Result<Option<Sq8View<'_>>> {
    if !a.container.tensors.contains_key("codes") {
        return Ok(None);
    }
    let m = &a.manifest;
    let (n, dim) = (m.count as usize, m.dim);
    Ok(Some(Sq8View {
        codes: a.tensor::<u8>("codes", DType::U8, &[n, dim])?,
        min: a.tensor::<f32>("codes.min", DType::F32, &[dim])?,
        scale: a.tensor::<f32>("codes.scale", DType::F32, &[dim])?,
    }))
}

/// A CAGRA artifact's upper levels, when it has them. Links per row per level: `upper.graph`'s
/// length over the sum of `upper.counts` (the graph degree; half of it in artifacts written by
/// earlier versions, which load the same way). [`HierarchyView::check`] checks the rest.
pub fn hierarchy_view(a: &Artifact) -> Result<Option<HierarchyView<'_>>> {
    if !a.container.tensors.contains_key("upper.rows") {
        return Ok(None);
    }
    let slice = |name: &str| a.container.slice::<u32>(name, DType::U32).map(|s| s.0);
    let (counts, graph) = (slice("upper.counts")?, slice("upper.graph")?);
    let total: usize = counts.iter().map(|&c| c as usize).sum();
    if total > 0 && (graph.is_empty() || graph.len() % total != 0) {
        return Err(Error::artifact(
            a.container.path(),
            "upper.graph",
            format!(
                "holds {} entries, not a positive multiple of the {total} upper-level rows",
                graph.len()
            ),
        ));
    }
    let m = graph.len().checked_div(total).unwrap_or(0);
    Ok(Some(HierarchyView {
        m,
        rows: slice("upper.rows")?,
        counts,
        graph,
    }))
}

/// Checks an IVF-PQ artifact's tensors against each other, so search never indexes out of
/// bounds, and loads the small parts.
fn open_ivf_pq(a: &Artifact) -> Result<Engine> {
    let m = &a.manifest;
    let path = a.container.path();
    let bad = |section: &str, why: String| Error::artifact(path, section, why);
    let (n, dim) = (m.count as usize, m.dim);
    let n_lists = *tensor_shape(a, "ivf.centroids")?
        .first()
        .ok_or_else(|| bad("ivf.centroids", "has no rows".into()))?;
    let book_shape = tensor_shape(a, "pq.codebooks")?;
    let [pq_dim, ksub, dsub] = book_shape[..] else {
        return Err(bad(
            "pq.codebooks",
            format!("has shape {book_shape:?}, expected [pq_dim, ksub, dsub]"),
        ));
    };
    if !ksub.is_power_of_two()
        || !(16..=256).contains(&ksub)
        || pq_dim == 0
        || dsub != dim.div_ceil(pq_dim)
    {
        return Err(bad(
            "pq.codebooks",
            format!("shape {book_shape:?} does not fit dimension {dim}"),
        ));
    }
    let books = a.tensor::<f32>("pq.codebooks", DType::F32, &[pq_dim, ksub, dsub])?;
    let pq = ProductQuantizer {
        dim,
        pq_dim,
        pq_bits: ksub.trailing_zeros(),
        codebooks: Array2::from_shape_vec((pq_dim * ksub, dsub), books.to_vec())
            .map_err(|e| Error::param(e.to_string()))?,
    };
    let centroids = a.tensor::<f32>("ivf.centroids", DType::F32, &[n_lists, dim])?;
    let centroids = ArrayView2::from_shape((n_lists, dim), centroids)
        .map_err(|e| Error::param(e.to_string()))?;
    let offsets = a.tensor::<u64>("ivf.list_offsets", DType::U64, &[n_lists + 1])?;
    if offsets.first() != Some(&0)
        || offsets.last() != Some(&(n as u64))
        || offsets.windows(2).any(|w| w[0] > w[1])
    {
        return Err(bad(
            "ivf.list_offsets",
            format!("offsets must rise from 0 to {n}"),
        ));
    }
    if a.tensor::<u64>("ivf.rows", DType::U64, &[n])?
        .iter()
        .any(|&r| r >= n as u64)
    {
        return Err(bad("ivf.rows", format!("holds a row number ≥ {n}")));
    }
    let codes = a.tensor::<u8>("ivf.codes", DType::U8, &[n, pq_dim])?;
    if ksub < 256 && codes.iter().any(|&c| c as usize >= ksub) {
        return Err(bad("ivf.codes", format!("holds a code ≥ {ksub}")));
    }
    Ok(Engine::IvfPq {
        pq_transposed: pq.transposed(),
        pq,
        centroid_sq_norms: squared_norms(centroids),
    })
}
