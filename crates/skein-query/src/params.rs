//! Parsing of search parameters (Jaeger v1 and v3) into a [`TraceQuery`].

use std::time::{SystemTime, UNIX_EPOCH};

use skein_model::{SpanKind, TimeRange, TraceId};
use skein_store::TraceQuery;

use crate::duration::parse_go_duration;

/// Default `limit` of a search.
pub const DEFAULT_LIMIT: usize = 20;
/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 10_000;
/// Default look-back of a search without `start` or `lookback` (as Jaeger: two days).
pub const DEFAULT_LOOKBACK_NANOS: u64 = 48 * 3600 * 1_000_000_000;

/// A parameter that could not be understood; becomes a 400 answer with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// Now, in unix nanoseconds.
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// What `/api/traces` was asked: either trace ids to fetch, or a search.
#[derive(Debug, PartialEq)]
pub enum TracesRequest {
    Ids(Vec<TraceId>),
    Search(TraceQuery),
}

/// Parses the query string pairs of Jaeger's `GET /api/traces`.
///
/// `service` is required unless `traceID` is given; `tags` is a JSON object of strings and
/// `tag=key:value` may repeat; durations use Go syntax; `start`/`end` are unix microseconds;
/// `lookback` (a Go duration, or `custom`) sets `start` when it is absent.
pub fn parse_jaeger_search(
    pairs: &[(String, String)],
    now: Option<u64>,
) -> Result<TracesRequest, ParamError> {
    let get =
        |name: &str| pairs.iter().rev().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str());
    let ids: Vec<_> = pairs.iter().filter(|(k, _)| k == "traceID").map(|(_, v)| v.as_str()).collect();
    if !ids.is_empty() {
        return ids.into_iter().map(parse_trace_id).collect::<Result<_, _>>().map(TracesRequest::Ids);
    }
    let service = get("service").ok_or_else(|| ParamError("parameter 'service' is required".into()))?;
    let mut query = TraceQuery {
        service: Some(service.to_owned()),
        operation: get("operation").map(str::to_owned),
        limit: DEFAULT_LIMIT,
        ..TraceQuery::default()
    };
    if let Some(tags) = get("tags") {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(tags).map_err(|e| {
            ParamError(format!(
                "malformed 'tags' parameter {tags:?}: expected a JSON object of strings ({e})"
            ))
        })?;
        for (k, v) in map {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            query.tags.push((k, v));
        }
    }
    for (_, tag) in pairs.iter().filter(|(k, _)| k == "tag") {
        let (k, v) = tag
            .split_once(':')
            .ok_or_else(|| ParamError(format!("malformed 'tag' parameter {tag:?}: expected key:value")))?;
        query.tags.push((k.to_owned(), v.to_owned()));
    }
    query.min_duration_nanos = get("minDuration").map(|d| duration_param("minDuration", d)).transpose()?;
    query.max_duration_nanos = get("maxDuration").map(|d| duration_param("maxDuration", d)).transpose()?;
    if let (Some(min), Some(max)) = (query.min_duration_nanos, query.max_duration_nanos)
        && min > max
    {
        return Err(ParamError("'maxDuration' must not be smaller than 'minDuration'".into()));
    }
    let end = match get("end") {
        Some(v) => micros_param("end", v)?,
        None => now.unwrap_or_else(now_nanos),
    };
    let start = match (get("start"), get("lookback")) {
        (Some(v), _) => micros_param("start", v)?,
        (None, Some(lb)) if lb != "custom" => end.saturating_sub(duration_param("lookback", lb)?),
        _ => end.saturating_sub(DEFAULT_LOOKBACK_NANOS),
    };
    if start > end {
        return Err(ParamError("'start' must not be after 'end'".into()));
    }
    // `end` is inclusive in Jaeger; our ranges are half-open.
    query.time = TimeRange::new(start, end.saturating_add(1));
    if let Some(limit) = get("limit") {
        query.limit =
            limit.parse::<usize>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
                ParamError(format!(
                    "malformed 'limit' parameter {limit:?}: expected a number from 1 to {MAX_LIMIT}"
                ))
            })?;
    }
    Ok(TracesRequest::Search(query))
}

/// Parses a trace id given as 1–32 hex digits.
pub fn parse_trace_id(s: &str) -> Result<TraceId, ParamError> {
    TraceId::from_hex(s)
        .map_err(|e| ParamError(format!("malformed trace id {s:?}: {e}; expected up to 32 hex digits")))
}

