//! Helpers: running the binary, writing Parquet files of every shape the reader accepts.

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema};
use ndarray::{Array2, ArrayView2};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use vecbuild::artifact::{IndexKind, Manifest};
use vecbuild::backend::CpuBackend;
use vecbuild::search::exact::{prepare_queries, ExactSearch};
use vecbuild::Metric;

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `vecbuild args…` in `dir` (on the CUDA emulator when the test asked for it,
/// [`crate::emu::on_emulator`]).
pub fn run(dir: &Path, args: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vecbuild"));
    cmd.args(args).current_dir(dir);
    crate::emu::environment(&mut cmd);
    let out = cmd.output().expect("vecbuild runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `vecbuild <args>` in `dir` fails with exit 2, says `says`, and leaves no `dir/out`.
pub fn refused(dir: &Path, args: &[&str], says: &str, out: &str) {
    let run = run(dir, args);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains(says), "{}", run.stderr);
    assert!(!dir.join(out).exists());
}

/// Runs and asserts success, returning stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert_eq!(out.code, 0, "vecbuild {args:?} failed: {}", out.stderr);
    out.stdout
}

/// Writes columns as one Parquet file, `rows_per_group` rows per row group.
pub fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>, rows_per_group: usize) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), a.null_count() > 0))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .expect("batch");
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let file = std::fs::File::create(path).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

/// A FixedSizeList<Float32> column with child field `child`; `null_rows` are null vectors.
pub fn fsl_f32(data: &[f32], dim: usize, child: &str, null_rows: &[usize]) -> ArrayRef {
    let field = Arc::new(Field::new(child, arrow_schema::DataType::Float32, true));
    let values = Arc::new(arrow_array::Float32Array::from(data.to_vec()));
    let n = data.len() / dim;
    let nulls = (!null_rows.is_empty()).then(|| {
        arrow_buffer::NullBuffer::from(
            (0..n)
                .map(|i| !null_rows.contains(&i))
                .collect::<Vec<bool>>(),
        )
    });
    Arc::new(
        arrow_array::FixedSizeListArray::try_new(field, dim as i32, values, nulls).expect("fsl"),
    )
}

/// A List<Float32> column from rows (ragged allowed); `None` rows are null.
pub fn list_f32(rows: &[Option<Vec<f32>>]) -> ArrayRef {
    let mut b = arrow_array::builder::ListBuilder::new(arrow_array::builder::Float32Builder::new());
    for r in rows {
        match r {
            Some(v) => {
                b.values().append_slice(v);
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

pub fn int64(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(arrow_array::Int64Array::from(
        v.into_iter().collect::<Vec<_>>(),
    ))
}

pub fn strings(v: &[String]) -> ArrayRef {
    Arc::new(arrow_array::StringArray::from(v.to_vec()))
}

/// Seeded clustered data, `[n, dim]` row-major.
pub fn data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    vecbuild::synth::clustered(n, 0, dim, 20, seed)
        .base
        .into_raw_vec_and_offset()
        .0
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Files in `dir` (to prove nothing half-written was left behind).
pub fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

/// `vecbuild generate` into `dir`: `b.parquet` (rows × dim around `clusters` centres) and
/// `q.parquet` (`queries` rows around the same centres).
pub fn generate_dataset(dir: &Path, rows: usize, dim: usize, clusters: usize, queries: usize) {
    let (rows, dim, clusters, queries) = (
        rows.to_string(),
        dim.to_string(),
        clusters.to_string(),
        queries.to_string(),
    );
    ok(
        dir,
        &[
            "generate",
            "--rows",
            &rows,
            "--dim",
            &dim,
            "--clusters",
            &clusters,
            "--out",
            "b.parquet",
            "--queries",
            &queries,
            "--queries-out",
            "q.parquet",
        ],
    );
}

/// `vecbuild eval --json` of `r.parquet` against `t.parquet` in `dir`, at k = 10.
pub fn eval_json(dir: &Path) -> serde_json::Value {
    let out = ok(
        dir,
        &[
            "eval",
            "--results",
            "r.parquet",
            "--truth",
            "t.parquet",
            "--k",
            "10",
            "--json",
        ],
    );
    serde_json::from_str(&out).expect("eval JSON")
}

/// A manifest for artifacts the tests write through the library (empty params and defaults).
pub fn manifest(kind: IndexKind, metric: Metric, n: usize, dim: usize) -> Manifest {
    Manifest {
        format_version: 1,
        kind,
        metric,
        dim,
        count: n as u64,
        id_kind: vecbuild::IdKind::Int64,
        params: serde_json::json!({}),
        search_defaults: serde_json::json!({}),
        inputs: vec![],
        vector_column: None,
        id_column: None,
        backend: "cpu".into(),
        device: None,
        build_seconds: 0.0,
        built_at_unix: 0,
        vecbuild_version: "test".into(),
        checksums: Default::default(),
    }
}

/// Exact top-k rows of each query over `base` (both normalised first for cosine).
pub fn truth(base: &Array2<f32>, queries: &Array2<f32>, metric: Metric, k: usize) -> Array2<u64> {
    let mut b = base.clone();
    if metric.normalizes() {
        vecbuild::metric::normalize_rows(b.view_mut());
    }
    let mut s = ExactSearch::new(
        prepare_queries(queries.view(), base.ncols(), metric).unwrap(),
        metric,
        k,
    );
    s.add(&CpuBackend, b.view(), None).unwrap();
    s.finish().rows
}

/// Recall of `got` against `want` (`[nq, k]` row numbers), over `want`'s k columns.
pub fn recall(got: ArrayView2<'_, u64>, want: ArrayView2<'_, u64>) -> f64 {
    let k = want.ncols();
    let hits: usize = got
        .rows()
        .into_iter()
        .zip(want.rows())
        .map(|(g, w)| g.iter().filter(|x| w.iter().any(|y| y == *x)).count())
        .sum();
    hits as f64 / (k * want.nrows()) as f64
}
