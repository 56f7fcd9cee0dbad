//! Skein's write-ahead log: what makes an acknowledged batch survive a crash.
//!
//! Records (opaque bytes) are appended to numbered segment files as CRC-framed frames; a
//! dedicated writer thread batches concurrent appends into one write and one fsync (group
//! commit). On open, [`Wal::open`] replays every intact record; a torn or corrupt tail is cut
//! off and reported in [`Recovery::truncations`], never a panic. The on-disk format is
//! specified in `docs/format/wal.md`.
//!
//! This crate knows nothing of spans, protobuf or HTTP: the engine encodes, the WAL stores bytes.
//! All file I/O goes through [`fs::Fs`], so tests can inject faults.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod fs;

use fs::{AppendFile, Fs};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SKEINWAL";
/// Version of the segment format written by this code.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header: magic, version, segment id, crc32 of the preceding fields.
pub const SEGMENT_HEADER_LEN: u64 = 24;
/// Bytes before each record's payload: length and crc32 of the payload.
pub const FRAME_HEADER_LEN: u64 = 8;
/// Largest record accepted.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
const SEGMENT_SUFFIX: &str = ".wal";

/// When appended records are made durable with fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before every acknowledgement: survives power loss. Group commit shares one fsync
    /// among all appends that arrive while the previous one runs.
    Always,
    /// Write before acknowledging, fsync at most this often: survives the process being
    /// killed (the kernel has the bytes); a power loss can lose the last interval.
    Interval(Duration),
    /// Write before acknowledging, never fsync (the OS decides): survives the process being
    /// killed, not a power loss.
    Never,
}

/// Settings of a [`Wal`].
#[derive(Clone, Debug)]
pub struct WalConfig {
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it would grow past this size.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Writer threads, each appending to segments of its own (at least 1): appends are spread
    /// over them, so the WAL's copying, checksums, writes and syncs run on as many cores.
    pub writers: usize,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_bytes: 64 * 1024 * 1024,
            fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            writers: 1,
        }
    }
}

/// Where a record starts: its segment and its byte offset in that segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Why a WAL operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("wal i/o error on {path}: {message}")]
    Io { path: PathBuf, message: String, kind: std::io::ErrorKind },
    #[error("record of {0} bytes is over the limit of {MAX_RECORD_BYTES} bytes")]
    RecordTooLarge(usize),
    #[error("an empty record cannot be appended")]
    EmptyRecord,
    /// An fsync failed: what reached the disk is unknown, so the WAL refuses further writes
    /// until it is reopened (which recovers what is intact).
    #[error("wal refuses writes after a failed fsync ({0}); restart to recover")]
    Poisoned(String),
    #[error("wal is closed")]
    Closed,
}

impl WalError {
    fn io(path: &Path, e: std::io::Error) -> WalError {
        WalError::Io { path: path.to_owned(), message: e.to_string(), kind: e.kind() }
    }

    /// True when the disk is full: the append may succeed once space returns.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::Io { kind: std::io::ErrorKind::StorageFull, .. })
            || matches!(self, WalError::Io { message, .. } if message.contains("No space left"))
    }
}

/// A part of a segment that recovery cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub segment: PathBuf,
    /// Offset where the intact part ends.
    pub at: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

/// What [`Wal::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Every intact record, by segment and offset: in append order for one writer (with
    /// several, records of different writers are in the order of their segments).
    pub records: Vec<(Position, Vec<u8>)>,
    pub truncations: Vec<Truncation>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
}

fn segment_header(id: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// CPU nanoseconds the calling thread has run (its CPU-time clock: one system call, asked for
/// every chunk a block writer encodes); `None` where there is none.
#[cfg(unix)]
pub fn thread_cpu_nanos() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(u64::try_from(t.tv_sec()).ok()? * 1_000_000_000 + u64::try_from(t.tv_nsec()).ok()?)
}

/// CPU nanoseconds the calling thread has run; `None` where that is not available.
#[cfg(not(unix))]
pub fn thread_cpu_nanos() -> Option<u64> {
    None
}

fn schedstat_run_nanos(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok()
}

/// The calling thread's Linux thread id.
fn current_tid() -> Option<u64> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// What precedes `payload` in its frame: its length and its CRC32.
fn frame_header(payload: &[u8]) -> [u8; FRAME_HEADER_LEN as usize] {
    let mut header = [0; FRAME_HEADER_LEN as usize];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    header
}

