//! The head: spans not yet in a block, in memory and indexed by trace, and the frozen heads
//! being written to blocks.

use super::*;

#[derive(Debug, Default)]
pub(crate) struct Head {
    pub(crate) traces: FxHashMap<TraceId, HeadTrace>,
    pub(crate) bytes: usize,
    pub(crate) spans: u64,
    pub(crate) created: Option<Instant>,
    /// RED pre-aggregates of the head's spans (a block writes them as they are). They also
    /// answer which services and operations (with their kinds) the head holds: a series per
    /// service, operation and kind that has spans.
    pub(crate) red: RedSummary,
    /// The earliest start of its spans (`None` while it has none): when retention keeps that
    /// one, it keeps every span, and the head is written without a look at each.
    pub(crate) oldest_start: Option<u64>,
    /// The resource and scope of its spans, each pair (by address) once or more: what a block
    /// of them numbers, found without walking the spans.
    pub(crate) origins: Vec<block::Origin>,
}

/// The spans of one trace in a head, as the batches brought them: a batch's spans of the trace
/// are moved in at once, as one part, so the head's lock is held per trace of a batch, not per
/// span.
#[derive(Debug, Default)]
pub(crate) struct HeadTrace {
    parts: Vec<Vec<Span>>,
    /// Measured as the spans come, while they are in the cache, so that cutting the head into
    /// a block does not walk them for it.
    extent: block::Extent,
}

impl HeadTrace {
    /// Its spans, measured, to be written to a block.
    pub(crate) fn measured(&self) -> block::Measured<'_> {
        block::Measured { spans: self.iter().map(block::SpanRef::Borrowed).collect(), extent: self.extent }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Span> + Clone {
        self.parts.iter().flatten()
    }

    pub(crate) fn len(&self) -> usize {
        self.parts.iter().map(Vec::len).sum()
    }
}

impl Head {
    /// Adds a batch of spans, grouped by trace and counted by [`Tally::of`]. Runs under the
    /// engine's exclusive lock: the tally is counted and the spans grouped before, so this only
    /// merges and moves each trace's part in.
    pub(crate) fn insert(&mut self, bytes: usize, tally: Tally) {
        self.created.get_or_insert_with(Instant::now);
        self.bytes += bytes;
        self.red.merge(&tally.red);
        self.spans += tally.spans;
        if tally.spans > 0 {
            self.oldest_start =
                Some(self.oldest_start.map_or(tally.oldest_start, |o| o.min(tally.oldest_start)));
        }
        self.origins.extend(tally.origins);
        for (id, part) in tally.traces {
            let t = self.traces.entry(id).or_default();
            t.parts.push(part.spans);
            t.extent.merge(part.extent);
        }
    }
}

/// A head is dropped once its block is written, seconds after its spans came: freeing them
/// walks cold memory (each span's struct, attribute array and long strings). Its traces' parts
/// are freed in turn with the lines of the parts ahead asked for first (see
/// [`crate::prefetch`]): pinned to one core, 2M realistic spans, dropping heads took 0.25 times
/// the CPU of decoding the requests before, 0.22 times with the hints.
impl Drop for Head {
    fn drop(&mut self) {
        let parts: Vec<Vec<Span>> = self.traces.drain().flat_map(|(_, t)| t.parts).collect();
        let mut parts = parts.into_iter();
        loop {
            let ahead = parts.as_slice();
            for s in ahead.get(3).into_iter().flatten() {
                crate::prefetch::span(s);
            }
            for s in ahead.get(1).into_iter().flatten() {
                crate::prefetch::attributes(s);
                crate::prefetch::strings(s);
            }
            match parts.next() {
                Some(part) => drop(part),
                None => break,
            }
        }
    }
}

/// A batch ready for a head: its spans grouped by trace, and what it adds to a head besides
/// its spans (RED pre-aggregates, which name its services and operations), made before the
/// head's lock is taken so that writers do it in parallel.
#[derive(Default)]
pub(crate) struct Tally {
    traces: Vec<(TraceId, Part)>,
    /// The resource and scope of its spans, each pair (by address) once.
    origins: Vec<block::Origin>,
    spans: u64,
    red: RedSummary,
    /// The earliest start of its spans (`u64::MAX` when it has none).
    oldest_start: u64,
}

impl Tally {
    pub(crate) fn of(spans: Vec<Span>) -> Tally {
        let mut t = Tally { spans: spans.len() as u64, oldest_start: u64::MAX, ..Tally::default() };
        // A span's service is found among its resource's attributes: once per resource (the
        // spans of a request share theirs), not twice per span.
        let mut last: Option<(*const skein_model::Resource, &str)> = None;
        let mut last_origin = None;
        let mut origins_seen: rustc_hash::FxHashSet<(usize, usize)> = Default::default();
        for s in &spans {
            let origin = (Arc::as_ptr(&s.resource) as usize, Arc::as_ptr(&s.scope) as usize);
            if last_origin != Some(origin) && origins_seen.insert(origin) {
                t.origins.push((Arc::clone(&s.resource), Arc::clone(&s.scope)));
            }
            last_origin = Some(origin);
            let service = match last {
                Some((r, service)) if r == Arc::as_ptr(&s.resource) => service,
                _ => {
                    let service = s.service_name();
                    last = Some((Arc::as_ptr(&s.resource), service));
                    service
                }
            };
            t.oldest_start = t.oldest_start.min(s.start_time_unix_nano);
            t.red.add_of(service, s);
        }
        // Each trace's part is allocated at its exact size (counted first): a head holds its
        // spans for as long as it lives, and parts grown by doubling would hold up to twice
        // the memory. Each span's trace is looked up once: its number says its part.
        let numbered = crate::columnar::TraceNumbers::of(spans.iter().map(|s| s.trace_id), spans.len());
        t.traces = numbered
            .ids
            .into_iter()
            .zip(numbered.counts)
            .map(|(id, n)| {
                (id, Part { spans: Vec::with_capacity(n as usize), extent: block::Extent::default() })
            })
            .collect();
        for (s, place) in spans.into_iter().zip(numbered.numbers) {
            let part = &mut t.traces[place as usize].1;
            part.extent.add(&s);
            part.spans.push(s);
        }
        t
    }
}

