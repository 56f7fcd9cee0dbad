//! RED metrics from stored spans, in Jaeger's metrics query API (what Jaeger UI's Monitor tab
//! calls): `GET /api/metrics/calls`, `/api/metrics/errors`, `/api/metrics/latencies?quantile=`
//! and `/api/metrics/minstep`, with Jaeger's parameters (`service` (repeatable),
//! `groupByOperation`, `spanKind` (repeatable, default `server`), `endTs`, `lookback`, `step`,
//! `ratePer`, all times in milliseconds) and its `MetricFamily` JSON.
//!
//! Each point is what Jaeger computes from span metrics with PromQL: at every step from
//! `endTs - lookback` to `endTs`, the calls per second, the share of them with status Error and
//! the latency quantile over the `ratePer` before it. Skein computes them from the spans it
//! stores: no collector, no Prometheus. When step, `ratePer` and `lookback` are whole minutes
//! (the Monitor tab's) and the store keeps RED pre-aggregates (`SpanStore::red`: the embedded
//! engine, per head and per block), they answer, on a grid of whole minutes (`endTs` rounded
//! up, so the last point holds the minute in progress); otherwise the window's spans are read once
//! through `SpanStore::scan`. Latencies come from a mergeable log-bucket sketch whose quantiles
//! are within 1 % of the exact ones ([`Sketch`]).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Serialize;
use skein_model::{SpanKind, TimeRange};

use crate::SharedStore;
use crate::v1::V1Error;

pub use skein_store::red::{SKETCH_ACCURACY, Sketch};

/// Which metric a request asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Measure {
    Calls,
    Errors,
    Latencies(f64),
}

/// A metrics request, in nanoseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsQuery {
    pub services: Vec<String>,
    pub group_by_operation: bool,
    pub span_kinds: Vec<SpanKind>,
    pub end_nanos: u64,
    pub lookback_nanos: u64,
    pub step_nanos: u64,
    pub rate_per_nanos: u64,
}

const MS: u64 = 1_000_000;

/// Reads Jaeger's metrics parameters; `now_ms` is `endTs` when it is not given.
pub fn parse_metrics_query(pairs: &[(String, String)], now_ms: u64) -> Result<MetricsQuery, String> {
    fn all<'a>(pairs: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        pairs.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    let all = |name: &'static str| all(pairs, name);
    let last = |name: &'static str| all(name).last().filter(|v| !v.is_empty());
    let millis = |name: &'static str, default: u64| -> Result<u64, String> {
        match last(name) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().map_err(|_| {
                format!("unable to parse param '{name}': {v:?} is not a number of milliseconds")
            }),
        }
    };
    // Jaeger UI joins several services with commas: `service=a,service=b`.
    let services: Vec<String> = all("service")
        .flat_map(|v| v.split(",service="))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if services.is_empty() {
        return Err("unable to parse param 'service': please provide at least one service name".into());
    }
    let group_by_operation = match last("groupByOperation") {
        None => false,
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => true,
            "0" | "f" | "false" => false,
            _ => return Err(format!("unable to parse param 'groupByOperation': {v:?} is not a boolean")),
        },
    };
    let mut span_kinds = Vec::new();
    for v in all("spanKind") {
        let kind = match v.to_ascii_lowercase().trim_start_matches("span_kind_") {
            "server" => SpanKind::Server,
            "client" => SpanKind::Client,
            "producer" => SpanKind::Producer,
            "consumer" => SpanKind::Consumer,
            "internal" => SpanKind::Internal,
            "unspecified" => SpanKind::Unspecified,
            _ => return Err(format!("unable to parse param 'spanKind': unsupported span kind {v:?}")),
        };
        span_kinds.push(kind);
    }
    if span_kinds.is_empty() {
        span_kinds.push(SpanKind::Server);
    }
    let query = MetricsQuery {
        services,
        group_by_operation,
        span_kinds,
        end_nanos: millis("endTs", now_ms)?.saturating_mul(MS),
        lookback_nanos: millis("lookback", 3_600_000)?.saturating_mul(MS),
        step_nanos: millis("step", 5_000)?.saturating_mul(MS),
        rate_per_nanos: millis("ratePer", 600_000)?.saturating_mul(MS),
    };
    if query.step_nanos == 0 || query.rate_per_nanos == 0 {
        return Err("'step' and 'ratePer' must be at least 1 ms".into());
    }
    if query.lookback_nanos / query.step_nanos > 10_000 {
        return Err("at most 10,000 points per series: raise 'step' or shorten 'lookback'".into());
    }
    Ok(query)
}

