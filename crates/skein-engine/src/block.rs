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
    /// with few values, those values; strings are interned in [`Block::strings`].
    postings: Option<Vec<(u32, CompactPostings)>>,
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

/// Interned postings of one service in one chunk: (key id, value ids), sorted by key id.
type CompactPostings = Box<[(u32, KeyValues<Box<[u32]>>)]>;

/// Tag key → its values in one chunk for one service.
pub(crate) type Postings = BTreeMap<String, KeyValues<BTreeSet<String>>>;

/// A posting value while a chunk's postings are gathered: a string by its slot in the chunk's
/// string table, or an integer (written as decimal text in the index).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum ValueId {
    Text(u32),
    Int(i64),
}

/// Postings while a chunk is gathered, by integers: (service, key slot) → its distinct values,
/// or `None` once a value is not matched by text. Turned into [`Postings`] (and the chunk's
/// Bloom filter) once per chunk.
type BuildingPostings = FxHashMap<(u32, u32), Option<FxHashSet<ValueId>>>;

fn add_posting(p: &mut BuildingPostings, service: u32, key: u32, value: Option<ValueId>) {
    let entry = p.entry((service, key)).or_insert_with(|| Some(FxHashSet::default()));
    let Some(values) = entry else { return };
    match value {
        Some(v) => {
            values.insert(v);
        }
        None => *entry = None,
    }
}

/// The posting value of an attribute value: strings and booleans as text, integers as numbers,
/// anything else is not matched by text.
fn posting_value<'a>(strings: &mut ChunkStrings<'a>, v: &'a AttrValue) -> Option<ValueId> {
    match v {
        AttrValue::Str(s) => Some(ValueId::Text(strings.slot(s))),
        AttrValue::Int(i) => Some(ValueId::Int(*i)),
        AttrValue::Bool(b) => Some(ValueId::Text(strings.slot(if *b { "true" } else { "false" }))),
        _ => None,
    }
}

/// The postings of a chunk: per service, every tag a search can match on (span, resource and
/// event attributes, event names, and the synthetic tags), and the chunk's Bloom filter of the
/// values of keys with too many to list (empty when there are none). `encoded` is the chunk as
/// the encoder wrote it: the span attributes' strings come from its string table by slot, so
/// they are not hashed again. `service_names` is the block's service table.
fn chunk_postings<'a>(
    spans: &[&'a Span],
    services: &[u32],
    encoded: &mut columnar::EncodedChunk<'a>,
    service_names: &[&str],
) -> (Vec<(u32, Postings)>, Vec<u8>) {
    let mut p: BuildingPostings = FxHashMap::default();
    // Each resource (shared by the spans of a request) is listed once per service.
    let mut resources_seen: FxHashSet<(u32, *const skein_model::Resource)> = FxHashSet::default();
    let mut synthetic_seen: FxHashSet<(u32, u8, u8, usize)> = FxHashSet::default();
    let strings = &mut encoded.strings;
    let mut attr_slots = encoded.attr_slots.iter().copied();
    for &i in &encoded.order {
        let (s, service) = (spans[i as usize], services[i as usize]);
        for kv in &s.attributes {
            let key = attr_slots.next().expect("a slot per key");
            let value = match &kv.value {
                AttrValue::Str(_) => Some(ValueId::Text(attr_slots.next().expect("a slot per string value"))),
                other => posting_value(strings, other),
            };
            add_posting(&mut p, service, key, value);
        }
        if resources_seen.insert((service, Arc::as_ptr(&s.resource))) {
            for kv in &s.resource.attributes {
                let key = strings.slot(&kv.key);
                add_posting(&mut p, service, key, posting_value(strings, &kv.value));
            }
        }
        for e in &s.events {
            let (key, name) = (strings.slot("event"), strings.slot(&e.name));
            add_posting(&mut p, service, key, Some(ValueId::Text(name)));
            for kv in &e.attributes {
                let key = strings.slot(&kv.key);
                add_posting(&mut p, service, key, posting_value(strings, &kv.value));
            }
        }
        // The synthetic tags follow from kind, status and scope: most spans repeat those of
        // an earlier one.
        let scope = Arc::as_ptr(&s.scope) as usize;
        if s.status.message.is_empty()
            && !synthetic_seen.insert((service, s.kind.code(), s.status.code.code(), scope))
        {
            continue;
        }
        for (k, v) in skein_store::synthetic_tags_of(s) {
            let (key, value) = (strings.slot(k), strings.slot(v));
            add_posting(&mut p, service, key, Some(ValueId::Text(value)));
        }
    }
    let mut by_service: BTreeMap<u32, Postings> = BTreeMap::new();
    let mut hashes = Vec::new();
    let mut digits = itoa::Buffer::new();
    for ((service, key), values) in p {
        let key = strings.text(key);
        let values = match values {
            None => KeyValues::Unindexed,
            Some(values) if values.len() <= MAX_POSTING_VALUES => KeyValues::Listed(
                values
                    .into_iter()
                    .map(|v| match v {
                        ValueId::Text(slot) => strings.text(slot).to_owned(),
                        ValueId::Int(i) => digits.format(i).to_owned(),
                    })
                    .collect(),
            ),
            Some(values) => {
                let service = service_names[service as usize];
                hashes.extend(values.into_iter().map(|v| match v {
                    ValueId::Text(slot) => bloom::item_hash(service, key, strings.text(slot)),
                    ValueId::Int(i) => bloom::item_hash(service, key, digits.format(i)),
                }));
                KeyValues::Hashed
            }
        };
        by_service.entry(service).or_default().insert(key.to_owned(), values);
    }
    let filter = if hashes.is_empty() { Vec::new() } else { bloom::build(&hashes) };
    (by_service.into_iter().collect(), filter)
}

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
}

