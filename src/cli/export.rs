//! `vecbuild export`: write an artifact in a format another library loads.

use super::Ui;
use std::path::PathBuf;
use vecbuild::artifact::Artifact;
use vecbuild::Error;

/// Export an artifact for another library's loader.
///
/// `--format faiss` writes a file `faiss.read_index` loads: flat indexes as IndexFlat (in an
/// IndexIDMap when ids are not row numbers), IVF-PQ as IndexIVFPQ (the PQ part; raw vectors
/// kept by --refine are not exported). Cosine indexes need normalised queries: flat ones export
/// as inner product (faiss reports cos), IVF-PQ ones as L2 (faiss reports 2 − 2·cos). String
/// ids become row numbers.
///
/// Example: vecbuild export --index emb.vbx --format faiss --out emb.faiss
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The artifact to export.
    #[arg(long, value_name = "FILE")]
    pub index: PathBuf,

    /// Target format: `faiss` (`hnswlib` is not built yet).
    #[arg(long, value_parser = ["faiss", "hnswlib"])]
    pub format: String,

    /// The file to write.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run(args: ExportArgs, ui: &Ui) -> anyhow::Result<()> {
    if args.format != "faiss" {
        return Err(Error::param(format!(
            "--format {}: this export is not built yet; `faiss` is available",
            args.format
        ))
        .into());
    }
    let artifact = Artifact::open(&args.index)?;
    let e = vecbuild::export::faiss::export(&artifact, &args.out)?;
    if e.row_number_ids {
        ui.note("note: faiss ids are integers, so the string ids were replaced by row numbers (input order, from 0)");
    }
    if artifact.container.tensors.contains_key("vectors") && e.class == "IndexIVFPQ" {
        ui.note("note: the raw vectors kept for refine are not part of the faiss IndexIVFPQ");
    }
    ui.note(format!(
        "wrote faiss {} ({} metric) → {}",
        e.class,
        e.metric,
        args.out.display()
    ));
    Ok(())
}
