//! `vecbuild search`: batch queries from a file against an artifact, results to Parquet.

use super::input::{read_with_progress, ColumnArgs};
use super::{Opening, Ui};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};
use vecbuild::ids::IdsView;
use vecbuild::io::parquet::ResultsWriter;
use vecbuild::io::Batch;
use vecbuild::search::{SearchResults, NO_NEIGHBOR};
use vecbuild::{Error, Ids, SearchParams, Searcher};

/// Search an artifact with a file of queries and write the results as Parquet.
///
/// Results have one row per query, in query order: `query_id` (the query file's id type),
/// `neighbors` (list of the index's ids, nearest first) and `distances` (list of float32:
/// squared L2 for l2, inner product for ip, 1 − cos for cosine).
///
/// With --gpu, every index kind is searched on that GPU: flat by exact k-NN; CAGRA by the same
/// beam search as on the CPU, one thread block per query (itopk_size at most 512, search_width
/// × graph_degree at most 1024); IVF-PQ with the probes chosen on the GPU and each query's
/// lists scanned in a thread block with the CPU's lookup tables (k × refine_ratio at most
/// 1024), re-ranking on the host.
///
/// Example: vecbuild search --index emb.vbx --queries q.parquet --k 10 --out results.parquet
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// The artifact to search.
    #[arg(long, value_name = "FILE")]
    pub index: PathBuf,

    /// Query files, directories or glob patterns (Parquet, .npy, .fvecs), same dimension as the
    /// index.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub queries: Vec<String>,

    /// Neighbours per query (at most the number of rows in the index).
    #[arg(long, short, default_value_t = 10)]
    pub k: usize,

    /// The results file to write (Parquet).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,

    /// Queries searched per batch (bounds memory for very large query files).
    #[arg(long, default_value_t = 16384, value_name = "N")]
    pub batch_queries: usize,

    #[command(flatten)]
    pub gpu: super::GpuArgs,

    /// IVF-PQ: lists scanned per query (default: the artifact's stored value; more lists,
    /// higher recall, lower speed).
    #[arg(long, value_name = "N")]
    pub n_probes: Option<usize>,

    /// IVF-PQ built with --refine: re-rank k × R candidates by exact distance (default: the
    /// artifact's stored value; 1 = no re-ranking).
    #[arg(long, value_name = "R")]
    pub refine_ratio: Option<f32>,

    /// CAGRA: length of the internal top-k list, at least k (default: the artifact's stored
    /// value, else 64; larger: higher recall, slower).
    #[arg(long, value_name = "N")]
    pub itopk_size: Option<usize>,

    /// CAGRA: parents expanded per iteration (default: stored value, else 1).
    #[arg(long, value_name = "N")]
    pub search_width: Option<usize>,

    /// CAGRA: most expansions per query (default 0: itopk_size / search_width plus the hops
    /// needed to span the graph).
    #[arg(long, value_name = "N")]
    pub max_iterations: Option<usize>,

    /// CAGRA: walk the graph on the f32 vectors even where the index stores 8-bit codes
    /// (slower; the final list is re-ranked by exact distance either way). The GPU search
    /// always walks on the vectors.
    #[arg(long)]
    pub exact_walk: bool,

    #[command(flatten)]
    pub columns: ColumnArgs,
}

pub fn run(args: SearchArgs, ui: &Ui) -> anyhow::Result<()> {
    let started = Instant::now();
    // The GPU opens while the index is mapped and checked; a bad `--gpu N` is refused first.
    let opening = Opening::start(&args.gpu)?;
    let searcher = Searcher::open(&args.index)?;
    let backend = opening.wait()?;
    let m = searcher.manifest().clone();
    if backend.device_name().is_some() {
        let t = Instant::now();
        ui.note(match searcher.load_on(backend)? {
            true => format!(
                "copied the index to {} in {:.3} s (not counted in the search time)",
                backend.name(),
                t.elapsed().as_secs_f64()
            ),
            false => format!(
                "the index takes more than half of {}'s free memory: its rows go to the device \
                 with each query batch",
                backend.name()
            ),
        });
    }
    if args.k == 0 || args.k as u64 > m.count {
        return Err(Error::param(format!(
            "--k {} must be between 1 and the {} rows in the index",
            args.k, m.count
        ))
        .into());
    }
    let params = SearchParams {
        n_probes: args.n_probes,
        refine_ratio: args.refine_ratio,
        itopk_size: args.itopk_size,
        search_width: args.search_width,
        max_iterations: args.max_iterations,
        exact_walk: args.exact_walk,
    };
    let mut pending: Vec<Batch> = Vec::new();
    let mut pending_rows = 0usize;
    let mut search_time = Duration::ZERO;
    let mut searched = 0u64;
    let mut opts = args.columns.options(m.metric.normalizes());
    opts.expect_dim = Some(m.dim);
    // Three stages at once: the queries are decoded on the reader's threads, searched here, and
    // the results of the batch before encoded and written on a thread of their own.
    std::thread::scope(|scope| -> vecbuild::Result<()> {
        let mut results = ResultsThread::spawn(scope, &args.out, searcher.ids());
        let mut flush = |pending: &mut Vec<Batch>| -> vecbuild::Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let mut q_ids = Ids::empty(pending[0].ids.kind());
            let mut views = Vec::new();
            for b in pending.iter() {
                q_ids.append(&b.ids)?;
                views.push(b.vectors.view());
            }
            let queries = ndarray::concatenate(ndarray::Axis(0), &views)
                .map_err(|e| Error::param(e.to_string()))?;
            pending.clear();
            let t = Instant::now();
            let found = searcher.search_on(backend, queries.view(), args.k, &params)?;
            search_time += t.elapsed();
            searched += queries.nrows() as u64;
            results.send(q_ids, found)
        };
        read_with_progress(ui, "searching", &args.queries, opts, &mut |b: Batch| {
            pending_rows += b.vectors.nrows();
            pending.push(b);
            if pending_rows >= args.batch_queries.max(1) {
                pending_rows = 0;
                flush(&mut pending)?;
            }
            Ok(())
        })?;
        flush(&mut pending)?;
        results.finish()
    })?;
    let secs = search_time.as_secs_f64();
    super::note_slower_paths(ui, backend);
    ui.note(format!(
        "searched {searched} queries (k={}) against {} rows in {:.3} s ({:.0} QPS in search; {:.2} s in all) → {}",
        args.k,
        m.count,
        secs,
        searched as f64 / secs.max(1e-9),
        started.elapsed().as_secs_f64(),
        args.out.display()
    ));
    Ok(())
}

