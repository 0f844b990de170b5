//! Parquet input and result files.
//!
//! Reading:
//! 1. Every file's footer is read first: the vector and id columns are resolved (see
//!    [`ReadOptions`]), types checked, and the row groups listed with their global first rows.
//! 2. Row groups are dealt round-robin to `threads` workers. Each decodes its row groups in
//!    batches of [`ReadOptions::rows_per_batch`] rows (only the two projected columns), copies
//!    vectors into contiguous f32 rows, checks them, and sends them down a channel of depth 2.
//! 3. The caller's thread takes batches from the workers in row-group order, so batches arrive
//!    in input order and memory stays bounded by `threads × 3` batches, whatever the file size.
//!
//! Vector columns: `FixedSizeList`, `List` or `LargeList` of `Float32`, `Float64` or `Float16`,
//! whatever the child field is named. Id columns: `Int64`, `Int32`, `UInt64`, `UInt32`, `Utf8`,
//! `LargeUtf8` or `Utf8View`.
//!
//! Results files have one row per query, in query order:
//!
//! | column      | type                      | holds |
//! |-------------|---------------------------|-------|
//! | `query_id`  | the query file's id type  | the query's id |
//! | `neighbors` | `List<id type of the index>` | ids of the k nearest rows, best first |
//! | `distances` | `List<Float32>`           | their distances (see [`crate::Metric`]) |

use super::{check_rows, Batch, InputFile, InputSummary, ReadOptions};
use crate::error::Location;
use crate::fsutil::AtomicFile;
use crate::ids::{IdKind, Ids};
use crate::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, Float32Array, Int64Array, ListArray, RecordBatch, StringArray, UInt64Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};
use ndarray::Array2;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

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

enum Msg {
    Batch(Batch),
    Done(u64),
}

fn is_float(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Float32 | DataType::Float64 | DataType::Float16
    )
}

fn is_vector_type(dt: &DataType) -> bool {
    match dt {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            is_float(f.data_type())
        }
        _ => false,
    }
}

fn id_kind_of(dt: &DataType) -> Option<IdKind> {
    match dt {
        DataType::Int64 | DataType::Int32 => Some(IdKind::Int64),
        DataType::UInt64 | DataType::UInt32 => Some(IdKind::UInt64),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(IdKind::Utf8),
        _ => None,
    }
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} ({})", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
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

fn open_meta(path: &Path) -> Result<ArrowReaderMetadata> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| {
        Error::input(
            Location::file(path),
            format!("not a readable Parquet file: {e}"),
        )
    })
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
                            p(super::Progress {
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
        let file = File::open(&plan.path).map_err(|e| Error::io(&plan.path, e))?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, plan.meta.clone())
            .with_projection(plan.mask.clone())
            .with_row_groups(vec![unit.row_group])
            .with_batch_size(self.opts.rows_per_batch(self.dim))
            .build()
            .map_err(|e| {
                Error::input(
                    loc(),
                    format!("cannot read row group {}: {e}", unit.row_group),
                )
            })?;
        let mut in_file = unit.first_row_in_file;
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
            let b = self.convert(plan, &batch, in_file)?;
            in_file += batch.num_rows() as u64;
            if !send(Msg::Batch(b)) {
                return Ok(false);
            }
        }
        Ok(send(Msg::Done(unit.bytes)))
    }

    /// Turns a record batch into contiguous checked rows and ids.
    fn convert(&self, plan: &FilePlan, batch: &RecordBatch, in_file: u64) -> Result<Batch> {
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
        let data = list_to_rows(col, self.dim, &at)?;
        let mut vectors =
            Array2::from_shape_vec((n, self.dim), data).map_err(|e| Error::param(e.to_string()))?;
        check_rows(
            vectors.view_mut(),
            self.opts.normalize,
            &plan.path,
            Some(&plan.vector),
            global,
            in_file,
        )?;
        let ids = match &plan.id {
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
                })?
            }
            None => Ids::row_numbers(global, n),
        };
        Ok(Batch {
            ids,
            vectors,
            first_row: global,
        })
    }
}

