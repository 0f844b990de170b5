//! `vecbuild bench-knn`: times exact k-NN over data held in memory, for comparing backends
//! and other libraries on the same files (scripts/gpu-check.sh uses it against PyTorch).

use super::input::ColumnArgs;
use super::open_backend;
use std::time::Instant;
use vecbuild::metric::squared_norms;
use vecbuild::search::exact::ExactSearch;
use vecbuild::{Error, Metric};

/// Time exact k-NN of queries against a base, both read into memory first.
///
/// Each run is one whole search on the chosen backend: for a GPU that includes copying the base
/// and queries to the device and the results back. With `--held` the base is copied to the GPU
/// once before timing and stays there, as `search --gpu` holds a flat index: each run then copies
/// the queries up and the results back. The base rows' squared norms are computed once before
/// timing (an index stores them). Prints one JSON line: the median and fastest run, and the
/// rate in GFLOP/s counting 2·queries·rows·dim.
///
/// Example: vecbuild bench-knn --gpu 0 --base base.parquet --queries q.parquet --k 100 --runs 5
#[derive(Debug, clap::Args)]
pub struct BenchKnnArgs {
    /// Base files, directories or glob patterns.
    #[arg(long, short, required = true, num_args = 1.., value_name = "PATH")]
    pub base: Vec<String>,

    /// Query files, directories or glob patterns.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub queries: Vec<String>,

    /// Neighbours per query.
    #[arg(long, short, default_value_t = 10)]
    pub k: usize,

    /// Distance: `l2`, `ip` or `cosine`.
    #[arg(long, default_value = "l2")]
    pub metric: Metric,

    #[command(flatten)]
    pub gpu: super::GpuArgs,

    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,

    /// Untimed runs first (module load, library start-up).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,

    /// Keep the base on the GPU across runs (copied once, untimed; its copy time is reported
    /// as `load_s`): the time of a query batch against a flat index held on the device.
    #[arg(long)]
    pub held: bool,

    #[command(flatten)]
    pub columns: ColumnArgs,
}

pub fn run(args: BenchKnnArgs) -> anyhow::Result<()> {
    if args.k == 0 || args.runs == 0 {
        return Err(Error::param("--k and --runs must be at least 1").into());
    }
    let backend = open_backend(&args.gpu)?;
    let opts = args.columns.options(args.metric.normalizes());
    let (_, base, summary) =
        vecbuild::io::read_all(&vecbuild::io::resolve_inputs(&args.base)?, &opts)?;
    let (_, queries, _) =
        vecbuild::io::read_all(&vecbuild::io::resolve_inputs(&args.queries)?, &opts)?;
    if queries.ncols() != base.ncols() {
        return Err(Error::param(format!(
            "queries have dimension {}, the base {}",
            queries.ncols(),
            base.ncols()
        ))
        .into());
    }
    if args.k as u64 > summary.rows {
        return Err(Error::param(format!(
            "--k {} exceeds the {} base rows",
            args.k, summary.rows
        ))
        .into());
    }
    let norms = (args.metric == Metric::L2).then(|| squared_norms(base.view()));
    let loading = Instant::now();
    let held = match args.held {
        false => None,
        true => Some(
            backend
                .load_flat(base.view(), norms.as_deref())?
                .ok_or_else(|| match args.gpu.gpu {
                    None => Error::param("--held keeps the base on a GPU: it needs --gpu N"),
                    Some(_) => Error::Gpu(format!(
                        "--held: the base ({}) does not fit in half of the GPU's free memory",
                        vecbuild::plan::human((4 * base.len() + 4 * base.nrows()) as u64)
                    )),
                })?,
        ),
    };
    let load_s = held.as_ref().map(|_| loading.elapsed().as_secs_f64());
    let mut times = Vec::with_capacity(args.runs);
    for run in 0..args.warmup + args.runs {
        let started = Instant::now();
        let mut search = ExactSearch::new(queries.clone(), args.metric, args.k);
        match &held {
            Some(loaded) => search.add_loaded(&*backend, loaded, base.nrows())?,
            None => search.add(&*backend, base.view(), norms.as_deref())?,
        }
        let results = search.finish();
        let secs = started.elapsed().as_secs_f64();
        if results.rows.len() != queries.nrows() * args.k {
            return Err(Error::Gpu("a run returned fewer results than asked for".into()).into());
        }
        if run >= args.warmup {
            times.push(secs);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flops = 2.0 * queries.nrows() as f64 * base.nrows() as f64 * base.ncols() as f64;
    let report = serde_json::json!({
        "backend": backend.name(),
        "device": backend.device_name(),
        "queries": queries.nrows(),
        "rows": base.nrows(),
        "dim": base.ncols(),
        "k": args.k,
        "metric": args.metric.to_string(),
        "runs": args.runs,
        "held": args.held,
        "load_s": load_s,
        "median_s": median,
        "fastest_s": times[0],
        "gflops": flops / median / 1e9,
    });
    outln!("{report}");
    Ok(())
}
