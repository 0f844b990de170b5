//! Quantizers on the GPU: Lloyd's k-means iterations with the rows on the device
//! ([`Backend::lloyd`](crate::backend::Backend)), PQ training with every sub-space's
//! iterations in the same launches ([`DeviceSubspaces`]), and PQ encoding of every sub-space in
//! one launch ([`pq_encode`]).
//!
//! The rows are copied to the device once. Each iteration uploads the centroids, assigns every
//! row as [`Backend::assign_nearest`](crate::backend::Backend) does (the same GEMM tiles and
//! `argmin_rows`, or `assign_small` for PQ sub-spaces, so the same labels), groups the rows by
//! label on the device in the host's order (`label_counts` … `label_scatter`, a stable
//! counting sort over chunks of rows), and `centroid_means` (kernels/quantize.cu) moves each
//! centroid to the mean of its rows with the CPU's arithmetic in the CPU's order. The scores
//! come back for the objective (added on the host in row order), with the cluster sizes and
//! the centroids: per iteration `4·n` bytes back and the centroids each way, instead of the
//! rows.

use super::{assigns_small, gpu_err, raw, CudaBackend, Device};
use crate::backend::{Lloyd, Lloyds, Step};
use crate::metric::squared_norms;
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use ndarray::{Array2, ArrayView2};

/// Threads per block of `centroid_means` (`MEAN_THREADS` in kernels/quantize.cu).
const MEAN_THREADS: u32 = 128;
/// Threads per block of `pq_encode` (`ENCODE_THREADS` in kernels/quantize.cu).
const ENCODE_THREADS: u32 = 256;
/// Threads per block of `group_codes`, `label_counts` and `label_offsets` (`GROUP_THREADS` in
/// kernels/quantize.cu).
const GROUP_THREADS: u32 = 256;
/// Threads of `label_starts`' one block (`SCAN_THREADS` in kernels/quantize.cu).
const SCAN_THREADS: u32 = 1024;

/// PQ codes of `residuals: [n, dim]` in one launch of `pq_encode` (kernels/quantize.cu), which
/// finds the codes `assign_small` finds one sub-space at a time; `None` where a sub-space is
/// wider than `assign_small` takes (the caller then encodes sub-space by sub-space).
pub(super) fn pq_encode(
    backend: &CudaBackend,
    residuals: ArrayView2<'_, f32>,
    pq: &crate::index::pq::ProductQuantizer,
) -> Result<Option<Array2<u8>>> {
    let (n, dim) = residuals.dim();
    let (pq_dim, ksub, dsub) = (pq.pq_dim, pq.ksub(), pq.dsub());
    if !assigns_small(dsub, ksub) || ksub > 256 || dim != pq.dim {
        return Ok(None);
    }
    let mut codes = Array2::<u8>::zeros((n, pq_dim));
    if n == 0 || pq_dim == 0 {
        return Ok(Some(codes));
    }
    let x_host = super::contiguous(&residuals);
    let books = pq.codebooks.view();
    let books = super::contiguous(&books);
    let mut dev = backend.lock()?;
    let stream = dev.stream.clone();
    let x_ptr = dev.upload(|s| &mut s.queries, &x_host)?;
    let book_ptr = dev.upload(|s| &mut s.base, &books)?;
    // The codes, bytes, in the u32 output buffer.
    let words = (n * pq_dim).div_ceil(4);
    let out_ptr = raw(
        &stream,
        super::grown(&stream, &mut dev.scratch.out_col, words)?,
    );
    launch_pq_encode(
        &dev, x_ptr, n, dim, pq_dim, dsub, ksub, book_ptr, out_ptr, 0,
    )?;
    let mut packed = vec![0u32; words];
    dev.download(|s| &s.out_col, &mut packed)?;
    stream
        .synchronize()
        .map_err(|e| gpu_err("encoding PQ codes", e))?;
    let bytes: &[u8] = bytemuck::cast_slice(&packed);
    let flat = codes
        .as_slice_mut()
        .ok_or_else(|| Error::Gpu("PQ codes not contiguous".into()))?;
    flat.copy_from_slice(&bytes[..n * pq_dim]);
    Ok(Some(codes))
}

