//! CAGRA: recall against exact search, graph invariants, what optimisation buys, the CLI, and
//! bad parameters.

use crate::common::*;
use vecbuild::artifact::IndexKind;
use vecbuild::backend::CpuBackend;
use vecbuild::index::cagra::hierarchy::Hierarchy;
use vecbuild::index::cagra::{self, optimize, BuildAlgo, CagraParams, Graph, SearchCodes};
use vecbuild::search::cagra::{CagraIndex, CagraSearchParams};
use vecbuild::Metric;

fn check_invariants(g: &Graph, n: usize, what: &str) {
    assert_eq!(g.neighbors.len(), n * g.degree, "{what}: fixed degree");
    for r in 0..n {
        let row = g.row(r);
        assert!(
            row.iter().all(|&v| (v as usize) < n),
            "{what}: row {r} has an empty or out-of-range slot: {row:?}"
        );
        assert!(
            !row.contains(&(r as u32)),
            "{what}: row {r} links to itself"
        );
        let mut sorted = row.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            g.degree,
            "{what}: row {r} has duplicate edges"
        );
    }
}

/// Builds a CAGRA index with `params` on the CPU and writes its artifact.
fn build_and_write(
    path: &std::path::Path,
    base: ndarray::ArrayView2<'_, f32>,
    metric: Metric,
    ids: &vecbuild::Ids,
    params: &CagraParams,
) -> cagra::Cagra {
    let index = cagra::build(&CpuBackend, base, metric, params, &|_, _| {}).unwrap();
    let mut manifest = manifest(IndexKind::Cagra, metric, base.nrows(), base.ncols());
    manifest.params = serde_json::json!({ "cagra": params });
    cagra::write(path, &index, base, ids, params.search_codes, manifest).unwrap();
    index
}

#[test]
fn default_search_reaches_recall_095_for_every_metric() {
    let data = vecbuild::synth::clustered(12_000, 300, 32, 40, 5);
    for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
        let mut base = data.base.clone();
        if metric.normalizes() {
            vecbuild::metric::normalize_rows(base.view_mut());
        }
        let dir = tmp();
        let path = dir.path().join("c.vbx");
        let ids = vecbuild::Ids::Int64((0..base.nrows() as i64).collect());
        build_and_write(&path, base.view(), metric, &ids, &CagraParams::default());
        let searcher = vecbuild::Searcher::open(&path).unwrap();
        let got = searcher
            .search(data.queries.view(), 10, &Default::default())
            .unwrap();
        let want = truth(&data.base, &data.queries, metric, 10);
        // Stored rows are in graph order; the ids (here the input row numbers) map them back.
        let stored_ids = searcher.ids();
        let rows = got.rows.mapv(|r| match stored_ids.get(r as usize) {
            vecbuild::ids::IdRef::Int64(v) => v as u64,
            other => panic!("unexpected id {other:?}"),
        });
        let r = recall(rows.view(), want.view());
        assert!(
            r >= 0.95,
            "recall@10 {r:.4} < 0.95 for {metric} at default search params"
        );
    }
}

