"""Sends traces with broken chains to Skein with the official OpenTelemetry Python SDK, for the
trace doctor to find. Three independent scenarios, each with its own services:

- orders → billing: orders calls billing over HTTP but does not inject the context, so
  billing's SERVER span starts a new trace (a split trace, edge orders → billing);
- worker: a request handler hands work to a `threading.Thread`, which does not carry the
  OpenTelemetry context in Python, so the thread's span is a new root (detached work);
- api → legacy.internal:8080: api calls a service that has no instrumentation at all (an
  uninstrumented peer: a note, not a break).

Usage: doctor_scenarios.py --endpoint URL [--repeat N]   (OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces)
Prints the number of requests of each scenario as JSON.
"""

import argparse
import json
import threading
import time

from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind


def provider(service: str, endpoint: str) -> TracerProvider:
    p = TracerProvider(resource=Resource.create({"service.name": service, "service.instance.id": f"{service}-1"}))
    p.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return p


def split_request(orders, billing, i: int) -> None:
    with orders.start_as_current_span("POST /orders", kind=SpanKind.SERVER, attributes={"http.route": "/orders"}):
        with orders.start_as_current_span(
            "POST",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "url.full": f"http://127.0.0.1:9000/pay/{i}",
                "server.address": "127.0.0.1",
                "server.port": 9000,
            },
        ):
            time.sleep(0.002)
            # billing's side: the request arrived without traceparent, so its span has no parent.
            with billing.start_as_current_span(
                "POST /pay/{id}",
                context=otel_context.Context(),
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": "POST",
                    "url.path": f"/pay/{i}",
                    "http.route": "/pay/{id}",
                    "server.port": 9000,
                },
            ):
                time.sleep(0.005)
            time.sleep(0.001)


def detached_request(worker) -> None:
    def process():
        # A new thread starts with an empty OpenTelemetry context: this span is a new root.
        with worker.start_as_current_span("process job", kind=SpanKind.INTERNAL):
            time.sleep(0.004)

    with worker.start_as_current_span("POST /jobs", kind=SpanKind.SERVER, attributes={"http.route": "/jobs"}):
        time.sleep(0.002)
        t = threading.Thread(target=process)
        t.start()
        t.join()
        time.sleep(0.001)


def uninstrumented_call(api) -> None:
    with api.start_as_current_span("GET /report", kind=SpanKind.SERVER, attributes={"http.route": "/report"}):
        with api.start_as_current_span(
            "GET",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "GET",
                "url.full": "http://legacy.internal:8080/data",
                "server.address": "legacy.internal",
                "server.port": 8080,
            },
        ):
            time.sleep(0.003)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    providers = {s: provider(s, args.endpoint) for s in ["orders", "billing", "worker", "api"]}
    tracer = {s: p.get_tracer("doctor.scenarios", "1.0") for s, p in providers.items()}
    for i in range(args.repeat):
        split_request(tracer["orders"], tracer["billing"], i)
        detached_request(tracer["worker"])
        uninstrumented_call(tracer["api"])
        time.sleep(0.01)
    for p in providers.values():
        p.shutdown()  # flushes every span
    print(json.dumps({"split": args.repeat, "detached": args.repeat, "uninstrumented": args.repeat}))


if __name__ == "__main__":
    main()
