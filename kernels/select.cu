// Selection kernels for exact k-NN, nearest-centroid assignment and IVF-PQ list scans.
//
// The first two read a tile of scores that cuBLAS wrote (row-major [rows, n], one row per query
// or data row, already scaled: -2·q·x for L2, -q·x otherwise), add a per-column term (‖x‖² for
// L2; none otherwise) and keep the best per row. Order is total, as on the CPU: smaller score
// first, then smaller column, so results are deterministic.
//
// Compiled at run time by NVRTC for the GPU present (src/backend/cuda), and in CI to sm_80 and
// sm_90 cubins. No headers: NVRTC needs no include paths.

#define SELECT_THREADS 256
#define SELECT_SLOTS 2048
// Columns a thread reads per round of select_topk.
#define SELECT_ROUND 4
#define NO_ROW 0xffffffffu

__device__ __forceinline__ bool before(float sa, unsigned ia, float sb, unsigned ib) {
    return sa < sb || (sa == sb && ia < ib);
}

// Sorts the first m (a power of two, at most SELECT_SLOTS) (score, column) pairs in shared
// memory, ascending by (score, column). Bitonic network: log2(m)·(log2(m)+1)/2 stages of m/2
// compare-exchanges, a barrier after each.
__device__ void bitonic_sort(float* s, unsigned* idx, unsigned m) {
    for (unsigned size = 2; size <= m; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            for (unsigned t = threadIdx.x; t < m / 2; t += blockDim.x) {
                unsigned i = 2 * t - (t & (stride - 1));
                unsigned j = i + stride;
                bool ascending = (i & size) == 0;
                float si = s[i], sj = s[j];
                unsigned ii = idx[i], ij = idx[j];
                if (before(sj, ij, si, ii) == ascending) {
                    s[i] = sj; s[j] = si;
                    idx[i] = ij; idx[j] = ii;
                }
            }
            __syncthreads();
        }
    }
}

// A block's running best k (select_topk, ivf_pq_scan): the best kp (k rounded up to a power of
// two) sorted at the front of s/idx in shared memory, candidates appended behind them (count of
// them), threshold the k-th best score so far (a candidate must score at most it).
__device__ void start_best(float* s, unsigned* idx, int slots, int* count, float* threshold,
                           float start) {
    for (int t = threadIdx.x; t < slots; t += blockDim.x) {
        s[t] = __int_as_float(0x7f800000);
        idx[t] = NO_ROW;
    }
    if (threadIdx.x == 0) {
        *count = 0;
        *threshold = start;
    }
    __syncthreads();
}

// Called by every thread after a round of appends: once `trigger` candidates have gathered (or
// on the last round, when any have), sorts the occupied prefix rounded up to a power of two,
// keeps the best and tightens the threshold.
__device__ void keep_best(float* s, unsigned* idx, int* count, float* threshold, int k, int kp,
                          int trigger, bool last) {
    __syncthreads();
    int filled = *count;
    __syncthreads();
    if (filled >= trigger || (last && filled > 0)) {
        unsigned m = 2;
        while (m < (unsigned)(kp + filled)) m <<= 1;
        bitonic_sort(s, idx, m);
        if (threadIdx.x == 0) {
            *count = 0;
            *threshold = fminf(*threshold, s[k - 1]);
        }
        // Everything behind the kept kp is spent: reset it for the next candidates.
        for (int t = kp + threadIdx.x; t < (int)m; t += blockDim.x) {
            s[t] = __int_as_float(0x7f800000);
            idx[t] = NO_ROW;
        }
        __syncthreads();
    }
}

