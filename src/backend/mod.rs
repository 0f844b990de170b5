//! Compute backends, at the level of algorithm stages.
//!
//! Each index algorithm is written once against [`Backend`]; the CPU backend ([`cpu`]) is the
//! reference every other backend is tested against. Device choice happens at the edge (the
//! CLI's `--gpu`), never inside algorithms.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::search::cagra::{CagraIndex, CagraSearchParams, SearchStats};
use crate::search::ivf_pq::IvfPqIndex;
use crate::search::SearchResults;
use crate::{Metric, Neighbor, Result, TopK};
use ndarray::{Array2, ArrayView2};

/// An index copied to a device by [`Backend::load_cagra`], [`Backend::load_ivf_pq`] or
/// [`Backend::load_flat`]: only the backend that made it knows what it holds.
pub type Loaded = Box<dyn std::any::Any + Send + Sync>;

pub use cpu::CpuBackend;

/// Largest score tile a GPU backend allocates.
pub const MAX_TILE_BYTES: usize = 2 << 30;

/// Base rows per GEMM tile of a GPU's exact k-NN: at most [`MAX_BASE_TILE`], and at most
/// [`BASE_TILE_BYTES`] of vectors, so a score tile holds thousands of query rows (enough
/// selection blocks to fill the GPU) and a staged tile copies in a few milliseconds.
pub const MAX_BASE_TILE: usize = 1 << 17;
pub const BASE_TILE_BYTES: usize = 64 << 20;

/// The score-tile size a GPU backend picks from the free device memory it finds on opening:
/// a quarter of it, between 1 MiB and [`MAX_TILE_BYTES`] (a GPU that others nearly fill gets
/// small tiles, not an allocation it cannot make).
pub fn tile_bytes(free_bytes: usize) -> usize {
    (free_bytes / 4).clamp(1 << 20, MAX_TILE_BYTES)
}

/// Whether a GPU assigns rows to `kc` centroids of `dim` floats by `assign_small` (direct
/// differences, every row at once, the centroids in 48 KiB of shared memory) rather than by
/// GEMM tiles.
pub fn assigns_small(dim: usize, kc: usize) -> bool {
    dim <= cpu::SMALL_DIM && kc * dim * 4 <= 48 << 10
}

/// Base rows per GEMM tile of a GPU's exact k-NN over rows of `dim` floats.
pub fn base_tile_rows(dim: usize) -> usize {
    (BASE_TILE_BYTES / (dim.max(1) * 4)).clamp(1, MAX_BASE_TILE)
}

/// Device memory as a backend found it on opening the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free_bytes: usize,
    pub total_bytes: usize,
    /// The score-tile size chosen from `free_bytes` ([`tile_bytes`]).
    pub tile_bytes: usize,
}

/// A block of queries prepared for a metric: normalised for cosine, with squared norms for L2.
#[derive(Debug, Clone, Copy)]
pub struct Queries<'a> {
    /// `[nq, dim]`, standard layout.
    pub vectors: ArrayView2<'a, f32>,
    /// `[nq]` squared norms (used by L2; empty otherwise).
    pub sq_norms: &'a [f32],
    pub metric: Metric,
}

impl Queries<'_> {
    /// What turns query `i`'s ranking score from [`Backend::knn_block`] into its internal
    /// score (see [`crate::Metric`]): `‖q‖²` for L2, `1` for cosine, `0` for inner product.
    pub fn offset(metric: Metric, sq_norms: &[f32], i: usize) -> f32 {
        match metric {
            Metric::L2 => sq_norms[i],
            Metric::Cosine => 1.0,
            Metric::InnerProduct => 0.0,
        }
    }
}

/// The ivf kNN-graph builder's join ([`Backend::join_lists`]).
#[derive(Debug, Clone, Copy)]
pub struct ListJoin<'a> {
    /// `[n, dim]`.
    pub data: ArrayView2<'a, f32>,
    /// `[n]` squared norms (L2; empty otherwise).
    pub norms: &'a [f32],
    pub metric: Metric,
    /// Row numbers grouped by list: list `l` is `members[offsets[l]..offsets[l + 1]]`.
    pub members: &'a [u32],
    pub offsets: &'a [usize],
    /// Each list's probed lists, its own included.
    pub probes: &'a [Vec<usize>],
    /// Neighbours kept per row.
    pub k: usize,
}

