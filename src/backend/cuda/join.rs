//! The CAGRA ivf builder's join on the GPU ([`Backend::join_lists`](crate::backend::Backend)).
//!
//! The rows, put in list order, are copied to the device once, with each list's columns (the
//! rows of its probed lists, side by side) as positions among them. Each list's score tile —
//! the same `α·Q·Xᵀ` as `knn_block` — is written in fp32 by `join_scores` (kernels/cagra.cu),
//! one launch for a whole group of lists (a list's rows against a few hundred columns per
//! probed list are products too small for cuBLAS to fill the GPU, one call each); with
//! `--gpu-precision tf32`/`fp16` by one cuBLAS product per probed list (`ldc` = the tile's
//! width). `select_topk` then keeps each row's `k + 1` best columns, ordered by (score,
//! column) as the CPU's [`TopK`](crate::TopK) orders (score, position). Lists (split by rows
//! when one is too wide) go in groups whose tiles fit the scratch buffer; a group is one batch
//! of launches and one copy back, instead of one round trip per list.
//!
//! The join's neighbour-of-neighbour pass ([`Backend::refine_graph`](crate::backend::Backend))
//! is `refine_graph` (kernels/cagra.cu), one block per row: the CPU's candidates, scores summed
//! in the CPU's order and the CPU's (score, row) order, so the lists are the CPU's.

use super::{grown, raw, CudaBackend, MAX_GPU_K, NO_ROW};
use crate::backend::ListJoin;
use crate::index::cagra::Graph;
use crate::laps::span;
use crate::{Error, Metric, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use ndarray::ArrayView2;
use rayon::prelude::*;

/// Threads per block of `refine_graph` (`REFINE_THREADS` in kernels/cagra.cu).
const REFINE_THREADS: u32 = 128;
/// Most shared memory `refine_graph` may ask for: 48 KiB, 12 bytes per candidate slot.
const REFINE_MAX_SLOTS: usize = 4096;

/// Shared-memory slots `refine_graph` sorts per row: a power of two ≥ `fan² + k` (at least 32).
pub fn refine_slots(k: usize, fan: usize) -> usize {
    let fan = fan.min(k);
    (fan * fan + k).next_power_of_two().max(32)
}

/// One neighbour-of-neighbour pass over `graph` on the device, as
/// [`knn_graph::refine_in_order`](crate::index::cagra::knn_graph::refine_in_order) without
/// reverse lists (blocks take the rows in `order`, a permutation, when it is given). Returns
/// `false`, leaving `graph` as it was, where the rows, norms and both graphs would take more
/// than half the free device memory or a row's candidates more than the shared memory (the
/// caller then refines on the host).
pub(super) fn refine_graph(
    backend: &CudaBackend,
    data: ArrayView2<'_, f32>,
    norms: &[f32],
    metric: Metric,
    graph: &mut Graph,
    fan: usize,
    order: &[u32],
) -> Result<bool> {
    let (n, dim) = data.dim();
    let k = graph.degree;
    let fan = fan.min(k);
    let cap = refine_slots(k, fan);
    if n == 0 || k == 0 || fan == 0 {
        return Ok(true);
    }
    if cap > REFINE_MAX_SLOTS || n >= NO_ROW as usize || graph.neighbors.len() != n * k {
        backend.slower(format!(
            "the neighbour-of-neighbour pass ran on the CPU: degree {k} with fan {fan} is more \
             than the kernel takes"
        ));
        return Ok(false);
    }
    let l2 = metric == Metric::L2;
    let x_host = super::contiguous(&data);
    let dev = backend.lock()?;
    let stream = dev.stream.clone();
    let ordered = crate::index::cagra::knn_graph::is_permutation(order, n);
    if !super::fits_half_free(&stream, 4 * n * (dim + 2 + 2 * k))? {
        backend.slower(
            "the neighbour-of-neighbour pass ran on the CPU: its rows and graph need more than \
             half the free device memory"
                .into(),
        );
        return Ok(false);
    }
    let copy = |what: &str, e| super::gpu_err(&format!("copying {what} to the device"), e);
    let x = stream
        .clone_htod(&*x_host)
        .map_err(|e| copy("the rows", e))?;
    let norms_dev = match l2 {
        true => Some(stream.clone_htod(norms).map_err(|e| copy("the norms", e))?),
        false => None,
    };
    let old = stream
        .clone_htod(&graph.neighbors)
        .map_err(|e| copy("the kNN graph", e))?;
    let order_dev = match ordered {
        true => Some(
            stream
                .clone_htod(order)
                .map_err(|e| copy("the row order", e))?,
        ),
        false => None,
    };
    // SAFETY: the kernel writes every one of the n·k slots (each row once: order is a
    // permutation, as the caller's partition lists are).
    let mut out = unsafe { stream.alloc::<u32>(n * k) }
        .map_err(|e| super::gpu_err("allocating device memory", e))?;
    let norms_ptr = norms_dev.as_ref().map_or(0, |b| raw(&stream, b));
    let order_ptr = order_dev.as_ref().map_or(0, |b| raw(&stream, b));
    let (dim_i, n_u, k_i, fan_i, cap_i) = (dim as i32, n as u32, k as i32, fan as i32, cap as i32);
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (REFINE_THREADS, 1, 1),
        shared_mem_bytes: (cap * 12) as u32,
    };
    let mut launch = stream.launch_builder(&dev.refine_graph);
    launch
        .arg(&x)
        .arg(&norms_ptr)
        .arg(&dim_i)
        .arg(&n_u)
        .arg(&old)
        .arg(&k_i)
        .arg(&fan_i)
        .arg(&cap_i)
        .arg(&order_ptr)
        .arg(&mut out);
    // SAFETY: arguments match refine_graph's signature; x holds n·dim floats, norms n (L2) or
    // none (null), order n rows or none (null), old and out n·k entries, and the shared memory is the cap·12 bytes the
    // kernel lays out (≤ 48 KiB).
    unsafe { launch.launch(cfg) }.map_err(|e| super::gpu_err("launching refine_graph", e))?;
    stream
        .memcpy_dtoh(&out, &mut graph.neighbors)
        .map_err(|e| super::gpu_err("copying the refined graph from the device", e))?;
    stream
        .synchronize()
        .map_err(|e| super::gpu_err("running refine_graph", e))?;
    Ok(true)
}

