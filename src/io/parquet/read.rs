//! Reading vectors from Parquet.
//!
//! 1. Every file's footer is read first: the vector and id columns are resolved (see
//!    [`ReadOptions`]), types checked, and the row groups listed with their global first rows.
//! 2. Row groups are dealt round-robin to `threads` workers. Each decodes its row groups in
//!    batches of [`ReadOptions::rows_per_batch`] rows (only the two projected columns), copies
//!    vectors into contiguous f32 rows, checks them, and sends them down a channel of depth 2.
//! 3. The caller's thread takes batches from the workers in row-group order, so batches arrive
//!    in input order and memory stays bounded by `threads × 3` batches, whatever the file size.

use super::{column_list, id_kind_of, ids_from_array, is_vector_type, list_parts, open_meta};
use crate::error::Location;
use crate::ids::{IdKind, Ids};
use crate::io::{check_rows, Batch, InputFile, InputSummary, ReadOptions};
use crate::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};
use ndarray::{Array2, ArrayViewMut2};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

/// One file's plan: where its columns are and where its row groups start.
struct FilePlan {
    path: PathBuf,
    meta: ArrowReaderMetadata,
    mask: ProjectionMask,
    vector: String,
    id: Option<String>,
    first_row: u64,
    bytes: u64,
}

/// One row group to decode.
struct Unit {
    file: usize,
    row_group: usize,
    first_row_in_file: u64,
    rows: u64,
    bytes: u64,
}

/// Bytes of vectors per record batch the Parquet decoder builds. arrow-rs grows a batch's
/// value buffer page by page (`reserve_exact`), so a large batch is copied over and over into
/// fresh pages; batches of ~1 MiB stay in memory the allocator reuses, and are gathered into
/// the caller's batch size. Measured with `vecbuild validate` against 8 MiB record batches
/// (2 cores, interleaved, medians of 11): 200k × 128 0.175 → 0.135 s, 50k × 768 0.285 →
/// 0.239 s (pyarrow read_table + to_numpy in the same runs: 0.155 s and 0.316 s).
const DECODE_BYTES: usize = 1 << 20;

enum Msg {
    Batch(Batch),
    Done(u64),
}

/// Picks the vector column of a file's schema.
fn pick_vector_column(path: &Path, schema: &Schema, wanted: Option<&str>) -> Result<String> {
    match wanted {
        Some(name) => match schema.field_with_name(name) {
            Ok(f) if is_vector_type(f.data_type()) => Ok(name.to_string()),
            Ok(f) => Err(Error::input(
                Location::file(path).with_column(name),
                format!(
                    "has type {}; expected a FixedSizeList or List of Float32/Float64/Float16",
                    f.data_type()
                ),
            )),
            Err(_) => Err(Error::input(
                Location::file(path),
                format!("no column `{name}`; columns are: {}", column_list(schema)),
            )),
        },
        None => {
            let found: Vec<&str> = schema
                .fields()
                .iter()
                .filter(|f| is_vector_type(f.data_type()))
                .map(|f| f.name().as_str())
                .collect();
            match found.as_slice() {
                [one] => Ok(one.to_string()),
                [] => Err(Error::input(
                    Location::file(path),
                    format!(
                        "no vector column (a list of floats) found; columns are: {}",
                        column_list(schema)
                    ),
                )),
                many => Err(Error::input(
                    Location::file(path),
                    format!(
                        "several vector columns ({}); choose one with --vector-column",
                        many.join(", ")
                    ),
                )),
            }
        }
    }
}

/// Picks the id column: the one asked for, else `id` when present, else none (row numbers).
fn pick_id_column(
    path: &Path,
    schema: &Schema,
    wanted: Option<&str>,
) -> Result<Option<(String, IdKind)>> {
    let name = match wanted {
        Some(n) => n,
        None if schema.field_with_name("id").is_ok() => "id",
        None => return Ok(None),
    };
    let field = schema.field_with_name(name).map_err(|_| {
        Error::input(
            Location::file(path),
            format!(
                "no id column `{name}`; columns are: {}",
                column_list(schema)
            ),
        )
    })?;
    let kind = id_kind_of(field.data_type()).ok_or_else(|| {
        Error::input(
            Location::file(path).with_column(name),
            format!(
                "id column has type {}; expected Int64, Int32, UInt64, UInt32 or Utf8",
                field.data_type()
            ),
        )
    })?;
    Ok(Some((name.to_string(), kind)))
}

