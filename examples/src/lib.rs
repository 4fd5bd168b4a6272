//! Runnable examples of the retrybudget crates; see `tracing_service.rs` next to this crate's manifest.
