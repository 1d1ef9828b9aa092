//! Every end-to-end test, in one binary (each test file used to link wasmtime on its own).
//!
//! Tests that need PostgreSQL are `#[ignore]`d: run them with
//! `LODGE_TEST_DATABASE_URL=postgres://… cargo test -- --include-ignored` (CI does).

mod binary;
mod control_plane;
mod convergence;
mod data_plane;
mod exposure;
mod isolation;
mod javascript;
mod keyvalue;
mod multi_host;
mod plans_usage;
mod python;
mod reuse;
mod tiers;
mod wallet;
mod wasi03;
