//! `vecbuild build`: read embeddings, build an index, write one artifact.

use super::input::{check_duplicate_ids, read_with_progress, ColumnArgs};
use super::{Opening, Ui};
use std::path::PathBuf;
use std::time::Instant;
use vecbuild::artifact::{IndexKind, Manifest};
use vecbuild::backend::Backend;
use vecbuild::index::cagra::{self, Cagra, CagraParams};
use vecbuild::index::ivf_pq::{self, IvfPq, IvfPqParams};
use vecbuild::io::Batch;
use vecbuild::io::InputSummary;
use vecbuild::{Error, Ids, Metric};

/// Build an index from embeddings and write it as one artifact.
///
/// The artifact is written to a temporary file beside --out and renamed into place only when
/// complete: bad input never leaves a half-written artifact.
///
/// Example: vecbuild build --input 'emb/*.parquet' --index flat --metric cosine --out emb.vbx
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Input files, directories or glob patterns (Parquet, .npy, .fvecs), read in the order given
    /// (matches of one pattern sorted by name).
    #[arg(long, short, required = true, num_args = 1.., value_name = "PATH")]
    pub input: Vec<String>,

    /// Index kind: `flat` (exact search over the stored vectors), `ivf-pq` (inverted lists
    /// with product-quantized residuals) or `cagra` (a fixed-degree proximity graph searched by
    /// beam search; exports to hnswlib and faiss HNSW).
    #[arg(long, default_value = "flat", value_parser = ["flat", "ivf-pq", "cagra"])]
    pub index: String,

    /// Distance: `l2` (squared Euclidean), `ip` (inner product, larger is closer) or `cosine`
    /// (vectors normalised at ingest; zero vectors are an error; distances are 1 − cos).
    #[arg(long, default_value = "l2")]
    pub metric: Metric,

    /// The artifact to write.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,

    #[command(flatten)]
    pub gpu: super::GpuArgs,

    /// Accept duplicate ids (by default a repeated id is an error naming both rows).
    #[arg(long)]
    pub allow_duplicate_ids: bool,

    #[command(flatten)]
    pub columns: ColumnArgs,

    /// Read and check the inputs, choose the parameters and print the memory the build would
    /// hold at each stage (host, and with --gpu the device: its free memory sets the score
    /// tiles); build and write nothing (--out is still required).
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub ivf_pq: IvfPqArgs,

    #[command(flatten)]
    pub cagra: CagraArgs,
}

/// CAGRA parameters (names as in cuVS).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "CAGRA (--index cagra)")]
pub struct CagraArgs {
    /// Out-edges per row of the search graph. Default 32 (fewer distances per hop: faster CPU
    /// search at recall@10 ≈ 0.95); 64 for very high recall targets.
    #[arg(long, value_name = "N")]
    pub graph_degree: Option<usize>,

    /// Neighbours per row of the kNN graph pruned down to --graph-degree. Default: 2 ×
    /// graph_degree.
    #[arg(long, value_name = "N")]
    pub intermediate_graph_degree: Option<usize>,

    /// How the kNN graph is built: `exact` (all pairs, GEMM), `ivf` (k-means lists, each joined
    /// exactly with as many nearest lists as hold 90 % of a row sample's true neighbours, then a
    /// neighbour-of-neighbour pass), `nn-descent`, or `auto` (exact while 2·N²·dim ≤ 2.5e11
    /// flops, else ivf, or exact where ivf would need more than a quarter of the lists).
    #[arg(long, value_name = "ALGO", default_value = "auto", value_parser = ["auto", "exact", "ivf", "nn-descent"])]
    pub build_algo: String,

    /// NN-descent: most local-join iterations (stops earlier when < 0.1% of entries change).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub nn_descent_niter: usize,

    /// Skip the step that rewires the graph so every row is reachable from the entry points.
    #[arg(long)]
    pub no_connectivity: bool,

    /// What search walks the graph on: `sq8` stores 8-bit codes of every row beside the vectors
    /// (a quarter of their size; the search scores codes along the graph and re-ranks its final
    /// list by exact distance: 1.1–1.2× the CPU QPS for ≈ 0.001 less recall@10 on 128-d data),
    /// `none` stores the f32 vectors only.
    #[arg(long, value_name = "CODES", default_value = "sq8", value_parser = ["sq8", "none"])]
    pub search_codes: String,
}

