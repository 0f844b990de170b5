//! CAGRA graph optimisation (Ootomo et al., ICDE 2024, section IV-B): turns a kNN graph of
//! degree `d_in` (each row best first) into a search graph of fixed degree `d_out ≤ d_in`.
//!
//! 1. **Rank-based pruning.** For an edge A→B at rank `r_AB` in A's list, a *detourable route*
//!    is a two-hop path A→D→B with `max(r_AD, r_DB) < r_AB`: B is reachable through a closer
//!    neighbour D along edges ranked better than A→B itself. Ranks stand in for distances, so
//!    no distance is computed. Each of A's edges gets its count of detourable routes; the
//!    `d_out` edges with the fewest are kept, ties to the better rank.
//! 2. **Reverse edges.** For every kept edge A→B (visited in rank order, best ranks of all rows
//!    first), B records A, up to `d_out` per row: rows that nobody kept gain in-edges.
//! 3. **Merge.** Each row keeps its first `d_out / 2` pruned edges, then takes its reverse
//!    edges in order, then its remaining pruned edges, skipping duplicates, up to `d_out`.
//! 4. **Connectivity** (optional): rows not reachable from the entry point by a depth-first
//!    walk get an in-edge from their nearest reachable row in the kNN graph, which gives up its
//!    last edge that is not on the walk's tree (preferring one whose target has other
//!    in-edges), so nothing reached before is cut off; one pass, and every row is reachable
//!    from the entry points. A breadth-first search from the entry point checks first whether
//!    every row is reached (on a GPU, on the device); the walk runs only where one is not.
//!
//! The graph is stored as `u32 [N, d_out]`; every slot holds a distinct row other than the
//! row itself.

use super::knn_graph::{in_row_order, is_permutation};
use super::Graph;
use crate::laps::Laps;
use crate::search::cagra::{CagraIndex, CagraSearchParams};
use crate::Metric;
use ndarray::ArrayView2;
use rayon::prelude::*;

/// Slot value for "no edge" in intermediate lists (never in a finished graph).
pub const NONE: u32 = u32::MAX;

/// Candidates the connectivity step's beam search offers for an island's in-edge.
const NEAREST_REACHABLE: usize = 8;

/// Rows of the kNN graph fetched ahead of the one being read.
const PREFETCH_AHEAD: usize = 4;

/// Detour counts of one row's edges: `counts[r]` for the edge at rank `r`. `map` is scratch: an
/// open-addressing table from row to rank, sized to a power of two ≥ 4·d_in. For graphs of more
/// than [`RANK_TABLE_ROWS`] rows; smaller ones take [`detour_counts_by_table`].
fn detour_counts(knn: &Graph, a: usize, map: &mut [(u32, u32)], counts: &mut [u32]) {
    let d = knn.degree;
    let mask = map.len() - 1;
    map.fill((NONE, 0));
    let slot = |v: u32| (v.wrapping_mul(0x9E37_79B9) >> 7) as usize & mask;
    let list = knn.row(a);
    for (rank, &b) in list.iter().enumerate() {
        let mut s = slot(b);
        while map[s].0 != NONE && map[s].0 != b {
            s = (s + 1) & mask;
        }
        map[s] = (b, rank as u32);
    }
    counts[..d].fill(0);
    two_hop_routes(knn, list, |r_ad, r_db, b| {
        let mut s = slot(b);
        while map[s].0 != NONE {
            if map[s].0 == b {
                let r_ab = map[s].1 as usize;
                if r_ad.max(r_db) < r_ab {
                    counts[r_ab] += 1;
                }
                break;
            }
            s = (s + 1) & mask;
        }
    });
}

