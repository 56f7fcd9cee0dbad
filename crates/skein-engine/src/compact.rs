//! Compaction: small blocks written from heads merged into one, their chunks copied as they are.

use super::*;

/// A run of blocks claimed by one compaction, and the sequence number of the block it writes.
pub(crate) struct Claimed {
    sources: Vec<SharedBlock>,
    seq: u64,
}

/// Blocks smaller than the compaction target divided by this are all merged alike, whatever
/// their sizes (blocks written from heads: about 300 KB with the server's default heads).
const SMALL_BLOCK_FRACTION: u64 = 128;

/// The runs of blocks a compaction may merge now, oldest first, disjoint: size-tiered. The
/// blocks that may still be merged (`awaiting`: below half the target, not being merged) are
/// put into tiers of alike sizes (each tier's blocks within twice the size of its smallest;
/// every block below `target / 128` in the first), and each tier's oldest blocks form runs of
/// at most `target` bytes: a run of at least `min_blocks` blocks, or of at least two that the
/// target cuts. Blocks grow by about 8× a merge, so a span is copied about log8(target / head
/// block) times (3 with the defaults) and the engine holds few blocks — a few per tier and the
/// full ones — however much it stores: a read by id asks every block, a search every block in
/// its window.
pub(crate) fn plan_runs(awaiting: &[SharedBlock], target: u64, min_blocks: usize) -> Vec<Vec<SharedBlock>> {
    let floor = target / SMALL_BLOCK_FRACTION;
    let mut by_size: Vec<&SharedBlock> = awaiting.iter().collect();
    by_size.sort_by_key(|b| (b.bytes.max(floor), b.time.start_unix_nano));
    let mut tiers: Vec<Vec<&SharedBlock>> = Vec::new();
    for b in by_size {
        match tiers.last_mut() {
            Some(tier) if b.bytes.max(floor) <= 2 * tier[0].bytes.max(floor) => tier.push(b),
            _ => tiers.push(vec![b]),
        }
    }
    let mut runs = Vec::new();
    for mut tier in tiers {
        tier.sort_by_key(|b| (b.time.start_unix_nano, b.path.clone()));
        let mut rest = &tier[..];
        while !rest.is_empty() {
            let mut total = 0u64;
            let len = rest.iter().take_while(|b| {
                total += b.bytes;
                total <= target
            });
            let len = len.count().max(1);
            let cut = len < rest.len();
            if len >= min_blocks.max(2) || (cut && len >= 2) {
                runs.push(rest[..len].iter().map(|b| Arc::clone(b)).collect::<Vec<_>>());
            } else if !cut {
                break;
            }
            rest = &rest[len..];
        }
    }
    runs.sort_by_key(|run| run[0].time.start_unix_nano);
    runs
}

impl Shared {
    /// The runs of blocks a compaction may merge now (see [`plan_runs`]), among the blocks no
    /// running compaction merges.
    fn runs(&self, st: &State) -> Vec<Vec<SharedBlock>> {
        let awaiting: Vec<SharedBlock> = st
            .blocks
            .iter()
            .filter(|b| self.awaits_compaction(b) && !b.seq().is_some_and(|s| st.compacting.contains(&s)))
            .cloned()
            .collect();
        plan_runs(&awaiting, self.config.compact_target_bytes, self.config.compact_min_blocks)
    }

    /// Blocks a compaction merges now or may merge now.
    pub(crate) fn blocks_awaiting_compaction(&self, st: &State) -> usize {
        st.compacting.len() + self.runs(st).iter().map(Vec::len).sum::<usize>()
    }

    /// Claims the oldest run of blocks a compaction may merge now (see [`plan_runs`]) for
    /// one compaction, or `None` when there is none. Compactions of different runs run at
    /// once (up to `compaction_jobs` in the background).
    pub(crate) fn claim_compaction(&self) -> Option<Claimed> {
        let mut st = self.state.write();
        let run = self.runs(&st).into_iter().next()?;
        st.compacting.extend(run.iter().filter_map(|b| b.seq()));
        let seq = st.next_block;
        st.next_block += 1;
        Some(Claimed { sources: run, seq })
    }

