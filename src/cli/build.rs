//! `vecbuild build`: read embeddings, build an index, write one artifact.

use super::input::{check_duplicate_ids, read_with_progress, ColumnArgs};
use super::{require_cpu, Ui};
use std::path::PathBuf;
use std::time::Instant;
use vecbuild::artifact::{IndexKind, Manifest};
use vecbuild::io::Batch;
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

    /// Index kind: `flat` (exact search over the stored vectors). `ivf-pq` and `cagra` are not
    /// built yet and are refused.
    #[arg(long, default_value = "flat", value_parser = ["flat", "ivf-pq", "cagra"])]
    pub index: String,

    /// Distance: `l2` (squared Euclidean), `ip` (inner product, larger is closer) or `cosine`
    /// (vectors normalised at ingest; zero vectors are an error; distances are 1 − cos).
    #[arg(long, default_value = "l2")]
    pub metric: Metric,

    /// The artifact to write.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,

    /// Build on this GPU (not available yet: the CUDA backend is not built).
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// Accept duplicate ids (by default a repeated id is an error naming both rows).
    #[arg(long)]
    pub allow_duplicate_ids: bool,

    #[command(flatten)]
    pub columns: ColumnArgs,
}

pub fn run(args: BuildArgs, ui: &Ui) -> anyhow::Result<()> {
    require_cpu(args.gpu)?;
    let kind = match args.index.as_str() {
        "flat" => IndexKind::Flat,
        other => {
            return Err(Error::param(format!(
                "--index {other}: this index kind is not built yet in this vecbuild; only `flat` is available"
            ))
            .into())
        }
    };
    let started = Instant::now();
    let mut ids: Option<Ids> = None;
    let mut data: Vec<f32> = Vec::new();
    let summary = read_with_progress(
        ui,
        "reading",
        &args.input,
        args.columns.options(args.metric.normalizes()),
        &mut |b: Batch| {
            Ids::accumulate(&mut ids, b.ids)?;
            data.extend_from_slice(b.vectors.as_slice().unwrap_or(&[]));
            Ok(())
        },
    )?;
    let ids = ids.unwrap_or_else(|| Ids::empty(summary.id_kind));
    if !args.allow_duplicate_ids {
        check_duplicate_ids(&ids, &summary)?;
    }
    let vectors = ndarray::ArrayView2::from_shape((summary.rows as usize, summary.dim), &data)?;
    let manifest = Manifest {
        format_version: vecbuild::artifact::FORMAT_VERSION,
        kind,
        metric: args.metric,
        dim: summary.dim,
        count: summary.rows,
        id_kind: summary.id_kind,
        params: serde_json::json!({ "allow_duplicate_ids": args.allow_duplicate_ids }),
        search_defaults: serde_json::json!({}),
        inputs: summary.files.clone(),
        vector_column: summary.vector_column.clone(),
        id_column: summary.id_column.clone(),
        backend: "cpu".into(),
        device: None,
        build_seconds: started.elapsed().as_secs_f64(),
        built_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        vecbuild_version: env!("CARGO_PKG_VERSION").into(),
        checksums: Default::default(),
    };
    vecbuild::index::flat::write(&args.out, vectors, &ids, manifest)?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    ui.note(format!(
        "built {kind} index of {} rows × {} dims ({}) in {:.2} s → {} ({:.1} MB)",
        summary.rows,
        summary.dim,
        args.metric,
        started.elapsed().as_secs_f64(),
        args.out.display(),
        size as f64 / 1e6
    ));
    Ok(())
}
