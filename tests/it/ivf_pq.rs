//! IVF-PQ: recall against exact search, k-means and PQ invariants, parameters.

use crate::common::*;
use ndarray::Array2;
use std::path::Path;
use vecbuild::artifact::IndexKind;
use vecbuild::backend::CpuBackend;
use vecbuild::index::ivf_pq::{self, IvfPqParams};
use vecbuild::index::kmeans;
use vecbuild::index::pq::ProductQuantizer;
use vecbuild::{Ids, Metric, SearchParams, Searcher};

/// Builds an IVF-PQ artifact in `dir` over `base` (normalised first for cosine).
fn build(dir: &Path, base: &Array2<f32>, metric: Metric, params: &IvfPqParams) -> Searcher {
    let mut data = base.clone();
    if metric.normalizes() {
        vecbuild::metric::normalize_rows(data.view_mut());
    }
    let index = ivf_pq::build(&CpuBackend, data.view(), metric, params, None).expect("build");
    let ids = Ids::row_numbers(0, base.nrows());
    let path = dir.join("ivf.vbx");
    let mut m = manifest(IndexKind::IvfPq, metric, base.nrows(), base.ncols());
    m.search_defaults = serde_json::json!({"n_probes": 8, "refine_ratio": 1.0});
    ivf_pq::write(&path, &index, &ids, params.refine.then_some(data.view()), m).expect("write");
    Searcher::open(&path).expect("open")
}

fn params(n_lists: usize, pq_dim: usize, refine: bool) -> IvfPqParams {
    IvfPqParams {
        n_lists,
        pq_dim,
        pq_bits: 8,
        kmeans_n_iters: 15,
        max_train_rows: 20_000,
        refine,
        seed: 7,
    }
}

#[test]
fn recall_against_exact_search_without_and_with_refine() {
    let data = vecbuild::synth::clustered(20_000, 200, 32, 100, 3);
    for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
        let dir = tmp();
        let want = truth(&data.base, &data.queries, metric, 10);
        let s = build(dir.path(), &data.base, metric, &params(64, 16, true));
        let search = |n_probes, refine_ratio| {
            let p = SearchParams {
                n_probes: Some(n_probes),
                refine_ratio: Some(refine_ratio),
                ..Default::default()
            };
            s.search(data.queries.view(), 10, &p).unwrap()
        };
        // Documented floor without re-ranking: PQ with 16 bytes per 32-d row.
        let plain = recall(search(16, 1.0).rows.view(), want.view());
        assert!(
            plain >= 0.60,
            "{metric}: recall@10 {plain:.3} < 0.60 at n_probes=16 without refine"
        );
        let refined = recall(search(16, 4.0).rows.view(), want.view());
        assert!(
            refined >= 0.95,
            "{metric}: recall@10 {refined:.3} < 0.95 at n_probes=16, refine_ratio=4"
        );
        let few = recall(search(1, 4.0).rows.view(), want.view());
        assert!(
            few < refined,
            "{metric}: more probes must help ({few:.3} at 1 vs {refined:.3} at 16)"
        );
    }
}

#[test]
fn refined_distances_are_exact() {
    let data = vecbuild::synth::clustered(5_000, 20, 16, 30, 4);
    let dir = tmp();
    let s = build(dir.path(), &data.base, Metric::L2, &params(32, 8, true));
    let r = s
        .search(
            data.queries.view(),
            5,
            &SearchParams {
                n_probes: Some(32),
                refine_ratio: Some(8.0),
                ..Default::default()
            },
        )
        .unwrap();
    for (qi, (rows, dists)) in r
        .rows
        .rows()
        .into_iter()
        .zip(r.distances.rows())
        .enumerate()
    {
        for (&row, &d) in rows.iter().zip(dists) {
            let exact = Metric::L2.score_reference(
                data.queries.row(qi).as_slice().unwrap(),
                data.base.row(row as usize).as_slice().unwrap(),
            );
            assert!(
                (d as f64 - exact).abs() < 1e-3 * (1.0 + exact),
                "q{qi}: {d} vs {exact}"
            );
        }
    }
}

