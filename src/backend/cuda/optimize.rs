//! CAGRA graph optimisation on the GPU, steps 1–3 of [`crate::index::cagra::optimize`] in our
//! kernels (kernels/cagra.cu), the same integer computations as the CPU's, so the graphs are
//! identical:
//!
//! 1. `prune_graph`, one block per row: rank-based pruning of the kNN graph.
//! 2. `reverse_count`, then the counts' prefix sum on the host (4 bytes a row each way), then
//!    `reverse_fill`: every pruned edge's key (rank · n + source row) in its target's range.
//! 3. `merge_graph`, one warp per row: the row's reverse edges are its least keys, in order;
//!    merged with its pruned edges as the CPU merges them.
//!
//! Only the merged graph comes back: the pruned graph and the reverse edges stay on the device.

use super::{gpu_err, CudaBackend, Device};
use crate::index::cagra::{optimize, Graph};
use crate::laps::Laps;
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Shared memory a block may use without opting in.
const MAX_SHARED: usize = 48 << 10;
/// `MERGE_THREADS` in kernels/cagra.cu.
const MERGE_THREADS: usize = 256;

/// [`crate::backend::Backend::optimize_graph`] on the GPU, or on the CPU (said among the slower
/// paths) where the kernels cannot take the graph.
pub(super) fn optimize_graph(
    backend: &CudaBackend,
    knn: &Graph,
    d_out: usize,
    order: &[u32],
    laps: &mut Laps,
) -> Result<Graph> {
    let (n, d) = (knn.len(), knn.degree);
    if n == 0 || d == 0 || d_out == 0 || d_out > d {
        return Err(Error::Gpu(format!(
            "graph optimisation: degree {d} → {d_out} is not supported on the GPU"
        )));
    }
    let table = (2 * d).next_power_of_two().max(16);
    // prune_graph's tables and lists, and its one static word.
    let prune_shared = (2 * table + 2 * d) * 4 + 4;
    let merge_shared = MERGE_THREADS / 32 * 2 * d_out * 4;
    // On the device at once: the kNN graph, the pruned graph, the keys, the merged graph, the
    // counts, offsets and cursors.
    let bytes = 4 * (n * (d + 3 * d_out) + 3 * n + 1);
    let dev = backend.lock()?;
    let why = if prune_shared > MAX_SHARED {
        Some(format!(
            "degree {d} needs more shared memory than the pruning kernel may use"
        ))
    } else if merge_shared > MAX_SHARED {
        Some(format!(
            "degree {d_out} needs more shared memory than the merge kernel may use"
        ))
    } else if (n as u64) * (d_out as u64) >= u64::from(u32::MAX) {
        Some("the graph has 2^32 edges or more".to_string())
    } else if !super::fits_half_free(&dev.stream, bytes)? {
        Some("the graphs need more than half the free device memory".to_string())
    } else {
        None
    };
    if let Some(why) = why {
        // The CPU optimises it (the same computations, the same graph), the device left to
        // others.
        drop(dev);
        backend.slower(format!(
            "the CAGRA graph optimisation ran on the CPU: {why}"
        ));
        return Ok(optimize::optimize(knn, d_out, order, laps));
    }
    let pruned = prune(&dev, knn, d_out, table)?;
    sync(&dev, "prune_graph")?;
    laps.mark("rank-based pruning");
    let (offsets, keys) = reverse(&dev, &pruned, n, d_out)?;
    sync(&dev, "reverse_fill")?;
    laps.mark("reverse edges");
    let neighbors = merge(&dev, &pruned, n, d_out, &offsets, &keys)?;
    laps.mark("merge");
    Ok(Graph {
        degree: d_out,
        neighbors,
    })
}

fn sync(dev: &Device, what: &str) -> Result<()> {
    dev.stream
        .synchronize()
        .map_err(|e| gpu_err(&format!("running {what}"), e))
}