#[test]
fn every_builder_gives_a_fixed_degree_graph_reachable_from_its_entry_points() {
    let data = vecbuild::synth::clustered(3_000, 0, 16, 30, 9);
    for algo in [BuildAlgo::Exact, BuildAlgo::Ivf, BuildAlgo::NnDescent] {
        let params = CagraParams {
            graph_degree: 16,
            intermediate_graph_degree: 32,
            build_algo: algo,
            ..Default::default()
        };
        let index = cagra::build(
            &CpuBackend,
            data.base.view(),
            Metric::L2,
            &params,
            &|_, _| {},
        )
        .unwrap();
        let what = format!("{algo:?}");
        check_invariants(&index.graph, 3_000, &what);
        let seen = optimize::reachable(&index.graph, &index.entry_points);
        let missed = seen.iter().filter(|s| !**s).count();
        assert_eq!(
            missed, 0,
            "{what}: {missed} rows unreachable from the entry points"
        );
        assert!(
            index.stats.knn_graph_recall >= 0.9,
            "{what}: kNN graph recall {:.4} < 0.9",
            index.stats.knn_graph_recall
        );
        // The kNN stage's parts, in order, within its time.
        let s = &index.stats;
        let names: Vec<&str> = s.knn_graph_parts.iter().map(|p| p.0.as_str()).collect();
        let want: &[&str] = match algo {
            BuildAlgo::Exact => &[],
            BuildAlgo::Ivf => &[
                "exact sample",
                "partition",
                "join",
                "neighbours of neighbours",
            ],
            _ => &["exact sample", "nn-descent"],
        };
        assert_eq!(names, want, "{what}");
        let names: Vec<&str> = s.optimize_parts.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "rank-based pruning",
                "reverse edges",
                "merge",
                "entry point",
                "upper levels",
                "upper links shared",
                "connectivity (checked on the host)",
                "short rows filled"
            ],
            "{what}"
        );
        let parts: f64 = s.optimize_parts.iter().map(|p| p.1).sum();
        assert!(
            parts <= s.optimize_seconds + 1e-3,
            "{what}: {:?} beyond {} s",
            s.optimize_parts,
            s.optimize_seconds
        );
        let sum: f64 = s.knn_graph_parts.iter().map(|p| p.1).sum();
        assert!(
            s.knn_graph_parts.iter().all(|p| p.1 >= 0.0) && sum <= s.knn_graph_seconds + 1e-3,
            "{what}: parts {:?} beyond the stage's {} s",
            s.knn_graph_parts,
            s.knn_graph_seconds
        );
    }
}

/// The CPU's stages behind a backend that names a device: `cagra::build` then builds the
/// upper levels on a thread of their own while the graph stages run, as it does beside a GPU.
struct NamedDevice;

impl vecbuild::backend::Backend for NamedDevice {
    fn name(&self) -> String {
        "cpu (as a device)".into()
    }
    fn device_name(&self) -> Option<String> {
        Some("the host".into())
    }
    fn knn_block(
        &self,
        queries: vecbuild::backend::Queries<'_>,
        base: ndarray::ArrayView2<'_, f32>,
        base_sq_norms: &[f32],
        first_row: u64,
        topk: &mut [vecbuild::TopK],
    ) -> vecbuild::Result<()> {
        CpuBackend.knn_block(queries, base, base_sq_norms, first_row, topk)
    }
    fn optimize_graph(
        &self,
        knn: &Graph,
        d_out: usize,
        order: &[u32],
        laps: &mut vecbuild::laps::Laps,
    ) -> vecbuild::Result<Graph> {
        CpuBackend.optimize_graph(knn, d_out, order, laps)
    }
    fn assign_nearest(
        &self,
        data: ndarray::ArrayView2<'_, f32>,
        centroids: ndarray::ArrayView2<'_, f32>,
    ) -> vecbuild::Result<(Vec<u32>, Vec<f32>)> {
        CpuBackend.assign_nearest(data, centroids)
    }
}

#[test]
fn upper_levels_built_beside_the_graph_stages_equal_those_built_after_them() {
    use vecbuild::backend::Backend;
    let data = vecbuild::synth::clustered(4_000, 0, 16, 30, 5);
    for metric in [Metric::L2, Metric::InnerProduct] {
        let params = CagraParams {
            graph_degree: 16,
            intermediate_graph_degree: 32,
            ..Default::default()
        };
        let after = cagra::build(&CpuBackend, data.base.view(), metric, &params, &|_, _| {});
        let beside = cagra::build(&NamedDevice, data.base.view(), metric, &params, &|_, _| {});
        let (after, beside) = (after.unwrap(), beside.unwrap());
        assert!(NamedDevice.device_name().is_some() && CpuBackend.device_name().is_none());
        assert!(
            !after.hierarchy.rows.is_empty(),
            "{metric}: no upper levels to compare"
        );
        assert_eq!(after.hierarchy, beside.hierarchy, "{metric}");
        assert_eq!(after.graph, beside.graph, "{metric}");
        assert_eq!(after.entry_points, beside.entry_points, "{metric}");
    }
}

