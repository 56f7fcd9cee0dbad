//! Cutting heads into blocks, the background task that does it, the memory bound on ingest,
//! and retention.

use super::*;

/// Writes a frozen head to block `seq`, then puts the block in the engine's view in its place
/// and deletes the WAL segments no unwritten head needs; on failure, leaves the head frozen
/// (still read by queries, written again at the next flush). Holds the engine only weakly:
/// dropped meanwhile, the block stays on disk and is found, with its WAL range, at the next
/// open.
async fn write_frozen(shared: Weak<Shared>, frozen: Arc<Frozen>, seq: u64) {
    let Some((fs, path, cutoff)) = shared.upgrade().map(|s| {
        let cutoff = now_nanos().saturating_sub(s.config.retention.as_nanos() as u64);
        (Arc::clone(&s.config.fs), s.config.dir.join("blocks").join(format!("{seq:020}.blk")), cutoff)
    }) else {
        return;
    };
    // Nearly always retention keeps every span of a head (the oldest one is recent): then no
    // span is looked at to count them.
    let keep_all = frozen.head.oldest_start.is_none_or(|oldest| oldest >= cutoff);
    let kept = if keep_all {
        frozen.head.spans as usize
    } else {
        frozen
            .head
            .traces
            .values()
            .flat_map(|t| t.iter())
            .filter(|s| s.start_time_unix_nano >= cutoff)
            .count()
    };
    let head = Arc::clone(&frozen);
    let written = if kept == 0 {
        Ok(None)
    } else {
        // Encoded straight from the frozen head (readers share it meanwhile): no copies.
        tokio::task::spawn_blocking(move || {
            let traces = head.head.traces.values().map(|t| {
                if keep_all {
                    t.measured()
                } else {
                    block::Measured::of(
                        t.iter()
                            .filter(|s| s.start_time_unix_nano >= cutoff)
                            .map(block::SpanRef::Borrowed)
                            .collect(),
                    )
                }
            });
            // Every span kept: the head's pre-aggregates are the block's.
            let red = (kept as u64 == head.head.spans).then_some(&head.head.red);
            let ranges = [head.wal_segments];
            let origins = keep_all.then_some(&head.head.origins[..]);
            block::serially(|| block::write_measured(&*fs, &path, traces, origins, &ranges, red))
        })
        .await
        .map_err(|e| format!("block writer panicked: {e}"))
        .and_then(|(written, cpu)| written.map(|b| Some((b, cpu))).map_err(|e| e.to_string()))
    };
    let Some(shared) = shared.upgrade() else { return };
    let block = match written {
        Ok(block) => block,
        Err(e) => {
            tracing::error!(error = %e, "cutting the head into a block failed; will retry");
            *frozen.failed.lock() = Some(e);
            frozen.writing.store(false, Ordering::Release);
            shared.flushed.notify_waiters();
            return;
        }
    };
    shared.spans_evicted.fetch_add(frozen.head.spans - kept as u64, Ordering::Relaxed);
    let wal_needed_from = {
        let mut st = shared.state.write();
        st.frozen.retain(|f| !Arc::ptr_eq(f, &frozen));
        if let Some((b, cpu)) = block {
            shared.block_writer_nanos.fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
            tracing::info!(block = %b.path.display(), spans = b.span_count, traces = b.trace_count, bytes = b.bytes, "block written");
            st.blocks.push(Arc::new(b.keep_in(&shared.index_cache)));
            st.blocks.sort_by_key(|b| (b.time.start_unix_nano, b.path.clone()));
        }
        // Segments below the first of the oldest head not in a block yet hold only records
        // that are in blocks.
        st.frozen.iter().map(|f| f.wal_segments.0).chain([st.head_wal_start]).min().unwrap_or(0)
    };
    if let Err(e) = shared.wal.remove_segments_before(wal_needed_from).await {
        tracing::warn!(error = %e, "deleting WAL segments already in blocks failed; will retry");
    }
    shared.flushed.notify_waiters();
}

