//! Our CUDA kernels run on the host: a kernel file is compiled as C++ with CUDA's built-ins
//! defined on threads (a block's threads are real threads, with barriers, warp exchanges,
//! atomics and shared memory), its grid is run block by block, and the results must be the CPU
//! code's. This checks the kernels' indexing, synchronisation and arithmetic in CI without a
//! GPU; tests/it/cuda.rs checks the same results on a GPU. (The timing, the memory model's
//! weaker corners and the GPU's float contraction are not modelled: `-ffp-contract=off` here,
//! and the kernels spell out their fused multiply-adds.)

use crate::common::*;
use ndarray::Array2;
use std::path::Path;
use std::process::Command;
use vecbuild::backend::{Backend, CpuBackend};
use vecbuild::index::kmeans;
use vecbuild::index::pq::ProductQuantizer;
use vecbuild::synth::Rng;

/// CUDA's built-ins on the host (tests/emu/runtime.h: a block's threads are real threads with
/// barriers, warp exchanges, atomics and shared memory; `launch` runs a grid's blocks in turn),
/// the kernel file, and helpers to read and write the driver's files.
const HOST_RUNTIME: &str = concat!(
    include_str!("../emu/runtime.h"),
    r#"
#include "KERNELS"

template <class T> std::vector<T> load(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) { std::perror(path.c_str()); std::exit(1); }
    std::fseek(f, 0, SEEK_END);
    long bytes = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    std::vector<T> v(bytes / sizeof(T));
    if (std::fread(v.data(), 1, bytes, f) != (size_t)bytes) std::exit(1);
    std::fclose(f);
    return v;
}
template <class T> void save(const std::string& path, const std::vector<T>& v) {
    FILE* f = std::fopen(path.c_str(), "wb");
    std::fwrite(v.data(), sizeof(T), v.size(), f);
    std::fclose(f);
}
"#
);

/// Compiles `kernels/<file>` on the host with the runtime above and `main` (which reads and
/// writes files in the folder given as its first argument), or `None` (test skipped, said)
/// where there is no C++ compiler and CI does not require one.
fn host_build(dir: &Path, file: &str, main: &str) -> Option<std::path::PathBuf> {
    let cxx = crate::emu::cxx()?;
    let kernel_copy = dir.join(file);
    std::fs::write(&kernel_copy, crate::emu::adapted_kernel(file)).unwrap();
    let src = dir.join("driver.cpp");
    let program = HOST_RUNTIME.replace("KERNELS", &kernel_copy.display().to_string());
    std::fs::write(&src, format!("{program}\nint main(int argc, char** argv) {{\n    std::string dir = std::string(argv[1]) + \"/\";\n{main}\n    return 0;\n}}\n")).unwrap();
    let exe = dir.join("driver");
    let out = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O2",
            "-pthread",
            "-ffp-contract=off",
            "-Wno-unknown-pragmas",
            "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cxx} could not compile kernels/{file} on the host:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

/// Runs a host-built driver on folder `dir` with `args`.
fn run_driver(exe: &Path, dir: &Path, args: &[String]) {
    let out = Command::new(exe).arg(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write<T: bytemuck::Pod>(path: &Path, v: &[T]) {
    std::fs::write(path, bytemuck::cast_slice(v)).unwrap();
}

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_fn((rows, cols), |_| rng.uniform() as f32 * 4.0 - 2.0)
}

/// Columns `m·width .. (m+1)·width` of `data`, zero past its last column (a PQ sub-space).
fn columns(data: &Array2<f32>, m: usize, width: usize) -> Array2<f32> {
    Array2::from_shape_fn((data.nrows(), width), |(r, j)| {
        data.get((r, m * width + j)).copied().unwrap_or(0.0)
    })
}

#[test]
fn centroid_means_kernel_moves_centroids_as_the_cpu_update_does() {
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    long long rows = std::atoll(argv[2]);
    int ld = std::atoi(argv[3]), width = std::atoi(argv[4]);
    unsigned k = std::atoi(argv[5]), problems = std::atoi(argv[6]), threads = std::atoi(argv[7]);
    auto data = load<float>(dir + "data");
    auto order = load<unsigned>(dir + "order");
    auto start = load<unsigned>(dir + "start");
    auto c = load<float>(dir + "centroids");
    launch({k, problems, 1}, {threads, 1, 1}, [&] {
        centroid_means(data.data(), rows, ld, width, order.data(), start.data(), c.data());
    });
    save(dir + "out", c);"#;
    let Some(exe) = host_build(d, "quantize.cu", main) else {
        return;
    };
    // (rows, ld, width, k, problems, threads): whole rows of 37 and 300 dimensions (threads
    // stride past the block only when the width exceeds it), then PQ sub-spaces: 30 columns in
    // 8 of 4 (the last is 2 columns and 2 zeros) and 64 in 32 of 2, a warp per block.
    let shapes = [
        (3000usize, 37usize, 37usize, 25usize, 1usize, 128u32),
        (500, 300, 300, 7, 1, 128),
        (900, 30, 4, 16, 8, 32),
        (700, 64, 2, 256, 32, 32),
    ];
    for (n, ld, width, k, problems, threads) in shapes {
        let data = random(n, ld, 5);
        let mut rng = Rng::new(9);
        let start_centroids = random(problems * k, width, 11);
        let (mut want, mut order, mut start) = (Vec::new(), Vec::new(), Vec::new());
        for m in 0..problems {
            // Cluster 3 left empty: its centroid must stay where it is.
            let labels: Vec<u32> = (0..n)
                .map(|_| match rng.below(k as u64) as u32 {
                    3 => 4,
                    l => l,
                })
                .collect();
            let mut cpu = start_centroids
                .slice(ndarray::s![m * k..(m + 1) * k, ..])
                .to_owned();
            let sub = columns(&data, m, width);
            let sizes = kmeans::update(sub.view(), &labels, &mut cpu);
            assert_eq!(sizes[3], 0);
            want.extend(cpu.iter().copied());
            let groups = kmeans::group_by_label(&labels, k);
            order.extend(groups.order);
            start.extend(groups.start.iter().map(|&s| s as u32));
        }
        write(&d.join("data"), data.as_slice().unwrap());
        write(&d.join("order"), &order);
        write(&d.join("start"), &start);
        write(&d.join("centroids"), start_centroids.as_slice().unwrap());
        let args = [n, ld, width, k, problems, threads as usize].map(|v| v.to_string());
        run_driver(&exe, d, &args);
        let got = read_f32(&d.join("out"));
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "width {width}: centroid {} dim {}: {g} vs {w}",
                i / width,
                i % width
            );
        }
    }
}

