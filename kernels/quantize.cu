// Quantizer kernels: the k-means centroid update and objective (for the Lloyd iterations of
// src/backend/cuda/quantize.rs) and PQ encoding (also PQ training's assignment).
//
// All repeat the CPU's arithmetic in the CPU's order, so their results are the CPU's bit for
// bit: tests/it/kernels.rs compiles this file on the host and checks that against the CPU
// code, and tests/it/cuda.rs checks the GPU's builds against the CPU's where a GPU is present.
//
// Compiled at run time by NVRTC for the GPU present, and in CI to sm_80 and sm_90 cubins.

#define MEAN_THREADS 128
#define ENCODE_THREADS 256
#define MAX_DSUB 16
#define FULL_MASK 0xffffffffu

// Each centroid with rows becomes their mean: the rows are added in the order given (the
// host's counting sort keeps row order within a cluster) in f64, one addition per row and
// dimension, then multiplied by 1/size in f64 and rounded to f32, as src/index/kmeans.rs'
// `update` does. Centroids without rows are left as they are.
//
// Several k-means problems over column groups of the same rows at once (PQ training's
// sub-spaces): problem m's rows are columns m·width .. (m+1)·width, zero at and past column ld;
// one problem over whole rows is width = ld and a grid of one problem.
//
// data:      [rows, ld] row-major
// order:     [problems, rows] problem m's row numbers grouped by cluster: cluster c's are
//            order[m·rows + start[m·(k+1) + c] .. m·rows + start[m·(k+1) + c+1]]
// start:     [problems, k + 1]
// centroids: [problems · k, width] row-major, updated in place
//
// grid: (k, problems), block: up to MEAN_THREADS (threads stride over the width; consecutive
// threads read consecutive floats of a row).
extern "C" __global__ void __launch_bounds__(MEAN_THREADS)
centroid_means(const float* __restrict__ data, long long rows, int ld, int width,
               const unsigned* __restrict__ order, const unsigned* __restrict__ start,
               float* __restrict__ centroids) {
    const unsigned c = blockIdx.x, k = gridDim.x, m = blockIdx.y;
    const unsigned* ord = order + (long long)m * rows;
    const unsigned* st = start + (long long)m * (k + 1);
    const unsigned lo = st[c], hi = st[c + 1];
    if (lo == hi) return;
    const double inv = 1.0 / (double)(hi - lo);
    for (int d = threadIdx.x; d < width; d += blockDim.x) {
        const long long col = (long long)m * width + d;
        double sum = 0.0;  // stays +0.0 past column ld, as the CPU's sum of padding zeros does
        if (col < ld)
            for (unsigned i = lo; i < hi; ++i) sum += (double)data[(long long)ord[i] * ld + col];
        centroids[((long long)m * k + c) * width + d] = (float)(sum * inv);
    }
}

// Each problem's objective: out[m] = x[m·n] + x[m·n + 1] + … in f64, one addition at a time in
// index order from 0, as Rust's `Iterator::sum` adds the k-means distances.
//
// x:   [count, n]
// out: [count]
//
// grid: (ceil(count / 32)), block: 32 (a thread per problem).
extern "C" __global__ void __launch_bounds__(32)
ordered_sums(const float* __restrict__ x, long long n, int count, double* __restrict__ out) {
    const int m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= count) return;
    const float* row = x + (long long)m * n;
    double sum = 0.0;
    for (long long i = 0; i < n; ++i) sum += (double)row[i];
    out[m] = sum;
}

// PQ training's grouping (src/index/kmeans.rs' group_by_label, for every sub-space at once):
// sub-space m's rows counted by code, the counts' exclusive prefix sum written as its clusters'
// starts, and its rows placed by code, each code's rows in row order (a stable counting sort),
// so that centroid_means adds them in the CPU's order. A stopped sub-space gets all-zero starts:
// its clusters are empty, and its centroids stay where they are.
//
// codes:   [n, pq_dim] bytes (pq_encode's), each below ksub
// running: [pq_dim] 0 for a sub-space that has stopped
// order:   [pq_dim, n] rows by code
// start:   [pq_dim, ksub + 1]
// sizes:   [pq_dim, ksub] rows per code (all 0 for a stopped sub-space)
//
// grid: (pq_dim), block: GROUP_THREADS, ksub <= 256. Rows are placed a block's worth at a time:
// a row's place is its code's cursor, plus the rows of that code in the warps before its own,
// plus those in the lanes before it in its warp.
#define GROUP_THREADS 256
#define GROUP_CODES 256

