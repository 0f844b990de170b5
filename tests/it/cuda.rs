//! The CUDA backend: kernels compile (always, where NVRTC is installed; CI requires it), `--gpu`
//! fails clearly where there is no GPU, and GPU results equal the CPU's where there is one.

use crate::common::{generate_dataset, ok, refused, run, tmp};
use std::path::Path;
use vecbuild::io::parquet::read_results;

/// Whether `vecbuild doctor` found a usable GPU 0 (driver, libraries, kernels loaded).
fn gpu_present(dir: &Path) -> bool {
    ok(dir, &["doctor"])
        .lines()
        .any(|l| l.starts_with("gpu 0 ") && l.contains("kernels loaded ("))
}

/// True (and says so) where there is neither a usable GPU nor the CUDA emulator: the GPU tests
/// then have nothing to check. Without a GPU, the test's runs of vecbuild go to the emulator
/// (tests/emu), on the smaller data [`size`] picks.
fn no_device(dir: &Path) -> bool {
    if gpu_present(dir) {
        return false;
    }
    match crate::emu::emulator() {
        Some(emulator) => {
            crate::emu::on_emulator(emulator);
            eprintln!("no GPU here: running on the CUDA emulator (tests/emu), on small data");
            false
        }
        None => {
            eprintln!("SKIPPED: no usable GPU here and no emulator (scripts/gpu-check.sh runs the full GPU checks)");
            true
        }
    }
}

/// True (and says why) where a test that needs the emulator has nothing to check: no device
/// at all, or a real GPU, which cannot do what the test needs (`why`).
fn not_emulated(dir: &Path, why: &str) -> bool {
    if no_device(dir) {
        return true;
    }
    if !crate::emu::emulated() {
        eprintln!("SKIPPED: {why}");
        return true;
    }
    false
}

/// `gpu` on a GPU, `emulated` on the emulator (whose kernels run on host threads).
fn size(gpu: usize, emulated: usize) -> usize {
    if crate::emu::emulated() {
        emulated
    } else {
        gpu
    }
}

#[test]
fn kernels_compile_for_sm80_and_sm90_without_spills() {
    let dir = tmp();
    let out = run(dir.path(), &["doctor", "--check-kernels", "sm_80,sm_90"]);
    let required = std::env::var_os("VECBUILD_REQUIRE_NVRTC").is_some();
    if out.code != 0 && out.stderr.contains("libnvrtc.so) was not found") && !required {
        eprintln!(
            "SKIPPED: NVRTC is not installed here (CI installs it and sets VECBUILD_REQUIRE_NVRTC)"
        );
        return;
    }
    assert_eq!(
        out.code, 0,
        "kernels failed to compile or spilled: {}{}",
        out.stdout, out.stderr
    );
    for arch in ["sm_80", "sm_90"] {
        for kernel in [
            "select_topk",
            "argmin_rows",
            "assign_small",
            "to_half",
            "prune_graph",
            "reverse_count",
            "reverse_fill",
            "merge_graph",
            "refine_graph",
            "cagra_search",
            "ivf_pq_scan",
            "centroid_means",
            "pq_encode",
            "ordered_sums",
            "group_codes",
            "label_counts",
            "label_offsets",
            "label_starts",
            "label_scatter",
        ] {
            let line = out
                .stdout
                .lines()
                .find(|l| l.starts_with(arch) && l.contains(kernel))
                .unwrap_or_else(|| panic!("no report for {kernel} on {arch}:\n{}", out.stdout));
            assert!(
                line.contains(" 0 bytes spill stores, 0 bytes spill loads"),
                "{line}"
            );
        }
    }
}