/// Reads the index with the one codec of the crate ([`codec::Reader`]), its errors as text.
struct IndexReader<'a> {
    r: codec::Reader<'a>,
}

impl<'a> IndexReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        IndexReader { r: codec::Reader::new(buf) }
    }

    fn varint(&mut self) -> Result<u64, String> {
        self.r.varint().map_err(|e| format!("index: {e}"))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        self.r.take(n).map_err(|e| format!("index: {e}"))
    }

    fn str(&mut self) -> Result<String, String> {
        self.r.text().map(str::to_owned).map_err(|e| format!("index: {e}"))
    }

    fn count(&mut self) -> Result<usize, String> {
        self.r.count().map_err(|e| format!("index: {e}"))
    }

    fn is_empty(&self) -> bool {
        self.r.is_empty()
    }
}

/// Writes traces (each a group of spans of one trace) into a new block file at `path`
/// (atomically). `wal_segment_end` is recorded so recovery knows which WAL records the block
/// already holds. `red`, when given, is the RED pre-aggregates of exactly these spans (the
/// head's): they are written as they are instead of being counted again.
pub(crate) fn write_block<'a>(
    fs: &dyn Fs,
    path: &Path,
    traces: impl IntoIterator<Item = Vec<&'a Span>>,
    wal_segment_end: u64,
    red: Option<&RedSummary>,
) -> Result<Block, BlockError> {
    let mut writer = BlockWriter::default();
    if let Some(red) = red {
        writer.red = red.clone();
        writer.red_given = true;
    }
    writer.add_traces(traces.into_iter().map(|spans| spans.into_iter().map(Cow::Borrowed).collect()));
    writer.finish(fs, path, wal_segment_end, &[])
}

/// Builds a block chunk by chunk: spans go in (whole traces, or parts of traces: a trace may
/// then span several chunks), compressed chunks accumulate, and [`BlockWriter::finish`] writes
/// the index and footer. Memory: the compressed chunks plus one chunk being gathered.
#[derive(Default)]
pub(crate) struct BlockWriter<'a> {
    service_ids: FxHashMap<String, u32>,
    /// Per service (by id): its name, and span counts per operation name and kind code.
    services: Vec<(String, FxHashMap<String, [u64; SpanKind::ALL.len()]>)>,
    file: Vec<u8>,
    chunks: Vec<ChunkMeta>,
    all_postings: Vec<Vec<(u32, Postings)>>,
    trace_index: Vec<(TraceId, u32)>,
    span_count: u64,
    /// Spans of the chunk being gathered: borrowed from a head, or owned (decoded by compaction).
    pending: Vec<Cow<'a, Span>>,
    /// The service id of each pending span.
    pending_services: Vec<u32>,
    /// The resource (by address) and service id of the last span added: the spans of one
    /// request share their resource. Valid while that span is pending (which keeps the
    /// resource, and so its address, alive); cleared when a chunk is cut.
    last_resource: Option<(usize, u32)>,
    pending_bytes: usize,
    /// One compression context for all the block's chunks.
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// RED pre-aggregates of every span in the block…
    red: RedSummary,
    /// …unless a compaction copied chunks of a block that has none (before format 4).
    red_incomplete: bool,
    /// The pre-aggregates were given whole: spans added are not counted again.
    red_given: bool,
}

impl<'a> BlockWriter<'a> {
    /// The id of `service` in this block's service table (added when new).
    fn service_id(&mut self, service: &str) -> u32 {
        match self.service_ids.get(service) {
            Some(&sid) => sid,
            None => {
                self.services.push((service.to_owned(), FxHashMap::default()));
                let sid = (self.services.len() - 1) as u32;
                self.service_ids.insert(service.to_owned(), sid);
                sid
            }
        }
    }

