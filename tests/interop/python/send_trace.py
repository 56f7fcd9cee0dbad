"""Sends one trace to Skein with the official OpenTelemetry Python SDK and prints its ids.

Usage: send_trace.py --protocol grpc|http --endpoint URL --service NAME

The trace: a SERVER root span with attributes of every type, an event, a link and an error
status, and a CLIENT child. The caller reads it back through Skein's Jaeger API.
"""

import argparse
import json

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags


def exporter(protocol: str, endpoint: str):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression

        return OTLPSpanExporter(endpoint=endpoint, insecure=True, compression=Compression.Gzip)
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.exporter.otlp.proto.http import Compression

        return OTLPSpanExporter(endpoint=endpoint, compression=Compression.Gzip)
    raise SystemExit(f"unknown protocol {protocol!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--service", required=True)
    args = parser.parse_args()

    resource = Resource.create({"service.name": args.service, "service.version": "2.0.1"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter(args.protocol, args.endpoint)))
    tracer = provider.get_tracer("interop.python", "0.9.0")

    linked = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    with tracer.start_as_current_span(
        "POST /orders",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "POST",
            "http.response.status_code": 502,
            "retry": True,
            "ratio": 0.5,
            "huge": 9007199254740993,
            "items": ["a", "b"],
            "counts": [1, 2, 3],
        },
        links=[Link(linked, {"link.reason": "batch"})],
    ) as root:
        with tracer.start_as_current_span("redis GET", kind=SpanKind.CLIENT) as child:
            child.set_attribute("db.system.name", "redis")
        root.add_event("retrying", {"attempt": 2})
        root.set_status(Status(StatusCode.ERROR, "bad gateway"))
        ctx = root.get_span_context()
        ids = {
            "trace_id": format(ctx.trace_id, "032x"),
            "root_span_id": format(ctx.span_id, "016x"),
            "child_span_id": format(child.get_span_context().span_id, "016x"),
        }

    provider.shutdown()
    print(json.dumps(ids))


if __name__ == "__main__":
    main()
