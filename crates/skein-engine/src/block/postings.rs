//! A chunk's postings (per service, the tag keys its spans carry and their values, or a Bloom
//! filter of them when there are many) as the writer gathers them.

use super::*;
use crate::columnar::ChunkVisitor;

/// A posting value while a chunk's postings are gathered: a string by its slot in the chunk's
/// string table, or an integer (written as decimal text in the index).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueId {
    Text(u32),
    Int(i64),
}

/// One service's key while a chunk's postings are gathered.
struct KeyState {
    service: u32,
    /// The key's slot.
    key: u32,
    /// How many times the key was added.
    count: u32,
    /// The value added last.
    last: Option<ValueId>,
    /// Every value added that differs from the one added before it (and, for a string, from
    /// any the key added since another key added it), or `None` once a value is not matched
    /// by text.
    values: Option<Values>,
}

/// A key's values while a chunk's postings are gathered, strings (by slot) and integers
/// apart: sorted as plain integers, and deduplicated, once the chunk is gathered.
#[derive(Default)]
struct Values {
    texts: Vec<u32>,
    ints: Vec<i64>,
}

/// A chunk's postings while they are gathered, by integers: per (service, key slot), its
/// [`KeyState`]. Gathered as the chunk encoder meets each span and attribute (it is the
/// encoder's [`ChunkVisitor`]), then [`finish`](Self::finish)ed into [`KeyPostings`] and the
/// chunk's Bloom filter. Values are pushed, not put in a set: most repeat the key's last one
/// (methods, routes, peers of one operation) or a string the key added since another key
/// added it, and are not pushed at all, and the rest are sorted once.
pub(crate) struct Gathering<'s> {
    /// Each span's service, by its place among the spans encoded.
    services: &'s [u32],
    /// Each span's resource and scope by their places in the chunk's set of origins (equal
    /// ones have one place), by its place among the spans encoded; empty when the chunk has
    /// none (its spans' resources and scopes are then told apart by address).
    origins: &'s [(u32, u32)],
    /// The service of the span being visited.
    service: u32,
    keys: Vec<KeyState>,
    /// By string slot, the state that added it as a value last (`u32::MAX`: none): a state
    /// that adds a value again before another does has it already, and does not push it.
    /// Low-cardinality values (methods, statuses, peers) are pushed about once per key, not
    /// once per span, and the lists to sort stay short.
    added_by: Vec<u32>,
    /// By key slot: the states of the key, with their services (a key is carried by a few
    /// services; most slots are values, and have none).
    by_key: Vec<Vec<(u32, u32)>>,
    /// Each resource is listed once per service. Resources are told apart by their place in
    /// the chunk's origins, not their address: every request brings its own copy, and the
    /// spans of a chunk come from many requests.
    resources_seen: FxHashSet<(u32, usize)>,
    last_resource: Option<(u32, usize)>,
    /// The synthetic tags follow from kind, status and scope: most spans repeat those of an
    /// earlier one.
    synthetic_seen: FxHashSet<(u32, u8, u8, usize)>,
}

impl<'s> Gathering<'s> {
    pub(crate) fn new(services: &'s [u32], origins: &'s [(u32, u32)]) -> Self {
        Gathering {
            services,
            origins,
            service: 0,
            keys: Vec::new(),
            added_by: Vec::new(),
            by_key: Vec::new(),
            resources_seen: FxHashSet::default(),
            last_resource: None,
            synthetic_seen: FxHashSet::default(),
        }
    }

    /// The state of `service`'s `key`, made when new. Inlined, the state made apart: it is
    /// asked for every attribute of every span, and nearly always found.
    #[inline]
    fn state(&mut self, service: u32, key: u32) -> u32 {
        if let Some(states) = self.by_key.get(key as usize)
            && let Some(&(_, state)) = states.iter().find(|(s, _)| *s == service)
        {
            return state;
        }
        self.new_state(service, key)
    }

    /// The state of a key `service` has not added yet, made.
    #[cold]
    #[inline(never)]
    fn new_state(&mut self, service: u32, key: u32) -> u32 {
        if self.by_key.len() <= key as usize {
            self.by_key.resize_with(key as usize + 1, Vec::new);
        }
        let states = &mut self.by_key[key as usize];
        let state = self.keys.len() as u32;
        self.keys.push(KeyState { service, key, count: 0, last: None, values: Some(Values::default()) });
        states.push((service, state));
        state
    }

