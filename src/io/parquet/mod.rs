//! Parquet: the streaming vector reader (`read`) and results files (`results`).
//!
//! Vector columns: `FixedSizeList`, `List` or `LargeList` of `Float32`, `Float64` or `Float16`,
//! whatever the child field is named. Id columns: `Int64`, `Int32`, `UInt64`, `UInt32`, `Utf8`,
//! `LargeUtf8` or `Utf8View`. This module holds what both halves share: column types, id
//! conversion and list layouts.

mod read;
mod results;

pub(crate) use read::read;
pub use results::{read_results, write_vectors, ResultsTable, ResultsWriter};

use crate::error::Location;
use crate::ids::{IdKind, Ids};
use crate::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, Int64Array, StringArray, UInt64Array};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Schema};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

fn is_float(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Float32 | DataType::Float64 | DataType::Float16
    )
}

pub(crate) fn is_vector_type(dt: &DataType) -> bool {
    match dt {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            is_float(f.data_type())
        }
        _ => false,
    }
}

pub(crate) fn id_kind_of(dt: &DataType) -> Option<IdKind> {
    match dt {
        DataType::Int64 | DataType::Int32 => Some(IdKind::Int64),
        DataType::UInt64 | DataType::UInt32 => Some(IdKind::UInt64),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(IdKind::Utf8),
        _ => None,
    }
}

pub(crate) fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} ({})", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn open_meta(path: &Path) -> Result<ArrowReaderMetadata> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| {
        Error::input(
            Location::file(path),
            format!("not a readable Parquet file: {e}"),
        )
    })
}

/// The child values of a `List` or `LargeList` column and its `n + 1` offsets into them.
pub(crate) fn list_parts(col: &ArrayRef) -> Option<(&ArrayRef, Vec<usize>)> {
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
pub(crate) fn list_rebased(col: &ArrayRef) -> Option<(ArrayRef, Vec<usize>)> {
    let (values, offsets) = list_parts(col)?;
    let (start, end) = (offsets[0], offsets[offsets.len() - 1]);
    Some((
        values.slice(start, end - start),
        offsets.iter().map(|o| o - start).collect(),
    ))
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

pub(crate) fn id_type(kind: IdKind) -> DataType {
    match kind {
        IdKind::Int64 => DataType::Int64,
        IdKind::UInt64 => DataType::UInt64,
        IdKind::Utf8 => DataType::Utf8,
    }
}

/// An Arrow array holding `ids`.
pub fn ids_to_array(ids: Ids) -> Result<ArrayRef> {
    Ok(match ids {
        Ids::Int64(v) => Arc::new(Int64Array::from(v)),
        Ids::UInt64(v) => Arc::new(UInt64Array::from(v)),
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
                data.into(),
                None,
            )
            .map_err(|e| Error::param(format!("string ids: {e}")))?;
            Arc::new(array)
        }
    })
}

/// Rows in a Parquet file, from its footer.
pub fn count_rows(path: &Path) -> Result<u64> {
    Ok(open_meta(path)?
        .metadata()
        .file_metadata()
        .num_rows()
        .max(0) as u64)
}