/// The codes are the CPU's; with a distance buffer (PQ training) so are each code's squared
/// distance and each sub-space's objective, added by `ordered_sums`.
#[test]
fn group_codes_kernel_groups_each_sub_space_as_group_by_label_does() {
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    long long n = std::atoll(argv[2]);
    int pq_dim = std::atoi(argv[3]), ksub = std::atoi(argv[4]);
    auto codes = load<unsigned char>(dir + "codes");
    auto running = load<int>(dir + "running");
    std::vector<unsigned> order(pq_dim * n, 7), start(pq_dim * (ksub + 1), 7), sizes(pq_dim * ksub, 7);
    launch({(unsigned)pq_dim, 1, 1}, {GROUP_THREADS, 1, 1}, [&] {
        group_codes(codes.data(), n, pq_dim, ksub, running.data(), order.data(), start.data(), sizes.data());
    });
    save(dir + "order", order);
    save(dir + "start", start);
    save(dir + "sizes", sizes);"#;
    let Some(exe) = host_build(d, "quantize.cu", main) else {
        return;
    };
    use vecbuild::index::kmeans::group_by_label;
    let mut rng = Rng::new(67);
    // Rows not a multiple of the block; 16 and 256 codes; skewed codes (runs of one code across
    // warps and blocks of rows); one sub-space stopped.
    for (n, pq_dim, ksub) in [(1000usize, 5usize, 16usize), (777, 3, 256)] {
        let codes: Vec<u8> = (0..n * pq_dim)
            .map(|i| match (i / pq_dim) % 7 {
                0..=2 => (i / pq_dim / 100 % ksub) as u8,
                _ => rng.below(ksub as u64) as u8,
            })
            .collect();
        let running: Vec<i32> = (0..pq_dim).map(|m| i32::from(m != 1)).collect();
        write(&d.join("codes"), &codes);
        write(&d.join("running"), &running);
        run_driver(&exe, d, &[n, pq_dim, ksub].map(|v| v.to_string()));
        let (order, start, sizes) = (
            read_u32(&d.join("order")),
            read_u32(&d.join("start")),
            read_u32(&d.join("sizes")),
        );
        for m in 0..pq_dim {
            let st = &start[m * (ksub + 1)..(m + 1) * (ksub + 1)];
            let sz = &sizes[m * ksub..(m + 1) * ksub];
            if running[m] == 0 {
                assert!(st.iter().chain(sz).all(|&v| v == 0), "sub-space {m}");
                continue;
            }
            let labels: Vec<u32> = (0..n).map(|r| codes[r * pq_dim + m] as u32).collect();
            let g = group_by_label(&labels, ksub);
            assert_eq!(
                &order[m * n..(m + 1) * n],
                &g.order[..],
                "n {n}, sub-space {m}"
            );
            let want: Vec<u32> = g.start.iter().map(|&s| s as u32).collect();
            assert_eq!(st, &want[..], "n {n}, sub-space {m}");
            let want: Vec<u32> = g.sizes.iter().map(|&s| s as u32).collect();
            assert_eq!(sz, &want[..], "n {n}, sub-space {m}");
        }
    }
}

/// The coarse k-means' grouping on the device, over chunks of rows with any number of labels,
/// is the host's stable counting sort: the same order, starts and sizes.
#[test]
fn label_grouping_kernels_group_rows_as_group_by_label_does() {
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    long long n = std::atoll(argv[2]), chunk = std::atoll(argv[4]);
    int k = std::atoi(argv[3]);
    unsigned chunks = (unsigned)((n + chunk - 1) / chunk);
    auto labels = load<unsigned>(dir + "labels");
    std::vector<unsigned> counts((size_t)chunks * k, 0), sizes(k, 7), start(k + 1, 7), order(n, 7);
    launch({chunks, 1, 1}, {GROUP_THREADS, 1, 1},
           [&] { label_counts(labels.data(), n, k, chunk, counts.data()); });
    launch({(unsigned)((k + GROUP_THREADS - 1) / GROUP_THREADS), 1, 1}, {GROUP_THREADS, 1, 1},
           [&] { label_offsets(counts.data(), (int)chunks, k, sizes.data()); });
    launch({1, 1, 1}, {SCAN_THREADS, 1, 1}, [&] { label_starts(sizes.data(), k, start.data()); });
    launch({chunks, 1, 1}, {32, 1, 1}, [&] {
        label_scatter(labels.data(), n, k, chunk, counts.data(), start.data(), order.data());
    });
    save(dir + "order", order);
    save(dir + "start", start);
    save(dir + "sizes", sizes);"#;
    let Some(exe) = host_build(d, "quantize.cu", main) else {
        return;
    };
    use vecbuild::index::kmeans::group_by_label;
    let mut rng = Rng::new(71);
    // One label; a few labels in long runs (across rounds, chunks and blocks); more labels
    // than the scan's threads, some with no rows; chunks of one round, of several with a short
    // last round, and one chunk for all rows.
    for (n, k, chunk) in [
        (100usize, 1usize, 32usize),
        (1000, 7, 96),
        (777, 300, 50),
        (3001, 5000, 1000),
        (2500, 40, 2500),
    ] {
        let labels: Vec<u32> = (0..n)
            .map(|r| match r % 5 {
                0 | 1 => (r / 60 % k) as u32,
                _ => rng.below(k as u64) as u32,
            })
            .collect();
        write(&d.join("labels"), &labels);
        run_driver(&exe, d, &[n, k, chunk].map(|v| v.to_string()));
        let g = group_by_label(&labels, k);
        let case = format!("n {n}, k {k}, chunks of {chunk}");
        assert_eq!(read_u32(&d.join("order")), g.order, "{case}");
        let want: Vec<u32> = g.start.iter().map(|&s| s as u32).collect();
        assert_eq!(read_u32(&d.join("start")), want, "{case}");
        let want: Vec<u32> = g.sizes.iter().map(|&s| s as u32).collect();
        assert_eq!(read_u32(&d.join("sizes")), want, "{case}");
    }
}

