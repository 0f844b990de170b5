//! Exports to the formats other loaders read.

pub mod faiss;
