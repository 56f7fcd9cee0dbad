//! `tracing` spans as OpenTelemetry spans, in the same trace, with **one** current context
//! (feature `tracing`).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tracing_subscriber::prelude::*;
//!
//! let guard = skein_otel::init("checkout").install()?;
//! tracing_subscriber::registry()
//!     .with(skein_otel::tracing::layer()) // after init: it uses the provider init installed
//!     .with(tracing_subscriber::fmt::layer())
//!     .init();
//!
//! #[tracing::instrument(fields(otel.kind = "internal"))]
//! fn price(order_id: u64) -> u64 {
//!     // `Context::current()` holds this function's span here: OpenTelemetry spans made in it
//!     // (skein-otel's client layers, `tracer.start`) are its children.
//!     42
//! }
//! price(7);
//! # guard.shutdown()?; Ok(()) }
//! ```
//!
//! What becomes what:
//! - a span's name is the `tracing` span's name, or its `otel.name` field;
//! - fields are attributes with their types (integers, floats, bools, strings; `Debug` and
//!   `Display` values as strings); `otel.kind` (`server`, `client`, `producer`, `consumer`,
//!   `internal`) sets the kind when the span is created, `otel.status_code` (`ok`, `error`)
//!   and `otel.status_description` its status;
//! - a field named `error` marks the span failed: status Error with the field's text as
//!   description, and `error.type` = `_OTHER` unless the span records `error.type` itself;
//! - events inside a span are span events named by their message, with their fields, `level`
//!   and `target`; an event with an `error` field (what `#[instrument(err)]` emits) is an
//!   `exception` event with `exception.message`, and at level ERROR it fails the span too.
//!   [`OtelLayer::with_events`] turns events off;
//! - `span.follows_from(other)` is a span link.
//!
//! **One current context.** While a `tracing` span is entered (by `#[instrument]`,
//! `Span::enter`, `in_scope`, or an `Instrument`ed future being polled), its OpenTelemetry span
//! is `opentelemetry::Context::current()`. A `tracing` span created while an OpenTelemetry
//! span is current (a server layer's, one from `tracer.start` attached by hand) becomes its
//! child; the innermost of the two is always the parent. So [`crate::spawn`],
//! `.in_current_context()`, `fut.instrument(span)` and skein-otel's layers all see one chain,
//! and [`crate::logs::TraceIdFormat`] writes the ids of the `tracing` span a line is logged in.
//!
//! Cost: `cargo bench -p skein-otel --all-features --bench tracing_layer` puts a span made
//! through this layer beside a raw SDK span with the same attributes and beside
//! `tracing-opentelemetry`; `docs/instrumentation-cost.md` has the figures.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use ::tracing::field::{Field, Visit};
use ::tracing::span::{Attributes, Id, Record};
use ::tracing::{Event, Level, Subscriber};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanBuilder, SpanKind, Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, ContextGuard, Key, KeyValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::LookupSpan;

/// The layer with the tracer provider [`crate::init`] installed (or, when the globals were
/// set some other way, the global provider). Build it after `init`, like every skein-otel
/// integration: it binds the provider when it is made.
pub fn layer() -> OtelLayer {
    let tracer = match crate::init::installed_provider() {
        Some(provider) => Tracer::Sdk(provider.tracer_with_scope(crate::scope())),
        None => Tracer::Global(crate::tracer()),
    };
    OtelLayer { tracer, events: true, location: false }
}

/// A `tracing_subscriber::Layer` that makes every `tracing` span an OpenTelemetry span.
/// See the [module documentation](self).
pub struct OtelLayer {
    tracer: Tracer,
    events: bool,
    location: bool,
}

impl fmt::Debug for OtelLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelLayer")
            .field("events", &self.events)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The SDK's tracer is used directly when skein-otel knows the provider (one allocation less
/// per span than through the global, boxed tracer).
enum Tracer {
    Sdk(SdkTracer),
    Global(BoxedTracer),
}

impl OtelLayer {
    /// Records through this provider instead of the one `init` installed.
    pub fn with_tracer_provider(mut self, provider: &SdkTracerProvider) -> Self {
        self.tracer = Tracer::Sdk(provider.tracer_with_scope(crate::scope()));
        self
    }

    /// Whether `tracing` events inside a span become span events (default: yes). Turn it off
    /// when the events go to logs anyway and spans should stay small.
    pub fn with_events(mut self, events: bool) -> Self {
        self.events = events;
        self
    }

    /// Whether spans record where they were made, as `code.file.path` and `code.line.number`
    /// (default: no; two more attributes per span).
    pub fn with_location(mut self, location: bool) -> Self {
        self.location = location;
        self
    }

    fn start(&self, builder: SpanBuilder, parent: &Context) -> Context {
        match &self.tracer {
            Tracer::Sdk(t) => parent.with_span(builder.start_with_context(t, parent)),
            Tracer::Global(t) => parent.with_span(builder.start_with_context(t, parent)),
        }
    }
}

