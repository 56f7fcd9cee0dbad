//! `tracing` spans through `skein_otel::tracing::layer()` join the OpenTelemetry trace, and
//! both APIs see one current context: an axum service with the server layer, `#[instrument]`
//! functions calling sqlx, reqwest and `tracer.start`; spawned tasks; events; errors;
//! sampling; many threads; log lines.
//!
//! One subscriber is installed for the whole binary (spawned tasks run on other threads), with
//! the layer recording into one `Recorder`; each test reads only the trace of its own root.

#![cfg(all(feature = "tracing", feature = "axum", feature = "reqwest", feature = "sqlx", feature = "logs"))]

mod support;

use std::sync::{Arc, LazyLock, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use skein_otel::FutureContextExt;
use skein_otel::http::client::TracingMiddleware;
use skein_otel::http::server::TraceLayer;
use skein_otel::sqlx::TracedPool;
use skein_otel::testing::{RecordedSpan, Recorder, TraceCheck};
use support::LogBuffer;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

struct Global {
    recorder: Recorder,
    provider: SdkTracerProvider,
    logs: Arc<Mutex<Vec<u8>>>,
}

/// The process-wide setup: a recorder installed as the global provider (and the W3C
/// propagator), and `registry + skein_otel::tracing::layer() + fmt with TraceIdFormat`.
static GLOBAL: LazyLock<Global> = LazyLock::new(|| {
    let recorder = Recorder::new();
    let provider = recorder.install_global("shop");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let writer = LogBuffer(logs.clone());
    let fmt =
        tracing_subscriber::fmt::layer().with_writer(move || writer.clone()).with_ansi(false).event_format(
            skein_otel::logs::TraceIdFormat::new(tracing_subscriber::fmt::format().with_ansi(false)),
        );
    // Built after install_global: `layer()` takes the provider skein-otel installed.
    tracing_subscriber::registry().with(skein_otel::tracing::layer()).with(fmt).init();
    Global { recorder, provider, logs }
});

/// The spans of the trace whose root is named `root`.
fn trace_of(root: &str) -> TraceCheck {
    let all = GLOBAL.recorder.check();
    let id = all.spans.iter().find(|s| s.name() == root && s.parent().is_none()).map(RecordedSpan::trace_id);
    let id = id.unwrap_or_else(|| {
        panic!(
            "no root span {root:?}; recorded: {:?}",
            all.spans.iter().map(|s| s.name()).collect::<Vec<_>>()
        )
    });
    all.trace(id)
}

fn attr(span: &RecordedSpan, key: &str) -> Option<Value> {
    span.data.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.clone())
}

// ---- an axum service with #[instrument] handlers -------------------------------------------

#[derive(Clone)]
struct App {
    db: TracedPool<sqlx::Sqlite>,
    http: reqwest_middleware::ClientWithMiddleware,
    stock_url: String,
}

#[tracing::instrument(skip(app), fields(order.id = id))]
async fn order(State(app): State<App>, Path(id): Path<i64>) -> String {
    tracing::info!(id, "loading order");
    let total = load_total(&app.db, id).await;
    let stock = check_stock(&app).await;
    let tax = {
        // An OpenTelemetry span made by hand inside #[instrument]: a child of `order`.
        let tracer = opentelemetry::global::tracer("pricing");
        tracer.in_span("compute tax", |_| total / 10)
    };
    format!("total {total} tax {tax} stock {stock}")
}

#[tracing::instrument(skip(db))]
async fn load_total(db: &TracedPool<sqlx::Sqlite>, cart: i64) -> i64 {
    sqlx::query_scalar("SELECT SUM(price) FROM items WHERE cart_id = ?")
        .bind(cart)
        .fetch_one(db)
        .await
        .unwrap()
}

#[tracing::instrument(skip(app), fields(otel.kind = "internal", stock.level))]
async fn check_stock(app: &App) -> String {
    let level = app.http.get(&app.stock_url).send().await.unwrap().text().await.unwrap();
    tracing::Span::current().record("stock.level", level.as_str());
    level
}

