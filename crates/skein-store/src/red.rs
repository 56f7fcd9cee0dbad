//! RED pre-aggregates: per service, operation, span kind and minute of span start, the number
//! of spans, how many failed (status Error) and a mergeable sketch of their durations. Stores
//! keep them as spans are written (the embedded engine per head and per block), so rate, error
//! and latency series over a day read a few thousand small cells instead of every span.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::ops::Range;

use skein_model::{Span, SpanKind, Str};

use crate::codec::{DecodeError, Reader, Writer, err};

/// Relative accuracy of [`Sketch`] quantiles.
pub const SKETCH_ACCURACY: f64 = 0.01;

/// The time resolution of the pre-aggregates: one cell per series per minute of span start.
pub const RED_CELL_NANOS: u64 = 60_000_000_000;

fn gamma_ln() -> f64 {
    ((1.0 + SKETCH_ACCURACY) / (1.0 - SKETCH_ACCURACY)).ln()
}

/// A latency sketch: counts in logarithmic buckets, each `γ = (1 + α) / (1 - α)` times wider
/// than the one before, so that any quantile is returned within a relative error α
/// ([`SKETCH_ACCURACY`]) of a value of the data (DDSketch's rule). Sketches merge by adding
/// counts, so per-minute sketches make any window's quantile. The buckets are kept dense,
/// from the lowest to the highest one used (a few hundred for real latencies), so merging is
/// adding two arrays.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sketch {
    /// Index of `counts[0]`; bucket `i` holds values in `(γ^(i-1), γ^i]`.
    first: i32,
    counts: Vec<u64>,
    /// Values of 0 (or below 1 ns).
    zeros: u64,
    count: u64,
}

impl Sketch {
    pub fn add(&mut self, value: f64) {
        if value < 1.0 {
            self.add_zeros(1);
        } else {
            self.add_bucket((value.ln() / gamma_ln()).ceil() as i32, 1);
        }
    }

    fn add_zeros(&mut self, n: u64) {
        self.count += n;
        self.zeros += n;
    }