/// Step 1: the kNN graph copied up and pruned to `[n, d_out]` on the device.
fn prune(dev: &Device, knn: &Graph, d_out: usize, table: usize) -> Result<CudaSlice<u32>> {
    let (n, d) = (knn.len(), knn.degree);
    let stream = &dev.stream;
    let knn_dev = stream
        .clone_htod(&knn.neighbors)
        .map_err(|e| gpu_err("copying the kNN graph to the device", e))?;
    // SAFETY: the kernel writes every one of the n·d_out slots.
    let mut out = unsafe { stream.alloc::<u32>(n * d_out) }
        .map_err(|e| gpu_err("allocating device memory", e))?;
    let (d_i, d_out_i, table_i) = (d as i32, d_out as i32, table as i32);
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: ((2 * table + 2 * d) * 4) as u32,
    };
    let mut launch = stream.launch_builder(&dev.prune_graph);
    launch
        .arg(&knn_dev)
        .arg(&d_i)
        .arg(&d_out_i)
        .arg(&table_i)
        .arg(&mut out);
    // SAFETY: arguments match prune_graph's signature; knn holds n·d entries, out n·d_out, and
    // the shared memory is sized as the kernel lays it out (checked ≤ 48 KiB by the caller).
    unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching prune_graph", e))?;
    Ok(out)
}

/// Step 2: every pruned edge's key in its target's range: the ranges' offsets (`[n + 1]`) and
/// the keys, on the device.
fn reverse(
    dev: &Device,
    pruned: &CudaSlice<u32>,
    n: usize,
    d: usize,
) -> Result<(CudaSlice<u32>, CudaSlice<u32>)> {
    let stream = &dev.stream;
    let alloc_err = |e| gpu_err("allocating device memory", e);
    let edges = (n * d) as u64;
    let (n_u, d_i) = (n as u32, d as i32);
    let cfg = LaunchConfig {
        grid_dim: ((n * d).div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut count = stream.alloc_zeros::<u32>(n).map_err(alloc_err)?;
    let mut launch = stream.launch_builder(&dev.reverse_count);
    launch.arg(pruned).arg(&edges).arg(&n_u).arg(&mut count);
    // SAFETY: arguments match reverse_count's signature; pruned holds n·d entries, count n.
    unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching reverse_count", e))?;
    let count = stream
        .clone_dtoh(&count)
        .map_err(|e| gpu_err("copying the in-edge counts from the device", e))?;
    // Below n·d < 2^32 (checked by the caller), so no sum wraps.
    let mut offsets = Vec::with_capacity(n + 1);
    let mut sum = 0u32;
    offsets.push(0);
    for c in count {
        sum += c;
        offsets.push(sum);
    }
    let offsets = stream
        .clone_htod(&offsets)
        .map_err(|e| gpu_err("copying the in-edge offsets to the device", e))?;
    let mut cursor = stream.alloc_zeros::<u32>(n).map_err(alloc_err)?;
    // SAFETY: reverse_fill writes each of the sum keys once (one per pruned edge).
    let mut keys = unsafe { stream.alloc::<u32>((sum as usize).max(1)) }.map_err(alloc_err)?;
    let mut launch = stream.launch_builder(&dev.reverse_fill);
    launch
        .arg(pruned)
        .arg(&d_i)
        .arg(&n_u)
        .arg(&offsets)
        .arg(&mut cursor)
        .arg(&mut keys);
    // SAFETY: arguments match reverse_fill's signature; offsets holds n + 1 entries whose last
    // is the number of keys, cursor n zeros.
    unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching reverse_fill", e))?;
    Ok((offsets, keys))
}

/// Step 3: the merged graph `[n, d]`, brought back.
fn merge(
    dev: &Device,
    pruned: &CudaSlice<u32>,
    n: usize,
    d: usize,
    offsets: &CudaSlice<u32>,
    keys: &CudaSlice<u32>,
) -> Result<Vec<u32>> {
    let stream = &dev.stream;
    // SAFETY: merge_graph writes every one of the n·d slots.
    let mut out = unsafe { stream.alloc::<u32>(n * d) }
        .map_err(|e| gpu_err("allocating device memory", e))?;
    let rows_per_block = MERGE_THREADS / 32;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(rows_per_block) as u32, 1, 1),
        block_dim: (MERGE_THREADS as u32, 1, 1),
        shared_mem_bytes: (rows_per_block * 2 * d * 4) as u32,
    };
    let (d_i, n_u) = (d as i32, n as u32);
    let mut launch = stream.launch_builder(&dev.merge_graph);
    launch
        .arg(pruned)
        .arg(&d_i)
        .arg(&n_u)
        .arg(offsets)
        .arg(keys)
        .arg(&mut out);
    // SAFETY: arguments match merge_graph's signature; pruned and out hold n·d entries, offsets
    // n + 1 and keys their last; the shared memory is the kernel's (checked ≤ 48 KiB by the
    // caller).
    unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching merge_graph", e))?;
    let neighbors = stream
        .clone_dtoh(&out)
        .map_err(|e| gpu_err("copying the optimised graph from the device", e))?;
    sync(dev, "merge_graph")?;
    Ok(neighbors)
}

