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
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::file::writer::SerializedFileWriter;
use rayon::prelude::*;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Streams search results into a Parquet file (see the module docs for the schema). The file
/// appears under its name only after [`ResultsWriter::finish`].
///
/// The columns of each batch are encoded and compressed at once, one per core (the file is
/// byte for byte what one Arrow writer with the same properties writes, row groups of up to
/// [`parquet::file::properties::DEFAULT_MAX_ROW_GROUP_ROW_COUNT`] queries).
pub struct ResultsWriter {
    file: SerializedFileWriter<AtomicFile>,
    groups: ArrowRowGroupWriterFactory,
    /// The row group being filled: a writer per column, and the queries in it.
    open: Option<(Vec<ArrowColumnWriter>, usize)>,
    /// Queries per row group.
    group_rows: usize,
    schema: Arc<Schema>,
    path: PathBuf,
}

/// Queries per row group: what [`ArrowWriter`] does with its default properties.
const GROUP_ROWS: usize = parquet::file::properties::DEFAULT_MAX_ROW_GROUP_ROW_COUNT;

impl ResultsWriter {
    pub fn create(path: &Path, query_ids: IdKind, neighbor_ids: IdKind) -> Result<Self> {
        Self::with_group_rows(path, query_ids, neighbor_ids, GROUP_ROWS)
    }

    fn with_group_rows(
        path: &Path,
        query_ids: IdKind,
        neighbor_ids: IdKind,
        group_rows: usize,
    ) -> Result<Self> {
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
            .set_max_row_group_row_count(Some(group_rows))
            .build();
        let io = parquet_error(path);
        // The Arrow writer sets up the file (its Arrow schema in the metadata); the row groups
        // are then encoded here, a column per core.
        let (file, groups) = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(io)?;
        Ok(ResultsWriter {
            file,
            groups,
            open: None,
            group_rows,
            schema,
            path: path.to_path_buf(),
        })
    }

    /// Appends one row per query. `neighbors` holds each query's ids back to back, query `i`'s
    /// from `offsets[i]` to `offsets[i + 1]`; `distances` lines up with `neighbors`. The ids
    /// and distances become the Arrow arrays as they are, without a copy.
    pub fn write(
        &mut self,
        query_ids: Ids,
        neighbors: Ids,
        offsets: &[usize],
        distances: Vec<f32>,
    ) -> Result<()> {
        let batch = self.batch(query_ids, neighbors, offsets, distances)?;
        let mut start = 0;
        while start < batch.num_rows() {
            let io = parquet_error(&self.path);
            let (writers, rows) = match &mut self.open {
                Some(open) => open,
                open => {
                    let index = self.file.flushed_row_groups().len();
                    let writers = self.groups.create_column_writers(index).map_err(io)?;
                    open.insert((writers, 0))
                }
            };
            let take = (self.group_rows - *rows).min(batch.num_rows() - start);
            let part = batch.slice(start, take);
            let leaves = self
                .schema
                .fields()
                .iter()
                .zip(part.columns())
                .map(|(field, column)| compute_leaves(field, column))
                .collect::<parquet::errors::Result<Vec<_>>>()
                .map_err(io)?;
            // One leaf per column: ids, and the values of each list.
            writers
                .par_iter_mut()
                .zip(leaves.into_iter().flatten().collect::<Vec<_>>())
                .try_for_each(|(w, leaf)| w.write(&leaf))
                .map_err(io)?;
            *rows += take;
            start += take;
            if *rows == self.group_rows {
                self.close_group()?;
            }
        }
        // What the Parquet writer has handed on goes to the disk while the next batch is
        // searched, not all in the sync at the end.
        self.file
            .inner_mut()
            .start_writeback()
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The record batch of [`ResultsWriter::write`]'s arguments.
    fn batch(
        &self,
        query_ids: Ids,
        neighbors: Ids,
        offsets: &[usize],
        distances: Vec<f32>,
    ) -> Result<RecordBatch> {
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
            list(Arc::new(Float32Array::from(distances)))?,
        ];
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::param(format!("results: {e}")))
    }

    /// Closes the row group being filled (each column's last pages on its own core) and
    /// writes it.
    fn close_group(&mut self) -> Result<()> {
        let Some((writers, _)) = self.open.take() else {
            return Ok(());
        };
        let io = parquet_error(&self.path);
        let chunks = writers
            .into_par_iter()
            .map(ArrowColumnWriter::close)
            .collect::<parquet::errors::Result<Vec<_>>>()
            .map_err(io)?;
        let mut group = self.file.next_row_group().map_err(io)?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut group).map_err(io)?;
        }
        group.close().map_err(io)?;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        self.close_group()?;
        let file = self.file.into_inner().map_err(parquet_error(&self.path))?;
        file.commit()
    }
}

