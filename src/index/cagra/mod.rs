//! CAGRA: a fixed-degree proximity graph searched by a batched beam search (Ootomo et al.,
//! "CAGRA: Highly Parallel Graph Construction and Approximate Nearest Neighbor Search for
//! GPUs", ICDE 2024).
//!
//! Build:
//! 1. A kNN graph with `intermediate_graph_degree` neighbours per row ([`knn_graph`]): exact
//!    for small N, else the ivf join or NN-descent (`build_algo`). Its recall against exact
//!    search is measured on a sample of rows and recorded in the manifest; the same sample
//!    sets the ivf join's probes, and `auto` builds the exact graph when the join would have
//!    to probe more than a quarter of the lists. Inner-product indexes are built on rows
//!    lifted to L2 (see `build`), where the graph is a proximity graph.
//! 2. Graph optimisation to `graph_degree` ([`optimize`]): rank-based pruning of detourable
//!    edges, reverse edges, merge; the upper levels ([`hierarchy`]), whose level-1 links
//!    replace some of their rows' last edges; then, optionally, a connectivity guarantee over
//!    the graph as stored (where some rows are not reached, those no upper-level row leads to
//!    first get level-1 rows: [`optimize::unreached_from_upper`], [`Hierarchy::promote`]).
//! 3. The artifact holds the vectors, their squared norms (L2), 8-bit codes of them that the
//!    search walks the graph on (`search_codes`), the graph and its entry points, with the rows
//!    stored upper-level rows first, then breadth first over the graph (neighbours near each
//!    other in memory; see `reordered`): a stored row's number is not its input row number,
//!    `input_rows` maps one to the other and `ids` follow the rows.
//!
//! Search is in [`crate::search::cagra`].
//!
//! | tensor              | dtype | shape                  | holds |
//! |---------------------|-------|------------------------|-------|
//! | `vectors`           | F32   | `[count, dim]`         | the rows (unit length for cosine) |
//! | `sq_norms`          | F32   | `[count]`              | ‖x‖² (l2 only) |
//! | `graph`             | U32   | `[count, graph_degree]`| out-edges, distinct, no self loops |
//! | `graph.entry_points`| U32   | `[m]`                  | rows every search starts from (m ≥ 1) |
//! | `upper.*`           | U32   |                        | the upper levels ([`hierarchy`]): `2 · graph_degree` links per row (`graph_degree`, or `graph_degree / 2`, in artifacts of earlier versions; the loader divides `upper.graph`'s length by the rows) |
//! | `input_rows`        | U32   | `[count]`              | each stored row's row number in the input |
//! | `codes`             | U8    | `[count, dim]`         | 8-bit codes of `vectors` ([`crate::index::sq8`]; absent with `search_codes = none`) |
//! | `codes.min`, `codes.scale` | F32 | `[dim]`         | each dimension's code range: `x̂ = min + scale · code` |
//!
//! Known limits: the build holds the vectors and the kNN graph in memory; graph search needs
//! random access to the vectors, so the artifact should fit in RAM (or page cache) to serve.

pub mod hierarchy;
pub mod knn_graph;
pub mod optimize;

use crate::artifact::container::{DType, TensorOut};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::index::sq8::Sq8;
use crate::laps::{span, Laps};
use crate::metric::{squared_norm, squared_norms};
use crate::synth::Rng;
use crate::{Error, Metric, Result};
use hierarchy::Hierarchy;
use knn_graph::{IvfJoin, IvfPartition, SampleTruth};
use ndarray::ArrayView2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// A directed graph with a fixed number of out-edge slots per row: `neighbors: [n, degree]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub degree: usize,
    pub neighbors: Vec<u32>,
}

impl Graph {
    /// Rows in the graph.
    pub fn len(&self) -> usize {
        self.neighbors.len() / self.degree.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.neighbors.is_empty()
    }

    /// Row `i`'s out-edges, best first.
    #[inline]
    pub fn row(&self, i: usize) -> &[u32] {
        &self.neighbors[i * self.degree..(i + 1) * self.degree]
    }
}

/// How the kNN graph of step 1 is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildAlgo {
    /// Exact below [`EXACT_MAX_FLOPS`] of work, else ivf.
    Auto,
    Exact,
    Ivf,
    NnDescent,
}

