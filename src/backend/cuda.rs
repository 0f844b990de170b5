//! The CUDA backend: the heavy stages on an NVIDIA GPU, the CPU backend as their oracle.
//!
//! Nothing CUDA is linked: `cudarc` opens libcuda, libnvrtc and libcublas at run time, so this
//! vecbuild builds without a CUDA toolkit and runs on machines without a GPU. Asking for a GPU
//! where those libraries or the device are missing is a [`Error::Gpu`] (exit 2), never a panic
//! and never a quiet fall back to the CPU.
//!
//! Kernels are ours (`kernels/*.cu`), embedded in the binary and compiled by NVRTC for the GPU
//! present when the backend opens, so the code always matches the local driver.
//!
//! Exact k-NN ([`Backend::knn_block`]), per tile of queries × base rows:
//! 1. cuBLAS SGEMM writes the tile's scores, `α·Q·Xᵀ` (α = −2 for L2, −1 otherwise) into a
//!    scratch buffer sized from free device memory, so the full distance matrix never exists.
//! 2. `select_topk` (kernels/select.cu) adds `‖x‖²` (L2) and keeps each query's best k, starting
//!    from the threshold its host-side [`TopK`] has reached on earlier tiles, so later tiles
//!    hand back few candidates.
//! 3. The k candidates per query come back into pinned memory and are pushed into the host
//!    [`TopK`]s, which apply the same total order (score, then row) as the CPU, while the GPU
//!    works on the next tile (whose thresholds therefore lag one tile: looser, same results).
//!
//! Host base tiles (rows, then norms) are copied into pinned memory (two buffers) by CPU threads
//! while the GPU works on the previous tile, then copied to the device on a second stream, which
//! the compute stream waits for by event.
//!
//! Nearest-centroid assignment ([`Backend::assign_nearest`]) is the same GEMM followed by
//! `argmin_rows`, one warp per row, ties to the smaller centroid; for up to [`SMALL_DIM`](super::cpu::SMALL_DIM)
//! dimensions (PQ sub-spaces) `assign_small` computes the differences directly, as the CPU does.
//!
//! CAGRA's graph optimisation ([`Backend::optimize_graph`]: rank-based pruning, reverse edges,
//! merge) is `prune_graph`, `reverse_count`, `reverse_fill` and `merge_graph`
//! (kernels/cagra.cu, `cuda/optimize.rs`), the same integer computations as the CPU's, so the
//! graphs are identical.
//! The ivf builder's neighbour-of-neighbour pass ([`Backend::refine_graph`]) is `refine_graph`,
//! one block per row, with the CPU's candidates, arithmetic and order (`cuda/join.rs`).
//!
//! CAGRA search ([`Backend::cagra_search`]) runs the CPU's beam search in one kernel, a thread
//! block per query, on a copy of the index made once ([`Backend::load_cagra`], `cuda/cagra.rs`).

mod cagra;
mod ivf_pq;
mod join;
pub mod kernel_cache;
mod optimize;
mod quantize;

pub use cagra::{layout as cagra_search_layout, Layout as CagraSearchLayout};
pub use cagra::{MAX_GPU_CANDIDATES, MAX_GPU_ITOPK};
pub use ivf_pq::{
    probe_arrays as ivf_pq_probe_arrays, select_slots as ivf_pq_select_slots,
    tables as ivf_pq_tables, Tables as IvfPqTables,
};
pub use join::refine_slots;

use super::assigns_small;
use super::{Backend, ListJoin, Loaded, Queries};
use crate::laps::span;
use crate::metric::squared_norms;
use crate::search::cagra::{CagraIndex, CagraSearchParams, SearchStats};
use crate::search::ivf_pq::IvfPqIndex;
use crate::search::SearchResults;
use crate::{Error, Metric, Result, TopK};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PinnedHostSlice, PushKernelArg,
};
use ndarray::ArrayView2;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// Our kernel sources, by file name, as compiled at run time and checked in CI.
pub const KERNELS: &[(&str, &str)] = &[
    ("select.cu", include_str!("../../kernels/select.cu")),
    ("cagra.cu", include_str!("../../kernels/cagra.cu")),
    (
        "cagra_search.cu",
        include_str!("../../kernels/cagra_search.cu"),
    ),
    ("quantize.cu", include_str!("../../kernels/quantize.cu")),
];

/// Each kernel function and the file that defines it.
const KERNEL_FUNCTIONS: &[(&str, &str)] = &[
    ("select.cu", "select_topk"),
    ("select.cu", "argmin_rows"),
    ("select.cu", "assign_small"),
    ("select.cu", "to_half"),
    ("select.cu", "ivf_pq_scan"),
    ("select.cu", "rescore_exact"),
    ("cagra.cu", "prune_graph"),
    ("cagra.cu", "reverse_count"),
    ("cagra.cu", "reverse_fill"),
    ("cagra.cu", "merge_graph"),
    ("cagra.cu", "refine_graph"),
    ("cagra.cu", "join_scores"),
    ("cagra.cu", "reach_level"),
    ("cagra_search.cu", "cagra_search"),
    ("quantize.cu", "centroid_means"),
    ("quantize.cu", "pq_encode"),
    ("quantize.cu", "ordered_sums"),
    ("quantize.cu", "group_codes"),
    ("quantize.cu", "label_counts"),
    ("quantize.cu", "label_offsets"),
    ("quantize.cu", "label_starts"),
    ("quantize.cu", "label_scatter"),
];

/// Largest k the GPU selection keeps per query (its shared-memory buffer holds 2048 slots).
pub const MAX_GPU_K: usize = 1024;

/// Threads per block of `select_topk` and `ivf_pq_scan` (`SELECT_THREADS` in
/// kernels/select.cu).
const SELECT_THREADS: u32 = 256;

/// Base tiles per block of a streamed exact search ([`Backend::exact_block_rows`]): 512 MiB of
/// rows at most, one call for a 1M × 128 base.
const EXACT_BLOCK_TILES: usize = 8;

/// An empty slot in a kernel's row or column output (`NO_ROW` in the kernels).
const NO_ROW: u32 = u32::MAX;

/// Queries per launch of a search kernel (a block each): `cagra_search`, `ivf_pq_scan`.
const QUERY_BATCH: usize = 1 << 16;

/// The arithmetic of the GPU's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// IEEE fp32 throughout: the same results as the CPU backend, up to summation order.
    #[default]
    Fp32,
    /// Tensor-core TF32 products (10-bit mantissa inputs, fp32 accumulation): several times
    /// the GEMM rate, at the cost of near-ties resolved differently. Opt-in.
    Tf32,
    /// Tensor-core products of fp16 inputs (rows rounded to binary16 on the device by
    /// `to_half`, 11-bit significands) with fp32 accumulation and fp32 scores: the highest GEMM
    /// rate, at a cost in recall that `scripts/gpu-check.sh` measures. Inputs must lie within
    /// fp16's range (±65504); a value beyond it is an error, never an infinity. Opt-in.
    Fp16,
}

/// Largest magnitude that rounds to a finite fp16 (65504 and up to, not including, 65520).
const FP16_LIMIT: f32 = 65520.0;

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            "fp16" => Ok(Precision::Fp16),
            other => Err(Error::param(format!(
                "GPU precision {other}: expected fp32, tf32 or fp16"
            ))),
        }
    }
}

/// Which of the CUDA libraries this process can open.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Libraries {
    pub driver: bool,
    pub nvrtc: bool,
    pub cublas: bool,
}

/// Looks for libcuda, libnvrtc and libcublas the way `cudarc` will load them.
pub fn libraries() -> Libraries {
    // SAFETY: these only try `dlopen` on the candidate names and report whether one opened.
    unsafe {
        Libraries {
            driver: cudarc::driver::sys::is_culib_present(),
            nvrtc: cudarc::nvrtc::sys::is_culib_present(),
            cublas: cudarc::cublas::sys::is_culib_present(),
        }
    }
}

/// One GPU as the driver reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_bytes: usize,
    pub free_bytes: usize,
}

/// The error of a GPU step, `what`, that failed with `e`. Running out of device memory says so,
/// with the memory free now and where to see what each stage holds.
fn gpu_err<E: std::fmt::Debug + 'static>(what: &str, e: E) -> Error {
    use cudarc::cublas::{result::CublasError, sys::cublasStatus_t};
    use cudarc::driver::{sys::CUresult, DriverError};
    let any = &e as &dyn std::any::Any;
    let out_of_memory = matches!(
        any.downcast_ref::<DriverError>(),
        Some(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY))
    ) || matches!(
        any.downcast_ref::<CublasError>(),
        Some(CublasError(cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED))
    );
    if !out_of_memory {
        return Error::Gpu(format!("{what}: {e:?}"));
    }
    let human = |b: usize| crate::plan::human(b as u64);
    let free = match cudarc::driver::result::mem_get_info() {
        Ok((free, total)) => format!("{} free of {}", human(free), human(total)),
        Err(_) => "free memory unknown".into(),
    };
    Error::Gpu(format!(
        "{what}: out of device memory ({e:?}; {free} now). `vecbuild build --dry-run` with \
         the build's options prints what each stage holds on the device; other processes on the \
         GPU (nvidia-smi) hold memory too"
    ))
}

