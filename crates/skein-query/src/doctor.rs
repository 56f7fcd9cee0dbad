//! The trace doctor: finds where chains break, over the spans of a time window.
//!
//! - **Split traces.** A CLIENT (or PRODUCER) span of service A has no SERVER (CONSUMER) child,
//!   and a *root* SERVER (CONSUMER) span of service B in another trace starts inside the client
//!   span's time window and agrees with it on what was called (`rpc.method`; the path of
//!   `url.full` against `url.path` or `http.route`; `http.request.method`; `server.port`;
//!   `messaging.destination.name`). Such pairs are matched one to one, best evidence and
//!   tightest timing first, and reported per edge: "A → B loses context".
//! - **Detached work.** A root span that is not an entry point (INTERNAL, CLIENT, PRODUCER)
//!   begins while a span of another trace is running in the same service instance: work spawned
//!   without its context, or a middleware that started from an empty one. It is paired with the
//!   enclosing span that was active most recently before it started.
//! - **Orphan spans.** Spans whose parent is not in their trace.
//! - **Uninstrumented peers** (a note, not a break). CLIENT spans to a peer for which no server
//!   span ever shows up, joined or not; database clients (`db.system.name`) are expected leaves
//!   and are left out.
//! - **Propagation health** per edge: of the calls whose server side was seen, the share that
//!   joined the caller's trace.
//!
//! Spans that ended less than the grace period ago are not used as evidence that something is
//! missing (their peers may not be exported yet). The method and its limits are described in
//! `docs/doctor.md`.

use std::collections::{BTreeMap, HashMap, HashSet};

use skein_model::{AttrValue, SpanId, SpanKind, TraceId, find_attr};
/// The doctor reads spans as [`skein_store::SpanStore::scan`] gives them.
pub use skein_store::ScanSpan as Span;

/// How to analyse.
#[derive(Clone, Copy, Debug)]
pub struct DoctorConfig {
    /// Now, in unix nanoseconds.
    pub now_nanos: u64,
    /// Spans that ended after `now - grace` are too fresh to prove that something is missing…
    pub grace_nanos: u64,
    /// …unless the ingest has been quiet long enough that every exporter has flushed: then
    /// every span received is settled, however recent.
    pub ingest_quiet: bool,
    /// Clock skew tolerated between services (a callee may seem to start this much early).
    pub skew_nanos: u64,
    /// Detached work may start this long after the enclosing span ended (a spawned task is
    /// often first polled after its spawner answered); only groups of roots tied to one
    /// operation count such starts.
    pub detach_slack_nanos: u64,
}

impl DoctorConfig {
    pub fn new(now_nanos: u64) -> Self {
        DoctorConfig {
            now_nanos,
            grace_nanos: 30_000_000_000,
            ingest_quiet: false,
            skew_nanos: 5_000_000,
            detach_slack_nanos: 1_000_000,
        }
    }
}

/// What kind of break (or note) a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    SplitTrace,
    DetachedWork,
    OrphanSpans,
    UninstrumentedPeer,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::SplitTrace => "split_trace",
            FindingKind::DetachedWork => "detached_work",
            FindingKind::OrphanSpans => "orphan_spans",
            FindingKind::UninstrumentedPeer => "uninstrumented_peer",
        }
    }

    /// Whether this kind is a broken chain (the others are notes).
    pub fn is_break(self) -> bool {
        !matches!(self, FindingKind::UninstrumentedPeer)
    }
}

/// One piece of evidence: a span, and (for pairs) the span in the other piece of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub other_trace_id: Option<TraceId>,
    pub other_span_id: Option<SpanId>,
    /// For pairs: no other candidate on either side, so the two pieces surely belong together.
    pub unambiguous: bool,
}

/// A problem (or note), aggregated over the spans that show it.
#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: FindingKind,
    /// Whether this is a broken chain (else a note: an uninstrumented peer, or possible
    /// detached work with too little evidence).
    pub broken: bool,
    /// The service where the context is lost (the caller, for a split).
    pub service: String,
    /// The service that started a new trace (splits), or the peer (uninstrumented peers).
    pub peer: Option<String>,
    /// The span name that shows the problem (the client span, the detached root, the orphan).
    pub operation: String,
    /// The span it happened under (detached work) or that started the new trace (splits).
    pub peer_operation: Option<String>,
    pub count: usize,
    /// 0–1: how sure the pairing is (1 for orphans, which need no pairing).
    pub confidence: f64,
    pub message: String,
    /// What the finding rests on, in words: the spans seen and the numbers behind the verdict.
    pub evidence: String,
    pub examples: Vec<Example>,
}

