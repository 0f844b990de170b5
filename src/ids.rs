//! User ids: the labels rows carry in and results carry out.
//!
//! Ids come from the input's id column (integers or strings) or, when there is none, are the
//! global row numbers in input order. Integers narrower than 64 bits are widened (`Int32` →
//! `Int64`, `UInt32` → `UInt64`). Strings are kept as one byte buffer plus `n + 1` offsets, the
//! layout Arrow uses, so they store and memory-map without per-row allocations.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;

/// The first row whose key appeared at an earlier row, and that earlier row: the keys sorted
/// with their rows on all cores; of each two neighbours with equal keys, the later row
/// repeats the earlier one's key, and the first repeat is the smallest such later row.
fn first_repeat<T: Ord + Copy + Send + Sync>(keys: &[T]) -> Option<(usize, usize)> {
    let mut pairs: Vec<(T, usize)> = keys.par_iter().copied().zip(0..keys.len()).collect();
    pairs.par_sort_unstable();
    (0..pairs.len().saturating_sub(1))
        .into_par_iter()
        .filter(|&j| pairs[j].0 == pairs[j + 1].0)
        .map(|j| (pairs[j + 1].1, pairs[j].1))
        .min()
        .map(|(dup, first)| (first, dup))
}

/// The type of a column of ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdKind {
    Int64,
    UInt64,
    Utf8,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Int64 => "int64",
            IdKind::UInt64 => "uint64",
            IdKind::Utf8 => "utf8",
        })
    }
}

/// An owned column of ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Ids {
    Int64(Vec<i64>),
    UInt64(Vec<u64>),
    Utf8 { offsets: Vec<u64>, data: Vec<u8> },
}

/// A borrowed column of ids (from an [`Ids`] or a memory-mapped artifact).
#[derive(Debug, Clone, Copy)]
pub enum IdsView<'a> {
    Int64(&'a [i64]),
    UInt64(&'a [u64]),
    Utf8 { offsets: &'a [u64], data: &'a [u8] },
}

/// One id, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdRef<'a> {
    Int64(i64),
    UInt64(u64),
    Utf8(&'a str),
}

impl fmt::Display for IdRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdRef::Int64(v) => write!(f, "{v}"),
            IdRef::UInt64(v) => write!(f, "{v}"),
            IdRef::Utf8(s) => write!(f, "{s:?}"),
        }
    }
}

impl Ids {
    pub fn empty(kind: IdKind) -> Self {
        match kind {
            IdKind::Int64 => Ids::Int64(Vec::new()),
            IdKind::UInt64 => Ids::UInt64(Vec::new()),
            IdKind::Utf8 => Ids::Utf8 {
                offsets: vec![0],
                data: Vec::new(),
            },
        }
    }

    /// Row numbers `start..start + n` as `Int64` ids.
    pub fn row_numbers(start: u64, n: usize) -> Self {
        Ids::Int64((start as i64..start as i64 + n as i64).collect())
    }

    pub fn from_strings<S: AsRef<str>>(items: &[S]) -> Self {
        let mut ids = Ids::empty(IdKind::Utf8);
        for s in items {
            ids.push_str(s.as_ref());
        }
        ids
    }

    /// Appends a string id; only valid on `Utf8` ids.
    pub fn push_str(&mut self, s: &str) {
        if let Ids::Utf8 { offsets, data } = self {
            data.extend_from_slice(s.as_bytes());
            offsets.push(data.len() as u64);
        }
    }

    pub fn kind(&self) -> IdKind {
        self.view().kind()
    }

    pub fn len(&self) -> usize {
        self.view().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn view(&self) -> IdsView<'_> {
        match self {
            Ids::Int64(v) => IdsView::Int64(v),
            Ids::UInt64(v) => IdsView::UInt64(v),
            Ids::Utf8 { offsets, data } => IdsView::Utf8 { offsets, data },
        }
    }

    /// Appends `other`; the kinds must match.
    pub fn append(&mut self, other: &Ids) -> crate::Result<()> {
        match (self, other) {
            (Ids::Int64(a), Ids::Int64(b)) => a.extend_from_slice(b),
            (Ids::UInt64(a), Ids::UInt64(b)) => a.extend_from_slice(b),
            (
                Ids::Utf8 { offsets, data },
                Ids::Utf8 {
                    offsets: o2,
                    data: d2,
                },
            ) => {
                let base = data.len() as u64;
                data.extend_from_slice(d2);
                offsets.extend(o2.iter().skip(1).map(|o| o + base));
            }
            (a, b) => {
                return Err(crate::Error::param(format!(
                    "ids change type from {} to {}",
                    a.kind(),
                    b.kind()
                )))
            }
        }
        Ok(())
    }