// Best k (k <= 1024) of each row of a score tile.
//
// scores:     [rows, ld] row-major; the first n columns of each row are read
// col_add:    [n] added to every row's column (‖x‖² for L2), or null
// thresholds: [rows] a row's current k-th best score from earlier tiles (candidates scoring
//             above it cannot enter), or null for +inf
// out_score:  [rows, k] best first; empty slots are +inf
// out_col:    [rows, k] column numbers; empty slots are 0xffffffff
//
// grid: (rows), block: SELECT_THREADS. Per row: the block keeps the best kp (k rounded up to
// a power of two) in shared memory; columns that beat the threshold are appended behind them,
// SELECT_ROUND columns a thread per round (one at kp = 1024, where the buffer behind the best
// has room for only one round's worth beyond the kp waiting);
// once max(kp, block) have gathered (or the buffer could overflow, or the row ends), a bitonic
// sort of the occupied prefix, rounded up to a power of two, keeps the best and tightens the
// threshold. The first sort comes after one round, so it is small; after it almost every
// column fails the threshold test, and a row costs one coalesced read per column plus a few
// small sorts.
extern "C" __global__ void __launch_bounds__(SELECT_THREADS)
select_topk(const float* __restrict__ scores, long long ld, int n,
            const float* __restrict__ col_add, const float* __restrict__ thresholds,
            int k, int kp, float* __restrict__ out_score, unsigned* __restrict__ out_col) {
    __shared__ float s[SELECT_SLOTS];
    __shared__ unsigned idx[SELECT_SLOTS];
    __shared__ int count;
    __shared__ float threshold;

    const long long row = blockIdx.x;
    const float* r = scores + row * ld;
    const int cap = SELECT_SLOTS - kp;
    // A round reads `per` columns a thread, so a round can append that many a thread: the
    // buffer behind the best kp (at least 1024 slots, kp <= 1024) always has room for them.
    // Candidates gather until max(kp, block) are waiting, so rounds are as long as leaves room
    // for that many (SELECT_ROUND columns a thread, 1 at kp = 1024): a shorter wait would sort
    // the whole buffer for every few candidates.
    const int wait_for = max(kp, (int)blockDim.x);
    const int per = max(1, min(SELECT_ROUND, (cap - wait_for + 1) / (int)blockDim.x));
    const int round = per * (int)blockDim.x;
    const int trigger = min(wait_for, cap - round + 1);

    start_best(s, idx, SELECT_SLOTS, &count, &threshold,
               thresholds ? thresholds[row] : __int_as_float(0x7f800000));

    for (int start = 0; start < n; start += round) {
        // The round's loads first, then the tests: SELECT_ROUND reads in flight per thread,
        // and one pair of barriers (keep_best) per round rather than per column block.
        float v[SELECT_ROUND];
#pragma unroll
        for (int u = 0; u < SELECT_ROUND; ++u) {
            const int j = start + u * (int)blockDim.x + threadIdx.x;
            v[u] = u < per && j < n ? r[j] + (col_add ? col_add[j] : 0.0f) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < SELECT_ROUND; ++u) {
            const int j = start + u * (int)blockDim.x + threadIdx.x;
            if (u < per && j < n && v[u] <= threshold) {
                int pos = atomicAdd(&count, 1);
                s[kp + pos] = v[u];
                idx[kp + pos] = (unsigned)j;
            }
        }
        keep_best(s, idx, &count, &threshold, k, kp, trigger, start + round >= n);
    }

    for (int t = threadIdx.x; t < k; t += blockDim.x) {
        out_score[row * k + t] = s[t];
        out_col[row * k + t] = idx[t];
    }
}

// One dimension's term of an ADC table entry, added to o: (x_col − c)² for L2, −x_col·c for
// inner product; x is 0 past dim (the codebooks' zero padding).
__device__ __forceinline__ float adc_term(float o, const float* x, int dim, int col, float c, int ip) {
    const float xd = col < dim ? x[col] : 0.0f;
    if (ip) return __fsub_rn(o, __fmul_rn(xd, c));
    const float t = __fsub_rn(xd, c);
    return __fadd_rn(o, __fmul_rn(t, t));
}

