// CAGRA graph optimisation on the GPU: rank-based pruning (Ootomo et al., ICDE 2024, IV-B).
//
// The same computation as src/index/cagra/optimize.rs (the CPU oracle), so the two give the
// same graph: for each edge A->B at rank r_AB of A's kNN list, count the two-hop routes
// A->D->B with max(r_AD, r_DB) < r_AB; keep the d_out edges with the fewest, ties to the
// better rank. Ranks stand in for distances; no vector is read.

#define NO_ROW 0xffffffffu

__device__ __forceinline__ unsigned table_slot(unsigned v, unsigned mask) {
    return (v * 0x9E3779B9u >> 7) & mask;
}

// knn:  [n, d] row-major, each row best first, NO_ROW for missing entries
// out:  [n, d_out] the pruned lists, best first, NO_ROW where a row has fewer than d_out
//
// grid: (n), block: 256, dynamic shared memory: (2·table + 2·d) · 4 bytes, where table is a
// power of two >= 2·d (at most 4096, so d <= 2048 fits in 48 KiB).
extern "C" __global__ void __launch_bounds__(256)
prune_graph(const unsigned* __restrict__ knn, int d, int d_out, int table,
            unsigned* __restrict__ out) {
    extern __shared__ unsigned shared[];
    unsigned* keys = shared;              // [table] row ids of A's list
    unsigned* ranks = keys + table;       // [table] their ranks
    unsigned* counts = ranks + table;     // [d] detourable routes per edge
    unsigned* list = counts + d;          // [d] A's list
    __shared__ unsigned valid;

    const long long a = blockIdx.x;
    const unsigned mask = (unsigned)table - 1;
    for (int t = threadIdx.x; t < table; t += blockDim.x) {
        keys[t] = NO_ROW;
        ranks[t] = 0;
    }
    for (int r = threadIdx.x; r < d; r += blockDim.x) {
        list[r] = knn[a * d + r];
        counts[r] = 0;
    }
    if (threadIdx.x == 0) valid = 0;
    __syncthreads();

    // Row -> rank; a row listed twice keeps its last rank, as on the CPU.
    for (int r = threadIdx.x; r < d; r += blockDim.x) {
        unsigned b = list[r];
        if (b == NO_ROW) continue;
        atomicAdd(&valid, 1u);
        unsigned s = table_slot(b, mask);
        while (true) {
            unsigned prev = atomicCAS(&keys[s], NO_ROW, b);
            if (prev == NO_ROW || prev == b) {
                atomicMax(&ranks[s], (unsigned)r);
                break;
            }
            s = (s + 1) & mask;
        }
    }
    __syncthreads();

    // Routes A->D->B need r_AD < r_AB, so D ranges over all but the last edge. Consecutive
    // threads read consecutive entries of D's list.
    const long long pairs = (long long)(d - 1) * d;
    for (long long p = threadIdx.x; p < pairs; p += blockDim.x) {
        int r_ad = (int)(p / d);
        int r_db = (int)(p % d);
        unsigned dn = list[r_ad];
        if (dn == NO_ROW) continue;
        unsigned b = knn[(long long)dn * d + r_db];
        if (b == NO_ROW) continue;
        unsigned s = table_slot(b, mask);
        while (keys[s] != NO_ROW) {
            if (keys[s] == b) {
                unsigned r_ab = ranks[s];
                if ((unsigned)max(r_ad, r_db) < r_ab) atomicAdd(&counts[r_ab], 1u);
                break;
            }
            s = (s + 1) & mask;
        }
    }
    __syncthreads();

    // Each kept edge's place: how many edges sort before it by (count, rank).
    for (int r = threadIdx.x; r < d; r += blockDim.x) {
        if (list[r] == NO_ROW) continue;
        unsigned c = counts[r];
        int pos = 0;
        for (int q = 0; q < d; ++q) {
            if (list[q] != NO_ROW && (counts[q] < c || (counts[q] == c && q < r))) ++pos;
        }
        if (pos < d_out) out[a * d_out + pos] = list[r];
    }
    for (int s = (int)valid + threadIdx.x; s < d_out; s += blockDim.x) {
        out[a * d_out + s] = NO_ROW;
    }
}
