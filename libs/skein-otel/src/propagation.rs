//! Carrying the context across process boundaries with the global propagator
//! (W3C `traceparent`/`tracestate` and `baggage` after [`crate::init`]).

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};

/// Writes `cx` into `carrier` (HTTP headers, gRPC metadata, message headers) with the global
/// propagator.
pub fn inject_into(cx: &Context, carrier: &mut dyn Injector) {
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, carrier));
}

/// Reads the context a caller sent in `carrier` with the global propagator. Without one,
/// the result has no span (a new trace starts).
pub fn extract_from(carrier: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract_with_context(&Context::new(), carrier))
}

#[cfg(any(feature = "tower", feature = "reqwest"))]
mod headers {
    use super::*;

    /// Writes `cx` into HTTP headers: for clients that are not reqwest.
    ///
    /// ```
    /// # #[cfg(feature = "tower")] {
    /// let mut headers = http::HeaderMap::new();
    /// skein_otel::propagation::inject(&opentelemetry::Context::current(), &mut headers);
    /// # }
    /// ```
    pub fn inject(cx: &Context, headers: &mut http::HeaderMap) {
        inject_into(cx, &mut opentelemetry_http::HeaderInjector(headers));
    }

    /// Reads the caller's context from HTTP headers with the global propagator. When that
    /// reads just the W3C headers (what [`crate::init`] installs), `traceparent` is parsed
    /// without allocating.
    pub fn extract(headers: &http::HeaderMap) -> Context {
        super::w3c::extract(headers, None)
    }
}

#[cfg(any(feature = "tower", feature = "reqwest"))]
pub use headers::{extract, inject};

#[cfg(any(feature = "tower", feature = "reqwest"))]
mod w3c {
    use opentelemetry::Context;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

    // Names made at compile time: looking one up skips parsing and validating the name.
    pub(crate) const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
    pub(crate) const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
    pub(crate) const BAGGAGE: http::HeaderName = http::HeaderName::from_static("baggage");

    /// Where the fast path reads the W3C headers: a header map (a lookup per name, made
    /// only when needed), or the values a caller already found in its own pass over them.
    pub(crate) trait W3cHeaders {
        fn traceparent(&self) -> Option<&http::HeaderValue>;
        fn tracestate(&self) -> Option<&http::HeaderValue>;
        fn has_baggage(&self) -> bool;
    }

    impl W3cHeaders for http::HeaderMap {
        fn traceparent(&self) -> Option<&http::HeaderValue> {
            self.get(TRACEPARENT)
        }
        fn tracestate(&self) -> Option<&http::HeaderValue> {
            self.get(TRACESTATE)
        }
        fn has_baggage(&self) -> bool {
            self.contains_key(BAGGAGE)
        }
    }

