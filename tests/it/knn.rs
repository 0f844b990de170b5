//! Exact k-NN: equal to a naive f64 reference, metric conventions, ties, blocks and k.

use ndarray::{Array2, ArrayView2};
use vecbuild::backend::CpuBackend;
use vecbuild::search::exact::{prepare_queries, ExactSearch};
use vecbuild::synth::Rng;
use vecbuild::Metric;

fn random(n: usize, dim: usize, seed: u64) -> Array2<f32> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_fn((n, dim), |_| rng.normal() as f32)
}

fn exact(
    base: ArrayView2<'_, f32>,
    queries: ArrayView2<'_, f32>,
    metric: Metric,
    k: usize,
    block: usize,
) -> vecbuild::SearchResults {
    let q = prepare_queries(queries, base.ncols(), metric).unwrap();
    let mut base = base.to_owned();
    if metric.normalizes() {
        vecbuild::metric::normalize_rows(base.view_mut());
    }
    let mut s = ExactSearch::new(q, metric, k);
    for start in (0..base.nrows()).step_by(block) {
        let end = (start + block).min(base.nrows());
        s.add(&CpuBackend, base.slice(ndarray::s![start..end, ..]), None)
            .unwrap();
    }
    s.finish()
}

/// The naive answer: every score in f64, sorted by (score, row).
fn reference(
    base: ArrayView2<'_, f32>,
    queries: ArrayView2<'_, f32>,
    metric: Metric,
    k: usize,
) -> Vec<Vec<(f64, u64)>> {
    let mut b = base.to_owned();
    let mut q = queries.to_owned();
    if metric.normalizes() {
        vecbuild::metric::normalize_rows(b.view_mut());
        vecbuild::metric::normalize_rows(q.view_mut());
    }
    q.rows()
        .into_iter()
        .map(|qr| {
            let mut all: Vec<(f64, u64)> = b
                .rows()
                .into_iter()
                .enumerate()
                .map(|(i, br)| {
                    (
                        metric.score_reference(qr.as_slice().unwrap(), br.as_slice().unwrap()),
                        i as u64,
                    )
                })
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            all.truncate(k);
            all
        })
        .collect()
}

fn reported(metric: Metric, score: f64) -> f64 {
    match metric {
        Metric::InnerProduct => -score,
        _ => score,
    }
}

/// Ids equal the reference except where two reference scores are within float noise of each
/// other (then either order is exact); distances within tolerance.
fn assert_matches(got: &vecbuild::SearchResults, want: &[Vec<(f64, u64)>], metric: Metric) {
    for (qi, w) in want.iter().enumerate() {
        for (j, &(score, row)) in w.iter().enumerate() {
            let d = got.distances[[qi, j]] as f64;
            let expect = reported(metric, score);
            assert!(
                (d - expect).abs() <= 1e-3 * (1.0 + expect.abs()),
                "{metric} q{qi} rank {j}: distance {d} vs {expect}"
            );
            let near_tie = w
                .iter()
                .any(|&(s, r)| r != row && (s - score).abs() < 1e-4 * (1.0 + score.abs()));
            if !near_tie {
                assert_eq!(got.rows[[qi, j]], row, "{metric} q{qi} rank {j}");
            }
        }
    }
}

#[test]
fn equals_naive_reference_for_every_metric() {
    let base = random(3000, 37, 1);
    let queries = random(300, 37, 2);
    for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
        let got = exact(base.view(), queries.view(), metric, 20, 3000);
        assert_matches(
            &got,
            &reference(base.view(), queries.view(), metric, 20),
            metric,
        );
    }
}

#[test]
fn few_queries_split_the_base_across_threads_and_agree() {
    let base = random(20_000, 16, 3);
    let queries = random(3, 16, 4);
    let got = exact(base.view(), queries.view(), Metric::L2, 10, 20_000);
    assert_matches(
        &got,
        &reference(base.view(), queries.view(), Metric::L2, 10),
        Metric::L2,
    );
}

