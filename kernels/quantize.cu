// Quantizer kernels: the k-means centroid update (for the Lloyd iterations of
// src/backend/cuda/quantize.rs) and PQ encoding.
//
// Both repeat the CPU's arithmetic in the CPU's order, so their results are the CPU's bit for
// bit: tests/it/kernels.rs compiles this file on the host and checks that against the CPU
// code, and tests/it/cuda.rs checks the GPU's builds against the CPU's where a GPU is present.
//
// Compiled at run time by NVRTC for the GPU present, and in CI to sm_80 and sm_90 cubins.

#define MEAN_THREADS 128
#define ENCODE_THREADS 256
#define MAX_DSUB 16

// Each centroid with rows becomes their mean: the rows are added in the order given (the
// host's counting sort keeps row order within a cluster) in f64, one addition per row and
// dimension, then multiplied by 1/size in f64 and rounded to f32, as src/index/kmeans.rs'
// `update` does. Centroids without rows are left as they are.
//
// data:      [rows, dim] row-major
// order:     [rows] row numbers grouped by cluster: cluster c's are order[start[c] .. start[c+1]]
// start:     [k + 1]
// centroids: [k, dim] row-major, updated in place
//
// grid: (k), block: MEAN_THREADS (threads stride over the dimensions; consecutive threads
// read consecutive floats of a row).
extern "C" __global__ void __launch_bounds__(MEAN_THREADS)
centroid_means(const float* __restrict__ data, int dim, const unsigned* __restrict__ order,
               const unsigned* __restrict__ start, float* __restrict__ centroids) {
    const unsigned c = blockIdx.x;
    const unsigned lo = start[c], hi = start[c + 1];
    if (lo == hi) return;
    const double inv = 1.0 / (double)(hi - lo);
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        double sum = 0.0;
        for (unsigned i = lo; i < hi; ++i) sum += (double)data[(long long)order[i] * dim + d];
        centroids[(long long)c * dim + d] = (float)(sum * inv);
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
//
// grid: (ceil(rows / ENCODE_THREADS), pq_dim), block: ENCODE_THREADS (a thread per row and
// sub-space; a block's threads read the same centroid at the same time). dsub ≤ MAX_DSUB,
// ksub ≤ 256.
extern "C" __global__ void __launch_bounds__(ENCODE_THREADS)
pq_encode(const float* __restrict__ residuals, long long rows, int dim, int dsub, int ksub,
          const float* __restrict__ codebooks, unsigned char* __restrict__ codes) {
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
}
