//! vecbuild: build approximate-nearest-neighbour indexes from embeddings in Parquet, write one
//! memory-mappable artifact, and serve it from CPUs with [`Searcher`].
//!
//! The search loader compiles without the heavy dependencies: build with
//! `default-features = false` to get [`Searcher`], [`artifact`] and the CPU kernels only.

pub mod backend;
pub mod distance;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod ids;
pub mod io;
pub mod laps;
pub mod metric;
pub mod topk;

pub use error::{Error, Location, Result};
pub use ids::{IdKind, Ids, IdsView};
pub use metric::Metric;
pub use topk::{Neighbor, TopK};
pub mod artifact;
pub mod index;
pub mod search;
pub mod synth;

pub use search::{SearchParams, SearchResults, Searcher};
#[cfg(feature = "parquet")]
pub mod eval;
pub mod plan;
