//! The columnar chunk encoding of block format v3: the spans of whole traces, column by column,
//! with every string in one dictionary, trace ids written once per trace, parents as positions
//! inside the trace, and times as offsets from the trace's start. The columns are laid out one
//! after another so that zstd (applied by the block writer) sees long runs of alike values.
//! Specified in `docs/format/block.md`. Decoding checks every index and length and never panics.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use skein_model::{
    AttrValue, Event, InstrumentationScope, KeyValue, Link, Resource, Span, SpanId, SpanKind, Status,
    StatusCode, TraceId,
};

use crate::codec::{DecodeError, Origins, Reader, Writer, err, u32_of};

/// First byte of a columnar chunk (row-encoded batches start with 1).
pub const COLUMNAR_VERSION: u8 = 3;

/// The columnar version before span attribute values were grouped by key (still read).
const COLUMNAR_VERSION_2: u8 = 2;

/// Version 3 whose resources and scopes are the block's (block format 9): the chunk's
/// `Tables` column lists none, and its `Origins` column numbers them in the chunk's set of the
/// block's origins ([`ChunkOrigins`]), given to the decoder. Resources recur in every chunk (a
/// few dozen per chunk, a kilobyte or more each, with ids no compressor shortens): written
/// once per block they cost about 1.4 bytes per span fewer on the realistic load. Version 4
/// also holds a trace's spans by start and writes a span's start relative to its previous
/// sibling's end, or its parent's start, when its parent is written before it (starts 3.1 → 2.2
/// bytes per span).
pub const COLUMNAR_VERSION_SHARED_ORIGINS: u8 = 4;

/// Version 4 with these changes (block format 10), each measured on 1,500-span chunks of the
/// realistic load:
/// - a span attribute value equal to the value of its key on the last span before it with the
///   same name is written as a repeat tag (9): a method, port, route or peer is mostly fixed per
///   operation, and zstd shortens a value that recurs less well than one byte that recurs
///   (attribute values 5.1 → 4.1 bytes per span);
/// - starts and durations are varints stored by byte position: the first byte of each in
///   `Starts` (`Durations`), the second in a column of its own, the third in another, the rest
///   in a fourth, so that zstd's entropy coder sees the random low bytes apart from the
///   skewed high ones (5.35 → 4.77 bytes per span);
/// - the unique strings follow the dictionary in the `Strings` column (`Uniques` is empty),
///   one zstd frame for both: a URL query holds the session id the dictionary holds (with a
///   column dictionary of a big merge: 5.37 → 5.02); and a string there that is a lowercase
///   UUID or hex id is written as its bytes, in a column of its own (`HexBytes`, see
///   `put_text`): as text, its random digits cost zstd more than 4 bits each (chunks
///   26.93 → 26.83 bytes per span on the realistic load, whose session ids in URL queries
///   matched the dictionary's text before).
pub const COLUMNAR_VERSION_REPEATS: u8 = 5;

/// Whether a decompressed chunk (by its first byte) is columnar rather than a row batch (whose
/// first byte is its version, 1).
pub fn is_columnar(first: Option<&u8>) -> bool {
    matches!(
        first,
        Some(
            &COLUMNAR_VERSION_2
                | &COLUMNAR_VERSION
                | &COLUMNAR_VERSION_SHARED_ORIGINS
                | &COLUMNAR_VERSION_REPEATS
        )
    )
}

/// The resources and scopes a chunk of [`COLUMNAR_VERSION_SHARED_ORIGINS`] numbers: its set of
/// the block's origins, in the order of the chunk's indexes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkOrigins {
    pub resources: Vec<Arc<Resource>>,
    pub scopes: Vec<Arc<InstrumentationScope>>,
}

/// The columns of starts and durations (version 5: by byte position).
const STARTS: (Col, [Col; 3]) = (Col::Starts, [Col::StartsByte2, Col::StartsByte3, Col::StartsBytesRest]);
const DURATIONS: (Col, [Col; 3]) =
    (Col::Durations, [Col::DurationsByte2, Col::DurationsByte3, Col::DurationsBytesRest]);

/// The columns, in the order they are written.
#[derive(Clone, Copy)]
enum Col {
    /// The string dictionary.
    Strings,
    /// Resources and scopes.
    Tables,
    /// Per trace: 16-byte id.
    TraceIds,
    /// Per trace: number of spans.
    TraceSpans,
    /// Per trace: start (earliest span start), zigzag delta from the previous trace's.
    TraceStarts,
    /// Per span: 8-byte id.
    SpanIds,
    /// Per span: 0 = root, k = the k-th span of the trace (1-based), else `n + 1` = a parent
    /// that is not in the trace, whose id follows in `ForeignParents`.
    Parents,
    ForeignParents,
    /// Per span: start minus the trace's start.
    Starts,
    /// Per span: end minus start, zigzag (an end before the start is kept as it came).
    Durations,
    /// Per span: name (string index).
    Names,
    /// Per span: kind | status code << 3.
    KindStatus,
    /// Per span: resource index, scope index.
    Origins,
    /// Per span: flags.
    Flags,
    /// Per span: number of attributes; then per attribute its key (string index).
    AttrKeys,
    /// Per attribute: its value (type tag, payload).
    AttrValues,
    /// Per span: trace state, status message (string indexes), dropped attribute, event and link
    /// counts, then the events and links.
    Rest,
    /// Attribute string values that occur once in the chunk (ids, timestamps…), inline: they
    /// would only cost a dictionary index more. Empty in version 5 (they follow the dictionary).
    Uniques,
    /// Version 5: the second byte of each start's varint that has one…
    StartsByte2,
    /// …the third…
    StartsByte3,
    /// …and the fourth and further ones.
    StartsBytesRest,
    /// The same for durations.
    DurationsByte2,
    DurationsByte3,
    DurationsBytesRest,
    /// Version 5: the bytes of the hex ids among the texts of `Strings` (see [`put_text`]): the
    /// dictionary's, then per group of `AttrValues` (`len:varint bytes`) its unique strings'.
    HexBytes,
}

/// Columns of version 5, the most.
const COLUMNS: usize = 25;
/// Columns of versions 2 to 4.
const COLUMNS_BEFORE_PLANES: usize = 18;

/// How many columns a chunk of `version` has.
fn columns_of(version: u8) -> usize {
    if version >= COLUMNAR_VERSION_REPEATS { COLUMNS } else { COLUMNS_BEFORE_PLANES }
}

/// Value tag of a string that is in `Uniques` (tag 1: a dictionary string).
const TAG_UNIQUE: u8 = 8;
/// The codec's tag of an integer value (zigzag varint).
const TAG_INT: u8 = 3;
/// Value tag of version 5: the value of this key on the last span before with the same name.
const TAG_REPEAT: u8 = 9;

/// A string of the chunk: how often it occurs as a span attribute value, and its dictionary
/// index once it has one.
#[derive(Clone, Copy)]
struct Str {
    value_uses: u32,
    index: u32,
}

const NO_INDEX: u32 = u32::MAX;

impl Str {
    /// A string not met yet.
    const UNSEEN: Str = Str { value_uses: 0, index: NO_INDEX };
}

/// Every string a chunk's encoder met, each hashed once: its slot, text and uses. The block
/// writer reuses it for the chunk's postings.
#[derive(Default)]
pub(crate) struct ChunkStrings<'a> {
    slot_of: FxHashMap<&'a str, u32>,
    texts: Vec<&'a str>,
    entries: Vec<Str>,
}

impl<'a> ChunkStrings<'a> {
    /// The slot of `s`, made when `s` is new.
    pub(crate) fn slot(&mut self, s: &'a str) -> u32 {
        *self.slot_of.entry(s).or_insert_with(|| {
            self.entries.push(Str::UNSEEN);
            self.texts.push(s);
            self.texts.len() as u32 - 1
        })
    }

    pub(crate) fn text(&self, slot: u32) -> &'a str {
        self.texts[slot as usize]
    }
}

/// The string at each attribute position of the previous span, with its slot.
#[derive(Default)]
struct Memo<'a>(Vec<(&'a str, u32)>);

impl<'a> Memo<'a> {
    /// The slot of `s`, found at position `j` by comparing with the previous span's string
    /// there before asking `strings`. Inlined, with [`skein_model::same_bytes`] instead of
    /// `==` (no `memcmp` call per key and value): under callgrind, 400k realistic spans, chunk
    /// encoding took 3.615G → 3.547G instructions (with the byte-position times below).
    #[inline(always)]
    fn slot(&mut self, j: usize, s: &'a str, strings: &mut ChunkStrings<'a>) -> u32 {
        match self.0.get(j) {
            Some(&(before, slot)) if skein_model::same_bytes(before.as_bytes(), s.as_bytes()) => slot,
            _ => {
                let slot = strings.slot(s);
                match self.0.get_mut(j) {
                    Some(entry) => *entry = (s, slot),
                    None => self.0.push((s, slot)),
                }
                slot
            }
        }
    }
}

/// An encoded chunk, with what the encoder learnt on the way: its header (version, traces,
/// spans) and its columns, which [`EncodedChunk::bytes`] joins and [`Packer::pack_encoded`]
/// packs without joining them first.
pub(crate) struct EncodedChunk<'a> {
    header: (u8, u64, u64),
    buffers: ChunkBuffers,
    pub(crate) strings: ChunkStrings<'a>,
}

impl EncodedChunk<'_> {
    /// The columnar encoding (as [`encode_chunk`] answers it): the header, then each column
    /// with its length.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let cols = &self.buffers.cols;
        let mut out =
            Writer { buf: Vec::with_capacity(cols.iter().map(|c| c.buf.len() + 5).sum::<usize>() + 16) };
        let (version, n_traces, n_spans) = self.header;
        out.u8(version);
        out.varint(n_traces);
        out.varint(n_spans);
        for c in cols {
            out.bytes(&c.buf);
        }
        out.buf
    }
}

/// The buffers a chunk encoder fills, kept from one chunk to the next by a [`Packer`]: the
/// columns, and the span attribute value groups (emptied). A chunk's buffers grew by doubling
/// from nothing, and its columns were joined into one buffer to be split again for packing:
/// under callgrind (400k realistic spans, compaction aside) chunk encoding took 3.446G →
/// 3.375G instructions with the buffers kept and the columns packed as they are.
#[derive(Default)]
pub(crate) struct ChunkBuffers {
    cols: Vec<Writer>,
    groups: Vec<Group>,
}

/// What a span attribute value is, for telling whether it repeats the last value of its key
/// and span name (version 5): `None` for a value that is never written as a repeat (a unique
/// string, bytes, arrays, lists, no value).
type Fingerprint = Option<(u8, u64)>;

/// The span attribute values of one key (version 3 on).
#[derive(Default)]
struct Group {
    /// The key's slot.
    key: u32,
    values: Writer,
    uniques: Writer,
    /// Version 5: the bytes of the hex ids among `uniques`.
    hex: Writer,
    /// Version 5: per span name (by its ordinal in [`Enc::name_ordinals`]), the last value
    /// written explicitly.
    last: Vec<Fingerprint>,
}

struct Enc<'a> {
    cols: Vec<Writer>,
    /// Emptied groups to be used again (from [`ChunkBuffers`]).
    spare: Vec<Group>,
    strings: ChunkStrings<'a>,
    /// The dictionary: strings in the order of their first use.
    dictionary: Vec<&'a str>,
    /// Span attribute values grouped by key (version 3), in the order keys are first met. A
    /// key's values are alike (methods, status codes, addresses) where the values of
    /// neighbouring attributes are not.
    by_key: Vec<Group>,
    /// Per string slot, its group in `by_key` (`NO_INDEX`: not a span attribute key).
    group_of: Vec<u32>,
    /// Version 5: values that repeat the last of their key and span name as [`TAG_REPEAT`],
    /// starts and durations by byte position, texts of `Strings` as [`put_text`] writes them.
    latest: bool,
    /// Version 5: per string slot, its ordinal among the span names met so far.
    name_ordinals: Vec<u32>,
    names: u32,
}

impl<'a> Enc<'a> {
    fn col(&mut self, c: Col) -> &mut Writer {
        &mut self.cols[c as usize]
    }

    fn slot(&mut self, s: &'a str) -> u32 {
        self.strings.slot(s)
    }

    /// The dictionary index of the string in `slot` (given at its first use).
    fn index(&mut self, slot: u32) -> u64 {
        let entry = &mut self.strings.entries[slot as usize];
        if entry.index == NO_INDEX {
            entry.index = self.dictionary.len() as u32;
            self.dictionary.push(self.strings.texts[slot as usize]);
        }
        entry.index as u64
    }

    fn put_slot(&mut self, c: Col, slot: u32) {
        let i = self.index(slot);
        self.col(c).varint(i);
    }

    fn put_string(&mut self, c: Col, s: &'a str) {
        let slot = self.slot(s);
        self.put_slot(c, slot);
    }

    /// Attributes of resources, scopes, events and links: count and keys into `keys`, values
    /// into `values`. Their strings always go to the dictionary: only span attribute values
    /// are counted, and only they may be written to `Uniques` (which the decoder reads in the
    /// order it meets them: tables first, then span by span).
    fn attrs(&mut self, keys: Col, values: Col, attrs: &'a [KeyValue]) {
        self.col(keys).varint(attrs.len() as u64);
        for kv in attrs {
            self.put_string(keys, &kv.key);
            match &kv.value {
                AttrValue::Str(v) => {
                    let slot = self.slot(v);
                    self.put_dictionary_value(values, slot);
                }
                other => self.col(values).value(other),
            }
        }
    }

    /// Span attributes whose strings were given slots beforehand (`slots`, in order: each key,
    /// then the value when it is a string) of a span named by the string in slot `name`: the
    /// keys to `AttrKeys`, each value to its key's group (a string value used once in the
    /// chunk to the group's unique strings; in version 5 a value equal to the last one of its
    /// key and span name as [`TAG_REPEAT`]), which `AttrValues` and `Uniques` receive once the
    /// chunk is complete.
    fn span_attrs(&mut self, name: u32, attrs: &'a [KeyValue], slots: &mut impl Iterator<Item = u32>) {
        let name = if self.latest { self.name_ordinal(name) } else { NO_INDEX };
        self.col(Col::AttrKeys).varint(attrs.len() as u64);
        for kv in attrs {
            let key = slots.next().expect("a slot per key");
            self.put_slot(Col::AttrKeys, key);
            let group = self.group(key);
            let slot = match &kv.value {
                AttrValue::Str(_) => slots.next().expect("a slot per string value"),
                _ => NO_INDEX,
            };
            if name != NO_INDEX {
                let fingerprint = match &kv.value {
                    AttrValue::Str(_) if self.strings.entries[slot as usize].value_uses > 1 => {
                        Some((1, slot as u64))
                    }
                    AttrValue::Bool(b) => Some((2, *b as u64)),
                    AttrValue::Int(i) => Some((TAG_INT, *i as u64)),
                    AttrValue::Double(d) => Some((4, d.to_bits())),
                    _ => None,
                };
                let group = &mut self.by_key[group];
                if group.last.len() <= name as usize {
                    group.last.resize(name as usize + 1, None);
                }
                let last = &mut group.last[name as usize];
                if fingerprint.is_some() && *last == fingerprint {
                    group.values.u8(TAG_REPEAT);
                    continue;
                }
                *last = fingerprint;
            }
            match &kv.value {
                AttrValue::Str(s) => {
                    if self.strings.entries[slot as usize].value_uses == 1 {
                        let hex_ids = self.latest;
                        let Group { values, uniques, hex, .. } = &mut self.by_key[group];
                        values.u8(TAG_UNIQUE);
                        if hex_ids {
                            put_text(uniques, hex, s);
                        } else {
                            uniques.str(s);
                        }
                    } else {
                        let i = self.index(slot);
                        let values = &mut self.by_key[group].values;
                        values.u8(1);
                        values.varint(i);
                    }
                }
                // Scalars and nested values as the row codec writes them (the same tags).
                other => self.by_key[group].values.value(other),
            }
        }
    }

    /// The ordinal of span name `slot` among the names met so far, made when new.
    fn name_ordinal(&mut self, slot: u32) -> u32 {
        name_ordinal(&mut self.name_ordinals, &mut self.names, slot)
    }