#[test]
fn stored_search_defaults_are_used() {
    let data = vecbuild::synth::clustered(3_000, 50, 16, 20, 5);
    let dir = tmp();
    let s = build(dir.path(), &data.base, Metric::L2, &params(16, 8, false));
    let default = s
        .search(data.queries.view(), 10, &SearchParams::default())
        .unwrap();
    let explicit = s
        .search(
            data.queries.view(),
            10,
            &SearchParams {
                n_probes: Some(8),
                refine_ratio: Some(1.0),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        default, explicit,
        "the manifest's n_probes = 8 applies when none is given"
    );
    let err = s
        .search(
            data.queries.view(),
            10,
            &SearchParams {
                n_probes: None,
                refine_ratio: Some(2.0),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("--refine"), "{err}");
}

/// The sub-spaces of a product quantizer are trained together (one step of every sub-space
/// still running per iteration): each must come out as `kmeans::train` makes it alone, splits
/// and early stops included.
#[test]
fn pq_sub_spaces_trained_together_equal_each_trained_alone() {
    let (n, dim, pq_dim, pq_bits) = (3000usize, 10usize, 4usize, 4u32);
    let (dsub, ksub) = (dim.div_ceil(pq_dim), 1usize << pq_bits);
    let mut rng = vecbuild::synth::Rng::new(17);
    // Columns 6..9 take 2 values: their sub-space has 8 distinct rows for 16 centroids, so
    // clusters empty and are split at every iteration; the others stop early, each at its own
    // iteration, while their centroids still move. The last sub-space is column 9 and zeros.
    let data = Array2::from_shape_fn((n, dim), |(_, c)| match c {
        6..=8 => (rng.below(2) as f32) * 0.25,
        _ => rng.uniform() as f32,
    });
    let (n_iters, seed) = (40, 40);
    let pq =
        ProductQuantizer::train(&CpuBackend, data.view(), pq_dim, pq_bits, n_iters, seed).unwrap();
    let (mut iterations, mut splits) = (Vec::new(), 0);
    for m in 0..pq_dim {
        let sub = Array2::from_shape_fn((n, dsub), |(r, j)| match m * dsub + j {
            c if c < dim => data[[r, c]],
            _ => 0.0,
        });
        let alone = kmeans::train(
            &CpuBackend,
            sub.view(),
            ksub,
            n_iters,
            seed + m as u64,
            None,
        )
        .unwrap();
        iterations.push(alone.objective.len());
        splits += alone.splits;
        let together = pq.codebook(m);
        for (a, t) in alone.centroids.iter().zip(together.iter()) {
            assert_eq!(a.to_bits(), t.to_bits(), "sub-space {m}: {a} vs {t}");
        }
    }
    // Early stops at different iterations, and splits: the cases the joint loop must keep.
    assert!(splits > 0, "no split made");
    assert!(
        iterations.iter().any(|&i| i != iterations[0]),
        "all sub-spaces ran {iterations:?} iterations"
    );
}

#[test]
fn kmeans_leaves_no_empty_cluster_and_lowers_the_objective() {
    let data = vecbuild::synth::clustered(8_000, 0, 16, 40, 6).base;
    let km = kmeans::train(&CpuBackend, data.view(), 100, 15, 1, None).unwrap();
    assert!(
        km.sizes.iter().all(|&s| s > 0),
        "empty cluster: {:?}",
        km.sizes
    );
    assert_eq!(km.sizes.iter().sum::<u64>(), 8_000);
    let (first, last) = (km.objective[0], *km.objective.last().unwrap());
    assert!(last < 0.8 * first, "objective {first} → {last}");
    for w in km.objective.windows(2) {
        assert!(
            w[1] <= w[0] * (1.0 + 1e-6) || km.splits > 0,
            "objective rose: {:?}",
            km.objective
        );
    }
    // Duplicate-heavy data forces splits of large clusters into empty ones.
    let dup = Array2::from_shape_fn((2_000, 4), |(i, j)| ((i % 5) * 10 + j) as f32);
    let km = kmeans::train(&CpuBackend, dup.view(), 5, 10, 3, None).unwrap();
    assert!(
        km.sizes.iter().all(|&s| s == 400),
        "five distinct points, five clusters: {:?}",
        km.sizes
    );
}

/// Squared distance from row `r` of `data` to centroid `c`, computed directly.
fn row_distance(
    data: ndarray::ArrayView2<f32>,
    centroids: ndarray::ArrayView2<f32>,
    r: usize,
    c: u32,
) -> f32 {
    data.row(r)
        .iter()
        .zip(centroids.row(c as usize))
        .map(|(a, b)| (a - b).powi(2))
        .sum()
}

/// Local assignment after centroids moved: every row ends at a centroid no farther than the
/// one it started at, and almost every row at its exact nearest.
#[test]
fn settle_moves_rows_only_closer_and_finds_almost_every_nearest_centroid() {
    let data = vecbuild::synth::clustered(20_000, 0, 16, 300, 4).base;
    let km = kmeans::train(&CpuBackend, data.view(), 800, 3, 2, None).unwrap();
    let (start, _) = kmeans::assign(&CpuBackend, data.view(), km.centroids.view()).unwrap();
    // One Lloyd update moves the centroids; the old labels are the start.
    let mut moved = km.centroids.clone();
    kmeans::update(data.view(), &start, &mut moved);
    let near = kmeans::centroid_neighbours(&CpuBackend, moved.view(), 64).unwrap();
    assert!(near
        .iter()
        .enumerate()
        .all(|(c, l)| l[0] == c as u32 && l.len() == 64));
    let mut labels = start.clone();
    let (dists, _) =
        kmeans::settle(&CpuBackend, data.view(), moved.view(), &near, &mut labels).unwrap();
    let (exact, exact_dists) = kmeans::assign(&CpuBackend, data.view(), moved.view()).unwrap();
    let dist = |r: usize, c: u32| row_distance(data.view(), moved.view(), r, c);
    let mut same = 0;
    for r in 0..data.nrows() {
        assert!(
            dist(r, labels[r]) <= dist(r, start[r]) * (1.0 + 1e-5) + 1e-5,
            "row {r}"
        );
        assert!(
            (dists[r] - dist(r, labels[r])).abs() <= 1e-3 * (1.0 + dists[r]),
            "row {r}"
        );
        same += usize::from(labels[r] == exact[r] || dists[r] <= exact_dists[r] * (1.0 + 1e-5));
    }
    let moved_rows = start.iter().zip(&exact).filter(|(a, b)| a != b).count();
    assert!(
        moved_rows > 100,
        "the update moved only {moved_rows} rows' nearest centroid"
    );
    assert!(
        same as f64 >= 0.99 * data.nrows() as f64,
        "{same} of {} rows at their nearest centroid",
        data.nrows()
    );
}

/// Bounded assignment gives every row its nearest centroid (ties aside) by local search on
/// clustered rows, and on rows whose centroids it cannot tell apart by the bound it says so,
/// leaving the exact assignment to do the work.
#[test]
fn bounded_assignment_finds_every_rows_nearest_centroid() {
    let clustered = vecbuild::synth::clustered(30_000, 0, 24, 200, 6).base;
    let mut rng = vecbuild::synth::Rng::new(9);
    let uniform = Array2::from_shape_fn((30_000, 64), |_| rng.normal() as f32);
    for (name, data, local) in [("clustered", clustered, true), ("uniform", uniform, false)] {
        let km = kmeans::train(&CpuBackend, data.view(), 600, 4, 3, None).unwrap();
        let c = km.centroids.view();
        let bounds = kmeans::Bounds::new(&CpuBackend, c)
            .unwrap()
            .expect("600 centroids, CPU");
        let found = kmeans::assign_local(&CpuBackend, data.view(), c, &bounds).unwrap();
        assert_eq!(found.is_some(), local, "{name}: local search taken");
        let (labels, dists) =
            kmeans::assign_bounded(&CpuBackend, data.view(), c, Some(&bounds)).unwrap();
        let (exact, exact_dists) = kmeans::assign(&CpuBackend, data.view(), c).unwrap();
        let dist = |r: usize, l: u32| row_distance(data.view(), c, r, l);
        let mut differ = 0;
        for r in 0..data.nrows() {
            assert!(
                (dists[r] - exact_dists[r]).abs() <= 1e-4 * (1.0 + exact_dists[r]),
                "{name}: row {r}: {} against {}",
                dists[r],
                exact_dists[r]
            );
            if labels[r] != exact[r] {
                differ += 1;
                let (a, b) = (dist(r, labels[r]), dist(r, exact[r]));
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b),
                    "{name}: row {r}: {a} against {b}"
                );
            }
        }
        assert!(differ <= 3, "{name}: {differ} rows at another centroid");
    }
}

