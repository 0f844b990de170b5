//! What the hnswlib and faiss HNSW exports share: a CAGRA artifact seen as HNSW layers. Level 0
//! is the CAGRA graph; levels ≥ 1 are the artifact's upper levels
//! ([`crate::index::cagra::hierarchy`]). HNSW's `M` (its level distribution) is
//! `graph_degree / 2`, as the build drew the levels; the upper levels hold as many links as the
//! artifact stores per row (`2 · graph_degree`; `graph_degree` or `M` in artifacts written by
//! earlier versions).
//! hnswlib and faiss both record the two counts in their files.
//!
//! Level 0 also holds level-1 links, after each row's CAGRA links (those not among them
//! already): a row on level ≥ 1 gets the first `graph_degree` of its own, any other row those
//! of its hub, the first row of its CAGRA list that is on level ≥ 1. So level 0 holds up to
//! twice `graph_degree` links. hnswlib's and faiss's searches descend the upper levels
//! greedily and start level 0 from one level-1 row; vecbuild's own search runs a beam on
//! level 1 instead. On clustered data the greedy descent often stops in a neighbouring
//! cluster, and CAGRA's level-0 links, nearly all inside their cluster, do not lead out of it:
//! the level-1 links on level 0 do (README, "export").

use crate::artifact::container::DType;
use crate::artifact::{Artifact, IndexKind};
use crate::index::cagra::hierarchy::HierarchyView;
use crate::{Error, Result};
use rayon::prelude::*;

const NONE: u32 = u32::MAX;

/// A CAGRA artifact's layers, viewed in place.
pub struct Layers<'a> {
    pub n: usize,
    pub dim: usize,
    /// HNSW's `M`: the level distribution's base, `1 / ln M` its multiplier.
    pub m: usize,
    /// Link slots per row on level 0: `degree` plus the most level-1 links a row adds.
    pub m0: usize,
    /// Link slots per row on levels ≥ 1.
    pub m_upper: usize,
    /// `[n, dim]` as stored (unit rows for cosine).
    pub vectors: &'a [f32],
    /// `[n, degree]`.
    pub graph: &'a [u32],
    pub degree: usize,
    upper: Option<HierarchyView<'a>>,
    /// Row → position in the upper levels (`u32::MAX`: level 0 only).
    position: Vec<u32>,
    /// The top row, where HNSW search enters.
    pub entry: u32,
}

impl<'a> Layers<'a> {
    /// Views `a`, which must hold a CAGRA index.
    pub fn of(a: &'a Artifact) -> Result<Self> {
        let m = &a.manifest;
        if m.kind != IndexKind::Cagra {
            return Err(Error::param(format!(
                "{} indexes have no graph; hnswlib and faiss HNSW exports need --index cagra",
                m.kind
            )));
        }
        let (n, dim) = (m.count as usize, m.dim);
        let degree = a
            .container
            .tensors
            .get("graph")
            .and_then(|t| t.shape.get(1).copied())
            .ok_or_else(|| Error::artifact(a.container.path(), "graph", "tensor is missing"))?;
        let upper = crate::search::hierarchy_view(a)?;
        let mut position = vec![NONE; n];
        if let Some(h) = &upper {
            h.check(n)
                .map_err(|why| Error::artifact(a.container.path(), "upper.graph", why))?;
            for (p, &r) in h.rows.iter().enumerate() {
                position[r as usize] = p as u32;
            }
        }
        let first_entry = a
            .container
            .slice::<u32>("graph.entry_points", DType::U32)?
            .0
            .first()
            .copied()
            .unwrap_or(0);
        let entry = upper
            .as_ref()
            .and_then(|h| h.rows.first().copied())
            .unwrap_or(first_entry);
        let m = (degree / 2).max(2);
        let mut layers = Layers {
            n,
            dim,
            m,
            m0: degree.max(1),
            m_upper: upper.as_ref().map_or(m, |h| h.m),
            vectors: a.tensor::<f32>("vectors", DType::F32, &[n, dim])?,
            graph: a.tensor::<u32>("graph", DType::U32, &[n, degree])?,
            degree,
            upper,
            position,
            entry,
        };
        if layers.upper.is_some() {
            let longest = (0..n)
                .into_par_iter()
                .map(|r| layers.links(r, 0).len())
                .max();
            layers.m0 = layers.m0.max(longest.unwrap_or(0));
        }
        Ok(layers)
    }

    /// The highest level (0 when there are no upper levels).
    pub fn max_level(&self) -> usize {
        self.upper.as_ref().map_or(0, |h| h.levels())
    }

    /// Row `r`'s highest level.
    pub fn level(&self, r: usize) -> usize {
        let p = self.position[r];
        match &self.upper {
            Some(h) if p != NONE => h.counts.iter().take_while(|&&c| p < c).count(),
            _ => 0,
        }
    }

    /// Row `r`'s links on level `l` (≤ its level), as row numbers. On level 0: its CAGRA links,
    /// then those of the first `degree` level-1 links not among them of `r` where it is on
    /// level ≥ 1, else of its hub (the first row of its CAGRA list on level ≥ 1), itself left
    /// out.
    pub fn links(&self, r: usize, l: usize) -> Vec<u32> {
        let level_links = |row: usize, l: usize| -> Vec<u32> {
            match &self.upper {
                Some(h) if self.position[row] != NONE => h
                    .neighbors(l, self.position[row] as usize)
                    .iter()
                    .take_while(|&&p| p != NONE)
                    .map(|&p| h.rows[p as usize])
                    .collect(),
                _ => Vec::new(),
            }
        };
        if l > 0 {
            return level_links(r, l);
        }
        let mut links = self.graph[r * self.degree..(r + 1) * self.degree].to_vec();
        let upper = |v: &u32| *v != NONE && self.position[*v as usize] != NONE;
        let hub = match self.position[r] != NONE {
            true => Some(r),
            false => links.iter().find(|v| upper(v)).map(|&v| v as usize),
        };
        if let Some(hub) = hub {
            let cagra = links.len();
            for v in level_links(hub, 1).into_iter().take(self.degree) {
                if v as usize != r && !links[..cagra].contains(&v) {
                    links.push(v);
                }
            }
        }
        links
    }
}