impl CagraArgs {
    fn given(&self) -> bool {
        self.graph_degree.is_some()
            || self.intermediate_graph_degree.is_some()
            || self.build_algo != "auto"
            || self.no_connectivity
            || self.search_codes != "sq8"
    }

    fn resolve(&self, seed: u64) -> vecbuild::Result<CagraParams> {
        let base = CagraParams::default();
        let graph_degree = self.graph_degree.unwrap_or(base.graph_degree);
        Ok(CagraParams {
            graph_degree,
            intermediate_graph_degree: self.intermediate_graph_degree.unwrap_or(2 * graph_degree),
            build_algo: self.build_algo.parse()?,
            nn_descent_niter: self.nn_descent_niter,
            guarantee_connectivity: !self.no_connectivity,
            seed,
            search_codes: self.search_codes.parse()?,
        })
    }
}

/// IVF-PQ parameters; what is not given is chosen from the row count, the dimension and
/// --max-index-memory, and recorded in the manifest with the reason.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "IVF-PQ (--index ivf-pq)")]
pub struct IvfPqArgs {
    /// Inverted lists (coarse k-means clusters). Default: 4·√N rounded to a power of two.
    #[arg(long, value_name = "N")]
    pub n_lists: Option<usize>,

    /// Sub-quantizers, i.e. bytes per encoded row; need not divide the dimension. Default: dim/2,
    /// or what --max-index-memory allows.
    #[arg(long, value_name = "N")]
    pub pq_dim: Option<usize>,

    /// Bits per sub-quantizer code, 4 to 8.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub pq_bits: u32,

    /// Keep the raw vectors so search can re-rank candidates by exact distance
    /// (search --refine-ratio; the artifact grows by N × dim × 4 bytes).
    #[arg(long)]
    pub refine: bool,

    /// Largest artifact wanted, e.g. 4G or 512M: caps pq_dim.
    #[arg(long, value_name = "SIZE")]
    pub max_index_memory: Option<String>,

    /// k-means iterations for the coarse quantizer and each codebook.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub kmeans_n_iters: usize,

    /// Rows sampled to train the coarse quantizer. Default: 256 per list.
    #[arg(long, value_name = "N")]
    pub max_train_rows: Option<usize>,

    /// Seed for sampling and initialisation (same seed and input, same index).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl IvfPqArgs {
    fn given(&self) -> bool {
        self.n_lists.is_some()
            || self.pq_dim.is_some()
            || self.refine
            || self.max_index_memory.is_some()
            || self.max_train_rows.is_some()
    }

    /// Automatic parameters for `n × dim`, overridden by what the user gave.
    fn resolve(&self, n: usize, dim: usize) -> vecbuild::Result<(IvfPqParams, String)> {
        let budget = self
            .max_index_memory
            .as_deref()
            .map(parse_size)
            .transpose()?;
        let (mut p, mut reason) = IvfPqParams::auto(n, dim, self.refine, budget)?;
        if let Some(v) = self.n_lists {
            p.n_lists = v;
            p.max_train_rows = (v * 256).min(n);
            reason.push_str(&format!("; n_lists = {v} as given"));
        }
        if let Some(v) = self.pq_dim {
            p.pq_dim = v;
            reason.push_str(&format!("; pq_dim = {v} as given"));
        }
        if let Some(v) = self.max_train_rows {
            p.max_train_rows = v.min(n);
        }
        p.pq_bits = self.pq_bits;
        p.kmeans_n_iters = self.kmeans_n_iters;
        p.seed = self.seed;
        p.validate(n, dim)?;
        Ok((p, reason))
    }
}

/// The backend, once the input has been read: what is left of a GPU's opening beyond the read
/// is a part of the run's times of its own (`starting cuda:0`).
fn started_after_reading<'a>(
    opening: &'a Opening,
    phases: &mut vecbuild::laps::Laps,
) -> anyhow::Result<&'a dyn Backend> {
    let backend = opening.wait()?;
    if backend.device_name().is_some() {
        phases.mark(format!("starting {}", backend.name()));
    }
    Ok(backend)
}

