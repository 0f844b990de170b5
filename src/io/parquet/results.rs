//! Results files, and vectors written as Parquet (datasets for demos and tests).
//!
//! Results files have one row per query, in query order:
//!
//! | column      | type                      | holds |
//! |-------------|---------------------------|-------|
//! | `query_id`  | the query file's id type  | the query's id |
//! | `neighbors` | `List<id type of the index>` | ids of the k nearest rows, best first |
//! | `distances` | `List<Float32>`           | their distances (see [`crate::Metric`]) |

use super::{column_list, id_type, ids_from_array, ids_to_array, list_rebased, open_meta};
use crate::error::Location;
use crate::fsutil::AtomicFile;
use crate::ids::{IdKind, Ids};
use crate::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{ArrayRef, Float32Array, ListArray, RecordBatch};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
            .map_err(|e| Error::io(&self.path, std::io::Error::other(e)))?;
        // What the Parquet writer has handed on goes to the disk while the next batch is
        // searched, not all in the sync at the end.
        self.writer
            .inner_mut()
            .start_writeback()
            .map_err(|e| Error::io(&self.path, e))
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
