//! Recall of search results against exact results.

use crate::ids::IdRef;
use crate::io::parquet::ResultsTable;
use crate::{Error, Result};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Recall@k over a set of queries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recall {
    pub k: usize,
    pub queries: usize,
    /// Mean over queries of |results[..k] ∩ truth[..k]| / k.
    pub recall: f64,
    /// The worst query's recall.
    pub min_recall: f64,
    /// Share of queries with all k true neighbours found.
    pub perfect_share: f64,
}

/// Scores `results` against `truth`, matching queries by id. Every result query must be in
/// the truth with at least `k` neighbours; results with fewer than `k` neighbours count the
/// missing ones as misses.
pub fn recall_at_k(results: &ResultsTable, truth: &ResultsTable, k: usize) -> Result<Recall> {
    if k == 0 {
        return Err(Error::param("k must be at least 1"));
    }
    if results.query_ids.kind() != truth.query_ids.kind()
        || results.neighbors.kind() != truth.neighbors.kind()
    {
        return Err(Error::param(format!(
            "results (query ids {}, neighbour ids {}) and truth (query ids {}, neighbour ids {}) have different id types",
            results.query_ids.kind(),
            results.neighbors.kind(),
            truth.query_ids.kind(),
            truth.neighbors.kind()
        )));
    }
    let tq = truth.query_ids.view();
    let truth_row: HashMap<IdRef<'_>, usize> = (0..tq.len()).map(|i| (tq.get(i), i)).collect();
    let (rq, rn, tn) = (
        results.query_ids.view(),
        results.neighbors.view(),
        truth.neighbors.view(),
    );
    let mut sum = 0.0;
    let mut min = f64::INFINITY;
    let mut perfect = 0usize;
    for i in 0..rq.len() {
        let qid = rq.get(i);
        let t = *truth_row
            .get(&qid)
            .ok_or_else(|| Error::param(format!("query {qid} is not in the truth file")))?;
        let (ts, te) = (truth.offsets[t], truth.offsets[t + 1]);
        if te - ts < k {
            return Err(Error::param(format!(
                "truth has {} neighbours for query {qid}; recall@{k} needs {k}",
                te - ts
            )));
        }
        let want: HashSet<IdRef<'_>> = (ts..ts + k).map(|j| tn.get(j)).collect();
        let (rs, re) = (results.offsets[i], results.offsets[i + 1]);
        let found = (rs..re.min(rs + k))
            .filter(|&j| want.contains(&rn.get(j)))
            .count();
        let r = found as f64 / k as f64;
        sum += r;
        min = min.min(r);
        perfect += usize::from(found == k);
    }
    let n = rq.len();
    if n == 0 {
        return Err(Error::param("results hold no queries"));
    }
    Ok(Recall {
        k,
        queries: n,
        recall: sum / n as f64,
        min_recall: min,
        perfect_share: perfect as f64 / n as f64,
    })
}
