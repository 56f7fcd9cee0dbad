//! Skein's embedded storage engine, behind the `skein-store` traits.
//!
//! Shape (Prometheus TSDB / Tempo, on one disk):
//!
//! ```text
//! write ─► WAL (skein-wal, acknowledged once written) ─► head (memory, indexed by trace)
//!                                   head full or old ─► frozen head ─► immutable block file
//! read  ─► head + frozen heads + blocks, merged per trace
//! ```
//!
//! A batch is acknowledged only after the WAL has it; on open, the WAL records that no block
//! holds yet are replayed into the head. Blocks (`docs/format/block.md`) are written atomically
//! and never modified; retention deletes whole blocks. A corrupt block is reported, set aside
//! and skipped; everything else stays readable. All file I/O goes through [`skein_wal::fs::Fs`].
//!
//! This crate never sees protobuf, JSON or HTTP.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use skein_model::{Span, SpanKind, TimeRange, TraceId};
use skein_store::red::RedSummary;
use skein_store::{
    DependencyLink, Operation, SpanMatcher, SpanStore, StoreError, StoreStats, TraceQuery,
    count_dependencies, dependency_links,
};
use skein_wal::fs::{Fs, OsFs};
use skein_wal::{FsyncPolicy, Wal, WalConfig, WalError};

/// `&mut` the entry of the name `$name` (a `&str`) in the `HashMap<String, _>` `$map`, made
/// (default) when missing. Looked up by `&str` first, so a name is copied once, not for every
/// span that carries it. (A macro: as a function, returning the borrow from `get_mut` and
/// inserting on a miss is refused by today's borrow checker.)
macro_rules! named {
    ($map:expr, $name:expr) => {{
        let map = $map;
        let name: &str = $name;
        match map.get_mut(name) {
            Some(v) => v,
            None => map.entry(name.to_owned()).or_default(),
        }
    }};
}

pub mod block;
mod bloom;
pub use skein_store::codec;
pub mod columnar;

use block::{Block, SharedBlock};

/// Settings of an [`Engine`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub dir: PathBuf,
    /// The head is cut into a block once its encoded spans take this many bytes.
    pub head_max_bytes: usize,
    /// … or once its oldest span arrived this long ago.
    pub head_max_age: Duration,
    pub wal_fsync: FsyncPolicy,
    /// Blocks whose newest span started longer ago than this are deleted.
    pub retention: Duration,
    /// When spans arrive faster than blocks are written and the head and frozen heads hold
    /// three times `head_max_bytes`, a write waits this long for a block to be written, then is
    /// refused as overloaded (the receivers answer with the OTLP throttling status).
    pub overload_wait: Duration,
    /// Compaction merges blocks written from the head (never compacted yet) into blocks of up to
    /// this many bytes (on disk), oldest first, once `compact_min_blocks` of them are waiting.
    /// Compacted blocks are not merged again.
    pub compact_target_bytes: u64,
    pub compact_min_blocks: usize,
    pub fs: Arc<dyn Fs>,
}

impl EngineConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            dir: dir.into(),
            head_max_bytes: 64 * 1024 * 1024,
            head_max_age: Duration::from_secs(15 * 60),
            wal_fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            retention: Duration::from_secs(72 * 3600),
            overload_wait: Duration::from_secs(2),
            compact_target_bytes: 64 * 1024 * 1024,
            compact_min_blocks: 8,
            fs: Arc::new(OsFs),
        }
    }
}

/// Why the engine could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot read the block directory {path}: {source}")]
    Blocks { path: PathBuf, source: std::io::Error },
    #[error("data directory {0} is in use by another skein process; stop it or choose another --data-dir")]
    Locked(PathBuf),
    #[error("cannot lock the data directory {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
}