    /// The group (in `by_key`) of span attribute key `slot`, made when new.
    fn group(&mut self, slot: u32) -> usize {
        if self.group_of.len() <= slot as usize {
            self.group_of.resize(slot as usize + 1, NO_INDEX);
        }
        if self.group_of[slot as usize] == NO_INDEX {
            self.group_of[slot as usize] = self.by_key.len() as u32;
            let mut group = self.spare.pop().unwrap_or_default();
            group.key = slot;
            self.by_key.push(group);
        }
        self.group_of[slot as usize] as usize
    }

    /// A start or duration `v` into column `first` as a varint, or in version 5 by byte
    /// position: its first byte to `first`, the second to `bytes[0]`, the third to
    /// `bytes[1]`, the rest to `bytes[2]`.
    fn time(&mut self, (first, bytes): (Col, [Col; 3]), v: u64) {
        if !self.latest {
            self.col(first).varint(v);
            return;
        }
        // The varint's bytes (LEB128), each to the column of its position: the first three
        // one by one, the rest (a varint of what is left) to the last column.
        let mut v = v;
        for c in [first, bytes[0], bytes[1]] {
            if v < 0x80 {
                self.col(c).u8(v as u8);
                return;
            }
            self.col(c).u8(v as u8 | 0x80);
            v >>= 7;
        }
        self.col(bytes[2]).varint(v);
    }

    /// A string value from the dictionary (tag 1).
    fn put_dictionary_value(&mut self, c: Col, slot: u32) {
        let i = self.index(slot);
        let w = self.col(c);
        w.u8(1);
        w.varint(i);
    }
}

/// Version 5: where the value of key `key` at `values`' position starts when it repeats the last
/// value of its key and span name `name` (`last`: per span name, where the key's last value
/// written explicitly starts), stepping over the repeat tag; or `None` when it is written here
/// (remembered as the last one when it may be repeated).
#[inline]
fn repeat_at(
    values: &mut Reader<'_>,
    last: &mut Vec<u32>,
    name: usize,
    key: u64,
) -> Result<Option<usize>, DecodeError> {
    let at = values.pos;
    let tag = values.buf.get(at).copied();
    if last.len() <= name {
        last.resize(name + 1, NO_INDEX);
    }
    if tag != Some(TAG_REPEAT) {
        // Only values that may be repeated are remembered.
        last[name] = if matches!(tag, Some(1 | 2 | TAG_INT | 4)) { at as u32 } else { NO_INDEX };
        return Ok(None);
    }
    match last[name] {
        NO_INDEX => err(format!("a repeated value of key {key} with none before it")),
        before => {
            values.pos += 1;
            Ok(Some(before as usize))
        }
    }
}

/// Version 5: the ordinal of the span name in string `slot` among the names met so far in a
/// chunk (`ordinals` per string, [`NO_INDEX`] for one not met; `names` met), made when new: the
/// encoder and the decoder number names alike, in the order spans are written.
fn name_ordinal(ordinals: &mut Vec<u32>, names: &mut u32, slot: u32) -> u32 {
    if ordinals.len() <= slot as usize {
        ordinals.resize(slot as usize + 1, NO_INDEX);
    }
    let ordinal = &mut ordinals[slot as usize];
    if *ordinal == NO_INDEX {
        *ordinal = *names;
        *names += 1;
    }
    *ordinal
}

/// Version 5: a text of `Strings` (a dictionary string, or a unique string after them): as
/// `varint(len << 1)` and its bytes; or, when it is a hex id (see [`pack_hex`]), as
/// `varint(k << 1 | 1)` with its bytes appended to `hex`: k = 0 for a UUID (16 bytes), else
/// the k bytes of a string of 2k hex digits.
fn put_text(w: &mut Writer, hex: &mut Writer, s: &str) {
    match pack_hex(s, &mut hex.buf) {
        Some(k) => w.varint(k << 1 | 1),
        None => {
            w.varint((s.len() as u64) << 1);
            w.buf.extend_from_slice(s.as_bytes());
        }
    }
}

/// The value of hex digit `c` (lowercase only).
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Positions of a UUID's dashes (8-4-4-4-12).
const UUID_DASHES: [usize; 4] = [8, 13, 18, 23];

/// [`put_text`]'s code for `s` when it is a hex id, with its bytes appended to `out`: 0 for a
/// lowercase UUID; k for an even number 2k ≥ 16 of lowercase hex digits with a letter among
/// them (digits alone are as short as text: zstd codes ten symbols in about 3.3 bits).
/// Uppercase and mixed case stay text, so that the bytes give back the very string.
fn pack_hex(s: &str, out: &mut Vec<u8>) -> Option<u64> {
    let b = s.as_bytes();
    let uuid = b.len() == 36 && UUID_DASHES.iter().all(|&i| b[i] == b'-');
    if !uuid && (b.len() < 16 || !b.len().is_multiple_of(2)) {
        return None;
    }
    // One pass: the bytes are appended as the digits are checked, and taken back when the
    // text turns out not to be a hex id.
    let start = out.len();
    let (mut letter, mut high) = (false, None);
    for (i, &c) in b.iter().enumerate() {
        if uuid && UUID_DASHES.contains(&i) {
            continue;
        }
        let Some(d) = hex_digit(c) else {
            out.truncate(start);
            return None;
        };
        letter |= d >= 10;
        match high.take() {
            None => high = Some(d),
            Some(h) => out.push(h << 4 | d),
        }
    }
    if !uuid && !letter {
        out.truncate(start);
        return None;
    }
    Some(if uuid { 0 } else { b.len() as u64 / 2 })
}

/// What [`put_text`] wrote: the text from `r`, or from its bytes in `hex`.
fn read_text<'a>(r: &mut Reader<'a>, hex: &mut Reader<'a>) -> Result<std::borrow::Cow<'a, str>, DecodeError> {
    let (bytes, uuid) = match text_at(r, hex)? {
        TextAt::Plain(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|_| DecodeError("string is not UTF-8".into()))?;
            return Ok(std::borrow::Cow::Borrowed(text));
        }
        TextAt::Hex { bytes, uuid } => (bytes, uuid),
    };
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2 + 4);
    for (i, b) in bytes.iter().enumerate() {
        if uuid && matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(DIGITS[(b >> 4) as usize] as char);
        text.push(DIGITS[(b & 15) as usize] as char);
    }
    Ok(std::borrow::Cow::Owned(text))
}

/// Steps over what [`put_text`] wrote (its bytes checked when a span that holds it is built).
fn skip_text<'a>(r: &mut Reader<'a>, hex: &mut Reader<'a>) -> Result<(), DecodeError> {
    text_at(r, hex).map(drop)
}

/// Where a text [`put_text`] wrote lies: its bytes in `Strings`, or a hex id's in `HexBytes`.
enum TextAt<'a> {
    Plain(&'a [u8]),
    Hex { bytes: &'a [u8], uuid: bool },
}

/// Reads a text's code from `r` and takes its bytes from `r` or `hex`.
fn text_at<'a>(r: &mut Reader<'a>, hex: &mut Reader<'a>) -> Result<TextAt<'a>, DecodeError> {
    let code = r.varint()?;
    let n = usize::try_from(code >> 1).map_err(|_| DecodeError("text length out of range".into()))?;
    Ok(match (code & 1, n) {
        (0, n) => TextAt::Plain(r.take(n)?),
        (_, 0) => TextAt::Hex { bytes: hex.take(16)?, uuid: true },
        (_, k) => TextAt::Hex { bytes: hex.take(k)?, uuid: false },
    })
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// Encodes spans (whole traces; their order is kept within each trace, traces in the order of
/// their first span), with their resources and scopes.
pub fn encode_chunk<S: std::borrow::Borrow<Span>>(spans: &[S]) -> Vec<u8> {
    let spans: Vec<&Span> = spans.iter().map(|s| s.borrow()).collect();
    encode_chunk_detailed(&spans, None, &mut (), ChunkBuffers::default()).bytes()
}

/// Told of every span as the chunk encoder first meets it (in the order the chunk holds
/// them), then of each of its attributes with the slots the encoder gave their strings: what
/// else is gathered from a chunk's spans (its postings) is gathered in the same pass, while
/// each span is in the cache, instead of by walking them all again.
pub(crate) trait ChunkVisitor<'a> {
    /// Span `span`, at `input` in the spans encoded.
    fn span(&mut self, strings: &mut ChunkStrings<'a>, input: u32, span: &'a Span);

    /// An attribute of the span: `key` is the slot of its key, `value_slot` that of its value
    /// when it is a string.
    fn attribute(
        &mut self,
        strings: &mut ChunkStrings<'a>,
        key: u32,
        value: &'a AttrValue,
        value_slot: Option<u32>,
    );
}

/// Visits nothing.
impl<'a> ChunkVisitor<'a> for () {
    fn span(&mut self, _: &mut ChunkStrings<'a>, _: u32, _: &'a Span) {}

    fn attribute(&mut self, _: &mut ChunkStrings<'a>, _: u32, _: &'a AttrValue, _: Option<u32>) {}
}

/// The traces of a list of spans numbered in the order they first appear: a stable grouping
/// by trace without a list per trace (the chunk encoder's, and a batch's before it goes into
/// a head).
pub(crate) struct TraceNumbers {
    /// By number, the trace's id…
    pub(crate) ids: Vec<TraceId>,
    /// …and how many of the spans are of it.
    pub(crate) counts: Vec<u32>,
    /// By span, its trace's number.
    pub(crate) numbers: Vec<u32>,
}

impl TraceNumbers {
    /// Of the trace ids of `len` spans. A trace's spans mostly come one after another (the
    /// block writer hands a trace's over together, exporters send a trace's spans together):
    /// a span of the trace before is not looked up again.
    pub(crate) fn of(trace_ids: impl Iterator<Item = TraceId>, len: usize) -> TraceNumbers {
        let mut t = TraceNumbers { ids: Vec::new(), counts: Vec::new(), numbers: Vec::with_capacity(len) };
        let mut number_of: FxHashMap<TraceId, u32> = FxHashMap::default();
        let mut last: Option<(TraceId, u32)> = None;
        for id in trace_ids {
            let n = match last {
                Some((before, n)) if before == id => n,
                _ => *number_of.entry(id).or_insert_with(|| {
                    t.ids.push(id);
                    t.counts.push(0);
                    t.ids.len() as u32 - 1
                }),
            };
            last = Some((id, n));
            t.counts[n as usize] += 1;
            t.numbers.push(n);
        }
        t
    }
}

/// [`encode_chunk`], also answering the chunk's strings, and telling `visit` of each span and
/// its attributes as they are met. With `origins` (per span, the indexes of its resource and scope in the chunk's set of the
/// block's origins), the chunk is of [`COLUMNAR_VERSION_SHARED_ORIGINS`]: it holds those
/// indexes instead of the resources and scopes. The columns are written into `buffers` (a
/// [`Packer`]'s, to keep their room from chunk to chunk), which the answer holds.
pub(crate) fn encode_chunk_detailed<'a>(
    spans: &[&'a Span],
    origins: Option<&[(u32, u32)]>,
    visit: &mut impl ChunkVisitor<'a>,
    buffers: ChunkBuffers,
) -> EncodedChunk<'a> {
    // Group by trace, keeping the order of first appearance (a stable counting sort: no
    // allocation per trace).
    let TraceNumbers { ids: order, counts: sizes, numbers: ordinals } =
        TraceNumbers::of(spans.iter().map(|s| s.trace_id), spans.len());
    let mut next: Vec<u32> = Vec::with_capacity(sizes.len());
    let mut total = 0;
    for n in &sizes {
        next.push(total);
        total += n;
    }
    let mut positions: Vec<u32> = vec![0; spans.len()];
    for (i, o) in ordinals.iter().enumerate() {
        positions[next[*o as usize] as usize] = i as u32;
        next[*o as usize] += 1;
    }
    // Version 4 holds a trace's spans by start (a parent before its children, siblings in the
    // order they ran), so that a start is written relative to a span written before it.
    let relative_starts = origins.is_some();
    if relative_starts {
        let mut first = 0;
        for n in &sizes {
            positions[first..first + *n as usize]
                .sort_by_key(|&i| (spans[i as usize].start_time_unix_nano, i));
            first += *n as usize;
        }
    }
    let grouped: Vec<&'a Span> = positions.iter().map(|&i| spans[i as usize]).collect();
    // Span attribute string values seen once go inline (`Uniques`), the rest in the dictionary:
    // a first pass counts their uses, and gives every span name and attribute string its slot
    // (so that the second pass, which writes them, hashes nothing).
    let version = if origins.is_some() { COLUMNAR_VERSION_REPEATS } else { COLUMNAR_VERSION };
    let ChunkBuffers { mut cols, groups: spare } = buffers;
    for c in &mut cols {
        c.buf.clear();
    }
    cols.resize_with(columns_of(version), Writer::default);
    let mut e = Enc {
        cols,
        spare,
        strings: ChunkStrings::default(),
        dictionary: Vec::new(),
        by_key: Vec::new(),
        group_of: Vec::new(),
        latest: version >= COLUMNAR_VERSION_REPEATS,
        name_ordinals: Vec::new(),
        names: 0,
    };
    let mut name_slots: Vec<u32> = Vec::with_capacity(grouped.len());
    let mut attr_slots: Vec<u32> = Vec::with_capacity(grouped.len() * 16);
    // Spans of one operation mostly carry the same keys in the same order, and many of the
    // same values: a string equal to the one at its position in the last span of the same
    // name takes that slot without hashing. (The spans before in the chunk's order are of the
    // trace's other operations, mostly.)
    let mut memos: Vec<(Memo, Memo)> = Vec::new();
    // By the slot of a span name, its memos' place in `memos`.
    let mut memo_of: Vec<u32> = Vec::new();
    for (k, (s, &input)) in grouped.iter().zip(&positions).enumerate() {
        // The spans are a head's, cold by now: the lines of the spans ahead are asked for in
        // stages (the struct, then the attribute array it points to, then the long strings
        // that points to), so that their loads overlap with this span's work. Pinned to one
        // core, 2M realistic spans: this pass and the one below took 1.38 times the CPU of
        // decoding the requests without them, 1.24 times with them.
        if let Some(ahead) = grouped.get(k + 8) {
            crate::prefetch::span(ahead);
        }
        if let Some(ahead) = grouped.get(k + 4) {
            crate::prefetch::attributes(ahead);
        }
        if let Some(ahead) = grouped.get(k + 2) {
            crate::prefetch::strings(ahead);
        }
        visit.span(&mut e.strings, input, s);
        let name = e.slot(&s.name);
        name_slots.push(name);
        if memo_of.len() <= name as usize {
            memo_of.resize(name as usize + 1, NO_INDEX);
        }
        if memo_of[name as usize] == NO_INDEX {
            memo_of[name as usize] = memos.len() as u32;
            memos.push((Memo::default(), Memo::default()));
        }
        let (keys_before, values_before) = &mut memos[memo_of[name as usize] as usize];
        for (j, kv) in s.attributes.iter().enumerate() {
            let key = keys_before.slot(j, &kv.key, &mut e.strings);
            attr_slots.push(key);
            let value_slot = match &kv.value {
                AttrValue::Str(v) => {
                    let slot = values_before.slot(j, v, &mut e.strings);
                    e.strings.entries[slot as usize].value_uses += 1;
                    attr_slots.push(slot);
                    Some(slot)
                }
                _ => None,
            };
            visit.attribute(&mut e.strings, key, &kv.value, value_slot);
        }
    }
    let mut name_slots = name_slots.into_iter();
    let mut next_attr_slots = attr_slots.iter().copied();
    let empty = e.slot("");

    // Resources and scopes, each written once (unless the block holds them).
    let mut chunk_origins = Origins::default();

    let mut previous_start = 0u64;
    let mut position: FxHashMap<SpanId, usize> = FxHashMap::default();
    // Per span of the trace (by position), its last child written so far.
    let mut last_child: Vec<u32> = Vec::new();
    let mut first = 0;
    for (id, &n) in order.iter().zip(&sizes) {
        let trace = &grouped[first..first + n as usize];
        let inputs = &positions[first..first + n as usize];
        first += n as usize;
        let start = trace.iter().map(|s| s.start_time_unix_nano).min().unwrap_or(0);
        e.col(Col::TraceIds).buf.extend_from_slice(id.as_bytes());
        e.col(Col::TraceSpans).varint(trace.len() as u64);
        e.col(Col::TraceStarts).varint(zigzag(start.wrapping_sub(previous_start) as i64));
        previous_start = start;
        // Small traces are searched in place; big ones through a map.
        let big = trace.len() > 16;
        if big {
            position.clear();
            position.extend(trace.iter().enumerate().map(|(i, s)| (s.span_id, i + 1)));
        }
        let position_of = |p: SpanId| {
            if big {
                position.get(&p).copied()
            } else {
                trace.iter().position(|s| s.span_id == p).map(|i| i + 1)
            }
        };
        if relative_starts {
            last_child.clear();
            last_child.resize(trace.len(), NO_INDEX);
        }
        for (i, (s, &input)) in trace.iter().zip(inputs).enumerate() {
            e.col(Col::SpanIds).buf.extend_from_slice(s.span_id.as_bytes());
            let parent = s.parent_span_id.map(|p| (p, position_of(p)));
            match parent {
                None => e.col(Col::Parents).varint(0),
                Some((_, Some(k))) => e.col(Col::Parents).varint(k as u64),
                Some((p, None)) => {
                    e.col(Col::Parents).varint(trace.len() as u64 + 1);
                    e.col(Col::ForeignParents).buf.extend_from_slice(p.as_bytes());
                }
            }
            match parent {
                // Version 4: a span whose parent is written before it starts relative to the
                // end of its previous sibling, or else its parent's start.
                Some((_, Some(k))) if relative_starts && k - 1 < i => {
                    let before = match last_child[k - 1] {
                        NO_INDEX => trace[k - 1].start_time_unix_nano,
                        j => trace[j as usize].end_time_unix_nano,
                    };
                    last_child[k - 1] = i as u32;
                    e.time(STARTS, zigzag(s.start_time_unix_nano.wrapping_sub(before) as i64));
                }
                _ => e.time(STARTS, s.start_time_unix_nano - start),
            }
            e.time(DURATIONS, zigzag(s.end_time_unix_nano.wrapping_sub(s.start_time_unix_nano) as i64));
            let name = name_slots.next().expect("a slot per span");
            e.put_slot(Col::Names, name);
            e.col(Col::KindStatus).u8(s.kind.code() | s.status.code.code() << 3);
            let (r, c) = match origins {
                Some(given) => given[input as usize],
                None => {
                    let (r, c) = chunk_origins.of(s);
                    (r as u32, c as u32)
                }
            };
            e.col(Col::Origins).varint(r as u64);
            e.col(Col::Origins).varint(c as u64);
            e.col(Col::Flags).varint(s.flags as u64);
            e.span_attrs(name, &s.attributes, &mut next_attr_slots);
            for text in [&s.trace_state, &s.status.message] {
                // Mostly empty: no hashing then.
                let slot = if text.is_empty() { empty } else { e.slot(text) };
                e.put_slot(Col::Rest, slot);
            }
            let w = e.col(Col::Rest);
            w.varint(s.dropped_attributes_count as u64);
            w.varint(s.dropped_events_count as u64);
            w.varint(s.dropped_links_count as u64);
            w.varint(s.events.len() as u64);
            for ev in &s.events {
                e.col(Col::Rest)
                    .varint(zigzag(ev.time_unix_nano.wrapping_sub(s.start_time_unix_nano) as i64));
                e.put_string(Col::Rest, &ev.name);
                e.attrs(Col::Rest, Col::Rest, &ev.attributes);
                e.col(Col::Rest).varint(ev.dropped_attributes_count as u64);
            }
            e.col(Col::Rest).varint(s.links.len() as u64);
            for l in &s.links {
                e.col(Col::Rest).buf.extend_from_slice(l.trace_id.as_bytes());
                e.col(Col::Rest).buf.extend_from_slice(l.span_id.as_bytes());
                e.put_string(Col::Rest, &l.trace_state);
                e.attrs(Col::Rest, Col::Rest, &l.attributes);
                e.col(Col::Rest).varint(l.dropped_attributes_count as u64);
                e.col(Col::Rest).varint(l.flags as u64);
            }
        }
    }
    let Origins { resources, scopes, .. } = chunk_origins;
    e.col(Col::Tables).varint(resources.len() as u64);
    for r in &resources {
        e.attrs(Col::Tables, Col::Tables, &r.attributes);
        e.col(Col::Tables).varint(r.dropped_attributes_count as u64);
        e.put_string(Col::Tables, &r.schema_url);
    }
    e.col(Col::Tables).varint(scopes.len() as u64);
    for c in &scopes {
        e.put_string(Col::Tables, &c.name);
        e.put_string(Col::Tables, &c.version);
        e.attrs(Col::Tables, Col::Tables, &c.attributes);
        e.col(Col::Tables).varint(c.dropped_attributes_count as u64);
        e.put_string(Col::Tables, &c.schema_url);
    }

    // Span attribute values by key: the groups, each with its key; their unique strings in the
    // same order.
    let by_key = std::mem::take(&mut e.by_key);
    e.col(Col::AttrValues).varint(by_key.len() as u64);
    for group in &by_key {
        let key = e.index(group.key);
        e.col(Col::AttrValues).varint(key);
        e.col(Col::AttrValues).bytes(&group.values.buf);
        e.col(Col::Uniques).bytes(&group.uniques.buf);
    }

    let dictionary = std::mem::take(&mut e.dictionary);
    if version >= COLUMNAR_VERSION_REPEATS {
        // The dictionary with its hex ids as bytes, then the unique strings, in its zstd frame.
        let [w, hex] =
            e.cols.get_disjoint_mut([Col::Strings as usize, Col::HexBytes as usize]).expect("two columns");
        w.varint(dictionary.len() as u64);
        for s in dictionary {
            put_text(w, hex, s);
        }
        for group in &by_key {
            hex.bytes(&group.hex.buf);
        }
        let [w, uniques] =
            e.cols.get_disjoint_mut([Col::Strings as usize, Col::Uniques as usize]).expect("two columns");
        w.buf.extend_from_slice(&uniques.buf);
        uniques.buf.clear();
    } else {
        let w = e.col(Col::Strings);
        w.varint(dictionary.len() as u64);
        for s in dictionary {
            w.str(s);
        }
    }

    let mut spare = e.spare;
    spare.extend(by_key.into_iter().map(|mut g| {
        g.values.buf.clear();
        g.uniques.buf.clear();
        g.hex.buf.clear();
        g.last.clear();
        g
    }));
    EncodedChunk {
        header: (version, order.len() as u64, spans.len() as u64),
        buffers: ChunkBuffers { cols: e.cols, groups: spare },
        strings: e.strings,
    }
}

