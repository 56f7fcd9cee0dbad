//! A block's chunk postings held inverted in memory: for each (service, key) the chunks where
//! the key's values are unindexed or hashed, and for each (service, key, value) the chunks
//! that list the value, each found by a hash of what it says (no strings are kept). A value
//! most chunks of a service have (an HTTP method, a route, a host) costs one bit per chunk
//! instead of one word in every chunk's list, and a search computes the chunks that may match
//! once per block instead of walking every chunk's postings.
//!
//! Blocks of formats 2 to 10 keep postings per chunk in their index, as text; format 11 keeps
//! them inverted, by these hashes, in a section of their own ([`decode_section`]), read when a
//! search needs them (`docs/format/block.md`).

use rustc_hash::FxHashMap;

use super::{ChunkNumbers, KeyValues};
use crate::codec;

/// What an entry says of a service's key in its chunks.
#[derive(Clone, Copy)]
enum Says<'a> {
    /// The chunks list this value (its text's bytes).
    Value(&'a [u8]),
    /// The key's values are not indexed there.
    Unindexed,
    /// The key's values are in those chunks' Bloom filters.
    Hashed,
}

/// An entry's identity: a 64-bit hash of the service (its name), the key and what the entry
/// says. Nothing but the hash is kept: a value costs no string in memory, and two entries whose
/// hashes collide only make a search read a chunk it did not need to. Keys and values are
/// hashed as bytes: they are not checked as UTF-8 (a query's text hashes to the same bytes).
/// Hashed as `len(service) u32, service, len(key) u32, key, says u8, value` (lengths
/// little-endian; says: 0 unindexed, 1 hashed, 2 a value): a block's postings section
/// (format 11) holds these hashes, and compaction carries them from block to block as they are.
fn entry_hash(service: &[u8], key: &[u8], says: Says<'_>) -> u64 {
    let value = if let Says::Value(v) = says { v } else { &[] };
    let (s, k) = (service.len(), key.len());
    crate::bloom::hash_filled(9 + s + k + value.len(), |buf| {
        buf[..4].copy_from_slice(&(s as u32).to_le_bytes());
        buf[4..4 + s].copy_from_slice(service);
        buf[4 + s..8 + s].copy_from_slice(&(k as u32).to_le_bytes());
        buf[8 + s..8 + s + k].copy_from_slice(key);
        buf[8 + s + k] = match says {
            Says::Unindexed => 0,
            Says::Hashed => 1,
            Says::Value(_) => 2,
        };
        buf[9 + s + k..].copy_from_slice(value);
    })
}

/// The entries of what a chunk's postings say of one service's key, each by its hash.
pub(crate) fn entry_hashes(
    service: &[u8],
    key: &[u8],
    values: KeyValues<&[&[u8]]>,
    mut out: impl FnMut(u64),
) {
    match values {
        KeyValues::Unindexed => out(entry_hash(service, key, Says::Unindexed)),
        KeyValues::Hashed => out(entry_hash(service, key, Says::Hashed)),
        KeyValues::Listed(values) => {
            values.iter().for_each(|v| out(entry_hash(service, key, Says::Value(v))))
        }
    }
}

/// The order of entries, in memory and in a postings section: by the low 32 bits of the hash,
/// then the high ones (the hash with its halves swapped). Entries of one chunk are found by
/// their low 32 bits ([`PostingIndex::single_keys`]), so a section read in this order needs no
/// sorting.
fn order(hash: u64) -> u64 {
    hash.rotate_left(32)
}

/// Set in [`Entry::len`] when the words are a bitmap of every chunk rather than chunk numbers.
const DENSE: u32 = 1 << 31;

/// One set of chunks: `len` words of [`PostingIndex::words`] from `start`, either chunk
/// numbers (sorted) or, with [`DENSE`], a bitmap of every chunk of the block.
#[derive(Clone, Copy, Debug)]
struct Entry {
    hash: u64,
    start: u32,
    len: u32,
}

