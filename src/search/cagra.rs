//! CAGRA beam search on CPU (the single-CTA search of Ootomo et al., ICDE 2024, one query per
//! thread instead of one per thread block).
//!
//! Per query:
//! 1. **Seeds.** The entry points plus `itopk_size + search_width · graph_degree` pseudo-random
//!    rows (the same rows for every query, from a fixed hash, as cuVS draws them) are scored
//!    and the best `itopk_size` form the internal top-k list (*itopk*), sorted by score.
//! 2. **Expand.** The best `search_width` rows of itopk not yet expanded become parents; each
//!    parent's `graph_degree` out-edges are candidates. A candidate already seen (the visited
//!    set: an open-addressing hash sized to the whole search, at most half full) is skipped;
//!    the rest are scored with SIMD dot products ([`crate::distance`]), their rows prefetched
//!    first.
//! 3. **Merge.** Candidates are sorted and merged into itopk, keeping the best `itopk_size`;
//!    the out-edges of each row entering it are prefetched (it may be a parent soon).
//! 4. Repeat 2–3 until every row in itopk has been expanded or `max_iterations` expansions ran;
//!    the first `k` rows of itopk are the answer (ties to the smaller row).
//!
//! Where the index has 8-bit codes of its rows ([`crate::index::sq8`]), steps 1–3 score codes
//! (a quarter of the bytes per row, so four times as many rows stay in cache; this search
//! waits on memory) and itopk is re-ranked by exact distance before the first `k` are taken.
//!
//! `max_iterations = 0` means automatic, as in cuVS: `itopk_size / search_width` plus the hops
//! a graph of this degree needs to span N rows, `⌈log_{max(2, degree/2)} N⌉`.
//!
//! Scores are ranking scores ([`crate::Metric`]): `‖x‖² − 2q·x` for L2, `−q·x` otherwise.

use super::{SearchResults, NO_NEIGHBOR};
use crate::backend::Queries;
use crate::distance::{prefetch, ranking_score};
use crate::index::cagra::hierarchy::HierarchyView;
use crate::index::sq8::{Sq8Query, Sq8View};
use crate::{Error, Metric, Result};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// cuVS's defaults.
pub const DEFAULT_ITOPK_SIZE: usize = 64;
pub const DEFAULT_SEARCH_WIDTH: usize = 1;

/// Marks an itopk entry whose out-edges were expanded.
const EXPLORED: u32 = 1 << 31;
const EMPTY: u32 = u32::MAX;

/// Beam-search knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CagraSearchParams {
    /// Length of the internal top-k list (≥ k; larger: higher recall, slower).
    pub itopk_size: usize,
    /// Parents expanded per iteration.
    pub search_width: usize,
    /// Most expansions per query; 0 = automatic (see the module docs).
    pub max_iterations: usize,
}

impl Default for CagraSearchParams {
    fn default() -> Self {
        CagraSearchParams {
            itopk_size: DEFAULT_ITOPK_SIZE,
            search_width: DEFAULT_SEARCH_WIDTH,
            max_iterations: 0,
        }
    }
}

/// A CAGRA index viewed in place.
#[derive(Debug, Clone, Copy)]
pub struct CagraIndex<'a> {
    pub metric: Metric,
    /// `[n, dim]`.
    pub vectors: ArrayView2<'a, f32>,
    /// `[n]` squared norms (L2; empty otherwise).
    pub sq_norms: &'a [f32],
    /// `[n, degree]`.
    pub graph: &'a [u32],
    pub degree: usize,
    /// `[m]`, m ≥ 1.
    pub entry_points: &'a [u32],
    /// Seed with pseudo-random rows too (when there are no upper levels); off to reach only
    /// what the entry points reach (the build's connectivity step).
    pub random_seeds: bool,
    /// Upper levels: when present, the search starts where a greedy descent through them ends
    /// instead of at random rows.
    pub hierarchy: Option<HierarchyView<'a>>,
    /// 8-bit codes of `vectors`: when present the CPU search walks the graph scoring codes and
    /// re-ranks its final list by exact distance (the GPU search walks on `vectors`).
    pub codes: Option<Sq8View<'a>>,
}

