//! Per-query selection of the `k` best candidates.
//!
//! Candidates arrive one at a time (a row of a distance tile). Those that beat the current
//! threshold are appended to a buffer of `2k`; when it fills, `select_nth_unstable` keeps the
//! best `k` and the `k`-th score becomes the new threshold. Most candidates of a large scan fail
//! the threshold test, so the cost is one comparison per candidate plus O(k) amortised per
//! accepted one — the same scheme faiss uses for its reservoir selection.
//!
//! Order is total: by score, then by row number, so results are deterministic and ties go to
//! the smaller row.

use std::cmp::Ordering;

/// One result: an internal score (smaller is better, see [`crate::Metric`]) and a row number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    pub score: f32,
    pub row: u64,
}

#[inline]
fn order(a: &Neighbor, b: &Neighbor) -> Ordering {
    a.score.total_cmp(&b.score).then(a.row.cmp(&b.row))
}

/// The running best-`k` of one query.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    threshold: f32,
    buf: Vec<Neighbor>,
}

impl TopK {
    /// `k` must be at least 1.
    pub fn new(k: usize) -> Self {
        let k = k.max(1);
        TopK {
            k,
            threshold: f32::INFINITY,
            buf: Vec::with_capacity(2 * k),
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Candidates scoring above this cannot enter the result.
    #[inline]
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    #[inline]
    pub fn push(&mut self, score: f32, row: u64) {
        if score <= self.threshold {
            self.buf.push(Neighbor { score, row });
            if self.buf.len() >= 2 * self.k {
                self.compact();
            }
        }
    }

    fn compact(&mut self) {
        if self.buf.len() > self.k {
            self.buf.select_nth_unstable_by(self.k - 1, order);
            self.buf.truncate(self.k);
        }
        if self.buf.len() == self.k {
            self.threshold = self
                .buf
                .iter()
                .map(|n| n.score)
                .fold(f32::NEG_INFINITY, f32::max);
        }
    }

    /// Folds another selection of the same query into this one.
    pub fn merge(&mut self, other: &TopK) {
        for n in &other.buf {
            self.push(n.score, n.row);
        }
    }

    /// The best `min(k, seen)` candidates, best first.
    pub fn into_sorted(mut self) -> Vec<Neighbor> {
        self.compact();
        self.buf.sort_unstable_by(order);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_k_smallest_with_ties_to_the_smaller_row() {
        let mut t = TopK::new(3);
        let scores = [5.0, 1.0, 3.0, 1.0, 9.0, 0.5, 3.0, 3.0, 2.0];
        for (row, s) in scores.iter().enumerate() {
            t.push(*s, row as u64);
        }
        let got: Vec<(f32, u64)> = t.into_sorted().iter().map(|n| (n.score, n.row)).collect();
        assert_eq!(got, vec![(0.5, 5), (1.0, 1), (1.0, 3)]);
    }

    #[test]
    fn merge_equals_a_single_pass() {
        let scores: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1013) as f32).collect();
        let mut whole = TopK::new(10);
        let (mut a, mut b) = (TopK::new(10), TopK::new(10));
        for (i, s) in scores.iter().enumerate() {
            whole.push(*s, i as u64);
            if i % 2 == 0 {
                a.push(*s, i as u64)
            } else {
                b.push(*s, i as u64)
            }
        }
        a.merge(&b);
        assert_eq!(a.into_sorted(), whole.into_sorted());
    }
}