/// What one Lloyd iteration reports: the cluster sizes and the assignment's objective.
pub type Step = (Vec<u64>, f64);

/// Rows a backend holds across the iterations of Lloyd's k-means ([`Backend::lloyd`]), so a
/// GPU copies them to the device once instead of once per iteration.
pub trait Lloyd {
    /// One iteration: each held row to its nearest centroid (as [`Backend::assign_nearest`]),
    /// then each centroid with rows moved to their mean, summed in f64 in row order and
    /// multiplied by `1 / size` (centroids without rows stay where they are). Returns the
    /// cluster sizes and the assignment's objective: the squared distances added in row order
    /// in f64.
    fn step(&mut self, centroids: &mut Array2<f32>) -> Result<Step>;

    /// Cluster sizes of the held rows' nearest-centroid assignment.
    fn sizes(&mut self, centroids: ArrayView2<'_, f32>) -> Result<Vec<u64>>;

    /// Assignments made by local search so far ([`crate::index::kmeans::train_local`]).
    fn local_steps(&self) -> usize {
        0
    }
}

/// Several k-means problems of the same shape over one set of rows, stepped together by
/// [`crate::index::kmeans::train_many`]: PQ training's sub-spaces ([`Backend::subspace_lloyds`]),
/// which a GPU steps in a few launches per iteration instead of a few per sub-space.
pub trait Lloyds {
    /// How many problems there are.
    fn count(&self) -> usize;

    /// One [`Lloyd::step`] of each problem `p` with `running[p]`, on `centroids[p]`; `None` for
    /// the others, whose centroids are left as they are.
    fn step(
        &mut self,
        centroids: &mut [Array2<f32>],
        running: &[bool],
    ) -> Result<Vec<Option<Step>>>;
}

/// The stages an index build or search needs from a compute device.
pub trait Backend: Sync {
    /// A short name for manifests and logs (`cpu`, `cuda:0`).
    fn name(&self) -> String;

    /// The device's own name (`NVIDIA H100 80GB HBM3`), for a GPU.
    fn device_name(&self) -> Option<String> {
        None
    }

    /// The device's memory when this backend opened it, for a GPU.
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }

    /// The stages that took a slower way than this backend's usual one so far (a GPU whose
    /// memory could not hold a stage's data), each once, with why: for the run's summary.
    fn slower_paths(&self) -> Vec<String> {
        Vec::new()
    }

    /// Exact k-NN of a block of base rows: scores every query against every row of `base`
    /// and folds the results into `topk` (one per query). Scores are ranking scores: the
    /// internal score less the per-query constant [`Queries::offset`]. `base: [nb, dim]`, `base_sq_norms:
    /// [nb]` (L2 only; empty otherwise); rows are numbered from `first_row`.
    fn knn_block(
        &self,
        queries: Queries<'_>,
        base: ArrayView2<'_, f32>,
        base_sq_norms: &[f32],
        first_row: u64,
        topk: &mut [TopK],
    ) -> Result<()>;

    /// How many base rows of `dim` floats an exact search that streams its base should gather
    /// before each [`Backend::knn_block`] (0: hand over each block as it arrives). A GPU
    /// overlaps one tile's copies and the host's share of its selection with the next tile's
    /// work, and pays a wait for the device at the end of every call.
    fn exact_block_rows(&self, _dim: usize) -> usize {
        0
    }

    /// Keeps a flat index's rows `base: [n, dim]` (and their squared norms, for L2) where
    /// [`Backend::knn_loaded`] searches them batch after batch, owned by the caller (the
    /// [`crate::Searcher`] keeps it while the index is open). `None`: search with
    /// [`Backend::knn_block`] on the rows where they lie (the CPU, or a GPU they do not fit).
    fn load_flat(
        &self,
        _base: ArrayView2<'_, f32>,
        _sq_norms: Option<&[f32]>,
    ) -> Result<Option<Loaded>> {
        Ok(None)
    }

    /// [`Backend::knn_block`] against all the rows [`Backend::load_flat`] holds (numbered from
    /// 0).
    fn knn_loaded(
        &self,
        _loaded: &Loaded,
        _queries: Queries<'_>,
        _topk: &mut [TopK],
    ) -> Result<()> {
        Err(crate::Error::Gpu(format!(
            "{}: this backend holds no index rows to search",
            self.name()
        )))
    }

