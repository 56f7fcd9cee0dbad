//! The bench's OTLP traffic: the realistic load (the default, [`crate::realistic`]) or the
//! older `checkout` load — one 14-span checkout trace over 6 services, always the same shape,
//! 4 resource attributes per service — kept by name to compare with earlier figures.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};
use rand::Rng;

use crate::Protocol;

pub(crate) const SERVICES: [&str; 6] =
    ["frontend", "checkout", "cart", "payment", "email", "product-catalog"];

/// Which load the bench sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Load {
    /// OpenTelemetry-demo-like traffic: 8 services with 2–3 instances and 16–17 resource
    /// attributes each, 5–39 spans per trace, high-cardinality values.
    #[default]
    Realistic,
    /// The older load: one 14-span checkout trace over 6 services (easier to store).
    Checkout,
}

/// What the generated traffic looks like.
#[derive(Clone, Debug)]
pub struct TrafficShape {
    pub load: Load,
    /// `checkout` load: attributes on every span (at least the semantic-convention ones of its
    /// kind). The realistic load has its own, about 11.
    pub attributes_per_span: usize,
    /// Share of traces whose server spans fail with 500 / an error status.
    pub error_ratio: f64,
    /// `checkout` load: whether every span draws its own user, order, cart and session values. By default a
    /// trace is one request of one user, so its spans share them (as in the OpenTelemetry
    /// demo, where `app.user.id` and `app.order.id` are per request); per-span values are a
    /// worst case for storage that no real trace looks like.
    pub per_span_values: bool,
}

impl Default for TrafficShape {
    fn default() -> Self {
        TrafficShape {
            load: Load::default(),
            attributes_per_span: 11,
            error_ratio: 0.05,
            per_span_values: false,
        }
    }
}

/// What the bench remembers of a trace it sent, to query it later.
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    pub(crate) trace_id: String,
    /// The `client.address` of its entry (frontend SERVER) span.
    pub(crate) client_address: String,
}

/// The values one request carries through all its spans.
struct RequestValues {
    user: String,
    order: String,
    cart_items: i64,
    cached: bool,
    card: &'static str,
    amount: f64,
    client: String,
}

