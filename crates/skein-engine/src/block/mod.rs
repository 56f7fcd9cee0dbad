//! Immutable block files: spans grouped by trace, compressed chunks, an index and a footer
//! with format version and crc32. Specified in `docs/format/block.md`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use skein_model::{AttrValue, Span, SpanKind, TimeRange, TraceId};
use skein_wal::fs::Fs;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::bloom;
use crate::codec::{self, DecodeError};
use crate::columnar::{self, ChunkStrings};
use skein_store::red::RedSummary;

mod postings;
mod reader;
mod writer;

use postings::chunk_postings;
pub(crate) use writer::{BlockWriter, serially, write_block};

/// Last bytes of every block file.
pub const BLOCK_MAGIC: [u8; 8] = *b"SKEINBLK";
/// Version of the block format written by this code (version 1 is still read).
pub const BLOCK_VERSION: u32 = 4;
/// Most distinct values a chunk's postings list for one (service, key); beyond, the values go
/// into the chunk's Bloom filter (format 4; "many" before).
const MAX_POSTING_VALUES: usize = 32;
/// Bytes of the footer.
pub const FOOTER_LEN: usize = 32;
/// Uncompressed bytes gathered into one chunk before it is compressed: bigger chunks compress
/// better (1 MiB: 21.6 bytes/span on the bench load), smaller ones are quicker to read for one
/// trace and let postings rule out more of a block (256 KiB: 23.6 bytes/span, by-id p99 1.5 ms
/// instead of 4.7 ms, search 24 ms instead of 72 ms). Compaction copies chunks as they are, so
/// this is the size of every chunk.
const CHUNK_TARGET: usize = 512 * 1024;
const ZSTD_LEVEL: i32 = 3;

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
    services: Vec<u32>,
    /// Version 2: for each service of the chunk, the tag keys its spans carry and, for keys
    /// with few values, those values: the range of its words in [`Block::postings`] (strings
    /// interned in [`Block::strings`]).
    postings: Option<(u32, u32)>,
    /// Version 4: bytes of the chunk's Bloom filter, stored right after the chunk (0: none),
    /// and their crc32.
    bloom_len: u32,
    bloom_crc: u32,
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

/// The postings of one chunk in [`Block::postings`]: per service, `service id, words of the
/// rest of the service's entry, key count`, then per key (sorted by key id) `key id, tag`
/// (0 unindexed, 1 listed, 2 hashed) and, when listed, `value count, value ids…` (sorted). One
/// flat array per block: a chunk's postings cost a few words per key instead of an allocation
/// per key and per service.
#[derive(Clone, Copy)]
pub(crate) struct ChunkPostings<'a>(&'a [u32]);

impl<'a> ChunkPostings<'a> {
    /// Each service's id and its keys.
    pub(crate) fn services(self) -> impl Iterator<Item = (u32, PostingKeys<'a>)> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let (&[service, len], tail) = rest.split_first_chunk::<2>()?;
            let (entry, tail) = tail.split_at(len as usize);
            rest = tail;
            Some((service, PostingKeys(entry)))
        })
    }
}

/// One service's keys in a chunk's postings: `key count`, then the keys.
#[derive(Clone, Copy)]
pub(crate) struct PostingKeys<'a>(&'a [u32]);

impl<'a> PostingKeys<'a> {
    /// Each key's id and what is known of its values.
    pub(crate) fn iter(self) -> impl Iterator<Item = (u32, KeyValues<&'a [u32]>)> {
        let mut rest = self.0.get(1..).unwrap_or(&[]);
        std::iter::from_fn(move || {
            let (&[key, tag], tail) = rest.split_first_chunk::<2>()?;
            let (values, tail) = match tag {
                1 => {
                    let (&n, tail) = tail.split_first()?;
                    let (values, tail) = tail.split_at(n as usize);
                    (KeyValues::Listed(values), tail)
                }
                2 => (KeyValues::Hashed, tail),
                _ => (KeyValues::Unindexed, tail),
            };
            rest = tail;
            Some((key, values))
        })
    }