/// Parses `4G`, `512M`, `1.5GiB`, `100000` (bytes; K, M, G, T are powers of 1024).
pub fn parse_size(text: &str) -> vecbuild::Result<u64> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let digits = upper.trim_end_matches(['B', 'I']);
    let (number, scale) = match digits.chars().last() {
        Some('K') => (&digits[..digits.len() - 1], 1u64 << 10),
        Some('M') => (&digits[..digits.len() - 1], 1 << 20),
        Some('G') => (&digits[..digits.len() - 1], 1 << 30),
        Some('T') => (&digits[..digits.len() - 1], 1 << 40),
        _ => (digits, 1),
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok((v * scale as f64) as u64),
        _ => Err(Error::param(format!(
            "--max-index-memory {text}: expected a size such as 4G, 512M or 1000000"
        ))),
    }
}

pub fn run(args: BuildArgs, ui: &Ui) -> anyhow::Result<()> {
    let kind = match args.index.as_str() {
        "flat" => IndexKind::Flat,
        "ivf-pq" => IndexKind::IvfPq,
        "cagra" => IndexKind::Cagra,
        other => {
            return Err(
                Error::param(format!("--index {other}: expected flat, ivf-pq or cagra")).into(),
            )
        }
    };
    if kind != IndexKind::IvfPq && args.ivf_pq.given() {
        return Err(Error::param(
            "IVF-PQ options (--n-lists, --pq-dim, --refine, …) need --index ivf-pq",
        )
        .into());
    }
    if kind != IndexKind::Cagra && args.cagra.given() {
        return Err(Error::param(
            "CAGRA options (--graph-degree, --build-algo, …) need --index cagra",
        )
        .into());
    }
    let cagra_params = args.cagra.resolve(args.ivf_pq.seed)?;
    let mut phases = vecbuild::laps::Laps::start();
    let started = Instant::now();
    // The GPU opens while the input is read; a bad `--gpu N` has already been refused.
    let opening = Opening::start(&args.gpu)?;
    if args.dry_run {
        return dry_run(opening.wait()?, &args, kind, &cagra_params, ui);
    }
    if let Some(n) = args.gpu.gpu {
        // The driver's start and the device count: not part of the read.
        phases.mark(format!("finding GPU {n}"));
    }
    let opts = args.columns.options(args.metric.normalizes());
    let mut ids: Option<Ids> = None;
    let mut params = serde_json::json!({ "allow_duplicate_ids": args.allow_duplicate_ids });
    let mut search_defaults = serde_json::json!({});
    let built = match kind {
        IndexKind::IvfPq => {
            let (index, raw, summary) =
                build_ivf_pq(&opening, &args, ui, &mut ids, &mut params, &mut phases)?;
            search_defaults = serde_json::json!({
                "n_probes": vecbuild::search::DEFAULT_N_PROBES.min(index.centroids.nrows()),
                "refine_ratio": if args.ivf_pq.refine { 2.0 } else { 1.0 },
            });
            Built::IvfPq {
                index: Box::new(index),
                raw,
                summary,
            }
        }
        _ => {
            let files = vecbuild::io::resolve_inputs(&args.input)?;
            let n = vecbuild::io::count_rows(&files)? as usize;
            let mut data: Vec<f32> = Vec::new();
            let summary = read_with_progress(ui, "reading", &args.input, opts, &mut |b: Batch| {
                vecbuild::io::append_vectors(&mut data, n, &b);
                Ids::accumulate(&mut ids, b.ids)
            })?;
            check_ids(&args, &ids, &summary)?;
            phases.mark("reading");
            let backend = started_after_reading(&opening, &mut phases)?;
            if kind == IndexKind::Cagra {
                let index = build_cagra(backend, &data, &summary, args.metric, &cagra_params, ui)?;
                phases.mark("building");
                params["cagra"] = serde_json::to_value(&cagra_params)?;
                params["cagra_stats"] = serde_json::to_value(&index.stats)?;
                search_defaults = serde_json::json!({
                    "itopk_size": vecbuild::search::cagra::DEFAULT_ITOPK_SIZE,
                    "search_width": vecbuild::search::cagra::DEFAULT_SEARCH_WIDTH,
                });
                Built::Cagra {
                    index: Box::new(index),
                    data,
                    summary,
                }
            } else {
                Built::Flat { data, summary }
            }
        }
    };
    let backend = opening.wait()?;
    let summary = match &built {
        Built::Flat { summary, .. }
        | Built::IvfPq { summary, .. }
        | Built::Cagra { summary, .. } => summary.clone(),
    };
    let ids = ids.unwrap_or_else(|| Ids::empty(summary.id_kind));
    let manifest = Manifest {
        format_version: vecbuild::artifact::FORMAT_VERSION,
        kind,
        metric: args.metric,
        dim: summary.dim,
        count: summary.rows,
        id_kind: summary.id_kind,
        params,
        search_defaults,
        // Absolute paths, so `tune` can read the inputs again from anywhere.
        inputs: summary
            .files
            .iter()
            .map(|f| vecbuild::io::InputFile {
                path: std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone()),
                ..f.clone()
            })
            .collect(),
        vector_column: summary.vector_column.clone(),
        id_column: summary.id_column.clone(),
        backend: backend.name(),
        device: backend.device_name(),
        build_seconds: started.elapsed().as_secs_f64(),
        built_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        vecbuild_version: env!("CARGO_PKG_VERSION").into(),
        checksums: Default::default(),
    };
    match &built {
        Built::IvfPq { index, raw, .. } => {
            let raw = raw
                .as_ref()
                .map(|r| {
                    ndarray::ArrayView2::from_shape(
                        (summary.rows as usize, summary.dim),
                        r.as_slice(),
                    )
                })
                .transpose()?;
            vecbuild::index::ivf_pq::write(&args.out, index, &ids, raw, manifest)?
        }
        Built::Flat { data, .. } => {
            let vectors = ndarray::ArrayView2::from_shape(
                (summary.rows as usize, summary.dim),
                data.as_slice(),
            )?;
            vecbuild::index::flat::write(&args.out, vectors, &ids, manifest)?
        }
        Built::Cagra { index, data, .. } => {
            let vectors = ndarray::ArrayView2::from_shape(
                (summary.rows as usize, summary.dim),
                data.as_slice(),
            )?;
            let codes = cagra_params.search_codes;
            vecbuild::index::cagra::write(&args.out, index, vectors, &ids, codes, manifest)?
        }
    }
    phases.mark("writing");
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    super::note_slower_paths(ui, backend);
    ui.note(format!(
        "time: {}",
        vecbuild::laps::Laps::summary(phases.parts())
    ));
    ui.note(format!(
        "built {kind} index of {} rows × {} dims ({}) in {:.2} s → {} ({:.1} MB)",
        summary.rows,
        summary.dim,
        args.metric,
        started.elapsed().as_secs_f64(),
        args.out.display(),
        size as f64 / 1e6
    ));
    // What the run holds is given back here, where a trace times it (a GPU's context and
    // memory; the wall time of a whole run counts it).
    let _span = vecbuild::laps::span("build: rows, index and device released");
    drop(built);
    drop(opening);
    Ok(())
}