/// The held rows (`[n, dim]`), their squared norms (host) and per-row device buffers.
pub(super) struct DeviceLloyd<'a> {
    backend: &'a CudaBackend,
    n: usize,
    dim: usize,
    rows: CudaSlice<f32>,
    sq_norms: Vec<f32>,
    labels: CudaSlice<u32>,
    scores: CudaSlice<f32>,
    order: CudaSlice<u32>,
    /// The rows on the host, and whether they were checked against fp16's range.
    data: ArrayView2<'a, f32>,
    rows_checked: bool,
    /// Buffers sized by the number of centroids, at the first call.
    clusters: Option<Clusters>,
}

/// A k-means' device buffers sized by its `k` centroids.
struct Clusters {
    /// `[k, dim]`.
    centroids: CudaSlice<f32>,
    /// `[k]`: their squared norms (the GEMM assignment).
    norms: CudaSlice<f32>,
    /// `[k + 1]`: where each cluster's rows start in the order.
    start: CudaSlice<u32>,
    /// `[k]`: rows per cluster.
    sizes: CudaSlice<u32>,
    /// `[chunks, k]`: the grouping's counts per chunk of `chunk` rows.
    counts: CudaSlice<u32>,
    chunk: usize,
}

impl<'a> DeviceLloyd<'a> {
    /// Copies `data` to the device; `None` when it would take more than half the free memory
    /// (the caller then iterates on the host's rows, a copy per iteration).
    pub(super) fn hold(
        backend: &'a CudaBackend,
        data: ArrayView2<'a, f32>,
    ) -> Result<Option<Box<dyn Lloyd + 'a>>> {
        let (n, dim) = data.dim();
        if n == 0 || dim == 0 || n > u32::MAX as usize {
            return Ok(None);
        }
        let host = super::contiguous(&data);
        let dev = backend.lock()?;
        let stream = dev.stream.clone();
        // The rows, labels, scores and order, and the grouping's counts at their largest.
        let counts = 4 * crate::plan::GROUP_CELLS;
        if !super::fits_half_free(&stream, 4 * n * (dim + 3) + counts)? {
            backend.slower(format!(
                "k-means over {n} rows copied them to the device for each iteration: held, they \
                 need more than half the free device memory"
            ));
            return Ok(None);
        }
        let rows = stream
            .clone_htod(host.as_ref())
            .map_err(|e| gpu_err("copying k-means rows to the device", e))?;
        // SAFETY (all three): written by argmin_rows / assign_small and uploads before any read.
        let alloc_u32 = |len| unsafe { stream.alloc::<u32>(len) };
        let labels = alloc_u32(n).map_err(|e| gpu_err("allocating device memory", e))?;
        let order = alloc_u32(n).map_err(|e| gpu_err("allocating device memory", e))?;
        let scores = unsafe { stream.alloc::<f32>(n) }
            .map_err(|e| gpu_err("allocating device memory", e))?;
        Ok(Some(Box::new(DeviceLloyd {
            backend,
            n,
            dim,
            rows,
            sq_norms: squared_norms(data),
            labels,
            scores,
            order,
            data,
            rows_checked: false,
            clusters: None,
        })))
    }

    /// Uploads `centroids` and assigns every held row on the device (labels and scores in
    /// `labels` and `scores`, not waited for); returns whether by `assign_small`, whose scores
    /// are the squared distances (the GEMM's lack the rows' norms).
    fn assign_on_device(&mut self, centroids: ArrayView2<'_, f32>) -> Result<bool> {
        let (n, dim) = (self.n, self.dim);
        let kc = centroids.nrows();
        if kc == 0 || centroids.ncols() != dim || kc > i32::MAX as usize {
            return Err(Error::Gpu(
                "k-means on the GPU: centroids missing or of another dimension".into(),
            ));
        }
        let small = assigns_small(dim, kc);
        if !small {
            // Only a product (GEMM) assignment rounds to fp16 (`assign_small` works in fp32):
            // the rows are checked on the first, the centroids on each, since a split moves a
            // centroid by 1/1024 of itself. Before the lock: the checks run on rayon's threads.
            if !self.rows_checked {
                let rows = super::contiguous(&self.data);
                self.backend.fp16_range("the k-means rows", &rows, dim, 0)?;
                self.rows_checked = true;
            }
            let c = super::contiguous(&centroids);
            self.backend
                .fp16_range("the k-means centroids", &c, dim, 0)?;
        }
        let mut dev = self.backend.lock()?;
        let stream = dev.stream.clone();
        if self
            .clusters
            .as_ref()
            .is_none_or(|c| c.centroids.len() != kc * dim)
        {
            let chunk = crate::plan::group_chunk_rows(n, kc);
            let chunks = n.div_ceil(chunk);
            // SAFETY: each is written before it is read: the centroids (and, on the GEMM path,
            // their norms) by the uploads below, the rest by the grouping's launches (the
            // counts zeroed first).
            let alloc = || -> std::result::Result<_, cudarc::driver::DriverError> {
                Ok(unsafe {
                    Clusters {
                        centroids: stream.alloc::<f32>(kc * dim)?,
                        norms: stream.alloc::<f32>(kc)?,
                        start: stream.alloc::<u32>(kc + 1)?,
                        sizes: stream.alloc::<u32>(kc)?,
                        counts: stream.alloc::<u32>(chunks * kc)?,
                        chunk,
                    }
                })
            };
            self.clusters = Some(alloc().map_err(|e| gpu_err("allocating device memory", e))?);
        }
        let clusters = self
            .clusters
            .as_mut()
            .ok_or_else(|| Error::Gpu("centroid buffer missing".into()))?;
        let c_host = super::contiguous(&centroids);
        stream
            .memcpy_htod(c_host.as_ref(), &mut clusters.centroids)
            .map_err(|e| gpu_err("copying centroids to the device", e))?;
        let (c_ptr, rows_ptr) = (raw(&stream, &clusters.centroids), raw(&stream, &self.rows));
        let (oc_ptr, os_ptr) = (raw(&stream, &self.labels), raw(&stream, &self.scores));
        if small {
            dev.nearest_small(rows_ptr, n, c_ptr, kc, dim, oc_ptr, os_ptr)?;
        } else {
            stream
                .memcpy_htod(&squared_norms(centroids), &mut clusters.norms)
                .map_err(|e| gpu_err("copying centroid norms to the device", e))?;
            let cn_ptr = raw(&stream, &clusters.norms);
            // The tiles `Backend::assign_nearest` uses, so cuBLAS sees the same shapes.
            let r_tile = dev.assign_tile_rows(kc, n);
            for r0 in (0..n).step_by(r_tile) {
                let rt = r_tile.min(n - r0);
                let (x, out) = ((r0 * dim * 4) as u64, (r0 * 4) as u64);
                dev.nearest_by_gemm(
                    rows_ptr + x,
                    rt,
                    c_ptr,
                    cn_ptr,
                    kc,
                    dim,
                    oc_ptr + out,
                    os_ptr + out,
                )?;
            }
        }
        Ok(small)
    }

    /// The rows' squared distances from the scores `assign_on_device` left (copied back, the
    /// copy waited for by the caller's synchronisation): `assign_nearest`'s, the rows' norms
    /// added on the GEMM path.
    fn distances(&self, scores: &mut [f32], small: bool) {
        if !small {
            // Scores are ‖c‖² − 2·x·c: add ‖x‖² as `assign_nearest` does.
            for (d, x) in scores.iter_mut().zip(&self.sq_norms) {
                *d = (*d + x).max(0.0);
            }
        }
    }

    /// Groups the rows by the labels on the device (`label_counts`, `label_offsets`,
    /// `label_starts`, `label_scatter`): the order, starts and sizes the host's
    /// `group_by_label` gives, left in `order` and the clusters' `start` and `sizes`.
    fn group_on_device(&mut self, dev: &Device, kc: usize) -> Result<()> {
        let stream = dev.stream.clone();
        let clusters = self
            .clusters
            .as_mut()
            .ok_or_else(|| Error::Gpu("centroid buffer missing".into()))?;
        stream
            .memset_zeros(&mut clusters.counts)
            .map_err(|e| gpu_err("clearing the grouping's counts", e))?;
        let (n_i, k_i, chunk_i) = (self.n as i64, kc as i32, clusters.chunk as i64);
        let chunks = self.n.div_ceil(clusters.chunk);
        let chunks_i = chunks as i32;
        let labels_ptr = raw(&stream, &self.labels);
        let (counts_ptr, sizes_ptr) = (
            raw(&stream, &clusters.counts),
            raw(&stream, &clusters.sizes),
        );
        let (start_ptr, order_ptr) = (raw(&stream, &clusters.start), raw(&stream, &self.order));
        let cfg = |blocks: usize, threads: u32| LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&dev.label_counts);
        launch
            .arg(&labels_ptr)
            .arg(&n_i)
            .arg(&k_i)
            .arg(&chunk_i)
            .arg(&counts_ptr);
        // SAFETY (all four): arguments match the kernels' signatures; the labels hold n words
        // below kc, the counts chunks·kc, the sizes kc, the starts kc + 1 and the order n.
        unsafe { launch.launch(cfg(chunks, GROUP_THREADS)) }
            .map_err(|e| gpu_err("launching label_counts", e))?;
        let mut launch = stream.launch_builder(&dev.label_offsets);
        launch
            .arg(&counts_ptr)
            .arg(&chunks_i)
            .arg(&k_i)
            .arg(&sizes_ptr);
        unsafe { launch.launch(cfg(kc.div_ceil(GROUP_THREADS as usize), GROUP_THREADS)) }
            .map_err(|e| gpu_err("launching label_offsets", e))?;
        let mut launch = stream.launch_builder(&dev.label_starts);
        launch.arg(&sizes_ptr).arg(&k_i).arg(&start_ptr);
        unsafe { launch.launch(cfg(1, SCAN_THREADS)) }
            .map_err(|e| gpu_err("launching label_starts", e))?;
        let mut launch = stream.launch_builder(&dev.label_scatter);
        launch
            .arg(&labels_ptr)
            .arg(&n_i)
            .arg(&k_i)
            .arg(&chunk_i)
            .arg(&counts_ptr)
            .arg(&start_ptr)
            .arg(&order_ptr);
        unsafe { launch.launch(cfg(chunks, 32)) }
            .map_err(|e| gpu_err("launching label_scatter", e))?;
        Ok(())
    }
}