struct Dec<'a> {
    cols: Vec<Reader<'a>>,
    /// The dictionary's strings as the chunk holds them (version 5: hex ids made text)…
    texts: Vec<std::borrow::Cow<'a, str>>,
    /// …and each made once, when first used (a decode of a few traces uses few of them).
    strings: Vec<std::cell::OnceCell<skein_model::Str>>,
    /// Version 3: span attribute values and unique strings by key (dictionary index); `None`
    /// for version 2, whose columns hold them in span order.
    groups: Option<Vec<Option<(Reader<'a>, Reader<'a>, Reader<'a>)>>>,
    /// The hex bytes of version 2's unique strings: none.
    no_hex: Reader<'a>,
    /// Version 5: values may repeat the last of their key and span name ([`TAG_REPEAT`]),
    /// starts and durations are by byte position, texts of `Strings` as [`put_text`] writes
    /// them…
    latest: bool,
    /// …per key (dictionary index, as `groups`), per span name (by ordinal), where in the
    /// key's values the last value written explicitly starts (`NO_INDEX`: none yet)…
    last: Vec<Vec<u32>>,
    /// …per dictionary index, its ordinal among the span names met so far…
    name_ordinals: Vec<u32>,
    names: u32,
    /// …and the ordinal of the name of the span being read.
    name: u32,
    /// In a projected decode, per dictionary index of a span attribute key, whether the
    /// projection keeps it ([`KEY_KEPT`], [`KEY_LEFT`], or 0 before it is asked).
    kept: Vec<u8>,
}

/// A span attribute key a projected decode builds the values of…
const KEY_KEPT: u8 = 1;
/// …and one whose values it leaves unread (in version 3 on, each key's values are a group of
/// their own: its group is not read at all, nor checked to be read to its end).
const KEY_LEFT: u8 = 2;

impl<'a> Dec<'a> {
    /// Splits a version 3 chunk's `AttrValues` and `Uniques` columns into the groups of their
    /// keys (after the dictionary was read).
    fn read_groups(&mut self) -> Result<(), DecodeError> {
        let mut groups: Vec<Option<(Reader<'a>, Reader<'a>, Reader<'a>)>> = Vec::new();
        let n = self.col(Col::AttrValues).count()?;
        for _ in 0..n {
            let key = self.col(Col::AttrValues).varint()?;
            if key as usize >= self.texts.len() {
                return err(format!("attribute values of key {key}, out of range"));
            }
            let values = Reader { buf: self.col(Col::AttrValues).slice()?, pos: 0 };
            let uniques = Reader { buf: self.col(Col::Uniques).slice()?, pos: 0 };
            let hex = if self.latest { self.col(Col::HexBytes).slice()? } else { &[] };
            let hex = Reader { buf: hex, pos: 0 };
            if groups.len() <= key as usize {
                groups.resize_with(key as usize + 1, || None);
            }
            if groups[key as usize].replace((values, uniques, hex)).is_some() {
                return err(format!("two groups of attribute values for key {key}"));
            }
        }
        self.groups = Some(groups);
        Ok(())
    }

    /// Where the values of span attribute key `key` (a dictionary index) are: its group's
    /// readers in version 3 (values, unique strings, and in version 5 the unique strings' hex
    /// bytes), the `AttrValues` and `Uniques` columns in version 2; and in version 5 the key's
    /// last values by span name (see [`repeat_at`]).
    #[inline]
    #[allow(clippy::type_complexity)]
    fn values_of(
        &mut self,
        key: u64,
    ) -> Result<(&mut Reader<'a>, &mut Reader<'a>, &mut Reader<'a>, Option<&mut Vec<u32>>), DecodeError> {
        let last = self.last.get_mut(key as usize);
        match &mut self.groups {
            None => {
                let [v, u] = self
                    .cols
                    .get_disjoint_mut([Col::AttrValues as usize, Col::Uniques as usize])
                    .expect("two columns");
                Ok((v, u, &mut self.no_hex, last))
            }
            Some(groups) => match groups.get_mut(key as usize) {
                Some(Some((v, u, h))) => Ok((v, u, h, last)),
                _ => err(format!("no attribute values for key {key}")),
            },
        }
    }

    /// The value of a span attribute with key `key`.
    fn span_value(&mut self, key: u64) -> Result<AttrValue, DecodeError> {
        let (hex_ids, name) = (self.latest, self.name as usize);
        let (values, uniques, hex, last) = self.values_of(key)?;
        if hex_ids
            && let Some(last) = last
            && let Some(at) = repeat_at(values, last, name, key)?
        {
            // The value was read (and checked) where it was written: a dictionary string or
            // a scalar.
            let values = values.buf;
            let mut r = Reader { buf: values, pos: at + 1 };
            return match values[at] {
                1 => Ok(AttrValue::Str(self.dictionary(r.varint()?)?.clone())),
                _ => Reader { buf: values, pos: at }.value(0),
            };
        }
        match values.buf.get(values.pos) {
            Some(&1) => {
                values.pos += 1;
                let i = values.varint()?;
                Ok(AttrValue::Str(self.dictionary(i)?.clone()))
            }
            Some(&TAG_UNIQUE) if hex_ids => {
                values.pos += 1;
                Ok(AttrValue::Str(skein_model::Str::from(&*read_text(uniques, hex)?)))
            }
            Some(&TAG_UNIQUE) => {
                values.pos += 1;
                Ok(AttrValue::Str(uniques.str()?))
            }
            _ => values.value(0),
        }
    }

    /// Version 5: reads the index of the span's name from `Names`, checking it, and makes its
    /// ordinal the current one.
    fn span_name(&mut self) -> Result<u64, DecodeError> {
        let i = self.col(Col::Names).varint()?;
        if i as usize >= self.texts.len() {
            return err(format!("string index {i} out of range"));
        }
        if self.latest {
            self.name = name_ordinal(&mut self.name_ordinals, &mut self.names, i as u32);
        }
        Ok(i)
    }

    /// A start or duration from column `first` (version 5: by byte position, the second byte
    /// from `bytes[0]`, the third from `bytes[1]`, the rest from `bytes[2]`).
    fn time(&mut self, (first, bytes): (Col, [Col; 3])) -> Result<u64, DecodeError> {
        if !self.latest {
            return self.col(first).varint();
        }
        let mut v = 0u64;
        for k in 0..10 {
            let c = match k {
                0 => first,
                1 => bytes[0],
                2 => bytes[1],
                _ => bytes[2],
            };
            let b = self.col(c).u8()?;
            v |= ((b & 0x7f) as u64) << (7 * k);
            if b < 0x80 {
                return Ok(v);
            }
        }
        err("a time of more than 10 bytes")
    }

    /// Steps over the value of a span attribute with key `key`, checking it. A lookup by id
    /// steps over every span before its trace's in the chunk (half a chunk, on average): the
    /// key's group is found once, for the repeat check ([`repeat_at`]) and the value both (as
    /// [`Dec::span_value`] does).
    /// Under callgrind, 50 lookups by id in a store of 10M realistic spans: 255M → 237M
    /// instructions.
    #[inline]
    fn skip_span_value(&mut self, key: u64) -> Result<(), DecodeError> {
        let (n_texts, latest, name) = (self.texts.len(), self.latest, self.name as usize);
        let (values, uniques, hex, last) = self.values_of(key)?;
        if latest
            && let Some(last) = last
            && repeat_at(values, last, name, key)?.is_some()
        {
            return Ok(());
        }
        match values.buf.get(values.pos).copied() {
            Some(1) => {
                values.pos += 1;
                let i = values.varint()?;
                if i as usize >= n_texts {
                    return err(format!("string index {i} out of range"));
                }
            }
            Some(TAG_UNIQUE) => {
                // Only stepped over: the text is checked when a span that holds it is built.
                values.pos += 1;
                if latest {
                    skip_text(uniques, hex)?;
                } else {
                    uniques.slice()?;
                }
            }
            Some(TAG_INT) => {
                values.pos += 1;
                values.varint()?;
            }
            _ => {
                values.value(0)?;
            }
        }
        Ok(())
    }

    /// Whether every group was read to its end.
    fn groups_consumed(&self) -> Result<(), DecodeError> {
        for (key, g) in self.groups.iter().flatten().enumerate() {
            if self.kept.get(key) == Some(&KEY_LEFT) {
                continue;
            }
            if let Some((values, uniques, hex)) = g
                && (values.pos != values.buf.len()
                    || uniques.pos != uniques.buf.len()
                    || hex.pos != hex.buf.len())
            {
                return err(format!("attribute values of key {key}: bytes left over"));
            }
        }
        Ok(())
    }

    fn col(&mut self, c: Col) -> &mut Reader<'a> {
        &mut self.cols[c as usize]
    }

    /// Dictionary string `i`.
    fn dictionary(&self, i: u64) -> Result<&skein_model::Str, DecodeError> {
        let text = self
            .texts
            .get(i as usize)
            .ok_or_else(|| DecodeError(format!("string index {i} out of range")))?;
        Ok(self.strings[i as usize].get_or_init(|| skein_model::attribute_key(text.as_ref())))
    }

    fn string(&mut self, c: Col) -> Result<skein_model::Str, DecodeError> {
        let i = self.col(c).varint()?;
        self.dictionary(i).cloned()
    }

    /// Steps over a dictionary string's index, checking it.
    fn skip_string(&mut self, c: Col) -> Result<(), DecodeError> {
        let i = self.col(c).varint()?;
        if i as usize >= self.texts.len() {
            return err(format!("string index {i} out of range"));
        }
        Ok(())
    }