    /// Merges a claimed run of blocks into one, streaming chunk by chunk (copied compressed;
    /// see [`merge_blocks`]), to a temporary file: memory holds one source chunk, the Bloom
    /// filters and the index. The new block appears atomically and lists the
    /// blocks it replaces, which are retired (and deleted once no reader holds them); a crash
    /// after the write is finished on open. Returns whether it merged anything; the run is
    /// released either way.
    pub(crate) async fn compact_claimed(&self, claimed: Claimed) -> Result<bool, StoreError> {
        let Claimed { sources, seq } = claimed;
        let merged = self.merge_claimed(&sources, seq).await;
        let mut st = self.state.write();
        for s in sources.iter().filter_map(|b| b.seq()) {
            st.compacting.remove(&s);
        }
        merged
    }

    async fn merge_claimed(&self, sources: &[SharedBlock], seq: u64) -> Result<bool, StoreError> {
        let path = self.config.dir.join("blocks").join(format!("{seq:020}.blk"));
        let fs = Arc::clone(&self.config.fs);
        let inputs = sources.to_vec();
        let started = Instant::now();
        let (merged, cpu) =
            tokio::task::spawn_blocking(move || block::serially(|| merge_blocks(&*fs, &inputs, &path)))
                .await
                .map_err(|e| StoreError::Internal(format!("compaction panicked: {e}")))?;
        self.compaction_nanos.fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
        let merged = merged?;
        let in_bytes: u64 = sources.iter().map(|b| b.bytes).sum();
        tracing::info!(
            block = %merged.path.display(), blocks = sources.len(), spans = merged.span_count,
            bytes_before = in_bytes, bytes_after = merged.bytes, ms = started.elapsed().as_millis() as u64,
            "blocks compacted"
        );
        {
            let mut st = self.state.write();
            // Retention may have dropped a source meanwhile: then the merged block would bring
            // its spans back. Keep the blocks as they are and throw the merged one away.
            if !sources.iter().all(|s| st.blocks.iter().any(|b| Arc::ptr_eq(s, b))) {
                drop(st);
                let _ = self.config.fs.remove(&merged.path);
                return Ok(false);
            }
            st.blocks.retain(|b| !sources.iter().any(|s| Arc::ptr_eq(s, b)));
            st.blocks.push(Arc::new(merged.keep_in(&self.index_cache)));
            st.blocks.sort_by_key(|b| (b.time.start_unix_nano, b.path.clone()));
        }
        self.retired.lock().extend(sources.iter().cloned());
        Ok(true)
    }

    /// Whether compaction may still merge `b`: a block with a sequence number in its name
    /// below half the compaction target (a block that size or bigger is full).
    pub(crate) fn awaits_compaction(&self, b: &Block) -> bool {
        b.bytes < self.config.compact_target_bytes / 2 && b.seq().is_some()
    }

    /// Deletes the files of retired blocks that no reader holds any more.
    pub(crate) fn delete_retired(&self) {
        let mut retired = self.retired.lock();
        retired.retain(|b| {
            if Arc::strong_count(b) > 1 {
                return true; // a query is still reading it
            }
            if let Err(e) = self.config.fs.remove(&b.path) {
                tracing::warn!(block = %b.path.display(), error = %e, "cannot delete a compacted block; will retry");
                return true;
            }
            false
        });
    }
}

/// Merges of sources this big (in all) or bigger make column dictionaries for the block they
/// write (block format 9): its chunks' dictionary columns are packed anew with them. Below,
/// the dictionaries (up to 64 KiB, about 30 compressed) would cost more than they save, and
/// merges of small blocks are many; most spans end in blocks of 16 to 64 MiB.
pub(crate) const DICT_MIN_BYTES: u64 = 8 << 20;

/// Chunks the column dictionaries of a merge are made of, taken evenly from its sources.
const DICT_SAMPLES: usize = 4;