/// The fixed dimension of a column, when its type says it (`FixedSizeList`).
fn fixed_dim(schema: &Schema, column: &str) -> Option<usize> {
    match schema.field_with_name(column).ok()?.data_type() {
        DataType::FixedSizeList(_, n) => Some(*n as usize),
        _ => None,
    }
}

/// Reads Parquet files in order; see the module docs.
pub(crate) fn read(
    files: &[PathBuf],
    opts: &ReadOptions<'_>,
    sink: &mut dyn FnMut(Batch) -> Result<()>,
) -> Result<InputSummary> {
    // 1. Plan: columns, types, dimensions and row groups of every file.
    let mut plans: Vec<FilePlan> = Vec::new();
    let mut units: Vec<Unit> = Vec::new();
    let mut vector_col: Option<String> = opts.vector_column.clone();
    let mut id_col: Option<Option<(String, IdKind)>> = None;
    let mut dim: Option<usize> = None;
    let mut total = 0u64;
    for path in files {
        let meta = open_meta(path)?;
        let schema = meta.schema().clone();
        let vector = pick_vector_column(path, &schema, vector_col.as_deref())?;
        vector_col.get_or_insert_with(|| vector.clone());
        let id = pick_id_column(path, &schema, opts.id_column.as_deref())?;
        match &id_col {
            None => id_col = Some(id.clone()),
            Some(first) if first.as_ref().map(|x| x.1) != id.as_ref().map(|x| x.1) => {
                let describe = |c: &Option<(String, IdKind)>| match c {
                    Some((n, k)) => format!("id column `{n}` of type {k}"),
                    None => "no id column".to_string(),
                };
                return Err(Error::input(
                    Location::file(path),
                    format!(
                        "has {} but earlier inputs have {}",
                        describe(&id),
                        describe(first)
                    ),
                ));
            }
            Some(_) => {}
        }
        if let Some(d) = fixed_dim(&schema, &vector) {
            if d == 0 {
                return Err(Error::input(
                    Location::file(path).with_column(&vector),
                    "vectors have dimension 0",
                ));
            }
            match dim {
                Some(prev) if prev != d => {
                    return Err(Error::input(
                        Location::file(path).with_column(&vector),
                        format!("vectors have dimension {d} but earlier inputs have {prev}"),
                    ))
                }
                _ => dim = Some(d),
            }
            opts.check_dim(d, Location::file(path).with_column(&vector))?;
        }
        let indices: Vec<usize> = std::iter::once(&vector)
            .chain(id.as_ref().map(|(n, _)| n))
            .filter_map(|n| schema.index_of(n).ok())
            .collect();
        let mask = ProjectionMask::roots(meta.parquet_schema(), indices.clone());
        let names: Vec<String> = indices
            .iter()
            .map(|&i| schema.field(i).name().clone())
            .collect();
        let mut file_rows = 0u64;
        let mut file_bytes = 0u64;
        for (rg, rg_meta) in meta.metadata().row_groups().iter().enumerate() {
            let bytes: u64 = rg_meta
                .columns()
                .iter()
                .filter(|c| {
                    names
                        .iter()
                        .any(|n| c.column_path().parts().first() == Some(n))
                })
                .map(|c| c.compressed_size().max(0) as u64)
                .sum();
            if rg_meta.num_rows() > 0 {
                units.push(Unit {
                    file: plans.len(),
                    row_group: rg,
                    first_row_in_file: file_rows,
                    rows: rg_meta.num_rows() as u64,
                    bytes,
                });
            }
            file_rows += rg_meta.num_rows().max(0) as u64;
            file_bytes += bytes;
        }
        plans.push(FilePlan {
            path: path.clone(),
            meta,
            mask,
            vector,
            id: id.map(|x| x.0),
            first_row: total,
            bytes: file_bytes,
        });
        total += file_rows;
    }
    let id_kind = id_col.flatten().map(|x| x.1).unwrap_or(IdKind::Int64);
    // List columns carry no dimension in their type: row 0 sets it.
    let dim = match dim {
        Some(d) => d,
        None => match units.first() {
            Some(u) => {
                let d = first_row_dim(&plans[u.file], u.row_group)?;
                let p = &plans[u.file];
                opts.check_dim(d, Location::file(&p.path).with_column(&p.vector))?;
                d
            }
            None => 0,
        },
    };

    // 2 and 3: decode in parallel, deliver in order.
    let threads = rayon::current_num_threads().clamp(1, units.len().max(1));
    let ctx = DecodeCtx {
        plans: &plans,
        units: &units,
        dim,
        opts,
    };
    // Bytes are credited per batch in proportion to its rows, then exactly per row group.
    let (mut rows_done, mut bytes_done, mut bytes_before_unit) = (0u64, 0u64, 0u64);
    std::thread::scope(|scope| -> Result<()> {
        let mut receivers: Vec<Receiver<Result<Msg>>> = Vec::with_capacity(threads);
        for w in 0..threads {
            let (tx, rx) = sync_channel::<Result<Msg>>(2);
            receivers.push(rx);
            let ctx = &ctx;
            scope.spawn(move || {
                for u in (w..ctx.units.len()).step_by(threads) {
                    let ok = ctx.decode_unit(u, &mut |m| tx.send(Ok(m)).is_ok());
                    match ok {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            });
        }
        for u in 0..units.len() {
            loop {
                let msg = receivers[u % threads].recv().map_err(|_| {
                    Error::param("internal: a Parquet decoding thread stopped early")
                })??;
                match msg {
                    Msg::Batch(b) => {
                        rows_done += b.vectors.nrows() as u64;
                        let unit = &units[u];
                        let in_unit =
                            rows_done - (plans[unit.file].first_row + unit.first_row_in_file);
                        bytes_done = bytes_before_unit + unit.bytes * in_unit / unit.rows.max(1);
                        sink(b)?;
                        if let Some(p) = opts.progress {
                            p(crate::io::Progress {
                                rows: rows_done,
                                bytes: bytes_done,
                                total_rows: Some(total),
                            });
                        }
                    }
                    Msg::Done(bytes) => {
                        bytes_before_unit += bytes;
                        bytes_done = bytes_before_unit;
                        break;
                    }
                }
            }
        }
        Ok(())
    })?;

    let mut summary_files = Vec::with_capacity(plans.len());
    for (i, p) in plans.iter().enumerate() {
        let next = plans.get(i + 1).map(|n| n.first_row).unwrap_or(total);
        summary_files.push(InputFile {
            path: p.path.clone(),
            rows: next - p.first_row,
            bytes: p.bytes,
        });
    }
    Ok(InputSummary {
        files: summary_files,
        rows: total,
        dim,
        id_kind,
        vector_column: vector_col,
        id_column: plans.first().and_then(|p| p.id.clone()),
    })
}

/// The length of the first vector of a row group (for `List` columns).
fn first_row_dim(plan: &FilePlan, row_group: usize) -> Result<usize> {
    let file = File::open(&plan.path).map_err(|e| Error::io(&plan.path, e))?;
    let mut reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, plan.meta.clone())
        .with_projection(plan.mask.clone())
        .with_row_groups(vec![row_group])
        .with_batch_size(1)
        .build()
        .map_err(|e| Error::input(Location::file(&plan.path), format!("cannot read: {e}")))?;
    let batch = match reader.next() {
        Some(b) => {
            b.map_err(|e| Error::input(Location::file(&plan.path), format!("cannot decode: {e}")))?
        }
        None => return Ok(0),
    };
    let col = batch
        .column_by_name(&plan.vector)
        .ok_or_else(|| Error::input(Location::file(&plan.path), "vector column vanished"))?;
    let len = list_parts(col).map_or(0, |(_, o)| o[1] - o[0]);
    if len == 0 {
        let at = Location::file(&plan.path)
            .with_row(plan.first_row, 0)
            .with_column(&plan.vector);
        return Err(Error::input(
            at,
            "vector is empty or null; the first row sets the dimension",
        ));
    }
    Ok(len)
}

struct DecodeCtx<'a> {
    plans: &'a [FilePlan],
    units: &'a [Unit],
    dim: usize,
    opts: &'a ReadOptions<'a>,
}

