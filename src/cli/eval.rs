//! `vecbuild eval`: recall@k of a results file against a truth file.

use std::path::PathBuf;
use vecbuild::eval::recall_at_k;
use vecbuild::io::parquet::read_results;

/// Recall@k of a results file against exact results.
///
/// Both files are in the results schema written by `search` and `knn`. For each query, recall
/// is the share of its true k nearest ids found among its first k results; the table shows the
/// mean, the worst query, and the share of queries with all k found. Queries are matched by
/// `query_id`.
///
/// Example: vecbuild eval --results results.parquet --truth truth.parquet --k 10
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Results to score (from `vecbuild search`).
    #[arg(long, value_name = "FILE")]
    pub results: PathBuf,

    /// Exact results (from `vecbuild knn`), with at least k neighbours per query.
    #[arg(long, value_name = "FILE")]
    pub truth: PathBuf,

    /// The k of recall@k.
    #[arg(long, short, default_value_t = 10)]
    pub k: usize,

    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let results = read_results(&args.results)?;
    let truth = read_results(&args.truth)?;
    let r = recall_at_k(&results, &truth, args.k)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        outln!(
            "{:>10}  {:>4}  {:>9}  {:>9}  {:>13}",
            "queries",
            "k",
            "recall@k",
            "min",
            "perfect share"
        );
        outln!(
            "{:>10}  {:>4}  {:>9.4}  {:>9.4}  {:>13.4}",
            r.queries,
            r.k,
            r.recall,
            r.min_recall,
            r.perfect_share
        );
    }
    Ok(())
}
