//! Server-sent-event lines, split incrementally as chunks arrive: pure functions, no I/O.
//!
//! The SSE spec ends a line with `\r\n`, `\n` or a bare `\r`; all three are recognised, also when a `\r\n` pair
//! is split across two chunks. Only the current line is held, and at most [`MAX_LINE`] bytes of it: a longer
//! line is skipped whole (it cannot be the `[DONE]` terminator, and facts from a truncated JSON chunk would be
//! wrong). This module must never allocate beyond that bound, whatever the upstream sends, and never panic.
//! It is public so the fuzz targets can drive it.

/// Longest SSE line kept for scanning; longer lines are skipped.
pub const MAX_LINE: usize = 1 << 20;

/// Splits a byte stream into SSE lines.
#[derive(Debug, Default, Clone)]
pub struct SseLines {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting this one belongs to that line end.
    after_cr: bool,
    /// The current line passed [`MAX_LINE`] and will be skipped.
    overlong: bool,
}

/// What one SSE line says, as far as evidence cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseLine<'a> {
    /// `data: [DONE]`: the stream ended normally.
    Done,
    /// `data: …` with this payload (leading and trailing whitespace trimmed).
    Data(&'a [u8]),
    /// A comment, an `event:`/`id:`/`retry:` field or an empty line.
    Other,
}

impl SseLines {
    /// Feeds one chunk; calls `on_line` for every complete line (without its line ending).
    pub fn feed(&mut self, chunk: &[u8], mut on_line: impl FnMut(&[u8])) {
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.push(&rest[..end]);
            self.emit(&mut on_line);
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => rest = &rest[end + 2..],
                    Some(_) => rest = &rest[end + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[end + 1..];
            }
        }
        self.push(rest);
    }

    /// The stream ended: emits a last line that had no line ending.
    pub fn finish(&mut self, mut on_line: impl FnMut(&[u8])) {
        if !self.line.is_empty() || self.overlong {
            self.emit(&mut on_line);
        }
        self.after_cr = false;
    }

    /// Bytes held for the current line (never more than [`MAX_LINE`]).
    pub fn held(&self) -> usize {
        self.line.len()
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.overlong {
            return;
        }
        if self.line.len() + bytes.len() > MAX_LINE {
            self.overlong = true;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn emit(&mut self, on_line: &mut impl FnMut(&[u8])) {
        if !std::mem::take(&mut self.overlong) {
            on_line(&self.line);
        }
        self.line.clear();
    }
}

/// Classifies one SSE line.
pub fn classify(line: &[u8]) -> SseLine<'_> {
    let Some(data) = line.strip_prefix(b"data:") else {
        return SseLine::Other;
    };
    let data = data.trim_ascii();
    if data == b"[DONE]" {
        SseLine::Done
    } else {
        SseLine::Data(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut sse = SseLines::default();
        let mut out = Vec::new();
        for c in chunks {
            sse.feed(c, |l| out.push(l.to_vec()));
        }
        sse.finish(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn every_line_ending_is_recognised() {
        let want: Vec<Vec<u8>> = vec![b"data: a".to_vec(), b"".to_vec(), b"data: [DONE]".to_vec()];
        for ending in ["\n", "\r\n", "\r"] {
            let text = format!("data: a{ending}{ending}data: [DONE]{ending}");
            assert_eq!(lines(&[text.as_bytes()]), want, "{ending:?}");
            // Split at every position, including between `\r` and `\n`.
            for cut in 0..text.len() {
                let (a, b) = text.as_bytes().split_at(cut);
                assert_eq!(lines(&[a, b]), want, "{ending:?} cut at {cut}");
            }
        }
        assert_eq!(lines(&[b"data: x"]), vec![b"data: x".to_vec()], "no ending");
    }

    #[test]
    fn overlong_lines_are_skipped_and_bounded() {
        let mut sse = SseLines::default();
        let big = vec![b'x'; MAX_LINE / 2 + 1];
        let mut out = Vec::new();
        sse.feed(b"data: ", |l| out.push(l.to_vec()));
        sse.feed(&big, |l| out.push(l.to_vec()));
        sse.feed(&big, |l| out.push(l.to_vec()));
        assert!(sse.held() <= MAX_LINE);
        sse.feed(b"\ndata: [DONE]\n", |l| out.push(l.to_vec()));
        assert_eq!(out, vec![b"data: [DONE]".to_vec()]);
    }

    #[test]
    fn classify_lines() {
        assert_eq!(classify(b"data: [DONE] "), SseLine::Done);
        assert_eq!(classify(b"data:{\"a\":1}"), SseLine::Data(b"{\"a\":1}"));
        assert_eq!(classify(b": keep-alive"), SseLine::Other);
        assert_eq!(classify(b"event: x"), SseLine::Other);
    }
}
