//! `.fvecs` input (the TEXMEX/ANN-benchmarks format): each vector is a little-endian `i32`
//! dimension followed by that many little-endian `f32` values. Ids are row numbers.

use super::{check_rows, Batch, InputFile, InputSummary, ReadOptions};
use crate::error::Location;
use crate::ids::Ids;
use crate::{Error, Result};
use ndarray::Array2;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

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
        let mut file_rows = 0u64;
        let mut data: Vec<f32> = Vec::new();
        let mut batch_start = 0u64;
        let mut head = [0u8; 4];
        loop {
            let at = |row: u64| Location::file(path).with_row(summary.rows + row, row);
            let more = r.read(&mut head[..1]).map_err(|e| Error::io(path, e))? > 0;
            if more {
                r.read_exact(&mut head[1..])
                    .map_err(|_| Error::input(at(file_rows), "truncated dimension header"))?;
                let d = i32::from_le_bytes(head);
                if d <= 0 {
                    return Err(Error::input(
                        at(file_rows),
                        format!("dimension header is {d}"),
                    ));
                }
                if summary.dim == 0 {
                    opts.check_dim(d as usize, at(file_rows))?;
                    summary.dim = d as usize;
                } else if d as usize != summary.dim {
                    return Err(Error::input(
                        at(file_rows),
                        format!("has dimension {d}, expected {}", summary.dim),
                    ));
                }
                let mut raw = vec![0u8; summary.dim * 4];
                r.read_exact(&mut raw)
                    .map_err(|_| Error::input(at(file_rows), "truncated vector"))?;
                data.extend(
                    raw.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
                file_rows += 1;
            }
            let full = (file_rows - batch_start) as usize >= opts.rows_per_batch(summary.dim);
            if (full || !more) && file_rows > batch_start {
                emit(
                    path,
                    opts,
                    &mut data,
                    summary.dim,
                    summary.rows,
                    batch_start,
                    file_rows,
                    sink,
                )?;
                batch_start = file_rows;
            }
            if !more {
                break;
            }
        }
        bytes_done += size;
        summary.rows += file_rows;
        summary.files.push(InputFile {
            path: path.clone(),
            rows: file_rows,
            bytes: size,
        });
        if let Some(p) = opts.progress {
            p(super::Progress {
                rows: summary.rows,
                bytes: bytes_done,
                total_rows: None,
            });
        }
    }
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn emit(
    path: &Path,
    opts: &ReadOptions<'_>,
    data: &mut Vec<f32>,
    dim: usize,
    file_start: u64,
    from: u64,
    to: u64,
    sink: &mut dyn FnMut(Batch) -> Result<()>,
) -> Result<()> {
    let n = (to - from) as usize;
    let mut vectors = Array2::from_shape_vec((n, dim), std::mem::take(data))
        .map_err(|e| Error::param(e.to_string()))?;
    check_rows(
        vectors.view_mut(),
        opts.normalize,
        path,
        None,
        file_start + from,
        from,
    )?;
    sink(Batch {
        ids: Ids::row_numbers(file_start + from, n),
        vectors,
        first_row: file_start + from,
    })
}

/// Writes `[n, dim]` rows as `.fvecs` (tests, dataset helpers).
pub fn write(path: &Path, vectors: ndarray::ArrayView2<'_, f32>) -> Result<()> {
    use std::io::Write;
    let mut out = crate::fsutil::AtomicFile::create(path)?;
    let w = out.writer();
    for row in vectors.rows() {
        w.write_all(&(row.len() as i32).to_le_bytes())
            .map_err(|e| Error::io(path, e))?;
        for v in row {
            w.write_all(&v.to_le_bytes())
                .map_err(|e| Error::io(path, e))?;
        }
    }
    out.commit()
}
