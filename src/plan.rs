//! What a build will hold in memory, before it runs (`vecbuild build --dry-run`).
//!
//! Each stage of a build is listed with the large buffers it holds at its peak: host memory for
//! every build, device memory for a GPU build. The sizes follow the code's allocations term by
//! term (the rows, graphs, samples, codes, score tiles), leaving out what is small next to them
//! (per-list bookkeeping, one read batch). Three terms depend on the data and are assumed:
//!
//! - the ivf kNN-graph join's columns (each list is joined with `P` lists, `P` chosen from a
//!   sample at run time): the plan takes [`IvfJoin::auto`](crate::index::cagra::knn_graph::IvfJoin)'s
//!   starting `P`, and says so;
//! - the join's scores where they fit in less than a score tile (small inputs): twice what
//!   lists of equal size would need, as lists differ in size;
//! - string ids: taken at 8 bytes a row, as integer ids.
//!
//! Device buffers of the score tiles are sized by the backend from the free memory it found
//! when it opened the device (`tile_bytes`), so a plan for a GPU needs that figure. The CUDA
//! context, the loaded kernels and cuBLAS' workspace are not counted: they are taken before
//! `tile_bytes` is read. The tests hold the device figures against what GPU builds allocate
//! on the CUDA emulator (tests/it/cuda.rs, `plan_covers_the_build`).

use crate::backend::base_tile_rows;
use crate::index::cagra::knn_graph::{IvfJoin, EXACT_CHUNK};
use crate::index::cagra::{BuildAlgo, CagraParams, RECALL_SAMPLE};
use crate::index::ivf_pq::{IvfPqParams, ENCODE_CHUNK, PQ_TRAIN_ROWS};
use crate::Metric;

/// One stage and the large buffers live at its peak, by name, in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: &'static str,
    pub host: Vec<(&'static str, u64)>,
    pub device: Vec<(&'static str, u64)>,
}

impl Stage {
    pub fn host_bytes(&self) -> u64 {
        self.host.iter().map(|(_, b)| b).sum()
    }
    pub fn device_bytes(&self) -> u64 {
        self.device.iter().map(|(_, b)| b).sum()
    }
}

/// A build's stages in order, with the assumptions the sizes rest on.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    pub stages: Vec<Stage>,
    pub assumptions: Vec<String>,
}

impl MemoryPlan {
    /// The stage with the most host memory, and that amount.
    pub fn host_peak(&self) -> (&'static str, u64) {
        self.stages
            .iter()
            .map(|s| (s.name, s.host_bytes()))
            .max_by_key(|&(_, b)| b)
            .unwrap_or(("none", 0))
    }
    /// The stage with the most device memory, and that amount.
    pub fn device_peak(&self) -> (&'static str, u64) {
        self.stages
            .iter()
            .map(|s| (s.name, s.device_bytes()))
            .max_by_key(|&(_, b)| b)
            .unwrap_or(("none", 0))
    }
}

/// The program itself, its threads and libraries, before it holds any data (measured: 10 MiB
/// resident for `vecbuild --version`).
const PROGRAM_BYTES: u64 = 10 << 20;