/// The GPUs the driver sees. An error when libcuda cannot be opened.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    if !libraries().driver {
        return Err(Error::Gpu(
            "the CUDA driver library (libcuda.so) was not found: no NVIDIA driver on this machine, or it is not on the library path".into(),
        ));
    }
    let n = CudaContext::device_count().map_err(|e| gpu_err("counting CUDA devices", e))?;
    (0..n.max(0) as usize).map(device_info).collect()
}

fn device_info(ordinal: usize) -> Result<DeviceInfo> {
    let ctx = CudaContext::new(ordinal).map_err(|e| gpu_err("opening the device", e))?;
    info_of(&ctx)
}

/// What the driver reports about the device of an open context.
fn info_of(ctx: &CudaContext) -> Result<DeviceInfo> {
    let ordinal = ctx.ordinal();
    let (free_bytes, total_bytes) = ctx
        .mem_get_info()
        .map_err(|e| gpu_err("reading device memory", e))?;
    Ok(DeviceInfo {
        ordinal,
        name: ctx
            .name()
            .map_err(|e| gpu_err("reading the device name", e))?,
        compute_capability: ctx
            .compute_capability()
            .map_err(|e| gpu_err("reading the compute capability", e))?,
        total_bytes,
        free_bytes,
    })
}

/// Compiles every kernel with NVRTC: PTX for `arch` (`compute_90`) when loading on a device,
/// or a cubin for a real architecture (`sm_90`) with ptxas' resource report when checking.
fn nvrtc_compile(src: &str, name: &str, arch: &str, cubin: bool) -> Result<(Vec<u8>, String)> {
    use cudarc::nvrtc::sys;
    use std::ffi::{CStr, CString};
    if !libraries().nvrtc {
        return Err(Error::Gpu(
            "the NVRTC library (libnvrtc.so) was not found; install the CUDA runtime compiler (for example the nvidia-cuda-nvrtc wheel) and put its lib folder on LD_LIBRARY_PATH".into(),
        ));
    }
    let c_src = CString::new(src).map_err(|e| gpu_err("kernel source", e))?;
    let c_name = CString::new(name).map_err(|e| gpu_err("kernel name", e))?;
    let mut opts = vec![format!("--gpu-architecture={arch}")];
    opts.extend(kernel_cache::PTX_OPTIONS.iter().map(|o| o.to_string()));
    if cubin {
        opts.push("--ptxas-options=-v".to_string());
    }
    let c_opts: Vec<CString> = opts
        .iter()
        .map(|o| CString::new(o.as_str()).map_err(|e| gpu_err("NVRTC option", e)))
        .collect::<Result<_>>()?;
    let ptrs: Vec<*const std::ffi::c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: plain NVRTC C API calls on a program this function creates and destroys; every
    // pointer passed lives until the call returns, and buffers are sized from NVRTC's answers.
    unsafe {
        let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
        let check = |r: sys::nvrtcResult, what: &str| -> Result<()> {
            if r == sys::nvrtcResult::NVRTC_SUCCESS {
                Ok(())
            } else {
                Err(gpu_err(what, r))
            }
        };
        check(
            sys::nvrtcCreateProgram(
                &mut prog,
                c_src.as_ptr(),
                c_name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ),
            "creating an NVRTC program",
        )?;
        let compiled = sys::nvrtcCompileProgram(prog, ptrs.len() as i32, ptrs.as_ptr());
        let mut log_len = 0usize;
        sys::nvrtcGetProgramLogSize(prog, &mut log_len);
        let mut log = vec![0u8; log_len.max(1)];
        sys::nvrtcGetProgramLog(prog, log.as_mut_ptr() as *mut std::ffi::c_char);
        let log = CStr::from_bytes_until_nul(&log)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
            Err(Error::Gpu(format!(
                "NVRTC could not compile kernels/{name} for {arch} ({compiled:?}):\n{log}"
            )))
        } else {
            type SizeOf = unsafe fn(sys::nvrtcProgram, *mut usize) -> sys::nvrtcResult;
            type Read = unsafe fn(sys::nvrtcProgram, *mut std::ffi::c_char) -> sys::nvrtcResult;
            let (size_of, read, what): (SizeOf, Read, &str) = if cubin {
                (sys::nvrtcGetCUBINSize, sys::nvrtcGetCUBIN, "the cubin")
            } else {
                (sys::nvrtcGetPTXSize, sys::nvrtcGetPTX, "the PTX")
            };
            let mut size = 0usize;
            let r = size_of(prog, &mut size);
            let mut image = vec![0u8; size];
            check(r, what)
                .and_then(|_| {
                    check(
                        read(prog, image.as_mut_ptr() as *mut std::ffi::c_char),
                        what,
                    )
                })
                .map(|_| (image, log))
        };
        sys::nvrtcDestroyProgram(&mut prog);
        out
    }
}

/// What ptxas reported for one kernel of a cubin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelResources {
    pub file: String,
    pub function: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// Compiles every kernel to a cubin for `arch` (`sm_80`, `sm_90`) through NVRTC and returns
/// ptxas' resource report per function. This needs libnvrtc only, no GPU: CI runs it.
pub fn check_kernels(arch: &str) -> Result<Vec<KernelResources>> {
    let mut found = Vec::new();
    for (file, src) in KERNELS {
        let (_, log) = nvrtc_compile(src, file, arch, true)?;
        found.extend(parse_ptxas_report(file, &log));
    }
    Ok(found)
}

/// Reads ptxas `-v` lines: "Compiling entry function 'f' for 'sm_90'", then
/// "N bytes stack frame, N bytes spill stores, N bytes spill loads", then "Used N registers".
fn parse_ptxas_report(file: &str, log: &str) -> Vec<KernelResources> {
    // "4 bytes spill stores" → 4, within a comma-separated line.
    let bytes_of = |line: &str, what: &str| -> u32 {
        line.split(',')
            .map(str::trim)
            .find(|part| part.ends_with(what))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("entry function '").nth(1) {
            out.push(KernelResources {
                file: file.to_string(),
                function: rest.split('\'').next().unwrap_or("").to_string(),
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
            });
        } else if let Some(k) = out.last_mut() {
            if line.contains("spill stores") {
                k.spill_stores = bytes_of(line, "spill stores");
                k.spill_loads = bytes_of(line, "spill loads");
            } else if let Some(rest) = line.split("Used ").nth(1) {
                k.registers = rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    out
}

/// One exact k-NN tile's traffic with the host, in pinned memory so the copies are queued on
/// the stream without waiting for it: the thresholds the tile's selection starts from (up) and
/// its `select_topk` output (back). The backend turns cudarc's event tracking off, so the
/// pinned buffers' own events record nothing: `sent` and `returned`, recorded after the copies,
/// are what the host waits on before it rewrites the thresholds or reads the results.
struct TileReturn {
    thresholds: PinnedHostSlice<f32>,
    cols: PinnedHostSlice<u32>,
    scores: PinnedHostSlice<f32>,
    sent: CudaEvent,
    returned: CudaEvent,
}

impl TileReturn {
    /// The buffers in `slot`, reallocated when they hold fewer than `nq` thresholds and `nq · k`
    /// results.
    fn grown<'a>(
        stream: &Arc<CudaStream>,
        slot: &'a mut Option<TileReturn>,
        nq: usize,
        k: usize,
    ) -> Result<&'a mut TileReturn> {
        let small = |r: &TileReturn| r.thresholds.len() < nq || r.cols.len() < nq * k;
        if slot.as_ref().is_none_or(small) {
            if let Some(old) = slot.take() {
                // Freed only once no copy reads or writes them.
                let err = |e| gpu_err("waiting for a copy", e);
                old.sent.synchronize().map_err(err)?;
                old.returned.synchronize().map_err(err)?;
            }
            let ctx = stream.context();
            let err = |e| gpu_err("allocating pinned host memory", e);
            // SAFETY: plain (cached: the host reads them) pinned allocations; every element
            // read is written first, by the host (thresholds) or a copy back (results).
            *slot = Some(unsafe {
                TileReturn {
                    thresholds: ctx.alloc_pinned_with_flags(nq.max(1), 0).map_err(err)?,
                    cols: ctx
                        .alloc_pinned_with_flags((nq * k).max(1), 0)
                        .map_err(err)?,
                    scores: ctx
                        .alloc_pinned_with_flags((nq * k).max(1), 0)
                        .map_err(err)?,
                    sent: new_event(ctx)?,
                    returned: new_event(ctx)?,
                }
            });
        }
        slot.as_mut()
            .ok_or_else(|| Error::Gpu("pinned tile buffers missing".into()))
    }
}

/// A new event of `ctx`, with cudarc's default flags.
fn new_event(ctx: &Arc<CudaContext>) -> Result<CudaEvent> {
    ctx.new_event(None)
        .map_err(|e| gpu_err("creating an event", e))
}

/// See [`Device::tile_events`].
struct TileEvents {
    copied: CudaEvent,
    consumed: CudaEvent,
}

/// Device buffers reused across calls, grown when a call needs more.
#[derive(Default)]
struct Scratch {
    queries: Option<CudaSlice<f32>>,
    base: Option<CudaSlice<f32>>,
    /// Exact k-NN base tiles (rows, then norms), one per staging slot.
    tiles: [Option<CudaSlice<f32>>; 2],
    norms: Option<CudaSlice<f32>>,
    thresholds: Option<CudaSlice<f32>>,
    scores: Option<CudaSlice<f32>>,
    out_score: Option<CudaSlice<f32>>,
    out_col: Option<CudaSlice<u32>>,
    /// fp16 copies of a product's two inputs (`--gpu-precision fp16`).
    half_a: Option<CudaSlice<u16>>,
    half_b: Option<CudaSlice<u16>>,
}

/// A buffer of at least `len` elements (contents undefined).
fn grown<'a, T: cudarc::driver::DeviceRepr>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<&'a mut CudaSlice<T>> {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = None;
        // SAFETY: every element is written before it is read (uploads, GEMM and kernel outputs).
        let buf = unsafe { stream.alloc::<T>(len.max(1)) }.map_err(|e| {
            let bytes = (len.max(1) * std::mem::size_of::<T>()) as u64;
            gpu_err(
                &format!("allocating {} of device memory", crate::plan::human(bytes)),
                e,
            )
        })?;
        *slot = Some(buf);
    }
    slot.as_mut()
        .ok_or_else(|| Error::Gpu("device buffer missing".into()))
}

