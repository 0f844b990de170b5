//! IVF-PQ search on the GPU: the index (centroids, codebooks, codes, row map) is
//! copied to device memory once ([`load`]); each batch of queries has its probes chosen on the
//! device by the exact k-NN's GEMM and selection over the held centroids ([`probe_and_scan`];
//! the lists [`crate::search::ivf_pq::IvfPqIndex::probes`] chooses, which the host path
//! copies up instead), then
//! `ivf_pq_scan` (kernels/select.cu) scans every query's probed lists in one thread block: the
//! lookup table of each list in shared memory, a thread per code, the block's best candidates
//! kept as `select_topk` keeps them. The tables, sums and order are the CPU's
//! ([`crate::search::ivf_pq::IvfPqIndex::scan`], its oracle), so for the same probes the lists
//! are the same.
//!
//! A table takes `pq_dim · 2^pq_bits` floats (64 KiB at pq_dim 64, 8 bits): the block opts in
//! to the device's larger shared memory for it; where even that is too small (hundreds of
//! sub-spaces), the tables go to a global-memory region per block instead, slower but any size.

use super::{
    contiguous, gpu_err, grown, raw, CudaBackend, Precision, NO_ROW, QUERY_BATCH, SELECT_THREADS,
};
use crate::backend::Loaded;
use crate::search::ivf_pq::IvfPqIndex;
use crate::{Error, Metric, Neighbor, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use ndarray::ArrayView2;

/// Largest global-memory table region of one launch, where tables do not fit shared memory.
const MAX_WORK_BYTES: usize = 256 << 20;

/// An IVF-PQ index in device memory.
struct OnDevice {
    n: usize,
    dim: usize,
    n_lists: usize,
    pq_dim: usize,
    centroids: CudaSlice<f32>,
    /// `[n_lists]` squared norms where the lists are chosen by L2, else empty.
    centroid_norms: Option<CudaSlice<f32>>,
    /// `[pq_dim · ksub, dsub]` ([`crate::index::pq::ProductQuantizer::codebooks`]).
    books: CudaSlice<f32>,
    list_offsets: CudaSlice<i64>,
    codes: CudaSlice<u8>,
    list_rows: CudaSlice<u32>,
    /// `[n, dim]` raw vectors for re-ranking ([`rescore`]), copied up by the first search that
    /// re-ranks, where the index keeps them.
    vectors: std::sync::Mutex<Option<CudaSlice<f32>>>,
}

/// Where a launch keeps each block's vector and table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tables {
    /// In dynamic shared memory of this many bytes (the selection's slots included).
    Shared(usize),
    /// In global memory, this many floats per block (the slots alone in shared memory).
    Global(usize),
}

/// The selection slots of `ivf_pq_scan` for `kp` (k rounded up to a power of two): a power of
/// two holding the best kp and a round of candidates from every thread, at least 512 (4 KiB),
/// so that for small k three blocks and their 64 KiB tables fit on a multiprocessor. Public
/// for the host run of the kernel (tests/it/kernels.rs).
pub fn select_slots(kp: usize) -> usize {
    (kp + SELECT_THREADS as usize).next_power_of_two().max(512)
}

/// Where the tables of an index with `dim` dimensions and `pq_dim · ksub` table entries go on
/// a device whose blocks may opt in to `optin_bytes` of shared memory, `static_bytes` of which
/// the kernel declares itself, beside `slots` selection slots (score and row, 8 bytes each).
/// Public for the host run of the kernel (tests/it/kernels.rs).
pub fn tables(
    dim: usize,
    entries: usize,
    slots: usize,
    optin_bytes: usize,
    static_bytes: usize,
) -> Tables {
    let floats = dim.div_ceil(4) * 4 + entries;
    if static_bytes + slots * 8 + floats * 4 <= optin_bytes {
        Tables::Shared(slots * 8 + floats * 4)
    } else {
        Tables::Global(floats)
    }
}

