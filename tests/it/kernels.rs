//! Our CUDA kernels' arithmetic, checked on the host: a kernel whose threads share nothing is
//! compiled as C++ (a few lines define CUDA's built-ins), every thread of every block is run in
//! turn, and the results must be the CPU code's, bit for bit. This checks the kernels' indexing
//! and arithmetic without a GPU; tests/it/cuda.rs checks the same results on a GPU.

use crate::common::*;
use ndarray::Array2;
use std::path::Path;
use std::process::Command;
use vecbuild::backend::CpuBackend;
use vecbuild::index::kmeans;
use vecbuild::index::pq::ProductQuantizer;
use vecbuild::synth::Rng;

/// CUDA's built-ins for kernels that use no shared memory, barriers or warp operations, and a
/// driver that runs `centroid_means` or `pq_encode` on files in a folder.
const HOST_DRIVER: &str = r#"
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __launch_bounds__(...)
#define __restrict__ __restrict
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
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
// Every thread of every block, one after another.
template <class F> void run(Dim3 grid, Dim3 block, F kernel) {
    gridDim = grid;
    blockDim = block;
    for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x)
            for (unsigned t = 0; t < block.x; ++t) {
                blockIdx = {x, y, 0};
                threadIdx = {t, 0, 0};
                kernel();
            }
}
int main(int argc, char** argv) {
    std::string what = argv[1], dir = std::string(argv[2]) + "/";
    if (what == "means") {
        int dim = std::atoi(argv[3]);
        unsigned k = std::atoi(argv[4]);
        auto data = load<float>(dir + "data");
        auto order = load<unsigned>(dir + "order");
        auto start = load<unsigned>(dir + "start");
        auto c = load<float>(dir + "centroids");
        run({k, 1, 1}, {MEAN_THREADS, 1, 1},
            [&] { centroid_means(data.data(), dim, order.data(), start.data(), c.data()); });
        save(dir + "out", c);
    } else {
        long long rows = std::atoll(argv[3]);
        int dim = std::atoi(argv[4]), dsub = std::atoi(argv[5]), ksub = std::atoi(argv[6]);
        unsigned pq_dim = std::atoi(argv[7]);
        auto x = load<float>(dir + "residuals");
        auto books = load<float>(dir + "books");
        std::vector<unsigned char> codes(rows * pq_dim, 0xff);
        run({(unsigned)((rows + ENCODE_THREADS - 1) / ENCODE_THREADS), pq_dim, 1}, {ENCODE_THREADS, 1, 1},
            [&] { pq_encode(x.data(), rows, dim, dsub, ksub, books.data(), codes.data()); });
        save(dir + "out", codes);
    }
    return 0;
}
"#;

/// Compiles the driver around `kernels/<file>`, or `None` (test skipped, said) where there is
/// no C++ compiler and CI does not require one.
fn host_build(dir: &Path, file: &str) -> Option<std::path::PathBuf> {
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kernels")
        .join(file);
    let src = dir.join("driver.cpp");
    std::fs::write(
        &src,
        HOST_DRIVER.replace("KERNELS", &kernels.display().to_string()),
    )
    .unwrap();
    let exe = dir.join("driver");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&cxx)
        .args([
            "-std=c++17",
            "-O2",
            "-ffp-contract=off",
            "-Wno-unknown-pragmas",
            "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .output();
    match built {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{cxx} could not compile kernels/{file} on the host:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(exe)
        }
        Err(e) if std::env::var_os("VECBUILD_REQUIRE_NVRTC").is_none() => {
            eprintln!("SKIPPED: no C++ compiler ({cxx}: {e}); CI requires one");
            None
        }
        Err(e) => panic!("no C++ compiler ({cxx}: {e})"),
    }
}

fn write<T: bytemuck::Pod>(path: &Path, v: &[T]) {
    std::fs::write(path, bytemuck::cast_slice(v)).unwrap();
}

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_fn((rows, cols), |_| rng.uniform() as f32 * 4.0 - 2.0)
}

#[test]
fn centroid_means_kernel_moves_centroids_as_the_cpu_update_does() {
    let dir = tmp();
    let d = dir.path();
    let Some(exe) = host_build(d, "quantize.cu") else {
        return;
    };
    // 37 dimensions (threads stride past the block's 128 only when dim > 128: also 300).
    for (n, dim, k) in [(3000usize, 37usize, 25usize), (500, 300, 7)] {
        let data = random(n, dim, 5);
        let mut rng = Rng::new(9);
        // Cluster 3 left empty: its centroid must stay where it is.
        let labels: Vec<u32> = (0..n)
            .map(|_| match rng.below(k as u64) as u32 {
                3 => 4,
                l => l,
            })
            .collect();
        let start_centroids = random(k, dim, 11);
        let mut cpu = start_centroids.clone();
        let sizes = kmeans::update(data.view(), &labels, &mut cpu);
        assert_eq!(sizes[3], 0);
        let groups = kmeans::group_by_label(&labels, k);
        let start: Vec<u32> = groups.start.iter().map(|&s| s as u32).collect();
        write(&d.join("data"), data.as_slice().unwrap());
        write(&d.join("order"), &groups.order);
        write(&d.join("start"), &start);
        write(&d.join("centroids"), start_centroids.as_slice().unwrap());
        let out = Command::new(&exe)
            .args([
                "means",
                d.to_str().unwrap(),
                &dim.to_string(),
                &k.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(&std::fs::read(d.join("out")).unwrap());
        let want = cpu.as_slice().unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "centroid {} dim {}: {g} vs {w}",
                i / dim,
                i % dim
            );
        }
    }
}

#[test]
fn pq_encode_kernel_finds_the_cpu_codes_of_every_sub_space() {
    let dir = tmp();
    let d = dir.path();
    let Some(exe) = host_build(d, "quantize.cu") else {
        return;
    };
    // dim 30 in 8 sub-spaces of 4: the last one is 2 columns and 2 zeros. 4-bit and 8-bit codes.
    for (dim, pq_dim, pq_bits) in [(30usize, 8usize, 4u32), (64, 32, 8), (16, 1, 8)] {
        let train = random(4000, dim, 21);
        let pq = ProductQuantizer::train(&CpuBackend, train.view(), pq_dim, pq_bits, 5, 3).unwrap();
        let residuals = random(700, dim, 23);
        let cpu = pq.encode(&CpuBackend, residuals.view()).unwrap();
        write(&d.join("residuals"), residuals.as_slice().unwrap());
        write(&d.join("books"), pq.codebooks.as_slice().unwrap());
        let args = [700, dim, pq.dsub(), pq.ksub(), pq_dim].map(|v| v.to_string());
        let out = Command::new(&exe)
            .args(["encode", d.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read(d.join("out")).unwrap();
        assert_eq!(
            got,
            cpu.as_slice().unwrap(),
            "dim {dim}, pq_dim {pq_dim}, {pq_bits} bits"
        );
    }
}