/// Calls `visit(r_AD, r_DB, B)` for every two-hop route A→D→B from the row whose kNN list is
/// `list` that could be a detour: routes need r_AD < r_AB, so D ranges over all but the last
/// edge; and r_DB < r_AB ≤ d − 1, so B over all but D's last edge. Empty slots are skipped;
/// D's lists are prefetched a few ahead.
#[inline(always)]
fn two_hop_routes(knn: &Graph, list: &[u32], mut visit: impl FnMut(usize, usize, u32)) {
    let d = knn.degree;
    let fetch = |v: u32| {
        if v != NONE {
            crate::distance::prefetch(knn.row(v as usize), d * 4);
        }
    };
    list.iter().take(PREFETCH_AHEAD).for_each(|&v| fetch(v));
    for (r_ad, &dnode) in list.iter().enumerate().take(d.saturating_sub(1)) {
        if let Some(&ahead) = list.get(r_ad + PREFETCH_AHEAD) {
            fetch(ahead);
        }
        if dnode == NONE {
            continue;
        }
        let routes = &knn.row(dnode as usize)[..d.saturating_sub(1)];
        for (r_db, &b) in routes.iter().enumerate() {
            if b != NONE {
                visit(r_ad, r_db, b);
            }
        }
    }
}

/// Rows up to which [`prune`] looks ranks up in a table over all rows (2 bytes each, one per
/// block of rows) rather than in a hash table per row.
pub(crate) const RANK_TABLE_ROWS: usize = 1 << 24;

/// Step 1: the `d_out` edges of each row with the fewest detourable routes.
pub fn prune(knn: &Graph, d_out: usize) -> Graph {
    prune_in_order(knn, d_out, &[])
}

/// [`prune`], visiting the rows in `order` (a permutation of the rows; empty: 0, 1, …). The
/// result does not depend on the order, but the time does: a row's routes read its neighbours'
/// lists and look their entries up among its own, and the rows of one partition list share
/// most of those, so visiting them together finds them in cache (the ivf builder passes the
/// rows in list order).
pub fn prune_in_order(knn: &Graph, d_out: usize, order: &[u32]) -> Graph {
    let (n, d) = (knn.len(), knn.degree);
    let ordered = n > 0 && is_permutation(order, n);
    // The row at position `i` of the visit.
    let row_at = |i: usize| if ordered { order[i] as usize } else { i };
    let width = d_out.max(1);
    let mut neighbors = vec![NONE; n * d_out];
    // A row's ranks by (detours, rank): its first d_out are kept.
    let keep = |a: usize, counts: &[u32], ranks: &mut Vec<usize>, out: &mut [u32]| {
        let list = knn.row(a);
        ranks.clear();
        ranks.extend((0..d).filter(|&r| list[r] != NONE));
        ranks.sort_by_key(|&r| (counts[r], r));
        for (slot, &r) in out.iter_mut().zip(ranks.iter()) {
            *slot = list[r];
        }
    };
    if n <= RANK_TABLE_ROWS && d < RANK_ABSENT as usize {
        // Blocks of rows, each with its own table of every row's rank in the current list.
        let block = n.div_ceil(rayon::current_num_threads() * 8).max(1024);
        neighbors
            .par_chunks_mut(block * width)
            .enumerate()
            .for_each(|(i, outs)| {
                let mut rank_of = vec![RANK_ABSENT; n];
                let mut counts = vec![0u32; d + 1];
                let mut ranks = Vec::with_capacity(d);
                for (j, out) in outs.chunks_mut(width).enumerate() {
                    let a = row_at(i * block + j);
                    detour_counts_by_table(knn, a, &mut rank_of, &mut counts);
                    keep(a, &counts, &mut ranks, out);
                }
            });
    } else {
        // A quarter full: most lookups miss (B not in A's list) and stop at the first empty
        // slot.
        let table = (4 * d).next_power_of_two().max(16);
        neighbors.par_chunks_mut(width).enumerate().for_each_init(
            || {
                (
                    vec![(NONE, 0u32); table],
                    vec![0u32; d],
                    Vec::with_capacity(d),
                )
            },
            |(map, counts, ranks), (i, out)| {
                let a = row_at(i);
                detour_counts(knn, a, map, counts);
                keep(a, counts, ranks, out);
            },
        );
    }
    if ordered && d_out > 0 {
        neighbors = in_row_order(&neighbors, order, d_out);
    }
    Graph {
        degree: d_out,
        neighbors,
    }
}

