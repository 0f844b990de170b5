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

/// `q·c` for `u8` lanes `c` (8-bit codes, see [`crate::index::sq8`]), with the fastest kernel
/// this CPU runs.
#[inline]
pub fn dot_u8(q: &[f32], c: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::backend::cpu::has_avx2_fma() {
            // SAFETY: AVX2 and FMA were detected at run time just above.
            return unsafe { dot_u8_avx2(q, c) };
        }
    }
    dot_u8_portable(q, c)
}

/// `‖u − s∘c‖²` for `u8` lanes `c` (the squared L2 distance from `q` to the 8-bit code `c` with
/// per-dimension `min` and `scale`, given `u = q − min`), with the fastest kernel this CPU runs.
#[inline]
pub fn l2_u8(u: &[f32], s: &[f32], c: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::backend::cpu::has_avx2_fma() {
            // SAFETY: AVX2 and FMA were detected at run time just above.
            return unsafe { l2_u8_avx2(u, s, c) };
        }
    }
    l2_u8_portable(u, s, c)
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

/// Portable baseline of [`dot_u8`].
pub fn dot_u8_portable(q: &[f32], c: &[u8]) -> f32 {
    let n = q.len().min(c.len());
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for k in 0..chunks {
        for l in 0..8 {
            acc[l] += q[k * 8 + l] * c[k * 8 + l] as f32;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        sum += q[i] * c[i] as f32;
    }
    sum
}

/// Portable baseline of [`l2_u8`].
pub fn l2_u8_portable(u: &[f32], s: &[f32], c: &[u8]) -> f32 {
    let n = u.len().min(s.len()).min(c.len());
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for k in 0..chunks {
        for (l, a) in acc.iter_mut().enumerate() {
            let i = k * 8 + l;
            let d = u[i] - s[i] * c[i] as f32;
            *a += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        let d = u[i] - s[i] * c[i] as f32;
        sum += d * d;
    }
    sum
}

/// AVX2+FMA [`l2_u8`], four accumulators.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn l2_u8_avx2(u: &[f32], s: &[f32], c: &[u8]) -> f32 {
    let n = u.len().min(s.len()).min(c.len());
    let (pu, ps, pc) = (u.as_ptr(), s.as_ptr(), c.as_ptr());
    // SAFETY (all steps): j + 8 ≤ n keeps every 8-float load in `u` and `s` and every 8-byte
    // load in `c`, which hold at least n elements.
    let (mut sum, tail) = sum_steps(n, |j, acc| l2_u8_step(pu.add(j), ps.add(j), pc.add(j), acc));
    for i in tail..n {
        let d = u[i] - s[i] * c[i] as f32;
        sum += d * d;
    }
    sum
}

/// Runs `step(j, acc)` for `j = 0, 8, 16, …` while `j + 8 ≤ n`, over four accumulators (32
/// lanes a round), and returns the sum of all lanes and where the scalar tail starts.
///
/// # Safety
/// AVX2 and FMA; `step` must be safe to call for every such `j`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn sum_steps(
    n: usize,
    step: impl Fn(usize, std::arch::x86_64::__m256) -> std::arch::x86_64::__m256,
) -> (f32, usize) {
    use std::arch::x86_64::*;
    let mut a = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (l, acc) in a.iter_mut().enumerate() {
            *acc = step(i + 8 * l, *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        a[0] = step(i, a[0]);
        i += 8;
    }
    let lanes = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
    (hsum(lanes), i)
}

/// `acc + (u[0..8] − s[0..8]∘c[0..8])²`.
///
/// # Safety
/// AVX2 and FMA; 8 floats readable at `u` and `s`, 8 bytes at `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn l2_u8_step(
    u: *const f32,
    s: *const f32,
    c: *const u8,
    acc: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let codes = _mm_loadl_epi64(c as *const __m128i);
    let x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
    let d = _mm256_fnmadd_ps(_mm256_loadu_ps(s), x, _mm256_loadu_ps(u));
    _mm256_fmadd_ps(d, d, acc)
}

/// AVX2+FMA [`dot_u8`]: eight codes widened to `i32`, converted to `f32` and multiplied in per
/// step, four accumulators.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_u8_avx2(q: &[f32], c: &[u8]) -> f32 {
    let n = q.len().min(c.len());
    let (pq, pc) = (q.as_ptr(), c.as_ptr());
    // SAFETY (all steps): j + 8 ≤ n keeps every 8-float load in `q` and every 8-byte load in
    // `c`, which hold at least n elements.
    let (mut sum, tail) = sum_steps(n, |j, acc| u8_step(pq.add(j), pc.add(j), acc));
    for i in tail..n {
        sum += q[i] * c[i] as f32;
    }
    sum
}

/// `acc + q[0..8] · c[0..8]`.
///
/// # Safety
/// AVX2 and FMA; 8 floats readable at `q`, 8 bytes at `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn u8_step(
    q: *const f32,
    c: *const u8,
    acc: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let codes = _mm_loadl_epi64(c as *const __m128i);
    let x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
    _mm256_fmadd_ps(_mm256_loadu_ps(q), x, acc)
}

/// The sum of a vector's eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(s: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let hi = _mm256_extractf128_ps(s, 1);
    let lo = _mm256_castps256_ps128(s);
    let s4 = _mm_add_ps(hi, lo);
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    _mm_cvtss_f32(s1)
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
    let mut sum = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    while i < n {
        sum += q[i] * x[i];
        i += 1;
    }
    sum
}

/// Asks the CPU to start loading the first `bytes` of `row` into cache (a hint; no effect on
/// results).
#[inline]
pub fn prefetch<T>(row: &[T], bytes: usize) {
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

    #[test]
    fn simd_u8_dot_matches_the_f64_reference_at_every_length() {
        let mut rng = crate::synth::Rng::new(8);
        for n in 0..140 {
            let q: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let c: Vec<u8> = (0..n).map(|i| (i * 37 + n * 11) as u8).collect();
            let exact: f64 = q.iter().zip(&c).map(|(a, &b)| *a as f64 * b as f64).sum();
            let tol = 1e-4 * 255.0 * (1.0 + n as f64).sqrt();
            assert!(
                (dot_u8_portable(&q, &c) as f64 - exact).abs() < tol,
                "portable n={n}"
            );
            assert!(
                (dot_u8(&q, &c) as f64 - exact).abs() < tol,
                "dispatched n={n}"
            );
        }
    }
}