/// What opening found: recovered records, cut WAL tails, blocks set aside.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub blocks: usize,
    pub wal_records_replayed: usize,
    pub wal_truncations: Vec<skein_wal::Truncation>,
    pub corrupt_blocks: Vec<String>,
    pub undecodable_wal_records: usize,
    /// Blocks left behind by a compaction that was interrupted after writing its result,
    /// deleted now.
    pub compacted_blocks_removed: usize,
}

#[derive(Debug, Default)]
struct Head {
    traces: FxHashMap<TraceId, Vec<Span>>,
    bytes: usize,
    spans: u64,
    created: Option<Instant>,
    /// service → operation name → the span kinds seen with it (bit `1 << kind code`).
    operations: FxHashMap<String, FxHashMap<String, u8>>,
    /// RED pre-aggregates of the head's spans (a block writes them from its spans again).
    red: RedSummary,
}

impl Head {
    fn insert(&mut self, spans: Vec<Span>, bytes: usize) {
        self.created.get_or_insert_with(Instant::now);
        self.bytes += bytes;
        for s in spans {
            *named!(named!(&mut self.operations, s.service_name()), &s.name) |= 1 << s.kind.code();
            self.red.add(&s);
            self.spans += 1;
            self.traces.entry(s.trace_id).or_default().push(s);
        }
    }
}

#[derive(Debug)]
struct Frozen {
    head: Head,
    /// WAL segments below this id hold only this head's records (and older ones).
    wal_segment_end: u64,
}

#[derive(Debug, Default)]
struct State {
    head: Head,
    frozen: Vec<Arc<Frozen>>,
    /// Sorted by start time.
    blocks: Vec<SharedBlock>,
    next_block: u64,
}

#[derive(Debug)]
struct Shared {
    config: EngineConfig,
    wal: Wal,
    /// Writers hold it shared across WAL append + head insert; freezing the head holds it
    /// exclusively, so a WAL rotation splits the records exactly between two heads.
    gate: tokio::sync::RwLock<()>,
    flush_lock: tokio::sync::Mutex<()>,
    compact_lock: tokio::sync::Mutex<()>,
    state: RwLock<State>,
    /// Blocks replaced by a compaction, deleted from disk once no reader holds them.
    retired: parking_lot::Mutex<Vec<SharedBlock>>,
    spans_evicted: AtomicU64,
    traces_evicted: AtomicU64,
    /// Block chunks read and decoded by queries (searches, traces) since open.
    chunks_read: AtomicU64,
    /// Wakes the background task when the head is full.
    flush_wanted: Arc<tokio::sync::Notify>,
    /// Wakes writers waiting for memory when a block has been written.
    flushed: tokio::sync::Notify,
    /// Held (locked) while the engine is open.
    _lock: std::fs::File,
}