#[test]
fn gpu_without_a_usable_device_is_a_clear_error_that_writes_nothing() {
    let dir = tmp();
    let d = dir.path();
    generate_dataset(d, 300, 8, 4, 5);
    let knn_99 = [
        "knn",
        "--gpu",
        "99",
        "--base",
        "b.parquet",
        "--queries",
        "q.parquet",
        "--out",
        "r.parquet",
    ];
    let out = run(d, &knn_99);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no such device") || out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
    assert!(!d.join("r.parquet").exists());
    // The device is checked before the input is read (the rest of its opening overlaps the
    // read): a bad `--gpu N` is the error, not the missing file behind it.
    let build_99 = [
        "build",
        "--gpu",
        "99",
        "--input",
        "missing.parquet",
        "--out",
        "x.vbx",
    ];
    refused(d, &build_99, "--gpu 99: ", "x.vbx");
    if !gpu_present(d) {
        let build = [
            "build",
            "--gpu",
            "0",
            "--input",
            "b.parquet",
            "--out",
            "x.vbx",
        ];
        refused(d, &build, "cannot use a GPU here", "x.vbx");
        let doctor = ok(d, &["doctor"]);
        assert!(doctor.contains("cuda libraries"), "{doctor}");
    }
    // Precision is a GPU setting: asking for it on the CPU is an error, not ignored.
    let out = run(
        d,
        &[
            "knn",
            "--gpu-precision",
            "tf32",
            "--base",
            "b.parquet",
            "--queries",
            "q.parquet",
            "--out",
            "r.parquet",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(!d.join("r.parquet").exists());
}

#[test]
fn gpu_knn_equals_the_cpu_where_a_gpu_is_present() {
    let dir = tmp();
    let d = dir.path();
    if no_device(d) {
        return;
    }
    generate_dataset(d, size(5000, 1500), 32, 20, size(200, 40));
    for metric in ["l2", "ip", "cosine"] {
        let knn = [
            "knn",
            "--base",
            "b.parquet",
            "--queries",
            "q.parquet",
            "--k",
            "20",
            "--metric",
            metric,
        ];
        on_cpu_and_gpu(d, &knn, &[], &[]);
        exact_results_agree(d, metric);
    }
}

/// Flat `search --gpu` keeps the index rows on the device for every batch of queries: the same
/// lists as the CPU's search, batch after batch.
#[test]
fn gpu_flat_search_equals_the_cpu_where_a_gpu_is_present() {
    let dir = tmp();
    let d = dir.path();
    if no_device(d) {
        return;
    }
    generate_dataset(d, size(7000, 1500), 40, 30, size(500, 40));
    for metric in ["l2", "ip", "cosine"] {
        let build = ["build", "--input", "b.parquet", "--index", "flat"];
        ok(
            d,
            &[&build[..], &["--metric", metric, "--out", "f.vbx"]].concat(),
        );
        let search = [
            "search",
            "--index",
            "f.vbx",
            "--queries",
            "q.parquet",
            "--k",
            "15",
        ];
        on_cpu_and_gpu(d, &search, &[], &["--batch-queries", "64"]);
        exact_results_agree(d, metric);
    }
}

#[test]
fn gpu_knn_across_base_tiles_equals_the_cpu_where_a_gpu_is_present() {
    let dir = tmp();
    let d = dir.path();
    if no_device(d) {
        return;
    }
    // 40,000 rows of 1024 floats: three base tiles of at most 64 MiB, each staged while the one
    // before is searched, into the pinned buffer of the tile before that; a tile's selection
    // starts from thresholds that have not yet seen the tile before it.
    let (rows, dim) = (40_000, 1024);
    assert!(rows > 2 * vecbuild::backend::base_tile_rows(dim));
    generate_dataset(d, rows, dim, 20, 12);
    for (metric, k) in [("l2", "10"), ("ip", "100")] {
        let knn = [
            "knn",
            "--base",
            "b.parquet",
            "--queries",
            "q.parquet",
            "--k",
            k,
            "--metric",
            metric,
        ];
        on_cpu_and_gpu(d, &knn, &[], &[]);
        // 1024 products per score: the GEMM's summation order reorders the rare near-tie.
        lists_agree(d, &format!("{metric}, k {k}"));
    }
}

#[test]
fn gpu_reports_and_plans_name_the_device_where_a_gpu_is_present() {
    let dir = tmp();
    let d = dir.path();
    if no_device(d) {
        return;
    }
    generate_dataset(d, 1000, 16, 5, 10);
    let doctor: serde_json::Value = serde_json::from_str(&ok(d, &["doctor", "--json"])).unwrap();
    let device = &doctor["backends"]["cuda"]["devices"][0];
    assert!(
        device["kernels"]
            .as_str()
            .is_some_and(|k| k.starts_with("loaded")),
        "{doctor}"
    );
    let bench_knn = [
        "bench-knn",
        "--gpu",
        "0",
        "--base",
        "b.parquet",
        "--queries",
        "q.parquet",
        "--runs",
        "1",
    ];
    let bench: serde_json::Value = serde_json::from_str(ok(d, &bench_knn).trim()).unwrap();
    assert_eq!(bench["backend"], "cuda:0", "{bench}");
    assert_eq!(bench["device"], device["device"]["name"], "{bench}");
    // The base held on the device across runs: its copy timed apart from the runs.
    let held = ok(d, &[&bench_knn[..], &["--held"]].concat());
    let held: serde_json::Value = serde_json::from_str(held.trim()).unwrap();
    assert_eq!(held["held"], true, "{held}");
    assert!(held["load_s"].as_f64().is_some_and(|s| s >= 0.0), "{held}");
    for index in ["ivf-pq", "cagra"] {
        let plan = ok(
            d,
            &[
                "build",
                "--gpu",
                "0",
                "--dry-run",
                "--input",
                "b.parquet",
                "--index",
                index,
                "--out",
                "x.vbx",
            ],
        );
        assert!(plan.contains("peak device memory"), "{plan}");
        assert!(!d.join("x.vbx").exists());
    }
}

/// The results in `cpu.parquet` and `gpu.parquet` are the same lists, with distances within
/// 1e-4 relative.
fn exact_results_agree(d: &Path, metric: &str) {
    results_agree(d, metric, 1.0, 1e-4);
}

/// `--gpu-precision fp16`: recall@10 against the exact CPU neighbours, and a value beyond
/// fp16's range refused by row and column (exit 2, no output).
#[test]
fn gpu_fp16_knn_keeps_recall_and_refuses_what_fp16_cannot_hold_where_a_gpu_is_present() {
    let dir = tmp();
    let d = dir.path();
    if no_device(d) {
        return;
    }
    generate_dataset(d, size(20000, 2000), 96, 50, size(300, 40));
    let common = ["--base", "b.parquet", "--queries", "q.parquet", "--k", "10"];
    ok(
        d,
        &[&["knn"][..], &common, &["--out", "t.parquet"]].concat(),
    );
    let fp16 = ["--gpu", "0", "--gpu-precision", "fp16"];
    ok(
        d,
        &[&["knn"][..], &fp16, &common, &["--out", "r.parquet"]].concat(),
    );
    let recall = crate::common::eval_json(d)["recall"].as_f64().unwrap();
    assert!(recall >= 0.95, "fp16 recall@10 {recall}");
    // Row 7 of a base holds 70000 in column 3.
    let mut rows = crate::common::data(100, 8, 3);
    rows[7 * 8 + 3] = 70000.0;
    let column = crate::common::fsl_f32(&rows, 8, "item", &[]);
    crate::common::write_parquet(&d.join("big.parquet"), vec![("embedding", column)], 50);
    let out = run(
        d,
        &[
            &["knn"][..],
            &fp16,
            &[
                "--base",
                "big.parquet",
                "--queries",
                "big.parquet",
                "--k",
                "5",
            ],
            &["--out", "x.parquet"],
        ]
        .concat(),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("row 7 column 3") && out.stderr.contains("fp16"),
        "{}",
        out.stderr
    );
    assert!(!d.join("x.parquet").exists());
}

#[test]
fn gpu_cagra_search_matches_the_cpu_where_a_gpu_is_present() {
    let dir = tmp();
    let d = dir.path();
    if no_device(d) {
        return;
    }
    generate_dataset(d, size(6000, 1500), 48, 30, size(300, 20));
    for metric in ["l2", "ip", "cosine"] {
        ok(
            d,
            &[
                "build",
                "--input",
                "b.parquet",
                "--index",
                "cagra",
                "--metric",
                metric,
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
        ];
        // The GPU walks the graph on the f32 vectors: the CPU does the same to be its oracle.
        // The same search: only the order of float additions differs.
        searches_agree(d, &search, &["--exact-walk"], metric);
    }
    // Wider beams, longer and shorter lists, a capped walk, and 64 links a row.
    ok(
        d,
        &[
            "build",
            "--input",
            "b.parquet",
            "--index",
            "cagra",
            "--graph-degree",
            "64",
            "--intermediate-graph-degree",
            "96",
            "--out",
            "c.vbx",
        ],
    );
    for params in [
        &["--k", "100", "--itopk-size", "128", "--search-width", "4"][..],
        &["--k", "50", "--itopk-size", "512", "--search-width", "2"],
        &["--k", "10", "--itopk-size", "64", "--max-iterations", "3"],
    ] {
        let search = [
            &["search", "--index", "c.vbx", "--queries", "q.parquet"][..],
            params,
        ]
        .concat();
        searches_agree(d, &search, &["--exact-walk"], &format!("{params:?}"));
    }
}

/// `vecbuild <search…> <cpu_extra…>` on the CPU and `vecbuild <search…> --gpu 0` find the same
/// lists ([`lists_agree`]).
fn searches_agree(d: &Path, search: &[&str], cpu_extra: &[&str], what: &str) {
    let gpu = on_cpu_and_gpu(d, search, cpu_extra, &[]);
    lists_agree(d, &format!("{what}: {gpu}"));
}

/// Runs `vecbuild <args…> <cpu_extra…> --out cpu.parquet`, then `vecbuild <args…> --gpu 0
/// <gpu_extra…> --out gpu.parquet`; returns the GPU run's summary (stderr).
fn on_cpu_and_gpu(d: &Path, args: &[&str], cpu_extra: &[&str], gpu_extra: &[&str]) -> String {
    ok(d, &[args, cpu_extra, &["--out", "cpu.parquet"]].concat());
    succeeds(
        d,
        &[args, &["--gpu", "0"], gpu_extra, &["--out", "gpu.parquet"]].concat(),
    )
}

/// Runs `vecbuild <args>`, asserts it succeeded and returns its summary (stderr).
fn succeeds(d: &Path, args: &[&str]) -> String {
    let out = run(d, args);
    assert_eq!(out.code, 0, "vecbuild {args:?} failed: {}", out.stderr);
    out.stderr
}

/// The results in `cpu.parquet` and `gpu.parquet` are the same lists but for the rare near-tie
/// that float rounding orders differently, with the same distances where they agree.
fn lists_agree(d: &Path, what: &str) {
    results_agree(d, what, 0.98, 1e-3);
}

/// At least `share` of the result slots in `cpu.parquet` and `gpu.parquet` hold the same
/// neighbour, with distances within `tolerance` relative where they do.
fn results_agree(d: &Path, what: &str, share: f64, tolerance: f32) {
    let cpu = read_results(&d.join("cpu.parquet")).unwrap();
    let gpu = read_results(&d.join("gpu.parquet")).unwrap();
    assert_eq!(cpu.offsets, gpu.offsets, "{what}");
    let (cn, gn) = (cpu.neighbors.view(), gpu.neighbors.view());
    let same = (0..cn.len()).filter(|&i| cn.get(i) == gn.get(i)).count();
    assert!(
        same as f64 >= share * cn.len() as f64,
        "{what}: {same} of {} equal",
        cn.len()
    );
    for (i, (x, y)) in cpu.distances.iter().zip(&gpu.distances).enumerate() {
        if cn.get(i) == gn.get(i) {
            assert!(
                (x - y).abs() <= tolerance * x.abs().max(1.0),
                "{what}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn gpu_ivf_pq_search_matches_the_cpu_where_a_gpu_is_present() {
    let dir = tmp();
    let d = dir.path();
    if no_device(d) {
        return;
    }
    generate_dataset(d, size(6000, 1500), 48, 30, size(300, 20));
    // Tables of 256, 64 and 16 entries per sub-space.
    for (metric, bits) in [("l2", "8"), ("ip", "6"), ("cosine", "4")] {
        ok(
            d,
            &[
                "build",
                "--input",
                "b.parquet",
                "--index",
                "ivf-pq",
                "--n-lists",
                "64",
                "--pq-bits",
                bits,
                "--refine",
                "--metric",
                metric,
                "--out",
                "c.vbx",
            ],
        );
        // Probes by the GPU's exact k-NN over the centroids, lists scanned by ivf_pq_scan with
        // the CPU's tables and sums; with and without re-ranking.
        for refine in ["1", "3"] {
            let search = [
                "search",
                "--index",
                "c.vbx",
                "--queries",
                "q.parquet",
                "--k",
                "10",
                "--n-probes",
                "8",
                "--refine-ratio",
                refine,
            ];
            searches_agree(d, &search, &[], &format!("{metric}, refine {refine}"));
            // The probes chosen on the device (above) are the ones the host path chooses: the
            // same results, bit for bit.
            let device = read_results(&d.join("gpu.parquet")).unwrap();
            crate::emu::set_env("VECBUILD_GPU_PROBES", Some("host"));
            succeeds(
                d,
                &[&search[..], &["--gpu", "0", "--out", "gpu.parquet"]].concat(),
            );
            crate::emu::set_env("VECBUILD_GPU_PROBES", None);
            let host = read_results(&d.join("gpu.parquet")).unwrap();
            assert_eq!(
                (&device.offsets, &device.neighbors, &device.distances),
                (&host.offsets, &host.neighbors, &host.distances),
                "{metric}, refine {refine}: probes chosen on the device and on the host differ"
            );
            if refine != "1" {
                // Re-ranked on the device (its raw vectors copied up once), as the host
                // re-ranks the same candidates: the same results, bit for bit.
                crate::emu::set_env("VECBUILD_TRACE", Some("1"));
                let said = succeeds(
                    d,
                    &[&search[..], &["--gpu", "0", "--out", "gpu.parquet"]].concat(),
                );
                assert!(said.contains("raw vectors copied up"), "{said}");
                crate::emu::set_env("VECBUILD_GPU_RERANK", Some("host"));
                let said = succeeds(
                    d,
                    &[&search[..], &["--gpu", "0", "--out", "host.parquet"]].concat(),
                );
                assert!(!said.contains("raw vectors copied up"), "{said}");
                crate::emu::set_env("VECBUILD_GPU_RERANK", None);
                crate::emu::set_env("VECBUILD_TRACE", None);
                let on_device = read_results(&d.join("gpu.parquet")).unwrap();
                let on_host = read_results(&d.join("host.parquet")).unwrap();
                assert_eq!(
                    (on_device.offsets, on_device.neighbors, on_device.distances),
                    (on_host.offsets, on_host.neighbors, on_host.distances),
                    "{metric}, refine {refine}: re-ranked on the device and on the host differ"
                );
            }
        }
    }
    // 256 sub-spaces of 256 codewords: 256 KiB tables, beyond any block's shared memory, so
    // they go to global memory.
    generate_dataset(d, size(2000, 600), 256, 10, size(50, 10));
    ok(
        d,
        &[
            "build",
            "--input",
            "b.parquet",
            "--index",
            "ivf-pq",
            "--n-lists",
            "8",
            "--pq-dim",
            "256",
            "--refine",
            "--out",
            "w.vbx",
        ],
    );
    let search = [
        "search",
        "--index",
        "w.vbx",
        "--queries",
        "q.parquet",
        "--k",
        "10",
    ];
    searches_agree(d, &search, &[], "tables in global memory");
    // More candidates than the kernel's selection keeps: refused, nothing written.
    refused(
        d,
        &[
            "search",
            "--index",
            "w.vbx",
            "--queries",
            "q.parquet",
            "--k",
            "300",
            "--refine-ratio",
            "4",
            "--gpu",
            "0",
            "--out",
            "big.parquet",
        ],
        "at most 1024 candidates",
        "big.parquet",
    );
}

#[test]
fn gpu_ivf_knn_graph_equals_the_cpu_where_a_gpu_is_present() {
    let dir = tmp();
    let d = dir.path();
    if no_device(d) {
        return;
    }
    // 20 lists of ~256 rows, each joined against its nearest lists on the GPU in one batch
    // (fp32: their tiles written by one join_scores launch).
    generate_dataset(d, size(5000, 1500), 32, 40, 10);
    let ivf = ["--index", "cagra", "--build-algo", "ivf"];
    build_on_cpu_and_gpu(d, &ivf);
    plan_covers_the_build(d, &ivf);
    assert_eq!(graph(d, "c.vbx"), graph(d, "g.vbx"));
    // On the GPU the sample's exact neighbours were found on the host during the partition,
    // and measured the same graph alike.
    let stats = |f: &str| {
        let a = vecbuild::artifact::Artifact::open(d.join(f)).unwrap();
        a.manifest.params["cagra_stats"].clone()
    };
    let (cpu, gpu) = (stats("c.vbx"), stats("g.vbx"));
    let parts = |s: &serde_json::Value| -> Vec<String> {
        let parts = s["knn_graph_parts"].as_array().cloned().unwrap_or_default();
        parts
            .iter()
            .map(|p| p[0].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        parts(&cpu),
        [
            "exact sample",
            "partition",
            "join",
            "neighbours of neighbours"
        ]
    );
    assert_eq!(
        parts(&gpu),
        [
            "partition (exact sample beside)",
            "join",
            "neighbours of neighbours"
        ]
    );
    assert_eq!(cpu["knn_graph_recall"], gpu["knn_graph_recall"]);
    assert_eq!(cpu["ivf"], gpu["ivf"]);
    // tf32 takes cuBLAS instead, one product per probed list: on the emulator, whose products
    // are fp32 whatever the mode, the same graph again; on a GPU tf32 may order near-ties
    // differently, so there it has to build.
    let tf32 = ["--gpu", "0", "--gpu-precision", "tf32", "--out", "t.vbx"];
    succeeds(
        d,
        &[&["build", "--input", "b.parquet"][..], &ivf, &tf32].concat(),
    );
    if crate::emu::emulated() {
        assert_eq!(graph(d, "c.vbx"), graph(d, "t.vbx"));
    }
}

/// The CAGRA connectivity guarantee: where the device finds every row reachable from the entry
/// point (a breadth-first search, `reach_level`), the host's walk is skipped; where it does not
/// (tight clusters far apart, too small to hold an upper-level row, their kNN lists inside
/// them), the host gives each such island a level-1 row, walks the graph and mends it. On the emulator, whose products round as the
/// CPU's, either way the CPU's artifact bit for bit; on a GPU, whose products may order these
/// tight clusters' near-ties differently, the same outcome of the check.
#[test]
fn gpu_connectivity_check_skips_the_walk_only_where_every_row_is_reached() {
    let dir = tmp();
    let d = dir.path();
    if no_device(d) {
        return;
    }
    let stats = |f: &str| {
        let a = vecbuild::artifact::Artifact::open(d.join(f)).unwrap();
        a.manifest.params["cagra_stats"].clone()
    };
    // The connectivity stage's parts, in order, and the edges it rewired.
    let connectivity = |f: &str| -> (Vec<String>, u64) {
        let s = stats(f);
        let parts = s["optimize_parts"].as_array().cloned().unwrap_or_default();
        let names = parts
            .iter()
            .filter_map(|p| p[0].as_str())
            .filter(|p| p.starts_with("connectivity") || p.starts_with("islands"))
            .map(str::to_string)
            .collect();
        (names, s["rewired_edges"].as_u64().unwrap())
    };
    // 1000 rows in 50 clusters; their spread 0.05 of the centres' leaves some islands (in
    // this seeded set, one).
    let generate = |spread: &str| {
        let args = [
            "generate",
            "--rows",
            "1000",
            "--dim",
            "16",
            "--clusters",
            "50",
            "--seed",
            "1",
            "--spread",
            spread,
            "--out",
            "b.parquet",
        ];
        ok(d, &args);
    };
    let narrow = [
        "--index",
        "cagra",
        "--build-algo",
        "exact",
        "--graph-degree",
        "8",
        "--intermediate-graph-degree",
        "16",
    ];
    let both = |what: &str| {
        let (cpu, gpu) = (connectivity("c.vbx"), connectivity("g.vbx"));
        if crate::emu::emulated() {
            same_tensors(d, what);
            assert_eq!(cpu.1, gpu.1, "{what}");
        }
        (cpu, gpu)
    };
    generate("0.35");
    build_on_cpu_and_gpu(d, &narrow);
    let (cpu, gpu) = both("every row reached");
    assert_eq!(
        cpu,
        (vec!["connectivity (checked on the host)".to_string()], 0)
    );
    assert_eq!(
        gpu,
        (vec!["connectivity (checked on the device)".to_string()], 0)
    );

    // Islands with no row on level 1 get one, then the walk links what is left.
    generate("0.05");
    build_on_cpu_and_gpu(d, &narrow);
    let (cpu, gpu) = both("islands");
    for (got, checked) in [(&cpu.0, "host"), (&gpu.0, "device")] {
        let want = [
            format!("connectivity (checked on the {checked})"),
            "islands given level-1 rows".to_string(),
            "connectivity (islands linked)".to_string(),
        ];
        assert_eq!(got[..], want[..], "no island to mend: the test needs one");
    }
}

#[test]
fn gpu_ivf_pq_build_equals_the_cpu_where_a_gpu_is_present() {
    let dir = tmp();
    let d = dir.path();
    if no_device(d) {
        return;
    }
    // k-means with the rows held on the GPU (coarse: GEMM path; PQ sub-spaces: direct path),
    // centroids moved by the update kernel: every tensor must be the CPU's, bit for bit. Also
    // 6-bit codes on sub-spaces of 10 floats (48 = 5 × 10 − 2: the last one padded) for cosine,
    // 4-bit codes on sub-spaces of 24 floats (wider than the direct path's: one sub-space at a
    // time by GEMM) for inner product, and 5-bit codes with the raw vectors kept.
    // Last, more rows than PQ training takes (65536), so the encoding reads the input again
    // in chunks, on 8 dimensions: every assignment by `assign_small`.
    let small: [&[&str]; 4] = [
        &["--n-lists", "64"],
        &[
            "--n-lists",
            "16",
            "--pq-dim",
            "5",
            "--pq-bits",
            "6",
            "--metric",
            "cosine",
        ],
        &[
            "--n-lists",
            "16",
            "--pq-dim",
            "2",
            "--pq-bits",
            "4",
            "--metric",
            "ip",
        ],
        &[
            "--n-lists",
            "16",
            "--pq-dim",
            "5",
            "--pq-bits",
            "5",
            "--refine",
        ],
    ];
    let streamed: &[&str] = &[
        "--n-lists",
        "8",
        "--pq-dim",
        "2",
        "--pq-bits",
        "4",
        "--kmeans-n-iters",
        "2",
        "--max-train-rows",
        "2000",
        "--refine",
    ];
    let configs = small
        .iter()
        .map(|&c| ((size(6000, 1500), 48), c))
        .chain([((70_000, 8), streamed)]);
    let mut made = (0, 0);
    for ((rows, dim), config) in configs {
        if made != (rows, dim) {
            generate_dataset(d, rows, dim, 30, 10);
            made = (rows, dim);
        }
        let args = [&["--index", "ivf-pq"][..], config].concat();
        build_on_cpu_and_gpu(d, &args);
        plan_covers_the_build(d, &args);
        assert!(
            tensors(d, "c.vbx")
                .iter()
                .any(|(n, _)| n.contains("centroids")),
            "no centroids"
        );
        same_tensors(d, &format!("{config:?}"));
    }
}

/// `d/c.vbx` (the CPU build) and `d/g.vbx` (the GPU build) hold the same tensors, bit for bit.
fn same_tensors(d: &Path, what: &str) {
    let (cpu, gpu) = (tensors(d, "c.vbx"), tensors(d, "g.vbx"));
    assert_eq!(cpu.len(), gpu.len(), "{what}");
    for ((name, a), (other, b)) in cpu.iter().zip(&gpu) {
        assert_eq!(name, other, "{what}");
        assert!(
            a == b,
            "{what}: tensor {name} differs between the CPU and GPU builds"
        );
    }
}

/// Every tensor of artifact `d/f`, by name, as bytes.
fn tensors(d: &Path, f: &str) -> Vec<(String, Vec<u8>)> {
    let a = vecbuild::artifact::Artifact::open(d.join(f)).unwrap();
    a.container
        .all_bytes()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect()
}

/// The `graph` tensor of CAGRA artifact `d/f`.
fn graph(d: &Path, f: &str) -> Vec<u32> {
    let a = vecbuild::artifact::Artifact::open(d.join(f)).unwrap();
    let shape = a.container.tensors["graph"].shape.clone();
    a.tensor::<u32>("graph", vecbuild::artifact::container::DType::U32, &shape)
        .unwrap()
        .to_vec()
}

/// `vecbuild build --input b.parquet <args>` into `c.vbx` on the CPU and `g.vbx` on GPU 0;
/// returns the GPU build's summary (stderr). On the emulator the GPU build's peak device
/// memory is recorded for [`plan_covers_the_build`].
fn build_on_cpu_and_gpu(d: &std::path::Path, args: &[&str]) -> String {
    let build = ["build", "--input", "b.parquet", "--out"];
    ok(d, &[&build[..], &["c.vbx"], args].concat());
    gpu_build(d, &[args, &["--out", "g.vbx"]].concat())
}

/// `vecbuild build --input b.parquet --gpu 0 <args>`; returns its summary (stderr). On the
/// emulator the most device memory it held is recorded in `d/device-peak`.
fn gpu_build(d: &Path, args: &[&str]) -> String {
    if crate::emu::emulated() {
        let peak = d.join("device-peak");
        let _ = std::fs::remove_file(&peak);
        crate::emu::set_env("VECBUILD_EMULATED_PEAK_FILE", peak.to_str());
    }
    let said = succeeds(
        d,
        &[&["build", "--input", "b.parquet", "--gpu", "0"][..], args].concat(),
    );
    crate::emu::set_env("VECBUILD_EMULATED_PEAK_FILE", None);
    said
}

/// On the emulator, which counts every device allocation: `build --dry-run <args> --gpu 0`
/// plans at least the device memory the last [`gpu_build`] held at its peak (less 2 %, for
/// the small buffers a plan leaves out), and at most half as much again (the ivf join's
/// scores are estimated, generously). On a GPU, scripts/gpu-check.sh sets the plan beside nvidia-smi's peak.
fn plan_covers_the_build(d: &Path, args: &[&str]) {
    if !crate::emu::emulated() {
        return;
    }
    let measured: f64 = std::fs::read_to_string(d.join("device-peak"))
        .expect("the emulator recorded the build's peak device memory")
        .trim()
        .parse()
        .unwrap();
    let plan = ok(
        d,
        &[
            &["build", "--input", "b.parquet", "--gpu", "0", "--dry-run"][..],
            args,
            &["--out", "plan.vbx"],
        ]
        .concat(),
    );
    let line = plan
        .lines()
        .find_map(|l| l.strip_prefix("peak device memory: "))
        .unwrap_or_else(|| panic!("no device peak in the plan:\n{plan}"));
    let mut words = line.split(' ');
    let value: f64 = words.next().unwrap().parse().unwrap();
    // Rounded to 2, 1 and 0 decimals.
    let (unit, half) = match words.next().unwrap() {
        "GiB" => (1024.0 * 1024.0 * 1024.0, 0.005),
        "MiB" => (1024.0 * 1024.0, 0.05),
        "KiB" => (1024.0, 0.5),
        other => panic!("unit {other} in {line}"),
    };
    let (low, high) = ((value - half) * unit, (value + half) * unit);
    eprintln!("{args:?}: planned {line}, held {measured} bytes");
    let what = format!("{args:?}: planned {line}, held {measured} bytes\n{plan}");
    assert!(measured <= high * 1.02, "the plan is short: {what}");
    assert!(
        low <= measured * 1.5,
        "the plan is half as much again too large: {what}"
    );
}

/// A device too small for a stage's data (the emulator's memory set small): exact k-NN takes
/// the queries in chunks, the CAGRA build joins, refines and optimises what it cannot hold the
/// slower way, all with the CPU's results; an index too large to search on the GPU and a
/// device with no room left are clear errors (exit 2) that write nothing.
#[test]
fn gpu_stages_on_a_device_too_small_for_their_data_agree_with_the_cpu_or_fail_clearly() {
    let dir = tmp();
    let d = dir.path();
    if not_emulated(
        d,
        "a real GPU's memory cannot be made small here (the emulator's can)",
    ) {
        return;
    }
    // 3000 queries' 100 candidates (2.4 MB) do not fit with the rest on a 3 MiB device.
    generate_dataset(d, 150, 32, 5, 3000);
    crate::emu::device_memory(3);
    let knn = [
        "knn",
        "--base",
        "b.parquet",
        "--queries",
        "q.parquet",
        "--k",
        "100",
    ];
    let said = on_cpu_and_gpu(d, &knn, &[], &[]);
    lists_agree(d, "k-NN in query chunks");
    assert!(said.contains("took the queries"), "{said}");

    generate_dataset(d, 1500, 32, 40, 10);
    crate::emu::device_memory(2);
    let said = build_on_cpu_and_gpu(d, &["--index", "cagra", "--build-algo", "ivf"]);
    for slower in [
        "join copied each list's rows",
        "neighbour-of-neighbour pass ran on the CPU",
        "CAGRA graph optimisation ran on the CPU",
    ] {
        assert!(said.contains(slower), "{said}");
    }
    assert_eq!(graph(d, "c.vbx"), graph(d, "g.vbx"));

    // No room on a 1 MiB device for the build's first score tile and rows.
    crate::emu::device_memory(1);
    let build = [
        "build",
        "--input",
        "b.parquet",
        "--index",
        "cagra",
        "--gpu",
        "0",
        "--out",
        "x.vbx",
    ];
    refused(d, &build, "out of device memory", "x.vbx");

    // An index of 4000 × 64 floats (1 MB) and its graph is more than a 1 MiB device holds.
    generate_dataset(d, 4000, 64, 20, 10);
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
        "--gpu",
        "0",
        "--out",
        "r.parquet",
    ];
    refused(d, &search, "copies the index to it", "r.parquet");
}

/// On the emulator, the exact and nn-descent CAGRA builders on L2, inner product (lifted rows)
/// and cosine (no norms): every tensor the CPU's, bit for bit (the emulator's products add in
/// the CPU's order; on a GPU, scripts/gpu-check.sh compares the exact graph), and the device
/// memory held within `build --dry-run`'s plan.
#[test]
fn gpu_cagra_builders_equal_the_cpu_and_stay_within_their_plans_where_emulated() {
    let dir = tmp();
    let d = dir.path();
    if not_emulated(d, "only the emulator counts allocations and sums in the CPU's order (scripts/gpu-check.sh checks the exact graph and sets the plan beside nvidia-smi's peak)") {
        return;
    }
    generate_dataset(d, 1200, 16, 12, 10);
    for args in [
        &["--index", "cagra", "--build-algo", "exact"][..],
        &[
            "--index",
            "cagra",
            "--build-algo",
            "exact",
            "--metric",
            "ip",
        ],
        &[
            "--index",
            "cagra",
            "--build-algo",
            "exact",
            "--metric",
            "cosine",
        ],
        &[
            "--index",
            "cagra",
            "--build-algo",
            "nn-descent",
            "--metric",
            "cosine",
        ],
    ] {
        build_on_cpu_and_gpu(d, args);
        plan_covers_the_build(d, args);
        same_tensors(d, &format!("{args:?}"));
    }
}