    /// Adds `n` values to bucket `i`.
    fn add_bucket(&mut self, i: i32, n: u64) {
        self.count += n;
        // Nearly always a bucket already covered (the sketch of a minute of one operation).
        if let Some(count) = i
            .checked_sub(self.first)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| self.counts.get_mut(at))
        {
            *count += n;
            return;
        }
        self.widen(i, i);
        self.counts[(i - self.first) as usize] += n;
    }

    /// Makes `counts` cover buckets `lo..=hi`.
    fn widen(&mut self, lo: i32, hi: i32) {
        if self.counts.is_empty() {
            self.first = lo;
            self.counts = vec![0; (hi - lo + 1) as usize];
            return;
        }
        if lo < self.first {
            let grow = (self.first - lo) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.first = lo;
        }
        let last = self.first + self.counts.len() as i32 - 1;
        if hi > last {
            self.counts.resize(self.counts.len() + (hi - last) as usize, 0);
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.count += other.count;
        self.zeros += other.zeros;
        if other.counts.is_empty() {
            return;
        }
        self.widen(other.first, other.first + other.counts.len() as i32 - 1);
        let at = (other.first - self.first) as usize;
        for (mine, theirs) in self.counts[at..].iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// Takes out what [`Sketch::merge`] put in: `other` must have been merged into this one
    /// (a sliding window drops its oldest step this way).
    pub fn subtract(&mut self, other: &Sketch) {
        self.count -= other.count;
        self.zeros -= other.zeros;
        if other.counts.is_empty() {
            return;
        }
        let at = (other.first - self.first) as usize;
        for (mine, theirs) in self.counts[at..].iter_mut().zip(&other.counts) {
            *mine -= theirs;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Values under 1 ns.
    pub fn zeros(&self) -> u64 {
        self.zeros
    }

    /// The buckets that hold values: (index, count), index ascending. Bucket `i` holds values
    /// in `(γ^(i-1), γ^i]`.
    pub fn buckets(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, n)| **n > 0).map(|(k, n)| (self.first + k as i32, *n))
    }

    /// The sketch with these counts (as [`Sketch::zeros`] and [`Sketch::buckets`] give them;
    /// buckets may repeat and come in any order).
    pub fn from_parts(zeros: u64, buckets: impl IntoIterator<Item = (i32, u64)>) -> Sketch {
        let mut s = Sketch::default();
        s.add_zeros(zeros);
        for (i, n) in buckets {
            if n > 0 {
                s.add_bucket(i, n);
            }
        }
        s
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) of the added values by the nearest-rank rule (the value
    /// of rank `⌈q·n⌉`, 1-based, at least 1), within [`SKETCH_ACCURACY`] of it; `None` when
    /// there are none.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1) - 1;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        let g = gamma_ln().exp();
        for (k, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen > rank {
                // The bucket's midpoint in relative terms: at most α from any of its values.
                return Some(2.0 * g.powi(self.first + k as i32) / (g + 1.0));
            }
        }
        None
    }

    fn encode(&self, w: &mut Writer) {
        w.varint(self.zeros);
        w.varint(zigzag(self.first));
        w.varint(self.counts.len() as u64);
        for n in &self.counts {
            w.varint(*n);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Sketch, DecodeError> {
        let zeros = r.varint()?;
        let first = unzigzag(r.varint()?)?;
        let n = r.count()?;
        if n > 1 << 16 {
            return err("a latency sketch with too many buckets");
        }
        let mut counts = Vec::with_capacity(n);
        let mut count = zeros;
        for _ in 0..n {
            let c = r.varint()?;
            count = count.checked_add(c).ok_or_else(|| DecodeError("sketch counts overflow".into()))?;
            counts.push(c);
        }
        Ok(Sketch { first, counts, zeros, count })
    }
}

fn zigzag(v: i32) -> u64 {
    ((v << 1) ^ (v >> 31)) as u32 as u64
}

fn unzigzag(v: u64) -> Result<i32, DecodeError> {
    let v = u32::try_from(v).map_err(|_| DecodeError("sketch bucket index out of range".into()))?;
    Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
}

/// One series' figures over one minute.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RedCell {
    pub calls: u64,
    pub errors: u64,
    /// Durations in nanoseconds.
    pub latency: Sketch,
}

impl RedCell {
    pub fn merge(&mut self, other: &RedCell) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
    }
}

/// Cells of one series (a service's operation and span kind), by minute (span start / 60 s).
pub type RedCells = BTreeMap<u64, RedCell>;

/// The series of one operation, by span kind code (0 unspecified … 5 consumer).
pub type RedKinds = [RedCells; SpanKind::ALL.len()];

/// The pre-aggregates of a set of spans: service → operation → kind → minute → cell. (Nested
/// by string so that counting a span looks its series up without allocating.)
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RedSummary {
    pub series: FxHashMap<String, FxHashMap<Str, RedKinds>>,
}

impl RedSummary {
    /// Counts `span`.
    pub fn add(&mut self, span: &Span) {
        self.add_of(span.service_name(), span);
    }

    /// Counts `span` under `service`, its service name when the caller has found it already
    /// (once for the spans of one resource: it is looked up among the resource's attributes).
    pub fn add_of(&mut self, service: &str, span: &Span) {
        self.add_parts(
            service,
            &span.name,
            span.kind,
            span.start_time_unix_nano,
            span.duration_nanos(),
            span.status.code == skein_model::StatusCode::Error,
        );
    }

    pub fn add_parts(
        &mut self,
        service: &str,
        name: &Str,
        kind: SpanKind,
        start: u64,
        duration: u64,
        error: bool,
    ) {
        let ops = match self.series.get_mut(service) {
            Some(ops) => ops,
            None => self.series.entry(service.to_owned()).or_default(),
        };
        let kinds = match ops.get_mut(name.as_str()) {
            Some(kinds) => kinds,
            None => ops.entry(name.clone()).or_default(),
        };
        let cell = kinds[kind.code() as usize].entry(start / RED_CELL_NANOS).or_default();
        cell.calls += 1;
        cell.errors += u64::from(error);
        cell.latency.add(duration as f64);
    }

    /// Adds every cell of `other`.
    pub fn merge(&mut self, other: &RedSummary) {
        self.merge_where(other, &(0..u64::MAX), None);
    }

    /// Adds the cells of `other` for minutes in `minutes` and, when given, these services only.
    pub fn merge_where(&mut self, other: &RedSummary, minutes: &Range<u64>, services: Option<&[String]>) {
        for (service, ops) in &other.series {
            if services.is_some_and(|wanted| !wanted.iter().any(|s| s == service)) {
                continue;
            }
            for (op, kinds) in ops {
                for (k, cells) in kinds.iter().enumerate() {
                    let mut picked = cells.range(minutes.clone()).peekable();
                    if picked.peek().is_none() {
                        continue;
                    }
                    let mine =
                        &mut self.series.entry(service.clone()).or_default().entry(op.clone()).or_default()
                            [k];
                    for (minute, cell) in picked {
                        mine.entry(*minute).or_default().merge(cell);
                    }
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Spans counted.
    pub fn calls(&self) -> u64 {
        self.series
            .values()
            .flat_map(|ops| ops.values())
            .flatten()
            .flat_map(|cells| cells.values())
            .map(|c| c.calls)
            .sum()
    }

    /// The encoding blocks store (`docs/format/block.md`): version 1, then the services sorted
    /// by name, each with its length in bytes (a reader skips the services it does not want)
    /// and its series sorted by (operation, kind), each with its cells by minute; every sketch
    /// has its length too (a reader of counts alone skips it).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(1);
        let mut services: Vec<&String> = self.series.keys().collect();
        services.sort();
        w.varint(services.len() as u64);
        for service in services {
            let ops = &self.series[service];
            let mut body = Writer::default();
            let mut keys: Vec<(&Str, u8, &RedCells)> = ops
                .iter()
                .flat_map(|(name, kinds)| {
                    kinds
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| !c.is_empty())
                        .map(move |(k, c)| (name, k as u8, c))
                })
                .collect();
            keys.sort_by_key(|(name, kind, _)| (name.as_str(), *kind));
            body.varint(keys.len() as u64);
            for (name, kind, cells) in keys {
                body.str(name);
                body.u8(kind);
                body.varint(cells.len() as u64);
                let mut last = 0;
                let mut sketch = Writer::default();
                for (minute, cell) in cells {
                    body.varint(minute - last);
                    last = *minute;
                    body.varint(cell.calls);
                    body.varint(cell.errors);
                    sketch.buf.clear();
                    cell.latency.encode(&mut sketch);
                    body.bytes(&sketch.buf);
                }
            }
            w.str(service);
            w.bytes(&body.buf);
        }
        w.buf
    }

    pub fn decode(buf: &[u8]) -> Result<RedSummary, DecodeError> {
        let mut out = RedSummary::default();
        out.decode_where(buf, &(0..u64::MAX), None, true)?;
        Ok(out)
    }

    /// Adds the cells of an encoded summary for minutes in `minutes` and, when given, these
    /// services only, without building the rest: other services are stepped over by their
    /// length, and with `latency` false so are the sketches (the cells then have empty ones).
    pub fn decode_where(
        &mut self,
        buf: &[u8],
        minutes: &Range<u64>,
        services: Option<&[String]>,
        latency: bool,
    ) -> Result<(), DecodeError> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != 1 {
            return err(format!("unknown RED summary version {version}"));
        }
        for _ in 0..r.count()? {
            let service = r.text()?;
            let body = r.slice()?;
            if services.is_some_and(|wanted| !wanted.iter().any(|s| s == service)) {
                continue;
            }
            let mut r = Reader::new(body);
            for _ in 0..r.count()? {
                let name = r.str()?;
                let kind = *SpanKind::ALL
                    .get(r.u8()? as usize)
                    .ok_or_else(|| DecodeError("bad span kind in a RED summary".into()))?;
                let mut picked: Vec<(u64, RedCell)> = Vec::new();
                let mut minute = 0u64;
                for _ in 0..r.count()? {
                    minute = minute
                        .checked_add(r.varint()?)
                        .ok_or_else(|| DecodeError("RED minute overflow".into()))?;
                    let (calls, errors) = (r.varint()?, r.varint()?);
                    let sketch = r.slice()?;
                    if errors > calls {
                        return err("a RED cell with more errors than calls");
                    }
                    if !minutes.contains(&minute) {
                        continue;
                    }
                    let latency = if latency {
                        let mut sr = Reader::new(sketch);
                        let latency = Sketch::decode(&mut sr)?;
                        if latency.count != calls || !sr.is_empty() {
                            return err("a RED cell whose sketch does not hold its calls");
                        }
                        latency
                    } else {
                        Sketch::default()
                    };
                    picked.push((minute, RedCell { calls, errors, latency }));
                }
                if picked.is_empty() {
                    continue;
                }
                let cells = &mut self.series.entry(service.to_owned()).or_default().entry(name).or_default()
                    [kind.code() as usize];
                for (minute, cell) in picked {
                    match cells.entry(minute) {
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert(cell);
                        }
                        std::collections::btree_map::Entry::Occupied(mut o) => o.get_mut().merge(&cell),
                    }
                }
            }
            if !r.is_empty() {
                return err("trailing bytes in a RED summary's service");
            }
        }
        if !r.is_empty() {
            return err("trailing bytes after a RED summary");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::SpanBuilder as B;

    /// A deterministic stream of log-normal-like latencies (ns), from 1 µs to about 10 s.
    fn latencies(n: usize) -> Vec<f64> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                let v = ((x.rotate_left(17) >> 11) as f64) / (1u64 << 53) as f64;
                // Sum of two uniforms in log space: a bell of magnitudes around 1 ms.
                10f64.powf(3.0 + 3.5 * (u + v))
            })
            .collect()
    }

    /// Quantiles of 1M values, added to two sketches that are merged, are within the
    /// documented error of the exact ones.
    #[test]
    fn sketch_quantiles_are_within_the_documented_error_of_exact_ones() {
        let values = latencies(1_000_000);
        let mut halves = (Sketch::default(), Sketch::default());
        for (i, v) in values.iter().enumerate() {
            if i % 2 == 0 { halves.0.add(*v) } else { halves.1.add(*v) }
        }
        let mut sketch = halves.0.clone();
        sketch.merge(&halves.1);
        assert_eq!(sketch.count(), 1_000_000);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.5, 0.75, 0.95, 0.99, 0.999, 1.0] {
            let exact = sorted[((q * sorted.len() as f64).ceil() as usize).max(1) - 1];
            let got = sketch.quantile(q).unwrap();
            let error = (got - exact).abs() / exact;
            assert!(error <= SKETCH_ACCURACY, "q{q}: sketch {got}, exact {exact}, error {error}");
        }
        assert_eq!(Sketch::default().quantile(0.5), None);
        let mut zeros = Sketch::default();
        zeros.add(0.0);
        assert_eq!(zeros.quantile(0.99), Some(0.0));
        let rebuilt =
            Sketch::from_parts(sketch.zeros(), sketch.buckets().collect::<Vec<_>>().into_iter().rev());
        assert_eq!(rebuilt, sketch, "a sketch is rebuilt from its buckets");
        // Taking a merged part out again leaves the other part.
        sketch.subtract(&halves.1);
        assert_eq!(sketch.count(), halves.0.count());
        assert_eq!(sketch.quantile(0.99), halves.0.quantile(0.99));
    }

    #[test]
    fn merging_in_any_order_gives_one_sketch() {
        let values = latencies(10_000);
        let mut whole = Sketch::default();
        values.iter().for_each(|v| whole.add(*v));
        let mut parts: Vec<Sketch> = vec![Sketch::default(); 7];
        for (i, v) in values.iter().enumerate() {
            parts[(i * 31) % 7].add(*v);
        }
        let mut merged = Sketch::default();
        for p in parts.iter().rev() {
            merged.merge(p);
        }
        assert_eq!(merged, whole);
    }

    #[test]
    fn summaries_count_by_series_and_minute_and_round_trip() {
        let mut s = RedSummary::default();
        for i in 0..100u8 {
            let mut b = B::new(i, 1).service(if i % 4 == 0 { "cart" } else { "api" }).name("GET /a");
            if i % 10 == 0 {
                b = b.error("boom");
            }
            s.add(&b.build());
        }
        s.add(&B::new(1, 2).service("api").name("GET /a").kind(SpanKind::Client).build());
        assert_eq!(s.calls(), 101);
        let internal = SpanKind::Internal.code() as usize;
        let api = &s.series["api"]["GET /a"][internal];
        // Span `i` starts i seconds after the base time: 100 seconds span two or three minutes.
        assert!(api.len() >= 2);
        assert_eq!(api.values().map(|c| c.calls).sum::<u64>(), 75);
        assert_eq!(api.values().map(|c| c.errors).sum::<u64>(), 5);
        let bytes = s.encode();
        assert_eq!(RedSummary::decode(&bytes).unwrap(), s);
        // Every truncation and every flipped bit is refused or read as something; never a panic.
        for n in 0..bytes.len() {
            assert!(RedSummary::decode(&bytes[..n]).is_err());
        }
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let _ = RedSummary::decode(&b);
        }
        // Counts alone, of one service: the sketches are stepped over.
        let mut counts = RedSummary::default();
        counts.decode_where(&bytes, &(0..u64::MAX), Some(&["cart".to_owned()]), false).unwrap();
        assert_eq!(counts.series.keys().collect::<Vec<_>>(), ["cart"]);
        let cart = &s.series["cart"]["GET /a"][internal];
        let got = &counts.series["cart"]["GET /a"][internal];
        assert!(got.values().all(|c| c.latency.count() == 0));
        assert_eq!(
            got.values().map(|c| (c.calls, c.errors)).collect::<Vec<_>>(),
            cart.values().map(|c| (c.calls, c.errors)).collect::<Vec<_>>()
        );
        let mut picked = RedSummary::default();
        let first = *api.keys().next().unwrap();
        picked.merge_where(&s, &(first..first + 1), Some(&["api".to_owned()]));
        assert_eq!(picked.series.len(), 1);
        let expected: u64 =
            s.series["api"].values().flatten().filter_map(|cells| cells.get(&first)).map(|c| c.calls).sum();
        assert_eq!(picked.calls(), expected);
    }
}
