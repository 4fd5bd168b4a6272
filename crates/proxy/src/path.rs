//! Which caller paths may be joined to the upstream base URL.
//!
//! # Why
//! The proxy forwards `/v1/*` with the operator's key. A path that climbs out of `/v1` once the upstream (or
//! any URL parser on the way, e.g. the WHATWG one, which treats `%2e` as `.`) normalises it reaches any other
//! path on the provider's host *with the key*: `GET /v1/%2e%2e/_control/requests` did exactly that. So a path is
//! refused (400, nothing sent) unless it is plainly a `/v1/…` path, and after joining, the URL is checked to
//! still start with the upstream base + `/v1/`.
//!
//! # What must never happen
//! - A `.`/`..` segment reaching the upstream, raw or percent-encoded in any case or depth (`%2e`, `%2E`,
//!   `%252e`), or hidden behind a path parameter (`..;x`).
//! - A separator the upstream might honour other than a raw `/`: `\`, `%5c`, `%2f`.
//! - An unparsable or control-character path being "repaired" by a parser and sent somewhere else.
//! - Echoing the path: it may carry user data. Errors say what kind of thing is wrong, never the path.

use retrybudget_policy::routes;

/// Why a path was refused (the message says what to do next; it never quotes the path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// Not under `/v1/`.
    NotV1,
    /// A `.` or `..` segment, raw or encoded.
    DotSegment,
    /// A backslash, raw or encoded, or an encoded `/`.
    Separator,
    /// An empty segment (`//`).
    EmptySegment,
    /// A `%` not followed by two hex digits, or an encoded `%` (double encoding).
    BadEscape,
    /// A control or non-ASCII byte, raw or encoded.
    BadByte,
    /// The joined URL left the upstream base + `/v1/` (a last check after the rules above).
    Escapes,
}

impl PathError {
    /// The error message for the caller.
    pub(crate) fn message(self) -> &'static str {
        match self {
            PathError::NotV1 => "the path must start with /v1/",
            PathError::DotSegment => {
                "the path contains a `.` or `..` segment (raw or percent-encoded); send the resolved path"
            }
            PathError::Separator => {
                "the path contains a backslash or an encoded slash (%2f, %5c); use plain `/` between segments"
            }
            PathError::EmptySegment => "the path contains an empty segment (`//`); remove it",
            PathError::BadEscape => {
                "the path contains a malformed or double percent-encoding (%25…); encode each byte once"
            }
            PathError::BadByte => {
                "the path contains a control or non-ASCII byte (raw or percent-encoded); use ASCII ids"
            }
            PathError::Escapes => "the path does not stay under /v1/ of the upstream once joined",
        }
    }
}

/// Checks the raw path of a request (without the query) against the rules in the module docs.
pub(crate) fn check(path: &str) -> Result<(), PathError> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(PathError::NotV1);
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        // Only the last segment may be empty (`/v1/models/` is a path some clients send).
        if segment.is_empty() && segments.peek().is_none() {
            break;
        }
        check_segment(segment)?;
    }
    Ok(())
}

fn check_segment(raw: &str) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    // The decoded segment is not kept: only its length, and its name (the part before any `;`) when that is
    // short enough to be `.` or `..`.
    let mut decoded = 0;
    let mut name_len = None;
    let mut head = [0u8; 2];
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let byte = if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let value = hex_pair(hex).ok_or(PathError::BadEscape)?;
            i += 3;
            match value {
                b'%' => return Err(PathError::BadEscape),
                b'/' | b'\\' => return Err(PathError::Separator),
                _ => value,
            }
        } else {
            i += 1;
            b
        };
        if byte == b'\\' {
            return Err(PathError::Separator);
        }
        if !(0x20..0x7f).contains(&byte) {
            return Err(PathError::BadByte);
        }
        if name_len.is_none() {
            if byte == b';' {
                name_len = Some(decoded);
            } else if let Some(slot) = head.get_mut(decoded) {
                *slot = byte;
            }
        }
        decoded += 1;
    }
    // `..;x` is `..` to servers that strip path parameters.
    let name = match name_len.unwrap_or(decoded) {
        n @ (1 | 2) => &head[..n],
        _ => &[][..],
    };
    if name == b"." || name == b".." {
        return Err(PathError::DotSegment);
    }
    if decoded == 0 {
        return Err(PathError::EmptySegment);
    }
    Ok(())
}