impl std::str::FromStr for BuildAlgo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => BuildAlgo::Auto,
            "exact" => BuildAlgo::Exact,
            "ivf" => BuildAlgo::Ivf,
            "nn-descent" => BuildAlgo::NnDescent,
            other => {
                return Err(Error::param(format!(
                    "build algorithm {other:?}: expected auto, exact, ivf or nn-descent"
                )))
            }
        })
    }
}

/// What the search walks the graph on, stored beside the `f32` vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchCodes {
    /// Nothing: the search scores `f32` vectors (artifacts written before codes existed).
    #[default]
    None,
    /// 8-bit scalar codes ([`crate::index::sq8`]), a quarter of the vectors' bytes; the search
    /// re-ranks its final list by exact distance.
    Sq8,
}

impl std::str::FromStr for SearchCodes {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => SearchCodes::None,
            "sq8" => SearchCodes::Sq8,
            other => {
                return Err(Error::param(format!(
                    "search codes {other:?}: expected sq8 or none"
                )))
            }
        })
    }
}

/// The exact kNN graph is chosen automatically while `2·N²·dim` stays below this (about two
/// seconds of GEMM on two cores).
pub const EXACT_MAX_FLOPS: f64 = 2.5e11;
/// Rows whose kNN lists are checked against exact search for the manifest.
pub const RECALL_SAMPLE: usize = 500;

/// CAGRA build parameters (names as in cuVS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CagraParams {
    /// Out-edges per row of the search graph. Default 32: on CPUs a smaller degree costs fewer
    /// distances per hop and reached recall@10 0.95 faster than 64 on 128-d data; use 64 for
    /// very high recall targets or hard data (cuVS's GPU default).
    pub graph_degree: usize,
    /// Neighbours per row of the kNN graph that optimisation prunes from. Default
    /// 2 × graph_degree, as in cuVS.
    pub intermediate_graph_degree: usize,
    pub build_algo: BuildAlgo,
    /// NN-descent: most local joins (it stops earlier once fewer than 0.1% of entries change).
    pub nn_descent_niter: usize,
    /// Rewire so every row is reachable from the entry points (see [`optimize`]).
    pub guarantee_connectivity: bool,
    pub seed: u64,
    /// Codes stored for the search to walk on. Default 8-bit ([`SearchCodes::Sq8`]): on
    /// 200k × 128 CPU search QPS at recall@10 ≈ 0.95–0.99 rose 1.1–1.2× for −0.001 recall
    /// (medians of interleaved runs).
    #[serde(default)]
    pub search_codes: SearchCodes,
}

impl Default for CagraParams {
    fn default() -> Self {
        CagraParams {
            graph_degree: 32,
            intermediate_graph_degree: 64,
            build_algo: BuildAlgo::Auto,
            nn_descent_niter: 20,
            guarantee_connectivity: true,
            seed: 42,
            search_codes: SearchCodes::Sq8,
        }
    }
}

impl CagraParams {
    /// Checks the parameters against `n` rows.
    pub fn validate(&self, n: usize) -> Result<()> {
        let (d, di) = (self.graph_degree, self.intermediate_graph_degree);
        let fail = |m: String| Err(Error::param(m));
        if !(2..=1024).contains(&d) {
            return fail(format!("graph_degree = {d} must be between 2 and 1024"));
        }
        if di < d {
            return fail(format!(
                "graph_degree = {d} exceeds intermediate_graph_degree = {di}; the graph is pruned from the intermediate one, so it must be at least as large"
            ));
        }
        if di > 2048 {
            return fail(format!("intermediate_graph_degree = {di} is above 2048"));
        }
        if di >= n {
            return fail(format!(
                "intermediate_graph_degree = {di} needs more rows than that; the input has {n} (use a smaller degree or a flat index)"
            ));
        }
        if n >= (1 << 31) {
            return fail(format!("{n} rows: CAGRA graphs hold up to 2^31 − 1 rows"));
        }
        if self.build_algo == BuildAlgo::NnDescent && self.nn_descent_niter == 0 {
            return fail("nn_descent_niter must be at least 1".into());
        }
        Ok(())
    }

    /// The builder `Auto` stands for at `n × dim`.
    pub fn resolve_algo(&self, n: usize, dim: usize) -> BuildAlgo {
        match self.build_algo {
            BuildAlgo::Auto if 2.0 * (n as f64).powi(2) * dim as f64 <= EXACT_MAX_FLOPS => {
                BuildAlgo::Exact
            }
            BuildAlgo::Auto => BuildAlgo::Ivf,
            other => other,
        }
    }
}

