"""A labelled corpus for the trace doctor, sent with the official OpenTelemetry Python SDK.

Usage: doctor_corpus.py --endpoint URL   (OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces)

Each scenario has services of its own (named `<scenario>-<role>`) and says which broken chains
the doctor must report for it (`expect`: kind, service, peer) — none for the healthy ones,
several of which look suspicious on purpose. Every span carries `corpus.request`: the pieces of
one logical request share it, so a test can check, trace by trace, which traces the doctor says
belong together. Prints the labels as JSON: {"scenarios": [{"name", "healthy", "expect": [...]}]}.

Context crosses "processes" the way it does over HTTP: the caller injects `traceparent` into a
dict of headers and the callee extracts it; a break leaves one of the two out.
"""

import argparse
import json
import threading
import time

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind

ENDPOINT = ""
PROVIDERS = []
REQUEST = [0]


def tracer(scenario: str, role: str):
    service = f"{scenario}-{role}"
    p = TracerProvider(
        resource=Resource.create({"service.name": service, "service.instance.id": f"{service}-1"})
    )
    p.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=ENDPOINT), max_queue_size=100_000))
    PROVIDERS.append(p)
    return p.get_tracer("doctor.corpus", "1.0")


def next_request() -> str:
    REQUEST[0] += 1
    return f"r{REQUEST[0]}"


def call(client, server, path: str, request: str, *, inject_context=True, extract_context=True, work=0.004):
    """A synchronous HTTP call from `client` to `server`, propagating unless told not to."""
    with client.start_as_current_span(
        "GET",
        kind=SpanKind.CLIENT,
        attributes={
            "http.request.method": "GET",
            "url.full": f"http://backend:8080{path}",
            "server.address": "backend",
            "server.port": 8080,
            "corpus.request": request,
        },
    ):
        headers = {}
        if inject_context:
            inject(headers)
        time.sleep(0.0005)
        parent = extract(headers) if extract_context else otel_context.Context()
        with server.start_as_current_span(
            f"GET {path.rsplit('/', 1)[0]}/{{id}}" if path.count("/") > 1 else f"GET {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "url.path": path,
                "server.port": 8080,
                "corpus.request": request,
            },
        ):
            time.sleep(work)
        time.sleep(0.0005)


def handle(service_tracer, name: str, request: str, body):
    """A request handled by `service_tracer`: a SERVER root and whatever `body` does inside."""
    with service_tracer.start_as_current_span(
        name, kind=SpanKind.SERVER, attributes={"http.route": name.split(" ", 1)[-1], "corpus.request": request}
    ):
        body()


# ---- healthy scenarios (no broken chain may be reported) ---------------------------------------


def healthy_chain(n):
    a, b = tracer("h-chain", "api"), tracer("h-chain", "backend")
    for i in range(n):
        r = next_request()
        handle(a, "GET /orders", r, lambda: call(a, b, f"/items/{i}", r))
        time.sleep(0.003)
    return []


def roots_after_a_request(n):
    """The false alarm of issue 17: after a SERVER trace ends, the same process starts a
    PRODUCER root and an INTERNAL root (as with SimpleSpanProcessor, export in between)."""
    shop = tracer("h-after", "shop")
    for _ in range(n):
        r = next_request()
        handle(shop, "GET /checkout", r, lambda: time.sleep(0.004))
        time.sleep(0.002)
        with shop.start_as_current_span("enqueue", kind=SpanKind.PRODUCER, attributes={"corpus.request": next_request()}):
            time.sleep(0.001)
        with shop.start_as_current_span("refresh cache", kind=SpanKind.INTERNAL, attributes={"corpus.request": next_request()}):
            time.sleep(0.002)
        time.sleep(0.02)
    return []


def linked_roots(n):
    """Work started during a request as its own trace, linking to its cause."""
    svc = tracer("h-linked", "api")
    for _ in range(n):
        r = next_request()

        def body():
            cause = trace.get_current_span().get_span_context()
            with svc.start_as_current_span(
                "index document",
                context=otel_context.Context(),
                kind=SpanKind.INTERNAL,
                links=[Link(cause)],
                attributes={"corpus.request": next_request()},
            ):
                time.sleep(0.002)

        handle(svc, "POST /documents", r, body)
        time.sleep(0.005)
    return []


def scheduled_job(n):
    """A background job every 15 ms while requests keep the process about half busy."""
    svc = tracer("h-sched", "api")
    stop = threading.Event()

    def job():
        while not stop.is_set():
            with svc.start_as_current_span(
                "cleanup sessions",
                context=otel_context.Context(),
                kind=SpanKind.INTERNAL,
                attributes={"corpus.request": next_request()},
            ):
                time.sleep(0.001)
            time.sleep(0.015)

    t = threading.Thread(target=job)
    t.start()
    for _ in range(n * 3):
        r = next_request()
        handle(svc, "GET /profile", r, lambda: time.sleep(0.006))
        time.sleep(0.006)
    stop.set()
    t.join()
    return []