/// The postings of every chunk of a block, inverted (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct PostingIndex {
    /// In [`order`] of their hashes: what two chunks or more have.
    entries: Vec<Entry>,
    words: Vec<u32>,
    /// What one chunk alone has (most listed values: a session or user id listed in the one
    /// chunk with its few spans): the low 32 bits of its hash and the chunk, sorted, 6 bytes
    /// (8 in a block of more than 65,536 chunks) instead of an entry's 20. A 32-bit collision
    /// only adds a chunk to read.
    single_keys: Vec<u32>,
    single_chunks: ChunkNumbers,
    chunks: u32,
}

/// Gathers a block's postings chunk by chunk, in chunk order: entry hash → the chunks that have
/// it.
#[derive(Default)]
pub(crate) struct PostingIndexBuilder {
    sets: FxHashMap<u64, Vec<u32>>,
    chunks: u32,
}

impl PostingIndexBuilder {
    /// Starts the next chunk; what follows belongs to it.
    pub(crate) fn next_chunk(&mut self) {
        self.chunks += 1;
    }

    /// The current chunk's service `service` (its name) has key `key` with these values.
    pub(crate) fn add(&mut self, service: &[u8], key: &[u8], values: KeyValues<&[&[u8]]>) {
        let chunk = self.chunks.checked_sub(1).expect("next_chunk before add");
        entry_hashes(service, key, values, |hash| self.add_hash(chunk, hash));
    }

    /// Chunk `chunk` (the last one, or a new one after it) has the entry `hash`.
    pub(crate) fn add_hash(&mut self, chunk: u32, hash: u64) {
        self.chunks = self.chunks.max(chunk + 1);
        let set = self.sets.entry(hash).or_default();
        if set.last() != Some(&chunk) {
            set.push(chunk);
        }
    }

    /// The block has `chunks` chunks (the last ones may have no postings).
    pub(crate) fn set_chunks(&mut self, chunks: u32) {
        self.chunks = self.chunks.max(chunks);
    }

    /// The sets, in [`order`] of their hashes.
    fn sorted(self) -> (u32, Vec<(u64, Vec<u32>)>) {
        let mut sets: Vec<(u64, Vec<u32>)> = self.sets.into_iter().collect();
        sets.sort_unstable_by_key(|(hash, _)| order(*hash));
        (self.chunks, sets)
    }

    pub(crate) fn finish(self) -> PostingIndex {
        let (chunks, sets) = self.sorted();
        assemble(chunks, &sets)
    }

    /// The postings as an open block holds them, and as the block's postings section holds
    /// them (before compression): the block just written needs not read them back.
    pub(crate) fn finish_with_section(self) -> (PostingIndex, Vec<u8>) {
        let (chunks, sets) = self.sorted();
        (assemble(chunks, &sets), encode_section(chunks, &sets))
    }
}

/// The index of `sets`, given in [`order`] of their hashes, of a block of `chunks` chunks.
fn assemble(chunks: u32, sets: &[(u64, Vec<u32>)]) -> PostingIndex {
    let mut a = Assembler::new(chunks);
    for (hash, set) in sets {
        a.push(*hash, Set::Chunks(set));
    }
    a.finish()
}