impl Lloyd for DeviceLloyd<'_> {
    fn step(&mut self, centroids: &mut Array2<f32>) -> Result<Step> {
        let small = self.assign_on_device(centroids.view())?;
        let kc = centroids.nrows();
        let mut scores = vec![0f32; self.n];
        let mut sizes = vec![0u32; kc];
        {
            let dev = self.backend.lock()?;
            let stream = dev.stream.clone();
            self.group_on_device(&dev, kc)?;
            let clusters = self
                .clusters
                .as_mut()
                .ok_or_else(|| Error::Gpu("centroid buffer missing".into()))?;
            let (rows_ptr, order_ptr) = (raw(&stream, &self.rows), raw(&stream, &self.order));
            let (start_ptr, c_ptr) = (
                raw(&stream, &clusters.start),
                raw(&stream, &clusters.centroids),
            );
            let shape = (kc, 1, MEAN_THREADS);
            launch_means(
                &dev, rows_ptr, self.n, self.dim, self.dim, shape, order_ptr, start_ptr, c_ptr,
            )?;
            let flat = centroids
                .as_slice_mut()
                .ok_or_else(|| Error::Gpu("k-means centroids not contiguous".into()))?;
            stream
                .memcpy_dtoh(&clusters.centroids, flat)
                .map_err(|e| gpu_err("copying centroids from the device", e))?;
            stream
                .memcpy_dtoh(&clusters.sizes, &mut sizes)
                .map_err(|e| gpu_err("copying cluster sizes from the device", e))?;
            stream
                .memcpy_dtoh(&self.scores, &mut scores)
                .map_err(|e| gpu_err("copying distances from the device", e))?;
            stream
                .synchronize()
                .map_err(|e| gpu_err("updating centroids", e))?;
        }
        self.distances(&mut scores, small);
        let objective: f64 = scores.iter().map(|&d| d as f64).sum();
        Ok((sizes.iter().map(|&s| s as u64).collect(), objective))
    }

    fn sizes(&mut self, centroids: ArrayView2<'_, f32>) -> Result<Vec<u64>> {
        self.assign_on_device(centroids)?;
        let kc = centroids.nrows();
        let mut sizes = vec![0u32; kc];
        let dev = self.backend.lock()?;
        self.group_on_device(&dev, kc)?;
        let clusters = self
            .clusters
            .as_ref()
            .ok_or_else(|| Error::Gpu("centroid buffer missing".into()))?;
        dev.stream
            .memcpy_dtoh(&clusters.sizes, &mut sizes)
            .map_err(|e| gpu_err("copying cluster sizes from the device", e))?;
        dev.stream
            .synchronize()
            .map_err(|e| gpu_err("assigning rows to centroids", e))?;
        Ok(sizes.iter().map(|&s| s as u64).collect())
    }
}