#[tracing::instrument]
async fn stock() -> &'static str {
    "high"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumented_axum_service_makes_one_connected_trace() {
    let g = &*GLOBAL;
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    sqlx::query("CREATE TABLE items (cart_id INTEGER, price INTEGER)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO items VALUES (42, 50), (42, 70)").execute(&pool).await.unwrap();
    let stock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stock_addr = stock_listener.local_addr().unwrap();
    let stock_app = Router::new().route("/stock", get(stock)).layer(TraceLayer::new());
    tokio::spawn(async move { axum::serve(stock_listener, stock_app).await.unwrap() });

    let app = App {
        db: TracedPool::new(pool).with_namespace("shop"),
        http: reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(TracingMiddleware::new())
            .build(),
        stock_url: format!("http://{stock_addr}/stock"),
    };
    let router = Router::new().route("/orders/{id}", get(order)).with_state(app).layer(TraceLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let body = reqwest::get(format!("http://{addr}/orders/42")).await.unwrap().text().await.unwrap();
    assert_eq!(body, "total 120 tax 12 stock high");
    // The server spans end after the answer is written.
    let check = eventually(|| {
        let check = trace_of("GET /orders/{id}");
        (check.spans.len() == 9).then_some(check)
    });
    check.assert_connected();
    check.assert_parent("GET /orders/{id}", "order");
    check.assert_parent("order", "load_total");
    check.assert_parent("load_total", "SELECT items");
    check.assert_parent("order", "check_stock");
    check.assert_parent("check_stock", "GET");
    check.assert_parent("GET", "GET /stock");
    check.assert_parent("GET /stock", "stock");
    check.assert_parent("order", "compute tax");

    let order = check.span("order");
    assert_eq!(order.data.span_kind, SpanKind::Internal);
    assert_eq!(attr(order, "order.id"), Some(Value::I64(42)));
    // #[instrument] records a destructured argument with Debug.
    assert_eq!(attr(order, "id"), Some(Value::from("42")), "#[instrument] records the arguments");
    assert_eq!(attr(check.span("load_total"), "cart"), Some(Value::I64(42)));
    let event = &order.data.events.events[0];
    assert_eq!(event.name, "loading order");
    assert!(event.attributes.iter().any(|kv| kv.key.as_str() == "id" && kv.value == Value::I64(42)));
    assert_eq!(attr(check.span("check_stock"), "stock.level"), Some(Value::from("high")));

    // The log line inside #[instrument] carries the ids of the span it was made in.
    let logs = String::from_utf8(g.logs.lock().unwrap().clone()).unwrap();
    let line = logs.lines().find(|l| l.contains("loading order")).expect("a log line");
    let want = format!("trace_id={} span_id={} ", order.trace_id(), order.span_id());
    assert!(line.starts_with(&want), "{line:?} should start with {want:?}");
}

fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(t) = f() {
            return t;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("not reached within 2 s")
}

// ---- spawned tasks ---------------------------------------------------------------------------

#[tracing::instrument]
async fn spawning_root() {
    // `fut.instrument(span)`: the span is made here, as a child of the current one.
    tokio::spawn(
        async { tracing::info_span!("instrumented task").in_scope(|| ()) }
            .instrument(tracing::info_span!("task span")),
    )
    .await
    .unwrap();
    // skein_otel::spawn carries the context: both APIs make children of `spawning_root`.
    skein_otel::spawn(async move {
        opentelemetry::global::tracer("t").in_span("otel in task", |_| ());
        tracing::info_span!("tracing in task").in_scope(|| ());
    })
    .await
    .unwrap();
    tokio::spawn(async { tracing::info_span!("in current context").in_scope(|| ()) }.in_current_context())
        .await
        .unwrap();
    // A spawn that forgets the context starts a new trace: the layer does not invent parents.
    tokio::spawn(async { tracing::info_span!("lost task").in_scope(|| ()) }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_tasks_stay_in_the_trace() {
    let _ = &*GLOBAL;
    spawning_root().await;
    let check = trace_of("spawning_root");
    check.assert_connected();
    check.assert_parent("spawning_root", "task span");
    check.assert_parent("task span", "instrumented task");
    check.assert_parent("spawning_root", "otel in task");
    check.assert_parent("spawning_root", "tracing in task");
    check.assert_parent("spawning_root", "in current context");
    assert!(check.spans.iter().all(|s| s.name() != "lost task"));
    let lost = trace_of("lost task");
    assert_eq!(lost.spans.len(), 1);
}

// ---- fields, special fields, errors, events, links -------------------------------------------

#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct Payment {
    cents: u32,
}

#[derive(Debug)]
struct Declined;

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("card declined")
    }
}

impl std::error::Error for Declined {}

#[tracing::instrument(err)]
fn charge(cents: u32) -> Result<(), Declined> {
    Err(Declined)
}