/// Propagation health of one caller → callee edge.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeHealth {
    pub caller: String,
    pub callee: String,
    /// Calls whose server side joined the caller's trace.
    pub joined: usize,
    /// Calls whose server side started a new trace (paired splits).
    pub split: usize,
}

impl EdgeHealth {
    /// Share of calls that kept the trace, 0–1.
    pub fn health(&self) -> f64 {
        let seen = self.joined + self.split;
        if seen == 0 { 1.0 } else { self.joined as f64 / seen as f64 }
    }
}

/// Two pieces of one request: the span where the context was lost, and the root of the
/// continuation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub kind: FindingKind,
    pub from_trace: TraceId,
    pub from_span: SpanId,
    pub to_trace: TraceId,
    pub to_span: SpanId,
    pub confidence_milli: u32,
    /// No other candidate on either side.
    pub unambiguous: bool,
}

/// The doctor's report over a set of traces.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub traces: usize,
    pub spans: usize,
    /// Traces with a span too recent to be judged (see [`DoctorConfig::grace_nanos`]).
    pub unsettled_traces: usize,
    /// Breaks first (most occurrences first), then notes.
    pub findings: Vec<Finding>,
    pub edges: Vec<EdgeHealth>,
    /// Every pairing made, for per-trace diagnosis.
    pub pairs: Vec<Pair>,
    /// Spans with a missing parent: (trace, span, missing parent).
    pub orphans: Vec<(TraceId, SpanId, SpanId)>,
}

impl Report {
    /// Whether any finding is a broken chain.
    pub fn has_breaks(&self) -> bool {
        self.findings.iter().any(|f| f.broken)
    }
}

const MAX_EXAMPLES: usize = 5;

fn str_attr<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    s.str_attribute(key)
}

fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match s.attribute(key)? {
        AttrValue::Int(v) => Some(v),
        AttrValue::Str(v) => v.parse().ok(),
        _ => None,
    }
}

/// The path of a URL (`http://h:1/a/b?q` → `/a/b`).
fn url_path(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = &rest[rest.find('/')?..];
    Some(path.split(['?', '#']).next().unwrap_or(path))
}