/// The block's postings section (format 11, `docs/format/block.md`), before compression, of
/// `sets` in [`order`] of their hashes: `n_sets:varint`, then per set `hash u64`, `n:varint`,
/// and its chunks: when `n` is more than a bitmap of every chunk has 32-bit words, that bitmap
/// (words little-endian, bit `c % 32` of word `c / 32`), as an open block holds it; else the
/// first chunk `:varint` and the gaps to the next ones less one (`:varint` each).
fn encode_section(chunks: u32, sets: &[(u64, Vec<u32>)]) -> Vec<u8> {
    let dense_words = chunks.div_ceil(32) as usize;
    let mut w = codec::Writer::default();
    w.varint(sets.len() as u64);
    let mut bits = vec![0u32; dense_words];
    for (hash, set) in sets {
        w.buf.extend_from_slice(&hash.to_le_bytes());
        w.varint(set.len() as u64);
        if set.len() > dense_words {
            bits.fill(0);
            set_bits(&mut bits, set);
            bits.iter().for_each(|word| w.buf.extend_from_slice(&word.to_le_bytes()));
            continue;
        }
        let mut last = None;
        for &c in set {
            w.varint(match last {
                None => c as u64,
                Some(l) => (c - l - 1) as u64,
            });
            last = Some(c);
        }
    }
    w.buf
}

/// A set of chunks as a postings section holds it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Set<'a> {
    /// Chunk numbers, ascending.
    Chunks(&'a [u32]),
    /// A bitmap of every chunk of the block: 32-bit words, little-endian.
    Bitmap(&'a [u8]),
}

/// The words of a section's bitmap.
fn bitmap_words(bytes: &[u8]) -> impl DoubleEndedIterator<Item = u32> + Clone + '_ {
    bytes.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")))
}

/// Sets the bits of `chunks` in a bitmap of 32-bit words.
fn set_bits(bits: &mut [u32], chunks: &[u32]) {
    for c in chunks {
        bits[*c as usize / 32] |= 1 << (c % 32);
    }
}

impl Set<'_> {
    /// Each chunk of the set, ascending.
    pub(crate) fn each(self, mut f: impl FnMut(u32)) {
        match self {
            Set::Chunks(chunks) => chunks.iter().for_each(|c| f(*c)),
            Set::Bitmap(bytes) => {
                for (i, mut word) in bitmap_words(bytes).enumerate() {
                    while word != 0 {
                        f(i as u32 * 32 + word.trailing_zeros());
                        word &= word - 1;
                    }
                }
            }
        }
    }
}