/// Cuts full or old heads into blocks, enforces retention and starts compactions (up to
/// `compaction_jobs` at once, each its own task, so that cutting heads never waits for one).
/// Holds the engine only weakly while idle, so dropping the engine ends it (and the
/// compactions it started: their tasks are aborted with it).
pub(crate) async fn background(shared: Weak<Shared>, flush_wanted: Arc<tokio::sync::Notify>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut compactions: tokio::task::JoinSet<Result<bool, StoreError>> = tokio::task::JoinSet::new();
    loop {
        let wanted = tokio::select! {
            _ = tick.tick() => false,
            () = flush_wanted.notified() => true,
            Some(done) = compactions.join_next(), if !compactions.is_empty() => {
                match done {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "compaction failed; the blocks stay as they are"),
                    Err(e) => tracing::error!(error = %e, "compaction task failed; the blocks stay as they are"),
                }
                false
            }
        };
        let Some(shared) = shared.upgrade() else { return };
        let due = wanted || {
            let st = shared.state.read();
            st.head.created.is_some_and(|c| c.elapsed() >= shared.config.head_max_age)
                || !st.frozen.is_empty()
        };
        if due && let Err(e) = shared.start_flush().await {
            tracing::error!(error = %e, "cutting the head into a block failed; will retry");
        }
        if let Err(e) = shared.enforce_retention() {
            tracing::error!(error = %e, "retention failed; will retry");
        }
        while compactions.len() < shared.config.compaction_jobs.max(1) {
            let Some(run) = shared.claim_compaction() else { break };
            let shared = Arc::clone(&shared);
            compactions.spawn(async move { shared.compact_claimed(run).await });
        }
        shared.delete_retired();
    }
}

impl Shared {
    /// Cuts the head into a block (if it holds anything) and waits until it and every head cut
    /// before it are written.
    pub(crate) async fn flush(self: &Arc<Self>) -> Result<(), StoreError> {
        let pending = {
            let _one_at_a_time = self.flush_lock.lock().await;
            self.freeze_and_write().await?
        };
        self.wait_written(&pending).await
    }

    /// Cuts the head into a block and starts writing it, without waiting for the write, unless
    /// a flush is already cutting (which does the same).
    pub(crate) async fn start_flush(self: &Arc<Self>) -> Result<(), StoreError> {
        match self.flush_lock.try_lock() {
            Ok(_one_at_a_time) => self.freeze_and_write().await.map(drop),
            Err(_) => Ok(()),
        }
    }

    /// Freezes the head (when it holds spans; the WAL is rotated so that its records are
    /// exactly the segments from the head's first to the new one) and starts a task for every
    /// frozen head that none writes yet: heads are written to blocks at once, each on its own
    /// task (with its chunks encoded on every core). Returns the frozen heads.
    async fn freeze_and_write(self: &Arc<Self>) -> Result<Vec<Arc<Frozen>>, StoreError> {
        {
            let _gate = self.gate.write().await;
            if self.state.read().head.spans > 0 {
                let segment = self.wal.rotate().await.map_err(store_error)?;
                let mut st = self.state.write();
                let head = std::mem::take(&mut st.head);
                let start = std::mem::replace(&mut st.head_wal_start, segment);
                st.frozen.push(Arc::new(Frozen {
                    head,
                    wal_segments: (start, segment),
                    writing: std::sync::atomic::AtomicBool::new(false),
                    failed: parking_lot::Mutex::new(None),
                }));
            }
        }
        let mut st = self.state.write();
        for frozen in &st.frozen.clone() {
            if frozen.writing.swap(true, Ordering::AcqRel) {
                continue;
            }
            *frozen.failed.lock() = None;
            let seq = st.next_block;
            st.next_block += 1;
            tokio::spawn(write_frozen(Arc::downgrade(self), Arc::clone(frozen), seq));
        }
        Ok(st.frozen.clone())
    }

