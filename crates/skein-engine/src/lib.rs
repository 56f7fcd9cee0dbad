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
//! This crate never sees protobuf, JSON or HTTP. Its one `unsafe` is the prefetch hint of
//! `prefetch.rs` (why, and why it is sound, is written there); the workspace denies it elsewhere,
//! and every other crate forbids it.

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
    Compressed, DependencyLink, Operation, OtlpRequest, SpanStore, StoreError, StoreStats, TraceQuery,
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
pub use block::DEFAULT_INDEX_MEMORY_BYTES;
mod bloom;
mod compact;
mod head;
mod read;
mod search;
mod write;
pub use skein_store::codec;
pub mod columnar;
mod prefetch;

use head::{Frozen, Head, Tally};
use read::dedup;
use write::background;

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
    /// Compaction merges blocks of alike sizes into blocks of up to this many bytes (on disk),
    /// oldest first, once `compact_min_blocks` of them are waiting (or fewer, at least two, that
    /// fill this many bytes); blocks of half this size or more are not merged again.
    pub compact_target_bytes: u64,
    pub compact_min_blocks: usize,
    /// Compactions that may run at once, each on its own run of blocks (default: a quarter of
    /// the cores, at least 1): compaction keeps up with ingest on any number of cores instead
    /// of being one thread's work. Each holds its sources' postings and trace ids and the new
    /// block's index in memory, so small machines run one.
    pub compaction_jobs: usize,
    /// WAL writer threads, each appending to segments of its own (default: a quarter of the
    /// cores, at least 2): with one, every acknowledged byte goes through one thread.
    pub wal_writers: usize,
    /// Bytes of the blocks' indexes that grow with what they store (postings, trace filters,
    /// column dictionaries) kept in memory, all blocks together; beyond, a search reads a
    /// block's postings from its file again, a lookup by id its trace section's page.
    pub index_memory_bytes: u64,
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
            compaction_jobs: cores().div_ceil(4),
            wal_writers: cores().div_ceil(4).max(2),
            index_memory_bytes: block::DEFAULT_INDEX_MEMORY_BYTES,
            fs: Arc::new(OsFs),
        }
    }
}

