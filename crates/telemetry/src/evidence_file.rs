//! The evidence file: appends one JSON line per attempt to a JSONL file, off the request path.
//!
//! Emitting a line only appends to an in-memory buffer under a short lock; a background thread moves the buffer
//! to the file. What must never happen: a call blocking on file I/O, a line split or interleaved with another,
//! memory growing without bound when the disk is slow or full (lines beyond the limit are dropped and counted).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::TelemetryError;
use crate::export::{Dropped, EVIDENCE};
use crate::pipeline::Telemetry;

/// Bytes of evidence waiting to be written; beyond this, lines are dropped and counted rather than growing memory.
pub const EVIDENCE_PENDING_LIMIT: usize = 8 << 20;
/// How often the writer thread moves pending lines to the file.
pub const EVIDENCE_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Appends evidence lines to a JSONL file. Emitting only appends to an in-memory buffer under a short lock (no
/// I/O, no thread wake-up per line); a background thread writes the buffer out every
/// [`EVIDENCE_FLUSH_INTERVAL`], and [`EvidenceWriter::flush`] writes it out at once.
pub(crate) struct EvidenceWriter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Held while moving pending bytes to the file, so batches reach the file in order.
    file: Mutex<File>,
    closed: std::sync::atomic::AtomicBool,
    dropped: Arc<Dropped>,
}

impl Shared {
    fn drain(&self) -> bool {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return true;
        }
        let written = file.write_all(&batch).and_then(|()| file.flush()).is_ok();
        if !written {
            let lines = batch.iter().filter(|b| **b == b'\n').count();
            self.dropped.add(EVIDENCE, lines as u64);
        }
        written
    }
}

impl EvidenceWriter {
    pub(crate) fn open(path: &Path, dropped: Arc<Dropped>) -> Result<Self, TelemetryError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                TelemetryError::Init(format!(
                    "cannot open evidence file {}: {e}; check the directory exists and is writable",
                    path.display()
                ))
            })?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            file: Mutex::new(file),
            closed: std::sync::atomic::AtomicBool::new(false),
            dropped,
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("retrybudget-evidence".into())
            .spawn(move || {
                while !worker.closed.load(Ordering::Acquire) {
                    std::thread::park_timeout(EVIDENCE_FLUSH_INTERVAL);
                    worker.drain();
                }
            })
            .map_err(|e| {
                TelemetryError::Init(format!("cannot start the evidence writer thread: {e}"))
            })?;
        Ok(EvidenceWriter {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub(crate) fn write(&self, line: &[u8]) {
        // After close nothing drains the buffer again: a late line is lost, so count it.
        if self.shared.closed.load(Ordering::Acquire) {
            self.shared.dropped.add(EVIDENCE, 1);
            return;
        }
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pending.len() + line.len() >= EVIDENCE_PENDING_LIMIT {
            drop(pending);
            self.shared.dropped.add(EVIDENCE, 1);
            return;
        }
        pending.extend_from_slice(line);
        pending.push(b'\n');
    }

    /// Writes every line emitted so far to the file.
    pub(crate) fn flush(&self) -> bool {
        self.shared.drain()
    }

    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            t.thread().unpark();
            let _ = t.join();
        }
        self.shared.drain();
    }
}

impl Telemetry {
    /// Writes every evidence line emitted so far to the file. True if that worked, or if there is no file.
    pub fn flush_evidence(&self) -> bool {
        self.inner
            .evidence
            .as_ref()
            .is_none_or(EvidenceWriter::flush)
    }
}
