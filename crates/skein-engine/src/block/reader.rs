//! Opening a block (footer, index) and reading its chunks, Bloom filters and RED cells.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// Reads the index with the one codec of the crate ([`codec::Reader`]), its errors as text.
pub(crate) struct IndexReader<'a> {
    r: codec::Reader<'a>,
}

impl<'a> IndexReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        IndexReader { r: codec::Reader::new(buf) }
    }

    pub(crate) fn varint(&mut self) -> Result<u64, String> {
        self.r.varint().map_err(|e| format!("index: {e}"))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        self.r.take(n).map_err(|e| format!("index: {e}"))
    }

    pub(crate) fn str(&mut self) -> Result<String, String> {
        self.text().map(str::to_owned)
    }

    /// A length-prefixed string of the index as bytes, its UTF-8 not checked: for posting keys
    /// and values, which are only hashed (the index's crc guards them against damage).
    pub(crate) fn text_bytes(&mut self) -> Result<&'a [u8], String> {
        self.r.slice().map_err(|e| format!("index: {e}"))
    }

    /// A string of the index, borrowed.
    pub(crate) fn text(&mut self) -> Result<&'a str, String> {
        self.r.text().map_err(|e| format!("index: {e}"))
    }

    pub(crate) fn count(&mut self) -> Result<usize, String> {
        self.r.count().map_err(|e| format!("index: {e}"))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.r.is_empty()
    }

    /// A reader of the crate's codec from here on, for what the index holds in that codec's
    /// forms (resources, scopes); [`IndexReader::advance_to`] then skips what it read.
    pub(crate) fn codec(&self) -> codec::Reader<'a> {
        codec::Reader { buf: self.r.buf, pos: self.r.pos }
    }

    pub(crate) fn advance_to(&mut self, pos: usize) {
        self.r.pos = pos;
    }
}

impl Block {
    /// Opens a block: checks the footer and the index, and keeps the index in memory (all of
    /// it: in a cache of its own without a budget).
    pub fn open(fs: &dyn Fs, path: &Path) -> Result<Block, BlockError> {
        Self::open_in(fs, path, &IndexCache::unbounded())
    }

    /// Opens a block whose postings, trace filter and dictionaries are kept in `cache` (while
    /// its budget allows).
    pub fn open_in(fs: &dyn Fs, path: &Path, cache: &Arc<IndexCache>) -> Result<Block, BlockError> {
        Self::open_with(fs, path, None, cache, None).map(Self::keeping)
    }

    /// [`Block::open`] for the block a writer just wrote, with the `postings` it built (not
    /// read back from the postings section).
    pub(crate) fn open_written(
        fs: &dyn Fs,
        path: &Path,
        postings: PostingIndex,
    ) -> Result<Block, BlockError> {
        Self::open_with(fs, path, None, &IndexCache::unbounded(), Some(postings)).map(Self::keeping)
    }

    /// The block opened, its parts kept in its cache.
    fn keeping((block, parts): (Block, Vec<Kept>)) -> Block {
        for part in parts {
            block.kept.keep(block.id, part);
        }
        block
    }

    /// The block, now with its parts kept in `cache` (taken out of the one it was opened in).
    pub(crate) fn keep_in(mut self, cache: &Arc<IndexCache>) -> Block {
        if Arc::ptr_eq(&self.kept, cache) {
            return self;
        }
        let parts = self.kept.forget(self.id);
        self.kept = Arc::clone(cache);
        self.id = cache.block_id();
        for part in parts {
            self.kept.keep(self.id, part);
        }
        self
    }

    /// [`Block::open`] (the block's parts given back beside it, not kept yet), and what
    /// compaction copies with each chunk into `copy` when given: the hashes of its postings'
    /// entries (formats 2 to 10; [`Block::copy_source`] reads format 11's from the postings
    /// section) and its traces' ids (before format 6).
    fn open_with(
        fs: &dyn Fs,
        path: &Path,
        copy: Option<&mut ChunkCopies>,
        cache: &Arc<IndexCache>,
        built: Option<PostingIndex>,
    ) -> Result<(Block, Vec<Kept>), BlockError> {
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
        let build = copy.is_none();
        let (block, mut parts) =
            Self::parse_index(path, &raw, len, index_offset, version, copy, cache).map_err(corrupt)?;
        // A damaged postings section does not make the block unreadable: its searches read every
        // chunk of the service instead, and compaction decodes its chunks (new postings).
        if build && block.postings_section.is_some() {
            match built.map_or_else(|| block.read_postings_section(fs), Ok) {
                Ok(p) => parts.push(Kept::Postings(Arc::new(p))),
                Err(e) => {
                    tracing::warn!(error = %e, "postings unreadable; searches read every chunk of the block")
                }
            }
        }
        Ok((block, parts))
    }

    /// The block's postings section (format 11), crc checked, as the chunks' postings held
    /// inverted.
    fn read_postings_section(&self, fs: &dyn Fs) -> Result<PostingIndex, BlockError> {
        let mut a = inverted::Assembler::new(self.chunks.len() as u32);
        self.each_posting_set(fs, |hash, chunks| a.push(hash, chunks))?;
        Ok(a.finish())
    }

