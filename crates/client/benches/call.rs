//! Placeholder until the benchmark lands.
#![allow(missing_docs)]
fn main() {}
