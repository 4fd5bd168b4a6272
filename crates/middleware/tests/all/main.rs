//! One test binary: the middleware against the client over the scenario table's key rows, and the
//! `tracing`-bridged span tree.
#![allow(clippy::unwrap_used, unreachable_pub, missing_docs)]

// The client's own test harness (a real fake upstream, OTLP receiver, telemetry pipeline and client), not a copy.
#[path = "../../../client/tests/common/mod.rs"]
mod harness;
mod scenarios;
mod tracing_tree;
