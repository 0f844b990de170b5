//! Product quantization (Jégou et al., "Product quantization for nearest neighbor search",
//! TPAMI 2011).
//!
//! 1. Vectors `[dim]` are zero-padded to `pq_dim × dsub` (`dsub = ⌈dim / pq_dim⌉`) and cut into
//!    `pq_dim` subvectors of `dsub` floats. Zero padding changes no L2 distance or inner
//!    product, so any `pq_dim` works, divisor of `dim` or not.
//! 2. Each subspace gets its own codebook of `ksub = 2^pq_bits` codewords, trained by k-means
//!    ([`super::kmeans`]) on that subspace of the training vectors. The subspaces' k-means
//!    iterate together ([`kmeans::train_many`]: side by side on all cores on the CPU, in one
//!    pass per iteration on a GPU), each taking exactly the steps it would take alone.
//! 3. A vector's code is the index of the nearest codeword in each subspace: `pq_dim` codes,
//!    stored one byte each (for `pq_bits < 8` the upper bits stay zero; packing is left to
//!    exports that need it).
//! 4. Search builds a lookup table per query of `pq_dim × ksub` partial distances; the distance
//!    to an encoded vector is then `pq_dim` table lookups summed (asymmetric distance, ADC).
//!
//! Layout: `codebooks: [pq_dim × ksub, dsub]`, codeword `j` of subspace `m` at row
//! `m · ksub + j`.

use super::bounded::BoundedLloyd;
use super::kmeans;
use crate::backend::cpu::SMALL_DIM;
use crate::backend::{Backend, Lloyds, Step};
use crate::{Error, Result};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Entries per subspace in a lookup table: 256 whatever `pq_bits`, so a one-byte code indexes
/// a `[f32; 256]` without a bounds check.
pub const TABLE_STRIDE: usize = 256;

/// A trained product quantizer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductQuantizer {
    pub dim: usize,
    pub pq_dim: usize,
    pub pq_bits: u32,
    /// `[pq_dim × ksub, dsub]`.
    pub codebooks: Array2<f32>,
}

impl ProductQuantizer {
    pub fn ksub(&self) -> usize {
        1 << self.pq_bits
    }

    pub fn dsub(&self) -> usize {
        self.dim.div_ceil(self.pq_dim)
    }