    /// The W3C headers of a request, found by the caller.
    #[cfg(feature = "tower")]
    #[derive(Clone, Copy, Default, Debug)]
    pub(crate) struct FoundW3cHeaders<'a> {
        pub(crate) traceparent: Option<&'a http::HeaderValue>,
        pub(crate) tracestate: Option<&'a http::HeaderValue>,
        pub(crate) baggage: bool,
    }

    #[cfg(feature = "tower")]
    impl<'a> FoundW3cHeaders<'a> {
        /// The W3C headers of `headers`, each looked up by name.
        pub(crate) fn look_up(headers: &'a http::HeaderMap) -> Self {
            FoundW3cHeaders {
                traceparent: headers.traceparent(),
                tracestate: headers.tracestate(),
                baggage: headers.has_baggage(),
            }
        }
    }

    #[cfg(feature = "tower")]
    impl W3cHeaders for FoundW3cHeaders<'_> {
        fn traceparent(&self) -> Option<&http::HeaderValue> {
            self.traceparent
        }
        fn tracestate(&self) -> Option<&http::HeaderValue> {
            self.tracestate
        }
        fn has_baggage(&self) -> bool {
            self.baggage
        }
    }

    /// What the fast path may do for a request, decided from the fields a propagator reads.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) enum Fields {
        /// Exactly the W3C trace-context headers: parse `traceparent` here.
        TraceContext,
        /// The W3C trace-context and baggage headers: parse here unless a `baggage` header
        /// came (then the propagator must build the baggage).
        TraceContextAndBaggage,
        /// Anything else (B3, Jaeger, custom, none): always ask the propagator.
        Other,
    }

    pub(crate) fn fields_of(p: &dyn TextMapPropagator) -> Fields {
        let (mut tp, mut ts, mut bg) = (false, false, false);
        for f in p.fields() {
            match f {
                "traceparent" => tp = true,
                "tracestate" => ts = true,
                "baggage" => bg = true,
                _ => return Fields::Other,
            }
        }
        match (tp && ts, bg) {
            (true, false) => Fields::TraceContext,
            (true, true) => Fields::TraceContextAndBaggage,
            _ => Fields::Other,
        }
    }

    /// Reads the caller's context from HTTP headers with `propagator` (the global one when
    /// `None`). When the propagator reads exactly the W3C headers, `traceparent` is parsed
    /// here without allocating: the result is the one `TraceContextPropagator` gives for every
    /// header that follows the W3C format (it is stricter on lengths, as the format is).
    pub(crate) fn extract(
        headers: &http::HeaderMap,
        propagator: Option<&(dyn TextMapPropagator + Send + Sync)>,
    ) -> Context {
        extract_found(headers, headers, propagator)
    }

    /// [`extract`], with the W3C headers read from `found` on the fast path (`headers` is
    /// what a propagator reads otherwise).
    pub(crate) fn extract_found(
        headers: &http::HeaderMap,
        found: &impl W3cHeaders,
        propagator: Option<&(dyn TextMapPropagator + Send + Sync)>,
    ) -> Context {
        let fields = match propagator {
            Some(p) => fields_of(p),
            None => opentelemetry::global::get_text_map_propagator(|p| fields_of(p)),
        };
        let fast = match fields {
            Fields::TraceContext => true,
            Fields::TraceContextAndBaggage => !found.has_baggage(),
            Fields::Other => false,
        };
        if fast {
            return match span_context(found) {
                Some(sc) => Context::new().with_remote_span_context(sc),
                None => Context::new(),
            };
        }
        let extractor = opentelemetry_http::HeaderExtractor(headers);
        match propagator {
            Some(p) => p.extract_with_context(&Context::new(), &extractor),
            None => super::extract_from(&extractor),
        }
    }

    fn span_context(headers: &impl W3cHeaders) -> Option<SpanContext> {
        let (trace_id, span_id, flags) = parse_traceparent(headers.traceparent()?.as_bytes())?;
        let trace_state = match headers.tracestate().and_then(|v| v.to_str().ok()) {
            Some(s) => s.parse().unwrap_or_default(),
            None => TraceState::NONE,
        };
        Some(SpanContext::new(trace_id, span_id, flags, true, trace_state))
    }

    /// `version-traceid-parentid-flags` as W3C Trace Context specifies it: lowercase hex,
    /// exact lengths, no all-zero ids, version `ff` invalid, and for versions after `00` more
    /// fields allowed after a `-`. Only the sampled flag is kept (as the SDK does).
    pub(crate) fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
        let value = value.trim_ascii();
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = hex(&value[0..2])? as u8;
        match version {
            0xff => return None,
            0 if value.len() != 55 => return None,
            _ if value.len() > 55 && value[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = (u128::from(hex16(&value[3..19])?) << 64) | u128::from(hex16(&value[19..35])?);
        let span_id = hex16(&value[36..52])?;
        let flags = hex(&value[53..55])? as u8;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some((TraceId::from(trace_id), SpanId::from(span_id), TraceFlags::new(flags) & TraceFlags::SAMPLED))
    }

    /// The value of exactly 16 lowercase hex digits (W3C forbids upper case), eight at a time
    /// in a `u64` (the ids of every request go through here).
    pub(crate) fn hex16(digits: &[u8]) -> Option<u64> {
        let (hi, lo) = digits.split_at_checked(8)?;
        let hi = hex8(hi.try_into().ok()?)?;
        let lo = hex8(lo.try_into().ok()?)?;
        Some(u64::from(hi) << 32 | u64::from(lo))
    }

    /// Eight lowercase hex digits as one `u64` word: every byte checked to be `0-9` or
    /// `a-f`, then each byte's value and the nibbles gathered, with no branch per digit.
    fn hex8(digits: [u8; 8]) -> Option<u32> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let x = u64::from_be_bytes(digits);
        // A byte below 0x80 is at least `c` when adding 0x80 - c sets its high bit; no carry
        // crosses into the next byte.
        let at_least = |c: u8| x.wrapping_add(u64::from(0x80 - c) * ONES) & HIGH;
        let digit = at_least(b'0') & !at_least(b'9' + 1);
        let letter = at_least(b'a') & !at_least(b'f' + 1);
        if x & HIGH != 0 || (digit | letter) != HIGH {
            return None;
        }
        // '0'..'9' are 0x30..0x39 and 'a'..'f' 0x61..0x66: the low nibble, plus 9 for letters.
        let mut v = (x & (ONES * 0x0f)) + ((x >> 6) & ONES) * 9;
        v = (v | (v >> 4)) & 0x00ff_00ff_00ff_00ff;
        v = (v | (v >> 8)) & 0x0000_ffff_0000_ffff;
        v = (v | (v >> 16)) & 0x0000_0000_ffff_ffff;
        Some(v as u32)
    }

    /// The value of up to 16 lowercase hex digits, through a table and without a branch per
    /// digit (for the two-digit version and flags).
    fn hex(digits: &[u8]) -> Option<u64> {
        const INVALID: u8 = 0x80;
        const TABLE: [u8; 256] = {
            let mut t = [INVALID; 256];
            let mut i = 0;
            while i < 10 {
                t[b'0' as usize + i] = i as u8;
                i += 1;
            }
            let mut i = 0;
            while i < 6 {
                t[b'a' as usize + i] = 10 + i as u8;
                i += 1;
            }
            t
        };
        debug_assert!(digits.len() <= 16);
        let (mut n, mut seen) = (0u64, 0u8);
        for &d in digits {
            let v = TABLE[d as usize];
            seen |= v;
            n = (n << 4) | u64::from(v & 0x0f);
        }
        (seen & INVALID == 0).then_some(n)
    }
}

