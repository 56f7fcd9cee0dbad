//! Immutable block files: spans grouped by trace, compressed chunks, an index and a footer
//! with format version and crc32. Specified in `docs/format/block.md`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use skein_model::{AttrValue, Span, SpanKind, TimeRange, TraceId};
use skein_wal::fs::Fs;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::bloom;
use crate::codec::{self, DecodeError};
use crate::columnar::{self, ChunkStrings};
use skein_store::red::RedSummary;

mod inverted;
mod kept;
mod origins;
mod postings;
mod reader;
mod traces;
mod writer;

use inverted::{PostingIndex, PostingIndexBuilder};
pub use kept::{DEFAULT_INDEX_MEMORY_BYTES, IndexCache};
use kept::{Kept, Part};
use postings::{Gathering, KeyPostings};
use traces::TraceIndex;
#[cfg(test)]
pub(crate) use writer::write_block;
pub(crate) use writer::{BlockWriter, Extent, Measured, Origin, SpanRef, serially, write_measured};

/// Last bytes of every block file.
pub const BLOCK_MAGIC: [u8; 8] = *b"SKEINBLK";
/// Version of the block format written by this code (versions 1 to 10 are still read).
pub const BLOCK_VERSION: u32 = 11;
/// Most distinct values a chunk's postings list for one (service, key); beyond, the values go
/// into the chunk's Bloom filter (format 4; "many" before).
const MAX_POSTING_VALUES: usize = 32;
/// Bytes of the footer.
pub const FOOTER_LEN: usize = 32;
/// Bytes of spans (as [`pending_bytes`] counts them) gathered into one chunk before it is
/// encoded and compressed, at most (a block written whole shares its spans out evenly). Bigger
/// chunks compress better: each chunk has its own string dictionary, and values that recur
/// across chunks (resource attributes, user agents, routes) are stored once per chunk. Smaller
/// ones are quicker to read one trace out of, and let postings rule out more of a block.
/// Realistic load, chunks packed at zstd level 3, bytes per span of the chunks alone: 32.0 at
/// 1,500 spans per chunk, 29.6 at 3,000, 28.4 at 6,000. But at 100M spans, where most reads
/// go to the disk, chunks of about 3,300 spans made a read by id p50 2.3 / p99 19 ms instead
/// of 1.3 / 2.8 at about 1,400, and a client-address search p99 110 ms instead of 59–85: 640
/// KiB is about 1,600 spans of that load. Compaction copies chunks as they are, so this is
/// the size of every chunk.
const CHUNK_TARGET: usize = 640 * 1024;

/// What a span adds to the chunk being gathered, about its encoded size before compression:
/// attribute values' strings are counted, so spans with large values make chunks of fewer
/// spans (a chunk is decoded whole, or stepped through, to read one trace out of it).
pub(crate) fn pending_bytes(s: &Span) -> usize {
    let values: usize = s
        .attributes
        .iter()
        .map(|kv| {
            24 + match &kv.value {
                AttrValue::Str(v) => v.len(),
                AttrValue::Bytes(b) => b.len(),
                _ => 8,
            }
        })
        .sum();
    64 + s.name.len() + values
}

const ZSTD_LEVEL: i32 = 3;
/// The zstd level of the index sections (postings, RED, index) of a block written from a head.
/// Such a block lives for seconds: compaction reads its sections once and writes the merged
/// block's at [`ZSTD_LEVEL`]. Under callgrind (400k realistic spans), compressing the sections
/// of every block, merges' included, took 152M instructions with heads' at level 3 and 129M
/// with them at 1 (of 8.3G in all); the head blocks' own sections took 134M at level 1 and 77M
/// at zstd's fast level -5 (of 7.9G).
const HEAD_SECTIONS_LEVEL: i32 = columnar::QUICK_LEVEL;

/// Why a block cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block {path}: i/o error: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("block {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// Span counts of a service's operations: (name, kind) → spans.
pub(crate) type OperationCounts = BTreeMap<(String, SpanKind), u64>;

