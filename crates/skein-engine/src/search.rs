//! Search: which traces a [`TraceQuery`] finds, newest first — the heads' traces, then the
//! blocks' chunks that their time, durations, postings and Bloom filters do not rule out,
//! decoded on every core a batch at a time.

use super::*;
use rayon::prelude::*;
use skein_store::{SpanMatcher, TraceQuery};

/// The newest `limit` candidates found so far: each trace once, with the earliest start of its
/// matching places, and the starts of the newest `limit`, which prune chunks too old to change
/// the answer.
struct Candidates {
    limit: usize,
    starts: HashMap<TraceId, u64>,
    newest: std::collections::BinaryHeap<std::cmp::Reverse<u64>>,
}

impl Candidates {
    fn new(limit: usize) -> Self {
        Candidates { limit, starts: HashMap::new(), newest: Default::default() }
    }

    /// A trace with a matching span in one place (a head, a chunk), whose spans there start at
    /// `start` at the earliest.
    fn add(&mut self, id: TraceId, start: u64) {
        match self.starts.entry(id) {
            // Each trace counts once towards the `limit` newest, even when its spans are in
            // several chunks (head and blocks, or a compacted block).
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(start);
                self.newest.push(std::cmp::Reverse(start));
                if self.newest.len() > self.limit {
                    self.newest.pop();
                }
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let e = o.get_mut();
                *e = (*e).min(start);
            }
        }
    }

    /// Whether a chunk whose spans all start before `end` can no longer change the answer: the
    /// `limit` newest traces found all start at or after it.
    fn too_old(&self, end: u64) -> bool {
        self.newest.len() >= self.limit && self.newest.peek().is_some_and(|oldest| end <= oldest.0)
    }

    /// The newest `limit`, newest first, with their starts.
    fn newest_first(self) -> Vec<(u64, TraceId)> {
        let mut ids: Vec<(u64, TraceId)> = self.starts.into_iter().map(|(id, start)| (start, id)).collect();
        ids.sort_by(|a, b| b.cmp(a));
        ids.truncate(self.limit);
        ids
    }
}

/// The traces among `spans` (grouped by trace) with a span `matcher` accepts, each with the
/// earliest start of its spans there.
fn matching<'s, T: Iterator<Item = &'s Span> + Clone>(
    matcher: &SpanMatcher<'_>,
    spans: impl IntoIterator<Item = (TraceId, T)>,
) -> Vec<(TraceId, u64)> {
    spans
        .into_iter()
        .filter(|(_, t)| t.clone().any(|s| matcher.matches(s)))
        .map(|(id, t)| (id, t.map(|s| s.start_time_unix_nano).min().unwrap_or(u64::MAX)))
        .collect()
}

impl Shared {
    /// The newest `q.limit` traces with a span that matches `q`, newest first, with their
    /// starts. Chunks are asked newest first; those not ruled out are gathered a batch of one
    /// per core at a time, decoded and matched on every core, and taken in order, each only if
    /// the candidates found before it (in that order) have not made it too old to matter — so
    /// the answer is the one a chunk-by-chunk search gives.
    pub(crate) fn search(&self, q: &TraceQuery) -> Vec<(u64, TraceId)> {
        let matcher = SpanMatcher::new(q);
        // What a chunk that the postings and Bloom filters leave in must hold for a span of it
        // to match: a chunk without is not decoded. At 100M spans of the realistic load a
        // search for a value that is nowhere still decoded about 12 chunks (the filters' false
        // positives), more than half of its instructions.
        let texts: Vec<(&str, &str)> =
            matcher.verbatim_texts().into_iter().filter_map(|(key, text)| Some((key, text?))).collect();
        let mut found = Candidates::new(q.limit);
        {
            let st = self.state.read();
            for head in std::iter::once(&st.head).chain(st.frozen.iter().map(|f| &f.head)) {
                let traces = head.traces.iter().map(|(id, t)| (*id, t.iter()));
                for (id, start) in matching(&matcher, traces) {
                    found.add(id, start);
                }
            }
        }
        let (_, blocks) = self.snapshot();
        let started = Instant::now();
        let (mut asked, mut read) = (0usize, 0usize);
        let batch = crate::cores();
        let outside = |t: TimeRange| {
            t.end_unix_nano <= q.time.start_unix_nano || t.start_unix_nano >= q.time.end_unix_nano
        };
        let mut pending: Vec<(&Block, usize)> = Vec::with_capacity(batch);
        // Reads and matches the pending chunks on every core, then takes their traces in order.
        let mut take = |pending: &mut Vec<(&Block, usize)>, found: &mut Candidates| {
            read += pending.len();
            let matched: Vec<Option<Vec<(TraceId, u64)>>> = pending
                .par_iter()
                .map(|(b, i)| {
                    let spans = self.read_chunk_for(b, *i, &matcher, &texts)?;
                    let mut by_trace: FxHashMap<TraceId, Vec<Span>> = FxHashMap::default();
                    for s in spans {
                        by_trace.entry(s.trace_id).or_default().push(s);
                    }
                    Some(matching(&matcher, by_trace.iter().map(|(id, t)| (*id, t.iter()))))
                })
                .collect();
            for ((b, i), traces) in pending.drain(..).zip(matched) {
                if found.too_old(b.chunk_meta(i).time.end_unix_nano) {
                    continue;
                }
                for (id, start) in traces.into_iter().flatten() {
                    found.add(id, start);
                }
            }
        };
        for b in blocks.iter().rev() {
            if outside(b.time) {
                continue;
            }
            let chunks = b.matcher(&*self.config.fs, &matcher);
            asked += 1;
            for i in (0..b.chunk_count()).rev() {
                let t = b.chunk_meta(i).time;
                // Cheapest first: a chunk outside the window or older than the `limit` newest
                // traces found, then one whose durations cannot match, then its postings and
                // Bloom filter.
                if outside(t)
                    || found.too_old(t.end_unix_nano)
                    || !b.chunk_may_hold_duration(i, q.min_duration_nanos, q.max_duration_nanos)
                    || !chunks.may_match(&*self.config.fs, i)
                {
                    continue;
                }
                pending.push((&**b, i));
                if pending.len() >= batch {
                    take(&mut pending, &mut found);
                }
            }
        }
        take(&mut pending, &mut found);
        tracing::debug!(
            blocks = asked,
            chunks_read = read,
            candidates = found.starts.len(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "search over blocks"
        );
        found.newest_first()
    }
}
