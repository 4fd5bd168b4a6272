//! The OpenAI-compatible route templates: the low-cardinality `url.template` / `http.route` values, written
//! once here for every crate (the client's and the proxy's routes, the repeatable-request rule, the GenAI
//! operation of a route, the middleware's route list). A template never carries an id or user data: a path
//! such as `/v1/models/gpt-x` is recorded as [`MODEL`].

/// Chat completions, streaming or not.
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// The name of a chat completion's HTTP span (see [`http_span_name`]).
const CHAT_COMPLETIONS_SPAN_NAME: &str = "POST /v1/chat/completions";

/// The name of an HTTP span, `{method} {route}` (the proxy's SERVER span and each attempt's CLIENT span): a
/// static string for a chat completion, so the common case builds nothing per request.
pub fn http_span_name(method: &str, route: &str) -> std::borrow::Cow<'static, str> {
    if method == "POST" && route == CHAT_COMPLETIONS {
        CHAT_COMPLETIONS_SPAN_NAME.into()
    } else {
        [method, " ", route].concat().into()
    }
}
/// Legacy text completions.
pub const COMPLETIONS: &str = "/v1/completions";
/// Embeddings.
pub const EMBEDDINGS: &str = "/v1/embeddings";
/// The Responses API.
pub const RESPONSES: &str = "/v1/responses";
/// Moderations.
pub const MODERATIONS: &str = "/v1/moderations";
/// The model list.
pub const MODELS: &str = "/v1/models";
/// One model, whatever its id.
pub const MODEL: &str = "/v1/models/{model}";
/// Any other path under `/v1/`.
pub const OTHER: &str = "/v1/{other}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_chat_span_name_is_method_and_route() {
        assert_eq!(
            CHAT_COMPLETIONS_SPAN_NAME,
            format!("POST {CHAT_COMPLETIONS}")
        );
        assert_eq!(
            http_span_name("POST", CHAT_COMPLETIONS),
            CHAT_COMPLETIONS_SPAN_NAME
        );
        assert_eq!(http_span_name("GET", MODELS), "GET /v1/models");
        assert_eq!(
            http_span_name("GET", CHAT_COMPLETIONS),
            "GET /v1/chat/completions"
        );
    }
}