struct Device {
    stream: Arc<CudaStream>,
    /// Exact k-NN base tiles go up on this stream while `stream` computes on the tile before.
    copy_stream: Arc<CudaStream>,
    /// Two pinned host buffers: one base tile (rows, then norms) is staged while the GPU works
    /// on the other.
    staging: [Option<PinnedHostSlice<f32>>; 2],
    /// Per staging slot: `copied` (on `copy_stream`) after its tile went up to its device
    /// buffer; `consumed` (on `stream`) after the last product that read that buffer.
    tile_events: [TileEvents; 2],
    /// Two exact k-NN tiles' thresholds and selections in pinned host memory: one tile's come
    /// back and are folded into the host selections while the GPU works on the next.
    returns: [Option<TileReturn>; 2],
    blas: CudaBlas,
    precision: Precision,
    select_topk: CudaFunction,
    argmin_rows: CudaFunction,
    assign_small: CudaFunction,
    to_half: CudaFunction,
    prune_graph: CudaFunction,
    reverse_count: CudaFunction,
    reverse_fill: CudaFunction,
    merge_graph: CudaFunction,
    refine_graph: CudaFunction,
    join_scores: CudaFunction,
    reach_level: CudaFunction,
    cagra_search: CudaFunction,
    ivf_pq_scan: CudaFunction,
    rescore_exact: CudaFunction,
    centroid_means: CudaFunction,
    pq_encode: CudaFunction,
    ordered_sums: CudaFunction,
    group_codes: CudaFunction,
    label_counts: CudaFunction,
    label_offsets: CudaFunction,
    label_starts: CudaFunction,
    label_scatter: CudaFunction,
    scratch: Scratch,
    tile_bytes: usize,
}

/// The CUDA backend on one GPU. Calls from several threads take turns on one stream.
pub struct CudaBackend {
    info: DeviceInfo,
    precision: Precision,
    /// Kernel files whose PTX came from the cache ([`kernel_cache`]) when this opened.
    kernels_from_cache: usize,
    device: Mutex<Device>,
    /// [`Backend::slower_paths`].
    slower: Mutex<Vec<String>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("info", &self.info)
            .finish()
    }
}

impl CudaBackend {
    /// Whether GPU `ordinal` can be opened at all: the driver, NVRTC and cuBLAS on the library
    /// path and a device of that number. The quick part of [`CudaBackend::open`], for commands
    /// that open the device on a thread of their own but must refuse a bad `--gpu N` at once.
    pub fn check(ordinal: usize) -> Result<()> {
        let libs = libraries();
        let missing: Vec<&str> = [
            ("libcuda (the NVIDIA driver)", libs.driver),
            ("libnvrtc (the CUDA runtime compiler)", libs.nvrtc),
            ("libcublas", libs.cublas),
        ]
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
        if !missing.is_empty() {
            return Err(Error::Gpu(format!(
                "--gpu {ordinal}: cannot use a GPU here: {} not found on the library path (run `vecbuild doctor`)",
                missing.join(", ")
            )));
        }
        let count = CudaContext::device_count().map_err(|e| gpu_err("counting CUDA devices", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Gpu(format!(
                "--gpu {ordinal}: no such device; the driver sees {count} GPU(s)"
            )));
        }
        Ok(())
    }

