//! A chunk's postings (per service, the tag keys its spans carry and their values, or a Bloom
//! filter of them when there are many) as the writer gathers them.

use super::*;

/// A posting value while a chunk's postings are gathered: a string by its slot in the chunk's
/// string table, or an integer (written as decimal text in the index).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ValueId {
    Text(u32),
    Int(i64),
}

/// Postings while a chunk is gathered, by integers: (service, key slot) → how many times the
/// key was added, the value added last, and its distinct values, or `None` once a value is
/// not matched by text. Turned into [`Postings`] (and the chunk's Bloom filter) once per chunk.
pub(crate) type BuildingPostings = FxHashMap<(u32, u32), (u32, Option<ValueId>, Option<FxHashSet<ValueId>>)>;

pub(crate) fn add_posting(p: &mut BuildingPostings, service: u32, key: u32, value: Option<ValueId>) {
    let (count, last, entry) =
        p.entry((service, key)).or_insert_with(|| (0, None, Some(FxHashSet::default())));
    *count += 1;
    let Some(values) = entry else { return };
    match value {
        // Most values repeat the key's last one (methods, routes, peers of one operation):
        // those are in the set already.
        Some(v) if *last == Some(v) => {}
        Some(v) => {
            *last = Some(v);
            values.insert(v);
        }
        None => *entry = None,
    }
}

/// Whether a key's `distinct` values, added `count` times, are listed in the postings (few,
/// and repeating: methods, routes, status codes, peers) rather than hashed into the Bloom
/// filter. Values that are mostly unique (order, tracking, transaction ids, amounts: one per
/// request) are hashed even when a chunk has few of them: listed, each would be a string the
/// block keeps in memory for as long as it exists (about 17 bytes of index per span on the
/// realistic load), for a search the filter answers as well.
fn listed(distinct: usize, count: u32) -> bool {
    distinct <= MAX_POSTING_VALUES && (distinct <= 4 || distinct * 2 <= count as usize)
}

