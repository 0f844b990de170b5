//! Distance metrics and their conventions.
//!
//! | metric   | what `distances` holds                    | order             |
//! |----------|--------------------------------------------|-------------------|
//! | `l2`     | squared Euclidean distance ‖q − x‖² (as faiss reports it) | ascending |
//! | `ip`     | inner product q·x (larger is more similar) | descending        |
//! | `cosine` | cosine distance 1 − cos(q, x), in [0, 2] (as hnswlib and cuVS report it) | ascending |
//!
//! Internally every metric is turned into a score where smaller is better: `l2` as is, `ip` as
//! −q·x, `cosine` as 1 − q·x on vectors normalised at ingest. [`Metric::report`] turns the score
//! back into what users see.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    L2,
    #[serde(rename = "ip")]
    InnerProduct,
    Cosine,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        }
    }

    /// Whether vectors are normalised to unit length at ingest (and queries at search).
    pub fn normalizes(self) -> bool {
        self == Metric::Cosine
    }

    /// Turns an internal score (smaller is better) into the reported distance.
    #[inline]
    pub fn report(self, score: f32) -> f32 {
        match self {
            Metric::L2 => score.max(0.0),
            Metric::InnerProduct => -score,
            Metric::Cosine => score.clamp(0.0, 2.0),
        }
    }

    /// Reference score between two vectors, computed directly in f64 (tests and checks; the
    /// fast paths live in the backends).
    pub fn score_reference(self, q: &[f32], x: &[f32]) -> f64 {
        match self {
            Metric::L2 => q
                .iter()
                .zip(x)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum(),
            Metric::InnerProduct => -dot_f64(q, x),
            Metric::Cosine => 1.0 - dot_f64(q, x),
        }
    }
}

fn dot_f64(q: &[f32], x: &[f32]) -> f64 {
    q.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum()
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "l2" | "euclidean" | "sqeuclidean" => Ok(Metric::L2),
            "ip" | "inner_product" | "inner-product" | "dot" => Ok(Metric::InnerProduct),
            "cosine" | "cos" => Ok(Metric::Cosine),
            other => Err(crate::Error::param(format!(
                "unknown metric `{other}` (expected l2, ip or cosine)"
            ))),
        }
    }
}

/// Squared L2 norm of each row: `x: [n, dim] → [n]`.
pub fn squared_norms(x: ndarray::ArrayView2<'_, f32>) -> Vec<f32> {
    x.rows().into_iter().map(squared_norm).collect()
}

/// `‖x‖²`, summed in order.
pub fn squared_norm<'a>(x: impl IntoIterator<Item = &'a f32>) -> f32 {
    x.into_iter().map(|v| v * v).sum()
}

/// Scales each row to unit length in place. Returns the index of the first zero row, if any
/// (which cannot be normalised; the caller turns it into an input error).
pub fn normalize_rows(mut x: ndarray::ArrayViewMut2<'_, f32>) -> Option<usize> {
    for (i, mut row) in x.rows_mut().into_iter().enumerate() {
        let norm = row
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            return Some(i);
        }
        let inv = (1.0 / norm) as f32;
        row.mapv_inplace(|v| v * inv);
    }
    None
}