    /// Opens GPU `ordinal`: loads the driver, cuBLAS and NVRTC, compiles our kernels for the
    /// device's compute capability and loads them.
    pub fn open(ordinal: usize, precision: Precision) -> Result<Self> {
        Self::check(ordinal)?;
        // One context for the report and the work: a context dropped in between would be torn
        // down and created again.
        let part = span("open: context");
        let ctx = CudaContext::new(ordinal).map_err(|e| gpu_err("opening the device", e))?;
        let info = info_of(&ctx)?;
        drop(part);
        // One stream, so cudarc's per-buffer event tracking is not needed.
        // SAFETY: called before any buffer or stream exists in this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let copy_stream = ctx
            .new_stream()
            .map_err(|e| gpu_err("creating a stream", e))?;
        let tile_events = || -> Result<TileEvents> {
            Ok(TileEvents {
                copied: new_event(&ctx)?,
                consumed: new_event(&ctx)?,
            })
        };
        let tile_events = [tile_events()?, tile_events()?];
        let part = span("open: cuBLAS");
        let blas = CudaBlas::new(stream.clone()).map_err(|e| gpu_err("starting cuBLAS", e))?;
        drop(part);
        let part = span("open: kernels");
        if precision == Precision::Tf32 {
            use cudarc::cublas::sys;
            // SAFETY: a valid handle and a defined math mode.
            let r = unsafe {
                sys::cublasSetMathMode(
                    *blas.handle(),
                    sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
                )
            };
            if r != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(gpu_err("switching cuBLAS to TF32", r));
            }
        }
        let (major, minor) = info.compute_capability;
        let arch = format!("compute_{major}{minor}");
        let mut functions = std::collections::HashMap::new();
        let cache = kernel_cache::dir();
        let compiled = kernel_cache::kernel_ptx(&arch, cache.as_deref())?;
        let kernels_from_cache = compiled.iter().filter(|k| k.from_cache).count();
        for kernel_cache::KernelPtx {
            file,
            ptx,
            from_cache,
        } in compiled
        {
            let loaded = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx));
            let module = match loaded {
                Ok(m) => m,
                // A cached entry the driver refuses: compile it again and replace it.
                Err(_) if from_cache => {
                    let src = KERNELS
                        .iter()
                        .find(|(f, _)| *f == file)
                        .map_or("", |(_, s)| *s);
                    let ptx = kernel_cache::compile(file, src, &arch)?;
                    kernel_cache::store(cache.as_deref(), file, &arch, &ptx)?;
                    ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                        .map_err(|e| gpu_err(&format!("loading kernels/{file}"), e))?
                }
                Err(e) => return Err(gpu_err(&format!("loading kernels/{file}"), e)),
            };
            for name in KERNEL_FUNCTIONS
                .iter()
                .filter(|(f, _)| *f == file)
                .map(|(_, n)| *n)
            {
                let f = module
                    .load_function(name)
                    .map_err(|e| gpu_err(&format!("loading kernel {name}"), e))?;
                functions.insert(name, f);
            }
        }
        let mut load = |name: &str| {
            functions
                .remove(name)
                .ok_or_else(|| Error::Gpu(format!("kernel {name} not loaded")))
        };
        drop(part);
        let tile_bytes = super::tile_bytes(info.free_bytes);
        let mut device = Device {
            stream,
            blas,
            precision,
            select_topk: load("select_topk")?,
            argmin_rows: load("argmin_rows")?,
            assign_small: load("assign_small")?,
            to_half: load("to_half")?,
            prune_graph: load("prune_graph")?,
            reverse_count: load("reverse_count")?,
            reverse_fill: load("reverse_fill")?,
            merge_graph: load("merge_graph")?,
            refine_graph: load("refine_graph")?,
            join_scores: load("join_scores")?,
            reach_level: load("reach_level")?,
            cagra_search: load("cagra_search")?,
            ivf_pq_scan: load("ivf_pq_scan")?,
            rescore_exact: load("rescore_exact")?,
            centroid_means: load("centroid_means")?,
            pq_encode: load("pq_encode")?,
            ordered_sums: load("ordered_sums")?,
            group_codes: load("group_codes")?,
            label_counts: load("label_counts")?,
            label_offsets: load("label_offsets")?,
            label_starts: load("label_starts")?,
            label_scatter: load("label_scatter")?,
            scratch: Scratch::default(),
            copy_stream,
            staging: [None, None],
            tile_events,
            returns: [None, None],
            tile_bytes,
        };
        device.warm_up()?;
        Ok(CudaBackend {
            device: Mutex::new(device),
            info,
            precision,
            kernels_from_cache,
            slower: Mutex::new(Vec::new()),
        })
    }

    /// Records, once, that a stage took a slower way ([`Backend::slower_paths`]).
    fn slower(&self, what: String) {
        if let Ok(mut all) = self.slower.lock() {
            if !all.contains(&what) {
                all.push(what);
            }
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// How many of the kernel files' PTX came from the cache when this backend opened (the
    /// rest NVRTC compiled).
    pub fn kernels_from_cache(&self) -> usize {
        self.kernels_from_cache
    }

    /// Nearest centroid for `dim ≤ SMALL_DIM` by direct differences (`assign_small`).
    fn assign_small(
        &self,
        x_host: &[f32],
        c_host: &[f32],
        n: usize,
        kc: usize,
        dim: usize,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let mut dev = self.lock()?;
        let stream = dev.stream.clone();
        let x_ptr = dev.upload(|s| &mut s.queries, x_host)?;
        let c_ptr = dev.upload(|s| &mut s.base, c_host)?;
        let oc_ptr = raw(&stream, grown(&stream, &mut dev.scratch.out_col, n)?);
        let os_ptr = raw(&stream, grown(&stream, &mut dev.scratch.out_score, n)?);
        dev.nearest_small(x_ptr, n, c_ptr, kc, dim, oc_ptr, os_ptr)?;
        let mut labels = vec![0u32; n];
        let mut dists = vec![0f32; n];
        dev.collect(&mut labels, &mut dists, "assign_small")?;
        Ok((labels, dists))
    }

    /// With `--gpu-precision fp16`, an error naming the first value of `x` (rows of `dim`,
    /// numbered from `first_row` in `what`) that fp16 cannot hold; nothing otherwise.
    fn fp16_range(&self, what: &str, x: &[f32], dim: usize, first_row: u64) -> Result<()> {
        if self.precision != Precision::Fp16 || dim == 0 {
            return Ok(());
        }
        use rayon::prelude::*;
        let beyond = x
            .par_iter()
            .position_first(|v| v.is_finite() && v.abs() >= FP16_LIMIT);
        match beyond {
            None => Ok(()),
            Some(i) => Err(Error::Gpu(format!(
                "--gpu-precision fp16: {what} row {} column {} holds {}, beyond fp16's range (±65504); use --gpu-precision fp32 or tf32",
                first_row + (i / dim) as u64,
                i % dim,
                x[i]
            ))),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Device>> {
        let dev = self
            .device
            .lock()
            .map_err(|_| Error::Gpu("an earlier GPU call panicked".into()))?;
        // The device may have been opened on another thread, and cuBLAS calls take the
        // context current on the calling one.
        dev.stream
            .context()
            .bind_to_thread()
            .map_err(|e| gpu_err("making the device's context current", e))?;
        Ok(dev)
    }
}

fn contiguous<'a>(x: &'a ArrayView2<'_, f32>) -> Cow<'a, [f32]> {
    match x.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

/// Threads for host-side work done while holding the device lock (staging copies, candidate
/// pushes). Plain scoped threads, not rayon: a rayon worker waiting on them could steal a task
/// that asks for the same lock, and deadlock.
fn host_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Pushes each query's `k` GPU candidates (`NO_ROW` columns skipped) into its [`TopK`], on
/// several [`host_threads`] when there are many.
fn push_candidates(topk: &mut [TopK], scores: &[f32], cols: &[u32], k: usize, first: u64) {
    let push = |tks: &mut [TopK], sc: &[f32], cl: &[u32]| {
        for (i, tk) in tks.iter_mut().enumerate() {
            for j in i * k..(i + 1) * k {
                if cl[j] != NO_ROW {
                    tk.push(sc[j], first + cl[j] as u64);
                }
            }
        }
    };
    let threads = host_threads();
    if threads == 1 || topk.len() * k < 1 << 16 {
        return push(topk, scores, cols);
    }
    let per = topk.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for ((tks, sc), cl) in topk
            .chunks_mut(per)
            .zip(scores.chunks(per * k))
            .zip(cols.chunks(per * k))
        {
            scope.spawn(move || push(tks, sc, cl));
        }
    });
}

/// Whether `bytes` more would take at most half the device's free memory: the rule for what
/// the backend keeps on the device for a whole stage (else that stage streams from the host).
fn fits_half_free(stream: &Arc<CudaStream>, bytes: usize) -> Result<bool> {
    Ok(bytes <= free_memory(stream)?.0 / 2)
}

/// The device's free and total memory now.
fn free_memory(stream: &Arc<CudaStream>) -> Result<(usize, usize)> {
    stream
        .context()
        .mem_get_info()
        .map_err(|e| gpu_err("reading device memory", e))
}

/// An index for GPU search needs `bytes` on the device: an error saying so when they are more
/// than is free, before any of it is copied.
fn index_fits(stream: &Arc<CudaStream>, bytes: usize) -> Result<()> {
    let (free, total) = free_memory(stream)?;
    if bytes <= free {
        return Ok(());
    }
    let human = |b: usize| crate::plan::human(b as u64);
    Err(Error::Gpu(format!(
        "searching on the GPU copies the index to it: {} there, and {} of its {} is free; \
         search on the CPU (without --gpu), or on a GPU with more free memory",
        human(bytes),
        human(free),
        human(total)
    )))
}

fn raw<T>(stream: &Arc<CudaStream>, buf: &CudaSlice<T>) -> u64 {
    let (ptr, _sync) = buf.device_ptr(stream);
    ptr
}

impl Device {
    /// One small product, so that cuBLAS's own start on its first GEMM of a process (~85 ms on
    /// an H100 host) is paid while the device opens, on the thread that overlaps the input
    /// read, rather than in the first stage that multiplies.
    fn warm_up(&mut self) -> Result<()> {
        let _span = span("open: first GEMM");
        let (rows, dim) = (128, 128);
        let stream = self.stream.clone();
        let zeros = stream
            .alloc_zeros::<f32>(rows * dim)
            .map_err(|e| gpu_err("allocating device memory", e))?;
        let ptr = raw(&stream, &zeros);
        self.gemm(ptr, rows, ptr, rows, dim, 1.0)?;
        stream
            .synchronize()
            .map_err(|e| gpu_err("the first product on the device", e))
    }

    /// Copies a base tile's `rows` and then its `norms` (empty but for L2) into pinned staging
    /// buffer `slot` (0 or 1), on [`host_threads`], once the last copy from it has run.
    fn stage(&mut self, slot: usize, rows: &[f32], norms: &[f32]) -> Result<()> {
        let stream = self.stream.clone();
        self.tile_events[slot]
            .copied
            .synchronize()
            .map_err(|e| gpu_err("copying a base tile to the device", e))?;
        let len = rows.len() + norms.len();
        let buf = &mut self.staging[slot];
        if buf.as_ref().is_none_or(|b| b.len() < len) {
            *buf = None;
            // SAFETY: a plain pinned host allocation; every element used is written below.
            let pinned = unsafe { stream.context().alloc_pinned::<f32>(len.max(1)) }
                .map_err(|e| gpu_err("allocating pinned host memory", e))?;
            *buf = Some(pinned);
        }
        let pinned = buf
            .as_mut()
            .ok_or_else(|| Error::Gpu("staging buffer missing".into()))?;
        let dst = pinned
            .as_mut_slice()
            .map_err(|e| gpu_err("pinned host memory", e))?;
        let (dst_rows, dst_norms) = dst[..len].split_at_mut(rows.len());
        dst_norms.copy_from_slice(norms);
        let threads = host_threads();
        let chunk = rows.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (d, s) in dst_rows.chunks_mut(chunk).zip(rows.chunks(chunk)) {
                scope.spawn(move || d.copy_from_slice(s));
            }
        });
        Ok(())
    }

    /// Queues, on the copy stream, the copy of the first `len` staged elements of `slot` into
    /// that slot's device tile buffer (once the products that read it last are done), and
    /// makes the compute stream wait for it; returns the buffer.
    fn upload_staged(&mut self, slot: usize, len: usize) -> Result<u64> {
        let (stream, copy) = (self.stream.clone(), self.copy_stream.clone());
        let err = |e| gpu_err("copying a base tile to the device", e);
        let events = &self.tile_events[slot];
        let fresh = self.scratch.tiles[slot]
            .as_ref()
            .is_none_or(|b| b.len() < len);
        let dst = raw(&stream, grown(&stream, &mut self.scratch.tiles[slot], len)?);
        if fresh {
            // Allocated on the compute stream: the copy stream waits for the allocation.
            events.consumed.record(&stream).map_err(err)?;
        }
        copy.wait(&events.consumed).map_err(err)?;
        let pinned = self.staging[slot]
            .as_ref()
            .ok_or_else(|| Error::Gpu("staging buffer missing".into()))?;
        let src = pinned
            .as_slice()
            .map_err(|e| gpu_err("pinned host memory", e))?;
        // SAFETY: the pinned buffer outlives the copy (`stage` rewrites it only after
        // `copied`), and the device buffer holds `len` elements.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, &src[..len], copy.cu_stream()) }
            .map_err(err)?;
        events.copied.record(&copy).map_err(err)?;
        stream.wait(&events.copied).map_err(err)?;
        Ok(dst)
    }

    /// Records that the products queued so far on the compute stream are the last to read
    /// `slot`'s tile buffer.
    fn tile_consumed(&self, slot: usize) -> Result<()> {
        self.tile_events[slot]
            .consumed
            .record(&self.stream)
            .map_err(|e| gpu_err("recording an event", e))
    }

    /// Copies the first `host.len()` elements of a scratch buffer back.
    fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        which: fn(&Scratch) -> &Option<CudaSlice<T>>,
        host: &mut [T],
    ) -> Result<()> {
        let buf = which(&self.scratch)
            .as_ref()
            .ok_or_else(|| Error::Gpu("device buffer missing".into()))?;
        self.stream
            .memcpy_dtoh(&buf.slice(0..host.len()), host)
            .map_err(|e| gpu_err("copying results from the device", e))
    }

    /// Queues the copy of the host selections' thresholds (`topk`) up to the device, through
    /// the pinned buffers of `slot` (after their last copy up has finished); returns the device
    /// thresholds. The stream orders the copy after the work queued before it.
    fn send_thresholds(&mut self, slot: usize, topk: &[TopK], k: usize) -> Result<u64> {
        let stream = self.stream.clone();
        let ret = TileReturn::grown(&stream, &mut self.returns[slot], topk.len(), k)?;
        let err = |e| gpu_err("copying thresholds to the device", e);
        // The last copy from this buffer (two tiles ago) must have read it.
        ret.sent.synchronize().map_err(err)?;
        let host = &mut ret.thresholds.as_mut_slice().map_err(err)?[..topk.len()];
        for (th, tk) in host.iter_mut().zip(topk) {
            *th = tk.threshold();
        }
        let dst = raw(
            &stream,
            grown(&stream, &mut self.scratch.thresholds, topk.len())?,
        );
        // Only this call's thresholds: the pinned buffer may be larger, from an earlier call.
        // SAFETY: the device buffer holds `topk.len()` elements, and the pinned one is not
        // written again before `sent` (waited on above, the next time).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, host, stream.cu_stream()) }
            .map_err(err)?;
        ret.sent.record(&stream).map_err(err)?;
        Ok(dst)
    }

    /// Queues the copy of the first `n` entries of `out_col` and `out_score` back into the
    /// pinned buffers of `slot` ([`Device::send_thresholds`] sized them).
    fn return_selection(&mut self, slot: usize, n: usize) -> Result<()> {
        let stream = self.stream.clone();
        let ret = self.returns[slot]
            .as_mut()
            .ok_or_else(|| Error::Gpu("pinned tile buffers missing".into()))?;
        let (cols, scores) = match (&self.scratch.out_col, &self.scratch.out_score) {
            (Some(c), Some(s)) => (c, s),
            _ => return Err(Error::Gpu("device buffer missing".into())),
        };
        let err = |e| gpu_err("copying results from the device", e);
        if cols.len() < n || scores.len() < n {
            return Err(Error::Gpu("selection buffers smaller than the tile".into()));
        }
        let (cols, scores) = (raw(&stream, cols), raw(&stream, scores));
        // Only the first `n` entries: the pinned buffers may be larger, from an earlier call.
        // SAFETY: both device buffers hold at least `n` elements; the pinned ones are read only
        // after `returned` and written again only after that read (`fold_selection`).
        let short = || Error::Gpu("pinned selection buffers smaller than the tile".into());
        unsafe {
            let to = ret.cols.as_mut_slice().map_err(err)?;
            let to = to.get_mut(..n).ok_or_else(short)?;
            cudarc::driver::result::memcpy_dtoh_async(to, cols, stream.cu_stream()).map_err(err)?;
            let to = ret.scores.as_mut_slice().map_err(err)?;
            let to = to.get_mut(..n).ok_or_else(short)?;
            cudarc::driver::result::memcpy_dtoh_async(to, scores, stream.cu_stream())
                .map_err(err)?;
        }
        ret.returned.record(&stream).map_err(err)
    }

    /// Waits for the selection copied back into `slot` and folds its `topk.len() · k` entries
    /// into `topk`, columns numbered from `first`.
    fn fold_selection(&self, slot: usize, topk: &mut [TopK], k: usize, first: u64) -> Result<()> {
        let ret = self.returns[slot]
            .as_ref()
            .ok_or_else(|| Error::Gpu("pinned tile buffers missing".into()))?;
        let err = |e| gpu_err("running select_topk", e);
        ret.returned.synchronize().map_err(err)?;
        let cols = ret.cols.as_slice().map_err(err)?;
        let scores = ret.scores.as_slice().map_err(err)?;
        let n = topk.len() * k;
        push_candidates(topk, &scores[..n], &cols[..n], k, first);
        Ok(())
    }

    /// Copies the first `cols.len()` entries of a kernel's `out_col` and `out_score` back and
    /// waits for the stream; `kernel` names it in an error.
    fn collect(&self, cols: &mut [u32], scores: &mut [f32], kernel: &str) -> Result<()> {
        self.download(|s| &s.out_col, cols)?;
        self.download(|s| &s.out_score, scores)?;
        self.stream
            .synchronize()
            .map_err(|e| gpu_err(&format!("running {kernel}"), e))
    }

    fn upload(
        &mut self,
        which: fn(&mut Scratch) -> &mut Option<CudaSlice<f32>>,
        host: &[f32],
    ) -> Result<u64> {
        let stream = self.stream.clone();
        let buf = grown(&stream, which(&mut self.scratch), host.len())?;
        let mut dst = buf.slice_mut(0..host.len());
        stream
            .memcpy_htod(host, &mut dst)
            .map_err(|e| gpu_err("copying to the device", e))?;
        Ok(raw(&stream, buf))
    }

    /// `scores[rows, cols] = alpha · A·Bᵀ` for row-major `a: [rows, dim]` at `a_ptr` and
    /// `b: [cols, dim]` at `b_ptr`, into the scratch score buffer.
    fn gemm(
        &mut self,
        a_ptr: u64,
        rows: usize,
        b_ptr: u64,
        cols: usize,
        dim: usize,
        alpha: f32,
    ) -> Result<u64> {
        let stream = self.stream.clone();
        let scores = grown(&stream, &mut self.scratch.scores, rows * cols)?;
        let c_ptr = raw(&stream, scores);
        self.gemm_into(a_ptr, rows, b_ptr, cols, dim, alpha, c_ptr, cols)?;
        Ok(c_ptr)
    }

    /// [`Device::gemm`] into `c_ptr`, row-major with `ldc` floats between rows (≥ cols).
    #[allow(clippy::too_many_arguments)]
    fn gemm_into(
        &mut self,
        a_ptr: u64,
        rows: usize,
        b_ptr: u64,
        cols: usize,
        dim: usize,
        alpha: f32,
        c_ptr: u64,
        ldc: usize,
    ) -> Result<()> {
        // cuBLAS is column-major: row-major `b: [cols, dim]` is column-major `[dim, cols]`, so
        // C = op(B)ᵀ·A as column-major `[cols, rows]` is the row-major `[rows, cols]` we want.
        let (alpha, beta) = (alpha, 0.0f32);
        if self.precision == Precision::Fp16 {
            let a16 = self.halves(a_ptr, rows * dim, |s| &mut s.half_a)?;
            let b16 = self.halves(b_ptr, cols * dim, |s| &mut s.half_b)?;
            use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
            let void = |p: u64| p as *const std::ffi::c_void;
            // SAFETY: a16 and b16 hold rows·dim and cols·dim fp16 values (just converted),
            // c_ptr at least (rows − 1)·ldc + cols f32; alpha and beta are f32, as
            // CUBLAS_COMPUTE_32F reads them.
            return unsafe {
                cudarc::cublas::result::gemm_ex(
                    *self.blas.handle(),
                    cublasOperation_t::CUBLAS_OP_T,
                    cublasOperation_t::CUBLAS_OP_N,
                    cols as i32,
                    rows as i32,
                    dim as i32,
                    (&alpha as *const f32).cast(),
                    void(b16),
                    cudaDataType::CUDA_R_16F,
                    dim as i32,
                    void(a16),
                    cudaDataType::CUDA_R_16F,
                    dim as i32,
                    (&beta as *const f32).cast(),
                    c_ptr as *mut std::ffi::c_void,
                    cudaDataType::CUDA_R_32F,
                    ldc as i32,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| gpu_err("cuBLAS GemmEx (fp16)", e));
        }
        // SAFETY: the three pointers address live device buffers of at least cols·dim,
        // rows·dim and (rows − 1)·ldc + cols f32, as the shapes passed read and write.
        unsafe {
            cudarc::cublas::result::sgemm(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                cols as i32,
                rows as i32,
                dim as i32,
                &alpha,
                b_ptr as *const f32,
                dim as i32,
                a_ptr as *const f32,
                dim as i32,
                &beta,
                c_ptr as *mut f32,
                ldc as i32,
            )
        }
        .map_err(|e| gpu_err("cuBLAS SGEMM", e))
    }
}