/// Column dictionaries made of up to [`DICT_SAMPLES`] packed chunks of `chunks` (`(start,
/// source, chunk)`, the merge's order), taken evenly; `None` when they have too little text.
fn make_dicts(
    fs: &dyn Fs,
    sources: &[SharedBlock],
    chunks: &[(u64, usize, usize)],
) -> Result<Option<columnar::ColumnDicts>, StoreError> {
    let step = chunks.len().div_ceil(DICT_SAMPLES).max(1);
    let mut samples = Vec::with_capacity(DICT_SAMPLES);
    for &(_, b, i) in chunks.iter().step_by(step) {
        let bytes = sources[b].read_chunk_bytes(fs, i).map_err(block_error)?;
        if bytes.first() == Some(&columnar::PACKED) {
            samples.push((bytes, sources[b].dicts(fs).map_err(block_error)?));
        }
    }
    columnar::ColumnDicts::sample(&samples)
        .map_err(|e| StoreError::Internal(format!("column dictionaries: {e}")))
}

/// Merges `sources` into one new block at `path`, chunk by chunk, oldest chunk first. Chunks
/// of blocks with postings (format 2 and later) are copied as they are, compressed: merging
/// costs a read and a write of their bytes, and no span is decoded (a merge of at least
/// [`DICT_MIN_BYTES`] packs their dictionary columns anew with dictionaries it makes). Chunks
/// of format 1 blocks are decoded and written anew, which gives them postings.
pub(crate) fn merge_blocks(
    fs: &dyn Fs,
    sources: &[SharedBlock],
    path: &std::path::Path,
) -> Result<Block, StoreError> {
    merge_blocks_with(fs, sources, path, DICT_MIN_BYTES)
}

