//! Writing a block: chunks gathered, encoded and compressed, then the index and the footer.

use super::*;

thread_local! {
    /// Time this thread has spent in chunk encoding, which is parallel work (on every core,
    /// or inline when there is one): its own CPU time there and the wall time.
    static PARALLEL: std::cell::Cell<(u64, std::time::Duration)> =
        const { std::cell::Cell::new((0, std::time::Duration::ZERO)) };
}

/// Runs `work` (a block write or a compaction, on the calling thread) and returns its result
/// with the time it ran serially: the calling thread's CPU time (its chunks are encoded by
/// other threads meanwhile), or where that is not known, its wall time less the time its
/// chunks were encoded on every core.
pub(crate) fn serially<T>(work: impl FnOnce() -> T) -> (T, std::time::Duration) {
    let (started, (cpu_in_before, wall_in_before)) = (std::time::Instant::now(), PARALLEL.get());
    let cpu_before = skein_wal::thread_cpu_nanos();
    let out = work();
    let (cpu_in, wall_in) = PARALLEL.get();
    if let (Some(before), Some(after)) = (cpu_before, skein_wal::thread_cpu_nanos()) {
        let serial = after.saturating_sub(before).saturating_sub(cpu_in - cpu_in_before);
        return (out, std::time::Duration::from_nanos(serial));
    }
    (out, started.elapsed().saturating_sub(wall_in - wall_in_before))
}

/// [`write_measured`] for traces given as groups of spans, measured here.
#[cfg(test)]
pub(crate) fn write_block<'a>(
    fs: &dyn Fs,
    path: &Path,
    traces: impl IntoIterator<Item = Vec<&'a Span>>,
    wal_ranges: &[(u64, u64)],
    red: Option<&RedSummary>,
) -> Result<Block, BlockError> {
    let traces =
        traces.into_iter().map(|spans| Measured::of(spans.into_iter().map(SpanRef::Borrowed).collect()));
    write_measured(fs, path, traces, None, wal_ranges, red)
}

/// Writes traces (each the spans of one trace, measured beforehand: a head measures each as
/// its spans come, while they are in the cache, so that writing it walks them fewer times)
/// into a new block file at `path` (atomically). `wal_ranges` (the WAL segments whose records
/// these spans are) is recorded so recovery knows which WAL records the block already holds.
/// `red`, when given, is the RED pre-aggregates of exactly these spans (the head's): they are
/// written as they are instead of being counted again. `origins`, when given, are the
/// resources and scopes of every span (the head's, each pair once or more): the writer numbers
/// them without looking at every span for them.
pub(crate) fn write_measured<'a>(
    fs: &dyn Fs,
    path: &Path,
    traces: impl IntoIterator<Item = Measured<'a>>,
    origins: Option<&[Origin]>,
    wal_ranges: &[(u64, u64)],
    red: Option<&RedSummary>,
) -> Result<Block, BlockError> {
    let mut writer = BlockWriter { from_head: true, ..BlockWriter::default() };
    if let Some(red) = red {
        writer.red = red.clone();
        writer.red_given = true;
    }
    writer.add_all_traces(traces, origins);
    writer.finish(fs, path, wal_ranges, &[])
}

/// A span's resource and scope.
pub(crate) type Origin = (Arc<skein_model::Resource>, Arc<skein_model::InstrumentationScope>);

/// Of some spans: their earliest start (`u64::MAX` for none) and what they add to the chunks
/// they go into ([`super::pending_bytes`], summed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub(crate) start: u64,
    pub(crate) bytes: usize,
}

impl Default for Extent {
    fn default() -> Self {
        Extent { start: u64::MAX, bytes: 0 }
    }
}

impl Extent {
    pub(crate) fn add(&mut self, s: &Span) {
        self.start = self.start.min(s.start_time_unix_nano);
        self.bytes += super::pending_bytes(s);
    }

    pub(crate) fn merge(&mut self, other: Extent) {
        self.start = self.start.min(other.start);
        self.bytes += other.bytes;
    }
}

/// A span to write: borrowed from a head, or owned (decoded by compaction from a block of
/// format 1). Two words, where a `Cow<Span>` is a whole span (about 250 bytes): the writer
/// moves each span's handle twice (into its trace's list, then into its chunk's), and at
/// hundreds of thousands of spans per second copies of whole spans cost more than the walks.
pub(crate) enum SpanRef<'a> {
    Borrowed(&'a Span),
    Owned(Box<Span>),
}