    /// Steps over attributes (as `Enc::attrs` writes them), building nothing.
    fn skip_attrs(&mut self, keys: Col, values: Col) -> Result<(), DecodeError> {
        let n = self.col(keys).count()?;
        for _ in 0..n {
            self.skip_string(keys)?;
            self.skip_value(values)?;
        }
        Ok(())
    }

    /// Steps over one span of a trace of `count` spans in every column, building nothing
    /// (for a decode that keeps only some traces).
    fn skip_span(&mut self, count: usize) -> Result<(), DecodeError> {
        self.col(Col::SpanIds).take(8)?;
        match self.col(Col::Parents).varint()? {
            k if k == count as u64 + 1 => {
                self.col(Col::ForeignParents).take(8)?;
            }
            k if k > count as u64 + 1 => {
                return err(format!("parent position {k} in a trace of {count} spans"));
            }
            _ => {}
        }
        self.time(STARTS)?;
        self.time(DURATIONS)?;
        self.span_name()?;
        self.col(Col::KindStatus).u8()?;
        self.col(Col::Origins).varint()?;
        self.col(Col::Origins).varint()?;
        self.col(Col::Flags).varint()?;
        self.skip_span_attrs()?;
        self.skip_string(Col::Rest)?;
        self.skip_string(Col::Rest)?;
        for _ in 0..3 {
            self.col(Col::Rest).varint()?;
        }
        for _ in 0..self.col(Col::Rest).count()? {
            self.col(Col::Rest).varint()?;
            self.skip_string(Col::Rest)?;
            self.skip_attrs(Col::Rest, Col::Rest)?;
            self.col(Col::Rest).varint()?;
        }
        for _ in 0..self.col(Col::Rest).count()? {
            self.col(Col::Rest).take(24)?;
            self.skip_string(Col::Rest)?;
            self.skip_attrs(Col::Rest, Col::Rest)?;
            self.col(Col::Rest).varint()?;
            self.col(Col::Rest).varint()?;
        }
        Ok(())
    }

    fn attrs(&mut self, keys: Col, values: Col) -> Result<Vec<KeyValue>, DecodeError> {
        let n = self.col(keys).count()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let key = self.string(keys)?;
            out.push(KeyValue { key, value: self.value(values)? });
        }
        Ok(out)
    }

    /// A span's attributes, only those whose key `keep` accepts (all without `keep`); the
    /// others are left unread in version 3 on (their values are in groups of their own), and
    /// stepped over without being built before. Each key is asked of `keep` once per chunk.
    /// Under callgrind, 30 searches for one client address in a store of 10M realistic spans
    /// (which decode the chunks they read keeping only that key): 538M instructions, against
    /// 651M with the other keys' values stepped over and 757M with them built.
    fn span_attrs(&mut self, keep: Option<&dyn Fn(&str) -> bool>) -> Result<Vec<KeyValue>, DecodeError> {
        let n = self.col(Col::AttrKeys).count()?;
        let Some(keep) = keep else {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let i = self.col(Col::AttrKeys).varint()?;
                let key = self.dictionary(i)?.clone();
                let value = self.span_value(i)?;
                out.push(KeyValue { key, value });
            }
            return Ok(out);
        };
        let mut out = Vec::new();
        for _ in 0..n {
            let i = self.col(Col::AttrKeys).varint()?;
            let Some(text) = self.texts.get(i as usize) else {
                return err(format!("string index {i} out of range"));
            };
            if self.kept.len() <= i as usize {
                self.kept.resize(i as usize + 1, 0);
            }
            if self.kept[i as usize] == 0 {
                self.kept[i as usize] = if keep(text) { KEY_KEPT } else { KEY_LEFT };
            }
            if self.kept[i as usize] == KEY_KEPT {
                let key = self.dictionary(i)?.clone();
                let value = self.span_value(i)?;
                out.push(KeyValue { key, value });
            } else if self.groups.is_none() {
                self.skip_span_value(i)?;
            }
        }
        Ok(out)
    }

    /// Steps over a span's attributes, building nothing.
    fn skip_span_attrs(&mut self) -> Result<(), DecodeError> {
        let n = self.col(Col::AttrKeys).count()?;
        for _ in 0..n {
            let i = self.col(Col::AttrKeys).varint()?;
            if i as usize >= self.texts.len() {
                return err(format!("string index {i} out of range"));
            }
            self.skip_span_value(i)?;
        }
        Ok(())
    }

    /// Steps over one value of [`Dec::value`]'s encoding, allocating nothing for strings.
    fn skip_value(&mut self, c: Col) -> Result<(), DecodeError> {
        let hex_ids = self.latest;
        let r = self.col(c);
        match r.buf.get(r.pos) {
            Some(&1) => {
                r.pos += 1;
                let i = r.varint()?;
                if i as usize >= self.texts.len() {
                    return err(format!("string index {i} out of range"));
                }
            }
            Some(&TAG_UNIQUE) if hex_ids => {
                return err("a unique string outside span attributes");
            }
            Some(&TAG_UNIQUE) => {
                r.pos += 1;
                self.col(Col::Uniques).text()?;
            }
            _ => {
                r.value(0)?;
            }
        }
        Ok(())
    }

    fn value(&mut self, c: Col) -> Result<AttrValue, DecodeError> {
        let hex_ids = self.latest;
        let r = self.col(c);
        match r.buf.get(r.pos) {
            Some(&1) => {
                r.pos += 1;
                Ok(AttrValue::Str(self.string(c)?))
            }
            Some(&TAG_UNIQUE) if hex_ids => err("a unique string outside span attributes"),
            Some(&TAG_UNIQUE) => {
                r.pos += 1;
                Ok(AttrValue::Str(self.col(Col::Uniques).str()?))
            }
            _ => r.value(0),
        }
    }
}

/// Decodes what [`encode_chunk`] wrote.
pub fn decode_chunk(buf: &[u8]) -> Result<Vec<Span>, DecodeError> {
    decode(buf, None, None, None)
}

/// [`decode_chunk`] for a chunk that may number the block's origins: `origins` is its set
/// of them (a chunk of [`COLUMNAR_VERSION_SHARED_ORIGINS`] without it does not decode).
pub fn decode_chunk_in(buf: &[u8], origins: Option<&ChunkOrigins>) -> Result<Vec<Span>, DecodeError> {
    decode(buf, None, None, origins)
}

/// Decodes the spans of the traces `wanted` accepts from what [`encode_chunk`] wrote: the
/// other traces' spans are stepped over (still checked) without being built, and only the
/// strings the kept spans use are made. A read by id wants a few traces of a chunk's hundreds.
/// `origins` as for [`decode_chunk_in`].
pub fn decode_chunk_traces(
    buf: &[u8],
    wanted: &dyn Fn(&TraceId) -> bool,
    origins: Option<&ChunkOrigins>,
) -> Result<Vec<Span>, DecodeError> {
    decode(buf, None, Some(wanted), origins)
}

/// What a projected decode builds of each span besides its fields, resource and scope: the
/// span attributes whose key `attribute` accepts (the others are not built; in version 3 on
/// their values are not even read), and its events when `events`.
#[derive(Clone, Copy)]
pub struct Projection<'p> {
    pub attribute: &'p dyn Fn(&str) -> bool,
    pub events: bool,
}

/// Decodes what [`encode_chunk`] wrote, building of each span only what `projection` asks for:
/// analyses that read every span of a window (the doctor's scan) keep the attributes they read
/// and no events, a search what its matcher reads. `origins` as for [`decode_chunk_in`].
pub fn decode_chunk_projected(
    buf: &[u8],
    projection: Projection<'_>,
    origins: Option<&ChunkOrigins>,
) -> Result<Vec<Span>, DecodeError> {
    decode(buf, Some(projection), None, origins)
}

/// The first byte of a chunk stored packed (block format 7): each column compressed on its
/// own. Chunks of earlier formats are one zstd frame of the whole encoding, whose first byte
/// is 0x28, so the two are told apart by this byte alone.
pub const PACKED: u8 = 0xC7;

/// A column's bytes as they are (too small or too random for zstd to shrink)…
const COLUMN_STORED: u8 = 0;
/// …or as a zstd frame…
const COLUMN_ZSTD: u8 = 1;
/// …or as a zstd frame made with the block's dictionary of that column (block format 9).
const COLUMN_ZSTD_DICT: u8 = 2;

/// The columns a block's dictionaries are for: the string dictionary and the unique strings,
/// the two whose text recurs from chunk to chunk (user agents, routes, statements, names, the
/// fixed parts of ids) where each chunk is compressed alone. Measured on 2M realistic spans,
/// with 32 KiB dictionaries made from 8 chunks and used on the other 1,300: the dictionary
/// column 3.96 → 2.60 bytes per span, the unique strings 3.22 → 2.84 (dictionaries trained by
/// zstd's trainer: 2.56 and 2.81, for 40 ms of training per merge); the other columns gain
/// nothing (the attribute values lose a little) from a dictionary of their own.
const DICT_COLUMNS: [Col; 2] = [Col::Strings, Col::Uniques];

/// Bytes of a column's dictionary, at most: 64 KiB for `Strings` (in version 5 the dictionary
/// and the unique strings: 5.37 → 5.02 bytes per span with 64 KiB instead of 32 for each of the
/// two columns of version 4), 32 KiB for `Uniques` (of older chunks).
fn dict_bytes(col: Col) -> usize {
    match col {
        Col::Strings => 64 * 1024,
        _ => 32 * 1024,
    }
}

/// A column with less text than this in the samples gets no dictionary.
const DICT_MIN_BYTES: usize = 4 * 1024;

/// Bytes a block's column dictionaries may claim, at most: a larger claim is damage.
const MAX_DICTS_BYTES: usize = 1 << 20;

/// zstd dictionaries for some columns of a block's chunks (block format 9): raw content
/// (zstd finds matches in it as in text it has just seen), the text of those columns in a few
/// of the block's chunks, made when a merge writes a big block (see `docs/format/block.md`,
/// "Column dictionaries"). Prepared for compression when a merge first uses them; a reader
/// uses them as they are (raw content needs no preparing to decompress with).
pub struct ColumnDicts {
    /// (column, the dictionary's bytes), by column.
    raw: Vec<(u8, Vec<u8>)>,
    prepared_for_compression: std::sync::OnceLock<Vec<(u8, zstd::zstd_safe::CDict<'static>)>>,
}

impl std::fmt::Debug for ColumnDicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.raw.iter().map(|(c, d)| (c, d.len()))).finish()
    }
}

impl ColumnDicts {
    /// Dictionaries made of `samples` (packed chunks, each with the dictionaries it was
    /// packed with): per column of [`DICT_COLUMNS`], the samples' text of it one after the
    /// other, its last [`dict_bytes`] (zstd weighs the end of a dictionary most); `None` when
    /// no column has [`DICT_MIN_BYTES`] of text.
    pub(crate) fn sample(
        samples: &[(Vec<u8>, Option<Arc<ColumnDicts>>)],
    ) -> Result<Option<ColumnDicts>, DecodeError> {
        let mut raw = Vec::new();
        for col in DICT_COLUMNS {
            let mut text = Vec::new();
            for (packed, dicts) in samples {
                text.extend_from_slice(&packed_column(packed, col as usize, dicts.as_deref())?);
            }
            if text.len() < DICT_MIN_BYTES {
                continue;
            }
            text.drain(..text.len().saturating_sub(dict_bytes(col)));
            // A dictionary that starts with zstd's dictionary magic number is read as a
            // trained one: such text is kept out.
            if text.starts_with(&0xEC30_A437u32.to_le_bytes()) {
                continue;
            }
            raw.push((col as u8, text));
        }
        Ok((!raw.is_empty()).then(|| ColumnDicts::from_raw(raw)))
    }

    fn from_raw(raw: Vec<(u8, Vec<u8>)>) -> ColumnDicts {
        ColumnDicts { raw, prepared_for_compression: std::sync::OnceLock::new() }
    }

    /// The dictionaries as a block stores them: `zstd(n, (column u8, len:varint, bytes)*)`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.varint(self.raw.len() as u64);
        for (col, dict) in &self.raw {
            w.u8(*col);
            w.bytes(dict);
        }
        zstd::bulk::compress(&w.buf, 3).expect("zstd compresses any input")
    }

    /// What [`ColumnDicts::encode`] wrote; a column out of range, or named twice, is an error.
    pub(crate) fn decode(compressed: &[u8]) -> Result<ColumnDicts, DecodeError> {
        let bytes = zstd::bulk::decompress(compressed, MAX_DICTS_BYTES)
            .map_err(|e| DecodeError(format!("does not decompress: {e}")))?;
        let mut r = Reader { buf: &bytes, pos: 0 };
        let n = r.count()?;
        let mut raw: Vec<(u8, Vec<u8>)> = Vec::with_capacity(n);
        for _ in 0..n {
            let col = r.u8()?;
            if col as usize >= COLUMNS || raw.iter().any(|(c, _)| *c == col) {
                return err(format!("a dictionary for column {col}, out of range or twice"));
            }
            raw.push((col, r.slice()?.to_vec()));
        }
        if !r.is_empty() {
            return err("trailing bytes after the dictionaries");
        }
        Ok(ColumnDicts::from_raw(raw))
    }

    /// Bytes the dictionaries take (as stored; prepared, zstd's tables come on top).
    pub(crate) fn len(&self) -> usize {
        self.raw.iter().map(|(_, d)| d.len()).sum()
    }

    fn for_compression(&self, col: usize) -> Option<&zstd::zstd_safe::CDict<'static>> {
        let prepared = self.prepared_for_compression.get_or_init(|| {
            self.raw
                .iter()
                .filter_map(|(c, d)| {
                    zstd::zstd_safe::CDict::try_create(d, COLUMN_LEVELS[*c as usize]).map(|p| (*c, p))
                })
                .collect()
        });
        prepared.iter().find(|(c, _)| *c as usize == col).map(|(_, d)| d)
    }

    fn for_decompression(&self, col: usize) -> Option<&[u8]> {
        self.raw.iter().find(|(c, _)| *c as usize == col).map(|(_, d)| &d[..])
    }
}

/// The columns of a packed chunk: its header, then per column (raw length, mode, stored bytes).
struct PackedColumns<'a> {
    version: u8,
    n_traces: u64,
    n_spans: u64,
    columns: Vec<(u64, u8, &'a [u8])>,
}

fn packed_columns(packed: &[u8]) -> Result<PackedColumns<'_>, DecodeError> {
    let mut r = Reader { buf: packed, pos: 0 };
    if r.u8()? != PACKED {
        return err("not a packed chunk");
    }
    let version = r.u8()?;
    let (n_traces, n_spans) = (r.varint()?, r.varint()?);
    let n_columns = r.count()?;
    let mut columns = Vec::with_capacity(n_columns);
    for c in 0..n_columns {
        let raw_len = r.varint()?;
        if raw_len > MAX_COLUMN_BYTES {
            return err(format!("column {c} claims {raw_len} bytes"));
        }
        columns.push((raw_len, r.u8()?, r.slice()?));
    }
    if !r.is_empty() {
        return err("trailing bytes after the last column");
    }
    Ok(PackedColumns { version, n_traces, n_spans, columns })
}

/// Column `c` of a packed chunk as stored (`stored`, in `mode`) decompressed into `out`
/// (appended: exactly `raw_len` bytes). `zstd` is made when first needed.
fn unpack_column(
    c: usize,
    (raw_len, mode, stored): (u64, u8, &[u8]),
    dicts: Option<&ColumnDicts>,
    zstd: &mut Option<zstd::zstd_safe::DCtx<'static>>,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    if mode == COLUMN_STORED {
        if stored.len() as u64 != raw_len {
            return err(format!("column {c} holds {} bytes, not {raw_len}", stored.len()));
        }
        out.extend_from_slice(stored);
        return Ok(());
    }
    let dict =
        match mode {
            COLUMN_ZSTD => None,
            COLUMN_ZSTD_DICT => Some(dicts.and_then(|d| d.for_decompression(c)).ok_or_else(|| {
                DecodeError(format!("column {c} needs a dictionary the block does not hold"))
            })?),
            other => return err(format!("column {c} has an unknown mode {other}")),
        };
    let zstd = match zstd {
        Some(z) => z,
        None => zstd.insert(
            zstd::zstd_safe::DCtx::try_create()
                .ok_or_else(|| DecodeError("zstd: no decompression context".into()))?,
        ),
    };
    let start = out.len();
    out.resize(start + raw_len as usize, 0);
    let result = match dict {
        None => zstd.decompress(&mut out[start..], stored),
        Some(d) => zstd.decompress_using_dict(&mut out[start..], stored, d),
    };
    let n = result.map_err(|code| {
        DecodeError(format!("column {c} does not decompress: {}", zstd::zstd_safe::get_error_name(code)))
    })?;
    if n as u64 != raw_len {
        return err(format!("column {c} decompresses to {n} bytes, not {raw_len}"));
    }
    Ok(())
}