/// The child values of a `List` or `LargeList` column and its `n + 1` offsets into them.
fn list_parts(col: &ArrayRef) -> Option<(&ArrayRef, Vec<usize>)> {
    match col.data_type() {
        DataType::List(_) => {
            let a = col.as_list::<i32>();
            Some((
                a.values(),
                a.value_offsets().iter().map(|&o| o as usize).collect(),
            ))
        }
        DataType::LargeList(_) => {
            let a = col.as_list::<i64>();
            Some((
                a.values(),
                a.value_offsets().iter().map(|&o| o as usize).collect(),
            ))
        }
        _ => None,
    }
}

/// A list column's values as one array with offsets from 0 (its slice of the child values).
fn list_rebased(col: &ArrayRef) -> Option<(ArrayRef, Vec<usize>)> {
    let (values, offsets) = list_parts(col)?;
    let (start, end) = (offsets[0], offsets[offsets.len() - 1]);
    Some((
        values.slice(start, end - start),
        offsets.iter().map(|o| o - start).collect(),
    ))
}

/// Copies a list-of-floats column into `[n × dim]` f32s, rejecting nulls and ragged rows.
fn list_to_rows(col: &ArrayRef, dim: usize, at: &dyn Fn(usize) -> Location) -> Result<Vec<f32>> {
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
    let out: Vec<f32> = match values.data_type() {
        DataType::Float32 => values.as_primitive::<Float32Type>().values()[span].to_vec(),
        DataType::Float64 => values.as_primitive::<Float64Type>().values()[span]
            .iter()
            .map(|x| *x as f32)
            .collect(),
        DataType::Float16 => values.as_primitive::<Float16Type>().values()[span]
            .iter()
            .map(|x| x.to_f32())
            .collect(),
        other => {
            return Err(Error::input(
                at(0),
                format!("vector elements have type {other}; expected floats"),
            ))
        }
    };
    Ok(out)
}

/// Converts an id column into [`Ids`], rejecting nulls.
pub fn ids_from_array(col: &ArrayRef, at: &dyn Fn(usize) -> Location) -> Result<Ids> {
    if let Some(nulls) = col.nulls() {
        if let Some(i) = (0..col.len()).find(|&i| nulls.is_null(i)) {
            return Err(Error::input(at(i), "id is null"));
        }
    }
    Ok(match col.data_type() {
        DataType::Int64 => Ids::Int64(col.as_primitive::<Int64Type>().values().to_vec()),
        DataType::Int32 => Ids::Int64(
            col.as_primitive::<Int32Type>()
                .values()
                .iter()
                .map(|v| *v as i64)
                .collect(),
        ),
        DataType::UInt64 => Ids::UInt64(col.as_primitive::<UInt64Type>().values().to_vec()),
        DataType::UInt32 => Ids::UInt64(
            col.as_primitive::<UInt32Type>()
                .values()
                .iter()
                .map(|v| *v as u64)
                .collect(),
        ),
        DataType::Utf8 => strings(col.as_string::<i32>().iter()),
        DataType::LargeUtf8 => strings(col.as_string::<i64>().iter()),
        DataType::Utf8View => strings(col.as_string_view().iter()),
        other => {
            return Err(Error::input(
                at(0),
                format!("ids have type {other}; expected integers or strings"),
            ))
        }
    })
}

fn strings<'a>(items: impl Iterator<Item = Option<&'a str>>) -> Ids {
    let mut ids = Ids::empty(IdKind::Utf8);
    for s in items {
        ids.push_str(s.unwrap_or(""));
    }
    ids
}

fn id_type(kind: IdKind) -> DataType {
    match kind {
        IdKind::Int64 => DataType::Int64,
        IdKind::UInt64 => DataType::UInt64,
        IdKind::Utf8 => DataType::Utf8,
    }
}