impl Device {
    /// `len` floats at `src` rounded to fp16 by `to_half` into scratch buffer `which`.
    fn halves(
        &mut self,
        src: u64,
        len: usize,
        which: fn(&mut Scratch) -> &mut Option<CudaSlice<u16>>,
    ) -> Result<u64> {
        let stream = self.stream.clone();
        let dst = raw(&stream, grown(&stream, which(&mut self.scratch), len)?);
        let n = len as i64;
        let cfg = LaunchConfig {
            grid_dim: (len.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&self.to_half);
        launch.arg(&src).arg(&n).arg(&dst);
        // SAFETY: arguments match to_half's signature; src holds len floats, dst len halves.
        unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching to_half", e))?;
        Ok(dst)
    }
}

impl Device {
    /// Rows per GEMM tile when assigning `n` rows to `kc` centroids.
    fn assign_tile_rows(&self, kc: usize, n: usize) -> usize {
        (self.tile_bytes / (kc * 4)).clamp(1, n.max(1))
    }

    /// Nearest of `kc` centroids at `c_ptr` (squared norms at `cn_ptr`) for `rows` rows at
    /// `x_ptr`: one GEMM into the score buffer, then `argmin_rows` writes each row's centroid
    /// and its score `‖c‖² − 2·x·c` to `out_col` / `out_score`.
    #[allow(clippy::too_many_arguments)]
    fn nearest_by_gemm(
        &mut self,
        x_ptr: u64,
        rows: usize,
        c_ptr: u64,
        cn_ptr: u64,
        kc: usize,
        dim: usize,
        out_col: u64,
        out_score: u64,
    ) -> Result<()> {
        let s_ptr = self.gemm(x_ptr, rows, c_ptr, kc, dim, -2.0)?;
        let (ld, n_cols, n_rows) = (kc as i64, kc as i32, rows as i64);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.argmin_rows);
        launch
            .arg(&s_ptr)
            .arg(&ld)
            .arg(&n_cols)
            .arg(&n_rows)
            .arg(&cn_ptr)
            .arg(&out_col)
            .arg(&out_score);
        // SAFETY: arguments match argmin_rows' signature; buffers hold rows·kc scores, kc
        // norms and rows outputs.
        unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching argmin_rows", e))?;
        Ok(())
    }

