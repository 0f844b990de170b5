//! CAGRA search on the GPU: the index is copied to device memory once ([`load`]), then each
//! batch of queries is searched by `cagra_search` (kernels/cagra_search.cu), one thread block
//! per query, the same search as the CPU's [`CagraIndex::search`] (its oracle).
//!
//! Per block, shared memory holds the query, the sort buffer (the internal list, then one
//! iteration's candidates, padded to a power of two) and the visited set; its size is checked
//! against the 48 KiB a block may use without opting in, which bounds `itopk_size` (512),
//! `search_width · graph_degree` (1024) and the dimension.

use super::{contiguous, gpu_err, grown, raw, CudaBackend, NO_ROW, QUERY_BATCH};
use crate::backend::{Loaded, Queries};
use crate::metric::squared_norms;
use crate::search::cagra::{CagraIndex, CagraSearchParams, SearchStats};
use crate::search::{SearchResults, NO_NEIGHBOR};
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use ndarray::{Array2, ArrayView2};

/// Longest internal list (`itopk_size`) the kernel keeps.
pub const MAX_GPU_ITOPK: usize = 512;
/// Most candidates one iteration scores: `search_width · graph_degree`, and the upper levels'
/// neighbours per row.
pub const MAX_GPU_CANDIDATES: usize = 1024;
/// `SEARCH_THREADS` in kernels/cagra_search.cu.
const SEARCH_THREADS: u32 = 256;
/// Smallest visited set: large enough that a default search rarely refills it.
const MIN_TABLE: usize = 4096;
/// Shared memory a block may use without opting in.
const MAX_SHARED: usize = 48 << 10;
/// The kernel's static shared memory (`fill`, `scored`, `shared_count`, `ep`, `ep_score`),
/// which the launch's limit counts with the dynamic part.
const STATIC_SHARED: usize = 5 * 4;

/// A CAGRA index in device memory.
struct OnDevice {
    n: usize,
    dim: usize,
    degree: usize,
    vectors: CudaSlice<f32>,
    sq_norms: Option<CudaSlice<f32>>,
    graph: CudaSlice<u32>,
    /// Upper levels: rows, graph, each level's start in the graph.
    upper: Option<(CudaSlice<u32>, CudaSlice<u32>, CudaSlice<i64>)>,
}

/// The kernel's launch shape for one search setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    /// Sort buffer length: the list plus one iteration's candidates, a power of two.
    pub p: usize,
    /// Candidate slots, a power of two (they are sorted on their own, then merged).
    pub cands_p2: usize,
    pub table: usize,
    /// Lanes scoring one row.
    pub team: usize,
    pub shared_bytes: usize,
}

/// Sizes the kernel's shared memory for `list` entries and `cands` candidates per iteration
/// (`parents` parent slots) in `dim` dimensions; an error names what is too large. Public for
/// the host run of the kernel (tests/it/kernels.rs).
pub fn layout(dim: usize, list: usize, cands: usize, parents: usize) -> Result<Layout> {
    if list > MAX_GPU_ITOPK || cands > MAX_GPU_CANDIDATES {
        return Err(Error::Gpu(format!(
            "CAGRA search on the GPU keeps itopk_size ≤ {MAX_GPU_ITOPK} and scores ≤ {MAX_GPU_CANDIDATES} candidates per iteration (search_width × graph_degree); asked for {list} and {cands}"
        )));
    }
    let cands_p2 = cands.next_power_of_two();
    let p = (list + cands_p2).next_power_of_two();
    let table = (2 * (list + cands)).next_power_of_two().max(MIN_TABLE);
    let team = dim.div_ceil(16).next_power_of_two().clamp(2, 32);
    let shared_bytes = (dim.div_ceil(4) * 4 + 2 * p + 2 * list + table + parents.max(1)) * 4;
    if shared_bytes + STATIC_SHARED > MAX_SHARED {
        return Err(Error::Gpu(format!(
            "CAGRA search on the GPU: {dim} dimensions with itopk_size {list} need {} bytes of shared memory per query, more than {MAX_SHARED}; search on the CPU",
            shared_bytes + STATIC_SHARED
        )));
    }
    Ok(Layout {
        p,
        cands_p2,
        table,
        team,
        shared_bytes,
    })
}

