//! The artifact: one file holding an index, its ids and a manifest.
//!
//! The container is the safetensors layout ([`container`]); the manifest ([`Manifest`]) is JSON
//! stored in the header's `__metadata__` under `vecbuild.manifest`, with its own xxh3 checksum
//! under `vecbuild.manifest_xxh3`. Every tensor's xxh3-64 checksum is in the manifest and is
//! verified by [`Artifact::open`], so a flipped byte anywhere is reported with the section it
//! hit.
//!
//! Tensors by index kind:
//!
//! | tensor        | dtype   | shape         | kinds | holds |
//! |---------------|---------|---------------|-------|-------|
//! | `vectors`     | F32     | `[count, dim]`| flat  | the rows (unit length for cosine) |
//! | `sq_norms`    | F32     | `[count]`     | flat, l2 | ‖x‖² of each row |
//! | `ids`         | I64/U64 | `[count]`     | all   | integer ids |
//! | `ids.offsets` | U64     | `[count + 1]` | all   | string ids: byte offsets into `ids.data` |
//! | `ids.data`    | U8      | `[bytes]`     | all   | string ids: UTF-8 bytes back to back |

pub mod container;

use crate::ids::{IdKind, Ids, IdsView};
use crate::io::InputFile;
use crate::{Error, Metric, Result};
use container::{Container, DType, TensorOut};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The artifact format this vecbuild writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST_KEY: &str = "vecbuild.manifest";
const MANIFEST_HASH_KEY: &str = "vecbuild.manifest_xxh3";

/// The kinds of index an artifact can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IndexKind {
    /// Exact search over the stored vectors.
    Flat,
    /// Inverted file with product quantization.
    IvfPq,
    /// CAGRA graph.
    Cagra,
}

impl std::fmt::Display for IndexKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexKind::Flat => "flat",
            IndexKind::IvfPq => "ivf-pq",
            IndexKind::Cagra => "cagra",
        })
    }
}

/// What an artifact says about itself (`vecbuild info` prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub kind: IndexKind,
    pub metric: Metric,
    pub dim: usize,
    pub count: u64,
    pub id_kind: IdKind,
    /// Every build parameter, as resolved (defaults filled in).
    pub params: serde_json::Value,
    /// Search parameters used when the caller gives none.
    pub search_defaults: serde_json::Value,
    pub inputs: Vec<InputFile>,
    pub vector_column: Option<String>,
    pub id_column: Option<String>,
    /// `cpu` or `cuda:N`.
    pub backend: String,
    /// The device's name, when a GPU built it.
    pub device: Option<String>,
    pub build_seconds: f64,
    /// Seconds since the Unix epoch when the build finished.
    pub built_at_unix: u64,
    pub vecbuild_version: String,
    /// `tensor name → xxh3-64 of its bytes, as 16 hex digits`.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
}

fn xxh3_hex(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Tensors holding `ids` (see the table in the module docs).
pub fn ids_tensors(ids: &Ids) -> Vec<TensorOut<'_>> {
    match ids {
        Ids::Int64(v) => vec![TensorOut::new("ids", DType::I64, vec![v.len()], v)],
        Ids::UInt64(v) => vec![TensorOut::new("ids", DType::U64, vec![v.len()], v)],
        Ids::Utf8 { offsets, data } => vec![
            TensorOut::new("ids.offsets", DType::U64, vec![offsets.len()], offsets),
            TensorOut::new("ids.data", DType::U8, vec![data.len()], data),
        ],
    }
}

/// Writes an artifact atomically, every tensor's checksum in the manifest (hashed as the
/// tensor is written).
pub fn write(path: &Path, mut manifest: Manifest, tensors: &[TensorOut<'_>]) -> Result<()> {
    manifest.format_version = FORMAT_VERSION;
    container::write_with(path, tensors, |hashes| {
        manifest.checksums = hashes
            .iter()
            .map(|(name, &h)| (name.to_string(), format!("{h:016x}")))
            .collect();
        let text = serde_json::to_string(&manifest).map_err(|e| Error::param(e.to_string()))?;
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_string(), "vecbuild".to_string());
        metadata.insert(MANIFEST_HASH_KEY.to_string(), xxh3_hex(text.as_bytes()));
        metadata.insert(MANIFEST_KEY.to_string(), text);
        Ok(metadata)
    })
}

/// An opened, verified artifact.
pub struct Artifact {
    pub container: Container,
    pub manifest: Manifest,
}