/// Parses Jaeger's `spanKind` parameter (`server`, `client`, …; empty means any).
pub fn parse_span_kind(s: Option<&str>) -> Result<Option<SpanKind>, ParamError> {
    match s {
        None | Some("") => Ok(None),
        Some(k) => SpanKind::parse(k).map(Some).ok_or_else(|| {
            ParamError(format!(
                "malformed 'spanKind' parameter {k:?}: expected one of unspecified, internal, server, client, producer, consumer"
            ))
        }),
    }
}

fn duration_param(name: &str, v: &str) -> Result<u64, ParamError> {
    parse_go_duration(v).map_err(|e| ParamError(format!("malformed '{name}' parameter: {e}")))
}

fn micros_param(name: &str, v: &str) -> Result<u64, ParamError> {
    v.parse::<u64>().ok().and_then(|us| us.checked_mul(1_000)).ok_or_else(|| {
        ParamError(format!("malformed '{name}' parameter {v:?}: expected unix time in microseconds"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<TracesRequest, ParamError> {
        let pairs: Vec<(String, String)> = q
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        parse_jaeger_search(&pairs, Some(1_000_000_000_000_000))
    }

    fn search(q: &str) -> TraceQuery {
        match parse(q) {
            Ok(TracesRequest::Search(q)) => q,
            other => panic!("expected a search, got {other:?}"),
        }
    }

    #[test]
    fn full_search() {
        let q = search(
            r#"service=api&operation=GET /x&tags={"http.status_code":"500","retry":true}&tag=a:b:c&minDuration=1ms&maxDuration=1s&start=100&end=200&limit=5"#,
        );
        assert_eq!(q.service.as_deref(), Some("api"));
        assert_eq!(q.operation.as_deref(), Some("GET /x"));
        assert_eq!(
            q.tags,
            [
                ("http.status_code".into(), "500".into()),
                ("retry".into(), "true".into()),
                ("a".into(), "b:c".into())
            ]
        );
        assert_eq!((q.min_duration_nanos, q.max_duration_nanos), (Some(1_000_000), Some(1_000_000_000)));
        assert_eq!(q.time, TimeRange::new(100_000, 200_001));
        assert_eq!(q.limit, 5);
    }

    #[test]
    fn defaults_and_lookback() {
        let q = search("service=api");
        assert_eq!(q.limit, DEFAULT_LIMIT);
        assert_eq!(
            q.time,
            TimeRange::new(1_000_000_000_000_000 - DEFAULT_LOOKBACK_NANOS, 1_000_000_000_000_001)
        );
        let q = search("service=api&lookback=1h");
        assert_eq!(q.time.start_unix_nano, 1_000_000_000_000_000 - 3_600_000_000_000);
        let q = search("service=api&lookback=custom&start=5");
        assert_eq!(q.time.start_unix_nano, 5_000);
    }

    #[test]
    fn trace_ids() {
        assert_eq!(
            parse("traceID=0af7651916cd43dd8448eb211c80319c&traceID=ab").unwrap(),
            TracesRequest::Ids(vec![
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
                TraceId::from_hex("ab").unwrap()
            ])
        );
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        let err = |q: &str| parse(q).unwrap_err().0;
        assert_eq!(err(""), "parameter 'service' is required");
        assert_eq!(
            err("service=a&limit=0"),
            "malformed 'limit' parameter \"0\": expected a number from 1 to 10000"
        );
        assert_eq!(
            err("service=a&limit=x"),
            "malformed 'limit' parameter \"x\": expected a number from 1 to 10000"
        );
        assert!(
            err("service=a&minDuration=5")
                .starts_with("malformed 'minDuration' parameter: invalid duration \"5\"")
        );
        assert_eq!(
            err("service=a&minDuration=2s&maxDuration=1s"),
            "'maxDuration' must not be smaller than 'minDuration'"
        );
        assert_eq!(
            err("service=a&start=x"),
            "malformed 'start' parameter \"x\": expected unix time in microseconds"
        );
        assert_eq!(err("service=a&start=10&end=5"), "'start' must not be after 'end'");
        assert!(
            err("service=a&tags=[1]")
                .starts_with("malformed 'tags' parameter \"[1]\": expected a JSON object")
        );
        assert_eq!(err("service=a&tag=novalue"), "malformed 'tag' parameter \"novalue\": expected key:value");
        assert_eq!(
            err("traceID=xyz"),
            "malformed trace id \"xyz\": not a hex string; expected up to 32 hex digits"
        );
    }
}