/// The posting value of an attribute value: strings and booleans as text, integers as numbers,
/// anything else is not matched by text.
pub(crate) fn posting_value<'a>(strings: &mut ChunkStrings<'a>, v: &'a AttrValue) -> Option<ValueId> {
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
/// they are not hashed again. The filter's items are (key, value) pairs ([`bloom::UNSERVICED`]),
/// each once, and it is seeded with `seed` (the chunk's crc32: see [`bloom::build_blocked`]).
pub(crate) fn chunk_postings<'a>(
    spans: &[&'a Span],
    services: &[u32],
    encoded: &mut columnar::EncodedChunk<'a>,
    seed: u32,
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
    for ((service, key), (count, _, values)) in p {
        let key = strings.text(key);
        let values = match values {
            None => KeyValues::Unindexed,
            Some(values) if listed(values.len(), count) => KeyValues::Listed(
                values
                    .into_iter()
                    .map(|v| match v {
                        ValueId::Text(slot) => strings.text(slot).to_owned(),
                        ValueId::Int(i) => digits.format(i).to_owned(),
                    })
                    .collect(),
            ),
            Some(values) => {
                hashes.extend(values.into_iter().map(|v| match v {
                    ValueId::Text(slot) => bloom::key_item_hash(key, strings.text(slot)),
                    ValueId::Int(i) => bloom::key_item_hash(key, digits.format(i)),
                }));
                KeyValues::Hashed
            }
        };
        by_service.entry(service).or_default().insert(key.to_owned(), values);
    }
    // A value several services carry is one item.
    hashes.sort_unstable();
    hashes.dedup();
    let filter = if hashes.is_empty() { Vec::new() } else { bloom::build_blocked(&hashes, Some(seed)) };
    (by_service.into_iter().collect(), filter)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use skein_store::testdata::SpanBuilder;
    use skein_store::{SpanMatcher, TraceQuery};

    use super::*;

    /// The text a span attribute value is indexed under (as [`chunk_postings`] writes it).
    fn indexed_text(v: &AttrValue) -> Option<String> {
        let mut strings = ChunkStrings::default();
        posting_value(&mut strings, v).map(|id| match id {
            ValueId::Text(slot) => strings.text(slot).to_owned(),
            ValueId::Int(i) => i.to_string(),
        })
    }

    /// Whether a search for `k=want` matches a span with the attribute `k=v`, and whether the
    /// index's pruning (the texts `SpanMatcher::indexed_tags` gives) would find that span.
    fn matched_and_found(v: &AttrValue, want: &str) -> (bool, bool) {
        let span = SpanBuilder::new(1, 1).attr("k", v.clone()).build();
        let q = TraceQuery { tags: vec![("k".into(), want.into())], ..TraceQuery::default() };
        let m = SpanMatcher::new(&q);
        let found = match indexed_text(v) {
            Some(text) => m.indexed_tags()[0].1.contains(&text),
            // Not indexed by text: the key is unindexed in the chunk, which is never ruled out.
            None => true,
        };
        (m.matches(&span), found)
    }

    #[test]
    fn integers_are_found_under_their_canonical_text() {
        assert_eq!(matched_and_found(&AttrValue::Int(7), "007"), (true, true));
        assert_eq!(matched_and_found(&AttrValue::Int(7), "+7"), (true, true));
        assert_eq!(matched_and_found(&AttrValue::Str("007".into()), "007"), (true, true));
        assert_eq!(matched_and_found(&AttrValue::Bool(true), "true"), (true, true));
        assert_eq!(matched_and_found(&AttrValue::Double(1.5), "1.5"), (true, true));
        assert!(!matched_and_found(&AttrValue::Str("7".into()), "007").0);
    }

    /// Per service and key: the times added, and the values as text (`None`: one was not text).
    type Added = (u32, Option<BTreeSet<String>>);

    /// A chunk's postings of span attributes are what adding every attribute one by one gives:
    /// per service and key, the values listed when few and repeating, hashed when many,
    /// unindexed once one is not text — with keys in varying orders, services alternating,
    /// values repeating and changing, and a key that has a double among its integers.
    #[test]
    fn span_attribute_postings_are_the_values_added_one_by_one() {
        let mut spans = Vec::new();
        for t in 1..=5u8 {
            for i in 1..=12u8 {
                let mut b = SpanBuilder::new(t, i).service(["a", "b"][(i as usize / 3) % 2]);
                let session = AttrValue::Str(format!("s-{t}").into());
                let route = AttrValue::Str(format!("/r/{}", i % 3).into());
                let n =
                    if t == 3 && i == 5 { AttrValue::Double(0.5) } else { AttrValue::Int((i % 4) as i64) };
                let attrs = match i % 3 {
                    0 => vec![("session", session), ("route", route), ("n", n)],
                    1 => vec![("route", route), ("session", session)],
                    _ => vec![
                        ("n", n),
                        ("session", session),
                        ("id", AttrValue::Str(format!("{t}-{i}").into())),
                    ],
                };
                for (k, v) in attrs {
                    b = b.attr(k, v);
                }
                spans.push(b.build());
            }
        }
        let refs: Vec<&Span> = spans.iter().collect();
        let services: Vec<u32> = spans.iter().map(|s| u32::from(s.service_name() == "b")).collect();
        let mut encoded = columnar::encode_chunk_detailed(&refs, None);
        let (got, _) = chunk_postings(&refs, &services, &mut encoded, 1);
        // One by one: per (service, key), the times added and the values as text.
        let mut want: BTreeMap<(u32, String), Added> = BTreeMap::new();
        for (s, service) in spans.iter().zip(&services) {
            for kv in &s.attributes {
                let e = want.entry((*service, kv.key.to_string())).or_insert((0, Some(BTreeSet::new())));
                e.0 += 1;
                match (&mut e.1, indexed_text(&kv.value)) {
                    (Some(values), Some(text)) => {
                        values.insert(text);
                    }
                    (values, _) => *values = None,
                }
            }
        }
        let mut checked = 0;
        for ((service, key), (count, values)) in want {
            let got = got.iter().find(|(s, _)| *s == service).and_then(|(_, p)| p.get(&key)).unwrap();
            let expected = match values {
                None => KeyValues::Unindexed,
                Some(v) if listed(v.len(), count) => KeyValues::Listed(v),
                Some(_) => KeyValues::Hashed,
            };
            assert_eq!(got, &expected, "service {service} key {key}");
            checked += 1;
        }
        assert_eq!(checked, 8, "four keys in each of two services");
        assert!(got.iter().any(|(_, p)| p.get("n") == Some(&KeyValues::Unindexed)));
        assert!(got.iter().any(|(_, p)| p.get("id") == Some(&KeyValues::Hashed)));
        assert!(got.iter().any(|(_, p)| matches!(p.get("route"), Some(KeyValues::Listed(_)))));
    }

    proptest! {
        /// Pruning never loses a match: whatever value `SpanMatcher` accepts is indexed under
        /// one of the texts it gives the index.
        #[test]
        fn what_the_matcher_accepts_the_index_finds(
            v in prop_oneof![
                prop::sample::select(vec!["7", "007", "+7", "-0", "0", "true", "x", ""]).prop_map(|s| AttrValue::Str(s.into())),
                (-10i64..10).prop_map(AttrValue::Int),
                any::<bool>().prop_map(AttrValue::Bool),
                (-4i32..4).prop_map(|d| AttrValue::Double(d as f64 / 2.0)),
            ],
            want in prop::sample::select(vec!["7", "007", "+7", "-7", "0", "-0", "00", "true", "false", "1.5", "-1", "x", ""]),
        ) {
            let (matched, found) = matched_and_found(&v, want);
            prop_assert!(!matched || found, "{v:?} matches {want:?} but the index would rule it out");
        }
    }

    #[test]
    fn few_repeating_values_are_listed_and_unique_ones_hashed() {
        assert!(listed(3, 3), "up to four values are listed however often they occur");
        assert!(listed(10, 40), "routes, peers: repeating");
        assert!(!listed(10, 12), "ids: mostly one per span");
        assert!(!listed(33, 1000), "more than the postings hold");
        assert!(listed(32, 64));
    }
}
