//! Input arguments shared by the commands, reading with a progress bar, and `validate`.

use super::Ui;
use std::time::Instant;
use vecbuild::io::{self, Batch, InputSummary, ReadOptions};
use vecbuild::{Error, Location, Result};

/// How to find vectors and ids in input files.
#[derive(Debug, Clone, clap::Args)]
pub struct ColumnArgs {
    /// Parquet vector column: a FixedSizeList or List of Float32/Float64/Float16. Found
    /// automatically when exactly one such column exists.
    #[arg(long, value_name = "NAME")]
    pub vector_column: Option<String>,

    /// Parquet id column (Int64, Int32, UInt64, UInt32 or Utf8). Default: `id` when present;
    /// without one, ids are global row numbers in input order, starting at 0.
    #[arg(long, value_name = "NAME")]
    pub id_column: Option<String>,

    /// Rows per read batch (default: about 8 MiB of vectors).
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub batch_rows: usize,
}

impl ColumnArgs {
    pub fn options(&self, normalize: bool) -> ReadOptions<'static> {
        ReadOptions {
            vector_column: self.vector_column.clone(),
            id_column: self.id_column.clone(),
            batch_rows: self.batch_rows,
            normalize,
            expect_dim: None,
            progress: None,
        }
    }
}

/// Reads `patterns` batch by batch with a progress bar.
pub fn read_with_progress(
    ui: &Ui,
    what: &str,
    patterns: &[String],
    opts: ReadOptions<'static>,
    sink: &mut dyn FnMut(Batch) -> Result<()>,
) -> Result<InputSummary> {
    let files = io::resolve_inputs(patterns)?;
    let bar = ui.progress(what);
    let started = Instant::now();
    let report = |p: io::Progress| {
        if let Some(total) = p.total_rows {
            bar.set_length(total);
        }
        bar.set_position(p.rows);
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{:.0} MB/s", p.bytes as f64 / 1e6 / secs));
    };
    let opts = ReadOptions {
        progress: Some(&report),
        ..opts
    };
    let summary = io::read_inputs(&files, &opts, sink);
    bar.finish_and_clear();
    summary
}

/// The location of global row `row` among the files of `summary`.
pub fn locate(summary: &InputSummary, row: u64, column: Option<&str>) -> Location {
    let mut start = 0u64;
    for f in &summary.files {
        if row < start + f.rows {
            let loc = Location::file(&f.path).with_row(row, row - start);
            return match column {
                Some(c) => loc.with_column(c),
                None => loc,
            };
        }
        start += f.rows;
    }
    Location::default()
}

/// Rejects duplicate ids, naming both rows.
pub fn check_duplicate_ids(ids: &vecbuild::Ids, summary: &InputSummary) -> Result<()> {
    if let Some((first, dup)) = ids.view().find_duplicate() {
        let column = summary.id_column.as_deref();
        let first_at = locate(summary, first as u64, column);
        return Err(Error::input(
            locate(summary, dup as u64, column),
            format!(
                "duplicate id {} (first at {first_at}); ids must be unique, or pass --allow-duplicate-ids",
                ids.view().get(dup)
            ),
        ));
    }
    Ok(())
}

/// Check input files as `build` would, without writing anything.
///
/// Reads every row and checks types, dimensions, nulls, NaN/Inf and duplicate ids, then reports
/// rows, dimension and read throughput. Run it before a long build.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Input files, directories or glob patterns (Parquet, .npy, .fvecs).
    #[arg(long, short, required = true, num_args = 1.., value_name = "PATH")]
    pub input: Vec<String>,

    #[command(flatten)]
    pub columns: ColumnArgs,

    /// Also reject zero vectors (they cannot be used with the cosine metric).
    #[arg(long)]
    pub cosine: bool,

    /// Accept duplicate ids.
    #[arg(long)]
    pub allow_duplicate_ids: bool,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn validate(args: ValidateArgs, ui: &Ui) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut ids: Option<vecbuild::Ids> = None;
    let summary = read_with_progress(
        ui,
        "reading",
        &args.input,
        args.columns.options(args.cosine),
        &mut |b: Batch| {
            if !args.allow_duplicate_ids {
                vecbuild::Ids::accumulate(&mut ids, b.ids)?;
            }
            Ok(())
        },
    )?;
    if let Some(ids) = &ids {
        check_duplicate_ids(ids, &summary)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes: u64 = summary.files.iter().map(|f| f.bytes).sum();
    let vector_bytes = summary.rows as f64 * summary.dim as f64 * 4.0;
    if args.json {
        let report = serde_json::json!({
            "rows": summary.rows, "dim": summary.dim, "id_kind": summary.id_kind,
            "vector_column": summary.vector_column, "id_column": summary.id_column,
            "files": summary.files, "seconds": secs,
            "input_mb_per_s": bytes as f64 / 1e6 / secs, "vector_mb_per_s": vector_bytes / 1e6 / secs,
        });
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "ok: {} rows × {} dims in {} file(s), ids {}",
            summary.rows,
            summary.dim,
            summary.files.len(),
            summary.id_kind
        );
        outln!(
            "read {:.1} MB of input in {secs:.3} s: {:.0} MB/s input, {:.0} MB/s of f32 vectors",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs,
            vector_bytes / 1e6 / secs
        );
    }
    Ok(())
}
