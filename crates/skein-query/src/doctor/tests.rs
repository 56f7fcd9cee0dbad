//! The doctor on synthetic traces: each kind of break is named exactly, healthy traffic gives
//! nothing, and under concurrent load the split-trace pairing's precision and recall are
//! measured (printed) and held above a floor.

use skein_model::{AttrValue, Span, SpanId, SpanKind, TraceId};
use skein_store::ScanSpan;
use skein_store::testdata::SpanBuilder;

use super::*;

/// The doctor as the server runs it: on spans as a store's `scan` gives them, with only the
/// attributes the doctor reads (so these tests also fail when `reads_attribute` misses one).
fn diagnose(traces: &[Vec<Span>], config: &DoctorConfig) -> Report {
    let scanned: Vec<Vec<ScanSpan>> =
        traces.iter().map(|t| t.iter().map(|s| ScanSpan::of(s, reads_attribute)).collect()).collect();
    super::diagnose(&scanned, config)
}

fn str_attr<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match find_attr(&s.attributes, key)? {
        AttrValue::Str(v) => Some(v.as_str()),
        _ => None,
    }
}

const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000_000_000_000;

struct Gen {
    next: u64,
}

impl Gen {
    fn new() -> Self {
        Gen { next: 1 }
    }

    fn trace(&mut self) -> TraceId {
        self.next += 1;
        TraceId::from_bytes((self.next as u128 | 1 << 100).to_be_bytes()).unwrap()
    }

    fn id(&mut self) -> SpanId {
        self.next += 1;
        SpanId::from_bytes(self.next.to_be_bytes()).unwrap()
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        trace: TraceId,
        parent: Option<SpanId>,
        service: &str,
        name: &str,
        kind: SpanKind,
        start_ms: f64,
        end_ms: f64,
        attrs: &[(&str, AttrValue)],
    ) -> Span {
        let span = SpanBuilder::new(1, 1)
            .ids(trace, self.id(), parent)
            .service(service)
            .resource_attr("host.name", AttrValue::Str("box".into()))
            .resource_attr("process.pid", AttrValue::Int(42))
            .name(name)
            .kind(kind)
            .times(T0 + (start_ms * MS as f64) as u64, T0 + (end_ms * MS as f64) as u64);
        attrs.iter().fold(span, |span, (k, v)| span.attr(k, v.clone())).build()
    }
}

fn s(v: &str) -> AttrValue {
    AttrValue::Str(v.into())
}

fn config() -> DoctorConfig {
    // "Now" is long after every synthetic span: everything has settled.
    DoctorConfig::new(T0 + 3_600_000 * MS)
}

fn group(spans: Vec<Span>) -> Vec<Vec<Span>> {
    let mut by: BTreeMap<TraceId, Vec<Span>> = BTreeMap::new();
    for s in spans {
        by.entry(s.trace_id).or_default().push(s);
    }
    by.into_values().collect()
}

fn breaks(r: &Report) -> Vec<(FindingKind, String, Option<String>, usize)> {
    r.findings
        .iter()
        .filter(|f| f.broken)
        .map(|f| (f.kind, f.service.clone(), f.peer.clone(), f.count))
        .collect()
}