/// A row's place in [`detour_counts_by_table`]'s table when it is not in the current list.
const RANK_ABSENT: u16 = u16::MAX;

/// [`detour_counts`] with ranks looked up in `rank_of` (`[n]`, all [`RANK_ABSENT`] on entry
/// and on return) instead of a hash table: one load per candidate route, and the count added
/// without a branch (absent rows count in `counts[d]`, which is spare). Same counts.
fn detour_counts_by_table(knn: &Graph, a: usize, rank_of: &mut [u16], counts: &mut [u32]) {
    let d = knn.degree;
    let list = knn.row(a);
    for (rank, &b) in list.iter().enumerate() {
        if b != NONE {
            rank_of[b as usize] = rank as u16;
        }
    }
    counts[..=d].fill(0);
    two_hop_routes(knn, list, |r_ad, r_db, b| {
        let r_ab = rank_of[b as usize] as usize;
        counts[r_ab.min(d)] += u32::from(r_ad.max(r_db) < r_ab);
    });
    for &b in list {
        if b != NONE {
            rank_of[b as usize] = RANK_ABSENT;
        }
    }
}

/// Reverse edges by row: row `b`'s are the first `count[b]` of its `width` slots (no equality:
/// the same edges can lie in slots of different widths).
#[derive(Debug, Clone)]
pub struct Reverse {
    width: usize,
    count: Vec<u32>,
    slots: Vec<u32>,
}

impl Reverse {
    /// Reverse edges from lists, row by row.
    pub fn from_lists(lists: &[Vec<u32>]) -> Self {
        let width = lists.iter().map(Vec::len).max().unwrap_or(0);
        let mut slots = vec![0; lists.len() * width];
        for (out, list) in slots.chunks_mut(width.max(1)).zip(lists) {
            out[..list.len()].copy_from_slice(list);
        }
        Reverse {
            width,
            count: lists.iter().map(|l| l.len() as u32).collect(),
            slots,
        }
    }

    /// Row `b`'s reverse edges, best first.
    pub fn row(&self, b: usize) -> &[u32] {
        &self.slots[b * self.width..b * self.width + self.count[b] as usize]
    }
}

/// Rows per block when [`reverse_edges`] reads the pruned graph rank by rank.
const REVERSE_BLOCK: usize = 4096;

/// Step 2: reverse edges of `pruned`, at most `pruned.degree` per row: the edges A→B in order
/// of rank, then of A, and each B keeps the first `degree` that reach it.
///
/// That order reads the graph column by column, so blocks of rows are first transposed (in
/// parallel). Then each core takes one range of targets B and reads every edge in that order,
/// keeping those into its range: its counts stay in its own cache, where one pass over all
/// rows' counts missed the cache at every edge.
pub fn reverse_edges(pruned: &Graph) -> Reverse {
    reverse_edges_in(pruned, rayon::current_num_threads())
}

/// [`reverse_edges`] with the targets split into `parts` ranges.
fn reverse_edges_in(pruned: &Graph, parts: usize) -> Reverse {
    let (n, d) = (pruned.len(), pruned.degree);
    if n == 0 || d == 0 {
        return Reverse {
            width: 0,
            count: vec![0; n],
            slots: Vec::new(),
        };
    }
    let blocks: Vec<Vec<u32>> = pruned
        .neighbors
        .par_chunks(REVERSE_BLOCK * d)
        .map(|chunk| {
            let rows = chunk.len() / d;
            let mut t = vec![NONE; chunk.len()];
            for (a, row) in chunk.chunks_exact(d).enumerate() {
                for (rank, &b) in row.iter().enumerate() {
                    t[rank * rows + a] = b;
                }
            }
            t
        })
        .collect();
    let span = n.div_ceil(parts.clamp(1, n));
    let mut count = vec![0u32; n];
    // Zeros, not NONE: the pages are touched only where an edge is kept.
    let mut slots = vec![0u32; n * d];
    count
        .par_chunks_mut(span)
        .zip(slots.par_chunks_mut(span * d))
        .enumerate()
        .for_each(|(p, (count, slots))| {
            let lo = p * span;
            let len = count.len();
            for rank in 0..d {
                for (i, t) in blocks.iter().enumerate() {
                    let rows = t.len() / d;
                    let first = i * REVERSE_BLOCK;
                    for (a, &b) in t[rank * rows..(rank + 1) * rows].iter().enumerate() {
                        // NONE wraps far past every range.
                        let at = (b as usize).wrapping_sub(lo);
                        if at < len && (count[at] as usize) < d {
                            slots[at * d + count[at] as usize] = (first + a) as u32;
                            count[at] += 1;
                        }
                    }
                }
            }
        });
    Reverse {
        width: d,
        count,
        slots,
    }
}

