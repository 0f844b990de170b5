//! vecbuild's integration tests: one binary, a module per area.

mod artifact;
mod bad_input;
mod cagra;
mod cli;
mod common;
mod cuda;
mod emu;
mod ivf_pq;
mod kernels;
mod knn;
mod python;
mod reader;
