//! What open blocks keep in memory that grows with what they store — each block's inverted
//! postings, the Bloom filter of its trace ids and its column dictionaries — held in one cache
//! under a byte budget, [`IndexCache`], shared by every block the engine has open.
//!
//! A block holds in its own fields only what its size bounds (its chunk table, the first key of
//! each page of its trace section, its services and origins: some tens of KiB for a 64 MiB
//! block). A part the cache has let go is read from the block's file again when it is needed
//! (postings: from the block's postings section, format 11, or for older blocks by reading and
//! parsing the index again; dictionaries: their section), or done without (a trace filter: a
//! lookup by id reads the trace section's page instead of being ruled out in memory). So memory
//! stays within the budget however much is stored, and a search of blocks whose parts are not
//! kept costs a read of their postings sections.
//!
//! The cache is `quick_cache`'s (CLOCK-Pro-like: a search that sweeps every block does not
//! push out what is asked again and again), weighed by [`Kept::bytes`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::columnar::ColumnDicts;
use super::inverted::PostingIndex;
use super::traces::TraceFilter;

/// The default budget: at 100M spans of the realistic load the parts take about 30 MiB
/// (postings 20, trace filters 8, dictionaries 2).
pub const DEFAULT_INDEX_MEMORY_BYTES: u64 = 48 << 20;

/// Which part of a block's index an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Part {
    Postings,
    TraceFilter,
    Dicts,
}

impl Part {
    const ALL: [Part; 3] = [Part::Postings, Part::TraceFilter, Part::Dicts];
}

/// A part of a block's index, shared with the searches reading it (a part the cache lets go
/// stays alive until they are done with it).
#[derive(Clone, Debug)]
pub(crate) enum Kept {
    Postings(Arc<PostingIndex>),
    TraceFilter(Arc<TraceFilter>),
    Dicts(Arc<ColumnDicts>),
}

impl Kept {
    /// Bytes of memory the part holds.
    pub(crate) fn bytes(&self) -> u64 {
        (match self {
            Kept::Postings(p) => p.memory_bytes(),
            Kept::TraceFilter(f) => f.lines.capacity(),
            Kept::Dicts(d) => d.len(),
        }) as u64
            + 64
    }

    fn part(&self) -> Part {
        match self {
            Kept::Postings(_) => Part::Postings,
            Kept::TraceFilter(_) => Part::TraceFilter,
            Kept::Dicts(_) => Part::Dicts,
        }
    }
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<(u64, Part), (Kept, u64)> for Weigh {
    fn weight(&self, _: &(u64, Part), kept: &(Kept, u64)) -> u64 {
        kept.1
    }
}

/// The parts of open blocks' indexes kept in memory, within a budget of bytes.
pub struct IndexCache {
    parts: quick_cache::sync::Cache<(u64, Part), (Kept, u64), Weigh>,
    next_block: AtomicU64,
}

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexCache")
            .field("budget", &self.parts.capacity())
            .field("held", &self.parts.weight())
            .finish()
    }
}

impl IndexCache {
    /// A cache that keeps at most `budget` bytes of parts.
    pub fn new(budget: u64) -> Arc<IndexCache> {
        let options = quick_cache::OptionsBuilder::new()
            // Parts are hundreds of KiB each (a 64 MiB block's postings); one shard, so that
            // the budget is not split into shares too small for one block's.
            .shards(1)
            .estimated_items_capacity(((budget / (64 << 10)) as usize).clamp(16, 1 << 16))
            .weight_capacity(budget.max(1))
            .build()
            .expect("capacity and weight are set");
        Arc::new(IndexCache {
            parts: quick_cache::sync::Cache::with_options(
                options,
                Weigh,
                Default::default(),
                Default::default(),
            ),
            next_block: AtomicU64::new(0),
        })
    }

    /// A cache that keeps every part (a block opened on its own, by tools and tests).
    pub fn unbounded() -> Arc<IndexCache> {
        Self::new(u64::MAX / 4)
    }

    /// Bytes the kept parts take, by part: (postings, trace filters, dictionaries).
    pub(crate) fn held(&self) -> (u64, u64, u64) {
        let mut held = (0, 0, 0);
        for (_, (kept, bytes)) in self.parts.iter() {
            match kept.part() {
                Part::Postings => held.0 += bytes,
                Part::TraceFilter => held.1 += bytes,
                Part::Dicts => held.2 += bytes,
            }
        }
        held
    }

    /// A number for a block newly opened, under which its parts are kept.
    pub(crate) fn block_id(&self) -> u64 {
        self.next_block.fetch_add(1, Ordering::Relaxed)
    }

    /// Keeps `kept` as part of block `block` (if the budget allows it beside what is asked more).
    pub(crate) fn keep(&self, block: u64, kept: Kept) {
        let bytes = kept.bytes();
        self.parts.insert((block, kept.part()), (kept, bytes));
    }

    /// Part `part` of block `block`, if kept.
    pub(crate) fn get(&self, block: u64, part: Part) -> Option<Kept> {
        self.parts.get(&(block, part)).map(|(kept, _)| kept)
    }

    /// Part `part` of block `block`: kept, or made by `load` (once, while other askers wait for
    /// it) and kept.
    pub(crate) fn get_or_load<E>(
        &self,
        block: u64,
        part: Part,
        load: impl FnOnce() -> Result<Kept, E>,
    ) -> Result<Kept, E> {
        self.parts
            .get_or_insert_with(&(block, part), || {
                load().map(|kept| {
                    let bytes = kept.bytes();
                    (kept, bytes)
                })
            })
            .map(|(kept, _)| kept)
    }

    /// Takes every part of block `block` out of the cache.
    pub(crate) fn forget(&self, block: u64) -> Vec<Kept> {
        Part::ALL
            .iter()
            .filter_map(|part| self.parts.remove(&(block, *part)))
            .map(|(_, (kept, _))| kept)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(bytes: usize) -> Kept {
        Kept::TraceFilter(Arc::new(TraceFilter { probes: 8, lines: vec![0; bytes] }))
    }

    /// The cache holds at most its budget, gives back what it keeps, loads a part once, and a
    /// block forgotten takes its parts out.
    #[test]
    fn parts_stay_within_the_budget_and_leave_with_their_block() {
        let cache = IndexCache::new(100_000);
        let blocks: Vec<u64> = (0..10).map(|_| cache.block_id()).collect();
        for b in &blocks {
            cache.keep(*b, filter(30_000));
            assert!(cache.parts.weight() <= 100_000, "{}", cache.parts.weight());
        }
        let kept = blocks.iter().filter(|b| cache.get(**b, Part::TraceFilter).is_some()).count();
        assert!((1..=3).contains(&kept), "{kept} parts of 30 KB kept in 100 KB");
        let (_, filters, _) = cache.held();
        assert_eq!(filters, kept as u64 * (30_000 + 64));
        let mut loads = 0;
        for _ in 0..3 {
            let got = cache.get_or_load(blocks[0], Part::Postings, || {
                loads += 1;
                Ok::<_, ()>(Kept::Postings(Arc::new(PostingIndex::default())))
            });
            assert!(matches!(got, Ok(Kept::Postings(_))));
        }
        assert_eq!(loads, 1, "a kept part is not loaded again");
        let forgotten = cache.forget(blocks[0]);
        assert!(forgotten.iter().any(|k| matches!(k, Kept::Postings(_))));
        assert!(cache.get(blocks[0], Part::Postings).is_none());
        for b in &blocks {
            cache.forget(*b);
        }
        assert_eq!(cache.parts.weight(), 0);
    }
}