/// The kernel's `probes` and `bases`: `[probes.len(), n_probes]` list numbers (`NO_ROW` past a
/// query's own probes) and their scores. Public for the host run of the kernel
/// (tests/it/kernels.rs).
pub fn probe_arrays(probes: &[Vec<Neighbor>], n_probes: usize) -> (Vec<u32>, Vec<f32>) {
    let mut lists = vec![NO_ROW; probes.len() * n_probes];
    let mut bases = vec![0f32; probes.len() * n_probes];
    for (i, probe) in probes.iter().enumerate() {
        for (j, p) in probe.iter().take(n_probes).enumerate() {
            lists[i * n_probes + j] = p.row as u32;
            bases[i * n_probes + j] = p.score;
        }
    }
    (lists, bases)
}

/// Copies `index` to the GPU.
pub(super) fn load(backend: &CudaBackend, index: &IvfPqIndex<'_>) -> Result<Loaded> {
    let (n_lists, dim) = index.centroids.dim();
    let n = index.list_rows.len();
    if n >= NO_ROW as usize {
        return Err(Error::Gpu(format!(
            "IVF-PQ search on the GPU handles fewer than 2^32 − 1 rows; the index has {n}"
        )));
    }
    let pq = index.pq;
    let (ksub, dsub) = (pq.ksub(), pq.dsub());
    if pq.codebooks.dim() != (pq.pq_dim * ksub, dsub) {
        return Err(Error::Gpu(format!(
            "IVF-PQ search on the GPU: the codebooks are {:?}, expected {:?}",
            pq.codebooks.dim(),
            (pq.pq_dim * ksub, dsub)
        )));
    }
    let list_rows: Vec<u32> = index.list_rows.iter().map(|&r| r as u32).collect();
    let list_offsets: Vec<i64> = index.list_offsets.iter().map(|&o| o as i64).collect();
    let dev = backend.lock()?;
    let stream = dev.stream.clone();
    let words = n_lists * (dim + 1) + pq.codebooks.len() + 2 * list_offsets.len() + n;
    super::index_fits(&stream, 4 * words + index.codes.len())?;
    let err = |what: &str| {
        let what = format!("copying the index's {what} to the device");
        move |e| gpu_err(&what, e)
    };
    let on = OnDevice {
        n,
        dim,
        n_lists,
        pq_dim: pq.pq_dim,
        centroids: stream
            .clone_htod(contiguous(&index.centroids).as_ref())
            .map_err(err("centroids"))?,
        centroid_norms: match index.centroid_sq_norms.len() == n_lists {
            true => Some(
                stream
                    .clone_htod(index.centroid_sq_norms)
                    .map_err(err("centroid norms"))?,
            ),
            false => None,
        },
        books: stream
            .clone_htod(contiguous(&pq.codebooks.view()).as_ref())
            .map_err(err("codebooks"))?,
        list_offsets: stream.clone_htod(&list_offsets).map_err(err("lists"))?,
        codes: stream.clone_htod(index.codes).map_err(err("codes"))?,
        list_rows: stream.clone_htod(&list_rows).map_err(err("row map"))?,
        vectors: std::sync::Mutex::new(None),
    };
    stream
        .synchronize()
        .map_err(|e| gpu_err("copying the index to the device", e))?;
    Ok(Box::new(on))
}

