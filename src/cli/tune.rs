//! `vecbuild tune`: find the cheapest search setting that reaches a target recall and store it
//! in the artifact as the default.

use super::input::ColumnArgs;
use super::Ui;
use std::path::PathBuf;
use std::time::Instant;
use vecbuild::artifact::container::DType;
use vecbuild::artifact::{Artifact, IndexKind};
use vecbuild::backend::CpuBackend;
use vecbuild::search::exact::{prepare_queries, ExactSearch};
use vecbuild::synth::Rng;
use vecbuild::{Error, SearchParams, Searcher};

/// Tune search parameters to a target recall and store them in the artifact.
///
/// Recall@k is measured on held-out queries against exact k-NN computed here: the given
/// --queries, or rows sampled from the base (each excluded from its own answers). Exact
/// distances need the base vectors: taken from the artifact when it keeps them (flat, or IVF-PQ
/// built with --refine, CAGRA), else read again from the inputs recorded in the manifest (or
/// --base). IVF-PQ: n_probes (and the refine ratio, when raw vectors are kept) are swept. CAGRA:
/// itopk_size for search_width 1, 2 and 4. The fastest setting reaching the target becomes the
/// artifact's default for `search`.
///
/// Example: vecbuild tune --index emb.vbx --target-recall 0.95
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// The artifact to tune (rewritten in place, atomically).
    #[arg(long, value_name = "FILE")]
    pub index: PathBuf,

    /// Recall@k to reach, between 0 and 1.
    #[arg(long, value_name = "R")]
    pub target_recall: f64,

    /// The k of recall@k.
    #[arg(long, short, default_value_t = 10)]
    pub k: usize,

    /// Held-out query files (default: rows sampled from the base).
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub queries: Vec<String>,

    /// Queries sampled from the base when --queries is not given.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub sample_queries: usize,

    /// Base files to compute exact neighbours from, when the artifact keeps no raw vectors
    /// (default: the inputs recorded in the manifest).
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub base: Vec<String>,

    #[command(flatten)]
    pub columns: ColumnArgs,
}

/// One measured setting.
struct Point {
    params: SearchParams,
    /// Which sweep it belongs to (one per refine ratio or search width).
    sweep: usize,
    recall: f64,
    qps: f64,
}

/// The settings to try: sweeps of increasing cost, each stopped once it reaches the target.
fn sweeps(
    kind: IndexKind,
    m: &vecbuild::artifact::Manifest,
    k: usize,
    stored: bool,
) -> Vec<Vec<SearchParams>> {
    match kind {
        IndexKind::IvfPq => {
            let n_lists = m
                .params
                .get("ivf_pq")
                .and_then(|p| p.get("n_lists"))
                .and_then(|v| v.as_u64())
                .unwrap_or(1) as usize;
            let mut probes: Vec<usize> = std::iter::successors(Some(1usize), |p| Some(p * 2))
                .take_while(|&p| p < n_lists)
                .collect();
            probes.push(n_lists);
            let ratios: &[f32] = if stored { &[1.0, 2.0, 4.0] } else { &[1.0] };
            ratios
                .iter()
                .map(|&r| {
                    probes
                        .iter()
                        .map(|&p| SearchParams {
                            n_probes: Some(p),
                            refine_ratio: Some(r),
                            ..Default::default()
                        })
                        .collect()
                })
                .collect()
        }
        _ => {
            // itopk_size from k (at least 16) doubling to 1024, at search widths 1, 2, 4.
            let start = k.max(16);
            let sizes: Vec<usize> = std::iter::successors(Some(start), |s| Some(s * 2))
                .take_while(|&s| s <= 1024.max(start))
                .collect();
            [1usize, 2, 4]
                .iter()
                .map(|&w| {
                    sizes
                        .iter()
                        .map(|&s| SearchParams {
                            itopk_size: Some(s),
                            search_width: Some(w),
                            ..Default::default()
                        })
                        .collect()
                })
                .collect()
        }
    }
}

/// A setting as the table shows it.
fn describe(kind: IndexKind, p: &SearchParams) -> String {
    match kind {
        IndexKind::IvfPq => format!(
            "n_probes {} refine_ratio {}",
            p.n_probes.unwrap_or(0),
            p.refine_ratio.unwrap_or(1.0)
        ),
        _ => format!(
            "itopk_size {} search_width {}",
            p.itopk_size.unwrap_or(0),
            p.search_width.unwrap_or(1)
        ),
    }
}

