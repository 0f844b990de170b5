//! Index builders. Each algorithm lives in its own module and writes an artifact.

pub mod flat;