    /// Appends `next` to `acc`, which the first batch of ids starts.
    pub fn accumulate(acc: &mut Option<Ids>, next: Ids) -> crate::Result<()> {
        match acc {
            None => {
                *acc = Some(next);
                Ok(())
            }
            Some(all) => all.append(&next),
        }
    }

    /// Ids at the given rows, in that order.
    pub fn take(&self, rows: impl IntoIterator<Item = usize>) -> Ids {
        self.view().take(rows)
    }
}

impl<'a> IdsView<'a> {
    pub fn kind(&self) -> IdKind {
        match self {
            IdsView::Int64(_) => IdKind::Int64,
            IdsView::UInt64(_) => IdKind::UInt64,
            IdsView::Utf8 { .. } => IdKind::Utf8,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            IdsView::Int64(v) => v.len(),
            IdsView::UInt64(v) => v.len(),
            IdsView::Utf8 { offsets, .. } => offsets.len().saturating_sub(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of row `i`. Panics when `i` is out of range, like slice indexing; string ids that
    /// are not valid UTF-8 (impossible for ids vecbuild wrote, which were checked at ingest and
    /// by checksum) read as the empty string.
    pub fn get(&self, i: usize) -> IdRef<'a> {
        match *self {
            IdsView::Int64(v) => IdRef::Int64(v[i]),
            IdsView::UInt64(v) => IdRef::UInt64(v[i]),
            IdsView::Utf8 { offsets, data } => {
                let bytes = &data[offsets[i] as usize..offsets[i + 1] as usize];
                IdRef::Utf8(std::str::from_utf8(bytes).unwrap_or(""))
            }
        }
    }

    pub fn take(&self, rows: impl IntoIterator<Item = usize>) -> Ids {
        match *self {
            IdsView::Int64(v) => Ids::Int64(rows.into_iter().map(|i| v[i]).collect()),
            IdsView::UInt64(v) => Ids::UInt64(rows.into_iter().map(|i| v[i]).collect()),
            IdsView::Utf8 { .. } => {
                let mut out = Ids::empty(IdKind::Utf8);
                for i in rows {
                    if let IdRef::Utf8(s) = self.get(i) {
                        out.push_str(s);
                    }
                }
                out
            }
        }
    }

    /// The first row whose id already appeared earlier: `(first row, repeated row)`.
    pub fn find_duplicate(&self) -> Option<(usize, usize)> {
        match *self {
            IdsView::Int64(v) => first_repeat(v),
            IdsView::UInt64(v) => first_repeat(v),
            IdsView::Utf8 { .. } => {
                let mut first_at = HashMap::with_capacity(self.len());
                (0..self.len()).find_map(|i| match first_at.entry(self.get(i)) {
                    Entry::Occupied(first) => Some((*first.get(), i)),
                    Entry::Vacant(slot) => {
                        slot.insert(i);
                        None
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the first repeat is by definition: the first row whose id an earlier row had.
    fn by_definition(ids: &Ids) -> Option<(usize, usize)> {
        let v = ids.view();
        (0..v.len()).find_map(|i| (0..i).find(|&j| v.get(j) == v.get(i)).map(|j| (j, i)))
    }

    #[test]
    fn the_first_repeated_id_and_its_first_row_are_found_for_every_id_type() {
        let mut rng = crate::synth::Rng::new(7);
        for (n, range) in [
            (0usize, 1u64),
            (1, 1),
            (2, 1),
            (50, 40),
            (300, 100_000),
            (500, 3),
        ] {
            let values: Vec<u64> = (0..n).map(|_| rng.below(range)).collect();
            let mut strings = Ids::empty(IdKind::Utf8);
            for v in &values {
                strings.push_str(&format!("id-{v}"));
            }
            for ids in [
                Ids::Int64(values.iter().map(|&v| v as i64 - 20).collect()),
                Ids::UInt64(values.clone()),
                strings,
            ] {
                assert_eq!(
                    ids.view().find_duplicate(),
                    by_definition(&ids),
                    "{n} ids of {range} values"
                );
            }
        }
        // Distinct ids: none.
        let distinct = Ids::Int64((0..1000).rev().collect());
        assert_eq!(distinct.view().find_duplicate(), None);
    }
}
