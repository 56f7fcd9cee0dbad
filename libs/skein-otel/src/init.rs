//! `skein_otel::init`: tracer provider, OTLP exporter, sampler, resource and propagators.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC, by default to `http://localhost:4317`.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, by default to `http://localhost:4318/v1/traces`.
    HttpProtobuf,
    /// OTLP/HTTP with JSON bodies.
    HttpJson,
}

impl Protocol {
    fn parse(s: &str) -> Result<Protocol, InitError> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Ok(Protocol::HttpJson),
            other => Err(InitError::Config(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use grpc, http/protobuf or http/json"
            ))),
        }
    }
}

/// Why [`Init::install`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A setting (given in code or in an `OTEL_*` variable) is invalid.
    #[error("invalid OpenTelemetry configuration: {0}")]
    Config(String),
    /// The exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The background runtime for the gRPC exporter could not start.
    #[error("cannot start the exporter's background runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Why [`OtelGuard::shutdown`] could not flush everything.
#[derive(Debug, thiserror::Error)]
#[error("flushing spans at shutdown failed: {0}")]
pub struct ShutdownError(String);

/// Starts configuring OpenTelemetry for the service `service_name`.
///
/// Settings made in code are defaults: the standard `OTEL_*` environment variables override
/// them, so operators can redirect or tune a deployed service without a rebuild.
///
/// | setting | code | environment (wins) |
/// |---|---|---|
/// | service name | `init(name)` | `OTEL_SERVICE_NAME`, `service.name` in `OTEL_RESOURCE_ATTRIBUTES` |
/// | resource | [`Init::resource_attribute`] | `OTEL_RESOURCE_ATTRIBUTES` |
/// | protocol | [`Init::protocol`] (default gRPC) | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` |
/// | endpoint | [`Init::endpoint`] | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT` |
/// | timeout | [`Init::timeout`] | `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT` |
/// | compression | gzip | `OTEL_EXPORTER_OTLP_COMPRESSION` (`gzip`, `none`) |
/// | sampler | [`Init::sample_ratio`] (parent-based) | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` |
/// | propagators | W3C `tracecontext,baggage` | `OTEL_PROPAGATORS` |
/// | disabled | — | `OTEL_SDK_DISABLED=true` |
pub fn init(service_name: impl Into<String>) -> Init {
    Init {
        service_name: service_name.into(),
        service_version: None,
        attributes: Vec::new(),
        protocol: None,
        endpoint: None,
        timeout: None,
        sample_ratio: None,
        set_global: true,
        headers: Vec::new(),
    }
}

/// The builder returned by [`init`].
#[derive(Debug, Clone)]
#[must_use = "call .install() to set up OpenTelemetry"]
pub struct Init {
    service_name: String,
    service_version: Option<String>,
    attributes: Vec<KeyValue>,
    protocol: Option<Protocol>,
    endpoint: Option<String>,
    timeout: Option<Duration>,
    sample_ratio: Option<f64>,
    set_global: bool,
    headers: Vec<(String, String)>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Init {
    /// `service.version` of the resource.
    pub fn service_version(mut self, version: impl Into<String>) -> Self {
        self.service_version = Some(version.into());
        self
    }

    /// Adds a resource attribute (`deployment.environment.name`, …).
    pub fn resource_attribute(mut self, attribute: KeyValue) -> Self {
        self.attributes.push(attribute);
        self
    }

    /// The OTLP transport; gRPC unless set here or in the environment.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// The collector's base URL, like `OTEL_EXPORTER_OTLP_ENDPOINT`: `http://host:4317` for
    /// gRPC, `http://host:4318` for HTTP (`/v1/traces` is appended).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sends this header (gRPC metadata) with every export, e.g. `authorization` with
    /// `Bearer <token>` for a Skein with `--ingest-token-file`. `OTEL_EXPORTER_OTLP_HEADERS`
    /// adds to these.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// Time limit of one export request (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Samples this share of new traces (0.0 – 1.0); a child follows its parent's decision.
    pub fn sample_ratio(mut self, ratio: f64) -> Self {
        self.sample_ratio = Some(ratio);
        self
    }

    /// Whether to install the provider and propagator as the process-wide globals
    /// (default: yes). Tests that run several "services" in one process turn this off and
    /// use [`OtelGuard::provider`].
    pub fn set_global(mut self, set_global: bool) -> Self {
        self.set_global = set_global;
        self
    }

    /// The resource: SDK defaults (`telemetry.sdk.*`, `OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_SERVICE_NAME`) over ours (service, host, process).
    fn resource(&self) -> Resource {
        let mut ours = vec![KeyValue::new("service.name", self.service_name.clone())];
        if let Some(v) = &self.service_version {
            ours.push(KeyValue::new("service.version", v.clone()));
        }
        if let Ok(host) = gethostname::gethostname().into_string() {
            ours.push(KeyValue::new("host.name", host));
        }
        ours.push(KeyValue::new("process.pid", std::process::id() as i64));
        if let Some(exe) =
            std::env::current_exe().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            ours.push(KeyValue::new("process.executable.name", exe));
        }
        ours.push(KeyValue::new("process.runtime.name", "rust"));
        ours.extend(self.attributes.iter().cloned());
        // Resource::builder() starts from the SDK's detectors (telemetry.sdk.*, OTEL_* env);
        // the environment must win over code, so merge the detected resource last.
        let detected = Resource::builder().build();
        let mut merged: Vec<KeyValue> = ours;
        let env_service = env("OTEL_SERVICE_NAME").is_some()
            || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
        for (k, v) in detected.iter() {
            if k.as_str() == "service.name" && !env_service {
                continue; // the SDK's "unknown_service" fallback must not replace ours
            }
            merged.retain(|kv| kv.key != *k);
            merged.push(KeyValue::new(k.clone(), v.clone()));
        }
        Resource::builder_empty().with_attributes(merged).build()
    }