/// Copies `index` to the GPU.
pub(super) fn load(backend: &CudaBackend, index: &CagraIndex<'_>) -> Result<Loaded> {
    let (n, dim) = index.vectors.dim();
    if n >= 1 << 31 {
        return Err(Error::Gpu(format!(
            "CAGRA search on the GPU handles fewer than 2^31 rows; the index has {n}"
        )));
    }
    let dev = backend.lock()?;
    let stream = dev.stream.clone();
    let upper_len = index.hierarchy.map_or(0, |h| h.rows.len() + h.graph.len());
    let words = n * dim + index.sq_norms.len() + index.graph.len() + upper_len;
    super::index_fits(&stream, 4 * words)?;
    let err = |what: &str| {
        let what = format!("copying the index's {what} to the device");
        move |e| gpu_err(&what, e)
    };
    let vectors = stream
        .clone_htod(contiguous(&index.vectors).as_ref())
        .map_err(err("vectors"))?;
    let sq_norms = match index.sq_norms.is_empty() {
        true => None,
        false => Some(stream.clone_htod(index.sq_norms).map_err(err("norms"))?),
    };
    let graph = stream.clone_htod(index.graph).map_err(err("graph"))?;
    let upper = match index
        .hierarchy
        .filter(|h| h.levels() > 0 && !h.rows.is_empty())
    {
        None => None,
        Some(h) => {
            let offsets = h.level_offsets();
            Some((
                stream.clone_htod(h.rows).map_err(err("upper levels"))?,
                stream.clone_htod(h.graph).map_err(err("upper levels"))?,
                stream.clone_htod(&offsets).map_err(err("upper levels"))?,
            ))
        }
    };
    stream
        .synchronize()
        .map_err(|e| gpu_err("copying the index to the device", e))?;
    Ok(Box::new(OnDevice {
        n,
        dim,
        degree: index.degree,
        vectors,
        sq_norms,
        graph,
        upper,
    }))
}

