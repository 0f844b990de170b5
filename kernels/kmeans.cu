// k-means centroid update on the device, for the Lloyd iterations of src/backend/cuda/kmeans.rs.
//
// Each centroid with rows becomes their mean: the rows are added in the order given (the
// host's counting sort keeps row order within a cluster) in f64, one addition per row and
// dimension, then multiplied by 1/size in f64 and rounded to f32. Those are the CPU's
// operations in the same order (src/index/kmeans.rs, `update`), so the centroids are the
// CPU's, bit for bit. Centroids without rows are left as they are.
//
// Compiled at run time by NVRTC for the GPU present, and in CI to sm_80 and sm_90 cubins.

#define MEAN_THREADS 128

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