    /// CAGRA graph optimisation, steps 1–3 of [`crate::index::cagra::optimize`]: rank-based
    /// pruning to the `d_out` edges of each kNN-graph row with the fewest detourable routes,
    /// reverse edges, merge. Each step is a part of `laps` (`rank-based pruning`, `reverse
    /// edges`, `merge`). `order`: the rows in an order that visits rows sharing neighbours
    /// together (a permutation of the rows, or empty), where the host prunes; the result does
    /// not depend on it. The CPU's is [`crate::index::cagra::optimize::optimize`].
    fn optimize_graph(
        &self,
        knn: &crate::index::cagra::Graph,
        d_out: usize,
        order: &[u32],
        laps: &mut crate::laps::Laps,
    ) -> Result<crate::index::cagra::Graph>;

    /// Whether every row of `graph` is reachable from `entry` by following its edges, where
    /// this backend tells faster than the host's walk (a GPU: a breadth-first search, a launch
    /// per level). `None` (this backend cannot tell faster) and `Some(false)` leave it to the
    /// caller's walk ([`crate::index::cagra::optimize::guarantee_connectivity`]), which mends
    /// what it misses.
    fn reaches_every_row(
        &self,
        _graph: &crate::index::cagra::Graph,
        _entry: u32,
    ) -> Result<Option<bool>> {
        Ok(None)
    }

    /// The CAGRA ivf builder's join: each list's rows against the rows of its probed lists,
    /// `k` best others per row, `[n, k]` by row (`u32::MAX` where a row has fewer). The CPU
    /// runs one [`Backend::knn_block`] per list ([`crate::index::cagra::knn_graph::join_lists`]).
    fn join_lists(&self, job: &ListJoin<'_>, progress: &(dyn Fn(f64) + Sync)) -> Result<Vec<u32>> {
        crate::index::cagra::knn_graph::join_lists(self, job, progress)
    }

    /// The ivf builder's neighbour-of-neighbour pass over its kNN graph: each row's `fan` first
    /// neighbours' `fan` first neighbours are scored with its own list and the `k` best kept
    /// ([`crate::index::cagra::knn_graph::refine`] without reverse lists, the CPU's).
    fn refine_graph(
        &self,
        data: ArrayView2<'_, f32>,
        norms: &[f32],
        metric: Metric,
        graph: &mut crate::index::cagra::Graph,
        fan: usize,
        order: &[u32],
    ) -> Result<()> {
        crate::index::cagra::knn_graph::refine_in_order(
            data, norms, metric, graph, fan, false, order,
        );
        Ok(())
    }

    /// Copies a CAGRA index to the device for [`Backend::cagra_search`], owned by the caller
    /// (the [`crate::Searcher`] keeps it for as long as the index is open). `None`: this
    /// backend searches the index where it lies (the CPU).
    fn load_cagra(&self, _index: &CagraIndex<'_>) -> Result<Option<Loaded>> {
        Ok(None)
    }

    /// CAGRA beam search of prepared queries (`[nq, dim]`, normalised for cosine), with what
    /// [`Backend::load_cagra`] returned for this index. The CPU's is [`CagraIndex::search`];
    /// a GPU runs the same search in a kernel.
    fn cagra_search(
        &self,
        index: &CagraIndex<'_>,
        _loaded: Option<&Loaded>,
        queries: ArrayView2<'_, f32>,
        k: usize,
        p: &CagraSearchParams,
    ) -> Result<(SearchResults, SearchStats)> {
        index.search(queries, k, p)
    }

    /// Copies an IVF-PQ index (centroids, codebooks, codes, row map) to the device for
    /// [`Backend::ivf_pq_scan`], owned by the caller (the [`crate::Searcher`] keeps it while the
    /// index is open). `None`: this backend scans the index where it lies (the CPU).
    fn load_ivf_pq(&self, _index: &IvfPqIndex<'_>) -> Result<Option<Loaded>> {
        Ok(None)
    }

    /// IVF-PQ list scan: each query's `candidates` best rows of its probed lists (`probes`,
    /// from [`IvfPqIndex::probes`]) by asymmetric distance, best first, with what
    /// [`Backend::load_ivf_pq`] returned for this index. The CPU's is [`IvfPqIndex::scan`]; a
    /// GPU scans each query's lists in a kernel with the same tables, sums and order.
    fn ivf_pq_scan(
        &self,
        index: &IvfPqIndex<'_>,
        _loaded: Option<&Loaded>,
        queries: ArrayView2<'_, f32>,
        probes: &[Vec<Neighbor>],
        candidates: usize,
    ) -> Result<Vec<Vec<Neighbor>>> {
        Ok(index.scan(queries, probes, candidates))
    }