/// The configuration the crate's unit tests open engines with: test spans are from 2024, so
/// retention is a century, and every append is fsynced.
#[cfg(test)]
pub(crate) fn test_config(dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        retention: Duration::from_secs(100 * 365 * 24 * 3600),
        wal_fsync: FsyncPolicy::Always,
        ..EngineConfig::new(dir)
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
struct State {
    head: Head,
    frozen: Vec<Arc<Frozen>>,
    /// Sorted by start time.
    blocks: Vec<SharedBlock>,
    next_block: u64,
    /// Blocks (by sequence number) a running compaction merges: no other takes them.
    compacting: BTreeSet<u64>,
    /// The first WAL segment with records of the head (0 after open: the head then holds
    /// every record no block has, whatever its segment).
    head_wal_start: u64,
}

#[derive(Debug)]
struct Shared {
    config: EngineConfig,
    wal: Wal,
    /// Writers hold it shared across WAL append + head insert; freezing the head holds it
    /// exclusively, so a WAL rotation splits the records exactly between two heads.
    gate: tokio::sync::RwLock<()>,
    flush_lock: tokio::sync::Mutex<()>,
    state: RwLock<State>,
    /// What the open blocks keep of their indexes beyond their own fields, within
    /// `config.index_memory_bytes`.
    index_cache: Arc<block::IndexCache>,
    /// Blocks replaced by a compaction, deleted from disk once no reader holds them.
    retired: parking_lot::Mutex<Vec<SharedBlock>>,
    spans_evicted: AtomicU64,
    traces_evicted: AtomicU64,
    /// Block chunks read and decoded by queries (searches, traces) since open.
    chunks_read: AtomicU64,
    /// Serial work since open, in nanoseconds: under the head's exclusive lock. With the WAL
    /// writer's, it bounds how ingest scales with cores.
    serial_head: AtomicU64,
    /// CPU time of block writes and of compactions (outside their chunk encoding, which runs
    /// on every core): background work that runs as concurrent tasks, so not serial.
    block_writer_nanos: AtomicU64,
    compaction_nanos: AtomicU64,
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

/// The first bytes of a zstd frame: a WAL record that starts with them is a compressed batch
/// (as the builds before LZ4 records wrote them).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The first bytes of an LZ4 WAL record: then the encoding's length (u32, little-endian) and
/// the encoding as one LZ4 block (`docs/format/wal.md`, "Engine records").
const LZ4_MAGIC: [u8; 4] = *b"SKL4";

/// The first bytes of a WAL record of an OTLP request: then the request's length (u32,
/// little-endian) and the request (an OTLP/protobuf `ExportTraceServiceRequest`) as one LZ4
/// block.
const REQUEST_MAGIC: [u8; 4] = *b"SKP4";

/// The first bytes of a WAL record of an OTLP request that came gzip-compressed: then the
/// request's length (u32, little-endian) and the body as it came (gzip members), logged
/// without compressing anything again.
const GZIP_REQUEST_MAGIC: [u8; 4] = *b"SKPG";

/// As [`GZIP_REQUEST_MAGIC`], for a request that came zstd-compressed (zstd frames).
const ZSTD_REQUEST_MAGIC: [u8; 4] = *b"SKPZ";

/// The largest encoding an LZ4 record may claim: LZ4 expands at most 255-fold, so a larger
/// claim is damage, refused before anything is allocated for it.
fn lz4_claim_ok(claimed: usize, compressed: usize) -> bool {
    claimed <= compressed.saturating_mul(255).saturating_add(16)
}

/// The cores this process may run on, asked of the system at most once a second:
/// `available_parallelism` reads the cgroup's CPU quota from three files on every call, and
/// every block write, chunk read and search sizes its work by it. (Asked again, not once for
/// all: a process may be pinned to other CPUs while it runs, as `skein bench --server-cpus`
/// does.)
pub(crate) fn cores() -> usize {
    static CORES: std::sync::Mutex<Option<(Instant, usize)>> = std::sync::Mutex::new(None);
    let mut cores = CORES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match *cores {
        Some((asked, n)) if asked.elapsed() < Duration::from_secs(1) => n,
        _ => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            *cores = Some((Instant::now(), n));
            n
        }
    }
}

/// `raw` compressed with LZ4 on the writing thread, behind `magic` and its length, so the
/// WAL's writer threads checksum, write and sync about a fifth of the bytes (on the
/// realistic load), and the disk takes a fifth of the WAL traffic. LZ4 rather than zstd: zstd
/// at level 1 compresses a third better but took about twice the CPU, on every request.
fn lz4_record(magic: [u8; 4], raw: &[u8]) -> Vec<u8> {
    /// Most bytes a thread keeps to compress into: requests up to about 1 MiB (2,000
    /// realistic spans) use it; larger ones, fewer and with more spans to share the cost, are
    /// compressed into room of their own. (Every thread that receives keeps one: a collector's
    /// batches of 4-5 MB would otherwise keep that much per core.)
    const SCRATCH_MAX: usize = 1 << 20;
    thread_local! {
        /// Room for the compressed bytes, zeroed once and kept by the thread: a new buffer per
        /// record cost an allocation, and a reallocation with a copy when `compress` shrank it
        /// to what it wrote (zeroing one per record cost as much as a tenth of the
        /// compression).
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let room = lz4_flex::block::get_maximum_output_size(raw.len());
    if room > SCRATCH_MAX {
        return framed(magic, raw.len() as u32, &lz4_flex::block::compress(raw));
    }
    SCRATCH.with_borrow_mut(|scratch| {
        if scratch.len() < room {
            scratch.resize(room, 0);
        }
        let n = lz4_flex::block::compress_into(raw, scratch).expect("the room is the maximum output size");
        framed(magic, raw.len() as u32, &scratch[..n])
    })
}

/// What [`lz4_record`] compressed, from the record after its magic.
fn lz4_payload(rest: &[u8]) -> Result<Vec<u8>, String> {
    let (len, block) = rest.split_first_chunk::<4>().ok_or("a torn LZ4 record header")?;
    let len = u32::from_le_bytes(*len) as usize;
    if !lz4_claim_ok(len, block.len()) {
        return Err(format!("claims {len} bytes from {} compressed", block.len()));
    }
    let raw = lz4_flex::block::decompress(block, len).map_err(|e| format!("does not decompress: {e}"))?;
    if raw.len() != len {
        return Err(format!("decompresses to {} bytes, not the {len} it claims", raw.len()));
    }
    Ok(raw)
}

/// A WAL record as every compressed one is laid out: `magic`, the length `payload`
/// decompresses to (u32, little-endian), and `payload` (an LZ4 block, or the gzip or zstd body
/// of a request as it came: collectors send gzip by default, and logging their bodies as they
/// are costs a copy of a seventh of the request's bytes instead of compressing all of them
/// again).
fn framed(magic: [u8; 4], len: u32, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(magic.len() + 4 + payload.len());
    record.extend_from_slice(&magic);
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// The request a [`framed`] gzip or zstd record holds, decompressed (gzip when `gzip`, else
/// zstd), from the record after its magic: exactly the length it claims, or refused.
fn received_payload(rest: &[u8], gzip: bool) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let (len, body) = rest.split_first_chunk::<4>().ok_or("a torn request record header")?;
    let len = u32::from_le_bytes(*len) as usize;
    let reader: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(body))
    } else {
        Box::new(zstd::stream::read::Decoder::new(body).map_err(|e| format!("does not decompress: {e}"))?)
    };
    // Room for the claim only as far as the body could plausibly hold it; a false claim
    // is found when the bytes run out (or past it, one byte more is read to tell).
    let mut raw = Vec::with_capacity(len.min(body.len().saturating_mul(64)));
    reader.take(len as u64 + 1).read_to_end(&mut raw).map_err(|e| format!("does not decompress: {e}"))?;
    if raw.len() != len {
        return Err(format!("decompresses to {} bytes or more, not the {len} it claims", raw.len()));
    }
    Ok(raw)
}