/// The build being planned.
#[derive(Debug, Clone, Copy)]
pub enum Build<'a> {
    Flat,
    IvfPq(&'a IvfPqParams),
    Cagra(&'a CagraParams),
}

/// The device's scratch buffers only grow while a build runs (see the CUDA backend): a stage
/// holds the largest size each slot reached so far, plus its own temporaries.
#[derive(Default)]
struct Scratch {
    slots: Vec<(&'static str, u64)>,
}

impl Scratch {
    fn need(&mut self, name: &'static str, bytes: u64) {
        match self.slots.iter_mut().find(|(n, _)| *n == name) {
            Some((_, b)) => *b = (*b).max(bytes),
            None => self.slots.push((name, bytes)),
        }
    }
    /// The slots as they stand, then the stage's own buffers.
    fn with(&self, own: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
        self.slots.iter().chain(own).copied().collect()
    }
}

/// Device scratch of one nearest-centroid assignment of `rows` rows to `k` centroids
/// (`assign_nearest`): by GEMM tiles, the row tile, the centroids and their norms, the score
/// tile and the outputs; for small dimensions (`assign_small`), every row, the centroids and
/// the outputs.
fn assign_scratch(s: &mut Scratch, rows: u64, k: u64, dim: u64, tile: u64) {
    if crate::backend::assigns_small(dim as usize, k as usize) {
        s.need("queries", 4 * rows * dim);
        s.need("base", 4 * k * dim);
        s.need("out_score", 4 * rows);
        s.need("out_col", 4 * rows);
        return;
    }
    let rt = (tile / (4 * k)).clamp(1, rows.max(1));
    s.need("queries", 4 * rt * dim);
    s.need("base", 4 * k * dim);
    s.need("norms", 4 * k);
    s.need("scores", 4 * rt * k);
    s.need("out_score", 4 * rt);
    s.need("out_col", 4 * rt);
}

/// Device scratch of one exact k-NN call (`Backend::knn_block`) of `nq` queries of `dim` floats
/// against `nb` base rows keeping `k` per query: the queries (at most as many as a score tile's
/// budget holds with their selections), their thresholds and selections, one or two staged
/// base tiles (rows, and norms for L2), and a score tile of as many queries as fit it.
fn knn_scratch(s: &mut Scratch, nq: u64, nb: u64, dim: u64, k: u64, l2: bool, tile: u64) {
    let nq = nq.min((tile / (6 * dim + 8 * k + 4)).max(1));
    let bt = (base_tile_rows(dim as usize) as u64).min(nb).max(1);
    let qt = (tile / (4 * bt)).clamp(1, nq.max(1));
    s.need("queries", 4 * nq * dim);
    s.need(
        "base tiles",
        nb.div_ceil(bt).min(2) * 4 * bt * (dim + l2 as u64),
    );
    s.need("thresholds", 4 * nq);
    s.need("scores", 4 * qt * bt);
    s.need("out_score", 4 * nq * k);
    s.need("out_col", 4 * nq * k);
}

/// Device buffers a k-means holds with its `rows` rows on the device (`Backend::lloyd`): the
/// rows, their labels, scores and order, the centroids, their norms, cluster starts and sizes,
/// and the grouping's counts per chunk of rows.
fn lloyd_rows(rows: u64, k: u64, dim: u64) -> u64 {
    let chunks = rows.div_ceil(group_chunk_rows(rows as usize, k as usize) as u64);
    4 * rows * dim + 12 * rows + 4 * k * dim + 12 * k + 4 + 4 * chunks * k
}

/// At most this many chunks of rows when a GPU k-means groups its rows by label.
const GROUP_CHUNKS: usize = 1024;
/// At most this many counts (chunks × labels) when a GPU k-means groups its rows: 16 MiB.
pub const GROUP_CELLS: usize = 1 << 22;

/// Rows per chunk when a GPU k-means groups `n` rows by `k` labels (each chunk counts its rows
/// per label): at most [`GROUP_CHUNKS`] chunks and [`GROUP_CELLS`] counts, and at least a
/// warp's 32 rows.
pub fn group_chunk_rows(n: usize, k: usize) -> usize {
    n.div_ceil(GROUP_CHUNKS)
        .max(n.saturating_mul(k).div_ceil(GROUP_CELLS))
        .max(32)
}

/// Device buffers PQ training holds with every sub-space stepped together on the device
/// (`Backend::subspace_lloyds`, sub-spaces of at most [`crate::backend::cpu::SMALL_DIM`]
/// floats): the `rows` rows of `dim` floats, then per row and sub-space a code byte, a distance
/// and an order entry, and per sub-space an objective, a running flag, `ksub + 1` cluster
/// starts, `ksub` cluster sizes and a codebook.
pub fn subspace_rows(rows: u64, dim: u64, pq_dim: u64, ksub: u64, dsub: u64) -> u64 {
    4 * rows * dim
        + (rows * pq_dim).next_multiple_of(4)
        + 8 * rows * pq_dim
        + pq_dim * (8 + 4 + 4 * (ksub + 1) + 4 * ksub + 4 * ksub * dsub)
}

/// What a build reads.
#[derive(Debug, Clone, Copy)]
pub struct Input {
    pub rows: u64,
    pub dim: u64,
    pub metric: Metric,
    /// What the reader holds besides the rows it hands on (`build --dry-run` measures it on
    /// its own reading pass).
    pub reader_bytes: u64,
}

/// The memory plan of building over `input`; `tile` is the GPU's score-tile size
/// ([`crate::backend::tile_bytes`]), `None` for a CPU build (no device column).
pub fn plan(build: Build<'_>, input: Input, tile: Option<u64>) -> MemoryPlan {
    let (n, dim, metric) = (input.rows, input.dim, input.metric);
    let reader = ("reader (row groups being decoded)", input.reader_bytes);
    let vectors = 4 * n * dim;
    let ids = 8 * n;
    let gpu = tile.is_some();
    let tile = tile.unwrap_or(0);
    let mut scratch = Scratch::default();
    let mut stages = Vec::new();
    let mut assumptions = Vec::new();
    let dev = |v: Vec<(&'static str, u64)>| if gpu { v } else { Vec::new() };
    match build {
        Build::Flat => stages.push(Stage {
            name: "reading",
            host: vec![("vectors", vectors), ("ids", ids), reader],
            device: Vec::new(),
        }),
        Build::IvfPq(p) => {
            let k = p.n_lists as u64;
            let sample = (p.max_train_rows.max(PQ_TRAIN_ROWS) as u64).min(n);
            let coarse = (p.max_train_rows as u64).min(sample);
            let pq_rows = (PQ_TRAIN_ROWS as u64).min(sample);
            let pq_dim = p.pq_dim as u64;
            let dsub = dim.div_ceil(pq_dim.max(1));
            let ksub = 1u64 << p.pq_bits;
            let raw = if p.refine { vectors } else { 0 };
            let base = vec![("training sample", 4 * sample * dim), ("ids", ids)];
            stages.push(Stage {
                name: "reading (sampling)",
                host: [base.clone(), vec![reader]].concat(),
                device: Vec::new(),
            });
            // Coarse k-means: the sampled rows copied out of the sample.
            let mut own = Vec::new();
            if gpu {
                assign_scratch(&mut scratch, coarse, k, dim, tile);
                own.push((
                    "k-means rows (held on the device)",
                    lloyd_rows(coarse, k, dim),
                ));
            }
            stages.push(Stage {
                name: "training coarse quantizer",
                host: [base.clone(), vec![("coarse rows", 4 * coarse * dim)]].concat(),
                device: dev(scratch.with(&own)),
            });
            // PQ: the sampled rows (assigned to their lists) and their residuals, and every
            // sub-space stepped together: on the CPU, the sub-spaces cut out and each running
            // one's labels, distances and order; on a GPU, the rows held on the device and,
            // per step, the codes and each sub-space's labels and counting sort on the host
            // (wider sub-spaces: one at a time, as the coarse k-means).
            let together = dsub as usize <= crate::backend::cpu::SMALL_DIM;
            let mut own = Vec::new();
            if gpu {
                assign_scratch(&mut scratch, pq_rows, k, dim, tile);
            }
            let steps = match (gpu, together) {
                (false, _) => vec![
                    ("sub-spaces", 4 * pq_rows * pq_dim * dsub),
                    // Each sub-space's labels, kept between steps, and a step's distances and
                    // rows searched in full: at most a thread's worth at once, but the
                    // allocator keeps what the threads freed.
                    ("labels, distances and rows searched", 12 * pq_rows * pq_dim),
                ],
                (true, true) => {
                    own.push((
                        "sub-spaces (held on the device)",
                        subspace_rows(pq_rows, dim, pq_dim, ksub, dsub),
                    ));
                    vec![("codes, labels and row orders", 13 * pq_rows * pq_dim)]
                }
                (true, false) => {
                    own.push((
                        "sub-space rows (held on the device)",
                        lloyd_rows(pq_rows, ksub, dsub),
                    ));
                    vec![("sub-space", 4 * pq_rows * dsub)]
                }
            };
            stages.push(Stage {
                name: "training product quantizer",
                host: [
                    base.clone(),
                    vec![("PQ rows and residuals", 2 * 4 * pq_rows * dim)],
                    steps,
                ]
                .concat(),
                device: dev(scratch.with(&own)),
            });
            // Encoding: codes and labels of every row so far, one chunk's residuals; then the
            // codes sorted into lists beside them.
            if gpu {
                let chunk = (ENCODE_CHUNK as u64).min(n);
                assign_scratch(&mut scratch, chunk, k, dim, tile);
                if dsub as usize <= crate::backend::cpu::SMALL_DIM {
                    // One `pq_encode` launch a chunk: residuals, codebooks, code bytes.
                    scratch.need("queries", 4 * chunk * dim);
                    scratch.need("base", 4 * pq_dim * ksub * dsub);
                    scratch.need("out_col", (chunk * pq_dim).next_multiple_of(4));
                } else {
                    assign_scratch(&mut scratch, chunk, ksub, dsub, tile);
                }
            }
            // Where the sample is every row, it is encoded (and kept as the raw vectors) instead
            // of the inputs being read again.
            let whole = sample == n;
            stages.push(Stage {
                name: if whole {
                    "encoding (the sample)"
                } else {
                    "reading (encoding)"
                },
                host: vec![
                    ("training sample", 4 * sample * dim),
                    ("ids", ids),
                    if whole { ("reader", 0) } else { reader },
                    ("codes and labels", n * pq_dim + 4 * n),
                    ("raw vectors (--refine)", if whole { 0 } else { raw }),
                ],
                device: dev(scratch.with(&[])),
            });
            stages.push(Stage {
                name: "writing",
                host: vec![
                    ("training sample", 4 * sample * dim),
                    ("ids", ids),
                    ("codes and labels", n * pq_dim + 4 * n),
                    ("codes in list order", n * pq_dim + 8 * n),
                    ("raw vectors (--refine)", raw),
                ],
                device: dev(scratch.with(&[])),
            });
        }
        Build::Cagra(p) => {
            let (d_in, d_out) = (p.intermediate_graph_degree as u64, p.graph_degree as u64);
            let lifted = if metric == Metric::InnerProduct {
                4 * n * (dim + 1)
            } else {
                0
            };
            let kdim = if lifted > 0 { dim + 1 } else { dim };
            // The graph's k-NN is L2 (with norms) but for cosine.
            let l2 = metric != Metric::Cosine;
            // The upper levels: about n / (graph_degree / 2) rows with 2 · graph_degree links each
            // (the levels above 1 add a 16th), their vectors gathered while they are built. A
            // GPU build makes them on the host beside its graph stages; a CPU build after
            // pruning, in a stage of their own.
            let upper_rows = n / (d_out / 2).max(2);
            let upper = vec![
                ("upper levels: rows gathered", 4 * upper_rows * (kdim + 1)),
                ("upper levels: links", 4 * upper_rows * 2 * d_out * 17 / 16),
            ];
            let mut base = vec![
                ("vectors", vectors),
                ("ids", ids),
                ("norms", 4 * n),
                ("lifted rows (inner product)", lifted),
            ];
            if gpu {
                base.extend(upper.iter().copied());
            }
            stages.push(Stage {
                name: "reading",
                host: vec![("vectors", vectors), ("ids", ids), reader],
                device: Vec::new(),
            });
            let algo = p.resolve_algo(n as usize, dim as usize);
            let knn = 4 * n * d_in;
            match algo {
                BuildAlgo::Exact => {
                    if gpu {
                        // One exact k-NN call per chunk of rows, against every row.
                        let nq = (EXACT_CHUNK as u64).min(n);
                        knn_scratch(&mut scratch, nq, n, kdim, d_in + 1, l2, tile);
                    }
                    stages.push(Stage {
                        name: "kNN graph (exact)",
                        host: [base.clone(), vec![("kNN graph", knn)]].concat(),
                        device: dev(scratch.with(&[])),
                    });
                }
                BuildAlgo::NnDescent => {
                    // The sample's exact neighbours (on the device in a GPU build), then the
                    // local joins on the host: the graph, the next one, and each row's reverse
                    // neighbours (at most `fan` of them, in a list of its own).
                    if gpu {
                        let nq = (RECALL_SAMPLE as u64).min(n);
                        knn_scratch(&mut scratch, nq, n, kdim, d_in + 1, l2, tile);
                    }
                    let fan = (d_in / 2).clamp(8, 32);
                    stages.push(Stage {
                        name: "kNN graph: nn-descent",
                        host: [
                            base.clone(),
                            vec![
                                ("kNN graph and the next one", 2 * knn),
                                ("reverse neighbours", 24 * n + 4 * n * fan),
                            ],
                        ]
                        .concat(),
                        device: dev(scratch.with(&[])),
                    });
                }
                BuildAlgo::Ivf | BuildAlgo::Auto => {
                    let join = IvfJoin::auto(n as usize, d_in as usize, 0);
                    let (lists, probes) = (join.n_lists as u64, join.n_probes as u64);
                    let train = (lists * 64).min(n);
                    let cols = n * probes;
                    if gpu {
                        assumptions.push(format!(
                            "kNN-graph join: each list joined with {probes} lists (chosen at run time from a sample; each more adds up to {} on the device and on the host), its scores taken at twice what lists of equal size would need (at most a score tile)",
                            human(8 * n)
                        ));
                    }
                    let mut own = Vec::new();
                    if gpu {
                        // k-means and the assignment (the row sample's exact neighbours are
                        // found on the host meanwhile).
                        assign_scratch(&mut scratch, n, lists, kdim, tile);
                        own.push((
                            "k-means rows (held on the device)",
                            lloyd_rows(train, lists, kdim),
                        ));
                    }
                    stages.push(Stage {
                        name: "kNN graph: partition",
                        host: [
                            base.clone(),
                            vec![
                                ("k-means sample", 4 * train * kdim),
                                ("labels and lists", 8 * n),
                            ],
                        ]
                        .concat(),
                        device: dev(scratch.with(&own)),
                    });
                    let mut own = Vec::new();
                    let mut host = [base.clone(), vec![("labels and lists", 8 * n)]].concat();
                    if gpu {
                        // Rows copied in list order (host and device), the columns' rows and
                        // norms, the selected columns.
                        let norms = if metric == Metric::L2 { 4 * cols } else { 0 };
                        // A group of lists holds a tile's scores: its rows times their
                        // columns (taken at half the mean, as lists differ).
                        let width = (cols / lists.max(1) / 2).max(1);
                        let group = (tile / 4 / width).clamp(1, n);
                        // Every row scored against its list's columns: with equal lists
                        // `probes · n² / lists` scores, taken at twice that (lists differ in
                        // size, and the large ones are probed the most: 1.3–1.6 times measured
                        // on 5000–20000 rows in 50 clusters) but at most every pair, and at
                        // most a tile.
                        let pairs = (2 * probes * n * n / lists.max(1)).min(n * n);
                        scratch.need("scores", tile.min(4 * pairs));
                        scratch.need("out_score", 4 * group * (d_in + 1));
                        scratch.need("out_col", 4 * group * (d_in + 1));
                        own.push(("rows in list order", 4 * n * kdim));
                        own.push(("join columns and norms", 4 * cols + norms));
                        host.extend([
                            ("rows in list order", 4 * n * kdim),
                            ("join columns and norms", 4 * cols + norms),
                            ("join results", 4 * n * (d_in + 1) + 8 * n * d_in),
                        ]);
                    } else {
                        host.push(("kNN graph", knn));
                    }
                    stages.push(Stage {
                        name: "kNN graph: join",
                        host,
                        device: dev(scratch.with(&own)),
                    });
                    // The neighbour-of-neighbour pass reads the graph and writes a new one (on
                    // a GPU beside a copy of the rows and norms, `Backend::refine_graph`).
                    let graphs = [("kNN graph", knn), ("refined kNN graph", knn)];
                    let own = match gpu {
                        true => [
                            vec![
                                ("rows", 4 * n * kdim),
                                ("norms", 4 * n),
                                ("row order", 4 * n),
                            ],
                            graphs.to_vec(),
                        ]
                        .concat(),
                        false => Vec::new(),
                    };
                    // The CPU visits the rows in list order, then puts each list in its row's
                    // place.
                    let in_order = match gpu {
                        true => vec![("row order", 4 * n)],
                        false => vec![
                            ("refined lists in list order", knn),
                            ("row positions", 4 * n),
                        ],
                    };
                    stages.push(Stage {
                        name: "kNN graph: neighbours of neighbours",
                        host: [base.clone(), graphs.to_vec(), in_order].concat(),
                        device: dev(scratch.with(&own)),
                    });
                }
            }
            let graph = 4 * n * d_out;
            // Pruning, reverse edges and merge: on a GPU all three on the device, where the
            // reverse edges are every pruned edge's key by target, and only the merged graph
            // comes back. The kNN graph goes once pruned, the counts and cursors once the keys
            // are placed: the stage's peak is the larger of the two steps.
            let pruning = vec![("kNN graph", knn), ("pruned graph", graph)];
            let merging = vec![
                ("pruned graph", graph),
                ("reverse edges: keys by target", graph),
                ("reverse edges: offsets", 4 * n + 4),
                ("merged graph", graph),
            ];
            let bytes = |v: &[(&str, u64)]| v.iter().map(|(_, b)| b).sum::<u64>();
            let own = match bytes(&pruning) > bytes(&merging) {
                true => pruning,
                false => merging,
            };
            // The CPU's pruning looks ranks up in a table of every row, one per worker thread.
            let rank_tables =
                match !gpu && n <= crate::index::cagra::optimize::RANK_TABLE_ROWS as u64 {
                    true => 2 * n * rayon::current_num_threads() as u64,
                    false => 0,
                };
            let on_host = match gpu {
                true => vec![("kNN graph", knn), ("merged graph", graph)],
                false => vec![
                    ("kNN graph", knn),
                    ("pruned graph", graph),
                    ("rank tables, one per worker thread", rank_tables),
                    (
                        "reverse edges, with the graph transposed by blocks",
                        2 * graph + 16 * n,
                    ),
                    ("merged graph", graph),
                ],
            };
            stages.push(Stage {
                name: "pruning",
                host: [base.clone(), on_host].concat(),
                device: dev(scratch.with(&own)),
            });
            if !gpu {
                stages.push(Stage {
                    name: "upper levels",
                    host: [
                        base.clone(),
                        vec![("kNN graph", knn), ("graph", graph)],
                        upper,
                    ]
                    .concat(),
                    device: Vec::new(),
                });
            }
            // Connectivity: a breadth-first check (on a GPU, on the device, with a depth per
            // row), then, where it misses rows, the host's walk, which marks rows and keeps a
            // tree and in-degrees beside both graphs (the kNN graph is where it looks for
            // in-edges).
            stages.push(Stage {
                name: "connectivity",
                host: [
                    base.clone(),
                    vec![
                        ("kNN graph", knn),
                        ("graph", graph),
                        ("walk: marks, tree, in-degrees", 9 * n),
                    ],
                ]
                .concat(),
                device: dev(scratch.with(&[("graph", graph), ("depths", 4 * n)])),
            });
            // Writing: the rows in stored order beside the input's, their 8-bit codes, the
            // graph relabelled beside the built one.
            let codes = if p.search_codes == crate::index::cagra::SearchCodes::Sq8 {
                n * dim
            } else {
                0
            };
            stages.push(Stage {
                name: "writing",
                host: vec![
                    ("vectors", vectors),
                    ("ids", 2 * ids),
                    ("vectors in stored order", vectors),
                    ("8-bit codes", codes),
                    ("graph and its relabelled copy", 2 * graph),
                    ("norms and row maps", 4 * n + 24 * n),
                ],
                device: dev(scratch.with(&[])),
            });
        }
    }
    for s in &mut stages {
        // The allocator keeps the reader's freed buffers for the process (measured: an IVF-PQ
        // build's training resident 100 MB above its live buffers after reading 2 row groups).
        if !s.host.contains(&reader) {
            s.host
                .push(("reader buffers, kept by the allocator", input.reader_bytes));
        }
        s.host.push(("program", PROGRAM_BYTES));
        s.host.retain(|&(_, b)| b > 0);
        s.device.retain(|&(_, b)| b > 0);
    }
    MemoryPlan {
        stages,
        assumptions,
    }
}

/// `1.23 GiB`, `456.0 MiB`, `789 KiB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::cagra::CagraParams;

    const MIB: u64 = 1 << 20;

    fn input(rows: u64, dim: u64) -> Input {
        Input {
            rows,
            dim,
            metric: Metric::L2,
            reader_bytes: 64 * MIB,
        }
    }

    #[test]
    fn a_flat_build_holds_the_vectors_ids_and_the_reader() {
        let p = plan(Build::Flat, input(1_000_000, 128), None);
        let want = 512_000_000 + 8_000_000 + 64 * MIB + PROGRAM_BYTES;
        assert_eq!(p.host_peak(), ("reading", want));
        assert_eq!(p.device_peak().1, 0);
    }

    #[test]
    fn a_gpu_cagra_build_holds_its_graphs_on_the_device_while_optimising() {
        let params = CagraParams::default();
        let (n, dim) = (1_000_000u64, 128u64);
        let tile = crate::backend::tile_bytes(70 << 30) as u64;
        assert_eq!(tile, 2 << 30);
        let gpu = plan(Build::Cagra(&params), input(n, dim), Some(tile));
        let pruning = gpu.stages.iter().find(|s| s.name == "pruning").unwrap();
        // The larger of its two steps: the kNN graph pruned, or the pruned graph with its
        // reverse edges' keys and offsets and the merged graph.
        let (d_in, d_out) = (
            params.intermediate_graph_degree as u64,
            params.graph_degree as u64,
        );
        let steps = (4 * n * (d_in + d_out)).max(12 * n * d_out + 4 * n + 4);
        assert!(pruning.device_bytes() >= steps);
        // Here the second: the kNN graph is gone by then.
        let graph = 4 * n * d_out;
        assert!(pruning.device.contains(&("merged graph", graph)));
        assert!(!pruning.device.iter().any(|&(what, _)| what == "kNN graph"));
        // The connectivity check searches the graph as stored, with a depth per row.
        let connectivity = gpu
            .stages
            .iter()
            .find(|s| s.name == "connectivity")
            .unwrap();
        assert!(connectivity.device.contains(&("graph", graph)));
        assert!(connectivity.device.contains(&("depths", 4 * n)));
        assert!(connectivity.device_bytes() < pruning.device_bytes());
        // Score tiles never exceed the tile size the backend picked.
        for s in &gpu.stages {
            for &(what, b) in &s.device {
                if what == "scores" {
                    assert!(b <= tile, "{}: {what} {b}", s.name);
                }
            }
        }
        // The ivf join holds the rows in list order on the device, and the plan says what it
        // assumed about the probes.
        let join = gpu
            .stages
            .iter()
            .find(|s| s.name == "kNN graph: join")
            .unwrap();
        assert!(join.device.contains(&("rows in list order", 4 * n * dim)));
        assert_eq!(gpu.assumptions.len(), 1);
        // The neighbour-of-neighbour pass holds the rows and two kNN graphs.
        let refine = gpu
            .stages
            .iter()
            .find(|s| s.name == "kNN graph: neighbours of neighbours")
            .unwrap();
        let knn = 4 * n * params.intermediate_graph_degree as u64;
        assert!(refine.device_bytes() >= 4 * n * dim + 2 * knn);
        // The CPU build of the same plan has no device column and no probe assumption.
        let cpu = plan(Build::Cagra(&params), input(n, dim), None);
        assert_eq!(cpu.device_peak().1, 0);
        assert!(cpu.assumptions.is_empty());
        assert_eq!(cpu.host_peak().0, "writing");
    }

    #[test]
    fn a_gpu_ivf_pq_build_holds_the_coarse_sample_on_the_device() {
        let (params, _) = IvfPqParams::auto(1_000_000, 128, false, None).unwrap();
        let tile = 2u64 << 30;
        let p = plan(Build::IvfPq(&params), input(1_000_000, 128), Some(tile));
        let coarse = &p.stages[1];
        assert_eq!(coarse.name, "training coarse quantizer");
        let rows = (params.max_train_rows as u64).min(1_000_000);
        let held = lloyd_rows(rows, params.n_lists as u64, 128);
        assert!(coarse
            .device
            .contains(&("k-means rows (held on the device)", held)));
        assert!(coarse.device_bytes() <= held + tile + 256 * MIB);
        // PQ training: sub-spaces of 2 floats, all held together.
        let pq = &p.stages[2];
        assert_eq!(pq.name, "training product quantizer");
        let pq_rows = PQ_TRAIN_ROWS as u64;
        let together = subspace_rows(pq_rows, 128, 64, 256, 2);
        assert_eq!(
            together,
            4 * pq_rows * 128 + 9 * pq_rows * 64 + 64 * (8 + 4 + 4 * 257 + 4 * 256 + 2048)
        );
        assert!(pq
            .device
            .contains(&("sub-spaces (held on the device)", together)));
    }
}
