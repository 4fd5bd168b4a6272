//! Which requests may be sent more than once: the rule that comes *before* classification.
//!
//! # Why
//! The classification of `retry-semantics.md` says which failures are worth another attempt. It assumes that
//! sending the same request twice is harmless. For generation routes it is (a second completion costs tokens,
//! but creates nothing), and for `GET`/`HEAD` it is by definition. For the rest of an OpenAI-compatible API it
//! is not: a `POST /v1/files`, `/v1/batches` or `/v1/fine_tuning/jobs` that timed out may well have created
//! the resource, and a retry creates it again. So a request outside those routes and methods gets exactly one
//! attempt, unless the caller made it repeatable by sending an `Idempotency-Key` (which the upstream uses to
//! answer a repeat with the first result).
//!
//! This refines `retry-semantics.md` §1 (and wins over it, as issue 8 says): a transient failure of a
//! request that is not repeatable ends the call after its one attempt. The contract's decision names stay:
//! such a request has an allowance of one attempt, so a transient failure ends it with
//! `stop_attempts_exhausted` and the outcome `failed_without_retry`.
//!
//! # What must never happen
//! - A request that can create something upstream being sent twice without the caller's `Idempotency-Key`.
//! - This rule *adding* retries: it only ever takes them away; the classification still decides the rest.

use crate::routes;

/// The routes (under `/v1`) whose requests may be repeated whatever their method: they generate output and
/// create no resource.
pub const GENERATION_ROUTES: [&str; 5] = [
    routes::CHAT_COMPLETIONS,
    routes::COMPLETIONS,
    routes::EMBEDDINGS,
    routes::RESPONSES,
    routes::MODERATIONS,
];

/// The header by which a caller makes any request repeatable.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether a request may be attempted more than once.
///
/// `method` is the HTTP method (`"GET"`, `"POST"`, … as sent, case-sensitive as HTTP methods are), `path` the
/// request path without its query (e.g. `/v1/chat/completions`), `has_idempotency_key` whether the caller
/// sent a non-empty `Idempotency-Key`.
///
/// ```
/// use retrybudget_policy::repeatable::is_repeatable;
///
/// assert!(is_repeatable("POST", "/v1/chat/completions", false));
/// assert!(is_repeatable("GET", "/v1/files/file-abc/content", false));
/// assert!(!is_repeatable("POST", "/v1/files", false));
/// assert!(is_repeatable("POST", "/v1/files", true));
/// ```
pub fn is_repeatable(method: &str, path: &str, has_idempotency_key: bool) -> bool {
    has_idempotency_key
        || matches!(method, "GET" | "HEAD")
        || (method == "POST" && GENERATION_ROUTES.contains(&path.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_routes_and_safe_methods_are_repeatable() {
        for route in GENERATION_ROUTES {
            assert!(is_repeatable("POST", route, false), "{route}");
            assert!(
                is_repeatable("POST", &format!("{route}/"), false),
                "{route}/"
            );
        }
        for path in [
            "/v1/models",
            "/v1/models/gpt-4o",
            "/v1/files/f-1/content",
            "/v1/batches",
        ] {
            assert!(is_repeatable("GET", path, false), "GET {path}");
            assert!(is_repeatable("HEAD", path, false), "HEAD {path}");
        }
    }

    #[test]
    fn everything_else_is_sent_once_without_an_idempotency_key() {
        let once = [
            ("POST", "/v1/files"),
            ("POST", "/v1/batches"),
            ("POST", "/v1/batches/batch_1/cancel"),
            ("POST", "/v1/fine_tuning/jobs"),
            ("POST", "/v1/images/generations"),
            ("POST", "/v1/audio/speech"),
            ("POST", "/v1/uploads"),
            ("POST", "/v1/vector_stores"),
            ("POST", "/v1/chat/completions/chatcmpl-1"),
            ("POST", "/v1/responses/resp_1/cancel"),
            ("POST", "/v1/chat/completions/../files"),
            ("DELETE", "/v1/files/file-1"),
            ("DELETE", "/v1/chat/completions"),
            ("PUT", "/v1/chat/completions"),
            ("PATCH", "/v1/chat/completions"),
            ("OPTIONS", "/v1/models"),
            ("get", "/v1/models"),
            ("PROPFIND", "/v1/models"),
        ];
        for (method, path) in once {
            assert!(!is_repeatable(method, path, false), "{method} {path}");
            assert!(
                is_repeatable(method, path, true),
                "{method} {path} with a key"
            );
        }
    }
}