/// What the build measured, for the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CagraStats {
    /// The kNN-graph builder that ran (`exact` where `auto` found the data too spread for
    /// the ivf join: `ivf` then records the probes and coverage it would have needed).
    pub build_algo: BuildAlgo,
    pub ivf: Option<IvfJoin>,
    pub nn_descent_iters: Option<usize>,
    /// Recall of the kNN graph against exact search on [`RECALL_SAMPLE`] rows (1.0 for exact;
    /// for inner product, of the lifted rows' L2 neighbours).
    pub knn_graph_recall: f64,
    pub knn_graph_seconds: f64,
    /// Where the kNN-graph stage's time went, in order, where it has parts (the exact
    /// neighbours of the sample; the ivf builder's partition, join and neighbour-of-neighbour
    /// pass).
    #[serde(default)]
    pub knn_graph_parts: Vec<(String, f64)>,
    /// Everything after the kNN graph: the three parts below and the rest.
    pub optimize_seconds: f64,
    /// Where the optimisation's time went, in order (pruning, reverse edges, merge, entry
    /// point, the upper levels or the wait for them, their links, connectivity, short rows).
    #[serde(default)]
    pub optimize_parts: Vec<(String, f64)>,
    /// Rank-based pruning, reverse edges and merge.
    pub prune_seconds: f64,
    /// The connectivity guarantee and short rows filled.
    pub connect_seconds: f64,
    /// The upper levels (their own time, where they were built beside the graph stages).
    pub upper_levels_seconds: f64,
    /// Whether the upper levels were built on the host beside the graph stages (a device
    /// build), rather than after them.
    #[serde(default)]
    pub upper_levels_beside: bool,
    /// Edges rewired by the connectivity guarantee.
    pub rewired_edges: usize,
}

/// A built CAGRA index (the vectors stay with the caller).
#[derive(Debug, Clone)]
pub struct Cagra {
    pub graph: Graph,
    /// Rows every search starts from: the row nearest the mean first.
    pub entry_points: Vec<u32>,
    /// Upper levels that take a search near its answer ([`hierarchy`]).
    pub hierarchy: Hierarchy,
    pub stats: CagraStats,
}

/// Builds over `data: [n, dim]` (unit rows for cosine). `progress` receives a stage name and
/// the fraction of it done.
pub fn build(
    backend: &dyn Backend,
    data: ArrayView2<'_, f32>,
    metric: Metric,
    params: &CagraParams,
    progress: &(dyn Fn(&str, f64) + Sync),
) -> Result<Cagra> {
    let n = data.nrows();
    params.validate(n)?;
    if metric == Metric::InnerProduct {
        // Maximum inner product search as nearest-neighbour search (Bachrach et al., "Speeding
        // up the Xbox recommender system using a Euclidean transformation for inner-product
        // spaces", RecSys 2014): with `x' = [x, √(M² − ‖x‖²)]` (M the largest norm) and
        // `q' = [q, 0]`, `‖q' − x'‖² = ‖q‖² + M² − 2q·x`, so for each query L2 order on the
        // lifted rows is inner-product order on the rows. The graph is built on the lifted
        // rows, where neighbourhoods are local; an inner-product kNN graph points every row
        // at the few largest-norm rows and leaves most rows unreachable. The search walks it
        // with inner-product scores, the same order. The lifted copy of the rows is held for
        // the build.
        let lifted = lift_for_inner_product(data);
        return build(backend, lifted.view(), Metric::L2, params, progress);
    }
    let data = data.as_standard_layout();
    let norms = if metric == Metric::L2 {
        squared_norms(data.view())
    } else {
        Vec::new()
    };
    // The upper levels need only the rows. Where the graph stages run on a device, the host's
    // cores build them meanwhile; on the CPU they come last (the cores are busy either way).
    let upper_levels = || -> Result<(Hierarchy, f64)> {
        let t = Instant::now();
        let m = (params.graph_degree / 2, 2 * params.graph_degree);
        let h = Hierarchy::build(backend, data.view(), &norms, metric, m, params.seed)?;
        Ok((h, t.elapsed().as_secs_f64()))
    };
    let beside = backend.device_name().is_some();
    std::thread::scope(|s| {
        let mut now = Some(upper_levels);
        let early = match beside {
            true => now.take().map(|build| s.spawn(build)),
            false => None,
        };
        let upper = || match (early, now) {
            (Some(thread), _) => thread
                .join()
                .map_err(|_| Error::param("internal: the upper-level build panicked"))?,
            (None, Some(build)) => build(),
            (None, None) => Err(Error::param("internal: no upper-level build")),
        };
        graph_stages(
            backend,
            data.view(),
            &norms,
            metric,
            params,
            progress,
            (upper, beside),
        )
    })
}