    fn add_to(&mut self, state: u32, value: Option<ValueId>) {
        let k = &mut self.keys[state as usize];
        k.count += 1;
        let Some(values) = &mut k.values else { return };
        match value {
            Some(v) if k.last == Some(v) => {}
            Some(v) => {
                k.last = Some(v);
                match v {
                    ValueId::Text(slot) => {
                        if self.added_by.len() <= slot as usize {
                            self.added_by.resize(slot as usize + 1, u32::MAX);
                        }
                        if std::mem::replace(&mut self.added_by[slot as usize], state) != state {
                            values.texts.push(slot);
                        }
                    }
                    ValueId::Int(i) => values.ints.push(i),
                }
            }
            None => k.values = None,
        }
    }

    fn add(&mut self, key: u32, value: Option<ValueId>) {
        let state = self.state(self.service, key);
        self.add_to(state, value);
    }

    /// The postings of the chunk: per service and key, every tag a search can match on (span,
    /// resource and event attributes, event names, and the synthetic tags), and the chunk's
    /// Bloom filter of the values of keys with too many to list (empty when there are none).
    /// `strings` are the chunk's, as the encoder left them. The filter's items are (key,
    /// value) pairs ([`bloom::UNSERVICED`]), each once, and it is seeded with `seed` (the
    /// chunk's crc32: see [`bloom::build_blocked`]).
    pub(crate) fn finish<'a>(self, strings: &ChunkStrings<'a>, seed: u32) -> (Vec<KeyPostings<'a>>, Vec<u8>) {
        let text = |v: ValueId| match v {
            ValueId::Text(slot) => Cow::Borrowed(strings.text(slot)),
            ValueId::Int(i) => Cow::Owned(itoa::Buffer::new().format(i).to_owned()),
        };
        let mut hashes = Vec::new();
        let mut postings = Vec::with_capacity(self.keys.len());
        for k in self.keys {
            let key = strings.text(k.key);
            let values = match k.values {
                None => KeyValues::Unindexed,
                Some(Values { mut texts, mut ints }) => {
                    texts.sort_unstable();
                    texts.dedup();
                    ints.sort_unstable();
                    ints.dedup();
                    let distinct = texts.len() + ints.len();
                    let values =
                        texts.into_iter().map(ValueId::Text).chain(ints.into_iter().map(ValueId::Int));
                    if listed(distinct, k.count) {
                        KeyValues::Listed(values.map(text).collect())
                    } else {
                        let mut digits = itoa::Buffer::new();
                        hashes.extend(values.map(|v| match v {
                            ValueId::Text(slot) => bloom::key_item_hash(key, strings.text(slot)),
                            ValueId::Int(i) => bloom::key_item_hash(key, digits.format(i)),
                        }));
                        KeyValues::Hashed
                    }
                }
            };
            postings.push(KeyPostings { service: k.service, key, values });
        }
        // A value several services carry is one item.
        hashes.sort_unstable();
        hashes.dedup();
        let filter = if hashes.is_empty() { Vec::new() } else { bloom::build_blocked(&hashes, Some(seed)) };
        (postings, filter)
    }
}

impl<'a> ChunkVisitor<'a> for Gathering<'_> {
    /// A span's resource attributes (when its resource is new to its service in the chunk),
    /// its events, and its synthetic tags (when new).
    fn span(&mut self, strings: &mut ChunkStrings<'a>, input: u32, s: &'a Span) {
        self.service = self.services[input as usize];
        let service = self.service;
        let (resource, scope) = match self.origins.get(input as usize) {
            Some(&(r, c)) => (r as usize, c as usize),
            None => (Arc::as_ptr(&s.resource) as usize, Arc::as_ptr(&s.scope) as usize),
        };
        let resource = (service, resource);
        if self.last_resource != Some(resource) && self.resources_seen.insert(resource) {
            for kv in &s.resource.attributes {
                let key = strings.slot(&kv.key);
                self.add(key, posting_value(strings, &kv.value));
            }
        }
        self.last_resource = Some(resource);
        for e in &s.events {
            let (key, name) = (strings.slot("event"), strings.slot(&e.name));
            self.add(key, Some(ValueId::Text(name)));
            for kv in &e.attributes {
                let key = strings.slot(&kv.key);
                self.add(key, posting_value(strings, &kv.value));
            }
        }
        if s.status.message.is_empty()
            && !self.synthetic_seen.insert((service, s.kind.code(), s.status.code.code(), scope))
        {
            return;
        }
        for (k, v) in skein_store::synthetic_tags_of(s) {
            let (key, value) = (strings.slot(k), strings.slot(v));
            self.add(key, Some(ValueId::Text(value)));
        }
    }

    fn attribute(
        &mut self,
        strings: &mut ChunkStrings<'a>,
        key: u32,
        value: &'a AttrValue,
        value_slot: Option<u32>,
    ) {
        let value = match value_slot {
            Some(slot) => Some(ValueId::Text(slot)),
            None => posting_value(strings, value),
        };
        let state = self.state(self.service, key);
        self.add_to(state, value);
    }
}