/// [`merge_blocks`], making column dictionaries when the sources hold `dict_min_bytes` or more.
pub(crate) fn merge_blocks_with(
    fs: &dyn Fs,
    sources: &[SharedBlock],
    path: &std::path::Path,
    dict_min_bytes: u64,
) -> Result<Block, StoreError> {
    let mut chunks: Vec<(u64, usize, usize)> = Vec::new();
    for (b, block) in sources.iter().enumerate() {
        for i in 0..block.chunk_count() {
            chunks.push((block.chunk_meta(i).time.start_unix_nano, b, i));
        }
    }
    chunks.sort_unstable();
    // Streamed to its file as chunks are copied: a merged block is up to 64 MiB, and several
    // compactions run at once. A compaction stopped half-way leaves no partial file behind.
    let mut writer = block::BlockWriter::streaming(fs, path).map_err(block_error)?;
    if sources.iter().map(|b| b.bytes).sum::<u64>() >= dict_min_bytes
        && let Some(dicts) = make_dicts(fs, sources, &chunks)?
    {
        writer.set_dicts(dicts);
    }
    let mut copied: Vec<Option<block::CopySource<'_>>> = sources
        .iter()
        .map(|b| {
            let source = b.copy_source(fs).map_err(block_error)?;
            if source.is_some() {
                writer.take_counts(b);
                writer.take_red(fs, b).map_err(block_error)?;
            }
            Ok(source)
        })
        .collect::<Result<_, StoreError>>()?;
    for (_, b, i) in chunks {
        // A chunk that cannot be read stops the compaction: its block stays as it is.
        if let Some(source) = &mut copied[b] {
            writer.copy_chunk(fs, source, i).map_err(block_error)?;
            continue;
        }
        let mut traces: FxHashMap<TraceId, Vec<block::SpanRef<'_>>> = FxHashMap::default();
        for s in sources[b].read_chunk(fs, i).map_err(block_error)? {
            traces.entry(s.trace_id).or_default().push(block::SpanRef::Owned(Box::new(s)));
        }
        writer.add_traces(traces.into_values());
    }
    // Exactly the sources' WAL ranges: a head between two sources may still be unwritten.
    let wal_ranges: Vec<(u64, u64)> = sources.iter().flat_map(|b| b.wal_ranges.iter().copied()).collect();
    let replaces: Vec<u64> = sources.iter().filter_map(|b| b.seq()).collect();
    writer.finish(fs, path, &wal_ranges, &replaces).map_err(block_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_store::SpanStore;
    use skein_store::testdata::SpanBuilder;

    /// Size-tiered: blocks that compactions wrote are merged again once enough of alike size
    /// wait, so the number of blocks stays small as data grows; every span stays readable and
    /// a block of half the target or more is not merged again.
    #[tokio::test]
    async fn merged_blocks_are_merged_again_by_tier() {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig { compact_min_blocks: 4, ..crate::test_config(dir.path()) };
        let (e, _) = Engine::open(config.clone()).unwrap();
        async fn write(e: &Engine, n: u8) {
            e.write((1..=30).map(|i| SpanBuilder::new(n, i).service("svc").build()).collect()).await.unwrap();
            e.flush().await.unwrap();
        }
        write(&e, 0).await;
        let one = e.shared.state.read().blocks[0].bytes;
        e.close().await;
        // A target of 40 head blocks: four merges of four make blocks of about 4, which merge
        // into one of about 17.
        let config = EngineConfig { compact_target_bytes: one * 40, ..config };
        let (e, _) = Engine::open(config.clone()).unwrap();
        let mut n = 1;
        for round in 0..4 {
            for _ in 0..4 {
                write(&e, n).await;
                n += 1;
            }
            assert!(e.compact().await.unwrap(), "round {round}: four head blocks merge");
        }
        // The first round merged the first head block too (a run takes every block of its tier
        // that fits the target).
        assert_eq!(e.block_count(), 4);
        assert!(e.compact().await.unwrap(), "the four merged blocks merge again");
        assert_eq!(e.block_count(), 1);
        assert!(!e.compact().await.unwrap());
        let big = e.shared.state.read().blocks.iter().map(|b| b.bytes).max().unwrap();
        assert!(big > one * 8, "{big} bytes from 17 blocks of {one}");
        for t in 0..n {
            assert_eq!(e.trace(SpanBuilder::trace_id(t)).await.unwrap().unwrap().len(), 30, "trace {t}");
        }
        assert_eq!(e.stats().blocks_awaiting_compaction, 0);
        e.close().await;
    }

    /// Two compactions claim disjoint runs of blocks, run at once, and lose nothing; a third
    /// finds nothing left to claim while they run.
    #[tokio::test]
    async fn compactions_of_disjoint_runs_run_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig { compact_min_blocks: 2, ..crate::test_config(dir.path()) };
        let (e, _) = Engine::open(config.clone()).unwrap();
        for n in 1..=4u8 {
            e.write((1..=20).map(|i| SpanBuilder::new(n, i).service("svc").build()).collect()).await.unwrap();
            e.flush().await.unwrap();
        }
        let largest = e.shared.state.read().blocks.iter().map(|b| b.bytes).max().unwrap();
        e.close().await;
        // Runs of two blocks: a third does not fit the target.
        let config = EngineConfig { compact_target_bytes: largest * 5 / 2, ..config };
        let (e, _) = Engine::open(config).unwrap();
        let stored = e.stats().spans_stored;
        let shared = &e.shared;
        let first = shared.claim_compaction().expect("a run of two blocks");
        let second = shared.claim_compaction().expect("another run of two");
        let seqs = |c: &Claimed| c.sources.iter().filter_map(|b| b.seq()).collect::<BTreeSet<u64>>();
        assert_eq!((seqs(&first).len(), seqs(&second).len()), (2, 2));
        assert!(seqs(&first).is_disjoint(&seqs(&second)), "each run is claimed once");
        assert!(shared.claim_compaction().is_none(), "every small block is claimed");
        let ranges = |c: &Claimed| {
            block::join_ranges(c.sources.iter().flat_map(|b| b.wal_ranges.iter().copied()).collect())
        };
        let want: BTreeSet<Vec<(u64, u64)>> = [ranges(&first), ranges(&second)].into();
        let (a, b) = tokio::join!(shared.compact_claimed(first), shared.compact_claimed(second));
        assert_eq!((a.unwrap(), b.unwrap()), (true, true));
        assert!(shared.state.read().compacting.is_empty(), "the runs are released");
        assert_eq!(e.block_count(), 2);
        let got: BTreeSet<Vec<(u64, u64)>> =
            e.shared.state.read().blocks.iter().map(|b| b.wal_ranges.clone()).collect();
        assert_eq!(got, want, "a merged block names exactly its sources' WAL segments");
        assert_eq!(e.stats().spans_stored, stored);
        for n in 1..=4u8 {
            assert_eq!(e.trace(SpanBuilder::trace_id(n)).await.unwrap().unwrap().len(), 20);
        }
        e.close().await;
    }
}