/// `[n, k]` neighbours by row; see the module docs.
pub(super) fn join_lists(
    backend: &CudaBackend,
    job: &ListJoin<'_>,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<Vec<u32>> {
    let (n, dim) = job.data.dim();
    let k = job.k;
    let kk = k + 1;
    if kk > MAX_GPU_K {
        return Err(Error::Gpu(format!(
            "kNN graph degree {k}: the GPU selection keeps at most {} neighbours per row",
            MAX_GPU_K - 1
        )));
    }
    if n == 0 || dim == 0 || k == 0 {
        return Ok(vec![NO_ROW; n * k]);
    }
    backend.fp16_range("the rows", &super::contiguous(&job.data), dim, 0)?;
    let (offsets, members, probes) = (job.offsets, job.members, job.probes);
    let n_lists = offsets.len() - 1;
    let size = |l: usize| offsets[l + 1] - offsets[l];
    let l2 = job.metric == Metric::L2;
    let alpha = if l2 { -2.0f32 } else { -1.0 };
    let mut col_start = vec![0usize; n_lists + 1];
    for l in 0..n_lists {
        col_start[l + 1] = col_start[l] + probes[l].iter().map(|&p| size(p)).sum::<usize>();
    }
    // In fp32 our `join_scores` writes a group's tiles in one launch, reading each column's
    // row through its position; tf32 and fp16 take cuBLAS, one product per probed list.
    let fused = backend.precision == super::Precision::Fp32;
    let cols = col_start[n_lists];
    let held =
        4 * n * dim + if l2 { 4 * cols } else { 0 } + if fused { 4 * cols } else { 0 } + 8 * n * kk;
    if !super::fits_half_free(&backend.lock()?.stream, held)? {
        // Too large to hold: each list is joined by itself, its rows and columns copied for it.
        backend.slower(
            "the kNN-graph join copied each list's rows and columns for that list: all of them \
             need more than half the free device memory"
                .into(),
        );
        return crate::index::cagra::knn_graph::join_lists(backend, job, progress);
    }
    // Rows in list order, and each list's columns (rows of its probed lists) with their norms.
    let part = span("join: rows put in list order");
    let mut sorted = vec![0f32; n * dim];
    sorted
        .par_chunks_mut(dim)
        .zip(members.par_iter())
        .for_each(|(dst, &r)| {
            for (d, s) in dst.iter_mut().zip(job.data.row(r as usize)) {
                *d = *s;
            }
        });
    // Each list's columns: their positions in `sorted`, and the rows they are.
    let col_pos: Vec<u32> = (0..n_lists)
        .flat_map(|l| {
            probes[l]
                .iter()
                .flat_map(|&p| offsets[p] as u32..offsets[p + 1] as u32)
        })
        .collect();
    let col_rows: Vec<u32> = col_pos.par_iter().map(|&p| members[p as usize]).collect();
    let col_norms: Vec<f32> = match l2 {
        true => col_rows.iter().map(|&r| job.norms[r as usize]).collect(),
        false => Vec::new(),
    };
    let mut out_col = vec![0u32; n * kk];
    drop(part);
    {
        let mut dev = backend.lock()?;
        let stream = dev.stream.clone();
        let copy = |what: &str, e| super::gpu_err(&format!("copying {what} to the device"), e);
        let part = span("join: rows copied up");
        let x = stream
            .clone_htod(&sorted)
            .map_err(|e| copy("the rows", e))?;
        let norms = l2
            .then(|| stream.clone_htod(&col_norms))
            .transpose()
            .map_err(|e| copy("the norms", e))?;
        let positions = fused
            .then(|| stream.clone_htod(&col_pos))
            .transpose()
            .map_err(|e| copy("the columns' positions", e))?;
        let x_ptr = raw(&stream, &x);
        let norms_ptr = norms.as_ref().map_or(0, |b| raw(&stream, b));
        let positions_ptr = positions.as_ref().map_or(0, |b| raw(&stream, b));
        drop(part);
        let _span = span("join: lists joined (products, selections, copies back)");
        let budget = dev.tile_bytes / 4;
        // Units of work: (list, first row, end row), in list order, so a group's rows are one
        // contiguous range of `sorted`.
        let mut units = Vec::new();
        for l in 0..n_lists {
            let width = col_start[l + 1] - col_start[l];
            if width > budget {
                return Err(Error::Gpu(format!(
                    "kNN graph: list {l} is joined against {width} rows, more than a score tile holds"
                )));
            }
            let chunk = (budget / width.max(1)).max(1);
            for r0 in (0..size(l)).step_by(chunk) {
                units.push((l, r0, (r0 + chunk).min(size(l))));
            }
        }
        let mut u0 = 0;
        while u0 < units.len() {
            let mut u1 = u0;
            let mut used = 0;
            while u1 < units.len() {
                let (l, r0, r1) = units[u1];
                let tile = (r1 - r0) * (col_start[l + 1] - col_start[l]);
                if u1 > u0 && used + tile > budget {
                    break;
                }
                used += tile;
                u1 += 1;
            }
            let g0 = offsets[units[u0].0] + units[u0].1;
            let g1 = offsets[units[u1 - 1].0] + units[u1 - 1].2;
            let s_ptr = raw(&stream, grown(&stream, &mut dev.scratch.scores, used)?);
            let os_ptr = raw(
                &stream,
                grown(&stream, &mut dev.scratch.out_score, (g1 - g0) * kk)?,
            );
            let oc_ptr = raw(
                &stream,
                grown(&stream, &mut dev.scratch.out_col, (g1 - g0) * kk)?,
            );
            if fused {
                let group: Vec<(usize, usize, usize)> = units[u0..u1]
                    .iter()
                    .map(|&(l, r0, r1)| (offsets[l] + r0, r1 - r0, l))
                    .collect();
                launch_join_scores(
                    &dev,
                    x_ptr,
                    dim,
                    positions_ptr,
                    &group,
                    &col_start,
                    alpha,
                    s_ptr,
                )?;
            }
            let mut off = 0usize;
            for &(l, r0, r1) in &units[u0..u1] {
                let width = col_start[l + 1] - col_start[l];
                let rows = r1 - r0;
                let first = offsets[l] + r0;
                if !fused {
                    // Without `join_scores`: one product per probed list into its columns.
                    let a_ptr = x_ptr + (first * dim * 4) as u64;
                    let mut col = 0;
                    for &p in &probes[l] {
                        if size(p) > 0 {
                            let b_ptr = x_ptr + (offsets[p] * dim * 4) as u64;
                            let c_ptr = s_ptr + ((off + col) * 4) as u64;
                            dev.gemm_into(a_ptr, rows, b_ptr, size(p), dim, alpha, c_ptr, width)?;
                        }
                        col += size(p);
                    }
                }
                let tile_ptr = s_ptr + (off * 4) as u64;
                let add_ptr = match l2 {
                    true => norms_ptr + (col_start[l] * 4) as u64,
                    false => 0,
                };
                let out_at = ((first - g0) * kk * 4) as u64;
                let no_thresholds = 0;
                dev.launch_select(
                    tile_ptr,
                    width,
                    width,
                    rows,
                    add_ptr,
                    no_thresholds,
                    kk,
                    os_ptr + out_at,
                    oc_ptr + out_at,
                )?;
                off += rows * width;
            }
            dev.download(|s| &s.out_col, &mut out_col[g0 * kk..g1 * kk])?;
            stream
                .synchronize()
                .map_err(|e| super::gpu_err("running the kNN-graph join", e))?;
            progress(g1 as f64 / n as f64);
            u0 = u1;
        }
    }
    // Columns back to rows: each row keeps its first k candidates other than itself, written
    // in its own place on all cores (a row in no list keeps none).
    let _span = span("join: columns back to rows");
    let mut position = vec![NO_ROW; n];
    for (i, &r) in members.iter().enumerate() {
        position[r as usize] = i as u32;
    }
    let mut neighbors = vec![NO_ROW; n * k];
    neighbors
        .par_chunks_mut(k)
        .zip(position.par_iter())
        .filter(|(_, &i)| i != NO_ROW)
        .for_each(|(dst, &i)| {
            let i = i as usize;
            let l = offsets.partition_point(|&o| o <= i) - 1;
            let me = members[i];
            let cols = &col_rows[col_start[l]..col_start[l + 1]];
            let found = out_col[i * kk..(i + 1) * kk]
                .iter()
                .take_while(|&&c| c != NO_ROW)
                .map(|&c| cols[c as usize])
                .filter(|&v| v != me);
            for (slot, v) in dst.iter_mut().zip(found) {
                *slot = v;
            }
        });
    Ok(neighbors)
}

