//! The container: the safetensors layout, so `safetensors.numpy.load_file` opens an artifact.
//!
//! | bytes                 | what |
//! |-----------------------|------|
//! | `0..8`                | `H`, the header length, u64 little-endian |
//! | `8..8+H`              | JSON header, padded with spaces so the data starts on a 64-byte boundary |
//! | `8+H..`               | tensor data, back to back in the order of the header's offsets |
//!
//! The header maps each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}`
//! (offsets relative to the start of the data) and holds string metadata under
//! `__metadata__`. Every tensor starts on a 64-byte boundary (a cache line), so it can be viewed
//! in place from the memory map and a row of 64·k bytes spans k cache lines, not k + 1; the
//! gaps are filled by zero `U8` tensors named `__pad<i>` (safetensors allows no holes), which
//! opening ignores. Tensors are laid out widest element type first.
//!
//! Opening checks every length and offset with checked arithmetic and names the tensor that is
//! wrong; checksums are verified by the caller ([`super::Artifact::open`]), which knows them from the
//! manifest.

use crate::fsutil::AtomicFile;
use crate::{Error, Result};
use memmap2::Mmap;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest header accepted on open (the safetensors limit).
const MAX_HEADER: u64 = 100 << 20;
/// Alignment of the start of the data and of every tensor.
const DATA_ALIGN: usize = 64;
/// Names of the padding tensors between aligned tensors.
const PAD_PREFIX: &str = "__pad";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
    U64,
    I64,
    U8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::U64 | DType::I64 => 8,
            DType::F32 | DType::U32 => 4,
            DType::U8 => 1,
        }
    }
    fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::U32 => "U32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::U8 => "U8",
        }
    }
    fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "F32" => DType::F32,
            "U32" => DType::U32,
            "U64" => DType::U64,
            "I64" => DType::I64,
            "U8" => DType::U8,
            _ => return None,
        })
    }
}

/// A tensor to write: its raw little-endian bytes.
pub struct TensorOut<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

impl<'a> TensorOut<'a> {
    pub fn new<T: bytemuck::Pod>(
        name: &'a str,
        dtype: DType,
        shape: Vec<usize>,
        data: &'a [T],
    ) -> Self {
        TensorOut {
            name,
            dtype,
            shape,
            bytes: bytemuck::cast_slice(data),
        }
    }
}

/// Writes a container atomically. Tensors are reordered widest element first, each starting
/// on a 64-byte boundary.
pub fn write(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tensors: &[TensorOut<'_>],
) -> Result<()> {
    let mut sorted: Vec<&TensorOut<'_>> = tensors.iter().collect();
    sorted.sort_by(|a, b| b.dtype.size().cmp(&a.dtype.size()).then(a.name.cmp(b.name)));
    // The gap before each tensor that puts it on a boundary, filled by a padding tensor.
    static ZEROS: [u8; DATA_ALIGN] = [0; DATA_ALIGN];
    let mut gaps = Vec::with_capacity(sorted.len());
    let mut offset = 0usize;
    for t in &sorted {
        let gap = offset.next_multiple_of(DATA_ALIGN) - offset;
        gaps.push(gap);
        offset += gap + t.bytes.len();
    }
    let names: Vec<String> = (0..gaps.len())
        .map(|i| format!("{PAD_PREFIX}{i}"))
        .collect();
    let pads: Vec<TensorOut<'_>> = gaps
        .iter()
        .zip(&names)
        .map(|(&gap, name)| TensorOut::new(name, DType::U8, vec![gap], &ZEROS[..gap]))
        .collect();
    let order: Vec<&TensorOut<'_>> = sorted
        .iter()
        .zip(&pads)
        .flat_map(|(&t, pad)| {
            (!pad.bytes.is_empty())
                .then_some(pad)
                .into_iter()
                .chain([t])
        })
        .collect();
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0usize;
    for t in &order {
        let elems: usize = t.shape.iter().product();
        if elems * t.dtype.size() != t.bytes.len() {
            return Err(Error::param(format!(
                "internal: tensor `{}` has {} bytes for shape {:?}",
                t.name,
                t.bytes.len(),
                t.shape
            )));
        }
        header.insert(
            t.name.to_string(),
            json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, offset + t.bytes.len()]}),
        );
        offset += t.bytes.len();
    }
    let mut text =
        serde_json::to_string(&Value::Object(header)).map_err(|e| Error::param(e.to_string()))?;
    while (8 + text.len()) % DATA_ALIGN != 0 {
        text.push(' ');
    }
    let part = crate::laps::span("artifact: bytes written");
    let mut out = AtomicFile::create(path)?;
    let io = |e| Error::io(path, e);
    out.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(text.as_bytes()).map_err(io)?;
    for t in &order {
        out.write_all(t.bytes).map_err(io)?;
    }
    drop(part);
    let _span = crate::laps::span("artifact: synced and renamed");
    out.commit()
}

