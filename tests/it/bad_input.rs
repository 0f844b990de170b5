//! Every kind of bad input: a one-line error naming file, row and column, exit code 2, and no
//! artifact left behind (not even a temporary file).

use crate::common::*;
use arrow_array::ArrayRef;
use std::path::Path;
use std::sync::Arc;

/// Runs `build` on `inputs` in `dir` and checks the failure.
fn build_fails(dir: &Path, inputs: &[&str], extra: &[&str], expect: &[&str]) {
    let before = listing(dir);
    let mut args = vec!["build", "--out", "out.vbx", "--input"];
    args.extend_from_slice(inputs);
    args.extend_from_slice(extra);
    let out = run(dir, &args);
    assert_eq!(
        out.code, 2,
        "exit code for {inputs:?} {extra:?}; stderr: {}",
        out.stderr
    );
    for e in expect {
        assert!(out.stderr.contains(e), "stderr lacks {e:?}: {}", out.stderr);
    }
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one-line error: {}",
        out.stderr
    );
    assert_eq!(listing(dir), before, "nothing written");
}

#[test]
fn null_vector() {
    let dir = tmp();
    let d = data(40, 4, 1);
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", fsl_f32(&d, 4, "item", &[37]))],
        16,
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &[],
        &[
            "a.parquet",
            "row 37 (row 37 of this file)",
            "column `emb`",
            "vector is null",
        ],
    );
}

#[test]
fn null_element_inside_a_vector() {
    let dir = tmp();
    let mut rows: Vec<Option<Vec<f32>>> = (0..10).map(|i| Some(vec![i as f32; 3])).collect();
    rows[6] = Some(vec![1.0, 2.0, 3.0]);
    let mut b = arrow_array::builder::ListBuilder::new(arrow_array::builder::Float32Builder::new());
    for (i, r) in rows.iter().enumerate() {
        let r = r.as_ref().unwrap();
        if i == 6 {
            b.values().append_value(r[0]);
            b.values().append_null();
            b.values().append_value(r[2]);
        } else {
            b.values().append_slice(r);
        }
        b.append(true);
    }
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", Arc::new(b.finish()) as ArrayRef)],
        100,
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &[],
        &["row 6", "column `emb`", "element 1 is null"],
    );
}

#[test]
fn ragged_list_dimension() {
    let dir = tmp();
    let mut rows: Vec<Option<Vec<f32>>> = (0..10).map(|_| Some(vec![0.5; 8])).collect();
    rows[9] = Some(vec![0.5; 7]);
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", list_f32(&rows))],
        4,
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &[],
        &["row 9", "column `emb`", "has 7 elements, expected 8"],
    );
}

#[test]
fn mixed_dimension_across_files() {
    let dir = tmp();
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", fsl_f32(&data(5, 8, 1), 8, "item", &[]))],
        10,
    );
    write_parquet(
        &dir.path().join("b.parquet"),
        vec![("emb", fsl_f32(&data(5, 16, 1), 16, "item", &[]))],
        10,
    );
    build_fails(
        dir.path(),
        &["a.parquet", "b.parquet"],
        &[],
        &["b.parquet", "column `emb`", "dimension 16", "8"],
    );
}

#[test]
fn nan_and_infinity() {
    for (bad, word) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        let dir = tmp();
        let mut d = data(100, 4, 1);
        d[73 * 4 + 2] = bad;
        write_parquet(
            &dir.path().join("a.parquet"),
            vec![("emb", fsl_f32(&d, 4, "item", &[]))],
            30,
        );
        build_fails(
            dir.path(),
            &["a.parquet"],
            &[],
            &[
                "row 73 (row 73 of this file)",
                "column `emb`",
                "element 2 is",
                word,
            ],
        );
    }
}

#[test]
fn global_and_in_file_rows_differ_in_the_second_file() {
    let dir = tmp();
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", fsl_f32(&data(50, 4, 1), 4, "item", &[]))],
        30,
    );
    let mut d = data(50, 4, 2);
    d[10 * 4] = f32::NAN;
    write_parquet(
        &dir.path().join("b.parquet"),
        vec![("emb", fsl_f32(&d, 4, "item", &[]))],
        30,
    );
    build_fails(
        dir.path(),
        &["a.parquet", "b.parquet"],
        &[],
        &["b.parquet: row 60 (row 10 of this file)"],
    );
}