#[test]
fn optimisation_improves_recall_per_visited_row_over_the_raw_knn_graph() {
    // Overlapping clusters, so the raw kNN graph is connected and the comparison is fair.
    let mut data = vecbuild::synth::clustered(8_000, 400, 24, 4, 13);
    data.base.mapv_inplace(|v| v * 0.5);
    data.queries.mapv_inplace(|v| v * 0.5);
    let base = data.base.view();
    let norms = vecbuild::metric::squared_norms(base);
    let degree = 16;
    let knn = cagra::knn_graph::exact(&CpuBackend, base, &norms, Metric::L2, 2 * degree, &|_| {})
        .unwrap();
    let raw = Graph {
        degree,
        neighbors: knn
            .neighbors
            .chunks(2 * degree)
            .flat_map(|r| r[..degree].to_vec())
            .collect(),
    };
    let pruned = optimize::prune(&knn, degree);
    let optimised = optimize::merge(&pruned, &optimize::reverse_edges(&pruned));
    check_invariants(&optimised, 8_000, "optimised");
    let want = truth(&data.base, &data.queries, Metric::L2, 10);
    let entry = [0u32];
    let measure = |g: &Graph, itopk_size: usize| {
        let index = CagraIndex {
            metric: Metric::L2,
            vectors: base,
            sq_norms: &norms,
            graph: &g.neighbors,
            degree,
            entry_points: &entry,
            random_seeds: true,
            codes: None,
            hierarchy: None,
        };
        let p = CagraSearchParams {
            itopk_size,
            ..Default::default()
        };
        let (res, stats) = index.search(data.queries.view(), 10, &p).unwrap();
        let r = recall(res.rows.view(), want.view());
        (r, stats.distances as f64 / 400.0)
    };
    // Equal work: the raw graph gets the narrowest beam that spends at least as many distances
    // per query as the optimised graph at itopk 32, and must still find less.
    let (opt_recall, opt_cost) = measure(&optimised, 32);
    let (w, (raw_recall, raw_cost)) = [32usize, 40, 48, 56, 64, 80, 96, 128, 192, 256]
        .iter()
        .map(|&w| (w, measure(&raw, w)))
        .find(|(_, (_, cost))| *cost >= opt_cost)
        .expect("a wide enough beam costs as much");
    assert!(
        opt_recall > raw_recall,
        "optimised graph: recall@10 {opt_recall:.4} at {opt_cost:.0} distances per query (itopk 32); raw kNN graph: {raw_recall:.4} at {raw_cost:.0} (itopk {w})"
    );
    eprintln!("optimised graph: recall@10 {opt_recall:.4} at {opt_cost:.0} distances per query; raw kNN graph: {raw_recall:.4} at {raw_cost:.0} (itopk {w})");
}

