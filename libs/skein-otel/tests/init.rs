//! `skein_otel::init` against a real OTLP receiver: export over gRPC and HTTP, the `OTEL_*`
//! variables, and a shutdown that flushes without deadlocking on a current-thread runtime.
//!
//! Tests that need environment variables re-run this test binary as a child process with the
//! variables set (the `child_*` tests do nothing unless `SKEIN_OTEL_CHILD` is set).

mod support;

use std::process::Command;

use opentelemetry::trace::{Tracer, TracerProvider as _};
use support::{start_collector, within};

fn run_child(test: &str, envs: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture"]).env("SKEIN_OTEL_CHILD", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "child {test} failed: {}", String::from_utf8_lossy(&out.stdout));
    out
}

fn is_child() -> bool {
    std::env::var_os("SKEIN_OTEL_CHILD").is_some()
}

#[test]
fn grpc_export_flushes_at_shutdown_on_a_current_thread_runtime() {
    let (grpc, _, received) = start_collector();
    within(30, "shutdown on a current-thread runtime", move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let guard = skein_otel::init("current-thread-svc")
                .service_version("9.9.9")
                .endpoint(format!("http://{grpc}"))
                .set_global(false)
                .install()
                .unwrap();
            let tracer = guard.provider().unwrap().tracer("t");
            for i in 0..50 {
                tracer.in_span(format!("work {i}"), |_| {});
            }
            // Shutting down from inside the only runtime thread must flush, not hang.
            guard.shutdown().unwrap();
        });
    });
    let spans = received.spans();
    assert_eq!(spans.len(), 50, "every pending span is flushed");
    assert!(spans.iter().all(|(svc, _)| svc == "current-thread-svc"));
    assert_eq!(received.resource_attr("service.version").as_deref(), Some("9.9.9"));
    assert_eq!(received.resource_attr("telemetry.sdk.language").as_deref(), Some("rust"));
    assert_eq!(received.resource_attr("process.pid"), Some(std::process::id().to_string()));
    assert!(received.resource_attr("host.name").is_some());
}

#[test]
fn dropping_the_guard_outside_any_runtime_flushes_too() {
    let (grpc, _, received) = start_collector();
    within(30, "drop outside a runtime", move || {
        let guard = skein_otel::init("no-runtime")
            .endpoint(format!("http://{grpc}"))
            .set_global(false)
            .install()
            .unwrap();
        guard.provider().unwrap().tracer("t").in_span("only", |_| {});
        drop(guard);
    });
    assert_eq!(received.spans(), [("no-runtime".to_owned(), "only".to_owned())]);
}

#[test]
fn child_env_configures_everything() {
    if !is_child() {
        return;
    }
    let guard = skein_otel::init("from-code").endpoint("http://127.0.0.1:1").install().unwrap();
    opentelemetry::global::tracer("t").in_span("env span", |_| {});
    guard.shutdown().unwrap();
}

#[test]
fn environment_overrides_code() {
    let (_, http, received) = start_collector();
    run_child(
        "child_env_configures_everything",
        &[
            ("OTEL_SERVICE_NAME", "from-env".into()),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci,team=tracing".into()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{http}")),
        ],
    );
    assert_eq!(received.spans(), [("from-env".to_owned(), "env span".to_owned())]);
    assert_eq!(received.resource_attr("deployment.environment.name").as_deref(), Some("ci"));
    assert_eq!(received.resource_attr("team").as_deref(), Some("tracing"));
}

#[test]
fn sampler_and_disable_switches_are_honoured() {
    let (grpc, _, received) = start_collector();
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{grpc}"));
    run_child(
        "child_env_configures_everything",
        &[endpoint.clone(), ("OTEL_TRACES_SAMPLER", "always_off".into())],
    );
    run_child("child_env_configures_everything", &[endpoint.clone(), ("OTEL_SDK_DISABLED", "true".into())]);
    assert!(received.spans().is_empty(), "nothing is exported: {:?}", received.spans());
    run_child(
        "child_env_configures_everything",
        &[endpoint, ("OTEL_TRACES_SAMPLER", "parentbased_always_on".into())],
    );
    assert_eq!(received.spans().len(), 1, "the same child exports when sampling is on");
}

#[test]
fn unsupported_settings_are_clear_errors() {
    let err = skein_otel::init("x").sample_ratio(1.5).set_global(false).install().unwrap_err();
    assert_eq!(err.to_string(), "invalid OpenTelemetry configuration: sample ratio 1.5 is outside 0.0 – 1.0");
}

#[test]
fn child_bad_propagator() {
    if !is_child() {
        return;
    }
    let err = skein_otel::init("x").install().unwrap_err();
    println!("ERROR: {err}");
}

#[test]
fn unknown_propagator_is_a_clear_error() {
    let out = run_child("child_bad_propagator", &[("OTEL_PROPAGATORS", "tracecontext,b3".into())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ERROR: invalid OpenTelemetry configuration: OTEL_PROPAGATORS names \"b3\", which skein-otel does not provide: use tracecontext, baggage or none"),
        "{stdout}"
    );
}