/// Launches `pq_encode` (kernels/quantize.cu) over `x_ptr: [n, dim]` with `pq_dim` codebooks
/// of `ksub` rows of `dsub` floats at `book_ptr`: codes to `codes_ptr` (`[n, pq_dim]` bytes)
/// and, unless `dists_ptr` is 0, each code's squared distance to `dists_ptr` (`[pq_dim, n]`).
#[allow(clippy::too_many_arguments)]
fn launch_pq_encode(
    dev: &Device,
    x_ptr: u64,
    n: usize,
    dim: usize,
    pq_dim: usize,
    dsub: usize,
    ksub: usize,
    book_ptr: u64,
    codes_ptr: u64,
    dists_ptr: u64,
) -> Result<()> {
    let (rows, dim_i, dsub_i, ksub_i) = (n as i64, dim as i32, dsub as i32, ksub as i32);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(ENCODE_THREADS as usize) as u32, pq_dim as u32, 1),
        block_dim: (ENCODE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = dev.stream.launch_builder(&dev.pq_encode);
    launch
        .arg(&x_ptr)
        .arg(&rows)
        .arg(&dim_i)
        .arg(&dsub_i)
        .arg(&ksub_i)
        .arg(&book_ptr)
        .arg(&codes_ptr)
        .arg(&dists_ptr);
    // SAFETY: arguments match pq_encode's signature; the caller's buffers hold n·dim rows,
    // pq_dim·ksub·dsub codebook floats, n·pq_dim code bytes and (unless null) pq_dim·n floats.
    unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching pq_encode", e))?;
    Ok(())
}

