//! `vecbuild export`: write an artifact in a format another library loads.

use super::Ui;
use std::path::PathBuf;
use vecbuild::artifact::Artifact;

/// Export an artifact for another library's loader.
///
/// `--format faiss` writes a file `faiss.read_index` loads: flat indexes as IndexFlat (in an
/// IndexIDMap when ids are not row numbers), IVF-PQ as IndexIVFPQ (the PQ part; raw vectors
/// kept by --refine are not exported), CAGRA as IndexHNSWFlat (level 0 the CAGRA graph plus
/// level-1 links, upper levels the artifact's) in an IndexIDMap (CAGRA stores rows in graph
/// order, so ids are never the stored row numbers). Cosine indexes need normalised queries:
/// flat and CAGRA ones export as inner product (faiss reports cos), IVF-PQ ones as L2 (faiss
/// reports 2 − 2·cos). String ids become input row numbers.
///
/// `--format hnswlib` (CAGRA only) writes a file stock hnswlib loads with
/// `hnswlib.Index(space, dim).load_index(path)`, the space printed on export (`l2`, `ip` or
/// `cosine`); call `set_ef` after loading (hnswlib resets it to 10).
///
/// Both HNSW exports give each row, after its CAGRA links, the level-1 links of the first
/// upper-level row in its list (its own if it has them), so their level-0 search can leave a
/// cluster where their greedy descent wrongly stopped: level 0 holds up to twice the graph
/// degree links.
///
/// Example: vecbuild export --index emb.vbx --format faiss --out emb.faiss
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The artifact to export.
    #[arg(long, value_name = "FILE")]
    pub index: PathBuf,

    /// Target format: `faiss` or `hnswlib`.
    #[arg(long, value_parser = ["faiss", "hnswlib"])]
    pub format: String,

    /// The file to write.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run(args: ExportArgs, ui: &Ui) -> anyhow::Result<()> {
    let artifact = Artifact::open(&args.index)?;
    if args.format == "hnswlib" {
        let e = vecbuild::export::hnswlib::export(&artifact, &args.out)?;
        if e.row_number_labels {
            ui.note("note: hnswlib labels are integers, so the string ids were replaced by row numbers (input order, from 0)");
        }
        ui.note(format!(
            "wrote hnswlib index ({} levels above 0) → {}; load with hnswlib.Index(space='{}', dim={})",
            e.max_level,
            args.out.display(),
            e.space,
            artifact.manifest.dim
        ));
        return Ok(());
    }
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
