//! The kNN graph CAGRA starts from: for every row, its `k` nearest other rows, best first.
//!
//! Three builders, all written against [`Backend`] stages:
//!
//! - **exact** ([`exact`]): every row against every row in GEMM tiles (`knn_block`). Cost
//!   `2·N²·dim` flops, so it is chosen automatically only for small N.
//! - **ivf** ([`ivf`]): rows are partitioned by k-means into lists of about
//!   [`IVF_LIST_ROWS`]; the rows of each list are scored exactly (one `knn_block`) against
//!   the rows of the `n_probes` lists whose centroids are nearest to their own list's
//!   centroid — an IVF-Flat search of every row with exact distances, batched per list so it
//!   runs as GEMMs. Rows near a list boundary can miss neighbours in lists their centroid did
//!   not probe; one neighbour-of-neighbour pass ([`refine`]) recovers most of them.
//! - **nn-descent** ([`nn_descent`]): Dong et al., "Efficient k-nearest neighbor graph
//!   construction for generic similarity measures" (WWW 2011): from a random graph, repeat
//!   local joins (each row scores the neighbours and reverse neighbours of its neighbours)
//!   until fewer than `δ·N·k` list entries change. No GEMM; memory-bound.
//!
//! Scores are ranking scores ([`crate::Metric`]): `‖x‖² − 2x·y` for L2, `−x·y` otherwise, so
//! `‖x‖²` is added back only where a true distance is needed.

use super::Graph;
use crate::backend::{Backend, ListJoin, Queries};
use crate::distance::ranking_score;
use crate::index::kmeans;
use crate::synth::Rng;
use crate::{Error, Metric, Result, TopK};
use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

/// Target rows per list for the ivf builder: large enough that per-list GEMMs run near peak,
/// small enough that probing many lists stays cheap.
pub const IVF_LIST_ROWS: usize = 256;
/// Rows scored per `knn_block` call of the exact builder.
const EXACT_CHUNK: usize = 4096;

/// A row's ranking score against another row.
#[inline]
fn score(metric: Metric, norms: &[f32], x: &[f32], y: &[f32], j: usize) -> f32 {
    ranking_score(metric, x, y, norms.get(j).copied().unwrap_or(0.0))
}

/// Turns per-row selections (which may hold the row itself) into graph rows of degree `k`:
/// selection `i` belongs to row `me(i)`, and its candidates name rows through `global`. Slots
/// left over (fewer than `k` other candidates) hold `u32::MAX`.
fn graph_from_topk(
    topk: Vec<TopK>,
    k: usize,
    me: impl Fn(usize) -> u32,
    global: impl Fn(u64) -> u32,
    out: &mut [u32],
) {
    for (i, t) in topk.into_iter().enumerate() {
        let row = &mut out[i * k..(i + 1) * k];
        row.fill(u32::MAX);
        let others = t.into_sorted().into_iter().map(|n| global(n.row));
        for (slot, v) in row.iter_mut().zip(others.filter(|&v| v != me(i))) {
            *slot = v;
        }
    }
}

/// Exact kNN graph of `data: [n, dim]` (`norms: [n]` for L2): `k` neighbours per row.
pub fn exact(
    backend: &dyn Backend,
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
    k: usize,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<Graph> {
    let n = data.nrows();
    let mut neighbors = vec![0u32; n * k];
    for (c, chunk) in data.axis_chunks_iter(Axis(0), EXACT_CHUNK).enumerate() {
        let first = c * EXACT_CHUNK;
        let mut topk: Vec<TopK> = (0..chunk.nrows()).map(|_| TopK::new(k + 1)).collect();
        let q_norms = if metric == Metric::L2 {
            &norms[first..first + chunk.nrows()]
        } else {
            &[][..]
        };
        let queries = Queries {
            vectors: chunk,
            sq_norms: q_norms,
            metric,
        };
        backend.knn_block(queries, data, norms, 0, &mut topk)?;
        graph_from_topk(
            topk,
            k,
            |i| (first + i) as u32,
            |r| r as u32,
            &mut neighbors[first * k..(first + chunk.nrows()) * k],
        );
        progress((first + chunk.nrows()) as f64 / n as f64);
    }
    Ok(Graph {
        degree: k,
        neighbors,
    })
}

/// Parameters of the ivf builder.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IvfJoin {
    /// Lists (k-means clusters).
    pub n_lists: usize,
    /// Lists each list's rows are scored against (its own included).
    pub n_probes: usize,
    pub seed: u64,
}