#[test]
fn fields_become_typed_attributes_and_special_fields_set_name_kind_and_status() {
    let _ = &*GLOBAL;
    let root = tracing::info_span!(
        "fields root",
        int = -3i64,
        unsigned = 7u64,
        huge = u64::MAX,
        float = 1.5f64,
        flag = true,
        text = "hello",
        shown = %"displayed",
        debugged = ?Payment { cents: 5 },
        later = tracing::field::Empty,
    );
    root.in_scope(|| {
        tracing::Span::current().record("later", 9i64);
        tracing::info_span!("renamed", otel.name = "GET /pay", otel.kind = "client").in_scope(|| ());
        tracing::info_span!("failed", otel.status_code = "error", otel.status_description = "no stock")
            .in_scope(|| ());
        tracing::info_span!("fine", otel.status_code = "OK").in_scope(|| ());
        let err = Declined;
        tracing::info_span!("with error", error = &err as &dyn std::error::Error).in_scope(|| ());
        tracing::info_span!("typed error", error = %err, error.type = "Declined").in_scope(|| ());
        let _ = charge(1999);
        tracing::warn!(attempt = 2, "retrying");
        tracing::error!(error = %Declined, "payment failed");
        let first = tracing::info_span!("producer");
        let second = tracing::info_span!("consumer");
        second.follows_from(&first);
        drop(first);
        drop(second);
    });
    drop(root);

    let check = trace_of("fields root");
    check.assert_connected();
    let root = check.span("fields root");
    assert_eq!(attr(root, "int"), Some(Value::I64(-3)));
    assert_eq!(attr(root, "unsigned"), Some(Value::I64(7)));
    assert_eq!(attr(root, "huge"), Some(Value::from(u64::MAX.to_string())));
    assert_eq!(attr(root, "float"), Some(Value::F64(1.5)));
    assert_eq!(attr(root, "flag"), Some(Value::Bool(true)));
    assert_eq!(attr(root, "text"), Some(Value::from("hello")));
    assert_eq!(attr(root, "shown"), Some(Value::from("displayed")));
    assert_eq!(attr(root, "debugged"), Some(Value::from("Payment { cents: 5 }")));
    assert_eq!(attr(root, "later"), Some(Value::I64(9)));
    assert_eq!(root.data.status, Status::Error { description: "card declined".into() });

    let renamed = check.span("GET /pay");
    assert_eq!(renamed.data.span_kind, SpanKind::Client);
    assert!(attr(renamed, "otel.name").is_none() && attr(renamed, "otel.kind").is_none());
    assert_eq!(check.span("failed").data.status, Status::Error { description: "no stock".into() });
    assert_eq!(check.span("fine").data.status, Status::Ok);
    let with_error = check.span("with error");
    assert_eq!(with_error.data.status, Status::Error { description: "card declined".into() });
    assert_eq!(attr(with_error, "error.type"), Some(Value::from("_OTHER")));
    assert_eq!(attr(check.span("typed error"), "error.type"), Some(Value::from("Declined")));

    // #[instrument(err)] emits an ERROR event with the error: an exception, and a failed span.
    let charge = check.span("charge");
    assert_eq!(charge.data.status, Status::Error { description: "card declined".into() });
    let exception = &charge.data.events.events[0];
    assert_eq!(exception.name, "exception");
    assert!(
        exception
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "exception.message" && kv.value == Value::from("card declined"))
    );

    let events: Vec<_> = root.data.events.events.iter().map(|e| e.name.to_string()).collect();
    assert_eq!(events, ["retrying", "exception"]);
    let retrying = &root.data.events.events[0];
    for (k, v) in [("attempt", Value::I64(2)), ("level", Value::from("WARN"))] {
        assert!(retrying.attributes.iter().any(|kv| kv.key.as_str() == k && kv.value == v), "{k}");
    }

    let producer = check.span("producer");
    let consumer = check.span("consumer");
    assert_eq!(consumer.data.links.links.len(), 1);
    assert_eq!(consumer.data.links.links[0].span_context.span_id(), producer.span_id());
}

#[test]
fn explicit_parents_and_roots() {
    let _ = &*GLOBAL;
    let a = tracing::info_span!("explicit a");
    let b = tracing::info_span!("explicit b");
    b.in_scope(|| {
        tracing::info_span!(parent: &a, "child of a").in_scope(|| ());
        tracing::info_span!(parent: None, "explicit root").in_scope(|| ());
    });
    drop((a, b));
    let a = trace_of("explicit a");
    a.assert_parent("explicit a", "child of a");
    assert_eq!(trace_of("explicit root").spans.len(), 1);
    assert_eq!(trace_of("explicit b").spans.len(), 1);
}

// ---- one current context ---------------------------------------------------------------------

#[test]
fn context_current_is_the_entered_tracing_span_and_the_innermost_wins() {
    let _ = &*GLOBAL;
    let tracer = opentelemetry::global::tracer("t");
    assert!(!Context::current().has_active_span());
    let outer = tracing::info_span!("one context");
    let outer_id = outer.in_scope(|| {
        let id = Context::current().span().span_context().span_id();
        assert_ne!(id, SpanId::INVALID, "Context::current() holds the entered span");
        // A tracing span inside an OTel span attached by hand is the OTel span's child.
        let manual = tracer.start("manual");
        let manual_cx = Context::current_with_span(manual);
        {
            let _g = manual_cx.clone().attach();
            tracing::info_span!("inside manual").in_scope(|| {
                assert_ne!(Context::current().span().span_context().span_id(), id);
            });
        }
        manual_cx.span().end();
        assert_eq!(Context::current().span().span_context().span_id(), id, "exit restores the context");
        id
    });
    assert!(!Context::current().has_active_span(), "nothing stays attached after exit");
    drop(outer);
    let check = trace_of("one context");
    check.assert_connected();
    assert_eq!(check.span("one context").span_id(), outer_id);
    check.assert_parent("one context", "manual");
    check.assert_parent("manual", "inside manual");
}

