//! Reading: a consistent view of heads and blocks, whole traces by id, and the sequential scan
//! of a window.

use super::*;

impl Shared {
    /// The in-memory heads and the blocks, as of now.
    pub(crate) fn snapshot(&self) -> (Vec<Arc<Frozen>>, Vec<SharedBlock>) {
        let st = self.state.read();
        (st.frozen.clone(), st.blocks.clone())
    }

    pub(crate) fn scan(
        &self,
        range: TimeRange,
        max_spans: usize,
        attributes: skein_store::KeepAttribute,
    ) -> skein_store::Scan {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let overlaps =
            |t: TimeRange| t.end_unix_nano > range.start_unix_nano && t.start_unix_nano < range.end_unix_nano;
        let mut scan = skein_store::Scan::default();
        {
            let st = self.state.read();
            let heads = std::iter::once(&st.head).chain(st.frozen.iter().map(|f| &f.head));
            for (id, trace) in heads.flat_map(|h| h.traces.iter()) {
                if trace.iter().any(|s| range.contains(s.start_time_unix_nano)) {
                    let len = trace.len();
                    if scan.spans + len > max_spans {
                        scan.truncated = true;
                        break;
                    }
                    scan.spans += len;
                    let projected = trace.iter().map(|s| skein_store::ScanSpan::of(s, attributes));
                    scan.traces.entry(*id).or_default().extend(projected);
                }
            }
        }
        let (_, blocks) = self.snapshot();
        let chunks: Vec<(&SharedBlock, usize)> = blocks
            .iter()
            .filter(|b| overlaps(b.time))
            .flat_map(|b| (0..b.chunk_count()).map(move |i| (b, i)))
            .filter(|(b, i)| overlaps(b.chunk_meta(*i).time))
            .collect();
        // Chunks are decoded on every core, each worker grouping its spans by trace as it goes
        // (one big list copied into groups afterwards would cost more than the decoding).
        let next = AtomicUsize::new(0);
        let held = AtomicUsize::new(scan.spans);
        let full = AtomicBool::new(scan.truncated);
        let workers = crate::cores().min(chunks.len()).max(1);
        let parts: Vec<HashMap<TraceId, Vec<skein_store::ScanSpan>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine: HashMap<TraceId, Vec<skein_store::ScanSpan>> = HashMap::new();
                        while !full.load(Ordering::Relaxed) {
                            let Some(&(block, i)) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) else {
                                break;
                            };
                            let projection = columnar::Projection { attribute: &attributes, events: false };
                            let read = match block.read_chunk_projected(&*self.config.fs, i, Some(projection))
                            {
                                Ok(spans) => spans,
                                Err(e) => {
                                    tracing::error!(error = %e, "chunk unreadable; skipped");
                                    continue;
                                }
                            };
                            if held.fetch_add(read.len(), Ordering::Relaxed) + read.len() > max_spans {
                                full.store(true, Ordering::Relaxed);
                                break;
                            }
                            for s in read {
                                mine.entry(s.trace_id)
                                    .or_default()
                                    .push(skein_store::ScanSpan::of(&s, attributes));
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        for part in parts {
            for (id, mut spans) in part {
                scan.spans += spans.len();
                match scan.traces.entry(id) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(spans);
                    }
                    std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().append(&mut spans),
                }
            }
        }
        scan.truncated = full.into_inner();
        scan
    }

    pub(crate) fn read_chunk(&self, block: &Block, i: usize) -> Option<Vec<Span>> {
        self.counted(block.read_chunk(&*self.config.fs, i))
    }

    /// Chunk `i` of `block` decoded for `matcher`: of each span only what it reads (the span
    /// attributes its conditions name, the events when it has conditions) besides the fields,
    /// resource and scope; none when the chunk lacks one of `texts`, the texts a span that
    /// `matcher` accepts carries verbatim ([`skein_store::SpanMatcher::verbatim_texts`]).
    pub(crate) fn read_chunk_for(
        &self,
        block: &Block,
        i: usize,
        matcher: &skein_store::SpanMatcher<'_>,
        texts: &[(&str, &str)],
    ) -> Option<Vec<Span>> {
        let projection = columnar::Projection {
            attribute: &|key| matcher.reads_attribute(key),
            events: matcher.reads_events(),
        };
        self.counted(block.read_chunk_holding(&*self.config.fs, i, Some(projection), texts))
    }

    /// The spans of chunk `i` of `block` whose traces are among `wanted` (see
    /// [`Block::read_chunk_traces`]).
    pub(crate) fn read_chunk_traces(
        &self,
        block: &Block,
        i: usize,
        wanted: &std::collections::HashSet<TraceId>,
    ) -> Option<Vec<Span>> {
        self.counted(block.read_chunk_traces(&*self.config.fs, i, &|id| wanted.contains(id)))
    }

    /// A chunk read, counted; logged and skipped when it failed.
    fn counted(&self, read: Result<Vec<Span>, block::BlockError>) -> Option<Vec<Span>> {
        self.chunks_read.fetch_add(1, Ordering::Relaxed);
        match read {
            Ok(spans) => Some(spans),
            Err(e) => {
                tracing::error!(error = %e, "chunk unreadable; skipped");
                None
            }
        }
    }
}

impl Engine {
    /// The spans of several traces at once: each block chunk that holds any of them is read
    /// once, however many of the traces it holds (a search's results are often neighbours).
    pub(crate) async fn traces_batched(
        &self,
        ids: &[TraceId],
    ) -> Result<HashMap<TraceId, Vec<Span>>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let mut found: HashMap<TraceId, Vec<Span>> = HashMap::with_capacity(ids.len());
        {
            let st = shared.state.read();
            for id in ids {
                for head in std::iter::once(&st.head).chain(st.frozen.iter().map(|f| &f.head)) {
                    if let Some(t) = head.traces.get(id) {
                        found.entry(*id).or_default().extend(t.iter().cloned());
                    }
                }
            }
        }
        let (_, blocks) = shared.snapshot();
        let wanted: std::collections::HashSet<TraceId> = ids.iter().copied().collect();
        let ids = ids.to_vec();
        let from_blocks = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let (mut blocks_with, mut chunks_read) = (0usize, 0usize);
            let mut out: HashMap<TraceId, Vec<Span>> = HashMap::new();
            for b in blocks.iter() {
                let chunks = match b.chunks_of(&*shared.config.fs, &ids) {
                    Ok(chunks) => chunks,
                    Err(e) => {
                        tracing::error!(error = %e, "trace index unreadable; block skipped");
                        continue;
                    }
                };
                blocks_with += usize::from(!chunks.is_empty());
                chunks_read += chunks.len();
                for chunk in chunks {
                    for span in shared.read_chunk_traces(b, chunk, &wanted).into_iter().flatten() {
                        out.entry(span.trace_id).or_default().push(span);
                    }
                }
            }
            tracing::debug!(
                traces = ids.len(),
                blocks = blocks.len(),
                blocks_with,
                chunks_read,
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "traces read from blocks"
            );
            out
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        for (id, spans) in from_blocks {
            found.entry(id).or_default().extend(spans);
        }
        Ok(found.into_iter().filter(|(_, s)| !s.is_empty()).map(|(id, s)| (id, dedup(s))).collect())
    }
}

pub(crate) fn dedup(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| s.span_id);
    spans.dedup_by_key(|s| s.span_id);
    spans
}