#[test]
fn pq_encode_kernel_finds_the_cpu_codes_of_every_sub_space() {
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    long long rows = std::atoll(argv[2]);
    int dim = std::atoi(argv[3]), dsub = std::atoi(argv[4]), ksub = std::atoi(argv[5]);
    unsigned pq_dim = std::atoi(argv[6]);
    auto x = load<float>(dir + "residuals");
    auto books = load<float>(dir + "books");
    std::vector<unsigned char> codes(rows * pq_dim, 0xff), codes2(rows * pq_dim, 0xff);
    std::vector<float> dists(rows * pq_dim, -1.0f);
    std::vector<double> sums(pq_dim, -1.0);
    unsigned blocks = (rows + ENCODE_THREADS - 1) / ENCODE_THREADS;
    launch({blocks, pq_dim, 1}, {ENCODE_THREADS, 1, 1}, [&] {
        pq_encode(x.data(), rows, dim, dsub, ksub, books.data(), codes.data(), nullptr);
    });
    launch({blocks, pq_dim, 1}, {ENCODE_THREADS, 1, 1}, [&] {
        pq_encode(x.data(), rows, dim, dsub, ksub, books.data(), codes2.data(), dists.data());
    });
    launch({(pq_dim + 31) / 32, 1, 1}, {32, 1, 1},
           [&] { ordered_sums(dists.data(), rows, (int)pq_dim, sums.data()); });
    save(dir + "out", codes);
    save(dir + "out2", codes2);
    save(dir + "dists", dists);
    save(dir + "sums", sums);"#;
    let Some(exe) = host_build(d, "quantize.cu", main) else {
        return;
    };
    // dim 30 in 8 sub-spaces of 4: the last one is 2 columns and 2 zeros. 4-bit and 8-bit
    // codes; 40 sub-spaces take two blocks of ordered_sums.
    for (dim, pq_dim, pq_bits) in [
        (30usize, 8usize, 4u32),
        (64, 32, 8),
        (16, 1, 8),
        (80, 40, 4),
    ] {
        let train = random(4000, dim, 21);
        let pq = ProductQuantizer::train(&CpuBackend, train.view(), pq_dim, pq_bits, 5, 3).unwrap();
        let rows = 700;
        let residuals = random(rows, dim, 23);
        let cpu = pq.encode(&CpuBackend, residuals.view()).unwrap();
        write(&d.join("residuals"), residuals.as_slice().unwrap());
        write(&d.join("books"), pq.codebooks.as_slice().unwrap());
        let args = [rows, dim, pq.dsub(), pq.ksub(), pq_dim].map(|v| v.to_string());
        run_driver(&exe, d, &args);
        let case = format!("dim {dim}, pq_dim {pq_dim}, {pq_bits} bits");
        for out in ["out", "out2"] {
            let got = std::fs::read(d.join(out)).unwrap();
            assert_eq!(got, cpu.as_slice().unwrap(), "{case}");
        }
        let (dists, sums) = (
            read_f32(&d.join("dists")),
            std::fs::read(d.join("sums")).unwrap(),
        );
        let sums: Vec<f64> = bytemuck::pod_collect_to_vec(&sums);
        for m in 0..pq_dim {
            let sub = columns(&residuals, m, pq.dsub());
            let (_, want) = CpuBackend
                .assign_nearest(sub.view(), pq.codebook(m))
                .unwrap();
            let got = &dists[m * rows..(m + 1) * rows];
            for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{case}: sub-space {m}, row {r}");
            }
            let objective: f64 = want.iter().map(|&v| v as f64).sum();
            assert_eq!(
                sums[m].to_bits(),
                objective.to_bits(),
                "{case}: sub-space {m}"
            );
        }
    }
}

#[test]
fn to_half_kernel_rounds_as_ieee_binary16() {
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    auto x = load<float>(dir + "x");
    std::vector<unsigned short> out(x.size(), 0x5555);
    unsigned blocks = (x.size() + 255) / 256;
    launch({blocks, 1, 1}, {256, 1, 1}, [&] { to_half(x.data(), (long long)x.size(), out.data()); });
    save(dir + "out", out);"#;
    let Some(exe) = host_build(d, "select.cu", main) else {
        return;
    };
    // Every exponent fp16 reaches and beyond, with random significands; the ties at the
    // rounding bit (even and odd), subnormal and overflow boundaries; zeros, infinities, NaN.
    let mut x: Vec<f32> = vec![
        0.0,
        -0.0,
        65504.0,
        65519.99,
        65520.0,
        -65520.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        2f32.powi(-14),
        2f32.powi(-24),
        2f32.powi(-25),
        1.5 * 2f32.powi(-25),
        3.0 * 2f32.powi(-25),
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
    ];
    let mut rng = Rng::new(77);
    for e in -30..18 {
        for _ in 0..40 {
            let v = (1.0 + rng.uniform() as f32) * 2f32.powi(e);
            x.push(if rng.below(2) == 0 { v } else { -v });
            // The same significand cut at the rounding bit: an exact tie.
            let tie = f32::from_bits(v.to_bits() & !0xfff | 0x1000);
            x.push(tie);
        }
    }
    write(&d.join("x"), &x);
    run_driver(&exe, d, &[]);
    let got: Vec<u16> = bytemuck::pod_collect_to_vec(&std::fs::read(d.join("out")).unwrap());
    assert_eq!(got.len(), x.len());
    for (v, g) in x.iter().zip(got) {
        let want = half::f16::from_f32(*v);
        if want.is_nan() {
            assert!(half::f16::from_bits(g).is_nan(), "{v}: {g:#06x}");
        } else {
            assert_eq!(
                g,
                want.to_bits(),
                "{v:e}: {g:#06x}, want {:#06x}",
                want.to_bits()
            );
        }
    }
}