/// A batch's spans of one trace, with their [`block::Extent`].
struct Part {
    spans: Vec<Span>,
    extent: block::Extent,
}

/// A head cut off from ingest, being written to a block. Several are written at once, each by
/// its own task.
#[derive(Debug)]
pub(crate) struct Frozen {
    pub(crate) head: Head,
    /// The WAL segments `[start, end)` that hold this head's records (and no other head's).
    pub(crate) wal_segments: (u64, u64),
    /// A task is writing it to a block.
    pub(crate) writing: std::sync::atomic::AtomicBool,
    /// Why its last write failed (it is tried again at the next flush).
    pub(crate) failed: parking_lot::Mutex<Option<String>>,
}

#[cfg(test)]
mod tests {
    use skein_model::AttrValue;
    use skein_store::testdata::SpanBuilder;

    use super::*;

    /// A head measures each trace as batches bring its spans — its earliest start, and what
    /// its spans add to a chunk — so that cutting it into a block shares traces out among
    /// chunks without walking the spans: the measures are those of the spans, however many
    /// batches brought them; and the head's origins name every span's resource and scope.
    #[test]
    fn a_head_measures_its_traces_as_batches_bring_them() {
        let span = |t: u8, i: u8, start: u64, value: &str| {
            SpanBuilder::new(t, i)
                .times(start, start + 10)
                .attr("k", AttrValue::Str(value.into()))
                .service(["a", "b"][i as usize % 2])
                .build()
        };
        let batches = [
            vec![span(1, 1, 500, "x"), span(2, 1, 900, "a longer value than the others")],
            vec![span(1, 2, 300, "yy"), span(3, 1, 700, "")],
            vec![span(1, 3, 800, "zzz"), span(2, 2, 950, "w")],
        ];
        let mut head = Head::default();
        for batch in &batches {
            head.insert(0, Tally::of(batch.clone()));
        }
        assert_eq!(head.traces.len(), 3);
        for (id, t) in &head.traces {
            let spans: Vec<&Span> = batches.iter().flatten().filter(|s| s.trace_id == *id).collect();
            let m = t.measured();
            assert_eq!(m.spans.len(), spans.len());
            assert_eq!(m.extent.start, spans.iter().map(|s| s.start_time_unix_nano).min().unwrap());
            assert_eq!(m.extent.bytes, spans.iter().map(|s| block::pending_bytes(s)).sum::<usize>());
            assert!(m.extent.bytes > 0);
        }
        let named = |r: &skein_model::Resource| {
            r.attributes.iter().find(|kv| kv.key == "service.name").map(|kv| kv.value.to_string())
        };
        let mut services: Vec<_> = head.origins.iter().filter_map(|(r, _)| named(r)).collect();
        services.sort();
        services.dedup();
        assert_eq!(services, ["a", "b"]);
    }

    /// Dropping a head frees every span of every trace, whatever the number of parts (the
    /// drop walks them itself): the resource the spans share is held by nothing after.
    #[test]
    fn a_dropped_head_frees_every_span() {
        let resource = Arc::new(skein_model::Resource::default());
        let mut head = Head::default();
        for batch in 0..7u8 {
            let spans = (0..9u8)
                .map(|i| {
                    let mut s = SpanBuilder::new(i % 4 + 1, batch * 9 + i + 1)
                        .attr("long", AttrValue::Str("a value longer than a Str holds inline".into()))
                        .build();
                    s.resource = Arc::clone(&resource);
                    s
                })
                .collect();
            head.insert(0, Tally::of(spans));
        }
        assert_eq!(head.spans, 63);
        // Held by each span, and by each (resource, scope) pair the head lists.
        assert_eq!(Arc::strong_count(&resource), 1 + 63 + head.origins.len());
        drop(head);
        assert_eq!(Arc::strong_count(&resource), 1);
    }

    /// A batch's spans are grouped by trace whether a trace's spans come one after another or
    /// interleaved with others': each part holds its trace's spans, in the batch's order, in a
    /// vector of exactly their number.
    #[test]
    fn a_tally_groups_a_batch_by_trace_in_parts_of_exact_size() {
        let order = [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (3, 2), (2, 2), (2, 3), (2, 4), (1, 4)];
        let batch: Vec<Span> = order.iter().map(|&(t, i)| SpanBuilder::new(t, i).build()).collect();
        let tally = Tally::of(batch.clone());
        assert_eq!(tally.spans, batch.len() as u64);
        assert_eq!(tally.traces.len(), 3);
        for (id, part) in &tally.traces {
            let expected: Vec<skein_model::SpanId> =
                batch.iter().filter(|s| s.trace_id == *id).map(|s| s.span_id).collect();
            let got: Vec<skein_model::SpanId> = part.spans.iter().map(|s| s.span_id).collect();
            assert_eq!(got, expected);
            assert_eq!(part.spans.capacity(), part.spans.len());
            assert_eq!(part.extent.bytes, part.spans.iter().map(block::pending_bytes).sum::<usize>());
        }
    }
}
