//! Index builders. Each algorithm lives in its own module and writes an artifact.

pub mod bounded;
pub mod cagra;
pub mod flat;
pub mod ivf_pq;
pub mod kmeans;
pub mod pq;
pub mod sq8;
