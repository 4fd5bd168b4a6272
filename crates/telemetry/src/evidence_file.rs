//! The evidence file: appends one JSON line per attempt to a JSONL file, off the request path, with size-based
//! rotation and a reopen for `logrotate`.
//!
//! Emitting a line only appends to an in-memory buffer under a short lock; a background thread moves the buffer
//! to the file, and only that thread (or an explicit flush) ever renames, opens or writes files.
//! What must never happen: a call blocking on file I/O or on a rotation; a line split across two files or
//! interleaved with another; a line lost by a rotation or a reopen; memory growing without bound when the disk is
//! slow or full (lines beyond [`EVIDENCE_PENDING_LIMIT`] are dropped and counted, never silently).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::TelemetryError;
use crate::export::{Dropped, EVIDENCE};

/// Bytes of evidence waiting to be written; beyond this, lines are dropped and counted rather than growing memory.
pub const EVIDENCE_PENDING_LIMIT: usize = 8 << 20;
/// The largest emptied buffer kept for reuse as the next pending one (see `Shared::drain`).
const SPARE_LIMIT: usize = 2 << 20;
/// How often the writer thread moves pending lines to the file.
pub const EVIDENCE_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Size-based rotation of the evidence file.
///
/// When the next whole line would take the file beyond `max_bytes`, the file is renamed to `PATH.1` (an older
/// `PATH.1` to `PATH.2`, …, up to `PATH.{keep}`; the oldest beyond `keep` is deleted) and a new `PATH` is started.
/// A single line longer than `max_bytes` gets a file of its own; a line is never split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EvidenceRotation {
    /// Rotate before the file would exceed this many bytes; `None` never rotates by size (e.g. when `logrotate`
    /// renames the file and asks for a reopen instead).
    pub max_bytes: Option<u64>,
    /// How many rotated files to keep (`PATH.1` is the newest). 0 deletes the full file on rotation.
    pub keep: u32,
}

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
    sink: Mutex<Sink>,
    closed: AtomicBool,
    /// Set by [`EvidenceWriter::reopen`]; the next drain reopens `PATH` before writing.
    reopen: AtomicBool,
    dropped: Arc<Dropped>,
}

/// The open file and what rotation needs to know about it. Only touched under `Shared::sink`.
struct Sink {
    path: PathBuf,
    /// `None` after an open failed; retried on the next drain.
    file: Option<File>,
    /// Bytes in the current file (its length when opened, plus what we appended).
    size: u64,
    rotation: EvidenceRotation,
    /// An emptied buffer of the last batch, to become the next pending one.
    spare: Vec<u8>,
}

fn open_append(path: &Path) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata().map_or(0, |m| m.len());
    Ok((file, size))
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn ignore_missing(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

impl Sink {
    fn reopen(&mut self) {
        self.file = None;
        if let Ok((file, size)) = open_append(&self.path) {
            self.file = Some(file);
            self.size = size;
        }
    }

    /// Renames the full file away (keeping at most `keep` old ones) and starts a new one. On a failed rename the
    /// current file stays open and keeps receiving lines: better an oversized file than a lost line.
    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.rotation.keep;
        if keep == 0 {
            ignore_missing(std::fs::remove_file(&self.path))?;
        } else {
            // Shift only the run of existing PATH.1, PATH.2, …: a rotation costs as many renames as files kept.
            let mut last = 0;
            while last < keep && rotated(&self.path, last + 1).exists() {
                last += 1;
            }
            if last == keep {
                std::fs::remove_file(rotated(&self.path, keep))?;
                last -= 1;
            }
            for n in (1..=last).rev() {
                std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1))?;
            }
            // NotFound: something (logrotate) moved PATH away and no reopen came yet; starting a new PATH is
            // all that is left to do.
            ignore_missing(std::fs::rename(&self.path, rotated(&self.path, 1)))?;
        }
        // Lines written so far are in the renamed file (same inode); from here on they go to a new PATH.
        self.reopen();
        Ok(())
    }

    /// How many leading bytes of `rest` (whole lines only) go into the current file before a rotation;
    /// 0 means "rotate first".
    fn chunk(&self, rest: &[u8]) -> usize {
        let Some(max) = self.rotation.max_bytes else {
            return rest.len();
        };
        let room = usize::try_from(max.saturating_sub(self.size)).unwrap_or(usize::MAX);
        if rest.len() <= room {
            return rest.len();
        }
        let fit = rest[..room]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        if fit == 0 && self.size == 0 {
            // One line longer than the limit: it gets a file of its own rather than being split.
            return rest
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |i| i + 1);
        }
        fit
    }

    /// Writes whole lines, rotating between them as needed. Returns how many lines could not be written.
    fn write_lines(&mut self, batch: &[u8]) -> u64 {
        if self.file.is_none() {
            self.reopen();
        }
        let mut rest = batch;
        let mut rotation_failed = false;
        while !rest.is_empty() {
            let n = if rotation_failed {
                rest.len()
            } else {
                self.chunk(rest)
            };
            if n == 0 {
                rotation_failed = self.rotate().is_err();
                continue;
            }
            let Some(file) = self.file.as_mut() else {
                return count_lines(rest);
            };
            if file.write_all(&rest[..n]).is_err() {
                // Whatever part of the chunk reached the file cannot be told apart: count it all as lost and
                // reopen before the next batch (the file may be gone or the disk full).
                self.file = None;
                return count_lines(rest);
            }
            self.size += n as u64;
            rest = &rest[n..];
        }
        0
    }
}

