//! Compaction: small blocks written from heads merged into one, their chunks copied as they are.

use super::*;

impl Shared {
    /// Merges the oldest run of small blocks into one (format v3), streaming chunk by chunk
    /// (copied compressed; see [`merge_blocks`]): memory holds one source chunk and the
    /// output's compressed chunks (at most
    /// `compact_target_bytes`). The new block is written atomically and lists the blocks it
    /// replaces, which are retired (and deleted once no reader holds them); a crash after the
    /// write is finished on open. Returns whether it merged anything.
    pub(crate) async fn compact_locked(
        &self,
        _one_at_a_time: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<bool, StoreError> {
        let target = self.config.compact_target_bytes;
        let (sources, seq) = {
            let mut st = self.state.write();
            let mut run: Vec<SharedBlock> = Vec::new();
            let mut total = 0u64;
            for b in st.blocks.iter().filter(|b| self.awaits_compaction(b)) {
                if total + b.bytes > target && run.len() >= 2 {
                    break;
                }
                total += b.bytes;
                run.push(Arc::clone(b));
            }
            if run.len() < self.config.compact_min_blocks.max(2) {
                return Ok(false);
            }
            let seq = st.next_block;
            st.next_block += 1;
            (run, seq)
        };
        let path = self.config.dir.join("blocks").join(format!("{seq:020}.blk"));
        let fs = Arc::clone(&self.config.fs);
        let inputs = sources.clone();
        let started = Instant::now();
        let (merged, serial) =
            tokio::task::spawn_blocking(move || block::serially(|| merge_blocks(&*fs, &inputs, &path)))
                .await
                .map_err(|e| StoreError::Internal(format!("compaction panicked: {e}")))?;
        self.serial_compaction.fetch_add(serial.as_nanos() as u64, Ordering::Relaxed);
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
            st.blocks.push(Arc::new(merged));
            st.blocks.sort_by_key(|b| (b.time.start_unix_nano, b.path.clone()));
        }
        self.retired.lock().extend(sources);
        Ok(true)
    }

    /// Whether compaction will merge `b`: a block written from the head (never compacted, with
    /// a sequence number in its name) smaller than the compaction target.
    pub(crate) fn awaits_compaction(&self, b: &Block) -> bool {
        b.replaces.is_empty() && b.bytes < self.config.compact_target_bytes && b.seq().is_some()
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

/// Merges `sources` into one new block at `path`, chunk by chunk, oldest chunk first. Chunks
/// of blocks with postings (format 2 and later) are copied as they are, compressed: merging
/// costs a read and a write of their bytes, and no span is decoded. Chunks of format 1 blocks
/// are decoded and written anew, which gives them postings.
pub(crate) fn merge_blocks(
    fs: &dyn Fs,
    sources: &[SharedBlock],
    path: &std::path::Path,
) -> Result<Block, StoreError> {
    let mut chunks: Vec<(u64, usize, usize)> = Vec::new();
    for (b, block) in sources.iter().enumerate() {
        for i in 0..block.chunk_count() {
            chunks.push((block.chunk_meta(i).time.start_unix_nano, b, i));
        }
    }
    chunks.sort_unstable();
    let mut writer = block::BlockWriter::default();
    let copied: Vec<Option<block::CopySource<'_>>> = sources
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
        if let Some(source) = &copied[b] {
            writer.copy_chunk(fs, source, i).map_err(block_error)?;
            continue;
        }
        let mut traces: FxHashMap<TraceId, Vec<std::borrow::Cow<'_, Span>>> = FxHashMap::default();
        for s in sources[b].read_chunk(fs, i).map_err(block_error)? {
            traces.entry(s.trace_id).or_default().push(std::borrow::Cow::Owned(s));
        }
        writer.add_traces(traces.into_values());
    }
    let wal_end = sources.iter().map(|b| b.wal_segment_end).max().unwrap_or(0);
    let replaces: Vec<u64> = sources.iter().filter_map(|b| b.seq()).collect();
    writer.finish(fs, path, wal_end, &replaces).map_err(block_error)
}