/// Work done by a batch: how many scores were computed, over all queries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SearchStats {
    pub distances: u64,
    pub iterations: u64,
}

/// Per-thread scratch, reused across queries.
struct Scratch {
    visited: Vec<u32>,
    itopk: Vec<(f32, u32)>,
    merged: Vec<(f32, u32)>,
    cands: Vec<(f32, u32)>,
    fresh: Vec<u32>,
    coded: Sq8Query,
}

#[inline]
fn hash(v: u32, mask: usize) -> usize {
    (v.wrapping_mul(0x9E37_79B9) >> 3) as usize & mask
}

/// Inserts `v`; false when it was already there.
#[inline]
fn visit(table: &mut [u32], v: u32) -> bool {
    let mask = table.len() - 1;
    let mut s = hash(v, mask);
    loop {
        let t = table[s];
        if t == v {
            return false;
        }
        if t == EMPTY {
            table[s] = v;
            return true;
        }
        s = (s + 1) & mask;
    }
}

/// xorshift64*, the seed sequence's hash.
#[inline]
fn seed_row(i: u64, n: usize) -> u32 {
    let mut u = i ^ 0x0012_8394;
    u ^= u >> 12;
    u ^= u << 25;
    u ^= u >> 27;
    (u.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as u32
}

impl CagraIndex<'_> {
    fn rows(&self) -> usize {
        self.vectors.nrows()
    }

    /// The effective iteration cap for `p`.
    pub fn max_iterations(&self, p: &CagraSearchParams) -> usize {
        if p.max_iterations > 0 {
            return p.max_iterations;
        }
        let base = (self.degree / 2).max(2) as f64;
        let hops = ((self.rows().max(2) as f64).ln() / base.ln()).ceil() as usize;
        p.itopk_size / p.search_width.max(1) + hops
    }

    /// Whether the search starts with a descent through upper levels.
    pub fn descends(&self) -> bool {
        self.hierarchy.is_some_and(|h| !h.rows.is_empty())
    }

    /// The rows every query scores after the descent: the entry points, then (without upper
    /// levels, when `random_seeds`) `itopk_size + search_width · degree` fixed pseudo-random
    /// rows.
    pub fn seed_rows(&self, p: &CagraSearchParams) -> Vec<u32> {
        let fixed = match self.random_seeds && !self.descends() {
            true => p.itopk_size + p.search_width * self.degree,
            false => 0,
        };
        let n = self.rows();
        let mut rows = self.entry_points.to_vec();
        rows.extend((0..fixed as u64).map(|i| seed_row(i, n)));
        rows
    }

    /// Checks `p` against `k` and the index.
    pub fn check(&self, k: usize, p: &CagraSearchParams) -> Result<()> {
        if p.search_width == 0 || p.itopk_size == 0 {
            return Err(Error::param(format!(
                "itopk_size = {} and search_width = {} must be at least 1",
                p.itopk_size, p.search_width
            )));
        }
        if p.itopk_size < k {
            return Err(Error::param(format!(
                "itopk_size = {} must be at least k = {k}",
                p.itopk_size
            )));
        }
        if p.itopk_size > 4096 || p.search_width > 256 {
            return Err(Error::param(format!(
                "itopk_size = {} (at most 4096) or search_width = {} (at most 256) is too large",
                p.itopk_size, p.search_width
            )));
        }
        Ok(())
    }

    /// The `k` nearest rows of each prepared query `[nq, dim]` (normalised for cosine).
    pub fn search(
        &self,
        queries: ArrayView2<'_, f32>,
        k: usize,
        p: &CagraSearchParams,
    ) -> Result<(SearchResults, SearchStats)> {
        self.check(k, p)?;
        let nq = queries.nrows();
        let q = queries.as_standard_layout();
        let qs = q.as_slice().unwrap_or(&[]);
        let dim = self.vectors.ncols();
        let q_norms = if self.metric == Metric::L2 {
            crate::metric::squared_norms(q.view())
        } else {
            Vec::new()
        };
        let max_iter = self.max_iterations(p);
        let seed_rows = self.seed_rows(p);
        let seeds = p.itopk_size + p.search_width * self.degree;
        let descent = self.hierarchy.map_or(0, |h| {
            HierarchyView::max_expansions(h.level1_width(p.itopk_size, self.degree)) * h.m
                + h.levels()
                + 1
        });
        let capacity = 2
            * (seeds + descent + self.entry_points.len() + max_iter * p.search_width * self.degree);
        let table = capacity.next_power_of_two();
        let mut rows = Array2::<u64>::from_elem((nq, k), NO_NEIGHBOR);
        let mut distances = Array2::<f32>::from_elem((nq, k), f32::NAN);
        let rows_out = rows.as_slice_mut().unwrap_or(&mut []);
        let dist_out = distances.as_slice_mut().unwrap_or(&mut []);
        let stats = rows_out
            .par_chunks_mut(k)
            .zip(dist_out.par_chunks_mut(k))
            .enumerate()
            .map_init(
                || Scratch {
                    visited: vec![EMPTY; table],
                    itopk: Vec::with_capacity(p.itopk_size),
                    merged: Vec::with_capacity(p.itopk_size),
                    cands: Vec::with_capacity(seeds),
                    fresh: Vec::with_capacity(self.degree * p.search_width),
                    coded: Sq8Query::default(),
                },
                |s, (i, (r_out, d_out))| {
                    let query = &qs[i * dim..(i + 1) * dim];
                    let st = self.search_one(query, p, max_iter, &seed_rows, s);
                    let offset = Queries::offset(self.metric, &q_norms, i);
                    for (j, &(score, row)) in s.itopk.iter().take(k).enumerate() {
                        r_out[j] = (row & !EXPLORED) as u64;
                        d_out[j] = self.metric.report(score + offset);
                    }
                    st
                },
            )
            .reduce(SearchStats::default, |a, b| SearchStats {
                distances: a.distances + b.distances,
                iterations: a.iterations + b.iterations,
            });
        Ok((SearchResults { rows, distances }, stats))
    }

    #[inline]
    fn score(&self, q: &[f32], row: u32) -> f32 {
        let dim = self.vectors.ncols();
        let flat = self.vectors.as_slice().unwrap_or(&[]);
        let r = row as usize;
        let norm = self.sq_norms.get(r).copied().unwrap_or(0.0);
        ranking_score(self.metric, q, &flat[r * dim..(r + 1) * dim], norm)
    }

    /// One query's beam search; leaves the final itopk (sorted) in `s.itopk`.
    fn search_one(
        &self,
        q: &[f32],
        p: &CagraSearchParams,
        max_iter: usize,
        seed_rows: &[u32],
        s: &mut Scratch,
    ) -> SearchStats {
        let n = self.rows();
        let dim = self.vectors.ncols();
        let flat = self.vectors.as_slice().unwrap_or(&[]);
        let order = |a: &(f32, u32), b: &(f32, u32)| {
            a.0.total_cmp(&b.0)
                .then((a.1 & !EXPLORED).cmp(&(b.1 & !EXPLORED)))
        };
        s.visited.fill(EMPTY);
        s.cands.clear();
        let mut stats = SearchStats::default();
        if let Some(c) = &self.codes {
            s.coded.prepare(c, self.metric, q);
        }
        let coded = &s.coded;
        let walk_score = |row: u32| match &self.codes {
            Some(c) => coded.score(c, self.metric, row as usize),
            None => self.score(q, row),
        };
        let (walk_rows, row_bytes): (&[u8], usize) = match &self.codes {
            Some(c) => (c.codes, dim),
            None => (bytemuck::cast_slice(flat), dim * 4),
        };
        // 1. Seeds: where the descent through the upper levels ends, else pseudo-random rows.
        if let Some(h) = &self.hierarchy {
            let score = |row: u32| walk_score(row);
            let table = &mut s.visited;
            let mut seen = |row: u32| visit(table, row);
            let fetch = |row: u32| {
                let at = row as usize * row_bytes;
                prefetch(&walk_rows[at..at + row_bytes], row_bytes);
            };
            let width = h.level1_width(p.itopk_size, self.degree);
            let found = h.descend(&score, &mut seen, &fetch, width, &mut s.merged);
            stats.distances += found as u64;
            s.cands.extend_from_slice(&s.merged);
        }
        let from_descent = s.cands.len();
        for &row in seed_rows {
            if (row as usize) < n && visit(&mut s.visited, row) {
                s.cands.push((walk_score(row), row));
            }
        }
        stats.distances += (s.cands.len() - from_descent) as u64;
        // Every seed is distinct: each passed the visited set once.
        s.cands.sort_unstable_by(order);
        s.cands.truncate(p.itopk_size);
        s.itopk.clear();
        s.itopk.extend_from_slice(&s.cands);
        // Every row of itopk before `next` has been explored.
        let mut next = 0;
        for _ in 0..max_iter {
            // 2. Parents: the best unexplored rows.
            s.fresh.clear();
            let mut parents = 0;
            for e in s.itopk[next..].iter_mut() {
                if parents == p.search_width {
                    break;
                }
                next += 1;
                if e.1 & EXPLORED == 0 {
                    e.1 |= EXPLORED;
                    parents += 1;
                    let r = e.1 as usize & !(EXPLORED as usize);
                    for &v in &self.graph[r * self.degree..(r + 1) * self.degree] {
                        if (v as usize) < n && visit(&mut s.visited, v) {
                            let at = v as usize * row_bytes;
                            prefetch(&walk_rows[at..at + row_bytes], row_bytes);
                            if self.codes.is_none() && !self.sq_norms.is_empty() {
                                prefetch(&self.sq_norms[v as usize..], 4);
                            }
                            s.fresh.push(v);
                        }
                    }
                }
            }
            if parents == 0 {
                break;
            }
            stats.iterations += 1;
            s.cands.clear();
            let worst = if s.itopk.len() == p.itopk_size {
                s.itopk.last().map_or(f32::INFINITY, |e| e.0)
            } else {
                f32::INFINITY
            };
            for &v in &s.fresh {
                let sc = walk_score(v);
                if sc <= worst {
                    s.cands.push((sc, v));
                }
            }
            stats.distances += s.fresh.len() as u64;
            if s.cands.is_empty() {
                continue;
            }
            // 3. Merge. The explored prefix ends at the first candidate taken or the first
            // row taken from beyond the old prefix.
            s.cands.sort_unstable_by(order);
            s.merged.clear();
            let (mut a, mut b) = (0, 0);
            let mut prefix = None;
            while s.merged.len() < p.itopk_size && (a < s.itopk.len() || b < s.cands.len()) {
                let take_a = b == s.cands.len()
                    || (a < s.itopk.len() && order(&s.itopk[a], &s.cands[b]).is_le());
                if prefix.is_none() && (!take_a || a >= next) {
                    prefix = Some(s.merged.len());
                }
                if take_a {
                    s.merged.push(s.itopk[a]);
                    a += 1;
                } else {
                    // A row entering the list may be expanded soon: fetch its out-edges.
                    let r = s.cands[b].1 as usize;
                    prefetch(&self.graph[r * self.degree..], self.degree * 4);
                    s.merged.push(s.cands[b]);
                    b += 1;
                }
            }
            next = prefix.unwrap_or(s.merged.len());
            std::mem::swap(&mut s.itopk, &mut s.merged);
        }
        // 4. Re-rank what the walk on codes kept by exact distance.
        if self.codes.is_some() {
            // The rows are far apart in memory: each is asked for a few rows ahead.
            const AHEAD: usize = 4;
            for i in 0..s.itopk.len() {
                if let Some(e) = s.itopk.get(i + AHEAD) {
                    let r = (e.1 & !EXPLORED) as usize;
                    prefetch(&flat[r * dim..(r + 1) * dim], dim * 4);
                }
                let e = &mut s.itopk[i];
                e.0 = self.score(q, e.1 & !EXPLORED);
            }
            stats.distances += s.itopk.len() as u64;
            s.itopk.sort_unstable_by(order);
        }
        stats
    }
}