/// Searches prepared `queries` with the copy [`load`] made of `index`.
pub(super) fn search(
    backend: &CudaBackend,
    index: &CagraIndex<'_>,
    loaded: Option<&Loaded>,
    queries: ArrayView2<'_, f32>,
    k: usize,
    p: &CagraSearchParams,
) -> Result<(SearchResults, SearchStats)> {
    index.check(k, p)?;
    let on = loaded
        .and_then(|l| l.downcast_ref::<OnDevice>())
        .ok_or_else(|| Error::Gpu("the CAGRA index is not loaded on this GPU".into()))?;
    let (n, dim) = index.vectors.dim();
    if (on.n, on.dim, on.degree) != (n, dim, index.degree) || queries.ncols() != dim {
        return Err(Error::Gpu(
            "the CAGRA index loaded on the GPU is not the one searched".into(),
        ));
    }
    let hierarchy = index.hierarchy.filter(|_| on.upper.is_some());
    let up_m = hierarchy.map_or(0, |h| h.m);
    let cands = (p.search_width * index.degree).max(up_m).max(1);
    let shape = layout(dim, p.itopk_size, cands, p.search_width)?;
    let max_iter = index.max_iterations(p).min(i32::MAX as usize);
    let seeds = index.seed_rows(p);
    let nq = queries.nrows();
    let q_host = contiguous(&queries);
    let q_norms = match index.sq_norms.is_empty() {
        true => Vec::new(),
        false => squared_norms(queries),
    };
    let mut rows = Array2::<u64>::from_elem((nq, k), NO_NEIGHBOR);
    let mut distances = Array2::<f32>::from_elem((nq, k), f32::NAN);
    let mut dev = backend.lock()?;
    let stream = dev.stream.clone();
    let seeds_dev = stream
        .clone_htod(&[seeds.as_slice(), &[NO_ROW]].concat())
        .map_err(|e| gpu_err("copying the seed rows", e))?;
    let mut stats_dev = stream
        .clone_htod(&[0u64; 2])
        .map_err(|e| gpu_err("copying to the device", e))?;
    let none = 0u64;
    let norms_ptr = on.sq_norms.as_ref().map_or(none, |b| raw(&stream, b));
    let (up_rows, up_graph, up_offsets) = on.upper.as_ref().map_or((none, none, none), |u| {
        (raw(&stream, &u.0), raw(&stream, &u.1), raw(&stream, &u.2))
    });
    let levels = hierarchy.map_or(0, |h| h.levels()) as i32;
    let up_nodes = hierarchy.map_or(0, |h| h.rows.len()) as u32;
    let up_list = hierarchy.map_or(1, |h| h.level1_width(p.itopk_size, index.degree)) as i32;
    let (n_u, dim_i, degree_i) = (n as u32, dim as i32, index.degree as i32);
    let (list_i, width_i, iter_i, k_i) = (
        p.itopk_size as i32,
        p.search_width as i32,
        max_iter as i32,
        k as i32,
    );
    let (p_i, c2_i, table_i, team_i, seeds_i, up_m_i) = (
        shape.p as i32,
        shape.cands_p2 as i32,
        shape.table as i32,
        shape.team as i32,
        seeds.len() as i32,
        up_m as i32,
    );
    let mut b_rows = Vec::new();
    let mut b_scores = Vec::new();
    for q0 in (0..nq).step_by(QUERY_BATCH) {
        let q1 = (q0 + QUERY_BATCH).min(nq);
        let b = q1 - q0;
        let q_ptr = dev.upload(|s| &mut s.queries, &q_host[q0 * dim..q1 * dim])?;
        let os_ptr = raw(&stream, grown(&stream, &mut dev.scratch.out_score, b * k)?);
        let or_ptr = raw(&stream, grown(&stream, &mut dev.scratch.out_col, b * k)?);
        let cfg = LaunchConfig {
            grid_dim: (b as u32, 1, 1),
            block_dim: (SEARCH_THREADS, 1, 1),
            shared_mem_bytes: shape.shared_bytes as u32,
        };
        let mut launch = stream.launch_builder(&dev.cagra_search);
        launch
            .arg(&on.vectors)
            .arg(&norms_ptr)
            .arg(&on.graph)
            .arg(&n_u)
            .arg(&dim_i)
            .arg(&degree_i)
            .arg(&q_ptr)
            .arg(&seeds_dev)
            .arg(&seeds_i)
            .arg(&up_rows)
            .arg(&up_graph)
            .arg(&up_offsets)
            .arg(&levels)
            .arg(&up_m_i)
            .arg(&up_nodes)
            .arg(&up_list)
            .arg(&list_i)
            .arg(&width_i)
            .arg(&iter_i)
            .arg(&k_i)
            .arg(&p_i)
            .arg(&c2_i)
            .arg(&table_i)
            .arg(&team_i)
            .arg(&os_ptr)
            .arg(&or_ptr)
            .arg(&mut stats_dev);
        // SAFETY: arguments match cagra_search's signature; the index buffers hold n·dim
        // vectors, n norms (L2) and n·degree edges, the upper levels as their tensors say,
        // queries b·dim, outputs b·k; shared memory is sized by `layout` as the kernel lays
        // it out.
        unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching cagra_search", e))?;
        b_rows.resize(b * k, 0u32);
        b_scores.resize(b * k, 0f32);
        dev.collect(&mut b_rows, &mut b_scores, "cagra_search")?;
        for (i, (r, s)) in b_rows.chunks(k).zip(b_scores.chunks(k)).enumerate() {
            let qi = q0 + i;
            let offset = Queries::offset(index.metric, &q_norms, qi);
            for (j, (&row, &score)) in r.iter().zip(s).enumerate() {
                if row != NO_ROW {
                    rows[[qi, j]] = row as u64;
                    distances[[qi, j]] = index.metric.report(score + offset);
                }
            }
        }
    }
    let stats = stream
        .clone_dtoh(&stats_dev)
        .map_err(|e| gpu_err("copying the search statistics", e))?;
    Ok((
        SearchResults { rows, distances },
        SearchStats {
            distances: stats[0],
            iterations: stats[1],
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_layout_fits_defaults_and_refuses_what_does_not_fit() {
        // Defaults: 128 dims, itopk 64, degree 32 (upper levels M = 16).
        let l = layout(128, 64, 32, 1).unwrap();
        assert_eq!((l.p, l.cands_p2, l.table, l.team), (128, 32, 4096, 8));
        assert_eq!(l.shared_bytes, (128 + 256 + 128 + 4096 + 1) * 4);
        // Candidates are padded to a power of two before the buffer is: 100 + 128 → 256.
        let l = layout(128, 100, 96, 3).unwrap();
        assert_eq!((l.p, l.cands_p2), (256, 128));
        // The largest setting: 512 + 1024 → 2048 slots, table 4096.
        let l = layout(128, 512, 1024, 16).unwrap();
        assert_eq!((l.p, l.table), (2048, 4096));
        assert!(l.shared_bytes + STATIC_SHARED <= MAX_SHARED);
        assert_eq!(layout(3, 16, 16, 1).unwrap().team, 2);
        assert_eq!(layout(4096, 64, 64, 1).unwrap().team, 32);
        assert!(layout(128, 513, 32, 1).is_err());
        assert!(layout(128, 64, 1025, 1).is_err());
        assert!(layout(8192, 64, 32, 1).is_err());
        // The static words count too: 49,136 bytes of dynamic shared memory plus 20 static are
        // over 48 KiB; 49,120 plus 20 are not.
        assert_eq!(layout(7796, 64, 32, 4).unwrap().shared_bytes, 49_120);
        assert!(layout(7800, 64, 32, 4).is_err());
    }
}
