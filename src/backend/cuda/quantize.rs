//! Quantizers on the GPU: Lloyd's k-means iterations with the rows on the device
//! ([`Backend::lloyd`](crate::backend::Backend)), and PQ encoding of every sub-space in one
//! launch ([`pq_encode`]).
//!
//! The rows are copied to the device once. Each iteration uploads the centroids, assigns every
//! row as [`Backend::assign_nearest`](crate::backend::Backend) does (the same GEMM tiles and
//! `argmin_rows`, or `assign_small` for PQ sub-spaces, so the same labels), and copies the
//! labels and scores back: the host adds the objective and groups the rows by label (counting
//! sort), and `centroid_means` (kernels/quantize.cu) moves each centroid to the mean of its rows
//! with the CPU's arithmetic in the CPU's order. Per iteration that is `12·n` bytes each way
//! plus the centroids, instead of the rows.

use super::{assigns_small, gpu_err, raw, CudaBackend};
use crate::backend::Lloyd;
use crate::index::kmeans::group_by_label;
use crate::metric::squared_norms;
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use ndarray::{Array2, ArrayView2};

/// Threads per block of `centroid_means` (`MEAN_THREADS` in kernels/quantize.cu).
const MEAN_THREADS: u32 = 128;
/// Threads per block of `pq_encode` (`ENCODE_THREADS` in kernels/quantize.cu).
const ENCODE_THREADS: u32 = 256;

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
    let (rows, dim_i, dsub_i, ksub_i) = (n as i64, dim as i32, dsub as i32, ksub as i32);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(ENCODE_THREADS as usize) as u32, pq_dim as u32, 1),
        block_dim: (ENCODE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = stream.launch_builder(&dev.pq_encode);
    launch
        .arg(&x_ptr)
        .arg(&rows)
        .arg(&dim_i)
        .arg(&dsub_i)
        .arg(&ksub_i)
        .arg(&book_ptr)
        .arg(&out_ptr);
    // SAFETY: arguments match pq_encode's signature; the buffers hold n·dim residuals,
    // pq_dim·ksub·dsub codebook floats and n·pq_dim code bytes.
    unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching pq_encode", e))?;
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
    /// Centroids, their norms and the cluster starts, sized by the first call.
    centroids: Option<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<u32>)>,
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
        let dev = backend.lock()?;
        let stream = dev.stream.clone();
        if !super::fits_half_free(&stream, 4 * n * (dim + 3))? {
            return Ok(None);
        }
        let host = super::contiguous(&data);
        backend.fp16_range("the k-means rows", &host, dim, 0)?;
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
            centroids: None,
        })))
    }

    /// Uploads `centroids` and assigns every held row on the device; returns the labels and
    /// squared distances (copied back).
    fn assign(&mut self, centroids: ArrayView2<'_, f32>) -> Result<(Vec<u32>, Vec<f32>)> {
        let (n, dim) = (self.n, self.dim);
        let kc = centroids.nrows();
        if kc == 0 || centroids.ncols() != dim {
            return Err(Error::Gpu(
                "k-means on the GPU: centroids missing or of another dimension".into(),
            ));
        }
        let mut dev = self.backend.lock()?;
        let stream = dev.stream.clone();
        let small = assigns_small(dim, kc);
        if self
            .centroids
            .as_ref()
            .is_none_or(|(c, _, _)| c.len() != kc * dim)
        {
            // SAFETY: each is uploaded below (norms on the GEMM path only, where they are read)
            // or, for the starts, before `centroid_means` reads them.
            let alloc = || -> std::result::Result<_, cudarc::driver::DriverError> {
                Ok(unsafe {
                    (
                        stream.alloc::<f32>(kc * dim)?,
                        stream.alloc::<f32>(kc)?,
                        stream.alloc::<u32>(kc + 1)?,
                    )
                })
            };
            self.centroids = Some(alloc().map_err(|e| gpu_err("allocating device memory", e))?);
        }
        let (c_dev, cn_dev, _) = self
            .centroids
            .as_mut()
            .ok_or_else(|| Error::Gpu("centroid buffer missing".into()))?;
        let c_host = super::contiguous(&centroids);
        stream
            .memcpy_htod(c_host.as_ref(), c_dev)
            .map_err(|e| gpu_err("copying centroids to the device", e))?;
        let (c_ptr, rows_ptr) = (raw(&stream, c_dev), raw(&stream, &self.rows));
        let (oc_ptr, os_ptr) = (raw(&stream, &self.labels), raw(&stream, &self.scores));
        if small {
            dev.nearest_small(rows_ptr, n, c_ptr, kc, dim, oc_ptr, os_ptr)?;
        } else {
            stream
                .memcpy_htod(&squared_norms(centroids), cn_dev)
                .map_err(|e| gpu_err("copying centroid norms to the device", e))?;
            let cn_ptr = raw(&stream, cn_dev);
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
        let mut labels = vec![0u32; n];
        let mut dists = vec![0f32; n];
        stream
            .memcpy_dtoh(&self.labels, &mut labels)
            .map_err(|e| gpu_err("copying labels from the device", e))?;
        stream
            .memcpy_dtoh(&self.scores, &mut dists)
            .map_err(|e| gpu_err("copying distances from the device", e))?;
        stream
            .synchronize()
            .map_err(|e| gpu_err("assigning rows to centroids", e))?;
        if !small {
            // Scores are ‖c‖² − 2·x·c: add ‖x‖² as `assign_nearest` does.
            for (d, x) in dists.iter_mut().zip(&self.sq_norms) {
                *d = (*d + x).max(0.0);
            }
        }
        Ok((labels, dists))
    }
}

