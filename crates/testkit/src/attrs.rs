//! Typed lookups on OTLP attribute lists (`&[KeyValue]`).
//!
//! The typed getters are strict on purpose: `attr_i64` does not read a string `"503"` and
//! `attr_f64` does not read an integer, so a test catches an attribute exported with the wrong
//! type (the telemetry contract fixes the type of every name). Only filter matching
//! ([`attrs_match`]) compares rendered strings, for convenience.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};

/// The value of the first attribute named `key`, if present.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// The attribute `key` if it is a string.
pub fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key)?.value.as_ref()? {
        Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The attribute `key` if it is an integer.
pub fn attr_i64(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)?.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// The attribute `key` if it is a double (integers are *not* converted).
pub fn attr_f64(attrs: &[KeyValue], key: &str) -> Option<f64> {
    match attr(attrs, key)?.value.as_ref()? {
        Value::DoubleValue(d) => Some(*d),
        _ => None,
    }
}

/// The attribute `key` if it is a boolean.
pub fn attr_bool(attrs: &[KeyValue], key: &str) -> Option<bool> {
    match attr(attrs, key)?.value.as_ref()? {
        Value::BoolValue(b) => Some(*b),
        _ => None,
    }
}

/// The attribute `key` if it is an array whose elements are all strings (for example
/// `gen_ai.response.finish_reasons`). An empty array gives `Some(vec![])`.
pub fn attr_str_array<'a>(attrs: &'a [KeyValue], key: &str) -> Option<Vec<&'a str>> {
    match attr(attrs, key)?.value.as_ref()? {
        Value::ArrayValue(array) => array
            .values
            .iter()
            .map(|v| match v.value.as_ref() {
                Some(Value::StringValue(s)) => Some(s.as_str()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Renders a value for matching and for failure messages: strings as they are, numbers and
/// booleans with `Display`, bytes as lowercase hex, arrays as `[a, b]`, maps as `{k: v}`, an
/// empty value as the empty string.
pub fn any_value_to_string(value: &AnyValue) -> String {
    match value.value.as_ref() {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(bytes)) => hex(bytes),
        Some(Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(any_value_to_string).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::KvlistValue(list)) => {
            let items: Vec<String> = list
                .values
                .iter()
                .map(|kv| {
                    let v = kv
                        .value
                        .as_ref()
                        .map(any_value_to_string)
                        .unwrap_or_default();
                    format!("{}: {v}", kv.key)
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        // Only used by the profiles signal's dictionary encoding; not expected here.
        Some(Value::StringValueStrindex(i)) => format!("strindex:{i}"),
    }
}

/// True when every `(key, value)` of `filter` is present in `attrs` with a value that renders
/// (via [`any_value_to_string`]) to exactly `value`. So `("http.response.status_code", "503")`
/// matches the integer 503. An empty filter matches everything.
pub fn attrs_match(attrs: &[KeyValue], filter: &[(&str, &str)]) -> bool {
    filter.iter().all(|(key, want)| {
        attr(attrs, key).is_some_and(|value| any_value_to_string(value) == *want)
    })
}

/// Attributes rendered as sorted `(key, value)` pairs: an order-independent identity for a
/// series.
pub(crate) fn attr_identity(attrs: &[KeyValue]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = attrs
        .iter()
        .map(|kv| {
            let v = kv
                .value
                .as_ref()
                .map(any_value_to_string)
                .unwrap_or_default();
            (kv.key.clone(), v)
        })
        .collect();
    pairs.sort();
    pairs
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn sample() -> Vec<KeyValue> {
        vec![
            kv("s", Value::StringValue("chat".into())),
            kv("i", Value::IntValue(503)),
            kv("d", Value::DoubleValue(0.25)),
            kv("b", Value::BoolValue(true)),
            kv(
                "arr",
                Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(Value::StringValue("stop".into())),
                        },
                        AnyValue {
                            value: Some(Value::StringValue("length".into())),
                        },
                    ],
                }),
            ),
            kv(
                "mixed",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::IntValue(1)),
                    }],
                }),
            ),
        ]
    }

    #[test]
    fn typed_getters_are_strict() {
        let a = sample();
        assert_eq!(attr_str(&a, "s"), Some("chat"));
        assert_eq!(attr_i64(&a, "i"), Some(503));
        assert_eq!(attr_f64(&a, "d"), Some(0.25));
        assert_eq!(attr_bool(&a, "b"), Some(true));
        assert_eq!(attr_str_array(&a, "arr").unwrap(), vec!["stop", "length"]);
        assert_eq!(attr_str(&a, "i"), None);
        assert_eq!(attr_i64(&a, "s"), None);
        assert_eq!(attr_f64(&a, "i"), None);
        assert_eq!(attr_str_array(&a, "mixed"), None);
        assert_eq!(attr_str(&a, "missing"), None);
        assert!(attr(&a, "missing").is_none());
    }

    #[test]
    fn filters_compare_rendered_values() {
        let a = sample();
        assert!(attrs_match(&a, &[]));
        assert!(attrs_match(
            &a,
            &[("s", "chat"), ("i", "503"), ("b", "true")]
        ));
        assert!(!attrs_match(&a, &[("s", "chat"), ("i", "429")]));
        assert!(!attrs_match(&a, &[("missing", "")]));
        assert_eq!(
            any_value_to_string(attr(&a, "arr").unwrap()),
            "[stop, length]"
        );
    }

    #[test]
    fn identity_ignores_order() {
        let mut a = sample();
        let forward = attr_identity(&a);
        a.reverse();
        assert_eq!(forward, attr_identity(&a));
    }
}