/// One checkout request: frontend SERVER → CLIENT → checkout SERVER → cart CLIENT → cart SERVER,
/// plus a DB call and a payment call. `propagate_to_cart: false` makes cart start a new trace.
fn request(g: &mut Gen, at: f64, user: usize, propagate_to_cart: bool, out: &mut Vec<Span>) {
    let t = g.trace();
    let root = g.span(
        t,
        None,
        "frontend",
        "GET /checkout",
        SpanKind::Server,
        at,
        at + 20.0,
        &[("url.path", s("/checkout"))],
    );
    let rpc = [("rpc.method", s("shop.Checkout/PlaceOrder"))];
    let client = g.span(
        t,
        Some(root.span_id),
        "frontend",
        "shop.Checkout/PlaceOrder",
        SpanKind::Client,
        at + 1.0,
        at + 19.0,
        &rpc,
    );
    let server = g.span(
        t,
        Some(client.span_id),
        "checkout",
        "shop.Checkout/PlaceOrder",
        SpanKind::Server,
        at + 1.2,
        at + 18.8,
        &rpc,
    );
    let db = g.span(
        t,
        Some(server.span_id),
        "checkout",
        "SELECT products",
        SpanKind::Client,
        at + 2.0,
        at + 3.0,
        &[("db.system.name", s("sqlite"))],
    );
    let pay = g.span(
        t,
        Some(server.span_id),
        "checkout",
        "charge card",
        SpanKind::Client,
        at + 12.0,
        at + 16.0,
        &[("peer.service", s("acme-pay"))],
    );
    let url = format!("http://127.0.0.1:8081/cart/user-{user}");
    let cart_client = g.span(
        t,
        Some(server.span_id),
        "checkout",
        "GET",
        SpanKind::Client,
        at + 4.0,
        at + 10.0,
        &[("url.full", s(&url)), ("http.request.method", s("GET")), ("server.port", AttrValue::Int(8081))],
    );
    let (ct, cparent) = if propagate_to_cart { (t, Some(cart_client.span_id)) } else { (g.trace(), None) };
    let cart_server = g.span(
        ct,
        cparent,
        "cart",
        "GET /cart/{user}",
        SpanKind::Server,
        at + 4.3,
        at + 9.7,
        &[
            ("url.path", s(&format!("/cart/user-{user}"))),
            ("http.route", s("/cart/{user}")),
            ("http.request.method", s("GET")),
            ("server.port", AttrValue::Int(8081)),
        ],
    );
    let redis = g.span(
        ct,
        Some(cart_server.span_id),
        "cart",
        "HGETALL",
        SpanKind::Client,
        at + 5.0,
        at + 6.0,
        &[("db.system.name", s("redis"))],
    );
    out.extend([root, client, server, db, pay, cart_client, cart_server, redis]);
}

#[test]
fn healthy_traffic_reports_no_break_and_full_health() {
    let mut g = Gen::new();
    let mut spans = Vec::new();
    for i in 0..200 {
        request(&mut g, i as f64 * 3.0, i, true, &mut spans); // overlapping requests
    }
    let r = diagnose(&group(spans), &config());
    assert_eq!(breaks(&r), vec![]);
    assert!(!r.has_breaks());
    assert!(r.edges.iter().all(|e| e.health() == 1.0 && e.split == 0), "{:?}", r.edges);
    let edge = |a: &str, b: &str| r.edges.iter().find(|e| e.caller == a && e.callee == b).unwrap().joined;
    assert_eq!(edge("frontend", "checkout"), 200);
    assert_eq!(edge("checkout", "cart"), 200);
    // The payment provider is a note, not a break; databases are not mentioned at all.
    let notes: Vec<_> = r.findings.iter().filter(|f| !f.kind.is_break()).collect();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (notes[0].kind, notes[0].service.as_str(), notes[0].peer.as_deref(), notes[0].count),
        (FindingKind::UninstrumentedPeer, "checkout", Some("acme-pay"), 200)
    );
}

#[test]
fn a_client_that_does_not_inject_is_a_split_edge_paired_with_its_continuation() {
    let mut g = Gen::new();
    let mut spans = Vec::new();
    for i in 0..20 {
        request(&mut g, i as f64 * 30.0, i, false, &mut spans);
    }
    let traces = group(spans.clone());
    let r = diagnose(&traces, &config());
    assert_eq!(breaks(&r), vec![(FindingKind::SplitTrace, "checkout".into(), Some("cart".into()), 20)]);
    let f = &r.findings[0];
    assert_eq!(f.operation, "GET");
    assert_eq!(f.peer_operation.as_deref(), Some("GET /cart/{user}"));
    assert!(f.message.starts_with("checkout → cart loses context"), "{}", f.message);
    assert!(f.confidence > 0.8, "{}", f.confidence);
    // Every pair joins the right halves: the cart root of the same user.
    for p in r.pairs.iter().filter(|p| p.kind == FindingKind::SplitTrace) {
        let client = spans.iter().find(|s| s.span_id == p.from_span).unwrap();
        let root = spans.iter().find(|s| s.span_id == p.to_span).unwrap();
        let url = str_attr(client, "url.full").unwrap();
        assert!(url.ends_with(str_attr(root, "url.path").unwrap()));
    }
    let e = r.edges.iter().find(|e| e.caller == "checkout" && e.callee == "cart").unwrap();
    assert_eq!((e.joined, e.split, e.health()), (0, 20, 0.0));
}

