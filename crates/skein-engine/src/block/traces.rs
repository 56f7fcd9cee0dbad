//! A block's trace-id index: which chunks hold the spans of each trace. Written by
//! [`TraceSection::write`], held by an open block as a [`TraceIndex`], asked by
//! [`TraceIndex::chunks_of`]. Specified in `docs/format/block.md` ("Trace section").
//!
//! Format 6 keeps the index on disk, in pages of sorted `(trace id, chunk)` entries each with
//! its crc32; the open block holds only the first key of every page, so its memory does not
//! grow with the traces it stores (0.125 bytes an entry instead of 6). Format 8 sorts and
//! finds the entries by a 64-bit hash of the trace id instead of the id ([`KeyForm::Hash`]):
//! 10 bytes an entry instead of 18 (about 0.4 bytes per span of the realistic load), and a
//! read still returns only the trace's spans, as the spans of the chunks it reads are
//! filtered by id. Format 10 bit-packs each page ([`KeyForm::Packed`]: about 7.5 bytes an entry
//! in a 64 MiB block), and the open block also keeps where each page ends. Formats 3 to 5 list
//! the entries in the block's compressed index, and the open block keeps a 32-bit hash of each.

use std::collections::BTreeSet;
use std::path::Path;

use skein_model::TraceId;
use skein_wal::fs::Fs;

use super::{ChunkNumbers, NARROW_CHUNKS};
use crate::bloom;

/// Entries in a page of the trace section (the last page may hold fewer). One page is what a
/// lookup reads: 128 entries of 18 bytes, about 2.3 KiB.
pub(crate) const PAGE_ENTRIES: u32 = 128;

/// Bits per trace of a format 6 block's trace filter: with 8 probes in 64-byte lines, about
/// 2.5 % of the blocks that do not hold a trace say "maybe" (and cost a page read).
const FILTER_BITS_PER_TRACE: usize = 8;

/// Why an index could not answer.
pub(crate) type IndexError = String;

/// A block's trace index as an open block holds it.
#[derive(Debug)]
pub(crate) enum TraceIndex {
    /// Formats 3 to 5 (and 1 and 2): every entry as a hash, in memory.
    Hashed(Hashed),
    /// Format 6: the entries on disk, the first id of each page in memory.
    Paged(Paged),
}

impl TraceIndex {
    /// The chunks that may hold spans of any of `ids`: read from the block's file at `path`
    /// for format 6 on (one read, of the pages the ids may be in), from memory before. Formats
    /// 6 and 7 answer exactly; format 8 (by a 64-bit hash of the id) and the 32-bit hashed
    /// index may name a chunk of another trace with the same hash (the caller filters the
    /// spans it reads by id).
    /// A paged index asks `filter`, the block's trace filter, when it is kept in memory, and
    /// reads the pages the ids may be in without it otherwise.
    pub(crate) fn chunks_of(
        &self,
        fs: &dyn Fs,
        path: &Path,
        ids: &[TraceId],
        filter: Option<&TraceFilter>,
    ) -> Result<BTreeSet<usize>, IndexError> {
        match self {
            TraceIndex::Hashed(h) => Ok(ids.iter().flat_map(|id| h.chunks_of(*id)).collect()),
            TraceIndex::Paged(p) => p.chunks_of(fs, path, ids, filter),
        }
    }

    /// Bytes of memory the index holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        match self {
            TraceIndex::Hashed(h) => h.memory_bytes(),
            TraceIndex::Paged(p) => p.firsts.capacity() * 16 + p.page_ends.capacity() * 8,
        }
    }
}

/// The key of a trace id in a hashed trace index: a 32-bit hash of the whole id (not a part of
/// it: ids with equal halves or a zero half, as 64-bit ids padded to 128 bits are, would share
/// it).
pub(crate) fn trace_key(id: TraceId) -> u32 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes()) as u32
}

/// A trace index in memory (formats 1 to 5): for each trace and chunk it is in, a 32-bit hash
/// of the trace id and the chunk number (16 bits when the block has at most 65,536 chunks),
/// sorted. 6 bytes an entry instead of the 20 of an id and a chunk. Two traces whose hashes
/// collide share their entries' chunks: a block of 140,000 traces answers "maybe here" for an
/// absent trace about once in 30,000 lookups, and the chunk read for it is filtered by id.
#[derive(Debug)]
pub(crate) struct Hashed {
    keys: Vec<u32>,
    chunks: ChunkNumbers,
}

