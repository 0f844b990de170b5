// CAGRA graph optimisation on the GPU: rank-based pruning (Ootomo et al., ICDE 2024, IV-B).
//
// The same computation as src/index/cagra/optimize.rs (the CPU oracle), so the two give the
// same graph: for each edge A->B at rank r_AB of A's kNN list, count the two-hop routes
// A->D->B with max(r_AD, r_DB) < r_AB; keep the d_out edges with the fewest, ties to the
// better rank. Ranks stand in for distances; no vector is read.

#define NO_ROW 0xffffffffu
#define FULL_MASK 0xffffffffu

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

// ---------------------------------------------------------------------------------------------
// Reverse edges and merge, the optimisation's steps 2 and 3 (optimize::reverse_edges and
// optimize::merge in src/index/cagra/optimize.rs, the CPU oracle), so the two give the same
// graph. Over the pruned graph [n, d] (d = d_out), with n·d < 2^32:
//
//   reverse_count  in-edges per row (count, zeroed first);
//   (the host turns the counts into offsets, their exclusive prefix sum, [n + 1])
//   reverse_fill   each edge A->B at rank s writes its key s·n + A into B's range of keys, in
//                  any order (cursor, zeroed first, counts them); keys are distinct, and in key
//                  order the edges come by rank, then by A: the CPU's order;
//   merge_graph    a warp per row B takes its d least keys in order (B's reverse edges as the
//                  CPU keeps them: the first d that reach it), then writes B's merged row: the
//                  first d / 2 pruned edges, the reverse edges, the other pruned edges, skipping
//                  empty slots, B itself and repeats, up to d. (Only the rare row that more than
//                  2·d rows reach takes a warp exchange per reverse edge; the rest, one per 32
//                  candidates.)

#define MERGE_THREADS 256

// pruned: [n, d]; count: [n]. grid: (⌈n·d / 256⌉), block: 256.
extern "C" __global__ void __launch_bounds__(256)
reverse_count(const unsigned* __restrict__ pruned, unsigned long long edges, unsigned n,
              unsigned* __restrict__ count) {
    const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= edges) return;
    const unsigned b = pruned[e];
    if (b < n) atomicAdd(&count[b], 1u);
}

// pruned: [n, d]; offsets: [n + 1]; cursor: [n]; keys: [offsets[n]].
// grid: (⌈n·d / 256⌉), block: 256.
extern "C" __global__ void __launch_bounds__(256)
reverse_fill(const unsigned* __restrict__ pruned, int d, unsigned n,
             const unsigned* __restrict__ offsets, unsigned* __restrict__ cursor,
             unsigned* __restrict__ keys) {
    const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (unsigned long long)n * d) return;
    const unsigned b = pruned[e];
    if (b >= n) return;
    const unsigned a = (unsigned)(e / d), s = (unsigned)(e % d);
    const unsigned at = atomicAdd(&cursor[b], 1u);
    keys[offsets[b] + at] = s * n + a;
}