/// Levels of the breadth-first search launched between two looks at how many rows they reached.
const LEVELS_PER_LOOK: usize = 8;

/// Levels after which the device leaves the question to the host's walk (a graph that deep,
/// a chain more than a graph, costs the device a wait per few levels; the walk, one pass).
const MAX_LEVELS: u32 = 1024;

/// [`crate::backend::Backend::reaches_every_row`] on the GPU: `reach_level` (kernels/cagra.cu)
/// level by level from `entry`; `None` where the device cannot hold the graph or the search
/// runs deeper than [`MAX_LEVELS`].
pub(super) fn reaches_every_row(
    backend: &CudaBackend,
    graph: &Graph,
    entry: u32,
) -> Result<Option<bool>> {
    let (n, d) = (graph.len(), graph.degree);
    if n == 0 || d == 0 || entry as usize >= n || n >= u32::MAX as usize {
        return Ok(None);
    }
    let dev = backend.lock()?;
    // The graph and a depth per row; the counts are a few words.
    if !super::fits_half_free(&dev.stream, 4 * (n * d + n))? {
        drop(dev);
        backend.slower(
            "the CAGRA connectivity check ran on the CPU: the graph needs more than half the \
             free device memory"
                .to_string(),
        );
        return Ok(None);
    }
    let stream = &dev.stream;
    let alloc_err = |e| gpu_err("allocating device memory", e);
    let graph_dev = stream
        .clone_htod(&graph.neighbors)
        .map_err(|e| gpu_err("copying the graph to the device", e))?;
    let mut depth = stream.alloc_zeros::<u32>(n).map_err(alloc_err)?;
    let at = entry as usize;
    stream
        .memcpy_htod(&[1u32], &mut depth.slice_mut(at..at + 1))
        .map_err(|e| gpu_err("copying the entry point to the device", e))?;
    let mut counts = stream
        .alloc_zeros::<u32>(LEVELS_PER_LOOK)
        .map_err(alloc_err)?;
    let cfg = LaunchConfig {
        grid_dim: ((n * d).div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (d_i, n_u) = (d as i32, n as u32);
    // Rows reached so far, the entry's own level being 1.
    let (mut reached, mut level) = (1usize, 1u32);
    while reached < n && level <= MAX_LEVELS {
        stream
            .memset_zeros(&mut counts)
            .map_err(|e| gpu_err("clearing the level counts", e))?;
        for i in 0..LEVELS_PER_LOOK {
            let this = level + i as u32;
            let mut count = counts.slice_mut(i..i + 1);
            let mut launch = stream.launch_builder(&dev.reach_level);
            launch
                .arg(&graph_dev)
                .arg(&d_i)
                .arg(&n_u)
                .arg(&this)
                .arg(&mut depth)
                .arg(&mut count);
            // SAFETY: arguments match reach_level's signature; the graph holds n·d entries,
            // depth n, count one word.
            unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching reach_level", e))?;
        }
        let found = stream
            .clone_dtoh(&counts)
            .map_err(|e| gpu_err("copying the level counts from the device", e))?;
        reached += found.iter().map(|&c| c as usize).sum::<usize>();
        level += LEVELS_PER_LOOK as u32;
        if found[LEVELS_PER_LOOK - 1] == 0 {
            // A level that reached no row ends the search: the levels after it find none.
            return Ok(Some(reached == n));
        }
    }
    Ok((reached == n).then_some(true))
}