/// Scores on a grid of 1/64 (many exact ties, to check the tie order), `[rows, ld]`.
fn tied_scores(rows: usize, ld: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..rows * ld)
        .map(|_| rng.below(256) as f32 / 64.0)
        .collect()
}

/// Each row's best `k` of `v = score + col_add` with `v ≤ threshold`, by (v, column); empty
/// slots `(+inf, u32::MAX)`: what `select_topk` and `argmin_rows` must return.
fn best_of_rows(
    scores: &[f32],
    ld: usize,
    n: usize,
    add: &[f32],
    thresholds: Option<&[f32]>,
    k: usize,
) -> (Vec<f32>, Vec<u32>) {
    let rows = scores.len() / ld;
    let (mut best, mut cols) = (Vec::new(), Vec::new());
    for r in 0..rows {
        let limit = thresholds.map_or(f32::INFINITY, |t| t[r]);
        let mut c: Vec<(f32, u32)> = (0..n)
            .map(|j| (scores[r * ld + j] + add[j], j as u32))
            .filter(|&(v, _)| v <= limit)
            .collect();
        c.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        c.resize(k.max(c.len()), (f32::INFINITY, u32::MAX));
        best.extend(c[..k].iter().map(|e| e.0));
        cols.extend(c[..k].iter().map(|e| e.1));
    }
    (best, cols)
}

fn read_f32(path: &Path) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(&std::fs::read(path).unwrap())
}

fn read_u32(path: &Path) -> Vec<u32> {
    bytemuck::pod_collect_to_vec(&std::fs::read(path).unwrap())
}

#[test]
fn select_topk_kernel_keeps_each_rows_best_k_in_order() {
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    unsigned rows = std::atoi(argv[2]);
    long long ld = std::atoll(argv[3]);
    int n = std::atoi(argv[4]), k = std::atoi(argv[5]), kp = std::atoi(argv[6]);
    bool thresholded = std::atoi(argv[7]);
    auto scores = load<float>(dir + "scores");
    auto add = load<float>(dir + "add");
    auto thresholds = load<float>(dir + "thresholds");
    std::vector<float> best(rows * k, -1.0f);
    std::vector<unsigned> cols(rows * k, 7);
    launch({rows, 1, 1}, {SELECT_THREADS, 1, 1}, [&] {
        select_topk(scores.data(), ld, n, add.data(), thresholded ? thresholds.data() : nullptr, k, kp,
                    best.data(), cols.data());
    });
    save(dir + "best", best);
    save(dir + "cols", cols);"#;
    let Some(exe) = host_build(d, "select.cu", main) else {
        return;
    };
    let (rows, n) = (5usize, 3000usize);
    let ld = n + 5;
    let scores = tied_scores(rows, ld, 31);
    let add = tied_scores(1, n, 37);
    // Thresholds that let through everything, about 1 % of a row, and nothing.
    let thresholds = vec![9.0f32, 0.6, 0.5, -1.0, 1.0];
    write(&d.join("scores"), &scores);
    write(&d.join("add"), &add);
    write(&d.join("thresholds"), &thresholds);
    // kp of 1 to 1024: rounds of four columns a thread, and of one at kp = 1024.
    for k in [1usize, 10, 100, 300, 600, 1024] {
        for thresholded in [false, true] {
            let kp = k.next_power_of_two();
            let args = [rows, ld, n, k, kp, thresholded as usize].map(|v| v.to_string());
            run_driver(&exe, d, &args);
            let limits = thresholded.then_some(&thresholds[..]);
            let (best, cols) = best_of_rows(&scores, ld, n, &add, limits, k);
            let got = read_f32(&d.join("best"));
            assert!(
                got.iter()
                    .zip(&best)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "k {k}, thresholds {thresholded}: scores differ"
            );
            assert_eq!(
                read_u32(&d.join("cols")),
                cols,
                "k {k}, thresholds {thresholded}"
            );
        }
    }
}

