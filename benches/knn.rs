//! The exact k-NN kernel (`cpu/knn/…`): the GEMM-tiled path against a scalar baseline that
//! computes every distance directly, single-threaded on both sides so the figures compare the
//! kernels, not the thread pools.
//!
//! Run: `cargo bench --bench knn`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use std::hint::black_box;
use vecbuild::backend::{cpu, Queries};
use vecbuild::metric::squared_norms;
use vecbuild::{Metric, TopK};

/// Every distance by a plain loop, fed to the same selection.
fn scalar(q: &Array2<f32>, x: &Array2<f32>, k: usize) -> Vec<TopK> {
    q.rows()
        .into_iter()
        .map(|qr| {
            let mut t = TopK::new(k);
            for (j, xr) in x.rows().into_iter().enumerate() {
                let d: f32 = qr
                    .iter()
                    .zip(xr.iter())
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                t.push(d, j as u64);
            }
            t
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut group = c.benchmark_group("cpu/knn");
    group.sample_size(10);
    for &(nq, nb, dim) in &[(256usize, 20_000usize, 128usize), (256, 5_000, 768)] {
        let data = vecbuild::synth::clustered(nb, nq, dim, 100, 1);
        let (q, x) = (data.queries, data.base);
        let (qn, xn) = (squared_norms(q.view()), squared_norms(x.view()));
        let name = format!("{nq}x{nb}x{dim}");
        group.throughput(Throughput::Elements((nq * nb) as u64));
        group.bench_function(BenchmarkId::new("gemm", &name), |b| {
            b.iter(|| {
                pool.install(|| {
                    let mut topk: Vec<TopK> = (0..nq).map(|_| TopK::new(10)).collect();
                    let queries = Queries {
                        vectors: q.view(),
                        sq_norms: &qn,
                        metric: Metric::L2,
                    };
                    cpu::knn_block(queries, x.view(), &xn, 0, &mut topk);
                    black_box(topk)
                })
            })
        });
        group.bench_function(BenchmarkId::new("scalar", &name), |b| {
            b.iter(|| black_box(scalar(&q, &x, 10)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