impl RequestValues {
    fn random(rng: &mut impl Rng) -> Self {
        RequestValues {
            user: format!("user-{}", rng.random_range(0..100_000)),
            order: format!("{:016x}", rng.random::<u64>()),
            cart_items: rng.random_range(1..20),
            cached: rng.random(),
            card: ["visa", "mastercard", "amex"][rng.random_range(0..3)],
            amount: (rng.random_range(100..50_000) as f64) / 100.0,
            client: format!("10.0.{}.{}", rng.random_range(0..255), rng.random_range(1..255)),
        }
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

/// One span of the template tree: (service index, parent index in the tree, name, kind).
/// Every service of [`SERVICES`] takes part.
const TREE: [(usize, Option<usize>, &str, SpanKind); 14] = [
    (0, None, "GET /api/checkout", SpanKind::Server),
    (0, Some(0), "POST", SpanKind::Client),
    (1, Some(1), "oteldemo.CheckoutService/PlaceOrder", SpanKind::Server),
    (1, Some(2), "oteldemo.CartService/GetCart", SpanKind::Client),
    (2, Some(3), "oteldemo.CartService/GetCart", SpanKind::Server),
    (2, Some(4), "HGET", SpanKind::Client),
    (1, Some(2), "SELECT orders", SpanKind::Client),
    (1, Some(2), "oteldemo.PaymentService/Charge", SpanKind::Client),
    (3, Some(7), "oteldemo.PaymentService/Charge", SpanKind::Server),
    (3, Some(8), "charge card", SpanKind::Internal),
    (1, Some(2), "orders publish", SpanKind::Producer),
    (4, Some(10), "orders process", SpanKind::Consumer),
    (0, Some(0), "oteldemo.ProductCatalogService/GetProduct", SpanKind::Client),
    (5, Some(12), "oteldemo.ProductCatalogService/GetProduct", SpanKind::Server),
];

impl TrafficShape {
    fn attributes(
        &self,
        rng: &mut impl Rng,
        request: &RequestValues,
        kind: SpanKind,
        name: &str,
        error: bool,
    ) -> Vec<KeyValue> {
        let fresh;
        let v = if self.per_span_values {
            fresh = RequestValues::random(rng);
            &fresh
        } else {
            request
        };
        let mut a = Vec::with_capacity(self.attributes_per_span.max(8));
        match kind {
            SpanKind::Server if name.starts_with("GET") => {
                a.push(kv("http.request.method", s("GET")));
                a.push(kv("http.route", s("/api/checkout")));
                a.push(kv("url.path", s("/api/checkout")));
                a.push(kv("url.scheme", s("http")));
                a.push(kv("http.response.status_code", Value::IntValue(if error { 500 } else { 200 })));
                a.push(kv("network.protocol.version", s("1.1")));
                a.push(kv("user_agent.original", s("Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0")));
                a.push(kv("client.address", s(v.client.as_str())));
            }
            SpanKind::Client if name == "POST" => {
                a.push(kv("http.request.method", s("POST")));
                a.push(kv("url.full", s("http://checkout:8080/oteldemo.CheckoutService/PlaceOrder")));
                a.push(kv("server.address", s("checkout")));
                a.push(kv("server.port", Value::IntValue(8080)));
                a.push(kv("http.response.status_code", Value::IntValue(if error { 500 } else { 200 })));
            }
            SpanKind::Server | SpanKind::Client if name.starts_with("oteldemo") => {
                a.push(kv("rpc.system.name", s("grpc")));
                a.push(kv("rpc.method", s(name)));
                a.push(kv("rpc.response.status_code", s(if error { "INTERNAL" } else { "OK" })));
                a.push(kv("server.address", s("payment")));
                a.push(kv("server.port", Value::IntValue(50051)));
                a.push(kv("http.response.status_code", Value::IntValue(if error { 500 } else { 200 })));
            }
            SpanKind::Client => {
                a.push(kv("db.system.name", s(if name == "HGET" { "redis" } else { "postgresql" })));
                a.push(kv("db.operation.name", s(name.split(' ').next().unwrap_or(name))));
                a.push(kv(
                    "db.query.text",
                    s(if name == "HGET" { "HGET ? ?" } else { "SELECT * FROM orders WHERE user_id = ?" }),
                ));
                a.push(kv("server.address", s("db")));
                a.push(kv("server.port", Value::IntValue(5432)));
            }
            SpanKind::Producer | SpanKind::Consumer => {
                a.push(kv("messaging.system", s("kafka")));
                a.push(kv("messaging.destination.name", s("orders")));
                a.push(kv(
                    "messaging.operation.type",
                    s(if kind == SpanKind::Producer { "send" } else { "process" }),
                ));
            }
            _ => {
                a.push(kv("app.payment.card_type", s(v.card)));
                a.push(kv("app.payment.amount", Value::DoubleValue(v.amount)));
            }
        }
        let mut i = 0;
        while a.len() < self.attributes_per_span {
            let v = match i % 4 {
                0 => kv("app.user.id", s(v.user.as_str())),
                1 => kv("app.order.id", s(v.order.as_str())),
                2 => kv("app.cart.items", Value::IntValue(v.cart_items)),
                _ => kv("app.session.cached", Value::BoolValue(v.cached)),
            };
            a.push(v);
            i += 1;
        }
        a
    }

    /// A request of about `n` spans (whole traces) and the ids of its traces.
    /// The services whose spans the load has.
    pub(crate) fn services(&self) -> &'static [&'static str] {
        static REALISTIC: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
        match self.load {
            Load::Realistic => {
                REALISTIC.get_or_init(|| crate::realistic::SERVICES.iter().map(|s| s.0).collect())
            }
            Load::Checkout => &SERVICES,
        }
    }

    /// The protobuf body of an export request of about `n` spans of this shape (whole
    /// traces), as an SDK would send it: for benchmarks of the receiving side.
    pub fn request_body(&self, n: usize) -> Vec<u8> {
        use prost::Message;
        self.request(n).0.encode_to_vec()
    }

    /// An export request of `n` spans, and what the bench keeps of its traces.
    pub(crate) fn request(&self, n: usize) -> (ExportTraceServiceRequest, Vec<Sent>) {
        static RESOURCES: std::sync::OnceLock<Vec<Vec<Resource>>> = std::sync::OnceLock::new();
        match self.load {
            Load::Realistic => crate::realistic::request(
                RESOURCES.get_or_init(crate::realistic::resources),
                self.error_ratio,
                n,
            ),
            Load::Checkout => self.checkout_request(n),
        }
    }

    fn checkout_request(&self, n: usize) -> (ExportTraceServiceRequest, Vec<Sent>) {
        let mut rng = rand::rng();
        let mut per_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES.len()];
        let mut ids = Vec::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut made = 0;
        while made < n {
            let trace_id: [u8; 16] = rng.random();
            let error = rng.random_bool(self.error_ratio);
            let values = RequestValues::random(&mut rng);
            ids.push(Sent {
                trace_id: trace_id.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                client_address: values.client.clone(),
            });
            let span_ids: Vec<[u8; 8]> = (0..TREE.len()).map(|_| rng.random::<[u8; 8]>()).collect();
            let start = now - rng.random_range(0..1_000_000_000);
            for (i, (service, parent, name, kind)) in TREE.iter().enumerate() {
                if made >= n {
                    break;
                }
                let offset = i as u64 * 2_000_000;
                let duration = rng.random_range(100_000..(60_000_000 - offset.min(50_000_000)));
                per_service[*service].push(Span {
                    trace_id: trace_id.to_vec(),
                    span_id: span_ids[i].to_vec(),
                    parent_span_id: parent.map(|p| span_ids[p].to_vec()).unwrap_or_default(),
                    name: (*name).to_owned(),
                    kind: *kind as i32,
                    start_time_unix_nano: start + offset,
                    end_time_unix_nano: start + offset + duration,
                    attributes: self.attributes(&mut rng, &values, *kind, name, error),
                    status: (error && matches!(kind, SpanKind::Server)).then(|| Status {
                        code: StatusCode::Error as i32,
                        message: "upstream failure".into(),
                    }),
                    flags: 0x101,
                    ..Default::default()
                });
                made += 1;
            }
        }
        let resource_spans = per_service
            .into_iter()
            .enumerate()
            .filter(|(_, spans)| !spans.is_empty())
            .map(|(i, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", s(SERVICES[i])),
                        kv("service.version", s("2.0.2")),
                        kv("host.name", s(format!("{}-7d9f", SERVICES[i]))),
                        kv("telemetry.sdk.language", s("rust")),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            })
            .collect();
        (ExportTraceServiceRequest { resource_spans }, ids)
    }
}