    /// Waits until every head of `pending` is written to a block; fails when the write of one
    /// failed (it is tried again at the next flush).
    async fn wait_written(&self, pending: &[Arc<Frozen>]) -> Result<(), StoreError> {
        loop {
            let written = self.flushed.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            {
                let st = self.state.read();
                let mut left =
                    pending.iter().filter(|f| st.frozen.iter().any(|g| Arc::ptr_eq(f, g))).peekable();
                if left.peek().is_none() {
                    return Ok(());
                }
                for f in left {
                    if !f.writing.load(Ordering::Acquire)
                        && let Some(e) = f.failed.lock().clone()
                    {
                        return Err(StoreError::Internal(e));
                    }
                }
            }
            written.await;
        }
    }

    /// Bytes of spans held in memory: the head and the heads being written to blocks.
    pub(crate) fn buffered_bytes(&self) -> usize {
        let st = self.state.read();
        st.head.bytes + st.frozen.iter().map(|f| f.head.bytes).sum::<usize>()
    }

    /// Waits until the in-memory heads are below their bound, or refuses after `overload_wait`.
    pub(crate) async fn wait_for_memory(&self) -> Result<(), StoreError> {
        let limit = self.config.head_max_bytes.saturating_mul(3);
        let deadline = tokio::time::Instant::now() + self.config.overload_wait;
        loop {
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            let buffered = self.buffered_bytes();
            if buffered < limit {
                return Ok(());
            }
            self.flush_wanted.notify_one();
            if tokio::time::timeout_at(deadline, flushed).await.is_err() {
                return Err(StoreError::Overloaded(format!(
                    "spans arrive faster than they can be written to blocks ({buffered} bytes waiting in memory); retry later"
                )));
            }
        }
    }