// pruned: [n, d]; offsets, keys: as reverse_fill left them; out: [n, d], NO_ROW where a row has
// fewer than d edges.
// grid: (⌈n / (MERGE_THREADS / 32)⌉), block: MERGE_THREADS, dynamic shared memory:
// (MERGE_THREADS / 32) · 2·d · 4 bytes.
extern "C" __global__ void __launch_bounds__(MERGE_THREADS)
merge_graph(const unsigned* __restrict__ pruned, int d, unsigned n,
            const unsigned* __restrict__ offsets, const unsigned* __restrict__ keys,
            unsigned* __restrict__ out) {
    extern __shared__ unsigned merge_shared[];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned b = blockIdx.x * (MERGE_THREADS / 32) + warp;
    if (b >= n) return;  // the whole warp: the rest of the kernel is the warp's alone
    // B's candidates in the merge's order: its first d / 2 pruned edges, its reverse edges
    // (`take` of them), its other pruned edges.
    unsigned* cand = merge_shared + warp * 2 * d;
    const unsigned* own = pruned + (size_t)b * d;
    const int half = d / 2;
    const unsigned first = offsets[b], count = offsets[b + 1] - first;
    const int take = count < (unsigned)d ? (int)count : d;
    for (int s = lane; s < d; s += 32) cand[s < half ? s : s + take] = own[s];

    // The reverse edges: B's `take` least keys, in order.
    if (count <= 2u * d) {
        // Few keys (the usual case): each one's place is the number of keys below it.
        for (unsigned j = lane; j < count; j += 32) {
            const unsigned k = keys[first + j];
            unsigned place = 0;
            for (unsigned i = 0; i < count; ++i) place += keys[first + i] < k;
            if (place < (unsigned)d) cand[half + place] = k % n;
        }
    } else {
        // A row many rows reach: each round the least key at or above `floor` (keys are below
        // n·d ≤ 2^32 − 1, so NO_ROW is above them all and floor = key + 1 does not wrap).
        unsigned floor = 0;
        for (int i = 0; i < take; ++i) {
            unsigned least = NO_ROW;
            for (unsigned j = lane; j < count; j += 32) {
                const unsigned k = keys[first + j];
                if (k >= floor && k < least) least = k;
            }
            for (int o = 16; o > 0; o >>= 1)
                least = min(least, __shfl_xor_sync(FULL_MASK, least, o));
            if (lane == 0) cand[half + i] = least % n;
            floor = least + 1;
        }
    }
    __syncwarp();

    // A candidate is kept where it is an edge (not empty, not B) seen for the first time; the
    // row is the first d kept, in order, placed 32 candidates at a time.
    const int total = d + take;
    int filled = 0;
    for (int at = 0; at < total && filled < d; at += 32) {
        const int c = at + lane;
        const unsigned v = c < total ? cand[c] : NO_ROW;
        bool keep = v != NO_ROW && v != b;
        for (int e = 0; keep && e < c; ++e) keep = cand[e] != v;
        const unsigned kept = __ballot_sync(FULL_MASK, keep);
        const int place = filled + __popc(kept & ((1u << lane) - 1));
        if (keep && place < d) out[(size_t)b * d + place] = v;
        filled += __popc(kept);
    }
    for (int s = min(filled, d) + lane; s < d; s += 32) out[(size_t)b * d + s] = NO_ROW;
}

// ---------------------------------------------------------------------------------------------
// The neighbour-of-neighbour pass of the ivf kNN graph builder: the same computation as
// knn_graph::refine without reverse lists (src/index/cagra/knn_graph.rs, the CPU oracle), so
// the two give the same graph. Each row u scores the first `fan` entries of the lists of its
// first `fan` neighbours, and its own list, once each (not itself, not NO_ROW), and keeps the k
// best by (score, row). A score is the CPU's ranking score, ‖c‖² − 2·u·c for L2 and −u·c
// otherwise, with u·c summed in the order of dot_avx2 (src/distance.rs), so equal candidates tie
// and differ exactly as they do on a CPU with AVX2 and FMA.

#define REFINE_THREADS 128

// Ascending bitonic sort of a[0..cap) in shared memory, cap a power of two, by the whole block.
// Starts and ends with the block in step.
template <class T>
__device__ __forceinline__ void block_sort(T* a, int cap) {
    __syncthreads();
    for (int size = 2; size <= cap; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < cap / 2; i += blockDim.x) {
                int lo = 2 * i - (i & (stride - 1));
                int hi = lo + stride;
                bool up = (lo & size) == 0;
                T x = a[lo], y = a[hi];
                if ((x > y) == up) {
                    a[lo] = y;
                    a[hi] = x;
                }
            }
            __syncthreads();
        }
    }
}

// q·x over n floats by the 32 lanes of a warp, added as dot_avx2 adds: lane l is lane l % 8 of
// the CPU's accumulator l / 8 (fused multiply-adds over columns l, l + 32, …; then columns
// l, l + 8 for lanes below 8 while 8 remain), the accumulators are added (a0 + a1) + (a2 + a3),
// their 8 lanes as hsum adds them (4 + 4, 2 + 2, 1 + 1), then the last n % 8 products one by
// one. Every lane returns the sum.
__device__ __forceinline__ float warp_dot_as_cpu(const float* __restrict__ q,
                                                 const float* __restrict__ x, int n, int lane) {
    float acc = 0.0f;
    int i = 0;
    for (; i + 32 <= n; i += 32) acc = fmaf(q[i + lane], x[i + lane], acc);
    for (; i + 8 <= n; i += 8) {
        if (lane < 8) acc = fmaf(q[i + lane], x[i + lane], acc);
    }
    acc = __fadd_rn(acc, __shfl_down_sync(FULL_MASK, acc, 8));
    acc = __fadd_rn(acc, __shfl_down_sync(FULL_MASK, acc, 16));
    acc = __fadd_rn(acc, __shfl_down_sync(FULL_MASK, acc, 4));
    acc = __fadd_rn(acc, __shfl_down_sync(FULL_MASK, acc, 2));
    acc = __fadd_rn(acc, __shfl_down_sync(FULL_MASK, acc, 1));
    float sum = __shfl_sync(FULL_MASK, acc, 0);
    for (; i < n; ++i) sum = __fadd_rn(sum, __fmul_rn(q[i], x[i]));
    return sum;
}

