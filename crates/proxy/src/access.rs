//! Who may use the provider key behind the proxy's port.
//!
//! # Why
//! `retrybudget proxy --api-key-env` puts the organisation's key behind a local port. Anything that can make
//! a request to that port spends the key — including a web page the operator visits: through DNS rebinding a
//! page on `attacker.example` reaches `127.0.0.1:8787` under its own name, and a `text/plain` POST needs no
//! CORS preflight. So, before anything else happens to a request:
//! - its `Host` (and an absolute-form target's authority) must be a loopback name or address, the listen
//!   address, or a name the operator allowed (`--allowed-host`) → else 403;
//! - a request carrying `Origin` (every cross-origin browser request does) is refused unless the operator
//!   listed that origin (`--allowed-origin`) → 403; there is no CORS by default;
//! - with `--caller-token-env`, callers must present `Authorization: Bearer <token>` (compared in constant
//!   time) → else 401; the token is removed before forwarding;
//! - a `POST`/`PUT`/`PATCH` body must be declared `application/json` → else 415 (no "simple" browser request
//!   can carry it without a preflight).
//!
//! The provider key is then put into the configured header ([`Access::api_key_header`]), replacing whatever
//! credential the caller sent, so a caller never chooses which key the upstream sees.
//!
//! # What must never happen
//! - A refused request reaching the upstream, or any part of it (host, origin, token) being logged, echoed
//!   or recorded: refusals are counted by a fixed reason word only.
//! - A token comparison whose time depends on where the first differing byte is.
//! - The key or the token appearing in `Debug` output (they are [`SecretString`]s; header values carrying
//!   them are marked sensitive).

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, request::Parts};
use secrecy::{ExposeSecret as _, SecretString};
use subtle::ConstantTimeEq as _;

/// Who may use the proxy, and how the provider key is sent.
#[derive(Debug, Clone)]
pub struct Access {
    /// Extra `Host` names (or `name:port`) accepted besides loopback names/addresses and the listen address.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) whose browser requests are accepted, with CORS headers; none by
    /// default.
    pub allowed_origins: Vec<String>,
    /// When set, callers must send `Authorization: Bearer <token>`.
    pub caller_token: Option<SecretString>,
    /// The provider key, injected into every forwarded request (replacing the caller's credential).
    pub api_key: Option<SecretString>,
    /// The header carrying the key: `authorization` (as `Bearer <key>`, the default) or e.g. `api-key`
    /// (the bare key, as Azure OpenAI expects).
    pub api_key_header: HeaderName,
    /// The address the listener is bound to (set by [`crate::serve`]); its IP is an accepted `Host`.
    pub listen_addr: Option<SocketAddr>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            caller_token: None,
            api_key: None,
            api_key_header: header::AUTHORIZATION,
            listen_addr: None,
        }
    }
}

/// Why a request was refused: the reason word is the `reason` label of `retrybudget.proxy.rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 403: `Host` not allowed (DNS rebinding).
    Host,
    /// 403: an `Origin` not listed.
    Origin,
    /// 401: caller token missing or wrong.
    Unauthorized,
    /// 415: a body-carrying method without `application/json`.
    ContentType,
    /// 400: a path that could leave `/v1/` (see [`crate::path`]).
    Path,
    /// 408: the body did not arrive within the body-read timeout.
    BodyTimeout,
    /// 503: too many requests in flight.
    Overloaded,
}

impl Refusal {
    /// The bounded `reason` label value.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Host => "host",
            Refusal::Origin => "origin",
            Refusal::Unauthorized => "unauthorized",
            Refusal::ContentType => "content_type",
            Refusal::Path => "path",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::Overloaded => "overloaded",
        }
    }
}

// === impl Access ===

impl Access {
    /// Checks where a request comes from: `Host` and `Origin`. `Ok` carries the allowed origin, if any (for
    /// CORS headers).
    pub(crate) fn check_site(&self, parts: &Parts) -> Result<Option<HeaderValue>, Refusal> {
        self.check_host(parts)?;
        self.check_origin(&parts.headers)
    }

    /// Checks the caller: its token (if one is required) and, for methods with a body, the content type.
    pub(crate) fn check_caller(&self, parts: &Parts) -> Result<(), Refusal> {
        self.check_token(&parts.headers)?;
        if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
            && !is_json(&parts.headers)
        {
            return Err(Refusal::ContentType);
        }
        Ok(())
    }

    /// Both checks, in the middleware's order.
    #[cfg(test)]
    fn check(&self, parts: &Parts) -> Result<Option<HeaderValue>, Refusal> {
        let origin = self.check_site(parts)?;
        self.check_caller(parts)?;
        Ok(origin)
    }

