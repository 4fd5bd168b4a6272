//! Reading metric values out of repeated OTLP exports.
//!
//! A periodic reader with the SDK's default **cumulative** temporality re-sends every series in
//! every export: the value of a counter is the *latest* point of each series, not the sum of all
//! points received. A series is identified by resource attributes, scope name, point attributes
//! and the point's `start_time_unix_nano` (constant for a cumulative series, distinct for two
//! providers that happen to share a resource). The helpers below keep the last point per series
//! in arrival order, then combine the series whose point attributes match the filter.
//!
//! Points of a **delta** Sum or histogram are added up instead (each delta point is new data).
//! Mixing temporalities for one instrument name is not supported.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    common::v1::KeyValue,
    metrics::v1::{AggregationTemporality, NumberDataPoint, metric::Data, number_data_point},
};

use crate::{
    attrs::{attr_identity, attrs_match},
    received::ReceivedMetric,
};

type SeriesKey = (Vec<(String, String)>, String, Vec<(String, String)>, u64);

fn series_key(m: &ReceivedMetric, point_attrs: &[KeyValue], start_time: u64) -> SeriesKey {
    (
        attr_identity(&m.resource_attributes),
        m.scope_name.clone(),
        attr_identity(point_attrs),
        start_time,
    )
}

fn number(point: &NumberDataPoint) -> f64 {
    match point.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        // Counters of u64/i64 are exported as integers; f64 is exact up to 2^53, plenty here.
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => 0.0,
    }
}

/// One data point, reduced to what the series arithmetic needs.
struct Point<'a, T> {
    attrs: &'a [KeyValue],
    start_time: u64,
    value: T,
    temporality: i32,
}

impl<T> Point<'_, T> {
    fn is_delta(&self) -> bool {
        self.temporality == AggregationTemporality::Delta as i32
    }
}

/// Folds the points of every metric named `name` into one value per series: the latest for
/// cumulative points, `add` for delta points. `extract` yields the points of a metric it
/// understands (and nothing for other kinds of data).
fn per_series<T: Copy>(
    metrics: &[ReceivedMetric],
    name: &str,
    filter: &[(&str, &str)],
    extract: impl Fn(&Data) -> Vec<Point<'_, T>>,
    add: impl Fn(T, T) -> T,
) -> Vec<T> {
    let mut series: BTreeMap<SeriesKey, T> = BTreeMap::new();
    for m in metrics.iter().filter(|m| m.metric.name == name) {
        let Some(data) = m.metric.data.as_ref() else {
            continue;
        };
        for point in extract(data) {
            if !attrs_match(point.attrs, filter) {
                continue;
            }
            let key = series_key(m, point.attrs, point.start_time);
            match series.get_mut(&key) {
                Some(slot) if point.is_delta() => *slot = add(*slot, point.value),
                Some(slot) => *slot = point.value,
                None => {
                    series.insert(key, point.value);
                }
            }
        }
    }
    series.into_values().collect()
}

/// The value of the counter (or up-down counter) `name`, summed over every series whose point
/// attributes match `filter` (see [`crate::attrs_match`]), taking the latest cumulative point of
/// each series. `0.0` when nothing matches.
pub fn counter_value(metrics: &[ReceivedMetric], name: &str, filter: &[(&str, &str)]) -> f64 {
    per_series(
        metrics,
        name,
        filter,
        |data| match data {
            Data::Sum(sum) => sum
                .data_points
                .iter()
                .map(|p| Point {
                    attrs: &p.attributes,
                    start_time: p.start_time_unix_nano,
                    value: number(p),
                    temporality: sum.aggregation_temporality,
                })
                .collect(),
            _ => Vec::new(),
        },
        |a, b| a + b,
    )
    .into_iter()
    .sum()
}

