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

use skein_model::{AttrValue, Span, SpanId, SpanKind, TraceId, find_attr};

/// How to analyse.
#[derive(Clone, Copy, Debug)]
pub struct DoctorConfig {
    /// Now, in unix nanoseconds.
    pub now_nanos: u64,
    /// Spans that ended after `now - grace` are too fresh to prove that something is missing.
    pub grace_nanos: u64,
    /// Clock skew tolerated between services (a callee may seem to start this much early).
    pub skew_nanos: u64,
    /// Detached work may start this long after the enclosing span ended (a spawned task is
    /// often first polled after its spawner answered).
    pub detach_slack_nanos: u64,
}

impl DoctorConfig {
    pub fn new(now_nanos: u64) -> Self {
        DoctorConfig {
            now_nanos,
            grace_nanos: 30_000_000_000,
            skew_nanos: 5_000_000,
            detach_slack_nanos: 50_000_000,
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
}

/// A problem (or note), aggregated over the spans that show it.
#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: FindingKind,
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
}

/// The doctor's report over a set of traces.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub traces: usize,
    pub spans: usize,
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
        self.findings.iter().any(|f| f.kind.is_break())
    }
}

const MAX_EXAMPLES: usize = 5;

/// Pairs `(span, other span, confidence)` by (service, peer service or operation).
type Groups = BTreeMap<(String, String), Vec<(usize, usize, f64)>>;

fn str_attr<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match find_attr(&s.attributes, key)? {
        AttrValue::Str(v) => Some(v.as_str()),
        _ => None,
    }
}

fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match find_attr(&s.attributes, key)? {
        AttrValue::Int(v) => Some(*v),
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
}