    fn sampler(&self) -> Result<Option<Sampler>, InitError> {
        if env("OTEL_TRACES_SAMPLER").is_some() {
            return Ok(None); // the SDK reads OTEL_TRACES_SAMPLER(_ARG) itself
        }
        match self.sample_ratio {
            None => Ok(None),
            Some(r) if (0.0..=1.0).contains(&r) => {
                Ok(Some(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))))
            }
            Some(r) => Err(InitError::Config(format!("sample ratio {r} is outside 0.0 – 1.0"))),
        }
    }

    fn effective_protocol(&self) -> Result<Protocol, InitError> {
        match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL")) {
            Some(p) => Protocol::parse(&p),
            None => Ok(self.protocol.unwrap_or(Protocol::Grpc)),
        }
    }

    /// Builds the provider and exporter, installs the globals, and returns the guard that
    /// flushes at shutdown. With `OTEL_SDK_DISABLED=true` nothing is installed and the guard
    /// does nothing.
    pub fn install(self) -> Result<OtelGuard, InitError> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(OtelGuard { provider: None, runtime: None });
        }
        let propagator = propagator_from_env()?;
        let protocol = self.effective_protocol()?;
        let compress = !env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
            .or_else(|| env("OTEL_EXPORTER_OTLP_COMPRESSION"))
            .is_some_and(|c| c.eq_ignore_ascii_case("none"));
        let endpoint_from_env = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let timeout_from_env =
            env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_some() || env("OTEL_EXPORTER_OTLP_TIMEOUT").is_some();

        let settings = ExportSettings {
            endpoint: if endpoint_from_env { None } else { self.endpoint.clone() },
            timeout: if timeout_from_env { None } else { self.timeout },
            compress,
            headers: self.headers.clone(),
        };
        let (exporter, runtime) = match protocol {
            Protocol::Grpc => grpc_exporter(&settings)?,
            Protocol::HttpProtobuf | Protocol::HttpJson => (http_exporter(&settings, protocol)?, None),
        };
        let mut builder =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(self.resource());
        if let Some(sampler) = self.sampler()? {
            builder = builder.with_sampler(sampler);
        }
        let provider = builder.build();
        if self.set_global {
            set_installed_provider(&provider);
            opentelemetry::global::set_tracer_provider(provider.clone());
            opentelemetry::global::set_text_map_propagator(propagator);
        }
        Ok(OtelGuard { provider: Some(provider), runtime })
    }
}

/// The SDK provider last installed as the global one by skein-otel (`init` or
/// `Recorder::install_global`): the global API only hands out boxed tracers, and the `tracing`
/// layer records through the SDK's own tracer.
static INSTALLED: std::sync::RwLock<Option<SdkTracerProvider>> = std::sync::RwLock::new(None);

pub(crate) fn set_installed_provider(provider: &SdkTracerProvider) {
    *INSTALLED.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(provider.clone());
}

#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) fn installed_provider() -> Option<SdkTracerProvider> {
    INSTALLED.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
type Exporter = opentelemetry_otlp::SpanExporter;

/// Without an exporter feature there is nothing to export with: `install` fails with a
/// message naming the feature, and this type is never built.
#[cfg(not(any(feature = "otlp-grpc", feature = "otlp-http")))]
#[derive(Debug)]
enum Exporter {}

#[cfg(not(any(feature = "otlp-grpc", feature = "otlp-http")))]
impl opentelemetry_sdk::trace::SpanExporter for Exporter {
    async fn export(
        &self,
        _: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        match *self {}
    }
}