impl Artifact {
    /// Opens by memory map and verifies the manifest, every tensor's size, offset and checksum,
    /// and the ids.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let container = Container::open(path)?;
        let manifest = read_manifest(path, &container)?;
        verify_checksums(path, &container, &manifest)?;
        let artifact = Artifact {
            container,
            manifest,
        };
        artifact.check_ids()?;
        Ok(artifact)
    }

    /// The ids, viewed in place.
    /// Each stored row's row number in the input, where the index stores rows in another order
    /// (CAGRA); `None`: stored in input order.
    pub fn input_rows(&self) -> Result<Option<&[u32]>> {
        if !self.container.tensors.contains_key("input_rows") {
            return Ok(None);
        }
        let n = self.manifest.count as usize;
        let rows = self.tensor::<u32>("input_rows", DType::U32, &[n])?;
        if rows.iter().any(|&r| r as usize >= n) {
            return Err(Error::artifact(
                self.container.path(),
                "input_rows",
                format!("holds a row number ≥ {n}"),
            ));
        }
        Ok(Some(rows))
    }

    pub fn ids(&self) -> Result<IdsView<'_>> {
        let c = &self.container;
        Ok(match self.manifest.id_kind {
            IdKind::Int64 => IdsView::Int64(c.slice::<i64>("ids", DType::I64)?.0),
            IdKind::UInt64 => IdsView::UInt64(c.slice::<u64>("ids", DType::U64)?.0),
            IdKind::Utf8 => IdsView::Utf8 {
                offsets: c.slice::<u64>("ids.offsets", DType::U64)?.0,
                data: c.bytes("ids.data", DType::U8)?.0,
            },
        })
    }

    /// A tensor of `T` that must have exactly `shape`.
    pub fn tensor<T: bytemuck::Pod>(
        &self,
        name: &str,
        dtype: DType,
        shape: &[usize],
    ) -> Result<&[T]> {
        let (data, actual) = self.container.slice::<T>(name, dtype)?;
        if actual != shape {
            return Err(Error::artifact(
                self.container.path(),
                name,
                format!("has shape {actual:?}, expected {shape:?}"),
            ));
        }
        Ok(data)
    }

    fn check_ids(&self) -> Result<()> {
        let path = self.container.path();
        let ids = self.ids()?;
        let count = self.manifest.count as usize;
        match ids {
            IdsView::Utf8 { offsets, data } => {
                let bad = |why: String| Error::artifact(path, "ids.offsets", why);
                if offsets.len() != count + 1 || offsets.first() != Some(&0) {
                    return Err(bad(format!(
                        "holds {} offsets for {count} rows",
                        offsets.len()
                    )));
                }
                if offsets.windows(2).any(|w| w[0] > w[1])
                    || offsets.last().copied() != Some(data.len() as u64)
                {
                    return Err(bad(
                        "offsets are not increasing up to the data length".into()
                    ));
                }
                std::str::from_utf8(data)
                    .map_err(|e| Error::artifact(path, "ids.data", format!("not UTF-8: {e}")))?;
            }
            other if other.len() != count => {
                return Err(Error::artifact(
                    path,
                    "ids",
                    format!("holds {} ids for {count} rows", other.len()),
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

fn read_manifest(path: &Path, container: &Container) -> Result<Manifest> {
    let bad = |why: String| Error::artifact(path, "manifest", why);
    let text = container
        .metadata
        .get(MANIFEST_KEY)
        .ok_or_else(|| bad("no vecbuild manifest in the header; not a vecbuild artifact".into()))?;
    let stored = container
        .metadata
        .get(MANIFEST_HASH_KEY)
        .map(String::as_str)
        .unwrap_or("");
    if stored != xxh3_hex(text.as_bytes()) {
        return Err(bad("checksum mismatch; the header is damaged".into()));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let version = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if version > FORMAT_VERSION as u64 {
        return Err(bad(format!(
            "format version {version} is newer than this vecbuild reads ({FORMAT_VERSION}); upgrade vecbuild"
        )));
    }
    serde_json::from_value(value).map_err(|e| bad(format!("unreadable: {e}")))
}

fn verify_checksums(path: &Path, container: &Container, manifest: &Manifest) -> Result<()> {
    use rayon::prelude::*;
    for name in manifest.checksums.keys() {
        if !container.tensors.contains_key(name) {
            return Err(Error::artifact(
                path,
                name,
                "tensor listed in the manifest is missing",
            ));
        }
    }
    let tensors: Vec<(&str, &[u8])> = container.all_bytes().collect();
    tensors.par_iter().try_for_each(|(name, bytes)| {
        let expected = manifest.checksums.get(*name).ok_or_else(|| {
            Error::artifact(path, *name, "tensor has no checksum in the manifest")
        })?;
        let actual = xxh3_hex(bytes);
        if &actual != expected {
            return Err(Error::artifact(
                path,
                *name,
                format!(
                    "checksum mismatch (stored {expected}, computed {actual}); the file is damaged"
                ),
            ));
        }
        Ok(())
    })
}

impl Artifact {
    /// Rewrites the artifact at `path` with `manifest` (e.g. new search defaults) and the same
    /// tensors, atomically; the open map stays valid until dropped.
    pub fn rewrite(&self, path: &Path, manifest: Manifest) -> Result<()> {
        let tensors: Vec<TensorOut<'_>> = self
            .container
            .tensors
            .iter()
            .map(|(name, t)| TensorOut {
                name,
                dtype: t.dtype,
                shape: t.shape.clone(),
                source: container::Source::Bytes(
                    self.container
                        .bytes(name, t.dtype)
                        .map(|b| b.0)
                        .unwrap_or(&[]),
                ),
            })
            .collect();
        write(path, manifest, &tensors)
    }
}
