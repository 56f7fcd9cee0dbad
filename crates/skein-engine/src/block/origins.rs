//! The resources and scopes of a block (format 9): each distinct one written once in the
//! index, and the sets of them that its chunks number (see `docs/format/block.md`, "Origins").
//! A block written from a head has one set; a merge keeps each source's sets (their chunks
//! are copied as they are, their indexes unchanged), translated into its own list of distinct
//! resources and scopes, and a set equal to one it has is not kept twice.

use super::*;
use skein_model::{InstrumentationScope, Resource};

/// A chunk's entry for "no set": it holds its own resources and scopes (formats before 9).
pub(crate) const OWN_ORIGINS: u32 = u32::MAX;

/// Distinct values of one kind (resources or scopes), each numbered once: found by the
/// address of their `Arc` first (the spans of a request share theirs), then by value (equal
/// ones from different requests), through a hash of their encoding.
struct Distinct<T> {
    values: Vec<Arc<T>>,
    /// Each value's encoding, by number: what orders a set canonically.
    encoded: Vec<Vec<u8>>,
    /// By address, with the `Arc` kept so that the address stays this value's.
    by_address: FxHashMap<usize, (Arc<T>, u32)>,
    /// By the xxh3 of the value's encoding: the numbers of the values with that hash.
    by_hash: FxHashMap<u64, Vec<u32>>,
    encode: fn(&mut codec::Writer, &T),
}

impl<T: PartialEq> Distinct<T> {
    fn new(encode: fn(&mut codec::Writer, &T)) -> Self {
        Distinct {
            values: Vec::new(),
            encoded: Vec::new(),
            by_address: FxHashMap::default(),
            by_hash: FxHashMap::default(),
            encode,
        }
    }

    fn number(&mut self, value: &Arc<T>) -> u32 {
        let address = Arc::as_ptr(value) as usize;
        if let Some((_, n)) = self.by_address.get(&address) {
            return *n;
        }
        let mut w = codec::Writer::default();
        (self.encode)(&mut w, value);
        let same = self.by_hash.entry(xxhash_rust::xxh3::xxh3_64(&w.buf)).or_default();
        let n = match same.iter().find(|&&n| *self.values[n as usize] == **value) {
            Some(&n) => n,
            None => {
                self.values.push(Arc::clone(value));
                self.encoded.push(w.buf);
                same.push(self.values.len() as u32 - 1);
                self.values.len() as u32 - 1
            }
        };
        self.by_address.insert(address, (Arc::clone(value), n));
        n
    }
}

/// A set of origins by the numbers of its resources and scopes among the block's.
type Set = (Vec<u32>, Vec<u32>);

/// The origin set of the chunks a writer encodes: its id, and per resource and scope (by its
/// number among the block's) its place in the set.
struct OwnSet {
    id: u32,
    resources: FxHashMap<u32, u32>,
    scopes: FxHashMap<u32, u32>,
}

/// The origins of a block being written: its distinct resources and scopes, and the sets its
/// chunks number.
pub(crate) struct OriginPool {
    resources: Distinct<Resource>,
    scopes: Distinct<InstrumentationScope>,
    sets: Vec<Set>,
    /// Sets copied from other blocks, by value: one kept for equal ones.
    set_ids: FxHashMap<Set, u32>,
    /// Per source block (by address) and its set, the set here.
    copied: FxHashMap<(usize, u32), u32>,
    /// The set of the chunks this writer encodes (made at their first span).
    own: Option<OwnSet>,
    /// The last span's resource and scope (by address) and their places in the own set: the
    /// spans of a request share both. The addresses stay theirs ([`Distinct::by_address`]).
    last: Option<(usize, usize, (u32, u32))>,
    /// Every resource and scope met (by address) and their places in the own set: spans in a
    /// trace's order change request at nearly every span, and one lookup here replaces four.
    places: FxHashMap<(usize, usize), (u32, u32)>,
}

impl Default for OriginPool {
    fn default() -> Self {
        OriginPool {
            resources: Distinct::new(codec::Writer::resource),
            scopes: Distinct::new(codec::Writer::scope),
            sets: Vec::new(),
            set_ids: FxHashMap::default(),
            copied: FxHashMap::default(),
            own: None,
            last: None,
            places: FxHashMap::default(),
        }
    }
}