/// What the block holds about one chunk.
#[derive(Debug, Clone)]
pub(crate) struct ChunkMeta {
    offset: u64,
    len: u32,
    crc: u32,
    pub(crate) time: TimeRange,
    /// Shortest and longest span duration in the chunk (version 2; `(0, u64::MAX)` for v1).
    pub(crate) durations: (u64, u64),
    /// Indexes into the block's service table.
    services: ChunkServices,
    /// Version 4: bytes of the chunk's Bloom filter, stored right after the chunk (0: none),
    /// and their crc32.
    bloom_len: u32,
    bloom_crc: u32,
    /// Version 5: lines of the chunk's blocked Bloom filter, in the block's Bloom section
    /// (0: none), the probes it was written with, and the chunk's place among the chunks of
    /// its group (those with the same lines and probes).
    bloom_lines: u32,
    bloom_probes: u8,
    bloom_slot: u32,
    /// The seed of the chunk's blocked filter (format 6): the crc32 of the chunk as first
    /// written, which a merge that packs the chunk anew with its dictionaries changes (format
    /// 9 stores the seed, earlier formats take the crc).
    bloom_seed: u32,
    /// Format 9: the set of the block's origins the chunk numbers ([`origins::OWN_ORIGINS`]:
    /// the chunk holds its resources and scopes itself).
    origins: u32,
}

/// Chunk numbers an open block holds in memory (a hashed trace index's, the postings' values
/// of one chunk): 16 bits each when the block has at most [`NARROW_CHUNKS`] chunks (every
/// block the engine writes: 64 MiB hold about 1,200), 32 beyond.
#[derive(Debug)]
pub(crate) enum ChunkNumbers {
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

/// Chunk numbers fit in 16 bits up to this many chunks in a block (in memory, and in a trace
/// section's entries), 32 beyond.
pub(crate) const NARROW_CHUNKS: usize = 1 << 16;

impl Default for ChunkNumbers {
    fn default() -> Self {
        ChunkNumbers::Narrow(Vec::new())
    }
}

impl ChunkNumbers {
    /// `numbers`, chunks of a block of `chunks` chunks.
    pub(crate) fn new(chunks: usize, numbers: impl Iterator<Item = u32>) -> ChunkNumbers {
        if chunks <= NARROW_CHUNKS {
            ChunkNumbers::Narrow(numbers.map(|c| c as u16).collect())
        } else {
            ChunkNumbers::Wide(numbers.collect())
        }
    }

    pub(crate) fn get(&self, at: usize) -> u32 {
        match self {
            ChunkNumbers::Narrow(c) => c[at] as u32,
            ChunkNumbers::Wide(c) => c[at],
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        match self {
            ChunkNumbers::Narrow(c) => c.capacity() * 2,
            ChunkNumbers::Wide(c) => c.capacity() * 4,
        }
    }
}

/// The services of a chunk, as indexes into its block's service table: a bitmap when they are
/// all below 64 (no allocation: an open block keeps one per chunk, about 70,000 at 100M spans),
/// else a sorted list. Either way a set: the order the file lists them in is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChunkServices {
    Mask(u64),
    List(Box<[u32]>),
}

impl ChunkServices {
    pub(crate) fn new(ids: impl IntoIterator<Item = u32>) -> ChunkServices {
        let mut ids: Vec<u32> = ids.into_iter().collect();
        if ids.iter().all(|s| *s < 64) {
            return ChunkServices::Mask(ids.iter().fold(0, |mask, s| mask | 1 << s));
        }
        ids.sort_unstable();
        ids.dedup();
        ChunkServices::List(ids.into_boxed_slice())
    }

    pub(crate) fn contains(&self, service: u32) -> bool {
        match self {
            ChunkServices::Mask(mask) => service < 64 && mask & 1 << service != 0,
            ChunkServices::List(ids) => ids.binary_search(&service).is_ok(),
        }
    }

    /// The services, in ascending order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mask = if let ChunkServices::Mask(m) = self { *m } else { 0 };
        let list: &[u32] = if let ChunkServices::List(ids) = self { ids } else { &[] };
        (0..64u32).filter(move |s| mask & 1 << s != 0).chain(list.iter().copied())
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            ChunkServices::Mask(mask) => mask.count_ones() as usize,
            ChunkServices::List(ids) => ids.len(),
        }
    }

    /// Bytes it holds beyond its own size.
    fn heap_bytes(&self) -> usize {
        match self {
            ChunkServices::Mask(_) => 0,
            ChunkServices::List(ids) => ids.len() * 4,
        }
    }
}

