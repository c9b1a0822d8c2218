//! Helpers shared by the fuzz targets (and, by path, by
//! tests/it/hostile_input.rs).

pub mod oracle;