/// What a chunk's postings say of one service's key: its values (listed, as text), or that
/// they are in the chunk's Bloom filter, or not indexed.
pub(crate) struct KeyPostings<'a> {
    pub(crate) service: u32,
    pub(crate) key: &'a str,
    pub(crate) values: KeyValues<Vec<Cow<'a, str>>>,
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
    /// values repeating and changing, a value two keys share (added by turns), and a key that
    /// has a double among its integers.
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
                    0 => vec![("session", session), ("route", route.clone()), ("n", n), ("from", route)],
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
        let mut gathering = Gathering::new(&services, &[]);
        let encoded = columnar::encode_chunk_detailed(&refs, None, &mut gathering, Default::default());
        let (got, _) = gathering.finish(&encoded.strings, 1);
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
            let got = &got.iter().find(|p| p.service == service && p.key == key).unwrap().values;
            let got = match got {
                KeyValues::Listed(v) => KeyValues::Listed(v.iter().map(|v| v.to_string()).collect()),
                KeyValues::Hashed => KeyValues::Hashed,
                KeyValues::Unindexed => KeyValues::Unindexed,
            };
            let expected = match values {
                None => KeyValues::Unindexed,
                Some(v) if listed(v.len(), count) => KeyValues::Listed(v),
                Some(_) => KeyValues::Hashed,
            };
            assert_eq!(got, expected, "service {service} key {key}");
            checked += 1;
        }
        assert_eq!(checked, 10, "five keys in each of two services");
        let said = |key: &str| got.iter().filter(|p| p.key == key).map(|p| &p.values).collect::<Vec<_>>();
        assert!(said("n").iter().any(|v| matches!(v, KeyValues::Unindexed)));
        assert!(said("id").iter().any(|v| matches!(v, KeyValues::Hashed)));
        assert!(said("route").iter().any(|v| matches!(v, KeyValues::Listed(_))));
    }

    /// A chunk's postings do not depend on how its spans came in requests: a resource a
    /// service sent in many requests (each with its own copy) counts once, as when all its
    /// spans share one copy. Ten pods, each value once per resource: too many to list.
    #[test]
    fn resources_count_once_however_many_requests_brought_them() {
        let postings = |shared: bool| {
            let pods: Vec<Arc<skein_model::Resource>> = (0..10)
                .map(|p| {
                    SpanBuilder::new(1, 1)
                        .resource_attr("k8s.pod.name", AttrValue::Str(format!("pod-{p}").into()))
                        .build()
                        .resource
                })
                .collect();
            let mut spans = Vec::new();
            let mut origins = Vec::new();
            for i in 0..60u8 {
                let pod = i as usize % 10;
                let mut s = SpanBuilder::new(i / 6 + 1, i + 1).build();
                s.resource = if shared { Arc::clone(&pods[pod]) } else { Arc::new((*pods[pod]).clone()) };
                spans.push(s);
                origins.push((pod as u32, 0));
            }
            let refs: Vec<&Span> = spans.iter().collect();
            let services = vec![0; spans.len()];
            let mut gathering = Gathering::new(&services, &origins);
            let encoded = columnar::encode_chunk_detailed(&refs, None, &mut gathering, Default::default());
            let (got, _) = gathering.finish(&encoded.strings, 1);
            let pod = got.iter().find(|p| p.key == "k8s.pod.name").map(|p| match &p.values {
                KeyValues::Listed(v) => {
                    KeyValues::Listed(v.iter().map(|v| v.to_string()).collect::<Vec<_>>())
                }
                KeyValues::Hashed => KeyValues::Hashed,
                KeyValues::Unindexed => KeyValues::Unindexed,
            });
            (pod, got.len())
        };
        assert_eq!(postings(true), postings(false));
        assert_eq!(postings(false).0, Some(KeyValues::Hashed));
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