    pub(crate) fn enforce_retention(&self) -> Result<(), StoreError> {
        let cutoff = now_nanos().saturating_sub(self.config.retention.as_nanos() as u64);
        let expired: Vec<SharedBlock> = {
            let mut st = self.state.write();
            let (old, keep): (Vec<_>, Vec<_>) =
                st.blocks.drain(..).partition(|b| b.time.end_unix_nano <= cutoff);
            st.blocks = keep;
            old
        };
        for b in expired {
            self.spans_evicted.fetch_add(b.span_count, Ordering::Relaxed);
            self.traces_evicted.fetch_add(b.trace_count, Ordering::Relaxed);
            tracing::info!(block = %b.path.display(), spans = b.span_count, "block past retention deleted");
            self.config
                .fs
                .remove(&b.path)
                .map_err(|e| StoreError::Internal(format!("deleting {}: {e}", b.path.display())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_store::testdata::SpanBuilder;

    /// Heads are written to blocks at once, so a newer head's block may be on disk while an
    /// older head's spans are only in the WAL: recovery replays every segment no block names
    /// (skipping all segments below the newest block's end would lose them).
    #[tokio::test]
    async fn a_newer_heads_block_does_not_hide_an_older_heads_wal_records() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::test_config(dir.path());
        let (e, _) = Engine::open(config.clone()).unwrap();
        let older: Vec<Span> = (1..=3).map(|i| SpanBuilder::new(1, i).service("svc").build()).collect();
        e.write(older.clone()).await.unwrap();
        // The older head's records are in segments below `next`; the newer head's block
        // (written first, before a crash) names the segment after them.
        let next = e.shared.wal.rotate().await.unwrap();
        drop(e);
        let newer: Vec<Span> = (1..=2).map(|i| SpanBuilder::new(2, i).service("svc").build()).collect();
        let path = dir.path().join("blocks").join(format!("{:020}.blk", 7));
        let block =
            block::write_block(&*config.fs, &path, [newer.iter().collect()], &[(next, next + 1)], None)
                .unwrap();
        assert_eq!(block.wal_ranges, vec![(next, next + 1)]);

        let (e, report) = Engine::open(config).unwrap();
        assert_eq!((report.blocks, report.wal_records_replayed), (1, 1), "{report:?}");
        assert_eq!(
            e.trace(SpanBuilder::trace_id(1)).await.unwrap().unwrap().len(),
            3,
            "the older head's spans"
        );
        assert_eq!(e.trace(SpanBuilder::trace_id(2)).await.unwrap().unwrap().len(), 2, "the newer block's");
        e.close().await;
    }

    /// WAL records are LZ4-compressed batches; records written before (zstd frames, and before
    /// those the batch's encoding as it is) are replayed too, and a record that is none of them,
    /// or whose LZ4 header claims more than its block can hold, is reported, not replayed.
    #[tokio::test]
    async fn wal_records_lz4_zstd_and_plain_are_replayed() {
        let spans =
            |n: u8| (1..=4).map(|i| SpanBuilder::new(n, i).service("svc").build()).collect::<Vec<_>>();
        let (record, len) = wal_record(&spans(1));
        assert!(record.starts_with(&LZ4_MAGIC));
        assert_eq!(len, codec::encode_spans(&spans(1)).len());
        assert_eq!(read_wal_record(&record).unwrap(), (spans(1), len));
        let plain = codec::encode_spans(&spans(2));
        assert_eq!(read_wal_record(&plain).unwrap(), (spans(2), plain.len()));
        let zstd = zstd::bulk::compress(&codec::encode_spans(&spans(3)), 1).unwrap();
        assert!(zstd.starts_with(&ZSTD_MAGIC));
        assert_eq!(read_wal_record(&zstd).unwrap().0, spans(3));
        let mut damaged = record.clone();
        damaged.truncate(record.len() - 3);
        assert!(read_wal_record(&damaged).is_err());
        let mut huge = record.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = read_wal_record(&huge).unwrap_err();
        assert!(err.contains("claims"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let config = crate::test_config(dir.path());
        let (e, _) = Engine::open(config.clone()).unwrap();
        e.write(spans(1)).await.unwrap();
        // Records as older builds wrote them, and two that decode to nothing.
        e.shared.wal.append(plain).await.unwrap();
        e.shared.wal.append(zstd).await.unwrap();
        e.shared.wal.append(damaged).await.unwrap();
        e.shared.wal.append(huge).await.unwrap();
        e.close().await;
        let (e, report) = Engine::open(config).unwrap();
        assert_eq!((report.wal_records_replayed, report.undecodable_wal_records), (3, 2));
        for n in [1, 2, 3] {
            assert_eq!(e.trace(SpanBuilder::trace_id(n)).await.unwrap().unwrap().len(), 4);
        }
        e.close().await;
    }

    /// A request none of whose spans was rejected is logged as it came, and replayed to the
    /// same spans whatever limits the server opens with (decoding only ever rejects); its
    /// record is refused, not replayed, when damaged.
    #[tokio::test]
    async fn requests_are_logged_as_they_came_and_replayed_to_the_same_spans() {
        use prost::Message;
        let long = "x".repeat(100_000); // beyond the default limit of 64 KiB per value
        let spans: Vec<Span> = (1..=4)
            .map(|i| {
                SpanBuilder::new(1, i)
                    .service("svc")
                    .attr("big", skein_model::AttrValue::Str(long.as_str().into()))
                    .attr("n", skein_model::AttrValue::Int(i as i64))
                    .build()
            })
            .collect();
        let request = skein_otlp::to_traces_data(&spans).encode_to_vec();
        let record = lz4_record(REQUEST_MAGIC, &request);
        assert_eq!(read_wal_record(&record).unwrap(), (spans.clone(), request.len()));
        let strict = skein_otlp::decode_protobuf_to_model(&request, &skein_otlp::Limits::default()).unwrap();
        assert_eq!((strict.spans.len(), strict.rejected), (0, 4), "the default limits refuse them");
        let mut damaged = record.clone();
        damaged.truncate(record.len() - 3);
        assert!(read_wal_record(&damaged).is_err());
        let mut garbled = request.clone();
        garbled[0] = 0xff;
        assert!(read_wal_record(&lz4_record(REQUEST_MAGIC, &garbled)).is_err());

        let dir = tempfile::tempdir().unwrap();
        let config = crate::test_config(dir.path());
        let (e, _) = Engine::open(config.clone()).unwrap();
        e.write_request(spans.clone(), OtlpRequest::plain(&request)).await.unwrap();
        e.shared.wal.append(damaged).await.unwrap();
        e.close().await;
        let (e, report) = Engine::open(config).unwrap();
        assert_eq!((report.wal_records_replayed, report.undecodable_wal_records), (1, 1));
        let mut back = e.trace(SpanBuilder::trace_id(1)).await.unwrap().unwrap();
        back.sort_by_key(|s| s.span_id);
        assert_eq!(back, spans);
        e.close().await;
    }

    /// A request that came gzip- or zstd-compressed (in several members or frames, as a body
    /// may) is logged with its body as it came, not compressed again, and replayed to the
    /// same spans; a record whose body decompresses to more or fewer bytes than it claims, or
    /// does not decompress, is refused and counted.
    #[tokio::test]
    async fn compressed_requests_are_logged_as_they_came() {
        use prost::Message;
        use std::io::Write;
        let spans = |n: u8| -> Vec<Span> {
            (1..=6)
                .map(|i| {
                    SpanBuilder::new(n, i)
                        .service("svc")
                        .attr("k", skein_model::AttrValue::Str(format!("value {i}").into()))
                        .build()
                })
                .collect()
        };
        let request = |n: u8| skein_otlp::to_traces_data(&spans(n)).encode_to_vec();
        let gzip = |bytes: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        };
        let halves = |bytes: &[u8], each: &dyn Fn(&[u8]) -> Vec<u8>| {
            let (a, b) = bytes.split_at(bytes.len() / 2);
            [each(a), each(b)].concat()
        };
        let (gzipped, zstded) = (
            halves(&request(1), &|b| gzip(b)),
            halves(&request(2), &|b| zstd::bulk::compress(b, 3).unwrap()),
        );
        let len = |n: u8| request(n).len() as u32;
        let record = framed(GZIP_REQUEST_MAGIC, len(1), &gzipped);
        assert_eq!(&record[8..], &gzipped[..], "the body as it came");
        assert_eq!(read_wal_record(&record).unwrap(), (spans(1), request(1).len()));
        let record = framed(ZSTD_REQUEST_MAGIC, len(2), &zstded);
        assert_eq!(read_wal_record(&record).unwrap(), (spans(2), request(2).len()));
        let short = framed(GZIP_REQUEST_MAGIC, len(1) - 1, &gzipped);
        assert!(read_wal_record(&short).unwrap_err().contains("claims"));
        let long = framed(ZSTD_REQUEST_MAGIC, len(2) + 1, &zstded);
        assert!(read_wal_record(&long).unwrap_err().contains("claims"));
        let mut garbled = gzipped.clone();
        let middle = garbled.len() / 4;
        garbled[middle] ^= 0x55;
        assert!(read_wal_record(&framed(GZIP_REQUEST_MAGIC, len(1), &garbled)).is_err());

        let dir = tempfile::tempdir().unwrap();
        let config = crate::test_config(dir.path());
        let (e, _) = Engine::open(config.clone()).unwrap();
        let (r1, r2) = (request(1), request(2));
        let as_came = |protobuf, body| OtlpRequest { protobuf, compressed: Some(body) };
        e.write_request(spans(1), as_came(&r1, Compressed::Gzip(&gzipped))).await.unwrap();
        e.write_request(spans(2), as_came(&r2, Compressed::Zstd(&zstded))).await.unwrap();
        e.shared.wal.append(short).await.unwrap();
        let logged: Vec<u8> = std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .flat_map(|f| std::fs::read(f.unwrap().path()).unwrap())
            .collect();
        for body in [&gzipped, &zstded] {
            assert!(logged.windows(body.len()).any(|w| w == &body[..]), "the WAL holds the body as it came");
        }
        e.close().await;
        let (e, report) = Engine::open(config).unwrap();
        assert_eq!((report.wal_records_replayed, report.undecodable_wal_records), (2, 1));
        for n in [1, 2] {
            let mut back = e.trace(SpanBuilder::trace_id(n)).await.unwrap().unwrap();
            back.sort_by_key(|s| s.span_id);
            assert_eq!(back, spans(n));
        }
        e.close().await;
    }

    /// A head is written without its spans past retention (counted as evicted), and whole
    /// when its oldest span is within it; the head knows its oldest start either way.
    #[tokio::test]
    async fn heads_are_written_without_the_spans_past_retention() {
        let now = now_nanos();
        let day = 86_400 * 1_000_000_000u64;
        let recent = |n: u8, i: u8| SpanBuilder::new(n, i).service("svc").times(now - 1_000, now).build();
        let old = |n: u8, i: u8| {
            SpanBuilder::new(n, i).service("svc").times(now - 2 * day, now - 2 * day + 1).build()
        };
        let dir = tempfile::tempdir().unwrap();
        let config =
            EngineConfig { retention: Duration::from_secs(86_400), ..crate::test_config(dir.path()) };
        let (e, _) = Engine::open(config).unwrap();
        e.write(vec![recent(1, 1), old(1, 2), old(2, 1)]).await.unwrap();
        assert_eq!(e.shared.state.read().head.oldest_start, Some(now - 2 * day));
        e.flush().await.unwrap();
        assert_eq!(e.stats().spans_evicted, 2);
        assert_eq!(e.trace(SpanBuilder::trace_id(1)).await.unwrap().unwrap(), vec![recent(1, 1)]);
        assert!(e.trace(SpanBuilder::trace_id(2)).await.unwrap().is_none());
        e.write(vec![recent(3, 1), recent(3, 2)]).await.unwrap();
        assert_eq!(e.shared.state.read().head.oldest_start, Some(now - 1_000));
        e.flush().await.unwrap();
        assert_eq!(e.stats().spans_evicted, 2);
        assert_eq!(e.trace(SpanBuilder::trace_id(3)).await.unwrap().unwrap().len(), 2);
        assert_eq!(e.shared.state.read().blocks.iter().map(|b| b.span_count).sum::<u64>(), 3);
        e.close().await;
    }

    /// Several heads cut while earlier ones are still being written are written at once and
    /// all arrive; `flush` waits for every head cut before it, and the WAL keeps only what
    /// is not in a block.
    #[tokio::test]
    async fn heads_cut_one_after_another_are_all_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::test_config(dir.path());
        let (e, _) = Engine::open(config.clone()).unwrap();
        for n in 1..=6u8 {
            e.write((1..=5).map(|i| SpanBuilder::new(n, i).service("svc").build()).collect()).await.unwrap();
            e.shared.start_flush().await.unwrap();
        }
        e.flush().await.unwrap();
        {
            let st = e.shared.state.read();
            assert!(st.frozen.is_empty() && st.head.spans == 0);
            assert_eq!(st.blocks.iter().map(|b| b.span_count).sum::<u64>(), 30);
            let ranges = block::join_ranges(st.blocks.iter().flat_map(|b| b.wal_ranges.clone()).collect());
            assert_eq!(ranges.len(), 1, "the blocks' WAL ranges leave no gap: {ranges:?}");
        }
        e.close().await;
        let (e, report) = Engine::open(config).unwrap();
        assert_eq!(report.wal_records_replayed, 0, "every record is in a block");
        for n in 1..=6u8 {
            assert_eq!(e.trace(SpanBuilder::trace_id(n)).await.unwrap().unwrap().len(), 5);
        }
        e.close().await;
    }
}