/// Rows per side of the part of a tile one `join_scores` block writes (`JOIN_TILE`).
const JOIN_TILE: usize = 64;

/// Launches `join_scores` (kernels/cagra.cu) over a group of join units, each `(first row in
/// list order, rows, list)`: unit u's tile, `rows × width(list)` row-major, goes to `scores`
/// right after the tiles of the units before it (as the selections read them).
#[allow(clippy::too_many_arguments)]
fn launch_join_scores(
    dev: &super::Device,
    x_ptr: u64,
    dim: usize,
    positions_ptr: u64,
    group: &[(usize, usize, usize)],
    col_start: &[usize],
    alpha: f32,
    scores: u64,
) -> Result<()> {
    let stream = dev.stream.clone();
    // Per unit: first row, rows, first column, width, tile offset, first block.
    let mut units: Vec<u64> = Vec::with_capacity(6 * group.len());
    let (mut off, mut blocks) = (0usize, 0usize);
    for &(first, rows, l) in group {
        let width = col_start[l + 1] - col_start[l];
        units.extend([first, rows, col_start[l], width, off, blocks].map(|v| v as u64));
        off += rows * width;
        blocks += rows.div_ceil(JOIN_TILE) * width.div_ceil(JOIN_TILE);
    }
    if blocks == 0 {
        return Ok(());
    }
    if blocks > i32::MAX as usize || group.len() > i32::MAX as usize {
        return Err(Error::Gpu(format!(
            "kNN graph: a join group of {blocks} tile blocks is more than one launch takes"
        )));
    }
    let units_dev = stream
        .clone_htod(&units)
        .map_err(|e| super::gpu_err("copying the join units to the device", e))?;
    let (dim_i, n_units) = (dim as i32, group.len() as i32);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = stream.launch_builder(&dev.join_scores);
    launch
        .arg(&x_ptr)
        .arg(&dim_i)
        .arg(&positions_ptr)
        .arg(&units_dev)
        .arg(&n_units)
        .arg(&alpha)
        .arg(&scores);
    // SAFETY: arguments match join_scores' signature; x holds the rows in list order, the
    // positions every unit's columns (each < the rows), units 6 entries per unit in block
    // order, and scores the group's tiles (the caller sized it to their sum).
    unsafe { launch.launch(cfg) }.map_err(|e| super::gpu_err("launching join_scores", e))?;
    Ok(())
}