/// A Parquet writer's error as an I/O error on `path`.
fn parquet_error(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> Error + Copy + '_ {
    move |e| Error::io(path, std::io::Error::other(e))
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
            vec![ids_to_array(ids_part)?, Arc::new(list)],
        )
        .map_err(|e| Error::param(e.to_string()))?;
        writer.write(&batch).map_err(io)?;
    }
    writer.into_inner().map_err(io)?.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Query `i` of a batch starting at `first` finds `i % 4` neighbours (none for some).
    fn part(first: usize, rows: usize, strings: bool) -> (Ids, Ids, Vec<usize>, Vec<f32>) {
        let mut q = Ids::empty(if strings { IdKind::Utf8 } else { IdKind::Int64 });
        let mut neighbors = Vec::new();
        let mut offsets = vec![0];
        for i in first..first + rows {
            match &mut q {
                Ids::Int64(v) => v.push(i as i64 * 7 - 3),
                q => q.push_str(&format!("query-{i}")),
            }
            neighbors.extend((0..i % 4).map(|j| (i * 31 + j) as u64 % 50));
            offsets.push(neighbors.len());
        }
        let distances = neighbors.iter().map(|&n| n as f32 * 0.25).collect();
        (q, Ids::UInt64(neighbors), offsets, distances)
    }

    #[test]
    fn columns_encoded_in_parallel_write_what_one_arrow_writer_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        for strings in [false, true] {
            let kind = if strings { IdKind::Utf8 } else { IdKind::Int64 };
            // Row groups of 4 queries: batches that end one, straddle two, fill none, and
            // leave the last one short.
            let (ours_path, theirs_path) = (dir.path().join("ours"), dir.path().join("theirs"));
            let mut ours =
                ResultsWriter::with_group_rows(&ours_path, kind, IdKind::UInt64, 4).expect("ours");
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .set_max_row_group_row_count(Some(4))
                .build();
            let mut theirs = ArrowWriter::try_new(
                File::create(&theirs_path).expect("file"),
                ours.schema.clone(),
                Some(props),
            )
            .expect("arrow writer");
            let mut first = 0;
            for rows in [4, 3, 6, 1, 9, 2] {
                let (q, n, offsets, d) = part(first, rows, strings);
                let batch = ours
                    .batch(q.clone(), n.clone(), &offsets, d.clone())
                    .expect("batch");
                theirs.write(&batch).expect("theirs");
                ours.write(q, n, &offsets, d).expect("ours");
                first += rows;
            }
            theirs.close().expect("close");
            ours.finish().expect("finish");
            let bytes = |p: &Path| std::fs::read(p).expect("read");
            assert_eq!(bytes(&ours_path), bytes(&theirs_path), "strings: {strings}");

            let (q, n, offsets, d) = part(0, first, strings);
            let back = read_results(&ours_path).expect("read back");
            assert_eq!(back.query_ids, q);
            assert_eq!(back.neighbors, n);
            assert_eq!(back.offsets, offsets);
            assert_eq!(back.distances, d);
        }
    }
}