/// `--dry-run`: one checking pass over the inputs (nothing kept but the ids, for the duplicate
/// check), the parameters the build would choose, and its memory plan on stdout.
fn dry_run(
    backend: &dyn Backend,
    args: &BuildArgs,
    kind: IndexKind,
    cagra_params: &CagraParams,
    ui: &Ui,
) -> anyhow::Result<()> {
    let mut ids: Option<Ids> = None;
    let opts = args.columns.options(args.metric.normalizes());
    // The reader's own memory is measured on this pass: what the process's peak rose by, less
    // the ids it keeps (Linux; elsewhere 0, and the plan says so).
    let before = resident_kib("VmRSS");
    let summary = read_with_progress(ui, "checking", &args.input, opts, &mut |b: Batch| {
        Ids::accumulate(&mut ids, b.ids)?;
        Ok(())
    })?;
    let ids_bytes = ids.as_ref().map_or(0, |i| i.len() as u64 * 8);
    let reader_bytes = match (before, resident_kib("VmHWM")) {
        (Some(b), Some(peak)) => (peak.saturating_sub(b) * 1024).saturating_sub(ids_bytes),
        _ => 0,
    };
    check_ids(args, &ids, &summary)?;
    let (n, dim) = (summary.rows as usize, summary.dim);
    let mut out = vec![format!(
        "dry run: {n} rows × {dim} dims ({}) read and checked in {} file(s); nothing built or written",
        args.metric,
        summary.files.len()
    )];
    let ivf_pq;
    let build = match kind {
        IndexKind::Flat => {
            out.push("index: flat".into());
            vecbuild::plan::Build::Flat
        }
        IndexKind::IvfPq => {
            let (p, reason) = args.ivf_pq.resolve(n, dim)?;
            out.push(format!(
                "index: ivf-pq, n_lists {}, pq_dim {}, pq_bits {}{} ({reason})",
                p.n_lists,
                p.pq_dim,
                p.pq_bits,
                if p.refine { ", refine" } else { "" }
            ));
            ivf_pq = p;
            vecbuild::plan::Build::IvfPq(&ivf_pq)
        }
        IndexKind::Cagra => {
            cagra_params.validate(n)?;
            let algo = cagra_params.resolve_algo(n, dim);
            out.push(format!(
                "index: cagra, graph_degree {}, intermediate_graph_degree {}, kNN graph by {}",
                cagra_params.graph_degree,
                cagra_params.intermediate_graph_degree,
                serde_json::to_value(algo)?.as_str().unwrap_or("?")
            ));
            vecbuild::plan::Build::Cagra(cagra_params)
        }
    };
    let memory = backend.device_memory();
    let human = vecbuild::plan::human;
    if let Some(m) = memory {
        out.push(format!(
            "device: {} ({}), {} free of {} when opened, score tiles of {}",
            backend.name(),
            backend.device_name().unwrap_or_default(),
            human(m.free_bytes as u64),
            human(m.total_bytes as u64),
            human(m.tile_bytes as u64)
        ));
    }
    let tile = memory.map(|m| m.tile_bytes as u64);
    let input = vecbuild::plan::Input {
        rows: n as u64,
        dim: dim as u64,
        metric: args.metric,
        reader_bytes,
    };
    let plan = vecbuild::plan::plan(build, input, tile);
    out.push(format!("{:<28} {:>11} {:>11}", "stage", "host", "device"));
    for s in &plan.stages {
        let device = match memory {
            Some(_) => human(s.device_bytes()),
            None => "-".into(),
        };
        out.push(format!(
            "{:<28} {:>11} {:>11}",
            s.name,
            human(s.host_bytes()),
            device
        ));
        let parts = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(what, b)| format!("{what} {}", human(*b)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(format!("  host: {}", parts(&s.host)));
        if memory.is_some() {
            out.push(format!("  device: {}", parts(&s.device)));
        }
    }
    let (stage, host) = plan.host_peak();
    out.push(format!("peak host memory: {} ({stage})", human(host)));
    if let Some(m) = memory {
        let (stage, device) = plan.device_peak();
        let free = human(m.free_bytes as u64);
        let fits = if device as usize <= m.free_bytes {
            format!("fits in the {free} free")
        } else {
            format!(
                "does NOT fit in the {free} free: a stage that cannot hold its rows or graphs \
                 in half of it streams them from the host or runs on the CPU (more slowly)"
            )
        };
        out.push(format!(
            "peak device memory: {} ({stage}) — {fits}",
            human(device)
        ));
    }
    for a in &plan.assumptions {
        out.push(format!("assumed: {a}"));
    }
    if before.is_none() {
        out.push(
            "not counted: the reader's buffers (measured from /proc/self/status, not found here)"
                .into(),
        );
    }
    println!("{}", out.join("\n"));
    Ok(())
}

/// A `Vm…:` line of /proc/self/status in KiB (`VmRSS` resident now, `VmHWM` the peak so far).
fn resident_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Rejects duplicate ids unless --allow-duplicate-ids.
fn check_ids(args: &BuildArgs, ids: &Option<Ids>, summary: &InputSummary) -> vecbuild::Result<()> {
    match ids {
        Some(ids) if !args.allow_duplicate_ids => check_duplicate_ids(ids, summary),
        _ => Ok(()),
    }
}

/// What a build produced, before it is written.
enum Built {
    Flat {
        data: Vec<f32>,
        summary: InputSummary,
    },
    IvfPq {
        index: Box<IvfPq>,
        raw: Option<Vec<f32>>,
        summary: InputSummary,
    },
    Cagra {
        index: Box<Cagra>,
        data: Vec<f32>,
        summary: InputSummary,
    },
}

/// Builds the CAGRA graph over the rows read into memory, showing each stage.
fn build_cagra(
    backend: &dyn Backend,
    data: &[f32],
    summary: &InputSummary,
    metric: Metric,
    params: &CagraParams,
    ui: &Ui,
) -> anyhow::Result<Cagra> {
    let n = summary.rows as usize;
    params.validate(n)?;
    let vectors = ndarray::ArrayView2::from_shape((n, summary.dim), data)?;
    let algo = params.resolve_algo(n, summary.dim);
    ui.note(format!(
        "CAGRA: graph_degree {}, intermediate_graph_degree {}, kNN graph by {}",
        params.graph_degree,
        params.intermediate_graph_degree,
        serde_json::to_value(algo)?.as_str().unwrap_or("?")
    ));
    let bar = ui.progress("building");
    bar.set_length(1000);
    let progress = |stage: &str, done: f64| {
        bar.set_message(stage.to_string());
        bar.set_position((done.clamp(0.0, 1.0) * 1000.0) as u64);
    };
    let index = cagra::build(backend, vectors, metric, params, &progress)?;
    bar.finish_and_clear();
    let s = &index.stats;
    ui.note(format!(
        "CAGRA stages: kNN graph {:.2} s ({}recall {:.4} on {} sampled rows), optimisation {:.2} s (pruning {:.2} s, connectivity {:.2} s, upper levels {:.2} s{}), {} edges rewired for connectivity, {} entry point(s)",
        s.knn_graph_seconds,
        match s.knn_graph_parts.is_empty() {
            true => String::new(),
            false => format!("{}; ", vecbuild::laps::Laps::summary(&s.knn_graph_parts)),
        },
        s.knn_graph_recall,
        cagra::RECALL_SAMPLE.min(n),
        s.optimize_seconds,
        s.prune_seconds,
        s.connect_seconds,
        s.upper_levels_seconds,
        match s.upper_levels_beside {
            true => " on the host, beside the graph stages",
            false => "",
        },
        s.rewired_edges,
        index.entry_points.len()
    ));
    ui.note(format!(
        "CAGRA optimisation: {}",
        vecbuild::laps::Laps::summary(&s.optimize_parts)
    ));
    Ok(index)
}

/// Streams the inputs twice: pass 1 collects the training sample (and the ids), pass 2 encodes
/// batch by batch, so memory holds the codes, the sample and one batch (plus the raw vectors
/// when --refine keeps them for the artifact). Where the sample is every row, pass 2 encodes
/// the sample instead.
fn build_ivf_pq(
    opening: &Opening,
    args: &BuildArgs,
    ui: &Ui,
    ids: &mut Option<Ids>,
    params: &mut serde_json::Value,
    phases: &mut vecbuild::laps::Laps,
) -> anyhow::Result<(IvfPq, Option<Vec<f32>>, InputSummary)> {
    let files = vecbuild::io::resolve_inputs(&args.input)?;
    let n = vecbuild::io::count_rows(&files)? as usize;
    let opts = || args.columns.options(args.metric.normalizes());
    // Pass 1: parameters once the dimension is known, then the sampled rows.
    let mut plan: Option<(IvfPqParams, String, Vec<usize>)> = None;
    let mut sample: Vec<f32> = Vec::new();
    let mut next = 0usize;
    let summary = read_with_progress(ui, "sampling", &args.input, opts(), &mut |b: Batch| {
        Ids::accumulate(ids, b.ids)?;
        if plan.is_none() {
            let (p, reason) = args.ivf_pq.resolve(n, b.vectors.ncols())?;
            let rows = ivf_pq::training_rows(n, &p);
            let _ = sample.try_reserve_exact(rows.len().saturating_mul(b.vectors.ncols()));
            plan = Some((p, reason, rows));
        }
        let rows = plan.as_ref().map(|p| &p.2[..]).unwrap_or(&[]);
        let (first, end) = (
            b.first_row as usize,
            b.first_row as usize + b.vectors.nrows(),
        );
        let standard = b.vectors.as_standard_layout();
        let flat = standard.as_slice().unwrap_or(&[]);
        let dim = b.vectors.ncols();
        while next < rows.len() && rows[next] < end {
            // A run of consecutive sampled rows (all of them, where the sample is every row)
            // is one slice.
            let mut last = next;
            while last + 1 < rows.len() && rows[last + 1] == rows[last] + 1 && rows[last + 1] < end
            {
                last += 1;
            }
            let (a, z) = (rows[next] - first, rows[last] + 1 - first);
            vecbuild::io::extend_parallel(&mut sample, &flat[a * dim..z * dim]);
            next = last + 1;
        }
        Ok(())
    })?;
    // Reject duplicate ids before the expensive part.
    check_ids(args, ids, &summary)?;
    phases.mark("reading");
    let backend = started_after_reading(opening, phases)?;
    let (p, reason, rows) = plan.ok_or_else(|| Error::param("input has no rows"))?;
    if summary.rows as usize != n {
        return Err(Error::param(format!(
            "the inputs hold {} rows but their metadata said {n}",
            summary.rows
        ))
        .into());
    }
    ui.note(format!(
        "IVF-PQ: n_lists {}, pq_dim {}, pq_bits {}{} ({reason})",
        p.n_lists,
        p.pq_dim,
        p.pq_bits,
        if p.refine { ", refine" } else { "" }
    ));
    let sample = ndarray::Array2::from_shape_vec((rows.len(), summary.dim), sample)?;
    let bar = ui.progress("building");
    // Each stage name arrives as the previous stage ends: time them for the summary.
    let stages = std::sync::Mutex::new((Instant::now(), String::new(), Vec::<String>::new()));
    let say = |stage: &str| {
        bar.set_message(stage.to_string());
        if let Ok(mut s) = stages.lock() {
            let (t, name, done) = &mut *s;
            if !name.is_empty() {
                done.push(format!("{name} {:.2} s", t.elapsed().as_secs_f64()));
            }
            *t = Instant::now();
            *name = stage.to_string();
        }
    };
    let trained = ivf_pq::train(backend, sample.view(), n, args.metric, &p, Some(&say))?;
    say("encoding");
    bar.finish_and_clear();
    let mut encoded = ivf_pq::Encoded::default();
    let raw = if rows.len() == n {
        // The sample is every row, in order (up to 256 per list, so with the automatic list
        // count up to about a million rows): encode it rather than read the inputs again.
        trained.encode(backend, sample.view(), &mut encoded)?;
        p.refine.then(|| sample.into_raw_vec_and_offset().0)
    } else {
        // Pass 2: encode batch by batch.
        let mut raw: Option<Vec<f32>> = p.refine.then(Vec::new);
        read_with_progress(ui, "encoding", &args.input, opts(), &mut |b: Batch| {
            trained.encode(backend, b.vectors.view(), &mut encoded)?;
            if let Some(r) = raw.as_mut() {
                vecbuild::io::append_vectors(r, n, &b);
            }
            Ok(())
        })?;
        raw
    };
    let index = trained.finish(encoded);
    phases.mark(match rows.len() == n {
        true => "building",
        false => "building (the encoding pass reads the input again)",
    });
    say("");
    if let Ok(s) = stages.lock() {
        ui.note(format!("IVF-PQ stages: {}", s.2.join(", ")));
    }
    params["ivf_pq"] = serde_json::to_value(&p)?;
    params["auto_reason"] = reason.into();
    params["list_sizes"] = serde_json::to_value(index.list_stats())?;
    params["coarse_objective"] = serde_json::to_value(&index.coarse_objective)?;
    Ok((index, raw, summary))
}