// ---- sampling --------------------------------------------------------------------------------

#[test]
fn a_non_sampled_parent_gives_non_recording_children() {
    let recorder = Recorder::new();
    let provider = recorder.provider("sampled");
    let subscriber =
        tracing_subscriber::registry().with(skein_otel::tracing::layer().with_tracer_provider(&provider));
    tracing::subscriber::with_default(subscriber, || {
        let remote = SpanContext::new(
            TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736),
            SpanId::from(0x00f067aa0ba902b7),
            TraceFlags::default(), // not sampled
            true,
            TraceState::default(),
        );
        let _g = Context::new().with_remote_span_context(remote).attach();
        tracing::info_span!("not sampled").in_scope(|| {
            let cx = Context::current();
            assert!(!cx.span().is_recording());
            assert_eq!(
                cx.span().span_context().trace_id(),
                TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736)
            );
            tracing::info!("dropped");
            tracing::info_span!("child").in_scope(|| assert!(!Context::current().span().is_recording()));
        });
    });
    assert!(recorder.spans().is_empty(), "{:?}", recorder.spans());

    // Ratio 0 at the root: nothing recorded, but ids still flow to children.
    let recorder = Recorder::new();
    let provider =
        SdkTracerProvider::builder().with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))).build();
    let subscriber =
        tracing_subscriber::registry().with(skein_otel::tracing::layer().with_tracer_provider(&provider));
    tracing::subscriber::with_default(subscriber, || {
        tracing::info_span!("off").in_scope(|| {
            let trace = Context::current().span().span_context().trace_id();
            tracing::info_span!("off child")
                .in_scope(|| assert_eq!(Context::current().span().span_context().trace_id(), trace));
        });
    });
    assert!(recorder.spans().is_empty());
}

#[test]
fn events_can_be_turned_off() {
    let recorder = Recorder::new();
    let provider = recorder.provider("quiet");
    let subscriber = tracing_subscriber::registry().with(
        skein_otel::tracing::layer().with_tracer_provider(&provider).with_events(false).with_location(true),
    );
    tracing::subscriber::with_default(subscriber, || {
        tracing::info_span!("quiet").in_scope(|| tracing::info!("not an event"));
    });
    let spans = recorder.spans();
    assert_eq!(spans.len(), 1);
    assert!(spans[0].data.events.events.is_empty());
    assert_eq!(attr(&spans[0], "code.file.path"), Some(Value::from(file!())));
    assert!(matches!(attr(&spans[0], "code.line.number"), Some(Value::I64(n)) if n > 0));
}

// ---- many threads ----------------------------------------------------------------------------

#[test]
fn many_threads_each_keep_their_own_chain() {
    let _ = &*GLOBAL;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let root = tracing::info_span!("thread root", thread = t);
                root.in_scope(|| {
                    for i in 0..50 {
                        tracing::info_span!("level 1", i).in_scope(|| {
                            tracing::info_span!("level 2").in_scope(|| ());
                        });
                    }
                });
                drop(root);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = GLOBAL.recorder.check();
    let roots: Vec<_> = all.spans.iter().filter(|s| s.name() == "thread root").collect();
    assert_eq!(roots.len(), 8);
    for root in roots {
        let check = all.trace(root.trace_id());
        check.assert_connected();
        assert_eq!(check.spans.len(), 101);
        let by_id: std::collections::HashMap<_, _> = check.spans.iter().map(|s| (s.span_id(), s)).collect();
        for s in &check.spans {
            let want = match s.name() {
                "thread root" => None,
                "level 1" => Some("thread root"),
                "level 2" => Some("level 1"),
                other => panic!("unexpected span {other}"),
            };
            assert_eq!(s.parent().map(|p| by_id[&p].name()), want);
        }
    }
}

/// The provider the binary installed is the one the layer records through.
#[test]
fn layer_uses_the_installed_provider() {
    let g = &*GLOBAL;
    let tracer = g.provider.tracer("direct");
    tracer.in_span("installed provider root", |cx| {
        let _g = cx.attach();
        tracing::info_span!("through the layer").in_scope(|| ());
    });
    let check = trace_of("installed provider root");
    check.assert_parent("installed provider root", "through the layer");
    assert!(check.spans.iter().all(|s| s.service == "shop"));
}
