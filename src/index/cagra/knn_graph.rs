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
//!   runs as GEMMs. `n_probes` is the fewest lists holding [`COVERAGE_TARGET`] of a row
//!   sample's true neighbours ([`IvfPartition::probes_for`]): 4 of 781 on 200k clustered rows,
//!   192 of 390 on 100k rows of one 128-d Gaussian, where neighbours spread over the space.
//!   Rows near a list boundary can miss neighbours in lists their centroid did not probe; one
//!   neighbour-of-neighbour pass ([`refine`]) recovers most of them.
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
/// Neighbours (and their neighbours) each row scores in the ivf builder's [`refine`] pass.
pub const REFINE_FAN: usize = 8;
/// Rows scored per `knn_block` call of the exact builder.
pub const EXACT_CHUNK: usize = 4096;

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
    /// Lists each list's rows are scored against (its own included): at least the automatic
    /// count, more where the sample shows the data needs them (see [`IvfPartition::probes_for`]).
    pub n_probes: usize,
    pub seed: u64,
    /// Share of the sample rows' true neighbours that lie in the lists probed for them, before
    /// the neighbour-of-neighbour pass.
    #[serde(default)]
    pub coverage: f64,
}

impl IvfJoin {
    /// Lists of about [`IVF_LIST_ROWS`] rows; enough probes that each row sees about
    /// `max(8·k, 1024)` candidates (the least [`IvfPartition::probes_for`] picks).
    pub fn auto(n: usize, k: usize, seed: u64) -> Self {
        let n_lists = (n / IVF_LIST_ROWS).max(1);
        let want = (8 * k).max(1024);
        let n_probes = want.div_ceil(IVF_LIST_ROWS).clamp(1, n_lists);
        IvfJoin {
            n_lists,
            n_probes,
            seed,
            coverage: 0.0,
        }
    }
}

/// Share of true neighbours the probed lists should hold: the neighbour-of-neighbour pass
/// then lifts the graph's recall to about 0.95.
pub const COVERAGE_TARGET: f64 = 0.9;
/// Most probes ranked per list (bounds memory at `n_lists × MAX_PROBES`).
const MAX_PROBES: usize = 256;

/// Some rows' exact `k` nearest other rows: what the approximate builders are measured (and
/// the ivf builder's probes chosen) against.
pub struct SampleTruth {
    pub rows: Vec<usize>,
    /// `[rows.len()][≤ k]`, best first.
    pub neighbors: Vec<Vec<u32>>,
}

impl SampleTruth {
    /// The exact `k` nearest other rows of each of `rows`.
    pub fn new(
        backend: &dyn Backend,
        data: ArrayView2<'_, f32>,
        norms: &[f32],
        metric: Metric,
        k: usize,
        rows: Vec<usize>,
    ) -> Result<Self> {
        let q = data.select(Axis(0), &rows);
        let q_norms: Vec<f32> = match metric {
            Metric::L2 => rows.iter().map(|&r| norms[r]).collect(),
            _ => Vec::new(),
        };
        let mut topk: Vec<TopK> = rows.iter().map(|_| TopK::new(k + 1)).collect();
        let queries = Queries {
            vectors: q.view(),
            sq_norms: &q_norms,
            metric,
        };
        backend.knn_block(queries, data, norms, 0, &mut topk)?;
        let neighbors = topk
            .into_iter()
            .zip(&rows)
            .map(|(t, &r)| {
                let sorted = t.into_sorted();
                let others = sorted.iter().filter(|nb| nb.row as usize != r);
                others.take(k).map(|nb| nb.row as u32).collect()
            })
            .collect();
        Ok(SampleTruth { rows, neighbors })
    }

    /// Share of the true neighbours `graph` holds.
    pub fn recall(&self, graph: &Graph) -> f64 {
        let mut found = 0usize;
        let mut total = 0usize;
        for (&r, truth) in self.rows.iter().zip(&self.neighbors) {
            let row = graph.row(r);
            found += truth.iter().filter(|v| row.contains(v)).count();
            total += truth.len();
        }
        found as f64 / total.max(1) as f64
    }
}

/// The ivf builder's partition: k-means lists and, for each list, the other lists ranked by
/// centroid distance.
pub struct IvfPartition {
    labels: Vec<u32>,
    members: Vec<u32>,
    offsets: Vec<usize>,
    /// `[n_lists][≤ MAX_PROBES]`, nearest first (the list itself first).
    ranked: Vec<Vec<usize>>,
}

impl IvfPartition {
    /// The rows grouped by list, lists in order: rows that share most of their neighbours
    /// come together.
    pub fn into_members(self) -> Vec<u32> {
        self.members
    }