    /// Trains on `data: [n, dim]` (n ≥ 2^pq_bits).
    pub fn train(
        backend: &dyn Backend,
        data: ArrayView2<'_, f32>,
        pq_dim: usize,
        pq_bits: u32,
        n_iters: usize,
        seed: u64,
    ) -> Result<Self> {
        let dim = data.ncols();
        if pq_dim == 0 || pq_dim > dim {
            return Err(Error::param(format!(
                "pq_dim = {pq_dim} must be between 1 and the dimension {dim}"
            )));
        }
        if !(4..=8).contains(&pq_bits) {
            return Err(Error::param(format!(
                "pq_bits = {pq_bits} must be between 4 and 8"
            )));
        }
        let ksub = 1usize << pq_bits;
        let dsub = dim.div_ceil(pq_dim);
        let seeds = |m: usize| seed.wrapping_add(m as u64);
        let books = match backend.subspace_lloyds(data, pq_dim, ksub)? {
            Some(mut held) => {
                let first = |m: usize, row: usize| {
                    let mut word = vec![0f32; dsub];
                    let (lo, hi) = columns(dim, m, dsub);
                    for (w, v) in word.iter_mut().zip(data.slice(ndarray::s![row, lo..hi])) {
                        *w = *v;
                    }
                    word
                };
                kmeans::train_many(
                    held.as_mut(),
                    data.nrows(),
                    ksub,
                    dsub,
                    n_iters,
                    &seeds,
                    &first,
                )?
            }
            None => (0..pq_dim)
                .map(|m| {
                    let sub = subspace(data, m, dsub);
                    kmeans::train(backend, sub.view(), ksub, n_iters, seeds(m), None)
                        .map(|km| km.centroids)
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let mut codebooks = Array2::<f32>::zeros((pq_dim * ksub, dsub));
        for (m, book) in books.iter().enumerate() {
            codebooks
                .slice_mut(ndarray::s![m * ksub..(m + 1) * ksub, ..])
                .assign(book);
        }
        Ok(ProductQuantizer {
            dim,
            pq_dim,
            pq_bits,
            codebooks,
        })
    }

    /// Codebook of subspace `m`: `[ksub, dsub]`.
    pub fn codebook(&self, m: usize) -> ArrayView2<'_, f32> {
        let ksub = self.ksub();
        self.codebooks
            .slice(ndarray::s![m * ksub..(m + 1) * ksub, ..])
    }

    /// data: [n, dim] → codes: [n, pq_dim].
    pub fn encode(&self, backend: &dyn Backend, data: ArrayView2<'_, f32>) -> Result<Array2<u8>> {
        if let Some(codes) = backend.pq_encode(data, self)? {
            return Ok(codes);
        }
        let mut codes = Array2::<u8>::zeros((data.nrows(), self.pq_dim));
        for m in 0..self.pq_dim {
            let sub = subspace(data, m, self.dsub());
            let (labels, _) = kmeans::assign(backend, sub.view(), self.codebook(m))?;
            for (c, l) in codes.column_mut(m).iter_mut().zip(labels) {
                *c = l as u8;
            }
        }
        Ok(codes)
    }

    /// codes: [n, pq_dim] → reconstructed vectors: [n, dim].
    pub fn decode(&self, codes: ArrayView2<'_, u8>) -> Array2<f32> {
        let (dsub, ksub) = (self.dsub(), self.ksub());
        let mut out = Array2::<f32>::zeros((codes.nrows(), self.dim));
        for (mut row, code) in out.rows_mut().into_iter().zip(codes.rows()) {
            for (m, &c) in code.iter().enumerate() {
                let word = self.codebooks.row(m * ksub + c as usize);
                for (d, w) in (m * dsub..(m * dsub + dsub).min(self.dim)).zip(word.iter()) {
                    row[d] = *w;
                }
            }
        }
        out
    }

    /// The codebooks transposed to `[pq_dim][dsub][ksub]`, the layout the table builders scan.
    pub fn transposed(&self) -> Vec<f32> {
        let (dsub, ksub) = (self.dsub(), self.ksub());
        let mut t = vec![0f32; self.pq_dim * dsub * ksub];
        for m in 0..self.pq_dim {
            for j in 0..ksub {
                for (d, &v) in self.codebooks.row(m * ksub + j).iter().enumerate() {
                    t[(m * dsub + d) * ksub + j] = v;
                }
            }
        }
        t
    }

    /// Lookup table for `x: [dim]` with `transposed` from [`Self::transposed`]:
    /// `table[m · TABLE_STRIDE + j]` = ‖x_m − c_mj‖² for L2, or −x_m · c_mj for inner product;
    /// entries past `ksub` are +∞. `table` holds `pq_dim · TABLE_STRIDE` floats.
    pub fn table(&self, transposed: &[f32], x: &[f32], inner_product: bool, table: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::backend::cpu::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe {
                table_avx2(
                    self.dim,
                    self.dsub(),
                    self.ksub(),
                    transposed,
                    x,
                    inner_product,
                    table,
                )
            };
        }
        table_generic(
            self.dim,
            self.dsub(),
            self.ksub(),
            transposed,
            x,
            inner_product,
            table,
        )
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn table_avx2(
    dim: usize,
    dsub: usize,
    ksub: usize,
    ct: &[f32],
    x: &[f32],
    ip: bool,
    table: &mut [f32],
) {
    table_generic(dim, dsub, ksub, ct, x, ip, table)
}

/// Vectorised over the `ksub` codewords: for each subspace and each of its dimensions, one
/// pass over a contiguous row of the transposed codebook.
#[inline(always)]
fn table_generic(
    dim: usize,
    dsub: usize,
    ksub: usize,
    ct: &[f32],
    x: &[f32],
    ip: bool,
    table: &mut [f32],
) {
    for (m, row) in table.chunks_exact_mut(TABLE_STRIDE).enumerate() {
        let (out, unused) = row.split_at_mut(ksub);
        unused.fill(f32::INFINITY);
        out.fill(0.0);
        for d in 0..dsub {
            // Past the real dimension the vector is zero-padded.
            let xd = x
                .get(m * dsub + d)
                .copied()
                .filter(|_| m * dsub + d < dim)
                .unwrap_or(0.0);
            let words = &ct[(m * dsub + d) * ksub..(m * dsub + d + 1) * ksub];
            if ip {
                for (o, c) in out.iter_mut().zip(words) {
                    *o -= xd * c;
                }
            } else {
                for (o, c) in out.iter_mut().zip(words) {
                    let t = xd - c;
                    *o += t * t;
                }
            }
        }
    }
}

/// The columns `lo..hi` of `[dim]` that sub-space `m` takes (`hi − lo < dsub` past the last
/// column, where it is zero-padded).
pub(crate) fn columns(dim: usize, m: usize, dsub: usize) -> (usize, usize) {
    ((m * dsub).min(dim), (m * dsub + dsub).min(dim))
}

/// Columns `m·dsub .. (m+1)·dsub` of `data`, zero-padded past its last column: `[n, dsub]`.
fn subspace(data: ArrayView2<'_, f32>, m: usize, dsub: usize) -> Array2<f32> {
    let (lo, hi) = columns(data.ncols(), m, dsub);
    let mut out = Array2::<f32>::zeros((data.nrows(), dsub));
    out.slice_mut(ndarray::s![.., ..hi - lo])
        .assign(&data.slice(ndarray::s![.., lo..hi]));
    out
}

/// A product quantizer's sub-spaces held on the host for training them together
/// ([`Backend::subspace_lloyds`]): each step runs the running sub-spaces' Lloyd iterations
/// side by side on all cores (a sub-space's iteration alone, 65,536 rows of 2 floats, is too
/// small to keep many cores busy). Sub-spaces of at most [`SMALL_DIM`] floats step by
/// [`BoundedLloyd`], which searches in full only the rows whose nearest codeword may have
/// changed; wider ones by [`kmeans::host_step`]. Either way the steps are the same bits.
pub struct HostSubspaces<'a> {
    backend: &'a dyn Backend,
    subs: Vec<Held>,
}

/// One sub-space's rows `[n, dsub]`, stepped with the nearest-codeword test where narrow
/// enough.
enum Held {
    Bounded(BoundedLloyd),
    Plain(Array2<f32>),
}

impl<'a> HostSubspaces<'a> {
    /// Cuts `data: [n, dim]` into `pq_dim` sub-spaces of `⌈dim / pq_dim⌉` columns.
    pub fn hold(backend: &'a dyn Backend, data: ArrayView2<'_, f32>, pq_dim: usize) -> Self {
        let dsub = data.ncols().div_ceil(pq_dim.max(1));
        let mut cut = vec![Array2::<f32>::zeros((data.nrows(), dsub)); pq_dim];
        // Row by row, so each row is read once and each sub-space written in order.
        for (r, row) in data.rows().into_iter().enumerate() {
            for (m, sub) in cut.iter_mut().enumerate() {
                let (lo, hi) = columns(data.ncols(), m, dsub);
                for (s, v) in sub
                    .row_mut(r)
                    .iter_mut()
                    .zip(row.slice(ndarray::s![lo..hi]))
                {
                    *s = *v;
                }
            }
        }
        let subs = cut
            .into_iter()
            .map(|sub| match dsub <= SMALL_DIM {
                true => Held::Bounded(BoundedLloyd::new(sub)),
                false => Held::Plain(sub),
            })
            .collect();
        HostSubspaces { backend, subs }
    }
}

impl Lloyds for HostSubspaces<'_> {
    fn count(&self) -> usize {
        self.subs.len()
    }

    fn step(
        &mut self,
        centroids: &mut [Array2<f32>],
        running: &[bool],
    ) -> Result<Vec<Option<Step>>> {
        let backend = self.backend;
        self.subs
            .par_iter_mut()
            .zip(centroids.par_iter_mut())
            .zip(running.par_iter())
            .map(|((held, c), &run)| {
                run.then(|| match held {
                    Held::Bounded(b) => Ok(b.step(c)),
                    Held::Plain(sub) => kmeans::host_step(backend, sub.view(), c),
                })
                .transpose()
            })
            .collect()
    }
}
