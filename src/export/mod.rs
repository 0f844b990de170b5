//! Exports to the formats other loaders read.

pub mod faiss;
pub mod hnsw;
pub mod hnswlib;