    /// k-means on a sample ([`kmeans::train_local`]), then every row to its nearest centroid
    /// ([`kmeans::assign_bounded`]).
    pub fn new(backend: &dyn Backend, data: ArrayView2<'_, f32>, p: &IvfJoin) -> Result<Self> {
        let n = data.nrows();
        let mut rng = Rng::new(p.seed);
        let train_rows = kmeans::sample_indices(n, (p.n_lists * 64).min(n), &mut rng);
        let sample = data.select(Axis(0), &train_rows);
        let km = kmeans::train_local(backend, sample.view(), p.n_lists, 10, p.seed, None)?;
        let bounds = kmeans::Bounds::new(backend, km.centroids.view())?;
        let (labels, _) =
            kmeans::assign_bounded(backend, data, km.centroids.view(), bounds.as_ref())?;
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
        let centroid_norms = crate::metric::squared_norms(km.centroids.view());
        let depth = p.n_lists.min(MAX_PROBES.max(p.n_probes));
        let mut probe_topk: Vec<TopK> = (0..p.n_lists).map(|_| TopK::new(depth)).collect();
        let cq = Queries {
            vectors: km.centroids.view(),
            sq_norms: &centroid_norms,
            metric: Metric::L2,
        };
        backend.knn_block(cq, km.centroids.view(), &centroid_norms, 0, &mut probe_topk)?;
        let ranked = probe_topk
            .into_iter()
            .map(|t| t.into_sorted().iter().map(|nb| nb.row as usize).collect())
            .collect();
        Ok(IvfPartition {
            labels,
            members,
            offsets,
            ranked,
        })
    }

    /// Probes each list's nearest `probes` lists (itself included) from now on.
    pub fn keep_probes(&mut self, probes: usize) {
        for r in self.ranked.iter_mut() {
            r.truncate(probes);
        }
    }

    /// The fewest probes, at least `least`, whose lists hold [`COVERAGE_TARGET`] of the
    /// sample's true neighbours, and the share they hold; where the ranked lists never reach
    /// the target, all of them.
    pub fn probes_for(&self, truth: &SampleTruth, least: usize) -> (usize, f64) {
        let depth = self.ranked.first().map_or(0, |r| r.len());
        // hits[p]: true neighbours in the list ranked p-th for their row's list.
        let mut hits = vec![0usize; depth + 1];
        let mut total = 0usize;
        let mut rank_of = vec![usize::MAX; self.ranked.len()];
        for (&r, nbrs) in truth.rows.iter().zip(&truth.neighbors) {
            let own = &self.ranked[self.labels[r] as usize];
            for (i, &l) in own.iter().enumerate() {
                rank_of[l] = i;
            }
            for &v in nbrs {
                let rank = rank_of[self.labels[v as usize] as usize];
                hits[rank.min(depth)] += 1;
            }
            total += nbrs.len();
            for &l in own {
                rank_of[l] = usize::MAX;
            }
        }
        let total = total.max(1) as f64;
        let mut covered = 0usize;
        for (p, &h) in hits.iter().enumerate().take(depth) {
            covered += h;
            let share = covered as f64 / total;
            if p + 1 >= least && share >= COVERAGE_TARGET {
                return (p + 1, share);
            }
        }
        (depth, hits[..depth].iter().sum::<usize>() as f64 / total)
    }
}