#[test]
fn non_numeric_vector_column() {
    let dir = tmp();
    let names: Vec<String> = (0..4).map(|i| i.to_string()).collect();
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", strings(&names))],
        10,
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &["--vector-column", "emb"],
        &["column `emb`", "has type Utf8"],
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &[],
        &["a.parquet", "no vector column"],
    );
}

#[test]
fn missing_column() {
    let dir = tmp();
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", fsl_f32(&data(5, 4, 1), 4, "item", &[]))],
        10,
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &["--vector-column", "nope"],
        &["a.parquet", "no column `nope`", "emb"],
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &["--id-column", "key"],
        &["no id column `key`"],
    );
}

#[test]
fn several_vector_columns_without_a_choice() {
    let dir = tmp();
    let d = data(5, 4, 1);
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![
            ("x", fsl_f32(&d, 4, "item", &[])),
            ("y", fsl_f32(&d, 4, "item", &[])),
        ],
        10,
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &[],
        &["several vector columns (x, y)", "--vector-column"],
    );
}

#[test]
fn empty_input() {
    let dir = tmp();
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", fsl_f32(&[], 4, "item", &[]))],
        10,
    );
    build_fails(dir.path(), &["a.parquet"], &[], &["a.parquet", "no rows"]);
    build_fails(dir.path(), &["none-*.parquet"], &[], &["no input files"]);
}

#[test]
fn truncated_and_corrupt_parquet() {
    let dir = tmp();
    let p = dir.path().join("a.parquet");
    write_parquet(
        &p,
        vec![("emb", fsl_f32(&data(2000, 16, 1), 16, "item", &[]))],
        500,
    );
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(dir.path().join("t.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    build_fails(
        dir.path(),
        &["t.parquet"],
        &[],
        &["t.parquet", "not a readable Parquet file"],
    );
    // Scramble the first page header, keeping the footer intact. (Scrambled float values
    // inside a page are only detectable when the writer stored page checksums, which vecbuild
    // verifies; this writer stores none.)
    let mut bad = bytes.clone();
    for b in &mut bad[4..40] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    std::fs::write(dir.path().join("c.parquet"), &bad).unwrap();
    std::fs::remove_file(&p).unwrap();
    build_fails(
        dir.path(),
        &["c.parquet"],
        &[],
        &["c.parquet", "row group 0"],
    );
}

#[test]
fn duplicate_ids_are_an_error_by_default() {
    let dir = tmp();
    let mut ids: Vec<i64> = (0..50).collect();
    ids[41] = 7;
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![
            ("id", int64(ids)),
            ("emb", fsl_f32(&data(50, 4, 1), 4, "item", &[])),
        ],
        20,
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &[],
        &[
            "row 41",
            "column `id`",
            "duplicate id 7",
            "row 7",
            "--allow-duplicate-ids",
        ],
    );
    ok(
        dir.path(),
        &[
            "build",
            "--input",
            "a.parquet",
            "--out",
            "ok.vbx",
            "--allow-duplicate-ids",
        ],
    );
}

#[test]
fn null_id() {
    let dir = tmp();
    let ids: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![
        Some(1),
        Some(2),
        None,
        Some(4),
    ]));
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![
            ("id", ids),
            ("emb", fsl_f32(&data(4, 4, 1), 4, "item", &[])),
        ],
        20,
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &[],
        &["row 2", "column `id`", "id is null"],
    );
}

#[test]
fn zero_vector_with_cosine() {
    let dir = tmp();
    let mut d = data(20, 4, 1);
    d[12 * 4..13 * 4].fill(0.0);
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", fsl_f32(&d, 4, "item", &[]))],
        20,
    );
    build_fails(
        dir.path(),
        &["a.parquet"],
        &["--metric", "cosine"],
        &["row 12", "zero vector"],
    );
}