// The float's place in IEEE total order (Rust's f32::total_cmp) as an unsigned key.
__device__ __forceinline__ unsigned total_order_key(float f) {
    unsigned bits = __float_as_uint(f);
    return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

// data:  [n, dim] rows
// norms: [n] squared norms for L2, or null for inner product / cosine
// old:   [n, k] kNN lists, NO_ROW for missing entries
// order: [n] the row each block refines (rows of a partition list together, so the candidates
//        they share stay in L2), or null: block b refines row b
// out:   [n, k] refined lists, best first, NO_ROW where a row has fewer than k candidates
// fan:   at most k
//
// grid: (rows to refine, from position 0 of order), block: REFINE_THREADS (any multiple of 32 works),
// dynamic shared memory: cap · 12 bytes, cap a power of two ≥ fan² + k.
extern "C" __global__ void __launch_bounds__(REFINE_THREADS)
refine_graph(const float* __restrict__ data, const float* __restrict__ norms, int dim, unsigned n,
             const unsigned* __restrict__ old, int k, int fan, int cap,
             const unsigned* __restrict__ order, unsigned* __restrict__ out) {
    extern __shared__ unsigned long long refine_shared[];
    unsigned long long* keys = refine_shared;  // [cap] (score key << 32) | row
    unsigned* ids = (unsigned*)(keys + cap);   // [cap] candidate rows

    const unsigned u = order ? order[blockIdx.x] : blockIdx.x;
    const unsigned* own = old + (size_t)u * k;
    const int hops = fan * fan;
    for (int s = threadIdx.x; s < cap; s += blockDim.x) {
        unsigned c = NO_ROW;
        if (s < hops) {
            unsigned v = own[s / fan];
            if (v < n) c = old[(size_t)v * k + s % fan];
        } else if (s < hops + k) {
            c = own[s - hops];
        }
        ids[s] = (c < n && c != u) ? c : NO_ROW;
    }
    block_sort(ids, cap);

    // A warp scores each distinct candidate (the first of its run in sorted order).
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const float* x = data + (size_t)u * dim;
    for (int s = warp; s < cap; s += warps) {
        unsigned c = ids[s];
        unsigned long long key = ~0ull;
        if (c != NO_ROW && (s == 0 || ids[s - 1] != c)) {
            float d = warp_dot_as_cpu(x, data + (size_t)c * dim, dim, lane);
            float score = norms ? __fsub_rn(norms[c], __fmul_rn(2.0f, d)) : -d;
            key = ((unsigned long long)total_order_key(score) << 32) | c;
        }
        if (lane == 0) keys[s] = key;
    }
    block_sort(keys, cap);

    for (int r = threadIdx.x; r < k; r += blockDim.x) {
        unsigned long long key = r < cap ? keys[r] : ~0ull;
        out[(size_t)u * k + r] = key == ~0ull ? NO_ROW : (unsigned)key;
    }
}

// ---------------------------------------------------------------------------------------------
// The ivf kNN-graph join's score tiles (src/backend/cuda/join.rs): for a group of join units,
// each unit's rows against its columns (the rows of the lists it probes), in one launch
// instead of one SGEMM per probed list. A unit's tile is row-major with its own width:
//
//   out[tile_off + i·width + j] = alpha · Σ_k x[a_first + i][k] · x[col_pos[col_first + j]][k]
//
// summed over k in order (one fused multiply-add per k). `select_topk` then reduces each row.
//
// x:       [rows in list order, dim]
// col_pos: [all units' columns] a position in x per column
// units:   [n_units, 6] per unit: a_first, rows, col_first, width, tile_off, first block (the
//          blocks of the units before it), in block order
// grid: (the group's blocks: Σ over units of ⌈rows/64⌉·⌈width/64⌉), block: 256 threads, each
// computing a 4 × 4 patch of its block's 64 × 64 part of a tile.
#define JOIN_TILE 64
#define JOIN_K 16

extern "C" __global__ void __launch_bounds__(256)
join_scores(const float* __restrict__ x, int dim, const unsigned* __restrict__ col_pos,
            const unsigned long long* __restrict__ units, int n_units, float alpha,
            float* __restrict__ out) {
    __shared__ float a_part[JOIN_K][JOIN_TILE + 1];
    __shared__ float b_part[JOIN_K][JOIN_TILE + 1];
    // The unit this block works on: the last whose first block is at most this one.
    const unsigned long long block = blockIdx.x;
    int lo = 0, hi = n_units - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (units[mid * 6 + 5] <= block) lo = mid; else hi = mid - 1;
    }
    const unsigned long long* unit = units + (long long)lo * 6;
    const long long a_first = (long long)unit[0];
    const int rows = (int)unit[1];
    const long long col_first = (long long)unit[2];
    const int width = (int)unit[3];
    const long long tile_off = (long long)unit[4];
    const int local = (int)(block - unit[5]);
    const int col_tiles = (width + JOIN_TILE - 1) / JOIN_TILE;
    const int row0 = (local / col_tiles) * JOIN_TILE;
    const int col0 = (local % col_tiles) * JOIN_TILE;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

    float acc[4][4];
    for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
    for (int k0 = 0; k0 < dim; k0 += JOIN_K) {
        // 64 rows × 16 dimensions of each side, 4 values per thread; consecutive threads read
        // consecutive dimensions of a row.
        for (int e = threadIdx.x; e < JOIN_TILE * JOIN_K; e += blockDim.x) {
            const int t = e / JOIN_K, k = e % JOIN_K;
            const int i = row0 + t, j = col0 + t;
            const bool in_k = k0 + k < dim;
            a_part[k][t] = (in_k && i < rows) ? x[(a_first + i) * dim + k0 + k] : 0.0f;
            b_part[k][t] = (in_k && j < width)
                               ? x[(long long)col_pos[col_first + j] * dim + k0 + k]
                               : 0.0f;
        }
        __syncthreads();
        for (int k = 0; k < JOIN_K; ++k) {
            float a[4], b[4];
            for (int r = 0; r < 4; ++r) a[r] = a_part[k][ty * 4 + r];
            for (int c = 0; c < 4; ++c) b[c] = b_part[k][tx * 4 + c];
            for (int r = 0; r < 4; ++r)
                for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
        }
        __syncthreads();
    }
    for (int r = 0; r < 4; ++r) {
        const int i = row0 + ty * 4 + r;
        if (i >= rows) continue;
        for (int c = 0; c < 4; ++c) {
            const int j = col0 + tx * 4 + c;
            if (j < width) out[tile_off + (long long)i * width + j] = alpha * acc[r][c];
        }
    }
}

// The connectivity check: whether every row of the optimised graph is reachable from the entry
// point (src/index/cagra/optimize.rs walks it on the host, and mends what the walk missed). A
// breadth-first search, one launch per level; the host reads how many rows each few levels
// reached and stops at the first level that reached none.
//
// graph: [n, d], NO_ROW in empty slots; depth: [n], 0 for a row not reached yet, else 1 + its
// distance in edges from the entry (the host sets the entry's to 1); reached: one count,
// incremented for each row this level reaches.
// grid: (⌈n·d / 256⌉), block: 256: a thread per edge, which follows its edge only from a row
// on the level (depth = level); a row is claimed once (compare-and-swap from 0).
extern "C" __global__ void __launch_bounds__(256)
reach_level(const unsigned* __restrict__ graph, int d, unsigned n, unsigned level,
            unsigned* __restrict__ depth, unsigned* __restrict__ reached) {
    const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (unsigned long long)n * d) return;
    // A row reached on this level reads 0 or level + 1 here, never level: no race matters.
    if (depth[e / d] != level) return;
    const unsigned b = graph[e];
    if (b >= n) return;
    if (atomicCAS(&depth[b], 0u, level + 1) == 0u) atomicAdd(reached, 1u);
}