impl IvfJoin {
    /// Lists of about [`IVF_LIST_ROWS`] rows; enough probes that each row sees about
    /// `max(24·k, 4096)` candidates.
    pub fn auto(n: usize, k: usize, seed: u64) -> Self {
        let n_lists = (n / IVF_LIST_ROWS).max(1);
        let want = (8 * k).max(1024);
        let n_probes = want.div_ceil(IVF_LIST_ROWS).clamp(1, n_lists);
        IvfJoin {
            n_lists,
            n_probes,
            seed,
        }
    }
}

/// Approximate kNN graph by an IVF partition joined list against nearby lists, then one
/// [`refine`] pass. See the module docs.
pub fn ivf(
    backend: &dyn Backend,
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
    k: usize,
    p: &IvfJoin,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<Graph> {
    let n = data.nrows();
    // 1. Partition: k-means on a sample, then every row to its nearest centroid.
    let mut rng = Rng::new(p.seed);
    let train_rows = kmeans::sample_indices(n, (p.n_lists * 64).min(n), &mut rng);
    let sample = data.select(Axis(0), &train_rows);
    let km = kmeans::train(backend, sample.view(), p.n_lists, 10, p.seed, None)?;
    let (labels, _) = kmeans::assign(backend, data, km.centroids.view())?;
    let mut offsets = vec![0usize; p.n_lists + 1];
    for &l in &labels {
        offsets[l as usize + 1] += 1;
    }
    for l in 0..p.n_lists {
        offsets[l + 1] += offsets[l];
    }
    let mut members = vec![0u32; n];
    let mut fill = offsets.clone();
    for (row, &l) in labels.iter().enumerate() {
        members[fill[l as usize]] = row as u32;
        fill[l as usize] += 1;
    }
    // 2. Each list's nearest lists by centroid.
    let centroid_norms = crate::metric::squared_norms(km.centroids.view());
    let mut probe_topk: Vec<TopK> = (0..p.n_lists).map(|_| TopK::new(p.n_probes)).collect();
    let cq = Queries {
        vectors: km.centroids.view(),
        sq_norms: &centroid_norms,
        metric: Metric::L2,
    };
    backend.knn_block(cq, km.centroids.view(), &centroid_norms, 0, &mut probe_topk)?;
    let probes: Vec<Vec<usize>> = probe_topk
        .into_iter()
        .map(|t| t.into_sorted().iter().map(|nb| nb.row as usize).collect())
        .collect();
    // 3. Join each list against its probed lists.
    let job = ListJoin {
        data,
        norms,
        metric,
        members: &members,
        offsets: &offsets,
        probes: &probes,
        k,
    };
    let neighbors = backend.join_lists(&job, &|f| progress(0.9 * f))?;
    let mut graph = Graph {
        degree: k,
        neighbors,
    };
    // 4. Neighbours of neighbours fix most boundary misses (and fill short lists).
    refine(data, norms, metric, &mut graph, 8, false);
    progress(1.0);
    Ok(graph)
}

/// The ivf builder's join, one `knn_block` per list, lists in parallel (largest first, for load
/// balance): each list's rows are scored against the rows of its probed lists and keep their
/// `k` best others. Returns `[n, k]` by row, `u32::MAX` where a row has fewer candidates.
/// This is the CPU's [`Backend::join_lists`] and the oracle of the others.
pub fn join_lists<B: Backend + ?Sized>(
    backend: &B,
    job: &ListJoin<'_>,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<Vec<u32>> {
    let ListJoin {
        data,
        norms,
        metric,
        members,
        offsets,
        probes,
        k,
    } = *job;
    let (n, dim) = data.dim();
    let n_lists = offsets.len() - 1;
    let mut order: Vec<usize> = (0..n_lists).collect();
    order.sort_by_key(|&l| std::cmp::Reverse(offsets[l + 1] - offsets[l]));
    let done = std::sync::atomic::AtomicUsize::new(0);
    let lists: Vec<(usize, Vec<u32>)> = order
        .par_iter()
        .map(|&l| -> Result<(usize, Vec<u32>)> {
            let own = &members[offsets[l]..offsets[l + 1]];
            let base_rows: Vec<u32> = probes[l]
                .iter()
                .flat_map(|&pl| members[offsets[pl]..offsets[pl + 1]].iter().copied())
                .collect();
            let gather = |rows: &[u32]| {
                let mut m = Array2::<f32>::zeros((rows.len(), dim));
                for (mut dst, &r) in m.rows_mut().into_iter().zip(rows) {
                    dst.assign(&data.row(r as usize));
                }
                m
            };
            let (q, x) = (gather(own), gather(&base_rows));
            let pick = |rows: &[u32]| -> Vec<f32> {
                if metric == Metric::L2 {
                    rows.iter().map(|&r| norms[r as usize]).collect()
                } else {
                    Vec::new()
                }
            };
            let (q_norms, x_norms) = (pick(own), pick(&base_rows));
            let mut topk: Vec<TopK> = (0..own.len()).map(|_| TopK::new(k + 1)).collect();
            let queries = Queries {
                vectors: q.view(),
                sq_norms: &q_norms,
                metric,
            };
            backend.knn_block(queries, x.view(), &x_norms, 0, &mut topk)?;
            let mut out = vec![u32::MAX; own.len() * k];
            graph_from_topk(topk, k, |i| own[i], |r| base_rows[r as usize], &mut out);
            let finished = done.fetch_add(own.len(), std::sync::atomic::Ordering::Relaxed);
            progress((finished + own.len()) as f64 / n as f64);
            Ok((l, out))
        })
        .collect::<Result<_>>()?;
    let mut neighbors = vec![u32::MAX; n * k];
    for (l, out) in lists {
        for (i, &row) in members[offsets[l]..offsets[l + 1]].iter().enumerate() {
            let r = row as usize;
            neighbors[r * k..(r + 1) * k].copy_from_slice(&out[i * k..(i + 1) * k]);
        }
    }
    Ok(neighbors)
}

/// One local join: each row scores the first `fan` neighbours of its first `fan` neighbours
/// (and, with `reverse`, rows that list it) and keeps the best `k` of old and new. Returns
/// how many list entries changed.
pub fn refine(
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
    graph: &mut Graph,
    fan: usize,
    reverse: bool,
) -> usize {
    let k = graph.degree;
    let n = data.nrows();
    let flat = data.as_slice().unwrap_or(&[]);
    let dim = data.ncols();
    let old = &graph.neighbors;
    let reverse_lists: Vec<Vec<u32>> = if reverse {
        let mut rev = vec![Vec::new(); n];
        for (u, row) in old.chunks(k).enumerate() {
            for &v in row.iter().take(fan) {
                if (v as usize) < n && rev[v as usize].len() < fan {
                    rev[v as usize].push(u as u32);
                }
            }
        }
        rev
    } else {
        Vec::new()
    };
    let changed = std::sync::atomic::AtomicUsize::new(0);
    let mut next = vec![u32::MAX; n * k];
    next.par_chunks_mut(k).enumerate().for_each_init(
        || (Vec::<u32>::new(), Vec::<(f32, u32)>::new()),
        |(cands, scored), (u, out)| {
            let x = &flat[u * dim..(u + 1) * dim];
            let own = &old[u * k..(u + 1) * k];
            cands.clear();
            let mut first_hop: Vec<u32> = own.iter().take(fan).copied().collect();
            if reverse {
                first_hop.extend_from_slice(&reverse_lists[u]);
            }
            for &v in &first_hop {
                if (v as usize) >= n {
                    continue;
                }
                cands.extend(old[v as usize * k..v as usize * k + k].iter().take(fan));
                if reverse {
                    cands.extend(reverse_lists[v as usize].iter().take(fan));
                }
            }
            cands.extend(own.iter());
            cands.retain(|&c| (c as usize) < n && c as usize != u);
            cands.sort_unstable();
            cands.dedup();
            scored.clear();
            scored.extend(cands.iter().map(|&c| {
                let y = &flat[c as usize * dim..(c as usize + 1) * dim];
                (score(metric, norms, x, y, c as usize), c)
            }));
            let keep = k.min(scored.len());
            if scored.len() > keep {
                scored.select_nth_unstable_by(keep - 1, |a, b| {
                    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
                });
                scored.truncate(keep);
            }
            scored.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut diff = 0;
            for (slot, &(_, c)) in out.iter_mut().zip(scored.iter()) {
                *slot = c;
            }
            for &c in out.iter() {
                if !own.contains(&c) {
                    diff += 1;
                }
            }
            changed.fetch_add(diff, std::sync::atomic::Ordering::Relaxed);
        },
    );
    graph.neighbors = next;
    changed.into_inner()
}

/// NN-descent settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NnDescent {
    /// Most local joins.
    pub max_iters: usize,
    /// Stop once fewer than `delta · N · k` list entries change in a join.
    pub delta: f64,
    pub seed: u64,
}