/// k-means with local assignment (enough centroids that it applies) takes over once an exact
/// step finds almost every row near its last centroid, lowers the objective every iteration
/// and ends within a hair of exact training's, with no empty cluster.
#[test]
fn local_kmeans_training_reaches_the_objective_of_exact_training() {
    let data = vecbuild::synth::clustered(30_000, 0, 16, 400, 5).base;
    let k = kmeans::LOCAL_MIN_CENTROIDS + 88;
    let exact = kmeans::train(&CpuBackend, data.view(), k, 10, 9, None).unwrap();
    let local = kmeans::train_local(&CpuBackend, data.view(), k, 10, 9, None).unwrap();
    assert!(local.local_steps > 0, "no local assignment");
    assert_eq!(exact.local_steps, 0);
    assert!(local.sizes.iter().all(|&s| s > 0), "empty cluster");
    assert_eq!(local.sizes.iter().sum::<u64>(), 30_000);
    for w in local.objective.windows(2) {
        assert!(
            w[1] <= w[0] * (1.0 + 1e-6) || local.splits > 0,
            "objective rose: {:?}",
            local.objective
        );
    }
    let (e, l) = (
        *exact.objective.last().unwrap(),
        *local.objective.last().unwrap(),
    );
    assert!(l <= e * 1.005, "local {l} vs exact {e}");
    // The first iterations are exact in both (local's by the bound): the same objective, up
    // to the rounding of its other distance kernel.
    for (a, b) in exact.objective[..2].iter().zip(&local.objective[..2]) {
        assert!((a - b).abs() <= 1e-4 * a, "exact {a} vs local {b}");
    }
}

