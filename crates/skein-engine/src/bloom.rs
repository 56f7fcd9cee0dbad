//! The per-chunk Bloom filter of block format 4: the tag values that are too many to list in a
//! chunk's postings (more than 32 for one service and key: client addresses, order ids, user
//! ids) are hashed into it, so a search for one such value, or for a value that is nowhere,
//! reads only the chunks whose filter says "maybe" instead of every chunk of the service.
//!
//! An item is the triple (service, key, value as text), hashed with xxh3-64 (a fixed,
//! portable hash: the filter is stored). The filter has 16 bits per distinct item and 11 probes
//! by double hashing, a false-positive rate of about 0.05 %. There are no false negatives.
//! (Filters written with 10 bits and 7 probes, 0.8 %, are read the same way: the probes are
//! stored and the bit count is the length. At 0.8 %, a search for one client address among
//! 6,400 chunks at 10M spans decoded about 50 chunks that did not hold it, most of its time.)
//!
//! Encoding: `probes u8` then the bit array as little-endian `u64` words (bit `i` is bit
//! `i % 64` of word `i / 64`); its length is the chunk's `bloom_len` in the index.
//!
//! Format 5 writes *blocked* filters instead ([`build_blocked`]): a chunk's filter is a number
//! of 64-byte lines, an item sets its probes in one line only, chosen by the item's hash and
//! the line count. The block stores the lines of all chunks with the same line count side by
//! side (line `j` of every such chunk, then line `j + 1`, ...), so a search asks every chunk
//! of a block about one item with one read of one line per chunk, instead of reading every
//! chunk's whole filter or keeping them all in memory.

use xxhash_rust::xxh3::xxh3_64;

/// Bits per distinct item of a format 4 filter.
#[cfg(test)]
const BITS_PER_ITEM: usize = 16;
/// Hash probes per item of a format 4 filter.
#[cfg(test)]
const PROBES: u8 = 11;

/// Bytes of a line of a blocked filter (format 5).
pub(crate) const LINE_BYTES: usize = 64;
/// Bits of a line.
const LINE_BITS: u32 = (LINE_BYTES * 8) as u32;
/// Bits per distinct item of a blocked filter, at least: more than format 4's 16, as an item's
/// bits crowd into one line (at 16 bits, 0.07 to 0.1 % false positives instead of 0.05 %;
/// at 100M spans a search for a value that is nowhere asks some 40,000 chunks, and each false
/// positive costs a chunk read of 1–3 ms).
const BLOCKED_BITS_PER_ITEM: usize = 20;
/// Probes per item of a blocked filter: about 0.025 % false positives at 20 bits per item in
/// 512-bit lines (measured by the tests below).
pub(crate) const BLOCKED_PROBES: u8 = 8;
/// The odd multipliers that make the probes of an item in its line, one per probe: the salts
/// of Parquet's split-block Bloom filter (independent multipliers; multiples of one constant
/// gave four to five times the false positives).
const SALTS: [u32; BLOCKED_PROBES as usize] =
    [0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31];

/// The hash of one (service, key, value) item. The parts are length-prefixed so that no two
/// different triples hash the same bytes.
pub(crate) fn item_hash(service: &str, key: &str, value: &str) -> u64 {
    parts_hash(&[service, key, value])
}

/// The hash of one (key, value) item of a filter written with [`UNSERVICED`]: the parts are
/// length-prefixed, as in [`item_hash`], and there are two of them.
pub(crate) fn key_item_hash(key: &str, value: &str) -> u64 {
    parts_hash(&[key, value])
}

/// xxh3-64 of `parts`, each as its length (u32, little-endian) and its bytes.
fn parts_hash(parts: &[&str]) -> u64 {
    hash_filled(parts.iter().map(|p| 4 + p.len()).sum(), |buf| {
        let mut at = 0;
        for part in parts {
            buf[at..at + 4].copy_from_slice(&(part.len() as u32).to_le_bytes());
            buf[at + 4..at + 4 + part.len()].copy_from_slice(part.as_bytes());
            at += 4 + part.len();
        }
    })
}