/// Whether packed chunk `packed` may hold every one of `texts` as a string: `false` only when
/// one of them occurs nowhere in the bytes of the columns that hold a columnar chunk's texts
/// (`Strings`, and before version 5 `Uniques`: every string of its spans, their events and
/// links, and of its own resources and scopes, but not those of the block's origins that
/// shared-origin chunks number) — a text that version 5 writes as a hex id, as its bytes in
/// `HexBytes` (see [`put_text`]). Unpacking those columns costs a small part of decoding the
/// chunk: a search asks this of a chunk that its Bloom filter could not rule out before it
/// decodes the chunk.
pub(crate) fn packed_may_hold_texts(
    packed: &[u8],
    dicts: Option<&ColumnDicts>,
    texts: &[&str],
) -> Result<bool, DecodeError> {
    if texts.is_empty() {
        return Ok(true);
    }
    let p = packed_columns(packed)?;
    if !is_columnar(Some(&p.version)) {
        return Ok(true);
    }
    let hex_ids = p.version >= COLUMNAR_VERSION_REPEATS;
    let mut zstd = None;
    let mut unpacked = |columns: &[Col]| -> Result<Vec<u8>, DecodeError> {
        let mut bytes = Vec::new();
        for &c in columns {
            let c = c as usize;
            let column = *p.columns.get(c).ok_or_else(|| DecodeError(format!("no column {c}")))?;
            unpack_column(c, column, dicts, &mut zstd, &mut bytes)?;
            // The columns apart: a text never spans the two.
            bytes.push(0);
        }
        Ok(bytes)
    };
    let texts_at = unpacked(if hex_ids { &[Col::Strings] } else { &[Col::Strings, Col::Uniques] })?;
    let mut hex_at = None;
    for text in texts {
        let mut id = Vec::new();
        let found = if hex_ids && pack_hex(text, &mut id).is_some() {
            let hex = match &hex_at {
                Some(hex) => hex,
                None => hex_at.insert(unpacked(&[Col::HexBytes])?),
            };
            memchr::memmem::find(hex, &id).is_some()
        } else {
            memchr::memmem::find(&texts_at, text.as_bytes()).is_some()
        };
        if !found {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The raw bytes of column `col` of a packed chunk.
fn packed_column(packed: &[u8], col: usize, dicts: Option<&ColumnDicts>) -> Result<Vec<u8>, DecodeError> {
    let p = packed_columns(packed)?;
    let column = *p.columns.get(col).ok_or_else(|| DecodeError(format!("no column {col}")))?;
    let mut out = Vec::new();
    unpack_column(col, column, dicts, &mut None, &mut out)?;
    Ok(out)
}

/// The zstd contexts a merge packs chunks anew with (see [`Repacker::repack`]), kept from chunk
/// to chunk.
#[derive(Default)]
pub(crate) struct Repacker {
    packer: Packer,
    decompressor: Option<zstd::zstd_safe::DCtx<'static>>,
}

impl Repacker {
    /// A packed chunk with its [`DICT_COLUMNS`] compressed anew with `to` (each stored as it
    /// is when that is not smaller), decompressed first with `from` (the dictionaries it was
    /// packed with) where they need it; the other columns are kept byte for byte. Unpacked, it
    /// is the same columnar chunk.
    pub(crate) fn repack(
        &mut self,
        packed: &[u8],
        from: Option<&ColumnDicts>,
        to: &ColumnDicts,
    ) -> Result<Vec<u8>, DecodeError> {
        let p = packed_columns(packed)?;
        let mut out = Writer { buf: Vec::with_capacity(packed.len()) };
        out.u8(PACKED);
        out.u8(p.version);
        out.varint(p.n_traces);
        out.varint(p.n_spans);
        out.varint(p.columns.len() as u64);
        let mut raw = Vec::new();
        for (c, &(raw_len, mode, stored)) in p.columns.iter().enumerate() {
            out.varint(raw_len);
            let dict = to.for_compression(c).filter(|_| DICT_COLUMNS.iter().any(|d| *d as usize == c));
            let Some(dict) = dict else {
                out.u8(mode);
                out.bytes(stored);
                continue;
            };
            raw.clear();
            unpack_column(c, (raw_len, mode, stored), from, &mut self.decompressor, &mut raw)?;
            let context = self.packer.context(COLUMN_LEVELS[c]).context_mut();
            let mut compressed = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
            context
                .compress_using_cdict(&mut compressed, &raw, dict)
                .map_err(|code| DecodeError(format!("zstd: {}", zstd::zstd_safe::get_error_name(code))))?;
            if compressed.len() < raw.len() {
                out.u8(COLUMN_ZSTD_DICT);
                out.bytes(&compressed);
            } else {
                out.u8(COLUMN_STORED);
                out.bytes(&raw);
            }
        }
        Ok(out.buf)
    }
}

/// The largest column an unpacked chunk may claim: far more than any chunk the writer cuts
/// (about 640 KiB of spans), so a larger claim is damage, refused before anything is allocated.
const MAX_COLUMN_BYTES: u64 = 256 << 20;

/// The zstd level each column is packed at (by [`Col`] order; a reader needs no level).
/// Measured on 1,500-span chunks of the realistic load, bytes per span and ns per span of
/// compression at levels 1 / 3 / 5: the attribute keys 0.80 / 0.76 / 0.44 (13 / 13 / 29 ns);
/// the dictionary (4.95), ids, starts and durations (near their entropy) are as small at level
/// 1 as at 3, for less time (the dictionary 25 instead of 40 ns). Other columns shrink a little
/// at level 5 for much more time (the attribute values 5.10 → 4.75 bytes for 47 → 119 ns: under
/// callgrind, level 5 for them and five small columns cost 4 % of the server's instructions):
/// they stay at 3. Chunks take 0.3 bytes per span fewer than at level 3 throughout, for no
/// more CPU.
const COLUMN_LEVELS: [i32; COLUMNS] = {
    let mut levels = [3; COLUMNS];
    levels[Col::Strings as usize] = 1;
    levels[Col::TraceIds as usize] = 1;
    levels[Col::TraceSpans as usize] = 1;
    levels[Col::TraceStarts as usize] = 1;
    levels[Col::SpanIds as usize] = 1;
    levels[Col::ForeignParents as usize] = 1;
    levels[Col::Starts as usize] = 1;
    levels[Col::Durations as usize] = 1;
    levels[Col::Flags as usize] = 1;
    levels[Col::AttrKeys as usize] = 5;
    levels[Col::StartsByte2 as usize] = 1;
    levels[Col::StartsByte3 as usize] = 1;
    levels[Col::StartsBytesRest as usize] = 1;
    levels[Col::DurationsByte2 as usize] = 1;
    levels[Col::DurationsByte3 as usize] = 1;
    levels[Col::DurationsBytesRest as usize] = 1;
    levels[Col::HexBytes as usize] = 1;
    levels
};

/// Columns that are random bytes on nearly every load, by [`Col`] order: trace and span ids
/// (W3C ids are random), the trace starts' deltas, the third byte of durations, the bytes of
/// hex ids. Each costs zstd as much time as a compressible column of its size for nothing (on
/// the realistic load they were an eighth of the time spent packing chunks, and saved 0.04 %
/// of their bytes), so zstd first tries its first [`PROBE_BYTES`], and the column is stored
/// when those do not shrink by more than a sixty-fourth. Ids that are not random (counters,
/// ids of a fixed prefix) shrink in the probe, and are compressed as before.
const PROBED: [bool; COLUMNS] = {
    let mut probed = [false; COLUMNS];
    probed[Col::TraceIds as usize] = true;
    probed[Col::TraceStarts as usize] = true;
    probed[Col::SpanIds as usize] = true;
    probed[Col::DurationsByte3 as usize] = true;
    probed[Col::HexBytes as usize] = true;
    probed
};

/// The bytes of a [`PROBED`] column zstd tries first (a column shorter than twice this is
/// compressed whole).
const PROBE_BYTES: usize = 1024;

/// The zstd level of what is written to be read once soon (a head block's index sections):
/// one of zstd's fast levels, which a packer keeps a context of too.
pub(crate) const QUICK_LEVEL: i32 = -5;

/// The zstd contexts that pack chunks: one per level of `COLUMN_LEVELS`, so that no context
/// changes its level between frames (a context whose parameters change sets its tables up
/// again). Reuse one for many chunks: a new context allocates and clears its tables at its
/// first frames. It also keeps the buffers a chunk is encoded into and a column compressed
/// into, so that chunk after chunk reuses their room.
pub struct Packer {
    /// (level, its context), by level.
    contexts: Vec<(i32, zstd::bulk::Compressor<'static>)>,
    buffers: ChunkBuffers,
    compressed: Vec<u8>,
}

impl Packer {
    pub fn new() -> Packer {
        let mut levels = COLUMN_LEVELS.to_vec();
        levels.push(QUICK_LEVEL);
        levels.sort_unstable();
        levels.dedup();
        let contexts = levels
            .into_iter()
            .map(|l| (l, zstd::bulk::Compressor::new(l).expect("the column levels are valid zstd levels")))
            .collect();
        Packer { contexts, buffers: ChunkBuffers::default(), compressed: Vec::new() }
    }

    /// The buffers to encode the next chunk into (see [`encode_chunk_detailed`]); packing it
    /// with [`Packer::pack_encoded`] gives them back.
    pub(crate) fn take_buffers(&mut self) -> ChunkBuffers {
        std::mem::take(&mut self.buffers)
    }

    /// `encoded` packed as [`pack`] packs its bytes, from its columns as they are; its buffers
    /// come back to this packer.
    pub(crate) fn pack_encoded(&mut self, encoded: &mut EncodedChunk<'_>) -> Vec<u8> {
        let buffers = std::mem::take(&mut encoded.buffers);
        let columns: Vec<&[u8]> = buffers.cols.iter().map(|c| &c.buf[..]).collect();
        let packed = pack_columns(encoded.header, &columns, self);
        self.buffers = buffers;
        packed
    }

    /// The context of `level` (one of [`COLUMN_LEVELS`]; another gets the nearest below).
    fn context(&mut self, level: i32) -> &mut zstd::bulk::Compressor<'static> {
        let at = self.contexts.partition_point(|(l, _)| *l <= level).saturating_sub(1);
        &mut self.contexts[at].1
    }

    /// `bytes` as one zstd frame at `level` (one of [`COLUMN_LEVELS`]), with this packer's
    /// context: a block's index sections, which a new context per section made set up and
    /// clear tables sized for any input (2 % of the server's instructions per head's block).
    pub(crate) fn compress(&mut self, level: i32, bytes: &[u8]) -> Vec<u8> {
        self.context(level).compress(bytes).expect("zstd compresses any input")
    }
}

impl Default for Packer {
    fn default() -> Self {
        Packer::new()
    }
}

/// A columnar chunk (as [`encode_chunk`] writes it) stored packed: the header as it is, then
/// each column compressed by zstd on its own (at its level in `COLUMN_LEVELS`), or stored
/// when that is not smaller. Columns differ (random ids, small deltas, text), and one frame for
/// all of them mixes their statistics: on the realistic load, packed chunks take about 6 %
/// fewer bytes than one frame of the whole chunk. See `docs/format/block.md`, "Packed chunks".
pub fn pack(encoded: &[u8], packer: &mut Packer) -> Result<Vec<u8>, DecodeError> {
    let mut r = Reader { buf: encoded, pos: 0 };
    let version = r.u8()?;
    let (n_traces, n_spans) = (r.varint()?, r.varint()?);
    let mut columns = Vec::new();
    while !r.is_empty() {
        columns.push(r.slice()?);
    }
    Ok(pack_columns((version, n_traces, n_spans), &columns, packer))
}

/// The packed chunk of header (version, traces, spans) and `columns` (see [`pack`]).
fn pack_columns(
    (version, n_traces, n_spans): (u8, u64, u64),
    columns: &[&[u8]],
    packer: &mut Packer,
) -> Vec<u8> {
    let raw: usize = columns.iter().map(|c| c.len()).sum();
    let mut out = Writer { buf: Vec::with_capacity(raw / 3 + columns.len() * 8 + 16) };
    out.u8(PACKED);
    out.u8(version);
    out.varint(n_traces);
    out.varint(n_spans);
    out.varint(columns.len() as u64);
    let mut compressed = std::mem::take(&mut packer.compressed);
    for (i, &column) in columns.iter().enumerate() {
        out.varint(column.len() as u64);
        compressed.clear();
        compressed.reserve(zstd::zstd_safe::compress_bound(column.len()));
        let context = packer.context(COLUMN_LEVELS.get(i).copied().unwrap_or(3));
        if PROBED.get(i) == Some(&true) && column.len() >= 2 * PROBE_BYTES {
            context
                .compress_to_buffer(&column[..PROBE_BYTES], &mut compressed)
                .expect("zstd compresses any input into its bound");
            if compressed.len() > PROBE_BYTES - PROBE_BYTES / 64 {
                out.u8(COLUMN_STORED);
                out.bytes(column);
                continue;
            }
            compressed.clear();
        }
        context
            .compress_to_buffer(column, &mut compressed)
            .expect("zstd compresses any input into its bound");
        if compressed.len() < column.len() {
            out.u8(COLUMN_ZSTD);
            out.bytes(&compressed);
        } else {
            out.u8(COLUMN_STORED);
            out.bytes(column);
        }
    }
    packer.compressed = compressed;
    out.buf
}

/// The columnar encoding of a packed chunk (see [`pack`]), for [`decode_chunk`] and its kin.
pub fn unpack(packed: &[u8]) -> Result<Vec<u8>, DecodeError> {
    unpack_with(packed, None)
}

/// [`unpack`] for a chunk whose columns may be packed with its block's dictionaries `dicts`.
pub(crate) fn unpack_with(packed: &[u8], dicts: Option<&ColumnDicts>) -> Result<Vec<u8>, DecodeError> {
    let p = packed_columns(packed)?;
    let mut out = Writer { buf: Vec::with_capacity(packed.len() * 4) };
    out.u8(p.version);
    out.varint(p.n_traces);
    out.varint(p.n_spans);
    let mut zstd = None;
    for (c, &column) in p.columns.iter().enumerate() {
        out.varint(column.0);
        unpack_column(c, column, dicts, &mut zstd, &mut out.buf)?;
    }
    Ok(out.buf)
}

fn decode(
    buf: &[u8],
    projection: Option<Projection<'_>>,
    wanted: Option<&dyn Fn(&TraceId) -> bool>,
    origins: Option<&ChunkOrigins>,
) -> Result<Vec<Span>, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let version = r.u8()?;
    if !is_columnar(Some(&version)) {
        return err(format!("unsupported columnar chunk version {version}"));
    }
    let shared = match (version, origins) {
        (COLUMNAR_VERSION_SHARED_ORIGINS | COLUMNAR_VERSION_REPEATS, None) => {
            return err("the chunk numbers its block's resources and scopes, which were not given");
        }
        (COLUMNAR_VERSION_SHARED_ORIGINS | COLUMNAR_VERSION_REPEATS, Some(origins)) => Some(origins),
        _ => None,
    };
    let n_traces = r.count()?;
    let n_spans = r.varint()? as usize;
    let mut cols = Vec::with_capacity(columns_of(version));
    for _ in 0..columns_of(version) {
        let len = r.len()?;
        cols.push(Reader { buf: r.take(len)?, pos: 0 });
    }
    if r.pos != buf.len() {
        return err(format!("{} trailing bytes", buf.len() - r.pos));
    }
    let latest = version >= COLUMNAR_VERSION_REPEATS;
    let mut d = Dec {
        cols,
        texts: Vec::new(),
        strings: Vec::new(),
        groups: None,
        no_hex: Reader { buf: &[], pos: 0 },
        latest,
        last: Vec::new(),
        kept: Vec::new(),
        name_ordinals: Vec::new(),
        names: 0,
        name: 0,
    };
    let n = d.col(Col::Strings).count()?;
    let mut texts = Vec::with_capacity(n);
    for _ in 0..n {
        texts.push(if latest {
            let [w, hex] = d
                .cols
                .get_disjoint_mut([Col::Strings as usize, Col::HexBytes as usize])
                .expect("two columns");
            read_text(w, hex)?
        } else {
            std::borrow::Cow::Borrowed(d.col(Col::Strings).text()?)
        });
    }
    d.strings = vec![std::cell::OnceCell::new(); n];
    d.texts = texts;
    if latest {
        // The unique strings follow the dictionary.
        if !d.col(Col::Uniques).is_empty() {
            return err("a version 5 chunk with a unique strings column");
        }
        let strings = d.col(Col::Strings);
        let uniques = Reader { buf: &strings.buf[strings.pos..], pos: 0 };
        strings.pos = strings.buf.len();
        d.cols[Col::Uniques as usize] = uniques;
        d.name_ordinals = vec![NO_INDEX; n];
    }
    if version >= COLUMNAR_VERSION {
        d.read_groups()?;
    }
    if latest {
        // One list per key with a group (indexed as the groups are).
        d.last = vec![Vec::new(); d.groups.as_ref().map_or(0, Vec::len)];
    }

    let n = d.col(Col::Tables).count()?;
    let mut resources = Vec::with_capacity(n);
    for _ in 0..n {
        let attributes = d.attrs(Col::Tables, Col::Tables)?;
        let dropped = u32_of(d.col(Col::Tables).varint()?, "dropped count")?;
        resources.push(Arc::new(Resource {
            attributes,
            dropped_attributes_count: dropped,
            schema_url: d.string(Col::Tables)?.into(),
        }));
    }
    let n = d.col(Col::Tables).count()?;
    let mut scopes = Vec::with_capacity(n);
    for _ in 0..n {
        let name = d.string(Col::Tables)?;
        let version = d.string(Col::Tables)?;
        let attributes = d.attrs(Col::Tables, Col::Tables)?;
        let dropped = u32_of(d.col(Col::Tables).varint()?, "dropped count")?;
        scopes.push(Arc::new(InstrumentationScope {
            name: name.into(),
            version: version.into(),
            attributes,
            dropped_attributes_count: dropped,
            schema_url: d.string(Col::Tables)?.into(),
        }));
    }
    let (resources, scopes) = match shared {
        None => (&resources[..], &scopes[..]),
        Some(_) if !resources.is_empty() || !scopes.is_empty() => {
            return err("a chunk that numbers its block's origins holds resources or scopes too");
        }
        Some(shared) => (&shared.resources[..], &shared.scopes[..]),
    };

    // Every span takes at least 8 bytes of ids, so the count is checked against them.
    if n_spans > d.cols[Col::SpanIds as usize].buf.len() / 8 {
        return err(format!("{n_spans} spans but ids for fewer"));
    }
    let mut spans: Vec<Span> = Vec::with_capacity(if wanted.is_some() { 0 } else { n_spans });
    let mut skipped = 0usize;
    // Version 4: starts relative to a span of the trace written before (see the encoder), and
    // per span of the trace (by position) its last child read so far.
    let relative_starts = shared.is_some();
    let mut last_child: Vec<u32> = Vec::new();
    let mut start = 0u64;
    // A decode of some traces stops after the last of them: a lookup by id read every span
    // of its chunk, half of them after its trace's. (A full decode, as scans and compaction
    // make, still checks that every column is read to its end; the chunk's checksum is
    // checked before any decode.) Under callgrind, 50 lookups by id in a store of 10M
    // realistic spans: 237M → 169M instructions.
    let until = match wanted {
        None => n_traces,
        Some(wanted) => {
            let ids = &d.cols[Col::TraceIds as usize];
            let ids = ids.buf.get(ids.pos..).unwrap_or_default();
            ids.chunks_exact(16)
                .take(n_traces)
                .rposition(|id| {
                    let id: [u8; 16] = id.try_into().expect("chunks of 16");
                    TraceId::from_bytes(id).is_ok_and(|id| wanted(&id))
                })
                .map_or(0, |last| last + 1)
        }
    };
    for _ in 0..until {
        let trace_id = TraceId::from_bytes(d.col(Col::TraceIds).array()?)
            .map_err(|e| DecodeError(format!("trace id: {e}")))?;
        let count = d.col(Col::TraceSpans).varint()? as usize;
        if count > n_spans - spans.len() - skipped {
            return err(format!("trace with {count} spans, more than are left"));
        }
        start = start.wrapping_add(unzigzag(d.col(Col::TraceStarts).varint()?) as u64);
        if wanted.is_some_and(|wanted| !wanted(&trace_id)) {
            for _ in 0..count {
                d.skip_span(count)?;
            }
            skipped += count;
            continue;
        }
        let first = spans.len();
        let mut parents = Vec::with_capacity(count);
        if relative_starts {
            last_child.clear();
            last_child.resize(count, NO_INDEX);
        }
        for i in 0..count {
            let span_id = SpanId::from_bytes(d.col(Col::SpanIds).array()?)
                .map_err(|e| DecodeError(format!("span id: {e}")))?;
            let parent = d.col(Col::Parents).varint()?;
            parents.push(match parent {
                0 => None,
                k if k <= count as u64 => Some(Err(k as usize - 1)),
                k if k == count as u64 + 1 => {
                    Some(Ok(SpanId::from_bytes(d.col(Col::ForeignParents).array()?)
                        .map_err(|e| DecodeError(format!("parent id: {e}")))?))
                }
                k => return err(format!("parent position {k} in a trace of {count} spans")),
            });
            let s_start = match parents.last() {
                Some(Some(Err(k))) if relative_starts && *k < i => {
                    let before = match last_child[*k] {
                        NO_INDEX => spans[first + *k].start_time_unix_nano,
                        j => spans[first + j as usize].end_time_unix_nano,
                    };
                    last_child[*k] = i as u32;
                    before.wrapping_add(unzigzag(d.time(STARTS)?) as u64)
                }
                _ => start.wrapping_add(d.time(STARTS)?),
            };
            let end = s_start.wrapping_add(unzigzag(d.time(DURATIONS)?) as u64);
            let name = d.span_name()?;
            let name = d.dictionary(name)?.clone();
            let ks = d.col(Col::KindStatus).u8()?;
            let kind = SpanKind::from_code(ks & 7)
                .ok_or_else(|| DecodeError(format!("bad span kind {}", ks & 7)))?;
            let code = StatusCode::from_code(ks >> 3)
                .ok_or_else(|| DecodeError(format!("bad status code {}", ks >> 3)))?;
            let ri = d.col(Col::Origins).varint()? as usize;
            let ci = d.col(Col::Origins).varint()? as usize;
            let resource = resources.get(ri).ok_or(DecodeError("resource index out of range".into()))?;
            let scope = scopes.get(ci).ok_or(DecodeError("scope index out of range".into()))?;
            let flags = u32_of(d.col(Col::Flags).varint()?, "flags")?;
            let attributes = d.span_attrs(projection.map(|p| p.attribute))?;
            let trace_state = d.string(Col::Rest)?;
            let message = d.string(Col::Rest)?;
            let dropped_attributes_count = u32_of(d.col(Col::Rest).varint()?, "dropped count")?;
            let dropped_events_count = u32_of(d.col(Col::Rest).varint()?, "dropped count")?;
            let dropped_links_count = u32_of(d.col(Col::Rest).varint()?, "dropped count")?;
            let ne = d.col(Col::Rest).count()?;
            let mut events = Vec::with_capacity(ne);
            for _ in 0..ne {
                let time = s_start.wrapping_add(unzigzag(d.col(Col::Rest).varint()?) as u64);
                let name = d.string(Col::Rest)?;
                let attributes = d.attrs(Col::Rest, Col::Rest)?;
                let dropped = u32_of(d.col(Col::Rest).varint()?, "dropped count")?;
                if projection.is_none_or(|p| p.events) {
                    events.push(Event {
                        time_unix_nano: time,
                        name,
                        attributes,
                        dropped_attributes_count: dropped,
                    });
                }
            }
            let nl = d.col(Col::Rest).count()?;
            let mut links = Vec::with_capacity(nl);
            for _ in 0..nl {
                let trace_id = TraceId::from_bytes(d.col(Col::Rest).array()?)
                    .map_err(|e| DecodeError(format!("link trace id: {e}")))?;
                let span_id = SpanId::from_bytes(d.col(Col::Rest).array()?)
                    .map_err(|e| DecodeError(format!("link span id: {e}")))?;
                let trace_state = d.string(Col::Rest)?;
                let attributes = d.attrs(Col::Rest, Col::Rest)?;
                let dropped = u32_of(d.col(Col::Rest).varint()?, "dropped count")?;
                let flags = u32_of(d.col(Col::Rest).varint()?, "flags")?;
                links.push(Link {
                    trace_id,
                    span_id,
                    trace_state: trace_state.into(),
                    attributes,
                    dropped_attributes_count: dropped,
                    flags,
                });
            }
            spans.push(Span {
                trace_id,
                span_id,
                parent_span_id: None,
                trace_state: trace_state.into(),
                flags,
                name,
                kind,
                start_time_unix_nano: s_start,
                end_time_unix_nano: end,
                attributes,
                dropped_attributes_count,
                events,
                dropped_events_count,
                links,
                dropped_links_count,
                status: Status { code, message: message.into() },
                resource: Arc::clone(resource),
                scope: Arc::clone(scope),
            });
        }
        for (i, p) in parents.into_iter().enumerate() {
            spans[first + i].parent_span_id = match p {
                None => None,
                Some(Ok(foreign)) => Some(foreign),
                Some(Err(k)) => Some(spans[first + k].span_id),
            };
        }
    }
    if until < n_traces {
        return Ok(spans);
    }
    if spans.len() + skipped != n_spans {
        return err(format!("{} spans decoded, {n_spans} announced", spans.len() + skipped));
    }
    for (i, c) in d.cols.iter().enumerate() {
        if c.pos != c.buf.len() {
            return err(format!("column {i}: {} bytes left over", c.buf.len() - c.pos));
        }
    }
    d.groups_consumed()?;
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use skein_store::testdata::SpanBuilder;

    use super::*;

    fn rich() -> Vec<Span> {
        skein_store::testdata::rich_batch()
    }

    fn sorted(mut v: Vec<Span>) -> Vec<Span> {
        v.sort_by_key(|s| (s.trace_id, s.span_id));
        v
    }

    #[test]
    fn round_trips_every_field() {
        let spans = rich();
        let decoded = decode_chunk(&encode_chunk(&spans)).unwrap();
        assert_eq!(sorted(decoded), sorted(spans));
    }

    #[test]
    fn a_value_used_once_by_a_span_and_again_by_a_resource_or_event_round_trips() {
        let spans = vec![
            SpanBuilder::new(1, 1).attr("app.user.id", AttrValue::Str("u-1".into())).build(),
            SpanBuilder::new(1, 2)
                .resource_attr("host.name", AttrValue::Str("web-1".into()))
                .attr("peer.name", AttrValue::Str("web-1".into()))
                .event("hop", 1, vec![KeyValue::string("to", "web-1")])
                .build(),
        ];
        let decoded = decode_chunk(&encode_chunk(&spans)).unwrap();
        assert_eq!(sorted(decoded), sorted(spans));
    }

    #[test]
    fn parents_inside_and_outside_the_trace_and_ends_before_starts_survive() {
        let mut spans = vec![
            SpanBuilder::new(1, 1).build(),
            SpanBuilder::new(1, 2).parent(1).build(),
            SpanBuilder::new(1, 3).parent(9).build(), // parent not in the chunk
            SpanBuilder::new(2, 1).parent(2).build(), // another trace: its parent is foreign too
            SpanBuilder::new(1, 4).parent(4).build(), // its own parent
        ];
        spans[1].end_time_unix_nano = spans[1].start_time_unix_nano - 5;
        let decoded = decode_chunk(&encode_chunk(&spans)).unwrap();
        assert_eq!(sorted(decoded), sorted(spans));
    }

    #[test]
    fn big_and_interleaved_traces_keep_their_parents_and_order() {
        // Trace 1 has more spans than are searched in place (a map finds the parents), with
        // trace 2 interleaved; spans come back in their order within each trace.
        let mut spans = Vec::new();
        for i in 1..=40u8 {
            let parent = match i {
                1 => None,
                7 => Some(200),            // not in the chunk
                _ => Some(41 - i.min(40)), // later spans are parents of earlier ones too
            };
            let mut b =
                SpanBuilder::new(1, i).attr("app.order.id", AttrValue::Str(format!("o-{}", i % 3).into()));
            if let Some(p) = parent {
                b = b.parent(p);
            }
            spans.push(b.build());
            if i % 10 == 0 {
                spans.push(SpanBuilder::new(2, i).parent(i / 10).build());
            }
        }
        let decoded = decode_chunk(&encode_chunk(&spans)).unwrap();
        for t in [1, 2] {
            let of = |v: &[Span]| -> Vec<Span> {
                v.iter().filter(|s| s.trace_id == SpanBuilder::new(t, 1).build().trace_id).cloned().collect()
            };
            assert_eq!(of(&decoded), of(&spans), "trace {t}");
        }
        assert_eq!(decoded.len(), spans.len());
    }

    /// Spans encoded as a block writer does since block format 9 (columnar version 4): their
    /// resources and scopes numbered in a set given beside the chunk.
    fn encode_shared(spans: &[Span]) -> (Vec<u8>, ChunkOrigins) {
        let (origins, set) = shared_origins(spans);
        let refs: Vec<&Span> = spans.iter().collect();
        (encode_chunk_detailed(&refs, Some(&origins), &mut (), ChunkBuffers::default()).bytes(), set)
    }

    /// Per span, the places of its resource and scope in a set of them made as they come.
    fn shared_origins(spans: &[Span]) -> (Vec<(u32, u32)>, ChunkOrigins) {
        let mut set = ChunkOrigins::default();
        let origins: Vec<(u32, u32)> = spans
            .iter()
            .map(|s| {
                let r = set.resources.iter().position(|r| **r == *s.resource).unwrap_or_else(|| {
                    set.resources.push(Arc::clone(&s.resource));
                    set.resources.len() - 1
                });
                let c = set.scopes.iter().position(|c| **c == *s.scope).unwrap_or_else(|| {
                    set.scopes.push(Arc::clone(&s.scope));
                    set.scopes.len() - 1
                });
                (r as u32, c as u32)
            })
            .collect();
        (origins, set)
    }

    /// Bytes of column `c` of an encoded chunk.
    fn column_len(encoded: &[u8], c: usize) -> usize {
        let mut r = Reader { buf: encoded, pos: 0 };
        r.u8().unwrap();
        r.varint().unwrap();
        r.varint().unwrap();
        (0..c).for_each(|_| {
            r.slice().unwrap();
        });
        r.slice().unwrap().len()
    }

    /// Version 4 writes a span's start relative to its previous sibling's end, or its parent's
    /// start, when that span is written before it (a trace's spans are held by start): every
    /// shape of trace reads back exactly — children sent before their parents, siblings that
    /// overlap, ends before starts, a span its own parent, two spans each other's, parents
    /// outside the chunk, times at the ends of the range, traces big enough for the parent map
    /// — and sequential calls take fewer bytes than starts from the trace's start.
    #[test]
    fn shared_origin_chunks_keep_every_start_written_relative_to_another_span() {
        let mut spans = rich();
        let t = |trace: u8, i: u8, parent: Option<u8>, start: u64, end: u64| {
            let mut b = SpanBuilder::new(trace, i).service(["a", "b", "c"][i as usize % 3]);
            if let Some(p) = parent {
                b = b.parent(p);
            }
            let mut s = b.build();
            s.start_time_unix_nano = start;
            s.end_time_unix_nano = end;
            s
        };
        // Children first (as SDKs export), siblings overlapping and out of order.
        spans.push(t(10, 3, Some(1), 1_000_500, 1_900_000));
        spans.push(t(10, 2, Some(1), 1_000_100, 1_400_000));
        spans.push(t(10, 4, Some(1), 1_300_000, 1_350_000));
        spans.push(t(10, 5, Some(3), 1_100_000, 1_000_000)); // ends before it starts
        spans.push(t(10, 1, None, 1_000_000, 2_000_000));
        // A span its own parent; two spans each other's; a parent outside the chunk.
        spans.push(t(11, 1, Some(1), 50, 60));
        spans.push(t(12, 1, Some(2), 70, 80));
        spans.push(t(12, 2, Some(1), 75, 90));
        spans.push(t(12, 3, Some(99), 72, 73));
        // Times at the ends of the range.
        spans.push(t(13, 1, None, 0, u64::MAX));
        spans.push(t(13, 2, Some(1), u64::MAX, 0));
        spans.push(t(13, 3, Some(1), u64::MAX - 1, u64::MAX));
        spans.push(t(13, 4, Some(2), 1, 2));
        // A big trace of sequential calls: each starts 700 ns after the one before ends.
        let mut at = 5_000_000_000u64;
        spans.push(t(14, 1, None, at, at + 40_000_000_000));
        for i in 2..=40u8 {
            at += 700;
            let end = at + 900_000_000 + i as u64 * 13_577;
            spans.push(t(14, i, Some(1), at, end));
            at = end;
        }
        let (bytes, set) = encode_shared(&spans);
        assert_eq!(bytes[0], COLUMNAR_VERSION_REPEATS);
        assert_eq!(sorted(decode_chunk_in(&bytes, Some(&set)).unwrap()), sorted(spans.clone()));
        for trace in [10u8, 12, 13, 14] {
            let id = SpanBuilder::new(trace, 1).build().trace_id;
            let want: Vec<Span> = spans.iter().filter(|s| s.trace_id == id).cloned().collect();
            assert_eq!(sorted(decode_chunk_traces(&bytes, &|t| *t == id, Some(&set)).unwrap()), sorted(want));
        }
        let sequential: Vec<Span> = spans
            .iter()
            .filter(|s| s.trace_id == SpanBuilder::new(14, 1).build().trace_id)
            .cloned()
            .collect();
        let (v5, _) = encode_shared(&sequential);
        let v3 = encode_chunk(&sequential);
        let relative: usize = [Col::Starts, Col::StartsByte2, Col::StartsByte3, Col::StartsBytesRest]
            .into_iter()
            .map(|c| column_len(&v5, c as usize))
            .sum();
        let from_trace_start = column_len(&v3, Col::Starts as usize);
        assert!(
            relative * 2 < from_trace_start,
            "starts: {relative} bytes relative, {from_trace_start} from the trace's start"
        );
    }

    /// A decode of some traces builds exactly their spans, as the whole decode does, stepping
    /// over every other trace's (with events, links, foreign parents, unique values and
    /// resource-table strings in both); wanting none gives nothing, wanting all gives all.
    #[test]
    fn decoding_some_traces_gives_exactly_theirs() {
        let mut spans = rich();
        for t in 3..=9u8 {
            for i in 1..=5u8 {
                let b = SpanBuilder::new(t, i)
                    .service(["a", "b"][i as usize % 2])
                    .attr("user.id", AttrValue::Str(format!("u-{t}-{i}").into()))
                    .attr("n", AttrValue::Int(i as i64))
                    .event("retry", 3, vec![KeyValue::string("why", format!("w-{t}"))])
                    .link(t - 1, 1);
                spans.push(if i > 1 { b.parent(i - 1) } else { b.parent(77) }.build());
            }
        }
        let bytes = encode_chunk(&spans);
        let all = sorted(decode_chunk(&bytes).unwrap());
        let ids: Vec<TraceId> =
            all.iter().map(|s| s.trace_id).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        assert!(ids.len() >= 8);
        for pick in [vec![ids[0]], vec![ids[3], ids[ids.len() - 1]], ids[1..].to_vec()] {
            let got = sorted(decode_chunk_traces(&bytes, &|id| pick.contains(id), None).unwrap());
            let want: Vec<Span> = all.iter().filter(|s| pick.contains(&s.trace_id)).cloned().collect();
            assert!(!want.is_empty());
            assert_eq!(got, want);
        }
        assert!(decode_chunk_traces(&bytes, &|_| false, None).unwrap().is_empty());
        assert_eq!(sorted(decode_chunk_traces(&bytes, &|_| true, None).unwrap()), all);
    }

    /// A decode of some traces reads the chunk up to the last of them and no further: bytes
    /// left over at the end of a column (which a full decode refuses) do not stop a lookup of
    /// the chunk's first trace, and do stop one of its last.
    #[test]
    fn decoding_some_traces_stops_after_the_last_of_them() {
        let spans: Vec<Span> = (1..=6u8)
            .flat_map(|t| {
                (1..=3u8).map(move |i| SpanBuilder::new(t, i).attr("n", AttrValue::Int(i as i64)).build())
            })
            .collect();
        let bytes = encode_chunk(&spans);
        let (head, mut cols) = columns(&bytes);
        let id_at = |k: usize| {
            TraceId::from_bytes(cols[Col::TraceIds as usize][16 * k..16 * (k + 1)].try_into().unwrap())
                .unwrap()
        };
        let (first, last) = (id_at(0), id_at(5));
        cols[Col::Rest as usize].push(0);
        let damaged = join_columns(&head, &cols);
        assert!(decode_chunk(&damaged).unwrap_err().0.contains("left over"));
        let got = sorted(decode_chunk_traces(&damaged, &|id| *id == first, None).unwrap());
        let want: Vec<Span> = spans.iter().filter(|s| s.trace_id == first).cloned().collect();
        assert_eq!(got, sorted(want));
        assert!(decode_chunk_traces(&damaged, &|id| *id == last, None).is_err());
        assert!(decode_chunk_traces(&damaged, &|_| false, None).unwrap().is_empty());
    }

    #[test]
    fn is_smaller_than_the_row_encoding() {
        let mut spans = Vec::new();
        for t in 1..=40u8 {
            for i in 1..=12u8 {
                let mut b = SpanBuilder::new(t, i)
                    .service(["frontend", "checkout", "cart"][i as usize % 3])
                    .name(format!("op-{}", i % 5))
                    .attr("http.request.method", AttrValue::Str("GET".into()))
                    .attr("http.response.status_code", AttrValue::Int(200));
                if i > 1 {
                    b = b.parent(i - 1);
                }
                spans.push(b.build());
            }
        }
        let row = zstd::bulk::compress(&crate::codec::encode_spans(&spans), 3).unwrap().len();
        let col = zstd::bulk::compress(&encode_chunk(&spans), 3).unwrap().len();
        assert!(col < row, "columnar {col} bytes, row {row} bytes");
    }

    /// Spans whose attributes come in different orders and subsets, with values of every kind
    /// (strings used once and repeated, numbers, arrays): grouped by key (version 3) they come
    /// back in their own order, whole, projected and by trace.
    #[test]
    fn attribute_values_grouped_by_key_keep_each_spans_order() {
        let mut spans = Vec::new();
        for t in 1..=6u8 {
            for i in 1..=8u8 {
                let mut b = SpanBuilder::new(t, i);
                let keys: Vec<&str> = match i % 3 {
                    0 => vec!["http.route", "client.address", "n"],
                    1 => vec!["n", "http.route"],
                    _ => vec!["client.address", "list", "http.route", "flag"],
                };
                for k in keys {
                    let v = match k {
                        "http.route" => AttrValue::Str(format!("/r/{}", i % 2).into()),
                        "client.address" => AttrValue::Str(format!("10.0.{t}.{i}").into()),
                        "n" => AttrValue::Int(i as i64 * 7 - 20),
                        "list" => AttrValue::Array(vec![AttrValue::Str("x".into()), AttrValue::Double(0.5)]),
                        _ => AttrValue::Bool(i % 2 == 0),
                    };
                    b = b.attr(k, v);
                }
                spans.push(if i > 1 { b.parent(i - 1) } else { b }.build());
            }
        }
        let bytes = encode_chunk(&spans);
        assert_eq!(bytes[0], COLUMNAR_VERSION);
        assert_eq!(sorted(decode_chunk(&bytes).unwrap()), sorted(spans.clone()));
        let projected = decode_chunk_projected(&bytes, only(&|k| k == "client.address"), None).unwrap();
        for (got, want) in sorted(projected).iter().zip(sorted(spans.clone())) {
            let kept: Vec<_> =
                want.attributes.iter().filter(|kv| &*kv.key == "client.address").cloned().collect();
            assert_eq!(got.attributes, kept);
        }
        let third = spans[20].trace_id;
        let want: Vec<Span> = spans.iter().filter(|s| s.trace_id == third).cloned().collect();
        assert_eq!(sorted(decode_chunk_traces(&bytes, &|id| *id == third, None).unwrap()), sorted(want));
    }

    /// Two traces of calls whose attribute values mostly repeat those of the last span of
    /// the same name: strings, integers, booleans and doubles, beside values that change, a
    /// unique string, bytes and an array, and a key whose values change type.
    fn repeating() -> Vec<Span> {
        let mut spans = Vec::new();
        for trace in [20u8, 21] {
            for i in 1..=12u8 {
                let name = ["GET /cart", "SELECT cart", "HGET"][i as usize % 3];
                let mut b = SpanBuilder::new(trace, i)
                    .service(["cart", "db"][i as usize % 2])
                    .name(name)
                    .attr("server.port", AttrValue::Int(6379 + (i / 7) as i64))
                    .attr("http.route", AttrValue::Str("/api/cart".into()))
                    .attr("cached", AttrValue::Bool(i < 9))
                    .attr("ratio", AttrValue::Double(if i == 5 { f64::MIN_POSITIVE } else { 0.25 }))
                    .attr(
                        "session",
                        AttrValue::Str(format!("{:032x}", 0xfeed_0000_u64 + i as u64 / 4).into()),
                    )
                    .attr("order", AttrValue::Str(format!("{trace:08x}-0000-4000-8000-{i:012x}").into()))
                    .attr("raw", AttrValue::Bytes(vec![1, 2]))
                    .attr("list", AttrValue::Array(vec![AttrValue::Int(1)]))
                    .attr("shifty", if i % 4 == 0 { AttrValue::Str("7".into()) } else { AttrValue::Int(7) });
                if i > 1 {
                    b = b.parent(1);
                }
                spans.push(b.build());
            }
        }
        spans
    }

    /// Version 5 writes a value equal to the last one of its key and span name as one tag:
    /// every decode reads them back, also one that keeps only some attributes or some traces
    /// (whose repeats refer to values in spans it steps over), and a chunk of such spans holds
    /// a quarter fewer bytes of values than in version 3 (bytes, arrays and unique strings never repeat).
    #[test]
    fn values_repeating_the_last_of_their_key_and_span_name_read_back_in_every_decode() {
        let spans = repeating();
        let (bytes, set) = encode_shared(&spans);
        assert_eq!(bytes[0], COLUMNAR_VERSION_REPEATS);
        assert_eq!(sorted(decode_chunk_in(&bytes, Some(&set)).unwrap()), sorted(spans.clone()));
        let keeps: [(&str, skein_store::KeepAttribute); 4] = [
            ("server.port", |k| k == "server.port"),
            ("session", |k| k == "session"),
            ("shifty", |k| k == "shifty"),
            ("ratio", |k| k == "ratio"),
        ];
        for (key, keep) in keeps {
            let projected = decode_chunk_projected(&bytes, only(&keep), Some(&set)).unwrap();
            for (got, want) in sorted(projected).iter().zip(sorted(spans.clone())) {
                let kept: Vec<_> = want.attributes.iter().filter(|kv| &*kv.key == key).cloned().collect();
                assert_eq!(format!("{:?}", got.attributes), format!("{kept:?}"), "{key}");
            }
        }
        let second = SpanBuilder::new(21, 1).build().trace_id;
        let want: Vec<Span> = spans.iter().filter(|s| s.trace_id == second).cloned().collect();
        assert_eq!(
            sorted(decode_chunk_traces(&bytes, &|id| *id == second, Some(&set)).unwrap()),
            sorted(want)
        );
        let values = |encoded: &[u8]| column_len(encoded, Col::AttrValues as usize);
        let (v5, v3) = (values(&bytes), values(&encode_chunk(&spans)));
        assert!(v5 * 4 < v3 * 3, "attribute values: {v5} bytes with repeats, {v3} without");
    }

    /// Version 5 writes a lowercase UUID or hex id of `Strings` (dictionary or unique) as its
    /// bytes in `HexBytes`, and reads back the very text; any other text stays text.
    #[test]
    fn hex_ids_are_stored_as_bytes_and_read_back_as_the_same_text() {
        let packs = |s: &str| {
            let mut out = Vec::new();
            pack_hex(s, &mut out).map(|k| (k, out.len()))
        };
        assert_eq!(packs("5f0c1e6a-0b7d-4c1e-9a55-3e2f1d0c9b8a"), Some((0, 16)));
        assert_eq!(packs("0123456789abcdef"), Some((8, 8)));
        assert_eq!(packs("5f0c1e6a0b7d4c1e9a553e2f1d0c9b8a5f0c"), Some((18, 18)));
        for text in [
            "5F0C1E6A-0B7D-4C1E-9A55-3E2F1D0C9B8A", // uppercase: the bytes would not say so
            "5f0c1e6a-0b7d-4c1e-9a55-3e2f1d0c9b8g", // not hex
            "5f0c1e6a+0b7d-4c1e-9a55-3e2f1d0c9b8a", // not a UUID's dashes
            "0123456789abcde",                      // odd
            "0123456789abcd",                       // short
            "01234567890123456789",                 // digits only
            "",
        ] {
            assert_eq!(packs(text), None, "{text}");
        }
        let id = |i: u8| format!("{i:08x}-0b7d-4c1e-9a55-3e2f1d0c9b8a");
        let spans: Vec<Span> = (1..=6u8)
            .map(|i| {
                SpanBuilder::new(1, i)
                    .name(format!("{:016x}", 0xabc0 + i as u64 % 2))
                    .attr("order.id", AttrValue::Str(id(i).into()))
                    .attr("session.id", AttrValue::Str(id(200).into()))
                    .attr("upper", AttrValue::Str(id(i).to_uppercase().into()))
                    .attr("container", AttrValue::Str(format!("{:064x}", 0xdead_beef_u64 + i as u64).into()))
                    .event(
                        "retry",
                        5,
                        vec![KeyValue { key: "id".into(), value: AttrValue::Str(id(9).into()) }],
                    )
                    .build()
            })
            .collect();
        let (bytes, set) = encode_shared(&spans);
        assert_eq!(sorted(decode_chunk_in(&bytes, Some(&set)).unwrap()), sorted(spans.clone()));
        let (_, cols) = columns(&bytes);
        let strings = String::from_utf8_lossy(&cols[Col::Strings as usize]).into_owned();
        assert!(!strings.contains(&id(3)) && !strings.contains(&id(200)), "UUIDs written as text");
        assert!(strings.contains(&id(3).to_uppercase()), "uppercase stays text");
        // 6 unique UUIDs, 1 used 6 times, 6 containers of 32 bytes, 2 names, the event's id, and
        // the length of each of the 4 groups' bytes.
        assert_eq!(cols[Col::HexBytes as usize].len(), 6 * 16 + 16 + 6 * 32 + 2 * 8 + 16 + (1 + 1 + 1 + 2));
        let keep: skein_store::KeepAttribute = |k| k == "container";
        for (got, want) in
            sorted(decode_chunk_projected(&bytes, only(&keep), Some(&set)).unwrap()).iter().zip(sorted(spans))
        {
            assert_eq!(
                got.attributes,
                want.attributes.iter().filter(|kv| &*kv.key == "container").cloned().collect::<Vec<_>>()
            );
        }
    }

    /// A repeat with no value of its key and span name before it is an error, never a value.
    #[test]
    fn a_repeat_with_nothing_before_it_is_an_error() {
        let spans: Vec<Span> = (1..=2u8)
            .map(|i| SpanBuilder::new(1, i).name("n").attr("k", AttrValue::Int(5)).build())
            .collect();
        let (bytes, set) = encode_shared(&spans);
        let (head, mut cols) = columns(&bytes);
        // The values of "k": tag 3 (int) then the repeat; make the first a repeat too.
        let values = &mut cols[Col::AttrValues as usize];
        let at =
            values.windows(3).position(|w| w == [TAG_INT, 10, TAG_REPEAT]).expect("the int, then a repeat");
        values[at] = TAG_REPEAT;
        values.remove(at + 1);
        // The group's length prefix shrank by one byte.
        let len_at = at - 1;
        values[len_at] -= 1;
        let e = decode_chunk_in(&join_columns(&head, &cols), Some(&set)).unwrap_err().0;
        assert!(e.contains("none before it"), "{e}");
    }

    /// The projection of the span attributes `keep` accepts, without events.
    fn only(keep: &dyn Fn(&str) -> bool) -> Projection<'_> {
        Projection { attribute: keep, events: false }
    }

    /// A columnar chunk's columns (after the header) and the header, to damage one and join.
    fn columns(raw: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut r = Reader { buf: raw, pos: 1 };
        let _ = (r.varint().unwrap(), r.varint().unwrap());
        let head = raw[..r.pos].to_vec();
        (head, (0..columns_of(raw[0])).map(|_| r.slice().unwrap().to_vec()).collect())
    }

    fn join_columns(head: &[u8], cols: &[Vec<u8>]) -> Vec<u8> {
        let mut w = Writer { buf: head.to_vec() };
        for c in cols {
            w.bytes(c);
        }
        w.buf
    }

    /// The groups of attribute values: a key out of range, a key grouped twice, a group with
    /// bytes left over or one missing are errors.
    #[test]
    fn damaged_attribute_groups_are_errors() {
        let spans: Vec<Span> = (1..=4u8)
            .map(|i| {
                SpanBuilder::new(1, i)
                    .attr("a", AttrValue::Int(i as i64))
                    .attr("b", AttrValue::Int(1))
                    .build()
            })
            .collect();
        let raw = encode_chunk(&spans);
        let (head, cols) = columns(&raw);
        // The groups as written: 2 groups, (key, values) each, values of 4 ints (tag, zz).
        let groups = |g: &[(u64, Vec<u8>)]| {
            let mut w = Writer::default();
            w.varint(g.len() as u64);
            for (key, values) in g {
                w.varint(*key);
                w.bytes(values);
            }
            w.buf
        };
        let mut r = Reader { buf: &cols[Col::AttrValues as usize], pos: 0 };
        let n = r.count().unwrap();
        let original: Vec<(u64, Vec<u8>)> =
            (0..n).map(|_| (r.varint().unwrap(), r.slice().unwrap().to_vec())).collect();
        assert_eq!(original.len(), 2);
        let with = |g: Vec<(u64, Vec<u8>)>, uniques: usize| {
            let mut cols = cols.clone();
            cols[Col::AttrValues as usize] = groups(&g);
            let mut u = Writer::default();
            for _ in 0..uniques {
                u.bytes(&[]);
            }
            cols[Col::Uniques as usize] = u.buf;
            decode_chunk(&join_columns(&head, &cols))
        };
        assert_eq!(sorted(with(original.clone(), 2).unwrap()), sorted(spans.clone()), "rebuilt as written");
        let e = with(vec![original[0].clone(), (9999, original[1].1.clone())], 2).unwrap_err().0;
        assert!(e.contains("out of range"), "{e}");
        let e = with(vec![original[0].clone(), (original[0].0, original[1].1.clone())], 2).unwrap_err().0;
        assert!(e.contains("two groups"), "{e}");
        let mut longer = original.clone();
        longer[1].1.extend_from_slice(&[3, 2]);
        let e = with(longer, 2).unwrap_err().0;
        assert!(e.contains("left over"), "{e}");
        let e = with(vec![original[0].clone()], 1).unwrap_err().0;
        assert!(e.contains("no attribute values"), "{e}");
    }

    /// Many spans as real ones look to a compressor: random span ids, start offsets and
    /// durations, and a random session id per trace, beside repeating names and methods.
    fn many() -> Vec<Span> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut spans = rich();
        for t in 1..=60u8 {
            let session = format!("{:016x}", next());
            for i in 1..=12u8 {
                let b = SpanBuilder::new(t, i)
                    .service(["frontend", "checkout", "cart"][i as usize % 3])
                    .name(format!("op-{}", i % 5))
                    .attr("http.request.method", AttrValue::Str("GET".into()))
                    .attr("session.id", AttrValue::Str(session.clone().into()))
                    .attr("http.response.status_code", AttrValue::Int(200));
                let mut s = if i > 1 { b.parent(i - 1) } else { b }.build();
                s.span_id = SpanId::from_bytes(next().to_le_bytes()).unwrap();
                s.start_time_unix_nano += next() % 50_000_000;
                s.end_time_unix_nano = s.start_time_unix_nano + next() % 20_000_000;
                spans.push(s);
            }
        }
        spans
    }

    /// A packed chunk's parts: the bytes before the columns, and each column's claimed
    /// length, mode and stored bytes.
    type Parts = (Vec<u8>, Vec<(u64, u8, Vec<u8>)>);

    fn parts(packed: &[u8]) -> Parts {
        let mut r = Reader { buf: packed, pos: 2 };
        let _ = (r.varint().unwrap(), r.varint().unwrap());
        let head = packed[..r.pos].to_vec();
        let n = r.count().unwrap();
        let columns =
            (0..n).map(|_| (r.varint().unwrap(), r.u8().unwrap(), r.slice().unwrap().to_vec())).collect();
        (head, columns)
    }

    fn join((head, columns): &Parts) -> Vec<u8> {
        let mut w = Writer { buf: head.clone() };
        w.varint(columns.len() as u64);
        for (len, mode, stored) in columns {
            w.varint(*len);
            w.u8(*mode);
            w.bytes(stored);
        }
        w.buf
    }

    /// A packed chunk may hold a text when its string columns have it — a value used once
    /// (version 3 keeps those in `Uniques`, version 5 after the dictionary), a dictionary
    /// string — and does not when they have not; every text must be there.
    #[test]
    fn a_packed_chunk_holds_the_texts_of_its_strings_columns() {
        let spans: Vec<Span> = (0..40u8)
            .map(|i| {
                SpanBuilder::new(1 + i / 10, i % 10 + 1)
                    .attr("client.address", AttrValue::Str(format!("10.0.0.{i}").into()))
                    .attr("http.route", AttrValue::Str("/cart".into()))
                    .build()
            })
            .collect();
        let v3 = pack(&encode_chunk(&spans), &mut Packer::new()).unwrap();
        let (v5, _) = encode_shared(&spans);
        let v5 = pack(&v5, &mut Packer::new()).unwrap();
        for (version, packed) in [(3, &v3), (5, &v5)] {
            let holds = |texts: &[&str]| packed_may_hold_texts(packed, None, texts).unwrap();
            assert!(holds(&[]), "version {version}");
            assert!(holds(&["10.0.0.17"]), "a value used once, version {version}");
            assert!(holds(&["/cart", "10.0.0.3"]), "version {version}");
            assert!(!holds(&["10.0.0.40"]), "version {version}");
            assert!(!holds(&["/cart", "10.9.9.9"]), "version {version}");
        }
    }

    /// A text that version 5 writes as a hex id is found as its bytes, and before version 5
    /// as its text; an id the chunk does not hold is not found either way.
    #[test]
    fn a_packed_chunk_holds_its_hex_ids() {
        let session = |i: u8| format!("123e4567-e89b-12d3-a456-4266141740{i:02x}");
        let spans: Vec<Span> = (0..40u8)
            .map(|i| {
                SpanBuilder::new(1 + i / 10, i % 10 + 1)
                    .attr("session.id", AttrValue::Str(session(i).into()))
                    .attr("order.id", AttrValue::Str(format!("{:032x}", 0xabc000 + i as u64).into()))
                    .build()
            })
            .collect();
        let v3 = pack(&encode_chunk(&spans), &mut Packer::new()).unwrap();
        let (v5, _) = encode_shared(&spans);
        let v5 = pack(&v5, &mut Packer::new()).unwrap();
        assert!(pack_hex(&session(7), &mut Vec::new()).is_some(), "written as bytes in version 5");
        let order = format!("{:032x}", 0xabc000 + 7);
        for (version, packed) in [(3, &v3), (5, &v5)] {
            let holds = |texts: &[&str]| packed_may_hold_texts(packed, None, texts).unwrap();
            assert!(holds(&[&session(7)]), "version {version}");
            assert!(holds(&[&session(39), &order]), "version {version}");
            assert!(!holds(&[&session(40)]), "version {version}");
            assert!(!holds(&[&format!("{:032x}", 0xabc000 + 40)]), "version {version}");
        }
    }

    /// A column of random bytes that zstd would not shrink is stored after a probe of its
    /// first bytes, while ids that are not random (counters) in the same column are
    /// compressed; either way the chunk unpacks to the very columns.
    #[test]
    fn probed_columns_are_stored_when_random_and_compressed_when_not() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let random_ids: Vec<u8> = (0..600).flat_map(|_| random().to_be_bytes()).collect();
        let counters: Vec<u8> = (0..600u64).flat_map(|i| (1000 + i).to_be_bytes()).collect();
        let mut packer = Packer::new();
        for (ids, mode) in [(&random_ids, COLUMN_STORED), (&counters, COLUMN_ZSTD)] {
            let mut columns_given: Vec<&[u8]> = vec![b"a few bytes"; COLUMNS];
            columns_given[Col::SpanIds as usize] = ids;
            let packed = pack_columns((COLUMNAR_VERSION_REPEATS, 1, 600), &columns_given, &mut packer);
            let (_, parts) = parts(&packed);
            assert_eq!(parts[Col::SpanIds as usize].1, mode);
            if mode == COLUMN_ZSTD {
                assert!(parts[Col::SpanIds as usize].2.len() < ids.len() / 4);
            }
            assert_eq!(columns(&unpack(&packed).unwrap()).1, columns_given);
        }
    }

    /// A packed chunk unpacks to the very bytes that were packed, with columns in both forms,
    /// and on spans with random ids and times it is smaller than one zstd frame of the whole
    /// encoding.
    #[test]
    fn packed_chunks_unpack_to_the_encoding() {
        let mut packer = Packer::new();
        for spans in [rich(), many()] {
            let encoded = encode_chunk(&spans);
            let packed = pack(&encoded, &mut packer).unwrap();
            assert_eq!(packed[0], PACKED);
            assert_eq!(unpack(&packed).unwrap(), encoded);
            assert_eq!(sorted(decode_chunk(&unpack(&packed).unwrap()).unwrap()), sorted(spans));
            assert_eq!(join(&parts(&packed)), packed);
        }
        let encoded = encode_chunk(&many());
        let packed = pack(&encoded, &mut packer).unwrap();
        let modes: Vec<u8> = parts(&packed).1.iter().map(|c| c.1).collect();
        assert_eq!(modes.len(), COLUMNS_BEFORE_PLANES);
        assert!(modes.contains(&COLUMN_ZSTD) && modes.contains(&COLUMN_STORED), "{modes:?}");
        let whole = zstd::bulk::compress(&encoded, 3).unwrap();
        assert!(packed.len() < whole.len(), "packed {} bytes, one frame {}", packed.len(), whole.len());
    }

    /// A packer encodes chunk after chunk into the buffers of the chunks before (columns and
    /// attribute value groups, emptied): each chunk is what fresh buffers and a new packer
    /// make of it, byte for byte, packed or not.
    #[test]
    fn chunks_encoded_into_reused_buffers_are_as_new() {
        let mut packer = Packer::new();
        for spans in [many(), repeating(), rich(), many(), repeating()] {
            let (origins, _) = shared_origins(&spans);
            let refs: Vec<&Span> = spans.iter().collect();
            let fresh = encode_chunk_detailed(&refs, Some(&origins), &mut (), ChunkBuffers::default());
            let mut reused = encode_chunk_detailed(&refs, Some(&origins), &mut (), packer.take_buffers());
            assert_eq!(reused.bytes(), fresh.bytes());
            let packed = packer.pack_encoded(&mut reused);
            assert_eq!(packed, pack(&fresh.bytes(), &mut Packer::new()).unwrap());
            assert_eq!(unpack(&packed).unwrap(), fresh.bytes());
        }
        assert!(!packer.buffers.cols.is_empty() && !packer.buffers.groups.is_empty());
    }

    /// Damage to a packed chunk is an error that says what, never a panic or a wrong chunk.
    #[test]
    fn damaged_packed_chunks_are_errors() {
        let packed = pack(&encode_chunk(&many()), &mut Packer::new()).unwrap();
        for cut in [1, 5, packed.len() / 2, packed.len() - 1] {
            assert!(unpack(&packed[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = packed.clone();
        trailing.push(0);
        assert!(unpack(&trailing).unwrap_err().0.contains("trailing"));
        let p = parts(&packed);
        let zstd_column = p.1.iter().position(|c| c.1 == COLUMN_ZSTD).unwrap();
        let stored_column = p.1.iter().position(|c| c.1 == COLUMN_STORED).unwrap();
        let damaged = |f: &dyn Fn(&mut Parts)| {
            let mut p = p.clone();
            f(&mut p);
            match unpack(&join(&p)) {
                Ok(_) => panic!("damage unpacked"),
                Err(e) => e.0,
            }
        };
        let e = damaged(&|p| p.1[0].0 = MAX_COLUMN_BYTES + 1);
        assert!(e.contains("claims"), "{e}");
        let e = damaged(&|p| p.1[zstd_column].0 += 1);
        assert!(e.contains("decompresses to"), "{e}");
        let e = damaged(&|p| p.1[zstd_column].0 -= 1);
        assert!(e.contains("does not decompress"), "{e}");
        let e = damaged(&|p| p.1[stored_column].0 += 1);
        assert!(e.contains("holds"), "{e}");
        let e = damaged(&|p| p.1[3].1 = 9);
        assert!(e.contains("mode"), "{e}");
        // A flipped bit inside a frame may still decompress (zstd frames are written without
        // their own checksum): the chunk's crc32, checked before unpacking, catches it.
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_chunk(&bytes);
            let mut packed = bytes.clone();
            packed.insert(0, PACKED);
            let _ = unpack(&packed);
        }

        #[test]
        fn flipped_bytes_never_panic(pos in 0usize..2000, val in any::<u8>()) {
            let mut bytes = encode_chunk(&rich());
            if pos < bytes.len() {
                bytes[pos] = val;
            }
            let _ = decode_chunk(&bytes);
            let _ = decode_chunk_traces(&bytes, &|id| id.as_bytes()[15] % 2 == 0, None);
            let mut packed = pack(&encode_chunk(&rich()), &mut Packer::new()).unwrap();
            if pos < packed.len() {
                packed[pos] = val;
            }
            if let Ok(raw) = unpack(&packed) {
                let _ = decode_chunk(&raw);
            }
            // Version 4, its origins beside it; and its columns packed with dictionaries.
            let mut spans = rich();
            spans.extend((2..6u8).map(|i| SpanBuilder::new(1, i).parent(i - 1).build()));
            spans.extend(repeating().into_iter().take(9));
            let (mut bytes, set) = encode_shared(&spans);
            if pos < bytes.len() {
                bytes[pos] = val;
            }
            let _ = decode_chunk_in(&bytes, Some(&set));
            let _ = decode_chunk_traces(&bytes, &|id| id.as_bytes()[15] % 2 == 0, Some(&set));
            let (encoded, _) = encode_shared(&spans);
            let mut packer = Packer::new();
            let packed = pack(&encoded, &mut packer).unwrap();
            let dicts = ColumnDicts::from_raw(vec![(Col::Strings as u8, b"service.name frontend cart".repeat(8)), (Col::Uniques as u8, b"u-1 u-2".repeat(8))]);
            let mut repacked = Repacker::default().repack(&packed, None, &dicts).unwrap();
            prop_assert_eq!(unpack_with(&repacked, Some(&dicts)).unwrap(), encoded);
            if pos < repacked.len() {
                repacked[pos] = val;
            }
            if let Ok(raw) = unpack_with(&repacked, Some(&dicts)) {
                let _ = decode_chunk_in(&raw, Some(&set));
            }
        }
    }
}
