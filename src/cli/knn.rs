//! `vecbuild knn`: exact k-NN of queries against a base streamed from files, no index needed.

use super::input::{check_duplicate_ids, read_with_progress, ColumnArgs};
use super::{Opening, Ui};
use ndarray::Array2;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vecbuild::io::parquet::ResultsWriter;
use vecbuild::io::Batch;
use vecbuild::search::exact::ExactSearch;
use vecbuild::{Error, Ids, Metric};

/// Exact k nearest neighbours of every query in a base, without an index.
///
/// For ground truth (`eval`), dedup and kNN graphs. The base is streamed in tiles, so it may be larger than memory; the queries and their
/// running top-k are held in memory. Ties are broken by the smaller base row, so results are
/// deterministic. Output has the schema of `vecbuild search`.
///
/// Example: vecbuild knn --base 'emb/*.parquet' --queries q.parquet --k 100 --out truth.parquet
#[derive(Debug, clap::Args)]
pub struct KnnArgs {
    /// Base files, directories or glob patterns (Parquet, .npy, .fvecs).
    #[arg(long, short, required = true, num_args = 1.., value_name = "PATH")]
    pub base: Vec<String>,

    /// Query files, directories or glob patterns, same dimension as the base.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub queries: Vec<String>,

    /// Neighbours per query (1 to 4096, at most the number of base rows).
    #[arg(long, short, default_value_t = 10)]
    pub k: usize,

    /// Distance: `l2`, `ip` or `cosine` (see `vecbuild build --help`).
    #[arg(long, default_value = "l2")]
    pub metric: Metric,

    /// The results file to write (Parquet).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,

    #[command(flatten)]
    pub gpu: super::GpuArgs,

    /// Accept duplicate ids in the base.
    #[arg(long)]
    pub allow_duplicate_ids: bool,

    /// Query id column (default: `id` when present, else row numbers).
    #[arg(long, value_name = "NAME")]
    pub query_id_column: Option<String>,

    /// Query vector column (default: the only list-of-floats column).
    #[arg(long, value_name = "NAME")]
    pub query_vector_column: Option<String>,

    #[command(flatten)]
    pub columns: ColumnArgs,
}

/// Largest k accepted: the selection buffers grow with k × queries.
const MAX_K: usize = 4096;

pub fn run(args: KnnArgs, ui: &Ui) -> anyhow::Result<()> {
    if args.k == 0 || args.k > MAX_K {
        return Err(Error::param(format!("--k {} must be between 1 and {MAX_K}", args.k)).into());
    }
    // The GPU opens while the queries are read; a bad `--gpu N` has already been refused.
    let opening = Opening::start(&args.gpu)?;
    let started = Instant::now();
    let query_files = vecbuild::io::resolve_inputs(&args.queries)?;
    let mut q_opts = args.columns.options(args.metric.normalizes());
    q_opts.vector_column = args.query_vector_column.clone();
    q_opts.id_column = args.query_id_column.clone();
    let reading = vecbuild::laps::span("knn: queries read");
    let (q_ids, queries, q_summary) = vecbuild::io::read_all(&query_files, &q_opts)?;
    drop(reading);
    let nq = queries.nrows();
    let mut search = ExactSearch::new(queries, args.metric, args.k);
    let backend = opening.wait()?;

    let mut base_ids: Option<Ids> = None;
    let mut compute = Duration::ZERO;
    let mut opts = args.columns.options(args.metric.normalizes());
    opts.expect_dim = Some(q_summary.dim);
    // The batches as they come, or gathered into the blocks the backend works best on.
    let block_rows = backend.exact_block_rows(q_summary.dim);
    let mut gathered = Gathered::new(block_rows, q_summary.dim);
    let mut add = |block: Array2<f32>| -> vecbuild::Result<()> {
        let t = Instant::now();
        search.add(backend, block.view(), None)?;
        compute += t.elapsed();
        Ok(())
    };
    let summary = read_with_progress(ui, "scanning base", &args.base, opts, &mut |b: Batch| {
        if let Some(block) = gathered.push(b.vectors) {
            add(block)?;
        }
        Ids::accumulate(&mut base_ids, b.ids)?;
        Ok(())
    })?;
    if let Some(block) = gathered.rest() {
        add(block)?;
    }
    let base_ids = base_ids.unwrap_or_else(|| Ids::empty(summary.id_kind));
    if !args.allow_duplicate_ids {
        check_duplicate_ids(&base_ids, &summary)?;
    }
    if args.k as u64 > summary.rows {
        return Err(Error::param(format!(
            "--k {} exceeds the {} base rows",
            args.k, summary.rows
        ))
        .into());
    }
    let results = search.finish();
    let writing = vecbuild::laps::span("knn: results written");
    let neighbors = base_ids.take(results.rows.iter().map(|&r| r as usize));
    let offsets: Vec<usize> = (0..=nq).map(|i| i * args.k).collect();
    let mut writer = ResultsWriter::create(&args.out, q_ids.kind(), base_ids.kind())?;
    let (distances, _) = results.distances.into_raw_vec_and_offset();
    writer.write(q_ids, neighbors, &offsets, distances)?;
    writer.finish()?;
    drop(writing);
    let secs = compute.as_secs_f64();
    super::note_slower_paths(ui, backend);
    ui.note(format!(
        "exact {}-NN of {nq} queries over {} base rows ({}, on {}): {:.3} s computing ({:.0} QPS, {:.1} GFLOP/s), {:.2} s in all → {}",
        args.k,
        summary.rows,
        args.metric,
        backend.name(),
        secs,
        nq as f64 / secs.max(1e-9),
        2.0 * nq as f64 * summary.rows as f64 * summary.dim as f64 / secs.max(1e-9) / 1e9,
        started.elapsed().as_secs_f64(),
        args.out.display()
    ));
    Ok(())
}

/// Base batches gathered into blocks of at least `rows` rows (`rows` 0: each batch is a block).
struct Gathered {
    rows: usize,
    dim: usize,
    values: Vec<f32>,
}

impl Gathered {
    fn new(rows: usize, dim: usize) -> Self {
        Gathered {
            rows,
            dim,
            values: Vec::new(),
        }
    }

    /// Takes the next batch `[n, dim]`; returns a block when one is complete.
    fn push(&mut self, batch: Array2<f32>) -> Option<Array2<f32>> {
        if self.values.is_empty() && batch.nrows() >= self.rows {
            return Some(batch);
        }
        self.values.extend(batch.iter());
        match self.values.len() >= self.rows * self.dim {
            true => self.rest(),
            false => None,
        }
    }

    /// The rows gathered so far, if any, as one block.
    fn rest(&mut self) -> Option<Array2<f32>> {
        let values = std::mem::take(&mut self.values);
        let rows = values.len() / self.dim.max(1);
        if rows == 0 {
            return None;
        }
        Array2::from_shape_vec((rows, self.dim), values).ok()
    }
}
