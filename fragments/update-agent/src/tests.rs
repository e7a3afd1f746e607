//! Command-level tests (see tests.rs).