/// What the layer keeps in each `tracing` span's extensions: the context that holds its
/// OpenTelemetry span (made current on enter, the parent of its children).
struct OtelData {
    cx: Context,
    /// Whether the span recorded `error.type` itself (then a failure keeps it).
    error_type: bool,
}

thread_local! {
    /// The contexts this thread's entered spans attached, innermost last. `ContextGuard` is
    /// bound to its thread, so it lives here rather than in the span's extensions.
    static ENTERED: RefCell<Vec<(Id, ContextGuard)>> = const { RefCell::new(Vec::new()) };
}

/// The special fields, read while a span's fields are visited.
#[derive(Default)]
struct Special {
    name: Option<String>,
    kind: Option<SpanKind>,
    status_ok: Option<bool>,
    status_description: Option<String>,
    error: Option<String>,
    error_type: bool,
}

impl Special {
    fn status(&self) -> Option<Status> {
        match (&self.error, self.status_ok) {
            (_, Some(true)) => Some(Status::Ok),
            (Some(e), None) => {
                Some(Status::error(self.status_description.clone().unwrap_or_else(|| e.clone())))
            }
            (_, Some(false)) => Some(Status::error(self.status_description.clone().unwrap_or_default())),
            (None, None) => None,
        }
    }
}

fn kind(s: &str) -> Option<SpanKind> {
    Some(match s.to_ascii_lowercase().as_str() {
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        "internal" => SpanKind::Internal,
        _ => return None,
    })
}

/// Reads a span's fields: attributes into `attributes`, the `otel.*` and `error` fields into
/// `special`.
struct SpanFields<'a> {
    attributes: &'a mut Vec<KeyValue>,
    special: Special,
}

impl SpanFields<'_> {
    fn string(&mut self, field: &Field, value: Cow<'_, str>) {
        match field.name() {
            "otel.name" => self.special.name = Some(value.into_owned()),
            "otel.kind" => self.special.kind = kind(&value),
            "otel.status_code" => {
                self.special.status_ok = match value.to_ascii_lowercase().as_str() {
                    "ok" => Some(true),
                    "error" => Some(false),
                    _ => None,
                }
            }
            "otel.status_description" | "otel.status_message" => {
                self.special.status_description = Some(value.into_owned())
            }
            "error" => self.special.error = Some(value.into_owned()),
            name => {
                self.special.error_type |= name == "error.type";
                self.attributes.push(KeyValue::new(Key::from_static_str(name), value.into_owned()))
            }
        }
    }

    fn value(&mut self, field: &Field, value: Value) {
        match field.name() {
            "error" => self.special.error = Some(value.to_string()),
            name if name.starts_with("otel.") => self.string(field, value.to_string().into()),
            name => self.attributes.push(KeyValue::new(Key::from_static_str(name), value)),
        }
    }
}