impl Lloyd for DeviceLloyd<'_> {
    fn step(&mut self, centroids: &mut Array2<f32>) -> Result<(Vec<u64>, f64)> {
        let (labels, dists) = self.assign(centroids.view())?;
        let objective: f64 = dists.iter().map(|&d| d as f64).sum();
        let kc = centroids.nrows();
        let groups = group_by_label(&labels, kc);
        let start: Vec<u32> = groups.start.iter().map(|&s| s as u32).collect();
        let dev = self.backend.lock()?;
        let stream = dev.stream.clone();
        let (c_dev, _, start_dev) = self
            .centroids
            .as_mut()
            .ok_or_else(|| Error::Gpu("centroid buffer missing".into()))?;
        stream
            .memcpy_htod(&groups.order, &mut self.order)
            .map_err(|e| gpu_err("copying the row order to the device", e))?;
        stream
            .memcpy_htod(&start, start_dev)
            .map_err(|e| gpu_err("copying cluster starts to the device", e))?;
        let dim_i = self.dim as i32;
        let (rows_ptr, order_ptr) = (raw(&stream, &self.rows), raw(&stream, &self.order));
        let (start_ptr, c_ptr) = (raw(&stream, start_dev), raw(&stream, c_dev));
        let cfg = LaunchConfig {
            grid_dim: (kc as u32, 1, 1),
            block_dim: (MEAN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&dev.centroid_means);
        launch
            .arg(&rows_ptr)
            .arg(&dim_i)
            .arg(&order_ptr)
            .arg(&start_ptr)
            .arg(&c_ptr);
        // SAFETY: arguments match centroid_means' signature; the rows hold n·dim floats, the
        // order n rows, the starts kc + 1 entries and the centroids kc·dim floats.
        unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching centroid_means", e))?;
        let flat = centroids
            .as_slice_mut()
            .ok_or_else(|| Error::Gpu("k-means centroids not contiguous".into()))?;
        stream
            .memcpy_dtoh(c_dev, flat)
            .map_err(|e| gpu_err("copying centroids from the device", e))?;
        stream
            .synchronize()
            .map_err(|e| gpu_err("updating centroids", e))?;
        Ok((groups.sizes, objective))
    }

    fn sizes(&mut self, centroids: ArrayView2<'_, f32>) -> Result<Vec<u64>> {
        let (labels, _) = self.assign(centroids)?;
        Ok(group_by_label(&labels, centroids.nrows()).sizes)
    }
}