impl Shared {
    fn drain(&self) -> bool {
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        if self.reopen.swap(false, Ordering::AcqRel) {
            sink.reopen();
        }
        // The written batch's buffer (emptied) becomes the next pending one, so emitting lines does not grow a
        // new buffer from nothing after every drain; one that grew past `SPARE_LIMIT` is let go.
        let mut batch = std::mem::take(&mut sink.spare);
        std::mem::swap(
            &mut batch,
            &mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner),
        );
        if batch.is_empty() {
            sink.spare = batch;
            return sink.file.is_some();
        }
        let lost = sink.write_lines(&batch);
        if batch.capacity() <= SPARE_LIMIT {
            batch.clear();
            sink.spare = batch;
        }
        if lost > 0 {
            self.dropped.add(EVIDENCE, lost);
        }
        lost == 0
    }
}

impl EvidenceWriter {
    pub(crate) fn open(
        path: &Path,
        rotation: EvidenceRotation,
        dropped: Arc<Dropped>,
    ) -> Result<Self, TelemetryError> {
        let (file, size) = open_append(path).map_err(|e| {
            TelemetryError::Init(format!(
                "cannot open evidence file {}: {e}; check the directory exists and is writable",
                path.display()
            ))
        })?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            sink: Mutex::new(Sink {
                path: path.to_owned(),
                file: Some(file),
                size,
                rotation,
                spare: Vec::new(),
            }),
            closed: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
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

    #[cfg(test)]
    pub(crate) fn write(&self, line: &[u8]) {
        self.write_with(|pending| pending.extend_from_slice(line));
    }

    /// Appends one line, which `line` writes (without its newline) straight into the pending buffer: no
    /// buffer of its own, no second copy.
    pub(crate) fn write_with(&self, line: impl FnOnce(&mut Vec<u8>)) {
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
        let start = pending.len();
        line(&mut pending);
        pending.push(b'\n');
        if pending.len() >= EVIDENCE_PENDING_LIMIT {
            pending.truncate(start);
            drop(pending);
            self.shared.dropped.add(EVIDENCE, 1);
        }
    }

    /// Writes every line emitted so far to the file.
    pub(crate) fn flush(&self) -> bool {
        self.shared.drain()
    }

    /// Asks the writer thread to reopen the path (after `logrotate` renamed the file) and returns at once.
    /// Lines written before the reopen stay in the renamed file; none are lost.
    pub(crate) fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            t.thread().unpark();
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    fn line(i: usize) -> Vec<u8> {
        // Lines of varying length, each self-describing so a split or interleaving would show.
        format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 97)).into_bytes()
    }

    #[test]
    fn rotation_under_concurrent_writers_keeps_every_line_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence.jsonl");
        let rotation = EvidenceRotation {
            max_bytes: Some(2048),
            keep: 1_000,
        };
        let dropped = Arc::new(Dropped::default());
        let w = Arc::new(EvidenceWriter::open(&path, rotation, Arc::clone(&dropped)).unwrap());
        let threads = 4;
        let per = 500;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..per {
                        w.write(&line(t * per + i));
                        if i % 100 == 0 {
                            w.flush();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        w.close();
        let mut seen = vec![false; threads * per];
        let all = files(dir.path());
        assert!(all.len() > 10, "expected many rotations, got {all:?}");
        for f in &all {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(
                text.len() <= 2048,
                "{} has {} bytes",
                f.display(),
                text.len()
            );
            assert!(text.ends_with('\n'), "{} ends mid-line", f.display());
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
                let n = usize::try_from(v["n"].as_u64().unwrap()).unwrap();
                assert_eq!(l.as_bytes(), line(n).as_slice());
                assert!(!seen[n], "line {n} written twice");
                seen[n] = true;
            }
        }
        assert!(seen.iter().all(|s| *s), "lost lines");
        assert_eq!(dropped.get(EVIDENCE), 0);
    }

    #[test]
    fn keep_bounds_the_number_of_files_and_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let rotation = EvidenceRotation {
            max_bytes: Some(100),
            keep: 2,
        };
        let w = EvidenceWriter::open(&path, rotation, Arc::new(Dropped::default())).unwrap();
        for i in 0..10 {
            w.write(format!("{i:0>59}").as_bytes()); // 60 bytes with the newline: one line per file
            w.flush();
        }
        w.close();
        let names: Vec<String> = files(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["e.jsonl", "e.jsonl.1", "e.jsonl.2"]);
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("e.jsonl"), format!("{:0>59}\n", 9));
        assert_eq!(read("e.jsonl.1"), format!("{:0>59}\n", 8));
        assert_eq!(read("e.jsonl.2"), format!("{:0>59}\n", 7));
    }

    #[test]
    fn a_line_longer_than_the_limit_gets_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let rotation = EvidenceRotation {
            max_bytes: Some(10),
            keep: 5,
        };
        let w = EvidenceWriter::open(&path, rotation, Arc::new(Dropped::default())).unwrap();
        w.write(b"abc");
        w.write(&[b'z'; 25]);
        w.write(b"def");
        w.close();
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("e.jsonl.2"), "abc\n");
        assert_eq!(read("e.jsonl.1"), format!("{}\n", "z".repeat(25)));
        assert_eq!(read("e.jsonl"), "def\n");
    }

    #[test]
    fn reopen_after_rename_starts_a_new_file_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let w = EvidenceWriter::open(
            &path,
            EvidenceRotation::default(),
            Arc::new(Dropped::default()),
        )
        .unwrap();
        w.write(b"1");
        w.flush();
        // logrotate: rename, then SIGHUP. Lines emitted in between land in the renamed file.
        std::fs::rename(&path, dir.path().join("e.jsonl.old")).unwrap();
        w.write(b"2");
        w.flush();
        w.reopen();
        w.write(b"3");
        w.close();
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("e.jsonl.old"), "1\n2\n");
        assert_eq!(read("e.jsonl"), "3\n");
    }

    #[test]
    fn a_line_past_the_pending_limit_is_dropped_whole_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let dropped = Arc::new(Dropped::default());
        let w =
            EvidenceWriter::open(&path, EvidenceRotation::default(), Arc::clone(&dropped)).unwrap();
        let big = vec![b'a'; EVIDENCE_PENDING_LIMIT / 2 + 1];
        {
            // A disk that does not keep up: the writer thread cannot drain while the sink is held.
            let _stalled = w.shared.sink.lock().unwrap();
            w.write(&big);
            w.write_with(|line| line.extend_from_slice(&big));
            w.write(b"small");
            assert_eq!(dropped.get(EVIDENCE), 1);
            let pending = w.shared.pending.lock().unwrap().len();
            assert_eq!(pending, big.len() + 1 + "small\n".len());
        }
        w.close();
        let written = std::fs::read(&path).unwrap();
        let lines: Vec<&[u8]> = written.split(|b| *b == b'\n').collect();
        assert_eq!(lines.len(), 3, "the big line, the small one, and the end");
        assert_eq!(lines[0], &big[..]);
        assert_eq!(lines[1], b"small");
    }
}