impl Hashed {
    pub(crate) fn new(mut pairs: Vec<(u32, u32)>, chunks: usize) -> Hashed {
        pairs.sort_unstable();
        let keys = pairs.iter().map(|(k, _)| *k).collect();
        let chunks = ChunkNumbers::new(chunks, pairs.iter().map(|(_, c)| *c));
        Hashed { keys, chunks }
    }

    fn chunks_of(&self, id: TraceId) -> impl Iterator<Item = usize> + '_ {
        let key = trace_key(id);
        let first = self.keys.partition_point(|k| *k < key);
        let n = self.keys[first..].iter().take_while(|k| **k == key).count();
        (first..first + n).map(|i| self.chunks.get(i) as usize)
    }

    fn memory_bytes(&self) -> usize {
        self.keys.capacity() * 4 + self.chunks.memory_bytes()
    }
}

/// A format 6 trace index: where its section lies, the first key of each page, and a blocked
/// Bloom filter of the block's trace ids.
#[derive(Debug)]
pub(crate) struct Paged {
    offset: u64,
    entries: u64,
    per_page: u32,
    form: KeyForm,
    /// Chunk numbers are 4 bytes (the block has more than 65,536 chunks), else 2.
    wide: bool,
    /// The block's chunk count.
    chunks: usize,
    firsts: Vec<u128>,
    /// Format 10: where each page ends (from the section's start; its bytes vary).
    page_ends: Vec<u64>,
}

/// A blocked Bloom filter of a block's trace ids (see [`bloom::build_blocked`]), kept in
/// memory while the budget of the blocks' indexes allows it ([`super::IndexCache`]): a read by
/// id asks every block, and most do not hold the trace; without it each costs a page read,
/// from the disk once the page cache has let the page go.
#[derive(Debug, Clone, Default)]
pub(crate) struct TraceFilter {
    pub(crate) probes: u8,
    pub(crate) lines: Vec<u8>,
}

impl TraceFilter {
    /// The filter of the traces whose [`trace_hash`]es are `hashes`.
    fn of(mut hashes: Vec<u64>) -> TraceFilter {
        hashes.sort_unstable();
        hashes.dedup();
        let lines = (hashes.len() * FILTER_BITS_PER_TRACE).div_ceil(bloom::LINE_BYTES * 8) as u32;
        TraceFilter { probes: bloom::BLOCKED_PROBES, lines: bloom::build_blocked_lines(&hashes, lines, None) }
    }

    /// Whether the block may hold the trace whose [`trace_hash`] is `h` (`false`: certainly
    /// not). An empty filter (a block without traces) holds nothing; a filter of the wrong
    /// shape answers "maybe".
    fn may_hold(&self, h: u64) -> bool {
        let count = (self.lines.len() / bloom::LINE_BYTES) as u32;
        if count == 0 {
            return false;
        }
        let line = bloom::line_of(h, count) as usize;
        bloom::line_may_contain(
            &self.lines[line * bloom::LINE_BYTES..][..bloom::LINE_BYTES],
            h,
            self.probes,
            0,
        )
    }
}

/// The hash of a trace id: a format 8 trace section's key, and what a block's trace filter
/// holds (as [`trace_key`], all 64 bits). Compaction carries traces from block to block by it.
pub(crate) fn trace_hash(id: TraceId) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// What a trace section's entries are sorted and found by, and how its pages hold them. Every
/// form's key is held as a `u128` whose order is the entries' order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyForm {
    /// Formats 6 and 7: the trace id, 16 bytes (as a big-endian number, the ids' order).
    Id,
    /// Format 8 and 9: [`trace_hash`] of the id, 8 bytes little-endian.
    Hash,
    /// Format 10 on: [`trace_hash`] of the id, pages bit-packed ([`pack_page`]): the gaps
    /// between a page's keys in as many bits as its widest, the chunks in as many as the
    /// block's last chunk number needs.
    Packed,
}

impl KeyForm {
    /// The form a block of format `version` (6 or later) writes.
    pub(crate) fn of_version(version: u32) -> KeyForm {
        match version {
            10.. => KeyForm::Packed,
            8 | 9 => KeyForm::Hash,
            _ => KeyForm::Id,
        }
    }

    /// Bytes of a key (in the index; in the pages too before format 10).
    pub(crate) fn len(self) -> usize {
        match self {
            KeyForm::Id => 16,
            KeyForm::Hash | KeyForm::Packed => 8,
        }
    }

    /// The key of trace `id`, whose [`trace_hash`] is `hash`.
    fn key(self, id: TraceId, hash: u64) -> u128 {
        match self {
            KeyForm::Id => u128::from_be_bytes(*id.as_bytes()),
            KeyForm::Hash | KeyForm::Packed => hash as u128,
        }
    }

