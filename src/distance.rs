//! One-pair distance kernels for graph search, where candidates arrive one at a time and a GEMM
//! does not apply: the dot product `q·x` (AVX2+FMA with runtime detection, and the portable
//! baseline it is tested against) and a prefetch hint for rows about to be scored.
//!
//! Graph search scores every metric through the dot product: `‖x‖² − 2q·x` for L2 (norms
//! stored at build), `−q·x` for inner product and cosine (see [`crate::Metric`]).

/// `q·x` over equal-length slices, with the fastest kernel this CPU runs.
#[inline]
pub fn dot(q: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::backend::cpu::has_avx2_fma() {
            // SAFETY: AVX2 and FMA were detected at run time just above.
            return unsafe { dot_avx2(q, x) };
        }
    }
    dot_portable(q, x)
}

/// Ranking score of row `x` (squared norm `x_sq_norm`, used by L2 only) for query `q`:
/// `‖x‖² − 2q·x` for L2, `−q·x` otherwise — the internal score less the query's constant.
#[inline]
pub fn ranking_score(metric: crate::Metric, q: &[f32], x: &[f32], x_sq_norm: f32) -> f32 {
    let d = dot(q, x);
    match metric {
        crate::Metric::L2 => x_sq_norm - 2.0 * d,
        _ => -d,
    }
}

/// Portable baseline: eight independent partial sums, so the compiler can vectorise it.
pub fn dot_portable(q: &[f32], x: &[f32]) -> f32 {
    let n = q.len().min(x.len());
    let (q, x) = (&q[..n], &x[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += q[c * 8 + l] * x[c * 8 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        sum += q[i] * x[i];
    }
    sum
}

/// AVX2+FMA: four 8-lane accumulators (32 floats per step) hide the FMA latency.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_avx2(q: &[f32], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = q.len().min(x.len());
    let (pq, px) = (q.as_ptr(), x.as_ptr());
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    let mut a2 = _mm256_setzero_ps();
    let mut a3 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): i + 32 ≤ n (or i + 8 ≤ n below) keeps every 8-float load inside
    // both slices, which hold at least n floats.
    while i + 32 <= n {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), _mm256_loadu_ps(px.add(i)), a0);
        a1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pq.add(i + 8)),
            _mm256_loadu_ps(px.add(i + 8)),
            a1,
        );
        a2 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pq.add(i + 16)),
            _mm256_loadu_ps(px.add(i + 16)),
            a2,
        );
        a3 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pq.add(i + 24)),
            _mm256_loadu_ps(px.add(i + 24)),
            a3,
        );
        i += 32;
    }
    while i + 8 <= n {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), _mm256_loadu_ps(px.add(i)), a0);
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    let hi = _mm256_extractf128_ps(s, 1);
    let lo = _mm256_castps256_ps128(s);
    let s4 = _mm_add_ps(hi, lo);
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    let mut sum = _mm_cvtss_f32(s1);
    while i < n {
        sum += q[i] * x[i];
        i += 1;
    }
    sum
}

/// Asks the CPU to start loading the first `bytes` of `row` into cache (a hint; no effect on
/// results).
#[inline]
pub fn prefetch(row: &[f32], bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let lines = bytes.min(std::mem::size_of_val(row)).div_ceil(64);
        let p = row.as_ptr() as *const i8;
        for l in 0..lines {
            // SAFETY: prefetch never faults; the address stays within (or one line past the
            // start of) `row`'s allocation.
            unsafe { _mm_prefetch(p.wrapping_add(l * 64), _MM_HINT_T0) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (row, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_dot_matches_the_f64_reference_at_every_length() {
        let mut rng = crate::synth::Rng::new(7);
        for n in 0..140 {
            let q: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let x: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let exact: f64 = q.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let tol = 1e-4 * (1.0 + n as f64).sqrt();
            assert!(
                (dot_portable(&q, &x) as f64 - exact).abs() < tol,
                "portable n={n}"
            );
            assert!((dot(&q, &x) as f64 - exact).abs() < tol, "dispatched n={n}");
        }
    }
}
