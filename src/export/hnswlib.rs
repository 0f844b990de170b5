//! hnswlib's index file (`hnswlib/hnswalg.h`, `saveIndex`/`loadIndex`, hnswlib 0.8), so stock
//! `hnswlib.Index(space, dim).load_index(path)` searches a CAGRA artifact: level 0 is the CAGRA
//! graph and level-1 links, levels ≥ 1 the artifact's upper levels ([`super::hnsw::Layers`]).
//!
//! Little-endian, 64-bit `size_t`:
//!
//! | field | type | value |
//! |-------|------|-------|
//! | `offsetLevel0_` | u64 | 0 |
//! | `max_elements_` | u64 | n |
//! | `cur_element_count` | u64 | n |
//! | `size_data_per_element_` | u64 | `4 + 4·maxM0 + 4·dim + 8` |
//! | `label_offset_` | u64 | `4 + 4·maxM0 + 4·dim` |
//! | `offsetData_` | u64 | `4 + 4·maxM0` |
//! | `maxlevel_` | i32 | highest level |
//! | `enterpoint_node_` | u32 | the top row |
//! | `maxM_`, `maxM0_`, `M_` | u64 ×3 | upper-level links per row (the graph degree; M in artifacts of earlier versions), level-0 slots (the graph degree plus the most level-1 links a row adds), M = graph degree / 2 |
//! | `mult_` | f64 | 1 / ln M |
//! | `ef_construction_` | u64 | 200 (unused by search) |
//! | level 0, per row | | u16 link count, u8 flags (0), u8 0, `maxM0` × u32 links (0 past the count), `dim` × f32, u64 label |
//! | upper levels, per row | | u32 byte length `level · (4 + 4·maxM)`, then per level 1.. a u32 count and `maxM` × u32 links |
//!
//! Spaces: `l2` (squared L2), `ip` (hnswlib reports 1 − q·x), `cosine` (vectors stored unit
//! length; hnswlib normalises queries and reports 1 − cos). Labels are the integer ids; string
//! ids become row numbers (the caller is told). The dimension is not in the file: pass the
//! artifact's to `hnswlib.Index`. hnswlib sets `ef` to 10 on load: call `set_ef` after.

use super::hnsw::Layers;
use crate::artifact::Artifact;
use crate::fsutil::AtomicFile;
use crate::ids::IdsView;
use crate::{Error, Metric, Result};
use std::io::Write;
use std::path::Path;

/// What the export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The hnswlib space to load it with: `l2`, `ip` or `cosine`.
    pub space: &'static str,
    /// True when string ids were replaced by row numbers.
    pub row_number_labels: bool,
    pub max_level: usize,
}

/// Writes `artifact` (a CAGRA index) as an hnswlib index file at `out`, atomically.
pub fn export(artifact: &Artifact, out: &Path) -> Result<Exported> {
    let layers = Layers::of(artifact)?;
    let (n, dim, m) = (layers.n, layers.dim, layers.m);
    let (max_m0, max_m) = (layers.m0, layers.m_upper);
    if max_m0 > u16::MAX as usize {
        return Err(Error::param(format!(
            "graph degree {} is above hnswlib's limit of 65535 links",
            layers.degree
        )));
    }
    let (labels, row_number_labels): (Vec<u64>, bool) = match artifact.ids()? {
        IdsView::Int64(v) => (v.iter().map(|&x| x as u64).collect(), false),
        IdsView::UInt64(v) => (v.to_vec(), false),
        IdsView::Utf8 { .. } => match artifact.input_rows()? {
            Some(rows) => (rows.iter().map(|&r| r as u64).collect(), true),
            None => ((0..n as u64).collect(), true),
        },
    };
    let mut file = AtomicFile::create(out)?;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let links0 = 4 + 4 * max_m0;
    let per_element = links0 + 4 * dim + 8;
    for v in [
        0u64,
        n as u64,
        n as u64,
        per_element as u64,
        (links0 + 4 * dim) as u64,
        links0 as u64,
    ] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.extend_from_slice(&(layers.max_level() as i32).to_le_bytes());
    buf.extend_from_slice(&layers.entry.to_le_bytes());
    for v in [max_m as u64, max_m0 as u64, m as u64] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.extend_from_slice(&(1.0 / (m as f64).ln()).to_le_bytes());
    buf.extend_from_slice(&200u64.to_le_bytes());
    let mut write = |buf: &mut Vec<u8>, force: bool| -> Result<()> {
        if force || buf.len() >= 1 << 20 {
            file.write_all(buf).map_err(|e| Error::io(out, e))?;
            buf.clear();
        }
        Ok(())
    };
    // Level 0: links, vector, label per row.
    for (r, label) in labels.iter().enumerate() {
        let links = layers.links(r, 0);
        buf.extend_from_slice(&(links.len() as u32).to_le_bytes());
        for s in 0..max_m0 {
            buf.extend_from_slice(&links.get(s).copied().unwrap_or(0).to_le_bytes());
        }
        buf.extend_from_slice(bytemuck::cast_slice(
            &layers.vectors[r * dim..(r + 1) * dim],
        ));
        buf.extend_from_slice(&label.to_le_bytes());
        write(&mut buf, false)?;
    }
    // Upper levels per row.
    let block = 4 + 4 * max_m;
    for r in 0..n {
        let level = layers.level(r);
        buf.extend_from_slice(&((level * block) as u32).to_le_bytes());
        for l in 1..=level {
            let links = layers.links(r, l);
            buf.extend_from_slice(&(links.len() as u32).to_le_bytes());
            for s in 0..max_m {
                buf.extend_from_slice(&links.get(s).copied().unwrap_or(0).to_le_bytes());
            }
        }
        write(&mut buf, false)?;
    }
    write(&mut buf, true)?;
    file.commit()?;
    Ok(Exported {
        space: match artifact.manifest.metric {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        },
        row_number_labels,
        max_level: layers.max_level(),
    })
}
