//! The head: spans not yet in a block, in memory and indexed by trace, and the frozen heads
//! being written to blocks.

use super::*;

#[derive(Debug, Default)]
pub(crate) struct Head {
    pub(crate) traces: FxHashMap<TraceId, Vec<Span>>,
    pub(crate) bytes: usize,
    pub(crate) spans: u64,
    pub(crate) created: Option<Instant>,
    /// service → operation name → the span kinds seen with it (bit `1 << kind code`).
    pub(crate) operations: FxHashMap<String, FxHashMap<String, u8>>,
    /// RED pre-aggregates of the head's spans (a block writes them from its spans again).
    pub(crate) red: RedSummary,
}

impl Head {
    pub(crate) fn insert(&mut self, spans: Vec<Span>, bytes: usize) {
        self.created.get_or_insert_with(Instant::now);
        self.bytes += bytes;
        for s in spans {
            *named!(named!(&mut self.operations, s.service_name()), &s.name) |= 1 << s.kind.code();
            self.red.add(&s);
            self.spans += 1;
            self.traces.entry(s.trace_id).or_default().push(s);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Frozen {
    pub(crate) head: Head,
    /// WAL segments below this id hold only this head's records (and older ones).
    pub(crate) wal_segment_end: u64,
}