/// The WAL record of a batch and the bytes of its encoding (what the head counts): the batch
/// encoded (`docs/format/spans.md`) in an LZ4 record.
fn wal_record(spans: &[Span]) -> (Vec<u8>, usize) {
    let raw = codec::encode_spans(spans);
    (lz4_record(LZ4_MAGIC, &raw), raw.len())
}

/// The limits a request record is decoded with on replay: none. Only requests none of whose
/// spans was rejected are logged as they came, and decoding rejects (never alters) what breaks
/// a limit, so without limits every span decodes again as it was stored, whatever limits the
/// server runs with now.
const NO_LIMITS: skein_otlp::Limits = skein_otlp::Limits {
    max_attribute_depth: usize::MAX,
    max_attribute_value_bytes: usize::MAX,
    max_attributes: usize::MAX,
};

/// The batch of a WAL record (an OTLP request: LZ4-compressed, or its gzip or zstd body as it
/// came; a batch: LZ4; zstd, as the builds before wrote it; or, before those, the encoding
/// itself, whose first byte is its version, 1) and the bytes of its encoding (of the request,
/// for a request record).
fn read_wal_record(record: &[u8]) -> Result<(Vec<Span>, usize), String> {
    let request = if let Some(rest) = record.strip_prefix(&REQUEST_MAGIC) {
        Some(lz4_payload(rest)?)
    } else if let Some(rest) = record.strip_prefix(&GZIP_REQUEST_MAGIC) {
        Some(received_payload(rest, true)?)
    } else if let Some(rest) = record.strip_prefix(&ZSTD_REQUEST_MAGIC) {
        Some(received_payload(rest, false)?)
    } else {
        None
    };
    if let Some(raw) = request {
        let batch = skein_otlp::decode_protobuf_to_model(&raw, &NO_LIMITS).map_err(|e| e.to_string())?;
        if batch.rejected > 0 {
            // Not written so; the valid spans are kept all the same.
            tracing::warn!(rejected = batch.rejected, error = %batch.error_message(), "spans of a logged request no longer decode");
        }
        return Ok((batch.spans, raw.len()));
    }
    if let Some(rest) = record.strip_prefix(&LZ4_MAGIC) {
        let raw = lz4_payload(rest)?;
        return codec::decode_spans(&raw).map(|spans| (spans, raw.len())).map_err(|e| e.to_string());
    }
    if record.starts_with(&ZSTD_MAGIC) {
        let raw = zstd::stream::decode_all(record).map_err(|e| format!("does not decompress: {e}"))?;
        return codec::decode_spans(&raw).map(|spans| (spans, raw.len())).map_err(|e| e.to_string());
    }
    codec::decode_spans(record).map(|spans| (spans, record.len())).map_err(|e| e.to_string())
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
        let index_cache = block::IndexCache::new(config.index_memory_bytes);
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
            match Block::open_in(&*fs, &path, &index_cache) {
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
        // WAL segments whose records are in a block. Since format 5, blocks are written at once
        // and a newer head's block may be on disk while an older one's is not: only the
        // segments a block names are skipped (before, one range from 0 per block).
        let covered = block::join_ranges(blocks.iter().flat_map(|b| b.wal_ranges.iter().copied()).collect());
        let in_a_block = |segment: u64| covered.iter().any(|(start, end)| (*start..*end).contains(&segment));

        let wal_config = WalConfig {
            dir: config.dir.join("wal"),
            segment_bytes: 64 * 1024 * 1024,
            fsync: config.wal_fsync,
            writers: config.wal_writers.max(1),
        };
        let (wal, recovery) = Wal::open(wal_config, Arc::clone(&fs))?;
        report.wal_truncations = recovery.truncations;
        let mut head = Head::default();
        for (pos, record) in recovery.records {
            if in_a_block(pos.segment) {
                continue; // already in a block
            }
            match read_wal_record(&record) {
                Ok((spans, len)) => {
                    head.insert(len, Tally::of(spans));
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
            index_cache,
            state: RwLock::new(State {
                head,
                frozen: Vec::new(),
                blocks,
                next_block,
                compacting: BTreeSet::new(),
                head_wal_start: 0,
            }),
            retired: parking_lot::Mutex::new(Vec::new()),
            spans_evicted: AtomicU64::new(0),
            traces_evicted: AtomicU64::new(0),
            chunks_read: AtomicU64::new(0),
            serial_head: AtomicU64::new(0),
            block_writer_nanos: AtomicU64::new(0),
            compaction_nanos: AtomicU64::new(0),
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

    /// Runs one compaction now if a run of blocks is waiting (see
    /// [`EngineConfig::compact_target_bytes`]); returns whether it merged anything. Normally
    /// the engine does this by itself.
    pub async fn compact(&self) -> Result<bool, StoreError> {
        let Some(run) = self.shared.claim_compaction() else { return Ok(false) };
        let merged = self.shared.compact_claimed(run).await?;
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
        // A head's block write that is finishing holds the engine until it has put the block
        // in place: let it (a write that has just begun still holds it only weakly).
        let deadline = Instant::now() + Duration::from_secs(60);
        while Arc::strong_count(&self.shared) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
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

    /// Appends `record` (the batch `spans`, whose encoding has `len` bytes) to the WAL and
    /// puts the spans in the head, asking for a cut when the head is full.
    async fn append(&self, spans: Vec<Span>, record: Vec<u8>, len: usize) -> Result<(), StoreError> {
        let tally = Tally::of(spans);
        let full = {
            let _gate = self.shared.gate.read().await;
            self.shared.wal.append(record).await.map_err(store_error)?;
            let mut st = self.shared.state.write();
            let locked = Instant::now();
            st.head.insert(len, tally);
            let full = st.head.bytes >= self.shared.config.head_max_bytes;
            drop(st);
            self.shared.serial_head.fetch_add(locked.elapsed().as_nanos() as u64, Ordering::Relaxed);
            full
        };
        if full {
            self.shared.flush_wanted.notify_one();
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(b) = self.background.take() {
            b.abort();
        }
    }
}

#[async_trait]
impl SpanStore for Engine {
    async fn write(&self, spans: Vec<Span>) -> Result<(), StoreError> {
        if spans.is_empty() {
            return Ok(());
        }
        self.shared.wait_for_memory().await?;
        let (record, len) = wal_record(&spans);
        self.append(spans, record, len).await
    }

    /// Logs the request as it came instead of encoding its spans again: its body as it is
    /// when it came gzip- or zstd-compressed, else LZ4-compressed.
    async fn write_request(&self, spans: Vec<Span>, request: OtlpRequest<'_>) -> Result<(), StoreError> {
        if spans.is_empty() {
            return Ok(());
        }
        let Ok(len) = u32::try_from(request.protobuf.len()) else {
            // A record's length field is 32 bits; the spans encoded take fewer bytes.
            return self.write(spans).await;
        };
        self.shared.wait_for_memory().await?;
        // The record (magic, length, body) is framed by the WAL with a 32-bit length.
        let fits = |body: &[u8]| u32::try_from(body.len() + 8).is_ok();
        let record = match request.compressed {
            Some(Compressed::Gzip(body)) if fits(body) => framed(GZIP_REQUEST_MAGIC, len, body),
            Some(Compressed::Zstd(body)) if fits(body) => framed(ZSTD_REQUEST_MAGIC, len, body),
            _ => lz4_record(REQUEST_MAGIC, request.protobuf),
        };
        self.append(spans, record, request.protobuf.len()).await
    }

    async fn trace(&self, id: TraceId) -> Result<Option<Vec<Span>>, StoreError> {
        Ok(self.traces(&[id]).await?.remove(&id))
    }

    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<Vec<Span>>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let q = query.clone();
        let ids = tokio::task::spawn_blocking(move || shared.search(&q))
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
        let mut names: BTreeSet<String> = st.head.red.series.keys().cloned().collect();
        for f in &st.frozen {
            names.extend(f.head.red.series.keys().cloned());
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
            for (name, kinds) in h.red.series.get(service).into_iter().flatten() {
                let seen = SpanKind::ALL.into_iter().filter(|k| !kinds[k.code() as usize].is_empty());
                ops.extend(seen.map(|k| (name.to_string(), k)));
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
        let awaiting = self.shared.blocks_awaiting_compaction(&st);
        // One WAL writer thread is serial work; several share the appends, so it is not.
        let wal = self.shared.wal.busy_nanos();
        let mut serial_nanos = vec![("head_lock", self.shared.serial_head.load(Ordering::Relaxed))];
        let mut background_nanos = vec![
            ("block_writer", self.shared.block_writer_nanos.load(Ordering::Relaxed)),
            ("compaction", self.shared.compaction_nanos.load(Ordering::Relaxed)),
        ];
        if self.shared.wal.writers() > 1 {
            background_nanos.push(("wal_writers", wal));
        } else {
            serial_nanos.push(("wal_writer", wal));
        }
        let mut memory = block::MemoryBytes::default();
        for b in &st.blocks {
            let m = b.memory_bytes();
            memory.traces += m.traces;
            memory.chunks += m.chunks;
            memory.blooms += m.blooms;
        }
        // The parts the cache keeps: postings, trace filters (with the trace index), column
        // dictionaries (with the chunk tables).
        let (postings, filters, dicts) = self.shared.index_cache.held();
        memory.traces += filters;
        memory.chunks += dicts;
        StoreStats {
            blocks: st.blocks.len() as u64,
            blocks_awaiting_compaction: awaiting as u64,
            spans_stored: spans,
            traces_stored: traces,
            spans_evicted: self.shared.spans_evicted.load(Ordering::Relaxed),
            traces_evicted: self.shared.traces_evicted.load(Ordering::Relaxed),
            serial_nanos,
            background_nanos,
            memory_bytes: vec![
                ("trace_index", memory.traces),
                ("postings", postings),
                ("chunks", memory.chunks),
                ("blooms", memory.blooms),
            ],
        }
    }
}