impl std::ops::Deref for SpanRef<'_> {
    type Target = Span;

    fn deref(&self) -> &Span {
        match self {
            SpanRef::Borrowed(s) => s,
            SpanRef::Owned(s) => s,
        }
    }
}

/// The spans of one trace to write, with their [`Extent`].
pub(crate) struct Measured<'a> {
    pub(crate) spans: Vec<SpanRef<'a>>,
    pub(crate) extent: Extent,
}

impl<'a> Measured<'a> {
    pub(crate) fn of(spans: Vec<SpanRef<'a>>) -> Self {
        let mut extent = Extent::default();
        spans.iter().for_each(|s| extent.add(s));
        Measured { spans, extent }
    }
}

/// Traces, empty ones left out, oldest first (by their earliest start, then id).
fn by_start<'a>(traces: impl IntoIterator<Item = Measured<'a>>) -> Vec<Measured<'a>> {
    let mut traces: Vec<Measured<'a>> = traces.into_iter().filter(|t| !t.spans.is_empty()).collect();
    traces.sort_unstable_by_key(|t| (t.extent.start, t.spans[0].trace_id));
    traces
}

/// Builds a block chunk by chunk: spans go in (whole traces, or parts of traces: a trace may
/// then span several chunks), compressed chunks accumulate, and [`BlockWriter::finish`] writes
/// the index and footer. Memory: the compressed chunks, the chunk being gathered and up to two
/// per core queued for encoding.
#[derive(Default)]
pub(crate) struct BlockWriter<'a> {
    service_ids: FxHashMap<String, u32>,
    /// Per service (by id): its name, and span counts per operation name and kind code.
    services: Vec<(String, FxHashMap<String, [u64; SpanKind::ALL.len()]>)>,
    /// The block's bytes so far, when it is written whole at the end ([`write_atomic`]).
    file: Vec<u8>,
    /// Where the bytes go instead, when the block is streamed to its file as it grows
    /// ([`BlockWriter::streaming`]: compaction, whose output is up to 64 MiB).
    streamed: Option<Streamed<'a>>,
    /// Bytes of the block so far (in `file` or already in the streamed file).
    written: u64,
    chunks: Vec<ChunkMeta>,
    /// The postings of the chunks, inverted: each entry (a hash of service, key and value) and
    /// the chunks that have it; a merged block's postings take a few bytes per entry and chunk,
    /// not a map of owned strings. Written as the block's postings section (format 11).
    postings: PostingIndexBuilder,
    /// The blocked Bloom filter of each chunk (empty when it has none), written in the
    /// block's Bloom section by [`BlockWriter::finish`].
    blocked: Vec<Vec<u8>>,
    /// (trace hash, chunk) per trace and chunk it is in: the trace section's entries.
    trace_index: Vec<(u64, u32)>,
    /// The trace and chunk of the last entry added for a span (a trace's spans come together).
    last_entry: Option<(TraceId, u32)>,
    span_count: u64,
    /// Spans of the chunk being gathered: borrowed from a head, or owned (decoded by compaction).
    pending: Vec<SpanRef<'a>>,
    /// The service id of each pending span.
    pending_services: Vec<u32>,
    /// The places of each pending span's resource and scope in the origin set of the chunks
    /// this writer encodes.
    pending_origins: Vec<(u32, u32)>,
    /// The block's resources and scopes, and the sets of them its chunks number (format 9).
    origins: origins::OriginPool,
    /// Column dictionaries the chunks this writer copies are packed with anew (a merge that
    /// writes a big block makes them), written in the block (format 9).
    dicts: Option<columnar::ColumnDicts>,
    /// The zstd contexts that pack copied chunks anew with `dicts`.
    repacker: Option<Box<columnar::Repacker>>,
    /// By a resource's place in the origin set of the chunks this writer encodes, its service
    /// id (`u32::MAX` while unknown): a span's service is found without looking among its
    /// resource's attributes (spans added in a trace's order change resource at nearly every
    /// span).
    service_of_place: Vec<u32>,
    pending_bytes: usize,
    /// The chunk being gathered is cut at this many pending bytes: [`CHUNK_TARGET`], or less
    /// when [`BlockWriter::add_all_traces`] knows every span to come and shares them out evenly
    /// (a head of 1.3 times the target makes two chunks of 0.65, not one and a remnant).
    chunk_target: Option<usize>,
    /// Chunks cut but not encoded yet: they are encoded together, on every core
    /// ([`BlockWriter::encode_queued`]), and appended in order.
    queued: Vec<Queued<'a>>,
    /// Threads that encode chunks (one per core the process may use), asked once per block:
    /// the standard library reads the process's affinity and cgroup limits to answer.
    encoders: Option<usize>,
    /// RED pre-aggregates of every span in the block…
    red: RedSummary,
    /// …unless a compaction copied chunks of a block that has none (before format 4).
    red_incomplete: bool,
    /// The pre-aggregates were given whole: spans added are not counted again, in them or in
    /// the operation counts (which are taken from them when the block is finished).
    red_given: bool,
    /// The block is a head's: compaction merges it with others within seconds (reading its
    /// index sections once) into a block whose sections it compresses anew, so its own are
    /// compressed at a quicker level ([`HEAD_SECTIONS_LEVEL`]).
    from_head: bool,
}