impl OriginPool {
    /// Makes the set of the chunks this writer encodes from the resources and scopes of every
    /// span it will encode (each pair once or more), each ordered by its encoding. Two blocks whose spans have the
    /// same resources and scopes (heads of one deployment) then have equal sets, which a merge
    /// keeps once (in the order spans met them, every head's set differed, and a block merged
    /// from hundreds of heads held hundreds of sets).
    pub(crate) fn own_set_of<'s>(
        &mut self,
        origins: impl Iterator<Item = (&'s Arc<Resource>, &'s Arc<InstrumentationScope>)>,
    ) {
        if self.own.is_some() {
            return;
        }
        let (mut resources, mut scopes) = (Vec::new(), Vec::new());
        let (mut resource_seen, mut scope_seen) = (Vec::new(), Vec::new());
        let mut last = None;
        for (resource, scope) in origins {
            let pair = (Arc::as_ptr(resource) as usize, Arc::as_ptr(scope) as usize);
            if last == Some(pair) {
                continue;
            }
            last = Some(pair);
            for (n, seen, list) in [
                (self.resources.number(resource), &mut resource_seen, &mut resources),
                (self.scopes.number(scope), &mut scope_seen, &mut scopes),
            ] {
                if seen.len() <= n as usize {
                    seen.resize(n as usize + 1, false);
                }
                if !std::mem::replace(&mut seen[n as usize], true) {
                    list.push(n);
                }
            }
        }
        // Each distinct one once, ordered by its encoding.
        for (list, distinct) in
            [(&mut resources, &self.resources.encoded), (&mut scopes, &self.scopes.encoded)]
        {
            list.sort_unstable_by(|a, b| distinct[*a as usize].cmp(&distinct[*b as usize]));
        }
        self.sets.push((Vec::new(), Vec::new()));
        let id = self.sets.len() as u32 - 1;
        let places = |list: &[u32]| list.iter().enumerate().map(|(i, n)| (*n, i as u32)).collect();
        self.own = Some(OwnSet { id, resources: places(&resources), scopes: places(&scopes) });
        self.sets[id as usize] = (resources, scopes);
    }

    /// The id of the set of the chunks this writer encodes, once a span has a place in it.
    pub(crate) fn own_set(&self) -> Option<u32> {
        self.own.as_ref().map(|own| own.id)
    }

    /// The places of `span`'s resource and scope in the set of the chunks this writer encodes
    /// ([`OriginPool::own_set`]).
    pub(crate) fn of(&mut self, span: &Span) -> (u32, u32) {
        let (r, c) = (Arc::as_ptr(&span.resource) as usize, Arc::as_ptr(&span.scope) as usize);
        // A writer given no spans beforehand starts its set empty and fills it as spans come.
        self.own_set_of(std::iter::empty());
        let own = self.own.as_ref().expect("made above").id;
        if let Some((lr, lc, places)) = self.last
            && (lr, lc) == (r, c)
        {
            return places;
        }
        if let Some(&places) = self.places.get(&(r, c)) {
            self.last = Some((r, c, places));
            return places;
        }
        let (rn, cn) = (self.resources.number(&span.resource), self.scopes.number(&span.scope));
        let OwnSet { resources: rplace, scopes: cplace, .. } = self.own.as_mut().expect("made above");
        let set = &mut self.sets[own as usize];
        let place = |places: &mut FxHashMap<u32, u32>, list: &mut Vec<u32>, n: u32| {
            *places.entry(n).or_insert_with(|| {
                list.push(n);
                list.len() as u32 - 1
            })
        };
        let places = (place(rplace, &mut set.0, rn), place(cplace, &mut set.1, cn));
        self.last = Some((r, c, places));
        self.places.insert((r, c), places);
        places
    }

    /// The id here of set `set` of `source` (copied with one of its chunks).
    pub(crate) fn copied(&mut self, source: &Block, set: u32) -> Result<u32, BlockError> {
        if set == OWN_ORIGINS {
            return Ok(OWN_ORIGINS);
        }
        let key = (source as *const Block as usize, set);
        if let Some(&id) = self.copied.get(&key) {
            return Ok(id);
        }
        let origins = source
            .origins
            .get(set as usize)
            .ok_or_else(|| source.corrupt(format!("a chunk names origin set {set}, which is not there")))?;
        let translated: Set = (
            origins.resources.iter().map(|r| self.resources.number(r)).collect(),
            origins.scopes.iter().map(|c| self.scopes.number(c)).collect(),
        );
        let id = match self.set_ids.get(&translated) {
            Some(&id) => id,
            None => {
                self.sets.push(translated.clone());
                let id = self.sets.len() as u32 - 1;
                self.set_ids.insert(translated, id);
                id
            }
        };
        self.copied.insert(key, id);
        Ok(id)
    }

    /// Writes the origins as the index of format 9 holds them: the distinct resources, the
    /// distinct scopes, then the sets.
    pub(crate) fn write(&self, index: &mut codec::Writer) {
        index.varint(self.resources.values.len() as u64);
        for r in &self.resources.values {
            index.resource(r);
        }
        index.varint(self.scopes.values.len() as u64);
        for c in &self.scopes.values {
            index.scope(c);
        }
        index.varint(self.sets.len() as u64);
        for (resources, scopes) in &self.sets {
            for list in [resources, scopes] {
                index.varint(list.len() as u64);
                for n in list {
                    index.varint(*n as u64);
                }
            }
        }
    }
}

