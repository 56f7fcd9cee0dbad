//! The realistic load (the bench's default): traffic shaped like the OpenTelemetry demo's shop.
//!
//! Eight services with two or three instances each, every instance with 16–17 resource
//! attributes (service, SDK, host, process, container, Kubernetes, cloud). Five kinds of
//! request, weighted like the demo's load generator: browse a product, recommendations, view
//! the cart, add to it, and check out (a chain through six services, a Kafka PRODUCER and its
//! CONSUMER, linked). 5–39 spans per trace, each with about 11 current-semconv attributes,
//! among them high-cardinality ones: client addresses and ports, session and user ids, user
//! agents, order and tracking ids, URL queries, Redis statements with their keys, Kafka
//! offsets. Trace and span ids are random; durations are log-normal and nest (a parent lasts
//! as long as its children plus its own work); 5 % of requests fail somewhere down the chain,
//! with an `exception` event where it started and an error status up to the root.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status::StatusCode};
use rand::Rng;

use crate::traffic::Sent;

/// The services: name, SDK language, runtime, instances.
pub(crate) const SERVICES: [(&str, &str, &str, usize); 8] = [
    ("frontend", "nodejs", "nodejs", 3),
    ("checkout", "go", "go", 2),
    ("cart", "dotnet", ".NET", 2),
    ("product-catalog", "go", "go", 3),
    ("currency", "cpp", "", 2),
    ("payment", "nodejs", "nodejs", 2),
    ("shipping", "rust", "", 2),
    ("accounting", "dotnet", ".NET", 2),
];
const FRONTEND: usize = 0;
const CHECKOUT: usize = 1;
const CART: usize = 2;
const CATALOG: usize = 3;
const CURRENCY: usize = 4;
const PAYMENT: usize = 5;
const SHIPPING: usize = 6;
const ACCOUNTING: usize = 7;

const PRODUCTS: [&str; 10] = [
    "OLJCESPC7Z",
    "66VCHSJNUP",
    "1YMWWN1N4O",
    "L9ECAV7KIM",
    "2ZYFJ3GM2N",
    "0PUK6V6EV0",
    "LS4PSXUNUM",
    "9SIQT8TOJO",
    "6E92ZMYYFZ",
    "HQTGWGPNH4",
];
const CURRENCIES: [&str; 6] = ["USD", "EUR", "CAD", "JPY", "GBP", "TRY"];

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}
fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}
fn int(v: i64) -> Value {
    Value::IntValue(v)
}