/// Analyses `traces` (each one trace's spans).
pub fn diagnose(traces: &[Vec<Span>], config: &DoctorConfig) -> Report {
    let settled_before = config.now_nanos.saturating_sub(config.grace_nanos);
    let settled = |s: &Span| s.end_time_unix_nano <= settled_before;

    // Index: every span, its trace, its children.
    let mut ix = Ix { spans: Vec::new(), trace_of: Vec::new(), children: Vec::new(), parent: Vec::new() };
    let mut orphans = Vec::new();
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
                    None => orphans.push(i),
                }
            }
        }
    }
    let mut report = Report { traces: traces.len(), spans: ix.spans.len(), ..Report::default() };

    // Client spans whose server side is not in their trace (databases excluded), and the
    // edges whose server side joined.
    let mut joined: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut unjoined = Vec::new();
    let mut peers_seen_joined: HashSet<(String, String)> = HashSet::new();
    for (i, s) in ix.spans.iter().enumerate() {
        if !is_outgoing(s.kind) {
            continue;
        }
        let entry_child = ix.children[i].iter().map(|&c| ix.spans[c]).find(|c| is_entry(c.kind));
        match entry_child {
            Some(c) => {
                *joined.entry((s.service_name().to_owned(), c.service_name().to_owned())).or_default() += 1;
                peers_seen_joined.insert((s.service_name().to_owned(), peer_name(s)));
            }
            None => {
                let database = find_attr(&s.attributes, "db.system.name").is_some()
                    || find_attr(&s.attributes, "db.system").is_some();
                if !database && settled(s) {
                    unjoined.push(i);
                }
            }
        }
    }

    // Root entry spans: the candidate continuations.
    let roots: Vec<usize> = (0..ix.spans.len())
        .filter(|&i| ix.spans[i].parent_span_id.is_none() && is_entry(ix.spans[i].kind))
        .collect();
    let mut roots_by_start = roots.clone();
    roots_by_start.sort_by_key(|&i| ix.spans[i].start_time_unix_nano);

    // Candidate pairs (client, root, score, gap), then a one-to-one matching: best evidence,
    // then tightest timing, first.
    let mut candidates: Vec<(usize, usize, u32, u64)> = Vec::new();
    let mut options: HashMap<usize, usize> = HashMap::new();
    for &c in &unjoined {
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
        }
    }
    candidates.sort_by(|a, b| b.2.cmp(&a.2).then(a.3.cmp(&b.3)));
    let (mut used_c, mut used_r) = (HashSet::new(), HashSet::new());
    let mut split_groups: Groups = BTreeMap::new();
    for (c, r, score, _) in candidates {
        if used_c.contains(&c) || used_r.contains(&r) {
            continue;
        }
        used_c.insert(c);
        used_r.insert(r);
        let strength = (0.4 + 0.15 * score as f64).min(1.0);
        let uniqueness = 1.0 / options[&c] as f64;
        let confidence = strength * (0.5 + 0.5 * uniqueness);
        let (client, root) = (ix.spans[c], ix.spans[r]);
        split_groups
            .entry((client.service_name().to_owned(), root.service_name().to_owned()))
            .or_default()
            .push((c, r, confidence));
    }

    for ((caller, callee), pairs) in &split_groups {
        let operation = most_common(pairs.iter().map(|&(c, _, _)| ix.spans[c].name.as_str()));
        let peer_operation = most_common(pairs.iter().map(|&(_, r, _)| ix.spans[r].name.as_str()));
        let confidence = pairs.iter().map(|p| p.2).sum::<f64>() / pairs.len() as f64;
        for &(c, r, conf) in pairs {
            report.pairs.push(pair(&ix, FindingKind::SplitTrace, c, r, conf));
        }
        report.findings.push(Finding {
            kind: FindingKind::SplitTrace,
            service: caller.clone(),
            peer: Some(callee.clone()),
            message: format!(
                "{caller} → {callee} loses context: {n} call{s} from {caller} ({operation}) started a new trace in \
                 {callee} ({peer_operation}) instead of continuing the caller's. The client does not inject \
                 traceparent, or the server does not extract it.",
                n = pairs.len(),
                s = if pairs.len() == 1 { "" } else { "s" },
            ),
            operation,
            peer_operation: Some(peer_operation),
            count: pairs.len(),
            confidence,
            examples: pairs.iter().take(MAX_EXAMPLES).map(|&(c, r, _)| example(&ix, c, Some(r))).collect(),
        });
    }

    // Uninstrumented peers: unjoined, unpaired calls to a peer that never showed a server side.
    let mut peers_paired: HashSet<(String, String)> = HashSet::new();
    for pairs in split_groups.values() {
        for &(c, _, _) in pairs {
            peers_paired.insert((ix.spans[c].service_name().to_owned(), peer_name(ix.spans[c])));
        }
    }
    let mut uninstrumented: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for &c in &unjoined {
        if used_c.contains(&c) {
            continue;
        }
        let key = (ix.spans[c].service_name().to_owned(), peer_name(ix.spans[c]));
        if !peers_seen_joined.contains(&key) && !peers_paired.contains(&key) {
            uninstrumented.entry(key).or_default().push(c);
        }
    }

    // Detached work: non-entry roots that begin while the service instance is handling another
    // trace's request (or just finished it), paired with the local entry span (the one whose
    // parent is not in this instance) that was active most recently.
    // Every span's instance, numbered; worked out once per resource.
    let mut instance_ids: HashMap<(String, String), u32> = HashMap::new();
    let mut by_resource: HashMap<*const skein_model::Resource, u32> = HashMap::new();
    let inst: Vec<u32> = ix
        .spans
        .iter()
        .map(|s| {
            *by_resource.entry(std::sync::Arc::as_ptr(&s.resource)).or_insert_with(|| {
                let next = instance_ids.len() as u32;
                *instance_ids.entry(instance(s)).or_insert(next)
            })
        })
        .collect();
    let mut entries_by_instance: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, s) in ix.spans.iter().enumerate() {
        // Roots that are not entry points are the detached work itself, never its spawner.
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
    let mut detached_groups: Groups = BTreeMap::new();
    for (d, span) in ix.spans.iter().enumerate() {
        if span.parent_span_id.is_some() || is_entry(span.kind) {
            continue;
        }
        let Some(list) = entries_by_instance.get(&inst[d]) else { continue };
        let start = span.start_time_unix_nano;
        let upto = list.partition_point(|&i| ix.spans[i].start_time_unix_nano <= start);
        // (enclosing span, (ended before `start`, how long before `start` it last showed activity))
        let mut best: Option<(usize, (bool, u64))> = None;
        let mut count = 0usize;
        for &e in &list[..upto] {
            let enclosing = ix.spans[e];
            if ix.trace_of[e] == ix.trace_of[d]
                || start > enclosing.end_time_unix_nano.saturating_add(config.detach_slack_nanos)
            {
                continue;
            }
            count += 1;
            // The latest moment before `start` at which this span began or a child of it ended.
            let activity = ix.children[e]
                .iter()
                .map(|&c| ix.spans[c].end_time_unix_nano)
                .filter(|&t| t <= start)
                .chain([enclosing.start_time_unix_nano])
                .max()
                .unwrap_or(enclosing.start_time_unix_nano);
            // A span still running beats one that just ended; then the most recently active.
            let rank = (start > enclosing.end_time_unix_nano, start - activity.min(start));
            if best.is_none_or(|(_, b)| rank < b) {
                best = Some((e, rank));
            }
        }
        if let Some((e, _)) = best {
            let confidence = 0.5 + 0.5 / count as f64;
            detached_groups
                .entry((span.service_name().to_owned(), span.name.to_string()))
                .or_default()
                .push((e, d, confidence));
        }
    }
    for ((service, operation), pairs) in &detached_groups {
        let confidence = pairs.iter().map(|p| p.2).sum::<f64>() / pairs.len() as f64;
        for &(e, d, conf) in pairs {
            report.pairs.push(pair(&ix, FindingKind::DetachedWork, e, d, conf));
        }
        let within = most_common(pairs.iter().map(|&(e, _, _)| ix.spans[e].name.as_str()));
        let kind = ix.spans[pairs[0].1].kind.as_str();
        report.findings.push(Finding {
            kind: FindingKind::DetachedWork,
            service: service.clone(),
            peer: None,
            message: format!(
                "{service} loses context inside the service: {n} '{operation}' span{s} ({kind}) started a new trace \
                 while '{within}' was running in the same process. Work was spawned without its context, or a \
                 middleware or handler started from an empty one.",
                n = pairs.len(),
                s = if pairs.len() == 1 { "" } else { "s" },
            ),
            operation: operation.clone(),
            peer_operation: Some(within),
            count: pairs.len(),
            confidence,
            examples: pairs.iter().take(MAX_EXAMPLES).map(|&(e, d, _)| example(&ix, d, Some(e))).collect(),
        });
    }

    // Orphans, settled only.
    let mut orphan_groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for &o in &orphans {
        let s = ix.spans[o];
        if settled(s) {
            orphan_groups.entry((s.service_name().to_owned(), s.name.to_string())).or_default().push(o);
            report.orphans.push((
                s.trace_id,
                s.span_id,
                s.parent_span_id.expect("an orphan has a parent id"),
            ));
        }
    }
    for ((service, operation), list) in &orphan_groups {
        report.findings.push(Finding {
            kind: FindingKind::OrphanSpans,
            service: service.clone(),
            peer: None,
            message: format!(
                "{n} '{operation}' span{s} of {service} name{verb} a parent that never arrived: the parent was \
                 not exported (sampled out, dropped, lost in a crash), or a wrong parent id was propagated.",
                n = list.len(),
                s = if list.len() == 1 { "" } else { "s" },
                verb = if list.len() == 1 { "s" } else { "" },
            ),
            operation: operation.clone(),
            peer_operation: None,
            count: list.len(),
            confidence: 1.0,
            examples: list.iter().take(MAX_EXAMPLES).map(|&o| example(&ix, o, None)).collect(),
        });
    }

    for ((service, peer), list) in &uninstrumented {
        let operation = most_common(list.iter().map(|&c| ix.spans[c].name.as_str()));
        report.findings.push(Finding {
            kind: FindingKind::UninstrumentedPeer,
            service: service.clone(),
            peer: Some(peer.clone()),
            message: format!(
                "{service} calls {peer} ({n} call{s}, '{operation}'), and no server span of it was ever seen: \
                 {peer} is not instrumented (or exports elsewhere). Not a broken chain.",
                n = list.len(),
                s = if list.len() == 1 { "" } else { "s" },
            ),
            operation,
            peer_operation: None,
            count: list.len(),
            confidence: 1.0,
            examples: list.iter().take(MAX_EXAMPLES).map(|&c| example(&ix, c, None)).collect(),
        });
    }
    report.findings.sort_by(|a, b| {
        (!a.kind.is_break(), std::cmp::Reverse(a.count), a.kind, &a.service).cmp(&(
            !b.kind.is_break(),
            std::cmp::Reverse(b.count),
            b.kind,
            &b.service,
        ))
    });

    let mut edges: BTreeMap<(String, String), EdgeHealth> = BTreeMap::new();
    for ((caller, callee), n) in joined {
        edges.insert((caller.clone(), callee.clone()), EdgeHealth { caller, callee, joined: n, split: 0 });
    }
    for ((caller, callee), pairs) in &split_groups {
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

fn pair(ix: &Ix<'_>, kind: FindingKind, from: usize, to: usize, confidence: f64) -> Pair {
    let (a, b) = (ix.spans[from], ix.spans[to]);
    Pair {
        kind,
        from_trace: a.trace_id,
        from_span: a.span_id,
        to_trace: b.trace_id,
        to_span: b.span_id,
        confidence_milli: (confidence * 1000.0).round() as u32,
    }
}

fn example(ix: &Ix<'_>, span: usize, other: Option<usize>) -> Example {
    let s = ix.spans[span];
    Example {
        trace_id: s.trace_id,
        span_id: s.span_id,
        other_trace_id: other.map(|o| ix.spans[o].trace_id),
        other_span_id: other.map(|o| ix.spans[o].span_id),
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

#[cfg(test)]
mod tests;