extern "C" __global__ void __launch_bounds__(GROUP_THREADS)
group_codes(const unsigned char* __restrict__ codes, long long n, int pq_dim, int ksub,
            const int* __restrict__ running, unsigned* __restrict__ order,
            unsigned* __restrict__ start, unsigned* __restrict__ sizes) {
    __shared__ unsigned cursor[GROUP_CODES];
    __shared__ unsigned in_warp[GROUP_THREADS / 32][GROUP_CODES];
    const int m = blockIdx.x;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    unsigned* st = start + (long long)m * (ksub + 1);
    if (!running[m]) {
        for (int c = threadIdx.x; c <= ksub; c += blockDim.x) st[c] = 0;
        for (int c = threadIdx.x; c < ksub; c += blockDim.x) sizes[(long long)m * ksub + c] = 0;
        return;
    }
    for (int c = threadIdx.x; c < GROUP_CODES; c += blockDim.x) cursor[c] = 0;
    __syncthreads();
    for (long long r = threadIdx.x; r < n; r += blockDim.x) {
        atomicAdd(&cursor[codes[r * pq_dim + m]], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned sum = 0;
        for (int c = 0; c < ksub; ++c) {
            const unsigned size = cursor[c];
            sizes[(long long)m * ksub + c] = size;
            st[c] = sum;
            cursor[c] = sum;
            sum += size;
        }
        st[ksub] = sum;
    }
    __syncthreads();
    unsigned* out = order + (long long)m * n;
    for (long long first = 0; first < n; first += blockDim.x) {
        const long long r = first + threadIdx.x;
        const int c = r < n ? (int)codes[r * pq_dim + m] : -1;
        const unsigned same = __match_any_sync(FULL_MASK, c);
        const unsigned before = __popc(same & ((1u << lane) - 1));
        for (int k = lane; k < GROUP_CODES; k += 32) in_warp[warp][k] = 0;
        __syncwarp();
        if (c >= 0 && before == 0) in_warp[warp][c] = __popc(same);
        __syncthreads();
        if (c >= 0) {
            unsigned place = cursor[c] + before;
            for (int w = 0; w < warp; ++w) place += in_warp[w][c];
            out[place] = (unsigned)r;
        }
        __syncthreads();
        for (int k = threadIdx.x; k < GROUP_CODES; k += blockDim.x) {
            unsigned rows = 0;
            for (int w = 0; w < warps; ++w) rows += in_warp[w][k];
            cursor[k] += rows;
        }
        __syncthreads();
    }
}

// The coarse k-means' grouping (src/index/kmeans.rs' group_by_label, for any number of labels
// k): the rows of label c at order[start[c] .. start[c + 1]] in row order (a stable counting
// sort), so that centroid_means adds them in the CPU's order. The rows are cut into chunks of
// `chunk` consecutive rows, each with its own row of counts; four launches in turn:
//
// 1. label_counts   grid (chunks), block GROUP_THREADS: counts[q][c] = rows of chunk q with
//                   label c (counts zeroed by the caller)
// 2. label_offsets  grid (ceil(k / GROUP_THREADS)), block GROUP_THREADS: counts[q][c] becomes
//                   the rows with label c in the chunks before q; sizes[c] their total
// 3. label_starts   grid (1), block SCAN_THREADS: start[c] = the sizes before c, start[k] = n
// 4. label_scatter  grid (chunks), block 32: a warp places its chunk's rows, 32 at a time: a
//                   row's place is its label's start, plus its label's rows in the chunks
//                   before (then in this chunk's rounds before), plus those in the lanes before
//
// labels: [n], each below k
// counts: [chunks, k]
// sizes:  [k]
// start:  [k + 1]
// order:  [n]
#define SCAN_THREADS 1024

extern "C" __global__ void __launch_bounds__(GROUP_THREADS)
label_counts(const unsigned* __restrict__ labels, long long n, int k, long long chunk,
             unsigned* __restrict__ counts) {
    const long long q = blockIdx.x;
    const long long first = q * chunk;
    const long long end = min(n, first + chunk);
    unsigned* row = counts + q * k;
    for (long long r = first + threadIdx.x; r < end; r += blockDim.x) {
        const unsigned c = labels[r];
        if (c < (unsigned)k) atomicAdd(&row[c], 1u);
    }
}

extern "C" __global__ void __launch_bounds__(GROUP_THREADS)
label_offsets(unsigned* __restrict__ counts, int chunks, int k, unsigned* __restrict__ sizes) {
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= k) return;
    unsigned running = 0;
    for (long long q = 0; q < chunks; ++q) {
        unsigned* at = counts + q * k + c;
        const unsigned v = *at;
        *at = running;
        running += v;
    }
    sizes[c] = running;
}