/// NN-descent from a seeded random graph: local joins with reverse neighbours until fewer than
/// `delta · N · k` entries change or `max_iters` joins ran. Returns the graph and the joins run.
pub fn nn_descent(
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
    k: usize,
    p: &NnDescent,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<(Graph, usize)> {
    let n = data.nrows();
    if n <= k {
        return Err(Error::param(format!(
            "nn-descent needs more than k = {k} rows, got {n}"
        )));
    }
    let mut neighbors = vec![0u32; n * k];
    neighbors
        .par_chunks_mut(k)
        .enumerate()
        .for_each(|(u, row)| {
            let mut rng = Rng::new(p.seed ^ (u as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut filled = 0;
            while filled < k {
                let c = rng.below(n as u64) as u32;
                if c as usize != u && !row[..filled].contains(&c) {
                    row[filled] = c;
                    filled += 1;
                }
            }
        });
    let mut graph = Graph {
        degree: k,
        neighbors,
    };
    // Random lists are unsorted; the first join scores and sorts them.
    let fan = (k / 2).clamp(8, 32);
    let mut iters = 0;
    while iters < p.max_iters {
        let changed = refine(data, norms, metric, &mut graph, fan, true);
        iters += 1;
        progress(iters as f64 / p.max_iters as f64);
        if (changed as f64) < p.delta * (n * k) as f64 {
            break;
        }
    }
    Ok((graph, iters))
}

/// Recall of `graph` against the exact `degree` nearest neighbours of `sample` rows (the
/// fraction of true neighbours found), as the manifest reports it.
pub fn sample_recall(
    backend: &dyn Backend,
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
    graph: &Graph,
    sample: &[usize],
) -> Result<f64> {
    let k = graph.degree;
    let q = data.select(Axis(0), sample);
    let q_norms: Vec<f32> = if metric == Metric::L2 {
        sample.iter().map(|&r| norms[r]).collect()
    } else {
        Vec::new()
    };
    let mut topk: Vec<TopK> = sample.iter().map(|_| TopK::new(k + 1)).collect();
    let queries = Queries {
        vectors: q.view(),
        sq_norms: &q_norms,
        metric,
    };
    backend.knn_block(queries, data, norms, 0, &mut topk)?;
    let mut found = 0usize;
    for (t, &r) in topk.into_iter().zip(sample) {
        let truth: Vec<u32> = t
            .into_sorted()
            .iter()
            .filter(|nb| nb.row as usize != r)
            .take(k)
            .map(|nb| nb.row as u32)
            .collect();
        let row = graph.row(r);
        found += truth.iter().filter(|v| row.contains(v)).count();
    }
    Ok(found as f64 / (sample.len() * k).max(1) as f64)
}