    /// Adds traces (each a group of spans of one trace), oldest first, so chunks have narrow
    /// time ranges.
    pub(crate) fn add_traces(&mut self, traces: impl IntoIterator<Item = Vec<Cow<'a, Span>>>) {
        let mut traces: Vec<(u64, TraceId, Vec<Cow<'a, Span>>)> = traces
            .into_iter()
            .filter(|spans| !spans.is_empty())
            .map(|spans| {
                let start = spans.iter().map(|s| s.start_time_unix_nano).min().unwrap_or(0);
                (start, spans[0].trace_id, spans)
            })
            .collect();
        traces.sort_unstable_by_key(|(start, id, _)| (*start, *id));
        for (_, _, spans) in traces {
            self.add(spans);
        }
    }

    /// Adds spans (of one trace, or of several whole traces); cuts a chunk when enough is gathered.
    pub(crate) fn add(&mut self, spans: Vec<Cow<'a, Span>>) {
        let chunk = self.chunks.len() as u32;
        for s in &spans {
            let resource = Arc::as_ptr(&s.resource) as usize;
            let sid = match self.last_resource {
                Some((r, sid)) if r == resource => sid,
                _ => self.service_id(s.service_name()),
            };
            self.last_resource = Some((resource, sid));
            self.pending_services.push(sid);
            named!(&mut self.services[sid as usize].1, &s.name)[s.kind.code() as usize] += 1;
            if !self.red_given {
                self.red.add_parts(
                    &self.services[sid as usize].0,
                    &s.name,
                    s.kind,
                    s.start_time_unix_nano,
                    s.duration_nanos(),
                    s.status.code == skein_model::StatusCode::Error,
                );
            }
            self.span_count += 1;
            self.pending_bytes += 64 + s.name.len() + s.attributes.len() * 24;
            if self.trace_index.last() != Some(&(s.trace_id, chunk)) {
                self.trace_index.push((s.trace_id, chunk));
            }
        }
        // The spans belong to the chunk being gathered, whose index is `chunks.len()`.
        self.pending.extend(spans);
        if self.pending_bytes >= CHUNK_TARGET {
            self.cut();
        }
    }

    /// Takes over the operation counts and the span count of `source`, whose chunks are then
    /// all copied with [`BlockWriter::copy_chunk`].
    pub(crate) fn take_counts(&mut self, source: &Block) {
        for (service, ops) in &source.services {
            let sid = self.service_id(service) as usize;
            for ((op, kind), n) in ops {
                named!(&mut self.services[sid].1, op)[kind.code() as usize] += n;
            }
        }
        self.span_count += source.span_count;
    }

    /// Takes over the RED pre-aggregates of `source`, whose chunks are all copied; a source
    /// without them (written before format 4) leaves the new block without them too.
    pub(crate) fn take_red(&mut self, fs: &dyn Fs, source: &Block) -> Result<(), BlockError> {
        match source.read_red(fs)? {
            Some(red) => self.red.merge(&red),
            None => self.red_incomplete = true,
        }
        Ok(())
    }

    /// Copies chunk `i` of `source` into this block as it is (still compressed, crc checked):
    /// its bytes, time and duration ranges, services and postings, and its traces' entries in
    /// the trace index. Nothing is decoded. The source's counts come with
    /// [`BlockWriter::take_counts`].
    pub(crate) fn copy_chunk(
        &mut self,
        fs: &dyn Fs,
        from: &CopySource<'_>,
        i: usize,
    ) -> Result<(), BlockError> {
        let (source, strings) = (from.block, &from.strings);
        self.cut(); // spans gathered so far keep their chunk index
        let bytes = source.read_chunk_bytes(fs, i)?;
        let meta = &source.chunks[i];
        let postings =
            meta.postings.as_ref().expect("copy sources are blocks whose chunks all have postings");
        let services: BTreeSet<u32> =
            meta.services.iter().map(|s| self.service_id(&source.services[*s as usize].0)).collect();
        let mut chunk_postings: Vec<(u32, Postings)> = postings
            .iter()
            .map(|(sid, keys)| {
                let keys = keys
                    .iter()
                    .map(|(k, values)| {
                        let values = match values {
                            KeyValues::Listed(v) => {
                                KeyValues::Listed(v.iter().map(|v| strings[*v as usize].to_owned()).collect())
                            }
                            KeyValues::Hashed => KeyValues::Hashed,
                            KeyValues::Unindexed => KeyValues::Unindexed,
                        };
                        (strings[*k as usize].to_owned(), values)
                    })
                    .collect();
                (self.service_id(&source.services[*sid as usize].0), keys)
            })
            .collect();
        chunk_postings.sort_unstable_by_key(|(service, _)| *service);
        // Service ids differ between the blocks, names do not: the filter's items stay valid.
        let filter = source.read_bloom(fs, i)?;
        let chunk = self.chunks.len() as u32;
        self.trace_index.extend(from.traces[i].iter().map(|id| (*id, chunk)));
        self.chunks.push(ChunkMeta {
            offset: self.file.len() as u64,
            len: bytes.len() as u32,
            crc: meta.crc,
            time: meta.time,
            durations: meta.durations,
            services: services.into_iter().collect(),
            postings: None,
            bloom_len: filter.len() as u32,
            bloom_crc: crc32fast::hash(&filter),
        });
        self.all_postings.push(chunk_postings);
        self.file.extend_from_slice(&bytes);
        self.file.extend_from_slice(&filter);
        Ok(())
    }

    fn cut(&mut self) {
        self.pending_bytes = 0;
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let services = std::mem::take(&mut self.pending_services);
        self.last_resource = None;
        let refs: Vec<&Span> = pending.iter().map(|s| s.as_ref()).collect();
        let mut encoded = columnar::encode_chunk_detailed(&refs);
        let raw = std::mem::take(&mut encoded.bytes);
        let zstd = match &mut self.zstd {
            Some(z) => z,
            None => self.zstd.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd level 3 is valid")),
        };
        let compressed = zstd.compress(&raw).expect("zstd compresses any input");
        let chunk_services: BTreeSet<u32> = services.iter().copied().collect();
        let mut t = TimeRange::new(u64::MAX, 0);
        let mut durations = (u64::MAX, 0);
        for s in &refs {
            t.start_unix_nano = t.start_unix_nano.min(s.start_time_unix_nano);
            t.end_unix_nano = t.end_unix_nano.max(s.start_time_unix_nano.saturating_add(1));
            durations = (durations.0.min(s.duration_nanos()), durations.1.max(s.duration_nanos()));
        }
        let names: Vec<&str> = self.services.iter().map(|(name, _)| name.as_str()).collect();
        let (postings, filter) = chunk_postings(&refs, &services, &mut encoded, &names);
        self.chunks.push(ChunkMeta {
            offset: self.file.len() as u64,
            len: compressed.len() as u32,
            crc: crc32fast::hash(&compressed),
            time: t,
            durations,
            services: chunk_services.into_iter().collect(),
            postings: None,
            bloom_len: filter.len() as u32,
            bloom_crc: crc32fast::hash(&filter),
        });
        self.all_postings.push(postings);
        self.file.extend_from_slice(&compressed);
        self.file.extend_from_slice(&filter);
    }

    /// Writes the block (atomically) and opens it. `replaces` names the blocks (by sequence
    /// number) whose spans this one holds, for compaction.
    pub(crate) fn finish(
        mut self,
        fs: &dyn Fs,
        path: &Path,
        wal_segment_end: u64,
        replaces: &[u64],
    ) -> Result<Block, BlockError> {
        self.cut();
        // Every span is in a chunk now: the block's times are those of its chunks.
        let time = self
            .chunks
            .iter()
            .map(|c| c.time)
            .reduce(|a, b| {
                TimeRange::new(a.start_unix_nano.min(b.start_unix_nano), a.end_unix_nano.max(b.end_unix_nano))
            })
            .unwrap_or(TimeRange::new(0, 0));
        let mut trace_index = std::mem::take(&mut self.trace_index);
        trace_index.sort_unstable();
        trace_index.dedup();
        let mut file = std::mem::take(&mut self.file);
        let red = if self.red_incomplete || self.red.is_empty() {
            Vec::new()
        } else {
            zstd::bulk::compress(&self.red.encode(), ZSTD_LEVEL).expect("zstd compresses any input")
        };
        file.extend_from_slice(&red);

        let mut index = codec::Writer::default();
        index.varint(time.start_unix_nano);
        index.varint(time.end_unix_nano);
        index.varint(self.span_count);
        // The trace index is sorted by id: its distinct ids are the block's traces.
        let trace_count = 1 + trace_index.windows(2).filter(|w| w[0].0 != w[1].0).count();
        index.varint(if trace_index.is_empty() { 0 } else { trace_count as u64 });
        index.varint(wal_segment_end);
        index.varint(replaces.len() as u64);
        for r in replaces {
            index.varint(*r);
        }
        index.varint(self.services.len() as u64);
        for (name, ops) in &self.services {
            index.str(name);
            let mut ops: Vec<(&str, u8, u64)> = ops
                .iter()
                .flat_map(|(op, counts)| {
                    counts
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(k, n)| (op.as_str(), k as u8, *n))
                })
                .collect();
            ops.sort_unstable();
            index.varint(ops.len() as u64);
            for (op, kind, n) in ops {
                index.str(op);
                index.u8(kind);
                index.varint(n);
            }
        }
        index.varint(self.chunks.len() as u64);
        for (c, postings) in self.chunks.iter().zip(&self.all_postings) {
            index.varint(c.offset);
            index.varint(c.len as u64);
            index.buf.extend_from_slice(&c.crc.to_le_bytes());
            index.varint(c.time.start_unix_nano);
            index.varint(c.time.end_unix_nano);
            index.varint(c.durations.0);
            index.varint(c.durations.1);
            index.varint(c.services.len() as u64);
            for s in &c.services {
                index.varint(*s as u64);
            }
            index.varint(postings.len() as u64);
            for (service, keys) in postings {
                index.varint(*service as u64);
                index.varint(keys.len() as u64);
                for (key, values) in keys {
                    index.str(key);
                    match values {
                        KeyValues::Unindexed => index.u8(0),
                        KeyValues::Listed(values) => {
                            index.u8(1);
                            index.varint(values.len() as u64);
                            for v in values {
                                index.str(v);
                            }
                        }
                        KeyValues::Hashed => index.u8(2),
                    }
                }
            }
            index.varint(c.bloom_len as u64);
            if c.bloom_len > 0 {
                index.buf.extend_from_slice(&c.bloom_crc.to_le_bytes());
            }
        }
        index.varint(trace_index.len() as u64);
        for (id, chunk) in &trace_index {
            index.buf.extend_from_slice(id.as_bytes());
            index.varint(*chunk as u64);
        }
        index.varint(red.len() as u64);
        if !red.is_empty() {
            index.buf.extend_from_slice(&crc32fast::hash(&red).to_le_bytes());
        }
        let index = zstd::bulk::compress(&index.buf, ZSTD_LEVEL).expect("zstd compresses any input");
        let index_offset = file.len() as u64;
        file.extend_from_slice(&index);
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(&index_offset.to_le_bytes());
        footer.extend_from_slice(&(index.len() as u32).to_le_bytes());
        footer.extend_from_slice(&crc32fast::hash(&index).to_le_bytes());
        footer.extend_from_slice(&BLOCK_VERSION.to_le_bytes());
        footer.extend_from_slice(&BLOCK_MAGIC);
        let footer_crc = crc32fast::hash(&footer);
        footer.extend_from_slice(&footer_crc.to_le_bytes());
        debug_assert_eq!(footer.len(), FOOTER_LEN);
        file.extend_from_slice(&footer);
        fs.write_atomic(path, &file).map_err(|source| BlockError::Io { path: path.to_owned(), source })?;
        Block::open(fs, path)
    }
}