    /// Each set of the block's postings section (format 11): an entry's hash and its chunks.
    fn each_posting_set(
        &self,
        fs: &dyn Fs,
        each: impl FnMut(u64, inverted::Set<'_>),
    ) -> Result<(), BlockError> {
        let (offset, len, crc) = self.postings_section.expect("a block of format 11");
        let bytes = self.read_checked(fs, offset, len, crc, || "postings section".to_owned())?;
        let raw = zstd::stream::decode_all(&bytes[..])
            .map_err(|e| self.corrupt(format!("postings section does not decompress: {e}")))?;
        inverted::decode_section(&raw, self.chunks.len() as u32, each).map_err(|e| self.corrupt(e))
    }

    /// The block whose index (of format `version`) is `raw`, with its parts to keep in `cache`
    /// (given back beside it).
    pub(crate) fn parse_index(
        path: &Path,
        raw: &[u8],
        bytes: u64,
        index_offset: u64,
        version: u32,
        mut per_chunk: Option<&mut ChunkCopies>,
        cache: &Arc<IndexCache>,
    ) -> Result<(Block, Vec<Kept>), String> {
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
        let wal_ranges = if version >= 5 {
            let n = r.count()?;
            let ranges =
                (0..n).map(|_| Ok((r.varint()?, r.varint()?))).collect::<Result<Vec<_>, String>>()?;
            if ranges.iter().any(|(start, end)| start >= end || *end > wal_segment_end) {
                return Err("a WAL range is empty or ends after the block's WAL end".into());
            }
            ranges
        } else {
            vec![(0, wal_segment_end)]
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
        // Read for compaction (`per_chunk`), the index is kept as the file has it and the open
        // block's in-memory forms are not built.
        let build = per_chunk.is_none();
        let mut postings = (2..=10).contains(&version).then(PostingIndexBuilder::default);
        let n = r.count()?;
        let mut chunks = Vec::with_capacity(n);
        let mut values: Vec<&[u8]> = Vec::new();
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
            // Format 9: the chunk's set of the block's origins, plus one (0: its own).
            let origins = if version >= 9 {
                match r.varint()? {
                    0 => origins::OWN_ORIGINS,
                    n => u32::try_from(n - 1)
                        .ok()
                        .filter(|n| *n != origins::OWN_ORIGINS)
                        .ok_or("bad origin set")?,
                }
            } else {
                origins::OWN_ORIGINS
            };
            if let Some(postings) = &mut postings {
                // Formats 2 to 10: the chunk's postings, per service, as text. Read for
                // compaction (`per_chunk`), they are kept as the chunk's entries' hashes;
                // otherwise they go into the open block's inverted postings.
                postings.next_chunk();
                let mut copy = per_chunk.as_ref().map(|_| Vec::new());
                let n = r.count()?;
                for _ in 0..n {
                    let service = r.varint()? as usize;
                    let Some((name, _)) = services.get(service) else {
                        return Err("postings name an unknown service".into());
                    };
                    let name = name.as_bytes();
                    let nk = r.count()?;
                    for _ in 0..nk {
                        let key = r.text_bytes()?;
                        let flag = r.bytes(1)?[0];
                        values.clear();
                        let found = match flag {
                            0 => KeyValues::Unindexed,
                            1 => {
                                let nv = r.count()?;
                                for _ in 0..nv {
                                    values.push(r.text_bytes()?);
                                }
                                KeyValues::Listed(&values[..])
                            }
                            2 if version >= 4 => KeyValues::Hashed,
                            f => return Err(format!("bad postings flag {f}")),
                        };
                        match &mut copy {
                            Some(copy) => inverted::entry_hashes(name, key, found, |h| copy.push(h)),
                            None => postings.add(name, key, found),
                        }
                    }
                }
                if let (Some(out), Some(copy)) = (&mut per_chunk, copy) {
                    out.postings.push(copy);
                }
            }
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
            let (bloom_lines, bloom_probes, bloom_seed) = if version >= 5 {
                match r.varint()? {
                    0 => (0, 0, crc),
                    n => {
                        let probes = r.bytes(1)?[0];
                        if version < 6 && probes & bloom::SEEDED != 0 {
                            return Err("a seeded Bloom filter in a block older than format 6".into());
                        }
                        if version < 9 && probes & bloom::UNSERVICED != 0 {
                            return Err(
                                "a Bloom filter of (key, value) items in a block older than format 9".into(),
                            );
                        }
                        let seed = if version >= 9 {
                            u32::from_le_bytes(r.bytes(4)?.try_into().expect("4 bytes"))
                        } else {
                            crc
                        };
                        (u32::try_from(n).map_err(|_| "bloom filter too long")?, probes, seed)
                    }
                }
            } else {
                (0, 0, crc)
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
                services: ChunkServices::new(svc),
                bloom_len,
                bloom_crc,
                bloom_lines,
                bloom_probes,
                bloom_slot: 0,
                bloom_seed,
                origins,
            });
        }
        // Formats before 6 list every (trace, chunk) entry here; format 6 says where its trace
        // section lies and the first id of each page (checked once the section's end is known).
        let mut paged = None;
        let mut traces = None;
        if version >= 6 {
            let entries = r.varint()?;
            let offset = r.varint()?;
            let per_page = u32::try_from(r.varint()?).map_err(|_| "trace section pages too long")?;
            let pages = r.count()?;
            let form = traces::KeyForm::of_version(version);
            let mut page_lens = Vec::new();
            let firsts = (0..pages)
                .map(|_| {
                    let first = form.read(r.bytes(form.len())?);
                    if form == traces::KeyForm::Packed {
                        page_lens
                            .push(u32::try_from(r.varint()?).map_err(|_| "trace section page too long")?);
                    }
                    Ok(first)
                })
                .collect::<Result<Vec<_>, String>>()?;
            let lines = r.count()?;
            let probes = if lines > 0 { r.bytes(1)?[0] } else { 0 };
            let filter =
                r.bytes(lines.checked_mul(bloom::LINE_BYTES).ok_or("trace filter too long")?)?.to_vec();
            paged = Some((
                form,
                entries,
                offset,
                per_page,
                firsts,
                page_lens,
                traces::TraceFilter { probes, lines: filter },
            ));
            if let Some(out) = &mut per_chunk {
                out.traces = vec![Vec::new(); chunks.len()];
            }
        } else {
            let n = r.count()?;
            let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(if build { n } else { 0 });
            if let Some(out) = &mut per_chunk {
                out.traces = vec![Vec::new(); chunks.len()];
            }
            for _ in 0..n {
                let id =
                    TraceId::from_slice(r.bytes(16)?).map_err(|e| format!("bad trace id in index: {e}"))?;
                let chunk = r.varint()? as u32;
                if chunk as usize >= chunks.len() {
                    return Err("trace index names an unknown chunk".into());
                }
                if build {
                    pairs.push((traces::trace_key(id), chunk));
                }
                if let Some(out) = &mut per_chunk {
                    out.traces[chunk as usize].push(traces::trace_hash(id));
                }
            }
            traces = Some(TraceIndex::Hashed(traces::Hashed::new(pairs, chunks.len())));
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
        // What lies before the RED pre-aggregates (or the index): the trace section (format 6),
        // and before it the Bloom section (format 5).
        let end = red.map_or(index_offset, |(offset, _, _)| offset);
        let mut parts = Vec::new();
        let traces = match (traces, paged) {
            (Some(traces), _) => traces,
            (None, Some((form, entries, offset, per_page, firsts, page_lens, filter))) => {
                let (paged, filter) = traces::Paged::new(
                    form,
                    offset,
                    entries,
                    per_page,
                    firsts,
                    &page_lens,
                    filter,
                    chunks.len(),
                    end,
                )?;
                if build {
                    parts.push(Kept::TraceFilter(Arc::new(filter)));
                }
                TraceIndex::Paged(paged)
            }
            (None, None) => unreachable!("every version reads one form of trace index"),
        };
        let bloom_groups = if version >= 5 {
            let at = r.varint()?;
            let end = match &traces {
                TraceIndex::Paged(p) => p.offset(),
                TraceIndex::Hashed(_) => end,
            };
            bloom_groups(&mut chunks, at, end)?
        } else {
            Vec::new()
        };
        let origin_sets = if version >= 9 { origins::read(&mut r)? } else { Vec::new() };
        let dict_section = match version {
            9.. => match r.varint()? {
                0 => None,
                n => {
                    let len = u32::try_from(n).map_err(|_| "column dictionaries too long")?;
                    let offset = r.varint()?;
                    let crc = u32::from_le_bytes(r.bytes(4)?.try_into().expect("4 bytes"));
                    if offset.checked_add(n).is_none_or(|end| end > index_offset) {
                        return Err("column dictionaries outside the file".into());
                    }
                    Some((offset, len, crc))
                }
            },
            _ => None,
        };
        // Format 11: the postings section (after the dictionaries, before the Bloom section).
        let postings_section = match version {
            11.. => {
                let len = u32::try_from(r.varint()?).map_err(|_| "postings section too long")?;
                let offset = r.varint()?;
                let crc = u32::from_le_bytes(r.bytes(4)?.try_into().expect("4 bytes"));
                if offset.checked_add(len as u64).is_none_or(|end| end > index_offset) {
                    return Err("the postings section lies outside the file".into());
                }
                Some((offset, len, crc))
            }
            _ => None,
        };
        if chunks.iter().any(|c| c.origins != origins::OWN_ORIGINS && c.origins as usize >= origin_sets.len())
        {
            return Err("a chunk names an origin set the index does not hold".into());
        }
        if !r.is_empty() {
            return Err("trailing bytes after the index".into());
        }
        let has_postings = version >= 2;
        if let Some(mut postings) = postings.filter(|_| build) {
            postings.set_chunks(chunks.len() as u32);
            parts.push(Kept::Postings(Arc::new(postings.finish())));
        }
        // Format 4 filters only: most blocks have none, and then no slot per chunk either.
        let blooms = if chunks.iter().any(|c| c.bloom_len > 0) {
            (0..chunks.len()).map(|_| std::sync::OnceLock::new()).collect()
        } else {
            Vec::new()
        };
        let block = Block {
            path: path.to_owned(),
            time,
            span_count,
            trace_count,
            wal_ranges: join_ranges(wal_ranges),
            replaces,
            bytes,
            chunks,
            services,
            traces,
            red,
            has_postings,
            blooms,
            bloom_groups,
            origins: origin_sets,
            dict_section,
            postings_section,
            kept: Arc::clone(cache),
            id: cache.block_id(),
        };
        Ok((block, parts))
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

    /// The chunks that may hold spans of any of `ids` (see `TraceIndex::chunks_of`): read from
    /// the block's trace section from format 6 on, exact for formats 6 and 7; by a 64-bit hash
    /// of the id from format 8 and a 32-bit one before format 6, so a chunk read for it may,
    /// rarely, hold only another trace's spans.
    pub fn chunks_of(&self, fs: &dyn Fs, ids: &[TraceId]) -> Result<BTreeSet<usize>, BlockError> {
        let filter = match self.kept.get(self.id, Part::TraceFilter) {
            Some(Kept::TraceFilter(f)) => Some(f),
            _ => None,
        };
        self.traces.chunks_of(fs, &self.path, ids, filter.as_deref()).map_err(|e| self.corrupt(e))
    }

    /// The block's postings (`None` before format 2): kept, or read from its index again.
    fn postings(&self, fs: &dyn Fs) -> Result<Option<Arc<PostingIndex>>, BlockError> {
        if !self.has_postings {
            return Ok(None);
        }
        let kept = self.kept.get_or_load(self.id, Part::Postings, || {
            if self.postings_section.is_some() {
                return self.read_postings_section(fs).map(|p| Kept::Postings(Arc::new(p)));
            }
            // Formats 2 to 10 list them in the index: it is read and parsed again.
            let (_, parts) = Self::open_with(fs, &self.path, None, &self.kept, None)?;
            parts
                .into_iter()
                .find(|p| matches!(p, Kept::Postings(_)))
                .ok_or_else(|| self.corrupt("the index changed under an open block".into()))
        })?;
        match kept {
            Kept::Postings(p) => Ok(Some(p)),
            _ => unreachable!("the postings part holds postings"),
        }
    }

    /// Bytes of memory the open block holds itself (its index but for the parts its
    /// [`IndexCache`] keeps, and the Bloom filters searches have kept), estimated from the
    /// lengths of its tables: what `skein_storage_memory_bytes` adds up with the cache's.
    pub(crate) fn memory_bytes(&self) -> MemoryBytes {
        let chunks = self.chunks.capacity() * std::mem::size_of::<ChunkMeta>()
            + origins::memory_bytes(&self.origins)
            + self.chunks.iter().map(|c| c.services.heap_bytes()).sum::<usize>()
            + self.blooms.capacity() * std::mem::size_of::<std::sync::OnceLock<Arc<[u8]>>>()
            + self
                .bloom_groups
                .iter()
                .map(|g| std::mem::size_of::<BloomGroup>() + g.members.capacity() * 4)
                .sum::<usize>();
        let services: usize = self
            .services
            .iter()
            .map(|(name, ops)| {
                name.len() + 24 + ops.keys().map(|(op, _)| op.len() + 24 + 8 + 8 + 32).sum::<usize>()
            })
            .sum();
        MemoryBytes {
            traces: self.traces.memory_bytes() as u64,
            chunks: (chunks + services) as u64,
            blooms: self.blooms.iter().filter_map(|b| b.get()).map(|b| b.len() as u64 + 16).sum(),
        }
    }

    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub(crate) fn chunk_meta(&self, i: usize) -> &ChunkMeta {
        &self.chunks[i]
    }

    /// Whether chunk `i` holds spans of `service`.
    pub(crate) fn chunk_has_service(&self, i: usize, service: &str) -> bool {
        self.chunks[i].services.iter().any(|s| self.services[s as usize].0 == service)
    }

    /// Whether chunk `i` may hold a span whose duration lies in `[min, max]` (nanoseconds).
    pub(crate) fn chunk_may_hold_duration(&self, i: usize, min: Option<u64>, max: Option<u64>) -> bool {
        let (shortest, longest) = self.chunks[i].durations;
        min.is_none_or(|min| longest >= min) && max.is_none_or(|max| shortest <= max)
    }

    /// What a search for the spans `m` accepts may find in each chunk (see
    /// [`ChunkMatcher::may_match`]): its service and its tags as the index holds them
    /// ([`SpanMatcher::indexed_tags`]); the chunks' postings are asked once for the whole block
    /// (read from its index again when its [`IndexCache`] has let them go; should that fail,
    /// every chunk of the service is read, as for a block without postings).
    pub(crate) fn matcher<'b>(&'b self, fs: &dyn Fs, m: &skein_store::SpanMatcher<'_>) -> ChunkMatcher<'b> {
        let service = m.service();
        let postings = self.postings(fs).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "postings could not be read again; the search reads every chunk of the block");
            None
        });
        let Some(postings) = postings else {
            return ChunkMatcher::new(self, Plan::ServiceOnly(service.map(str::to_owned)));
        };
        let nothing = ChunkMatcher::new(self, Plan::Nothing);
        let services: Vec<u32> = match service {
            Some(name) => match self.services.iter().position(|(s, _)| s == name) {
                Some(sid) => vec![sid as u32],
                None => return nothing,
            },
            None => (0..self.services.len() as u32).collect(),
        };
        let wanted = m.indexed_tags();
        // The items of filters without services (format 9), the same for every service.
        let key_items: Vec<Vec<u64>> = wanted
            .iter()
            .map(|(key, texts)| texts.iter().map(|t| bloom::key_item_hash(key, t)).collect())
            .collect();
        let per_service = services
            .into_iter()
            .map(|sid| {
                let name = self.services[sid as usize].0.as_str();
                let per_tag = wanted
                    .iter()
                    .map(|(key, texts)| {
                        let (sure, hashed) = postings.tag_chunks(name, key, texts);
                        let items = texts.iter().map(|t| bloom::item_hash(name, key, t)).collect();
                        TagChunks { sure, hashed, items }
                    })
                    .collect();
                (sid, per_tag)
            })
            .collect();
        ChunkMatcher::new(self, Plan::Postings { services: per_service, key_items })
    }

    /// The chunks among `asked` (one bit per chunk) whose blocked Bloom filters (format 5) of
    /// items with services (`unserviced` false) or without ([`bloom::UNSERVICED`]) may hold the
    /// item `hash`: one region of each group that has such a chunk, read with one open of the
    /// file. A region that cannot be read or fails its crc answers "maybe" for its chunks: it
    /// can cost chunk reads, never a missed span.
    fn blocked_may_hold(&self, fs: &dyn Fs, hash: u64, unserviced: bool, asked: &[u64]) -> Vec<u64> {
        let mut maybe = vec![0u64; self.chunks.len().div_ceil(64)];
        let groups: Vec<&BloomGroup> = self
            .bloom_groups
            .iter()
            .filter(|g| (g.probes & bloom::UNSERVICED != 0) == unserviced)
            .filter(|g| g.members.iter().any(|c| inverted::bit(asked, *c as usize)))
            .collect();
        let ranges: Vec<(u64, usize)> = groups
            .iter()
            .map(|g| {
                let line = bloom::line_of(hash, g.lines) as u64;
                (g.offset + line * g.region_len() as u64, g.region_len())
            })
            .collect();
        let read = fs.read_ranges(&self.path, &ranges).ok();
        for (n, g) in groups.iter().enumerate() {
            let region = read.as_ref().and_then(|r| r.get(n)).and_then(|r| g.checked_lines(r));
            for (slot, &c) in g.members.iter().enumerate() {
                let line = region.map(|lines| BloomGroup::line(lines, slot));
                if line.is_none_or(|line| {
                    bloom::line_may_contain(line, hash, g.probes, self.chunks[c as usize].bloom_seed)
                }) {
                    inverted::set_bit(&mut maybe, c);
                }
            }
        }
        maybe
    }

    /// Keeps `read`, the Bloom filter of chunk `i`, while the filters kept by every open block
    /// stay within [`KEPT_BLOOMS_MAX`] bytes; returns the one kept, or `read`.
    fn keep_bloom(&self, i: usize, read: Arc<[u8]>) -> Arc<[u8]> {
        let len = read.len() as u64;
        let reserved = KEPT_BLOOMS
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
                (kept + len <= KEPT_BLOOMS_MAX).then_some(kept + len)
            })
            .is_ok();
        if !reserved {
            return read;
        }
        let Some(slot) = self.blooms.get(i) else {
            KEPT_BLOOMS.fetch_sub(len, Ordering::Relaxed);
            return read;
        };
        let kept = slot.get_or_init(|| Arc::clone(&read));
        if !Arc::ptr_eq(kept, &read) {
            // Another search kept it first.
            KEPT_BLOOMS.fetch_sub(len, Ordering::Relaxed);
        }
        Arc::clone(kept)
    }

    /// The Bloom filters of chunks `wanted` that are not kept yet, read with one open of the
    /// file (crc checked; one that fails is left out, so its chunk answers "maybe"), and kept
    /// while the filters kept by every open block stay within [`KEPT_BLOOMS_MAX`] bytes.
    fn read_blooms(&self, fs: &dyn Fs, wanted: &[usize]) -> Vec<(usize, Arc<[u8]>)> {
        let ranges: Vec<(u64, usize)> = wanted
            .iter()
            .map(|i| {
                (self.chunks[*i].offset + self.chunks[*i].len as u64, self.chunks[*i].bloom_len as usize)
            })
            .collect();
        let Ok(read) = fs.read_ranges(&self.path, &ranges) else { return Vec::new() };
        wanted
            .iter()
            .zip(read)
            .filter(|(i, bytes)| crc32fast::hash(bytes) == self.chunks[**i].bloom_crc)
            .map(|(i, bytes)| (*i, self.keep_bloom(*i, bytes.into())))
            .collect()
    }

    /// The Bloom filter of chunk `i` (empty when it has none), crc checked.
    pub(crate) fn read_bloom(&self, fs: &dyn Fs, i: usize) -> Result<Vec<u8>, BlockError> {
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
    pub(crate) fn read_checked(
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
    /// chunk has postings (format 2 and later): the postings and trace ids, which the open
    /// block holds only as hashes, are read from its index again.
    pub(crate) fn copy_source(&self, fs: &dyn Fs) -> Result<Option<CopySource<'_>>, BlockError> {
        if !self.has_postings {
            return Ok(None);
        }
        let mut copy = ChunkCopies::default();
        Self::open_with(fs, &self.path, Some(&mut copy), &self.kept, None)?;
        if self.postings_section.is_some() {
            copy.postings = vec![Vec::new(); self.chunks.len()];
            let read =
                self.each_posting_set(fs, |hash, set| set.each(|c| copy.postings[c as usize].push(hash)));
            match read {
                Ok(()) => {}
                // Its chunks are decoded and written anew, with postings made from their spans.
                Err(e @ BlockError::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "postings unreadable; compaction decodes the block's chunks");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        if let TraceIndex::Paged(p) = &self.traces {
            p.read_all(fs, &self.path, &mut copy.traces).map_err(|e| self.corrupt(e))?;
        }
        if copy.postings.len() != self.chunks.len() || copy.traces.len() != self.chunks.len() {
            return Err(self.corrupt("the index changed under an open block".into()));
        }
        let mut blocked = vec![Vec::new(); self.chunks.len()];
        for g in &self.bloom_groups {
            let bytes = fs
                .read_range(&self.path, g.offset, g.len() as usize)
                .map_err(|source| BlockError::Io { path: self.path.clone(), source })?;
            for (j, region) in bytes.chunks_exact(g.region_len()).enumerate() {
                let Some(lines) = g.checked_lines(region) else {
                    return Err(self.corrupt(format!("bloom region {j} of {} lines crc mismatch", g.lines)));
                };
                for (slot, &c) in g.members.iter().enumerate() {
                    blocked[c as usize].extend_from_slice(BloomGroup::line(lines, slot));
                }
            }
        }
        Ok(Some(CopySource { block: self, traces: copy.traces, postings: copy.postings, blocked }))
    }

    /// The block's column dictionaries (format 9; `None` when it has none), read and crc
    /// checked when first asked, then kept (in the block's [`IndexCache`]).
    pub(crate) fn dicts(&self, fs: &dyn Fs) -> Result<Option<Arc<columnar::ColumnDicts>>, BlockError> {
        let Some((offset, len, crc)) = self.dict_section else { return Ok(None) };
        let kept = self.kept.get_or_load(self.id, Part::Dicts, || {
            let bytes = self.read_checked(fs, offset, len, crc, || "column dictionaries".to_owned())?;
            columnar::ColumnDicts::decode(&bytes)
                .map(|d| Kept::Dicts(Arc::new(d)))
                .map_err(|e| self.corrupt(format!("column dictionaries: {e}")))
        })?;
        match kept {
            Kept::Dicts(d) => Ok(Some(d)),
            _ => unreachable!("the dictionaries part holds dictionaries"),
        }
    }

    /// The set of the block's origins chunk `i` numbers (`None`: it holds its own).
    fn origins_of(&self, i: usize) -> Option<&columnar::ChunkOrigins> {
        self.origins.get(self.chunks[i].origins as usize)
    }

    /// The compressed bytes of chunk `i`, crc checked.
    pub(crate) fn read_chunk_bytes(&self, fs: &dyn Fs, i: usize) -> Result<Vec<u8>, BlockError> {
        let c = &self.chunks[i];
        self.read_checked(fs, c.offset, c.len, c.crc, || format!("chunk {i}"))
    }

    /// Reads and decodes chunk `i`, checking its crc.
    pub(crate) fn read_chunk(&self, fs: &dyn Fs, i: usize) -> Result<Vec<Span>, BlockError> {
        self.read_chunk_projected(fs, i, None)
    }

    /// The spans of chunk `i` whose trace `wanted` accepts (crc checked): a columnar chunk
    /// builds only those (see [`columnar::decode_chunk_traces`]), a row-encoded one is
    /// decoded whole and filtered.
    pub(crate) fn read_chunk_traces(
        &self,
        fs: &dyn Fs,
        i: usize,
        wanted: &dyn Fn(&TraceId) -> bool,
    ) -> Result<Vec<Span>, BlockError> {
        let origins = self.origins_of(i);
        self.decode_chunk(fs, i, |raw| match raw.first() {
            first if columnar::is_columnar(first) => columnar::decode_chunk_traces(raw, wanted, origins),
            _ => codec::decode_spans(raw).map(|mut spans| {
                spans.retain(|s| wanted(&s.trace_id));
                spans
            }),
        })
    }

    /// [`Block::read_chunk`], with only what `projection` asks for of each span when it is
    /// given (see [`columnar::Projection`]).
    pub(crate) fn read_chunk_projected(
        &self,
        fs: &dyn Fs,
        i: usize,
        projection: Option<columnar::Projection<'_>>,
    ) -> Result<Vec<Span>, BlockError> {
        self.read_chunk_holding(fs, i, projection, &[])
    }

    /// [`Block::read_chunk_projected`] for spans that carry every one of `texts` (each a
    /// condition's key and the text a span that meets it carries verbatim as a string, see
    /// [`skein_store::SpanMatcher::verbatim_texts`]): no span, and the chunk not decoded, when
    /// its strings and those of its resources hold one of the texts nowhere.
    pub(crate) fn read_chunk_holding(
        &self,
        fs: &dyn Fs,
        i: usize,
        projection: Option<columnar::Projection<'_>>,
        texts: &[(&str, &str)],
    ) -> Result<Vec<Span>, BlockError> {
        // The first byte says which encoding wrote the chunk: rows (formats 1 and 2) or columns (3).
        let origins = self.origins_of(i);
        // A text one of the chunk's resources carries under its key meets its condition there
        // (those resources are the block's, not in the chunk).
        let in_resources = |(key, text): &(&str, &str)| {
            origins.is_some_and(|o| {
                o.resources.iter().any(|r| {
                    r.attributes
                        .iter()
                        .any(|kv| kv.key == *key && matches!(&kv.value, AttrValue::Str(s) if s == text))
                })
            })
        };
        let wanted: Vec<&str> = texts.iter().filter(|t| !in_resources(t)).map(|(_, text)| *text).collect();
        let bytes = self.read_chunk_bytes(fs, i)?;
        if !wanted.is_empty()
            && bytes.first() == Some(&columnar::PACKED)
            && !columnar::packed_may_hold_texts(&bytes, self.dicts(fs)?.as_deref(), &wanted)
                .map_err(|e| self.corrupt(format!("chunk {i} does not unpack: {e}")))?
        {
            return Ok(Vec::new());
        }
        self.decode_read_chunk(fs, i, &bytes, |raw| match (raw.first(), projection) {
            (first, None) if columnar::is_columnar(first) => columnar::decode_chunk_in(raw, origins),
            (first, Some(projection)) if columnar::is_columnar(first) => {
                columnar::decode_chunk_projected(raw, projection, origins)
            }
            (_, None) => codec::decode_spans(raw),
            // Row-encoded chunks (formats 1 and 2) are decoded whole; the caller keeps what it needs.
            (_, Some(_)) => codec::decode_spans(raw),
        })
    }

    /// Chunk `i` read (crc checked), decompressed and given to `decode`; a failure of either
    /// step is the block's corruption.
    fn decode_chunk(
        &self,
        fs: &dyn Fs,
        i: usize,
        decode: impl FnOnce(&[u8]) -> Result<Vec<Span>, DecodeError>,
    ) -> Result<Vec<Span>, BlockError> {
        let bytes = self.read_chunk_bytes(fs, i)?;
        self.decode_read_chunk(fs, i, &bytes, decode)
    }

    /// [`Block::decode_chunk`] of chunk `i` read already (`bytes`, crc checked).
    fn decode_read_chunk(
        &self,
        fs: &dyn Fs,
        i: usize,
        bytes: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<Vec<Span>, DecodeError>,
    ) -> Result<Vec<Span>, BlockError> {
        // Packed by column (format 7), or one zstd frame (the chunks of older formats, which
        // compaction copies into new blocks as they are).
        let raw = if bytes.first() == Some(&columnar::PACKED) {
            columnar::unpack_with(bytes, self.dicts(fs)?.as_deref())
                .map_err(|e| self.corrupt(format!("chunk {i} does not unpack: {e}")))?
        } else {
            zstd::stream::decode_all(bytes)
                .map_err(|e| self.corrupt(format!("chunk {i} does not decompress: {e}")))?
        };
        decode(&raw).map_err(|e| self.corrupt(format!("chunk {i}: {e}")))
    }
}

/// A search's question to one block (see [`Block::matcher`]).
pub(crate) struct ChunkMatcher<'b> {
    block: &'b Block,
    plan: Plan,
    /// Bloom filters read ahead for chunks a search will ask next (when the block may not
    /// keep them): reading them together costs one open of the file instead of one each.
    fetched: std::cell::RefCell<FxHashMap<usize, Arc<[u8]>>>,
    /// Per item hash (with or without services, of the query's tag at that place), the chunks
    /// whose blocked filters (format 5) may hold it, once asked.
    blocked: std::cell::RefCell<FxHashMap<(u64, bool, usize), Vec<u64>>>,
    /// The chunks that may match (one bit per chunk), worked out for the whole block at the
    /// first question when no chunk of it has a filter of format 4 (`None`: asked chunk by
    /// chunk).
    candidates: std::cell::OnceCell<Option<Vec<u64>>>,
}

/// Bloom filters read together when a search needs one that is not in memory: the next
/// chunks it will ask (searches go from the newest chunk to the oldest).
const BLOOMS_READ_AHEAD: usize = 64;

enum Plan {
    /// A block without postings (format 1): chunks with spans of the service (any, when `None`).
    ServiceOnly(Option<String>),
    /// The block lacks the service or a tag's key: no chunk matches.
    Nothing,
    /// Per service that may match, per tag: what the postings say of each chunk, and the
    /// Bloom filter items of the tag's value; and per tag, the (key, text) items a filter
    /// without services (format 9) is asked for, the same for every service.
    Postings { services: Vec<(u32, Vec<TagChunks>)>, key_items: Vec<Vec<u64>> },
}

/// For one service and tag: the chunks that have it by their postings, and those whose Bloom
/// filter must be asked (one bit per chunk), and the items (service, key, text) a filter is
/// asked for (the value as given and, for an integer, its canonical text).
struct TagChunks {
    sure: Vec<u64>,
    hashed: Vec<u64>,
    items: Vec<u64>,
}

impl<'b> ChunkMatcher<'b> {
    fn new(block: &'b Block, plan: Plan) -> Self {
        ChunkMatcher {
            block,
            plan,
            fetched: Default::default(),
            blocked: Default::default(),
            candidates: Default::default(),
        }
    }

    /// The chunks of the block that may match, as [`ChunkMatcher::may_match`] answers chunk by
    /// chunk, worked out a word of 64 chunks at a time: per service that may match, its
    /// chunks; per tag, those whose postings have it, or whose blocked filters may hold one
    /// of its items, or that have no filter. `None` for a block with a chunk whose filter is
    /// of format 4 (read per chunk, when asked). At 100M realistic spans a search for a
    /// client address asks some 60,000 chunks: asking them one by one was half of its
    /// instructions.
    fn all_candidates(&self, fs: &dyn Fs) -> Option<Vec<u64>> {
        let b = self.block;
        let Plan::Postings { services, key_items } = &self.plan else { return None };
        if b.chunks.iter().any(|c| c.bloom_lines == 0 && c.bloom_len > 0) {
            return None;
        }
        let words = b.chunks.len().div_ceil(64);
        // Chunks with a blocked filter, and those whose filter holds items without services.
        let (mut filtered, mut unserviced) = (vec![0u64; words], vec![0u64; words]);
        for (i, c) in b.chunks.iter().enumerate() {
            if c.bloom_lines > 0 {
                inverted::set_bit(&mut filtered, i as u32);
                if c.bloom_probes & bloom::UNSERVICED != 0 {
                    inverted::set_bit(&mut unserviced, i as u32);
                }
            }
        }
        let word = |bits: &[u64], w: usize| bits.get(w).copied().unwrap_or(0);
        let mut out = vec![0u64; words];
        for (sid, per_tag) in services {
            let mut acc = vec![0u64; words];
            for (i, c) in b.chunks.iter().enumerate() {
                if c.services.contains(*sid) {
                    inverted::set_bit(&mut acc, i as u32);
                }
            }
            for (k, (t, key_items)) in per_tag.iter().zip(key_items).enumerate() {
                let mut tag: Vec<u64> =
                    (0..words).map(|w| word(&t.sure, w) | (word(&t.hashed, w) & !filtered[w])).collect();
                for (without_services, items) in [(false, &t.items), (true, key_items)] {
                    let asked: Vec<u64> = (0..words)
                        .map(|w| {
                            let flag = if without_services { unserviced[w] } else { !unserviced[w] };
                            word(&t.hashed, w) & filtered[w] & flag
                        })
                        .collect();
                    if asked.iter().all(|w| *w == 0) {
                        continue;
                    }
                    for h in items {
                        self.blocked_chunks(fs, (*h, without_services, k), |maybe| {
                            for w in 0..words {
                                tag[w] |= asked[w] & word(maybe, w);
                            }
                        });
                    }
                }
                for w in 0..words {
                    acc[w] &= tag[w];
                }
            }
            for w in 0..words {
                out[w] |= acc[w];
            }
        }
        Some(out)
    }

    /// `answer` to the chunks whose blocked filters (format 5) may hold `item`, an item with
    /// services or without (`unserviced`) as the filters' are, for tag `tag` (see
    /// [`Block::blocked_may_hold`]): asked of every chunk of the block that any service's
    /// postings send to a filter for the tag, once per item.
    fn blocked_chunks<R>(
        &self,
        fs: &dyn Fs,
        (item, unserviced, tag): (u64, bool, usize),
        answer: impl FnOnce(&[u64]) -> R,
    ) -> R {
        let mut blocked = self.blocked.borrow_mut();
        let maybe = blocked.entry((item, unserviced, tag)).or_insert_with(|| {
            let Plan::Postings { services, .. } = &self.plan else { return Vec::new() };
            // An item without a service is the same for every service: the chunks that
            // any of them asks about (one service's would leave the others' groups unread).
            let mut asked = vec![0u64; self.block.chunks.len().div_ceil(64)];
            for (_, per_tag) in services {
                for (w, bits) in asked.iter_mut().zip(&per_tag[tag].hashed) {
                    *w |= bits;
                }
            }
            self.block.blocked_may_hold(fs, item, unserviced, &asked)
        });
        answer(maybe)
    }

    /// The Bloom filter of chunk `i` (format 4): kept by the block, read ahead, or read now
    /// together with those of the next older chunks whose filters a search for these
    /// services may ask.
    fn bloom(&self, fs: &dyn Fs, i: usize, services: &[(u32, Vec<TagChunks>)]) -> Option<Arc<[u8]>> {
        let b = self.block;
        if let Some(f) = b.blooms.get(i).and_then(|kept| kept.get()) {
            return Some(Arc::clone(f));
        }
        if let Some(f) = self.fetched.borrow_mut().remove(&i) {
            return Some(f);
        }
        if b.chunks[i].bloom_len == 0 {
            return Some(Arc::from(Vec::new()));
        }
        let asked = |j: usize| {
            b.chunks[j].bloom_len > 0
                && b.blooms.get(j).is_some_and(|kept| kept.get().is_none())
                && services.iter().any(|(_, per_tag)| per_tag.iter().any(|t| inverted::bit(&t.hashed, j)))
        };
        let wanted: Vec<usize> = std::iter::once(i)
            .chain((0..i).rev().filter(|j| asked(*j)).take(BLOOMS_READ_AHEAD - 1))
            .collect();
        let mut read = b.read_blooms(fs, &wanted);
        let mine = read.iter().position(|(j, _)| *j == i).map(|at| read.swap_remove(at).1);
        self.fetched.borrow_mut().extend(read);
        mine
    }

    /// Whether chunk `i` may hold a span of the service carrying every tag: answered from the
    /// postings and, for keys with many values, the chunk's Bloom filter, without reading the
    /// chunk.
    pub(crate) fn may_match(&self, fs: &dyn Fs, i: usize) -> bool {
        match self.candidates.get_or_init(|| self.all_candidates(fs)) {
            Some(candidates) => inverted::bit(candidates, i),
            None => self.chunk_may_match(fs, i),
        }
    }

    /// [`ChunkMatcher::may_match`] asked of chunk `i` alone.
    fn chunk_may_match(&self, fs: &dyn Fs, i: usize) -> bool {
        let b = self.block;
        match &self.plan {
            Plan::ServiceOnly(service) => service.as_deref().is_none_or(|s| b.chunk_has_service(i, s)),
            Plan::Nothing => false,
            Plan::Postings { services, key_items } => {
                // A format 4 filter is read at most once, when a tag needs it; unreadable, it
                // answers "maybe" (and is read again next time).
                let mut filter: Option<Option<Arc<[u8]>>> = None;
                services.iter().any(|(sid, per_tag)| {
                    b.chunks[i].services.contains(*sid)
                        && per_tag.iter().zip(key_items).enumerate().all(|(k, (t, key_items))| {
                            inverted::bit(&t.sure, i)
                                || (inverted::bit(&t.hashed, i) && {
                                    if b.chunks[i].bloom_lines > 0 {
                                        let unserviced = b.chunks[i].bloom_probes & bloom::UNSERVICED != 0;
                                        let items = if unserviced { key_items } else { &t.items };
                                        items.iter().any(|h| {
                                            self.blocked_chunks(fs, (*h, unserviced, k), |maybe| {
                                                inverted::bit(maybe, i)
                                            })
                                        })
                                    } else {
                                        let filter =
                                            filter.get_or_insert_with(|| self.bloom(fs, i, services));
                                        match filter {
                                            Some(f) if !f.is_empty() => {
                                                t.items.iter().any(|h| bloom::may_contain(f, *h))
                                            }
                                            _ => true,
                                        }
                                    }
                                })
                        })
                })
            }
        }
    }
}

/// What compaction copies with each chunk of a block, read from its index (or, format 11, its
/// postings section): per chunk, its postings (the hashes of its entries) and the
/// [`traces::trace_hash`]es of its traces.
#[derive(Default)]
pub(crate) struct ChunkCopies {
    postings: Vec<Vec<u64>>,
    traces: Vec<Vec<u64>>,
}

/// Most bytes of Bloom filters all open blocks keep in memory once searches have read them.
/// Beyond, a search reads the filters it needs from the file each time (the next ones it will
/// ask with one open of the file): a block does not keep more memory as the data grows (about
/// 2 bytes per span of filters in the realistic load), at the cost of slower searches for rare
/// values over that much data.
pub(crate) const KEPT_BLOOMS_MAX: u64 = 64 * 1024 * 1024;

/// Bytes of Bloom filters open blocks keep.
static KEPT_BLOOMS: AtomicU64 = AtomicU64::new(0);

impl Drop for Block {
    /// A block closed (retention, compaction) gives back what it and its cache keep of it.
    fn drop(&mut self) {
        self.kept.forget(self.id);
        let kept: u64 = self.blooms.iter().filter_map(|b| b.get()).map(|b| b.len() as u64).sum();
        KEPT_BLOOMS.fetch_sub(kept, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_store::testdata::SpanBuilder;
    use skein_wal::fs::OsFs;

    /// A block written whole shares its spans out evenly among as few chunks as the target
    /// allows: 1.3 targets of spans make two chunks of about 0.65, not one and a remnant.
    #[test]
    fn a_block_written_whole_has_chunks_of_even_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut spans = Vec::new();
        let mut total = 0;
        while total < CHUNK_TARGET * 13 / 10 {
            let n = spans.len() as u32;
            let mut s = SpanBuilder::new((n / 4 % 250) as u8 + 1, (n % 4) as u8 + 1)
                .attr("session.id", AttrValue::Str(format!("s-{n:08}").into()))
                .build();
            let mut id = [0x7e; 16];
            id[..4].copy_from_slice(&(n / 4).to_be_bytes());
            s.trace_id = TraceId::from_bytes(id).unwrap();
            s.start_time_unix_nano += n as u64;
            total += pending_bytes(&s);
            spans.push(s);
        }
        let traces: Vec<Vec<&Span>> = spans.chunks(4).map(|t| t.iter().collect()).collect();
        let block = write_block(&OsFs, &dir.path().join("1.blk"), traces, &[], None).unwrap();
        let sizes: Vec<usize> =
            (0..block.chunk_count()).map(|i| block.read_chunk(&OsFs, i).unwrap().len()).collect();
        assert_eq!(sizes.len(), 2, "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), spans.len());
        assert!(sizes[0].abs_diff(sizes[1]) <= 8, "{sizes:?}");
    }

    /// Spans of `pods` (one resource each, every span with its own `Arc` of equal value) in
    /// traces of three, padded so that they make several chunks.
    fn pod_spans(pods: &[&str], n: u32, first_trace: u32) -> Vec<Span> {
        (0..n)
            .map(|i| {
                let pod = pods[i as usize % pods.len()];
                let mut s = SpanBuilder::new(1, (i % 3) as u8 + 1)
                    .service(if pod.starts_with("cart") { "cart" } else { "frontend" })
                    .resource_attr("k8s.pod.name", AttrValue::Str(pod.into()))
                    .scope(
                        if i % 2 == 0 { "io.opentelemetry.http" } else { "io.opentelemetry.grpc" },
                        "1.2.0",
                    )
                    .attr("padding", AttrValue::Str(format!("{i:0>400}").into()))
                    .build();
                let mut id = [0x3c; 16];
                id[12..].copy_from_slice(&(first_trace + i / 3).to_be_bytes());
                s.trace_id = TraceId::from_bytes(id).unwrap();
                s.start_time_unix_nano += i as u64;
                s
            })
            .collect()
    }

    fn write_traces(path: &Path, spans: &[Span]) -> Block {
        let mut traces: BTreeMap<TraceId, Vec<&Span>> = BTreeMap::new();
        for s in spans {
            traces.entry(s.trace_id).or_default().push(s);
        }
        write_block(&OsFs, path, traces.into_values(), &[], None).unwrap()
    }

    fn all_spans(block: &Block) -> Vec<Span> {
        sorted((0..block.chunk_count()).flat_map(|i| block.read_chunk(&OsFs, i).unwrap()).collect())
    }

    fn sorted(mut spans: Vec<Span>) -> Vec<Span> {
        spans.sort_by_key(|s| (s.trace_id, s.span_id));
        spans
    }

    /// Distinct resources (by address) over all of a block's origin sets.
    fn distinct_resources(block: &Block) -> usize {
        block
            .origins
            .iter()
            .flat_map(|set| set.resources.iter().map(|r| Arc::as_ptr(r) as usize))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Format 9: a block holds each distinct resource and scope once (equal ones from different
    /// requests are one), its chunks number them, and every span reads back with its own.
    /// A merge keeps each source's set, translated into its own distinct resources, and one
    /// set for equal ones.
    #[test]
    fn resources_and_scopes_are_held_once_per_block_and_their_sets_survive_merges() {
        let dir = tempfile::tempdir().unwrap();
        let a_spans = pod_spans(&["frontend-7d9f-x2x", "frontend-7d9f-k8q", "cart-5c4b-9zt"], 9_000, 0);
        let a = write_traces(&dir.path().join("1.blk"), &a_spans);
        assert!(a.chunk_count() >= 3, "{} chunks", a.chunk_count());
        assert_eq!(a.origins.len(), 1);
        assert_eq!((a.origins[0].resources.len(), a.origins[0].scopes.len()), (3, 2));
        for i in 0..a.chunk_count() {
            assert_eq!(a.chunks[i].origins, 0);
            let raw = columnar::unpack(&a.read_chunk_bytes(&OsFs, i).unwrap()).unwrap();
            assert_eq!(raw[0], columnar::COLUMNAR_VERSION_REPEATS, "chunk {i}");
            assert!(columnar::decode_chunk(&raw).is_err(), "a chunk is not read without its block's origins");
        }
        assert_eq!(all_spans(&a), sorted(a_spans.clone()));

        // Another block with one of the same pods and a new one: two sets, four resources.
        let b_spans = pod_spans(&["cart-5c4b-9zt", "cart-5c4b-77w"], 3_000, 10_000);
        let b = write_traces(&dir.path().join("2.blk"), &b_spans);
        let merged =
            crate::compact::merge_blocks(&OsFs, &[Arc::new(a), Arc::new(b)], &dir.path().join("3.blk"))
                .unwrap();
        assert_eq!(merged.origins.len(), 2);
        assert_eq!(distinct_resources(&merged), 4);
        let mut want = a_spans.clone();
        want.extend(b_spans.iter().cloned());
        assert_eq!(all_spans(&merged), sorted(want.clone()));
        // The merged block opened again reads the same.
        assert_eq!(all_spans(&Block::open(&OsFs, &dir.path().join("3.blk")).unwrap()), sorted(want.clone()));

        // A block with the same pods as one of the merged block's sets, which its spans meet
        // in the other order: a set is ordered by content, so the merge of the two keeps it once.
        let c_spans = pod_spans(&["cart-5c4b-77w", "cart-5c4b-9zt"], 3_000, 20_000);
        let c = write_traces(&dir.path().join("4.blk"), &c_spans);
        let again = crate::compact::merge_blocks(
            &OsFs,
            &[Arc::new(Block::open(&OsFs, &dir.path().join("3.blk")).unwrap()), Arc::new(c)],
            &dir.path().join("5.blk"),
        )
        .unwrap();
        assert_eq!(again.origins.len(), 2, "an equal set is kept once");
        assert_eq!(distinct_resources(&again), 4);
        want.extend(c_spans.iter().cloned());
        assert_eq!(all_spans(&again), sorted(want));
    }

    /// Format 9's column dictionaries: a big merge packs its chunks' dictionary columns anew
    /// with dictionaries made of a few of them, which the block holds; every span reads back,
    /// the Bloom filters (seeded with each chunk's first crc) still find their values, a merge
    /// of such blocks packs them anew with its own, and a damaged dictionary section makes the
    /// chunks unreadable (a corrupt block), never different spans.
    #[test]
    fn big_merges_pack_chunks_with_column_dictionaries() {
        let dir = tempfile::tempdir().unwrap();
        const AGENTS: [&str; 4] = [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/17.2",
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            "python-requests/2.31.0",
        ];
        let spans_of = |first: u32, n: u32| -> Vec<Span> {
            (first..first + n)
                .map(|i| {
                    let mut s = SpanBuilder::new(1, (i % 3) as u8 + 1)
                        .service("frontend")
                        .attr(
                            "user_agent.original",
                            AttrValue::Str(format!("{} (build {})", AGENTS[(i % 4) as usize], i % 7).into()),
                        )
                        .attr(
                            "client.address",
                            AttrValue::Str(format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255).into()),
                        )
                        .attr(
                            "session.id",
                            AttrValue::Str(
                                format!(
                                    "{:016x}{:016x}",
                                    u64::from(i / 3).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                                    i / 3
                                )
                                .into(),
                            ),
                        )
                        .build();
                    let mut id = [0x4d; 16];
                    id[12..].copy_from_slice(&(i / 3).to_be_bytes());
                    s.trace_id = TraceId::from_bytes(id).unwrap();
                    s.start_time_unix_nano += i as u64;
                    s
                })
                .collect()
        };
        let (a_spans, b_spans) = (spans_of(0, 12_000), spans_of(12_000, 12_000));
        let a = Arc::new(write_traces(&dir.path().join("1.blk"), &a_spans));
        let b = Arc::new(write_traces(&dir.path().join("2.blk"), &b_spans));
        assert!(a.dict_section.is_none(), "a head's block has none");
        let small =
            crate::compact::merge_blocks(&OsFs, &[Arc::clone(&a), Arc::clone(&b)], &dir.path().join("3.blk"))
                .unwrap();
        assert!(small.dict_section.is_none(), "a small merge makes none");
        let path = dir.path().join("4.blk");
        let merged = crate::compact::merge_blocks_with(&OsFs, &[a, b], &path, 0).unwrap();
        let dicts = merged.dicts(&OsFs).unwrap().expect("dictionaries");
        assert!(dicts.len() > 4096, "{dicts:?}");
        let mut want = a_spans.clone();
        want.extend(b_spans.iter().cloned());
        assert_eq!(all_spans(&merged), sorted(want.clone()));
        assert!(
            merged.bytes < small.bytes,
            "{} bytes with dictionaries, {} without",
            merged.bytes,
            small.bytes
        );
        for i in 0..merged.chunk_count() {
            let e = columnar::unpack(&merged.read_chunk_bytes(&OsFs, i).unwrap()).unwrap_err();
            assert!(e.to_string().contains("needs a dictionary"), "{e}");
        }
        let holding = |block: &Block, v: &str| -> Vec<usize> {
            let q = skein_store::TraceQuery {
                tags: vec![("client.address".to_owned(), v.to_owned())],
                ..Default::default()
            };
            let m = block.matcher(&OsFs, &skein_store::SpanMatcher::new(&q));
            (0..block.chunk_count()).filter(|i| m.may_match(&OsFs, *i)).collect()
        };
        for i in [0u32, 7_777, 23_999] {
            let v = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            let found = holding(&merged, &v);
            assert_eq!(found.len(), 1, "{v}: {found:?}");
            assert!(
                merged
                    .read_chunk(&OsFs, found[0])
                    .unwrap()
                    .iter()
                    .any(|s| s.attributes.iter().any(|kv| kv.value == AttrValue::Str(v.as_str().into())))
            );
        }

        // Merged again (with a block of new spans): packed anew with the new block's own.
        let c_spans = spans_of(24_000, 6_000);
        let c = Arc::new(write_traces(&dir.path().join("5.blk"), &c_spans));
        let again = crate::compact::merge_blocks_with(
            &OsFs,
            &[Arc::new(Block::open(&OsFs, &path).unwrap()), c],
            &dir.path().join("6.blk"),
            0,
        )
        .unwrap();
        want.extend(c_spans.iter().cloned());
        assert_eq!(all_spans(&again), sorted(want));
        assert_eq!(holding(&again, "10.0.30.97").len(), 1);

        // A damaged dictionary section: the block's chunks do not read.
        let (offset, _, _) = merged.dict_section.unwrap();
        let mut file = std::fs::read(&path).unwrap();
        file[offset as usize + 10] ^= 0x55;
        std::fs::write(&path, &file).unwrap();
        let damaged = Block::open(&OsFs, &path).unwrap();
        let e = damaged.read_chunk(&OsFs, 0).unwrap_err();
        assert!(e.to_string().contains("column dictionaries crc mismatch"), "{e}");
    }

    /// A search's read of a chunk gives no span, without decoding it, when the chunk's strings
    /// hold one of the wanted texts nowhere; a text that a span attribute (a hex id
    /// included), an event (attribute or name) or one of the chunk's resources (which the
    /// block keeps, not the chunk) holds never rules the chunk out.
    #[test]
    fn a_chunk_without_a_wanted_text_is_not_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let spans: Vec<Span> = (0..30u8)
            .map(|i| {
                SpanBuilder::new(1, i + 1)
                    .service("frontend")
                    .resource_attr("k8s.pod.name", AttrValue::Str("pod-7".into()))
                    .attr("client.address", AttrValue::Str(format!("10.0.0.{i}").into()))
                    .attr(
                        "session.id",
                        AttrValue::Str(format!("123e4567-e89b-12d3-a456-4266141740{i:02x}").into()),
                    )
                    .event("exception", 5, vec![skein_model::KeyValue::string("exception.type", "Panic")])
                    .build()
            })
            .collect();
        let block = write_traces(&dir.path().join("1.blk"), &spans);
        assert_eq!(block.chunk_count(), 1);
        let whole = block.read_chunk(&OsFs, 0).unwrap();
        assert_eq!(whole.len(), 30);
        let cases: [(&[(&str, &str)], bool); 10] = [
            (&[], true),
            (&[("client.address", "10.0.0.3")], true),
            (&[("client.address", "10.9.9.9")], false),
            (&[("k8s.pod.name", "pod-7")], true),
            (&[("k8s.pod.name", "pod-8")], false),
            (&[("exception.type", "Panic")], true),
            (&[("event", "exception")], true),
            (&[("session.id", "123e4567-e89b-12d3-a456-42661417401d")], true),
            (&[("session.id", "123e4567-e89b-12d3-a456-4266141740ff")], false),
            (&[("client.address", "10.0.0.3"), ("client.address", "10.9.9.9")], false),
        ];
        for (texts, read) in cases {
            let got = block.read_chunk_holding(&OsFs, 0, None, texts).unwrap();
            assert_eq!(got, if read { whole.clone() } else { Vec::new() }, "{texts:?}");
        }
    }

    /// The chunks a block's matcher lets through, worked out for the whole block at once, are
    /// the ones it lets through asked chunk by chunk: for values the postings list and values
    /// the Bloom filters hold, of one service, of any or of none, alone and together, present
    /// and absent — and none that holds a matching span is left out.
    #[test]
    fn a_blocks_candidates_are_the_chunks_asked_one_by_one_would_give() {
        let dir = tempfile::tempdir().unwrap();
        let spans: Vec<Span> = (0..9_000u32)
            .map(|n| {
                let mut s = padded_span(
                    n,
                    "client.address",
                    AttrValue::Str(format!("10.0.{}.{}", n / 200, n % 200).into()),
                );
                s.attributes.push(skein_model::KeyValue::new("tier", AttrValue::Int((n / 1_500) as i64)));
                s
            })
            .collect();
        let block = write_traces(&dir.path().join("1.blk"), &spans);
        assert!(block.chunk_count() >= 6, "{} chunks", block.chunk_count());
        type Query<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)]);
        let queries: [Query; 9] = [
            (Some("frontend"), &[("client.address", "10.0.7.42")]),
            (Some("cart"), &[("client.address", "10.0.7.42")]),
            (None, &[("client.address", "10.0.7.43")]),
            (Some("frontend"), &[("client.address", "10.9.9.9")]),
            (None, &[("tier", "3")]),
            (Some("cart"), &[("tier", "03"), ("client.address", "10.0.22.101")]),
            (Some("frontend"), &[("tier", "2"), ("client.address", "10.0.7.42")]),
            (None, &[("client.address", "10.0.1.1"), ("client.address", "10.0.1.2")]),
            (Some("frontend"), &[]),
        ];
        for (service, tags) in queries {
            let q = skein_store::TraceQuery {
                service: service.map(str::to_owned),
                tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..skein_store::TraceQuery::default()
            };
            let m = skein_store::SpanMatcher::new(&q);
            let (whole, one_by_one) = (block.matcher(&OsFs, &m), block.matcher(&OsFs, &m));
            let candidates = whole.all_candidates(&OsFs).expect("blocked filters only");
            let mut matched = 0;
            for i in 0..block.chunk_count() {
                assert_eq!(
                    inverted::bit(&candidates, i),
                    one_by_one.chunk_may_match(&OsFs, i),
                    "{q:?}, chunk {i}"
                );
                if block.read_chunk(&OsFs, i).unwrap().iter().any(|s| m.matches(s)) {
                    assert!(whole.may_match(&OsFs, i), "{q:?}: chunk {i} has a match");
                    matched += 1;
                }
            }
            let expected = spans.iter().any(|s| m.matches(s));
            assert_eq!(matched > 0, expected, "{q:?}");
        }
    }

    /// Span `n` of a block of many chunks: of service `frontend` or `cart` in turn, three to a
    /// trace, `n` µs apart, with `key` = `value` and 300 bytes of padding.
    fn padded_span(n: u32, key: &str, value: AttrValue) -> Span {
        let mut s = SpanBuilder::new(1, (n % 3) as u8 + 1)
            .service(if n.is_multiple_of(2) { "frontend" } else { "cart" })
            .attr(key, value)
            .attr("padding", AttrValue::Str(format!("{n:0>300}").into()))
            .build();
        let mut id = [0u8; 16];
        id[0] = 0x5a;
        id[12..].copy_from_slice(&(n / 3).to_be_bytes());
        s.trace_id = TraceId::from_bytes(id).unwrap();
        s.start_time_unix_nano += n as u64 * 1_000;
        s
    }

    /// Format 11's postings section: a search's chunks come from it, also once the cache let
    /// it go (read again); damaged, the block still opens and a search reads every chunk of the
    /// service, finding the same spans, and compaction decodes the block's chunks, so the
    /// merged block has postings again.
    #[test]
    fn a_damaged_postings_section_costs_reads_not_spans() {
        let dir = tempfile::tempdir().unwrap();
        let spans: Vec<Span> =
            (0..9_000u32).map(|n| padded_span(n, "tier", AttrValue::Int((n / 1_000) as i64))).collect();
        let path = dir.path().join("1.blk");
        let block = write_block(&OsFs, &path, spans.iter().map(|s| vec![s]), &[], None).unwrap();
        let chunks = block.chunk_count();
        assert!(chunks >= 3, "{chunks} chunks");
        let asked = |block: &Block| -> Vec<usize> {
            let q = skein_store::TraceQuery {
                service: Some("cart".to_owned()),
                tags: vec![("tier".to_owned(), "4".to_owned())],
                ..Default::default()
            };
            let m = block.matcher(&OsFs, &skein_store::SpanMatcher::new(&q));
            (0..block.chunk_count()).filter(|i| m.may_match(&OsFs, *i)).collect()
        };
        let pruned = asked(&block);
        assert!(!pruned.is_empty() && pruned.len() < chunks, "{pruned:?} of {chunks}");
        // Let go by the cache, read again from the section: the same chunks.
        block.kept.forget(block.id);
        assert_eq!(asked(&block), pruned);
        let (offset, _, _) = block.postings_section.unwrap();
        drop(block);
        let mut file = std::fs::read(&path).unwrap();
        file[offset as usize + 3] ^= 0x55;
        std::fs::write(&path, &file).unwrap();
        let damaged = Arc::new(Block::open(&OsFs, &path).expect("the block opens"));
        let every: Vec<usize> = (0..chunks).filter(|i| damaged.chunk_has_service(*i, "cart")).collect();
        assert_eq!(asked(&damaged), every);
        assert!(damaged.copy_source(&OsFs).unwrap().is_none(), "compaction decodes its chunks");
        let merged =
            crate::compact::merge_blocks(&OsFs, &[Arc::clone(&damaged)], &dir.path().join("2.blk")).unwrap();
        assert_eq!(all_spans(&merged), all_spans(&damaged));
        let cart = (0..merged.chunk_count()).filter(|i| merged.chunk_has_service(*i, "cart")).count();
        let found = asked(&merged).len();
        assert!(found > 0 && found < cart, "postings made anew: {found} of {cart} chunks asked");
    }

    /// Format 5's Bloom section: every chunk of a block is asked about a value with one read
    /// per group, only chunks that hold the value (or a false positive) answer "maybe", and
    /// a damaged region answers "maybe" for its chunks instead of hiding spans; compaction
    /// takes each chunk's lines out of the groups as they were.
    #[test]
    fn blocked_filters_are_asked_per_group_and_a_damaged_region_answers_maybe() {
        let dir = tempfile::tempdir().unwrap();
        let address = |n: u32| format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
        let spans: Vec<Span> = (0..12_000u32)
            .map(|n| padded_span(n, "client.address", AttrValue::Str(address(n).into())))
            .collect();
        let path = dir.path().join("1.blk");
        let block = write_block(&OsFs, &path, spans.iter().map(|s| vec![s]), &[], None).unwrap();
        assert!(block.chunk_count() >= 3, "{} chunks", block.chunk_count());
        assert!(!block.bloom_groups.is_empty());
        let maybe = |block: &Block, service: Option<&str>, v: &str| -> Vec<usize> {
            let q = skein_store::TraceQuery {
                service: service.map(str::to_owned),
                tags: vec![("client.address".to_owned(), v.to_owned())],
                ..Default::default()
            };
            let m = block.matcher(&OsFs, &skein_store::SpanMatcher::new(&q));
            (0..block.chunk_count()).filter(|i| m.may_match(&OsFs, *i)).collect()
        };
        let holding = |v: &str| -> Vec<usize> {
            (0..block.chunk_count())
                .filter(|i| {
                    block.read_chunk(&OsFs, *i).unwrap().iter().any(|s| {
                        s.attributes
                            .iter()
                            .any(|kv| kv.key == "client.address" && kv.value == AttrValue::Str(v.into()))
                    })
                })
                .collect()
        };
        for n in [0u32, 1, 5_999, 11_998] {
            let want = holding(&address(n));
            assert_eq!(want.len(), 1);
            assert_eq!(maybe(&block, None, &address(n)), want, "{n}");
            let service = if n % 2 == 0 { "frontend" } else { "cart" };
            assert_eq!(maybe(&block, Some(service), &address(n)), want, "{n}");
        }
        assert!(maybe(&block, None, "192.168.1.1").is_empty(), "a value that is nowhere");

        // Compaction's copy of the chunks' filters equals what the groups hold.
        let copy = block.copy_source(&OsFs).unwrap().unwrap();
        for (i, c) in block.chunks.iter().enumerate() {
            assert_eq!(copy.blocked[i].len(), c.bloom_lines as usize * bloom::LINE_BYTES);
        }

        // Damage one byte of every region of the first group: its chunks answer "maybe".
        let mut file = std::fs::read(&path).unwrap();
        let g = &block.bloom_groups[0];
        for j in 0..g.lines as u64 {
            file[(g.offset + j * g.region_len() as u64) as usize + 4] ^= 0x40;
        }
        std::fs::write(&path, &file).unwrap();
        let damaged = Block::open(&OsFs, &path).unwrap();
        let got = maybe(&damaged, None, "192.168.1.1");
        let members: Vec<usize> = g.members.iter().map(|c| *c as usize).collect();
        assert_eq!(got, members, "the damaged group's chunks, and only them");
        assert!(damaged.copy_source(&OsFs).is_err(), "compaction refuses a damaged filter");
    }
}
