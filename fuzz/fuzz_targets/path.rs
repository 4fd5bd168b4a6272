//! The proxy's path normalisation rules (`/v1/*` only; no `.`/`..` segments, backslashes, encoded separators,
//! double or malformed escapes, control or non-ASCII bytes — raw or percent-encoded). For any path:
//! - the checks never panic (on what parses as a request line's path and query, as hyper parses it);
//! - a path they accept decodes (one level of `%XX`) to segments that are neither `.` nor `..` and contain no
//!   `/`, `\` or control byte (an independent decoder, not the proxy's);
//! - an accepted path joined with the upstream base (with and without a base path) stays under `<base>/v1/`
//!   (the proxy's last check agrees with its rules).

#![no_main]

use libfuzzer_sys::fuzz_target;
use retrybudget_proxy::fuzzing::{check_joined, check_path};

fn decode(segment: &str) -> Option<Vec<u8>> {
    let b = segment.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // only what a request line can carry reaches the proxy: parse it as hyper does
    let Ok(pq) = text.parse::<http::uri::PathAndQuery>() else {
        return;
    };
    let (path_only, path) = (pq.path(), pq.as_str());
    let Ok(()) = check_path(path_only) else {
        return;
    };
    let rest = path_only
        .strip_prefix("/v1/")
        .expect("accepted paths start with /v1/");
    for segment in rest.split('/') {
        let decoded = decode(segment).expect("accepted escapes decode");
        assert!(decoded != b"." && decoded != b"..", "{path:?}");
        assert!(
            !decoded
                .iter()
                .any(|&c| c == b'/' || c == b'\\' || c < 0x20 || c == 0x7f),
            "{path:?}"
        );
    }
    for base in [
        "https://api.example.com",
        "https://gw.example.com:8443/openai",
    ] {
        assert_eq!(check_joined(base, path), Ok(()), "{base} + {path:?}");
    }
});