def startup_work(n):
    """Start-up work before any request, then requests."""
    svc = tracer("h-startup", "api")
    with svc.start_as_current_span("load config", kind=SpanKind.INTERNAL, attributes={"corpus.request": next_request()}):
        time.sleep(0.003)
    time.sleep(0.01)
    for _ in range(n):
        r = next_request()
        handle(svc, "GET /status", r, lambda: time.sleep(0.002))
    return []


def concurrent_healthy(n):
    """Identical requests in flight at once, every one propagating."""
    a, b = tracer("h-concurrent", "api"), tracer("h-concurrent", "backend")

    def one():
        r = next_request()
        handle(a, "GET /search", r, lambda: call(a, b, "/query", r, work=0.01))

    threads = [threading.Thread(target=one) for _ in range(n * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return []


# ---- broken scenarios ------------------------------------------------------------------------


def split_sequential(n):
    a, b = tracer("b-split", "api"), tracer("b-split", "backend")
    for i in range(n):
        r = next_request()
        handle(a, "GET /orders", r, lambda: call(a, b, f"/items/{i}", r, inject_context=False))
        time.sleep(0.003)
    return [["split_trace", "b-split-api", "b-split-backend"]]


def split_concurrent_identical(n):
    """The same call from concurrent requests, none propagating: the edge is sure, which
    trace continues which is not."""
    a, b = tracer("b-split-conc", "api"), tracer("b-split-conc", "backend")

    def one():
        r = next_request()
        handle(a, "GET /search", r, lambda: call(a, b, "/query", r, extract_context=False, work=0.01))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [["split_trace", "b-split-conc-api", "b-split-conc-backend"]]


def detached_thread(n):
    """A handler hands work to a thread, which starts with an empty context."""
    w = tracer("b-detached", "worker")
    for _ in range(n):
        r = next_request()

        def body():
            def work():
                with w.start_as_current_span("send email", kind=SpanKind.INTERNAL, attributes={"corpus.request": r}):
                    time.sleep(0.003)

            t = threading.Thread(target=work)
            t.start()
            t.join()

        handle(w, "POST /signup", r, body)
        time.sleep(0.004)
    return [["detached_work", "b-detached-worker", None]]


def detached_client(n):
    """A middleware starts the outgoing call from an empty context: the CLIENT span is a root,
    and the callee joins that new trace."""
    a, b = tracer("b-middleware", "frontend"), tracer("b-middleware", "backend")
    for i in range(n):
        r = next_request()

        def body():
            token = otel_context.attach(otel_context.Context())
            try:
                call(a, b, f"/cart/{i}", r)
            finally:
                otel_context.detach(token)

        handle(a, "GET /cart", r, body)
        time.sleep(0.004)
    return [["detached_work", "b-middleware-frontend", None]]


def orphans(n):
    """A span whose parent was never exported (a sampled-out or lost span)."""
    svc = tracer("b-orphan", "api")
    lost = TracerProvider().get_tracer("never exported")
    for _ in range(n):
        r = next_request()
        with lost.start_as_current_span("lost parent"):
            with svc.start_as_current_span("GET /orphan", kind=SpanKind.SERVER, attributes={"corpus.request": r}):
                time.sleep(0.002)
    return [["orphan_spans", "b-orphan-api", None]]


def mixture(n):
    """A background job and a spawn break in the same process: only the spawn is broken."""
    svc = tracer("m-mixed", "api")
    stop = threading.Event()

    def job():
        while not stop.is_set():
            with svc.start_as_current_span(
                "poll queue", context=otel_context.Context(), kind=SpanKind.INTERNAL, attributes={"corpus.request": next_request()}
            ):
                time.sleep(0.001)
            time.sleep(0.02)

    t = threading.Thread(target=job)
    t.start()
    for _ in range(n):
        r = next_request()

        def body():
            def work():
                with svc.start_as_current_span("resize image", kind=SpanKind.INTERNAL, attributes={"corpus.request": r}):
                    time.sleep(0.002)

            th = threading.Thread(target=work)
            th.start()
            th.join()

        handle(svc, "POST /upload", r, body)
        time.sleep(0.01)
    stop.set()
    t.join()
    return [["detached_work", "m-mixed-api", None]]


SCENARIOS = [
    ("healthy chain", True, healthy_chain),
    ("new roots after a request ended", True, roots_after_a_request),
    ("roots linking to their cause", True, linked_roots),
    ("scheduled job during requests", True, scheduled_job),
    ("start-up work", True, startup_work),
    ("concurrent identical healthy requests", True, concurrent_healthy),
    ("split: client does not inject", False, split_sequential),
    ("split: concurrent identical calls", False, split_concurrent_identical),
    ("detached work: thread without context", False, detached_thread),
    ("detached work: middleware with an empty context", False, detached_client),
    ("orphan spans", False, orphans),
    ("mixture: job and spawn break in one process", False, mixture),
]


def main() -> None:
    global ENDPOINT
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()
    ENDPOINT = args.endpoint
    labels = []
    for name, healthy, scenario in SCENARIOS:
        expect = scenario(args.requests)
        labels.append({"name": name, "healthy": healthy, "expect": expect})
        time.sleep(0.05)
    for p in PROVIDERS:
        p.shutdown()  # flushes every span
    print(json.dumps({"scenarios": labels}))


if __name__ == "__main__":
    main()
