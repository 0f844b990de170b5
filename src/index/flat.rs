//! The flat index: the vectors themselves, searched exactly. For cosine the rows are stored
//! normalised; for L2 their squared norms are stored beside them so search skips recomputing
//! them.

use crate::artifact::container::{DType, TensorOut};
use crate::artifact::{self, Manifest};
use crate::ids::Ids;
use crate::metric::squared_norms;
use crate::{Error, Metric, Result};
use ndarray::ArrayView2;
use std::path::Path;

/// Writes a flat artifact of `vectors: [count, dim]` (normalised already for cosine) with their
/// `ids: [count]`. `manifest` carries everything but the checksums.
pub fn write(
    path: &Path,
    vectors: ArrayView2<'_, f32>,
    ids: &Ids,
    manifest: Manifest,
) -> Result<()> {
    let (n, dim) = vectors.dim();
    if ids.len() != n || manifest.count != n as u64 || manifest.dim != dim {
        return Err(Error::param(format!(
            "internal: {} ids, manifest {}×{}, vectors {n}×{dim}",
            ids.len(),
            manifest.count,
            manifest.dim
        )));
    }
    let rows = vectors.as_standard_layout();
    let data = rows.as_slice().unwrap_or(&[]);
    let norms = if manifest.metric == Metric::L2 {
        squared_norms(vectors)
    } else {
        Vec::new()
    };
    let mut tensors = vec![TensorOut::new("vectors", DType::F32, vec![n, dim], data)];
    if manifest.metric == Metric::L2 {
        tensors.push(TensorOut::new("sq_norms", DType::F32, vec![n], &norms));
    }
    tensors.extend(artifact::ids_tensors(ids));
    artifact::write(path, manifest, &tensors)
}
