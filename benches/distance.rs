//! The one-pair scoring kernels of graph search (`cpu/score/…`), over rows picked at random from
//! a 200k × 128 table as a graph walk picks them (each iteration scores the next 4096 of 1M
//! random picks, so rows come from memory, not from a warm cache): `f32` rows (`dot`, 100 MB)
//! against 8-bit codes (`l2_u8`, `dot_u8`, 25 MB), each with its portable baseline.
//! Single-threaded, no prefetch: one row costs about a memory latency whatever its size
//! (measured 6.4M f32 rows/s, 6.7M code rows/s with `l2_u8`, 2.5M with the portable loops), so
//! codes pay off in search by fitting more rows in cache, not by moving fewer bytes per row.
//!
//! Run: `cargo bench --bench distance`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vecbuild::distance::{dot, dot_portable, dot_u8, dot_u8_portable, l2_u8, l2_u8_portable};
use vecbuild::index::sq8::Sq8;

const ROWS: usize = 200_000;
const DIM: usize = 128;
const PICKS: usize = 4096;
const ALL_PICKS: usize = 1 << 20;

fn bench(c: &mut Criterion) {
    let data = vecbuild::synth::clustered(ROWS, 1, DIM, 1000, 1);
    let (x, q) = (data.base, data.queries);
    let q = q.row(0).to_vec();
    let sq = Sq8::train(x.view());
    let codes = sq.encode(x.view());
    let flat = x.as_slice().expect("standard layout");
    let u: Vec<f32> = q.iter().zip(&sq.min).map(|(a, m)| a - m).collect();
    let mut rng = vecbuild::synth::Rng::new(9);
    let all: Vec<usize> = (0..ALL_PICKS)
        .map(|_| rng.below(ROWS as u64) as usize)
        .collect();
    let window = std::cell::Cell::new(0usize);
    // The next PICKS picks, wrapping around.
    let next = || {
        let at = window.get();
        window.set((at + PICKS) % ALL_PICKS);
        &all[at..at + PICKS]
    };
    let f32_row = |r: usize| &flat[r * DIM..(r + 1) * DIM];
    let code_row = |r: usize| &codes[r * DIM..(r + 1) * DIM];
    let mut group = c.benchmark_group("cpu/score");
    group.throughput(Throughput::Elements(PICKS as u64));
    let name = format!("{ROWS}x{DIM}");
    group.bench_function(BenchmarkId::new("f32_dot", &name), |b| {
        b.iter(|| next().iter().map(|&r| dot(&q, f32_row(r))).sum::<f32>())
    });
    group.bench_function(BenchmarkId::new("f32_dot_portable", &name), |b| {
        b.iter(|| {
            next()
                .iter()
                .map(|&r| dot_portable(&q, f32_row(r)))
                .sum::<f32>()
        })
    });
    group.bench_function(BenchmarkId::new("u8_l2", &name), |b| {
        b.iter(|| {
            next()
                .iter()
                .map(|&r| l2_u8(&u, &sq.scale, code_row(r)))
                .sum::<f32>()
        })
    });
    group.bench_function(BenchmarkId::new("u8_l2_portable", &name), |b| {
        b.iter(|| {
            let scores = next()
                .iter()
                .map(|&r| l2_u8_portable(&u, &sq.scale, code_row(r)));
            scores.sum::<f32>()
        })
    });
    group.bench_function(BenchmarkId::new("u8_dot", &name), |b| {
        b.iter(|| next().iter().map(|&r| dot_u8(&q, code_row(r))).sum::<f32>())
    });
    group.bench_function(BenchmarkId::new("u8_dot_portable", &name), |b| {
        b.iter(|| {
            next()
                .iter()
                .map(|&r| dot_u8_portable(&q, code_row(r)))
                .sum::<f32>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