/// xxh3-64 of the `len` bytes `fill` writes, in a buffer on the stack when they fit: hashes are
/// taken per distinct value of a chunk and per posting of an opened block, most of them short.
pub(crate) fn hash_filled(len: usize, fill: impl FnOnce(&mut [u8])) -> u64 {
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap[..]
    };
    fill(buf);
    xxh3_64(buf)
}

/// The bit positions of `hash` in a filter of `bits` bits.
fn positions(hash: u64, probes: u8, bits: u64) -> impl Iterator<Item = u64> {
    let (h1, h2) = (hash, hash.rotate_left(32) | 1);
    (0..probes as u64).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

/// A format 4 filter over item hashes, encoded as the block stores it (format 5 writes
/// [`build_blocked`] filters; this one remains to test the reading of older blocks).
#[cfg(test)]
pub(crate) fn build(hashes: &[u64]) -> Vec<u8> {
    let words = (hashes.len() * BITS_PER_ITEM).div_ceil(64).max(1);
    let bits = (words * 64) as u64;
    let mut set = vec![0u64; words];
    for &h in hashes {
        for p in positions(h, PROBES, bits) {
            set[(p / 64) as usize] |= 1 << (p % 64);
        }
    }
    let mut out = Vec::with_capacity(1 + words * 8);
    out.push(PROBES);
    for w in set {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// Whether the encoded filter may hold `hash` (`false`: certainly not). A filter that is not a
/// valid encoding answers "maybe": it can only cost a read, never a missed span.
pub(crate) fn may_contain(filter: &[u8], hash: u64) -> bool {
    let Some((&probes, words)) = filter.split_first() else { return true };
    if probes == 0 || words.is_empty() || words.len() % 8 != 0 {
        return true;
    }
    let bits = (words.len() * 8) as u64;
    positions(hash, probes, bits).all(|p| {
        let byte = words[(p / 8) as usize];
        byte & (1 << (p % 8)) != 0
    })
}

/// Lines of a blocked filter for `items` distinct items: at least 20 bits per item, rounded up
/// to one of 4, 5, 6 or 7 times a power of two (at most 25 % more, 12 % on average), so the
/// chunks of a block fall into few groups of equal line counts: one read per group answers a
/// search for all of them.
pub(crate) fn lines_for(items: usize) -> u32 {
    let n = (items * BLOCKED_BITS_PER_ITEM).div_ceil(LINE_BITS as usize).max(1) as u32;
    if n <= 4 {
        return n;
    }
    let shift = n.ilog2() - 2;
    n.div_ceil(1 << shift) << shift
}

/// The line of a blocked filter of `lines` lines that holds `hash`: from the high 32 bits
/// (multiply and shift: uniform over any line count).
pub(crate) fn line_of(hash: u64, lines: u32) -> u32 {
    (((hash >> 32) * lines as u64) >> 32) as u32
}

/// The probes byte of a filter whose bit positions are seeded by its chunk (format 6): the
/// probe count is the low 6 bits.
pub(crate) const SEEDED: u8 = 0x80;

/// The probes byte of a filter whose items are (key, value) pairs ([`key_item_hash`]) rather
/// than (service, key, value) triples (format 9): a value that several services of a chunk
/// carry (a session id, an order id, the caller's address) is one item, not one per service
/// (on the realistic load, 1.04 items per span instead of 1.15, about 0.3 bytes per span of
/// filter). Which service carries the key is still told by the chunk's postings; a value that
/// another service of the chunk carries only makes a search read that chunk.
pub(crate) const UNSERVICED: u8 = 0x40;

/// The probe count of a probes byte (its low 6 bits).
pub(crate) fn probe_count(probes: u8) -> u8 {
    probes & !(SEEDED | UNSERVICED)
}

/// The 32 bits of `hash` that choose its bit positions in its line: the low 32 bits (format 5),
/// or, seeded (format 6), those bits mixed with the chunk's seed, so that two items sharing
/// bits in one chunk's line do not share them in another chunk's. Unseeded, the values found in
/// every chunk (the pod addresses among client addresses, users who come back) set the same
/// bits in every chunk with the same line count, and a value those bits cover is a false
/// positive in most such chunks at once: at 100M spans some client-address searches read 190
/// chunks that did not hold the value, where about 10 is the mean.
fn probe_bits(hash: u64, seed: Option<u32>) -> u32 {
    match seed {
        None => hash as u32,
        Some(seed) => {
            // murmur3's 64-bit finalizer over the hash's low half and the seed.
            let mut x = (hash & 0xffff_ffff) | (seed as u64) << 32;
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 33;
            x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            x ^= x >> 33;
            x as u32
        }
    }
}

/// The bit positions of `hash` in its line: probe `i` is the top 9 bits of [`probe_bits`]
/// times salt `i` (independent of the line's choice, which takes the high bits).
fn line_positions(hash: u64, probes: u8, seed: Option<u32>) -> impl Iterator<Item = u32> {
    let bits = probe_bits(hash, seed);
    SALTS[..probes as usize].iter().map(move |salt| bits.wrapping_mul(*salt) >> 23)
}

/// A blocked filter over item hashes: [`lines_for`] lines of [`LINE_BYTES`] bytes,
/// [`BLOCKED_PROBES`] probes per item; bit `p` of a line is bit `p % 8` of its byte `p / 8`.
/// Format 6 writers give the chunk's `seed` (its crc32); format 5 wrote unseeded filters.
pub(crate) fn build_blocked(hashes: &[u64], seed: Option<u32>) -> Vec<u8> {
    build_blocked_lines(hashes, lines_for(hashes.len()), seed)
}

/// A blocked filter of `lines` lines over item hashes (as [`build_blocked`], whose line count
/// suits tag values; a block's trace filter takes fewer bits per item).
pub(crate) fn build_blocked_lines(hashes: &[u64], lines: u32, seed: Option<u32>) -> Vec<u8> {
    let lines = lines.max(1);
    let mut out = vec![0u8; lines as usize * LINE_BYTES];
    for &h in hashes {
        let line = &mut out[line_of(h, lines) as usize * LINE_BYTES..][..LINE_BYTES];
        for p in line_positions(h, BLOCKED_PROBES, seed) {
            line[(p / 8) as usize] |= 1 << (p % 8);
        }
    }
    out
}

/// Whether `line`, the line [`line_of`] chose for `hash` in a blocked filter written with
/// the probes byte `probes` (the count, with [`SEEDED`] when the filter is seeded with `seed`),
/// may hold it (`false`: certainly not). A line of the wrong length answers "maybe".
pub(crate) fn line_may_contain(line: &[u8], hash: u64, probes: u8, seed: u32) -> bool {
    let count = probe_count(probes);
    let seed = (probes & SEEDED != 0).then_some(seed);
    if line.len() != LINE_BYTES || count == 0 || count as usize > SALTS.len() {
        return true;
    }
    line_positions(hash, count, seed).all(|p| line[(p / 8) as usize] & (1 << (p % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blocked filter asked the way a search asks it: the item's line, then its bits.
    fn blocked_contains(filter: &[u8], hash: u64) -> bool {
        seeded_contains(filter, hash, None)
    }

    fn seeded_contains(filter: &[u8], hash: u64, seed: Option<u32>) -> bool {
        let lines = (filter.len() / LINE_BYTES) as u32;
        let line = line_of(hash, lines) as usize;
        let probes = BLOCKED_PROBES | if seed.is_some() { SEEDED } else { 0 };
        line_may_contain(&filter[line * LINE_BYTES..][..LINE_BYTES], hash, probes, seed.unwrap_or(0))
    }

    /// Chunks that share most of their values (as a service's chunks do: its pods' addresses,
    /// returning users) and have the same line count: unseeded, the false positives of one
    /// value come together in many chunks at once; seeded by chunk, they are about as many
    /// in all but spread, like independent filters'.
    #[test]
    fn seeded_filters_spread_the_false_positives_of_shared_values() {
        let chunks = 400u32;
        let filters = |seeded: bool| -> Vec<(Vec<u8>, Option<u32>)> {
            (0..chunks)
                .map(|c| {
                    let items: Vec<u64> = (0..400)
                        .map(|i| item_hash("frontend", "client.address", &format!("10.0.0.{i}")))
                        .chain(
                            (0..200).map(|i| item_hash("frontend", "client.address", &format!("c{c}-{i}"))),
                        )
                        .collect();
                    let seed = seeded.then_some(c.wrapping_mul(0x9e37_79b9));
                    (build_blocked(&items, seed), seed)
                })
                .collect()
        };
        // Per absent value, the chunks whose filter lets it through.
        let false_positives = |filters: &[(Vec<u8>, Option<u32>)]| -> Vec<usize> {
            (0..3_000)
                .map(|v| {
                    let h = item_hash("frontend", "client.address", &format!("203.0.113.{v}"));
                    filters.iter().filter(|(f, seed)| seeded_contains(f, h, *seed)).count()
                })
                .collect()
        };
        let plain = false_positives(&filters(false));
        let seeded = false_positives(&filters(true));
        let (plain_max, seeded_max) = (*plain.iter().max().unwrap(), *seeded.iter().max().unwrap());
        let (plain_sum, seeded_sum) = (plain.iter().sum::<usize>(), seeded.iter().sum::<usize>());
        // Seeded filters hold every item of their chunk.
        for (f, seed) in filters(true).iter().take(3) {
            assert!((0..400).all(|i| seeded_contains(
                f,
                item_hash("frontend", "client.address", &format!("10.0.0.{i}")),
                *seed
            )));
        }
        assert!(plain_max >= 40, "unseeded: one value passes {plain_max} of {chunks} filters");
        assert!(seeded_max <= 8, "seeded: at most {seeded_max} (mean {})", seeded_sum as f64 / 3_000.0);
        assert!(seeded_sum <= plain_sum * 2 + 100, "about as many in all: {seeded_sum} against {plain_sum}");
    }

    #[test]
    fn a_blocked_filter_holds_every_item_and_few_others() {
        for n in [1usize, 7, 100, 1_000, 5_000, 12_345] {
            let items: Vec<u64> =
                (0..n).map(|i| item_hash("frontend", "client.address", &format!("10.1.{i}"))).collect();
            let filter = build_blocked(&items, None);
            let lines = lines_for(n);
            assert_eq!(filter.len(), lines as usize * LINE_BYTES);
            let bits = lines as usize * LINE_BITS as usize;
            assert!(bits >= n * BLOCKED_BITS_PER_ITEM, "{n}: at least 20 bits an item");
            assert!(bits <= (n * BLOCKED_BITS_PER_ITEM).max(4 * 512) * 5 / 4, "{n}: at most a quarter more");
            assert!(items.iter().all(|h| blocked_contains(&filter, *h)), "{n}: no false negatives");
            let others = (0..50_000)
                .filter(|i| {
                    blocked_contains(&filter, item_hash("frontend", "client.address", &format!("x{i}")))
                })
                .count();
            assert!(others < 25, "{n}: {others} false positives in 50,000 (at most 0.05 %)");
        }
    }

    #[test]
    fn line_counts_are_few_and_grow_with_the_items() {
        let counts: Vec<u32> = (0..200_000).step_by(97).map(lines_for).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
        let distinct: std::collections::BTreeSet<u32> = counts.iter().copied().collect();
        // Four steps per doubling: 1..=4, then 5, 6, 7, 8, 10, 12, 14, 16, 20, ...
        assert!(distinct.iter().all(|&n| n <= 4 || (n >> (n.ilog2() - 2)) << (n.ilog2() - 2) == n));
        assert_eq!(lines_for(0), 1);
        assert_eq!(lines_for(25), 1);
        assert_eq!(lines_for(26), 2);
        assert_eq!(lines_for(512 * 9 / 20), 10);
    }

    #[test]
    fn the_line_does_not_depend_on_the_probe_bits() {
        // Items whose hashes differ only in the low bits share a line; the high bits spread
        // items over every line.
        assert_eq!(line_of(0xffff_ffff_0000_0000, 10), line_of(0xffff_ffff_1234_5678, 10));
        let used: std::collections::BTreeSet<u32> =
            (0..1_000u64).map(|i| line_of(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()), 12)).collect();
        assert_eq!(used.len(), 12);
    }

    #[test]
    fn holds_every_item_and_few_others() {
        let items: Vec<u64> = (0..5_000)
            .map(|i| item_hash("frontend", "client.address", &format!("10.0.{}.{}", i / 250, i % 250)))
            .collect();
        let filter = build(&items);
        assert_eq!(filter.len(), 1 + (5_000 * BITS_PER_ITEM).div_ceil(64) * 8);
        assert!(items.iter().all(|h| may_contain(&filter, *h)), "no false negatives");
        let others = (0..20_000)
            .filter(|i| {
                may_contain(&filter, item_hash("frontend", "client.address", &format!("192.168.{i}")))
            })
            .count();
        let rate = others as f64 / 20_000.0;
        assert!(rate < 0.002, "false-positive rate {rate}");
        // A filter of the earlier parameters (10 bits, 7 probes) is read by its own.
        let mut old = vec![7u8];
        let bits = (5_000 * 10usize).div_ceil(64) * 64;
        let mut words = vec![0u64; bits / 64];
        for h in &items {
            for p in positions(*h, 7, bits as u64) {
                words[(p / 64) as usize] |= 1 << (p % 64);
            }
        }
        old.extend(words.iter().flat_map(|w| w.to_le_bytes()));
        assert!(items.iter().all(|h| may_contain(&old, *h)), "no false negatives in an older filter");
    }

    #[test]
    fn the_service_and_the_key_are_part_of_the_item() {
        let filter = build(&[item_hash("cart", "app.user.id", "user-1")]);
        assert!(may_contain(&filter, item_hash("cart", "app.user.id", "user-1")));
        // Moving bytes between the parts makes another item.
        assert_ne!(item_hash("cart", "app.user.id", "user-1"), item_hash("cart", "app.user.i", "duser-1"));
        assert_ne!(
            item_hash("cart", "app.user.id", "user-1"),
            item_hash("checkout", "app.user.id", "user-1")
        );
    }

    /// Filters are stored: an item's hash is xxh3-64 of its length-prefixed parts, whether they
    /// fit the stack buffer or not.
    #[test]
    fn an_item_hash_is_xxh3_of_the_length_prefixed_parts() {
        let bytes = |parts: &[&str]| -> Vec<u8> {
            parts.iter().flat_map(|p| (p.len() as u32).to_le_bytes().into_iter().chain(p.bytes())).collect()
        };
        assert_eq!(
            item_hash("cart", "app.user.id", "user-1"),
            xxh3_64(&bytes(&["cart", "app.user.id", "user-1"]))
        );
        let long = "v".repeat(1000);
        assert_eq!(item_hash("cart", "url.query", &long), xxh3_64(&bytes(&["cart", "url.query", &long])));
        assert_eq!(item_hash("", "", ""), xxh3_64(&[0; 12]));
        assert_eq!(key_item_hash("app.user.id", "user-1"), xxh3_64(&bytes(&["app.user.id", "user-1"])));
        assert_eq!(key_item_hash("url.query", &long), xxh3_64(&bytes(&["url.query", &long])));
    }

    #[test]
    fn an_empty_or_damaged_filter_answers_maybe() {
        let empty = build(&[]);
        assert!(!may_contain(&empty, item_hash("a", "b", "c")), "an empty filter holds nothing");
        for bad in [&[][..], &[7][..], &[7, 1, 2, 3][..], &[0, 0, 0, 0, 0, 0, 0, 0, 0][..]] {
            assert!(may_contain(bad, 42), "{bad:?}");
        }
    }
}