    /// The key stored in `bytes` (at least [`KeyForm::len`] of them).
    pub(crate) fn read(self, bytes: &[u8]) -> u128 {
        match self {
            KeyForm::Id => u128::from_be_bytes(bytes[..16].try_into().expect("16 bytes")),
            KeyForm::Hash | KeyForm::Packed => {
                u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as u128
            }
        }
    }

    /// Appends `key` as the section stores it.
    fn put(self, key: u128, out: &mut Vec<u8>) {
        match self {
            KeyForm::Id => out.extend_from_slice(&key.to_be_bytes()),
            KeyForm::Hash | KeyForm::Packed => out.extend_from_slice(&(key as u64).to_le_bytes()),
        }
    }

    /// The [`trace_hash`] of the trace whose key is `key`.
    fn hash(self, key: u128) -> u64 {
        match self {
            KeyForm::Id => xxhash_rust::xxh3::xxh3_64(&key.to_be_bytes()),
            KeyForm::Hash | KeyForm::Packed => key as u64,
        }
    }
}

/// Bits of a packed page's chunk numbers in a block of `chunks` chunks (0 for one chunk).
fn chunk_bits(chunks: usize) -> u32 {
    usize::BITS - chunks.saturating_sub(1).leading_zeros()
}

/// Appends numbers of a fixed count of bits to bytes, the first in the lowest bits.
#[derive(Default)]
struct BitWriter {
    acc: u128,
    bits: u32,
}

impl BitWriter {
    fn put(&mut self, v: u64, width: u32, out: &mut Vec<u8>) {
        if width == 0 {
            return;
        }
        self.acc |= (v as u128) << self.bits;
        self.bits += width;
        while self.bits >= 8 {
            out.push(self.acc as u8);
            self.acc >>= 8;
            self.bits -= 8;
        }
    }

    fn finish(self, out: &mut Vec<u8>) {
        if self.bits > 0 {
            out.push(self.acc as u8);
        }
    }
}

/// Reads what a [`BitWriter`] wrote.
struct BitReader<'a> {
    bytes: &'a [u8],
    at: usize,
    acc: u128,
    bits: u32,
}

impl BitReader<'_> {
    fn get(&mut self, width: u32) -> Option<u64> {
        if width == 0 {
            return Some(0);
        }
        while self.bits < width {
            self.acc |= (*self.bytes.get(self.at)? as u128) << self.bits;
            self.at += 1;
            self.bits += 8;
        }
        let v = (self.acc & ((1u128 << width) - 1)) as u64;
        self.acc >>= width;
        self.bits -= width;
        Some(v)
    }
}

/// A format 10 page of `entries` (hash keys, sorted) in a block of `chunks` chunks:
/// `width u8`, then bit-packed (the first number in the lowest bits of the first byte) the gap
/// from each key but the first to the one before, in `width` bits, then every entry's chunk
/// number in [`chunk_bits`], to a whole byte. The first key is the index's. Keys are random
/// 64-bit hashes: a page's gaps take about 64 − log2(entries of the block) + 2 bits, the
/// chunk numbers 11 bits in a 64 MiB block, against 80 bits an entry in format 9.
fn pack_page(entries: &[(u64, u32)], chunks: usize, out: &mut Vec<u8>) {
    let gaps = entries.windows(2).map(|w| w[1].0 - w[0].0);
    let width = gaps.clone().map(|g| u64::BITS - g.leading_zeros()).max().unwrap_or(0);
    out.push(width as u8);
    let mut w = BitWriter::default();
    for gap in gaps {
        w.put(gap, width, out);
    }
    let bits = chunk_bits(chunks);
    for (_, chunk) in entries {
        w.put(*chunk as u64, bits, out);
    }
    w.finish(out);
}

/// The `n` entries of a page [`pack_page`] wrote (`body`, without its crc), whose first key is
/// `first`; `None` when the body does not hold exactly them.
fn unpack_page(body: &[u8], first: u64, n: usize, chunks: usize) -> Option<Vec<(u64, u32)>> {
    let (&width, packed) = body.split_first()?;
    let bits = chunk_bits(chunks);
    let width = width as u32;
    if width > 64 || n == 0 {
        return None;
    }
    let total = (n as u64 - 1) * width as u64 + n as u64 * bits as u64;
    if packed.len() as u64 != total.div_ceil(8) {
        return None;
    }
    let mut r = BitReader { bytes: packed, at: 0, acc: 0, bits: 0 };
    let mut keys = Vec::with_capacity(n);
    keys.push(first);
    for _ in 1..n {
        let gap = r.get(width)?;
        keys.push(keys.last().expect("a first key").checked_add(gap)?);
    }
    keys.into_iter().map(|k| Some((k, r.get(bits)? as u32))).collect()
}