/// Sends requests over the chosen transport.
pub(crate) struct Sender {
    pub(crate) shape: TrafficShape,
    compression: crate::Compression,
    transport: Transport,
    grpc_token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

enum Transport {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http(reqwest::Client, String),
}

impl Sender {
    pub(crate) async fn new(
        protocol: Protocol,
        compression: crate::Compression,
        endpoint: &str,
        shape: TrafficShape,
        token: Option<&str>,
        ca_cert: Option<&std::path::Path>,
    ) -> anyhow::Result<Sender> {
        let transport = match protocol {
            Protocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?;
                if let Some(path) = ca_cert {
                    let pem = std::fs::read(path)?;
                    endpoint = endpoint.tls_config(
                        tonic::transport::ClientTlsConfig::new()
                            .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                    )?;
                }
                let channel = endpoint.connect().await?;
                let client = TraceServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
                Transport::Grpc(match compression {
                    crate::Compression::None => client,
                    crate::Compression::Gzip => {
                        client.send_compressed(tonic::codec::CompressionEncoding::Gzip)
                    }
                })
            }
            Protocol::Http => Transport::Http(
                crate::authed_client(token, ca_cert)?,
                format!("{}/v1/traces", endpoint.trim_end_matches('/')),
            ),
        };
        let grpc_token = token.map(|t| format!("Bearer {t}").parse()).transpose()?;
        Ok(Sender { shape, compression, transport, grpc_token })
    }

    pub(crate) async fn send(&self, req: ExportTraceServiceRequest) -> bool {
        match &self.transport {
            Transport::Grpc(c) => crate::send_grpc(&mut c.clone(), req, self.grpc_token.as_ref()).await,
            Transport::Http(c, url) => crate::send_http(c, url, req, self.compression).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// `app.order.id` values per trace id in a generated request.
    fn orders(shape: &TrafficShape) -> BTreeMap<Vec<u8>, BTreeSet<String>> {
        let (request, ids) = shape.checkout_request(TREE.len() * 3);
        assert_eq!(ids.len(), 3);
        let mut out: BTreeMap<Vec<u8>, BTreeSet<String>> = BTreeMap::new();
        for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            assert!(span.attributes.len() >= shape.attributes_per_span);
            for kv in span.attributes.iter().filter(|kv| kv.key == "app.order.id") {
                if let Some(AnyValue { value: Some(Value::StringValue(v)) }) = &kv.value {
                    out.entry(span.trace_id.clone()).or_default().insert(v.clone());
                }
            }
        }
        out
    }

    #[test]
    fn spans_of_a_trace_share_their_request_values_unless_asked_not_to() {
        let checkout = TrafficShape { load: Load::Checkout, ..TrafficShape::default() };
        let shared = orders(&checkout);
        assert_eq!(shared.len(), 3);
        assert!(shared.values().all(|v| v.len() == 1), "one order per trace: {shared:?}");
        let fresh = orders(&TrafficShape { per_span_values: true, ..checkout });
        assert!(fresh.values().all(|v| v.len() > 5), "fresh values per span: {fresh:?}");
    }
}