#[test]
fn cli_builds_searches_tunes_and_explains_bad_parameters() {
    let dir = tmp();
    let d = dir.path();
    generate_dataset(d, 6_000, 24, 30, 200);
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
            "build",
            "--input",
            "b.parquet",
            "--index",
            "cagra",
            "--out",
            "c.vbx",
        ],
    );
    let search = [
        "search",
        "--index",
        "c.vbx",
        "--queries",
        "q.parquet",
        "--k",
        "10",
        "--out",
        "r.parquet",
    ];
    ok(d, &search);
    let r = eval_json(d)["recall"].as_f64().unwrap();
    assert!(r >= 0.95, "CLI recall@10 {r:.4} < 0.95");
    ok(d, &[&search[..], &["--exact-walk"]].concat());
    let exact = eval_json(d)["recall"].as_f64().unwrap();
    assert!(
        exact >= 0.95 && (exact - r).abs() <= 0.01,
        "recall@10 walking on codes {r:.4}, on vectors {exact:.4}"
    );
    let table = ok(d, &["tune", "--index", "c.vbx", "--target-recall", "0.9"]);
    assert!(table.contains("← chosen"), "{table}");
    let m: serde_json::Value = serde_json::from_str(&ok(d, &["info", "c.vbx", "--json"])).unwrap();
    assert!(
        m["search_defaults"]["itopk_size"].as_u64().is_some(),
        "{}",
        m["search_defaults"]
    );
    assert!(
        m["params"]["cagra_stats"]["knn_graph_recall"]
            .as_f64()
            .unwrap()
            > 0.9
    );

    let cases: [(&[&str], &str); 4] = [
        (&["--search-codes", "pq"], "possible values: sq8, none"),
        (
            &["--graph-degree", "64", "--intermediate-graph-degree", "32"],
            "exceeds intermediate_graph_degree",
        ),
        (&["--graph-degree", "4000"], "graph_degree = 4000"),
        (
            &[
                "--graph-degree",
                "4000",
                "--intermediate-graph-degree",
                "6000",
            ],
            "graph_degree = 4000",
        ),
    ];
    for (opts, message) in cases {
        let mut args = vec![
            "build",
            "--input",
            "b.parquet",
            "--index",
            "cagra",
            "--out",
            "bad.vbx",
        ];
        args.extend_from_slice(opts);
        let out = run(d, &args);
        assert_eq!(out.code, 2, "{opts:?}: {}", out.stderr);
        assert!(out.stderr.contains(message), "{opts:?}: {}", out.stderr);
        assert!(!d.join("bad.vbx").exists());
    }
    // Degree at least the row count.
    ok(
        d,
        &[
            "generate",
            "--rows",
            "50",
            "--dim",
            "8",
            "--out",
            "s.parquet",
        ],
    );
    refused(
        d,
        &[
            "build",
            "--input",
            "s.parquet",
            "--index",
            "cagra",
            "--out",
            "bad.vbx",
        ],
        "needs more rows than that; the input has 50",
        "bad.vbx",
    );
    let out = run(
        d,
        &[
            "build",
            "--input",
            "b.parquet",
            "--graph-degree",
            "16",
            "--out",
            "bad.vbx",
        ],
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("need --index cagra"), "{}", out.stderr);
    let out = run(d, &[&search[..], &["--itopk-size", "5"]].concat());
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("itopk_size = 5 must be at least k = 10"),
        "{}",
        out.stderr
    );
}

#[test]
fn stored_rows_are_the_input_rows_in_graph_order_with_everything_relabelled() {
    let data = vecbuild::synth::clustered(2_000, 0, 16, 20, 3);
    let base = data.base.clone();
    let dir = tmp();
    let path = dir.path().join("c.vbx");
    let ids = vecbuild::Ids::Int64((0..base.nrows() as i64).map(|i| 1000 + i).collect());
    let index = build_and_write(
        &path,
        base.view(),
        Metric::L2,
        &ids,
        &CagraParams::default(),
    );
    let a = vecbuild::artifact::Artifact::open(&path).unwrap();
    let n = base.nrows();
    let input: Vec<usize> = a
        .input_rows()
        .unwrap()
        .expect("a CAGRA artifact records its row order")
        .iter()
        .map(|&r| r as usize)
        .collect();
    let mut sorted = input.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
    assert_ne!(
        input,
        (0..n).collect::<Vec<_>>(),
        "graph order, not input order"
    );
    let dt = vecbuild::artifact::container::DType::U32;
    let d = index.graph.degree;
    let vectors = a
        .tensor::<f32>(
            "vectors",
            vecbuild::artifact::container::DType::F32,
            &[n, 16],
        )
        .unwrap();
    let graph = a.tensor::<u32>("graph", dt, &[n, d]).unwrap();
    let stored_ids = a.ids().unwrap();
    for (i, &r) in input.iter().enumerate() {
        assert_eq!(
            &vectors[i * 16..(i + 1) * 16],
            base.row(r).as_slice().unwrap()
        );
        assert_eq!(
            stored_ids.get(i),
            vecbuild::ids::IdRef::Int64(1000 + r as i64)
        );
        let edges: Vec<u32> = graph[i * d..(i + 1) * d]
            .iter()
            .map(|&v| input[v as usize] as u32)
            .collect();
        assert_eq!(edges, index.graph.row(r), "row {r}'s edges, relabelled");
    }
    let entries = a
        .tensor::<u32>("graph.entry_points", dt, &[index.entry_points.len()])
        .unwrap();
    let back: Vec<u32> = entries.iter().map(|&e| input[e as usize] as u32).collect();
    assert_eq!(back, index.entry_points);
    let upper = &index.hierarchy.rows;
    let stored_upper = a.tensor::<u32>("upper.rows", dt, &[upper.len()]).unwrap();
    let back: Vec<u32> = stored_upper
        .iter()
        .map(|&e| input[e as usize] as u32)
        .collect();
    assert_eq!(&back, upper);
    // Upper-level rows are stored first, in hierarchy position order.
    assert!(stored_upper
        .iter()
        .enumerate()
        .all(|(i, &r)| r as usize == i));
}