/// Jaeger's `MetricFamily`, as its protobuf JSON (camelCase, enum names, RFC 3339 times).
#[derive(Debug, Serialize, PartialEq)]
pub struct MetricFamily {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub help: String,
    pub metrics: Vec<Metric>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    pub labels: Vec<Label>,
    pub metric_points: Vec<MetricPoint>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Label {
    pub name: &'static str,
    pub value: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricPoint {
    pub gauge_value: GaugeValue,
    pub timestamp: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GaugeValue {
    pub double_value: f64,
}

/// Per series and per step: calls, errors and the latency sketch of the spans that started in
/// that step.
#[derive(Default)]
struct Steps {
    calls: Vec<u64>,
    errors: Vec<u64>,
    latencies: Vec<Sketch>,
}

impl Steps {
    fn new(steps: usize) -> Steps {
        Steps { calls: vec![0; steps], errors: vec![0; steps], latencies: vec![Sketch::default(); steps] }
    }
}

/// Where the points of a query lie: `points` points from `first_point`, one per step, each
/// looking back over the `window` steps before it; step `k` starts at `origin + k·step`.
struct Grid {
    points: usize,
    window: usize,
    first_point: u64,
    origin: u64,
    steps: usize,
}

impl Grid {
    fn of(query: &MetricsQuery) -> Grid {
        let window = query.rate_per_nanos.div_ceil(query.step_nanos) as usize;
        let points = (query.lookback_nanos / query.step_nanos) as usize + 1;
        let first_point = query.end_nanos.saturating_sub(query.lookback_nanos);
        let origin = first_point.saturating_sub(window as u64 * query.step_nanos);
        Grid { points, window, first_point, origin, steps: points + window }
    }
}

type Series = BTreeMap<(String, String), Steps>;

/// The metric over `spans` (any iterator of the stored spans, e.g. a scan's). Step `k` holds
/// the spans that start in `(origin + k·step, origin + (k + 1)·step]`, as a range vector does.
pub fn compute<'a>(
    measure: Measure,
    query: &MetricsQuery,
    spans: impl IntoIterator<Item = &'a skein_store::ScanSpan>,
) -> MetricFamily {
    let grid = Grid::of(query);
    let mut series = Series::new();
    for s in spans {
        if !query.span_kinds.contains(&s.kind) || !query.services.iter().any(|n| n == s.service_name()) {
            continue;
        }
        let t = s.start_time_unix_nano;
        if t <= grid.origin || t > query.end_nanos {
            continue;
        }
        let k = ((t - grid.origin - 1) / query.step_nanos) as usize;
        if k >= grid.steps {
            continue;
        }
        let operation = if query.group_by_operation { s.name.to_string() } else { String::new() };
        let e =
            series.entry((s.service_name().to_owned(), operation)).or_insert_with(|| Steps::new(grid.steps));
        e.calls[k] += 1;
        e.errors[k] += u64::from(s.error);
        if let Measure::Latencies(_) = measure {
            e.latencies[k].add(s.end_time_unix_nano.saturating_sub(t) as f64);
        }
    }
    family(measure, query, &grid, series)
}

/// Whether [`compute_from_red`] can answer `query`: its step, rate window and lookback are
/// whole minutes, the resolution of the pre-aggregates.
pub fn red_answers(query: &MetricsQuery) -> bool {
    let minute = skein_store::red::RED_CELL_NANOS;
    query.step_nanos.is_multiple_of(minute)
        && query.rate_per_nanos.is_multiple_of(minute)
        && query.lookback_nanos.is_multiple_of(minute)
}

/// `query` moved onto the pre-aggregates' grid: its end rounded up to a whole minute (so the
/// last point holds the minute in progress, up to now), and the minutes (span start / 60 s)
/// its points read.
pub fn red_window(query: &MetricsQuery) -> (MetricsQuery, std::ops::Range<u64>) {
    let minute = skein_store::red::RED_CELL_NANOS;
    let aligned =
        MetricsQuery { end_nanos: query.end_nanos.div_ceil(minute).saturating_mul(minute), ..query.clone() };
    let grid = Grid::of(&aligned);
    (aligned, grid.origin / minute..(grid.origin + grid.steps as u64 * query.step_nanos) / minute)
}

/// The metric from pre-aggregated minutes, for a query on their grid ([`red_window`]). Step
/// `k` holds the spans that start in `[origin + k·step, origin + (k + 1)·step)`: whole minutes.
pub fn compute_from_red(
    measure: Measure,
    query: &MetricsQuery,
    red: &skein_store::red::RedSummary,
) -> MetricFamily {
    let grid = Grid::of(query);
    let minute = skein_store::red::RED_CELL_NANOS;
    let mut series = Series::new();
    for (service, ops) in &red.series {
        if !query.services.iter().any(|n| n == service) {
            continue;
        }
        let series_of_ops =
            ops.iter().flat_map(|(name, kinds)| kinds.iter().enumerate().map(move |(k, c)| (name, k, c)));
        for (name, k, cells) in series_of_ops {
            if cells.is_empty() || !query.span_kinds.contains(&SpanKind::ALL[k]) {
                continue;
            }
            let operation = if query.group_by_operation { name.to_string() } else { String::new() };
            let first = grid.origin / minute;
            for (m, cell) in cells.range(first..first + (grid.steps as u64 * query.step_nanos) / minute) {
                let k = ((m * minute - grid.origin) / query.step_nanos) as usize;
                let e = series
                    .entry((service.clone(), operation.clone()))
                    .or_insert_with(|| Steps::new(grid.steps));
                e.calls[k] += cell.calls;
                e.errors[k] += cell.errors;
                if let Measure::Latencies(_) = measure {
                    e.latencies[k].merge(&cell.latency);
                }
            }
        }
    }
    family(measure, query, &grid, series)
}

/// The points of every series: at `first_point + p·step`, the figure over the `window` steps
/// before it (latency sketches kept as a sliding sum: one step in, one step out per point).
fn family(measure: Measure, query: &MetricsQuery, grid: &Grid, series: Series) -> MetricFamily {
    let rate_secs = query.rate_per_nanos as f64 / 1e9;
    let metrics = series
        .into_iter()
        .map(|((service, operation), st)| {
            let mut metric_points = Vec::with_capacity(grid.points);
            let mut window = Sketch::default();
            if let Measure::Latencies(_) = measure {
                st.latencies[..grid.window].iter().for_each(|sk| window.merge(sk));
            }
            for p in 0..grid.points {
                // The point at first_point + p·step = origin + (window + p)·step looks back over
                // the `window` steps before it: p .. p + window.
                let range = p..(p + grid.window);
                let calls: u64 = st.calls[range.clone()].iter().sum();
                let value = match measure {
                    Measure::Calls => Some(calls as f64 / rate_secs),
                    Measure::Errors => (calls > 0)
                        .then(|| st.errors[range.clone()].iter().sum::<u64>() as f64 / calls as f64),
                    Measure::Latencies(q) => {
                        // Milliseconds, as Jaeger's span metrics histograms are.
                        let v = window.quantile(q).map(|ns| ns / 1e6);
                        if p + 1 < grid.points {
                            window.merge(&st.latencies[p + grid.window]);
                            window.subtract(&st.latencies[p]);
                        }
                        v
                    }
                };
                if let Some(v) = value {
                    let at = grid.first_point + p as u64 * query.step_nanos;
                    metric_points.push(MetricPoint {
                        gauge_value: GaugeValue { double_value: v },
                        timestamp: rfc3339(at),
                    });
                }
            }
            let mut labels = vec![Label { name: "service_name", value: service }];
            if query.group_by_operation {
                labels.push(Label { name: "operation", value: operation });
            }
            Metric { labels, metric_points }
        })
        .collect();
    let (name, help) = match measure {
        Measure::Calls => ("service_call_rate", "calls/sec, grouped by service".to_owned()),
        Measure::Errors => (
            "service_error_rate",
            "error rate, computed as a fraction of errors/sec over calls/sec, grouped by service".to_owned(),
        ),
        Measure::Latencies(q) => {
            ("service_latencies", format!("{q:.2}th quantile latency, grouped by service"))
        }
    };
    let (name, help) = if query.group_by_operation {
        (name.replacen("service", "service_operation", 1), help + " & operation")
    } else {
        (name.to_owned(), help)
    };
    MetricFamily { name, kind: "GAUGE", help, metrics }
}

/// A unix time in nanoseconds as protobuf JSON writes a `Timestamp`: RFC 3339 in UTC, with 0,
/// 3, 6 or 9 fractional digits.
fn rfc3339(nanos: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos);
    match nanos % 1_000_000_000 {
        0 => humantime::format_rfc3339_seconds(t).to_string(),
        n if n % 1_000_000 == 0 => humantime::format_rfc3339_millis(t).to_string(),
        n if n % 1_000 == 0 => humantime::format_rfc3339_micros(t).to_string(),
        _ => humantime::format_rfc3339_nanos(t).to_string(),
    }
}

/// Spans one metrics request reads, at most.
pub const METRICS_MAX_SPANS: usize = 5_000_000;

async fn answer(
    store: SharedStore,
    measure: Measure,
    pairs: Vec<(String, String)>,
) -> Result<Json<MetricFamily>, V1Error> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let query = parse_metrics_query(&pairs, now_ms).map_err(|e| V1Error::new(StatusCode::BAD_REQUEST, e))?;
    let status = |e: skein_store::StoreError| V1Error::new(crate::store_error_status(&e), e.to_string());
    // Steps of whole minutes: the store's pre-aggregates answer, when it keeps them.
    if red_answers(&query) {
        let (aligned, minutes) = red_window(&query);
        let latency = matches!(measure, Measure::Latencies(_));
        if let Some(red) = store.red(minutes, &query.services, latency).await.map_err(status)? {
            let family = tokio::task::spawn_blocking(move || compute_from_red(measure, &aligned, &red))
                .await
                .map_err(|e| V1Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            return Ok(Json(family));
        }
    }
    let start = query.end_nanos.saturating_sub(query.lookback_nanos).saturating_sub(query.rate_per_nanos);
    let range = TimeRange::new(start, query.end_nanos.saturating_add(1));
    let scan = store.scan(range, METRICS_MAX_SPANS, |_| false).await.map_err(status)?;
    // Figures over part of the window would be wrong without saying so: refuse instead.
    if scan.truncated {
        return Err(V1Error::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the window (lookback plus ratePer) holds more spans than one metrics request reads ({} here); shorten lookback or ratePer",
                if scan.spans >= METRICS_MAX_SPANS {
                    format!("{METRICS_MAX_SPANS} spans")
                } else {
                    format!("{} traces", skein_store::DEFAULT_SCAN_TRACES)
                }
            ),
        ));
    }
    let family = tokio::task::spawn_blocking(move || {
        // A span delivered twice counts once.
        let mut spans: Vec<&skein_store::ScanSpan> = scan.traces.values().flatten().collect();
        spans.sort_unstable_by_key(|s| (s.trace_id, s.span_id));
        spans.dedup_by_key(|s| (s.trace_id, s.span_id));
        compute(measure, &query, spans)
    })
    .await
    .map_err(|e| V1Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(family))
}

