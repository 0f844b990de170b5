//! `.npy` input: a 2-D little-endian float32 array in C order (`np.save` of an `[n, dim]`
//! `float32` array). Ids are row numbers. Rows are streamed in batches.
//!
//! Layout: magic `\x93NUMPY`, version (1 or 2 bytes major/minor), header length (u16 for v1,
//! u32 for v2/v3), a Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (n, d)}`
//! padded with spaces, then the raw data.

use super::{check_rows, Batch, InputFile, InputSummary, ReadOptions};
use crate::error::Location;
use crate::ids::Ids;
use crate::{Error, Result};
use ndarray::Array2;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The shape and data offset of a `.npy` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NpyHeader {
    pub rows: u64,
    pub dim: usize,
    pub data_offset: u64,
}

pub fn read_header(path: &Path, r: &mut impl Read) -> Result<NpyHeader> {
    let bad = |why: String| Error::input(Location::file(path), format!("bad .npy header: {why}"));
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).map_err(|e| bad(e.to_string()))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad("missing \\x93NUMPY magic".into()));
    }
    let (len, prefix) = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|e| bad(e.to_string()))?;
            (u16::from_le_bytes(b) as usize, 10)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| bad(e.to_string()))?;
            (u32::from_le_bytes(b) as usize, 12)
        }
        v => return Err(bad(format!("unsupported version {v}"))),
    };
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8_lossy(&text);
    let field = |key: &str| -> Option<String> {
        let start = text.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = text[start..].trim_start().strip_prefix(':')?.trim_start();
        let end = if rest.starts_with('(') {
            rest.find(')')? + 1
        } else {
            rest.find([',', '}'])?
        };
        Some(rest[..end].trim().to_string())
    };
    let descr = field("descr").ok_or_else(|| bad("no 'descr'".into()))?;
    if descr.trim_matches(['\'', '"']) != "<f4" {
        return Err(bad(format!(
            "dtype {descr}; vecbuild reads little-endian float32 ('<f4') .npy files"
        )));
    }
    if field("fortran_order").as_deref() != Some("False") {
        return Err(bad(
            "fortran_order must be False (save a C-ordered array)".into()
        ));
    }
    let shape = field("shape").ok_or_else(|| bad("no 'shape'".into()))?;
    let dims: Vec<u64> = shape
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad(format!("unreadable shape {shape}")))?;
    if dims.len() != 2 {
        return Err(bad(format!("shape {shape} is not 2-D [rows, dim]")));
    }
    if dims[1] == 0 {
        return Err(bad("dimension is 0".into()));
    }
    Ok(NpyHeader {
        rows: dims[0],
        dim: dims[1] as usize,
        data_offset: (prefix + len) as u64,
    })
}

pub(crate) fn read(
    files: &[PathBuf],
    opts: &ReadOptions<'_>,
    sink: &mut dyn FnMut(Batch) -> Result<()>,
) -> Result<InputSummary> {
    let mut summary = InputSummary::row_numbered();
    let mut bytes_done = 0u64;
    for path in files {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let h = read_header(path, &mut r)?;
        let expected = h
            .rows
            .checked_mul(h.dim as u64 * 4)
            .and_then(|b| b.checked_add(h.data_offset));
        if expected != Some(size) {
            return Err(Error::input(
                Location::file(path),
                format!("file has {size} bytes but its header promises {} rows × {} floats (truncated or corrupt)", h.rows, h.dim),
            ));
        }
        opts.check_dim(h.dim, Location::file(path))?;
        if summary.dim != 0 && summary.dim != h.dim {
            return Err(Error::input(
                Location::file(path),
                format!(
                    "dimension {} differs from {} in earlier inputs",
                    h.dim, summary.dim
                ),
            ));
        }
        summary.dim = h.dim;
        let per_batch = opts.rows_per_batch(h.dim);
        let mut done = 0u64;
        while done < h.rows {
            let n = (per_batch as u64).min(h.rows - done) as usize;
            let mut raw = vec![0u8; n * h.dim * 4];
            r.read_exact(&mut raw).map_err(|e| Error::io(path, e))?;
            let data: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let mut vectors = Array2::from_shape_vec((n, h.dim), data)
                .map_err(|e| Error::param(e.to_string()))?;
            let first_row = summary.rows + done;
            check_rows(
                vectors.view_mut(),
                opts.normalize,
                path,
                None,
                first_row,
                done,
            )?;
            sink(Batch {
                ids: Ids::row_numbers(first_row, n),
                vectors,
                first_row,
            })?;
            done += n as u64;
            bytes_done += (n * h.dim * 4) as u64;
            if let Some(p) = opts.progress {
                p(super::Progress {
                    rows: summary.rows + done,
                    bytes: bytes_done,
                    total_rows: None,
                });
            }
        }
        summary.rows += h.rows;
        summary.files.push(InputFile {
            path: path.clone(),
            rows: h.rows,
            bytes: size,
        });
    }
    Ok(summary)
}

/// Writes `[n, dim]` float32 rows as a `.npy` file (tests, dataset helpers).
pub fn write(path: &Path, vectors: ndarray::ArrayView2<'_, f32>) -> Result<()> {
    use std::io::Write;
    let (n, d) = vectors.dim();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {d}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = crate::fsutil::AtomicFile::create(path)?;
    let w = out.writer();
    let io = |e| Error::io(path, e);
    w.write_all(b"\x93NUMPY\x01\x00").map_err(io)?;
    w.write_all(&(header.len() as u16).to_le_bytes())
        .map_err(io)?;
    w.write_all(header.as_bytes()).map_err(io)?;
    for v in vectors.iter() {
        w.write_all(&v.to_le_bytes()).map_err(io)?;
    }
    out.commit()
}