/// Whether a route template (`/cart/{user}`, `/files/*path`, `/users/:id`) matches a path.
fn route_matches(route: &str, path: &str) -> bool {
    let (mut r, mut p) = (route.trim_end_matches('/').split('/'), path.trim_end_matches('/').split('/'));
    loop {
        match (r.next(), p.next()) {
            (None, None) => return true,
            (Some(seg), _) if seg.starts_with('*') || seg.starts_with("{*") => return true,
            (Some(seg), Some(part)) => {
                let param = (seg.starts_with('{') && seg.ends_with('}')) || seg.starts_with(':');
                if !param && seg != part {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// How well a root server span fits a client span, from their attributes: `None` when they
/// contradict each other, else a score (0: nothing to compare).
fn attribute_score(client: &Span, server: &Span) -> Option<u32> {
    let mut score = 0;
    let both = |k: &str| Some((str_attr(client, k)?, str_attr(server, k)?));
    if let Some((a, b)) = both("rpc.method") {
        if a != b {
            return None;
        }
        score += 3;
    }
    if let Some((a, b)) = both("messaging.destination.name") {
        if a != b {
            return None;
        }
        score += 3;
    }
    if let Some((a, b)) = both("http.request.method") {
        if a != b {
            return None;
        }
        score += 1;
    }
    if let Some(path) = str_attr(client, "url.full").and_then(url_path) {
        if let Some(server_path) = str_attr(server, "url.path") {
            if server_path != path {
                return None;
            }
            score += 3;
        } else if let Some(route) = str_attr(server, "http.route") {
            if !route_matches(route, path) {
                return None;
            }
            score += 2;
        }
    }
    if let (Some(a), Some(b)) = (int_attr(client, "server.port"), int_attr(server, "server.port")) {
        if a != b {
            return None;
        }
        score += 1;
    }
    // The host called and the host that answered, when both say, must be the same; so must
    // the service the caller says it calls.
    if let Some((a, b)) = both("server.address")
        && !a.eq_ignore_ascii_case(b)
    {
        return None;
    }
    if str_attr(client, "peer.service").is_some_and(|p| p != server.service_name()) {
        return None;
    }
    Some(score)
}

/// The attribute evidence a pairing needs (one strong match, or two weak ones).
const MIN_SCORE: u32 = 2;

fn is_entry(kind: SpanKind) -> bool {
    matches!(kind, SpanKind::Server | SpanKind::Consumer)
}

fn is_outgoing(kind: SpanKind) -> bool {
    matches!(kind, SpanKind::Client | SpanKind::Producer)
}

/// A service instance: `service.name` plus `service.instance.id`, or host and process id.
fn instance(s: &Span) -> (String, String) {
    let r = &s.resource.attributes;
    let text = |k: &str| match find_attr(r, k) {
        Some(AttrValue::Str(v)) => v.to_string(),
        Some(AttrValue::Int(v)) => v.to_string(),
        _ => String::new(),
    };
    let id = match text("service.instance.id") {
        id if !id.is_empty() => id,
        _ => format!("{}/{}", text("host.name"), text("process.pid")),
    };
    (s.service_name().to_owned(), id)
}

/// What a client span calls, for naming an uninstrumented peer.
fn peer_name(s: &Span) -> String {
    if let Some(p) = str_attr(s, "peer.service") {
        return p.to_owned();
    }
    match (str_attr(s, "server.address"), int_attr(s, "server.port")) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_owned(),
        _ => str_attr(s, "url.full")
            .and_then(|u| u.split_once("://").map(|(_, r)| r.split('/').next().unwrap_or(r).to_owned()))
            .unwrap_or_else(|| format!("(unknown peer of {})", s.name)),
    }
}

struct Ix<'a> {
    spans: Vec<&'a Span>,
    /// For every span, the index of its trace.
    trace_of: Vec<usize>,
    children: Vec<Vec<usize>>,
    /// For every span, its parent's index when the parent is in the trace.
    parent: Vec<Option<usize>>,
    /// Spans whose parent is not in their trace.
    orphans: Vec<usize>,
    /// For every span, whether it is old enough (or the ingest quiet enough) to be evidence
    /// that something is missing.
    settled: Vec<bool>,
}

impl<'a> Ix<'a> {
    /// Every span of `traces` (a retried duplicate once), its trace, parent and children.
    fn new(traces: &'a [Vec<Span>], config: &DoctorConfig) -> Self {
        let settled_before = config.now_nanos.saturating_sub(config.grace_nanos);
        let mut ix = Ix {
            spans: Vec::new(),
            trace_of: Vec::new(),
            children: Vec::new(),
            parent: Vec::new(),
            orphans: Vec::new(),
            settled: Vec::new(),
        };
        for (t, trace) in traces.iter().enumerate() {
            let base = ix.spans.len();
            let mut by_id: HashMap<SpanId, usize> = HashMap::with_capacity(trace.len());
            for s in trace {
                if by_id.contains_key(&s.span_id) {
                    continue; // a retried duplicate
                }
                by_id.insert(s.span_id, ix.spans.len());
                ix.spans.push(s);
                ix.trace_of.push(t);
                ix.children.push(Vec::new());
                ix.parent.push(None);
                ix.settled.push(config.ingest_quiet || s.end_time_unix_nano <= settled_before);
            }
            for i in base..ix.spans.len() {
                let s = ix.spans[i];
                if let Some(p) = s.parent_span_id {
                    match by_id.get(&p) {
                        Some(&pi) if pi != i => {
                            ix.children[pi].push(i);
                            ix.parent[i] = Some(pi);
                        }
                        Some(_) => {}
                        None => ix.orphans.push(i),
                    }
                }
            }
        }
        ix
    }

    /// Traces with a span that has not settled: too recent to judge.
    fn unsettled_traces(&self) -> usize {
        let mut traces: HashSet<usize> = HashSet::new();
        for (i, settled) in self.settled.iter().enumerate() {
            if !settled {
                traces.insert(self.trace_of[i]);
            }
        }
        traces.len()
    }
}

/// The span attributes the detectors read; [`trim`] keeps only these.
const READ_ATTRIBUTES: [&str; 11] = [
    "db.system",
    "db.system.name",
    "http.request.method",
    "http.route",
    "messaging.destination.name",
    "peer.service",
    "rpc.method",
    "server.address",
    "server.port",
    "url.full",
    "url.path",
];

/// Whether the detectors read a span attribute of this key: the doctor reads its window
/// through [`skein_store::SpanStore::scan`] with this, so a million spans fit in a few hundred
/// MiB.
pub fn reads_attribute(key: &str) -> bool {
    READ_ATTRIBUTES.contains(&key)
}

/// Analyses `traces` (each one trace's spans): one detector after the other, each adding its
/// findings and pairs to the report.
pub fn diagnose(traces: &[Vec<Span>], config: &DoctorConfig) -> Report {
    let ix = Ix::new(traces, config);
    let mut report = Report {
        traces: traces.len(),
        spans: ix.spans.len(),
        unsettled_traces: ix.unsettled_traces(),
        ..Report::default()
    };
    let calls = classify_calls(&ix);
    let splits = find_splits(&ix, &calls, config, &mut report);
    find_uninstrumented_peers(&ix, &calls, &splits, &mut report);
    find_detached_work(&ix, config, &mut report);
    find_orphans(&ix, &mut report);
    report.findings.sort_by(|a, b| {
        (!a.broken, std::cmp::Reverse(a.count), a.kind, &a.service).cmp(&(
            !b.broken,
            std::cmp::Reverse(b.count),
            b.kind,
            &b.service,
        ))
    });
    let mut edges: BTreeMap<(String, String), EdgeHealth> = BTreeMap::new();
    for ((caller, callee), n) in &calls.joined {
        edges.insert(
            (caller.clone(), callee.clone()),
            EdgeHealth { caller: caller.clone(), callee: callee.clone(), joined: *n, split: 0 },
        );
    }
    for ((caller, callee), pairs) in &splits.groups {
        edges
            .entry((caller.clone(), callee.clone()))
            .or_insert_with(|| EdgeHealth {
                caller: caller.clone(),
                callee: callee.clone(),
                joined: 0,
                split: 0,
            })
            .split += pairs.len();
    }
    report.edges = edges.into_values().collect();
    report
}

/// Outgoing calls: those whose server side joined (per edge), and the settled ones whose
/// server side is not in their trace (databases excluded: they are expected leaves).
struct Calls {
    joined: BTreeMap<(String, String), usize>,
    /// (caller service, peer) pairs with at least one joined call.
    peers_joined: HashSet<(String, String)>,
    unjoined: Vec<usize>,
}

fn classify_calls(ix: &Ix<'_>) -> Calls {
    let mut calls = Calls { joined: BTreeMap::new(), peers_joined: HashSet::new(), unjoined: Vec::new() };
    for (i, s) in ix.spans.iter().enumerate() {
        if !is_outgoing(s.kind) {
            continue;
        }
        match ix.children[i].iter().map(|&c| ix.spans[c]).find(|c| is_entry(c.kind)) {
            Some(c) => {
                *calls
                    .joined
                    .entry((s.service_name().to_owned(), c.service_name().to_owned()))
                    .or_default() += 1;
                calls.peers_joined.insert((s.service_name().to_owned(), peer_name(s)));
            }
            None => {
                let database = s.attribute("db.system.name").is_some() || s.attribute("db.system").is_some();
                if !database && ix.settled[i] {
                    calls.unjoined.push(i);
                }
            }
        }
    }
    calls
}

/// The split-trace pairs made, by (caller service, callee service), and the calls paired.
struct Splits {
    groups: BTreeMap<(String, String), Vec<Paired>>,
    paired_calls: HashSet<usize>,
}

/// One pairing: (span where the context was lost, span that continues the request).
#[derive(Clone, Copy)]
struct Paired {
    from: usize,
    to: usize,
    confidence: f64,
    /// The only candidate on both sides.
    unambiguous: bool,
}

/// Split traces: unjoined calls paired one to one with root SERVER/CONSUMER spans of other
/// traces that start inside them and agree with them on what was called. A root that carries
/// a link names its cause, so it is never taken for a lost context.
fn find_splits(ix: &Ix<'_>, calls: &Calls, config: &DoctorConfig, report: &mut Report) -> Splits {
    let mut roots_by_start: Vec<usize> = (0..ix.spans.len())
        .filter(|&i| {
            let s = ix.spans[i];
            s.parent_span_id.is_none() && is_entry(s.kind) && s.links == 0
        })
        .collect();
    roots_by_start.sort_by_key(|&i| ix.spans[i].start_time_unix_nano);

    // Candidate pairs (client, root, score, gap), then a one-to-one matching: best evidence,
    // then tightest timing, first.
    let mut candidates: Vec<(usize, usize, u32, u64)> = Vec::new();
    let mut options: HashMap<usize, usize> = HashMap::new();
    let mut suitors: HashMap<usize, usize> = HashMap::new();
    for &c in &calls.unjoined {
        let client = ix.spans[c];
        let from = client.start_time_unix_nano.saturating_sub(config.skew_nanos);
        let to = client.end_time_unix_nano.saturating_add(config.skew_nanos);
        let first = roots_by_start.partition_point(|&r| ix.spans[r].start_time_unix_nano < from);
        for &r in &roots_by_start[first..] {
            let root = ix.spans[r];
            if root.start_time_unix_nano > to {
                break;
            }
            if ix.trace_of[r] == ix.trace_of[c] {
                continue;
            }
            let Some(mut score) = attribute_score(client, root) else { continue };
            if root.end_time_unix_nano <= to {
                score += 1; // nested in the client span, as a synchronous call is
            }
            if score < MIN_SCORE {
                continue;
            }
            // A synchronous call's server side starts just after the client span and ends just
            // before it: the closer both ends, the likelier the pair.
            let gap = root.start_time_unix_nano.abs_diff(client.start_time_unix_nano)
                + root.end_time_unix_nano.abs_diff(client.end_time_unix_nano);
            candidates.push((c, r, score, gap));
            *options.entry(c).or_default() += 1;
            *suitors.entry(r).or_default() += 1;
        }
    }
    candidates.sort_by(|a, b| b.2.cmp(&a.2).then(a.3.cmp(&b.3)));
    let mut splits = Splits { groups: BTreeMap::new(), paired_calls: HashSet::new() };
    let mut used_roots = HashSet::new();
    for (c, r, score, _) in candidates {
        if splits.paired_calls.contains(&c) || used_roots.contains(&r) {
            continue;
        }
        splits.paired_calls.insert(c);
        used_roots.insert(r);
        let strength = (0.4 + 0.15 * score as f64).min(1.0);
        let uniqueness = 1.0 / options[&c].max(suitors[&r]) as f64;
        let (client, root) = (ix.spans[c], ix.spans[r]);
        splits
            .groups
            .entry((client.service_name().to_owned(), root.service_name().to_owned()))
            .or_default()
            .push(Paired {
                from: c,
                to: r,
                confidence: strength * (0.5 + 0.5 * uniqueness),
                unambiguous: options[&c] == 1 && suitors[&r] == 1,
            });
    }
    for ((caller, callee), pairs) in &splits.groups {
        let operation = most_common(pairs.iter().map(|p| ix.spans[p.from].name.as_str()));
        let peer_operation = most_common(pairs.iter().map(|p| ix.spans[p.to].name.as_str()));
        let confidence = pairs.iter().map(|p| p.confidence).sum::<f64>() / pairs.len() as f64;
        let ambiguous = pairs.iter().filter(|p| !p.unambiguous).count();
        for p in pairs {
            report.pairs.push(pair(ix, FindingKind::SplitTrace, p));
        }
        report.findings.push(Finding {
            kind: FindingKind::SplitTrace,
            broken: true,
            service: caller.clone(),
            peer: Some(callee.clone()),
            message: format!(
                "{caller} → {callee} loses context: {n} call{s} from {caller} ({operation}) started a new trace in \
                 {callee} ({peer_operation}) instead of continuing the caller's. The client does not inject \
                 traceparent, or the server does not extract it.{note}",
                n = pairs.len(),
                s = if pairs.len() == 1 { "" } else { "s" },
                note = if ambiguous > 0 {
                    format!(
                        " {ambiguous} of the pairs had other candidates at the same time (identical concurrent calls): \
                         the edge and the count are sure, which trace continues which is not."
                    )
                } else {
                    String::new()
                },
            ),
            operation,
            peer_operation: Some(peer_operation),
            count: pairs.len(),
            confidence,
            evidence: format!(
                "{} call span{} without a server child, each paired with a root server span of {callee} that started \
                 inside it and matched what was called",
                pairs.len(),
                if pairs.len() == 1 { "" } else { "s" }
            ),
            examples: examples(ix, pairs),
        });
    }
    splits
}

/// Examples of a finding's pairs: the unambiguous ones first.
fn examples(ix: &Ix<'_>, pairs: &[Paired]) -> Vec<Example> {
    let mut sorted: Vec<&Paired> = pairs.iter().collect();
    sorted.sort_by_key(|p| !p.unambiguous);
    sorted
        .into_iter()
        .take(MAX_EXAMPLES)
        .map(|p| Example { unambiguous: p.unambiguous, ..example(ix, p.from, Some(p.to)) })
        .collect()
}

/// Uninstrumented peers: unjoined, unpaired calls to a peer that never showed a server side.
fn find_uninstrumented_peers(ix: &Ix<'_>, calls: &Calls, splits: &Splits, report: &mut Report) {
    let mut peers_paired: HashSet<(String, String)> = HashSet::new();
    for &c in &splits.paired_calls {
        peers_paired.insert((ix.spans[c].service_name().to_owned(), peer_name(ix.spans[c])));
    }
    let mut uninstrumented: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for &c in &calls.unjoined {
        // A producer's message may be consumed in a trace of its own that links back (or not
        // yet): an unanswered PRODUCER span says nothing about its peer's instrumentation.
        if splits.paired_calls.contains(&c) || ix.spans[c].kind == SpanKind::Producer {
            continue;
        }
        let key = (ix.spans[c].service_name().to_owned(), peer_name(ix.spans[c]));
        if !calls.peers_joined.contains(&key) && !peers_paired.contains(&key) {
            uninstrumented.entry(key).or_default().push(c);
        }
    }
    for ((service, peer), list) in uninstrumented {
        let operation = most_common(list.iter().map(|&c| ix.spans[c].name.as_str()));
        report.findings.push(Finding {
            kind: FindingKind::UninstrumentedPeer,
            broken: false,
            message: format!(
                "{service} calls {peer} ({n} call{s}, '{operation}'), and no server span of it was ever seen: \
                 {peer} is not instrumented (or exports elsewhere). Not a broken chain.",
                n = list.len(),
                s = if list.len() == 1 { "" } else { "s" },
            ),
            evidence: format!("{} call span{} to {peer} without a server child, none ever joined", list.len(), if list.len() == 1 { "" } else { "s" }),
            service,
            peer: Some(peer),
            operation,
            peer_operation: None,
            count: list.len(),
            confidence: 1.0,
            examples: list.iter().take(MAX_EXAMPLES).map(|&c| example(ix, c, None)).collect(),
        });
    }
}

/// Every span's service instance, numbered (worked out once per resource).
fn instances(ix: &Ix<'_>) -> Vec<u32> {
    let mut instance_ids: HashMap<(String, String), u32> = HashMap::new();
    let mut by_resource: HashMap<*const skein_model::Resource, u32> = HashMap::new();
    ix.spans
        .iter()
        .map(|s| {
            *by_resource.entry(std::sync::Arc::as_ptr(&s.resource)).or_insert_with(|| {
                let next = instance_ids.len() as u32;
                *instance_ids.entry(instance(s)).or_insert(next)
            })
        })
        .collect()
}

/// Detached work: roots that are not entry points (INTERNAL, CLIENT) beginning while the same
/// service instance handles a request of another trace. One such root proves nothing (a
/// scheduled job, a poller, start-up work may start at any moment), so a group of them, by
/// (service, name), is a broken chain only when the evidence says they belong to requests:
/// - at least [`DETACHED_MIN`] of them, during requests of the instance (or within the slack
///   after one ended, for tasks first polled after their spawner answered: only a group can
///   show that, never a single root);
/// - and either they are tied to one operation — 90 % of them during its requests, 90 % of its
///   requests hosting one, and about as many of them as requests (a job on its own clock does
///   not keep that count) — or chance cannot explain them: 90 % began while a request was
///   running, and the probability of that for unrelated work, given how busy the instance was,
///   is under 1 %.
///
/// PRODUCER roots (queue producers start traces) and roots with links (they name their
/// cause) are never detached work. A group with too little evidence that started inside a
/// running request is reported as a note, and its pairs are not offered as "continues in".
fn find_detached_work(ix: &Ix<'_>, config: &DoctorConfig, report: &mut Report) {
    let inst = instances(ix);
    // Local entry spans (parent in another instance, or entry roots) by instance, by start.
    let mut entries_by_instance: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, s) in ix.spans.iter().enumerate() {
        let local_entry = match ix.parent[i] {
            Some(p) => inst[p] != inst[i],
            None => is_entry(s.kind),
        };
        if local_entry {
            entries_by_instance.entry(inst[i]).or_default().push(i);
        }
    }
    for list in entries_by_instance.values_mut() {
        list.sort_by_key(|&i| ix.spans[i].start_time_unix_nano);
    }
    let busy = busy_fractions(ix, &inst, &entries_by_instance, 0);

    struct Occurrence {
        root: usize,
        host: Option<(usize, bool, usize)>, // (entry span, inside it, competing candidates)
    }
    let mut groups: BTreeMap<(String, String), Vec<Occurrence>> = BTreeMap::new();
    for (d, span) in ix.spans.iter().enumerate() {
        if span.parent_span_id.is_some()
            || is_entry(span.kind)
            || span.kind == SpanKind::Producer
            || span.links != 0
        {
            continue;
        }
        let start = span.start_time_unix_nano;
        let mut host: Option<(usize, (bool, u64))> = None;
        let (mut count, mut running) = (0usize, 0usize);
        if let Some(list) = entries_by_instance.get(&inst[d]) {
            let upto = list.partition_point(|&i| ix.spans[i].start_time_unix_nano <= start);
            for &e in &list[..upto] {
                let enclosing = ix.spans[e];
                if ix.trace_of[e] == ix.trace_of[d]
                    || start > enclosing.end_time_unix_nano.saturating_add(config.detach_slack_nanos)
                {
                    continue;
                }
                count += 1;
                running += usize::from(start < enclosing.end_time_unix_nano);
                // The latest moment before `start` at which this span began or a child ended.
                let activity = ix.children[e]
                    .iter()
                    .map(|&c| ix.spans[c].end_time_unix_nano)
                    .filter(|&t| t <= start)
                    .chain([enclosing.start_time_unix_nano])
                    .max()
                    .unwrap_or(enclosing.start_time_unix_nano);
                // A span still running beats one that just ended; then the most recently active.
                let rank = (start >= enclosing.end_time_unix_nano, start - activity.min(start));
                if host.is_none_or(|(_, b)| rank < b) {
                    host = Some((e, rank));
                }
            }
        }
        groups.entry((span.service_name().to_owned(), span.name.to_string())).or_default().push(Occurrence {
            root: d,
            // Unambiguous: the only request running then, or the only candidate at all.
            host: host.map(|(e, (after, _))| (e, !after, if after { count } else { running })),
        });
    }

    for ((service, operation), occurrences) in groups {
        let hosted: Vec<&Occurrence> = occurrences.iter().filter(|o| o.host.is_some()).collect();
        let inside = hosted.iter().filter(|o| o.host.is_some_and(|h| h.1)).count();
        let host_of = |o: &Occurrence| o.host.expect("hosted").0;
        let within = most_common(hosted.iter().map(|o| ix.spans[host_of(o)].name.as_str()));
        let following: Vec<&&Occurrence> =
            hosted.iter().filter(|o| ix.spans[host_of(o)].name.as_str() == within).collect();
        let hosting_requests: HashSet<usize> = following.iter().map(|o| host_of(o)).collect();
        // Requests of that operation in the instances where these roots ran.
        let group_instances: HashSet<u32> = occurrences.iter().map(|o| inst[o.root]).collect();
        let requests = group_instances
            .iter()
            .flat_map(|i| entries_by_instance.get(i).into_iter().flatten())
            .filter(|&&e| ix.spans[e].name.as_str() == within && ix.settled[e])
            .count()
            .max(1);
        let n_all = occurrences.len();
        // Tied to `within`: (nearly) every one of its requests hosts one of these roots, and
        // there are about as many roots as requests — what work spawned per request looks
        // like, and what a job on its own clock does not.
        let tied = following.len() * 10 >= n_all * 9
            && hosting_requests.len() * 10 >= requests * 9
            && following.len().abs_diff(requests) * 10 <= requests;
        // Or beyond chance: roots that nearly all began while a request was running, in an
        // instance idle often enough that this is unlikely for unrelated work.
        let chance: f64 = hosted
            .iter()
            .filter(|o| o.host.is_some_and(|h| h.1))
            .map(|o| busy.get(&inst[o.root]).copied().unwrap_or(1.0))
            .product();
        let unlikely = inside * 10 >= n_all * 9 && chance < 0.01;
        let broken = hosted.len() >= DETACHED_MIN && (tied || unlikely);
        if !broken && inside == 0 {
            // Roots that began after a request ended, too few or too loose to tie to it: new
            // roots are normal (jobs, producers, start-up work), not lost context.
            continue;
        }
        let pairs: Vec<Paired> = hosted
            .iter()
            .map(|o| {
                let (e, _, candidates) = o.host.expect("hosted");
                Paired {
                    from: e,
                    to: o.root,
                    confidence: 0.5 + 0.5 / candidates as f64,
                    unambiguous: candidates == 1,
                }
            })
            .collect();
        let kind = ix.spans[occurrences[0].root].kind.as_str();
        let n = hosted.len();
        let share = hosted.len() as f64 / n_all as f64;
        let confidence = match (broken, tied) {
            (true, true) => share,
            (true, false) => share * (1.0 - chance),
            (false, _) => 0.5 * (1.0 - chance) * share,
        };
        if broken {
            for p in &pairs {
                report.pairs.push(pair(ix, FindingKind::DetachedWork, p));
            }
        }
        report.findings.push(Finding {
            kind: FindingKind::DetachedWork,
            broken,
            service: service.clone(),
            peer: None,
            message: if broken {
                format!(
                    "{service} loses context inside the service: {n} '{operation}' span{s} ({kind}) started a new trace \
                     while '{within}' was running in the same process. Work was spawned without its context, or a \
                     middleware or handler started from an empty one.",
                    s = if n == 1 { "" } else { "s" },
                )
            } else {
                format!(
                    "possibly detached work in {service}: {n} '{operation}' root span{s} ({kind}) started while '{within}' \
                     was running, too few or too loosely tied to requests to tell lost context from unrelated work \
                     (a scheduled job, a poller). Not counted as a broken chain.",
                    s = if n == 1 { "" } else { "s" },
                )
            },
            evidence: format!(
                "{n} of {n_all} '{operation}' roots started during a request of the same instance ({inside} while it \
                 was running); {} during '{within}', in {} of its {requests} request{rs}; chance alone: {chance:.3}",
                following.len(),
                hosting_requests.len(),
                rs = if requests == 1 { "" } else { "s" },
            ),
            operation: operation.clone(),
            peer_operation: Some(within),
            count: n,
            confidence,
            examples: examples(ix, &pairs)
                .into_iter()
                .map(|e| Example {
                    trace_id: e.other_trace_id.expect("paired"),
                    span_id: e.other_span_id.expect("paired"),
                    other_trace_id: Some(e.trace_id),
                    other_span_id: Some(e.span_id),
                    ..e
                })
                .collect(),
        });
    }
}

/// Roots of one group that make detached work a broken chain, at the least.
pub const DETACHED_MIN: usize = 3;

/// For every instance, the share of its active time (first span start to last span end) during
/// which it was handling a request (local entry spans, extended by `slack`).
fn busy_fractions(
    ix: &Ix<'_>,
    inst: &[u32],
    entries_by_instance: &HashMap<u32, Vec<usize>>,
    slack: u64,
) -> HashMap<u32, f64> {
    let mut active: HashMap<u32, (u64, u64)> = HashMap::new();
    for (i, s) in ix.spans.iter().enumerate() {
        let a = active.entry(inst[i]).or_insert((u64::MAX, 0));
        a.0 = a.0.min(s.start_time_unix_nano);
        a.1 = a.1.max(s.end_time_unix_nano);
    }
    entries_by_instance
        .iter()
        .map(|(&i, list)| {
            let (from, to) = active[&i];
            let (mut busy, mut cur): (u64, Option<(u64, u64)>) = (0, None);
            for &e in list {
                let (s, t) =
                    (ix.spans[e].start_time_unix_nano, ix.spans[e].end_time_unix_nano.saturating_add(slack));
                cur = match cur {
                    Some((a, b)) if s <= b => Some((a, b.max(t))),
                    Some((a, b)) => {
                        busy += b - a;
                        Some((s, t))
                    }
                    None => Some((s, t)),
                };
            }
            if let Some((a, b)) = cur {
                busy += b - a;
            }
            (i, (busy as f64 / (to.saturating_sub(from)).max(1) as f64).min(1.0))
        })
        .collect()
}

/// Orphans: settled spans whose parent never arrived.
fn find_orphans(ix: &Ix<'_>, report: &mut Report) {
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for &o in &ix.orphans {
        let s = ix.spans[o];
        if ix.settled[o] {
            groups.entry((s.service_name().to_owned(), s.name.to_string())).or_default().push(o);
            report.orphans.push((
                s.trace_id,
                s.span_id,
                s.parent_span_id.expect("an orphan has a parent id"),
            ));
        }
    }
    for ((service, operation), list) in groups {
        report.findings.push(Finding {
            kind: FindingKind::OrphanSpans,
            broken: true,
            message: format!(
                "{n} '{operation}' span{s} of {service} name{verb} a parent that never arrived: the parent was \
                 not exported (sampled out, dropped, lost in a crash), or a wrong parent id was propagated.",
                n = list.len(),
                s = if list.len() == 1 { "" } else { "s" },
                verb = if list.len() == 1 { "s" } else { "" },
            ),
            evidence: format!("{} span{} whose parent id is not in the trace, settled", list.len(), if list.len() == 1 { "" } else { "s" }),
            service,
            peer: None,
            operation,
            peer_operation: None,
            count: list.len(),
            confidence: 1.0,
            examples: list.iter().take(MAX_EXAMPLES).map(|&o| example(ix, o, None)).collect(),
        });
    }
}

fn pair(ix: &Ix<'_>, kind: FindingKind, p: &Paired) -> Pair {
    let (a, b) = (ix.spans[p.from], ix.spans[p.to]);
    Pair {
        kind,
        from_trace: a.trace_id,
        from_span: a.span_id,
        to_trace: b.trace_id,
        to_span: b.span_id,
        confidence_milli: (p.confidence * 1000.0).round() as u32,
        unambiguous: p.unambiguous,
    }
}

fn example(ix: &Ix<'_>, span: usize, other: Option<usize>) -> Example {
    let s = ix.spans[span];
    Example {
        trace_id: s.trace_id,
        span_id: s.span_id,
        other_trace_id: other.map(|o| ix.spans[o].trace_id),
        other_span_id: other.map(|o| ix.spans[o].span_id),
        unambiguous: true,
    }
}

fn most_common<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in names {
        *counts.entry(n).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(n, c)| (c, std::cmp::Reverse(n)))
        .map(|(n, _)| n.to_owned())
        .unwrap_or_default()
}

pub mod report;

#[cfg(test)]
mod tests;