pub(crate) async fn calls(
    State(store): State<SharedStore>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<MetricFamily>, V1Error> {
    answer(store, Measure::Calls, pairs).await
}

pub(crate) async fn errors(
    State(store): State<SharedStore>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<MetricFamily>, V1Error> {
    answer(store, Measure::Errors, pairs).await
}

pub(crate) async fn latencies(
    State(store): State<SharedStore>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<MetricFamily>, V1Error> {
    let q = pairs.iter().rev().find(|(k, _)| k == "quantile").map(|(_, v)| v.as_str()).unwrap_or("");
    let q: f64 = q.parse().map_err(|_| {
        V1Error::new(
            StatusCode::BAD_REQUEST,
            format!("unable to parse param 'quantile': {q:?} is not a number"),
        )
    })?;
    if !(0.0..=1.0).contains(&q) {
        return Err(V1Error::new(StatusCode::BAD_REQUEST, "'quantile' must be between 0 and 1"));
    }
    answer(store, Measure::Latencies(q), pairs).await
}

/// The smallest step Skein computes: any, down to Jaeger's 1 ms.
pub(crate) async fn min_step() -> Json<crate::jaeger::Response<u64>> {
    Json(crate::jaeger::Response::new(1, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        service: &str,
        name: &str,
        kind: SpanKind,
        start_s: u64,
        millis: u64,
        error: bool,
    ) -> skein_store::ScanSpan {
        use skein_store::testdata::{BASE_TIME, SpanBuilder as B};
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = BASE_TIME + start_s * 1_000_000_000;
        let mut b = B::new(n, 1).service(service).name(name).kind(kind).times(start, start + millis * MS);
        if error {
            b = b.error("boom");
        }
        skein_store::ScanSpan::of(&b.build(), |_| false)
    }

    #[test]
    fn rates_and_error_shares_are_exact_per_window() {
        use skein_store::testdata::BASE_TIME;
        // 10 calls in the first minute (2 errors), 30 in the second (none), one client span.
        let mut spans = Vec::new();
        for i in 0..10 {
            spans.push(span("api", "GET /a", SpanKind::Server, 1 + i, 5, i < 2));
        }
        for i in 0..30 {
            spans.push(span(
                "api",
                if i % 3 == 0 { "GET /b" } else { "GET /a" },
                SpanKind::Server,
                61 + i,
                5,
                false,
            ));
        }
        spans.push(span("api", "SELECT", SpanKind::Client, 5, 1, true));
        spans.push(span("other", "GET /a", SpanKind::Server, 5, 1, true));
        let query = |group: bool| MetricsQuery {
            services: vec!["api".into()],
            group_by_operation: group,
            span_kinds: vec![SpanKind::Server],
            end_nanos: BASE_TIME + 120 * 1_000_000_000,
            lookback_nanos: 60 * 1_000_000_000,
            step_nanos: 60 * 1_000_000_000,
            rate_per_nanos: 60 * 1_000_000_000,
        };
        let values = |f: &MetricFamily| -> Vec<Vec<f64>> {
            f.metrics
                .iter()
                .map(|m| m.metric_points.iter().map(|p| p.gauge_value.double_value).collect())
                .collect()
        };
        let calls = compute(Measure::Calls, &query(false), &spans);
        assert_eq!(values(&calls), [[10.0 / 60.0, 30.0 / 60.0]]);
        let errors = compute(Measure::Errors, &query(false), &spans);
        assert_eq!(values(&errors), [[0.2, 0.0]]);
        let by_op = compute(Measure::Calls, &query(true), &spans);
        assert_eq!(by_op.name, "service_operation_call_rate");
        let ops: Vec<&str> = by_op.metrics.iter().map(|m| m.labels[1].value.as_str()).collect();
        assert_eq!(ops, ["GET /a", "GET /b"]);
        assert_eq!(values(&by_op), [[10.0 / 60.0, 20.0 / 60.0], [0.0, 10.0 / 60.0]]);
        let p50 = compute(Measure::Latencies(0.5), &query(false), &spans);
        for v in values(&p50).concat() {
            assert!((v - 5.0).abs() / 5.0 <= SKETCH_ACCURACY, "{v}");
        }
        let client = MetricsQuery { span_kinds: vec![SpanKind::Client], ..query(false) };
        assert_eq!(values(&compute(Measure::Errors, &client, &spans)), [[1.0]]);
    }

    /// Pre-aggregated minutes give the same figures as counting the spans, on the minute grid.
    #[test]
    fn pre_aggregates_answer_like_a_recount() {
        use skein_store::testdata::{BASE_TIME, SpanBuilder as B};
        let minute = skein_store::red::RED_CELL_NANOS;
        let mut red = skein_store::red::RedSummary::default();
        let mut spans = Vec::new();
        for n in 0..3_000u64 {
            // Never on a minute's first nanosecond, where the two step rules differ.
            let start = BASE_TIME + n * 137_000_000 + 1_000;
            let mut b = B::new(1, 1)
                .service(if n % 5 == 0 { "cart" } else { "api" })
                .name(if n % 3 == 0 { "GET /b" } else { "GET /a" })
                .kind(if n % 11 == 0 { SpanKind::Client } else { SpanKind::Server })
                .times(start, start + 1_000_000 + (n * 7_919_000) % 900_000_000);
            if n % 13 == 0 {
                b = b.error("boom");
            }
            let span = b.build();
            red.add(&span);
            spans.push(skein_store::ScanSpan::of(&span, |_| false));
        }
        for group in [false, true] {
            let query = MetricsQuery {
                services: vec!["api".into(), "cart".into()],
                group_by_operation: group,
                span_kinds: vec![SpanKind::Server],
                end_nanos: BASE_TIME + 6 * minute + 12_345,
                lookback_nanos: 4 * minute,
                step_nanos: minute,
                rate_per_nanos: 2 * minute,
            };
            assert!(red_answers(&query));
            let (aligned, minutes) = red_window(&query);
            assert_eq!(aligned.end_nanos, BASE_TIME + 7 * minute);
            let mut picked = skein_store::red::RedSummary::default();
            picked.merge_where(&red, &minutes, Some(&query.services));
            for measure in [Measure::Calls, Measure::Errors, Measure::Latencies(0.95)] {
                let recount = compute(measure, &aligned, &spans);
                assert!(!recount.metrics.is_empty() && recount.metrics[0].metric_points.len() == 5);
                assert_eq!(
                    compute_from_red(measure, &aligned, &picked),
                    recount,
                    "{measure:?}, grouped: {group}"
                );
            }
        }
        let seconds = MetricsQuery {
            step_nanos: 15 * 1_000_000_000,
            ..red_window(&MetricsQuery {
                services: vec![],
                group_by_operation: false,
                span_kinds: vec![],
                end_nanos: 0,
                lookback_nanos: minute,
                step_nanos: minute,
                rate_per_nanos: minute,
            })
            .0
        };
        assert!(!red_answers(&seconds), "steps shorter than a minute are counted from the spans");
    }
}
