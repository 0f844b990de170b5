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
use std::io::{Seek, SeekFrom, Write};
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

/// Where the bytes of a tensor to write come from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// Raw little-endian bytes already in memory.
    Bytes(&'a [u8]),
    /// Rows made while the file is written, a block at a time, so the whole tensor never
    /// exists in memory: `fill(first, out)` writes rows `first..` into `out`, a whole number of
    /// rows whose start is 8-byte aligned (so it can be cast to any [`DType`]'s slice).
    Rows(&'a (dyn Fn(usize, &mut [u8]) + Sync)),
}

/// A tensor to write.
pub struct TensorOut<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub source: Source<'a>,
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
            source: Source::Bytes(bytemuck::cast_slice(data)),
        }
    }

    /// A tensor of `shape[0]` rows made by `fill` as it is written (see [`Source::Rows`]).
    pub fn rows(
        name: &'a str,
        dtype: DType,
        shape: Vec<usize>,
        fill: &'a (dyn Fn(usize, &mut [u8]) + Sync),
    ) -> Self {
        TensorOut {
            name,
            dtype,
            shape,
            source: Source::Rows(fill),
        }
    }

    /// Bytes the shape asks for, or `None` on overflow.
    fn shape_bytes(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(self.dtype.size(), |acc, &d| acc.checked_mul(d))
    }
}

/// Bytes of rows made per block for a [`Source::Rows`] tensor (at least one row).
const BLOCK_BYTES: usize = 8 << 20;