/// The stages after the rows are prepared: kNN graph, pruning, reverse edges, the upper
/// levels from `upper_levels` (built there, or waited for: `upper_levels_beside`, with their
/// own time) and their links shared, connectivity.
fn graph_stages(
    backend: &dyn Backend,
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
    params: &CagraParams,
    progress: &(dyn Fn(&str, f64) + Sync),
    (upper_levels, upper_levels_beside): (impl FnOnce() -> Result<(Hierarchy, f64)>, bool),
) -> Result<Cagra> {
    let (n, dim) = data.dim();
    let k = params.intermediate_graph_degree;
    let mut algo = params.resolve_algo(n, dim);
    let started = Instant::now();
    let mut laps = Laps::start();
    // The approximate builders are measured against (and the ivf probes chosen by) the exact
    // neighbours of a sample of rows. Where the ivf partition runs on a device, the host's
    // cores find them meanwhile: the probes are chosen only once both are done.
    let sample = || {
        let mut rng = Rng::new(params.seed ^ 0x5eed);
        crate::index::kmeans::sample_indices(n, RECALL_SAMPLE, &mut rng)
    };
    let sample_beside = algo == BuildAlgo::Ivf && backend.device_name().is_some();
    let mut truth = match algo {
        BuildAlgo::Exact => None,
        _ if sample_beside => None,
        _ => {
            progress("knn graph sample", 0.0);
            let found = SampleTruth::new(backend, data.view(), norms, metric, k, sample())?;
            laps.mark("exact sample");
            Some(found)
        }
    };
    let mut ivf = None;
    let mut nn_descent_iters = None;
    // An order of the rows that keeps rows with neighbours in common together, where the
    // builder has one (empty: row order).
    let mut visit: Vec<u32> = Vec::new();
    let exact = |label: &str| {
        knn_graph::exact(backend, data.view(), norms, metric, k, &|f| {
            progress(label, f)
        })
    };
    let knn = match algo {
        BuildAlgo::Ivf => {
            let mut p = IvfJoin::auto(n, k, params.seed);
            progress("knn graph (ivf)", 0.0);
            let (mut part, found) = match truth.take() {
                Some(found) => (IvfPartition::new(backend, data.view(), &p)?, found),
                None => std::thread::scope(|s| {
                    let host = s.spawn(|| {
                        let _span = span("cagra: exact sample (host, beside the partition)");
                        SampleTruth::new(&CpuBackend, data.view(), norms, metric, k, sample())
                    });
                    let part = IvfPartition::new(backend, data.view(), &p);
                    let found = host
                        .join()
                        .map_err(|_| Error::param("internal: the exact sample panicked"))?;
                    Ok::<_, Error>((part?, found?))
                })?,
            };
            (p.n_probes, p.coverage) = part.probes_for(&found, p.n_probes);
            part.keep_probes(p.n_probes);
            truth = Some(found);
            ivf = Some(p);
            laps.mark(match sample_beside {
                true => "partition (exact sample beside)",
                false => "partition",
            });
            let graph = if params.build_algo == BuildAlgo::Auto
                && (p.coverage < knn_graph::COVERAGE_TARGET || p.n_probes * 4 > p.n_lists)
            {
                // Neighbours spread over many lists (high intrinsic dimension): a join that
                // holds them scores a quarter or more of all pairs, and the exact builder does
                // all of them faster (GEMM tiles, no gathers) for a better graph.
                algo = BuildAlgo::Exact;
                let graph = exact("knn graph (exact: data too spread for the ivf join)")?;
                laps.mark("exact");
                graph
            } else {
                let (graph, join_seconds) =
                    knn_graph::ivf(backend, data.view(), norms, metric, k, &part, &|f| {
                        progress("knn graph (ivf)", f)
                    })?;
                laps.took("join", join_seconds);
                laps.mark("neighbours of neighbours");
                graph
            };
            // The rows by partition list: the pruning visits them in this order.
            visit = part.into_members();
            graph
        }
        BuildAlgo::NnDescent => {
            let p = knn_graph::NnDescent {
                max_iters: params.nn_descent_niter,
                delta: 0.001,
                seed: params.seed,
            };
            let (g, iters) = knn_graph::nn_descent(data.view(), norms, metric, k, &p, &|f| {
                progress("knn graph (nn-descent)", f)
            })?;
            nn_descent_iters = Some(iters);
            laps.mark("nn-descent");
            g
        }
        _ => exact("knn graph (exact)")?,
    };
    let knn_graph_seconds = started.elapsed().as_secs_f64();
    let knn_graph_parts = laps.into_parts();
    let knn_graph_recall = match (&truth, algo) {
        (Some(truth), BuildAlgo::Ivf | BuildAlgo::NnDescent) => truth.recall(&knn),
        _ => 1.0,
    };
    let started = Instant::now();
    let mut laps = Laps::start();
    progress("optimizing graph", 0.0);
    let mut graph = backend.optimize_graph(&knn, params.graph_degree, &visit, &mut laps)?;
    let prune_seconds = started.elapsed().as_secs_f64();
    let entry = nearest_to_mean(data.view(), norms, metric);
    laps.mark("entry point");
    progress("upper levels", 0.0);
    let (mut hierarchy, upper_levels_seconds) = upper_levels()?;
    laps.mark(match upper_levels_beside {
        true => "upper levels (what was left to wait for)",
        false => "upper levels",
    });
    // The level-1 links replace some of the upper-level rows' last edges, so they go in before
    // the connectivity guarantee, which then holds for the graph as stored (and starts from a
    // graph whose long edges already join most clusters).
    hierarchy.share_links(&mut graph);
    laps.mark("upper links shared");
    let connecting = Instant::now();
    let (entry_points, rewired_edges) = if params.guarantee_connectivity {
        progress("connecting graph", 0.0);
        // A search that reaches every row spares the host its walk (the same outcome: nothing
        // to mend); otherwise the walk finds what to mend.
        let (reached, checked) = match backend.reaches_every_row(&graph, entry)? {
            Some(all) => (all, "connectivity (checked on the device)"),
            None => (
                optimize::reaches_every_row(&graph, entry),
                "connectivity (checked on the host)",
            ),
        };
        laps.mark(checked);
        if reached {
            (vec![entry], 0)
        } else {
            // Rows no row of the upper levels leads to (clusters whose kNN lists never lead
            // into them, where no row drew a level ≥ 1) get level-1 rows, so a query's level-1
            // search can find them; the walk below then links them on level 0.
            let promoted = optimize::unreached_from_upper(&graph, entry, &hierarchy.rows);
            if !promoted.is_empty() {
                hierarchy.promote(&promoted, data, norms, metric);
                hierarchy.share_links(&mut graph);
                laps.mark("islands given level-1 rows");
            }
            let linked = optimize::guarantee_connectivity(
                &mut graph,
                &knn,
                entry,
                data.view(),
                norms,
                metric,
            );
            laps.mark("connectivity (islands linked)");
            linked
        }
    } else {
        (vec![entry], 0)
    };
    fill_short_rows(&mut graph, &knn);
    laps.mark("short rows filled");
    let connect_seconds = connecting.elapsed().as_secs_f64();
    Ok(Cagra {
        graph,
        entry_points,
        hierarchy,
        stats: CagraStats {
            build_algo: algo,
            ivf,
            nn_descent_iters,
            knn_graph_recall,
            knn_graph_seconds,
            knn_graph_parts,
            optimize_seconds: started.elapsed().as_secs_f64(),
            optimize_parts: laps.into_parts(),
            prune_seconds,
            connect_seconds,
            upper_levels_seconds,
            upper_levels_beside,
            rewired_edges,
        },
    })
}