/// Step 3: protected half of the pruned edges, then reverse edges, then the rest.
pub fn merge(pruned: &Graph, reverse: &Reverse) -> Graph {
    let d = pruned.degree;
    let protected = d / 2;
    let mut neighbors = vec![NONE; pruned.len() * d];
    neighbors
        .par_chunks_mut(d)
        .enumerate()
        .for_each(|(a, out)| {
            let own = pruned.row(a);
            let mut filled = 0;
            let candidates = own[..protected]
                .iter()
                .chain(reverse.row(a).iter())
                .chain(own[protected..].iter());
            for &v in candidates {
                if filled == d {
                    break;
                }
                if v != NONE && v as usize != a && !out[..filled].contains(&v) {
                    out[filled] = v;
                    filled += 1;
                }
            }
        });
    Graph {
        degree: d,
        neighbors,
    }
}

/// Steps 1–3 on the CPU: pruning to `d_out` edges (visiting the rows in `order`, see
/// [`prune_in_order`]), reverse edges, merge; each a part of `laps`.
pub fn optimize(knn: &Graph, d_out: usize, order: &[u32], laps: &mut Laps) -> Graph {
    let pruned = prune_in_order(knn, d_out, order);
    laps.mark("rank-based pruning");
    let reverse = reverse_edges(&pruned);
    laps.mark("reverse edges");
    let graph = merge(&pruned, &reverse);
    laps.mark("merge");
    graph
}

/// Rows of the queue that [`breadth_first`] fetches ahead of the one it reads.
const BFS_AHEAD: usize = 32;

/// Appends to `order` the rows a breadth-first search from `start` reaches (itself first) that
/// are not yet `seen`, and marks them; nothing where `start` is out of range or seen. The
/// queue says which rows come next, so their lists are fetched ahead, hiding the memory's
/// latency (1M × 64 in scrambled row order: 224 → 98 ms).
pub(crate) fn breadth_first(
    graph: &Graph,
    start: usize,
    seen: &mut [bool],
    order: &mut Vec<usize>,
) {
    let n = graph.len();
    if start >= n || seen[start] {
        return;
    }
    let mut head = order.len();
    seen[start] = true;
    order.push(start);
    while head < order.len() {
        if let Some(&next) = order.get(head + BFS_AHEAD) {
            crate::distance::prefetch(graph.row(next), graph.degree * 4);
        }
        let u = order[head];
        head += 1;
        for &v in graph.row(u) {
            if (v as usize) < n && !seen[v as usize] {
                seen[v as usize] = true;
                order.push(v as usize);
            }
        }
    }
}

/// Whether every row is reachable from `entry`: the check before [`guarantee_connectivity`],
/// whose depth-first walk (which the mending needs) it spares where there is nothing to mend.
/// Breadth first, so the rows' lists are fetched ahead (1M × 32 on 2 cores: 0.06 s where the
/// walk took 0.36 s).
pub fn reaches_every_row(graph: &Graph, entry: u32) -> bool {
    reachable(graph, &[entry]).iter().all(|&s| s)
}

/// Rows reachable from `entries` by following edges ([`breadth_first`] from each).
pub fn reachable(graph: &Graph, entries: &[u32]) -> Vec<bool> {
    let mut seen = vec![false; graph.len()];
    let mut order = Vec::with_capacity(graph.len());
    for &e in entries {
        breadth_first(graph, e as usize, &mut seen, &mut order);
    }
    seen
}

