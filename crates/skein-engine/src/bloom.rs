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

use xxhash_rust::xxh3::xxh3_64;

/// Bits per distinct item.
const BITS_PER_ITEM: usize = 16;
/// Hash probes per item.
const PROBES: u8 = 11;

/// The hash of one (service, key, value) item. The parts are length-prefixed so that no two
/// different triples hash the same bytes.
pub(crate) fn item_hash(service: &str, key: &str, value: &str) -> u64 {
    let mut buf = Vec::with_capacity(service.len() + key.len() + value.len() + 12);
    for part in [service, key, value] {
        buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
        buf.extend_from_slice(part.as_bytes());
    }
    xxh3_64(&buf)
}

/// The bit positions of `hash` in a filter of `bits` bits.
fn positions(hash: u64, probes: u8, bits: u64) -> impl Iterator<Item = u64> {
    let (h1, h2) = (hash, hash.rotate_left(32) | 1);
    (0..probes as u64).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

/// A filter over item hashes, encoded as the block stores it.
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn an_empty_or_damaged_filter_answers_maybe() {
        let empty = build(&[]);
        assert!(!may_contain(&empty, item_hash("a", "b", "c")), "an empty filter holds nothing");
        for bad in [&[][..], &[7][..], &[7, 1, 2, 3][..], &[0, 0, 0, 0, 0, 0, 0, 0, 0][..]] {
            assert!(may_contain(bad, 42), "{bad:?}");
        }
    }
}
