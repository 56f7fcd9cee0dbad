//! Trace ids on log lines: a `tracing-subscriber` formatter that prefixes every event made
//! inside an OpenTelemetry span with `trace_id=… span_id=…`.
//!
//! ```no_run
//! use tracing_subscriber::fmt;
//! tracing_subscriber::fmt()
//!     .event_format(skein_otel::logs::TraceIdFormat::new(fmt::format()))
//!     .init();
//! ```
//!
//! No `tracing` → OpenTelemetry bridge is involved: the ids come from the OpenTelemetry
//! context that skein-otel's layers make current, so this costs one thread-local read per line.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps another event formatter and writes `trace_id=<32 hex> span_id=<16 hex> ` before it
/// when the current OpenTelemetry context has a span.
#[derive(Debug, Clone)]
pub struct TraceIdFormat<F> {
    inner: F,
}

impl<F> TraceIdFormat<F> {
    pub fn new(inner: F) -> Self {
        TraceIdFormat { inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for TraceIdFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            write!(writer, "trace_id={} span_id={} ", sc.trace_id(), sc.span_id())?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}