/// The exact scores of `found`'s candidates, query by query, against the index's raw vectors:
/// `rescore_exact` (kernels/select.cu), a thread per candidate with the CPU's additions
/// ([`crate::search::ivf_pq::exact_score`]). The vectors are copied up by the first call and
/// held with the index. `None` (the host re-ranks) where the index keeps no vectors, is not
/// held on this GPU, or its vectors need more than half the free device memory; and with
/// `VECBUILD_GPU_RERANK=host` (a developer's check that the two agree).
pub(super) fn rescore(
    backend: &CudaBackend,
    index: &IvfPqIndex<'_>,
    loaded: Option<&Loaded>,
    queries: ArrayView2<'_, f32>,
    found: &[Vec<Neighbor>],
) -> Result<Option<Vec<f32>>> {
    let (Some(vectors), Some(on)) = (
        index.vectors,
        loaded.and_then(|l| l.downcast_ref::<OnDevice>()),
    ) else {
        return Ok(None);
    };
    if std::env::var_os("VECBUILD_GPU_RERANK").is_some_and(|v| v == "host") {
        return Ok(None);
    }
    let (nq, dim) = queries.dim();
    if vectors.dim() != (on.n, on.dim) || dim != on.dim || found.len() != nq {
        return Err(Error::Gpu(
            "the IVF-PQ index loaded on the GPU is not the one searched".into(),
        ));
    }
    let kc = found.iter().map(Vec::len).max().unwrap_or(0);
    if nq == 0 || kc == 0 {
        return Ok(Some(Vec::new()));
    }
    if let Some(n) = found.iter().flatten().find(|n| n.row >= on.n as u64) {
        return Err(Error::Gpu(format!(
            "IVF-PQ re-ranking: candidate row {} of an index of {} rows",
            n.row, on.n
        )));
    }
    let q_host = contiguous(&queries);
    let dev = backend.lock()?;
    let stream = dev.stream.clone();
    let mut held = on
        .vectors
        .lock()
        .map_err(|_| Error::Gpu("IVF-PQ re-ranking: the held vectors' lock was poisoned".into()))?;
    let rows: &CudaSlice<f32> = match &mut *held {
        Some(rows) => rows,
        empty @ None => {
            if !super::fits_half_free(&stream, 4 * vectors.len())? {
                backend.slower(
                    "IVF-PQ re-ranking ran on the CPU: the raw vectors need more than half the \
                     free device memory"
                        .to_string(),
                );
                return Ok(None);
            }
            let _span = crate::laps::span("ivf-pq search: raw vectors copied up");
            empty.insert(
                stream
                    .clone_htod(contiguous(&vectors).as_ref())
                    .map_err(|e| gpu_err("copying the index's raw vectors to the device", e))?,
            )
        }
    };
    let l2 = i32::from(crate::index::ivf_pq::coarse_metric(index.metric) == Metric::L2);
    let (dim_i, kc_i) = (dim as i32, kc as i32);
    let copy = |what: &str, e| gpu_err(&format!("copying the {what} to the device"), e);
    let mut flat = Vec::with_capacity(found.iter().map(Vec::len).sum());
    // A batch of queries at a time, as the scan takes them: its candidates (`NO_ROW` past a
    // query's own), scored, brought back.
    for (b, batch) in found.chunks(QUERY_BATCH).enumerate() {
        let q0 = b * QUERY_BATCH;
        let total = batch.len() * kc;
        let mut cand = vec![NO_ROW; total];
        for (slots, f) in cand.chunks_mut(kc).zip(batch) {
            for (slot, n) in slots.iter_mut().zip(f) {
                *slot = n.row as u32;
            }
        }
        let q_dev = stream
            .clone_htod(&q_host[q0 * dim..(q0 + batch.len()) * dim])
            .map_err(|e| copy("queries", e))?;
        let cand_dev = stream
            .clone_htod(&cand)
            .map_err(|e| copy("candidates", e))?;
        // SAFETY: the kernel writes every one of the `total` scores.
        let mut out = unsafe { stream.alloc::<f32>(total) }
            .map_err(|e| gpu_err("allocating device memory for the exact scores", e))?;
        let total_i = total as i64;
        let cfg = LaunchConfig {
            grid_dim: (total.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&dev.rescore_exact);
        launch
            .arg(&q_dev)
            .arg(&dim_i)
            .arg(rows)
            .arg(&cand_dev)
            .arg(&total_i)
            .arg(&kc_i)
            .arg(&l2)
            .arg(&mut out);
        // SAFETY: arguments match rescore_exact's signature: the queries hold the batch's
        // rows of dim floats, the rows n·dim, the candidates batch·kc rows below n (checked
        // above) or NO_ROW, out batch·kc.
        unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching rescore_exact", e))?;
        let scores = stream
            .clone_dtoh(&out)
            .map_err(|e| gpu_err("copying the exact scores from the device", e))?;
        for (row, f) in scores.chunks(kc).zip(batch) {
            flat.extend_from_slice(&row[..f.len()]);
        }
    }
    Ok(Some(flat))
}

/// Where a scan's probed lists come from.
#[derive(Clone, Copy)]
pub(super) enum Probes<'a> {
    /// Chosen on the host ([`IvfPqIndex::probes`]), copied up with each batch.
    Host(&'a [Vec<Neighbor>]),
    /// This many chosen on the device for each batch: the queries against the held centroids
    /// by the exact k-NN's GEMM and `select_topk`, as [`IvfPqIndex::probes`] chooses them on
    /// this backend, kept there for `ivf_pq_scan`.
    Device(usize),
}

/// [`Probes::Device`] where it gives the lists the host would (the centroids in one base tile
/// of the exact k-NN, so one selection sees them all; fp32 or TF32 products, as fp16's checks
/// of range are the host path's), else `None`. The products are the same GEMM's, bit for bit
/// where it gets the same shapes (a search's batches up to `QUERY_BATCH` queries with tables
/// in shared memory, as the CLI's are); with other shapes cuBLAS may round a near-tie between
/// two centroids the other way, as between any two shapes. `VECBUILD_GPU_PROBES=host` takes
/// the host path always (a developer's check that the two agree).
pub(super) fn probe_and_scan(
    backend: &CudaBackend,
    index: &IvfPqIndex<'_>,
    loaded: Option<&Loaded>,
    queries: ArrayView2<'_, f32>,
    n_probes: usize,
    candidates: usize,
) -> Result<Option<Vec<Vec<Neighbor>>>> {
    let (n_lists, dim) = index.centroids.dim();
    let held = loaded.is_some_and(|l| l.downcast_ref::<OnDevice>().is_some());
    let host = std::env::var_os("VECBUILD_GPU_PROBES").is_some_and(|v| v == "host");
    if !held
        || host
        || backend.precision == Precision::Fp16
        || n_lists > crate::backend::base_tile_rows(dim)
        || n_probes == 0
        || n_probes > n_lists.min(super::MAX_GPU_K)
    {
        return Ok(None);
    }
    scan(
        backend,
        index,
        loaded,
        queries,
        Probes::Device(n_probes),
        candidates,
    )
    .map(Some)
}

/// Each query's `candidates` best rows of its probed lists, with the copy [`load`] made.
pub(super) fn scan(
    backend: &CudaBackend,
    index: &IvfPqIndex<'_>,
    loaded: Option<&Loaded>,
    queries: ArrayView2<'_, f32>,
    probes: Probes<'_>,
    candidates: usize,
) -> Result<Vec<Vec<Neighbor>>> {
    let on = loaded
        .and_then(|l| l.downcast_ref::<OnDevice>())
        .ok_or_else(|| Error::Gpu("the IVF-PQ index is not loaded on this GPU".into()))?;
    let (n_lists, dim) = index.centroids.dim();
    let pq = index.pq;
    if (on.n, on.dim, on.n_lists, on.pq_dim) != (index.list_rows.len(), dim, n_lists, pq.pq_dim)
        || queries.ncols() != dim
        || matches!(probes, Probes::Host(p) if p.len() != queries.nrows())
    {
        return Err(Error::Gpu(
            "the IVF-PQ index loaded on the GPU is not the one searched".into(),
        ));
    }
    let k = candidates;
    if k == 0 || k > super::MAX_GPU_K {
        return Err(Error::Gpu(format!(
            "IVF-PQ search on the GPU keeps at most {} candidates per query (k × refine_ratio); asked for {k}",
            super::MAX_GPU_K
        )));
    }
    let nq = queries.nrows();
    let n_probes = match probes {
        Probes::Host(p) => p.iter().map(Vec::len).max().unwrap_or(0).max(1),
        Probes::Device(n) => n,
    };
    let (ksub, dsub) = (pq.ksub(), pq.dsub());
    if !(SELECT_THREADS as usize).is_multiple_of(ksub) {
        // The kernel fills a table with each thread on one codeword column.
        return Err(Error::Gpu(format!(
            "IVF-PQ search on the GPU handles up to {SELECT_THREADS} codewords per sub-space; the index has {ksub}"
        )));
    }
    let entries = pq.pq_dim * ksub;
    let q_host = contiguous(&queries);
    let mut dev = backend.lock()?;
    let stream = dev.stream.clone();
    let optin = stream
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(|e| gpu_err("reading the device's shared memory size", e))?;
    let static_bytes = dev
        .ivf_pq_scan
        .shared_size_bytes()
        .map_err(|e| gpu_err("reading ivf_pq_scan's shared memory size", e))?;
    let slots = select_slots(k.next_power_of_two());
    let place = tables(
        dim,
        entries,
        slots,
        optin.max(0) as usize,
        static_bytes.max(0) as usize,
    );
    let (shared_bytes, batch, work_floats) = match place {
        Tables::Shared(bytes) => (bytes, QUERY_BATCH, 0),
        Tables::Global(floats) => (
            slots * 8,
            (MAX_WORK_BYTES / (floats * 4)).clamp(1, QUERY_BATCH),
            floats,
        ),
    };
    dev.ivf_pq_scan
        .set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            shared_bytes as i32,
        )
        .map_err(|e| gpu_err("opting in to shared memory for ivf_pq_scan", e))?;
    let mut work = match work_floats {
        0 => None,
        f => Some(
            // SAFETY: each block writes its vector and table before reading them.
            unsafe { stream.alloc::<f32>(batch.min(nq).max(1) * f) }
                .map_err(|e| gpu_err("allocating device memory for the lookup tables", e))?,
        ),
    };
    // Lists chosen on the device: each batch's probes and their scores.
    let mut chosen = match probes {
        Probes::Host(_) => None,
        // SAFETY: select_topk writes every slot of a batch's rows before the scan reads them.
        Probes::Device(_) => Some(unsafe {
            let slots = batch.min(nq).max(1) * n_probes;
            (
                stream
                    .alloc::<u32>(slots)
                    .map_err(|e| gpu_err("allocating device memory for the probes", e))?,
                stream
                    .alloc::<f32>(slots)
                    .map_err(|e| gpu_err("allocating device memory for the probes", e))?,
            )
        }),
    };
    let ip = i32::from(index.metric == Metric::InnerProduct);
    let (dim_i, dim_pad_i, lists_i) = (dim as i32, (dim.div_ceil(4) * 4) as i32, n_lists as i32);
    let (pq_dim_i, dsub_i, ksub_i, probes_i) =
        (pq.pq_dim as i32, dsub as i32, ksub as i32, n_probes as i32);
    let (k_i, kp_i, slots_i) = (k as i32, k.next_power_of_two() as i32, slots as i32);
    let mut found = Vec::with_capacity(nq);
    let mut b_rows = Vec::new();
    let mut b_scores = Vec::new();
    for q0 in (0..nq).step_by(batch) {
        let q1 = (q0 + batch).min(nq);
        let b = q1 - q0;
        let part = crate::laps::span("ivf-pq scan: launched");
        let q_ptr = dev.upload(|s| &mut s.queries, &q_host[q0 * dim..q1 * dim])?;
        // Held until the batch's results are back: the copies the kernel reads.
        let mut copied = None;
        let (lists_ptr, bases_ptr) = match (probes, chosen.as_mut()) {
            (Probes::Host(p), _) => {
                let (lists, bases) = probe_arrays(&p[q0..q1], n_probes);
                let up = |what: &str, e| gpu_err(&format!("copying the {what} to the device"), e);
                let lists_dev = stream.clone_htod(&lists).map_err(|e| up("probes", e))?;
                let bases_dev = stream.clone_htod(&bases).map_err(|e| up("probes", e))?;
                let ptrs = (raw(&stream, &lists_dev), raw(&stream, &bases_dev));
                copied = Some((lists_dev, bases_dev));
                ptrs
            }
            (Probes::Device(_), Some((lists_dev, bases_dev))) => {
                let ptrs = (raw(&stream, lists_dev), raw(&stream, bases_dev));
                choose_probes(&mut dev, on, index.metric, q_ptr, b, n_probes, ptrs)?;
                ptrs
            }
            (Probes::Device(_), None) => {
                return Err(Error::Gpu(
                    "internal: no device buffers for the probes".into(),
                ))
            }
        };
        let os_ptr = raw(&stream, grown(&stream, &mut dev.scratch.out_score, b * k)?);
        let or_ptr = raw(&stream, grown(&stream, &mut dev.scratch.out_col, b * k)?);
        let work_ptr = work.as_mut().map_or(0, |w| raw(&stream, w));
        let cfg = LaunchConfig {
            grid_dim: (b as u32, 1, 1),
            block_dim: (SELECT_THREADS, 1, 1),
            shared_mem_bytes: shared_bytes as u32,
        };
        let mut launch = stream.launch_builder(&dev.ivf_pq_scan);
        launch
            .arg(&q_ptr)
            .arg(&dim_i)
            .arg(&dim_pad_i)
            .arg(&on.centroids)
            .arg(&lists_i)
            .arg(&on.books)
            .arg(&pq_dim_i)
            .arg(&dsub_i)
            .arg(&ksub_i)
            .arg(&lists_ptr)
            .arg(&bases_ptr)
            .arg(&probes_i)
            .arg(&ip)
            .arg(&on.list_offsets)
            .arg(&on.codes)
            .arg(&on.list_rows)
            .arg(&work_ptr)
            .arg(&slots_i)
            .arg(&k_i)
            .arg(&kp_i)
            .arg(&os_ptr)
            .arg(&or_ptr);
        // SAFETY: arguments match ivf_pq_scan's signature; the queries hold b·dim floats, the
        // probes and bases b·n_probes (list numbers below n_lists or NO_ROW, which the kernel
        // skips), the index buffers what `load` copied (checked against `index` above), the
        // work region b·(dim_pad + pq_dim·ksub) floats when tables go to global memory, the
        // outputs b·k; dynamic shared memory is what `tables` sized (the `slots` selection
        // slots, at least k rounded up to a power of two plus a round of candidates, first)
        // and the function was allowed just above.
        unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching ivf_pq_scan", e))?;
        drop(part);
        let part = crate::laps::span("ivf-pq scan: waited for and copied back");
        b_rows.resize(b * k, 0u32);
        b_scores.resize(b * k, 0f32);
        dev.collect(&mut b_rows, &mut b_scores, "ivf_pq_scan")?;
        drop(copied);
        drop(part);
        let _span = crate::laps::span("ivf-pq scan: lists made");
        for (r, s) in b_rows.chunks(k).zip(b_scores.chunks(k)) {
            found.push(
                r.iter()
                    .zip(s)
                    .filter(|(&row, _)| row != NO_ROW)
                    .map(|(&row, &score)| Neighbor {
                        score,
                        row: row as u64,
                    })
                    .collect(),
            );
        }
    }
    Ok(found)
}