impl DecodeCtx<'_> {
    /// Decodes one row group, sending each batch; returns Ok(false) when the receiver hung up.
    fn decode_unit(&self, u: usize, send: &mut dyn FnMut(Msg) -> bool) -> Result<bool> {
        let unit = &self.units[u];
        let plan = &self.plans[unit.file];
        let loc = || Location::file(&plan.path);
        // Decoded in small record batches, handed on in batches of the caller's size.
        let out_rows = self.opts.rows_per_batch(self.dim).max(1);
        let out_values = out_rows * self.dim;
        let decode_rows = (DECODE_BYTES / (self.dim.max(1) * 4))
            .clamp(64, out_rows.max(64))
            .min(out_rows);
        let file = File::open(&plan.path).map_err(|e| Error::io(&plan.path, e))?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, plan.meta.clone())
            .with_projection(plan.mask.clone())
            .with_row_groups(vec![unit.row_group])
            .with_batch_size(decode_rows)
            .build()
            .map_err(|e| {
                Error::input(
                    loc(),
                    format!("cannot read row group {}: {e}", unit.row_group),
                )
            })?;
        let mut in_file = unit.first_row_in_file;
        // The batch being gathered: checked rows, their ids, its first global row.
        let mut values: Vec<f32> = Vec::new();
        let mut ids: Option<Ids> = None;
        let mut first_row = plan.first_row + in_file;
        for batch in reader {
            let batch = batch.map_err(|e| {
                Error::input(
                    loc(),
                    format!(
                        "corrupt data in row group {} near row {in_file}: {e}",
                        unit.row_group
                    ),
                )
            })?;
            if values.capacity() == 0 {
                values.reserve_exact(out_values);
            }
            let batch_ids = self.convert_into(plan, &batch, in_file, &mut values)?;
            Ids::accumulate(&mut ids, batch_ids)?;
            in_file += batch.num_rows() as u64;
            // Handed on before the next record batch could take it past the caller's size.
            if values.len() + decode_rows * self.dim > out_values {
                if let Some(all) = ids.take() {
                    let b = self.joined(std::mem::take(&mut values), all, first_row)?;
                    first_row = plan.first_row + in_file;
                    if !send(Msg::Batch(b)) {
                        return Ok(false);
                    }
                }
            }
        }
        if let Some(all) = ids {
            if !send(Msg::Batch(self.joined(values, all, first_row)?)) {
                return Ok(false);
            }
        }
        Ok(send(Msg::Done(unit.bytes)))
    }

    /// The rows gathered from several record batches as one [`Batch`].
    fn joined(&self, values: Vec<f32>, ids: Ids, first_row: u64) -> Result<Batch> {
        let rows = values.len() / self.dim.max(1);
        let vectors = Array2::from_shape_vec((rows, self.dim), values)
            .map_err(|e| Error::param(e.to_string()))?;
        Ok(Batch {
            ids,
            vectors,
            first_row,
        })
    }

    /// Appends a record batch's rows, checked (and normalised when asked), to `values`;
    /// returns their ids.
    fn convert_into(
        &self,
        plan: &FilePlan,
        batch: &RecordBatch,
        in_file: u64,
        values: &mut Vec<f32>,
    ) -> Result<Ids> {
        let global = plan.first_row + in_file;
        let n = batch.num_rows();
        let col = batch.column_by_name(&plan.vector).ok_or_else(|| {
            Error::input(
                Location::file(&plan.path),
                format!("column `{}` missing from a batch", plan.vector),
            )
        })?;
        let at = |i: usize| {
            Location::file(&plan.path)
                .with_row(global + i as u64, in_file + i as u64)
                .with_column(&plan.vector)
        };
        let start = values.len();
        append_rows(col, self.dim, &at, values)?;
        let rows = ArrayViewMut2::from_shape((n, self.dim), &mut values[start..])
            .map_err(|e| Error::param(e.to_string()))?;
        check_rows(
            rows,
            self.opts.normalize,
            &plan.path,
            Some(&plan.vector),
            global,
            in_file,
        )?;
        match &plan.id {
            Some(name) => {
                let col = batch.column_by_name(name).ok_or_else(|| {
                    Error::input(
                        Location::file(&plan.path),
                        format!("column `{name}` missing from a batch"),
                    )
                })?;
                ids_from_array(col, &|i| {
                    Location::file(&plan.path)
                        .with_row(global + i as u64, in_file + i as u64)
                        .with_column(name)
                })
            }
            None => Ok(Ids::row_numbers(global, n)),
        }
    }
}