// IVF-PQ list scan: each query's probed lists scored by asymmetric distance (ADC) through a
// lookup table, its best k kept. The CPU's arithmetic and order (src/search/ivf_pq.rs: the
// table of ProductQuantizer::table, the four running sums of scan_list), so the scores and
// the lists equal the CPU's for the same probes; ties go to the smaller row.
//
// queries:      [b, dim] (unit rows for cosine)
// centroids:    [n_lists, dim]
// books:        [pq_dim, ksub, dsub]: codeword j of sub-space m at (m·ksub + j)·dsub, its dsub
//               floats together (dimensions past dim are the zero padding's)
// probes:       [b, n_probes] list numbers; one of n_lists or more is skipped
// bases:        [b, n_probes] each list's constant: the probe's score for inner product (−q·c),
//               unused for L2
// ip:           0: L2, tables of the residual q − c, one per list; 1: inner product, tables of
//               q, one per query
// list_offsets: [n_lists + 1]; codes: [n, pq_dim] in list order; list_rows: [n] the row at each
//               position
// work:         null: the block's vector (dim_pad floats) and table (pq_dim · ksub floats) live
//               in dynamic shared memory; else [b, dim_pad + pq_dim · ksub] floats of global
//               memory, a region per block, for tables too large for shared memory
// slots:        the selection's (score, row) slots at the front of dynamic shared memory: a power
//               of two of at least kp + SELECT_THREADS (smaller than select_topk's fixed 2048
//               for small k, so more blocks fit on a multiprocessor beside their tables)
// out_score:    [b, k] best first, +inf where empty; out_row: [b, k] rows, 0xffffffff where empty
//
// grid: (b), block: SELECT_THREADS. Per list: the table is filled (each thread on one codeword
// column, stepping the sub-spaces), then
// a thread per code sums its pq_dim lookups and offers the row to the block's best k.
extern "C" __global__ void __launch_bounds__(SELECT_THREADS)
ivf_pq_scan(const float* __restrict__ queries, int dim, int dim_pad,
            const float* __restrict__ centroids, int n_lists, const float* __restrict__ books,
            int pq_dim, int dsub, int ksub, const unsigned* __restrict__ probes,
            const float* __restrict__ bases, int n_probes, int ip,
            const long long* __restrict__ list_offsets, const unsigned char* __restrict__ codes,
            const unsigned* __restrict__ list_rows, float* __restrict__ work, int slots, int k,
            int kp, float* __restrict__ out_score, unsigned* __restrict__ out_row) {
    __shared__ int count;
    __shared__ float threshold;
    extern __shared__ float region[];

    const long long q = blockIdx.x;
    const int entries = pq_dim * ksub;
    float* s = region;
    unsigned* idx = reinterpret_cast<unsigned*>(region + slots);
    float* x = work ? work + q * (long long)(dim_pad + entries) : region + 2 * slots;
    float* table = x + dim_pad;
    const float* qr = queries + q * dim;
    const int cap = slots - kp;
    const int trigger = min(max(kp, (int)blockDim.x), cap - (int)blockDim.x + 1);
    start_best(s, idx, slots, &count, &threshold, __int_as_float(0x7f800000));

    bool filled_table = false;
    for (int p = 0; p < n_probes; ++p) {
        const unsigned list = probes[q * n_probes + p];
        if (list >= (unsigned)n_lists) continue;
        if (!ip || !filled_table) {
            for (int d = threadIdx.x; d < dim; d += blockDim.x)
                x[d] = ip ? qr[d] : __fsub_rn(qr[d], centroids[(long long)list * dim + d]);
            __syncthreads();
            // Entry e = m·ksub + j for e = threadIdx.x, threadIdx.x + blockDim.x, …: ksub (a
            // power of two up to 256) divides the block, so a thread keeps its j and steps m
            // by blockDim / ksub, no division per entry; neighbouring threads read
            // neighbouring codewords.
            const int j = threadIdx.x % ksub, m_step = blockDim.x / ksub;
            for (int m = threadIdx.x / ksub; m < pq_dim; m += m_step) {
                const int e = m * ksub + j, c0 = m * dsub;
                // The codeword's floats in one or two loads where dsub allows (a warp reads 32
                // neighbouring codewords: contiguous), added in dimension order as ever.
                const float* cw = books + (long long)e * dsub;
                float o = 0.0f;
                int d = 0;
                if ((dsub & 3) == 0) {
                    for (; d < dsub; d += 4) {
                        const float4 c = __ldg(reinterpret_cast<const float4*>(cw + d));
                        o = adc_term(o, x, dim, c0 + d, c.x, ip);
                        o = adc_term(o, x, dim, c0 + d + 1, c.y, ip);
                        o = adc_term(o, x, dim, c0 + d + 2, c.z, ip);
                        o = adc_term(o, x, dim, c0 + d + 3, c.w, ip);
                    }
                } else if ((dsub & 1) == 0) {
                    for (; d < dsub; d += 2) {
                        const float2 c = __ldg(reinterpret_cast<const float2*>(cw + d));
                        o = adc_term(o, x, dim, c0 + d, c.x, ip);
                        o = adc_term(o, x, dim, c0 + d + 1, c.y, ip);
                    }
                }
                for (; d < dsub; ++d) o = adc_term(o, x, dim, c0 + d, __ldg(cw + d), ip);
                table[e] = o;
            }
            __syncthreads();
            filled_table = true;
        }
        const float base = ip ? bases[q * n_probes + p] : 0.0f;
        const long long start = list_offsets[list];
        const long long len = list_offsets[list + 1] - start;
        for (long long r0 = 0; r0 < len; r0 += blockDim.x) {
            const long long i = r0 + threadIdx.x;
            if (i < len) {
                const unsigned char* c = codes + (start + i) * pq_dim;
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                int m = 0;
                if ((pq_dim & 15) == 0) {
                    // 16 codes per load (a row starts 16-byte aligned); byte b of each word is
                    // sub-space m + b, so each sum takes the same lookups in the same order.
                    const uint4* c4 = reinterpret_cast<const uint4*>(c);
                    for (; m < pq_dim; m += 16) {
                        const uint4 v = __ldg(c4 + m / 16);
                        const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                        for (int w = 0; w < 4; ++w) {
                            const float* t = table + (m + 4 * w) * ksub;
                            a0 = __fadd_rn(a0, t[words[w] & 0xff]);
                            a1 = __fadd_rn(a1, t[ksub + ((words[w] >> 8) & 0xff)]);
                            a2 = __fadd_rn(a2, t[2 * ksub + ((words[w] >> 16) & 0xff)]);
                            a3 = __fadd_rn(a3, t[3 * ksub + (words[w] >> 24)]);
                        }
                    }
                }
                for (; m + 4 <= pq_dim; m += 4) {
                    a0 = __fadd_rn(a0, table[m * ksub + c[m]]);
                    a1 = __fadd_rn(a1, table[(m + 1) * ksub + c[m + 1]]);
                    a2 = __fadd_rn(a2, table[(m + 2) * ksub + c[m + 2]]);
                    a3 = __fadd_rn(a3, table[(m + 3) * ksub + c[m + 3]]);
                }
                for (; m < pq_dim; ++m) a0 = __fadd_rn(a0, table[m * ksub + c[m]]);
                const float v = __fadd_rn(__fadd_rn(base, __fadd_rn(a0, a1)), __fadd_rn(a2, a3));
                if (v <= threshold) {
                    int pos = atomicAdd(&count, 1);
                    s[kp + pos] = v;
                    idx[kp + pos] = list_rows[start + i];
                }
            }
            keep_best(s, idx, &count, &threshold, k, kp, trigger, false);
        }
    }
    keep_best(s, idx, &count, &threshold, k, kp, trigger, true);

    for (int t = threadIdx.x; t < k; t += blockDim.x) {
        out_score[q * k + t] = s[t];
        out_row[q * k + t] = idx[t];
    }
}