/// Format 5: the chunks whose blocked Bloom filters have the same line count and probes, and
/// where their lines lie: `lines` regions one after the other, region `j` the crc32 of the
/// rest and then line `j` of every member chunk, in chunk order.
#[derive(Debug, Clone)]
pub(crate) struct BloomGroup {
    lines: u32,
    probes: u8,
    offset: u64,
    members: Vec<u32>,
}

impl BloomGroup {
    /// Bytes of one region: its crc and one line per member.
    fn region_len(&self) -> usize {
        4 + self.members.len() * bloom::LINE_BYTES
    }

    /// Bytes of the group in the file.
    fn len(&self) -> u64 {
        self.lines as u64 * self.region_len() as u64
    }

    /// Region `j` as the file holds it, from each member's filter (`filters` by chunk): its
    /// crc32 and line `j` of every member.
    fn region(&self, j: usize, filters: &[Vec<u8>]) -> Vec<u8> {
        let mut region = vec![0; 4];
        for &c in &self.members {
            region.extend_from_slice(&filters[c as usize][j * bloom::LINE_BYTES..][..bloom::LINE_BYTES]);
        }
        let crc = crc32fast::hash(&region[4..]);
        region[..4].copy_from_slice(&crc.to_le_bytes());
        region
    }

    /// The members' lines of a region read from the file, when it has the right length and
    /// its crc matches.
    fn checked_lines<'r>(&self, region: &'r [u8]) -> Option<&'r [u8]> {
        let (crc, lines) = region.split_at_checked(4)?;
        (region.len() == self.region_len() && crc32fast::hash(lines).to_le_bytes() == crc).then_some(lines)
    }

    /// The line of the member at `slot` among a region's lines.
    fn line(lines: &[u8], slot: usize) -> &[u8] {
        &lines[slot * bloom::LINE_BYTES..][..bloom::LINE_BYTES]
    }
}

/// The groups of a format 5 block's Bloom section, which starts at `at` and must end by
/// `end`: the chunks with blocked filters grouped by (lines, probes), in that order, each
/// group's members in chunk order (their slots are set in `chunks`).
fn bloom_groups(chunks: &mut [ChunkMeta], at: u64, end: u64) -> Result<Vec<BloomGroup>, String> {
    let mut by_shape: BTreeMap<(u32, u8), Vec<u32>> = BTreeMap::new();
    for (i, c) in chunks.iter_mut().enumerate() {
        if c.bloom_lines > 0 {
            let members = by_shape.entry((c.bloom_lines, c.bloom_probes)).or_default();
            c.bloom_slot = members.len() as u32;
            members.push(i as u32);
        }
    }
    let mut offset = at;
    let mut groups = Vec::with_capacity(by_shape.len());
    for ((lines, probes), members) in by_shape {
        let group = BloomGroup { lines, probes, offset, members };
        offset = offset.checked_add(group.len()).ok_or("bloom section too long")?;
        groups.push(group);
    }
    if offset > end {
        return Err("the bloom section lies outside the file".into());
    }
    Ok(groups)
}

/// What a chunk's postings know of the values of one tag key of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyValues<V> {
    /// Every value the key has in the chunk (at most [`MAX_POSTING_VALUES`]), as text.
    Listed(V),
    /// More values than that, all matched by text: each is in the chunk's Bloom filter.
    Hashed,
    /// Values not matched by text (doubles, bytes, arrays), or many values in a block written
    /// before format 4: a search must read the chunk.
    Unindexed,
}