#[test]
fn argmin_rows_and_assign_small_kernels_pick_the_cpus_nearest() {
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    long long rows = std::atoll(argv[2]);
    long long ld = std::atoll(argv[3]);
    int n = std::atoi(argv[4]), k = std::atoi(argv[5]), dim = std::atoi(argv[6]);
    auto scores = load<float>(dir + "scores");
    auto add = load<float>(dir + "add");
    std::vector<unsigned> col(rows, 7);
    std::vector<float> best(rows, -1.0f);
    launch({(unsigned)((rows + 7) / 8), 1, 1}, {256, 1, 1},
           [&] { argmin_rows(scores.data(), ld, n, rows, add.data(), col.data(), best.data()); });
    save(dir + "argmin_col", col);
    save(dir + "argmin_best", best);
    auto data = load<float>(dir + "data");
    auto centroids = load<float>(dir + "centroids");
    long long points = data.size() / dim;
    std::vector<unsigned> label(points, 7);
    std::vector<float> dist(points, -1.0f);
    launch({(unsigned)((points + 255) / 256), 1, 1}, {256, 1, 1}, [&] {
        assign_small(data.data(), centroids.data(), points, k, dim, label.data(), dist.data());
    });
    save(dir + "label", label);
    save(dir + "dist", dist);"#;
    let Some(exe) = host_build(d, "select.cu", main) else {
        return;
    };
    // argmin_rows: 37 rows (the last block part empty), ties on a 1/64 grid.
    let (rows, n) = (37usize, 777usize);
    let ld = n + 3;
    let scores = tied_scores(rows, ld, 41);
    let add = tied_scores(1, n, 43);
    write(&d.join("scores"), &scores);
    write(&d.join("add"), &add);
    // assign_small: 600 rows of 5 dimensions to 40 centroids, against the CPU's assignment.
    let (k, dim) = (40usize, 5usize);
    let data = random(600, dim, 47);
    let centroids = random(k, dim, 53);
    write(&d.join("data"), data.as_slice().unwrap());
    write(&d.join("centroids"), centroids.as_slice().unwrap());
    run_driver(&exe, d, &[rows, ld, n, k, dim].map(|v| v.to_string()));
    let (best, cols) = best_of_rows(&scores, ld, n, &add, None, 1);
    assert_eq!(read_u32(&d.join("argmin_col")), cols);
    assert_eq!(read_f32(&d.join("argmin_best")), best);
    use vecbuild::backend::Backend;
    let (labels, dists) = CpuBackend
        .assign_nearest(data.view(), centroids.view())
        .unwrap();
    assert_eq!(read_u32(&d.join("label")), labels);
    let got = read_f32(&d.join("dist"));
    assert!(got
        .iter()
        .zip(&dists)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn prune_graph_kernel_prunes_as_the_cpu_does() {
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    unsigned n = std::atoi(argv[2]);
    int deg = std::atoi(argv[3]), d_out = std::atoi(argv[4]), table = std::atoi(argv[5]);
    auto knn = load<unsigned>(dir + "knn");
    std::vector<unsigned> out((size_t)n * d_out, 7);
    launch({n, 1, 1}, {256, 1, 1}, [&] { prune_graph(knn.data(), deg, d_out, table, out.data()); });
    save(dir + "pruned", out);"#;
    let Some(exe) = host_build(d, "cagra.cu", main) else {
        return;
    };
    // A kNN graph of 120 rows, degree 24, from real distances (so detours exist), with some
    // rows cut short (u32::MAX tails) and one row listing a neighbour twice.
    use vecbuild::index::cagra::{optimize, Graph};
    let (n, deg, d_out) = (120usize, 24usize, 12usize);
    let x = random(n, 3, 59);
    let mut neighbors = Vec::with_capacity(n * deg);
    for a in 0..n {
        let dist = |b: usize| (0..3).map(|j| (x[[a, j]] - x[[b, j]]).powi(2)).sum::<f32>();
        let mut others: Vec<usize> = (0..n).filter(|&b| b != a).collect();
        others.sort_by(|&p, &q| dist(p).total_cmp(&dist(q)).then(p.cmp(&q)));
        let keep = if a % 7 == 3 { deg - 5 } else { deg };
        let mut row: Vec<u32> = others[..keep].iter().map(|&b| b as u32).collect();
        row.resize(deg, u32::MAX);
        if a == 10 {
            row[deg - 1] = row[2];
        }
        neighbors.extend(row);
    }
    let knn = Graph {
        degree: deg,
        neighbors,
    };
    write(&d.join("knn"), &knn.neighbors);
    // The table size and shared memory the CUDA backend uses.
    let table = (2 * deg).next_power_of_two().max(16);
    run_driver(&exe, d, &[n, deg, d_out, table].map(|v| v.to_string()));
    let cpu = optimize::prune(&knn, d_out);
    assert_eq!(read_u32(&d.join("pruned")), cpu.neighbors);
}

#[test]
fn reverse_and_merge_kernels_merge_as_the_cpu_does() {
    let dir = tmp();
    let d = dir.path();
    // The three launches and the prefix sum between them, as cuda/optimize.rs runs them.
    let main = r#"
    unsigned n = std::atoi(argv[2]);
    int deg = std::atoi(argv[3]);
    auto pruned = load<unsigned>(dir + "pruned");
    unsigned long long edges = (unsigned long long)n * deg;
    unsigned blocks = (unsigned)((edges + 255) / 256);
    std::vector<unsigned> count(n, 0), cursor(n, 0), offsets(n + 1, 0);
    launch({blocks, 1, 1}, {256, 1, 1}, [&] { reverse_count(pruned.data(), edges, n, count.data()); });
    for (unsigned b = 0; b < n; ++b) offsets[b + 1] = offsets[b] + count[b];
    std::vector<unsigned> keys(std::max(offsets[n], 1u), 7);
    launch({blocks, 1, 1}, {256, 1, 1}, [&] {
        reverse_fill(pruned.data(), deg, n, offsets.data(), cursor.data(), keys.data());
    });
    std::vector<unsigned> out(edges, 7);
    unsigned rows = MERGE_THREADS / 32;
    launch({(n + rows - 1) / rows, 1, 1}, {MERGE_THREADS, 1, 1}, [&] {
        merge_graph(pruned.data(), deg, n, offsets.data(), keys.data(), out.data());
    });
    save(dir + "merged", out);"#;
    let Some(exe) = host_build(d, "cagra.cu", main) else {
        return;
    };
    use vecbuild::index::cagra::{optimize, Graph};
    let mut rng = Rng::new(61);
    // Degrees below, at and beyond a warp, and row counts that leave the last block part empty.
    for (n, deg) in [(301usize, 12usize), (203, 40), (77, 64)] {
        let mut neighbors = Vec::with_capacity(n * deg);
        for a in 0..n {
            let mut row: Vec<u32> = (0..deg)
                .map(|s| match (a + s) % 9 {
                    // Hubs that more than `deg` rows reach, at several ranks.
                    0 => (s % 3) as u32,
                    _ => rng.below(n as u64) as u32,
                })
                .collect();
            // Empty tails, the row itself and repeats, which the merge skips.
            if a % 5 == 1 {
                row[deg / 3..].fill(u32::MAX);
            }
            if a % 7 == 2 {
                row[1] = a as u32;
                row[deg - 1] = row[0];
            }
            neighbors.extend(row);
        }
        let pruned = Graph {
            degree: deg,
            neighbors,
        };
        write(&d.join("pruned"), &pruned.neighbors);
        run_driver(&exe, d, &[n, deg].map(|v| v.to_string()));
        let cpu = optimize::merge(&pruned, &optimize::reverse_edges(&pruned));
        assert_eq!(
            read_u32(&d.join("merged")),
            cpu.neighbors,
            "n {n}, degree {deg}"
        );
    }
}

#[cfg(feature = "cuda")]
#[test]
fn refine_graph_kernel_refines_as_the_cpu_does() {
    use vecbuild::index::cagra::{knn_graph, Graph};
    use vecbuild::Metric;
    if !vecbuild::backend::cpu::has_avx2_fma() {
        // The kernel adds as dot_avx2 does; the portable CPU sum differs in the last bits.
        eprintln!("SKIPPED: this CPU has no AVX2+FMA, so its scores are summed in another order");
        return;
    }
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    unsigned rows = std::atoi(argv[2]), n = std::atoi(argv[3]), threads = std::atoi(argv[9]);
    int dim = std::atoi(argv[4]), k = std::atoi(argv[5]), fan = std::atoi(argv[6]);
    int cap = std::atoi(argv[7]), l2 = std::atoi(argv[8]), ordered = std::atoi(argv[10]);
    auto data = load<float>(dir + "data");
    auto norms = load<float>(dir + "norms");
    auto old = load<unsigned>(dir + "old");
    auto order = load<unsigned>(dir + "order");
    std::vector<unsigned> out((size_t)n * k, 7);
    launch({rows, 1, 1}, {threads, 1, 1}, [&] {
        refine_graph(data.data(), l2 ? norms.data() : nullptr, dim, n, old.data(), k, fan, cap,
                     ordered ? order.data() : nullptr, out.data());
    });
    save(dir + "out", out);"#;
    let Some(exe) = host_build(d, "cagra.cu", main) else {
        return;
    };
    // Dimensions 128 (whole 32-column steps), 45 (32 + 8 + a tail of 5) and 13 (8 + 5); lists
    // of 8 (fan limited to k), 16 and 64 (slots exactly 128). The kernel refines 50 rows, the
    // first 50 or (with a row order) the first 50 of a shuffled order; their candidates come
    // from all rows. Rows come in threes: a row, its copy (scores
    // tie, the row order decides) and a copy moved by about 1e-6 of each value (scores a
    // rounding apart, so the order of the additions decides). Lists hold repeats, the row
    // itself and empty slots.
    let settings = [
        (128usize, 16usize, Metric::L2, 128u32, false),
        (45, 64, Metric::L2, 64, true),
        (13, 8, Metric::InnerProduct, 32, false),
        (45, 16, Metric::Cosine, 128, true),
    ];
    for (dim, k, metric, threads, ordered) in settings {
        let (n, rows) = (600usize, 50usize);
        let mut data = random(n, dim, 61 + dim as u64);
        let mut rng = Rng::new(71);
        for r in 2..n {
            let before = data.row(r - 1).to_owned();
            match r % 3 {
                2 => data.row_mut(r).assign(&before),
                0 => data
                    .row_mut(r)
                    .assign(&before.mapv(|v| v * (1.0 + (rng.uniform() as f32 - 0.5) * 2e-6))),
                _ => {}
            }
        }
        let norms = match metric {
            Metric::L2 => vecbuild::metric::squared_norms(data.view()),
            _ => Vec::new(),
        };
        let mut rng = Rng::new(67);
        let neighbors: Vec<u32> = (0..n * k)
            .map(|i| match rng.below(40) {
                0 => u32::MAX,
                1 => (i / k) as u32,
                2 => (i / k) as u32 ^ 1,
                _ => rng.below(n as u64) as u32,
            })
            .collect();
        let mut cpu = Graph {
            degree: k,
            neighbors,
        };
        write(&d.join("data"), data.as_slice().unwrap());
        write(&d.join("norms"), &norms);
        write(&d.join("old"), &cpu.neighbors);
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        write(&d.join("order"), &order);
        let fan = knn_graph::REFINE_FAN.min(k);
        let cap = vecbuild::backend::cuda::refine_slots(k, fan);
        let l2 = u32::from(metric == Metric::L2);
        let args = [
            rows,
            n,
            dim,
            k,
            fan,
            cap,
            l2 as usize,
            threads as usize,
            ordered as usize,
        ];
        run_driver(&exe, d, &args.map(|v| v.to_string()));
        knn_graph::refine(data.view(), &norms, metric, &mut cpu, fan, false);
        let got = read_u32(&d.join("out"));
        let refined: Vec<usize> = match ordered {
            true => order[..rows].iter().map(|&r| r as usize).collect(),
            false => (0..rows).collect(),
        };
        for r in 0..n {
            let (g, c) = (&got[r * k..(r + 1) * k], &cpu.neighbors[r * k..(r + 1) * k]);
            match refined.contains(&r) {
                true => assert_eq!(g, c, "dim {dim}, k {k}, {metric:?}: row {r}"),
                false => assert!(g.iter().all(|&v| v == 7), "row {r} written, not refined"),
            }
        }
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cagra_search_kernel_walks_as_the_cpu_search_does() {
    use vecbuild::search::cagra::CagraSearchParams;
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    unsigned n = std::atoi(argv[2]);
    int dim = std::atoi(argv[3]), degree = std::atoi(argv[4]);
    unsigned nq = std::atoi(argv[5]);
    int n_seeds = std::atoi(argv[6]), levels = std::atoi(argv[7]), up_m = std::atoi(argv[8]);
    unsigned up_nodes = std::atoi(argv[9]);
    int up_list = std::atoi(argv[10]), list = std::atoi(argv[11]), width = std::atoi(argv[12]);
    int max_iter = std::atoi(argv[13]), k = std::atoi(argv[14]), p = std::atoi(argv[15]);
    int cands_p2 = std::atoi(argv[16]), table = std::atoi(argv[17]), team = std::atoi(argv[18]);
    auto vectors = load<float>(dir + "vectors");
    auto norms = load<float>(dir + "norms");
    auto graph = load<unsigned>(dir + "graph");
    auto queries = load<float>(dir + "queries");
    auto seeds = load<unsigned>(dir + "seeds");
    auto up_rows = load<unsigned>(dir + "up_rows");
    auto up_graph = load<unsigned>(dir + "up_graph");
    auto up_offsets = load<long long>(dir + "up_offsets");
    std::vector<float> score((size_t)nq * k, -1.0f);
    std::vector<unsigned> row((size_t)nq * k, 7);
    std::vector<unsigned long long> stats(2, 0);
    launch({nq, 1, 1}, {SEARCH_THREADS, 1, 1}, [&] {
        cagra_search(vectors.data(), norms.data(), graph.data(), n, dim, degree, queries.data(),
                     seeds.data(), n_seeds, up_rows.data(), up_graph.data(), up_offsets.data(),
                     levels, up_m, up_nodes, up_list, list, width, max_iter, k, p, cands_p2,
                     table, team,
                     score.data(), row.data(), stats.data());
    });
    save(dir + "rows", row);"#;
    let Some(exe) = host_build(d, "cagra_search.cu", main) else {
        return;
    };
    // dim 16 takes the float4 loads, 13 the scalar ones. 16 queries each: a block of 256
    // host threads meets at ~700 barriers per query, about a second of this machine's time.
    for (dim, itopk, width) in [(16usize, 32usize, 1usize), (13, 64, 4)] {
        generate_dataset(d, 3000, dim, 30, 16);
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
        let searcher = vecbuild::Searcher::open(d.join("c.vbx")).unwrap();
        let mut index = searcher.cagra_index().unwrap();
        // The GPU walks on the vectors: the CPU's oracle is its exact walk.
        index.codes = None;
        let files = [d.join("q.parquet")];
        let (_, queries, _) = vecbuild::io::read_all(&files, &Default::default()).unwrap();
        let h = index.hierarchy.expect("the build made upper levels");
        let offsets = h.level_offsets();
        write(&d.join("vectors"), index.vectors.as_slice().unwrap());
        write(&d.join("norms"), index.sq_norms);
        write(&d.join("graph"), index.graph);
        write(&d.join("queries"), queries.as_slice().unwrap());
        write(&d.join("up_rows"), h.rows);
        write(&d.join("up_graph"), h.graph);
        write(&d.join("up_offsets"), &offsets);
        let k = 10;
        {
            let p = CagraSearchParams {
                itopk_size: itopk,
                search_width: width,
                max_iterations: 0,
            };
            let (cpu, _) = index.search(queries.view(), k, &p).unwrap();
            // The kernel's arguments as src/backend/cuda/cagra.rs passes them.
            let cands = (width * index.degree).max(h.m).max(1);
            let shape =
                vecbuild::backend::cuda::cagra_search_layout(dim, itopk, cands, width).unwrap();
            let seeds = index.seed_rows(&p);
            write(&d.join("seeds"), &[seeds.as_slice(), &[u32::MAX]].concat());
            let args = [
                index.vectors.nrows(),
                dim,
                index.degree,
                queries.nrows(),
                seeds.len(),
                h.counts.len(),
                h.m,
                h.rows.len(),
                h.level1_width(itopk, index.degree),
                itopk,
                width,
                index.max_iterations(&p),
                k,
                shape.p,
                shape.cands_p2,
                shape.table,
                shape.team,
            ];
            run_driver(&exe, d, &args.map(|v| v.to_string()));
            let got = read_u32(&d.join("rows"));
            let same = (0..queries.nrows())
                .filter(|&q| (0..k).all(|j| got[q * k + j] as u64 == cpu.rows[[q, j]]))
                .count();
            // As on the GPU: the same walk, lists apart only where float rounding reorders a
            // near-tie (the kernel adds a row's products in another order than the CPU).
            eprintln!("dim {dim}, itopk {itopk}, width {width}: {same} of 16 lists as the CPU's");
            assert!(
                same + 1 >= queries.nrows(),
                "dim {dim}, itopk {itopk}, width {width}: {same} of {} lists as the CPU's",
                queries.nrows()
            );
        }
    }
}

#[test]
#[cfg(feature = "cuda")]
fn ivf_pq_scan_kernel_scores_and_keeps_what_the_cpu_scan_does() {
    use vecbuild::backend::cuda::{
        ivf_pq_probe_arrays, ivf_pq_select_slots, ivf_pq_tables, IvfPqTables,
    };
    use vecbuild::index::ivf_pq::{build, IvfPqParams};
    use vecbuild::search::ivf_pq::IvfPqIndex;
    use vecbuild::Metric;
    let dir = tmp();
    let d = dir.path();
    let main = r#"
    unsigned b = std::atoi(argv[2]);
    int dim = std::atoi(argv[3]), dim_pad = std::atoi(argv[4]), n_lists = std::atoi(argv[5]);
    int pq_dim = std::atoi(argv[6]), dsub = std::atoi(argv[7]), ksub = std::atoi(argv[8]);
    int n_probes = std::atoi(argv[9]), ip = std::atoi(argv[10]), k = std::atoi(argv[11]);
    int kp = std::atoi(argv[12]);
    bool global = std::atoi(argv[13]);
    int slots = std::atoi(argv[14]);
    auto queries = load<float>(dir + "queries");
    auto centroids = load<float>(dir + "centroids");
    auto books = load<float>(dir + "books");
    auto probes = load<unsigned>(dir + "probes");
    auto bases = load<float>(dir + "bases");
    auto offsets = load<long long>(dir + "offsets");
    auto codes = load<unsigned char>(dir + "codes");
    auto rows = load<unsigned>(dir + "rows");
    std::vector<float> work(global ? (size_t)b * (dim_pad + pq_dim * ksub) : 0, -7.0f);
    std::vector<float> score((size_t)b * k, -1.0f);
    std::vector<unsigned> row((size_t)b * k, 7);
    launch({b, 1, 1}, {SELECT_THREADS, 1, 1}, [&] {
        ivf_pq_scan(queries.data(), dim, dim_pad, centroids.data(), n_lists, books.data(), pq_dim,
                    dsub, ksub, probes.data(), bases.data(), n_probes, ip, offsets.data(),
                    codes.data(), rows.data(), global ? work.data() : nullptr, slots, k, kp,
                    score.data(), row.data());
    });
    save(dir + "score", score);
    save(dir + "row", row);"#;
    let Some(exe) = host_build(d, "select.cu", main) else {
        return;
    };
    let (n, dim, nq, n_lists, max_probes) = (3000usize, 20usize, 12usize, 16usize, 5usize);
    let mut data = random(n, dim, 53);
    // Copies of earlier rows: the same list and code, so tied scores the row number orders.
    for r in (0..n).step_by(7).skip(1) {
        let from = data.row(r / 7).to_owned();
        data.row_mut(r).assign(&from);
    }
    let queries = random(nq, dim, 59);
    // pq_dim 6: sub-spaces of 4 (codewords read 4 floats at a time) with the last padded, two
    // past the sums of four; pq_dim 5 with 5 bits: tables of 32 entries, one past the sums of
    // four; pq_dim 16: codes read 16 at a time, codewords of 2 floats; pq_dim 7: codewords of 3
    // floats, read one by one.
    for (metric, pq_dim, pq_bits) in [
        (Metric::L2, 6, 8),
        (Metric::InnerProduct, 5, 5),
        (Metric::L2, 16, 8),
        (Metric::InnerProduct, 16, 6),
        (Metric::L2, 7, 8),
    ] {
        let params = IvfPqParams {
            n_lists,
            pq_dim,
            pq_bits,
            kmeans_n_iters: 5,
            max_train_rows: n,
            refine: false,
            seed: 3,
        };
        let built = build(&CpuBackend, data.view(), metric, &params, None).unwrap();
        let transposed = built.pq.transposed();
        let norms = vecbuild::metric::squared_norms(built.centroids.view());
        let index = IvfPqIndex {
            metric,
            centroids: built.centroids.view(),
            centroid_sq_norms: &norms,
            pq: &built.pq,
            pq_transposed: &transposed,
            list_offsets: &built.list_offsets,
            list_rows: &built.list_rows,
            codes: built.codes.as_slice().unwrap(),
            vectors: None,
        };
        // Query i probes its (i mod 5) + 1 nearest lists; the kernel's rows are padded.
        let mut probes = index
            .probes(&CpuBackend, queries.view(), max_probes)
            .unwrap();
        for (i, p) in probes.iter_mut().enumerate() {
            p.truncate(i % max_probes + 1);
        }
        let (lists, bases) = ivf_pq_probe_arrays(&probes, max_probes);
        let rows: Vec<u32> = built.list_rows.iter().map(|&r| r as u32).collect();
        let offsets: Vec<i64> = built.list_offsets.iter().map(|&o| o as i64).collect();
        write(&d.join("queries"), queries.as_slice().unwrap());
        write(&d.join("centroids"), built.centroids.as_slice().unwrap());
        write(&d.join("books"), built.pq.codebooks.as_slice().unwrap());
        write(&d.join("probes"), &lists);
        write(&d.join("bases"), &bases);
        write(&d.join("offsets"), &offsets);
        write(&d.join("codes"), built.codes.as_slice().unwrap());
        write(&d.join("rows"), &rows);
        let ksub = built.pq.ksub();
        // What the backend chooses on a GPU with 227 KiB (shared) and with 512 bytes beside
        // the kernel's own 8 bytes and 512 slots (global).
        let (entries, own, slots) = (pq_dim * ksub, 8, 512);
        assert_eq!(
            ivf_pq_tables(dim, entries, slots, 227 << 10, own),
            IvfPqTables::Shared(slots * 8 + (dim.div_ceil(4) * 4 + entries) * 4)
        );
        assert_eq!(
            ivf_pq_tables(dim, entries, slots, own + slots * 8 + 512, own),
            IvfPqTables::Global(dim.div_ceil(4) * 4 + entries)
        );
        // The slots hold the best kp and a round of candidates from all 256 threads.
        let slot_counts: Vec<usize> = [1, 16, 256, 512, 1024].map(ivf_pq_select_slots).to_vec();
        assert_eq!(slot_counts, [512, 512, 512, 1024, 2048]);
        for k in [1usize, 10, 300] {
            let cpu = index.scan(queries.view(), &probes, k);
            for global in [false, true] {
                let args = [
                    nq,
                    dim,
                    dim.div_ceil(4) * 4,
                    n_lists,
                    pq_dim,
                    built.pq.dsub(),
                    ksub,
                    max_probes,
                    (metric == Metric::InnerProduct) as usize,
                    k,
                    k.next_power_of_two(),
                    global as usize,
                    ivf_pq_select_slots(k.next_power_of_two()),
                ];
                run_driver(&exe, d, &args.map(|v| v.to_string()));
                let (score, row) = (read_f32(&d.join("score")), read_u32(&d.join("row")));
                for (q, found) in cpu.iter().enumerate() {
                    for j in 0..k {
                        let (s, r) = (score[q * k + j], row[q * k + j]);
                        match found.get(j) {
                            Some(nb) => assert!(
                                s.to_bits() == nb.score.to_bits() && r as u64 == nb.row,
                                "{metric:?}, k {k}, global {global}: query {q} slot {j}: ({s}, {r}) where the CPU has ({}, {})",
                                nb.score,
                                nb.row
                            ),
                            None => assert!(
                                s == f32::INFINITY && r == u32::MAX,
                                "{metric:?}, k {k}: query {q} slot {j} should be empty"
                            ),
                        }
                    }
                }
            }
        }
        // Ties were there to order.
        let cpu = index.scan(queries.view(), &probes, 300);
        assert!(
            cpu.iter()
                .any(|f| f.windows(2).any(|w| w[0].score == w[1].score)),
            "{metric:?}: no tied scores among the candidates"
        );
    }
}
