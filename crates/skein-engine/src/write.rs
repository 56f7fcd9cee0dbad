//! Cutting heads into blocks, the background task that does it, the memory bound on ingest,
//! and retention.

use super::*;

/// Cuts full or old heads into blocks and enforces retention. Holds the engine only weakly
/// while idle, so dropping the engine ends it.
pub(crate) async fn background(shared: Weak<Shared>, flush_wanted: Arc<tokio::sync::Notify>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let wanted = tokio::select! {
            _ = tick.tick() => false,
            () = flush_wanted.notified() => true,
        };
        let Some(shared) = shared.upgrade() else { return };
        let due = wanted || {
            let st = shared.state.read();
            st.head.created.is_some_and(|c| c.elapsed() >= shared.config.head_max_age)
                || !st.frozen.is_empty()
        };
        if due && let Err(e) = shared.try_flush().await {
            tracing::error!(error = %e, "cutting the head into a block failed; will retry");
        }
        if let Err(e) = shared.enforce_retention() {
            tracing::error!(error = %e, "retention failed; will retry");
        }
        if let Ok(guard) = shared.compact_lock.try_lock() {
            match shared.compact_locked(guard).await {
                Ok(true) => shared.flush_wanted.notify_one(), // look again soon: more may be waiting
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "compaction failed; the blocks stay as they are"),
            }
        }
        shared.delete_retired();
    }
}

impl Shared {
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let guard = self.flush_lock.lock().await;
        self.flush_locked(guard).await
    }

    /// Flushes unless a flush is already running (which does the same work).
    pub(crate) async fn try_flush(&self) -> Result<(), StoreError> {
        match self.flush_lock.try_lock() {
            Ok(guard) => self.flush_locked(guard).await,
            Err(_) => Ok(()),
        }
    }

    pub(crate) async fn flush_locked(
        &self,
        _one_at_a_time: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<(), StoreError> {
        {
            let _gate = self.gate.write().await;
            if self.state.read().head.spans > 0 {
                let segment = self.wal.rotate().await.map_err(store_error)?;
                let mut st = self.state.write();
                let head = std::mem::take(&mut st.head);
                st.frozen.push(Arc::new(Frozen { head, wal_segment_end: segment }));
            }
        }
        loop {
            let (frozen, seq) = {
                let mut st = self.state.write();
                let Some(f) = st.frozen.first().cloned() else { break };
                let seq = st.next_block;
                st.next_block += 1;
                (f, seq)
            };
            let cutoff = now_nanos().saturating_sub(self.config.retention.as_nanos() as u64);
            let kept =
                frozen.head.traces.values().flatten().filter(|s| s.start_time_unix_nano >= cutoff).count();
            let dropped = frozen.head.spans - kept as u64;
            self.spans_evicted.fetch_add(dropped, Ordering::Relaxed);
            let path = self.config.dir.join("blocks").join(format!("{seq:020}.blk"));
            let fs = Arc::clone(&self.config.fs);
            let wal_end = frozen.wal_segment_end;
            let block = if kept == 0 {
                None
            } else {
                // Encoded straight from the frozen head (readers share it meanwhile): no copies.
                let head = Arc::clone(&frozen);
                let (written, serial) = tokio::task::spawn_blocking(move || {
                    let traces = head.head.traces.values().map(|spans| {
                        spans.iter().filter(|s| s.start_time_unix_nano >= cutoff).collect::<Vec<_>>()
                    });
                    // Every span kept: the head's pre-aggregates are the block's.
                    let red = (kept as u64 == head.head.spans).then_some(&head.head.red);
                    block::serially(|| block::write_block(&*fs, &path, traces, wal_end, red))
                })
                .await
                .map_err(|e| StoreError::Internal(format!("block writer panicked: {e}")))?;
                self.serial_blocks.fetch_add(serial.as_nanos() as u64, Ordering::Relaxed);
                Some(written.map_err(block_error)?)
            };
            {
                let mut st = self.state.write();
                st.frozen.retain(|f| !Arc::ptr_eq(f, &frozen));
                if let Some(b) = block {
                    tracing::info!(block = %b.path.display(), spans = b.span_count, traces = b.trace_count, bytes = b.bytes, "block written");
                    st.blocks.push(Arc::new(b));
                    st.blocks.sort_by_key(|b| (b.time.start_unix_nano, b.path.clone()));
                }
            }
            self.flushed.notify_waiters();
            self.wal.remove_segments_before(wal_end).await.map_err(store_error)?;
        }
        Ok(())
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