/// Reads the records of one segment's bytes. Returns the records, the length of the intact
/// prefix, and why reading stopped early (if it did).
/// What reading one segment found.
type Parsed = (Vec<(Position, Vec<u8>)>, u64, Option<String>);

fn parse_segment(bytes: &[u8], id: u64) -> Parsed {
    let mut records = Vec::new();
    if bytes.len() < SEGMENT_HEADER_LEN as usize {
        return (
            records,
            0,
            Some(format!("segment header torn ({} of {SEGMENT_HEADER_LEN} bytes)", bytes.len())),
        );
    }
    if bytes[..SEGMENT_HEADER_LEN as usize] != segment_header(id) {
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let why = if bytes[..8] != SEGMENT_MAGIC {
            "not a skein wal segment (bad magic)".to_owned()
        } else if version != FORMAT_VERSION {
            format!("unsupported wal format version {version} (this build reads {FORMAT_VERSION})")
        } else {
            "segment header corrupt (id or crc mismatch)".to_owned()
        };
        return (records, 0, Some(why));
    }
    let mut offset = SEGMENT_HEADER_LEN as usize;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < FRAME_HEADER_LEN as usize {
            return (records, offset as u64, Some(format!("torn frame header ({} bytes)", rest.len())));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD_BYTES {
            return (records, offset as u64, Some(format!("invalid record length {len}")));
        }
        if rest.len() - (FRAME_HEADER_LEN as usize) < len {
            return (
                records,
                offset as u64,
                Some(format!("torn record: {len} bytes announced, {} present", rest.len() - 8)),
            );
        }
        let payload = &rest[8..8 + len];
        if crc32fast::hash(payload) != crc {
            return (records, offset as u64, Some("record crc mismatch".to_owned()));
        }
        records.push((Position { segment: id, offset: offset as u64 }, payload.to_vec()));
        offset += 8 + len;
    }
    (records, offset as u64, None)
}

/// One pending append and where to send its outcome.
type PendingAppend = (Vec<u8>, tokio::sync::oneshot::Sender<Result<Position, WalError>>);

enum Command {
    Append { data: Vec<u8>, reply: tokio::sync::oneshot::Sender<Result<Position, WalError>> },
    RemoveBefore { segment: u64, reply: tokio::sync::oneshot::Sender<Result<usize, WalError>> },
    Sync { reply: tokio::sync::oneshot::Sender<Result<(), WalError>> },
    Rotate { reply: tokio::sync::oneshot::Sender<Result<u64, WalError>> },
}