/// Reads a postings section (see [`encode_section`]) of a block of `chunks`
/// chunks, giving each set (in [`order`] of the hashes) to `each`; refuses sets out of order, empty, or
/// naming a chunk the block does not have.
pub(crate) fn decode_section(
    raw: &[u8],
    chunks: u32,
    mut each: impl FnMut(u64, Set<'_>),
) -> Result<(), String> {
    let mut r = codec::Reader::new(raw);
    let err = |e: codec::DecodeError| format!("postings section: {e}");
    let n = r.count().map_err(err)?;
    let dense_words = chunks.div_ceil(32) as usize;
    let mut set = Vec::new();
    let mut last_hash = None;
    for _ in 0..n {
        let hash = u64::from_le_bytes(r.take(8).map_err(err)?.try_into().expect("8 bytes"));
        if last_hash.is_some_and(|l| order(l) >= order(hash)) {
            return Err("postings section: sets out of order".into());
        }
        last_hash = Some(hash);
        let len = usize::try_from(r.varint().map_err(err)?).unwrap_or(usize::MAX);
        if len == 0 || len > chunks as usize {
            return Err("postings section: a set of no chunks or more than the block has".into());
        }
        if len > dense_words {
            let bitmap = r.take(dense_words * 4).map_err(err)?;
            let mut words = bitmap_words(bitmap);
            let ones: usize = words.clone().map(|w| w.count_ones() as usize).sum();
            // Bits of chunks past the block's last, in its last word.
            let past_end =
                words.next_back().is_some_and(|w| !chunks.is_multiple_of(32) && w >> (chunks % 32) != 0);
            if ones != len || past_end {
                return Err("postings section: a bitmap does not hold its chunks".into());
            }
            each(hash, Set::Bitmap(bitmap));
            continue;
        }
        set.clear();
        let mut next = 0u64;
        for _ in 0..len {
            let c = next + r.varint().map_err(err)?;
            if c >= chunks as u64 {
                return Err("postings section: a set names a chunk the block does not have".into());
            }
            set.push(c as u32);
            next = c + 1;
        }
        each(hash, Set::Chunks(&set));
    }
    if !r.is_empty() {
        return Err("postings section: trailing bytes".into());
    }
    Ok(())
}

/// Builds a [`PostingIndex`] from its sets, given in [`order`] of their hashes.
pub(crate) struct Assembler {
    index: PostingIndex,
    singles: Vec<(u32, u32)>,
    dense_words: usize,
}

impl Assembler {
    pub(crate) fn new(chunks: u32) -> Assembler {
        Assembler {
            index: PostingIndex { chunks, ..PostingIndex::default() },
            singles: Vec::new(),
            dense_words: chunks.div_ceil(32) as usize,
        }
    }

    pub(crate) fn push(&mut self, hash: u64, set: Set<'_>) {
        let index = &mut self.index;
        let start = index.words.len();
        let dense = match set {
            Set::Chunks(&[chunk]) => {
                self.singles.push((hash as u32, chunk));
                return;
            }
            Set::Chunks(chunks) if chunks.len() > self.dense_words => {
                index.words.resize(start + self.dense_words, 0);
                set_bits(&mut index.words[start..], chunks);
                true
            }
            Set::Chunks(chunks) => {
                index.words.extend(chunks);
                false
            }
            Set::Bitmap(bytes) => {
                index.words.extend(bitmap_words(bytes));
                true
            }
        };
        let len = (index.words.len() - start) as u32 | if dense { DENSE } else { 0 };
        index.entries.push(Entry { hash, start: start as u32, len });
    }

    pub(crate) fn finish(self) -> PostingIndex {
        let Assembler { mut index, mut singles, .. } = self;
        index.entries.shrink_to_fit();
        index.words.shrink_to_fit();
        // Sets come in `order`: their singles by key already.
        if !singles.is_sorted_by_key(|(key, _)| *key) {
            singles.sort_unstable();
        }
        index.single_keys = singles.iter().map(|(key, _)| *key).collect();
        index.single_chunks = ChunkNumbers::new(index.chunks as usize, singles.iter().map(|(_, c)| *c));
        index
    }
}

impl PostingIndex {
    /// Bytes of memory it holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + (self.words.capacity() + self.single_keys.capacity()) * 4
            + self.single_chunks.memory_bytes()
    }

    /// Sets the bits of the chunks of the entry `hash` (if there is one) in `bits`.
    fn add_to(&self, hash: u64, bits: &mut [u64]) {
        let key = hash as u32;
        let first = self.single_keys.partition_point(|k| *k < key);
        for at in first..self.single_keys.len() {
            if self.single_keys[at] != key {
                break;
            }
            set_bit(bits, self.single_chunks.get(at));
        }
        let Ok(at) = self.entries.binary_search_by_key(&order(hash), |e| order(e.hash)) else { return };
        let e = self.entries[at];
        let words = &self.words[e.start as usize..(e.start + (e.len & !DENSE)) as usize];
        if e.len & DENSE != 0 {
            for (i, w) in words.iter().enumerate() {
                bits[i / 2] |= u64::from(*w) << (32 * (i % 2));
            }
        } else {
            for c in words {
                set_bit(bits, *c);
            }
        }
    }

    /// For one service (its name) and one tag (its key, and the texts its value may be stored
    /// as): the chunks where the service's spans may have it by postings alone (listed, or not
    /// indexed), and those where only the chunk's Bloom filter can tell (hashed), one bit per
    /// chunk.
    pub(crate) fn tag_chunks(&self, service: &str, key: &str, values: &[String]) -> (Vec<u64>, Vec<u64>) {
        let n = (self.chunks as usize).div_ceil(64);
        let (mut sure, mut hashed) = (vec![0u64; n], vec![0u64; n]);
        let (service, key) = (service.as_bytes(), key.as_bytes());
        self.add_to(entry_hash(service, key, Says::Unindexed), &mut sure);
        for v in values {
            self.add_to(entry_hash(service, key, Says::Value(v.as_bytes())), &mut sure);
        }
        self.add_to(entry_hash(service, key, Says::Hashed), &mut hashed);
        (sure, hashed)
    }
}