#[test]
fn the_search_walks_on_sq8_codes_and_exact_walk_matches_an_index_without_them() {
    let data = vecbuild::synth::clustered(6_000, 300, 32, 30, 21);
    let base = data.base.view();
    let dir = tmp();
    let ids = vecbuild::Ids::Int64((0..base.nrows() as i64).collect());
    let none = CagraParams {
        search_codes: SearchCodes::None,
        ..Default::default()
    };
    let (with, without) = (dir.path().join("sq8.vbx"), dir.path().join("none.vbx"));
    build_and_write(&with, base, Metric::L2, &ids, &CagraParams::default());
    build_and_write(&without, base, Metric::L2, &ids, &none);
    let a = vecbuild::artifact::Artifact::open(&with).unwrap();
    let codes = a
        .tensor::<u8>(
            "codes",
            vecbuild::artifact::container::DType::U8,
            &[6_000, 32],
        )
        .unwrap();
    assert!(codes.iter().any(|&c| c > 0) && codes.iter().any(|&c| c < 255));
    let b = vecbuild::artifact::Artifact::open(&without).unwrap();
    assert!(!b.container.tensors.contains_key("codes"));
    let (sq8, plain) = (
        vecbuild::Searcher::open(&with).unwrap(),
        vecbuild::Searcher::open(&without).unwrap(),
    );
    let q = data.queries.view();
    let walked = sq8.search(q, 10, &Default::default()).unwrap();
    let exact = vecbuild::SearchParams {
        exact_walk: true,
        ..Default::default()
    };
    // The same graph: walking on the vectors is the search of the index without codes.
    assert_eq!(
        sq8.search(q, 10, &exact).unwrap(),
        plain.search(q, 10, &Default::default()).unwrap()
    );
    let want = truth(&data.base, &data.queries, Metric::L2, 10);
    let input_of = |r: &vecbuild::SearchResults, s: &vecbuild::Searcher| {
        r.rows.mapv(|row| match s.ids().get(row as usize) {
            vecbuild::ids::IdRef::Int64(v) => v as u64,
            other => panic!("unexpected id {other:?}"),
        })
    };
    let plain_r = plain.search(q, 10, &Default::default()).unwrap();
    let (r_codes, r_plain) = (
        recall(input_of(&walked, &sq8).view(), want.view()),
        recall(input_of(&plain_r, &plain).view(), want.view()),
    );
    assert!(
        r_codes >= 0.95 && r_codes >= r_plain - 0.01,
        "recall@10 walking on codes {r_codes:.4}, on vectors {r_plain:.4}"
    );
    // Distances are exact (re-ranked on the vectors), not the codes' approximations.
    let rows = input_of(&walked, &sq8);
    for (i, (found, dist)) in rows
        .outer_iter()
        .zip(walked.distances.outer_iter())
        .enumerate()
    {
        for (&r, &d) in found.iter().zip(dist.iter()) {
            let exact: f32 = data
                .queries
                .row(i)
                .iter()
                .zip(data.base.row(r as usize))
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            assert!(
                (d - exact).abs() <= 1e-3 * exact.max(1.0),
                "query {i}: {d} vs {exact}"
            );
        }
    }
}

