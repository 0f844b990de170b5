//! faiss's binary index format, so `faiss.read_index` loads what vecbuild built.
//!
//! Every field is little-endian; `vec<T>` is a u64 element count then the elements.
//!
//! | part | fields |
//! |------|--------|
//! | index header | i32 `d`, i64 `ntotal`, i64 `1<<20`, i64 `1<<20`, u8 `is_trained`, i32 `metric` (0 = inner product, 1 = L2) |
//! | `IxF2` / `IxFI` (flat, L2 / IP) | fourcc, header, u64 float count, f32 `[ntotal × d]` |
//! | `IxMp` (id map) | fourcc, header, inner index, `vec<i64>` ids |
//! | `IwPQ` (IVF-PQ) | fourcc, header, u64 `nlist`, u64 `nprobe`, coarse quantizer (`IxF2`/`IxFI`), u8 direct-map type 0, `vec<i64>` empty, u8 `by_residual` = 1, u64 `code_size`, PQ, inverted lists |
//! | PQ | u64 `d`, u64 `M`, u64 `nbits`, `vec<f32>` centroids `[M × 2^nbits × d/M]` |
//! | `ilar` inverted lists | fourcc, u64 `nlist`, u64 `code_size`, fourcc `full`, `vec<u64>` list sizes, then per non-empty list its codes `[size × code_size]` and ids `[size]` as i64 |
//!
//! PQ codes of `nbits < 8` are packed least-significant bit first, sub-quantizer 0 first.
//!
//! Conventions: `cosine` flat indexes export as inner product over the unit vectors (faiss
//! reports cos, not 1 − cos); `cosine` IVF-PQ indexes were built as L2 over unit vectors and
//! export as L2 (faiss reports 2 − 2 cos). Queries must be normalised by the caller. String ids
//! cannot live in a faiss index: such artifacts export row numbers (the caller is told).

use crate::artifact::container::DType;
use crate::artifact::{Artifact, IndexKind};
use crate::fsutil::AtomicFile;
use crate::ids::IdsView;
use crate::{Error, Metric, Result};
use std::io::Write;
use std::path::Path;

fn fourcc(s: &[u8; 4]) -> [u8; 4] {
    *s
}

/// What an export wrote, for the caller to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The faiss class written, e.g. `IndexIVFPQ`.
    pub class: &'static str,
    /// The faiss metric: `L2` or `INNER_PRODUCT`.
    pub metric: &'static str,
    /// True when the artifact's string ids were replaced by row numbers.
    pub row_number_ids: bool,
}

struct Out<'a> {
    w: &'a mut AtomicFile,
    path: &'a Path,
}

impl Out<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(|e| Error::io(self.path, e))
    }
    fn u8(&mut self, v: u8) -> Result<()> {
        self.bytes(&[v])
    }
    fn i32(&mut self, v: i32) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn i64(&mut self, v: i64) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn f32s(&mut self, v: &[f32]) -> Result<()> {
        self.bytes(bytemuck::cast_slice(v))
    }
    fn header(&mut self, d: usize, ntotal: u64, metric: i32) -> Result<()> {
        self.i32(d as i32)?;
        self.i64(ntotal as i64)?;
        self.i64(1 << 20)?;
        self.i64(1 << 20)?;
        self.u8(1)?;
        self.i32(metric)
    }
    /// `IxF2`/`IxFI`: a flat index of `data: [n × d]`.
    fn flat(&mut self, d: usize, data: &[f32], metric: i32) -> Result<()> {
        self.bytes(&fourcc(if metric == METRIC_IP {
            b"IxFI"
        } else {
            b"IxF2"
        }))?;
        self.header(d, (data.len() / d.max(1)) as u64, metric)?;
        self.u64(data.len() as u64)?;
        self.f32s(data)
    }
}

const METRIC_IP: i32 = 0;
const METRIC_L2: i32 = 1;