/// Sets bit `c` of a bitmap.
pub(crate) fn set_bit(bits: &mut [u64], c: u32) {
    bits[c as usize / 64] |= 1 << (c % 64);
}

/// Whether bit `i` of a bitmap is set.
pub(crate) fn bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_chunks_find_what_was_added() {
        // 100 chunks: service 0 lists value "GET" of key "m" in every chunk (a dense set) and
        // "PUT" in chunk 5 only (sparse); key "id" is hashed in even chunks and unindexed in
        // chunk 3; service 1 lists "PUT" in chunk 99.
        let mut b = PostingIndexBuilder::default();
        let long = "q".repeat(300);
        let (get, put) = (vec![&b"GET"[..]], vec![&b"GET"[..], b"PUT"]);
        for c in 0..100 {
            b.next_chunk();
            b.add(b"s0", b"m", KeyValues::Listed(if c == 5 { &put[..] } else { &get[..] }));
            if c % 2 == 0 {
                b.add(b"s0", b"id", KeyValues::Hashed);
            }
            if c == 3 {
                b.add(b"s0", b"id", KeyValues::Unindexed);
            }
            if c == 99 {
                b.add(b"s1", b"m", KeyValues::Listed(&put[1..]));
                // Longer than the hash's stack buffer.
                b.add(b"s1", long.as_bytes(), KeyValues::Listed(&[long.as_bytes()]));
            }
        }
        let index = b.finish();
        let ones = |bits: &[u64]| (0..100).filter(|i| bit(bits, *i)).collect::<Vec<usize>>();
        let tag = |service: &str, key: &str, value: &str| index.tag_chunks(service, key, &[value.to_owned()]);
        let (sure, hashed) = tag("s0", "m", "PUT");
        assert_eq!((ones(&sure), ones(&hashed)), (vec![5], vec![]));
        assert_eq!(ones(&tag("s0", "m", "GET").0).len(), 100);
        assert_eq!(ones(&tag("s0", "m", "POST").0), Vec::<usize>::new());
        assert_eq!(ones(&tag("s0", "x", "GET").0), Vec::<usize>::new(), "unknown key");
        let (sure, hashed) = tag("s0", "id", "42");
        assert_eq!(ones(&sure), vec![3]);
        assert_eq!(ones(&hashed), (0..100).step_by(2).collect::<Vec<_>>());
        assert_eq!(ones(&tag("s1", "m", "PUT").0), vec![99]);
        assert_eq!(ones(&tag("s1", "m", "GET").0), Vec::<usize>::new());
        assert_eq!(ones(&tag("s2", "m", "PUT").0), Vec::<usize>::new(), "unknown service");
        assert_eq!(ones(&tag("s1", &long, &long).0), vec![99], "a long key and value");
        assert_eq!(ones(&tag("s1", &long, &long[1..]).0), Vec::<usize>::new());
        // Either of a value's texts finds it.
        let (sure, _) = index.tag_chunks("s0", "m", &["POST".to_owned(), "PUT".to_owned()]);
        assert_eq!(ones(&sure), vec![5]);
        // A value in every chunk costs a bitmap (4 words for 100 chunks), not 100 words; a
        // value in one chunk costs no entry.
        assert!(index.words.len() < 20, "{} words", index.words.len());
        assert_eq!(
            index.single_keys.len(),
            4,
            "PUT in chunk 5 (service 0) and 99 (service 1), id unindexed in chunk 3, the long value"
        );
    }

    /// The postings section (format 11) gives back every set as it was gathered: an index
    /// assembled from it answers as the builder's own, and a section out of order, naming a
    /// chunk the block does not have, or cut short is refused.
    #[test]
    fn the_postings_section_reads_back_what_was_written() {
        let build = || {
            let mut b = PostingIndexBuilder::default();
            let (get, put) = (vec![&b"GET"[..]], vec![&b"GET"[..], b"PUT"]);
            for c in 0..300u32 {
                b.next_chunk();
                b.add(b"api", b"m", KeyValues::Listed(if c % 7 == 0 { &put[..] } else { &get[..] }));
                if c % 3 == 0 {
                    b.add(b"api", b"id", KeyValues::Hashed);
                }
                if c == 299 {
                    b.add(b"db", b"m", KeyValues::Unindexed);
                }
            }
            b.set_chunks(301);
            b
        };
        let (_, section) = build().finish_with_section();
        let (chunks, want) = build().sorted();
        assert_eq!(chunks, 301);
        let mut got: Vec<(u64, Vec<u32>)> = Vec::new();
        let mut a = Assembler::new(301);
        decode_section(&section, 301, |hash, set| {
            let mut chunks = Vec::new();
            set.each(|c| chunks.push(c));
            got.push((hash, chunks));
            a.push(hash, set);
        })
        .unwrap();
        assert_eq!(got, want);
        let (read, built) = (a.finish(), build().finish());
        for (service, key, value) in
            [("api", "m", "GET"), ("api", "m", "PUT"), ("api", "id", "1"), ("db", "m", "x")]
        {
            assert_eq!(
                read.tag_chunks(service, key, &[value.to_owned()]),
                built.tag_chunks(service, key, &[value.to_owned()]),
                "{service} {key} {value}"
            );
        }
        // A set in most chunks is a bitmap.
        assert!(section.len() < 1_000, "{} bytes", section.len());
        assert!(decode_section(&section, 299, |_, _| {}).is_err(), "a chunk past the block's");
        assert!(decode_section(&section[..section.len() - 1], 301, |_, _| {}).is_err(), "cut short");
        let mut extra = section.clone();
        extra.push(0);
        assert!(decode_section(&extra, 301, |_, _| {}).is_err(), "trailing bytes");
        // Two sets swapped: out of order.
        let mut w = codec::Writer::default();
        w.varint(2);
        for hash in [9u64, 3] {
            w.buf.extend_from_slice(&hash.to_le_bytes());
            w.varint(1);
            w.varint(0);
        }
        assert!(decode_section(&w.buf, 1, |_, _| {}).is_err(), "out of order");
    }

    /// A value in one chunk is found by its chunk number however many chunks the block has:
    /// 16 bits of it up to 65,536 chunks, 32 beyond.
    #[test]
    fn single_chunk_values_are_found_in_narrow_and_wide_blocks() {
        for chunks in [10u32, 1 << 16, (1 << 16) + 5] {
            let mut b = PostingIndexBuilder::default();
            let (early, late) = (vec![&b"early"[..]], vec![&b"late"[..]]);
            for c in 0..chunks {
                b.next_chunk();
                if c == 3 {
                    b.add(b"s0", b"k", KeyValues::Listed(&early[..]));
                }
                if c == chunks - 1 {
                    b.add(b"s0", b"k", KeyValues::Listed(&late[..]));
                }
            }
            let index = b.finish();
            assert_eq!(matches!(index.single_chunks, ChunkNumbers::Narrow(_)), chunks <= 1 << 16);
            assert_eq!(index.single_keys.len(), 2);
            let ones = |v: &str| {
                let (sure, _) = index.tag_chunks("s0", "k", &[v.to_owned()]);
                (0..chunks as usize).filter(|i| bit(&sure, *i)).collect::<Vec<usize>>()
            };
            assert_eq!(ones("early"), vec![3], "{chunks} chunks");
            assert_eq!(ones("late"), vec![chunks as usize - 1], "{chunks} chunks");
            assert!(ones("never").is_empty());
        }
    }
}