impl Visit for SpanFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.value(field, Value::F64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.value(field, Value::I64(v)),
            Err(_) => self.string(field, value.to_string().into()),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.string(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if field.name() == "error" {
            self.special.error = Some(value.to_string());
        } else {
            self.string(field, value.to_string().into());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string(field, format!("{value:?}").into());
    }
}

fn location(meta: &'static ::tracing::Metadata<'static>, attributes: &mut Vec<KeyValue>) {
    if let Some(file) = meta.file() {
        attributes.push(KeyValue::new("code.file.path", file));
    }
    if let Some(line) = meta.line() {
        attributes.push(KeyValue::new("code.line.number", i64::from(line)));
    }
}

/// `error.type` when a span failed without naming its error's type.
const OTHER_ERROR: &str = "_OTHER";

impl<S> tracing_subscriber::Layer<S> for OtelLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let meta = attrs.metadata();
        let mut attributes = Vec::with_capacity(meta.fields().len() + 2 * usize::from(self.location));
        let mut fields = SpanFields { attributes: &mut attributes, special: Special::default() };
        attrs.record(&mut fields);
        let mut special = fields.special;
        if self.location {
            location(meta, &mut attributes);
        }
        if special.error.is_some() && !special.error_type {
            attributes.push(KeyValue::new("error.type", OTHER_ERROR));
        }
        let name: Cow<'static, str> = match special.name.take() {
            Some(n) => n.into(),
            None => meta.name().into(),
        };
        let mut builder = SpanBuilder::from_name(name).with_attributes(attributes);
        if let Some(kind) = special.kind.take() {
            builder = builder.with_kind(kind);
        }
        // The parent: an explicit `parent:` span's context; for a contextual span, whatever
        // is current, which is the innermost of the entered `tracing` span (its context was
        // attached on enter) and any OpenTelemetry context attached inside it.
        let explicit = attrs.parent().and_then(|p| ctx.span(p));
        let cx = match explicit {
            Some(parent) => {
                let parent_cx = parent.extensions().get::<OtelData>().map(|d| d.cx.clone());
                match parent_cx {
                    Some(parent_cx) => self.start(builder, &parent_cx),
                    None => Context::map_current(|cur| self.start(builder, cur)),
                }
            }
            None if attrs.is_root() => self.start(builder, &Context::new()),
            None => Context::map_current(|cur| self.start(builder, cur)),
        };
        if let Some(status) = special.status() {
            cx.span().set_status(status);
        }
        span.extensions_mut()
            .insert(OtelData { cx, error_type: special.error_type || special.error.is_some() });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        let Some(data) = ext.get_mut::<OtelData>() else { return };
        let mut attributes = Vec::new();
        let mut fields = SpanFields { attributes: &mut attributes, special: Special::default() };
        values.record(&mut fields);
        let mut special = fields.special;
        data.error_type |= special.error_type;
        if special.error.is_some() && !data.error_type {
            data.error_type = true;
            attributes.push(KeyValue::new("error.type", OTHER_ERROR));
        }
        let otel = data.cx.span();
        otel.set_attributes(attributes);
        if let Some(name) = special.name.take() {
            otel.update_name(name);
        }
        if let Some(status) = special.status() {
            otel.set_status(status);
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: LayerContext<'_, S>) {
        let (Some(span), Some(other)) = (ctx.span(id), ctx.span(follows)) else { return };
        let Some(linked) = other.extensions().get::<OtelData>().map(|d| d.cx.span().span_context().clone())
        else {
            return;
        };
        if let Some(data) = span.extensions().get::<OtelData>() {
            data.cx.span().add_link(linked, Vec::new());
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        // OpenTelemetry's own diagnostics (its `internal-logs` feature) can be emitted while
        // its context stack is borrowed: they are not the application's events.
        if !self.events || event.metadata().target().starts_with("opentelemetry") {
            return;
        }
        if let Some(parent) = event.parent() {
            if let Some(span) = ctx.span(parent)
                && let Some(data) = span.extensions().get::<OtelData>()
            {
                add_event(&data.cx, event);
            }
        } else if event.is_contextual() {
            // The current context: the entered `tracing` span's, or an OpenTelemetry span
            // made current inside it (events belong to the innermost span).
            Context::map_current(|cx| add_event(cx, event));
        }
    }

    fn on_enter(&self, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(cx) = span.extensions().get::<OtelData>().map(|d| d.cx.clone()) else { return };
        let guard = cx.attach();
        ENTERED.with(|entered| entered.borrow_mut().push((id.clone(), guard)));
    }

    fn on_exit(&self, id: &Id, _ctx: LayerContext<'_, S>) {
        let guard = ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            let at = entered.iter().rposition(|(entered_id, _)| entered_id == id)?;
            Some(entered.remove(at).1)
        });
        // Dropped outside the borrow: dropping a guard touches OpenTelemetry's own stack only.
        drop(guard);
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        if let Some(data) = span.extensions_mut().remove::<OtelData>() {
            data.cx.span().end();
        }
    }
}

/// A `tracing` event's fields, as a span event.
#[derive(Default)]
struct EventFields {
    message: Option<String>,
    error: Option<String>,
    attributes: Vec<KeyValue>,
}

impl EventFields {
    fn string(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = Some(value),
            "error" => self.error = Some(value),
            name => self.attributes.push(KeyValue::new(Key::from_static_str(name), value)),
        }
    }
}

impl Visit for EventFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attributes.push(KeyValue::new(Key::from_static_str(field.name()), value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attributes.push(KeyValue::new(Key::from_static_str(field.name()), value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.record_i64(field, v),
            Err(_) => self.string(field, value.to_string()),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attributes.push(KeyValue::new(Key::from_static_str(field.name()), value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.string(field, value.to_owned());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.string(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string(field, format!("{value:?}"));
    }
}

fn add_event(cx: &Context, event: &Event<'_>) {
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    let meta = event.metadata();
    let mut fields = EventFields::default();
    event.record(&mut fields);
    let mut attributes = fields.attributes;
    attributes.push(KeyValue::new("level", meta.level().as_str()));
    attributes.push(KeyValue::new("target", meta.target().to_owned()));
    let name: Cow<'static, str> = match fields.error {
        Some(error) => {
            if *meta.level() == Level::ERROR {
                span.set_status(Status::error(error.clone()));
            }
            attributes.push(KeyValue::new("exception.message", error));
            if let Some(message) = fields.message {
                attributes.push(KeyValue::new("message", message));
            }
            "exception".into()
        }
        None => match fields.message {
            Some(message) => message.into(),
            None => meta.name().into(),
        },
    };
    span.add_event(name, attributes);
}