fn hex(rng: &mut impl Rng, bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

fn uuid(rng: &mut impl Rng) -> String {
    let h = hex(rng, 16);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// A log-normal duration in nanoseconds with the given median (ns) and spread (σ of the log).
fn log_normal(rng: &mut impl Rng, median_ns: f64, sigma: f64) -> u64 {
    // Box–Muller: one standard normal draw.
    let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (median_ns * (sigma * z).exp()).max(1_000.0) as u64
}

/// The resources of every instance, made once: (service, instance) → resource.
pub(crate) fn resources() -> Vec<Vec<Resource>> {
    let mut rng = rand::rng();
    SERVICES
        .iter()
        .map(|(name, language, runtime, instances)| {
            (0..*instances)
                .map(|i| {
                    let pod = format!("{name}-{}-{}", hex(&mut rng, 5), hex(&mut rng, 3));
                    let mut a = vec![
                        kv("service.name", s(*name)),
                        kv("service.version", s("2.1.3")),
                        kv("service.namespace", s("opentelemetry-demo")),
                        kv("service.instance.id", s(uuid(&mut rng))),
                        kv("deployment.environment.name", s("production")),
                        kv("telemetry.sdk.name", s("opentelemetry")),
                        kv("telemetry.sdk.language", s(*language)),
                        kv("telemetry.sdk.version", s("1.38.0")),
                        kv("host.name", s(pod.as_str())),
                        kv("process.pid", int(rng.random_range(1..40_000))),
                        kv("container.id", s(hex(&mut rng, 32))),
                        kv("k8s.namespace.name", s("otel-demo")),
                        kv("k8s.pod.name", s(pod.as_str())),
                        kv("k8s.deployment.name", s(*name)),
                        kv(
                            "k8s.node.name",
                            s(format!("ip-10-0-{}-{}.eu-west-1.compute.internal", i, 10 + i)),
                        ),
                        kv("cloud.region", s("eu-west-1")),
                    ];
                    if !runtime.is_empty() {
                        a.push(kv("process.runtime.name", s(*runtime)));
                    }
                    Resource { attributes: a, ..Default::default() }
                })
                .collect()
        })
        .collect()
}

/// Where a span runs: its service (index into [`SERVICES`]) and its instrumentation scope.
type Site = (usize, &'static str);

/// Spans by service, instance and scope.
type ByInstance = Vec<Vec<Vec<(&'static str, Vec<Span>)>>>;

/// One span while its trace is generated: where it runs and its OTLP form.
struct Pending {
    service: usize,
    scope: &'static str,
    span: Span,
    parent: Option<usize>,
}

/// Per-request values shared by the spans of one trace.
struct RequestValues {
    session: String,
    user: String,
    currency: &'static str,
    client: String,
}

/// One trace being generated.
struct TraceGen<'r, R: Rng> {
    rng: &'r mut R,
    trace_id: [u8; 16],
    instance: [usize; SERVICES.len()],
    spans: Vec<Pending>,
    request: RequestValues,
}

impl<R: Rng> TraceGen<'_, R> {
    fn pod_ip(&self, service: usize) -> String {
        format!("10.244.{}.{}", service + 1, 10 + self.instance[service])
    }

    /// Starts a span (its end is set by [`TraceGen::end`]); its index.
    fn start(
        &mut self,
        (service, scope): Site,
        parent: Option<usize>,
        name: &str,
        kind: SpanKind,
        at: u64,
        attributes: Vec<KeyValue>,
    ) -> usize {
        let span = Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.rng.random::<[u8; 8]>().to_vec(),
            parent_span_id: parent.map(|p| self.spans[p].span.span_id.clone()).unwrap_or_default(),
            name: name.to_owned(),
            kind: kind as i32,
            start_time_unix_nano: at,
            end_time_unix_nano: at,
            attributes,
            flags: 0x101,
            ..Default::default()
        };
        self.spans.push(Pending { service, scope, span, parent });
        self.spans.len() - 1
    }

    fn end(&mut self, i: usize, at: u64) -> u64 {
        self.spans[i].span.end_time_unix_nano = at;
        at
    }

    /// A leaf of `median_ms` own time: a database call, an internal step.
    fn leaf(
        &mut self,
        site: Site,
        parent: usize,
        (name, kind): (&str, SpanKind),
        at: u64,
        median_ms: f64,
        attributes: Vec<KeyValue>,
    ) -> u64 {
        let i = self.start(site, Some(parent), name, kind, at, attributes);
        let d = log_normal(self.rng, median_ms * 1e6, 0.7);
        self.end(i, at + d)
    }

    /// A gRPC call from `from` (under `parent`) to `to`: a CLIENT span, the SERVER span under
    /// it, and whatever `body` does inside the server span (it returns when it is done).
    fn grpc(
        &mut self,
        (from, parent): (usize, usize),
        to: usize,
        method: &str,
        at: u64,
        server_attrs: Vec<KeyValue>,
        body: impl FnOnce(&mut Self, usize, u64) -> u64,
    ) -> u64 {
        let port = 8080 + to as i64;
        let client_attrs = vec![
            kv("rpc.system.name", s("grpc")),
            kv("rpc.method", s(method)),
            kv("rpc.response.status_code", s("OK")),
            kv("server.address", s(SERVICES[to].0)),
            kv("server.port", int(port)),
            kv("network.peer.address", s(self.pod_ip(to))),
            kv("network.peer.port", int(port)),
            kv("network.transport", s("tcp")),
            kv("app.session.id", s(self.request.session.as_str())),
            kv("thread.id", int(self.rng.random_range(1..64))),
        ];
        let client =
            self.start((from, "grpc-client"), Some(parent), method, SpanKind::Client, at, client_attrs);
        let net = log_normal(self.rng, 300_000.0, 0.5);
        let mut attrs = vec![
            kv("rpc.system.name", s("grpc")),
            kv("rpc.method", s(method)),
            kv("rpc.response.status_code", s("OK")),
            kv("client.address", s(self.pod_ip(from))),
            kv("client.port", int(self.rng.random_range(32_768..60_999))),
            kv("server.port", int(port)),
            kv("network.protocol.name", s("http")),
            kv("network.protocol.version", s("2")),
        ];
        attrs.extend(server_attrs);
        let server =
            self.start((to, "grpc-server"), Some(client), method, SpanKind::Server, at + net / 2, attrs);
        let own = log_normal(self.rng, 150_000.0, 0.6);
        let done = body(self, server, at + net / 2 + own / 2);
        let server_end = self.end(server, done + own / 2);
        self.end(client, server_end + net / 2)
    }

    fn select(&mut self, service: usize, parent: usize, at: u64, table: &str, key: &str) -> u64 {
        let attrs = vec![
            kv("db.system.name", s("postgresql")),
            kv("db.namespace", s("otel")),
            kv("db.operation.name", s("SELECT")),
            kv("db.collection.name", s(table)),
            kv("db.query.text", s(format!("SELECT * FROM {table} WHERE {key} = $1"))),
            kv("server.address", s("postgresql")),
            kv("server.port", int(5432)),
            kv("network.peer.address", s("10.244.9.4")),
            kv("network.peer.port", int(5432)),
            kv("db.response.returned_rows", int(self.rng.random_range(0..25))),
        ];
        self.leaf(
            (service, "sql"),
            parent,
            (&format!("SELECT otel.{table}"), SpanKind::Client),
            at,
            1.2,
            attrs,
        )
    }

    fn redis(&mut self, parent: usize, at: u64, op: &str) -> u64 {
        let statement = format!("{op} cart:{} items", self.request.user);
        let attrs = vec![
            kv("db.system.name", s("redis")),
            kv("db.namespace", s("0")),
            kv("db.operation.name", s(op)),
            kv("db.query.text", s(statement)),
            kv("server.address", s("valkey-cart")),
            kv("server.port", int(6379)),
            kv("network.peer.address", s("10.244.9.7")),
            kv("network.peer.port", int(6379)),
            kv("app.user.id", s(self.request.user.as_str())),
        ];
        self.leaf((CART, "redis"), parent, (op, SpanKind::Client), at, 0.4, attrs)
    }

    fn get_product(
        &mut self,
        from: usize,
        parent: usize,
        at: u64,
        product: &'static str,
        cached: bool,
    ) -> u64 {
        let attrs =
            vec![kv("app.product.id", s(product)), kv("app.product.cached", Value::BoolValue(cached))];
        self.grpc(
            (from, parent),
            CATALOG,
            "oteldemo.ProductCatalogService/GetProduct",
            at,
            attrs,
            move |g, server, at| {
                if cached { at + 50_000 } else { g.select(CATALOG, server, at, "products", "id") }
            },
        )
    }

    /// The cart's items, read from Redis.
    fn get_cart(&mut self, caller: (usize, usize), at: u64, items: i64) -> u64 {
        let attrs =
            vec![kv("app.user.id", s(self.request.user.as_str())), kv("app.cart.items.count", int(items))];
        self.grpc(caller, CART, "oteldemo.CartService/GetCart", at, attrs, |g, server, at| {
            g.redis(server, at, "HGET")
        })
    }

    fn convert(&mut self, from: usize, parent: usize, at: u64) -> u64 {
        let units = self.rng.random_range(1..2_000);
        let to = self.request.currency;
        let attrs = vec![
            kv("app.currency.conversion.from", s("USD")),
            kv("app.currency.conversion.to", s(to)),
            kv("app.currency.conversion.units.from", int(units)),
        ];
        self.grpc((from, parent), CURRENCY, "oteldemo.CurrencyService/Convert", at, attrs, |g, server, at| {
            let attrs = vec![kv("app.currency.conversion.to", s(to))];
            g.leaf((CURRENCY, "currency"), server, ("Convert", SpanKind::Internal), at, 0.05, attrs)
        })
    }

    fn product(&mut self) -> &'static str {
        PRODUCTS[self.rng.random_range(0..PRODUCTS.len())]
    }

    /// The frontend's SERVER span for `method route` and the request kind's calls under it.
    fn entry(&mut self, at: u64) {
        let kind = self.rng.random_range(0..100);
        let product = self.product();
        let (method, route, path, query): (&str, &str, String, Option<String>) = match kind {
            0..35 => ("GET", "/api/products/{productId}", format!("/api/products/{product}"), None),
            35..55 => (
                "GET",
                "/api/recommendations",
                "/api/recommendations".into(),
                Some(format!(
                    "productIds={product}&sessionId={}&currencyCode={}",
                    self.request.session, self.request.currency
                )),
            ),
            55..70 => {
                ("GET", "/api/cart", "/api/cart".into(), Some(format!("sessionId={}", self.request.session)))
            }
            70..88 => ("POST", "/api/cart", "/api/cart".into(), None),
            _ => ("POST", "/api/checkout", "/api/checkout".into(), None),
        };
        let ua = USER_AGENTS[self.rng.random_range(0..USER_AGENTS.len())];
        let mut attrs = vec![
            kv("http.request.method", s(method)),
            kv("http.route", s(route)),
            kv("url.path", s(path)),
            kv("url.scheme", s("https")),
            kv("http.response.status_code", int(200)),
            kv("network.protocol.version", s("1.1")),
            kv("user_agent.original", s(format!("{ua} (build {})", self.rng.random_range(100..400)))),
            kv("client.address", s(self.request.client.as_str())),
            kv("client.port", int(self.rng.random_range(1_024..65_535))),
            kv("server.address", s("shop.example.com")),
            kv("app.session.id", s(self.request.session.as_str())),
            kv("app.user.id", s(self.request.user.as_str())),
        ];
        if let Some(q) = query {
            attrs.push(kv("url.query", s(q)));
        }
        let root = self.start(
            (FRONTEND, "http-server"),
            None,
            &format!("{method} {route}"),
            SpanKind::Server,
            at,
            attrs,
        );
        let mut t = at + log_normal(self.rng, 200_000.0, 0.5);
        match kind {
            0..35 => {
                t = self.get_product(FRONTEND, root, t, product, false);
                for _ in 0..self.rng.random_range(1..3) {
                    t = self.convert(FRONTEND, root, t);
                }
            }
            35..55 => {
                t = self.grpc(
                    (FRONTEND, root),
                    CATALOG,
                    "oteldemo.ProductCatalogService/ListProducts",
                    t,
                    vec![],
                    |g, server, at| g.select(CATALOG, server, at, "products", "category"),
                );
                for _ in 0..self.rng.random_range(1..5) {
                    let p = self.product();
                    t = self.get_product(FRONTEND, root, t, p, true);
                }
            }
            55..70 => {
                let items = self.rng.random_range(1..4);
                t = self.get_cart((FRONTEND, root), t, items);
                for _ in 0..items {
                    t = self.convert(FRONTEND, root, t);
                }
            }
            70..88 => {
                t = self.get_product(FRONTEND, root, t, product, false);
                let attrs = vec![
                    kv("app.user.id", s(self.request.user.as_str())),
                    kv("app.product.id", s(product)),
                    kv("app.product.quantity", int(self.rng.random_range(1..5))),
                ];
                t = self.grpc(
                    (FRONTEND, root),
                    CART,
                    "oteldemo.CartService/AddItem",
                    t,
                    attrs,
                    |g, server, at| {
                        let t = g.redis(server, at, "HSET");
                        g.redis(server, t, "EXPIRE")
                    },
                );
            }
            _ => t = self.checkout(root, t),
        }
        let own = log_normal(self.rng, 300_000.0, 0.5);
        self.end(root, t + own);
    }

    fn checkout(&mut self, root: usize, at: u64) -> u64 {
        let order = uuid(self.rng);
        let items = self.rng.random_range(1..4);
        let attrs = vec![
            kv("app.user.id", s(self.request.user.as_str())),
            kv("app.user.currency", s(self.request.currency)),
            kv("app.order.id", s(order.as_str())),
            kv("app.order.items.count", int(items)),
        ];
        self.grpc(
            (FRONTEND, root),
            CHECKOUT,
            "oteldemo.CheckoutService/PlaceOrder",
            at,
            attrs,
            |g, server, at| {
                let mut t = g.get_cart((CHECKOUT, server), at, items);
                let attrs =
                    vec![kv("app.order.id", s(order.as_str())), kv("app.order.items.count", int(items))];
                let prepare = g.start(
                    (CHECKOUT, "checkout"),
                    Some(server),
                    "prepareOrderItemsAndShippingQuoteFromCart",
                    SpanKind::Internal,
                    t,
                    attrs,
                );
                for _ in 0..items {
                    let p = g.product();
                    t = g.get_product(CHECKOUT, prepare, t, p, false);
                    t = g.convert(CHECKOUT, prepare, t);
                }
                let attrs =
                    vec![kv("app.shipping.zip_code", s(format!("{:05}", g.rng.random_range(1_000..99_999))))];
                t = g.grpc(
                    (CHECKOUT, prepare),
                    SHIPPING,
                    "oteldemo.ShippingService/GetQuote",
                    t,
                    attrs,
                    |g, server, at| {
                        let attrs = vec![kv(
                            "app.shipping.cost.total",
                            Value::DoubleValue(g.rng.random_range(5.0..40.0)),
                        )];
                        g.leaf(
                            (SHIPPING, "shipping"),
                            server,
                            ("calculate-quote", SpanKind::Internal),
                            at,
                            0.2,
                            attrs,
                        )
                    },
                );
                t = g.end(prepare, t);
                let amount = (g.rng.random_range(500..150_000) as f64) / 100.0;
                let card = ["visa", "mastercard", "amex"][g.rng.random_range(0..3)];
                let attrs = vec![
                    kv("app.payment.amount", Value::DoubleValue(amount)),
                    kv("app.payment.currency", s(g.request.currency)),
                ];
                t = g.grpc(
                    (CHECKOUT, server),
                    PAYMENT,
                    "oteldemo.PaymentService/Charge",
                    t,
                    attrs,
                    |g, server, at| {
                        let attrs = vec![
                            kv("app.payment.card_type", s(card)),
                            kv("app.payment.card_valid", Value::BoolValue(true)),
                            kv("app.payment.charged", Value::BoolValue(true)),
                            kv(
                                "app.loyalty.level",
                                s(["platinum", "gold", "silver", "bronze"][g.rng.random_range(0..4)]),
                            ),
                            kv("app.payment.transaction.id", s(uuid(g.rng))),
                        ];
                        g.leaf((PAYMENT, "payment"), server, ("charge", SpanKind::Internal), at, 2.0, attrs)
                    },
                );
                let tracking = uuid(g.rng);
                let attrs = vec![kv("app.shipping.tracking.id", s(tracking.as_str()))];
                t = g.grpc(
                    (CHECKOUT, server),
                    SHIPPING,
                    "oteldemo.ShippingService/ShipOrder",
                    t,
                    attrs,
                    |_, _, at| at + 80_000,
                );
                let attrs = vec![kv("app.user.id", s(g.request.user.as_str()))];
                t = g.grpc(
                    (CHECKOUT, server),
                    CART,
                    "oteldemo.CartService/EmptyCart",
                    t,
                    attrs,
                    |g, server, at| g.redis(server, at, "DEL"),
                );
                g.publish(server, t, &order)
            },
        )
    }

    /// The order sent to Kafka: a PRODUCER span in checkout, and accounting's CONSUMER span,
    /// its child that also links to it (as messaging instrumentations do), with the insert.
    fn publish(&mut self, parent: usize, at: u64, order: &str) -> u64 {
        let size = self.rng.random_range(200..2_000);
        let attrs = vec![
            kv("messaging.system", s("kafka")),
            kv("messaging.destination.name", s("orders")),
            kv("messaging.operation.type", s("send")),
            kv("messaging.operation.name", s("send")),
            kv("messaging.kafka.message.key", s(order)),
            kv("messaging.message.body.size", int(size)),
            kv("messaging.client.id", s(format!("checkout-producer-{}", self.instance[CHECKOUT]))),
            kv("server.address", s("kafka")),
            kv("server.port", int(9092)),
            kv("app.order.id", s(order)),
        ];
        let producer =
            self.start((CHECKOUT, "kafka"), Some(parent), "orders publish", SpanKind::Producer, at, attrs);
        let d = log_normal(self.rng, 400_000.0, 0.6);
        let sent = self.end(producer, at + d);
        let offset = self.rng.random_range(1_000_000..9_000_000);
        let attrs = vec![
            kv("messaging.system", s("kafka")),
            kv("messaging.destination.name", s("orders")),
            kv("messaging.operation.type", s("process")),
            kv("messaging.operation.name", s("process")),
            kv("messaging.consumer.group.name", s("accounting")),
            kv("messaging.destination.partition.id", s(format!("{}", offset % 3))),
            kv("messaging.kafka.offset", int(offset)),
            kv("messaging.kafka.message.key", s(order)),
            kv("messaging.message.body.size", int(size)),
            kv("app.order.id", s(order)),
        ];
        let start = sent + log_normal(self.rng, 2_000_000.0, 0.8);
        let consumer = self.start(
            (ACCOUNTING, "kafka"),
            Some(producer),
            "orders process",
            SpanKind::Consumer,
            start,
            attrs,
        );
        let link = Link {
            trace_id: self.trace_id.to_vec(),
            span_id: self.spans[producer].span.span_id.clone(),
            ..Default::default()
        };
        self.spans[consumer].span.links.push(link);
        let t = self.select(ACCOUNTING, consumer, start + 100_000, "orders", "order_id");
        self.end(consumer, t + 50_000);
        sent
    }

    /// Makes the request fail: a span down the chain (a server or database span) gets an error
    /// status and an `exception` event, and every span above it an error status (HTTP 500 and
    /// gRPC INTERNAL where they have status attributes).
    fn fail(&mut self) {
        let candidates: Vec<usize> = (1..self.spans.len())
            .filter(|&i| {
                let k = self.spans[i].span.kind;
                k == SpanKind::Server as i32
                    || k == SpanKind::Client as i32 && self.spans[i].scope != "grpc-client"
            })
            .collect();
        let Some(&at) = candidates.get(self.rng.random_range(0..candidates.len().max(1))) else { return };
        let (kind, message) = match self.spans[at].scope {
            "sql" => ("Npgsql.PostgresException", "57014: canceling statement due to statement timeout"),
            "redis" => (
                "StackExchange.Redis.RedisConnectionException",
                "No connection is active/available to service this operation",
            ),
            _ => (
                "Grpc.Core.RpcException",
                "Status(StatusCode=\"Internal\", Detail=\"failed to process request\")",
            ),
        };
        let span = &mut self.spans[at].span;
        span.events.push(Event {
            time_unix_nano: span.end_time_unix_nano.saturating_sub(10_000),
            name: "exception".into(),
            attributes: vec![
                kv("exception.type", s(kind)),
                kv("exception.message", s(format!("{message} (order {})", hex(self.rng, 6)))),
                kv("exception.stacktrace", s(format!("{kind}: {message}\n{STACK}"))),
            ],
            ..Default::default()
        });
        let mut next = Some(at);
        while let Some(i) = next {
            let p = &mut self.spans[i];
            p.span.status = Some(Status { code: StatusCode::Error as i32, message: message.into() });
            for a in &mut p.span.attributes {
                match a.key.as_str() {
                    "http.response.status_code" => a.value = Some(AnyValue { value: Some(int(500)) }),
                    "rpc.response.status_code" => a.value = Some(AnyValue { value: Some(s("INTERNAL")) }),
                    _ => {}
                }
            }
            next = p.parent;
        }
    }
}