    fn check_host(&self, parts: &Parts) -> Result<(), Refusal> {
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err(Refusal::Host);
        }
        // A request without `Host` (HTTP/1.0) is not a browser's: browsers always send it.
        if let Some(host) = host {
            let host = host.to_str().map_err(|_| Refusal::Host)?;
            if !self.host_allowed(host) {
                return Err(Refusal::Host);
            }
        }
        // An absolute-form target (`GET http://name/v1/…`) names a host too.
        if let Some(authority) = parts.uri.authority()
            && !self.host_allowed(authority.as_str())
        {
            return Err(Refusal::Host);
        }
        Ok(())
    }

    /// Whether a `Host` value (`name`, `name:port`, `[v6]:port`) is allowed.
    pub(crate) fn host_allowed(&self, value: &str) -> bool {
        let value = value.trim();
        // Lower-cased only when it has capitals (a copy per request otherwise).
        let lower;
        let value = if value.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = value.to_ascii_lowercase();
            lower.as_str()
        } else {
            value
        };
        if value.contains('@') {
            return false;
        }
        let Some(name) = host_name(value) else {
            return false;
        };
        if name == "localhost" {
            return true;
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            if ip.is_loopback() {
                return true;
            }
            if let Some(listen) = self.listen_addr
                && !listen.ip().is_unspecified()
                && listen.ip() == ip
            {
                return true;
            }
        }
        self.allowed_hosts.iter().any(|allowed| {
            let allowed = allowed.trim().to_ascii_lowercase();
            allowed == value || allowed == name
        })
    }

    fn check_origin(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, Refusal> {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        let Some(origin) = origins.next() else {
            return Ok(None);
        };
        if origins.next().is_some() {
            return Err(Refusal::Origin);
        }
        let text = origin.to_str().map_err(|_| Refusal::Origin)?;
        let text = text.trim().trim_end_matches('/').to_ascii_lowercase();
        let listed = self
            .allowed_origins
            .iter()
            .any(|o| o.trim().trim_end_matches('/').eq_ignore_ascii_case(&text));
        if listed {
            Ok(Some(origin.clone()))
        } else {
            Err(Refusal::Origin)
        }
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(expected) = &self.caller_token else {
            return Ok(());
        };
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(Refusal::Unauthorized);
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
            .ok_or(Refusal::Unauthorized)?;
        if bool::from(presented.ct_eq(expected.expose_secret().as_bytes())) {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        }
    }

    /// Replaces the caller's credentials in the headers to forward: the caller token never leaves, and with
    /// a provider key, the key goes in [`Access::api_key_header`] whatever the caller sent.
    pub(crate) fn set_credentials(&self, headers: &mut HeaderMap) {
        if self.caller_token.is_some() {
            headers.remove(header::AUTHORIZATION);
        }
        let Some(key) = &self.api_key else {
            return;
        };
        headers.remove(header::AUTHORIZATION);
        headers.remove(&self.api_key_header);
        let text = if self.api_key_header == header::AUTHORIZATION {
            ["Bearer ", key.expose_secret()].concat()
        } else {
            key.expose_secret().to_owned()
        };
        // A key that is not a valid header value was refused at startup; nothing is sent in its place.
        if let Ok(mut value) = HeaderValue::from_str(&text) {
            value.set_sensitive(true);
            headers.insert(self.api_key_header.clone(), value);
        }
    }

    /// Whether a provider key is injected on an address other hosts can reach, with nothing to tell callers
    /// apart: the configuration `retrybudget proxy` refuses to start with.
    pub fn exposes_key(&self, listen: SocketAddr) -> bool {
        self.api_key.is_some() && self.caller_token.is_none() && !listen.ip().is_loopback()
    }
}