/// Rows to add to the upper levels so that a search can reach every row: nothing leads to a
/// row from the entry or from a row on a level ≥ 1 (`upper`) in clusters whose kNN lists
/// never lead into them and where no row drew a level ≥ 1, and a query's level-1 search,
/// which seeds level 0, cannot find them. In row order, each row still unreached is listed,
/// and what it reaches counts as reached.
pub fn unreached_from_upper(graph: &Graph, entry: u32, upper: &[u32]) -> Vec<u32> {
    let mut seen = vec![false; graph.len()];
    let mut order = Vec::new();
    for &r in std::iter::once(&entry).chain(upper) {
        breadth_first(graph, r as usize, &mut seen, &mut order);
    }
    let mut listed = Vec::new();
    for u in 0..graph.len() {
        if !seen[u] {
            listed.push(u as u32);
            breadth_first(graph, u, &mut seen, &mut order);
        }
    }
    listed
}

/// Step 4: makes every row reachable from the returned entry points (which start with
/// `entry`), in one pass. A depth-first walk from the entry spans a tree of the reachable rows
/// (`parent`). Each row `u` the walk missed, in row order, gets an in-edge from a reachable row
/// `r`: the first reachable one in its kNN list, else the nearest a beam search from the entry
/// finds (islands: clusters whose kNN lists never leave them); the walk then goes on from `u`.
/// The slot `r` gives up never holds a tree edge, so no row the walk reached can be cut off:
/// preferably one whose target keeps another in-edge, else any non-tree edge not written here.
/// A row that no reachable row can take (every slot a tree edge) becomes an entry point.
/// Returns the entry points and the number of edges rewired.
pub fn guarantee_connectivity(
    graph: &mut Graph,
    knn: &Graph,
    entry: u32,
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
) -> (Vec<u32>, usize) {
    let n = graph.len();
    let d = graph.degree;
    let mut entries = vec![entry];
    let mut rewired = 0;
    let mut seen = vec![false; n];
    let mut parent = vec![NONE; n];
    let part = crate::laps::span("connectivity: walk from the entry");
    if (entry as usize) < n {
        mark_from(graph, entry, &mut seen, &mut parent);
    }
    drop(part);
    if seen.iter().all(|&s| s) {
        return (entries, rewired);
    }
    let part = crate::laps::span("connectivity: in-degrees");
    let mut in_degree = vec![0u32; n];
    for &v in &graph.neighbors {
        if v != NONE {
            in_degree[v as usize] += 1;
        }
    }
    drop(part);
    let _span = crate::laps::span("connectivity: islands linked");
    for u in 0..n {
        if seen[u] {
            continue;
        }
        // Reachable rows of its kNN list, best first, else the beam search's nearest; the
        // first of them with a slot to give up takes it.
        let slot_in = |r: u32| {
            let base = r as usize * d;
            let row = &graph.neighbors[base..base + d];
            // An edge written here is a tree edge too (`parent[u] = r` below).
            let free = |s: &usize| row[*s] == NONE || parent[row[*s] as usize] != r;
            (0..d)
                .rev()
                .filter(free)
                .find(|&s| row[s] == NONE || in_degree[row[s] as usize] > 1)
                .or_else(|| (0..d).rev().find(free))
                .map(|s| (r, base + s))
        };
        let mut near = knn
            .row(u)
            .iter()
            .copied()
            .filter(|&r| r != NONE && seen[r as usize]);
        let slot = match near.find_map(slot_in) {
            Some(found) => Some(found),
            None => nearest_reachable(graph, &entries, data, norms, metric, u)
                .into_iter()
                .find_map(slot_in),
        };
        match slot {
            Some((r, at)) => {
                let old = graph.neighbors[at];
                if old != NONE {
                    in_degree[old as usize] -= 1;
                }
                graph.neighbors[at] = u as u32;
                in_degree[u] += 1;
                rewired += 1;
                parent[u] = r;
            }
            None => entries.push(u as u32),
        }
        mark_from(graph, u as u32, &mut seen, &mut parent);
    }
    (entries, rewired)
}