/// Where a tensor lies in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub range: std::ops::Range<usize>,
}

/// An opened container: the memory map and its parsed header.
pub struct Container {
    path: PathBuf,
    map: Mmap,
    pub metadata: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl Container {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process. Artifacts are written to a
        // temporary name and renamed into place, so vecbuild never modifies a mapped file; a
        // file truncated by someone else while mapped would fault, as with any mmap reader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |section: &str, why: String| Error::artifact(path, section, why);
        if map.len() < 8 {
            return Err(bad(
                "header",
                format!("file is {} bytes, too short for an artifact", map.len()),
            ));
        }
        let header_len = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
        let data_start = 8u64
            .checked_add(header_len)
            .filter(|&end| header_len <= MAX_HEADER && end <= map.len() as u64)
            .ok_or_else(|| {
                bad(
                    "header",
                    format!(
                        "header length {header_len} does not fit a file of {} bytes",
                        map.len()
                    ),
                )
            })? as usize;
        let header: Map<String, Value> =
            serde_json::from_slice(&map[8..data_start]).map_err(|e| {
                bad(
                    "header",
                    format!("header is not valid JSON ({e}); the file is damaged"),
                )
            })?;
        let mut metadata = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        for (name, value) in &header {
            if name == "__metadata__" {
                let m = value
                    .as_object()
                    .ok_or_else(|| bad("header", "__metadata__ is not an object".into()))?;
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad("header", format!("metadata `{k}` is not a string")))?;
                    metadata.insert(k.clone(), v.to_string());
                }
                continue;
            }
            if name.starts_with(PAD_PREFIX) {
                continue;
            }
            let info = parse_tensor(value, data_start, map.len()).map_err(|why| bad(name, why))?;
            tensors.insert(name.clone(), info);
        }
        Ok(Container {
            path: path.to_path_buf(),
            map,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw bytes of a tensor; errors when it is missing or of another type.
    pub fn bytes(&self, name: &str, dtype: DType) -> Result<(&[u8], &[usize])> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::artifact(&self.path, name, "tensor is missing"))?;
        if info.dtype != dtype {
            return Err(Error::artifact(
                &self.path,
                name,
                format!("has dtype {:?}, expected {dtype:?}", info.dtype),
            ));
        }
        Ok((&self.map[info.range.clone()], &info.shape))
    }

    /// A tensor viewed in place as a slice of `T` (`dtype` must match `T`).
    pub fn slice<T: bytemuck::Pod>(&self, name: &str, dtype: DType) -> Result<(&[T], &[usize])> {
        let (bytes, shape) = self.bytes(name, dtype)?;
        let data = bytemuck::try_cast_slice(bytes).map_err(|e| {
            Error::artifact(
                &self.path,
                name,
                format!("cannot be viewed in place: {e:?}"),
            )
        })?;
        Ok((data, shape))
    }

    /// All tensors' bytes, by name (for checksums).
    pub fn all_bytes(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.tensors
            .iter()
            .map(|(n, t)| (n.as_str(), &self.map[t.range.clone()]))
    }

    pub fn file_len(&self) -> usize {
        self.map.len()
    }
}

fn parse_tensor(
    value: &Value,
    data_start: usize,
    file_len: usize,
) -> std::result::Result<TensorInfo, String> {
    let dtype_name = value
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or("no dtype")?;
    let dtype =
        DType::parse(dtype_name).ok_or_else(|| format!("unsupported dtype {dtype_name}"))?;
    let shape: Vec<usize> = value
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("no shape")?
        .iter()
        .map(|d| {
            d.as_u64()
                .map(|d| d as usize)
                .ok_or("shape entry is not an integer")
        })
        .collect::<std::result::Result<_, _>>()?;
    let offsets = value
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or("no data_offsets")?;
    let (begin, end) = match offsets.as_slice() {
        [b, e] => (
            b.as_u64().ok_or("bad offset")? as usize,
            e.as_u64().ok_or("bad offset")? as usize,
        ),
        _ => return Err("data_offsets must hold two numbers".into()),
    };
    let len = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or("shape overflows")?;
    if end < begin || end - begin != len {
        return Err(format!(
            "holds {} bytes but shape {shape:?} of {dtype_name} needs {len}",
            end.saturating_sub(begin)
        ));
    }
    let abs_end = data_start.checked_add(end).ok_or("offset overflows")?;
    if abs_end > file_len {
        return Err(format!(
            "ends at byte {abs_end} but the file has {file_len} bytes (truncated?)"
        ));
    }
    let abs_begin = data_start + begin;
    if !abs_begin.is_multiple_of(dtype.size()) {
        return Err(format!(
            "starts at byte {abs_begin}, not aligned to {} bytes",
            dtype.size()
        ));
    }
    Ok(TensorInfo {
        dtype,
        shape,
        range: abs_begin..abs_end,
    })
}
