//! One test binary: the middleware against the client over the scenario table's key rows, and the
//! `tracing`-bridged span tree.
#![allow(clippy::unwrap_used, unreachable_pub, missing_docs)]

mod harness;
mod scenarios;
mod tracing_tree;
