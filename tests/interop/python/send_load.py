"""Sends realistic traces with the official OpenTelemetry Python SDK and prints their ids.

Usage: send_load.py --protocol grpc|http --endpoint URL --traces N [--chunk N] [--parallel N]
                    [--tag TEXT]

Each trace is one request through a small shop, as in the OpenTelemetry demo: a frontend
SERVER span, its CLIENT call to checkout, checkout's SERVER span, a database query, a cache
call and a CLIENT call to payment with payment's SERVER span (7 spans, 3 services, one
provider per service as separate processes would have). Spans carry the semantic-convention
attributes real instrumentations set (URLs, user agents, SQL text, addresses), so a batch of
8,192 of them is about as large as a collector's default batch of real spans.

The spans are made first, then exported with the SDK's OTLP exporter in requests of
`--chunk` spans (default 512, the SDK batch processor's batch) from `--parallel` exporters at
once, so a collector in between receives them fast enough to fill its own batches.

Prints {"trace_ids": [...], "spans": total, "failed": spans whose export failed}.
"""

import argparse
import json
import random
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

SPANS_PER_TRACE = 7
USER_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "python-requests/2.32.3",
]


def exporter(protocol: str, endpoint: str):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint)
    raise SystemExit(f"unknown protocol {protocol!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--traces", type=int, required=True)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--tag", default="load")
    args = parser.parse_args()
    rng = random.Random(args.traces * 7919 + args.chunk)

    # The spans are made first and exported afterwards, so the export's shape (chunk size,
    # concurrency) does not depend on how fast Python makes spans.
    finished = InMemorySpanExporter()
    providers = []
    tracers = {}
    for service, version in [("frontend", "2.1.0"), ("checkout", "1.8.3"), ("payment", "0.9.1")]:
        resource = Resource.create(
            {
                "service.name": service,
                "service.version": version,
                "service.namespace": "shop",
                "deployment.environment.name": "test",
                "host.name": f"{service}-7d9f8b-{rng.randrange(16**5):05x}",
                "k8s.pod.name": f"{service}-7d9f8b-{rng.randrange(16**5):05x}",
            }
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(finished))
        providers.append(provider)
        tracers[service] = provider.get_tracer(f"shop.{service}", version)

    def span(service, name, kind, attributes):
        """A span with what auto-instrumentation adds to every span: code location, thread,
        and for SERVER spans the peer and body sizes."""
        extra = {
            "code.file.path": f"/app/{service}/handlers.py",
            "code.line.number": rng.randrange(20, 400),
            "thread.id": rng.randrange(1, 64),
            "thread.name": "asyncio_0",
        }
        if kind == SpanKind.SERVER:
            extra.update(
                {
                    "network.peer.address": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
                    "network.peer.port": rng.randrange(30000, 60000),
                    "network.protocol.name": "http",
                    "http.request.header.accept": ("application/json, text/plain, */*",),
                    "http.request.body.size": rng.randrange(100, 5000),
                    "http.response.body.size": rng.randrange(100, 50000),
                }
            )
        return tracers[service].start_as_current_span(name, kind=kind, attributes={**attributes, **extra})

    ids = []
    for i in range(args.traces):
        user = rng.randrange(100_000)
        item = rng.randrange(10_000)
        client = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        with span(
            "frontend",
            "POST /api/checkout",
            SpanKind.SERVER,
            {
                "http.request.method": "POST",
                "http.route": "/api/checkout",
                "url.full": f"https://shop.example.com/api/checkout?user={user}&item={item}&ref={args.tag}",
                "url.scheme": "https",
                "user_agent.original": rng.choice(USER_AGENTS),
                "client.address": client,
                "server.address": "shop.example.com",
                "http.response.status_code": 200,
                "http.request.header.x-request-id": (f"{rng.getrandbits(128):032x}",),
                "network.protocol.version": "1.1",
                "app.user.id": str(user),
                "app.session.id": f"{rng.getrandbits(64):016x}",
            },
        ) as root:
            ids.append(format(root.get_span_context().trace_id, "032x"))
            root.add_event("cart.loaded", {"app.cart.items": rng.randrange(1, 9), "app.cart.currency": "EUR"})
            with span(
                "frontend",
                "POST",
                SpanKind.CLIENT,
                {
                    "http.request.method": "POST",
                    "url.full": "http://checkout:8080/checkout",
                    "server.address": "checkout",
                    "server.port": 8080,
                    "http.response.status_code": 200,
                },
            ):
                with span(
                    "checkout",
                    "POST /checkout",
                    SpanKind.SERVER,
                    {
                        "http.request.method": "POST",
                        "http.route": "/checkout",
                        "client.address": "10.1.0.7",
                        "http.response.status_code": 200,
                        "app.order.items": rng.randrange(1, 9),
                        "app.order.id": f"ord-{rng.getrandbits(48):012x}",
                        "code.function.name": "shop.checkout.handlers.place_order",
                    },
                ):
                    with span(
                        "checkout",
                        "SELECT shop.orders",
                        SpanKind.CLIENT,
                        {
                            "db.system.name": "postgresql",
                            "db.namespace": "shop",
                            "db.operation.name": "SELECT",
                            "db.query.text": "SELECT id, status, total_cents FROM orders WHERE user_id = $1 AND created_at > $2 ORDER BY created_at DESC LIMIT 20",
                            "server.address": "orders-db",
                            "server.port": 5432,
                        },
                    ):
                        pass
                    with span(
                        "checkout",
                        "HGETALL",
                        SpanKind.CLIENT,
                        {
                            "db.system.name": "redis",
                            "db.operation.name": "HGETALL",
                            "db.query.text": f"HGETALL cart:{user}",
                            "server.address": "cart-cache",
                            "server.port": 6379,
                        },
                    ):
                        pass
                    with span(
                        "checkout",
                        "POST",
                        SpanKind.CLIENT,
                        {
                            "http.request.method": "POST",
                            "url.full": "http://payment:8080/charge",
                            "server.address": "payment",
                            "server.port": 8080,
                        },
                    ):
                        with span(
                            "payment",
                            "POST /charge",
                            SpanKind.SERVER,
                            {
                                "http.request.method": "POST",
                                "http.route": "/charge",
                                "app.payment.card_type": rng.choice(["visa", "mastercard", "amex"]),
                                "app.payment.amount_cents": rng.randrange(100, 100_000),
                            },
                        ) as charge:
                            if i % 50 == 0:
                                charge.set_status(Status(StatusCode.ERROR, "card declined"))
    spans = finished.get_finished_spans()
    chunks = [spans[i : i + args.chunk] for i in range(0, len(spans), args.chunk)]
    exporters = [exporter(args.protocol, args.endpoint) for _ in range(args.parallel)]

    def send(worker: int) -> int:
        failed = 0
        for chunk in chunks[worker :: args.parallel]:
            if exporters[worker].export(chunk) != SpanExportResult.SUCCESS:
                failed += len(chunk)
        return failed

    with ThreadPoolExecutor(args.parallel) as pool:
        failed = sum(pool.map(send, range(args.parallel)))
    for e in exporters:
        e.shutdown()
    print(json.dumps({"trace_ids": ids, "spans": len(spans), "failed": failed}))


if __name__ == "__main__":
    main()