/// An open block: its index in memory (what grows with its spans — postings, trace filter,
/// dictionaries — in the [`IndexCache`] it was opened in, while its budget allows), its spans on
/// disk.
#[derive(Debug)]
pub struct Block {
    pub(crate) path: PathBuf,
    pub(crate) time: TimeRange,
    pub(crate) span_count: u64,
    pub(crate) trace_count: u64,
    /// The WAL segments whose records this block holds, as `[start, end)` ranges, sorted and
    /// apart (format 5; one range from 0 to the block's `wal_segment_end` before: blocks were
    /// written one at a time, in order). Recovery replays only segments no block covers.
    pub(crate) wal_ranges: Vec<(u64, u64)>,
    /// Blocks (by sequence number) whose spans a compaction moved into this one (format v3).
    pub(crate) replaces: Vec<u64>,
    pub(crate) bytes: u64,
    chunks: Vec<ChunkMeta>,
    /// service → (operation, kind) → spans.
    pub(crate) services: Vec<(String, OperationCounts)>,
    /// The trace index (since format v3 a trace may be in several chunks): on disk with the
    /// first id of each page in memory (format 6), or a hash per entry in memory.
    traces: TraceIndex,
    /// Version 4: where the block's RED pre-aggregates lie (offset, length, crc32 of the
    /// compressed bytes); `None` for older blocks and compactions of them.
    red: Option<(u64, u32, u32)>,
    /// Format 2 and later: the index lists, for each service of each chunk, the tag keys its
    /// spans carry and, for keys with few values, those values; held inverted
    /// ([`PostingIndex`]) in `kept` (`false` for format 1).
    has_postings: bool,
    /// The chunks' Bloom filters once a search has read them (crc checked), one per chunk:
    /// a search for a rare value asks every chunk's filter, and reading each from the file
    /// again (open, read, close) was most of such a search. They take 16 bits per distinct
    /// high-cardinality value per chunk, in memory only once searched and while all open
    /// blocks keep at most [`reader::KEPT_BLOOMS_MAX`] bytes of them.
    blooms: Vec<std::sync::OnceLock<std::sync::Arc<[u8]>>>,
    /// Format 5: the block's blocked Bloom filters by group; nothing of them is kept in
    /// memory, a search reads one region of each group per value it asks.
    bloom_groups: Vec<BloomGroup>,
    /// Format 9: the sets of resources and scopes its chunks number (each distinct resource
    /// and scope held once, shared by the sets): a few per block.
    origins: Vec<columnar::ChunkOrigins>,
    /// Format 9: where the block's column dictionaries lie (offset, length, crc32), when a
    /// merge made them (kept in `kept` once a read needed them).
    dict_section: Option<(u64, u32, u32)>,
    /// Format 11: where the block's postings section lies (offset, length, crc32).
    postings_section: Option<(u64, u32, u32)>,
    /// Where the block's postings, trace filter and dictionaries are kept, and its number there.
    kept: Arc<IndexCache>,
    id: u64,
}

/// Memory an open block holds, by part (see [`Block::memory_bytes`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MemoryBytes {
    /// The trace-id index: the first key of each page of the trace section (and, for blocks
    /// before format 6, one entry per trace and chunk).
    pub(crate) traces: u64,
    /// Chunk metadata and the service and operation tables.
    pub(crate) chunks: u64,
    /// Bloom filters kept once a search read them.
    pub(crate) blooms: u64,
}

/// A block whose chunks are copied into another by [`BlockWriter::copy_chunk`].
pub(crate) struct CopySource<'b> {
    block: &'b Block,
    /// The traces of each chunk, by [`traces::trace_hash`].
    traces: Vec<Vec<u64>>,
    /// The postings of each chunk: its entries' hashes.
    postings: Vec<Vec<u64>>,
    /// The blocked Bloom filter of each chunk (format 5; empty when it has none).
    blocked: Vec<Vec<u8>>,
}

/// `ranges` of WAL segments sorted, with overlapping and adjacent ones joined.
pub(crate) fn join_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|(start, end)| start < end);
    ranges.sort_unstable();
    let mut joined: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match joined.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => joined.push((start, end)),
        }
    }
    joined
}

/// A shared, open block.
pub(crate) type SharedBlock = Arc<Block>;

#[cfg(test)]
mod chunk_services_tests {
    use super::ChunkServices;

    /// A chunk's services are a set, held as a bitmap below 64 and as a list beyond, and
    /// either answers the same.
    #[test]
    fn chunk_services_hold_the_same_set_as_mask_or_list() {
        for ids in [vec![], vec![0], vec![5, 1, 63, 5], vec![2, 64, 700, 2], vec![1000]] {
            let s = ChunkServices::new(ids.clone());
            let mut want = ids.clone();
            want.sort_unstable();
            want.dedup();
            assert_eq!(matches!(s, ChunkServices::Mask(_)), want.iter().all(|i| *i < 64), "{ids:?}");
            assert_eq!(s.iter().collect::<Vec<u32>>(), want, "{ids:?}");
            assert_eq!(s.len(), want.len());
            for probe in [0, 1, 2, 5, 63, 64, 700, 1000, 1001] {
                assert_eq!(s.contains(probe), want.contains(&probe), "{ids:?} {probe}");
            }
        }
    }
}
