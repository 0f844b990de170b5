// Selection kernels for exact k-NN and nearest-centroid assignment.
//
// Both read a tile of scores that cuBLAS wrote (row-major [rows, n], one row per query or data
// row, already scaled: -2·q·x for L2, -q·x otherwise), add a per-column term (‖x‖² for L2;
// none otherwise) and keep the best per row. Order is total, as on the CPU: smaller score
// first, then smaller column, so results are deterministic.
//
// Compiled at run time by NVRTC for the GPU present (src/backend/cuda), and in CI to sm_80 and
// sm_90 cubins. No headers: NVRTC needs no include paths.

#define SELECT_THREADS 256
#define SELECT_SLOTS 2048
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
// a power of two) in shared memory; columns that beat the threshold are appended behind them;
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
    const int trigger = min(max(kp, (int)blockDim.x), cap - (int)blockDim.x + 1);

    for (int t = threadIdx.x; t < SELECT_SLOTS; t += blockDim.x) {
        s[t] = __int_as_float(0x7f800000);
        idx[t] = NO_ROW;
    }
    if (threadIdx.x == 0) {
        count = 0;
        threshold = thresholds ? thresholds[row] : __int_as_float(0x7f800000);
    }
    __syncthreads();

    for (int start = 0; start < n; start += blockDim.x) {
        int j = start + threadIdx.x;
        if (j < n) {
            float v = r[j] + (col_add ? col_add[j] : 0.0f);
            if (v <= threshold) {
                int pos = atomicAdd(&count, 1);
                s[kp + pos] = v;
                idx[kp + pos] = (unsigned)j;
            }
        }
        __syncthreads();
        int filled = count;
        bool last = start + (int)blockDim.x >= n;
        __syncthreads();
        if (filled >= trigger || (last && filled > 0)) {
            unsigned m = 2;
            while (m < (unsigned)(kp + filled)) m <<= 1;
            bitonic_sort(s, idx, m);
            if (threadIdx.x == 0) {
                count = 0;
                threshold = fminf(threshold, s[k - 1]);
            }
            // Everything behind the kept kp is spent: reset it for the next candidates.
            for (int t = kp + threadIdx.x; t < (int)m; t += blockDim.x) {
                s[t] = __int_as_float(0x7f800000);
                idx[t] = NO_ROW;
            }
            __syncthreads();
        }
    }

    for (int t = threadIdx.x; t < k; t += blockDim.x) {
        out_score[row * k + t] = s[t];
        out_col[row * k + t] = idx[t];
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
