//! The command line end to end: generate → build → knn → search → eval, string ids, errors.

use crate::common::*;
use vecbuild::io::parquet::read_results;
use vecbuild::Ids;

#[test]
fn build_search_knn_eval_end_to_end() {
    let dir = tmp();
    let d = dir.path();
    ok(
        d,
        &[
            "generate",
            "--rows",
            "5000",
            "--dim",
            "32",
            "--clusters",
            "50",
            "--out",
            "base.parquet",
            "--queries",
            "200",
            "--queries-out",
            "q.parquet",
        ],
    );
    for metric in ["l2", "ip", "cosine"] {
        ok(
            d,
            &[
                "build",
                "--input",
                "base.parquet",
                "--metric",
                metric,
                "--out",
                "i.vbx",
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
                "--out",
                "r.parquet",
            ],
        );
        ok(
            d,
            &[
                "knn",
                "--base",
                "base.parquet",
                "--queries",
                "q.parquet",
                "--k",
                "100",
                "--metric",
                metric,
                "--out",
                "t.parquet",
            ],
        );
        let v = eval_json(d);
        assert_eq!(v["queries"], 200);
        // The flat index is exact: it must agree with knn up to exact ties.
        assert!(
            v["recall"].as_f64().unwrap() >= 0.999,
            "{metric}: flat recall@10 {}",
            v["recall"]
        );
        let r = read_results(&d.join("r.parquet")).unwrap();
        assert_eq!(
            r.query_ids,
            Ids::Int64((0..200).collect()),
            "one row per query, in query order"
        );
        assert_eq!(r.offsets.len(), 201);
        assert_eq!(r.offsets[200], 2000);
        let dists = &r.distances[..10];
        let sorted = match metric {
            "ip" => dists.windows(2).all(|w| w[0] >= w[1]),
            _ => dists.windows(2).all(|w| w[0] <= w[1]),
        };
        assert!(sorted, "{metric}: distances best first: {dists:?}");
    }
    let table = ok(
        d,
        &[
            "eval",
            "--results",
            "r.parquet",
            "--truth",
            "t.parquet",
            "--k",
            "10",
        ],
    );
    assert!(
        table.contains("recall@k") && table.contains("200"),
        "{table}"
    );
    let info = ok(d, &["info", "i.vbx"]);
    assert!(
        info.contains("5000 × 32")
            && info.contains("cosine")
            && info.contains("checksums verified"),
        "{info}"
    );
}

#[test]
fn string_ids_come_back_in_results() {
    let dir = tmp();
    let d = dir.path();
    let n = 500;
    let base = data(n, 8, 11);
    let names: Vec<String> = (0..n).map(|i| format!("doc-{i:04}")).collect();
    write_parquet(
        &d.join("b.parquet"),
        vec![
            ("id", strings(&names)),
            ("emb", fsl_f32(&base, 8, "element", &[])),
        ],
        100,
    );
    // Queries are base rows 3 and 77 with string query ids.
    let mut q = base[3 * 8..4 * 8].to_vec();
    q.extend_from_slice(&base[77 * 8..78 * 8]);
    write_parquet(
        &d.join("q.parquet"),
        vec![
            ("id", strings(&["first".into(), "second".into()])),
            ("emb", fsl_f32(&q, 8, "item", &[])),
        ],
        100,
    );
    ok(d, &["build", "--input", "b.parquet", "--out", "b.vbx"]);
    ok(
        d,
        &[
            "search",
            "--index",
            "b.vbx",
            "--queries",
            "q.parquet",
            "--k",
            "5",
            "--out",
            "r.parquet",
        ],
    );
    let r = read_results(&d.join("r.parquet")).unwrap();
    assert_eq!(r.query_ids, Ids::from_strings(&["first", "second"]));
    let v = r.neighbors.view();
    assert_eq!(
        v.get(0).to_string(),
        "\"doc-0003\"",
        "a base row is its own nearest neighbour"
    );
    assert_eq!(v.get(5).to_string(), "\"doc-0077\"");
    assert!(
        r.distances[0].abs() < 1e-4,
        "self distance {}",
        r.distances[0]
    );
}

#[test]
fn npy_and_fvecs_inputs_work_end_to_end() {
    let dir = tmp();
    let d = dir.path();
    ok(
        d,
        &[
            "generate",
            "--rows",
            "1000",
            "--dim",
            "16",
            "--out",
            "b.npy",
            "--queries",
            "10",
            "--queries-out",
            "q.fvecs",
        ],
    );
    ok(d, &["build", "--input", "b.npy", "--out", "b.vbx"]);
    ok(
        d,
        &[
            "search",
            "--index",
            "b.vbx",
            "--queries",
            "q.fvecs",
            "--k",
            "3",
            "--out",
            "r.parquet",
        ],
    );
    let r = read_results(&d.join("r.parquet")).unwrap();
    assert_eq!(r.offsets.len(), 11);
}