/// Marks everything reachable from `start` (itself included) that is not yet `seen` by a
/// depth-first walk, recording for each newly seen row the row it was first reached from. A
/// row is marked when the walk steps onto it (not when it is put on the stack), so the tree
/// has about one child per row and leaves most of every row's edges off the tree.
fn mark_from(graph: &Graph, start: u32, seen: &mut [bool], parent: &mut [u32]) {
    seen[start as usize] = true;
    // (row, next slot to look at).
    let mut stack = vec![(start, 0usize)];
    while let Some((x, slot)) = stack.last_mut() {
        let row = graph.row(*x as usize);
        match row[*slot..]
            .iter()
            .position(|&v| v != NONE && !seen[v as usize])
        {
            Some(i) => {
                let v = row[*slot + i];
                *slot += i + 1;
                seen[v as usize] = true;
                parent[v as usize] = *x;
                stack.push((v, 0));
            }
            None => {
                stack.pop();
            }
        }
    }
}

/// The rows nearest to row `u` (up to [`NEAREST_REACHABLE`], best first) that a beam search
/// from the entry points reaches (so reachable rows), other than `u`.
fn nearest_reachable(
    graph: &Graph,
    entries: &[u32],
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
    u: usize,
) -> Vec<u32> {
    let index = CagraIndex {
        metric,
        vectors: data,
        sq_norms: norms,
        graph: &graph.neighbors,
        degree: graph.degree,
        entry_points: entries,
        random_seeds: false,
        codes: None,
        hierarchy: None,
    };
    let params = CagraSearchParams {
        itopk_size: 32,
        search_width: 1,
        max_iterations: 0,
    };
    let q = data.slice(ndarray::s![u..u + 1, ..]);
    let Ok((found, _)) = index.search(q, NEAREST_REACHABLE + 1, &params) else {
        return Vec::new();
    };
    found
        .rows
        .iter()
        .filter(|&&r| r != crate::search::NO_NEIGHBOR && r as usize != u)
        .map(|&r| r as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(degree: usize, rows: &[&[u32]]) -> Graph {
        Graph {
            degree,
            neighbors: rows.iter().flat_map(|r| r.iter().copied()).collect(),
        }
    }

    #[test]
    fn pruning_gives_the_same_graph_in_any_row_order() {
        let (n, d) = (500usize, 12usize);
        let mut rng = crate::synth::Rng::new(11);
        // Lists of distinct other rows, some cut short (empty slots at the end).
        let knn = Graph {
            degree: d,
            neighbors: (0..n)
                .flat_map(|a| {
                    let len = d - rng.below(3) as usize;
                    let mut list: Vec<u32> = Vec::with_capacity(d);
                    while list.len() < len {
                        let v = rng.below(n as u64) as u32;
                        if v as usize != a && !list.contains(&v) {
                            list.push(v);
                        }
                    }
                    list.resize(d, NONE);
                    list
                })
                .collect(),
        };
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for d_out in [1, 6, d] {
            let plain = prune(&knn, d_out);
            assert_eq!(prune_in_order(&knn, d_out, &order), plain, "d_out {d_out}");
            // Not a permutation: row order.
            assert_eq!(prune_in_order(&knn, d_out, &order[1..]), plain);
        }
        // Something to prune: at full degree, some edges move behind ones with fewer detours.
        assert_ne!(prune(&knn, d).neighbors, knn.neighbors);
    }

    #[test]
    fn a_detourable_edge_is_pruned_before_a_direct_one() {
        // Row 0's list: 1, 2, 3. Row 1 lists 3 first: 0→1→3 detours 0→3 (max(0, 0) < 2).
        // Row 2 lists nothing of row 0's, so 0→2 has no detour and survives pruning to 2.
        let knn = graph(3, &[&[1, 2, 3], &[3, 0, 2], &[0, 1, 3], &[1, 0, 2]]);
        let mut map = vec![(NONE, 0); 16];
        let mut counts = vec![0; 3];
        detour_counts(&knn, 0, &mut map, &mut counts);
        // 0→2: routes via 1 (r_AD 0, r_DB 2: max 2 not < 1) → 0. 0→3: via 1 (max(0,0) < 2) and
        // via 2 (r_AD 1, r_DB 2: max 2 not < 2) → 1.
        assert_eq!(counts, vec![0, 0, 1]);
        let pruned = prune(&knn, 2);
        assert_eq!(pruned.row(0), &[1, 2]);
    }

    #[test]
    fn detour_counts_by_table_equal_those_by_hash() {
        // Random lists with empty slots and repeated rows, degrees 1 to 40.
        let mut rng = crate::synth::Rng::new(5);
        for d in [1usize, 2, 7, 40] {
            let n = 300;
            let neighbors: Vec<u32> = (0..n * d)
                .map(|_| match rng.next_u64() % 10 {
                    0 => NONE,
                    _ => (rng.next_u64() % n as u64) as u32,
                })
                .collect();
            let knn = Graph {
                degree: d,
                neighbors,
            };
            let table = (4 * d).next_power_of_two().max(16);
            let (mut map, mut by_hash) = (vec![(NONE, 0u32); table], vec![0u32; d]);
            let (mut rank_of, mut by_table) = (vec![RANK_ABSENT; n], vec![0u32; d + 1]);
            for a in 0..n {
                detour_counts(&knn, a, &mut map, &mut by_hash);
                detour_counts_by_table(&knn, a, &mut rank_of, &mut by_table);
                assert_eq!(by_hash[..], by_table[..d], "degree {d}, row {a}");
                assert!(
                    rank_of.iter().all(|&r| r == RANK_ABSENT),
                    "table left dirty"
                );
            }
        }
    }

    #[test]
    fn reverse_edges_keep_each_rows_first_in_edges_by_rank_then_row_in_any_split() {
        // Random graphs with empty slots and hub rows that more than `d` rows point at.
        let mut rng = crate::synth::Rng::new(11);
        for (n, d) in [(1usize, 3usize), (50, 1), (300, 4), (9000, 5)] {
            let neighbors: Vec<u32> = (0..n * d)
                .map(|_| match rng.next_u64() % 10 {
                    0 => NONE,
                    1 => (rng.next_u64() % 3) as u32 % n as u32,
                    _ => (rng.next_u64() % n as u64) as u32,
                })
                .collect();
            let pruned = Graph {
                degree: d,
                neighbors,
            };
            let mut lists = vec![Vec::new(); n];
            for rank in 0..d {
                for a in 0..n {
                    let b = pruned.row(a)[rank];
                    if b != NONE && lists[b as usize].len() < d {
                        lists[b as usize].push(a as u32);
                    }
                }
            }
            for parts in [1, 2, 7, n + 5] {
                let reverse = reverse_edges_in(&pruned, parts);
                for (b, list) in lists.iter().enumerate() {
                    assert_eq!(
                        reverse.row(b),
                        &list[..],
                        "{n} rows, degree {d}, {parts} parts, row {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn merge_keeps_the_protected_half_then_reverse_edges_without_duplicates() {
        let pruned = graph(
            4,
            &[
                &[1, 2, 3, 4],
                &[0, 2, 3, 4],
                &[0, 1, 3, 4],
                &[0, 1, 2, 4],
                &[0, 1, 2, 3],
            ],
        );
        let rev = vec![vec![3, 2, 4], vec![], vec![], vec![], vec![]];
        let merged = merge(&pruned, &Reverse::from_lists(&rev));
        assert_eq!(merged.row(0), &[1, 2, 3, 4]);
        let rev = vec![vec![4, 1], vec![], vec![], vec![], vec![]];
        let pruned = graph(
            4,
            &[
                &[1, 2, 3, 0],
                &[0, 2, 3, 4],
                &[0, 1, 3, 4],
                &[0, 1, 2, 4],
                &[0, 1, 2, 3],
            ],
        );
        // Self edges are dropped; the reverse edge 4 enters right after the protected half.
        assert_eq!(
            merge(&pruned, &Reverse::from_lists(&rev)).row(0)[..3],
            [1, 2, 4]
        );
    }

    #[test]
    fn the_check_before_the_walk_tells_whether_every_row_is_reached() {
        // 0 → 1 → 2 → 0 and 3 ↔ 4: rows 3 and 4 are an island.
        let mut g = graph(1, &[&[1], &[2], &[0], &[4], &[3]]);
        assert!(!reaches_every_row(&g, 0));
        assert!(!reaches_every_row(&g, 3));
        assert!(!reaches_every_row(&g, 5));
        // 2 → 3 joins it.
        g.degree = 2;
        g.neighbors = vec![1, NONE, 2, NONE, 0, 3, 4, NONE, 3, NONE];
        assert!(reaches_every_row(&g, 0));
        assert!(!reaches_every_row(&g, 3));
        assert!(reaches_every_row(&graph(4, &[]), 0));
    }

    #[test]
    fn connectivity_reaches_an_island() {
        // Rows 2 and 3 only point at each other; nothing points at them.
        let mut g = graph(2, &[&[1, 1], &[0, 0], &[3, 3], &[2, 2]]);
        for row in g.neighbors.chunks_mut(2) {
            row[1] = NONE;
        }
        let knn = graph(2, &[&[1, 2], &[0, 2], &[1, 3], &[2, 1]]);
        let data = ndarray::Array2::<f32>::from_shape_fn((4, 2), |(i, j)| (i * 2 + j) as f32);
        let norms = crate::metric::squared_norms(data.view());
        let (entries, rewired) =
            guarantee_connectivity(&mut g, &knn, 0, data.view(), &norms, Metric::L2);
        assert!(reachable(&g, &entries).iter().all(|&s| s));
        assert!(rewired >= 1 || entries.len() > 1);
    }

    #[test]
    fn connectivity_links_every_island_once_from_one_entry_point() {
        // 40 clusters of 20 rows, far apart on a line: every kNN list stays in its cluster, so
        // each cluster is an island. Each needs an in-edge (a second one where the first row
        // linked does not reach its whole cluster: the graph is directed), and the edges given
        // up for them must never cut off a row reached before, so the entry point stays alone.
        let (clusters, size, deg) = (40usize, 20usize, 6usize);
        let n = clusters * size;
        let mut rng = crate::synth::Rng::new(7);
        let data = ndarray::Array2::<f32>::from_shape_fn((n, 2), |(i, j)| {
            let centre = if j == 0 {
                (i / size) as f32 * 100.0
            } else {
                0.0
            };
            centre + rng.below(1000) as f32 / 100.0
        });
        let norms = crate::metric::squared_norms(data.view());
        let dist = |a: usize, b: usize| {
            let (x, y) = (data.row(a), data.row(b));
            (x[0] - y[0]).powi(2) + (x[1] - y[1]).powi(2)
        };
        let mut knn = Vec::with_capacity(n * deg);
        for a in 0..n {
            let c = a / size;
            let mut others: Vec<usize> = (c * size..(c + 1) * size).filter(|&b| b != a).collect();
            others.sort_by(|&x, &y| dist(a, x).total_cmp(&dist(a, y)).then(x.cmp(&y)));
            knn.extend(others[..deg].iter().map(|&b| b as u32));
        }
        let knn = Graph {
            degree: deg,
            neighbors: knn,
        };
        let mut g = knn.clone();
        let (entries, rewired) =
            guarantee_connectivity(&mut g, &knn, 0, data.view(), &norms, Metric::L2);
        assert_eq!(entries, vec![0]);
        assert!((clusters - 1..2 * clusters).contains(&rewired), "{rewired}");
        assert!(reachable(&g, &entries).iter().all(|&s| s));
        for (a, row) in g.neighbors.chunks(deg).enumerate() {
            assert!(
                row.iter().all(|&v| v != NONE && v as usize != a),
                "row {a}: {row:?}"
            );
        }
    }
}
