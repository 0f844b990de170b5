// CAGRA beam search on the GPU: one thread block per query, the single-CTA search of Ootomo
// et al. (ICDE 2024), step for step the search of src/search/cagra.rs (the CPU oracle):
//
// 1. Seeds. With upper levels: a greedy descent from the top row through levels >= 2, then a
//    best-first search of width up_list (itopk / 2) on level 1 (at most 2·up_list
//    expansions), whose list seeds level 0. Then the `seeds` rows (entry points, and fixed
//    pseudo-random rows when there are no upper levels). The best itopk form the list.
// 2. Expand the best `width` unexpanded rows of the list; their out-edges not seen before are
//    scored; 3. merge them into the list (sort by score, then row; keep itopk); repeat until
//    every row of the list is expanded or `max_iter` expansions ran.
//
// The visited set is an open-addressing hash in shared memory of at least 2·(itopk + one
// iteration's candidates) slots. When an iteration could take it past half full it is
// cleared and refilled with the rows on the list: a row dropped from the list can never come
// back (the list's worst only improves), so forgetting it costs at most a second scoring and
// the list evolves exactly as with an unbounded set.
//
// Scores are ranking scores, as on the CPU: ‖x‖² − 2·q·x for L2 (sq_norms given), −q·x
// otherwise. A team of `team` lanes (a power of two <= 32) scores one row, float4 loads when
// dim is a multiple of 4.
//
// Compiled at run time by NVRTC for the GPU present (src/backend/cuda), and in CI to sm_80 and
// sm_90 cubins. No headers.

#define NO_ROW 0xffffffffu
#define EXPLORED 0x80000000u
#define SEARCH_THREADS 256
#define FULL_MASK 0xffffffffu

struct Block {
    const float* q;      // [dim] the query, in shared memory
    float* keys;         // [p] list [0, list) then candidates [list, list + cands), then pads
    unsigned* vals;      // [p] node ids (EXPLORED marks expanded ones), NO_ROW when empty
    float* merged_keys;  // [list] the merge's output
    unsigned* merged_vals;
    unsigned* table;     // [table_size] visited rows
    unsigned* parents;   // [max(width, 1)]
    unsigned* fill;      // rows in the table
    unsigned* scored;    // scores computed
    int list, cands, p, table_size;
    int cands_p2;        // cands rounded up to a power of two; list + cands_p2 <= p
};

__device__ __forceinline__ bool after(float ka, unsigned va, float kb, unsigned vb) {
    return ka > kb || (ka == kb && (va & ~EXPLORED) > (vb & ~EXPLORED));
}

// Ascending sort of keys/vals[0, m) by (score, node); m is a power of two.
__device__ void sort_range(float* keys, unsigned* vals, int m) {
    for (int size = 2; size <= m; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < m / 2; t += blockDim.x) {
                int i = 2 * t - (t & (stride - 1));
                int j = i + stride;
                bool ascending = (i & size) == 0;
                float ki = keys[i], kj = keys[j];
                unsigned vi = vals[i], vj = vals[j];
                if (after(ki, vi, kj, vj) == ascending) {
                    keys[i] = kj; keys[j] = ki;
                    vals[i] = vj; vals[j] = vi;
                }
            }
            __syncthreads();
        }
    }
}

// The whole buffer, list and candidates together.
__device__ void sort_block(const Block& b) { sort_range(b.keys, b.vals, b.p); }