#[test]
fn query_dimension_differs_from_the_index() {
    let dir = tmp();
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", fsl_f32(&data(20, 4, 1), 4, "item", &[]))],
        20,
    );
    write_parquet(
        &dir.path().join("q.parquet"),
        vec![("emb", fsl_f32(&data(3, 5, 1), 5, "item", &[]))],
        20,
    );
    ok(
        dir.path(),
        &["build", "--input", "a.parquet", "--out", "a.vbx"],
    );
    let out = run(
        dir.path(),
        &[
            "search",
            "--index",
            "a.vbx",
            "--queries",
            "q.parquet",
            "--k",
            "3",
            "--out",
            "r.parquet",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("q.parquet") && out.stderr.contains("dimension 5, expected 4"),
        "{}",
        out.stderr
    );
    assert!(!dir.path().join("r.parquet").exists());
}

#[test]
fn a_bad_query_after_batches_were_written_leaves_no_results() {
    // Batches of 8 queries: the first three have been searched and handed to the results
    // thread (some written) when row 30 turns out to be NaN.
    let dir = tmp();
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![("emb", fsl_f32(&data(50, 4, 1), 4, "item", &[]))],
        50,
    );
    let mut q = data(40, 4, 2);
    write_parquet(
        &dir.path().join("good.parquet"),
        vec![("emb", fsl_f32(&q, 4, "item", &[]))],
        8,
    );
    q[30 * 4 + 1] = f32::NAN;
    write_parquet(
        &dir.path().join("q.parquet"),
        vec![("emb", fsl_f32(&q, 4, "item", &[]))],
        8,
    );
    ok(
        dir.path(),
        &["build", "--input", "a.parquet", "--out", "a.vbx"],
    );
    let search = |queries: &str, batch: &str, out: &str| {
        run(
            dir.path(),
            &[
                "search",
                "--index",
                "a.vbx",
                "--queries",
                queries,
                "--k",
                "3",
                "--batch-queries",
                batch,
                "--out",
                out,
            ],
        )
    };
    let before = listing(dir.path());
    let out = search("q.parquet", "8", "r.parquet");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("q.parquet: row 30") && out.stderr.contains("NaN"),
        "{}",
        out.stderr
    );
    assert_eq!(listing(dir.path()), before, "nothing left behind");

    // The same queries without the NaN: in batches of 8 or all at once, the same results.
    let read =
        |name: &str| vecbuild::io::parquet::read_results(&dir.path().join(name)).expect("results");
    for (batch, out) in [("8", "r8.parquet"), ("16384", "r.parquet")] {
        let done = search("good.parquet", batch, out);
        assert_eq!(done.code, 0, "{}", done.stderr);
    }
    let (small, whole) = (read("r8.parquet"), read("r.parquet"));
    assert_eq!(small.query_ids, whole.query_ids);
    assert_eq!(small.neighbors, whole.neighbors);
    assert_eq!(small.offsets, whole.offsets);
    assert_eq!(small.distances, whole.distances);
    assert_eq!(whole.offsets.len(), 41);
}

#[test]
fn not_a_parquet_file() {
    let dir = tmp();
    std::fs::write(dir.path().join("a.parquet"), b"id,emb\n1,2\n").unwrap();
    build_fails(
        dir.path(),
        &["a.parquet"],
        &[],
        &["a.parquet", "not a Parquet file"],
    );
}

#[test]
fn duplicate_ids_stop_an_ivf_pq_build_before_training() {
    let dir = tmp();
    let mut ids: Vec<i64> = (0..400).collect();
    ids[399] = 3;
    write_parquet(
        &dir.path().join("a.parquet"),
        vec![
            ("id", int64(ids)),
            ("emb", fsl_f32(&data(400, 4, 1), 4, "item", &[])),
        ],
        100,
    );
    let out = run(
        dir.path(),
        &[
            "build",
            "--input",
            "a.parquet",
            "--index",
            "ivf-pq",
            "--out",
            "out.vbx",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("row 399") && out.stderr.contains("duplicate id 3"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("IVF-PQ stages"),
        "rejected before training: {}",
        out.stderr
    );
    assert!(!dir.path().join("out.vbx").exists());
}