/// `[x, √(M² − ‖x‖²)]` for every row `x` of `data`, `M` the largest row norm.
fn lift_for_inner_product(data: ArrayView2<'_, f32>) -> ndarray::Array2<f32> {
    let (n, dim) = data.dim();
    let norms = squared_norms(data);
    let max = norms.iter().copied().fold(0f32, f32::max);
    let mut lifted = ndarray::Array2::<f32>::zeros((n, dim + 1));
    for ((mut out, row), &sq) in lifted.rows_mut().into_iter().zip(data.rows()).zip(&norms) {
        out.slice_mut(ndarray::s![..dim]).assign(&row);
        out[dim] = (max - sq).max(0.0).sqrt();
    }
    lifted
}

/// The row closest to the mean of all rows (by the metric's ranking score): a central start.
/// Rows are summed in f64 a block at a time in parallel and the blocks added in order, so the
/// mean does not depend on the thread count; ties go to the smaller row.
fn nearest_to_mean(data: ArrayView2<'_, f32>, norms: &[f32], metric: Metric) -> u32 {
    use rayon::prelude::*;
    const BLOCK_ROWS: usize = 4096;
    let dim = data.ncols().max(1);
    let flat = data.as_slice().unwrap_or(&[]);
    let blocks: Vec<Vec<f64>> = flat
        .par_chunks(BLOCK_ROWS * dim)
        .map(|block| {
            let mut sums = vec![0f64; dim];
            for row in block.chunks_exact(dim) {
                for (s, v) in sums.iter_mut().zip(row) {
                    *s += *v as f64;
                }
            }
            sums
        })
        .collect();
    let mut sums = vec![0f64; dim];
    for block in &blocks {
        for (s, b) in sums.iter_mut().zip(block) {
            *s += b;
        }
    }
    let n = data.nrows().max(1) as f64;
    let mean: Vec<f32> = sums.iter().map(|s| (s / n) as f32).collect();
    flat.par_chunks_exact(dim)
        .enumerate()
        .map(|(i, x)| {
            let norm = norms.get(i).copied().unwrap_or(0.0);
            (
                crate::distance::ranking_score(metric, &mean, x, norm),
                i as u32,
            )
        })
        .reduce(
            || (f32::INFINITY, 0),
            |a, b| match a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)) {
                std::cmp::Ordering::Greater => b,
                _ => a,
            },
        )
        .1
}