// Nearest column of each row (k = 1), ties to the smaller column.
//
// scores:  [rows, ld] row-major, first n columns read
// col_add: [n] or null, as above
// out_col: [rows], out_score: [rows]
//
// grid: (ceil(rows / 8)), block: 256 (one warp per row).
extern "C" __global__ void __launch_bounds__(256)
argmin_rows(const float* __restrict__ scores, long long ld, int n, long long rows,
            const float* __restrict__ col_add, unsigned* __restrict__ out_col,
            float* __restrict__ out_score) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* r = scores + row * ld;
    float best = __int_as_float(0x7f800000);
    unsigned best_col = NO_ROW;
    for (int j = lane; j < n; j += 32) {
        float v = r[j] + (col_add ? col_add[j] : 0.0f);
        if (before(v, (unsigned)j, best, best_col)) {
            best = v;
            best_col = (unsigned)j;
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        float other = __shfl_down_sync(0xffffffffu, best, offset);
        unsigned other_col = __shfl_down_sync(0xffffffffu, best_col, offset);
        if (before(other, other_col, best, best_col)) {
            best = other;
            best_col = other_col;
        }
    }
    if (lane == 0) {
        out_col[row] = best_col;
        out_score[row] = best;
    }
}

// Nearest centroid by direct squared differences, for small dimensions (PQ sub-spaces), where a
// GEMM would be mostly overhead. The same arithmetic as the CPU's small-dimension path: per
// centroid, fused multiply-adds over the dimensions in order; ties to the smaller centroid.
//
// data:      [rows, dim] row-major
// centroids: [k, dim] row-major, copied into shared memory (k·dim·4 bytes, at most 48 KiB)
// out_col:   [rows], out_score: [rows] the squared distance
//
// grid: (ceil(rows / 256)), block: 256 (one thread per row).
extern "C" __global__ void __launch_bounds__(256)
assign_small(const float* __restrict__ data, const float* __restrict__ centroids, long long rows,
             int k, int dim, unsigned* __restrict__ out_col, float* __restrict__ out_score) {
    extern __shared__ float c[];
    for (int t = threadIdx.x; t < k * dim; t += blockDim.x) c[t] = centroids[t];
    __syncthreads();
    const long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    float x[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) x[j] = j < dim ? data[row * dim + j] : 0.0f;
    float best = __int_as_float(0x7f800000);
    unsigned best_col = 0;
    for (int i = 0; i < k; ++i) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            if (j < dim) {
                float t = x[j] - c[i * dim + j];
                acc = fmaf(t, t, acc);
            }
        }
        if (acc < best) {
            best = acc;
            best_col = (unsigned)i;
        }
    }
    out_col[row] = best_col;
    out_score[row] = best;
}