/// Launches `centroid_means` (kernels/quantize.cu) for `(k, problems, threads)`: each of
/// `problems` k-means problems over columns `m·width ..` of `rows_ptr: [n, ld]` moves its `k`
/// centroids (`c_ptr: [problems · k, width]`) to the means of their rows (`order_ptr:
/// [problems, n]`, `start_ptr: [problems, k + 1]`).
#[allow(clippy::too_many_arguments)]
fn launch_means(
    dev: &Device,
    rows_ptr: u64,
    n: usize,
    ld: usize,
    width: usize,
    (k, problems, threads): (usize, usize, u32),
    order_ptr: u64,
    start_ptr: u64,
    c_ptr: u64,
) -> Result<()> {
    let (rows, ld_i, width_i) = (n as i64, ld as i32, width as i32);
    let cfg = LaunchConfig {
        grid_dim: (k as u32, problems as u32, 1),
        block_dim: (threads.min(MEAN_THREADS), 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = dev.stream.launch_builder(&dev.centroid_means);
    launch
        .arg(&rows_ptr)
        .arg(&rows)
        .arg(&ld_i)
        .arg(&width_i)
        .arg(&order_ptr)
        .arg(&start_ptr)
        .arg(&c_ptr);
    // SAFETY: arguments match centroid_means' signature; the caller's buffers hold n·ld row
    // floats, problems·n order entries, problems·(k + 1) starts and problems·k·width centroid
    // floats.
    unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching centroid_means", e))?;
    Ok(())
}

/// A product quantizer's training rows held on the device, every sub-space's k-means stepped
/// together ([`Backend::subspace_lloyds`](crate::backend::Backend)). Per iteration: one
/// `pq_encode` launch assigns every row in every sub-space (the codes `assign_small` gives the
/// CPU, with their distances), `ordered_sums` adds each sub-space's objective in row order,
/// `group_codes` sorts each running sub-space's rows by code (the host's stable counting sort,
/// on the device), and one `centroid_means` launch moves every running sub-space's centroids;
/// the objectives, cluster sizes and codebooks come back. Before, each sub-space took its own
/// Lloyd iterations (pq_dim times the launches and round trips), and later the codes came
/// back every iteration for counting sorts on the host.
pub(super) struct DeviceSubspaces<'a> {
    backend: &'a CudaBackend,
    n: usize,
    dim: usize,
    pq_dim: usize,
    dsub: usize,
    ksub: usize,
    /// `[n, dim]`.
    rows: CudaSlice<f32>,
    /// `[n, pq_dim]` bytes, in words.
    codes: CudaSlice<u32>,
    /// `[pq_dim, n]`.
    dists: CudaSlice<f32>,
    /// `[pq_dim]`.
    sums: CudaSlice<f64>,
    /// `[pq_dim, n]`.
    order: CudaSlice<u32>,
    /// `[pq_dim, ksub + 1]`.
    start: CudaSlice<u32>,
    /// `[pq_dim, ksub]`.
    sizes: CudaSlice<u32>,
    /// `[pq_dim]`: 1 for a sub-space still iterating.
    running: CudaSlice<i32>,
    /// `[pq_dim · ksub, dsub]`.
    books: CudaSlice<f32>,
}

impl<'a> DeviceSubspaces<'a> {
    /// Copies `data` to the device; `None` where a sub-space is wider than `pq_encode` takes or
    /// the buffers would take more than half the free memory (the caller then trains the
    /// sub-spaces one by one).
    pub(super) fn hold(
        backend: &'a CudaBackend,
        data: ArrayView2<'a, f32>,
        pq_dim: usize,
        ksub: usize,
    ) -> Result<Option<Box<dyn Lloyds + 'a>>> {
        let (n, dim) = data.dim();
        let dsub = dim.div_ceil(pq_dim.max(1));
        // pq_dim is a grid dimension of the launches (at most 65535 blocks).
        if n == 0 || pq_dim == 0 || pq_dim > 65_535 || n > u32::MAX as usize || ksub > 256 {
            return Ok(None);
        }
        if !assigns_small(dsub, ksub) {
            return Ok(None);
        }
        let dev = backend.lock()?;
        let stream = dev.stream.clone();
        let words = (n * pq_dim).div_ceil(4);
        let bytes = crate::plan::subspace_rows(
            n as u64,
            dim as u64,
            pq_dim as u64,
            ksub as u64,
            dsub as u64,
        );
        if !super::fits_half_free(&stream, bytes as usize)? {
            backend.slower(
                "PQ training stepped each sub-space alone: all of them held need more than half \
                 the free device memory"
                    .into(),
            );
            return Ok(None);
        }
        let host = super::contiguous(&data);
        let rows = stream
            .clone_htod(host.as_ref())
            .map_err(|e| gpu_err("copying PQ training rows to the device", e))?;
        let alloc = || -> std::result::Result<_, cudarc::driver::DriverError> {
            // SAFETY: each is written before it is read: codes, distances, sums, order, starts
            // and sizes by the kernels of a step, the running flags and codebooks by that
            // step's uploads.
            Ok(unsafe {
                (
                    stream.alloc::<u32>(words)?,
                    stream.alloc::<f32>(pq_dim * n)?,
                    stream.alloc::<f64>(pq_dim)?,
                    stream.alloc::<u32>(pq_dim * n)?,
                    stream.alloc::<u32>(pq_dim * (ksub + 1))?,
                    stream.alloc::<u32>(pq_dim * ksub)?,
                    stream.alloc::<i32>(pq_dim)?,
                    stream.alloc::<f32>(pq_dim * ksub * dsub)?,
                )
            })
        };
        let (codes, dists, sums, order, start, sizes, running, books) =
            alloc().map_err(|e| gpu_err("allocating device memory", e))?;
        Ok(Some(Box::new(DeviceSubspaces {
            backend,
            n,
            dim,
            pq_dim,
            dsub,
            ksub,
            rows,
            codes,
            dists,
            sums,
            order,
            start,
            sizes,
            running,
            books,
        })))
    }
}

