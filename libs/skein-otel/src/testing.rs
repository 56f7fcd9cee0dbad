//! Assertions for your integration tests: a request must make **one connected trace**.
//!
//! [`Recorder`] records every finished span in memory; give each in-process "service" its own
//! provider from [`Recorder::provider`] so spans know their service. Then [`TraceCheck`]
//! asserts the shape: one trace id, exactly one root, every parent present, and who called
//! whom. Broken chains fail CI instead of production.
//!
//! ```
//! use opentelemetry::trace::{Tracer, TracerProvider as _, TraceContextExt};
//! use skein_otel::testing::Recorder;
//!
//! let recorder = Recorder::new();
//! let frontend = recorder.provider("frontend").tracer("test");
//! let backend = recorder.provider("backend").tracer("test");
//! frontend.in_span("GET /", |cx| {
//!     let _guard = cx.clone().attach();
//!     backend.in_span("handle", |_| {});
//! });
//! let check = recorder.check();
//! check.assert_connected();
//! check.assert_calls("frontend", "backend");
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};

/// A finished span and the service that made it.
#[derive(Debug, Clone)]
pub struct RecordedSpan {
    pub service: String,
    pub data: SpanData,
}

impl RecordedSpan {
    pub fn name(&self) -> &str {
        &self.data.name
    }

    pub fn trace_id(&self) -> TraceId {
        self.data.span_context.trace_id()
    }

    pub fn span_id(&self) -> SpanId {
        self.data.span_context.span_id()
    }

    /// The parent span id, `None` for a root.
    pub fn parent(&self) -> Option<SpanId> {
        (self.data.parent_span_id != SpanId::INVALID).then_some(self.data.parent_span_id)
    }

    /// The value of an attribute as a string.
    pub fn attr(&self, key: &str) -> Option<String> {
        self.data.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
    }
}

/// Records finished spans in memory, from any number of providers.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    spans: Arc<Mutex<Vec<RecordedSpan>>>,
}

#[derive(Debug)]
struct RecordingProcessor {
    service: String,
    spans: Arc<Mutex<Vec<RecordedSpan>>>,
}

impl SpanProcessor for RecordingProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.spans
            .lock()
            .expect("recorder lock")
            .push(RecordedSpan { service: self.service.clone(), data: span });
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracer provider for the service `service`, recording into this recorder.
    pub fn provider(&self, service: &str) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_span_processor(RecordingProcessor {
                service: service.to_owned(),
                spans: Arc::clone(&self.spans),
            })
            .with_resource(
                Resource::builder_empty()
                    .with_attribute(KeyValue::new("service.name", service.to_owned()))
                    .build(),
            )
            .build()
    }

    /// Installs a recording provider for `service` and the W3C propagators as the globals,
    /// so code instrumented with skein-otel records here.
    pub fn install_global(&self, service: &str) -> SdkTracerProvider {
        let provider = self.provider(service);
        crate::init::set_installed_provider(&provider);
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(
            crate::init::propagator_from_env().expect("default propagators are valid"),
        );
        provider
    }

    /// Every span finished so far.
    pub fn spans(&self) -> Vec<RecordedSpan> {
        self.spans.lock().expect("recorder lock").clone()
    }

    /// Forgets the spans recorded so far.
    pub fn clear(&self) {
        self.spans.lock().expect("recorder lock").clear();
    }

    /// Assertions over the spans recorded so far.
    pub fn check(&self) -> TraceCheck {
        TraceCheck { spans: self.spans() }
    }
}

/// Assertions over a set of spans that should form one trace.
#[derive(Debug, Clone)]
pub struct TraceCheck {
    pub spans: Vec<RecordedSpan>,
}

impl TraceCheck {
    pub fn new(spans: Vec<RecordedSpan>) -> Self {
        TraceCheck { spans }
    }

    /// Only the spans of one trace.
    pub fn trace(&self, id: TraceId) -> TraceCheck {
        TraceCheck { spans: self.spans.iter().filter(|s| s.trace_id() == id).cloned().collect() }
    }

    /// The first span named `name` (panics with the list of names when there is none).
    pub fn span(&self, name: &str) -> &RecordedSpan {
        self.spans.iter().find(|s| s.name() == name).unwrap_or_else(|| {
            panic!(
                "no span named {name:?}; recorded: {:?}",
                self.spans.iter().map(|s| s.name()).collect::<Vec<_>>()
            )
        })
    }

    /// Whether the spans form one connected trace; `Err` explains every break.
    pub fn connected(&self) -> Result<(), String> {
        let mut problems = String::new();
        if self.spans.is_empty() {
            return Err("no spans were recorded".into());
        }
        let ids: HashSet<TraceId> = self.spans.iter().map(RecordedSpan::trace_id).collect();
        if ids.len() > 1 {
            let _ = writeln!(problems, "spans are split over {} trace ids (context was lost):", ids.len());
            for id in &ids {
                let names: Vec<_> = self
                    .spans
                    .iter()
                    .filter(|s| s.trace_id() == *id)
                    .map(|s| format!("{}:{}", s.service, s.name()))
                    .collect();
                let _ = writeln!(problems, "  trace {id}: {}", names.join(", "));
            }
        }
        let present: HashSet<SpanId> = self.spans.iter().map(RecordedSpan::span_id).collect();
        let roots: Vec<_> = self.spans.iter().filter(|s| s.parent().is_none()).collect();
        if roots.len() != 1 {
            let names: Vec<_> = roots.iter().map(|s| format!("{}:{}", s.service, s.name())).collect();
            let _ = writeln!(
                problems,
                "expected exactly one root span, found {}: {}",
                roots.len(),
                names.join(", ")
            );
        }
        for s in &self.spans {
            if let Some(p) = s.parent().filter(|p| !present.contains(p)) {
                let _ = writeln!(
                    problems,
                    "span {}:{} has parent {p}, which was not recorded",
                    s.service,
                    s.name()
                );
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// Panics unless the spans form one connected trace.
    #[track_caller]
    pub fn assert_connected(&self) {
        if let Err(e) = self.connected() {
            panic!("the trace is broken:\n{e}");
        }
    }

    /// Whether some span of `caller` is the parent of a span of `callee`.
    pub fn calls(&self, caller: &str, callee: &str) -> bool {
        let by_id: HashMap<SpanId, &RecordedSpan> = self.spans.iter().map(|s| (s.span_id(), s)).collect();
        self.spans.iter().any(|s| {
            s.service == callee && s.parent().and_then(|p| by_id.get(&p)).is_some_and(|p| p.service == caller)
        })
    }

    /// Panics unless service `caller` called service `callee` within the trace.
    #[track_caller]
    pub fn assert_calls(&self, caller: &str, callee: &str) {
        if !self.calls(caller, callee) {
            let edges: Vec<String> =
                self.spans.iter().map(|s| format!("{}:{}", s.service, s.name())).collect();
            panic!(
                "no span of {caller:?} is the parent of a span of {callee:?}; spans: {}",
                edges.join(", ")
            );
        }
    }

    /// Panics unless `child` is a direct child of `parent` (both by span name).
    #[track_caller]
    pub fn assert_parent(&self, parent: &str, child: &str) {
        let p = self.span(parent);
        let c = self.span(child);
        assert_eq!(c.parent(), Some(p.span_id()), "{child:?} should be a child of {parent:?}");
        assert_eq!(c.trace_id(), p.trace_id(), "{child:?} should be in the trace of {parent:?}");
    }
}