/// The embedded engine. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    background: Option<tokio::task::JoinHandle<()>>,
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn store_error(e: WalError) -> StoreError {
    if e.is_disk_full() {
        StoreError::DiskFull(format!("nothing was written; free space and retry ({e})"))
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

fn block_error(e: block::BlockError) -> StoreError {
    StoreError::Internal(e.to_string())
}

impl Engine {
    /// Opens the engine in `config.dir` (creating it), recovering blocks and the WAL. Starts
    /// the background work (cutting old heads, retention) when called inside a tokio runtime.
    pub fn open(config: EngineConfig) -> Result<(Engine, OpenReport), OpenError> {
        let fs = Arc::clone(&config.fs);
        // One process per data directory: a second writer would corrupt the WAL.
        fs.create_dir_all(&config.dir)
            .map_err(|source| OpenError::Blocks { path: config.dir.clone(), source })?;
        let lock = skein_wal::fs::lock_dir(&config.dir).map_err(|e| match e {
            skein_wal::fs::LockError::Locked(dir) => OpenError::Locked(dir),
            skein_wal::fs::LockError::Io { path, source } => OpenError::Lock { path, source },
        })?;
        let block_dir = config.dir.join("blocks");
        fs.create_dir_all(&block_dir)
            .map_err(|source| OpenError::Blocks { path: block_dir.clone(), source })?;
        let mut report = OpenReport::default();
        let mut blocks = Vec::new();
        let mut next_block = 1;
        let mut entries =
            fs.list(&block_dir).map_err(|source| OpenError::Blocks { path: block_dir.clone(), source })?;
        entries.sort();
        for path in entries {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.ends_with(".tmp") {
                let _ = fs.remove(&path); // an unfinished block write: its spans are still in the WAL
                continue;
            }
            let Some(seq) = name.strip_suffix(".blk").and_then(|n| n.parse::<u64>().ok()) else { continue };
            next_block = next_block.max(seq + 1);
            match Block::open(&*fs, &path) {
                Ok(b) => blocks.push(Arc::new(b)),
                Err(e) => {
                    tracing::error!(block = %path.display(), error = %e, "corrupt block set aside; its spans are unreadable");
                    let _ = fs.rename(&path, &path.with_extension("blk.corrupt"));
                    report.corrupt_blocks.push(e.to_string());
                }
            }
        }
        // A compaction that wrote its block but was stopped before deleting the blocks it
        // replaces: finish it (their spans are all in the new block).
        let replaced: BTreeSet<u64> = blocks.iter().flat_map(|b| b.replaces.iter().copied()).collect();
        if !replaced.is_empty() {
            let (gone, keep): (Vec<SharedBlock>, Vec<SharedBlock>) =
                blocks.into_iter().partition(|b| b.seq().is_some_and(|s| replaced.contains(&s)));
            for b in gone {
                tracing::info!(block = %b.path.display(), "block already compacted into a newer one; deleted");
                let _ = fs.remove(&b.path);
                report.compacted_blocks_removed += 1;
            }
            blocks = keep;
        }
        blocks.sort_by_key(|b| (b.time.start_unix_nano, b.path.clone()));
        report.blocks = blocks.len();
        let wal_floor = blocks.iter().map(|b| b.wal_segment_end).max().unwrap_or(0);

        let wal_config = WalConfig {
            dir: config.dir.join("wal"),
            segment_bytes: 64 * 1024 * 1024,
            fsync: config.wal_fsync,
        };
        let (wal, recovery) = Wal::open(wal_config, Arc::clone(&fs))?;
        report.wal_truncations = recovery.truncations;
        let mut head = Head::default();
        for (pos, record) in recovery.records {
            if pos.segment < wal_floor {
                continue; // already in a block
            }
            match codec::decode_spans(&record) {
                Ok(spans) => {
                    head.insert(spans, record.len());
                    report.wal_records_replayed += 1;
                }
                Err(e) => {
                    tracing::error!(segment = pos.segment, offset = pos.offset, error = %e, "undecodable wal record skipped");
                    report.undecodable_wal_records += 1;
                }
            }
        }
        let shared = Arc::new(Shared {
            config,
            wal,
            gate: tokio::sync::RwLock::new(()),
            flush_lock: tokio::sync::Mutex::new(()),
            compact_lock: tokio::sync::Mutex::new(()),
            state: RwLock::new(State { head, frozen: Vec::new(), blocks, next_block }),
            retired: parking_lot::Mutex::new(Vec::new()),
            spans_evicted: AtomicU64::new(0),
            traces_evicted: AtomicU64::new(0),
            chunks_read: AtomicU64::new(0),
            flush_wanted: Arc::new(tokio::sync::Notify::new()),
            flushed: tokio::sync::Notify::new(),
            _lock: lock,
        });
        let background = tokio::runtime::Handle::try_current()
            .ok()
            .map(|h| h.spawn(background(Arc::downgrade(&shared), Arc::clone(&shared.flush_wanted))));
        Ok((Engine { shared, background }, report))
    }

    /// Cuts the head into a block now (if it holds anything) and waits until the block is
    /// written. Normally the engine does this by itself.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.shared.flush().await
    }

    /// Runs one compaction now if enough small blocks are waiting; returns whether it merged
    /// anything. Normally the engine does this by itself.
    pub async fn compact(&self) -> Result<bool, StoreError> {
        let guard = self.shared.compact_lock.lock().await;
        let merged = self.shared.compact_locked(guard).await?;
        self.shared.delete_retired();
        Ok(merged)
    }

    /// Deletes blocks older than the retention now. Normally the engine does this by itself.
    pub fn enforce_retention(&self) -> Result<(), StoreError> {
        self.shared.enforce_retention()
    }

    /// Stops the background work and waits for it, then closes the WAL and releases the data
    /// directory. Dropping the engine does the same, except that a background flush in
    /// progress may finish a little later.
    pub async fn close(mut self) {
        if let Some(b) = self.background.take() {
            b.abort();
            let _ = b.await;
        }
    }

    /// Number of blocks on disk.
    pub fn block_count(&self) -> usize {
        self.shared.state.read().blocks.len()
    }

    /// Block chunks read and decoded by searches and trace reads since the engine opened: what
    /// postings and Bloom filters saved shows here.
    pub fn chunks_read(&self) -> u64 {
        self.shared.chunks_read.load(Ordering::Relaxed)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(b) = self.background.take() {
            b.abort();
        }
    }
}

/// Cuts full or old heads into blocks and enforces retention. Holds the engine only weakly
/// while idle, so dropping the engine ends it.
async fn background(shared: Weak<Shared>, flush_wanted: Arc<tokio::sync::Notify>) {
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
    async fn flush(&self) -> Result<(), StoreError> {
        let guard = self.flush_lock.lock().await;
        self.flush_locked(guard).await
    }

    /// Flushes unless a flush is already running (which does the same work).
    async fn try_flush(&self) -> Result<(), StoreError> {
        match self.flush_lock.try_lock() {
            Ok(guard) => self.flush_locked(guard).await,
            Err(_) => Ok(()),
        }
    }

    async fn flush_locked(&self, _one_at_a_time: tokio::sync::MutexGuard<'_, ()>) -> Result<(), StoreError> {
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
                let written = tokio::task::spawn_blocking(move || {
                    let traces = head.head.traces.values().map(|spans| {
                        spans.iter().filter(|s| s.start_time_unix_nano >= cutoff).collect::<Vec<_>>()
                    });
                    // Every span kept: the head's pre-aggregates are the block's.
                    let red = (kept as u64 == head.head.spans).then_some(&head.head.red);
                    block::write_block(&*fs, &path, traces, wal_end, red)
                })
                .await
                .map_err(|e| StoreError::Internal(format!("block writer panicked: {e}")))?;
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

    /// Merges the oldest run of small blocks into one (format v3), streaming chunk by chunk
    /// (copied compressed; see [`merge_blocks`]): memory holds one source chunk and the
    /// output's compressed chunks (at most
    /// `compact_target_bytes`). The new block is written atomically and lists the blocks it
    /// replaces, which are retired (and deleted once no reader holds them); a crash after the
    /// write is finished on open. Returns whether it merged anything.
    async fn compact_locked(
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
        let merged = tokio::task::spawn_blocking(move || merge_blocks(&*fs, &inputs, &path))
            .await
            .map_err(|e| StoreError::Internal(format!("compaction panicked: {e}")))??;
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
    fn awaits_compaction(&self, b: &Block) -> bool {
        b.replaces.is_empty() && b.bytes < self.config.compact_target_bytes && b.seq().is_some()
    }

    /// Deletes the files of retired blocks that no reader holds any more.
    fn delete_retired(&self) {
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

    /// Bytes of spans held in memory: the head and the heads being written to blocks.
    fn buffered_bytes(&self) -> usize {
        let st = self.state.read();
        st.head.bytes + st.frozen.iter().map(|f| f.head.bytes).sum::<usize>()
    }

    /// Waits until the in-memory heads are below their bound, or refuses after `overload_wait`.
    async fn wait_for_memory(&self) -> Result<(), StoreError> {
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

    fn enforce_retention(&self) -> Result<(), StoreError> {
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

    /// The in-memory heads and the blocks, as of now.
    fn snapshot(&self) -> (Vec<Arc<Frozen>>, Vec<SharedBlock>) {
        let st = self.state.read();
        (st.frozen.clone(), st.blocks.clone())
    }

    fn scan(
        &self,
        range: TimeRange,
        max_spans: usize,
        attributes: skein_store::KeepAttribute,
    ) -> skein_store::Scan {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let overlaps =
            |t: TimeRange| t.end_unix_nano > range.start_unix_nano && t.start_unix_nano < range.end_unix_nano;
        let mut scan = skein_store::Scan::default();
        {
            let st = self.state.read();
            let heads = std::iter::once(&st.head).chain(st.frozen.iter().map(|f| &f.head));
            for trace in heads.flat_map(|h| h.traces.values()) {
                if trace.iter().any(|s| range.contains(s.start_time_unix_nano)) {
                    if scan.spans + trace.len() > max_spans {
                        scan.truncated = true;
                        break;
                    }
                    scan.spans += trace.len();
                    let projected = trace.iter().map(|s| skein_store::ScanSpan::of(s, attributes));
                    scan.traces.entry(trace[0].trace_id).or_default().extend(projected);
                }
            }
        }
        let (_, blocks) = self.snapshot();
        let chunks: Vec<(&SharedBlock, usize)> = blocks
            .iter()
            .filter(|b| overlaps(b.time))
            .flat_map(|b| (0..b.chunk_count()).map(move |i| (b, i)))
            .filter(|(b, i)| overlaps(b.chunk_meta(*i).time))
            .collect();
        // Chunks are decoded on every core, each worker grouping its spans by trace as it goes
        // (one big list copied into groups afterwards would cost more than the decoding).
        let next = AtomicUsize::new(0);
        let held = AtomicUsize::new(scan.spans);
        let full = AtomicBool::new(scan.truncated);
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(chunks.len()).max(1);
        let parts: Vec<HashMap<TraceId, Vec<skein_store::ScanSpan>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine: HashMap<TraceId, Vec<skein_store::ScanSpan>> = HashMap::new();
                        while !full.load(Ordering::Relaxed) {
                            let Some(&(block, i)) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) else {
                                break;
                            };
                            let read = match block.read_chunk_projected(&*self.config.fs, i, Some(attributes))
                            {
                                Ok(spans) => spans,
                                Err(e) => {
                                    tracing::error!(error = %e, "chunk unreadable; skipped");
                                    continue;
                                }
                            };
                            if held.fetch_add(read.len(), Ordering::Relaxed) + read.len() > max_spans {
                                full.store(true, Ordering::Relaxed);
                                break;
                            }
                            for s in read {
                                mine.entry(s.trace_id)
                                    .or_default()
                                    .push(skein_store::ScanSpan::of(&s, attributes));
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        for part in parts {
            for (id, mut spans) in part {
                scan.spans += spans.len();
                match scan.traces.entry(id) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(spans);
                    }
                    std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().append(&mut spans),
                }
            }
        }
        scan.truncated = full.into_inner();
        scan
    }

    fn read_chunk(&self, block: &Block, i: usize) -> Option<Vec<Span>> {
        self.chunks_read.fetch_add(1, Ordering::Relaxed);
        match block.read_chunk(&*self.config.fs, i) {
            Ok(spans) => Some(spans),
            Err(e) => {
                tracing::error!(error = %e, "chunk unreadable; skipped");
                None
            }
        }
    }
}

/// Merges `sources` into one new block at `path`, chunk by chunk, oldest chunk first. Chunks
/// of blocks with postings (format 2 and later) are copied as they are, compressed: merging
/// costs a read and a write of their bytes, and no span is decoded. Chunks of format 1 blocks
/// are decoded and written anew, which gives them postings.
fn merge_blocks(fs: &dyn Fs, sources: &[SharedBlock], path: &std::path::Path) -> Result<Block, StoreError> {
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
            let source = b.copy_source();
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

impl Engine {
    /// The spans of several traces at once: each block chunk that holds any of them is read
    /// once, however many of the traces it holds (a search's results are often neighbours).
    async fn traces_batched(&self, ids: &[TraceId]) -> Result<HashMap<TraceId, Vec<Span>>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let mut found: HashMap<TraceId, Vec<Span>> = HashMap::with_capacity(ids.len());
        {
            let st = shared.state.read();
            for id in ids {
                for head in std::iter::once(&st.head).chain(st.frozen.iter().map(|f| &f.head)) {
                    if let Some(t) = head.traces.get(id) {
                        found.entry(*id).or_default().extend(t.iter().cloned());
                    }
                }
            }
        }
        let (_, blocks) = shared.snapshot();
        let wanted: std::collections::HashSet<TraceId> = ids.iter().copied().collect();
        let from_blocks = tokio::task::spawn_blocking(move || {
            let mut out: HashMap<TraceId, Vec<Span>> = HashMap::new();
            for b in blocks.iter() {
                let chunks: BTreeSet<usize> =
                    wanted.iter().filter(|id| b.has_trace(**id)).flat_map(|id| b.chunks_of(*id)).collect();
                for chunk in chunks {
                    for span in shared.read_chunk(b, chunk).into_iter().flatten() {
                        if wanted.contains(&span.trace_id) {
                            out.entry(span.trace_id).or_default().push(span);
                        }
                    }
                }
            }
            out
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        for (id, spans) in from_blocks {
            found.entry(id).or_default().extend(spans);
        }
        Ok(found.into_iter().filter(|(_, s)| !s.is_empty()).map(|(id, s)| (id, dedup(s))).collect())
    }
}

fn dedup(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| s.span_id);
    spans.dedup_by_key(|s| s.span_id);
    spans
}

#[async_trait]
impl SpanStore for Engine {
    async fn write(&self, spans: Vec<Span>) -> Result<(), StoreError> {
        if spans.is_empty() {
            return Ok(());
        }
        self.shared.wait_for_memory().await?;
        let record = codec::encode_spans(&spans);
        let len = record.len();
        let full = {
            let _gate = self.shared.gate.read().await;
            self.shared.wal.append(record).await.map_err(store_error)?;
            let mut st = self.shared.state.write();
            st.head.insert(spans, len);
            st.head.bytes >= self.shared.config.head_max_bytes
        };
        if full {
            self.shared.flush_wanted.notify_one();
        }
        Ok(())
    }

    async fn trace(&self, id: TraceId) -> Result<Option<Vec<Span>>, StoreError> {
        Ok(self.traces(&[id]).await?.remove(&id))
    }

    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<Vec<Span>>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let q = query.clone();
        let ids = tokio::task::spawn_blocking(move || {
            let matcher = SpanMatcher::new(&q);
            let mut candidates: HashMap<TraceId, u64> = HashMap::new();
            // Starts of the newest `limit` candidates: once full, a chunk whose spans all start
            // before the oldest of them cannot change the answer and is not read.
            type Newest = std::collections::BinaryHeap<std::cmp::Reverse<u64>>;
            let mut newest = Newest::new();
            let consider = |candidates: &mut HashMap<TraceId, u64>, newest: &mut Newest, spans: &[Span]| {
                if spans.iter().any(|s| matcher.matches(s)) {
                    let start = spans.iter().map(|s| s.start_time_unix_nano).min().unwrap_or(0);
                    match candidates.entry(spans[0].trace_id) {
                        // Each trace counts once towards the `limit` newest, even when its spans
                        // are in several chunks (head and blocks, or a compacted block).
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(start);
                            newest.push(std::cmp::Reverse(start));
                            if newest.len() > q.limit {
                                newest.pop();
                            }
                        }
                        std::collections::hash_map::Entry::Occupied(mut o) => {
                            let e = o.get_mut();
                            *e = (*e).min(start);
                        }
                    }
                }
            };
            {
                let st = shared.state.read();
                for t in st.head.traces.values() {
                    consider(&mut candidates, &mut newest, t);
                }
                for f in &st.frozen {
                    for t in f.head.traces.values() {
                        consider(&mut candidates, &mut newest, t);
                    }
                }
            }
            let (_, blocks) = shared.snapshot();
            for b in blocks.iter().rev() {
                if b.time.end_unix_nano <= q.time.start_unix_nano
                    || b.time.start_unix_nano >= q.time.end_unix_nano
                {
                    continue;
                }
                for i in (0..b.chunk_count()).rev() {
                    let t = b.chunk_meta(i).time;
                    if t.end_unix_nano <= q.time.start_unix_nano || t.start_unix_nano >= q.time.end_unix_nano
                    {
                        continue;
                    }
                    if !b.chunk_may_match(&*shared.config.fs, i, q.service.as_deref(), &q.tags)
                        || !b.chunk_may_hold_duration(i, q.min_duration_nanos, q.max_duration_nanos)
                    {
                        continue;
                    }
                    if newest.len() >= q.limit
                        && newest.peek().is_some_and(|oldest| t.end_unix_nano <= oldest.0)
                    {
                        continue;
                    }
                    let Some(spans) = shared.read_chunk(b, i) else { continue };
                    let mut by_trace: HashMap<TraceId, Vec<Span>> = HashMap::new();
                    for s in spans {
                        by_trace.entry(s.trace_id).or_default().push(s);
                    }
                    for t in by_trace.values() {
                        consider(&mut candidates, &mut newest, t);
                    }
                }
            }
            let mut ids: Vec<(u64, TraceId)> =
                candidates.into_iter().map(|(id, start)| (start, id)).collect();
            ids.sort_by(|a, b| b.cmp(a));
            ids.truncate(q.limit);
            ids
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        let ids: Vec<TraceId> = ids.into_iter().map(|(_, id)| id).collect();
        let mut found = self.traces(&ids).await?;
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn traces(&self, ids: &[TraceId]) -> Result<HashMap<TraceId, Vec<Span>>, StoreError> {
        self.traces_batched(ids).await
    }

    /// Reads every chunk whose time overlaps `range` once, decoding chunks on every core, and
    /// the head's traces with a span in `range`.
    async fn scan(
        &self,
        range: TimeRange,
        max_spans: usize,
        attributes: skein_store::KeepAttribute,
    ) -> Result<skein_store::Scan, StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.scan(range, max_spans, attributes))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))
    }

    /// The heads' pre-aggregates and those of every block whose spans start in the minutes
    /// asked for, all taken from one view of the engine (a head being written to a block, or
    /// blocks being compacted, count once). `None` when such a block has none (written before
    /// block format 4).
    async fn red(
        &self,
        minutes: std::ops::Range<u64>,
        services: &[String],
        latency: bool,
    ) -> Result<Option<RedSummary>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let services = services.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut out = RedSummary::default();
            let (frozen, blocks) = {
                let st = shared.state.read();
                out.merge_where(&st.head.red, &minutes, Some(&services));
                (st.frozen.clone(), st.blocks.clone())
            };
            for f in &frozen {
                out.merge_where(&f.head.red, &minutes, Some(&services));
            }
            let (from, to) = (
                minutes.start.saturating_mul(skein_store::red::RED_CELL_NANOS),
                minutes.end.saturating_mul(skein_store::red::RED_CELL_NANOS),
            );
            for b in blocks.iter().filter(|b| b.time.end_unix_nano > from && b.time.start_unix_nano < to) {
                if !b.services.iter().any(|(name, _)| services.contains(name)) {
                    continue;
                }
                match b.read_red_bytes(&*shared.config.fs).map_err(block_error)? {
                    Some(raw) => out
                        .decode_where(&raw, &minutes, Some(&services), latency)
                        .map_err(|e| block_error(b.corrupt(format!("RED pre-aggregates: {e}"))))?,
                    None => return Ok(None),
                }
            }
            Ok(Some(out))
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    async fn services(&self) -> Result<Vec<String>, StoreError> {
        let st = self.shared.state.read();
        let mut names: BTreeSet<String> = st.head.operations.keys().cloned().collect();
        for f in &st.frozen {
            names.extend(f.head.operations.keys().cloned());
        }
        for b in &st.blocks {
            names.extend(b.services.iter().map(|(n, _)| n.clone()));
        }
        Ok(names.into_iter().collect())
    }

    async fn operations(&self, service: &str, kind: Option<SpanKind>) -> Result<Vec<Operation>, StoreError> {
        let st = self.shared.state.read();
        let mut ops: BTreeSet<(String, SpanKind)> = BTreeSet::new();
        for h in std::iter::once(&st.head).chain(st.frozen.iter().map(|f| &f.head)) {
            for (name, kinds) in h.operations.get(service).into_iter().flatten() {
                let seen = SpanKind::ALL.into_iter().filter(|k| kinds & (1 << k.code()) != 0);
                ops.extend(seen.map(|k| (name.clone(), k)));
            }
        }
        for b in &st.blocks {
            for (n, m) in &b.services {
                if n == service {
                    ops.extend(m.keys().cloned());
                }
            }
        }
        Ok(ops
            .into_iter()
            .filter(|(_, k)| kind.is_none_or(|want| *k == want))
            .map(|(name, span_kind)| Operation { name, span_kind })
            .collect())
    }

    async fn dependencies(&self, range: TimeRange) -> Result<Vec<DependencyLink>, StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let mut traces: HashMap<TraceId, Vec<Span>> = HashMap::new();
            {
                let st = shared.state.read();
                let heads = std::iter::once(&st.head).chain(st.frozen.iter().map(|f| &f.head));
                for h in heads {
                    for (id, t) in &h.traces {
                        if t.iter().any(|s| range.contains(s.start_time_unix_nano)) {
                            traces.entry(*id).or_default().extend(t.iter().cloned());
                        }
                    }
                }
            }
            let (_, blocks) = shared.snapshot();
            for b in &blocks {
                for i in 0..b.chunk_count() {
                    let t = b.chunk_meta(i).time;
                    if t.end_unix_nano <= range.start_unix_nano || t.start_unix_nano >= range.end_unix_nano {
                        continue;
                    }
                    for s in shared.read_chunk(b, i).unwrap_or_default() {
                        traces.entry(s.trace_id).or_default().push(s);
                    }
                }
            }
            let mut counts = BTreeMap::new();
            for spans in traces.into_values() {
                count_dependencies(&dedup(spans), range, &mut counts);
            }
            Ok(dependency_links(counts))
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.shared.flush().await
    }

    fn stats(&self) -> StoreStats {
        let st = self.shared.state.read();
        let mut spans = st.head.spans;
        let mut traces = st.head.traces.len() as u64;
        for f in &st.frozen {
            spans += f.head.spans;
            traces += f.head.traces.len() as u64;
        }
        for b in &st.blocks {
            spans += b.span_count;
            traces += b.trace_count;
        }
        let small = st.blocks.iter().filter(|b| self.shared.awaits_compaction(b)).count();
        StoreStats {
            blocks: st.blocks.len() as u64,
            blocks_awaiting_compaction: if small >= self.shared.config.compact_min_blocks.max(2) {
                small as u64
            } else {
                0
            },
            spans_stored: spans,
            traces_stored: traces,
            spans_evicted: self.shared.spans_evicted.load(Ordering::Relaxed),
            traces_evicted: self.shared.traces_evicted.load(Ordering::Relaxed),
        }
    }
}