/// Reads what [`OriginPool::write`] wrote: the sets, each with its resources and scopes.
pub(crate) fn read(r: &mut reader::IndexReader<'_>) -> Result<Vec<columnar::ChunkOrigins>, String> {
    let mut c = r.codec();
    let n = c.count().map_err(|e| format!("origins: {e}"))?;
    let resources = (0..n)
        .map(|_| c.resource().map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("origins: {e}"))?;
    let n = c.count().map_err(|e| format!("origins: {e}"))?;
    let scopes = (0..n)
        .map(|_| c.scope().map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("origins: {e}"))?;
    let n = c.count().map_err(|e| format!("origins: {e}"))?;
    let mut sets = Vec::with_capacity(n);
    for _ in 0..n {
        let mut set = columnar::ChunkOrigins::default();
        for _ in 0..c.count().map_err(|e| format!("origins: {e}"))? {
            let i = c.varint().map_err(|e| format!("origins: {e}"))?;
            set.resources.push(Arc::clone(
                resources.get(i as usize).ok_or("origins: a set names an unknown resource")?,
            ));
        }
        for _ in 0..c.count().map_err(|e| format!("origins: {e}"))? {
            let i = c.varint().map_err(|e| format!("origins: {e}"))?;
            set.scopes
                .push(Arc::clone(scopes.get(i as usize).ok_or("origins: a set names an unknown scope")?));
        }
        sets.push(set);
    }
    r.advance_to(c.pos);
    Ok(sets)
}

/// Bytes of memory the sets hold: their lists, and each distinct resource and scope once.
pub(crate) fn memory_bytes(sets: &[columnar::ChunkOrigins]) -> usize {
    let mut seen: FxHashSet<usize> = FxHashSet::default();
    let mut bytes = std::mem::size_of_val(sets);
    for set in sets {
        bytes += (set.resources.capacity() + set.scopes.capacity()) * 8;
        for r in &set.resources {
            if seen.insert(Arc::as_ptr(r) as usize) {
                bytes += 64 + attrs_bytes(&r.attributes) + r.schema_url.len();
            }
        }
        for c in &set.scopes {
            if seen.insert(Arc::as_ptr(c) as usize) {
                bytes += 96 + attrs_bytes(&c.attributes) + c.name.len() + c.version.len();
            }
        }
    }
    bytes
}

fn attrs_bytes(attrs: &[skein_model::KeyValue]) -> usize {
    attrs
        .iter()
        .map(|kv| {
            std::mem::size_of::<skein_model::KeyValue>()
                + match &kv.value {
                    AttrValue::Str(s) if s.len() > 24 => s.len(),
                    _ => 0,
                }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_store::testdata::SpanBuilder;

    /// The origins read back as written; a set that names a resource or scope the block does
    /// not hold is refused (the block is then corrupt), not read as another one.
    #[test]
    fn origins_read_back_and_a_set_naming_an_unknown_one_is_refused() {
        let spans: Vec<Span> = ["a", "b", "a", "c", "b"]
            .iter()
            .map(|service| SpanBuilder::new(1, 1).service(service).scope("lib", "1.0").build())
            .collect();
        let mut pool = OriginPool::default();
        let places: Vec<(u32, u32)> = spans.iter().map(|s| pool.of(s)).collect();
        assert_eq!(places, [(0, 0), (1, 0), (0, 0), (2, 0), (1, 0)]);
        assert_eq!(pool.own_set(), Some(0));
        let mut index = codec::Writer::default();
        pool.write(&mut index);
        let mut r = reader::IndexReader::new(&index.buf);
        let sets = read(&mut r).unwrap();
        assert!(r.is_empty());
        assert_eq!(sets.len(), 1);
        for (s, (ri, ci)) in spans.iter().zip(&places) {
            assert_eq!(*sets[0].resources[*ri as usize], *s.resource);
            assert_eq!(*sets[0].scopes[*ci as usize], *s.scope);
        }

        for (resources, scopes, unknown) in
            [(vec![3u64], vec![0u64], "resource"), (vec![0], vec![1], "scope")]
        {
            let mut w = codec::Writer::default();
            w.varint(3);
            for s in [&spans[0], &spans[1], &spans[3]] {
                w.resource(&s.resource);
            }
            w.varint(1);
            w.scope(&spans[0].scope);
            w.varint(1);
            for list in [&resources, &scopes] {
                w.varint(list.len() as u64);
                for i in list {
                    w.varint(*i);
                }
            }
            let e = read(&mut reader::IndexReader::new(&w.buf)).unwrap_err();
            assert!(e.contains(&format!("unknown {unknown}")), "{e}");
        }
    }
}
