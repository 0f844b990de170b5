//! 8-bit scalar quantization of vectors, one affine code per dimension: dimension `d` of row
//! `x` is stored as `c = round((x_d − min_d) / scale_d)` in `0..=255` and read back as
//! `min_d + scale_d · c` (`scale_d = (max_d − min_d) / 255` over the rows encoded; a constant
//! dimension gets scale 0 and code 0).
//!
//! CAGRA search walks the graph on these codes (a quarter of the bytes of `f32` rows, so four
//! times as many rows stay in cache) and re-ranks what it keeps by exact distance.
//! Scoring a code reads nothing but the code row: L2 is `‖(q − min) − scale∘c‖²` in full, inner
//! product `q·x̂ = q·min + (q∘scale)·c`; see [`Sq8Query`].

use crate::distance::{dot_u8, l2_u8};
use crate::Metric;
use ndarray::ArrayView2;
use rayon::prelude::*;

/// Per-dimension ranges of an encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Sq8 {
    pub min: Vec<f32>,
    pub scale: Vec<f32>,
}

impl Sq8 {
    /// The ranges of `rows` `[n, dim]` (non-finite values were refused on input).
    pub fn train(rows: ArrayView2<'_, f32>) -> Sq8 {
        let dim = rows.ncols();
        let rows = rows.as_standard_layout();
        let flat = rows.as_slice().unwrap_or(&[]);
        let init = || (vec![f32::INFINITY; dim], vec![f32::NEG_INFINITY; dim]);
        let (lo, hi) = flat
            .par_chunks(dim.max(1))
            .fold(init, |(mut lo, mut hi), row| {
                for (d, &v) in row.iter().enumerate() {
                    lo[d] = lo[d].min(v);
                    hi[d] = hi[d].max(v);
                }
                (lo, hi)
            })
            .reduce(init, |(mut lo, mut hi), (l2, h2)| {
                for d in 0..dim {
                    lo[d] = lo[d].min(l2[d]);
                    hi[d] = hi[d].max(h2[d]);
                }
                (lo, hi)
            });
        let min: Vec<f32> = lo
            .iter()
            .map(|&v| if v.is_finite() { v } else { 0.0 })
            .collect();
        let scale = lo
            .iter()
            .zip(&hi)
            .map(|(&l, &h)| match h > l {
                true => (h - l) / 255.0,
                false => 0.0,
            })
            .collect();
        Sq8 { min, scale }
    }

    pub fn dim(&self) -> usize {
        self.min.len()
    }

    /// Codes of `rows` `[n, dim]`, row-major `[n · dim]`.
    pub fn encode(&self, rows: ArrayView2<'_, f32>) -> Vec<u8> {
        let dim = self.dim();
        let rows = rows.as_standard_layout();
        let flat = rows.as_slice().unwrap_or(&[]);
        let mut codes = vec![0u8; flat.len()];
        codes
            .par_chunks_mut(dim.max(1))
            .zip(flat.par_chunks(dim.max(1)))
            .for_each(|(out, row)| self.encode_row(row, out));
        codes
    }

    /// The code of one row, into `out` `[dim]`.
    pub fn encode_row(&self, row: &[f32], out: &mut [u8]) {
        for (d, (&v, c)) in row.iter().zip(out.iter_mut()).enumerate() {
            let s = self.scale[d];
            *c = match s > 0.0 {
                true => ((v - self.min[d]) / s).round().clamp(0.0, 255.0) as u8,
                false => 0,
            };
        }
    }

    /// The vector a code row stands for.
    pub fn decode(&self, code: &[u8]) -> Vec<f32> {
        code.iter()
            .zip(self.min.iter().zip(&self.scale))
            .map(|(&c, (&m, &s))| m + s * c as f32)
            .collect()
    }
}

/// Encoded rows viewed in place.
#[derive(Debug, Clone, Copy)]
pub struct Sq8View<'a> {
    pub min: &'a [f32],
    pub scale: &'a [f32],
    /// `[n · dim]`.
    pub codes: &'a [u8],
}

/// A query prepared for scoring codes: L2 `q − min`, otherwise `q∘scale` and `q·min`.
#[derive(Debug, Default)]
pub struct Sq8Query {
    prepared: Vec<f32>,
    offset: f32,
}

impl Sq8Query {
    /// Prepares for `q` under `metric`, reusing this one's buffer.
    pub fn prepare(&mut self, view: &Sq8View<'_>, metric: Metric, q: &[f32]) {
        self.prepared.clear();
        match metric {
            Metric::L2 => {
                self.prepared
                    .extend(q.iter().zip(view.min).map(|(a, m)| a - m));
                self.offset = 0.0;
            }
            _ => {
                self.prepared
                    .extend(q.iter().zip(view.scale).map(|(a, s)| a * s));
                self.offset = crate::distance::dot(q, view.min);
            }
        }
    }

    /// The score of row `row`'s decoded vector `x̂`, smaller is closer: `‖q − x̂‖²` for L2,
    /// `−q·x̂` otherwise (for L2 not the ranking score of [`crate::Metric`], which leaves out
    /// `‖q‖²`: compare it only with scores from this function).
    #[inline]
    pub fn score(&self, view: &Sq8View<'_>, metric: Metric, row: usize) -> f32 {
        let dim = self.prepared.len();
        let code = &view.codes[row * dim..(row + 1) * dim];
        match metric {
            Metric::L2 => l2_u8(&self.prepared, view.scale, code),
            _ => -(self.offset + dot_u8(&self.prepared, code)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn rows() -> Array2<f32> {
        let mut rng = crate::synth::Rng::new(3);
        let mut x = Array2::from_shape_fn((300, 20), |_| rng.normal() as f32);
        x.column_mut(7).fill(2.5); // a constant dimension
        x
    }

    #[test]
    fn codes_decode_to_within_half_a_step_of_every_value() {
        let x = rows();
        let q = Sq8::train(x.view());
        assert_eq!(q.scale[7], 0.0);
        let codes = q.encode(x.view());
        for (row, code) in x.outer_iter().zip(codes.chunks(20)) {
            for (d, (&v, w)) in row.iter().zip(q.decode(code)).enumerate() {
                let tol = q.scale[d] / 2.0 + 1e-5 * v.abs().max(1.0);
                assert!((v - w).abs() <= tol, "dim {d}: {v} decodes to {w}");
            }
        }
    }

    #[test]
    fn query_scores_are_exact_distances_to_the_decoded_rows() {
        let x = rows();
        let q = Sq8::train(x.view());
        let codes = q.encode(x.view());
        let view = Sq8View {
            min: &q.min,
            scale: &q.scale,
            codes: &codes,
        };
        let query: Vec<f32> = (0..20).map(|d| d as f32 * 0.1 - 1.0).collect();
        let mut prepared = Sq8Query::default();
        for metric in [Metric::L2, Metric::InnerProduct] {
            prepared.prepare(&view, metric, &query);
            for r in [0, 17, 299] {
                let x_hat = q.decode(&codes[r * 20..(r + 1) * 20]);
                let want: f64 = match metric {
                    Metric::L2 => query
                        .iter()
                        .zip(&x_hat)
                        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                        .sum(),
                    _ => -query
                        .iter()
                        .zip(&x_hat)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>(),
                };
                let got = prepared.score(&view, metric, r) as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{metric} row {r}: {got} vs {want}"
                );
            }
        }
    }
}