/// Appends a list-of-floats column to `out` as `[n × dim]` f32s, rejecting nulls and ragged
/// rows.
fn append_rows(
    col: &ArrayRef,
    dim: usize,
    at: &dyn Fn(usize) -> Location,
    out: &mut Vec<f32>,
) -> Result<()> {
    let n = col.len();
    if let Some(nulls) = col.nulls() {
        if let Some(i) = (0..n).find(|&i| nulls.is_null(i)) {
            return Err(Error::input(at(i), "vector is null"));
        }
    }
    // Child values, and row i's values at offsets[i]..offsets[i + 1] within them.
    let (values, offsets): (&ArrayRef, Vec<usize>) = match col.data_type() {
        DataType::FixedSizeList(_, size) => {
            let a = col.as_fixed_size_list();
            if *size as usize != dim {
                return Err(Error::input(
                    at(0),
                    format!("vectors have dimension {size}, expected {dim}"),
                ));
            }
            let start = a.value_offset_at(0);
            (a.values(), (0..=n).map(|i| start + i * dim).collect())
        }
        DataType::List(_) | DataType::LargeList(_) => list_parts(col).expect("a list type"),
        other => {
            return Err(Error::input(
                at(0),
                format!("has type {other}; expected a list of floats"),
            ))
        }
    };
    if let Some(i) = (0..n).find(|&i| offsets[i + 1] - offsets[i] != dim) {
        return Err(Error::input(
            at(i),
            format!(
                "vector has {} elements, expected {dim}",
                offsets[i + 1] - offsets[i]
            ),
        ));
    }
    // Rows are now known to be `dim` long and back to back (lengths add up), except that a
    // null list entry may own no values; nulls were rejected above, so the span is contiguous.
    let span = offsets[0]..offsets[n];
    if let Some(nulls) = values.nulls() {
        if let Some(j) = span.clone().find(|&j| nulls.is_null(j)) {
            let i = (j - offsets[0]) / dim;
            return Err(Error::input(
                at(i),
                format!("element {} is null", j - offsets[i]),
            ));
        }
    }
    match values.data_type() {
        DataType::Float32 => {
            out.extend_from_slice(&values.as_primitive::<Float32Type>().values()[span])
        }
        DataType::Float64 => out.extend(
            values.as_primitive::<Float64Type>().values()[span]
                .iter()
                .map(|x| *x as f32),
        ),
        DataType::Float16 => out.extend(
            values.as_primitive::<Float16Type>().values()[span]
                .iter()
                .map(|x| x.to_f32()),
        ),
        other => {
            return Err(Error::input(
                at(0),
                format!("vector elements have type {other}; expected floats"),
            ))
        }
    }
    Ok(())
}