/// Fills any empty slot (a row whose merged list came up short) from its kNN list, so every
/// row has exactly `degree` distinct out-edges.
fn fill_short_rows(graph: &mut Graph, knn: &Graph) {
    let d = graph.degree;
    for (a, row) in graph.neighbors.chunks_mut(d).enumerate() {
        let Some(first_empty) = row.iter().position(|&v| v == optimize::NONE) else {
            continue;
        };
        let mut filled = first_empty;
        for &v in knn.row(a) {
            if filled == d {
                break;
            }
            if v != optimize::NONE && v as usize != a && !row[..filled].contains(&v) {
                row[filled] = v;
                filled += 1;
            }
        }
    }
}

/// Writes a CAGRA artifact of `vectors: [n, dim]` (unit rows for cosine), with `codes` of them
/// for the search; `manifest` carries everything but the checksums.
pub fn write(
    path: &std::path::Path,
    index: &Cagra,
    vectors: ArrayView2<'_, f32>,
    ids: &crate::Ids,
    codes: SearchCodes,
    manifest: crate::artifact::Manifest,
) -> Result<()> {
    let (n, dim) = vectors.dim();
    let d = index.graph.degree;
    if index.graph.len() != n || ids.len() != n || manifest.count != n as u64 {
        return Err(Error::param(format!(
            "internal: graph of {} rows, {} ids, {n} vectors",
            index.graph.len(),
            ids.len()
        )));
    }
    let part = span("cagra write: stored order");
    let (order, new_of) = stored_order(index);
    drop(part);
    let part = span("cagra write: ids and upper levels relabelled");
    let map = |v: u32| match new_of.get(v as usize) {
        Some(&new) => new,
        None => v,
    };
    let entry_points: Vec<u32> = index.entry_points.iter().map(|&e| map(e)).collect();
    let h = &index.hierarchy;
    let upper_rows: Vec<u32> = h.rows.iter().map(|&r| map(r)).collect();
    let ids = &ids.take(order.iter().copied());
    drop(part);
    // The graph relabelled, made a block of rows at a time as the file is written.
    let fill_graph = |first: usize, out: &mut [u8]| {
        let out: &mut [u32] = bytemuck::cast_slice_mut(out);
        out.par_chunks_mut(d.max(1))
            .zip(&order[first..])
            .for_each(|(o, &old)| {
                for (x, &v) in o.iter_mut().zip(index.graph.row(old)) {
                    *x = map(v);
                }
            });
    };
    // The rows, their norms and codes in stored order: the rows and codes are made a block at
    // a time as the file is written, never held whole (at 1M × 128, 512 + 128 MB).
    let rows = vectors.as_standard_layout();
    let rows = rows.as_slice().unwrap_or(&[]);
    let row = |r: usize| &rows[r * dim..(r + 1) * dim];
    let fill_rows = |first: usize, out: &mut [u8]| {
        let out: &mut [f32] = bytemuck::cast_slice_mut(out);
        out.par_chunks_mut(dim.max(1))
            .zip(&order[first..])
            .for_each(|(o, &r)| o.copy_from_slice(row(r)));
    };
    let norms: Vec<f32> = if manifest.metric == Metric::L2 {
        order.par_iter().map(|&r| squared_norm(row(r))).collect()
    } else {
        Vec::new()
    };
    let mut tensors = vec![
        TensorOut::rows("vectors", DType::F32, vec![n, dim], &fill_rows),
        TensorOut::rows("graph", DType::U32, vec![n, d], &fill_graph),
        TensorOut::new(
            "graph.entry_points",
            DType::U32,
            vec![entry_points.len()],
            &entry_points,
        ),
    ];
    if manifest.metric == Metric::L2 {
        tensors.push(TensorOut::new("sq_norms", DType::F32, vec![n], &norms));
    }
    // The ranges are the rows' in any order.
    let sq8 = (codes == SearchCodes::Sq8).then(|| {
        let _span = span("cagra write: search code ranges");
        Sq8::train(vectors)
    });
    let fill_codes = |first: usize, out: &mut [u8]| {
        if let Some(q) = &sq8 {
            out.par_chunks_mut(dim.max(1))
                .zip(&order[first..])
                .for_each(|(o, &r)| q.encode_row(row(r), o));
        }
    };
    if let Some(q) = &sq8 {
        tensors.extend([
            TensorOut::rows("codes", DType::U8, vec![n, dim], &fill_codes),
            TensorOut::new("codes.min", DType::F32, vec![dim], &q.min),
            TensorOut::new("codes.scale", DType::F32, vec![dim], &q.scale),
        ]);
    }
    tensors.extend([
        TensorOut::new(
            "upper.rows",
            DType::U32,
            vec![upper_rows.len()],
            &upper_rows,
        ),
        TensorOut::new("upper.counts", DType::U32, vec![h.counts.len()], &h.counts),
        TensorOut::new("upper.graph", DType::U32, vec![h.graph.len()], &h.graph),
    ]);
    let input_rows: Vec<u32> = order.iter().map(|&r| r as u32).collect();
    tensors.push(TensorOut::new(
        "input_rows",
        DType::U32,
        vec![n],
        &input_rows,
    ));
    tensors.extend(crate::artifact::ids_tensors(ids));
    crate::artifact::write(path, manifest, &tensors)
}

