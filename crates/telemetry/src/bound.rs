//! Metric instruments bound to the attribute sets they are recorded with.
//!
//! # Why
//! On every measurement the SDK finds the attribute set's aggregation by hashing the whole set — SipHash over
//! every key and value — under a lock: a proxied call's seven measurements spent ~12 % of the proxy's
//! instructions there (BENCHMARKS.md). Our sets are few and repeat (every value is a bounded label), so each
//! set is bound to its aggregation once (the SDK's `experimental_metrics_bound_instruments`) and found again
//! through a map keyed by an FxHash of the set's values (the keys of an instrument's sets are the same few
//! names every time), compared string by string — by address first: labels are shared buffers, so the same
//! label is usually the very same bytes.
//!
//! FxHash does not resist chosen collisions. That is safe here because no caller-chosen text reaches an
//! attribute unbounded (`crate::labels` folds unknown models into `_other`), and the map holds at most
//! [`BOUND_SETS`] sets per instrument: past that, a measurement takes the SDK's own path, as before.
//!
//! # What must never happen
//! - A measurement lost or counted twice: a set is bound and recorded under the write lock, once.
//! - Unbounded memory: at most [`BOUND_SETS`] sets per instrument.

use std::collections::HashMap;
use std::hash::Hasher as _;
use std::sync::{PoisonError, RwLock};

use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Histogram};
use opentelemetry::{KeyValue, Value};
use rustc_hash::{FxBuildHasher, FxHasher};

use crate::names::METRIC_CARDINALITY_LIMIT;

/// Most attribute sets bound per instrument: the SDK's own cardinality limit, past which it folds new sets
/// into one overflow series anyway.
pub(crate) const BOUND_SETS: usize = METRIC_CARDINALITY_LIMIT;

/// A synchronous instrument that can be bound to an attribute set.
pub(crate) trait Bindable {
    /// What one measurement records.
    type Value: Copy;
    /// The instrument bound to one set.
    type Bound;
    fn bind(&self, attributes: &[KeyValue]) -> Self::Bound;
    fn record_bound(bound: &Self::Bound, value: Self::Value);
    fn record(&self, value: Self::Value, attributes: &[KeyValue]);
}

impl Bindable for Counter<u64> {
    type Value = u64;
    type Bound = BoundCounter<u64>;
    fn bind(&self, attributes: &[KeyValue]) -> Self::Bound {
        Counter::bind(self, attributes)
    }
    fn record_bound(bound: &Self::Bound, value: u64) {
        bound.add(value);
    }
    fn record(&self, value: u64, attributes: &[KeyValue]) {
        self.add(value, attributes);
    }
}

impl<T: Copy + 'static> Bindable for Histogram<T> {
    type Value = T;
    type Bound = BoundHistogram<T>;
    fn bind(&self, attributes: &[KeyValue]) -> Self::Bound {
        Histogram::bind(self, attributes)
    }
    fn record_bound(bound: &Self::Bound, value: T) {
        bound.record(value);
    }
    fn record(&self, value: T, attributes: &[KeyValue]) {
        Histogram::record(self, value, attributes);
    }
}

/// An instrument with its attribute sets bound as they are first seen.
pub(crate) struct Bound<I: Bindable> {
    instrument: I,
    sets: RwLock<Sets<I::Bound>>,
}

/// One attribute set and its binding.
type Entry<B> = (Box<[KeyValue]>, B);

/// Bound sets by the hash of their values ([`values_hash`]); sets whose hashes collide share a bucket.
struct Sets<B> {
    by_hash: HashMap<u64, Vec<Entry<B>>, FxBuildHasher>,
    len: usize,
}

impl<B> Sets<B> {
    fn find(&self, hash: u64, attributes: &[KeyValue]) -> Option<&B> {
        self.by_hash
            .get(&hash)?
            .iter()
            .find(|(set, _)| same_set(set, attributes))
            .map(|(_, bound)| bound)
    }
}

/// A hash of the set's values in order, consistent with `KeyValue`'s equality (equal sets hash alike; a
/// float's bits are left out, as `0.0 == -0.0`). Keys are left out: an instrument's sets use the same names.
fn values_hash(attributes: &[KeyValue]) -> u64 {
    let mut h = FxHasher::default();
    for kv in attributes {
        match &kv.value {
            Value::String(s) => h.write(s.as_str().as_bytes()),
            Value::I64(i) => h.write_i64(*i),
            Value::Bool(b) => h.write_u8(u8::from(*b)),
            _ => h.write_u8(0xfe),
        }
        h.write_u8(0xff);
    }
    h.finish()
}

/// `KeyValue` equality, with a shortcut for strings that are the same bytes in memory.
fn same_set(a: &[KeyValue], b: &[KeyValue]) -> bool {
    fn same_str(a: &str, b: &str) -> bool {
        a.len() == b.len() && (a.as_ptr() == b.as_ptr() || a == b)
    }
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            same_str(x.key.as_str(), y.key.as_str())
                && match (&x.value, &y.value) {
                    (Value::String(p), Value::String(q)) => same_str(p.as_str(), q.as_str()),
                    (p, q) => p == q,
                }
        })
}

impl<I: Bindable> std::fmt::Debug for Bound<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sets = self.sets.read().map_or(0, |s| s.len);
        f.debug_struct("Bound").field("sets", &sets).finish()
    }
}

impl<I: Bindable> Bound<I> {
    pub(crate) fn new(instrument: I) -> Bound<I> {
        Bound {
            instrument,
            sets: RwLock::new(Sets {
                by_hash: HashMap::default(),
                len: 0,
            }),
        }
    }

