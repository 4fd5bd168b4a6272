//! Bounded model labels: the one place a caller-chosen model id becomes a metric label or a budget scope.
//!
//! A proxy's callers choose the `model` string. Used as it is, every distinct value would become a metric series
//! and a retry-budget scope — of any length, in any number (three 100 KB model names once grew `/metrics` to
//! 5.7 MB). So a model id is a label only if it is short and plain (at most [`MODEL_MAX_LEN`] bytes of
//! `[A-Za-z0-9._:/@-]`, else [`MODEL_INVALID`]) and among the first `limit` distinct ids of its route (else
//! [`MODEL_OTHER`]). This module must never return a string it was not sure is bounded and content-free.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use opentelemetry::StringValue;

use crate::names::{MODEL_INVALID, MODEL_MAX_LEN, MODEL_OTHER, MODEL_UNKNOWN};

/// Whether `model` may appear in telemetry at all: non-empty, at most [`MODEL_MAX_LEN`] bytes, only
/// `[A-Za-z0-9._:/@-]`.
pub fn model_is_valid(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= MODEL_MAX_LEN
        && model.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'@' | b'-')
        })
}

/// The model id as spans may show it (one span per request, so no cardinality limit): the id itself if valid,
/// else [`MODEL_INVALID`]; [`MODEL_UNKNOWN`] when the request names none.
pub fn model_for_span(model: Option<&str>) -> Cow<'_, str> {
    match model {
        None => Cow::Borrowed(MODEL_UNKNOWN),
        Some(m) if model_is_valid(m) => Cow::Borrowed(m),
        Some(_) => Cow::Borrowed(MODEL_INVALID),
    }
}

/// The distinct model ids of one route, up to a limit.
#[derive(Debug)]
pub struct ModelLabels {
    limit: usize,
    /// Shared buffers: a known model's label is a reference count per call, not a copy.
    seen: RwLock<HashSet<Arc<str>>>,
}

impl ModelLabels {
    /// Keeps at most `limit` distinct model ids as labels.
    pub fn new(limit: usize) -> Self {
        ModelLabels {
            limit,
            seen: RwLock::new(HashSet::new()),
        }
    }

    /// The label for `model`: the id itself, [`MODEL_INVALID`], [`MODEL_OTHER`] or [`MODEL_UNKNOWN`].
    pub fn label(&self, model: Option<&str>) -> StringValue {
        let model = match model {
            None => return MODEL_UNKNOWN.into(),
            Some(m) if !model_is_valid(m) => return MODEL_INVALID.into(),
            Some(m) => m,
        };
        if let Some(known) = self
            .seen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
        {
            return Arc::clone(known).into();
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = seen.get(model) {
            return Arc::clone(known).into();
        }
        if seen.len() >= self.limit {
            return MODEL_OTHER.into();
        }
        let label: Arc<str> = model.into();
        seen.insert(Arc::clone(&label));
        label.into()
    }

    /// Distinct model ids kept so far.
    pub fn len(&self) -> usize {
        self.seen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no model id was kept yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_ids_become_invalid() {
        let labels = ModelLabels::new(10);
        let long = "a".repeat(MODEL_MAX_LEN + 1);
        for bad in [
            long.as_str(),
            "",
            "gpt 4o",
            "gpt-4o\n",
            "sk-live?x=1",
            "mödel",
            "a{b}",
        ] {
            assert_eq!(labels.label(Some(bad)).as_str(), MODEL_INVALID, "{bad:?}");
            assert_eq!(model_for_span(Some(bad)), MODEL_INVALID, "{bad:?}");
        }
        let edge = "a".repeat(MODEL_MAX_LEN);
        for good in [
            "gpt-4o",
            "openai/gpt-4o-mini",
            "claude-3.5@2024:v1_x",
            edge.as_str(),
        ] {
            assert_eq!(labels.label(Some(good)).as_str(), good);
        }
        assert_eq!(labels.label(None).as_str(), MODEL_UNKNOWN);
        assert_eq!(labels.len(), 4, "invalid ids take no place");
    }

    #[test]
    fn past_the_limit_new_ids_become_other() {
        let labels = ModelLabels::new(2);
        assert_eq!(labels.label(Some("a")).as_str(), "a");
        assert_eq!(labels.label(Some("b")).as_str(), "b");
        assert_eq!(labels.label(Some("c")).as_str(), MODEL_OTHER);
        assert_eq!(
            labels.label(Some("a")).as_str(),
            "a",
            "known ids keep their label"
        );
        assert_eq!(labels.len(), 2);
        assert_eq!(model_for_span(Some("c")), "c", "spans keep a valid id");
    }
}