/// The host part of a `Host` value: `name`, `1.2.3.4`, or `[v6]` (brackets kept); `None` if malformed.
fn host_name(value: &str) -> Option<&str> {
    if value.starts_with('[') {
        let end = value.find(']')?;
        let rest = &value[end + 1..];
        if !(rest.is_empty() || valid_port(rest.strip_prefix(':')?)) {
            return None;
        }
        return Some(&value[..=end]);
    }
    let (name, port) = match value.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (value, None),
    };
    if name.is_empty() || port.is_some_and(|p| !valid_port(p)) {
        return None;
    }
    Some(name)
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// `content-type: application/json` (any parameters, any case).
fn is_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    value.to_str().is_ok_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::Request;

    fn parts(build: http::request::Builder) -> Parts {
        build.body(()).unwrap().into_parts().0
    }

    fn post(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::post("/v1/chat/completions");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        parts(b)
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn loopback_and_listen_hosts_pass_others_do_not() {
        let access = Access {
            allowed_hosts: vec!["proxy.internal".into(), "gw:9000".into()],
            listen_addr: Some("10.1.2.3:8787".parse().unwrap()),
            ..Access::default()
        };
        for ok in [
            "localhost",
            "LOCALHOST:8787",
            "127.0.0.1",
            "127.0.0.1:8787",
            "127.9.9.9:1",
            "[::1]",
            "[::1]:8787",
            "10.1.2.3:8787",
            "proxy.internal",
            "proxy.internal:1234",
            "gw:9000",
        ] {
            assert!(access.host_allowed(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8787",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "localhost@attacker.example",
            "user@127.0.0.1",
            "gw:9001",
            "10.1.2.4:8787",
            "0.0.0.0:8787",
            "[::ffff:8.8.8.8]:80",
            "",
            ":8787",
            "localhost:",
            "localhost:80x",
            "[::1",
            "[::1]x",
        ] {
            assert!(!access.host_allowed(bad), "{bad}");
        }
        // An unspecified listen address allows no extra IP.
        let any = Access {
            listen_addr: Some("0.0.0.0:8787".parse().unwrap()),
            ..Access::default()
        };
        assert!(!any.host_allowed("0.0.0.0:8787"));
    }

    #[test]
    fn host_origin_token_and_content_type_are_checked() {
        let access = Access::default();
        assert_eq!(
            access.check(&post(&[JSON, ("host", "localhost:1")])),
            Ok(None)
        );
        assert_eq!(access.check(&post(&[JSON])), Ok(None));
        assert_eq!(
            access.check(&post(&[JSON, ("host", "attacker.example:8787")])),
            Err(Refusal::Host)
        );
        assert_eq!(
            access.check(&post(&[JSON, ("host", "localhost"), ("host", "evil")])),
            Err(Refusal::Host)
        );
        assert_eq!(
            access.check(&parts(Request::get("http://attacker.example/v1/models"))),
            Err(Refusal::Host)
        );
        assert_eq!(
            access.check(&post(&[JSON, ("origin", "http://localhost:8787")])),
            Err(Refusal::Origin),
            "no CORS by default, even for a loopback origin"
        );
        assert_eq!(
            access.check(&post(&[JSON, ("origin", "null")])),
            Err(Refusal::Origin)
        );
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/json-patch+json",
        ] {
            assert_eq!(
                access.check(&post(&[("content-type", ct)])),
                Err(Refusal::ContentType),
                "{ct}"
            );
        }
        assert_eq!(access.check(&post(&[])), Err(Refusal::ContentType));
        assert_eq!(
            access.check(&post(&[(
                "content-type",
                "Application/JSON; charset=utf-8"
            )])),
            Ok(None)
        );
        assert_eq!(
            access.check(&parts(Request::get("/v1/models"))),
            Ok(None),
            "GET needs no content type"
        );

        let listed = Access {
            allowed_origins: vec!["https://app.example".into()],
            ..Access::default()
        };
        assert!(
            listed
                .check(&post(&[JSON, ("origin", "https://app.example")]))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            listed.check(&post(&[JSON, ("origin", "https://app.example.evil")])),
            Err(Refusal::Origin)
        );
    }

    #[test]
    fn caller_token_is_required_and_replaced_by_the_key() {
        let access = Access {
            caller_token: Some(SecretString::from("tok-123")),
            api_key: Some(SecretString::from("sk-provider")),
            ..Access::default()
        };
        assert_eq!(
            access.check(&post(&[JSON, ("authorization", "Bearer tok-123")])),
            Ok(None)
        );
        for bad in [
            "Bearer tok-12",
            "Bearer tok-1234",
            "tok-123",
            "Basic tok-123",
            "Bearer ",
        ] {
            assert_eq!(
                access.check(&post(&[JSON, ("authorization", bad)])),
                Err(Refusal::Unauthorized),
                "{bad}"
            );
        }
        assert_eq!(access.check(&post(&[JSON])), Err(Refusal::Unauthorized));

        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok-123"),
        );
        access.set_credentials(&mut headers);
        let sent = headers.get(header::AUTHORIZATION).unwrap();
        assert_eq!(sent, "Bearer sk-provider");
        assert!(sent.is_sensitive());
        assert!(!format!("{access:?}").contains("sk-provider"));
        assert!(!format!("{access:?}").contains("tok-123"));
    }

    #[test]
    fn the_key_header_is_configurable() {
        let azure = Access {
            api_key: Some(SecretString::from("azure-key")),
            api_key_header: HeaderName::from_static("api-key"),
            ..Access::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer caller"),
        );
        headers.insert("api-key", HeaderValue::from_static("caller"));
        azure.set_credentials(&mut headers);
        assert_eq!(headers.get("api-key").unwrap(), "azure-key");
        assert!(headers.get(header::AUTHORIZATION).is_none());

        // Without a key, the caller's own credential goes through (the proxy holds none).
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer caller"),
        );
        Access::default().set_credentials(&mut headers);
        assert_eq!(headers.get(header::AUTHORIZATION).unwrap(), "Bearer caller");
    }

    #[test]
    fn a_key_on_a_reachable_address_needs_a_caller_token() {
        let mut access = Access {
            api_key: Some(SecretString::from("k")),
            ..Access::default()
        };
        assert!(!access.exposes_key("127.0.0.1:8787".parse().unwrap()));
        assert!(!access.exposes_key("[::1]:8787".parse().unwrap()));
        assert!(access.exposes_key("0.0.0.0:8787".parse().unwrap()));
        assert!(access.exposes_key("10.0.0.5:8787".parse().unwrap()));
        access.caller_token = Some(SecretString::from("t"));
        assert!(!access.exposes_key("0.0.0.0:8787".parse().unwrap()));
    }
}