/// The write-ahead log. Appends from any thread or task; writer threads (one by default, see
/// [`WalConfig::writers`]) do the I/O, each into segments of its own. Segment ids are unique
/// across writers and grow with time.
#[derive(Debug)]
pub struct Wal {
    writers: Vec<WriterHandle>,
    /// The writer the next append goes to (round robin).
    next: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
struct WriterHandle {
    tx: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    /// Nanoseconds the writer thread spent framing and writing appends (not waiting, not in
    /// fsync).
    busy: Arc<AtomicU64>,
    /// The writer thread's Linux thread id (0 until known, or elsewhere).
    tid: Arc<AtomicU64>,
}

struct Writer {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    config: WalConfig,
    segment: u64,
    path: PathBuf,
    file: Box<dyn AppendFile>,
    len: u64,
    /// Written since the last sync (the current segment, the segments it closed since, or
    /// the directory).
    dirty: bool,
    /// Segments this writer closed (at a rotation) with records written since their last
    /// sync, by id: synced at the next sync, with the current one (unless deleted first).
    closed_unsynced: Vec<(u64, Box<dyn AppendFile>)>,
    /// A segment was created since the directory was last synced.
    dir_unsynced: bool,
    last_sync: Instant,
    poisoned: Option<String>,
    busy: Arc<AtomicU64>,
    /// The id the next new segment of any writer takes.
    next_segment: Arc<AtomicU64>,
    /// The segments this writer wrote (or, for the first writer, found on open), the current
    /// one included: the ones it deletes.
    own: std::collections::BTreeSet<u64>,
}

impl Wal {
    /// Opens (or creates) the WAL in `config.dir`, recovering every intact record.
    pub fn open(config: WalConfig, fs: Arc<dyn Fs>) -> Result<(Wal, Recovery), WalError> {
        let dir = config.dir.clone();
        fs.create_dir_all(&dir).map_err(|e| WalError::io(&dir, e))?;
        let mut ids: Vec<u64> = fs
            .list(&dir)
            .map_err(|e| WalError::io(&dir, e))?
            .iter()
            .filter_map(|p| p.file_name()?.to_str()?.strip_suffix(SEGMENT_SUFFIX)?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut recovery = Recovery::default();
        let mut last_good: Option<(u64, u64)> = None;
        let mut kept = std::collections::BTreeSet::new();
        for &id in &ids {
            let path = segment_path(&dir, id);
            let bytes = fs.read(&path).map_err(|e| WalError::io(&path, e))?;
            if bytes.len() < SEGMENT_HEADER_LEN as usize && segment_header(id).starts_with(&bytes) {
                // Created, and lost in a crash before its first sync (segments and their
                // headers are synced with the records that follow): it never held a record.
                tracing::info!(segment = %path.display(), bytes = bytes.len(), "wal segment never synced; removed");
                fs.remove(&path).map_err(|e| WalError::io(&path, e))?;
                continue;
            }
            let (records, good_len, problem) = parse_segment(&bytes, id);
            recovery.records.extend(records);
            if let Some(reason) = problem {
                let dropped = bytes.len() as u64 - good_len;
                tracing::warn!(segment = %path.display(), at = good_len, dropped_bytes = dropped, %reason, "wal tail truncated");
                recovery.truncations.push(Truncation {
                    segment: path.clone(),
                    at: good_len,
                    dropped_bytes: dropped,
                    reason,
                });
                if good_len == 0 {
                    // Nothing usable (torn or foreign header): keep the bytes aside for a person.
                    let aside = path.with_extension("wal.corrupt");
                    fs.rename(&path, &aside).map_err(|e| WalError::io(&path, e))?;
                    continue;
                }
                fs.truncate(&path, good_len).map_err(|e| WalError::io(&path, e))?;
            }
            kept.insert(id);
            last_good = Some((id, good_len));
        }
        let next_segment = Arc::new(AtomicU64::new(ids.last().map_or(1, |last| last + 1)));
        let mut writers = Vec::with_capacity(config.writers.max(1));
        for n in 0..config.writers.max(1) {
            // The first writer goes on appending to the newest intact segment.
            let (segment, len, file, own) = match last_good.filter(|_| n == 0) {
                Some((id, len)) => {
                    let path = segment_path(&dir, id);
                    let file = fs.open_append(&path).map_err(|e| WalError::io(&path, e))?;
                    (id, len, file, std::mem::take(&mut kept))
                }
                None => {
                    let id = next_segment.fetch_add(1, Ordering::Relaxed);
                    let (mut file, len) = create_segment(&*fs, &dir, id)?;
                    let path = segment_path(&dir, id);
                    file.sync_data().map_err(|e| WalError::io(&path, e))?;
                    fs.sync_dir(&dir).map_err(|e| WalError::io(&dir, e))?;
                    let mut own = std::mem::take(&mut kept);
                    own.insert(id);
                    (id, len, file, own)
                }
            };
            let writer = Writer {
                fs: Arc::clone(&fs),
                path: segment_path(&dir, segment),
                dir: dir.clone(),
                config: config.clone(),
                segment,
                file,
                len,
                dirty: false,
                closed_unsynced: Vec::new(),
                dir_unsynced: false,
                last_sync: Instant::now(),
                poisoned: None,
                busy: Arc::new(AtomicU64::new(0)),
                next_segment: Arc::clone(&next_segment),
                own,
            };
            let busy = Arc::clone(&writer.busy);
            let tid = Arc::new(AtomicU64::new(0));
            let writer_tid = Arc::clone(&tid);
            let (tx, rx) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("skein-wal".into())
                .spawn(move || {
                    writer_tid.store(current_tid().unwrap_or(0), Ordering::Relaxed);
                    writer.run(rx)
                })
                .map_err(|e| WalError::Io { path: PathBuf::new(), message: e.to_string(), kind: e.kind() })?;
            writers.push(WriterHandle { tx: Some(tx), thread: Some(thread), busy, tid });
        }
        Ok((Wal { writers, next: Default::default() }, recovery))
    }

    /// Writer threads.
    pub fn writers(&self) -> usize {
        self.writers.len()
    }

    /// CPU nanoseconds of the writer threads together (Linux: their scheduler run time;
    /// elsewhere the time spent framing and writing appended records). The scheduler brings a
    /// thread's run time up to date when it stops running or at its next tick: a thread still
    /// on a CPU since it started may show none yet, so a writer counts at least the time it
    /// spent writing.
    pub fn busy_nanos(&self) -> u64 {
        self.writers
            .iter()
            .map(|w| {
                let writing = w.busy.load(Ordering::Relaxed);
                let tid = w.tid.load(Ordering::Relaxed);
                if tid != 0
                    && let Some(ns) = schedstat_run_nanos(&format!("/proc/self/task/{tid}/schedstat"))
                {
                    return ns.max(writing);
                }
                writing
            })
            .sum()
    }

    fn send_to(&self, writer: usize, cmd: Command) -> Result<(), WalError> {
        let tx = self.writers[writer].tx.as_ref().ok_or(WalError::Closed)?;
        tx.send(cmd).map_err(|_| WalError::Closed)
    }

    /// Sends an append to the next writer.
    fn send_append(&self, data: Vec<u8>) -> Result<Reply<Position>, WalError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let writer = self.next.fetch_add(1, Ordering::Relaxed) % self.writers.len();
        self.send_to(writer, Command::Append { data, reply })?;
        Ok(rx)
    }