#[test]
fn usage_errors_exit_2_and_k_is_checked() {
    let dir = tmp();
    let d = dir.path();
    assert_eq!(run(d, &["build"]).code, 2, "missing arguments");
    assert_eq!(run(d, &["frobnicate"]).code, 2, "unknown command");
    ok(
        d,
        &[
            "generate",
            "--rows",
            "50",
            "--dim",
            "4",
            "--out",
            "b.parquet",
            "--queries",
            "5",
            "--queries-out",
            "q.parquet",
        ],
    );
    ok(d, &["build", "--input", "b.parquet", "--out", "b.vbx"]);
    let out = run(
        d,
        &[
            "search",
            "--index",
            "b.vbx",
            "--queries",
            "q.parquet",
            "--k",
            "51",
            "--out",
            "r.parquet",
        ],
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--k 51"), "{}", out.stderr);
    let out = run(
        d,
        &[
            "search",
            "--index",
            "missing.vbx",
            "--queries",
            "q.parquet",
            "--out",
            "r.parquet",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("missing.vbx"), "{}", out.stderr);
    for spread in ["0", "-1", "NaN"] {
        let spread = format!("--spread={spread}");
        let out = run(
            d,
            &["generate", "--rows", "5", &spread, "--out", "s.parquet"],
        );
        assert_eq!(out.code, 2, "--spread {spread}: {}", out.stderr);
        assert!(out.stderr.contains("--spread"), "{}", out.stderr);
        assert!(
            !d.join("s.parquet").exists(),
            "--spread {spread} wrote a file"
        );
    }
}

#[test]
fn bench_knn_reports_its_runs_and_held_needs_a_gpu() {
    let dir = tmp();
    let d = dir.path();
    generate_dataset(d, 300, 8, 4, 20);
    let args = [
        "bench-knn",
        "--base",
        "b.parquet",
        "--queries",
        "q.parquet",
        "--k",
        "5",
        "--runs",
        "3",
    ];
    let report: serde_json::Value = serde_json::from_str(ok(d, &args).trim()).unwrap();
    assert_eq!(report["backend"], "cpu", "{report}");
    assert_eq!(
        (report["queries"].clone(), report["rows"].clone()),
        (20.into(), 300.into())
    );
    assert_eq!(
        (report["runs"].clone(), report["held"].clone()),
        (3.into(), false.into())
    );
    let (median, fastest) = (report["median_s"].as_f64(), report["fastest_s"].as_f64());
    assert!(
        fastest.is_some_and(|f| f > 0.0 && median.is_some_and(|m| m >= f)),
        "{report}"
    );
    assert!(report["load_s"].is_null(), "{report}");
    let held = run(d, &[&args[..], &["--held"]].concat());
    assert_eq!(held.code, 2, "{}", held.stderr);
    assert!(
        held.stderr.contains("--held") && held.stderr.contains("--gpu"),
        "{}",
        held.stderr
    );
}

#[test]
fn dash_q_means_quiet_in_every_command() {
    let dir = tmp();
    let d = dir.path();
    generate_dataset(d, 200, 4, 2, 3);
    for args in [
        &[
            "knn",
            "-q",
            "--base",
            "b.parquet",
            "--queries",
            "q.parquet",
            "--k",
            "2",
            "--out",
            "t.parquet",
        ][..],
        &["build", "-q", "--input", "b.parquet", "--out", "x.vbx"],
        &[
            "search",
            "-q",
            "--index",
            "x.vbx",
            "--queries",
            "q.parquet",
            "--k",
            "2",
            "--out",
            "r.parquet",
        ],
    ] {
        let out = run(d, args);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        assert!(out.stderr.is_empty(), "{args:?} printed: {}", out.stderr);
    }
}

#[test]
fn dry_run_plans_each_build_and_writes_nothing() {
    let dir = tmp();
    let d = dir.path();
    generate_dataset(d, 3000, 16, 20, 10);
    let before = listing(d);
    let build = |input: &'static str, index: &'static str, dry: bool| {
        let mut args = vec![
            "build", "--input", input, "--index", index, "--out", "x.vbx",
        ];
        if dry {
            args.push("--dry-run");
        }
        run(d, &args)
    };
    let mut ivf_pq_plan = String::new();
    for index in ["flat", "ivf-pq", "cagra"] {
        let out = build("b.parquet", index, true);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let out = out.stdout;
        assert_eq!(listing(d), before, "a dry run wrote something");
        assert!(
            out.contains("3000 rows × 16 dims (l2) read and checked"),
            "{out}"
        );
        assert!(out.contains(&format!("index: {index}")), "{out}");
        assert!(out.contains("peak host memory: "), "{out}");
        // The vectors (3000 × 16 × 4 bytes = 187.5 KiB) are listed where a build holds them.
        if index != "ivf-pq" {
            assert!(out.contains("vectors 188 KiB"), "{out}");
        }
        // No device column without --gpu.
        assert!(!out.contains("peak device memory"), "{out}");
        if index == "ivf-pq" {
            ivf_pq_plan = out;
        }
    }
    // The parameters printed are the ones the build then records.
    assert_eq!(build("b.parquet", "ivf-pq", false).code, 0);
    let a = vecbuild::artifact::Artifact::open(d.join("x.vbx")).unwrap();
    let p = &a.manifest.params["ivf_pq"];
    let planned = format!("n_lists {}, pq_dim {},", p["n_lists"], p["pq_dim"]);
    assert!(
        ivf_pq_plan.contains(&planned),
        "{planned} not in {ivf_pq_plan}"
    );
    // Bad input fails the dry run as it would fail the build.
    std::fs::write(d.join("bad.parquet"), b"not parquet").unwrap();
    let bad = build("bad.parquet", "flat", true);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("bad.parquet"), "{}", bad.stderr);
}

#[test]
fn build_summary_says_where_the_time_went() {
    let dir = tmp();
    let d = dir.path();
    generate_dataset(d, 3000, 16, 20, 10);
    for (index, phases) in [
        ("flat", vec!["reading", "writing"]),
        ("ivf-pq", vec!["reading", "building", "writing"]),
        ("cagra", vec!["reading", "building", "writing"]),
    ] {
        let out = run(
            d,
            &[
                "build",
                "--input",
                "b.parquet",
                "--index",
                index,
                "--out",
                "x.vbx",
            ],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        let line = out
            .stderr
            .lines()
            .find(|l| l.starts_with("time: "))
            .unwrap_or_else(|| panic!("{index}: no time line in {}", out.stderr));
        let parts: Vec<(&str, f64)> = line["time: ".len()..]
            .split(", ")
            .map(|p| {
                let (name, secs) = p
                    .rsplit_once(' ')
                    .and_then(|(n, unit)| {
                        assert_eq!(unit, "s", "{line}");
                        n.rsplit_once(' ')
                    })
                    .unwrap_or_else(|| panic!("{index}: {p:?} in {line}"));
                (
                    name,
                    secs.parse::<f64>().unwrap_or_else(|_| panic!("{line}")),
                )
            })
            .collect();
        let names: Vec<&str> = parts.iter().map(|p| p.0).collect();
        assert_eq!(names, phases, "{index}: {line}");
        // The phases make up the build's time (each rounded to 10 ms).
        let total: f64 = out
            .stderr
            .lines()
            .find_map(|l| l.split(" in ").nth(1)?.split(" s → ").next()?.parse().ok())
            .unwrap_or_else(|| panic!("{index}: no build time in {}", out.stderr));
        let sum: f64 = parts.iter().map(|p| p.1).sum();
        assert!(
            sum <= total + 0.005 * parts.len() as f64 && sum >= total - 0.05,
            "{index}: phases add up to {sum} s, the build took {total} s: {}",
            out.stderr
        );
    }
}

#[test]
fn vecbuild_trace_times_a_searchs_parts_and_nothing_without_it() {
    let dir = tmp();
    let d = dir.path();
    generate_dataset(d, 3000, 16, 20, 10);
    ok(
        d,
        &[
            "build",
            "--input",
            "b.parquet",
            "--index",
            "ivf-pq",
            "--out",
            "x.vbx",
        ],
    );
    let search = |trace: bool| {
        crate::emu::set_env("VECBUILD_TRACE", trace.then_some("1"));
        let args = [
            "search",
            "--index",
            "x.vbx",
            "--queries",
            "q.parquet",
            "--k",
            "5",
            "--out",
            "r.parquet",
        ];
        let out = run(d, &args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stderr
    };
    let traced = search(true);
    for part in ["probes chosen", "lists scanned", "re-ranked and laid out"] {
        let prefix = format!("trace: ivf-pq search: {part} ");
        let ms = traced.lines().find_map(|l| {
            l.strip_prefix(&prefix)?
                .strip_suffix(" ms")?
                .parse::<f64>()
                .ok()
        });
        assert!(
            ms.is_some_and(|ms| ms >= 0.0),
            "no time for {part} in {traced}"
        );
    }
    assert!(!search(false).contains("trace:"));
}