/// A block file being written as it grows: `<path>.tmp`, renamed over the block's path once
/// complete (and fsynced), so readers never see a partial block; removed when the block is
/// not finished (a failed write, a failed read of what it copies, a panic).
struct Streamed<'a> {
    fs: &'a dyn Fs,
    file: Box<dyn skein_wal::fs::AppendFile>,
    tmp: PathBuf,
    /// The first write that failed: the block is not finished.
    error: Option<std::io::Error>,
    /// Renamed to the block's path: nothing to remove.
    renamed: bool,
}

impl Drop for Streamed<'_> {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = self.fs.remove(&self.tmp);
        }
    }
}

impl std::fmt::Debug for Streamed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed").field("tmp", &self.tmp).field("error", &self.error).finish()
    }
}

impl<'a> BlockWriter<'a> {
    /// A writer that streams the block to its file as chunks are added, instead of holding
    /// the whole block in memory until [`BlockWriter::finish`] (which still makes it appear
    /// atomically): memory then holds the chunk being gathered and the index.
    pub(crate) fn streaming(fs: &'a dyn Fs, path: &Path) -> Result<BlockWriter<'a>, BlockError> {
        let tmp = path.with_extension("tmp");
        let io = |source| BlockError::Io { path: tmp.clone(), source };
        match fs.remove(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let file = fs.open_append(&tmp).map_err(io)?;
        let streamed = Streamed { fs, file, tmp, error: None, renamed: false };
        Ok(BlockWriter { streamed: Some(streamed), ..BlockWriter::default() })
    }

    /// Packs every chunk copied from now on anew with `dicts` (their dictionary columns; see
    /// [`columnar::Repacker::repack`]), which the block holds.
    pub(crate) fn set_dicts(&mut self, dicts: columnar::ColumnDicts) {
        self.dicts = Some(dicts);
    }

    /// Appends `bytes` to the block; returns where they start.
    fn append_bytes(&mut self, bytes: &[u8]) -> u64 {
        let at = self.written;
        self.written += bytes.len() as u64;
        match &mut self.streamed {
            Some(s) => {
                if s.error.is_none()
                    && let Err(e) = s.file.write_all(bytes)
                {
                    s.error = Some(e);
                }
            }
            None => self.file.extend_from_slice(bytes),
        }
        at
    }

    /// The id of `service` in this block's service table (added when new).
    pub(crate) fn service_id(&mut self, service: &str) -> u32 {
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
    pub(crate) fn add_traces(&mut self, traces: impl IntoIterator<Item = Vec<SpanRef<'a>>>) {
        for t in by_start(traces.into_iter().map(Measured::of)) {
            self.add(t.spans, t.extent.bytes);
        }
    }

    /// [`BlockWriter::add_traces`] for every span the block will hold: they are shared out
    /// evenly among as few chunks as [`CHUNK_TARGET`] allows.
    /// `origins`, when given, are the resources and scopes of every span (each pair once or
    /// more; found from the spans when not given).
    pub(crate) fn add_all_traces(
        &mut self,
        traces: impl IntoIterator<Item = Measured<'a>>,
        origins: Option<&[Origin]>,
    ) {
        let traces = by_start(traces);
        let total: usize = traces.iter().map(|t| t.extent.bytes).sum();
        let chunks = total.div_ceil(CHUNK_TARGET).max(1);
        self.chunk_target = Some(total.div_ceil(chunks));
        // The first chunk starts with room for its share of the spans (the next ones take the
        // room of the one before): no copies of a growing list of spans.
        let share = traces.iter().map(|t| t.spans.len()).sum::<usize>().div_ceil(chunks) + 64;
        self.pending.reserve(share);
        self.pending_services.reserve(share);
        self.pending_origins.reserve(share);
        match origins {
            Some(origins) => self.origins.own_set_of(origins.iter().map(|(r, c)| (r, c))),
            None => {
                self.origins.own_set_of(traces.iter().flat_map(|t| &t.spans).map(|s| (&s.resource, &s.scope)))
            }
        }
        for t in traces {
            self.add(t.spans, t.extent.bytes);
        }
    }

    /// Adds spans (of one trace, or of several whole traces) that add `bytes` to the chunk
    /// being gathered ([`super::pending_bytes`], summed); cuts a chunk when enough is gathered.
    fn add(&mut self, spans: Vec<SpanRef<'a>>, bytes: usize) {
        let chunk = (self.chunks.len() + self.queued.len()) as u32;
        for s in &spans {
            let origin = self.origins.of(s);
            let place = origin.0 as usize;
            let sid = match self.service_of_place.get(place) {
                Some(&sid) if sid != u32::MAX => sid,
                _ => {
                    let sid = self.service_id(s.service_name());
                    if self.service_of_place.len() <= place {
                        self.service_of_place.resize(place + 1, u32::MAX);
                    }
                    self.service_of_place[place] = sid;
                    sid
                }
            };
            self.pending_services.push(sid);
            self.pending_origins.push(origin);
            // Given pre-aggregates count the operations (at the end): a span is not looked up
            // by its name here.
            if !self.red_given {
                named!(&mut self.services[sid as usize].1, &s.name)[s.kind.code() as usize] += 1;
                self.red.add_of(&self.services[sid as usize].0, s);
            }
            self.span_count += 1;
            if self.last_entry != Some((s.trace_id, chunk)) {
                self.last_entry = Some((s.trace_id, chunk));
                self.trace_index.push((traces::trace_hash(s.trace_id), chunk));
            }
        }
        self.pending_bytes += bytes;
        // The spans belong to the chunk being gathered, after the encoded and queued ones.
        self.pending.extend(spans);
        if self.pending_bytes >= self.chunk_target.unwrap_or(CHUNK_TARGET) {
            self.cut();
        }
    }

    /// The operation counts (per service, operation and kind) of the given pre-aggregates,
    /// which count exactly the spans added: their calls.
    fn count_operations_of_red(&mut self) {
        let red = std::mem::take(&mut self.red);
        for (service, ops) in &red.series {
            let sid = self.service_id(service) as usize;
            for (op, kinds) in ops {
                let counts = named!(&mut self.services[sid].1, op);
                for (k, cells) in kinds.iter().enumerate() {
                    counts[k] += cells.values().map(|c| c.calls).sum::<u64>();
                }
            }
        }
        self.red = red;
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
    /// [`BlockWriter::take_counts`]. What `from` holds of the chunk (postings, traces, Bloom
    /// lines) is moved out or freed: a merge holds each chunk's once, not its sources' and the
    /// new block's copies side by side.
    pub(crate) fn copy_chunk(
        &mut self,
        fs: &dyn Fs,
        from: &mut CopySource<'_>,
        i: usize,
    ) -> Result<(), BlockError> {
        let source = from.block;
        self.cut(); // spans gathered so far keep their chunk index
        self.encode_queued();
        let mut bytes = source.read_chunk_bytes(fs, i)?;
        let meta = &source.chunks[i];
        let mut crc = meta.crc;
        if let Some(dicts) = &self.dicts
            && bytes.first() == Some(&columnar::PACKED)
        {
            let repacker = self.repacker.get_or_insert_default();
            bytes = repacker
                .repack(&bytes, source.dicts(fs)?.as_deref(), dicts)
                .map_err(|e| source.corrupt(format!("chunk {i} does not unpack: {e}")))?;
            crc = crc32fast::hash(&bytes);
        }
        let services: BTreeSet<u32> =
            meta.services.iter().map(|s| self.service_id(&source.services[s as usize].0)).collect();
        // Entries are hashed with the service's name, not its id in a block: they stay valid
        // in the merged block, as the filter's items do. A format 4 filter stays after its
        // chunk; a blocked one goes to the Bloom section.
        let filter = source.read_bloom(fs, i)?;
        let blocked = std::mem::take(&mut from.blocked[i]);
        let origins = self.origins.copied(source, meta.origins)?;
        let chunk = self.chunks.len() as u32;
        for hash in std::mem::take(&mut from.postings[i]) {
            self.postings.add_hash(chunk, hash);
        }
        self.trace_index.extend(std::mem::take(&mut from.traces[i]).into_iter().map(|id| (id, chunk)));
        let offset = self.append_bytes(&bytes);
        self.append_bytes(&filter);
        self.chunks.push(ChunkMeta {
            offset,
            len: bytes.len() as u32,
            crc,
            time: meta.time,
            durations: meta.durations,
            services: ChunkServices::new(services),
            bloom_len: filter.len() as u32,
            bloom_crc: crc32fast::hash(&filter),
            bloom_lines: (blocked.len() / bloom::LINE_BYTES) as u32,
            bloom_probes: if blocked.is_empty() { 0 } else { meta.bloom_probes },
            bloom_slot: 0,
            bloom_seed: meta.bloom_seed,
            origins,
        });
        self.blocked.push(blocked);
        Ok(())
    }

    fn encoders(&mut self) -> usize {
        *self.encoders.get_or_insert_with(crate::cores)
    }

    /// Ends the chunk being gathered: it is queued, and the queue is encoded once it holds a
    /// chunk for every core (so memory stays bounded when compaction feeds decoded spans).
    pub(crate) fn cut(&mut self) {
        self.pending_bytes = 0;
        if self.pending.is_empty() {
            return;
        }
        // The next chunk starts with room for as many spans as this one (chunks are cut at
        // about the same size): its spans are moved in, not grown into by copies.
        let room = self.pending.len();
        self.queued.push(Queued {
            spans: std::mem::replace(&mut self.pending, Vec::with_capacity(room)),
            services: std::mem::replace(&mut self.pending_services, Vec::with_capacity(room)),
            origins: std::mem::replace(&mut self.pending_origins, Vec::with_capacity(room)),
            set: self.origins.own_set().expect("the pending spans have places in the writer's own set"),
        });
        if self.queued.len() >= 2 * self.encoders() {
            self.encode_queued();
        }
    }

    /// Encodes the queued chunks, on up to one thread per core (chunks are independent:
    /// columns, postings, Bloom filter and zstd each), then appends them in their order.
    pub(crate) fn encode_queued(&mut self) {
        let queued = std::mem::take(&mut self.queued);
        if queued.is_empty() {
            return;
        }
        let workers = self.encoders().min(queued.len());
        let (started, cpu_before) = (std::time::Instant::now(), skein_wal::thread_cpu_nanos());
        let mut packers = take_packers(workers.max(1));
        // The services' names, by id: postings entries are hashed with them.
        let names: Vec<&str> = self.services.iter().map(|(name, _)| name.as_str()).collect();
        let names = &names[..];
        let encoded: Vec<Encoded> = if workers <= 1 {
            let packer = &mut packers[0];
            queued.iter().map(|q| encode_chunk(q, packer, names)).collect()
        } else {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let (next, queued) = (&next, &queued);
            // On rayon's long-lived threads: threads made per batch would start with cold
            // allocator heaps, which cost more than the encoding gains on a small machine.
            let parts = std::sync::Mutex::new(Vec::with_capacity(queued.len()));
            rayon::scope(|scope| {
                for packer in packers.iter_mut() {
                    let parts = &parts;
                    scope.spawn(move |_| {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(q) = queued.get(i) else { break };
                            let e = encode_chunk(q, packer, names);
                            parts.lock().expect("no encoder panics holding it").push((i, e));
                        }
                    });
                }
            });
            let mut parts = parts.into_inner().expect("no encoder panics holding it");
            parts.sort_unstable_by_key(|(i, _)| *i);
            parts.into_iter().map(|(_, e)| e).collect()
        };
        give_back_packers(packers);
        let cpu = match (cpu_before, skein_wal::thread_cpu_nanos()) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => 0,
        };
        let (cpu_in, wall_in) = PARALLEL.get();
        PARALLEL.set((cpu_in + cpu, wall_in + started.elapsed()));
        for e in encoded {
            let mut meta = e.meta;
            meta.offset = self.append_bytes(&e.compressed);
            let chunk = self.chunks.len() as u32;
            self.chunks.push(meta);
            for hash in e.postings {
                self.postings.add_hash(chunk, hash);
            }
            self.blocked.push(e.filter);
        }
    }

    /// Writes the block (atomically) and opens it. `wal_ranges` are the WAL segments whose
    /// records it holds; `replaces` names the blocks (by sequence number) whose spans this one
    /// holds, for compaction.
    pub(crate) fn finish(
        mut self,
        fs: &dyn Fs,
        path: &Path,
        wal_ranges: &[(u64, u64)],
        replaces: &[u64],
    ) -> Result<Block, BlockError> {
        let wal_ranges = join_ranges(wal_ranges.to_vec());
        let wal_segment_end = wal_ranges.last().map_or(0, |(_, end)| *end);
        self.cut();
        self.encode_queued();
        if self.red_given {
            self.count_operations_of_red();
        }
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
        // The column dictionaries, when copied chunks were packed anew with them: after the
        // chunks, before the Bloom section.
        let dict_section = self.dicts.as_ref().map(|dicts| dicts.encode()).map(|bytes| {
            let offset = self.append_bytes(&bytes);
            (offset, bytes.len() as u64, crc32fast::hash(&bytes))
        });
        // The postings section (format 11): every chunk's postings, inverted, by hash.
        // The open block's form of them is kept for it, not read back.
        let mut postings = std::mem::take(&mut self.postings);
        postings.set_chunks(self.chunks.len() as u32);
        let (postings, section) = postings.finish_with_section();
        // The index's sections are compressed with a kept context (see `Packer::compress`).
        let mut packer = take_packers(1).pop().expect("one packer asked for");
        let level = if self.from_head { HEAD_SECTIONS_LEVEL } else { ZSTD_LEVEL };
        let section = packer.compress(level, &section);
        let postings_offset = self.append_bytes(&section);
        let postings_section = (postings_offset, section.len() as u64, crc32fast::hash(&section));
        drop(section);
        // The Bloom section: the blocked filters grouped by (lines, probes), each group line
        // by line (see `BloomGroup`); the reader finds the groups from the chunks' metadata.
        // Streamed to the file region by region when the block is (a merge's filters are a
        // few MiB), then the filters are freed.
        let bloom_offset = self.written;
        let groups =
            bloom_groups(&mut self.chunks, bloom_offset, u64::MAX).expect("a Bloom section fits the file");
        let blocked = std::mem::take(&mut self.blocked);
        for g in &groups {
            for j in 0..g.lines as usize {
                self.append_bytes(&g.region(j, &blocked));
            }
        }
        drop(blocked);
        // What follows is gathered here: after the bytes so far when the block is written
        // whole, or alone when they are already streamed to the file.
        let mut file = std::mem::take(&mut self.file);
        let (written, gathered) = (self.written, file.len() as u64);
        let at = |file: &Vec<u8>| written + (file.len() as u64 - gathered);
        // The trace section: the (trace id, chunk) entries in pages; the index holds where.
        let trace_offset = at(&file);
        let trace_section = traces::TraceSection::write(
            traces::KeyForm::of_version(BLOCK_VERSION),
            &trace_index,
            self.chunks.len(),
        );
        file.extend_from_slice(&trace_section.bytes);
        let red = if self.red_incomplete || self.red.is_empty() {
            Vec::new()
        } else {
            packer.compress(level, &self.red.encode())
        };
        file.extend_from_slice(&red);

        let mut index = codec::Writer::default();
        index.varint(time.start_unix_nano);
        index.varint(time.end_unix_nano);
        index.varint(self.span_count);
        // The trace index is sorted by hash: its distinct hashes are the block's traces (two
        // traces of a block with equal 64-bit hashes would count as one).
        let trace_count = 1 + trace_index.windows(2).filter(|w| w[0].0 != w[1].0).count();
        index.varint(if trace_index.is_empty() { 0 } else { trace_count as u64 });
        index.varint(wal_segment_end);
        index.varint(replaces.len() as u64);
        for r in replaces {
            index.varint(*r);
        }
        index.varint(wal_ranges.len() as u64);
        for (start, end) in &wal_ranges {
            index.varint(*start);
            index.varint(*end);
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
        for c in &self.chunks {
            index.varint(c.offset);
            index.varint(c.len as u64);
            index.buf.extend_from_slice(&c.crc.to_le_bytes());
            index.varint(c.time.start_unix_nano);
            index.varint(c.time.end_unix_nano);
            index.varint(c.durations.0);
            index.varint(c.durations.1);
            index.varint(c.services.len() as u64);
            for s in c.services.iter() {
                index.varint(s as u64);
            }
            index.varint(if c.origins == origins::OWN_ORIGINS { 0 } else { c.origins as u64 + 1 });
            index.varint(c.bloom_len as u64);
            if c.bloom_len > 0 {
                index.buf.extend_from_slice(&c.bloom_crc.to_le_bytes());
            }
            index.varint(c.bloom_lines as u64);
            if c.bloom_lines > 0 {
                index.u8(c.bloom_probes);
                index.buf.extend_from_slice(&c.bloom_seed.to_le_bytes());
            }
        }
        index.varint(trace_index.len() as u64);
        index.varint(trace_offset);
        index.varint(traces::PAGE_ENTRIES as u64);
        index.varint(trace_section.firsts.len() as u64);
        for (key, len) in trace_section.firsts.iter().zip(&trace_section.page_lens) {
            index.buf.extend_from_slice(&(*key as u64).to_le_bytes());
            index.varint(*len as u64);
        }
        let filter = &trace_section.filter;
        index.varint((filter.lines.len() / bloom::LINE_BYTES) as u64);
        if !filter.lines.is_empty() {
            index.u8(filter.probes);
            index.buf.extend_from_slice(&filter.lines);
        }
        index.varint(red.len() as u64);
        if !red.is_empty() {
            index.buf.extend_from_slice(&crc32fast::hash(&red).to_le_bytes());
        }
        index.varint(bloom_offset);
        self.origins.write(&mut index);
        match dict_section {
            None => index.varint(0),
            Some((offset, len, crc)) => {
                index.varint(len);
                index.varint(offset);
                index.buf.extend_from_slice(&crc.to_le_bytes());
            }
        }
        let (offset, len, crc) = postings_section;
        index.varint(len);
        index.varint(offset);
        index.buf.extend_from_slice(&crc.to_le_bytes());
        // Whole, then compressed: a merged block's index (its chunks' entries, one trace filter
        // byte per trace) is a few hundred KiB.
        let index = packer.compress(level, &index.buf);
        give_back_packers(vec![packer]);
        let index_offset = at(&file);
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
        match self.streamed.take() {
            None => fs
                .write_atomic(path, &file)
                .map_err(|source| BlockError::Io { path: path.to_owned(), source })?,
            Some(mut s) => {
                let done = match s.error.take() {
                    Some(e) => Err(e),
                    None => s
                        .file
                        .write_all(&file)
                        .and_then(|()| s.file.sync_data())
                        .and_then(|()| fs.rename(&s.tmp, path))
                        .and_then(|()| path.parent().map_or(Ok(()), |dir| fs.sync_dir(dir))),
                };
                if let Err(source) = done {
                    return Err(BlockError::Io { path: s.tmp.clone(), source });
                }
                s.renamed = true;
            }
        }
        // What the writer holds is freed before the block is opened (its index read again; its
        // postings as built).
        drop((file, trace_index, trace_section));
        drop(self);
        Block::open_written(fs, path, postings)
    }
}

/// A chunk cut from the spans gathered, waiting to be encoded.
struct Queued<'a> {
    spans: Vec<SpanRef<'a>>,
    /// The service id of each span.
    services: Vec<u32>,
    /// The places of each span's resource and scope in origin set `set`.
    origins: Vec<(u32, u32)>,
    set: u32,
}

/// A chunk encoded: its metadata (offset still to be set), bytes, blocked Bloom filter (empty
/// when it has none) and postings (their entries' hashes).
struct Encoded {
    meta: ChunkMeta,
    compressed: Vec<u8>,
    filter: Vec<u8>,
    postings: Vec<u64>,
}

/// The chunk packers (zstd contexts, one per column level) not in use, kept from block to
/// block: a new context allocates and clears its tables at its first frames, and a head's
/// block has only a few chunks. At most [`packers_kept`] are kept.
static PACKERS: std::sync::Mutex<Vec<columnar::Packer>> = std::sync::Mutex::new(Vec::new());

/// Packers kept while unused: one per core (a block encodes on every core; blocks written at
/// the same time make more, dropped when done). Each holds zstd tables sized to the largest
/// columns it has packed, about 1 MiB for realistic chunks of 640 KiB, and the buffers of the
/// largest chunk it has encoded (see `columnar::ChunkBuffers`), about as much again.
fn packers_kept() -> usize {
    crate::cores()
}

fn take_packers(n: usize) -> Vec<columnar::Packer> {
    let mut kept = PACKERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    (0..n).map(|_| kept.pop().unwrap_or_default()).collect()
}

fn give_back_packers(packers: Vec<columnar::Packer>) {
    let mut kept = PACKERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let room = packers_kept().saturating_sub(kept.len());
    kept.extend(packers.into_iter().take(room));
}

/// Encodes one chunk: its columns (packed: each zstd-compressed on its own), its postings (by
/// entry hash, with the services' `names`) and Bloom filter, and its time and duration ranges.
fn encode_chunk(q: &Queued<'_>, packer: &mut columnar::Packer, names: &[&str]) -> Encoded {
    let refs: Vec<&Span> = q.spans.iter().map(|s| &**s).collect();
    let mut postings = Gathering::new(&q.services, &q.origins);
    let mut encoded =
        columnar::encode_chunk_detailed(&refs, Some(&q.origins), &mut postings, packer.take_buffers());
    let compressed = packer.pack_encoded(&mut encoded);
    let chunk_services: BTreeSet<u32> = q.services.iter().copied().collect();
    let mut t = TimeRange::new(u64::MAX, 0);
    let mut durations = (u64::MAX, 0);
    for s in &refs {
        t.start_unix_nano = t.start_unix_nano.min(s.start_time_unix_nano);
        t.end_unix_nano = t.end_unix_nano.max(s.start_time_unix_nano.saturating_add(1));
        durations = (durations.0.min(s.duration_nanos()), durations.1.max(s.duration_nanos()));
    }
    let crc = crc32fast::hash(&compressed);
    let (postings, filter) = postings.finish(&encoded.strings, crc);
    let postings = posting_hashes(&postings, names);
    Encoded {
        meta: ChunkMeta {
            offset: 0,
            len: compressed.len() as u32,
            crc,
            time: t,
            durations,
            services: ChunkServices::new(chunk_services),
            bloom_len: 0,
            bloom_crc: 0,
            bloom_lines: (filter.len() / bloom::LINE_BYTES) as u32,
            bloom_probes: if filter.is_empty() {
                0
            } else {
                bloom::BLOCKED_PROBES | bloom::SEEDED | bloom::UNSERVICED
            },
            bloom_slot: 0,
            bloom_seed: crc,
            origins: q.set,
        },
        compressed,
        filter,
        postings,
    }
}

/// The entries (by hash) of a chunk's postings, each key's under its service's name in
/// `names`.
fn posting_hashes(postings: &[KeyPostings<'_>], names: &[&str]) -> Vec<u64> {
    let mut hashes = Vec::new();
    let mut texts: Vec<&[u8]> = Vec::new();
    for p in postings {
        let values = match &p.values {
            KeyValues::Unindexed => KeyValues::Unindexed,
            KeyValues::Hashed => KeyValues::Hashed,
            KeyValues::Listed(values) => {
                texts.clear();
                texts.extend(values.iter().map(|v| v.as_bytes()));
                KeyValues::Listed(&texts[..])
            }
        };
        inverted::entry_hashes(names[p.service as usize].as_bytes(), p.key.as_bytes(), values, |h| {
            hashes.push(h)
        });
    }
    hashes
}