    /// [`IvfPqIndex::probes`] and [`Backend::ivf_pq_scan`] in one, where this backend can
    /// choose the probes where it scans (a GPU: the probed lists never come back to the host);
    /// the same lists as the two apart (up to how the backend's products round near-ties).
    /// `None`: take the two steps (the CPU, or a case the device path does not cover).
    fn ivf_pq_probe_and_scan(
        &self,
        _index: &IvfPqIndex<'_>,
        _loaded: Option<&Loaded>,
        _queries: ArrayView2<'_, f32>,
        _n_probes: usize,
        _candidates: usize,
    ) -> Result<Option<Vec<Vec<Neighbor>>>> {
        Ok(None)
    }

    /// Exact re-ranking scores of an IVF-PQ search's candidates (`found`, from the scan) against
    /// the index's raw vectors, as [`crate::search::ivf_pq::exact_score`] computes them, bit
    /// for bit, in `found`'s order (query by query), with what [`Backend::load_ivf_pq`]
    /// returned for this index. `None`: the caller scores them where the vectors lie (the CPU).
    fn ivf_pq_rescore(
        &self,
        _index: &IvfPqIndex<'_>,
        _loaded: Option<&Loaded>,
        _queries: ArrayView2<'_, f32>,
        _found: &[Vec<Neighbor>],
    ) -> Result<Option<Vec<f32>>> {
        Ok(None)
    }

    /// Holds `data: [n, dim]` for k-means iterations ([`Lloyd`]) where this backend keeps
    /// rows apart from the host (a GPU, when they fit in its memory). `None`: iterate with
    /// [`Backend::assign_nearest`] on the rows where they lie (the CPU).
    fn lloyd<'a>(&'a self, _data: ArrayView2<'a, f32>) -> Result<Option<Box<dyn Lloyd + 'a>>> {
        Ok(None)
    }

    /// Holds `data: [n, dim]` for training a product quantizer's `pq_dim` sub-spaces of `ksub`
    /// centroids together ([`Lloyds`]; sub-space `m` is columns `m·dsub ..`, zero past the last,
    /// as [`crate::index::pq`] cuts them). `None`: train them one after another by
    /// [`crate::index::kmeans::train`].
    fn subspace_lloyds<'a>(
        &'a self,
        _data: ArrayView2<'a, f32>,
        _pq_dim: usize,
        _ksub: usize,
    ) -> Result<Option<Box<dyn Lloyds + 'a>>> {
        Ok(None)
    }

    /// PQ codes of `residuals: [n, dim]` by `pq`'s codebooks in one pass over every sub-space,
    /// where this backend has such a pass (a GPU, for sub-spaces of at most 16 floats): the
    /// codes [`crate::index::pq::ProductQuantizer::encode`] finds one sub-space at a time.
    /// `None`: encode one sub-space at a time by [`Backend::assign_nearest`].
    fn pq_encode(
        &self,
        _residuals: ArrayView2<'_, f32>,
        _pq: &crate::index::pq::ProductQuantizer,
    ) -> Result<Option<Array2<u8>>> {
        Ok(None)
    }

    /// [`Backend::assign_nearest`] of the rows `rows` of `data: [n, dim]` (labels and squared
    /// distances in the order of `rows`): the rows of one k-means cluster among the centroids
    /// nearest their own ([`crate::index::kmeans::settle`]). By default the rows are copied
    /// out first; the CPU reads them where they lie.
    fn assign_nearest_rows(
        &self,
        data: ArrayView2<'_, f32>,
        rows: &[u32],
        centroids: ArrayView2<'_, f32>,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let picked: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
        self.assign_nearest(data.select(ndarray::Axis(0), &picked).view(), centroids)
    }

    /// Nearest centroid of each row by L2 (k-means assignment, PQ encoding):
    /// `data: [n, dim]`, `centroids: [k, dim]` → (labels `[n]`, squared distances `[n]`).
    /// Ties go to the smaller centroid index.
    fn assign_nearest(
        &self,
        data: ArrayView2<'_, f32>,
        centroids: ArrayView2<'_, f32>,
    ) -> Result<(Vec<u32>, Vec<f32>)>;
}
