//! What evidence may keep of a response: identifiers and counts, read without building a JSON tree and
//! bounded whatever the upstream sends (the upstream is not trusted; its values are exported).

use std::borrow::Cow;

use retrybudget_telemetry::ResponseFacts;

/// The parts of a chat completion (or of one stream chunk) that evidence may record: identifiers and counts.
/// Deserialising into this skips every other field — message content included — without building a tree.
#[derive(serde::Deserialize)]
pub(crate) struct Facts<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    choices: Vec<ChoiceFacts<'a>>,
    #[serde(default)]
    usage: Option<UsageFacts>,
}

#[derive(serde::Deserialize)]
struct ChoiceFacts<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct UsageFacts {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// Most choices whose finish reason a call keeps (`n` is small in practice; an upstream must not make it grow).
pub const MAX_CHOICES: usize = 16;
/// Longest response id, model or finish reason kept; longer or non-plain values are dropped.
const MAX_FACT_LEN: usize = 128;

/// A fact from the upstream, kept only if short and plain (it is exported, and the upstream is not trusted).
fn plain(s: Cow<'_, str>) -> Option<String> {
    (s.len() <= MAX_FACT_LEN
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\')))
    .then(|| s.into_owned())
}

/// The last finish reason of each choice, for at most [`MAX_CHOICES`] choices: bounded whatever a stream sends.
#[derive(Debug, Default)]
pub(crate) struct FinishReasons(Vec<(u32, String)>);

impl FinishReasons {
    fn set(&mut self, choice: u32, reason: String) {
        if let Some(slot) = self.0.iter_mut().find(|(i, _)| *i == choice) {
            slot.1 = reason;
        } else if self.0.len() < MAX_CHOICES {
            self.0.push((choice, reason));
        }
    }

    /// In choice order.
    pub(crate) fn into_sorted(mut self) -> Vec<String> {
        self.0.sort_by_key(|(i, _)| *i);
        self.0.into_iter().map(|(_, r)| r).collect()
    }
}

impl Facts<'_> {
    /// Adds these facts (ids and model from the first chunk that has them, usage and each choice's finish
    /// reason from the last).
    pub(crate) fn merge_into(self, facts: &mut ResponseFacts, finish: &mut FinishReasons) {
        if facts.id.is_none() {
            facts.id = self.id.and_then(plain);
        }
        if facts.model.is_none() {
            facts.model = self.model.and_then(plain);
        }
        for (position, c) in self.choices.into_iter().enumerate() {
            let choice = c
                .index
                .unwrap_or(u32::try_from(position).unwrap_or(u32::MAX));
            if let Some(reason) = c.finish_reason.and_then(plain) {
                finish.set(choice, reason);
            }
        }
        if let Some(u) = self.usage {
            facts.input_tokens = u.prompt_tokens;
            facts.output_tokens = u.completion_tokens;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn read(body: &str) -> (ResponseFacts, Vec<String>) {
        let mut facts = ResponseFacts::default();
        let mut finish = FinishReasons::default();
        serde_json::from_str::<Facts<'_>>(body)
            .unwrap()
            .merge_into(&mut facts, &mut finish);
        (facts, finish.into_sorted())
    }

    #[test]
    fn borrowed_and_escaped_strings_read_alike() {
        let plain = r#"{"id":"chatcmpl-A","model":"m-1","choices":[{"index":1,"finish_reason":"length"},{"index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let escaped = r#"{"id":"chatcmpl-\u0041","model":"m\u002d1","choices":[{"index":1,"finish_reason":"len\u0067th"},{"index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        for body in [plain, escaped] {
            let (facts, finish) = read(body);
            assert_eq!(facts.id.as_deref(), Some("chatcmpl-A"), "{body}");
            assert_eq!(facts.model.as_deref(), Some("m-1"), "{body}");
            assert_eq!(finish, ["stop", "length"], "{body}");
            assert_eq!(
                (facts.input_tokens, facts.output_tokens),
                (Some(3), Some(4))
            );
        }
    }

    #[test]
    fn values_that_are_not_plain_are_dropped() {
        let (facts, finish) =
            read(r#"{"id":"a\"b","model":"x\\y","choices":[{"finish_reason":"a b"}]}"#);
        assert_eq!((facts.id, facts.model), (None, None));
        assert!(finish.is_empty());
        assert!(serde_json::from_str::<Facts<'_>>(r#"{"id":7}"#).is_err());
    }
}