// ---------------------------------------------------------------------------------------------
// fp16 inputs for the opt-in `--gpu-precision fp16` products (cuBLAS GemmEx, fp16 × fp16 with
// fp32 accumulation and output).

// IEEE binary16 bits of v, rounded to nearest even (PTX cvt.rn.f16.f32 on the GPU; the same
// rounding spelled out elsewhere, e.g. when these sources run on a host).
__device__ __forceinline__ unsigned short half_bits(float v) {
#ifdef __CUDA_ARCH__
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
#else
    unsigned x = __float_as_uint(v);
    unsigned short sign = (unsigned short)((x >> 16) & 0x8000u);
    unsigned mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) return sign | 0x7e00u;   // NaN
    if (mag >= 0x477ff000u) return sign | 0x7c00u;  // 65520 and up round to infinity
    if (mag < 0x33000000u) return sign;             // below 2^-25: zero
    unsigned r, rem, half;
    if (mag < 0x38800000u) {                        // below 2^-14: a subnormal half
        unsigned shift = 126u - (mag >> 23);        // 14…24
        unsigned m = (mag & 0x7fffffu) | 0x800000u;
        r = m >> shift;
        rem = m & ((1u << shift) - 1u);
        half = 1u << (shift - 1u);
    } else {
        r = (mag >> 13) - (112u << 10);             // exponent bias 127 → 15
        rem = mag & 0x1fffu;
        half = 0x1000u;
    }
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return (unsigned short)(sign | r);
#endif
}

// x: [n] floats → out: [n] binary16 bits. (The host has checked that no value rounds to
// infinity.)
//
// grid: (ceil(n / 256)), block: 256.
extern "C" __global__ void __launch_bounds__(256)
to_half(const float* __restrict__ x, long long n, unsigned short* __restrict__ out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = half_bits(x[i]);
}

// Exact re-ranking of an IVF-PQ search's candidates: each candidate's exact score against its
// query, with the CPU's arithmetic (src/search/ivf_pq.rs): for L2 the squared differences, for
// inner product (and cosine, on unit rows) the negated dot product, each summed from zero in
// dimension order with separate roundings (no fused multiply-add), so the scores are the
// CPU's bit for bit.
//
// queries: [nq, dim] row-major
// rows:    [n, dim] row-major, the index's raw vectors
// cand:    [nq, kc] row numbers (NO_ROW: an empty slot, scored +inf)
// out:     [nq, kc] the scores
//
// grid: (ceil(nq · kc / 256)), block: 256 (one thread per candidate).
extern "C" __global__ void __launch_bounds__(256)
rescore_exact(const float* __restrict__ queries, int dim, const float* __restrict__ rows,
              const unsigned* __restrict__ cand, long long total, int kc, int l2,
              float* __restrict__ out) {
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= total) return;
    const unsigned r = cand[c];
    if (r == NO_ROW) {
        out[c] = __int_as_float(0x7f800000);
        return;
    }
    const float* q = queries + (c / kc) * (long long)dim;
    const float* x = rows + (long long)r * dim;
    float s = 0.0f;
    if (l2) {
        for (int j = 0; j < dim; ++j) {
            const float d = __fsub_rn(q[j], x[j]);
            s = __fadd_rn(s, __fmul_rn(d, d));
        }
    } else {
        for (int j = 0; j < dim; ++j) s = __fadd_rn(s, __fmul_rn(q[j], x[j]));
        s = -s;
    }
    out[c] = s;
}