const USER_AGENTS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
    "python-requests/2.32.3",
];

const STACK: &str = "   at Oteldemo.Services.Handle(Request request, ServerCallContext context) in /app/src/Services/Handler.cs:line 88
   at Grpc.Shared.Server.UnaryServerMethodInvoker`3.ResolvedInterceptorInvoker(TRequest resolvedRequest, ServerCallContext resolvedContext)
   at Grpc.AspNetCore.Server.Internal.CallHandlers.UnaryServerCallHandler`3.HandleCallAsyncCore(HttpContext httpContext, HttpContextServerCallContext serverCallContext)
   at Grpc.AspNetCore.Server.Internal.CallHandlers.ServerCallHandlerBase`3.<HandleCallAsync>g__AwaitHandleCall|8_0(HttpContextServerCallContext serverCallContext, Method`2 method, Task handleCall)";

/// `n` spans of whole requests (the last one cut short when it does not fit), grouped by
/// service instance as SDKs export them; each trace's id and its client address.
pub(crate) fn request(
    resources: &[Vec<Resource>],
    error_ratio: f64,
    n: usize,
) -> (ExportTraceServiceRequest, Vec<Sent>) {
    let mut rng = rand::rng();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // (service, instance) → scope → spans.
    let mut out: ByInstance = resources.iter().map(|r| vec![Vec::new(); r.len()]).collect();
    let mut sent = Vec::new();
    let mut made = 0;
    while made < n {
        let request = RequestValues {
            session: uuid(&mut rng),
            user: format!("user-{}", rng.random_range(0..200_000)),
            currency: CURRENCIES[rng.random_range(0..CURRENCIES.len())],
            client: format!(
                "{}.{}.{}.{}",
                rng.random_range(11..223),
                rng.random_range(0..256),
                rng.random_range(0..256),
                rng.random_range(1..255)
            ),
        };
        let mut instance = [0; SERVICES.len()];
        for (i, (_, _, _, n)) in SERVICES.iter().enumerate() {
            instance[i] = rng.random_range(0..*n);
        }
        let trace_id: [u8; 16] = rng.random();
        let mut g = TraceGen { rng: &mut rng, trace_id, instance, spans: Vec::new(), request };
        let at = now - g.rng.random_range(0..1_000_000_000);
        g.entry(at);
        if g.rng.random_bool(error_ratio) {
            g.fail();
        }
        sent.push(Sent {
            trace_id: trace_id.iter().map(|b| format!("{b:02x}")).collect(),
            client_address: g.request.client.clone(),
        });
        let take = g.spans.len().min(n - made);
        made += take;
        for p in g.spans.into_iter().take(take) {
            let scopes = &mut out[p.service][instance[p.service]];
            match scopes.iter_mut().find(|(name, _)| *name == p.scope) {
                Some((_, spans)) => spans.push(p.span),
                None => scopes.push((p.scope, vec![p.span])),
            }
        }
    }
    let mut resource_spans = Vec::new();
    for (service, instances) in out.into_iter().enumerate() {
        for (i, scopes) in instances.into_iter().enumerate() {
            if scopes.is_empty() {
                continue;
            }
            resource_spans.push(ResourceSpans {
                resource: Some(resources[service][i].clone()),
                scope_spans: scopes
                    .into_iter()
                    .map(|(name, spans)| ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: format!("opentelemetry-instrumentation-{name}"),
                            version: "0.52.0".into(),
                            ..Default::default()
                        }),
                        spans,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        }
    }
    (ExportTraceServiceRequest { resource_spans }, sent)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn traces_look_like_the_demo() {
        let resources = resources();
        let (request, sent) = request(&resources, 0.05, 50_000);
        let mut by_trace: BTreeMap<Vec<u8>, Vec<&Span>> = BTreeMap::new();
        let mut resource_attrs = BTreeSet::new();
        let mut services = BTreeSet::new();
        let mut span_ids = BTreeSet::new();
        let (mut spans, mut attrs, mut kinds) = (0usize, 0usize, BTreeSet::new());
        for rs in &request.resource_spans {
            let r = rs.resource.as_ref().unwrap();
            resource_attrs.insert(r.attributes.len());
            services.insert(format!("{:?}", r.attributes[0].value));
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                spans += 1;
                attrs += span.attributes.len();
                kinds.insert(span.kind);
                assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
                assert!(span_ids.insert(span.span_id.clone()), "unique span ids");
                by_trace.entry(span.trace_id.clone()).or_default().push(span);
            }
        }
        assert_eq!(spans, 50_000);
        assert_eq!(services.len(), SERVICES.len());
        assert!(resource_attrs.iter().all(|n| (16..=17).contains(n)), "{resource_attrs:?}");
        assert_eq!(kinds.len(), 5, "server, client, internal, producer, consumer: {kinds:?}");
        let per_span = attrs as f64 / spans as f64;
        assert!((8.0..=13.0).contains(&per_span), "attributes per span {per_span}");
        assert_eq!(by_trace.len(), sent.len());
        // The last trace may be cut short; every other has 5 to 39 spans.
        let sizes: Vec<usize> = by_trace.values().map(Vec::len).collect();
        assert!(sizes.iter().filter(|n| !(5..=39).contains(*n)).count() <= 1, "{:?}", sizes.iter().max());
        assert!(sizes.iter().any(|n| *n >= 24), "checkouts are long");
        let errors = by_trace.values().filter(|t| t.iter().any(|s| s.status.is_some())).count();
        let ratio = errors as f64 / by_trace.len() as f64;
        assert!((0.03..0.07).contains(&ratio), "error ratio {ratio}");
        // The last trace may be cut short, its failing span left out: every other failing trace
        // has its exception event.
        let last: Vec<u8> = (0..sent.last().unwrap().trace_id.len() / 2)
            .map(|i| u8::from_str_radix(&sent.last().unwrap().trace_id[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let whole = by_trace.iter().filter(|(id, _)| **id != last).map(|(_, t)| t);
        for t in whole.filter(|t| t.iter().any(|s| s.status.is_some())) {
            assert_eq!(t.iter().filter(|s| s.events.iter().any(|e| e.name == "exception")).count(), 1);
            assert!(
                t.iter().any(|s| s.parent_span_id.is_empty() && s.status.is_some()),
                "the root fails too"
            );
        }
        let consumers: Vec<&&Span> =
            by_trace.values().flatten().filter(|s| s.kind == SpanKind::Consumer as i32).collect();
        assert!(!consumers.is_empty() && consumers.iter().all(|s| s.links.len() == 1));
        let addresses: BTreeSet<&str> = sent.iter().map(|s| s.client_address.as_str()).collect();
        assert!(addresses.len() as f64 > 0.95 * sent.len() as f64, "client addresses are high-cardinality");
    }
}