/// The trace section of a block being written, and what its index says of it.
pub(crate) struct TraceSection {
    /// The pages, one after the other.
    pub(crate) bytes: Vec<u8>,
    /// The first key of each page.
    pub(crate) firsts: Vec<u128>,
    /// Format 10: the bytes of each page (its crc included), which the index holds.
    pub(crate) page_lens: Vec<u32>,
    /// The trace filter, which the index holds.
    pub(crate) filter: TraceFilter,
}

fn entry_len(form: KeyForm, wide: bool) -> usize {
    form.len() + if wide { 4 } else { 2 }
}

impl TraceSection {
    /// The section of `entries` (keys of `form`, and chunks), sorted by (key, chunk) and
    /// without repeats, for a block of `chunks` chunks. The trace filter is made from the
    /// keys' [`trace_hash`]es.
    pub(crate) fn write<K: Copy + Into<u128> + Ord>(
        form: KeyForm,
        entries: &[(K, u32)],
        chunks: usize,
    ) -> TraceSection {
        debug_assert!(entries.windows(2).all(|w| w[0] < w[1]), "entries sorted and apart");
        let wide = chunks > NARROW_CHUNKS;
        let len = entry_len(form, wide);
        let mut bytes = Vec::with_capacity(entries.len() * len + entries.len() / 32 + 4);
        let mut firsts = Vec::with_capacity(entries.len().div_ceil(PAGE_ENTRIES as usize));
        let mut page_lens = Vec::new();
        let mut hash_keys = Vec::new();
        for page in entries.chunks(PAGE_ENTRIES as usize) {
            firsts.push(page[0].0.into());
            let start = bytes.len();
            if form == KeyForm::Packed {
                hash_keys.clear();
                hash_keys.extend(page.iter().map(|(key, chunk)| ((*key).into() as u64, *chunk)));
                pack_page(&hash_keys, chunks, &mut bytes);
            } else {
                for (key, chunk) in page {
                    form.put((*key).into(), &mut bytes);
                    if wide {
                        bytes.extend_from_slice(&chunk.to_le_bytes());
                    } else {
                        bytes.extend_from_slice(&(*chunk as u16).to_le_bytes());
                    }
                }
            }
            let crc = crc32fast::hash(&bytes[start..]);
            bytes.extend_from_slice(&crc.to_le_bytes());
            if form == KeyForm::Packed {
                page_lens.push((bytes.len() - start) as u32);
            }
        }
        let hashes = entries.iter().map(|(key, _)| form.hash((*key).into())).collect();
        TraceSection { bytes, firsts, page_lens, filter: TraceFilter::of(hashes) }
    }
}