/// Approximate kNN graph by an IVF partition, each list joined against the lists it probes
/// ([`IvfPartition::keep_probes`]), then one [`refine`] pass. See the module docs. Returns the
/// graph and the join's seconds.
pub fn ivf(
    backend: &dyn Backend,
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
    k: usize,
    part: &IvfPartition,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<(Graph, f64)> {
    let started = std::time::Instant::now();
    let job = ListJoin {
        data,
        norms,
        metric,
        members: &part.members,
        offsets: &part.offsets,
        probes: &part.ranked,
        k,
    };
    let neighbors = backend.join_lists(&job, &|f| progress(0.9 * f))?;
    let join_seconds = started.elapsed().as_secs_f64();
    let mut graph = Graph {
        degree: k,
        neighbors,
    };
    // Neighbours of neighbours fix most boundary misses (and fill short lists).
    backend.refine_graph(data, norms, metric, &mut graph, REFINE_FAN, &part.members)?;
    progress(1.0);
    Ok((graph, join_seconds))
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
    refine_in_order(data, norms, metric, graph, fan, reverse, &[])
}

/// [`refine`], visiting the rows in `order` (a permutation of the rows; empty: 0, 1, …). The
/// result does not depend on the order, but the time does: rows of one partition list share
/// most of their candidates, so visiting them together finds those rows in cache (the ivf
/// builder passes the rows in list order: 1M × 128 on 2 cores, 11.1–12.1 s → 5.0–6.4 s).
pub fn refine_in_order(
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
    graph: &mut Graph,
    fan: usize,
    reverse: bool,
    order: &[u32],
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
    let next = map_rows_in_order(
        n,
        k,
        order,
        || (Vec::<u32>::new(), Vec::<(f32, u32)>::new()),
        |(cands, scored), u, out| {
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
            // Candidates are scattered rows: ask for each a few ahead of its scoring.
            const AHEAD: usize = 4;
            let row = |c: u32| &flat[c as usize * dim..(c as usize + 1) * dim];
            for &c in cands.iter().take(AHEAD) {
                crate::distance::prefetch(row(c), 4 * dim);
            }
            for (i, &c) in cands.iter().enumerate() {
                if let Some(&next) = cands.get(i + AHEAD) {
                    crate::distance::prefetch(row(next), 4 * dim);
                }
                scored.push((score(metric, norms, x, row(c), c as usize), c));
            }
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

/// Runs `row(state, u, out)` for every row `u < n` in parallel (`out`: its `width` slots, all
/// `u32::MAX` at first; `state` made by `init` per worker) and returns the slots by row. Rows
/// are visited in `order` when it is a permutation of `0..n`, else `0, 1, …`: rows that read
/// the same other rows (one partition list's) then run together and find those in cache.
fn map_rows_in_order<S>(
    n: usize,
    width: usize,
    order: &[u32],
    init: impl Fn() -> S + Sync + Send,
    row: impl Fn(&mut S, usize, &mut [u32]) + Sync + Send,
) -> Vec<u32> {
    let mut out = vec![u32::MAX; n * width];
    if width == 0 {
        return out;
    }
    let ordered = n > 0 && is_permutation(order, n);
    out.par_chunks_mut(width)
        .enumerate()
        .for_each_init(init, |state, (i, slots)| {
            let u = if ordered { order[i] as usize } else { i };
            row(state, u, slots);
        });
    match ordered {
        true => in_row_order(&out, order, width),
        false => out,
    }
}

/// Slots made in visiting order (position `i`: row `order[i]`'s `width` slots; `order` a
/// permutation of the rows, `width` > 0), each put in its row's place.
pub fn in_row_order(out: &[u32], order: &[u32], width: usize) -> Vec<u32> {
    let n = order.len();
    let mut position = vec![0u32; n];
    for (i, &u) in order.iter().enumerate() {
        position[u as usize] = i as u32;
    }
    let mut by_row = vec![u32::MAX; n * width];
    by_row
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(u, dst)| {
            let i = position[u] as usize;
            dst.copy_from_slice(&out[i * width..(i + 1) * width]);
        });
    by_row
}

/// Whether `order` holds each of the rows `0..n` once.
pub fn is_permutation(order: &[u32], n: usize) -> bool {
    let mut seen = vec![false; n];
    order.len() == n
        && order
            .iter()
            .all(|&u| (u as usize) < n && !std::mem::replace(&mut seen[u as usize], true))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    #[test]
    fn refine_gives_the_same_graph_in_any_row_order() {
        let (n, dim, k) = (400usize, 12usize, 10usize);
        let mut rng = Rng::new(3);
        let data = ndarray::Array2::from_shape_fn((n, dim), |_| rng.uniform() as f32);
        let norms = crate::metric::squared_norms(data.view());
        let start = Graph {
            degree: k,
            neighbors: (0..n * k).map(|_| rng.below(n as u64 + 3) as u32).collect(),
        };
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        assert!(is_permutation(&order, n));
        for reverse in [false, true] {
            let mut plain = start.clone();
            let changed = refine(data.view(), &norms, Metric::L2, &mut plain, 4, reverse);
            let mut ordered = start.clone();
            let changed_ordered = refine_in_order(
                data.view(),
                &norms,
                Metric::L2,
                &mut ordered,
                4,
                reverse,
                &order,
            );
            assert_eq!(plain.neighbors, ordered.neighbors);
            assert_eq!(changed, changed_ordered);
            assert_ne!(plain.neighbors, start.neighbors);
        }
        // Not a permutation: a repeat, a row out of range, a short list.
        assert!(!is_permutation(&[0, 0, 2], 3));
        assert!(!is_permutation(&[0, 3, 1], 3));
        assert!(!is_permutation(&[0, 1], 3));
    }

    /// The probes `probes_for` picks for `data` split into 16 lists, with the coverage.
    fn probes(data: ArrayView2<'_, f32>) -> (usize, f64) {
        let norms = crate::metric::squared_norms(data);
        let p = IvfJoin {
            n_lists: 16,
            n_probes: 1,
            seed: 5,
            coverage: 0.0,
        };
        let part = IvfPartition::new(&CpuBackend, data, &p).unwrap();
        let rows: Vec<usize> = (0..data.nrows()).step_by(40).collect();
        let truth = SampleTruth::new(&CpuBackend, data, &norms, Metric::L2, 16, rows).unwrap();
        part.probes_for(&truth, 2)
    }

    #[test]
    fn probes_follow_how_spread_the_neighbours_are() {
        // Sixteen separated clusters: a row's neighbours share its list.
        let clustered = crate::synth::clustered(4_000, 0, 32, 16, 3).base;
        let (p, coverage) = probes(clustered.view());
        assert!(
            p == 2 && coverage >= COVERAGE_TARGET,
            "{p} probes, {coverage}"
        );
        // One 32-d Gaussian: neighbours spread over many lists.
        let blob = crate::synth::clustered(4_000, 0, 32, 1, 3).base;
        let (p, coverage) = probes(blob.view());
        assert!(
            p > 4 && coverage >= COVERAGE_TARGET,
            "{p} probes, {coverage}"
        );
    }
}