// Merges the candidates into the sorted list, keeping its `list` best: the candidates are
// sorted on their own (log2(cands_p2) stages instead of log2(p)), then each output slot finds
// its place by a binary search along the merge path (list entries first on a tie; entries
// are distinct, except the empty ones). Same result as sort_block.
__device__ void merge_candidates(const Block& b) {
    const float* ka = b.keys;
    const unsigned* va = b.vals;
    float* kb = b.keys + b.list;
    unsigned* vb = b.vals + b.list;
    sort_range(kb, vb, b.cands_p2);
    const int la = b.list, lb = b.cands_p2;
    for (int i = threadIdx.x; i < la; i += blockDim.x) {
        // a: how many of the first i outputs come from the list.
        int lo = max(0, i - lb), hi = min(i, la);
        while (lo < hi) {
            int mid = (lo + hi) >> 1;
            if (!after(ka[mid], va[mid], kb[i - mid - 1], vb[i - mid - 1])) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        int a = lo, c = i - lo;
        bool from_list = c >= lb || (a < la && !after(ka[a], va[a], kb[c], vb[c]));
        b.merged_keys[i] = from_list ? ka[a] : kb[c];
        b.merged_vals[i] = from_list ? va[a] : vb[c];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < la; i += blockDim.x) {
        b.keys[i] = b.merged_keys[i];
        b.vals[i] = b.merged_vals[i];
    }
    __syncthreads();
}

__device__ __forceinline__ unsigned slot_of(unsigned v, unsigned mask) {
    return (v * 0x9E3779B9u >> 3) & mask;
}

// Inserts `row`; false when it was already there.
__device__ bool visit(const Block& b, unsigned row) {
    unsigned mask = (unsigned)b.table_size - 1;
    unsigned s = slot_of(row, mask);
    while (true) {
        unsigned prev = atomicCAS(&b.table[s], NO_ROW, row);
        if (prev == NO_ROW) {
            atomicAdd(b.fill, 1u);
            return true;
        }
        if (prev == row) return false;
        s = (s + 1) & mask;
    }
}

// The row a node stands for: level-0 nodes are rows; upper-level nodes are positions in `map`.
__device__ __forceinline__ unsigned row_of(const unsigned* map, unsigned node) {
    return map ? map[node] : node;
}

// Empties the visited set and refills it with the rows on the list.
__device__ void reset_table(const Block& b, const unsigned* map) {
    for (int i = threadIdx.x; i < b.table_size; i += blockDim.x) b.table[i] = NO_ROW;
    if (threadIdx.x == 0) *b.fill = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < b.list; i += blockDim.x) {
        unsigned v = b.vals[i];
        if (v != NO_ROW) visit(b, row_of(map, v & ~EXPLORED));
    }
    __syncthreads();
}

// Clears the candidate region and the pads.
__device__ void clear_candidates(const Block& b) {
    for (int i = b.list + threadIdx.x; i < b.p; i += blockDim.x) {
        b.keys[i] = __int_as_float(0x7f800000);
        b.vals[i] = NO_ROW;
    }
    __syncthreads();
}

// Scores every candidate node in vals[list, list + count) into keys.
__device__ void score_candidates(const Block& b, int count, const float* __restrict__ vectors,
                                 const float* __restrict__ sq_norms, const unsigned* map,
                                 int dim, int team) {
    const int lane = threadIdx.x & (team - 1);
    const int teams = blockDim.x / team;
    const int first = threadIdx.x / team;
    // Every lane runs the same trip count, so the shuffles see whole warps.
    for (int base = 0; base < count; base += teams) {
        int c = base + first;
        unsigned node = c < count ? b.vals[b.list + c] : NO_ROW;
        float acc = 0.0f;
        unsigned row = 0;
        if (node != NO_ROW) {
            row = row_of(map, node);
            const float* x = vectors + (long long)row * dim;
            if ((dim & 3) == 0) {
                const float4* x4 = reinterpret_cast<const float4*>(x);
                const float4* q4 = reinterpret_cast<const float4*>(b.q);
                for (int j = lane; j < dim / 4; j += team) {
                    float4 xv = __ldg(x4 + j);
                    float4 qv = q4[j];
                    acc = fmaf(qv.x, xv.x, acc);
                    acc = fmaf(qv.y, xv.y, acc);
                    acc = fmaf(qv.z, xv.z, acc);
                    acc = fmaf(qv.w, xv.w, acc);
                }
            } else {
                for (int j = lane; j < dim; j += team) acc = fmaf(b.q[j], __ldg(x + j), acc);
            }
        }
        for (int o = team >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(FULL_MASK, acc, o);
        if (node != NO_ROW && lane == 0) {
            b.keys[b.list + c] = sq_norms ? __ldg(sq_norms + row) - 2.0f * acc : -acc;
            atomicAdd(b.scored, 1u);
        }
    }
    __syncthreads();
}

// Puts the out-edges of the `count` parents into the candidate region: vals[list + t] is the
// t-th edge (parent t / degree), NO_ROW when it is missing (>= nodes), or, with `hashed`, seen
// before.
__device__ void gather(const Block& b, int count, const unsigned* __restrict__ adj, int degree,
                       unsigned nodes, const unsigned* map, bool hashed) {
    for (int t = threadIdx.x; t < count * degree; t += blockDim.x) {
        unsigned parent = b.parents[t / degree];
        unsigned v = __ldg(adj + (long long)parent * degree + t % degree);
        bool fresh = v < nodes && (!hashed || visit(b, row_of(map, v)));
        b.vals[b.list + t] = fresh ? v : NO_ROW;
    }
    __syncthreads();
}

// Marks the best `width` unexpanded nodes of the list expanded and copies them to parents;
// returns how many there were (the same value in every thread).
__device__ int pick_parents(const Block& b, int width, int* shared_count) {
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        int found = 0;
        for (int base = 0; base < b.list && found < width; base += 32) {
            int i = base + lane;
            bool open = i < b.list && (b.vals[i] & EXPLORED) == 0;
            unsigned ballot = __ballot_sync(FULL_MASK, open);
            while (ballot != 0 && found < width) {
                int j = __ffs(ballot) - 1;
                ballot &= ballot - 1;
                if (lane == j) {
                    b.parents[found] = b.vals[i];
                    b.vals[i] |= EXPLORED;
                }
                found++;
            }
        }
        if (lane == 0) *shared_count = found;
    }
    __syncthreads();
    int found = *shared_count;
    __syncthreads();
    return found;
}

