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
//! | `IHNf` (HNSW flat) | fourcc, header, `vec<f64>` assign_probas, `vec<i32>` cum_nneighbor_per_level, `vec<i32>` levels (level + 1 per row), `vec<u64>` offsets `[n + 1]`, `vec<i32>` neighbours (−1 pads), i32 entry point, i32 max level, i32 efConstruction, i32 efSearch, i32 upper_beam, then the storage (`IxF2`/`IxFI`) |
//! | `ilar` inverted lists | fourcc, u64 `nlist`, u64 `code_size`, fourcc `full`, `vec<u64>` list sizes, then per non-empty list its codes `[size × code_size]` and ids `[size]` as i64 |
//!
//! PQ codes of `nbits < 8` are packed least-significant bit first, sub-quantizer 0 first.
//!
//! CAGRA artifacts export as `IHNf`: level 0 is the CAGRA graph and level-1 links (rows with
//! fewer links pad with −1), levels ≥ 1 its upper levels (see [`super::hnsw`]); cosine ones as
//! inner product over the unit vectors.
//!
//! Conventions: `cosine` flat indexes export as inner product over the unit vectors (faiss
//! reports cos, not 1 − cos); `cosine` IVF-PQ indexes were built as L2 over unit vectors and
//! export as L2 (faiss reports 2 − 2 cos). Queries must be normalised by the caller. String ids
//! cannot live in a faiss index: such artifacts export row numbers (the caller is told).

use super::hnsw::Layers;
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

impl Out<'_> {
    /// Writes the index `inner` writes, inside an `IxMp` id map unless the ids are the row
    /// numbers. Returns whether it wrapped.
    fn with_ids(
        &mut self,
        ids: &[i64],
        dim: usize,
        metric: i32,
        inner: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<bool> {
        let identity = ids.iter().enumerate().all(|(i, &id)| id == i as i64);
        if identity {
            inner(self)?;
            return Ok(false);
        }
        self.bytes(b"IxMp")?;
        self.header(dim, ids.len() as u64, metric)?;
        inner(self)?;
        self.u64(ids.len() as u64)?;
        for id in ids {
            self.i64(*id)?;
        }
        Ok(true)
    }
}

/// faiss's `HNSW::set_default_probas(M, 1 / ln M)`, in its float/double mix: level
/// probabilities, and the cumulative neighbour slots per level (`m0` on level 0, `m_upper`
/// above, where faiss's default has `2M` and `M`), extended (with vanishing probabilities) to
/// cover `levels` levels.
fn hnsw_probas(m: usize, m0: usize, m_upper: usize, levels: usize) -> (Vec<f64>, Vec<i32>) {
    let level_mult = (1.0 / (m as f64).ln()) as f32;
    let mut probas = Vec::new();
    let mut cum = vec![0i32];
    let mut nn = 0i32;
    for level in 0.. {
        let a = ((-(level as f32)) / level_mult) as f64;
        let b = ((-1.0f32) / level_mult) as f64;
        let p = (a.exp() * (1.0 - b.exp())) as f32;
        if p < 1e-9 && level >= levels {
            break;
        }
        probas.push(p as f64);
        nn += if level == 0 {
            m0 as i32
        } else {
            m_upper as i32
        };
        cum.push(nn);
    }
    (probas, cum)
}

/// `IHNf`: IndexHNSWFlat over the CAGRA graph (level 0) and its upper levels.
fn hnsw_flat(o: &mut Out<'_>, layers: &Layers<'_>, metric: i32) -> Result<()> {
    let (n, dim, m) = (layers.n, layers.dim, layers.m);
    let max_level = layers.max_level();
    let (probas, cum) = hnsw_probas(m, layers.m0, layers.m_upper, max_level + 1);
    let levels: Vec<usize> = (0..n).map(|r| layers.level(r)).collect();
    o.bytes(b"IHNf")?;
    o.header(dim, n as u64, metric)?;
    o.u64(probas.len() as u64)?;
    for p in &probas {
        o.bytes(&p.to_le_bytes())?;
    }
    o.u64(cum.len() as u64)?;
    for c in &cum {
        o.i32(*c)?;
    }
    o.u64(n as u64)?;
    for &l in &levels {
        o.i32(l as i32 + 1)?;
    }
    o.u64(n as u64 + 1)?;
    let mut offset = 0u64;
    o.u64(0)?;
    for &l in &levels {
        offset += cum[l + 1] as u64;
        o.u64(offset)?;
    }
    o.u64(offset)?;
    for (r, &level) in levels.iter().enumerate() {
        for l in 0..=level {
            let slots = (cum[l + 1] - cum[l]) as usize;
            let links = layers.links(r, l);
            for s in 0..slots {
                o.i32(links.get(s).map_or(-1, |&v| v as i32))?;
            }
        }
    }
    o.i32(layers.entry as i32)?;
    o.i32(max_level as i32)?;
    // efConstruction (unused by search), efSearch (faiss's default 16), upper_beam.
    o.i32(40)?;
    o.i32(16)?;
    o.i32(1)?;
    o.flat(dim, layers.vectors, metric)
}

const METRIC_IP: i32 = 0;
const METRIC_L2: i32 = 1;

/// faiss ids for the artifact's rows: integer ids as i64, string ids as input row numbers.
fn faiss_ids(
    ids: IdsView<'_>,
    input_rows: Option<&[u32]>,
    path: &Path,
) -> Result<(Vec<i64>, bool)> {
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
        IdsView::Utf8 { .. } => Ok((
            match input_rows {
                Some(rows) => rows.iter().map(|&r| r as i64).collect(),
                None => (0..ids.len() as i64).collect(),
            },
            true,
        )),
    }
}

/// Writes `artifact` as a faiss index file at `out` (atomically).
pub fn export(artifact: &Artifact, out: &Path) -> Result<Exported> {
    let m = &artifact.manifest;
    let path = artifact.container.path();
    let (n, dim) = (m.count as usize, m.dim);
    let (ids, row_number_ids) = faiss_ids(artifact.ids()?, artifact.input_rows()?, path)?;
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
            let mapped = o.with_ids(&ids, dim, metric, |o| o.flat(dim, data, metric))?;
            Exported {
                class: if mapped {
                    "IndexIDMap(IndexFlat)"
                } else {
                    "IndexFlat"
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
        IndexKind::Cagra => {
            let metric = if m.metric == Metric::L2 {
                METRIC_L2
            } else {
                METRIC_IP
            };
            let layers = Layers::of(artifact)?;
            let mapped = o.with_ids(&ids, dim, metric, |o| hnsw_flat(o, &layers, metric))?;
            Exported {
                class: if mapped {
                    "IndexIDMap(IndexHNSWFlat)"
                } else {
                    "IndexHNSWFlat"
                },
                metric: faiss_metric(metric),
                row_number_ids,
            }
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