impl Paged {
    /// The index of a section at `offset` with `entries` entries (keys of `form`) in pages
    /// of `per_page`, the first keys `firsts` (and for [`KeyForm::Packed`] each page's bytes,
    /// `page_lens`), in a block of `chunks` chunks whose section must end by `end`; and
    /// the trace filter `filter`, checked and given back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        form: KeyForm,
        offset: u64,
        entries: u64,
        per_page: u32,
        mut firsts: Vec<u128>,
        page_lens: &[u32],
        filter: TraceFilter,
        chunks: usize,
        end: u64,
    ) -> Result<(Paged, TraceFilter), IndexError> {
        firsts.shrink_to_fit();
        if !filter.lines.len().is_multiple_of(bloom::LINE_BYTES) || (entries > 0 && filter.lines.is_empty()) {
            return Err("the trace filter is not whole lines".into());
        }
        if per_page == 0 {
            return Err("trace section pages of 0 entries".into());
        }
        if firsts.len() as u64 != entries.div_ceil(per_page as u64) {
            return Err("trace section page count does not match its entries".into());
        }
        if firsts.windows(2).any(|w| w[0] > w[1]) {
            return Err("trace section pages out of order".into());
        }
        let mut page_ends: Vec<u64> = Vec::new();
        if form == KeyForm::Packed {
            if page_lens.len() != firsts.len() || page_lens.iter().any(|l| *l < 5) {
                return Err("trace section page lengths do not match its pages".into());
            }
            page_ends.reserve_exact(page_lens.len());
            let mut end = 0u64;
            for len in page_lens {
                end += *len as u64;
                page_ends.push(end);
            }
        }
        let p = Paged {
            offset,
            entries,
            per_page,
            form,
            wide: chunks > NARROW_CHUNKS,
            chunks,
            firsts,
            page_ends,
        };
        if offset.checked_add(p.len()).is_none_or(|e| e > end) {
            return Err("the trace section lies outside the file".into());
        }
        Ok((p, filter))
    }

    /// Where the section starts.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of the section.
    fn len(&self) -> u64 {
        match self.page_ends.last() {
            Some(end) => *end,
            None if self.form == KeyForm::Packed => 0,
            None => self.entries * self.entry_len() as u64 + self.firsts.len() as u64 * 4,
        }
    }

    fn entry_len(&self) -> usize {
        entry_len(self.form, self.wide)
    }

    /// Where page `p` lies, its bytes, and how many entries it holds.
    fn page(&self, p: usize) -> (u64, usize, usize) {
        let n = (self.entries - p as u64 * self.per_page as u64).min(self.per_page as u64) as usize;
        if self.form == KeyForm::Packed {
            let start = if p == 0 { 0 } else { self.page_ends[p - 1] };
            return (self.offset + start, (self.page_ends[p] - start) as usize, n);
        }
        let full = self.per_page as u64 * self.entry_len() as u64 + 4;
        (self.offset + p as u64 * full, n * self.entry_len() + 4, n)
    }

    /// The entries of page `p` as read from the file: crc checked, and its first key the one
    /// the index names.
    fn entries_of<'r>(
        &self,
        p: usize,
        bytes: &'r [u8],
    ) -> Result<Box<dyn Iterator<Item = (u128, u32)> + 'r>, IndexError> {
        let (_, len, n) = self.page(p);
        let (body, crc) = bytes.split_at_checked(len.saturating_sub(4)).ok_or("short trace page")?;
        if bytes.len() != len || crc32fast::hash(body).to_le_bytes() != crc {
            return Err(format!("trace section page {p} crc mismatch"));
        }
        if self.form == KeyForm::Packed {
            let entries = unpack_page(body, self.firsts[p] as u64, n, self.chunks)
                .ok_or_else(|| format!("trace section page {p} does not hold its {n} entries"))?;
            return Ok(Box::new(entries.into_iter().map(|(k, c)| (k as u128, c))));
        }
        let (form, wide) = (self.form, self.wide);
        if body.len() < form.len() || form.read(body) != self.firsts[p] {
            return Err(format!("trace section page {p} does not start with the key the index names"));
        }
        let k = form.len();
        Ok(Box::new(body.chunks_exact(self.entry_len()).map(move |e| {
            let chunk = if wide {
                u32::from_le_bytes(e[k..k + 4].try_into().expect("4 bytes"))
            } else {
                u16::from_le_bytes(e[k..k + 2].try_into().expect("2 bytes")) as u32
            };
            (form.read(e), chunk)
        })))
    }

    /// The pages an entry of key `key` may be in: from the last page starting before it to the
    /// last starting with it.
    fn pages_of(&self, key: u128) -> std::ops::Range<usize> {
        let before = self.firsts.partition_point(|f| *f < key);
        let through = self.firsts.partition_point(|f| *f <= key);
        before.saturating_sub(1)..through
    }

    fn chunks_of(
        &self,
        fs: &dyn Fs,
        path: &Path,
        ids: &[TraceId],
        filter: Option<&TraceFilter>,
    ) -> Result<BTreeSet<usize>, IndexError> {
        // Each id is hashed once, for the filter and (format 8) the section's key.
        let keys: Vec<u128> = ids
            .iter()
            .map(|id| (*id, trace_hash(*id)))
            .filter(|(_, h)| filter.is_none_or(|f| f.may_hold(*h)))
            .map(|(id, h)| self.form.key(id, h))
            .collect();
        let pages: BTreeSet<usize> = keys.iter().flat_map(|k| self.pages_of(*k)).collect();
        if pages.is_empty() {
            return Ok(BTreeSet::new());
        }
        let ranges: Vec<(u64, usize)> = pages
            .iter()
            .map(|p| {
                let (at, len, _) = self.page(*p);
                (at, len)
            })
            .collect();
        let read = fs.read_ranges(path, &ranges).map_err(|e| format!("trace section: {e}"))?;
        let mut found = BTreeSet::new();
        for (p, bytes) in pages.iter().zip(&read) {
            for (key, chunk) in self.entries_of(*p, bytes)? {
                if keys.contains(&key) {
                    found.insert(chunk as usize);
                }
            }
        }
        Ok(found)
    }

    /// Every entry, for compaction: the [`trace_hash`]es of each chunk's traces, in
    /// `per_chunk` (one list per chunk of the block). Checks every page, and that the entries
    /// are sorted and name chunks of the block.
    pub(crate) fn read_all(
        &self,
        fs: &dyn Fs,
        path: &Path,
        per_chunk: &mut [Vec<u64>],
    ) -> Result<(), IndexError> {
        let bytes = fs
            .read_range(path, self.offset, self.len() as usize)
            .map_err(|e| format!("trace section: {e}"))?;
        let mut last: Option<(u128, u32)> = None;
        for p in 0..self.firsts.len() {
            let (at, len, _) = self.page(p);
            let from = (at - self.offset) as usize;
            for (key, chunk) in self.entries_of(p, &bytes[from..from + len])? {
                if last.is_some_and(|l| l >= (key, chunk)) {
                    return Err("trace section entries out of order".into());
                }
                last = Some((key, chunk));
                per_chunk
                    .get_mut(chunk as usize)
                    .ok_or("trace section names an unknown chunk")?
                    .push(self.form.hash(key));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_wal::fs::OsFs;

    fn id(n: u64) -> TraceId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        b[8..].copy_from_slice(&(n + 1).to_be_bytes());
        TraceId::from_bytes(b).unwrap()
    }

    #[test]
    fn hashed_index_finds_every_chunk_of_a_trace_narrow_and_wide() {
        for chunk_count in [10usize, 70_000] {
            let far = chunk_count as u32 - 1;
            let pairs: Vec<(u32, u32)> = (0..1000u64)
                .flat_map(|n| [(trace_key(id(n)), (n % 7) as u32), (trace_key(id(n)), far)])
                .collect();
            let index = Hashed::new(pairs, chunk_count);
            assert_eq!(matches!(index.chunks, ChunkNumbers::Narrow(_)), chunk_count <= NARROW_CHUNKS);
            for n in [0u64, 1, 500, 999] {
                let found: Vec<usize> = index.chunks_of(id(n)).collect();
                assert_eq!(found, vec![(n % 7) as usize, far as usize], "{chunk_count} chunks, trace {n}");
            }
        }
        // Ids that differ only in their upper half (or are 64-bit ids padded with zeros) get
        // different keys.
        let padded = |n: u8| TraceId::from_bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n]).unwrap();
        assert_ne!(trace_key(padded(1)), trace_key(padded(2)));
    }

    /// The section's entries of `entries` (ids and chunks) with keys of `form`, in order.
    fn keyed(form: KeyForm, entries: &[(TraceId, u32)]) -> Vec<(u128, u32)> {
        let mut keyed: Vec<(u128, u32)> =
            entries.iter().map(|(id, c)| (form.key(*id, trace_hash(*id)), *c)).collect();
        keyed.sort_unstable();
        keyed
    }

    /// Writes a section of `entries` with keys of `form` into a file (after `lead` bytes of
    /// something else) and opens it as a paged index.
    fn paged(
        dir: &Path,
        form: KeyForm,
        entries: &[(TraceId, u32)],
        chunks: usize,
        lead: usize,
    ) -> (Paged, TraceFilter, std::path::PathBuf) {
        let section = TraceSection::write(form, &keyed(form, entries), chunks);
        let path = dir.join(format!("section-{form:?}"));
        let mut file = vec![7u8; lead];
        file.extend_from_slice(&section.bytes);
        std::fs::write(&path, &file).unwrap();
        let p = Paged::new(
            form,
            lead as u64,
            entries.len() as u64,
            PAGE_ENTRIES,
            section.firsts,
            &section.page_lens,
            section.filter,
            chunks,
            file.len() as u64,
        )
        .unwrap();
        (p.0, p.1, path)
    }

    /// Every trace's chunks are found, exactly (no other trace's), for traces whose entries
    /// cross a page boundary, and for ids before, between and after every stored one; compaction
    /// reads every entry back (as the traces' hashes). Every key form: ids (formats 6 and 7),
    /// hashes (formats 8 and 9), whose entries are 8 bytes shorter, and bit-packed hashes
    /// (format 10), whose entries are shorter still.
    #[test]
    fn paged_index_finds_exactly_the_chunks_of_a_trace_narrow_and_wide() {
        let dir = tempfile::tempdir().unwrap();
        for (form, chunk_count) in [
            (KeyForm::Id, 400usize),
            (KeyForm::Id, 70_000),
            (KeyForm::Hash, 400),
            (KeyForm::Hash, 70_000),
            (KeyForm::Packed, 1),
            (KeyForm::Packed, 400),
            (KeyForm::Packed, 70_000),
        ] {
            let far = chunk_count as u32 - 1;
            // Trace n is in chunks n % 7 and, for every third trace, the last chunk too; some
            // traces are in many chunks, so their entries cross pages.
            let mut entries: Vec<(TraceId, u32)> = (0..1000u64)
                .flat_map(|n| {
                    let many = if n % 97 == 0 { 0..300u32 } else { 0..0 };
                    [(id(n), (n % 7) as u32)]
                        .into_iter()
                        .chain((n % 3 == 0).then_some((id(n), far)))
                        .chain(many.map(move |c| (id(n), 7 + c)))
                })
                .collect();
            entries.sort_unstable();
            entries.dedup();
            if chunk_count == 1 {
                entries.iter_mut().for_each(|e| e.1 = 0);
                entries.sort_unstable();
                entries.dedup();
            }
            let (index, filter, path) = paged(dir.path(), form, &entries, chunk_count, 100);
            assert_eq!(index.wide, chunk_count > NARROW_CHUNKS);
            let fixed = |key: u64| entries.len() as u64 * (key + if index.wide { 4 } else { 2 });
            let pages = index.firsts.len() as u64 * 4;
            match form {
                KeyForm::Id => assert_eq!(index.len(), fixed(16) + pages),
                KeyForm::Hash => assert_eq!(index.len(), fixed(8) + pages),
                // A thousand traces: gaps of about 54 bits, the chunk numbers in 0, 9 or 17.
                KeyForm::Packed => assert!(index.len() < fixed(7) + pages, "{} bytes", index.len()),
            }
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 100 + index.len());
            assert!(index.firsts.len() >= 8);
            let fs = OsFs;
            // The same answers with the trace filter in memory and without it (the cache of the
            // blocks' indexes let it go): the filter only spares reads.
            for kept in [Some(&filter), None] {
                for n in 0..1000u64 {
                    let want: BTreeSet<usize> =
                        entries.iter().filter(|(i, _)| *i == id(n)).map(|(_, c)| *c as usize).collect();
                    assert_eq!(
                        index.chunks_of(&fs, &path, &[id(n)], kept).unwrap(),
                        want,
                        "{form:?}, {chunk_count} chunks, trace {n}, filter {}",
                        kept.is_some()
                    );
                }
                let both: BTreeSet<usize> = entries
                    .iter()
                    .filter(|(i, _)| *i == id(1) || *i == id(97))
                    .map(|(_, c)| *c as usize)
                    .collect();
                assert_eq!(index.chunks_of(&fs, &path, &[id(1), id(97)], kept).unwrap(), both);
                for absent in [TraceId::from_bytes([0; 16]).unwrap_or(id(5000)), id(5000), id(5001)] {
                    assert!(index.chunks_of(&fs, &path, &[absent], kept).unwrap().is_empty());
                }
            }
            let mut per_chunk = vec![Vec::new(); chunk_count];
            index.read_all(&fs, &path, &mut per_chunk).unwrap();
            let mut back: Vec<(u64, u32)> = per_chunk
                .iter()
                .enumerate()
                .flat_map(|(c, hashes)| hashes.iter().map(move |h| (*h, c as u32)))
                .collect();
            back.sort_unstable();
            let mut want: Vec<(u64, u32)> = entries.iter().map(|(id, c)| (trace_hash(*id), *c)).collect();
            want.sort_unstable();
            assert_eq!(back, want);
        }
    }

    /// The trace filter lets every stored trace through and few others: an id it rules out
    /// costs no read (asked of a file that does not exist, it answers without an error).
    #[test]
    fn the_trace_filter_spares_most_reads_for_absent_traces() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries: Vec<(TraceId, u32)> = (0..20_000u64).map(|n| (id(n), (n % 9) as u32)).collect();
        entries.sort_unstable();
        let (index, filter, path) = paged(dir.path(), KeyForm::Hash, &entries, 9, 0);
        let fs = OsFs;
        for n in (0..20_000).step_by(101) {
            assert_eq!(index.chunks_of(&fs, &path, &[id(n)], Some(&filter)).unwrap().len(), 1, "trace {n}");
        }
        let nowhere = dir.path().join("nowhere");
        let read = (1_000_000..1_010_000u64)
            .filter(|n| index.chunks_of(&fs, &nowhere, &[id(*n)], Some(&filter)).is_err())
            .count();
        assert!(read < 500, "{read} of 10,000 absent traces needed a page read");
        assert!(filter.lines.len() <= 20_000 + 64, "{} bytes of filter", filter.lines.len());
        // Without the filter every lookup reads its page.
        assert!(index.chunks_of(&fs, &nowhere, &[id(1_000_000)], None).is_err());
    }

    /// A damaged page is an error (never "not here", which would hide a trace), and an index
    /// whose pages do not fit the file or its entries is refused when the block is opened.
    #[test]
    fn damaged_pages_and_impossible_sections_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<(TraceId, u32)> = {
            let mut e: Vec<_> = (0..1000u64).map(|n| (id(n), (n % 5) as u32)).collect();
            e.sort_unstable();
            e
        };
        for form in [KeyForm::Hash, KeyForm::Packed] {
            let (index, _, path) = paged(dir.path(), form, &entries, 5, 0);
            let fs = OsFs;
            let target = entries[300].0;
            let mut bytes = std::fs::read(&path).unwrap();
            let (at, _, _) = index.page(index.pages_of(form.key(target, trace_hash(target))).start);
            bytes[at as usize + 40] ^= 1;
            std::fs::write(&path, &bytes).unwrap();
            let err = index.chunks_of(&fs, &path, &[target], None).unwrap_err();
            assert!(err.contains("crc mismatch"), "{err}");
            assert!(index.read_all(&fs, &path, &mut vec![Vec::new(); 5]).is_err());
            let section = TraceSection::write(form, &keyed(form, &entries), 5);
            let len = section.bytes.len() as u64;
            let firsts = || section.firsts.clone();
            let lens = &section.page_lens;
            let filter = || section.filter.clone();
            assert!(Paged::new(form, 0, 1000, PAGE_ENTRIES, firsts(), lens, filter(), 5, len).is_ok());
            assert!(
                Paged::new(form, 1, 1000, PAGE_ENTRIES, firsts(), lens, filter(), 5, len).is_err(),
                "past the end"
            );
            assert!(
                Paged::new(form, 0, 2000, PAGE_ENTRIES, firsts(), lens, filter(), 5, u64::MAX).is_err(),
                "page count"
            );
            assert!(Paged::new(form, 0, 1000, 0, firsts(), lens, filter(), 5, len).is_err());
            assert!(
                Paged::new(
                    form,
                    0,
                    1000,
                    PAGE_ENTRIES,
                    firsts(),
                    lens,
                    TraceFilter { probes: 8, lines: vec![0; 10] },
                    5,
                    len
                )
                .is_err(),
                "filter"
            );
            let mut reversed = firsts();
            reversed.reverse();
            assert!(
                Paged::new(form, 0, 1000, PAGE_ENTRIES, reversed, lens, filter(), 5, len).is_err(),
                "order"
            );
            if form == KeyForm::Packed {
                assert!(
                    Paged::new(form, 0, 1000, PAGE_ENTRIES, firsts(), &lens[1..], filter(), 5, len).is_err(),
                    "a page length short"
                );
                // A page that claims more or fewer bytes than its entries take, crc and all
                // intact, is refused when read.
                let mut body = section.bytes[..lens[0] as usize - 4].to_vec();
                body.push(0);
                assert!(unpack_page(&body, section.firsts[0] as u64, PAGE_ENTRIES as usize, 5).is_none());
                body.truncate(body.len() - 2);
                assert!(unpack_page(&body, section.firsts[0] as u64, PAGE_ENTRIES as usize, 5).is_none());
                let mut wide = section.bytes[..lens[0] as usize - 4].to_vec();
                wide[0] = 65;
                assert!(unpack_page(&wide, section.firsts[0] as u64, PAGE_ENTRIES as usize, 5).is_none());
            }
        }
    }

    /// Bit-packed pages give back their entries for every gap width, equal keys (a trace in
    /// several chunks), keys at the ends of the range, and one entry alone.
    #[test]
    fn packed_pages_round_trip() {
        let cases: Vec<Vec<(u64, u32)>> = vec![
            vec![(7, 3)],
            vec![(0, 0), (0, 1), (0, 2)],
            vec![(0, 0), (u64::MAX, 9)],
            vec![(1, 0), (2, 9), (1 << 40, 4), ((1 << 40) + 3, 4), (u64::MAX - 1, 0), (u64::MAX, 9)],
            (0..128u64).map(|i| (i * 0x0123_4567_89ab, (i % 10) as u32)).collect(),
        ];
        for entries in cases {
            let mut out = Vec::new();
            pack_page(&entries, 10, &mut out);
            assert_eq!(unpack_page(&out, entries[0].0, entries.len(), 10), Some(entries.clone()));
        }
        assert_eq!(chunk_bits(1), 0);
        assert_eq!(chunk_bits(2), 1);
        assert_eq!(chunk_bits(1024), 10);
        assert_eq!(chunk_bits(1025), 11);
    }
}
