//! `url.full` redaction: URLs go into spans, and URLs can carry credentials.
//!
//! Userinfo is removed and the values of query parameters that commonly hold secrets are replaced with
//! `REDACTED` (the semantic conventions' recommendation). Anything that does not parse as a URL is not exported.

/// Query parameters whose values are replaced.
pub const SENSITIVE_QUERY_KEYS: [&str; 8] = [
    "key",
    "api-key",
    "api_key",
    "apikey",
    "sig",
    "signature",
    "token",
    "access_token",
];

/// The URL safe to record as `url.full`, or `None` if it does not parse.
pub fn redact_url(raw: &str) -> Option<String> {
    let mut url = url::Url::parse(raw).ok()?;
    if !url.username().is_empty() || url.password().is_some() {
        url.set_username("").ok()?;
        url.set_password(None).ok()?;
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = SENSITIVE_QUERY_KEYS
                    .iter()
                    .any(|s| k.eq_ignore_ascii_case(s));
                (
                    k.into_owned(),
                    if secret {
                        "REDACTED".to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.set_fragment(None);
    Some(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_userinfo_and_secret_query_values() {
        assert_eq!(
            redact_url(
                "https://user:pw@api.example.com/v1/chat/completions?api-key=sk-123&x=1#frag"
            )
            .as_deref(),
            Some("https://api.example.com/v1/chat/completions?api-key=REDACTED&x=1")
        );
        assert_eq!(
            redact_url("http://127.0.0.1:9/v1/chat/completions").as_deref(),
            Some("http://127.0.0.1:9/v1/chat/completions")
        );
        assert_eq!(redact_url("not a url"), None);
    }
}