#[test]
fn inner_product_graphs_reach_every_row_from_one_entry_point() {
    // Uniform positive rows: their inner-product neighbours are the few largest-norm rows, so a
    // graph of them leaves many rows unreachable (1,803 entry points here, each scored by every
    // query, before graphs were built on lifted rows). Built on lifted rows it is a proximity
    // graph.
    let mut rng = vecbuild::synth::Rng::new(17);
    let base = ndarray::Array2::from_shape_fn((20_000, 64), |_| rng.uniform() as f32);
    let queries = ndarray::Array2::from_shape_fn((100, 64), |_| rng.uniform() as f32);
    let dir = tmp();
    let path = dir.path().join("ip.vbx");
    let ids = vecbuild::Ids::Int64((0..20_000).collect());
    let index = build_and_write(
        &path,
        base.view(),
        Metric::InnerProduct,
        &ids,
        &CagraParams::default(),
    );
    assert_eq!(
        index.entry_points.len(),
        1,
        "{:?}",
        &index.entry_points[..10.min(index.entry_points.len())]
    );
    check_invariants(&index.graph, 20_000, "inner product");
    let searcher = vecbuild::Searcher::open(&path).unwrap();
    let got = searcher
        .search(queries.view(), 10, &Default::default())
        .unwrap();
    let rows = got.rows.mapv(|r| match searcher.ids().get(r as usize) {
        vecbuild::ids::IdRef::Int64(v) => v as u64,
        other => panic!("unexpected id {other:?}"),
    });
    let want = truth(&base, &queries, Metric::InnerProduct, 10);
    let r = recall(rows.view(), want.view());
    assert!(r >= 0.95, "inner-product recall@10 {r:.4}");
}