fn hex_pair(hex: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(hex[0])? * 16 + digit(hex[1])?) as u8)
}

/// The upstream base URL, parsed once: the last line of defence ([`Base::check_joined`]) runs on every `/v1/`
/// request and would otherwise re-parse the base each time.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    raw: String,
    url: url::Url,
    /// The base's path + `/v1/`: every joined path must start with it.
    prefix: String,
    /// The verdicts for the fixed route paths (chat completions, …), worked out once by the full check: a
    /// request on one of them, nearly every request, is checked by comparing its path, not by parsing a URL.
    /// The check is a function of the two strings alone, so this answers exactly as the full check would.
    known: Vec<(&'static str, Result<(), PathError>)>,
}

impl Base {
    /// `None` when `base` is not a URL: then every joined path is refused (fail closed).
    pub(crate) fn parse(base: &str) -> Option<Base> {
        let url = url::Url::parse(base).ok()?;
        let prefix = format!("{}/v1/", url.path().trim_end_matches('/'));
        let mut base = Base {
            raw: base.to_owned(),
            url,
            prefix,
            known: Vec::new(),
        };
        base.known = FIXED_ROUTES
            .iter()
            .map(|&path| (path, base.parse_and_check(path)))
            .collect();
        Some(base)
    }

    /// The base joined with `path_and_query` must parse, keep the base's scheme, host, port and user, carry no
    /// fragment, and its path must still start with the base's path + `/v1/`.
    pub(crate) fn check_joined(&self, path_and_query: &str) -> Result<(), PathError> {
        match self.known.iter().find(|(path, _)| *path == path_and_query) {
            Some((_, verdict)) => *verdict,
            None => self.parse_and_check(path_and_query),
        }
    }

    fn parse_and_check(&self, path_and_query: &str) -> Result<(), PathError> {
        let mut text = String::with_capacity(self.raw.len() + path_and_query.len());
        text.push_str(&self.raw);
        text.push_str(path_and_query);
        let joined = url::Url::parse(&text).map_err(|_| PathError::Escapes)?;
        let base = &self.url;
        let same_origin = joined.scheme() == base.scheme()
            && joined.host_str() == base.host_str()
            && joined.port_or_known_default() == base.port_or_known_default()
            && joined.username() == base.username()
            && joined.fragment().is_none();
        if same_origin && joined.path().starts_with(&self.prefix) {
            Ok(())
        } else {
            Err(PathError::Escapes)
        }
    }
}

/// The route templates that are request paths as they stand (no `{placeholder}`).
const FIXED_ROUTES: [&str; 6] = [
    routes::CHAT_COMPLETIONS,
    routes::COMPLETIONS,
    routes::EMBEDDINGS,
    routes::RESPONSES,
    routes::MODERATIONS,
    routes::MODELS,
];