    /// Nearest of `kc` centroids at `c_ptr` for `rows` rows at `x_ptr` by direct squared
    /// differences (`assign_small`: `dim ≤ SMALL_DIM`, `kc · dim` floats ≤ 48 KiB), into
    /// `out_col` / `out_score` (the squared distance).
    #[allow(clippy::too_many_arguments)]
    fn nearest_small(
        &self,
        x_ptr: u64,
        rows: usize,
        c_ptr: u64,
        kc: usize,
        dim: usize,
        out_col: u64,
        out_score: u64,
    ) -> Result<()> {
        let (n_rows, k_i, dim_i) = (rows as i64, kc as i32, dim as i32);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (kc * dim * 4) as u32,
        };
        let mut launch = self.stream.launch_builder(&self.assign_small);
        launch
            .arg(&x_ptr)
            .arg(&c_ptr)
            .arg(&n_rows)
            .arg(&k_i)
            .arg(&dim_i)
            .arg(&out_col)
            .arg(&out_score);
        // SAFETY: arguments match assign_small's signature; buffers hold rows·dim rows, kc·dim
        // centroids (≤ 48 KiB of shared memory) and rows outputs.
        unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching assign_small", e))?;
        Ok(())
    }

    /// Launches `select_topk` (kernels/select.cu) over `rows` score rows of `n` columns, `ld`
    /// floats apart, at `scores`: `col_add` (0: none) added per column, each row starting from
    /// its `thresholds` entry (0: none), its best `k` into `out_score` / `out_col` (`rows · k`
    /// each, best first).
    #[allow(clippy::too_many_arguments)]
    fn launch_select(
        &self,
        scores: u64,
        ld: usize,
        n: usize,
        rows: usize,
        col_add: u64,
        thresholds: u64,
        k: usize,
        out_score: u64,
        out_col: u64,
    ) -> Result<()> {
        let (ld, n, k_i, kp_i) = (ld as i64, n as i32, k as i32, k.next_power_of_two() as i32);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (SELECT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.select_topk);
        launch
            .arg(&scores)
            .arg(&ld)
            .arg(&n)
            .arg(&col_add)
            .arg(&thresholds)
            .arg(&k_i)
            .arg(&kp_i)
            .arg(&out_score)
            .arg(&out_col);
        // SAFETY: arguments match select_topk's signature; the callers pass buffers of
        // (rows − 1)·ld + n scores, n column terms, rows thresholds and rows·k outputs.
        unsafe { launch.launch(cfg) }.map_err(|e| gpu_err("launching select_topk", e))?;
        Ok(())
    }
}

/// Where [`CudaBackend::knn_tiles`] finds the base rows: on the host (each tile staged in pinned
/// memory and copied while the GPU works on the one before), or already on the device.
#[derive(Clone, Copy)]
enum BaseRows<'a> {
    Host {
        rows: &'a [f32],
        sq_norms: &'a [f32],
    },
    Held {
        rows: u64,
        sq_norms: u64,
    },
}

/// A flat index's rows (and squared norms, for L2) kept on the device across query batches
/// ([`Backend::load_flat`]).
struct HeldBase {
    n: usize,
    dim: usize,
    rows: CudaSlice<f32>,
    sq_norms: Option<CudaSlice<f32>>,
}

impl HeldBase {
    /// Copies `base` (and `sq_norms`) to the device; `None` when they would take more than
    /// half the free memory (searches then stream the rows per batch, as `knn_block` does).
    fn hold(
        backend: &CudaBackend,
        base: ArrayView2<'_, f32>,
        sq_norms: Option<&[f32]>,
    ) -> Result<Option<HeldBase>> {
        let (n, dim) = base.dim();
        if n == 0 || dim == 0 || sq_norms.is_some_and(|s| s.len() != n) {
            return Ok(None);
        }
        let host = contiguous(&base);
        backend.fp16_range("the index", &host, dim, 0)?;
        let dev = backend.lock()?;
        let stream = dev.stream.clone();
        if !fits_half_free(&stream, 4 * n * (dim + 1))? {
            return Ok(None);
        }
        let rows = stream
            .clone_htod(host.as_ref())
            .map_err(|e| gpu_err("copying the index rows to the device", e))?;
        let sq_norms = match sq_norms {
            Some(s) => Some(
                stream
                    .clone_htod(s)
                    .map_err(|e| gpu_err("copying the index norms to the device", e))?,
            ),
            None => None,
        };
        stream
            .synchronize()
            .map_err(|e| gpu_err("copying the index to the device", e))?;
        Ok(Some(HeldBase {
            n,
            dim,
            rows,
            sq_norms,
        }))
    }
}