#[cfg(feature = "tower")]
pub(crate) use w3c::{BAGGAGE, FoundW3cHeaders, TRACEPARENT, TRACESTATE, extract_found};

#[cfg(all(test, any(feature = "tower", feature = "reqwest")))]
mod tests {
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

    use super::w3c::{self, Fields};

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
    }

    /// The fast path gives what the SDK's propagator gives for every well-formed header, and
    /// no parent where the W3C format says the header is invalid.
    #[test]
    fn fast_traceparent_agrees_with_the_sdk_propagator() {
        let sdk = TraceContextPropagator::new();
        let valid = [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
            "02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
            "02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-XYZxsf09",
            "  00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            // Either half of the trace id may be zero.
            "00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da60000000000000000-00f067aa0ba902b7-01",
        ];
        for tp in valid {
            for ts in [None, Some("foo=bar,vendor=x"), Some("not a tracestate")] {
                let mut pairs = vec![("traceparent", tp)];
                pairs.extend(ts.map(|ts| ("tracestate", ts)));
                let h = headers(&pairs);
                let ours = w3c::extract(&h, Some(&sdk));
                let theirs = sdk.extract(&opentelemetry_http::HeaderExtractor(&h));
                assert!(ours.span().span_context().is_valid(), "{tp}");
                assert_eq!(ours.span().span_context(), theirs.span().span_context(), "{tp} {ts:?}");
            }
        }
        let invalid = [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba9 2b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ];
        for tp in invalid {
            let h = headers(&[("traceparent", tp)]);
            let ours = w3c::extract(&h, Some(&sdk));
            assert!(!ours.has_active_span(), "{tp:?} must not give a parent");
        }
    }

    /// Every byte value at every position of a 16-digit id: the word-at-a-time parser
    /// accepts exactly lowercase hex and reads the value `from_str_radix` reads.
    #[test]
    fn hex16_agrees_with_a_digit_by_digit_reading() {
        let reference = |d: &[u8]| {
            let lower_hex = d.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
            lower_hex.then(|| u64::from_str_radix(std::str::from_utf8(d).unwrap(), 16).unwrap())
        };
        for base in [*b"0123456789abcdef", *b"fedcba9876543210", *b"0000000000000000", *b"ffffffffffffffff"] {
            assert_eq!(w3c::hex16(&base), reference(&base));
            for pos in 0..16 {
                for byte in 0..=255u8 {
                    let mut d = base;
                    d[pos] = byte;
                    assert_eq!(w3c::hex16(&d), reference(&d), "{byte:#04x} at {pos} in {base:?}");
                }
            }
        }
        assert_eq!(w3c::hex16(b"0123456789abcde"), None, "too short");
    }

    #[test]
    fn baggage_and_other_propagators_go_through_the_propagator() {
        let both = TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        assert_eq!(w3c::fields_of(&TraceContextPropagator::new()), Fields::TraceContext);
        assert_eq!(w3c::fields_of(&both), Fields::TraceContextAndBaggage);
        assert_eq!(w3c::fields_of(&BaggagePropagator::new()), Fields::Other);
        assert_eq!(w3c::fields_of(&TextMapCompositePropagator::new(vec![])), Fields::Other);

        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = headers(&[("traceparent", tp), ("baggage", "tenant=acme")]);
        let cx = w3c::extract(&h, Some(&both));
        assert_eq!(cx.baggage().get("tenant").map(|v| v.as_str().to_owned()).as_deref(), Some("acme"));
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // A propagator that reads only baggage never gets a parent from traceparent.
        let cx = w3c::extract(&h, Some(&BaggagePropagator::new()));
        assert!(!cx.has_active_span());
    }
}