/// The order rows are stored in: the upper levels' rows first (in hierarchy position order, so
/// the descent through them reads one compact block), then the rest breadth first over the
/// graph from the entry points (then any row left), as `(input row of each stored row, stored
/// row of each input row)`. Neighbours get nearby row numbers, so a search reads nearby
/// memory: on 200k × 128 in 1000 clusters (2 threads, interleaved runs, same recall)
/// breadth-first order took CPU search from ~28k to ~49k QPS at itopk 16 and ~21k to ~31k at
/// itopk 32; upper rows first then added 8 % at itopk 16 and 15 % at itopk 32 (medians of 8
/// interleaved runs).
fn stored_order(index: &Cagra) -> (Vec<usize>, Vec<u32>) {
    let n = index.graph.len();
    let mut seen = vec![false; n];
    let mut order: Vec<usize> = Vec::with_capacity(n);
    let starts = index.entry_points.iter().map(|&e| e as usize).chain(0..n);
    for s in starts {
        optimize::breadth_first(&index.graph, s, &mut seen, &mut order);
    }
    // Upper-level rows first, in their hierarchy positions' order: the descent reads one
    // compact block.
    let mut upper = vec![false; n];
    for &r in &index.hierarchy.rows {
        upper[r as usize] = true;
    }
    let order: Vec<usize> = (index.hierarchy.rows.iter().map(|&r| r as usize))
        .chain(order.into_iter().filter(|&r| !upper[r]))
        .collect();
    let mut new_of = vec![0u32; n];
    for (new, &old) in order.iter().enumerate() {
        new_of[old] = new as u32;
    }
    (order, new_of)
}