extern "C" __global__ void __launch_bounds__(SCAN_THREADS)
label_starts(const unsigned* __restrict__ sizes, int k, unsigned* __restrict__ start) {
    __shared__ unsigned partial[SCAN_THREADS];
    const int t = threadIdx.x;
    // Thread t adds the sizes of its own run of labels, the block scans the runs' sums, then
    // each thread writes its run's starts.
    const long long per = ((long long)k + blockDim.x - 1) / blockDim.x;
    const long long lo = min((long long)k, t * per);
    const long long hi = min((long long)k, lo + per);
    unsigned sum = 0;
    for (long long c = lo; c < hi; ++c) sum += sizes[c];
    partial[t] = sum;
    __syncthreads();
    for (int step = 1; step < (int)blockDim.x; step <<= 1) {
        const unsigned add = t >= step ? partial[t - step] : 0u;
        __syncthreads();
        partial[t] += add;
        __syncthreads();
    }
    unsigned before = partial[t] - sum;
    for (long long c = lo; c < hi; ++c) {
        start[c] = before;
        before += sizes[c];
    }
    if (t == (int)blockDim.x - 1) start[k] = partial[t];
}

extern "C" __global__ void __launch_bounds__(32)
label_scatter(const unsigned* __restrict__ labels, long long n, int k, long long chunk,
              unsigned* __restrict__ counts, const unsigned* __restrict__ start,
              unsigned* __restrict__ order) {
    const long long q = blockIdx.x;
    const int lane = threadIdx.x;
    const long long first = q * chunk;
    const long long end = min(n, first + chunk);
    unsigned* before_chunk = counts + q * k;
    for (long long r0 = first; r0 < end; r0 += 32) {
        const long long r = r0 + lane;
        const unsigned label = r < end ? labels[r] : 0xffffffffu;
        const int c = label < (unsigned)k ? (int)label : -1;
        const unsigned same = __match_any_sync(FULL_MASK, c);
        const unsigned before = __popc(same & ((1u << lane) - 1));
        if (c >= 0) order[start[c] + before_chunk[c] + before] = (unsigned)r;
        __syncwarp();
        if (c >= 0 && before == 0) before_chunk[c] += __popc(same);
        __syncwarp();
    }
}

// PQ codes of residual rows, every sub-space in one launch. Sub-vector m of a row is its
// columns m·dsub .. (m+1)·dsub, zero past the last column (src/index/pq.rs, `subspace`); its
// code is the nearest of codebook m's ksub centroids by assign_small's arithmetic
// (kernels/select.cu): per centroid, fused multiply-adds of the squared differences in
// dimension order, ties to the smaller code.
//
// residuals: [rows, dim] row-major
// codebooks: [pq_dim · ksub, dsub] row-major (codebook m is rows m·ksub ..)
// codes:     [rows, pq_dim] bytes
// dists:     [pq_dim, rows] each code's squared distance (PQ training's objective), or null
//
// grid: (ceil(rows / ENCODE_THREADS), pq_dim), block: ENCODE_THREADS (a thread per row and
// sub-space; a block's threads read the same centroid at the same time). dsub ≤ MAX_DSUB,
// ksub ≤ 256.
extern "C" __global__ void __launch_bounds__(ENCODE_THREADS)
pq_encode(const float* __restrict__ residuals, long long rows, int dim, int dsub, int ksub,
          const float* __restrict__ codebooks, unsigned char* __restrict__ codes,
          float* __restrict__ dists) {
    const long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int m = blockIdx.y;
    const int pq_dim = gridDim.y;
    if (row >= rows) return;
    float x[MAX_DSUB];
#pragma unroll
    for (int j = 0; j < MAX_DSUB; ++j) {
        const int col = m * dsub + j;
        x[j] = (j < dsub && col < dim) ? residuals[row * dim + col] : 0.0f;
    }
    const float* book = codebooks + (long long)m * ksub * dsub;
    float best = __int_as_float(0x7f800000);
    int best_code = 0;
    for (int i = 0; i < ksub; ++i) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < MAX_DSUB; ++j) {
            if (j < dsub) {
                const float t = x[j] - book[i * dsub + j];
                acc = fmaf(t, t, acc);
            }
        }
        if (acc < best) {
            best = acc;
            best_code = i;
        }
    }
    codes[row * pq_dim + m] = (unsigned char)best_code;
    if (dists) dists[(long long)m * rows + row] = best;
}
