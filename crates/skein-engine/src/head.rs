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
    /// Adds a batch of spans and what [`Tally::of`] counted of them. Runs under the engine's
    /// exclusive lock: the tally is counted before, so this only merges and moves.
    pub(crate) fn insert(&mut self, spans: Vec<Span>, bytes: usize, tally: Tally) {
        self.created.get_or_insert_with(Instant::now);
        self.bytes += bytes;
        for (service, ops) in tally.operations {
            let mine = named!(&mut self.operations, &service);
            for (op, kinds) in ops {
                *named!(&mut *mine, &op) |= kinds;
            }
        }
        self.red.merge(&tally.red);
        self.spans += spans.len() as u64;
        for s in spans {
            self.traces.entry(s.trace_id).or_default().push(s);
        }
    }
}

/// What a batch adds to a head besides its spans (operations with their kinds, RED
/// pre-aggregates), counted before the head's lock is taken so that writers do it in parallel.
#[derive(Default)]
pub(crate) struct Tally {
    operations: FxHashMap<String, FxHashMap<String, u8>>,
    red: RedSummary,
}

impl Tally {
    pub(crate) fn of(spans: &[Span]) -> Tally {
        let mut t = Tally::default();
        for s in spans {
            *named!(named!(&mut t.operations, s.service_name()), &s.name) |= 1 << s.kind.code();
            t.red.add(s);
        }
        t
    }
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