/// Writes a container atomically. Tensors are reordered widest element first, each starting
/// on a 64-byte boundary.
pub fn write(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tensors: &[TensorOut<'_>],
) -> Result<()> {
    write_with(path, tensors, |_| Ok(metadata.clone()))
}

/// Writes a container atomically with the metadata that `metadata_of` makes from each tensor's
/// xxh3-64 (by name, padding left out), which are only known once the data is written: the
/// header is sized from the metadata made with every hash 0, the data streamed after it, and
/// then the header rewritten in place. `metadata_of` must give a header no longer for the real
/// hashes than for zeros (fixed-width hashes do).
pub fn write_with(
    path: &Path,
    tensors: &[TensorOut<'_>],
    metadata_of: impl FnMut(&BTreeMap<&str, u64>) -> Result<BTreeMap<String, String>>,
) -> Result<()> {
    write_blocks(path, tensors, metadata_of, BLOCK_BYTES)
}

fn write_blocks(
    path: &Path,
    tensors: &[TensorOut<'_>],
    mut metadata_of: impl FnMut(&BTreeMap<&str, u64>) -> Result<BTreeMap<String, String>>,
    block_bytes: usize,
) -> Result<()> {
    let mut sorted: Vec<&TensorOut<'_>> = tensors.iter().collect();
    sorted.sort_by(|a, b| b.dtype.size().cmp(&a.dtype.size()).then(a.name.cmp(b.name)));
    let mut lens = Vec::with_capacity(sorted.len());
    for t in &sorted {
        let len = t.shape_bytes().filter(|&len| match t.source {
            Source::Bytes(b) => b.len() == len,
            Source::Rows(_) => true,
        });
        let Some(len) = len else {
            let held = match t.source {
                Source::Bytes(b) => format!("{} bytes", b.len()),
                Source::Rows(_) => "rows".to_string(),
            };
            return Err(Error::param(format!(
                "internal: tensor `{}` has {held} for shape {:?}",
                t.name, t.shape
            )));
        };
        lens.push(len);
    }
    // The gap before each tensor that puts it on a boundary, filled by a padding tensor.
    static ZEROS: [u8; DATA_ALIGN] = [0; DATA_ALIGN];
    let mut gaps = Vec::with_capacity(sorted.len());
    let mut offset = 0usize;
    for &len in &lens {
        let gap = offset.next_multiple_of(DATA_ALIGN) - offset;
        gaps.push(gap);
        offset += gap + len;
    }
    let names: Vec<String> = (0..gaps.len())
        .map(|i| format!("{PAD_PREFIX}{i}"))
        .collect();
    let pads: Vec<TensorOut<'_>> = gaps
        .iter()
        .zip(&names)
        .map(|(&gap, name)| TensorOut::new(name, DType::U8, vec![gap], &ZEROS[..gap]))
        .collect();
    // (tensor, its length) in file order, a pad before each tensor not on a boundary.
    let order: Vec<(&TensorOut<'_>, usize)> = sorted
        .iter()
        .zip(&lens)
        .zip(pads.iter().zip(&gaps))
        .flat_map(|((&t, &len), (pad, &gap))| {
            (gap > 0)
                .then_some((pad, gap))
                .into_iter()
                .chain([(t, len)])
        })
        .collect();
    let header_of = |metadata: &BTreeMap<String, String>| -> Result<String> {
        let mut header = Map::new();
        header.insert("__metadata__".into(), json!(metadata));
        let mut offset = 0usize;
        for &(t, len) in &order {
            header.insert(
                t.name.to_string(),
                json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, offset + len]}),
            );
            offset += len;
        }
        serde_json::to_string(&Value::Object(header)).map_err(|e| Error::param(e.to_string()))
    };
    let mut hashes: BTreeMap<&str, u64> = tensors.iter().map(|t| (t.name, 0)).collect();
    let mut text = header_of(&metadata_of(&hashes)?)?;
    while (8 + text.len()) % DATA_ALIGN != 0 {
        text.push(' ');
    }
    let header_len = text.len();
    let part = crate::laps::span("artifact: bytes written");
    let mut out = AtomicFile::create(path)?;
    let io = |e| Error::io(path, e);
    out.write_all(&(header_len as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(text.as_bytes()).map_err(io)?;
    for &(t, len) in &order {
        let hash = match t.source {
            Source::Bytes(bytes) => {
                let (hash, written) = rayon::join(
                    || xxhash_rust::xxh3::xxh3_64(bytes),
                    || -> std::io::Result<()> {
                        for piece in bytes.chunks(block_bytes.max(1)) {
                            out.write_all(piece)?;
                            out.start_writeback()?;
                        }
                        Ok(())
                    },
                );
                written.map_err(io)?;
                hash
            }
            Source::Rows(fill) => {
                write_rows(&mut out, fill, &t.shape, len, block_bytes).map_err(io)?
            }
        };
        if let Some(h) = hashes.get_mut(t.name) {
            *h = hash;
        }
    }
    let mut text = header_of(&metadata_of(&hashes)?)?;
    if text.len() > header_len {
        return Err(Error::param(format!(
            "internal: the header grew from {header_len} to {} bytes once the hashes were known",
            text.len()
        )));
    }
    while text.len() < header_len {
        text.push(' ');
    }
    out.seek(SeekFrom::Start(8)).map_err(io)?;
    out.write_all(text.as_bytes()).map_err(io)?;
    drop(part);
    let _span = crate::laps::span("artifact: synced and renamed");
    out.commit()
}

/// Writes the `len` bytes of a [`Source::Rows`] tensor of `shape`, made a block of rows at a
/// time, the next block made while the one before is hashed and written; returns their xxh3-64.
fn write_rows(
    out: &mut AtomicFile,
    fill: &(dyn Fn(usize, &mut [u8]) + Sync),
    shape: &[usize],
    len: usize,
    block_bytes: usize,
) -> std::io::Result<u64> {
    let rows = shape.first().copied().unwrap_or(1);
    if len == 0 || rows == 0 {
        return Ok(xxhash_rust::xxh3::xxh3_64(&[]));
    }
    let row_bytes = len / rows;
    let per_block = (block_bytes / row_bytes).max(1);
    // u64 words, so every block starts 8-byte aligned.
    let words = (per_block * row_bytes).div_ceil(8);
    let mut blocks = [vec![0u64; words], vec![0u64; words]];
    let bytes_of = |count: usize| count * row_bytes;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut first = 0;
    let mut count = per_block.min(rows);
    fill(
        0,
        &mut bytemuck::cast_slice_mut(&mut blocks[0])[..bytes_of(count)],
    );
    loop {
        let next = first + count;
        let next_count = per_block.min(rows - next);
        let [done, ahead] = &mut blocks;
        let done = &bytemuck::cast_slice::<u64, u8>(done)[..bytes_of(count)];
        let (written, ()) = rayon::join(
            || {
                hasher.update(done);
                out.write_all(done)?;
                out.start_writeback()
            },
            || {
                if next_count > 0 {
                    fill(
                        next,
                        &mut bytemuck::cast_slice_mut(ahead)[..bytes_of(next_count)],
                    );
                }
            },
        );
        written?;
        if next_count == 0 {
            return Ok(hasher.digest());
        }
        blocks.swap(0, 1);
        first = next;
        count = next_count;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows made a block at a time are written as the same bytes, in the same file, as the
    /// same rows given whole: blocks of one row, of several with a short last one, of rows
    /// wider than a block, and empty tensors; the hashes handed to the metadata are the
    /// one-shot xxh3-64 of each tensor.
    #[test]
    fn rows_made_in_blocks_write_the_same_file_and_hashes_as_whole_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        // 7 rows of 5 bytes (not a multiple of 8), 3 rows of 6 f32, 0 rows of 4 u32.
        let a: Vec<u8> = (0..35u8).map(|v| v.wrapping_mul(37)).collect();
        let b: Vec<f32> = (0..18).map(|v| v as f32 * 0.5 - 3.0).collect();
        let c: Vec<u32> = Vec::new();
        let fill_a =
            |first: usize, out: &mut [u8]| out.copy_from_slice(&a[first * 5..][..out.len()]);
        let b_bytes: &[u8] = bytemuck::cast_slice(&b);
        let fill_b = |first: usize, out: &mut [u8]| {
            let out: &mut [f32] = bytemuck::cast_slice_mut(out);
            out.copy_from_slice(&b[first * 6..][..out.len()]);
        };
        let fill_c = |_: usize, _: &mut [u8]| panic!("no rows to make");
        let whole = [
            TensorOut::new("a", DType::U8, vec![7, 5], &a),
            TensorOut::new("b", DType::F32, vec![3, 6], &b),
            TensorOut::new("c", DType::U32, vec![0, 4], &c),
        ];
        let made = [
            TensorOut::rows("a", DType::U8, vec![7, 5], &fill_a),
            TensorOut::rows("b", DType::F32, vec![3, 6], &fill_b),
            TensorOut::rows("c", DType::U32, vec![0, 4], &fill_c),
        ];
        let expected: BTreeMap<&str, u64> = [
            ("a", xxhash_rust::xxh3::xxh3_64(&a)),
            ("b", xxhash_rust::xxh3::xxh3_64(b_bytes)),
            ("c", xxhash_rust::xxh3::xxh3_64(&[])),
        ]
        .into();
        let metadata_of = |hashes: &BTreeMap<&str, u64>| {
            Ok(hashes
                .iter()
                .map(|(k, v)| (k.to_string(), format!("{v:016x}")))
                .collect())
        };
        let reference = dir.path().join("whole");
        write_blocks(&reference, &whole, metadata_of, BLOCK_BYTES).expect("write");
        let reference = std::fs::read(&reference).expect("read");
        for block_bytes in [1, 5, 10, 12, 24, 25, 1000] {
            let path = dir.path().join(format!("made-{block_bytes}"));
            let mut seen = Vec::new();
            let record = |hashes: &BTreeMap<&str, u64>| {
                seen.push(
                    hashes
                        .clone()
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<BTreeMap<_, _>>(),
                );
                metadata_of(hashes)
            };
            write_blocks(&path, &made, record, block_bytes).expect("write");
            assert_eq!(
                std::fs::read(&path).expect("read"),
                reference,
                "blocks of {block_bytes} bytes"
            );
            let last = seen.last().expect("metadata made");
            let expected: BTreeMap<String, u64> =
                expected.iter().map(|(k, &v)| (k.to_string(), v)).collect();
            assert_eq!(last, &expected, "blocks of {block_bytes} bytes");
        }
    }

    /// Metadata that outgrows the header's padding once the hashes are known is refused, and
    /// nothing is left behind.
    #[test]
    fn a_header_that_grows_after_the_data_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out");
        let data = [1u8, 2, 3];
        let tensors = [TensorOut::new("a", DType::U8, vec![3], &data)];
        let err = write_with(&path, &tensors, |hashes| {
            let grown = if hashes["a"] == 0 { 0 } else { 200 };
            Ok([("h".to_string(), "x".repeat(grown))].into())
        })
        .expect_err("200 more bytes than the padding holds");
        assert!(err.to_string().contains("header grew"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