    /// Sends a command to every writer.
    fn send_all<T>(
        &self,
        cmd: impl Fn(tokio::sync::oneshot::Sender<Result<T, WalError>>) -> Command,
    ) -> Result<Vec<Reply<T>>, WalError> {
        (0..self.writers.len())
            .map(|n| {
                let (reply, rx) = tokio::sync::oneshot::channel();
                self.send_to(n, cmd(reply))?;
                Ok(rx)
            })
            .collect()
    }

    /// Appends one record; resolves once it is written (and fsynced, as the policy says).
    pub async fn append(&self, data: Vec<u8>) -> Result<Position, WalError> {
        self.send_append(data)?.await.map_err(|_| WalError::Closed)?
    }

    /// [`Wal::append`] for synchronous code (not from inside an async task).
    pub fn append_blocking(&self, data: Vec<u8>) -> Result<Position, WalError> {
        self.send_append(data)?.blocking_recv().map_err(|_| WalError::Closed)?
    }

    /// fsyncs everything written so far.
    pub fn sync_blocking(&self) -> Result<(), WalError> {
        for rx in self.send_all(|reply| Command::Sync { reply })? {
            rx.blocking_recv().map_err(|_| WalError::Closed)??;
        }
        Ok(())
    }

    /// Closes the current segments and starts new ones; returns the lowest new segment id.
    /// Every record appended before this call is in a lower segment, every later one in this
    /// or a higher segment.
    pub async fn rotate(&self) -> Result<u64, WalError> {
        let mut lowest = u64::MAX;
        for rx in self.send_all(|reply| Command::Rotate { reply })? {
            lowest = lowest.min(rx.await.map_err(|_| WalError::Closed)??);
        }
        Ok(lowest)
    }

    /// [`Wal::remove_segments_before_blocking`] for async code.
    pub async fn remove_segments_before(&self, segment: u64) -> Result<usize, WalError> {
        let mut removed = 0;
        for rx in self.send_all(|reply| Command::RemoveBefore { segment, reply })? {
            removed += rx.await.map_err(|_| WalError::Closed)??;
        }
        Ok(removed)
    }