/// [`Base::check_joined`] for a base given as text (tests and fuzzing).
pub(crate) fn check_joined(base: &str, path_and_query: &str) -> Result<(), PathError> {
    Base::parse(base)
        .ok_or(PathError::Escapes)?
        .check_joined(path_and_query)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ordinary_paths_pass() {
        for ok in [
            "/v1/chat/completions",
            "/v1/models",
            "/v1/models/",
            "/v1/models/gpt-4o-mini",
            "/v1/models/ft:gpt-4o:org:name:id",
            "/v1/files/file-abc123/content",
            "/v1/models/a%20b",
            "/v1/models/a.b",
            "/v1/models/...",
            "/v1/models/a..b",
            // Path parameters: only the name before the first `;` is checked for a dot segment.
            "/v1/models/.a",
            "/v1/models/;v=1",
            "/v1/models/a;..",
            "/v1/models/..a;b",
            "/v1/models/%2e%2e%2e;x",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    /// Every encoding of a dot segment, a separator or an escape we could think of; the count is reported in
    /// SECURITY.md.
    #[test]
    fn every_escape_variant_is_refused() {
        let cases: &[(&str, PathError)] = &[
            ("/v2/models", PathError::NotV1),
            ("/v1", PathError::NotV1),
            ("/", PathError::NotV1),
            ("v1/models", PathError::NotV1),
            ("/V1/models", PathError::NotV1),
            ("/%76%31/models", PathError::NotV1),
            ("/v1/..", PathError::DotSegment),
            ("/v1/../_control/requests", PathError::DotSegment),
            ("/v1/./models", PathError::DotSegment),
            ("/v1/models/.", PathError::DotSegment),
            ("/v1/%2e%2e/_control/requests", PathError::DotSegment),
            ("/v1/%2E%2E/_control/requests", PathError::DotSegment),
            ("/v1/%2e./x", PathError::DotSegment),
            ("/v1/.%2e/x", PathError::DotSegment),
            ("/v1/%2e/x", PathError::DotSegment),
            ("/v1/..;/x", PathError::DotSegment),
            ("/v1/..;jsessionid=1/x", PathError::DotSegment),
            ("/v1/%2e%2e%3b/x", PathError::DotSegment),
            ("/v1/.;x/y", PathError::DotSegment),
            ("/v1/%2e;/y", PathError::DotSegment),
            ("/v1/%252e%252e/x", PathError::BadEscape),
            ("/v1/%25252e/x", PathError::BadEscape),
            ("/v1/%25/x", PathError::BadEscape),
            ("/v1/%2/x", PathError::BadEscape),
            ("/v1/%zz/x", PathError::BadEscape),
            ("/v1/x%", PathError::BadEscape),
            ("/v1/x%2", PathError::BadEscape),
            ("/v1/..%2fx", PathError::Separator),
            ("/v1/%2e%2e%2f_control", PathError::Separator),
            ("/v1/%2f_control", PathError::Separator),
            ("/v1/%2F_control", PathError::Separator),
            ("/v1/%5c_control", PathError::Separator),
            ("/v1/%5C_control", PathError::Separator),
            ("/v1/..\\_control", PathError::Separator),
            ("/v1/\\..\\_control", PathError::Separator),
            ("/v1/a\\b", PathError::Separator),
            ("/v1/%2e%2e%5c_control", PathError::Separator),
            ("/v1//models", PathError::EmptySegment),
            ("/v1///_control", PathError::EmptySegment),
            ("/v1/%00/x", PathError::BadByte),
            ("/v1/a%0d%0aX-Injected:1", PathError::BadByte),
            ("/v1/a%09b", PathError::BadByte),
            ("/v1/%7f", PathError::BadByte),
            ("/v1/%c0%ae%c0%ae/x", PathError::BadByte),
            ("/v1/%e0%80%ae/x", PathError::BadByte),
            ("/v1/%ef%bc%8e%ef%bc%8e/x", PathError::BadByte),
            ("/v1/\u{ff0e}\u{ff0e}/x", PathError::BadByte),
        ];
        for (path, expected) in cases {
            assert_eq!(check(path), Err(*expected), "{path}");
        }
    }

    #[test]
    fn the_joined_url_stays_under_the_base() {
        let base = "http://127.0.0.1:9000";
        assert_eq!(check_joined(base, "/v1/models?limit=2"), Ok(()));
        assert_eq!(
            check_joined("https://gw.example/openai", "/v1/models"),
            Ok(())
        );
        for bad in [
            "/v1/../x",
            "/v1/%2e%2e/x",
            "/v1/%2E./x",
            "/x/v1/",
            "@evil.example/v1/",
            ".evil.example/v1/",
            ":8080/v1/",
            "/v1#/../../x",
        ] {
            assert_eq!(check_joined(base, bad), Err(PathError::Escapes), "{bad}");
        }
        assert_eq!(
            check_joined("https://gw.example/openai", "/v1/../../x"),
            Err(PathError::Escapes)
        );
    }

    /// The remembered verdicts of the fixed routes are those the full check gives, for bases where they pass
    /// and bases where they must not (a base whose own path makes every joined path escape its `/v1/`).
    #[test]
    fn remembered_verdicts_match_the_full_check() {
        for base in [
            "http://127.0.0.1:8080",
            "https://gw.example/openai/",
            "https://gw.example/a?q=1",
            "https://gw.example/a#frag",
        ] {
            let b = Base::parse(base).unwrap();
            assert_eq!(b.known.len(), FIXED_ROUTES.len());
            for path in FIXED_ROUTES {
                assert_eq!(
                    b.check_joined(path),
                    b.parse_and_check(path),
                    "{base} {path}"
                );
            }
        }
        let escaping = Base::parse("https://gw.example/a?q=1").unwrap();
        assert_eq!(
            escaping.check_joined(routes::CHAT_COMPLETIONS),
            Err(PathError::Escapes)
        );
        let ok = Base::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(ok.check_joined(routes::CHAT_COMPLETIONS), Ok(()));
    }
}