/// The `n_probes` lists nearest each of the `b` queries at `q_ptr` (on the device), as the
/// exact k-NN chooses them over the held centroids: `−2·q·c + ‖c‖²` (L2, cosine) or `−q·c`
/// (inner product) by cuBLAS, best first by `select_topk`, into `lists` and `scores` (`[b,
/// n_probes]` device buffers, as raw pointers).
fn choose_probes(
    dev: &mut super::Device,
    on: &OnDevice,
    metric: Metric,
    q_ptr: u64,
    b: usize,
    n_probes: usize,
    (lists, scores): (u64, u64),
) -> Result<()> {
    let stream = dev.stream.clone();
    let l2 = crate::index::ivf_pq::coarse_metric(metric) == Metric::L2;
    let norms = match (l2, &on.centroid_norms) {
        (true, Some(n)) => raw(&stream, n),
        (true, None) => {
            return Err(Error::Gpu(
                "the IVF-PQ index on the device has no centroid norms".into(),
            ))
        }
        (false, _) => 0,
    };
    let alpha = if l2 { -2.0 } else { -1.0 };
    let c_ptr = raw(&stream, &on.centroids);
    let q_tile = (dev.tile_bytes / (on.n_lists * 4)).clamp(1, b.max(1));
    for q0 in (0..b).step_by(q_tile) {
        let qt = q_tile.min(b - q0);
        let s_ptr = dev.gemm(
            q_ptr + (q0 * on.dim * 4) as u64,
            qt,
            c_ptr,
            on.n_lists,
            on.dim,
            alpha,
        )?;
        let at = (q0 * n_probes * 4) as u64;
        dev.launch_select(
            s_ptr,
            on.n_lists,
            on.n_lists,
            qt,
            norms,
            0,
            n_probes,
            scores + at,
            lists + at,
        )?;
    }
    Ok(())
}