/// What the exporter is told in code (`None` where the environment decides).
#[cfg_attr(not(any(feature = "otlp-grpc", feature = "otlp-http")), allow(dead_code))]
struct ExportSettings {
    endpoint: Option<String>,
    timeout: Option<Duration>,
    compress: bool,
    headers: Vec<(String, String)>,
}

#[cfg(feature = "otlp-grpc")]
fn grpc_exporter(s: &ExportSettings) -> Result<(Exporter, Option<tokio::runtime::Runtime>), InitError> {
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    // The exporter's connection lives on a runtime of its own, so flushing never waits on
    // the application's runtime (a current-thread runtime would otherwise deadlock at shutdown).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("skein-otel-export")
        .enable_all()
        .build()?;
    let exporter = {
        let _entered = rt.enter();
        let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(e) = &s.endpoint {
            b = b.with_endpoint(e.clone());
        }
        if let Some(t) = s.timeout {
            b = b.with_timeout(t);
        }
        if s.compress {
            b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
        }
        if !s.headers.is_empty() {
            let mut headers = http::HeaderMap::new();
            for (name, value) in &s.headers {
                let key = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| InitError::Config(format!("header name {name:?}: {e}")))?;
                let value = http::HeaderValue::from_str(value).map_err(|_| {
                    InitError::Config(format!("the value of header {name:?} is not a valid header value"))
                })?;
                headers.insert(key, value);
            }
            let metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            b = b.with_metadata(metadata);
        }
        b.build()?
    };
    Ok((exporter, Some(rt)))
}

#[cfg(not(feature = "otlp-grpc"))]
fn grpc_exporter(_: &ExportSettings) -> Result<(Exporter, Option<tokio::runtime::Runtime>), InitError> {
    Err(InitError::Config("OTLP over gRPC needs skein-otel's `otlp-grpc` feature".into()))
}

#[cfg(feature = "otlp-http")]
fn http_exporter(s: &ExportSettings, protocol: Protocol) -> Result<Exporter, InitError> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let mut b = opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(
        if protocol == Protocol::HttpJson {
            opentelemetry_otlp::Protocol::HttpJson
        } else {
            opentelemetry_otlp::Protocol::HttpBinary
        },
    );
    if let Some(e) = &s.endpoint {
        b = b.with_endpoint(format!("{}/v1/traces", e.trim_end_matches('/')));
    }
    if let Some(t) = s.timeout {
        b = b.with_timeout(t);
    }
    if s.compress {
        b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    if !s.headers.is_empty() {
        b = b.with_headers(s.headers.iter().cloned().collect());
    }
    Ok(b.build()?)
}

#[cfg(not(feature = "otlp-http"))]
fn http_exporter(_: &ExportSettings, _: Protocol) -> Result<Exporter, InitError> {
    Err(InitError::Config("OTLP over HTTP needs skein-otel's `otlp-http` feature".into()))
}

/// The propagator `OTEL_PROPAGATORS` asks for (default `tracecontext,baggage`).
pub(crate) fn propagator_from_env() -> Result<TextMapCompositePropagator, InitError> {
    let list = env("OTEL_PROPAGATORS").unwrap_or_else(|| "tracecontext,baggage".into());
    let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "tracecontext" => propagators.push(Box::new(TraceContextPropagator::new())),
            "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
            "none" => propagators.clear(),
            other => {
                return Err(InitError::Config(format!(
                    "OTEL_PROPAGATORS names {other:?}, which skein-otel does not provide: use tracecontext, baggage or none"
                )));
            }
        }
    }
    Ok(TextMapCompositePropagator::new(propagators))
}

/// Keeps OpenTelemetry running; [`OtelGuard::shutdown`] (or dropping it) flushes every
/// pending span. Safe on any runtime, also a current-thread one, and outside any runtime.
#[derive(Debug)]
#[must_use = "dropping the guard shuts OpenTelemetry down"]
pub struct OtelGuard {
    provider: Option<SdkTracerProvider>,
    /// The runtime that drives the gRPC exporter's connection.
    runtime: Option<tokio::runtime::Runtime>,
}

impl OtelGuard {
    /// The installed provider (`None` when `OTEL_SDK_DISABLED=true`).
    pub fn provider(&self) -> Option<&SdkTracerProvider> {
        self.provider.as_ref()
    }

    /// Flushes every pending span and stops exporting.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> Result<(), ShutdownError> {
        let result = match self.provider.take() {
            Some(p) => p.shutdown().map_err(|e| ShutdownError(e.to_string())),
            None => Ok(()),
        };
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        result
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown_inner() {
            eprintln!("skein-otel: {e}");
        }
    }
}