    pub(crate) fn record(&self, value: I::Value, attributes: &[KeyValue]) {
        let hash = values_hash(attributes);
        if let Some(bound) = self
            .sets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(hash, attributes)
        {
            I::record_bound(bound, value);
            return;
        }
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(bound) = sets.find(hash, attributes) {
            I::record_bound(bound, value);
        } else if sets.len < BOUND_SETS {
            let bound = self.instrument.bind(attributes);
            I::record_bound(&bound, value);
            sets.by_hash
                .entry(hash)
                .or_default()
                .push((attributes.into(), bound));
            sets.len += 1;
        } else {
            drop(sets);
            self.instrument.record(value, attributes);
        }
    }

    #[cfg(test)]
    fn sets(&self) -> usize {
        self.sets.read().map_or(0, |s| s.len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
    use opentelemetry_sdk::metrics::reader::MetricReader as _;
    use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider, Temporality};

    use super::*;

    /// One collection: (`name{attributes}`, value) of every point, sums and histogram counts.
    fn points(reader: &ManualReader) -> Vec<(String, u64)> {
        let mut rm = ResourceMetrics::default();
        reader.collect(&mut rm).unwrap();
        let mut out = Vec::new();
        for m in rm.scope_metrics().flat_map(|s| s.metrics()) {
            let text = |attrs: &mut dyn Iterator<Item = &KeyValue>| {
                let mut v: Vec<String> =
                    attrs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
                v.sort();
                format!("{}{{{}}}", m.name(), v.join(","))
            };
            match m.data() {
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    out.extend(
                        s.data_points()
                            .map(|p| (text(&mut p.attributes()), p.value())),
                    );
                }
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    out.extend(
                        h.data_points()
                            .map(|p| (text(&mut p.attributes()), p.count())),
                    );
                }
                _ => {}
            }
        }
        out.sort();
        out
    }

    /// Bound and unbound recordings land in the same series, in either attribute order, with nothing lost
    /// or doubled — cumulative and delta alike.
    #[test]
    fn bound_sets_count_exactly_as_the_sdk_does() {
        for temporality in [Temporality::Cumulative, Temporality::Delta] {
            let reader = std::sync::Arc::new(
                ManualReader::builder()
                    .with_temporality(temporality)
                    .build(),
            );
            let provider = SdkMeterProvider::builder()
                .with_reader(crate::metric_push::SharedReader(reader.clone()))
                .build();
            let meter = provider.meter("t");
            let counter = Bound::new(meter.u64_counter("c").build());
            let plain = meter.u64_counter("c").build();
            let histogram = Bound::new(meter.f64_histogram("h").build());
            let (a, b) = (KeyValue::new("k", "a"), KeyValue::new("n", 1_i64));
            for _ in 0..3 {
                counter.record(2, &[a.clone(), b.clone()]);
                histogram.record(0.5, std::slice::from_ref(&a));
            }
            counter.record(1, &[b.clone(), a.clone()]);
            plain.add(10, &[a.clone(), b.clone()]);
            counter.record(5, &[KeyValue::new("k", "other")]);
            let point = |name: &str, value| (name.to_owned(), value);
            assert_eq!(
                points(&reader),
                [
                    point("c{k=a,n=1}", 17),
                    point("c{k=other}", 5),
                    point("h{k=a}", 3)
                ]
            );
            counter.record(4, &[a.clone(), b.clone()]);
            let expected = if temporality == Temporality::Delta {
                4
            } else {
                21
            };
            assert!(
                points(&reader).contains(&point("c{k=a,n=1}", expected)),
                "{temporality:?}"
            );
            assert_eq!(counter.sets(), 3, "each order of a set is bound once");
        }
    }

    /// A bound counter `c` and the reader that collects it (the provider must outlive the counter's use).
    fn counter() -> (
        std::sync::Arc<ManualReader>,
        SdkMeterProvider,
        Bound<Counter<u64>>,
    ) {
        let reader = std::sync::Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_reader(crate::metric_push::SharedReader(reader.clone()))
            .build();
        let counter = Bound::new(provider.meter("t").u64_counter("c").build());
        (reader, provider, counter)
    }

    #[test]
    fn sets_differing_only_in_keys_stay_apart_and_equal_sets_in_other_buffers_meet() {
        let (reader, _provider, counter) = counter();
        // Same values, so the same hash: told apart by their keys.
        counter.record(1, &[KeyValue::new("x", "v")]);
        counter.record(2, &[KeyValue::new("y", "v")]);
        // The same set built from separate (non-static) buffers each time: one binding.
        for _ in 0..3 {
            counter.record(4, &[KeyValue::new(String::from("x"), String::from("v"))]);
        }
        assert_eq!(counter.sets(), 2);
        let mut got = points(&reader);
        got.sort();
        assert_eq!(got, [("c{x=v}".to_owned(), 13), ("c{y=v}".to_owned(), 2)]);
    }

    /// Past [`BOUND_SETS`] sets, measurements still count (through the SDK's own path), and the map stops
    /// growing.
    #[test]
    fn the_map_of_bound_sets_is_bounded() {
        let (reader, _provider, counter) = counter();
        for i in 0..BOUND_SETS + 50 {
            counter.record(1, &[KeyValue::new("i", i as i64)]);
        }
        assert_eq!(counter.sets(), BOUND_SETS);
        let total: u64 = points(&reader).iter().map(|(_, v)| v).sum();
        assert_eq!(total, (BOUND_SETS + 50) as u64);
    }
}