/// Upper levels keep `2 · graph_degree` links per row (not HNSW's `M = graph_degree / 2`): the
/// level-1 beam then finds the query's cluster more often (here, 1000 overlapping clusters, at
/// itopk 10). Artifacts of earlier versions, with `graph_degree` or `M` links, still load,
/// search and export with their own counts.
#[test]
fn upper_levels_keep_twice_graph_degree_links_and_earlier_artifacts_still_load() {
    let data = vecbuild::synth::clustered_with_spread(60_000, 400, 128, 1000, 0.6, 13);
    let base = data.base.view();
    let dir = tmp();
    let ids = vecbuild::Ids::Int64((0..base.nrows() as i64).collect());
    let params = CagraParams::default();
    let wide = dir.path().join("wide.vbx");
    let mut index = build_and_write(&wide, base, Metric::L2, &ids, &params);
    let d = params.graph_degree;
    let h = index.hierarchy.clone();
    assert_eq!(h.m, 2 * d, "links per upper-level row");
    assert!(!h.counts.is_empty() && h.graph.len() == 2 * d * h.counts.iter().sum::<u32>() as usize);
    // Its level-1 beam is half of itopk wide; earlier layouts' keeps all of it.
    assert_eq!(h.view().level1_width(16, d), 8);
    let earlier = Hierarchy { m: d, ..h.clone() };
    assert_eq!(earlier.view().level1_width(16, d), 16);
    let mut manifest = manifest(IndexKind::Cagra, Metric::L2, base.nrows(), base.ncols());
    manifest.params = serde_json::json!({ "cagra": params });
    // The layouts earlier versions stored: `graph_degree` and `M` links per row (here the
    // first of each of the same lists, so the artifacts differ only in the links kept).
    let mut narrowed = Vec::new();
    for m in [d, d / 2] {
        let path = dir.path().join(format!("upper{m}.vbx"));
        index.hierarchy.graph = h
            .graph
            .chunks(2 * d)
            .flat_map(|l| l[..m].to_vec())
            .collect();
        index.hierarchy.m = m;
        cagra::write(
            &path,
            &index,
            base,
            &ids,
            params.search_codes,
            manifest.clone(),
        )
        .unwrap();
        narrowed.push((path, m));
    }
    // A list count that does not divide the links is refused, naming the tensor.
    let bad = dir.path().join("bad.vbx");
    index.hierarchy.graph.pop();
    cagra::write(&bad, &index, base, &ids, params.search_codes, manifest).unwrap();
    let err = vecbuild::Searcher::open(&bad).err().map(|e| e.to_string());
    assert!(
        err.as_ref().is_some_and(|e| e.contains("upper.graph")),
        "{err:?}"
    );

    let want = truth(&data.base, &data.queries, Metric::L2, 10);
    let search = |path: &std::path::Path| {
        let searcher = vecbuild::Searcher::open(path).unwrap();
        let p = vecbuild::search::SearchParams {
            itopk_size: Some(10),
            ..Default::default()
        };
        let got = searcher.search(data.queries.view(), 10, &p).unwrap();
        let stored_ids = searcher.ids();
        let rows = got.rows.mapv(|r| match stored_ids.get(r as usize) {
            vecbuild::ids::IdRef::Int64(v) => v as u64,
            other => panic!("unexpected id {other:?}"),
        });
        recall(rows.view(), want.view())
    };
    let r_wide = search(&wide);
    let r: Vec<f64> = narrowed.iter().map(|(p, _)| search(p)).collect();
    assert!(
        r[1] > 0.5 && r_wide > r[0] && r_wide > r[1] + 0.05,
        "recall@10 at itopk 10: {r_wide:.4} with {} upper links, {:.4} with {d}, {:.4} with {}",
        2 * d,
        r[0],
        r[1],
        d / 2
    );

    // The build shares up to `M` level-1 links on level 0; the exports add up to
    // `graph_degree` in all, and give the other rows their hub's.
    for (path, upper) in [(&wide, 2 * d)]
        .into_iter()
        .chain(narrowed.iter().map(|(p, m)| (p, *m)))
    {
        let m0 = check_hnswlib_export(path, d, upper, 128);
        assert!(m0 > d && m0 <= d + upper.min(d), "{m0} level-0 slots");
    }
}