#[test]
fn pq_reconstruction_error_is_bounded_and_falls_with_more_codes() {
    let data = vecbuild::synth::clustered(10_000, 0, 30, 50, 8).base;
    let variance: f64 = {
        let mean = data.mean_axis(ndarray::Axis(0)).unwrap();
        data.rows()
            .into_iter()
            .map(|r| {
                (&r - &mean)
                    .iter()
                    .map(|v| (*v as f64).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 10_000.0
    };
    let mut errors = Vec::new();
    // 7 and 15 do not divide 30: the last subspace is zero-padded.
    for pq_dim in [3, 7, 15, 30] {
        let pq = ProductQuantizer::train(&CpuBackend, data.view(), pq_dim, 8, 10, 1).unwrap();
        let codes = pq.encode(&CpuBackend, data.view()).unwrap();
        let rec = pq.decode(codes.view());
        let err: f64 = (&data - &rec)
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            / 10_000.0;
        errors.push(err);
        assert!(
            err < 0.25 * variance,
            "pq_dim {pq_dim}: error {err:.3} vs variance {variance:.3}"
        );
    }
    assert!(
        errors.windows(2).all(|w| w[1] < w[0]),
        "more sub-quantizers, less error: {errors:?}"
    );
}

#[test]
fn same_seed_same_index() {
    let data = vecbuild::synth::clustered(4_000, 0, 16, 20, 9).base;
    let a = ivf_pq::build(
        &CpuBackend,
        data.view(),
        Metric::L2,
        &params(16, 8, false),
        None,
    )
    .unwrap();
    let b = ivf_pq::build(
        &CpuBackend,
        data.view(),
        Metric::L2,
        &params(16, 8, false),
        None,
    )
    .unwrap();
    assert_eq!(
        (a.centroids, a.codes, a.list_offsets, a.list_rows),
        (b.centroids, b.codes, b.list_offsets, b.list_rows)
    );
}

/// The CLI build reads its input twice (sampling, then encoding) unless the sample is every
/// row, when it encodes the sample instead; either way it builds the index the library builds
/// from the rows in memory, raw vectors (`--refine`) included.
#[test]
fn cli_ivf_pq_encodes_the_sample_or_reads_again_as_the_library_does() {
    use vecbuild::artifact::container::{Container, DType};
    let dir = tmp();
    let d = dir.path();
    let data = vecbuild::synth::clustered(70_000, 0, 8, 20, 3).base;
    vecbuild::io::npy::write(&d.join("x.npy"), data.view()).unwrap();
    // 16 lists: a sample of 65,536 rows (PQ's), so the input is read again; 300 lists: 76,800
    // rows wanted, so the sample is all 70,000.
    for (n_lists, whole) in [("16", false), ("300", true)] {
        let args = [
            "build",
            "--input",
            "x.npy",
            "--index",
            "ivf-pq",
            "--n-lists",
            n_lists,
            "--pq-dim",
            "4",
            "--refine",
            "--out",
            "i.vbx",
        ];
        ok(d, &args);
        let info = ok(d, &["info", "i.vbx", "--json"]);
        let m: serde_json::Value = serde_json::from_str(&info).unwrap();
        let p: IvfPqParams = serde_json::from_value(m["params"]["ivf_pq"].clone()).unwrap();
        let sample = ivf_pq::training_rows(70_000, &p).len();
        assert_eq!(
            sample == 70_000,
            whole,
            "{n_lists} lists: sample of {sample} rows"
        );
        let lib = ivf_pq::build(&CpuBackend, data.view(), Metric::L2, &p, None).unwrap();
        let cli = Container::open(&d.join("i.vbx")).unwrap();
        let f32s = |name: &str| cli.slice::<f32>(name, DType::F32).unwrap().0.to_vec();
        assert_eq!(f32s("ivf.centroids"), lib.centroids.as_slice().unwrap());
        assert_eq!(f32s("pq.codebooks"), lib.pq.codebooks.as_slice().unwrap());
        assert_eq!(f32s("vectors"), data.as_slice().unwrap(), "{n_lists} lists");
        let codes = cli.slice::<u8>("ivf.codes", DType::U8).unwrap().0;
        assert_eq!(codes, lib.codes.as_slice().unwrap(), "{n_lists} lists");
        let rows = cli.slice::<u64>("ivf.rows", DType::U64).unwrap().0;
        assert_eq!(rows, &lib.list_rows[..], "{n_lists} lists");
    }
}

#[test]
fn cli_builds_and_searches_ivf_pq_and_rejects_bad_parameters() {
    let dir = tmp();
    let d = dir.path();
    generate_dataset(d, 6000, 24, 40, 100);
    ok(
        d,
        &[
            "build",
            "--input",
            "b.parquet",
            "--index",
            "ivf-pq",
            "--refine",
            "--out",
            "i.vbx",
        ],
    );
    let info = ok(d, &["info", "i.vbx", "--json"]);
    let m: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(m["kind"], "ivf-pq");
    assert_eq!(
        m["params"]["ivf_pq"]["n_lists"], 153,
        "auto n_lists = 4·√6000 → 256, capped at 6000/39: {}",
        m["params"]
    );
    assert!(m["params"]["auto_reason"]
        .as_str()
        .unwrap()
        .contains("capped at N/39 = 153"));
    assert_eq!(m["params"]["ivf_pq"]["pq_dim"], 12);
    assert!(m["params"]["list_sizes"]["imbalance"].as_f64().unwrap() >= 1.0);
    ok(
        d,
        &[
            "knn",
            "--base",
            "b.parquet",
            "--queries",
            "q.parquet",
            "--k",
            "10",
            "--out",
            "t.parquet",
        ],
    );
    ok(
        d,
        &[
            "search",
            "--index",
            "i.vbx",
            "--queries",
            "q.parquet",
            "--k",
            "10",
            "--n-probes",
            "32",
            "--refine-ratio",
            "4",
            "--out",
            "r.parquet",
        ],
    );
    let v: serde_json::Value = eval_json(d);
    assert!(
        v["recall"].as_f64().unwrap() >= 0.95,
        "recall@10 {} at n_probes=32, refine 4",
        v["recall"]
    );

    let bad = |extra: &[&str], expect: &str| {
        let mut args = vec!["build", "--input", "b.parquet", "--out", "x.vbx"];
        args.extend_from_slice(extra);
        let out = run(d, &args);
        assert_eq!(out.code, 2, "{extra:?}: {}", out.stderr);
        assert!(out.stderr.contains(expect), "{extra:?}: {}", out.stderr);
        assert!(!d.join("x.vbx").exists());
    };
    bad(
        &["--index", "ivf-pq", "--n-lists", "7000"],
        "n_lists = 7000 must be between 1 and the number of rows (6000)",
    );
    bad(
        &["--index", "ivf-pq", "--pq-bits", "3"],
        "pq_bits = 3 must be between 4 and 8",
    );
    bad(&["--index", "ivf-pq", "--pq-bits", "9"], "pq_bits = 9");
    bad(
        &["--index", "ivf-pq", "--pq-dim", "25"],
        "pq_dim = 25 must be between 1 and the dimension (24)",
    );
    bad(
        &["--index", "ivf-pq", "--max-index-memory", "10K"],
        "too small",
    );
    bad(
        &["--index", "ivf-pq", "--max-index-memory", "lots"],
        "expected a size",
    );
    bad(&["--n-lists", "8"], "need --index ivf-pq");
    let out = run(
        d,
        &[
            "search",
            "--index",
            "i.vbx",
            "--queries",
            "q.parquet",
            "--n-probes",
            "0",
            "--out",
            "r2.parquet",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);

    // faiss's PQ needs pq_dim to divide the dimension: 24 / 7 does not.
    ok(
        d,
        &[
            "build",
            "--input",
            "b.parquet",
            "--index",
            "ivf-pq",
            "--pq-dim",
            "7",
            "--out",
            "odd.vbx",
        ],
    );
    refused(
        d,
        &[
            "export",
            "--index",
            "odd.vbx",
            "--format",
            "faiss",
            "--out",
            "odd.faiss",
        ],
        "pq_dim to divide the dimension",
        "odd.faiss",
    );
    refused(
        d,
        &[
            "export", "--index", "i.vbx", "--format", "hnswlib", "--out", "i.hnsw",
        ],
        "hnswlib and faiss HNSW exports need --index cagra",
        "i.hnsw",
    );
}

#[test]
fn tune_reaches_its_target_on_held_out_queries_and_stores_it() {
    let dir = tmp();
    let d = dir.path();
    generate_dataset(d, 8000, 24, 40, 200);
    ok(
        d,
        &[
            "build",
            "--input",
            "b.parquet",
            "--index",
            "ivf-pq",
            "--refine",
            "--pq-dim",
            "6",
            "--out",
            "i.vbx",
        ],
    );
    ok(
        d,
        &[
            "knn",
            "--base",
            "b.parquet",
            "--queries",
            "q.parquet",
            "--k",
            "10",
            "--out",
            "t.parquet",
        ],
    );
    // Tuned on rows sampled from the base; judged on the separate query file.
    let table = ok(d, &["tune", "--index", "i.vbx", "--target-recall", "0.95"]);
    assert!(table.contains("← chosen"), "{table}");
    let m: serde_json::Value = serde_json::from_str(&ok(d, &["info", "i.vbx", "--json"])).unwrap();
    let defaults = &m["search_defaults"];
    assert!(
        defaults["tuned"]["recall"].as_f64().unwrap() >= 0.95,
        "{defaults}"
    );
    ok(
        d,
        &[
            "search",
            "--index",
            "i.vbx",
            "--queries",
            "q.parquet",
            "--k",
            "10",
            "--out",
            "r.parquet",
        ],
    );
    let v: serde_json::Value = eval_json(d);
    let recall = v["recall"].as_f64().unwrap();
    assert!(
        recall >= 0.93,
        "held-out recall@10 {recall:.4} at the tuned {defaults} (target 0.95, margin 0.02)"
    );

    // Without raw vectors tune re-reads the recorded inputs; a target PQ alone cannot reach fails
    // with exit 2 and leaves the artifact as it was.
    ok(
        d,
        &[
            "build",
            "--input",
            "b.parquet",
            "--index",
            "ivf-pq",
            "--pq-dim",
            "2",
            "--out",
            "small.vbx",
        ],
    );
    let before = std::fs::read(d.join("small.vbx")).unwrap();
    let out = run(
        d,
        &[
            "tune",
            "--index",
            "small.vbx",
            "--target-recall",
            "0.999",
            "--queries",
            "q.parquet",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no setting reached"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(d.join("small.vbx")).unwrap(),
        before,
        "artifact untouched"
    );
    ok(d, &["build", "--input", "b.parquet", "--out", "flat.vbx"]);
    let out = run(
        d,
        &["tune", "--index", "flat.vbx", "--target-recall", "0.9"],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no search parameters to tune"),
        "{}",
        out.stderr
    );
}

#[test]
fn streamed_cli_build_equals_the_in_memory_build() {
    let dir = tmp();
    let d = dir.path();
    // Several files and small batches: the sample and the codes are gathered across batches.
    let data = vecbuild::synth::clustered(5_000, 0, 16, 30, 12).base;
    for (i, part) in data.axis_chunks_iter(ndarray::Axis(0), 2_000).enumerate() {
        let ids = Ids::Int64((i as i64 * 2_000..i as i64 * 2_000 + part.nrows() as i64).collect());
        vecbuild::io::parquet::write_vectors(&d.join(format!("p{i}.parquet")), &ids, part, 700)
            .unwrap();
    }
    ok(
        d,
        &[
            "build",
            "--input",
            "p*.parquet",
            "--batch-rows",
            "300",
            "--index",
            "ivf-pq",
            "--n-lists",
            "32",
            "--pq-dim",
            "8",
            "--kmeans-n-iters",
            "15",
            "--seed",
            "5",
            "--out",
            "s.vbx",
        ],
    );
    let p = IvfPqParams {
        n_lists: 32,
        pq_dim: 8,
        pq_bits: 8,
        kmeans_n_iters: 15,
        max_train_rows: 32 * 256,
        refine: false,
        seed: 5,
    };
    let mem = ivf_pq::build(&CpuBackend, data.view(), Metric::L2, &p, None).unwrap();
    let a = vecbuild::artifact::Artifact::open(d.join("s.vbx")).unwrap();
    use vecbuild::artifact::container::DType;
    assert_eq!(
        a.tensor::<u64>("ivf.list_offsets", DType::U64, &[33])
            .unwrap(),
        &mem.list_offsets[..]
    );
    assert_eq!(
        a.tensor::<u64>("ivf.rows", DType::U64, &[5_000]).unwrap(),
        &mem.list_rows[..]
    );
    assert_eq!(
        a.tensor::<u8>("ivf.codes", DType::U8, &[5_000, 8]).unwrap(),
        mem.codes.as_slice().unwrap()
    );
    assert_eq!(
        a.tensor::<f32>("ivf.centroids", DType::F32, &[32, 16])
            .unwrap(),
        mem.centroids.as_slice().unwrap()
    );
}

#[test]
fn a_query_with_short_probed_lists_does_not_shorten_the_others() {
    // Regression: results were once cut to the shortest candidate list in the batch.
    let data = vecbuild::synth::clustered(3_000, 0, 8, 40, 14).base;
    let dir = tmp();
    let s = build(dir.path(), &data, Metric::L2, &params(128, 4, false));
    // 128 lists of ~23 rows and one probe: every query finds fewer than k = 60.
    let queries = data.slice(ndarray::s![..20, ..]).to_owned();
    let k = 60;
    let r = s
        .search(
            queries.view(),
            k,
            &SearchParams {
                n_probes: Some(1),
                refine_ratio: Some(1.0),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.rows.ncols(), k, "k columns whatever one query found");
    let found: Vec<usize> = r
        .rows
        .rows()
        .into_iter()
        .map(|row| {
            row.iter()
                .filter(|&&x| x != vecbuild::search::NO_NEIGHBOR)
                .count()
        })
        .collect();
    assert!(
        found.iter().any(|&f| f < k),
        "with 1 probe of ~23-row lists some query finds < {k}: {found:?}"
    );
    for (i, row) in r.rows.rows().into_iter().enumerate() {
        // Found rows come first, padding after, and padded distances are NaN.
        let n = found[i];
        assert!(row
            .iter()
            .take(n)
            .all(|&x| x != vecbuild::search::NO_NEIGHBOR));
        assert!(r.distances.row(i).iter().skip(n).all(|d| d.is_nan()));
    }
    // And the CLI writes only what was found.
    let d = dir.path();
    vecbuild::io::npy::write(&d.join("q.npy"), queries.view()).unwrap();
    ok(
        d,
        &[
            "search",
            "--index",
            "ivf.vbx",
            "--queries",
            "q.npy",
            "--k",
            "60",
            "--n-probes",
            "1",
            "--out",
            "r.parquet",
        ],
    );
    let t = vecbuild::io::parquet::read_results(&d.join("r.parquet")).unwrap();
    let lens: Vec<usize> = t.offsets.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(lens, found);
    assert!(t.distances.iter().all(|d| d.is_finite()));
}