/// `(count, sum)` per matching histogram point (explicit or exponential).
fn histogram_points(data: &Data) -> Vec<Point<'_, (u64, f64)>> {
    match data {
        Data::Histogram(h) => h
            .data_points
            .iter()
            .map(|p| Point {
                attrs: &p.attributes,
                start_time: p.start_time_unix_nano,
                value: (p.count, p.sum.unwrap_or(0.0)),
                temporality: h.aggregation_temporality,
            })
            .collect(),
        Data::ExponentialHistogram(h) => h
            .data_points
            .iter()
            .map(|p| Point {
                attrs: &p.attributes,
                start_time: p.start_time_unix_nano,
                value: (p.count, p.sum.unwrap_or(0.0)),
                temporality: h.aggregation_temporality,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn add_pair(a: (u64, f64), b: (u64, f64)) -> (u64, f64) {
    (a.0 + b.0, a.1 + b.1)
}

/// The number of measurements recorded by histogram `name`, over every series matching
/// `filter`, taking the latest cumulative point of each series. `0` when nothing matches.
pub fn histogram_count(metrics: &[ReceivedMetric], name: &str, filter: &[(&str, &str)]) -> u64 {
    per_series(metrics, name, filter, histogram_points, add_pair)
        .into_iter()
        .map(|(count, _)| count)
        .sum()
}

/// The sum of the measurements recorded by histogram `name` (same rules as
/// [`histogram_count`]; a point without a sum counts as 0).
pub fn histogram_sum(metrics: &[ReceivedMetric], name: &str, filter: &[(&str, &str)]) -> f64 {
    per_series(metrics, name, filter, histogram_points, add_pair)
        .into_iter()
        .map(|(_, sum)| sum)
        .sum()
}

/// The most recently received value of gauge `name` among points matching `filter`: arrival
/// order, then order within the export. `None` when no point matches.
pub fn gauge_last(metrics: &[ReceivedMetric], name: &str, filter: &[(&str, &str)]) -> Option<f64> {
    metrics
        .iter()
        .rev()
        .filter(|m| m.metric.name == name)
        .find_map(|m| match m.metric.data.as_ref() {
            Some(Data::Gauge(g)) => g
                .data_points
                .iter()
                .rev()
                .find(|p| attrs_match(&p.attributes, filter))
                .map(number),
            _ => None,
        })
}

/// The distinct metric names received, sorted (handy in failure messages).
pub fn metric_names(metrics: &[ReceivedMetric]) -> Vec<String> {
    let mut names: Vec<String> = metrics.iter().map(|m| m.metric.name.clone()).collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::received::Transport;
    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, any_value::Value},
        metrics::v1::{Gauge, Histogram, HistogramDataPoint, Metric, Sum},
    };

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.to_owned())),
            }),
            ..Default::default()
        }
    }

    fn wrap(name: &str, data: Data) -> ReceivedMetric {
        ReceivedMetric {
            transport: Transport::Grpc,
            resource_attributes: vec![kv("service.name", "t")],
            scope_name: "scope".into(),
            scope_version: String::new(),
            metric: Metric {
                name: name.into(),
                data: Some(data),
                ..Default::default()
            },
        }
    }

    fn point(outcome: &str, start: u64, value: u64) -> NumberDataPoint {
        NumberDataPoint {
            attributes: vec![kv("outcome", outcome), kv("route", "r")],
            start_time_unix_nano: start,
            value: Some(number_data_point::Value::AsInt(
                i64::try_from(value).unwrap_or(0),
            )),
            ..Default::default()
        }
    }

    fn sum(points: Vec<NumberDataPoint>, temporality: AggregationTemporality) -> Data {
        Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: temporality as i32,
            is_monotonic: true,
        })
    }

    #[test]
    fn cumulative_counter_takes_latest_point_per_series() {
        let c = AggregationTemporality::Cumulative;
        let metrics = vec![
            wrap(
                "calls",
                sum(vec![point("success", 1, 1), point("failure", 1, 1)], c),
            ),
            wrap(
                "calls",
                sum(vec![point("success", 1, 3), point("failure", 1, 1)], c),
            ),
            // a second provider with the same resource: a different start time, a new series
            wrap("calls", sum(vec![point("success", 7, 2)], c)),
            wrap("other", sum(vec![point("success", 1, 100)], c)),
        ];
        assert_eq!(counter_value(&metrics, "calls", &[]), 6.0);
        assert_eq!(
            counter_value(&metrics, "calls", &[("outcome", "success")]),
            5.0
        );
        assert_eq!(
            counter_value(&metrics, "calls", &[("outcome", "success"), ("route", "x")]),
            0.0
        );
        assert_eq!(counter_value(&metrics, "missing", &[]), 0.0);
    }

    #[test]
    fn delta_counter_adds_points() {
        let d = AggregationTemporality::Delta;
        let metrics = vec![
            wrap("calls", sum(vec![point("success", 1, 1)], d)),
            wrap("calls", sum(vec![point("success", 2, 1)], d)),
            wrap("calls", sum(vec![point("success", 2, 4)], d)),
        ];
        assert_eq!(counter_value(&metrics, "calls", &[]), 6.0);
    }

    #[test]
    fn histogram_and_gauge() {
        let hist = |count: u64, total: f64| {
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: vec![kv("route", "r")],
                    start_time_unix_nano: 1,
                    count,
                    sum: Some(total),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })
        };
        let gauge = |v: f64, scope: &str| {
            Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    attributes: vec![kv("scope", scope)],
                    value: Some(number_data_point::Value::AsDouble(v)),
                    ..Default::default()
                }],
            })
        };
        let metrics = vec![
            wrap("h", hist(1, 0.5)),
            wrap("g", gauge(9.0, "a")),
            wrap("h", hist(3, 2.5)),
            wrap("g", gauge(7.0, "b")),
        ];
        assert_eq!(histogram_count(&metrics, "h", &[("route", "r")]), 3);
        assert_eq!(histogram_sum(&metrics, "h", &[]), 2.5);
        assert_eq!(histogram_count(&metrics, "g", &[]), 0);
        assert_eq!(gauge_last(&metrics, "g", &[]), Some(7.0));
        assert_eq!(gauge_last(&metrics, "g", &[("scope", "a")]), Some(9.0));
        assert_eq!(gauge_last(&metrics, "h", &[]), None);
        assert_eq!(metric_names(&metrics), vec!["g".to_owned(), "h".to_owned()]);
    }
}
