//! The input reader: every accepted column type, ids, many files, order across batches.

use crate::common::*;
use arrow_array::ArrayRef;
use std::path::PathBuf;
use std::sync::Arc;
use vecbuild::io::{read_all, resolve_inputs, ReadOptions};
use vecbuild::{IdKind, Ids};

fn read(
    paths: &[PathBuf],
    opts: &ReadOptions<'_>,
) -> (Ids, ndarray::Array2<f32>, vecbuild::io::InputSummary) {
    read_all(paths, opts).expect("read")
}

#[test]
fn fixed_size_list_with_child_named_item_or_element() {
    for child in ["item", "element", "values"] {
        let dir = tmp();
        let p = dir.path().join("a.parquet");
        let d = data(50, 8, 1);
        write_parquet(
            &p,
            vec![("id", int64(100..150)), ("emb", fsl_f32(&d, 8, child, &[]))],
            1000,
        );
        let (ids, v, s) = read(&[p], &ReadOptions::default());
        assert_eq!(v.as_slice().unwrap(), &d[..], "child {child}");
        assert_eq!(ids, Ids::Int64((100..150).collect()));
        assert_eq!(
            (
                s.rows,
                s.dim,
                s.vector_column.as_deref(),
                s.id_column.as_deref()
            ),
            (50, 8, Some("emb"), Some("id"))
        );
    }
}

#[test]
fn list_and_large_list_of_f64_and_f16_convert_to_f32() {
    let dir = tmp();
    let rows: Vec<Vec<f64>> = (0..30)
        .map(|i| (0..5).map(|j| (i * 5 + j) as f64 * 0.25).collect())
        .collect();
    let expected: Vec<f32> = rows.iter().flatten().map(|v| *v as f32).collect();

    let mut b =
        arrow_array::builder::LargeListBuilder::new(arrow_array::builder::Float64Builder::new());
    for r in &rows {
        b.values().append_slice(r);
        b.append(true);
    }
    let p = dir.path().join("large.parquet");
    write_parquet(&p, vec![("v", Arc::new(b.finish()) as ArrayRef)], 7);
    assert_eq!(
        read(&[p], &ReadOptions::default()).1.as_slice().unwrap(),
        &expected[..]
    );

    let mut b = arrow_array::builder::ListBuilder::new(arrow_array::builder::Float16Builder::new());
    for r in &rows {
        for v in r {
            b.values().append_value(half::f16::from_f64(*v));
        }
        b.append(true);
    }
    let p = dir.path().join("half.parquet");
    write_parquet(&p, vec![("v", Arc::new(b.finish()) as ArrayRef)], 1000);
    // Multiples of 0.25 below 40 are exact in f16.
    assert_eq!(
        read(&[p], &ReadOptions::default()).1.as_slice().unwrap(),
        &expected[..]
    );
}

#[test]
fn string_ids_are_kept_and_int32_ids_widen() {
    let dir = tmp();
    let d = data(20, 4, 2);
    let names: Vec<String> = (0..20).map(|i| format!("doc-{i}")).collect();
    let p = dir.path().join("s.parquet");
    write_parquet(
        &p,
        vec![
            ("key", strings(&names)),
            ("emb", fsl_f32(&d, 4, "item", &[])),
        ],
        6,
    );
    let opts = ReadOptions {
        id_column: Some("key".into()),
        ..Default::default()
    };
    let (ids, _, s) = read(&[p], &opts);
    assert_eq!(s.id_kind, IdKind::Utf8);
    assert_eq!(ids, Ids::from_strings(&names));

    let p = dir.path().join("i32.parquet");
    let id32: ArrayRef = Arc::new(arrow_array::Int32Array::from(
        (0..20).map(|i| -i).collect::<Vec<i32>>(),
    ));
    write_parquet(
        &p,
        vec![("id", id32), ("emb", fsl_f32(&d, 4, "item", &[]))],
        6,
    );
    let (ids, _, _) = read(&[p], &ReadOptions::default());
    assert_eq!(ids, Ids::Int64((0..20).map(|i| -i).collect()));
}