impl Block {
    /// Opens a block: checks the footer and the index, and keeps the index in memory.
    pub fn open(fs: &dyn Fs, path: &Path) -> Result<Block, BlockError> {
        let io = |source| BlockError::Io { path: path.to_owned(), source };
        let corrupt = |reason: String| BlockError::Corrupt { path: path.to_owned(), reason };
        let len = fs.len(path).map_err(io)?;
        if len < FOOTER_LEN as u64 {
            return Err(corrupt(format!("{len} bytes is shorter than the footer")));
        }
        let footer = fs.read_range(path, len - FOOTER_LEN as u64, FOOTER_LEN).map_err(io)?;
        if footer[20..28] != BLOCK_MAGIC {
            return Err(corrupt("bad magic: not a skein block".into()));
        }
        if crc32fast::hash(&footer[..28]) != u32::from_le_bytes(footer[28..32].try_into().expect("4 bytes")) {
            return Err(corrupt("footer crc mismatch".into()));
        }
        let version = u32::from_le_bytes(footer[16..20].try_into().expect("4 bytes"));
        if !(1..=BLOCK_VERSION).contains(&version) {
            return Err(corrupt(format!(
                "unsupported block format version {version} (this build reads {BLOCK_VERSION})"
            )));
        }
        let index_offset = u64::from_le_bytes(footer[..8].try_into().expect("8 bytes"));
        let index_len = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes")) as u64;
        let index_crc = u32::from_le_bytes(footer[12..16].try_into().expect("4 bytes"));
        if index_offset + index_len + FOOTER_LEN as u64 != len {
            return Err(corrupt("index position does not match the file size".into()));
        }
        let compressed = fs.read_range(path, index_offset, index_len as usize).map_err(io)?;
        if crc32fast::hash(&compressed) != index_crc {
            return Err(corrupt("index crc mismatch".into()));
        }
        let raw = zstd::stream::decode_all(&compressed[..])
            .map_err(|e| corrupt(format!("index does not decompress: {e}")))?;
        Self::parse_index(path, &raw, len, index_offset, version).map_err(corrupt)
    }