#[test]
fn a_task_spawned_without_context_is_detached_work_under_its_spawner() {
    let mut g = Gen::new();
    let mut spans = Vec::new();
    let mut expected = Vec::new();
    for i in 0..10 {
        let at = i as f64 * 7.0; // overlapping requests in one process
        let t = g.trace();
        let server = g.span(t, None, "checkout", "PlaceOrder", SpanKind::Server, at, at + 10.0, &[]);
        let insert = g.span(
            t,
            Some(server.span_id),
            "checkout",
            "INSERT orders",
            SpanKind::Client,
            at + 2.0,
            at + 4.0,
            &[("db.system.name", s("sqlite"))],
        );
        let lost = g.trace();
        let task =
            g.span(lost, None, "checkout", "send confirmation", SpanKind::Internal, at + 4.05, at + 9.0, &[]);
        expected.push((server.span_id, task.span_id));
        spans.extend([server, insert, task]);
    }
    let r = diagnose(&group(spans), &config());
    assert_eq!(breaks(&r), vec![(FindingKind::DetachedWork, "checkout".into(), None, 10)]);
    let f = &r.findings[0];
    assert_eq!(
        (f.operation.as_str(), f.peer_operation.as_deref()),
        ("send confirmation", Some("PlaceOrder"))
    );
    let pairs: Vec<(SpanId, SpanId)> = r.pairs.iter().map(|p| (p.from_span, p.to_span)).collect();
    for e in &expected {
        assert!(pairs.contains(e), "each task is paired with the request that spawned it");
    }
}

#[test]
fn a_middleware_that_starts_from_an_empty_context_is_detached_work_in_the_frontend() {
    let mut g = Gen::new();
    let mut spans = Vec::new();
    for i in 0..5 {
        let at = i as f64 * 30.0;
        let t = g.trace();
        let server = g.span(t, None, "frontend", "GET /checkout", SpanKind::Server, at, at + 20.0, &[]);
        let auth = g.span(
            t,
            Some(server.span_id),
            "frontend",
            "authenticate",
            SpanKind::Internal,
            at + 0.1,
            at + 0.2,
            &[],
        );
        let t2 = g.trace();
        let rpc = [("rpc.method", s("shop.Checkout/PlaceOrder"))];
        let client = g.span(
            t2,
            None,
            "frontend",
            "shop.Checkout/PlaceOrder",
            SpanKind::Client,
            at + 0.3,
            at + 19.0,
            &rpc,
        );
        let callee = g.span(
            t2,
            Some(client.span_id),
            "checkout",
            "shop.Checkout/PlaceOrder",
            SpanKind::Server,
            at + 0.5,
            at + 18.0,
            &rpc,
        );
        spans.extend([server, auth, client, callee]);
    }
    let r = diagnose(&group(spans.clone()), &config());
    assert_eq!(breaks(&r), vec![(FindingKind::DetachedWork, "frontend".into(), None, 5)]);
    assert_eq!(r.findings[0].peer_operation.as_deref(), Some("GET /checkout"));
    assert!(r.findings[0].message.contains("(client)"));
    assert!(r.findings[0].examples.iter().all(|e| e.unambiguous), "one request at a time");
    // One occurrence alone is too little evidence: a note, no pairs offered.
    let one: Vec<Span> = spans.into_iter().take(4).collect();
    let r = diagnose(&group(one), &config());
    assert_eq!(breaks(&r), vec![]);
    assert!(r.pairs.is_empty());
    let note = r.findings.iter().find(|f| f.kind == FindingKind::DetachedWork).expect("a note");
    assert!(note.message.starts_with("possibly detached work in frontend"), "{}", note.message);
}

/// The false alarm of issue 17: one process (the Python SDK, `SimpleSpanProcessor`) sends a
/// SERVER trace, then, after it ended, a PRODUCER root and an INTERNAL root. New roots are
/// normal; none of this is lost context.
#[test]
fn new_roots_after_a_request_are_not_detached_work() {
    let mut g = Gen::new();
    let t = g.trace();
    let server = g.span(t, None, "shop", "GET /checkout", SpanKind::Server, 0.0, 10.0, &[]);
    let (t2, t3) = (g.trace(), g.trace());
    let enqueue = g.span(t2, None, "shop", "enqueue", SpanKind::Producer, 12.0, 13.0, &[]);
    let job = g.span(t3, None, "shop", "refresh cache", SpanKind::Internal, 14.0, 20.0, &[]);
    let r = diagnose(&group(vec![server, enqueue, job]), &config());
    assert!(r.findings.is_empty(), "not even a note: {:?}", r.findings);
    assert!(r.pairs.is_empty());
}