#[test]
fn many_files_by_glob_and_directory_read_in_name_order_with_global_row_ids() {
    let dir = tmp();
    let d = data(90, 6, 3);
    for (i, name) in ["b.parquet", "a.parquet", "c.parquet"].iter().enumerate() {
        // Written as b, a, c; b holds rows 30..60, a rows 0..30: read back in name order a, b, c.
        let start = [30, 0, 60][i];
        write_parquet(
            &dir.path().join(name),
            vec![(
                "emb",
                fsl_f32(&d[start * 6..(start + 30) * 6], 6, "item", &[]),
            )],
            8,
        );
    }
    let pattern = format!("{}/*.parquet", dir.path().display());
    for arg in [pattern, dir.path().display().to_string()] {
        let files = resolve_inputs(&[arg]).expect("resolve");
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.parquet", "b.parquet", "c.parquet"]);
        let (ids, v, s) = read(&files, &ReadOptions::default());
        assert_eq!(
            ids,
            Ids::Int64((0..90).collect()),
            "no id column: global row numbers"
        );
        assert_eq!(v.as_slice().unwrap(), &d[..]);
        assert_eq!(
            s.files.iter().map(|f| f.rows).collect::<Vec<_>>(),
            [30, 30, 30]
        );
    }
}

#[test]
fn file_larger_than_a_batch_streams_in_order_over_many_row_groups() {
    let dir = tmp();
    let n = 10_007;
    let d = data(n, 16, 4);
    let p = dir.path().join("big.parquet");
    write_parquet(
        &p,
        vec![
            ("id", int64(0..n as i64)),
            ("emb", fsl_f32(&d, 16, "item", &[])),
        ],
        997,
    );
    let batches = std::sync::Mutex::new(0usize);
    let mut seen = Vec::new();
    let mut next_row = 0u64;
    let opts = ReadOptions {
        batch_rows: 300,
        ..Default::default()
    };
    let summary = vecbuild::io::read_inputs(&[p], &opts, &mut |b| {
        assert_eq!(b.first_row, next_row, "batches arrive in input order");
        assert!(b.vectors.nrows() <= 300, "batch bounded by batch_rows");
        next_row += b.vectors.nrows() as u64;
        seen.extend_from_slice(b.vectors.as_slice().unwrap());
        *batches.lock().unwrap() += 1;
        Ok(())
    })
    .expect("read");
    assert_eq!(summary.rows, n as u64);
    assert!(*batches.lock().unwrap() >= n / 300);
    assert_eq!(seen, d);
}

#[test]
fn vector_column_is_detected_or_chosen() {
    let dir = tmp();
    let d = data(10, 3, 5);
    let p = dir.path().join("two.parquet");
    write_parquet(
        &p,
        vec![
            ("a", fsl_f32(&d, 3, "item", &[])),
            ("b", fsl_f32(&d, 3, "item", &[])),
        ],
        100,
    );
    let opts = ReadOptions {
        vector_column: Some("b".into()),
        ..Default::default()
    };
    let (_, v, s) = read(&[p], &opts);
    assert_eq!(
        (v.as_slice().unwrap(), s.vector_column.as_deref()),
        (&d[..], Some("b"))
    );
}

#[test]
fn npy_and_fvecs_round_trip() {
    let dir = tmp();
    let d = ndarray::Array2::from_shape_vec((33, 7), data(33, 7, 6)).unwrap();
    for name in ["x.npy", "x.fvecs"] {
        let p = dir.path().join(name);
        match name {
            "x.npy" => vecbuild::io::npy::write(&p, d.view()).unwrap(),
            _ => vecbuild::io::fvecs::write(&p, d.view()).unwrap(),
        }
        let opts = ReadOptions {
            batch_rows: 10,
            ..Default::default()
        };
        let (ids, v, s) = read(&[p], &opts);
        assert_eq!(v, d, "{name}");
        assert_eq!(ids, Ids::Int64((0..33).collect()));
        assert_eq!(s.dim, 7);
    }
}

#[test]
fn cosine_normalises_rows_at_ingest() {
    let dir = tmp();
    let p = dir.path().join("c.parquet");
    write_parquet(
        &p,
        vec![("emb", fsl_f32(&[3.0, 4.0, 0.0, 2.0], 2, "item", &[]))],
        10,
    );
    let opts = ReadOptions {
        normalize: true,
        ..Default::default()
    };
    let (_, v, _) = read(&[p], &opts);
    assert_eq!(v.as_slice().unwrap(), &[0.6, 0.8, 0.0, 1.0]);
}