/// An Arrow array holding `ids`.
pub fn ids_to_array(ids: &Ids) -> Result<ArrayRef> {
    Ok(match ids {
        Ids::Int64(v) => Arc::new(Int64Array::from(v.clone())),
        Ids::UInt64(v) => Arc::new(UInt64Array::from(v.clone())),
        Ids::Utf8 { offsets, data } => {
            let offs: Vec<i32> = offsets
                .iter()
                .map(|o| {
                    i32::try_from(*o)
                        .map_err(|_| Error::param("string ids of one batch exceed 2 GiB"))
                })
                .collect::<Result<_>>()?;
            let array = StringArray::try_new(
                OffsetBuffer::new(ScalarBuffer::from(offs)),
                data.clone().into(),
                None,
            )
            .map_err(|e| Error::param(format!("string ids: {e}")))?;
            Arc::new(array)
        }
    })
}

/// Streams search results into a Parquet file (see the module docs for the schema). The file
/// appears under its name only after [`ResultsWriter::finish`].
pub struct ResultsWriter {
    writer: ArrowWriter<AtomicFile>,
    schema: Arc<Schema>,
    path: PathBuf,
}

impl ResultsWriter {
    pub fn create(path: &Path, query_ids: IdKind, neighbor_ids: IdKind) -> Result<Self> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("query_id", id_type(query_ids), false),
            Field::new(
                "neighbors",
                DataType::List(Arc::new(Field::new_list_field(id_type(neighbor_ids), true))),
                false,
            ),
            Field::new(
                "distances",
                DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
                false,
            ),
        ]));
        let file = AtomicFile::create(path)?;
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        Ok(ResultsWriter {
            writer,
            schema,
            path: path.to_path_buf(),
        })
    }

    /// Appends one row per query. `neighbors` holds each query's ids back to back, query `i`'s
    /// from `offsets[i]` to `offsets[i + 1]`; `distances` lines up with `neighbors`.
    pub fn write(
        &mut self,
        query_ids: &Ids,
        neighbors: &Ids,
        offsets: &[usize],
        distances: &[f32],
    ) -> Result<()> {
        let offs: Vec<i32> = offsets
            .iter()
            .map(|o| i32::try_from(*o).map_err(|_| Error::param("results batch too large")))
            .collect::<Result<_>>()?;
        let list = |values: ArrayRef| -> Result<ArrayRef> {
            let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
            let arr = ListArray::try_new(
                field,
                OffsetBuffer::new(ScalarBuffer::from(offs.clone())),
                values,
                None,
            )
            .map_err(|e| Error::param(format!("results: {e}")))?;
            Ok(Arc::new(arr))
        };
        let columns = vec![
            ids_to_array(query_ids)?,
            list(ids_to_array(neighbors)?)?,
            list(Arc::new(Float32Array::from(distances.to_vec())))?,
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::param(format!("results: {e}")))?;
        self.writer
            .write(&batch)
            .map_err(|e| Error::io(&self.path, std::io::Error::other(e)))
    }

    pub fn finish(self) -> Result<()> {
        let file = self
            .writer
            .into_inner()
            .map_err(|e| Error::io(&self.path, std::io::Error::other(e)))?;
        file.commit()
    }
}

/// A results file read back: `neighbors` back to back, query `i`'s at `offsets[i]..offsets[i+1]`.
#[derive(Debug, Clone)]
pub struct ResultsTable {
    pub query_ids: Ids,
    pub neighbors: Ids,
    pub offsets: Vec<usize>,
    pub distances: Vec<f32>,
}