pub fn run(args: TuneArgs, ui: &Ui) -> anyhow::Result<()> {
    if !(args.target_recall > 0.0 && args.target_recall <= 1.0) {
        return Err(Error::param(format!(
            "--target-recall {} must be in (0, 1]",
            args.target_recall
        ))
        .into());
    }
    let artifact = Artifact::open(&args.index)?;
    let m = artifact.manifest.clone();
    if m.kind == IndexKind::Flat {
        return Err(Error::param(format!(
            "{} indexes have no search parameters to tune",
            m.kind
        ))
        .into());
    }
    let (n, dim) = (m.count as usize, m.dim);
    if args.k == 0 || args.k >= n {
        return Err(Error::param(format!("--k {} must be between 1 and {}", args.k, n - 1)).into());
    }
    // The base vectors, as stored (unit rows for cosine).
    let stored = artifact.container.tensors.contains_key("vectors");
    let base = if stored {
        ndarray::ArrayView2::from_shape(
            (n, dim),
            artifact.tensor::<f32>("vectors", DType::F32, &[n, dim])?,
        )?
        .to_owned()
    } else {
        let patterns: Vec<String> = if args.base.is_empty() {
            m.inputs
                .iter()
                .map(|f| f.path.display().to_string())
                .collect()
        } else {
            args.base.clone()
        };
        let files = vecbuild::io::resolve_inputs(&patterns)?;
        let mut opts = args.columns.options(m.metric.normalizes());
        opts.vector_column = opts.vector_column.or(m.vector_column.clone());
        opts.expect_dim = Some(dim);
        let (_, v, summary) = vecbuild::io::read_all(&files, &opts)?;
        if summary.rows != m.count {
            return Err(Error::param(format!("the base has {} rows but the index has {n}; pass the inputs it was built from with --base", summary.rows)).into());
        }
        v
    };
    // Held-out queries, and the row each one is (to exclude it) when sampled from the base.
    let (queries, own_rows) = if args.queries.is_empty() {
        let mut rng = Rng::new(0x7475_6e65);
        let rows = vecbuild::index::kmeans::sample_indices(n, args.sample_queries.min(n), &mut rng);
        (base.select(ndarray::Axis(0), &rows), Some(rows))
    } else {
        let files = vecbuild::io::resolve_inputs(&args.queries)?;
        let mut opts = args.columns.options(m.metric.normalizes());
        opts.expect_dim = Some(dim);
        (vecbuild::io::read_all(&files, &opts)?.1, None)
    };
    let extra = usize::from(own_rows.is_some());
    let drop_own = |rows: ndarray::ArrayView2<'_, u64>| -> Vec<Vec<u64>> {
        rows.outer_iter()
            .enumerate()
            .map(|(i, r)| {
                let own = own_rows.as_ref().map(|o| o[i] as u64);
                r.iter()
                    .copied()
                    .filter(|&x| Some(x) != own)
                    .take(args.k)
                    .collect()
            })
            .collect()
    };
    let mut exact = ExactSearch::new(
        prepare_queries(queries.view(), dim, m.metric)?,
        m.metric,
        args.k + extra,
    );
    exact.add(&CpuBackend, base.view(), None)?;
    let truth = drop_own(exact.finish().rows.view());

    let searcher = Searcher::open(&args.index)?;
    let mut points: Vec<Point> = Vec::new();
    for (sweep, settings) in sweeps(m.kind, &m, args.k + extra, stored)
        .into_iter()
        .enumerate()
    {
        for params in settings {
            let t = Instant::now();
            let got = searcher.search(queries.view(), args.k + extra, &params)?;
            let qps = queries.nrows() as f64 / t.elapsed().as_secs_f64().max(1e-9);
            let got = drop_own(got.rows.view());
            let hits: usize = got
                .iter()
                .zip(&truth)
                .map(|(g, t)| g.iter().filter(|x| t.contains(x)).count())
                .sum();
            let recall = hits as f64 / (args.k * truth.len()) as f64;
            // Stop this sweep once the target is met (more only costs more) or recall has
            // stopped rising over the last three doublings.
            let plateau = points.len() >= 3 && {
                let recent = &points[points.len() - 3..];
                recent
                    .iter()
                    .all(|p| p.sweep == sweep && recall <= p.recall + 1e-4)
            };
            points.push(Point {
                params,
                sweep,
                recall,
                qps,
            });
            if recall >= args.target_recall || plateau {
                break;
            }
        }
    }
    let best = points
        .iter()
        .filter(|p| p.recall >= args.target_recall)
        .max_by(|a, b| a.qps.total_cmp(&b.qps));
    outln!("{:<34} {:>10} {:>10}", "setting", "recall@k", "QPS");
    for p in &points {
        let mark = if best.is_some_and(|b| std::ptr::eq(b, p)) {
            "  ← chosen"
        } else {
            ""
        };
        outln!(
            "{:<34} {:>10.4} {:>10.0}{mark}",
            describe(m.kind, &p.params),
            p.recall,
            p.qps
        );
    }
    let Some(best) = best else {
        let top = points.iter().map(|p| p.recall).fold(0.0, f64::max);
        let advice = match m.kind {
            IndexKind::IvfPq => "rebuild with more sub-quantizers (--pq-dim) or --refine",
            _ => "rebuild with a larger --graph-degree and --intermediate-graph-degree",
        };
        return Err(Error::param(format!(
            "no setting reached recall@{} {}: the best was {top:.4}; {advice}",
            args.k, args.target_recall
        ))
        .into());
    };
    let tuned = serde_json::json!({ "target_recall": args.target_recall, "k": args.k, "recall": best.recall, "queries": queries.nrows() });
    let p = &best.params;
    let mut manifest = m.clone();
    manifest.search_defaults = match m.kind {
        IndexKind::IvfPq => serde_json::json!({
            "n_probes": p.n_probes,
            "refine_ratio": p.refine_ratio,
            "tuned": tuned,
        }),
        _ => serde_json::json!({
            "itopk_size": p.itopk_size,
            "search_width": p.search_width,
            "tuned": tuned,
        }),
    };
    drop(searcher);
    artifact.rewrite(&args.index, manifest)?;
    ui.note(format!(
        "stored {} (recall@{} {:.4}) as the defaults of {}",
        describe(m.kind, p),
        args.k,
        best.recall,
        args.index.display()
    ));
    Ok(())
}
