//! Metric instruments bound to the attribute sets they are recorded with.
//!
//! # Why
//! On every measurement the SDK finds the attribute set's aggregation by hashing the whole set — SipHash over
//! every key and value — under a lock: a proxied call's seven measurements spent ~12 % of the proxy's
//! instructions there (BENCHMARKS.md). Our sets are few and repeat (every value is a bounded label), so each
//! set is bound to its aggregation once (the SDK's `experimental_metrics_bound_instruments`) and found again
//! through a map hashed with FxHash, a few times cheaper for these short strings.
//!
//! FxHash does not resist chosen collisions. That is safe here because no caller-chosen text reaches an
//! attribute unbounded (`crate::labels` folds unknown models into `_other`), and the map holds at most
//! [`BOUND_SETS`] sets per instrument: past that, a measurement takes the SDK's own path, as before.
//!
//! # What must never happen
//! - A measurement lost or counted twice: a set is bound and recorded under the write lock, once.
//! - Unbounded memory: at most [`BOUND_SETS`] sets per instrument.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Histogram};
use rustc_hash::FxBuildHasher;

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
    sets: RwLock<HashMap<Box<[KeyValue]>, I::Bound, FxBuildHasher>>,
}

impl<I: Bindable> std::fmt::Debug for Bound<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sets = self.sets.read().map_or(0, |s| s.len());
        f.debug_struct("Bound").field("sets", &sets).finish()
    }
}

impl<I: Bindable> Bound<I> {
    pub(crate) fn new(instrument: I) -> Bound<I> {
        Bound {
            instrument,
            sets: RwLock::new(HashMap::default()),
        }
    }

    /// Records `value` with `attributes` (the same set in the same order finds the same binding).
    pub(crate) fn record(&self, value: I::Value, attributes: &[KeyValue]) {
        if let Some(bound) = self
            .sets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(attributes)
        {
            I::record_bound(bound, value);
            return;
        }
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(bound) = sets.get(attributes) {
            I::record_bound(bound, value);
        } else if sets.len() < BOUND_SETS {
            let bound = self.instrument.bind(attributes);
            I::record_bound(&bound, value);
            sets.insert(attributes.into(), bound);
        } else {
            drop(sets);
            self.instrument.record(value, attributes);
        }
    }

    #[cfg(test)]
    fn sets(&self) -> usize {
        self.sets.read().map_or(0, |s| s.len())
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

    /// Past [`BOUND_SETS`] sets, measurements still count (through the SDK's own path), and the map stops
    /// growing.
    #[test]
    fn the_map_of_bound_sets_is_bounded() {
        let reader = std::sync::Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_reader(crate::metric_push::SharedReader(reader.clone()))
            .build();
        let counter = Bound::new(provider.meter("t").u64_counter("c").build());
        for i in 0..BOUND_SETS + 50 {
            counter.record(1, &[KeyValue::new("i", i as i64)]);
        }
        assert_eq!(counter.sets(), BOUND_SETS);
        let total: u64 = points(&reader).iter().map(|(_, v)| v).sum();
        assert_eq!(total, (BOUND_SETS + 50) as u64);
    }
}