    /// Deletes every closed segment older than `segment` (their records are stored elsewhere
    /// now). Returns how many were deleted. A writer's current segment is never deleted.
    pub fn remove_segments_before_blocking(&self, segment: u64) -> Result<usize, WalError> {
        let mut removed = 0;
        for rx in self.send_all(|reply| Command::RemoveBefore { segment, reply })? {
            removed += rx.blocking_recv().map_err(|_| WalError::Closed)??;
        }
        Ok(removed)
    }
}

/// The answer to a command sent to a writer.
type Reply<T> = tokio::sync::oneshot::Receiver<Result<T, WalError>>;

impl Drop for Wal {
    fn drop(&mut self) {
        for w in &mut self.writers {
            drop(w.tx.take()); // the writer syncs and exits when the channel closes
        }
        for w in &mut self.writers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Creates segment `id` with its header, not synced: the writer syncs it, and the directory,
/// when it next syncs (see [`Writer::sync`]).
fn create_segment(fs: &dyn Fs, dir: &Path, id: u64) -> Result<(Box<dyn AppendFile>, u64), WalError> {
    let path = segment_path(dir, id);
    let mut file = fs.open_append(&path).map_err(|e| WalError::io(&path, e))?;
    file.write_all(&segment_header(id)).map_err(|e| WalError::io(&path, e))?;
    Ok((file, SEGMENT_HEADER_LEN))
}

/// Most bytes gathered into one group commit.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let first = match self.config.fsync {
                FsyncPolicy::Interval(d) if self.dirty => {
                    match rx.recv_timeout(d.saturating_sub(self.last_sync.elapsed())) {
                        Ok(c) => c,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let _ = self.sync();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            let mut group = Vec::new();
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append { data, reply } => {
                        bytes += data.len();
                        group.push((data, reply));
                        if bytes < MAX_GROUP_BYTES {
                            next = rx.try_recv().ok();
                        }
                    }
                    other => {
                        self.commit(std::mem::take(&mut group));
                        bytes = 0;
                        self.handle(other);
                        next = rx.try_recv().ok();
                    }
                }
            }
            self.commit(group);
        }
        if self.dirty {
            let _ = self.sync();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Append { .. } => unreachable!("appends are grouped"),
            Command::Sync { reply } => {
                let _ = reply.send(self.sync());
            }
            Command::RemoveBefore { segment, reply } => {
                let _ = reply.send(self.remove_before(segment));
            }
            Command::Rotate { reply } => {
                let result = match &self.poisoned {
                    Some(p) => Err(WalError::Poisoned(p.clone())),
                    None => self.rotate().map(|()| self.segment),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Makes everything written durable: the segments closed since the last sync, the
    /// current one, and the directory when a segment was created since (a head is cut every
    /// few thousand spans, each cut starting a segment per writer: syncing each new segment
    /// and the directory at once cost about three directory fsyncs per head).
    fn sync(&mut self) -> Result<(), WalError> {
        if let Some(p) = &self.poisoned {
            return Err(WalError::Poisoned(p.clone()));
        }
        let synced = (|| {
            for (id, mut closed) in std::mem::take(&mut self.closed_unsynced) {
                closed
                    .sync_data()
                    .map_err(|e| format!("fsync of {} failed: {e}", segment_path(&self.dir, id).display()))?;
            }
            self.file.sync_data().map_err(|e| format!("fsync of {} failed: {e}", self.path.display()))?;
            if self.dir_unsynced {
                self.fs
                    .sync_dir(&self.dir)
                    .map_err(|e| format!("fsync of {} failed: {e}", self.dir.display()))?;
                self.dir_unsynced = false;
            }
            Ok::<(), String>(())
        })();
        match synced {
            Ok(()) => {
                self.dirty = false;
                self.last_sync = Instant::now();
                Ok(())
            }
            Err(msg) => {
                tracing::error!(segment = %self.path.display(), error = %msg, "wal fsync failed; refusing writes");
                self.poisoned = Some(msg.clone());
                Err(WalError::Poisoned(msg))
            }
        }
    }

    fn remove_before(&mut self, segment: u64) -> Result<usize, WalError> {
        let mut removed = 0;
        let old: Vec<u64> = self.own.range(..segment.min(self.segment)).copied().collect();
        for id in old {
            let path = segment_path(&self.dir, id);
            match self.fs.remove(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(WalError::io(&path, e)),
            }
            self.own.remove(&id);
        }
        // A deleted segment needs no sync.
        let own = &self.own;
        self.closed_unsynced.retain(|(id, _)| own.contains(id));
        // The removals are not synced here: a segment is removed once a block holds its
        // records, and recovery skips the segments a block names, so one that comes back after
        // a power loss is not replayed. The next sync of the directory makes them durable.
        Ok(removed)
    }

    /// Closes the current segment and starts a new one. Nothing is synced here: the closed
    /// segment (when written since its last sync), the new one and the directory are synced
    /// at the writer's next sync, as the fsync policy says (`never`: the OS writes them).
    fn rotate(&mut self) -> Result<(), WalError> {
        if let Some(p) = &self.poisoned {
            return Err(WalError::Poisoned(p.clone()));
        }
        let id = self.next_segment.fetch_add(1, Ordering::Relaxed);
        let (file, len) = create_segment(&*self.fs, &self.dir, id)?;
        self.own.insert(id);
        let closed = (self.segment, std::mem::replace(&mut self.file, file));
        self.segment = id;
        self.path = segment_path(&self.dir, id);
        if self.dirty && self.config.fsync != FsyncPolicy::Never {
            self.closed_unsynced.push(closed);
        }
        self.len = len;
        self.dirty = true;
        self.dir_unsynced = true;
        Ok(())
    }

    fn commit(&mut self, group: Vec<PendingAppend>) {
        if group.is_empty() {
            return;
        }
        let fail_all = |group: Vec<PendingAppend>, e: WalError| {
            for (_, reply) in group {
                let _ = reply.send(Err(e.clone()));
            }
        };
        if let Some(p) = &self.poisoned {
            return fail_all(group, WalError::Poisoned(p.clone()));
        }
        // Refuse what can never be written; keep the rest of the group.
        let mut ok = Vec::with_capacity(group.len());
        for (data, reply) in group {
            if data.is_empty() {
                let _ = reply.send(Err(WalError::EmptyRecord));
            } else if data.len() > MAX_RECORD_BYTES {
                let _ = reply.send(Err(WalError::RecordTooLarge(data.len())));
            } else {
                ok.push((data, reply));
            }
        }
        let group = ok;
        if group.is_empty() {
            return;
        }
        let total: u64 = group.iter().map(|(d, _)| FRAME_HEADER_LEN + d.len() as u64).sum();
        if self.len > SEGMENT_HEADER_LEN
            && self.len + total > self.config.segment_bytes
            && let Err(e) = self.rotate()
        {
            return fail_all(group, e);
        }
        let started = Instant::now();
        // Each frame's header, then its record as it came: written together (`writev` on the
        // real file system), the records not copied into one buffer first.
        let headers: Vec<_> = group.iter().map(|(data, _)| frame_header(data)).collect();
        let mut frames: Vec<&[u8]> = Vec::with_capacity(2 * group.len());
        let mut positions = Vec::with_capacity(group.len());
        let mut at = self.len;
        for ((data, _), header) in group.iter().zip(&headers) {
            positions.push(Position { segment: self.segment, offset: at });
            at += FRAME_HEADER_LEN + data.len() as u64;
            frames.extend([&header[..], &data[..]]);
        }
        if let Err(e) = self.file.write_all_vectored(&frames) {
            let err = WalError::io(&self.path, e);
            tracing::warn!(segment = %self.path.display(), error = %err, "wal write failed; cutting back to the last complete record");
            // A short write may have left part of a frame: cut it off so later records follow
            // intact ones, then reopen the file for appending.
            let restored = self
                .fs
                .truncate(&self.path, self.len)
                .and_then(|()| self.fs.open_append(&self.path))
                .map(|f| self.file = f);
            if let Err(e2) = restored {
                self.poisoned =
                    Some(format!("cannot cut back {} after a failed write: {e2}", self.path.display()));
            }
            return fail_all(group, err);
        }
        self.len += total;
        self.dirty = true;
        self.busy.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let must_sync = match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
            FsyncPolicy::Never => false,
        };
        if must_sync && let Err(e) = self.sync() {
            return fail_all(group, e);
        }
        for ((_, reply), pos) in group.into_iter().zip(positions) {
            let _ = reply.send(Ok(pos));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends the frame of `payload` to `out`, as the writer lays frames out.
    fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&frame_header(payload));
        out.extend_from_slice(payload);
    }

    #[test]
    fn header_and_frames_parse_back() {
        let mut bytes = segment_header(7).to_vec();
        encode_frame(b"hello", &mut bytes);
        encode_frame(b"world!", &mut bytes);
        let (records, good, problem) = parse_segment(&bytes, 7);
        assert_eq!(problem, None);
        assert_eq!(good, bytes.len() as u64);
        assert_eq!(records[0], (Position { segment: 7, offset: 24 }, b"hello".to_vec()));
        assert_eq!(records[1].0.offset, 24 + 8 + 5);
        let (_, good, problem) = parse_segment(&bytes, 8);
        assert_eq!((good, problem.as_deref()), (0, Some("segment header corrupt (id or crc mismatch)")));
    }

    /// The thread's CPU clock counts its own work, not the time it sleeps, and agrees with the
    /// scheduler's run time the WAL writers are measured by.
    #[cfg(target_os = "linux")]
    #[test]
    fn thread_cpu_time_counts_work_not_sleep() {
        let before = thread_cpu_nanos().expect("Linux threads have a CPU-time clock");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let slept = thread_cpu_nanos().unwrap() - before;
        let mut x = 0u64;
        let spun = std::time::Instant::now();
        while spun.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = thread_cpu_nanos().unwrap() - before - slept;
        assert!(slept < 100_000_000, "sleeping 200 ms took {slept} ns of CPU");
        assert!(worked > 10_000_000, "spinning 200 ms took only {worked} ns of CPU");
        let by_scheduler = schedstat_run_nanos("/proc/thread-self/schedstat").unwrap();
        let by_clock = thread_cpu_nanos().unwrap();
        assert!(by_scheduler.abs_diff(by_clock) < 50_000_000, "{by_scheduler} against {by_clock}");
    }
}