// Beam search over one graph level from the current list: at most `max_steps` expansions of
// `width` parents each. Returns the number of expansions that found a parent.
__device__ int beam(const Block& b, const unsigned* __restrict__ adj, int degree, unsigned nodes,
                    const unsigned* map, int width, int max_steps, const float* vectors,
                    const float* sq_norms, int dim, int team, int* shared_count) {
    int steps = 0;
    for (; steps < max_steps; steps++) {
        int parents = pick_parents(b, width, shared_count);
        if (parents == 0) break;
        if (*b.fill + (unsigned)(parents * degree) > (unsigned)b.table_size / 2) {
            reset_table(b, map);
        }
        clear_candidates(b);
        gather(b, parents, adj, degree, nodes, map, true);
        score_candidates(b, parents * degree, vectors, sq_norms, map, dim, team);
        merge_candidates(b);
    }
    return steps;
}

// vectors:   [n, dim] row-major; sq_norms: [n] for L2, null otherwise
// graph:     [n, degree] out-edges (NO_ROW or >= n: none)
// queries:   [nq, dim] prepared (normalised for cosine)
// seeds:     [n_seeds] rows scored first for every query (entry points, then fixed rows)
// up_rows:   [up_nodes] row of each upper-level position, highest level first (levels > 0)
// up_graph:  each level's block, [positions, up_m] positions (NO_ROW pads); level l >= 1
//            starts at up_offsets[l - 1]
// up_list:   the level-1 beam's width, 1 <= up_list <= list
// out_score: [nq, k] ranking scores; out_row: [nq, k] rows, NO_ROW where none was found
// stats:     [2] scores computed and level-0 expansions, summed over queries
//
// grid: (nq), block: SEARCH_THREADS; dynamic shared memory, in this order: the query
// (round_up(dim, 4) floats), keys and vals (p each), the merge's output (list each), the
// table (table_size), parents (max(width, 1)); see `layout` in src/backend/cuda/cagra.rs.
// p >= list + cands_p2, a power of two; cands_p2 >= every candidate count, a power of two.
extern "C" __global__ void __launch_bounds__(SEARCH_THREADS)
cagra_search(const float* __restrict__ vectors, const float* __restrict__ sq_norms,
             const unsigned* __restrict__ graph, unsigned n, int dim, int degree,
             const float* __restrict__ queries, const unsigned* __restrict__ seeds, int n_seeds,
             const unsigned* __restrict__ up_rows, const unsigned* __restrict__ up_graph,
             const long long* __restrict__ up_offsets, int levels, int up_m,
             unsigned up_nodes, int up_list, int list, int width, int max_iter, int k, int p,
             int cands_p2, int table_size, int team, float* __restrict__ out_score,
             unsigned* __restrict__ out_row, unsigned long long* __restrict__ stats) {
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    __shared__ unsigned fill, scored;
    __shared__ int shared_count;
    __shared__ unsigned ep;
    __shared__ float ep_score;

    const long long qi = blockIdx.x;
    const int dim4 = (dim + 3) & ~3;
    float* q = reinterpret_cast<float*>(shared_bytes);
    Block b;
    b.q = q;
    b.keys = q + dim4;
    b.vals = reinterpret_cast<unsigned*>(b.keys + p);
    b.merged_keys = reinterpret_cast<float*>(b.vals + p);
    b.merged_vals = reinterpret_cast<unsigned*>(b.merged_keys + list);
    b.table = b.merged_vals + list;
    b.parents = b.table + table_size;
    b.fill = &fill;
    b.scored = &scored;
    b.list = list;
    b.cands = p - list;
    b.p = p;
    b.cands_p2 = cands_p2;
    b.table_size = table_size;

    for (int j = threadIdx.x; j < dim; j += blockDim.x) q[j] = queries[qi * dim + j];
    for (int i = threadIdx.x; i < table_size; i += blockDim.x) b.table[i] = NO_ROW;
    for (int i = threadIdx.x; i < p; i += blockDim.x) {
        b.keys[i] = __int_as_float(0x7f800000);
        b.vals[i] = NO_ROW;
    }
    if (threadIdx.x == 0) {
        fill = 0;
        scored = 0;
    }
    __syncthreads();

    // 1a. Upper levels: greedy descent from position 0 through levels >= 2 (no visited set,
    //     as on the CPU), then the level-1 beam search from where it ends.
    if (levels > 0) {
        if (threadIdx.x == 0) b.vals[list] = 0;
        __syncthreads();
        score_candidates(b, 1, vectors, sq_norms, up_rows, dim, team);
        if (threadIdx.x == 0) {
            ep = 0;
            ep_score = b.keys[list];
        }
        __syncthreads();
        for (int l = levels; l >= 2; l--) {
            const unsigned* adj = up_graph + up_offsets[l - 1];
            while (true) {
                if (threadIdx.x == 0) b.parents[0] = ep;
                clear_candidates(b);
                gather(b, 1, adj, up_m, up_nodes, up_rows, false);
                score_candidates(b, up_m, vectors, sq_norms, up_rows, dim, team);
                // The first strictly better neighbour of the minimum score, as the CPU's scan.
                if (threadIdx.x == 0) {
                    unsigned best = NO_ROW;
                    float best_score = ep_score;
                    for (int j = 0; j < up_m; j++) {
                        unsigned v = b.vals[list + j];
                        if (v != NO_ROW && b.keys[list + j] < best_score) {
                            best = v;
                            best_score = b.keys[list + j];
                        }
                    }
                    shared_count = best != NO_ROW;
                    if (best != NO_ROW) {
                        ep = best;
                        ep_score = best_score;
                    }
                }
                __syncthreads();
                bool moved = shared_count != 0;
                __syncthreads();
                if (!moved) break;
            }
        }
        if (threadIdx.x == 0) {
            visit(b, up_rows[ep]);
            b.keys[0] = ep_score;
            b.vals[0] = ep;
        }
        __syncthreads();
        // The level-1 list is the first up_list slots; its candidates follow it.
        Block up = b;
        up.list = up_list;
        up.cands = p - up_list;
        beam(up, up_graph + up_offsets[0], up_m, up_nodes, up_rows, 1, 2 * up_list, vectors,
             sq_norms, dim, team, &shared_count);
        clear_candidates(up);
        // Positions to rows, expansion marks cleared, in (score, row) order.
        for (int i = threadIdx.x; i < list; i += blockDim.x) {
            unsigned v = b.vals[i];
            if (v != NO_ROW) b.vals[i] = up_rows[v & ~EXPLORED];
        }
        __syncthreads();
        clear_candidates(b);
        sort_block(b);
    }

    // 1b. Seed rows, a candidate region at a time.
    for (int first = 0; first < n_seeds; first += b.cands) {
        int count = min(b.cands, n_seeds - first);
        if (fill + (unsigned)count > (unsigned)table_size / 2) reset_table(b, nullptr);
        clear_candidates(b);
        for (int t = threadIdx.x; t < count; t += blockDim.x) {
            unsigned v = seeds[first + t];
            b.vals[list + t] = v < n && visit(b, v) ? v : NO_ROW;
        }
        __syncthreads();
        score_candidates(b, count, vectors, sq_norms, nullptr, dim, team);
        merge_candidates(b);
    }

    // 2–3. Level 0.
    int steps = beam(b, graph, degree, n, nullptr, width, max_iter, vectors, sq_norms, dim,
                     team, &shared_count);

    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        unsigned v = b.vals[j];
        out_score[qi * k + j] = b.keys[j];
        out_row[qi * k + j] = v == NO_ROW ? NO_ROW : (v & ~EXPLORED);
    }
    if (threadIdx.x == 0) {
        atomicAdd(&stats[0], (unsigned long long)scored);
        atomicAdd(&stats[1], (unsigned long long)steps);
    }
}