/// Reads a results file (the schema [`ResultsWriter`] writes).
pub fn read_results(path: &Path) -> Result<ResultsTable> {
    let meta = open_meta(path)?;
    let schema = meta.schema().clone();
    for name in ["query_id", "neighbors"] {
        if schema.field_with_name(name).is_err() {
            return Err(Error::input(
                Location::file(path),
                format!(
                    "not a results file: no column `{name}`; columns are: {}",
                    column_list(&schema)
                ),
            ));
        }
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta)
        .build()
        .map_err(|e| Error::input(Location::file(path), format!("cannot read: {e}")))?;
    let mut table: Option<ResultsTable> = None;
    let mut row = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| {
            Error::input(
                Location::file(path),
                format!("corrupt data near row {row}: {e}"),
            )
        })?;
        let at = |c: &'static str| {
            move |i: usize| {
                Location::file(path)
                    .with_row(row + i as u64, row + i as u64)
                    .with_column(c)
            }
        };
        let q = ids_from_array(
            batch.column_by_name("query_id").expect("checked above"),
            &at("query_id"),
        )?;
        let col = batch.column_by_name("neighbors").expect("checked above");
        let (values, offs) = list_rebased(col).ok_or_else(|| {
            Error::input(
                at("neighbors")(0),
                format!("has type {}; expected a list of ids", col.data_type()),
            )
        })?;
        let n = ids_from_array(&values, &at("neighbors"))?;
        let d: Vec<f32> = match batch.column_by_name("distances").and_then(list_rebased) {
            Some((v, _)) if v.data_type() == &DataType::Float32 => {
                v.as_primitive::<Float32Type>().values().to_vec()
            }
            _ => Vec::new(),
        };
        let mismatch = |e: Error| Error::input(Location::file(path), e.to_string());
        match &mut table {
            None => {
                table = Some(ResultsTable {
                    query_ids: q,
                    neighbors: n,
                    offsets: offs,
                    distances: d,
                })
            }
            Some(t) => {
                let shift = *t.offsets.last().unwrap_or(&0);
                t.query_ids.append(&q).map_err(mismatch)?;
                t.neighbors.append(&n).map_err(mismatch)?;
                t.offsets.extend(offs.iter().skip(1).map(|o| o + shift));
                t.distances.extend(d);
            }
        }
        row += batch.num_rows() as u64;
    }
    table.ok_or_else(|| Error::input(Location::file(path), "results file has no rows"))
}

/// Writes `vectors: [n, dim]` with their `ids` as Parquet: columns `id` and `embedding`
/// (`FixedSizeList<Float32>` with child `item`), dictionary encoding off for the floats,
/// row groups of `row_group_rows` rows. Written atomically.
pub fn write_vectors(
    path: &Path,
    ids: &Ids,
    vectors: ndarray::ArrayView2<'_, f32>,
    row_group_rows: usize,
) -> Result<()> {
    let (n, dim) = vectors.dim();
    let item = Arc::new(Field::new_list_field(DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", id_type(ids.kind()), false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(item.clone(), dim as i32),
            false,
        ),
    ]));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .build();
    let file = AtomicFile::create(path)?;
    let io = |e: parquet::errors::ParquetError| Error::io(path, std::io::Error::other(e));
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(io)?;
    let rows = vectors.as_standard_layout();
    let data = rows.as_slice().unwrap_or(&[]);
    let step = row_group_rows.clamp(1, 65536);
    for start in (0..n).step_by(step) {
        let end = (start + step).min(n);
        let values = Arc::new(Float32Array::from(data[start * dim..end * dim].to_vec()));
        let list = arrow_array::FixedSizeListArray::try_new(item.clone(), dim as i32, values, None)
            .map_err(|e| Error::param(e.to_string()))?;
        let ids_part = ids.view().take(start..end);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![ids_to_array(&ids_part)?, Arc::new(list)],
        )
        .map_err(|e| Error::param(e.to_string()))?;
        writer.write(&batch).map_err(io)?;
    }
    writer.into_inner().map_err(io)?.commit()
}

/// Rows in a Parquet file, from its footer.
pub fn count_rows(path: &Path) -> Result<u64> {
    Ok(open_meta(path)?
        .metadata()
        .file_metadata()
        .num_rows()
        .max(0) as u64)
}