impl CudaBackend {
    /// Exact k-NN of `queries` against `nb` base rows numbered from `first_row`, tile by tile
    /// (see the module docs), folded into `topk`.
    fn knn_tiles(
        &self,
        queries: Queries<'_>,
        base: BaseRows<'_>,
        nb: usize,
        first_row: u64,
        topk: &mut [TopK],
    ) -> Result<()> {
        let (nq, dim) = queries.vectors.dim();
        if nq == 0 || nb == 0 {
            return Ok(());
        }
        if topk.len() != nq {
            return Err(Error::Gpu("knn_block: shapes disagree".into()));
        }
        let k = topk[0].k();
        if k > MAX_GPU_K {
            return Err(Error::Gpu(format!(
                "k = {k}: the GPU selection keeps at most {MAX_GPU_K} neighbours per query"
            )));
        }
        // The queries (with an fp16 copy), their thresholds and candidates stay on the device
        // while the base streams past: at most a score tile's budget of them at once, the
        // base streamed again for each further chunk of queries.
        let chunk = (super::tile_bytes(self.info.free_bytes) / (6 * dim + 8 * k + 4)).max(1);
        if nq > chunk {
            self.slower(format!(
                "exact k-NN took the queries {chunk} at a time, the base streamed once for each: \
                 all of them with their candidates need more than a score tile of device memory"
            ));
            for q0 in (0..nq).step_by(chunk) {
                let q1 = (q0 + chunk).min(nq);
                let part = Queries {
                    vectors: queries.vectors.slice(ndarray::s![q0..q1, ..]),
                    sq_norms: queries.sq_norms.get(q0..q1).unwrap_or(&[]),
                    metric: queries.metric,
                };
                self.knn_tiles(part, base, nb, first_row, &mut topk[q0..q1])?;
            }
            return Ok(());
        }
        let l2 = queries.metric == Metric::L2;
        let alpha = if l2 { -2.0 } else { -1.0 };
        let q_host = contiguous(&queries.vectors);
        self.fp16_range("the queries", &q_host, dim, 0)?;
        let tile_rows = super::base_tile_rows(dim);
        let tiles: Vec<(usize, usize)> = (0..nb)
            .step_by(tile_rows)
            .map(|b0| (b0, (b0 + tile_rows).min(nb)))
            .collect();
        let mut dev = self.lock()?;
        let stream = dev.stream.clone();
        let part = span("knn: queries up");
        let q_ptr = dev.upload(|s| &mut s.queries, &q_host)?;
        drop(part);
        // A tile of host rows: its rows, then its norms (L2), staged in pinned memory.
        let stage = |dev: &mut Device, slot: usize, (b0, b1): (usize, usize)| match base {
            BaseRows::Host { rows, sq_norms } => {
                let norms = if l2 { &sq_norms[b0..b1] } else { &[][..] };
                dev.stage(slot, &rows[b0 * dim..b1 * dim], norms)
            }
            BaseRows::Held { .. } => Ok(()),
        };
        let part = span("knn: first tile staged");
        stage(&mut dev, 0, tiles[0])?;
        drop(part);
        // Tile t goes up from pinned slot t % 2 on the copy stream while the compute stream
        // works on tile t - 1, and its selection comes back into pinned slot t % 2 and is
        // folded into `topk` on the host while the GPU works on tile t + 1. Tile t + 1 therefore
        // starts from thresholds that have not seen tile t: looser, so its selection passes a
        // few more candidates that the host selections then drop; the results are the same.
        let mut unfolded: Option<(usize, usize)> = None;
        for (t, &(b0, b1)) in tiles.iter().enumerate() {
            let slot = t % 2;
            let bt = b1 - b0;
            let (x_ptr, norms_ptr) = match base {
                // The tile was staged in pinned memory (while the GPU worked on the previous
                // one).
                BaseRows::Host { .. } => {
                    let len = bt * dim + if l2 { bt } else { 0 };
                    let x_ptr = dev.upload_staged(slot, len)?;
                    let norms_ptr = match l2 {
                        true => x_ptr + (bt * dim * 4) as u64,
                        false => 0,
                    };
                    (x_ptr, norms_ptr)
                }
                BaseRows::Held { rows, sq_norms } => (
                    rows + (b0 * dim * 4) as u64,
                    match l2 {
                        true => sq_norms + (b0 * 4) as u64,
                        false => 0,
                    },
                ),
            };
            let thr_ptr = dev.send_thresholds(slot, topk, k)?;
            let os_ptr = raw(&stream, grown(&stream, &mut dev.scratch.out_score, nq * k)?);
            let oc_ptr = raw(&stream, grown(&stream, &mut dev.scratch.out_col, nq * k)?);
            let q_tile = (dev.tile_bytes / (bt * 4)).clamp(1, nq);
            let part = span("knn: tile launched");
            for q0 in (0..nq).step_by(q_tile) {
                let qt = q_tile.min(nq - q0);
                let s_ptr = dev.gemm(q_ptr + (q0 * dim * 4) as u64, qt, x_ptr, bt, dim, alpha)?;
                let (thr, os, oc) = (
                    thr_ptr + (q0 * 4) as u64,
                    os_ptr + (q0 * k * 4) as u64,
                    oc_ptr + (q0 * k * 4) as u64,
                );
                dev.launch_select(s_ptr, bt, bt, qt, norms_ptr, thr, k, os, oc)?;
            }
            if let BaseRows::Host { .. } = base {
                dev.tile_consumed(slot)?;
            }
            dev.return_selection(slot, nq * k)?;
            drop(part);
            if let Some((done, d0)) = unfolded.take() {
                let _span = span("knn: tile waited for and folded");
                dev.fold_selection(done, topk, k, first_row + d0 as u64)?;
            }
            // Stage the next tile on the CPU while the GPU works on this one, into the buffer
            // of the tile before, once its copy up has run.
            if let Some(&next) = tiles.get(t + 1) {
                let _span = span("knn: next tile staged");
                stage(&mut dev, (t + 1) % 2, next)?;
            }
            unfolded = Some((slot, b0));
        }
        if let Some((done, d0)) = unfolded {
            let _span = span("knn: last tile waited for and folded");
            dev.fold_selection(done, topk, k, first_row + d0 as u64)?;
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        match self.precision {
            Precision::Fp32 => format!("cuda:{}", self.info.ordinal),
            Precision::Tf32 => format!("cuda:{}/tf32", self.info.ordinal),
            Precision::Fp16 => format!("cuda:{}/fp16", self.info.ordinal),
        }
    }

    fn device_name(&self) -> Option<String> {
        Some(self.info.name.clone())
    }

    fn slower_paths(&self) -> Vec<String> {
        self.slower
            .lock()
            .map(|all| all.clone())
            .unwrap_or_default()
    }

    fn device_memory(&self) -> Option<super::DeviceMemory> {
        Some(super::DeviceMemory {
            free_bytes: self.info.free_bytes,
            total_bytes: self.info.total_bytes,
            tile_bytes: super::tile_bytes(self.info.free_bytes),
        })
    }

    fn knn_block(
        &self,
        queries: Queries<'_>,
        base: ArrayView2<'_, f32>,
        base_sq_norms: &[f32],
        first_row: u64,
        topk: &mut [TopK],
    ) -> Result<()> {
        let nb = base.nrows();
        let dim = queries.vectors.ncols();
        if base.ncols() != dim {
            return Err(Error::Gpu("knn_block: shapes disagree".into()));
        }
        let l2 = queries.metric == Metric::L2;
        if l2 && base_sq_norms.len() != nb {
            return Err(Error::Gpu(
                "knn_block: L2 needs the base rows' squared norms".into(),
            ));
        }
        let x_host = contiguous(&base);
        self.fp16_range("the base", &x_host, dim, first_row)?;
        let rows = BaseRows::Host {
            rows: &x_host,
            sq_norms: base_sq_norms,
        };
        self.knn_tiles(queries, rows, nb, first_row, topk)
    }

    fn exact_block_rows(&self, dim: usize) -> usize {
        EXACT_BLOCK_TILES * super::base_tile_rows(dim)
    }

    fn load_flat(
        &self,
        base: ArrayView2<'_, f32>,
        sq_norms: Option<&[f32]>,
    ) -> Result<Option<Loaded>> {
        let held = HeldBase::hold(self, base, sq_norms)?;
        Ok(held.map(|h| Box::new(h) as Loaded))
    }

    fn knn_loaded(&self, loaded: &Loaded, queries: Queries<'_>, topk: &mut [TopK]) -> Result<()> {
        let held = loaded
            .downcast_ref::<HeldBase>()
            .ok_or_else(|| Error::Gpu("knn_loaded: not a base held by this backend".into()))?;
        if queries.vectors.ncols() != held.dim {
            return Err(Error::Gpu("knn_loaded: shapes disagree".into()));
        }
        if queries.metric == Metric::L2 && held.sq_norms.is_none() {
            return Err(Error::Gpu(
                "knn_loaded: L2 needs the base rows' squared norms".into(),
            ));
        }
        let stream = self.lock()?.stream.clone();
        let rows = BaseRows::Held {
            rows: raw(&stream, &held.rows),
            sq_norms: held.sq_norms.as_ref().map_or(0, |b| raw(&stream, b)),
        };
        self.knn_tiles(queries, rows, held.n, 0, topk)
    }

    fn optimize_graph(
        &self,
        knn: &crate::index::cagra::Graph,
        d_out: usize,
        order: &[u32],
        laps: &mut crate::laps::Laps,
    ) -> Result<crate::index::cagra::Graph> {
        optimize::optimize_graph(self, knn, d_out, order, laps)
    }

    fn reaches_every_row(
        &self,
        graph: &crate::index::cagra::Graph,
        entry: u32,
    ) -> Result<Option<bool>> {
        optimize::reaches_every_row(self, graph, entry)
    }

    fn join_lists(&self, job: &ListJoin<'_>, progress: &(dyn Fn(f64) + Sync)) -> Result<Vec<u32>> {
        join::join_lists(self, job, progress)
    }

    fn refine_graph(
        &self,
        data: ArrayView2<'_, f32>,
        norms: &[f32],
        metric: Metric,
        graph: &mut crate::index::cagra::Graph,
        fan: usize,
        order: &[u32],
    ) -> Result<()> {
        if !join::refine_graph(self, data, norms, metric, graph, fan, order)? {
            crate::index::cagra::knn_graph::refine_in_order(
                data, norms, metric, graph, fan, false, order,
            );
        }
        Ok(())
    }

    fn load_cagra(&self, index: &CagraIndex<'_>) -> Result<Option<Loaded>> {
        cagra::load(self, index).map(Some)
    }

    fn cagra_search(
        &self,
        index: &CagraIndex<'_>,
        loaded: Option<&Loaded>,
        queries: ArrayView2<'_, f32>,
        k: usize,
        p: &CagraSearchParams,
    ) -> Result<(SearchResults, SearchStats)> {
        cagra::search(self, index, loaded, queries, k, p)
    }

    fn load_ivf_pq(&self, index: &IvfPqIndex<'_>) -> Result<Option<Loaded>> {
        ivf_pq::load(self, index).map(Some)
    }

    fn ivf_pq_scan(
        &self,
        index: &IvfPqIndex<'_>,
        loaded: Option<&Loaded>,
        queries: ArrayView2<'_, f32>,
        probes: &[Vec<crate::Neighbor>],
        candidates: usize,
    ) -> Result<Vec<Vec<crate::Neighbor>>> {
        ivf_pq::scan(
            self,
            index,
            loaded,
            queries,
            ivf_pq::Probes::Host(probes),
            candidates,
        )
    }

    fn ivf_pq_probe_and_scan(
        &self,
        index: &IvfPqIndex<'_>,
        loaded: Option<&Loaded>,
        queries: ArrayView2<'_, f32>,
        n_probes: usize,
        candidates: usize,
    ) -> Result<Option<Vec<Vec<crate::Neighbor>>>> {
        ivf_pq::probe_and_scan(self, index, loaded, queries, n_probes, candidates)
    }

    fn ivf_pq_rescore(
        &self,
        index: &IvfPqIndex<'_>,
        loaded: Option<&Loaded>,
        queries: ArrayView2<'_, f32>,
        found: &[Vec<crate::Neighbor>],
    ) -> Result<Option<Vec<f32>>> {
        ivf_pq::rescore(self, index, loaded, queries, found)
    }

    fn lloyd<'a>(
        &'a self,
        data: ArrayView2<'a, f32>,
    ) -> Result<Option<Box<dyn crate::backend::Lloyd + 'a>>> {
        quantize::DeviceLloyd::hold(self, data)
    }

    fn subspace_lloyds<'a>(
        &'a self,
        data: ArrayView2<'a, f32>,
        pq_dim: usize,
        ksub: usize,
    ) -> Result<Option<Box<dyn crate::backend::Lloyds + 'a>>> {
        quantize::DeviceSubspaces::hold(self, data, pq_dim, ksub)
    }

    fn pq_encode(
        &self,
        residuals: ArrayView2<'_, f32>,
        pq: &crate::index::pq::ProductQuantizer,
    ) -> Result<Option<ndarray::Array2<u8>>> {
        quantize::pq_encode(self, residuals, pq)
    }

    fn assign_nearest(
        &self,
        data: ArrayView2<'_, f32>,
        centroids: ArrayView2<'_, f32>,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let (n, dim) = data.dim();
        let kc = centroids.nrows();
        if kc == 0 {
            return Err(Error::param(
                "nearest-centroid assignment needs at least one centroid",
            ));
        }
        if centroids.ncols() != dim {
            return Err(Error::Gpu("assign_nearest: shapes disagree".into()));
        }
        if n == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let c_host = contiguous(&centroids);
        let x_host = contiguous(&data);
        if assigns_small(dim, kc) {
            return self.assign_small(&x_host, &c_host, n, kc, dim);
        }
        self.fp16_range("the rows being assigned", &x_host, dim, 0)?;
        self.fp16_range("the centroids", &c_host, dim, 0)?;
        let c_norms = squared_norms(centroids);
        let mut labels = Vec::with_capacity(n);
        let mut dists = Vec::with_capacity(n);
        let mut dev = self.lock()?;
        let stream = dev.stream.clone();
        let c_ptr = dev.upload(|s| &mut s.base, &c_host)?;
        let cn_ptr = dev.upload(|s| &mut s.norms, &c_norms)?;
        let r_tile = dev.assign_tile_rows(kc, n);
        let mut col = Vec::new();
        let mut score = Vec::new();
        for r0 in (0..n).step_by(r_tile) {
            let r1 = (r0 + r_tile).min(n);
            let rt = r1 - r0;
            let x_ptr = dev.upload(|s| &mut s.queries, &x_host[r0 * dim..r1 * dim])?;
            let oc_ptr = raw(&stream, grown(&stream, &mut dev.scratch.out_col, rt)?);
            let os_ptr = raw(&stream, grown(&stream, &mut dev.scratch.out_score, rt)?);
            dev.nearest_by_gemm(x_ptr, rt, c_ptr, cn_ptr, kc, dim, oc_ptr, os_ptr)?;
            col.resize(rt, 0u32);
            score.resize(rt, 0f32);
            dev.collect(&mut col, &mut score, "argmin_rows")?;
            let x_norms = squared_norms(data.slice(ndarray::s![r0..r1, ..]));
            labels.extend_from_slice(&col);
            dists.extend(score.iter().zip(&x_norms).map(|(s, x)| (s + x).max(0.0)));
        }
        Ok((labels, dists))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_compile_to_ptx_once_then_come_from_the_cache_where_nvrtc_is_installed() {
        if !libraries().nvrtc {
            assert!(
                std::env::var_os("VECBUILD_REQUIRE_NVRTC").is_none(),
                "NVRTC is required here"
            );
            eprintln!("SKIPPED: NVRTC is not installed here");
            return;
        }
        let cache = tempfile::tempdir().unwrap();
        let first = kernel_cache::kernel_ptx("compute_90", Some(cache.path())).unwrap();
        assert_eq!(first.len(), KERNELS.len());
        for k in &first {
            assert!(!k.from_cache, "{}", k.file);
            for (_, name) in KERNEL_FUNCTIONS.iter().filter(|(f, _)| *f == k.file) {
                assert!(
                    k.ptx.contains(&format!(".entry {name}")),
                    "{}: {name} missing",
                    k.file
                );
            }
        }
        assert_eq!(
            std::fs::read_dir(cache.path()).unwrap().count(),
            KERNELS.len()
        );
        let second = kernel_cache::kernel_ptx("compute_90", Some(cache.path())).unwrap();
        for (a, b) in first.iter().zip(&second) {
            assert!(b.from_cache, "{}", b.file);
            assert_eq!(a.ptx, b.ptx, "{}", a.file);
        }
        // Another architecture is compiled, not taken from the cache.
        let other = kernel_cache::kernel_ptx("compute_80", Some(cache.path())).unwrap();
        assert!(other.iter().all(|k| !k.from_cache));
    }

    #[test]
    fn reads_ptxas_resource_lines() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'select_topk' for 'sm_90'\n\
ptxas info    : Function properties for select_topk\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 30 registers, used 1 barriers, 16392 bytes smem\n\
ptxas info    : Compiling entry function 'argmin_rows' for 'sm_90'\n\
ptxas info    : Function properties for argmin_rows\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 18 registers\n";
        let got = parse_ptxas_report("select.cu", log);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].function, "select_topk");
        assert_eq!(
            (got[0].registers, got[0].spill_stores, got[0].spill_loads),
            (30, 4, 12)
        );
        assert_eq!(got[1].function, "argmin_rows");
        assert_eq!(
            (got[1].registers, got[1].spill_stores, got[1].spill_loads),
            (18, 0, 0)
        );
    }
}