#[test]
fn any_blocking_of_the_base_gives_the_exact_answer() {
    // GEMM rounding depends on tile shapes, so blockings agree up to float noise: each must
    // match the f64 reference.
    let base = random(5000, 24, 5);
    let queries = random(200, 24, 6);
    let want = reference(base.view(), queries.view(), Metric::L2, 15);
    for block in [1, 333, 2048, 4999, 5000] {
        assert_matches(
            &exact(base.view(), queries.view(), Metric::L2, 15, block),
            &want,
            Metric::L2,
        );
    }
}

#[test]
fn the_same_blocking_is_bitwise_deterministic() {
    let base = random(5000, 24, 5);
    let queries = random(200, 24, 6);
    let a = exact(base.view(), queries.view(), Metric::L2, 15, 1000);
    assert_eq!(a, exact(base.view(), queries.view(), Metric::L2, 15, 1000));
}

#[test]
fn k_of_1024_and_k_larger_than_the_base() {
    let base = random(3000, 8, 7);
    let queries = random(20, 8, 8);
    let got = exact(base.view(), queries.view(), Metric::L2, 1024, 3000);
    assert_eq!(got.rows.ncols(), 1024);
    assert_matches(
        &got,
        &reference(base.view(), queries.view(), Metric::L2, 1024),
        Metric::L2,
    );
    let small = exact(
        base.slice(ndarray::s![..5, ..]),
        queries.view(),
        Metric::L2,
        10,
        100,
    );
    assert_eq!(small.rows.ncols(), 5, "k is capped by the rows seen");
}

#[test]
fn ties_go_to_the_smaller_row() {
    // Rows 0..100 are four copies of 25 distinct vectors: every query sees exact ties.
    let distinct = random(25, 6, 9);
    let base = Array2::from_shape_fn((100, 6), |(i, j)| distinct[[i % 25, j]]);
    let queries = random(10, 6, 10);
    let got = exact(base.view(), queries.view(), Metric::L2, 8, 100);
    for q in 0..10 {
        for group in 0..2 {
            let first = got.rows[[q, 4 * group]];
            assert!(
                first < 25,
                "q{q}: a tied group starts at its first copy, got row {first}"
            );
            for c in 0..4 {
                assert_eq!(
                    got.rows[[q, 4 * group + c]],
                    first + 25 * c as u64,
                    "q{q}: copies in row order"
                );
                assert_eq!(
                    got.distances[[q, 4 * group + c]],
                    got.distances[[q, 4 * group]],
                    "q{q}: exact ties"
                );
            }
        }
    }
}

#[test]
fn metric_conventions() {
    let base = ndarray::array![[1.0f32, 0.0], [0.0, 2.0], [3.0, 4.0]];
    let q = ndarray::array![[1.0f32, 1.0]];
    let l2 = exact(base.view(), q.view(), Metric::L2, 3, 3);
    assert_eq!(l2.rows.row(0).to_vec(), [0, 1, 2]);
    assert_eq!(l2.distances.row(0).to_vec(), [1.0, 2.0, 13.0], "squared L2");
    let ip = exact(base.view(), q.view(), Metric::InnerProduct, 3, 3);
    assert_eq!(ip.rows.row(0).to_vec(), [2, 1, 0]);
    assert_eq!(
        ip.distances.row(0).to_vec(),
        [7.0, 2.0, 1.0],
        "inner product, largest first"
    );
    let cos = exact(base.view(), q.view(), Metric::Cosine, 3, 3);
    assert_eq!(cos.rows.row(0).to_vec(), [2, 0, 1]);
    let c = 1.0 - 7.0 / (2f32.sqrt() * 5.0);
    assert!(
        (cos.distances[[0, 0]] - c).abs() < 1e-6,
        "1 − cos: {} vs {c}",
        cos.distances[[0, 0]]
    );
    assert!((cos.distances[[0, 1]] - (1.0 - 1.0 / 2f32.sqrt())).abs() < 1e-6);
}