/// What the search hands the results thread.
enum ToWriter {
    /// A batch's query ids and what the search found for them.
    Found(Ids, SearchResults),
    /// Every batch has been sent: finish the file.
    Done,
}

/// Results encoded and written on a thread of their own, a batch behind the search.
struct ResultsThread<'scope> {
    to: SyncSender<ToWriter>,
    thread: Option<ScopedJoinHandle<'scope, vecbuild::Result<()>>>,
}

impl<'scope> ResultsThread<'scope> {
    fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        out: &'env Path,
        ids: IdsView<'env>,
    ) -> Self {
        // One batch waiting while one is written: the search runs at most a batch ahead.
        let (to, from) = sync_channel(1);
        let thread = scope.spawn(move || write_results(from, out, ids));
        ResultsThread {
            to,
            thread: Some(thread),
        }
    }

    /// Hands on a batch's results; when the writing has failed, its error.
    fn send(&mut self, q_ids: Ids, found: SearchResults) -> vecbuild::Result<()> {
        match self.to.send(ToWriter::Found(q_ids, found)) {
            Ok(()) => Ok(()),
            Err(_) => Err(self.stopped()),
        }
    }

    /// Waits for the file to be finished (it appears under its name only then).
    fn finish(mut self) -> vecbuild::Result<()> {
        match self.to.send(ToWriter::Done) {
            Ok(()) => self.join(),
            Err(_) => Err(self.stopped()),
        }
    }

    /// Why the thread stopped before it was told to finish.
    fn stopped(&mut self) -> Error {
        match self.join() {
            Err(e) => e,
            Ok(()) => Error::param("internal: the results thread stopped early"),
        }
    }

    fn join(&mut self) -> vecbuild::Result<()> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(done)) => done,
            Some(Err(_)) => Err(Error::param("internal: the results thread panicked")),
            None => Err(Error::param(
                "internal: the results thread was joined twice",
            )),
        }
    }
}

/// The results thread: each batch's rows become the index's ids (empty slots left out) and
/// are written; the file is kept only when [`ToWriter::Done`] comes (a search that failed drops
/// the channel, and the half-written file goes with the writer). No queries, no file.
fn write_results(from: Receiver<ToWriter>, out: &Path, ids: IdsView<'_>) -> vecbuild::Result<()> {
    let mut writer: Option<ResultsWriter> = None;
    while let Ok(msg) = from.recv() {
        let (q_ids, found) = match msg {
            ToWriter::Found(q_ids, found) => (q_ids, found),
            ToWriter::Done => return writer.map_or(Ok(()), ResultsWriter::finish),
        };
        let mut offsets = Vec::with_capacity(found.rows.nrows() + 1);
        offsets.push(0usize);
        let mut kept: Vec<usize> = Vec::with_capacity(found.rows.len());
        let mut dists: Vec<f32> = Vec::with_capacity(found.rows.len());
        for (rows, distances) in found.rows.outer_iter().zip(found.distances.outer_iter()) {
            for (&r, &d) in rows.iter().zip(distances) {
                if r != NO_NEIGHBOR {
                    kept.push(r as usize);
                    dists.push(d);
                }
            }
            offsets.push(kept.len());
        }
        let neighbors = ids.take(kept);
        if writer.is_none() {
            writer = Some(ResultsWriter::create(out, q_ids.kind(), ids.kind())?);
        }
        if let Some(w) = writer.as_mut() {
            w.write(q_ids, neighbors, &offsets, dists)?;
        }
    }
    Ok(())
}
