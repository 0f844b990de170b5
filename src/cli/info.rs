//! `vecbuild info`: what an artifact holds.

use std::path::PathBuf;
use vecbuild::artifact::Artifact;

/// Verify an artifact (sizes, offsets, checksums) and print its manifest and tensors.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// The artifact.
    pub artifact: PathBuf,

    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let a = Artifact::open(&args.artifact)?;
    let m = &a.manifest;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    outln!("artifact        {}", args.artifact.display());
    outln!("format version  {}", m.format_version);
    outln!("index           {}", m.kind);
    outln!("metric          {}", m.metric);
    outln!("rows × dim      {} × {}", m.count, m.dim);
    outln!(
        "ids             {}{}",
        m.id_kind,
        m.id_column
            .as_deref()
            .map(|c| format!(" (column `{c}`)"))
            .unwrap_or_else(|| " (row numbers)".into())
    );
    if let Some(c) = &m.vector_column {
        outln!("vector column   {c}");
    }
    outln!("parameters      {}", m.params);
    outln!("search defaults {}", m.search_defaults);
    outln!(
        "built by        vecbuild {} on {}{} in {:.2} s (unix time {})",
        m.vecbuild_version,
        m.backend,
        m.device
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        m.build_seconds,
        m.built_at_unix
    );
    outln!("inputs          {} file(s)", m.inputs.len());
    for f in &m.inputs {
        outln!(
            "  {:>12} rows  {:>12} bytes  {}",
            f.rows,
            f.bytes,
            f.path.display()
        );
    }
    outln!("tensors (checksums verified)");
    for (name, t) in &a.container.tensors {
        outln!(
            "  {name:<12} {:?} {:?}  {} bytes",
            t.dtype,
            t.shape,
            t.range.len()
        );
    }
    outln!("file size       {} bytes", a.container.file_len());
    Ok(())
}