impl Lloyds for DeviceSubspaces<'_> {
    fn count(&self) -> usize {
        self.pq_dim
    }

    fn step(
        &mut self,
        centroids: &mut [Array2<f32>],
        running: &[bool],
    ) -> Result<Vec<Option<Step>>> {
        let (n, pq_dim, ksub, dsub) = (self.n, self.pq_dim, self.ksub, self.dsub);
        if centroids.len() != pq_dim || centroids.iter().any(|c| c.dim() != (ksub, dsub)) {
            return Err(Error::Gpu(
                "PQ training on the GPU: codebooks missing or of another shape".into(),
            ));
        }
        let mut books: Vec<f32> = Vec::with_capacity(pq_dim * ksub * dsub);
        for c in centroids.iter() {
            books.extend(c.iter());
        }
        // Assign every row in every sub-space, add each sub-space's objective, group each
        // running sub-space's rows by code, and move its centroids: all on the device, with
        // the objectives, cluster sizes and codebooks brought back.
        let flags: Vec<i32> = running.iter().map(|&r| i32::from(r)).collect();
        let mut sums = vec![0f64; pq_dim];
        let mut sizes = vec![0u32; pq_dim * ksub];
        {
            let dev = self.backend.lock()?;
            let stream = dev.stream.clone();
            stream
                .memcpy_htod(&books, &mut self.books)
                .map_err(|e| gpu_err("copying codebooks to the device", e))?;
            stream
                .memcpy_htod(&flags, &mut self.running)
                .map_err(|e| gpu_err("copying the running sub-spaces to the device", e))?;
            let (x_ptr, book_ptr) = (raw(&stream, &self.rows), raw(&stream, &self.books));
            let (codes_ptr, dists_ptr) = (raw(&stream, &self.codes), raw(&stream, &self.dists));
            launch_pq_encode(
                &dev, x_ptr, n, self.dim, pq_dim, dsub, ksub, book_ptr, codes_ptr, dists_ptr,
            )?;
            let (n_i, count_i, sums_ptr) = (n as i64, pq_dim as i32, raw(&stream, &self.sums));
            let cfg = LaunchConfig {
                grid_dim: (pq_dim.div_ceil(32) as u32, 1, 1),
                block_dim: (32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = stream.launch_builder(&dev.ordered_sums);
            launch
                .arg(&dists_ptr)
                .arg(&n_i)
                .arg(&count_i)
                .arg(&sums_ptr);
            // SAFETY: arguments match ordered_sums' signature; the distances hold pq_dim·n
            // floats and the sums pq_dim doubles.
            unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching ordered_sums", e))?;
            let (ksub_i, order_ptr) = (ksub as i32, raw(&stream, &self.order));
            let (start_ptr, sizes_ptr) = (raw(&stream, &self.start), raw(&stream, &self.sizes));
            let running_ptr = raw(&stream, &self.running);
            let cfg = LaunchConfig {
                grid_dim: (pq_dim as u32, 1, 1),
                block_dim: (GROUP_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = stream.launch_builder(&dev.group_codes);
            launch
                .arg(&codes_ptr)
                .arg(&n_i)
                .arg(&count_i)
                .arg(&ksub_i)
                .arg(&running_ptr)
                .arg(&order_ptr)
                .arg(&start_ptr)
                .arg(&sizes_ptr);
            // SAFETY: arguments match group_codes' signature; the codes hold n·pq_dim bytes
            // below ksub ≤ 256, the flags pq_dim ints, the order pq_dim·n, the starts
            // pq_dim·(ksub + 1) and the sizes pq_dim·ksub words.
            unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching group_codes", e))?;
            let shape = (ksub, pq_dim, 32);
            launch_means(
                &dev, x_ptr, n, self.dim, dsub, shape, order_ptr, start_ptr, book_ptr,
            )?;
            stream
                .memcpy_dtoh(&self.sums, &mut sums)
                .map_err(|e| gpu_err("copying objectives from the device", e))?;
            stream
                .memcpy_dtoh(&self.sizes, &mut sizes)
                .map_err(|e| gpu_err("copying cluster sizes from the device", e))?;
            stream
                .memcpy_dtoh(&self.books, &mut books)
                .map_err(|e| gpu_err("copying codebooks from the device", e))?;
            stream
                .synchronize()
                .map_err(|e| gpu_err("training PQ codebooks", e))?;
        }
        let words = ksub * dsub;
        Ok(centroids
            .iter_mut()
            .enumerate()
            .map(|(m, c)| {
                if !running[m] {
                    return None;
                }
                for (v, &b) in c.iter_mut().zip(&books[m * words..(m + 1) * words]) {
                    *v = b;
                }
                let sizes = sizes[m * ksub..(m + 1) * ksub].iter().map(|&s| s as u64);
                Some((sizes.collect(), sums[m]))
            })
            .collect())
    }
}