/// A scheduled job, a poller, and a root that links to its cause, running while requests of
/// the same instance run: legitimate new roots, never a broken chain.
#[test]
fn scheduled_jobs_pollers_and_linked_roots_are_not_detached_work() {
    let mut g = Gen::new();
    let mut spans = Vec::new();
    // Requests of several operations keep the instance busy about half the time.
    for i in 0..400 {
        let at = i as f64 * 25.0;
        let t = g.trace();
        let name = ["GET /a", "GET /b", "POST /c"][i % 3];
        spans.push(g.span(t, None, "api", name, SpanKind::Server, at, at + 12.0, &[]));
    }
    // A poller every 170 ms, whatever runs.
    for k in 0..58 {
        let t = g.trace();
        let at = k as f64 * 170.0 + 3.0;
        spans.push(g.span(t, None, "api", "poll queue", SpanKind::Internal, at, at + 2.0, &[]));
    }
    // A job consuming work, linking to the request that asked for it.
    for k in 0..40 {
        let t = g.trace();
        let at = k as f64 * 250.0 + 5.0;
        let mut job = g.span(t, None, "api", "rebuild index", SpanKind::Internal, at, at + 4.0, &[]);
        job.links.push(skein_model::Link {
            trace_id: spans[k].trace_id,
            span_id: spans[k].span_id,
            trace_state: String::new(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            flags: 0,
        });
        spans.push(job);
    }
    let r = diagnose(&group(spans), &config());
    assert_eq!(breaks(&r), vec![], "{:#?}", r.findings);
    assert!(r.pairs.is_empty());
}

#[test]
fn recent_traces_are_counted_not_judged_until_the_ingest_is_quiet() {
    let mut g = Gen::new();
    let mut spans = Vec::new();
    request(&mut g, 0.0, 1, false, &mut spans);
    let traces = group(spans);
    let now = T0 + 100 * MS; // 80 ms after the request ended: within the grace period
    let fresh = DoctorConfig { now_nanos: now, ..config() };
    let r = diagnose(&traces, &fresh);
    assert_eq!(breaks(&r), vec![], "nothing judged yet");
    assert_eq!(r.unsettled_traces, 2, "both pieces are too recent to judge");
    // Once every exporter has flushed (the ingest is quiet), the same spans are judged.
    let quiet = DoctorConfig { now_nanos: now, ingest_quiet: true, ..config() };
    let r = diagnose(&traces, &quiet);
    assert_eq!(r.unsettled_traces, 0);
    assert_eq!(breaks(&r), vec![(FindingKind::SplitTrace, "checkout".into(), Some("cart".into()), 1)]);
}

#[test]
fn orphans_are_reported_once_settled() {
    let mut g = Gen::new();
    let t = g.trace();
    let missing = g.id();
    let orphan = g.span(t, Some(missing), "cart", "GET /cart/{user}", SpanKind::Server, 0.0, 5.0, &[]);
    let traces = vec![vec![orphan.clone()]];
    let r = diagnose(&traces, &config());
    assert_eq!(breaks(&r), vec![(FindingKind::OrphanSpans, "cart".into(), None, 1)]);
    assert_eq!(r.orphans, vec![(t, orphan.span_id, missing)]);
    // Within the grace period the parent may still arrive: nothing yet.
    let fresh = DoctorConfig { now_nanos: orphan.end_time_unix_nano + 1_000, ..config() };
    assert!(diagnose(&traces, &fresh).findings.is_empty());
}

#[test]
fn contradicting_attributes_never_pair() {
    let mut g = Gen::new();
    let (t1, t2) = (g.trace(), g.trace());
    let client = g.span(
        t1,
        None,
        "a",
        "GET",
        SpanKind::Client,
        0.0,
        10.0,
        &[("url.full", s("http://b/orders/1")), ("http.request.method", s("GET"))],
    );
    let other = g.span(
        t2,
        None,
        "b",
        "POST /pay",
        SpanKind::Server,
        1.0,
        9.0,
        &[("url.path", s("/pay")), ("http.request.method", s("POST"))],
    );
    let r = diagnose(&[vec![client], vec![other]], &config());
    assert!(!r.findings.iter().any(|f| f.kind == FindingKind::SplitTrace));
    // The unpaired call is an uninstrumented peer, since b never answered anyone in a trace.
    assert!(
        r.findings
            .iter()
            .any(|f| f.kind == FindingKind::UninstrumentedPeer && f.peer.as_deref() == Some("b"))
    );
}

#[test]
fn helpers_parse_urls_and_routes() {
    assert_eq!(url_path("http://h:1/a/b?q=1#f"), Some("/a/b"));
    assert_eq!(url_path("https://h"), None);
    assert!(route_matches("/cart/{user}", "/cart/user-1"));
    assert!(route_matches("/users/:id/orders", "/users/7/orders"));
    assert!(route_matches("/files/{*rest}", "/files/a/b/c"));
    assert!(!route_matches("/cart/{user}", "/cart"));
    assert!(!route_matches("/cart/{user}", "/carts/1"));
}

/// Many overlapping requests between the same two services, all losing context, with calls
/// that look alike (`same_path`) or that differ by path. Returns (precision, recall): the share
/// of reported pairs that join the right halves, and the share of broken calls paired rightly.
fn pairing_quality(n: usize, same_path: bool, spacing_ms: f64) -> (f64, f64) {
    let mut g = Gen::new();
    let mut spans = Vec::new();
    let mut truth = HashMap::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 10_000) as f64 / 10_000.0
    };
    for i in 0..n {
        let at = i as f64 * spacing_ms + rand() * spacing_ms;
        let dur = 5.0 + rand() * 45.0;
        let path = if same_path { "/pay".to_owned() } else { format!("/pay/{i}") };
        let (t1, t2) = (g.trace(), g.trace());
        let client = g.span(
            t1,
            None,
            "orders",
            "POST",
            SpanKind::Client,
            at,
            at + dur,
            &[("url.full", s(&format!("http://billing:9000{path}"))), ("http.request.method", s("POST"))],
        );
        let lag = 0.1 + rand() * 2.0;
        let server = g.span(
            t2,
            None,
            "billing",
            "POST /pay",
            SpanKind::Server,
            at + lag,
            at + dur - lag.min(dur / 2.0),
            &[("url.path", s(&path)), ("http.request.method", s("POST"))],
        );
        truth.insert(client.span_id, server.span_id);
        spans.extend([client, server]);
    }
    let r = diagnose(&group(spans), &config());
    let pairs: Vec<&Pair> = r.pairs.iter().filter(|p| p.kind == FindingKind::SplitTrace).collect();
    let correct = pairs.iter().filter(|p| truth.get(&p.from_span) == Some(&p.to_span)).count();
    (correct as f64 / pairs.len().max(1) as f64, correct as f64 / n as f64)
}

#[test]
fn pairing_precision_and_recall_under_concurrent_load() {
    // 1,000 calls; a new call every 2 ms on average while each lasts 5–50 ms: ~14 in flight.
    let (p_same, r_same) = pairing_quality(1000, true, 2.0);
    let (p_dist, r_dist) = pairing_quality(1000, false, 2.0);
    // Heavier: a new call every 0.5 ms (~55 in flight).
    let (p_heavy, r_heavy) = pairing_quality(1000, true, 0.5);
    println!(
        "doctor pairing, 1,000 broken calls orders → billing: identical calls, ~14 in flight: precision {:.3} recall {:.3}; \
         calls told apart by path: precision {:.3} recall {:.3}; identical calls, ~55 in flight: precision {:.3} recall {:.3}",
        p_same, r_same, p_dist, r_dist, p_heavy, r_heavy
    );
    // Attribute evidence makes pairing exact; timing alone still pairs most calls right.
    assert_eq!((p_dist, r_dist), (1.0, 1.0));
    assert!(
        p_same >= 0.8 && r_same >= 0.8,
        "timing alone pairs most identical calls right: {p_same} {r_same}"
    );
    assert!(p_heavy >= 0.5, "and still half of them under heavy overlap: {p_heavy}");
}
