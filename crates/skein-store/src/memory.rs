//! A bounded in-memory backend: the default until the embedded engine lands, and the
//! reference the conformance suite is checked against.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use parking_lot::RwLock;
use skein_model::{Span, SpanKind, TimeRange, TraceId};

use crate::{
    DependencyLink, Operation, SpanMatcher, SpanStore, StoreError, StoreStats, TraceQuery,
    count_dependencies, dependency_links,
};

/// Settings of a [`MemoryStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryStoreConfig {
    /// Most spans kept; when a write goes over, the traces that arrived first are evicted
    /// whole until the store fits again.
    pub max_spans: usize,
    /// Traces that started longer ago than this (by wall clock) are evicted on the next write.
    pub retention_nanos: Option<u64>,
}

impl Default for MemoryStoreConfig {
    fn default() -> Self {
        MemoryStoreConfig { max_spans: 1_000_000, retention_nanos: None }
    }
}

/// Spans in memory, bounded by [`MemoryStoreConfig::max_spans`], evicting oldest traces first.
#[derive(Debug)]
pub struct MemoryStore {
    config: MemoryStoreConfig,
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    traces: HashMap<TraceId, TraceEntry>,
    /// Arrival order of traces: sequence number of the first write → trace id.
    arrival: BTreeMap<u64, TraceId>,
    next_seq: u64,
    span_count: u64,
    /// service → (operation, kind) → number of stored spans.
    operations: BTreeMap<String, BTreeMap<(skein_model::Str, SpanKind), u64>>,
    spans_evicted: u64,
    traces_evicted: u64,
}

#[derive(Debug)]
struct TraceEntry {
    seq: u64,
    start: u64,
    spans: Vec<Span>,
}

impl MemoryStore {
    pub fn new(config: MemoryStoreConfig) -> Self {
        MemoryStore { config, inner: RwLock::new(Inner::default()) }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(MemoryStoreConfig::default())
    }
}

impl Inner {
    fn insert(&mut self, span: Span) {
        *self
            .operations
            .entry(span.service_name().to_owned())
            .or_default()
            .entry((span.name.clone(), span.kind))
            .or_default() += 1;
        self.span_count += 1;
        match self.traces.get_mut(&span.trace_id) {
            Some(entry) => {
                entry.start = entry.start.min(span.start_time_unix_nano);
                entry.spans.push(span);
            }
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.arrival.insert(seq, span.trace_id);
                self.traces.insert(
                    span.trace_id,
                    TraceEntry { seq, start: span.start_time_unix_nano, spans: vec![span] },
                );
            }
        }
    }

    fn evict_oldest(&mut self) {
        let Some((_, id)) = self.arrival.pop_first() else { return };
        let entry = self.traces.remove(&id).expect("arrival and traces agree");
        for span in &entry.spans {
            let service = span.service_name();
            if let Some(ops) = self.operations.get_mut(service) {
                let key = (span.name.clone(), span.kind);
                if let Some(n) = ops.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        ops.remove(&key);
                    }
                }
                if ops.is_empty() {
                    self.operations.remove(service);
                }
            }
        }
        self.span_count -= entry.spans.len() as u64;
        self.spans_evicted += entry.spans.len() as u64;
        self.traces_evicted += 1;
    }
}

#[async_trait]
impl SpanStore for MemoryStore {
    async fn write(&self, spans: Vec<Span>) -> Result<(), StoreError> {
        let mut inner = self.inner.write();
        for span in spans {
            inner.insert(span);
        }
        while inner.span_count > self.config.max_spans as u64 {
            inner.evict_oldest();
        }
        if let Some(retention) = self.config.retention_nanos {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let cutoff = now.saturating_sub(retention);
            // Arrival order is close to time order: evict from the front while it is expired.
            while let Some((_, id)) = inner.arrival.first_key_value() {
                if inner.traces[id].start >= cutoff {
                    break;
                }
                inner.evict_oldest();
            }
        }
        debug_assert_eq!(inner.traces.len(), inner.arrival.len());
        Ok(())
    }

    async fn trace(&self, id: TraceId) -> Result<Option<Vec<Span>>, StoreError> {
        Ok(self.inner.read().traces.get(&id).map(|e| e.spans.clone()))
    }

    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<Vec<Span>>, StoreError> {
        let matcher = SpanMatcher::new(query);
        let inner = self.inner.read();
        let mut hits: Vec<&TraceEntry> =
            inner.traces.values().filter(|e| e.spans.iter().any(|s| matcher.matches(s))).collect();
        hits.sort_by(|a, b| b.start.cmp(&a.start).then(b.seq.cmp(&a.seq)));
        Ok(hits.into_iter().take(query.limit).map(|e| e.spans.clone()).collect())
    }

    async fn services(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.inner.read().operations.keys().cloned().collect())
    }

    async fn operations(&self, service: &str, kind: Option<SpanKind>) -> Result<Vec<Operation>, StoreError> {
        let inner = self.inner.read();
        let Some(ops) = inner.operations.get(service) else { return Ok(Vec::new()) };
        Ok(ops
            .keys()
            .filter(|(_, k)| kind.is_none_or(|want| *k == want))
            .map(|(name, k)| Operation { name: name.to_string(), span_kind: *k })
            .collect())
    }

    async fn dependencies(&self, range: TimeRange) -> Result<Vec<DependencyLink>, StoreError> {
        let inner = self.inner.read();
        let mut counts = BTreeMap::new();
        for entry in inner.traces.values() {
            count_dependencies(&entry.spans, range, &mut counts);
        }
        Ok(dependency_links(counts))
    }

    fn stats(&self) -> StoreStats {
        let inner = self.inner.read();
        StoreStats {
            spans_stored: inner.span_count,
            traces_stored: inner.traces.len() as u64,
            spans_evicted: inner.spans_evicted,
            traces_evicted: inner.traces_evicted,
            ..StoreStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::SpanBuilder;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        crate::conformance::run_all(crate::conformance::ready(MemoryStore::default)).await;
    }

    #[tokio::test]
    async fn evicts_oldest_traces_first_and_counts_them() {
        let store = MemoryStore::new(MemoryStoreConfig { max_spans: 5, retention_nanos: None });
        let trace = |n: u8| -> Vec<Span> {
            (1..=2).map(|i| SpanBuilder::new(n, i).service("svc").name(format!("op{n}")).build()).collect()
        };
        store.write(trace(1)).await.unwrap();
        store.write(trace(2)).await.unwrap();
        assert_eq!(store.stats().spans_evicted, 0);
        store.write(trace(3)).await.unwrap();
        let stats = store.stats();
        assert_eq!((stats.spans_stored, stats.traces_stored), (4, 2));
        assert_eq!((stats.spans_evicted, stats.traces_evicted), (2, 1));
        assert!(store.trace(SpanBuilder::trace_id(1)).await.unwrap().is_none());
        assert!(store.trace(SpanBuilder::trace_id(3)).await.unwrap().is_some());
        let ops: Vec<_> = store.operations("svc", None).await.unwrap().into_iter().map(|o| o.name).collect();
        assert_eq!(ops, ["op2", "op3"], "operations of evicted traces disappear");
    }
}