    /// What is known of the values of key `key`, when the service has it.
    pub(crate) fn get(self, key: u32) -> Option<KeyValues<&'a [u32]>> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Tag key → its values in one chunk for one service.
pub(crate) type Postings = BTreeMap<String, KeyValues<BTreeSet<String>>>;

/// An open block: its index in memory, its spans on disk.
#[derive(Debug)]
pub struct Block {
    pub(crate) path: PathBuf,
    pub(crate) time: TimeRange,
    pub(crate) span_count: u64,
    pub(crate) trace_count: u64,
    /// WAL segments below this id hold only records stored in this (or an older) block.
    pub(crate) wal_segment_end: u64,
    /// Blocks (by sequence number) whose spans a compaction moved into this one (format v3).
    pub(crate) replaces: Vec<u64>,
    pub(crate) bytes: u64,
    chunks: Vec<ChunkMeta>,
    /// service → (operation, kind) → spans.
    pub(crate) services: Vec<(String, OperationCounts)>,
    /// Sorted by trace id, then chunk; since format v3 a trace may be in several chunks.
    traces: Vec<(TraceId, u32)>,
    /// The strings of the postings, interned: each distinct key or value once per block.
    strings: HashMap<Box<str>, u32>,
    /// Version 4: where the block's RED pre-aggregates lie (offset, length, crc32 of the
    /// compressed bytes); `None` for older blocks and compactions of them.
    red: Option<(u64, u32, u32)>,
    /// The chunks' postings, one after another (see [`ChunkPostings`]).
    postings: Vec<u32>,
    /// The chunks' Bloom filters once a search has read them (crc checked), one per chunk:
    /// a search for a rare value asks every chunk's filter, and reading each from the file
    /// again (open, read, close) was most of such a search. They take 10 bits per distinct
    /// high-cardinality value per chunk, in memory only once searched.
    blooms: Vec<std::sync::OnceLock<std::sync::Arc<[u8]>>>,
}

/// Memory an open block holds, by part (see [`Block::memory_bytes`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MemoryBytes {
    /// The trace-id index: one entry per trace and chunk.
    pub(crate) traces: u64,
    /// The chunks' postings and their interned strings.
    pub(crate) postings: u64,
    /// Chunk metadata and the service and operation tables.
    pub(crate) chunks: u64,
    /// Bloom filters kept once a search read them.
    pub(crate) blooms: u64,
}

/// A block whose chunks are copied into another by [`BlockWriter::copy_chunk`].
pub(crate) struct CopySource<'b> {
    block: &'b Block,
    /// The interned posting strings, by id.
    strings: Vec<&'b str>,
    /// The traces of each chunk.
    traces: Vec<Vec<TraceId>>,
}

/// A shared, open block.
pub(crate) type SharedBlock = Arc<Block>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_postings_read_back_from_their_words() {
        // Service 3: key 1 listed (values 7, 9), key 4 hashed; service 5: key 1 unindexed.
        let words = [3, 8, 2, 1, 1, 2, 7, 9, 4, 2, 5, 3, 1, 1, 0];
        type Keys<'a> = Vec<(u32, KeyValues<&'a [u32]>)>;
        let services: Vec<(u32, Keys)> =
            ChunkPostings(&words).services().map(|(s, keys)| (s, keys.iter().collect())).collect();
        assert_eq!(
            services,
            [
                (3, vec![(1, KeyValues::Listed(&[7u32, 9][..])), (4, KeyValues::Hashed)]),
                (5, vec![(1, KeyValues::Unindexed)]),
            ]
        );
        let (_, keys) = ChunkPostings(&words).services().next().unwrap();
        assert_eq!(keys.get(4), Some(KeyValues::Hashed));
        assert_eq!(keys.get(2), None);
        assert_eq!(ChunkPostings(&[]).services().count(), 0);
    }
}