/// Exports the CAGRA artifact at `path` (graph degree `d`, `upper` links per upper-level row,
/// `dim` dimensions) to hnswlib and checks the file's header — maxM_ (upper links), maxM0_
/// (level 0), M_ (the level distribution's) — and every row's level-0 list: its CAGRA links,
/// then those of the first `d` level-1 links not among them (as row numbers) of the row itself
/// where it is on level ≥ 1, else of the first row of its CAGRA list that is, the row left
/// out; maxM0_ is the longest list. Returns maxM0_.
fn check_hnswlib_export(path: &std::path::Path, d: usize, upper: usize, dim: usize) -> usize {
    let out = path.with_extension("hnsw");
    let a = vecbuild::artifact::Artifact::open(path).unwrap();
    vecbuild::export::hnswlib::export(&a, &out).unwrap();
    let u32s = |name: &str| {
        let dt = vecbuild::artifact::container::DType::U32;
        a.container.slice::<u32>(name, dt).unwrap().0.to_vec()
    };
    let (graph, rows, level1) = (u32s("graph"), u32s("upper.rows"), u32s("upper.graph"));
    let level1_count = u32s("upper.counts")[0] as usize;
    let mut level1_links = std::collections::HashMap::new();
    for (p, &r) in rows.iter().enumerate().take(level1_count) {
        let links: Vec<u32> = level1[p * upper..(p + 1) * upper]
            .iter()
            .take_while(|&&q| q != u32::MAX)
            .map(|&q| rows[q as usize])
            .collect();
        level1_links.insert(r, links);
    }
    let mut want: Vec<Vec<u32>> = graph.chunks(d).map(|l| l.to_vec()).collect();
    for (r, list) in want.iter_mut().enumerate() {
        let own = list.clone();
        let hub = match level1_links.contains_key(&(r as u32)) {
            true => Some(r as u32),
            false => own.iter().copied().find(|v| level1_links.contains_key(v)),
        };
        if let Some(hub) = hub {
            let added = level1_links[&hub]
                .iter()
                .take(d)
                .filter(|&&v| v != r as u32 && !own.contains(&v));
            list.extend(added);
        }
    }
    let m0 = want.iter().map(Vec::len).max().unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(
        (u64_at(56), u64_at(64), u64_at(72)),
        (upper as u64, m0 as u64, d as u64 / 2),
        "{}",
        path.display()
    );
    let per_row = u64_at(24) as usize;
    assert_eq!(per_row, 4 + 4 * m0 + 4 * dim + 8);
    for (r, links) in want.iter().enumerate() {
        let at = 96 + r * per_row;
        let count = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
        let got: Vec<u32> = bytes[at + 4..at + 4 + 4 * count]
            .chunks(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(&got, links, "row {r} on level 0 of {}", path.display());
    }
    m0
}

/// Tight clusters far apart, each too small to be sure of a row on level 1 (20 rows, where
/// one row in 4 draws a level ≥ 1 at graph degree 8), their kNN lists inside them: nothing
/// leads into those without one, and the level-1 search of a query there ends in other
/// clusters. The build gives each such island a level-1 row (without it, here, some cluster
/// has none), and every query finds its own cluster.
#[test]
fn islands_without_a_level_1_row_get_one_and_their_queries_are_found() {
    let data = vecbuild::synth::clustered_with_spread(1000, 500, 16, 50, 0.05, 1);
    let dir = tmp();
    let path = dir.path().join("c.vbx");
    let ids = vecbuild::Ids::Int64((0..1000).collect());
    let params = CagraParams {
        build_algo: BuildAlgo::Exact,
        graph_degree: 8,
        intermediate_graph_degree: 16,
        ..Default::default()
    };
    let index = build_and_write(&path, data.base.view(), Metric::L2, &ids, &params);
    let parts: Vec<&str> = index
        .stats
        .optimize_parts
        .iter()
        .map(|p| p.0.as_str())
        .collect();
    assert!(
        parts.contains(&"islands given level-1 rows"),
        "no island without a level-1 row: the test needs one ({parts:?})"
    );
    // Every cluster (rows within 1.0 of each other here: the centres are ~5.6 apart, the
    // rows ~0.28 from theirs) holds a row of the upper levels.
    let upper: std::collections::HashSet<u32> = index.hierarchy.rows.iter().copied().collect();
    let base = &data.base;
    let near = |a: usize, b: usize| -> bool {
        let d: f32 = (0..16).map(|j| (base[[a, j]] - base[[b, j]]).powi(2)).sum();
        d < 1.0
    };
    for r in 0..1000 {
        assert!(
            upper.iter().any(|&u| near(r, u as usize)),
            "row {r}: no upper-level row in its cluster"
        );
    }
    let searcher = vecbuild::Searcher::open(&path).unwrap();
    let p = vecbuild::search::SearchParams {
        itopk_size: Some(16),
        ..Default::default()
    };
    let got = searcher.search(data.queries.view(), 10, &p).unwrap();
    let rows = got.rows.mapv(|r| match searcher.ids().get(r as usize) {
        vecbuild::ids::IdRef::Int64(v) => v as u64,
        other => panic!("unexpected id {other:?}"),
    });
    let want = truth(&data.base, &data.queries, Metric::L2, 10);
    let lost = (0..500)
        .filter(|&q| {
            rows.row(q)
                .iter()
                .all(|r| !want.row(q).iter().any(|w| w == r))
        })
        .count();
    assert_eq!(lost, 0, "queries none of whose 10 nearest rows were found");
    let r = recall(rows.view(), want.view());
    assert!(r >= 0.99, "recall@10 {r:.4}");
}