/// faiss ids for the artifact's rows: integer ids as i64, string ids as row numbers.
fn faiss_ids(ids: IdsView<'_>, path: &Path) -> Result<(Vec<i64>, bool)> {
    match ids {
        IdsView::Int64(v) => Ok((v.to_vec(), false)),
        IdsView::UInt64(v) => v
            .iter()
            .map(|&x| {
                i64::try_from(x).map_err(|_| {
                    Error::artifact(
                        path,
                        "ids",
                        format!("id {x} does not fit faiss's signed 64-bit ids"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(|v| (v, false)),
        IdsView::Utf8 { .. } => Ok(((0..ids.len() as i64).collect(), true)),
    }
}

/// Writes `artifact` as a faiss index file at `out` (atomically).
pub fn export(artifact: &Artifact, out: &Path) -> Result<Exported> {
    let m = &artifact.manifest;
    let path = artifact.container.path();
    let (n, dim) = (m.count as usize, m.dim);
    let (ids, row_number_ids) = faiss_ids(artifact.ids()?, path)?;
    let mut file = AtomicFile::create(out)?;
    let mut o = Out {
        w: &mut file,
        path: out,
    };
    let exported = match m.kind {
        IndexKind::Flat => {
            let metric = if m.metric == Metric::L2 {
                METRIC_L2
            } else {
                METRIC_IP
            };
            let data = artifact.tensor::<f32>("vectors", DType::F32, &[n, dim])?;
            let identity = ids.iter().enumerate().all(|(i, &id)| id == i as i64);
            if identity {
                o.flat(dim, data, metric)?;
            } else {
                o.bytes(b"IxMp")?;
                o.header(dim, n as u64, metric)?;
                o.flat(dim, data, metric)?;
                o.u64(n as u64)?;
                for id in &ids {
                    o.i64(*id)?;
                }
            }
            Exported {
                class: if identity {
                    "IndexFlat"
                } else {
                    "IndexIDMap(IndexFlat)"
                },
                metric: faiss_metric(metric),
                row_number_ids,
            }
        }
        IndexKind::IvfPq => {
            let metric = if m.metric == Metric::InnerProduct {
                METRIC_IP
            } else {
                METRIC_L2
            };
            ivf_pq(artifact, &mut o, &ids, metric)?;
            Exported {
                class: "IndexIVFPQ",
                metric: faiss_metric(metric),
                row_number_ids,
            }
        }
        other => {
            return Err(Error::param(format!(
                "{other} indexes cannot be exported to faiss yet"
            )))
        }
    };
    file.commit()?;
    Ok(exported)
}

fn faiss_metric(metric: i32) -> &'static str {
    if metric == METRIC_IP {
        "INNER_PRODUCT"
    } else {
        "L2"
    }
}

fn ivf_pq(a: &Artifact, o: &mut Out<'_>, ids: &[i64], metric: i32) -> Result<()> {
    let m = &a.manifest;
    let path = a.container.path();
    let (n, dim) = (m.count as usize, m.dim);
    let shape = |name: &str| {
        a.container
            .tensors
            .get(name)
            .map(|t| t.shape.clone())
            .unwrap_or_default()
    };
    let n_lists = shape("ivf.centroids").first().copied().unwrap_or(0);
    let book = shape("pq.codebooks");
    let [pq_dim, ksub, dsub] = book[..] else {
        return Err(Error::artifact(
            path,
            "pq.codebooks",
            format!("has shape {book:?}"),
        ));
    };
    if pq_dim * dsub != dim {
        return Err(Error::param(format!(
            "faiss needs pq_dim to divide the dimension, but this index has pq_dim = {pq_dim} for dimension {dim}; rebuild with a --pq-dim that divides {dim} to export it"
        )));
    }
    let nbits = ksub.trailing_zeros() as usize;
    let code_size = (pq_dim * nbits).div_ceil(8);
    let centroids = a.tensor::<f32>("ivf.centroids", DType::F32, &[n_lists, dim])?;
    let books = a.tensor::<f32>("pq.codebooks", DType::F32, &[pq_dim, ksub, dsub])?;
    let offsets = a.tensor::<u64>("ivf.list_offsets", DType::U64, &[n_lists + 1])?;
    let rows = a.tensor::<u64>("ivf.rows", DType::U64, &[n])?;
    let codes = a.tensor::<u8>("ivf.codes", DType::U8, &[n, pq_dim])?;

    o.bytes(b"IwPQ")?;
    o.header(dim, n as u64, metric)?;
    o.u64(n_lists as u64)?;
    let n_probes = m
        .search_defaults
        .get("n_probes")
        .and_then(|v| v.as_u64())
        .unwrap_or(1);
    o.u64(n_probes)?;
    o.flat(dim, centroids, metric)?;
    o.u8(0)?; // no direct map
    o.u64(0)?;
    o.u8(1)?; // by_residual
    o.u64(code_size as u64)?;
    o.u64(dim as u64)?;
    o.u64(pq_dim as u64)?;
    o.u64(nbits as u64)?;
    o.u64(books.len() as u64)?;
    o.f32s(books)?;
    o.bytes(b"ilar")?;
    o.u64(n_lists as u64)?;
    o.u64(code_size as u64)?;
    o.bytes(b"full")?;
    o.u64(n_lists as u64)?;
    for w in offsets.windows(2) {
        o.u64(w[1] - w[0])?;
    }
    let mut packed = vec![0u8; code_size];
    for w in offsets.windows(2) {
        let (start, end) = (w[0] as usize, w[1] as usize);
        for pos in start..end {
            pack_codes(&codes[pos * pq_dim..(pos + 1) * pq_dim], nbits, &mut packed);
            o.bytes(&packed)?;
        }
        for pos in start..end {
            o.i64(ids[rows[pos] as usize])?;
        }
    }
    Ok(())
}

/// Packs one row's sub-quantizer codes of `nbits` bits each, least-significant bit first.
pub fn pack_codes(codes: &[u8], nbits: usize, out: &mut [u8]) {
    out.fill(0);
    for (m, &c) in codes.iter().enumerate() {
        for b in 0..nbits {
            if (c >> b) & 1 == 1 {
                let bit = m * nbits + b;
                out[bit / 8] |= 1 << (bit % 8);
            }
        }
    }
}
