//! `vecbuild generate`: seeded synthetic embeddings, for demos and benchmarks.

use super::Ui;
use std::path::PathBuf;
use vecbuild::{Error, Ids};

/// Write a seeded synthetic dataset of clustered embeddings.
///
/// Gaussian clusters around random centres; queries are drawn around the same centres. Files
/// are Parquet with columns `id` (Int64, row numbers) and `embedding` (FixedSizeList<Float32>),
/// or .npy / .fvecs by extension.
///
/// Example: vecbuild generate --rows 100000 --dim 128 --out base.parquet --queries 1000 --queries-out q.parquet
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Base rows.
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,

    /// Dimension.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,

    /// Number of clusters.
    #[arg(long, default_value_t = 1000)]
    pub clusters: usize,

    /// Spread of the points around their cluster's centre, relative to the spread of the
    /// centres: 0.35 gives clusters far apart; 0.6–1.0 clusters that overlap, so that nearest
    /// neighbours cross cluster borders (harder for graph and IVF search, as most real
    /// embeddings are).
    #[arg(long, default_value_t = vecbuild::synth::DEFAULT_SPREAD)]
    pub spread: f32,

    /// Random seed (same seed, same data).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Base file to write (.parquet, .npy or .fvecs).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,

    /// Query rows to write to --queries-out.
    #[arg(long, default_value_t = 0)]
    pub queries: usize,

    /// Query file to write.
    #[arg(long, value_name = "FILE", requires = "queries")]
    pub queries_out: Option<PathBuf>,

    /// Parquet rows per row group.
    #[arg(long, default_value_t = 65536)]
    pub row_group_rows: usize,
}

fn write(
    path: &std::path::Path,
    data: ndarray::ArrayView2<'_, f32>,
    row_group_rows: usize,
) -> vecbuild::Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => vecbuild::io::npy::write(path, data),
        Some("fvecs") => vecbuild::io::fvecs::write(path, data),
        _ => vecbuild::io::parquet::write_vectors(
            path,
            &Ids::row_numbers(0, data.nrows()),
            data,
            row_group_rows,
        ),
    }
}

pub fn run(args: GenerateArgs, ui: &Ui) -> anyhow::Result<()> {
    if args.rows == 0 || args.dim == 0 {
        return Err(Error::param("--rows and --dim must be at least 1").into());
    }
    if args.queries > 0 && args.queries_out.is_none() {
        return Err(Error::param("--queries needs --queries-out").into());
    }
    if !(args.spread.is_finite() && args.spread > 0.0) {
        return Err(Error::param(format!(
            "--spread must be a positive number, got {}",
            args.spread
        ))
        .into());
    }
    let data = vecbuild::synth::clustered_with_spread(
        args.rows,
        args.queries,
        args.dim,
        args.clusters,
        args.spread,
        args.seed,
    );
    write(&args.out, data.base.view(), args.row_group_rows)?;
    if let Some(q) = &args.queries_out {
        write(q, data.queries.view(), args.row_group_rows)?;
    }
    ui.note(format!(
        "wrote {} rows × {} dims to {}{}",
        args.rows,
        args.dim,
        args.out.display(),
        args.queries_out
            .as_ref()
            .map(|q| format!(" and {} queries to {}", args.queries, q.display()))
            .unwrap_or_default()
    ));
    Ok(())
}