    fn parse_index(
        path: &Path,
        raw: &[u8],
        bytes: u64,
        index_offset: u64,
        version: u32,
    ) -> Result<Block, String> {
        let mut r = IndexReader::new(raw);
        let time = TimeRange::new(r.varint()?, r.varint()?);
        let span_count = r.varint()?;
        let trace_count = r.varint()?;
        let wal_segment_end = r.varint()?;
        let replaces = if version >= 3 {
            let n = r.count()?;
            (0..n).map(|_| r.varint()).collect::<Result<Vec<u64>, String>>()?
        } else {
            Vec::new()
        };
        let n = r.count()?;
        let mut services = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str()?;
            let n_ops = r.count()?;
            let mut ops = BTreeMap::new();
            for _ in 0..n_ops {
                let op = r.str()?;
                let kind = *SpanKind::ALL.get(r.bytes(1)?[0] as usize).ok_or("bad span kind in index")?;
                ops.insert((op, kind), r.varint()?);
            }
            services.push((name, ops));
        }
        let mut strings: HashMap<Box<str>, u32> = HashMap::new();
        let mut intern = |s: String| -> u32 {
            let next = strings.len() as u32;
            *strings.entry(s.into_boxed_str()).or_insert(next)
        };
        let n = r.count()?;
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            let offset = r.varint()?;
            let len = r.varint()? as u32;
            let crc = u32::from_le_bytes(r.bytes(4)?.try_into().expect("4 bytes"));
            let time = TimeRange::new(r.varint()?, r.varint()?);
            let durations = if version >= 2 { (r.varint()?, r.varint()?) } else { (0, u64::MAX) };
            let ns = r.count()?;
            let mut svc = Vec::with_capacity(ns);
            for _ in 0..ns {
                let s = r.varint()? as u32;
                if s as usize >= services.len() {
                    return Err("chunk names an unknown service".into());
                }
                svc.push(s);
            }
            let postings = if version >= 2 {
                let n = r.count()?;
                let mut postings = Vec::with_capacity(n);
                for _ in 0..n {
                    let service = r.varint()? as u32;
                    if service as usize >= services.len() {
                        return Err("postings name an unknown service".into());
                    }
                    let nk = r.count()?;
                    let mut keys = Vec::with_capacity(nk);
                    for _ in 0..nk {
                        let key = intern(r.str()?);
                        let values = match r.bytes(1)?[0] {
                            0 => KeyValues::Unindexed,
                            1 => {
                                let nv = r.count()?;
                                let mut values = Vec::with_capacity(nv);
                                for _ in 0..nv {
                                    values.push(intern(r.str()?));
                                }
                                values.sort_unstable();
                                KeyValues::Listed(values.into_boxed_slice())
                            }
                            2 if version >= 4 => KeyValues::Hashed,
                            f => return Err(format!("bad postings flag {f}")),
                        };
                        keys.push((key, values));
                    }
                    keys.sort_unstable_by_key(|(k, _)| *k);
                    postings.push((service, keys.into_boxed_slice()));
                }
                Some(postings)
            } else {
                None
            };
            let (bloom_len, bloom_crc) = if version >= 4 {
                match r.varint()? {
                    0 => (0, 0),
                    n => (
                        u32::try_from(n).map_err(|_| "bloom filter too long")?,
                        u32::from_le_bytes(r.bytes(4)?.try_into().expect("4 bytes")),
                    ),
                }
            } else {
                (0, 0)
            };
            if offset + len as u64 + bloom_len as u64 > bytes {
                return Err("a chunk lies outside the file".into());
            }
            chunks.push(ChunkMeta {
                offset,
                len,
                crc,
                time,
                durations,
                services: svc,
                postings,
                bloom_len,
                bloom_crc,
            });
        }
        let n = r.count()?;
        let mut traces = Vec::with_capacity(n);
        for _ in 0..n {
            let id = TraceId::from_slice(r.bytes(16)?).map_err(|e| format!("bad trace id in index: {e}"))?;
            let chunk = r.varint()? as u32;
            if chunk as usize >= chunks.len() {
                return Err("trace index names an unknown chunk".into());
            }
            traces.push((id, chunk));
        }
        let red = match version {
            4.. => match r.varint()? {
                0 => None,
                n => {
                    let len = u32::try_from(n).map_err(|_| "RED pre-aggregates too long")?;
                    let crc = u32::from_le_bytes(r.bytes(4)?.try_into().expect("4 bytes"));
                    let offset = index_offset.checked_sub(n).ok_or("RED pre-aggregates outside the file")?;
                    Some((offset, len, crc))
                }
            },
            _ => None,
        };
        if !r.is_empty() {
            return Err("trailing bytes after the index".into());
        }
        strings.shrink_to_fit();
        Ok(Block {
            path: path.to_owned(),
            time,
            span_count,
            trace_count,
            wal_segment_end,
            replaces,
            bytes,
            chunks,
            services,
            traces,
            strings,
            red,
        })
    }

    /// The block's RED pre-aggregates, crc checked; `None` when it has none (written before
    /// format 4, or compacted from such blocks).
    pub(crate) fn read_red(&self, fs: &dyn Fs) -> Result<Option<RedSummary>, BlockError> {
        let Some(raw) = self.read_red_bytes(fs)? else { return Ok(None) };
        RedSummary::decode(&raw).map(Some).map_err(|e| self.corrupt(format!("RED pre-aggregates: {e}")))
    }

    pub(crate) fn corrupt(&self, reason: String) -> BlockError {
        BlockError::Corrupt { path: self.path.clone(), reason }
    }

    /// The block's RED pre-aggregates as [`RedSummary::encode`] wrote them, crc checked and
    /// decompressed; `None` when it has none.
    pub(crate) fn read_red_bytes(&self, fs: &dyn Fs) -> Result<Option<Vec<u8>>, BlockError> {
        let Some((offset, len, crc)) = self.red else { return Ok(None) };
        let bytes = self.read_checked(fs, offset, len, crc, || "RED pre-aggregates".into())?;
        let raw = zstd::stream::decode_all(&bytes[..])
            .map_err(|e| self.corrupt(format!("RED pre-aggregates do not decompress: {e}")))?;
        Ok(Some(raw))
    }

    /// The block's sequence number, from its file name (`{seq:020}.blk`).
    pub(crate) fn seq(&self) -> Option<u64> {
        self.path.file_stem()?.to_str()?.parse().ok()
    }

    /// The chunks holding spans of `id` (answered from the in-memory index; empty: "not here").
    pub fn chunks_of(&self, id: TraceId) -> impl Iterator<Item = usize> + '_ {
        let first = self.traces.partition_point(|(t, _)| *t < id);
        self.traces[first..].iter().take_while(move |(t, _)| *t == id).map(|(_, c)| *c as usize)
    }

    /// Whether the block holds spans of `id`.
    pub fn has_trace(&self, id: TraceId) -> bool {
        self.chunks_of(id).next().is_some()
    }

    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub(crate) fn chunk_meta(&self, i: usize) -> &ChunkMeta {
        &self.chunks[i]
    }

    /// Whether chunk `i` holds spans of `service`.
    pub(crate) fn chunk_has_service(&self, i: usize, service: &str) -> bool {
        self.chunks[i].services.iter().any(|s| self.services[*s as usize].0 == service)
    }

    /// Whether chunk `i` may hold a span whose duration lies in `[min, max]` (nanoseconds).
    pub(crate) fn chunk_may_hold_duration(&self, i: usize, min: Option<u64>, max: Option<u64>) -> bool {
        let (shortest, longest) = self.chunks[i].durations;
        min.is_none_or(|min| longest >= min) && max.is_none_or(|max| shortest <= max)
    }

    /// Whether chunk `i` may hold a span of `service` (any, when `None`) carrying every tag:
    /// answered from the chunk's postings and, for keys with many values, its Bloom filter
    /// (read from disk only then), without reading the chunk. Version 1 blocks have no
    /// postings and always answer yes.
    pub(crate) fn chunk_may_match(
        &self,
        fs: &dyn Fs,
        i: usize,
        service: Option<&str>,
        tags: &[(String, String)],
    ) -> bool {
        let Some(postings) = &self.chunks[i].postings else {
            return service.is_none_or(|s| self.chunk_has_service(i, s));
        };
        // Each tag: its key as an interned id and as text, and the texts its value may be
        // stored as (as given, and an integer's canonical form), with their interned ids.
        let mut wanted = Vec::with_capacity(tags.len());
        for (k, want) in tags {
            let Some(&key) = self.strings.get(k.as_str()) else { return false };
            let mut texts = vec![want.clone()];
            if let Ok(i) = want.parse::<i64>()
                && i.to_string() != *want
            {
                texts.push(i.to_string());
            }
            let ids: Vec<u32> = texts.iter().filter_map(|t| self.strings.get(t.as_str()).copied()).collect();
            wanted.push((key, k.as_str(), texts, ids));
        }
        // The filter is read at most once, when a key needs it; unreadable, it answers "maybe".
        let mut filter: Option<Option<Vec<u8>>> = None;
        postings.iter().any(|(sid, keys)| {
            let name = self.services[*sid as usize].0.as_str();
            service.is_none_or(|s| name == s)
                && wanted.iter().all(|(key, key_text, texts, ids)| {
                    match keys.binary_search_by_key(key, |(k, _)| *k) {
                        Err(_) => false,
                        Ok(at) => match &keys[at].1 {
                            KeyValues::Unindexed => true,
                            KeyValues::Listed(values) => {
                                ids.iter().any(|id| values.binary_search(id).is_ok())
                            }
                            KeyValues::Hashed => {
                                let filter = filter.get_or_insert_with(|| self.read_bloom(fs, i).ok());
                                match filter {
                                    Some(f) if !f.is_empty() => texts
                                        .iter()
                                        .any(|t| bloom::may_contain(f, bloom::item_hash(name, key_text, t))),
                                    _ => true,
                                }
                            }
                        },
                    }
                })
        })
    }

    /// The Bloom filter of chunk `i` (empty when it has none), crc checked.
    fn read_bloom(&self, fs: &dyn Fs, i: usize) -> Result<Vec<u8>, BlockError> {
        let c = &self.chunks[i];
        if c.bloom_len == 0 {
            return Ok(Vec::new());
        }
        self.read_checked(fs, c.offset + c.len as u64, c.bloom_len, c.bloom_crc, || {
            format!("chunk {i} bloom filter")
        })
    }

    /// `len` bytes at `offset` of the block file, whose crc32 must be `crc` (`what` names them
    /// in the error).
    fn read_checked(
        &self,
        fs: &dyn Fs,
        offset: u64,
        len: u32,
        crc: u32,
        what: impl Fn() -> String,
    ) -> Result<Vec<u8>, BlockError> {
        let bytes = fs
            .read_range(&self.path, offset, len as usize)
            .map_err(|source| BlockError::Io { path: self.path.clone(), source })?;
        if crc32fast::hash(&bytes) != crc {
            return Err(self.corrupt(format!("{} crc mismatch", what())));
        }
        Ok(bytes)
    }

    /// The block as a source whose chunks compaction copies without decoding them, when every
    /// chunk has postings (format 2 and later).
    pub(crate) fn copy_source(&self) -> Option<CopySource<'_>> {
        if self.chunks.iter().any(|c| c.postings.is_none()) {
            return None;
        }
        let mut strings = vec![""; self.strings.len()];
        for (s, id) in &self.strings {
            strings[*id as usize] = s;
        }
        let mut traces = vec![Vec::new(); self.chunks.len()];
        for (id, chunk) in &self.traces {
            traces[*chunk as usize].push(*id);
        }
        Some(CopySource { block: self, strings, traces })
    }

    /// The compressed bytes of chunk `i`, crc checked.
    fn read_chunk_bytes(&self, fs: &dyn Fs, i: usize) -> Result<Vec<u8>, BlockError> {
        let c = &self.chunks[i];
        self.read_checked(fs, c.offset, c.len, c.crc, || format!("chunk {i}"))
    }

    /// Reads and decodes chunk `i`, checking its crc.
    pub(crate) fn read_chunk(&self, fs: &dyn Fs, i: usize) -> Result<Vec<Span>, BlockError> {
        self.read_chunk_projected(fs, i, None)
    }

    /// [`Block::read_chunk`], with only the span attributes `keep` accepts and no events when
    /// `keep` is given (see [`columnar::decode_chunk_projected`]).
    pub(crate) fn read_chunk_projected(
        &self,
        fs: &dyn Fs,
        i: usize,
        keep: Option<skein_store::KeepAttribute>,
    ) -> Result<Vec<Span>, BlockError> {
        let corrupt = |reason: String| BlockError::Corrupt { path: self.path.clone(), reason };
        let bytes = self.read_chunk_bytes(fs, i)?;
        let raw = zstd::stream::decode_all(&bytes[..])
            .map_err(|e| corrupt(format!("chunk {i} does not decompress: {e}")))?;
        // The first byte says which encoding wrote the chunk: rows (formats 1 and 2) or columns (3).
        let decoded = match (raw.first(), keep) {
            (Some(&columnar::COLUMNAR_VERSION), None) => columnar::decode_chunk(&raw),
            (Some(&columnar::COLUMNAR_VERSION), Some(keep)) => columnar::decode_chunk_projected(&raw, keep),
            (_, None) => codec::decode_spans(&raw),
            // Row-encoded chunks (formats 1 and 2) are decoded whole; the caller keeps what it needs.
            (_, Some(_)) => codec::decode_spans(&raw),
        };
        decoded.map_err(|e: DecodeError| corrupt(format!("chunk {i}: {e}")))
    }
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
