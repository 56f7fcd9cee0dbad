//! [`ClickhouseStore`]: the local buffer, the background inserts, and the queries.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rustc_hash::{FxHashMap, FxHashSet};
use skein_model::{AttrValue, Resource, Span, SpanId, SpanKind, TimeRange, TraceId};
use skein_store::red::{RedCell, RedSummary, Sketch};
use skein_store::{
    DependencyLink, Operation, SpanMatcher, SpanStore, StoreError, StoreStats, TraceQuery,
    count_dependencies, dependency_links, synthetic_tags_of,
};
use skein_wal::{FsyncPolicy, Wal, WalConfig};
use tokio::sync::Notify;

use crate::client::{ChError, Client};
use crate::codec::{self, Reader, Writer, secs};
use crate::schema::{
    Features, Layout, MAX_ROW_SPANS, SCHEMA_VERSION, SPAN_NUMBERS, TABLES, TAG_NUMBERS, Topology,
    short_trace_key, trace_key,
};
use crate::sql::{identifier, quote, tuple, unhex};

/// Bytes of an attribute value kept in the `tags` index; longer values are indexed by this
/// prefix, and the whole value is checked on the span itself.
pub const INDEXED_VALUE_BYTES: usize = 128;
/// Most spans sent in one insert.
const MAX_INSERT_SPANS: usize = 100_000;
/// Resource and operation rows remembered as written, per kind, before the memory is reset.
const WRITTEN_CACHE: usize = 100_000;

/// Settings of a [`ClickhouseStore`].
#[derive(Clone, Debug)]
pub struct ClickhouseConfig {
    /// ClickHouse's HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Shard over this cluster of the server's `remote_servers`; one server when `None`.
    pub cluster: Option<String>,
    /// Where the local buffer (a WAL) lives.
    pub buffer_dir: PathBuf,
    /// Writes are refused (as overload) while the buffer holds this many bytes.
    pub buffer_max_bytes: u64,
    pub wal_fsync: FsyncPolicy,
    /// Buffered spans are inserted at least this often …
    pub flush_interval: Duration,
    /// … and as soon as this many are buffered.
    pub flush_spans: usize,
    /// Spans older than this are dropped, a day partition at a time.
    pub retention: Duration,
}

impl ClickhouseConfig {
    pub fn new(url: impl Into<String>, buffer_dir: impl Into<PathBuf>) -> Self {
        ClickhouseConfig {
            url: url.into(),
            database: "skein".into(),
            user: None,
            password: None,
            cluster: None,
            buffer_dir: buffer_dir.into(),
            buffer_max_bytes: 64 * 1024 * 1024,
            wal_fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            flush_interval: Duration::from_secs(1),
            flush_spans: 20_000,
            retention: Duration::from_secs(72 * 3600),
        }
    }
}

/// Why the store could not open; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Config(String),
    #[error("{0}; is ClickHouse running? Point --clickhouse-url at its HTTP interface (default port 8123)")]
    Unreachable(ChError),
    #[error(
        "ClickHouse at {url} refused the credentials of user {user:?}: check --clickhouse-user and --clickhouse-password-file ({message})"
    )]
    Auth { url: String, user: String, message: String },
    #[error("{0}")]
    Cluster(String),
    #[error("{0}")]
    Schema(String),
    #[error("data directory {0} is in use by another skein process; stop it or choose another --data-dir")]
    Locked(PathBuf),
    #[error("cannot open the local buffer in {dir}: {message}")]
    Buffer { dir: PathBuf, message: String },
    #[error("{0}")]
    ClickHouse(ChError),
}

#[derive(Debug)]
struct PendingBatch {
    segment: u64,
    spans: Arc<Vec<Span>>,
    bytes: u64,
}

#[derive(Debug, Default)]
struct Pending {
    batches: Vec<PendingBatch>,
    bytes: u64,
    spans: usize,
}

#[derive(Debug)]
struct Shared {
    config: ClickhouseConfig,
    entry: Client,
    topology: Topology,
    layout: Layout,
    wal: Wal,
    /// Held (shared) by a write from its WAL append until its batch is in `pending`, and
    /// (exclusively) by the flusher while it picks the segments it will deliver, so no
    /// acknowledged batch is in a segment that is removed before the batch is delivered.
    gate: tokio::sync::RwLock<()>,
    /// One delivery at a time (the background loop and a shutdown flush would otherwise
    /// insert the same batches twice).
    flushing: tokio::sync::Mutex<()>,
    pending: RwLock<Pending>,
    wake: Notify,
    stop: Notify,
    resources: Mutex<HashMap<u64, Arc<Resource>>>,
    written_resources: Mutex<HashSet<(u64, u32, usize)>>,
    written_operations: Mutex<HashSet<(String, String, u8, u32)>>,
    /// (resource id, scope name, scope version, day, shard) whose scope is in `resource_tags`.
    written_scopes: Mutex<HashSet<ScopeKey>>,
    spans_written: AtomicU64,
    /// Unix seconds from which `red` holds every span (0: always).
    red_since: u32,
    /// The numbers this node gives the traces of a second (`trace_refs.idx`).
    refs: Mutex<RefNumbers>,
}

/// The numbers a node gives the traces whose spans start in a second (`trace_refs`: a trace
/// is `(second, idx)` in `tag_refs`): counted from 0 per second, so that they are small, above
/// a random byte of the process, so that two nodes (or this node before a restart) rarely give
/// one number in one second. When they do, a search gets both traces as candidates and the
/// exact check drops the wrong one: nothing is missed.
#[derive(Debug)]
struct RefNumbers {
    process: u32,
    /// Next number per second, for the seconds of the last two days seen.
    next: HashMap<u32, u32>,
}

impl RefNumbers {
    const COUNTER_BITS: u32 = 24;
    const KEEP_SECONDS: u32 = 2 * 86_400;

    fn new() -> RefNumbers {
        use std::hash::BuildHasher;
        let random = std::collections::hash_map::RandomState::new().hash_one(SystemTime::now());
        RefNumbers { process: (random as u32) & 0xff, next: HashMap::new() }
    }

    /// The next number of `second`.
    fn take(&mut self, second: u32) -> u32 {
        if self.next.len() > 4 * Self::KEEP_SECONDS as usize {
            let newest = self.next.keys().copied().max().unwrap_or(0);
            self.next.retain(|s, _| s.saturating_add(Self::KEEP_SECONDS) >= newest);
        }
        let next = self.next.entry(second).or_insert(0);
        let counter = *next;
        *next = next.wrapping_add(1);
        self.process << Self::COUNTER_BITS | (counter & ((1 << Self::COUNTER_BITS) - 1))
    }
}

/// Spans in ClickHouse, behind a local durable buffer. See the crate documentation.
#[derive(Debug)]
pub struct ClickhouseStore {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The buffer directory's lock: one process per buffer.
    _lock: std::fs::File,
}

impl Drop for ClickhouseStore {
    fn drop(&mut self) {
        self.shared.stop.notify_waiters();
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl ClickhouseStore {
    /// Connects, creates or migrates the schema on every server, replays the local buffer
    /// and starts the background inserts. Must run inside a Tokio runtime.
    pub async fn open(config: ClickhouseConfig) -> Result<ClickhouseStore, OpenError> {
        identifier(&config.database).map_err(OpenError::Config)?;
        let dir = config.buffer_dir.clone();
        let buffer_error = |message: String| OpenError::Buffer { dir: dir.clone(), message };
        std::fs::create_dir_all(&dir).map_err(|e| buffer_error(e.to_string()))?;
        let lock = skein_wal::fs::lock_dir(&dir).map_err(|e| match e {
            skein_wal::fs::LockError::Locked(_) => OpenError::Locked(dir.clone()),
            e => buffer_error(e.to_string()),
        })?;
        let entry = Client::new(&config.url, config.user.clone(), config.password.clone())
            .map_err(OpenError::Config)?;
        let user = config.user.clone().unwrap_or_else(|| "default".into());
        let classify = |e: ChError| -> OpenError {
            match e {
                ChError::Unreachable { .. } => OpenError::Unreachable(e),
                ChError::Server { ref url, ref message, .. } if e.is_auth() => {
                    OpenError::Auth { url: url.clone(), user: user.clone(), message: message.clone() }
                }
                e => OpenError::ClickHouse(e),
            }
        };
        entry.query("SELECT 1", &[]).await.map_err(classify)?;
        let topology = match &config.cluster {
            Some(name) => Topology::of_cluster(&entry, name).await.map_err(|e| match e {
                crate::schema::TopologyError::Query(ch) => classify(ch),
                other => OpenError::Cluster(other.to_string()),
            })?,
            None => Topology::single(entry.clone()),
        };
        let layout = Layout { database: config.database.clone(), cluster: config.cluster.clone() };
        let mut red_since = 0;
        for shard in &topology.shards {
            for replica in &shard.replicas {
                let since = migrate(replica, &layout).await.map_err(|e| match e {
                    MigrateError::ClickHouse(ch) => match ch {
                        ChError::Unreachable { .. } if config.cluster.is_some() => OpenError::Cluster(format!(
                            "{ch}; every shard's HTTP interface must be reachable at its host from system.clusters and the port of --clickhouse-url"
                        )),
                        ch => classify(ch),
                    },
                    MigrateError::Schema(s) => OpenError::Schema(s),
                })?;
                red_since = red_since.max(since);
            }
        }
        let wal_config = WalConfig {
            fsync: config.wal_fsync,
            segment_bytes: 64 * 1024 * 1024,
            ..WalConfig::new(&config.buffer_dir)
        };
        let (wal, recovery) =
            tokio::task::spawn_blocking(move || Wal::open(wal_config, Arc::new(skein_wal::fs::OsFs)))
                .await
                .map_err(|e| buffer_error(e.to_string()))?
                .map_err(|e| buffer_error(e.to_string()))?;
        let mut pending = Pending::default();
        for (pos, record) in recovery.records {
            match skein_store::codec::decode_spans(&record) {
                Ok(spans) => {
                    pending.bytes += record.len() as u64;
                    pending.spans += spans.len();
                    pending.batches.push(PendingBatch {
                        segment: pos.segment,
                        spans: Arc::new(spans),
                        bytes: record.len() as u64,
                    });
                }
                Err(e) => {
                    tracing::error!(segment = pos.segment, offset = pos.offset, error = %e, "unreadable buffered batch skipped")
                }
            }
        }
        if !pending.batches.is_empty() {
            tracing::info!(spans = pending.spans, "spans from the local buffer will be sent to ClickHouse");
        }
        let shared = Arc::new(Shared {
            config,
            entry,
            topology,
            layout,
            wal,
            gate: tokio::sync::RwLock::new(()),
            flushing: tokio::sync::Mutex::new(()),
            pending: RwLock::new(pending),
            wake: Notify::new(),
            stop: Notify::new(),
            resources: Mutex::new(HashMap::new()),
            written_resources: Mutex::new(HashSet::new()),
            written_operations: Mutex::new(HashSet::new()),
            written_scopes: Mutex::new(HashSet::new()),
            spans_written: AtomicU64::new(0),
            red_since,
            refs: Mutex::new(RefNumbers::new()),
        });
        let flusher = tokio::spawn(flush_loop(Arc::clone(&shared)));
        let retention = tokio::spawn(retention_loop(Arc::clone(&shared)));
        Ok(ClickhouseStore { shared, tasks: vec![flusher, retention], _lock: lock })
    }

    /// Spans acknowledged by this node that are not in ClickHouse yet.
    pub fn buffered_spans(&self) -> usize {
        self.shared.pending.read().spans
    }

    /// Sends everything buffered to ClickHouse now.
    pub async fn flush_now(&self) -> Result<(), StoreError> {
        self.shared.flush_once().await.map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Drops partitions older than the retention now (it also runs hourly).
    pub async fn apply_retention(&self) -> Result<usize, StoreError> {
        self.shared.apply_retention().await.map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

#[derive(Debug)]
enum MigrateError {
    ClickHouse(ChError),
    Schema(String),
}

impl From<ChError> for MigrateError {
    fn from(e: ChError) -> Self {
        MigrateError::ClickHouse(e)
    }
}

/// Brings one server's schema to [`SCHEMA_VERSION`]; refuses a newer one.
/// Creates or migrates the schema on one server. Returns when (unix seconds) the server's RED
/// pre-aggregates begin: 0 for a database created with them, else when the migration that
/// added them ran (spans stored before have none).
async fn migrate(server: &Client, layout: &Layout) -> Result<u32, MigrateError> {
    let version = String::from_utf8_lossy(&server.query("SELECT version()", &[]).await?).trim().to_owned();
    let features = Features::from_version(&version).map_err(MigrateError::Schema)?;
    let db = &layout.database;
    server.query(&format!("CREATE DATABASE IF NOT EXISTS {db}"), &[]).await?;
    server
        .query(
            &format!(
                "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, applied_at DateTime, by String) ENGINE = TinyLog"
            ),
            &[],
        )
        .await?;
    let raw = server
        .query(&format!("SELECT toUInt32(max(version)) FROM {db}.schema_migrations FORMAT RowBinary"), &[])
        .await?;
    let current = raw.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(MigrateError::Schema(format!(
            "the ClickHouse database {db} at {} has Skein schema version {current}, newer than this skein binary's schema version {SCHEMA_VERSION}; run a newer skein (or another --clickhouse-database)",
            server.url()
        )));
    }
    if current < SCHEMA_VERSION {
        for statement in layout.create_statements(&features) {
            server.query(&statement, &[]).await?;
        }
        // The columns of every table of the database on this server, to add those of later
        // versions to tables made by earlier ones.
        let raw = server
            .query(
                &format!(
                    "SELECT table, name FROM system.columns WHERE database = {} FORMAT RowBinary",
                    quote(db)
                ),
                &[],
            )
            .await?;
        let mut r = Reader::new(&raw);
        let mut columns: HashMap<String, Vec<String>> = HashMap::new();
        while !r.is_empty() {
            let bad = |e: codec::DecodeError| MigrateError::Schema(e.to_string());
            let table = r.text().map_err(bad)?.to_owned();
            columns.entry(table).or_default().push(r.text().map_err(bad)?.to_owned());
        }
        let columns = |table: &str| {
            let local = layout.local(table);
            let name = local.rsplit('.').next().expect("db.table");
            columns.get(name).cloned().unwrap_or_default()
        };
        for statement in layout.upgrade_statements(&features, current, columns) {
            server.query(&statement, &[]).await?;
        }
        server
            .query(
                &format!(
                    "INSERT INTO {db}.schema_migrations VALUES ({SCHEMA_VERSION}, now(), {})",
                    quote(concat!("skein ", env!("CARGO_PKG_VERSION")))
                ),
                &[],
            )
            .await?;
        tracing::info!(server = %server.url(), clickhouse = %version, from = current, to = SCHEMA_VERSION, "clickhouse schema migrated");
    }
    // Rows written by schema version 1 (before `red`) exist when version 1 was applied; the
    // pre-aggregates then start when version 2 was.
    let raw = server
        .query(
            &format!(
                "SELECT toUInt32(countIf(version = 1)), toUInt32(minIf(applied_at, version >= 2)) FROM {db}.schema_migrations FORMAT RowBinary"
            ),
            &[],
        )
        .await?;
    let word =
        |i: usize| raw.get(i * 4..i * 4 + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    Ok(match (word(0), word(1)) {
        (Some(0), _) => 0,
        (_, Some(since)) => since,
        _ => u32::MAX,
    })
}

/// The rows of one insert, one `RowBinary` body per table.
#[derive(Default)]
struct Rows {
    resources: Writer,
    resource_tags: Writer,
    operations: Writer,
    traces: Writer,
    span_refs: Writer,
    trace_refs: Writer,
    tag_refs: Writer,
    operation_tags: Writer,
    red: Writer,
    new_resources: Vec<(u64, u32, usize)>,
    new_operations: Vec<(String, String, u8, u32)>,
    new_scopes: Vec<ScopeKey>,
}

/// A span's start as the search index holds it (`span_index` from schema version 7; `span_refs`
/// as its millisecond within the row's second): rounded down to the millisecond.
/// Searches compare it with bounds rounded the same way (a span whose start is at or after a
/// bound has an index start at or after the bound's) and check every candidate exactly.
fn index_start(nanos: u64) -> u64 {
    nanos / 1_000_000 * 1_000_000
}

/// A span's duration as the search index holds it (`span_index` from schema version 7,
/// `span_refs`): rounded down to its six
/// leading binary digits (at most 1/32 below it; a few thousand distinct values, which compress
/// to under two bytes where microseconds took 2.5); compared like [`index_start`].
fn index_duration(nanos: u64) -> u64 {
    const DIGITS: u32 = 6;
    let low = (u64::BITS - nanos.leading_zeros()).saturating_sub(DIGITS);
    nanos >> low << low
}

/// A `tag_refs` row of an insert: service, key, value ([`tag_refs_value`]), second and slot.
type TagRef<'a> = (&'a str, &'a str, Cow<'a, [u8]>, u32, u16);

/// A tag of a search: its condition in the tag indexes (`None` when they hold no row with it
/// in the window), and the other ways a span may have it: SQL on a span's columns, and the
/// same on a `span_refs` row's (true when one of its spans may have it).
type PerTag = (Option<String>, Vec<String>, Vec<String>);

/// A `span_refs` row of an insert: service, operation, kind, second and slot.
type SpanRef<'a> = (&'a str, &'a str, u8, u32, u16);

/// A span in its `span_refs` row: its trace's number, its start's millisecond within the
/// row's second, its duration ([`index_duration`]) and its resource id (written as its place
/// among the row's `resources`).
type SpanRefElement = (u32, u16, u64, u64);

/// The text a search compares an attribute value with (borrowed when it is a string).
fn search_text(v: &AttrValue) -> Cow<'_, str> {
    match v {
        AttrValue::Str(s) => Cow::Borrowed(s.as_str()),
        other => Cow::Owned(other.to_search_string()),
    }
}

/// Writes one `resource_tags` row: `key` = `value` (indexed as [`indexed_value`]) for the
/// resource `id`, on the shard of `shard_key`, on the day of `timestamp`.
fn resource_tag(w: &mut Writer, key: &str, value: &str, id: u64, shard_key: u64, timestamp: u32) {
    w.str(key);
    w.str(indexed_value(value));
    w.buf.extend_from_slice(&id.to_le_bytes());
    w.buf.extend_from_slice(&shard_key.to_le_bytes());
    w.buf.extend_from_slice(&timestamp.to_le_bytes());
}

/// The calls of a dependencies request: the child spans of `children` (what follows `FROM`)
/// that satisfy `window`, joined with their parents in `parents` (what follows `FROM` in the
/// join's subquery) by `trace_id` and `parent_span_id`, counted once per child span for each
/// pair of the parent's and the child's `by` column where they differ.
fn calls_sql(children: &str, parents: &str, by: &str, window: &str) -> String {
    format!(
        "SELECT parent_by, {by}, toUInt64(uniqExact(trace_id, span_id)) FROM {children} \
         ANY INNER JOIN (SELECT trace_id, span_id AS parent_span_id, {by} AS parent_by FROM {parents}) \
         AS parents USING (trace_id, parent_span_id) \
         WHERE {window} AND parent_by != {by} \
         GROUP BY parent_by, {by} FORMAT RowBinary"
    )
}

/// The conditions of the span path of a search in `slice`: on a `span_refs` row (`PREWHERE`:
/// a row that may hold a matching span) and on a span (of `span_refs` flattened, or a row of
/// `span_index` and `search`): in the slice, of the service and operation, in the duration
/// bounds, and for every tag that the tag indexes do not hold in the window, of a resource
/// that has it, of an operation that has it then, or, for `span.kind`, of that kind (tags
/// they hold are checked by trace, [`Shared::span_index_sql`]). Starts and durations from
/// schema version 7 on are rounded down (`index_start`, `index_duration`): lower bounds are
/// rounded the same way (older rows, exact, pass too), upper bounds hold as they are;
/// candidates are checked exactly.
fn span_filters(q: &TraceQuery, slice: TimeRange, service: &str, per_tag: &[PerTag]) -> (String, String) {
    let mut rows = format!("{}{service}", seconds_in(slice));
    let mut cond = format!(
        "{} AND start_ns >= {} AND start_ns < {}{service}",
        seconds_in(slice),
        index_start(slice.start_unix_nano),
        slice.end_unix_nano
    );
    if let Some(o) = &q.operation {
        rows.push_str(&format!(" AND name = {}", quote(o)));
        cond.push_str(&format!(" AND name = {}", quote(o)));
    }
    if let Some(d) = q.min_duration_nanos {
        rows.push_str(&format!(" AND longest >= {}", index_duration(d)));
        cond.push_str(&format!(" AND duration_ns >= {}", index_duration(d)));
    }
    if let Some(d) = q.max_duration_nanos {
        rows.push_str(&format!(" AND shortest <= {d}"));
        cond.push_str(&format!(" AND duration_ns <= {d}"));
    }
    for (c, span, row) in per_tag {
        if c.is_none() {
            cond.push_str(&any_of(span));
            rows.push_str(&any_of(row));
        }
    }
    (rows, cond)
}

/// ` AND (a OR b …)` of SQL conditions; ` AND 0` of none.
fn any_of(alternatives: &[String]) -> String {
    match alternatives {
        [] => " AND 0".to_owned(),
        some => format!(" AND ({})", some.join(" OR ")),
    }
}

/// The `timestamp` (seconds) condition of a time range.
fn seconds_in(range: TimeRange) -> String {
    format!(
        "timestamp >= toDateTime({}) AND timestamp <= toDateTime({})",
        secs(range.start_unix_nano),
        secs(range.end_unix_nano.saturating_sub(1))
    )
}

/// The slices of `window` a search reads, newest first: each ends at the window's end and
/// begins `width` before `newest` (unix seconds: where the newest data is) or the window's end,
/// whichever is earlier; the first is an 8192nd of the window wide (at least a second), and
/// each next one wider by [`next_slice_width`], until one is the whole window. Any `newest`
/// gives the same search results (every slice ends at the window's end, and a slice that
/// holds enough traces holds the newest ones); a good one lets the first slice hold enough.
struct Slices {
    window: TimeRange,
    anchor: u64,
    width: u64,
}

impl Slices {
    fn new(window: TimeRange, newest: u64) -> Slices {
        let anchor =
            window.end_unix_nano.min(newest.saturating_mul(1_000_000_000)).max(window.start_unix_nano);
        let len = window.end_unix_nano.saturating_sub(window.start_unix_nano);
        Slices { window, anchor, width: (len / 8192).max(1_000_000_000) }
    }

    /// The current slice, and whether it is the whole window.
    fn current(&self) -> (TimeRange, bool) {
        let start = self.anchor.saturating_sub(self.width);
        if start <= self.window.start_unix_nano {
            (self.window, true)
        } else {
            (TimeRange { start_unix_nano: start, end_unix_nano: self.window.end_unix_nano }, false)
        }
    }

    /// Moves to the next, wider slice after the current one yielded `found` of the `wanted`.
    fn widen(&mut self, found: usize, wanted: usize) {
        self.width = next_slice_width(self.width, found, wanted);
    }
}

/// How much wider the next slice is: about as much as finding `wanted` traces at the rate the
/// last slice found `found` would take, twice over, and between 4 and 64 times (a value that
/// matches nothing reaches a 2-hour window's end in four slices).
fn next_slice_width(width: u64, found: usize, wanted: usize) -> u64 {
    let factor = (2 * wanted / (found + 1)).clamp(4, 64) as u64;
    width.saturating_mul(factor)
}

/// A resource's instrumentation scope on one day and shard.
type ScopeKey = (u64, String, String, u32, usize);

/// The SQL tuple of the values `want` is looked up as in the tag indexes: the texts of
/// [`indexed_candidates`], and the [`hashed_value`] of each long one (`tag_refs` from schema
/// version 9).
fn indexed_values_sql(want: &str) -> String {
    let hashed = canonical_texts(want)
        .into_iter()
        .filter(|t| t.len() > HASHED_VALUE_BYTES)
        .map(|t| unhex(&hashed_value(&t)));
    tuple(indexed_candidates(want).iter().map(|c| quote(c)).chain(hashed))
}

/// Values longer than this are written into `tag_refs` as their [`hashed_value`] (schema
/// version 9); shorter ones as they are.
const HASHED_VALUE_BYTES: usize = 16;

/// A long value as `tag_refs` holds it from schema version 9 on: the byte 0xFF, which no UTF-8
/// text holds (so no value written as it is can be taken for a hash), then 4 bytes of a hash
/// of the whole value. 36-character session and order ids took about 16 bytes per row, their
/// hashes about 4 (the `value` column: 4.15 -> 1.87 bytes per span at 1M spans of the
/// realistic load). Values that share a hash make false candidates, which the exact check
/// drops; a value is never missed.
fn hashed_value(text: &str) -> [u8; 5] {
    // FNV-1a (stable across nodes and builds), then a mixer so that the low 32 bits depend on
    // every byte.
    let mut h = codec::fnv1a(text.as_bytes());
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    let mut out = [0xff; 5];
    out[1..].copy_from_slice(&(h as u32).to_le_bytes());
    out
}

/// A value (a search text) as `tag_refs` holds it: itself, or its hash when it is long.
fn tag_refs_value(text: Cow<'_, str>) -> Cow<'_, [u8]> {
    if text.len() > HASHED_VALUE_BYTES {
        return Cow::Owned(hashed_value(&text).to_vec());
    }
    match text {
        Cow::Borrowed(b) => Cow::Borrowed(b.as_bytes()),
        Cow::Owned(o) => Cow::Owned(o.into_bytes()),
    }
}

/// Splits sorted numbers into runs whose steps fit a `UInt16`, of at most 65,535 numbers (so
/// that a `span_refs` row's places among its resources fit a `UInt16` too): each run is one
/// row of `tag_refs` or `span_refs` ([`write_numbers`]). Only a node that numbers more than
/// 65,535 traces in a second (or a value of traces far apart in one) needs more than one.
fn number_runs(sorted: &[u32]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..sorted.len() {
        if sorted[i] - sorted[i - 1] > u32::from(u16::MAX) || i - start == usize::from(u16::MAX) {
            runs.push(start..i);
            start = i;
        }
    }
    if !sorted.is_empty() {
        runs.push(start..sorted.len());
    }
    runs
}

/// Writes the columns `first, first_high, steps` of a run of sorted numbers
/// ([`number_runs`]): the first number's low and high 16 bits (the high ones are the node's
/// random byte and almost always zeros: they compress to nothing), then each number's
/// distance from the one before. Most steps are small; all as `UInt16`s instead of the
/// `UInt32`s of version 8, `tag_refs`' numbers take 3.2 instead of 4.1 bytes per span (1M
/// spans of the realistic load).
fn write_numbers(w: &mut Writer, run: &[u32]) {
    w.buf.extend_from_slice(&(run[0] as u16).to_le_bytes());
    w.buf.extend_from_slice(&((run[0] >> 16) as u16).to_le_bytes());
    codec::array(w, run.windows(2), |w, pair| {
        w.buf.extend_from_slice(&((pair[1] - pair[0]) as u16).to_le_bytes())
    });
}

/// An attribute value as the `tags` index holds it: its search text, cut to
/// [`INDEXED_VALUE_BYTES`] on a character boundary.
fn indexed_value(text: &str) -> &str {
    if text.len() <= INDEXED_VALUE_BYTES {
        return text;
    }
    let mut end = INDEXED_VALUE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Every indexed text a query value may be stored as: itself, and the canonical text of the
/// integer, float or boolean it parses as (a query for `500` finds an `Int(500)`, stored as
/// `500`; `1.50` finds a `Double(1.5)`, stored as `1.5`).
fn indexed_candidates(want: &str) -> Vec<String> {
    let mut out: Vec<String> = canonical_texts(want).iter().map(|t| indexed_value(t).to_owned()).collect();
    out.sort();
    out.dedup();
    out
}

/// A query value and the canonical texts of the integer, float or boolean it parses as.
fn canonical_texts(want: &str) -> Vec<String> {
    let mut out = vec![want.to_owned()];
    if let Ok(i) = want.parse::<i64>() {
        out.push(i.to_string());
    }
    if let Ok(f) = want.parse::<f64>() {
        out.push(f.to_string());
    }
    if let Ok(b) = want.parse::<bool>() {
        out.push(b.to_string());
    }
    out
}

/// The share of an operation's spans in a batch (in tenths) that must have one value of a key
/// for it to be indexed once for the operation instead of once per trace.
const OPERATION_LEVEL_TENTHS: u32 = 9;

/// Span attributes that (almost) every span of an operation in the batch has with one value
/// (`OPERATION_LEVEL_TENTHS`, and at least two spans): ports, peers, methods, routes, RPC and
/// database systems. Each is written once into `operation_tags` (with the time the batch's
/// spans of the operation cover) and returned, so that no `tag_refs` row is written for it;
/// a search for it reads the operation's `span_refs` rows of that time, and the exact check
/// drops the few spans without it. Values shared by fewer spans stay in `tag_refs`.
fn operation_tags<'a>(
    spans: &[&'a Span],
    w: &mut Writer,
) -> FxHashSet<(&'a str, &'a str, &'a str, Cow<'a, str>)> {
    // Per operation: spans, first and last second.
    let mut ops: FxHashMap<(&'a str, &'a str), (u32, u32, u32)> = FxHashMap::default();
    let mut values: FxHashMap<(&'a str, &'a str, &'a str, Cow<'a, str>), u32> = FxHashMap::default();
    for span in spans {
        let key = (span.service_name(), span.name.as_str());
        let ts = secs(span.start_time_unix_nano);
        let op = ops.entry(key).or_insert((0, ts, ts));
        op.0 += 1;
        op.1 = op.1.min(ts);
        op.2 = op.2.max(ts);
        for kv in &span.attributes {
            let v = match search_text(&kv.value) {
                Cow::Borrowed(b) => Cow::Borrowed(indexed_value(b)),
                Cow::Owned(o) => Cow::Owned(indexed_value(&o).to_owned()),
            };
            *values.entry((key.0, key.1, kv.key.as_str(), v)).or_default() += 1;
        }
    }
    let mut out = FxHashSet::default();
    for (value, n) in values {
        let (count, first, last) = ops[&(value.0, value.1)];
        if n >= 2 && n * 10 >= count * OPERATION_LEVEL_TENTHS {
            w.str(value.2);
            w.str(&value.3);
            w.str(value.0);
            w.str(value.1);
            w.buf.extend_from_slice(&first.to_le_bytes());
            w.buf.extend_from_slice(&last.to_le_bytes());
            out.insert(value);
        }
    }
    out
}

impl Shared {
    fn build_rows<'a>(&self, spans: impl Iterator<Item = &'a Span>) -> Rows {
        let spans: Vec<&'a Span> = spans.collect();
        let mut rows = Rows::default();
        let operation_level = operation_tags(&spans, &mut rows.operation_tags);
        let mut encoded: FxHashMap<*const Resource, (u64, Vec<u8>)> = FxHashMap::default();
        // Distinct (trace, service, key, indexed value) of this insert, borrowed from the spans.
        let mut seen_tags: FxHashSet<(TraceId, &'a str, &'a str, Cow<'a, [u8]>)> = FxHashSet::default();
        // The number of each (trace, second its spans start in) of the insert (`trace_refs`).
        let mut numbers: FxHashMap<(TraceId, u32), (u32, u32, u16)> = FxHashMap::default();
        let mut refs = self.refs.lock();
        // `tag_refs` rows: (service, key, indexed value, second, slot) -> the traces' numbers.
        let mut tag_refs: FxHashMap<TagRef<'a>, Vec<u32>> = FxHashMap::default();
        let mut batch_ops: FxHashSet<(&'a str, &'a str, u8, u32)> = FxHashSet::default();
        let written_res = self.written_resources.lock();
        let written_ops = self.written_operations.lock();
        let written_scopes = self.written_scopes.lock();
        let mut batch_scopes: FxHashSet<(u64, &'a str, &'a str, u32, usize)> = FxHashSet::default();
        let mut payload = Vec::new();
        // The insert's spans of each trace, with their resource ids (`traces` rows).
        let mut by_trace: FxHashMap<TraceId, Vec<(&'a Span, u64)>> = FxHashMap::default();
        let mut red = RedSummary::default();
        let mut span_refs: FxHashMap<SpanRef<'a>, Vec<SpanRefElement>> = FxHashMap::default();
        for span in spans {
            let tid = span.trace_id.as_bytes();
            let key = trace_key(tid);
            let (short_key, slot, shard) =
                (short_trace_key(tid), self.topology.slot_of(key), self.topology.shard_of(key));
            let ts = secs(span.start_time_unix_nano);
            let day = ts / 86_400;
            let (idx, ..) =
                *numbers.entry((span.trace_id, ts)).or_insert_with(|| (refs.take(ts), short_key, slot));
            let (res_id, res_bytes) = encoded.entry(Arc::as_ptr(&span.resource)).or_insert_with(|| {
                let bytes = codec::encode_resource(&span.resource);
                (codec::resource_id(&bytes), bytes)
            });
            let res_id = *res_id;
            let res_key = (res_id, day, shard);
            if !written_res.contains(&res_key) && !rows.new_resources.contains(&res_key) {
                let w = &mut rows.resources;
                w.buf.extend_from_slice(&res_id.to_le_bytes());
                w.buf.extend_from_slice(&key.to_le_bytes());
                w.buf.extend_from_slice(&ts.to_le_bytes());
                w.bytes(res_bytes);
                rows.new_resources.push(res_key);
                // The resource's attributes are indexed once per resource, day and shard (not
                // once per trace): a search finds its spans by `search.resource_id`.
                for kv in &span.resource.attributes {
                    resource_tag(&mut rows.resource_tags, &kv.key, &search_text(&kv.value), res_id, key, ts);
                }
            }
            // The span's instrumentation scope is indexed once per resource (and day and shard)
            // too: a search for `otel.scope.name` finds the spans of the resources that have
            // it, and the exact check keeps those of the scope.
            let scope = &span.scope;
            if (!scope.name.is_empty() || !scope.version.is_empty())
                && batch_scopes.insert((res_id, &scope.name, &scope.version, day, shard))
            {
                let scope_key = (res_id, scope.name.to_string(), scope.version.to_string(), day, shard);
                if !written_scopes.contains(&scope_key) {
                    for (k, v) in [("otel.scope.name", &scope.name), ("otel.scope.version", &scope.version)] {
                        if !v.is_empty() {
                            resource_tag(&mut rows.resource_tags, k, v, res_id, key, ts);
                        }
                    }
                    rows.new_scopes.push(scope_key);
                }
            }
            let service = span.service_name();
            if batch_ops.insert((service, &span.name, span.kind.code(), day)) {
                let op_key = (service.to_owned(), span.name.to_string(), span.kind.code(), day);
                if !written_ops.contains(&op_key) {
                    let w = &mut rows.operations;
                    w.str(service);
                    w.str(&span.name);
                    w.u8(span.kind.code());
                    w.buf.extend_from_slice(&(day.min(u16::MAX as u32) as u16).to_le_bytes());
                    rows.new_operations.push(op_key);
                }
            }

            by_trace.entry(span.trace_id).or_default().push((span, res_id));

            let millisecond = (span.start_time_unix_nano / 1_000_000 % 1_000) as u16;
            span_refs.entry((service, &span.name, span.kind.code(), ts, slot)).or_default().push((
                idx,
                millisecond,
                index_duration(span.duration_nanos()),
                res_id,
            ));

            let mut tag = |k: &'a str, v: Cow<'a, str>| {
                let v = tag_refs_value(v);
                if !seen_tags.contains(&(span.trace_id, service, k, Cow::Borrowed(v.as_ref()))) {
                    tag_refs.entry((service, k, v.clone(), ts, slot)).or_default().push(idx);
                    seen_tags.insert((span.trace_id, service, k, v));
                }
            };
            for kv in &span.attributes {
                let v = search_text(&kv.value);
                let key = (service, span.name.as_str(), kv.key.as_str(), Cow::Borrowed(indexed_value(&v)));
                if operation_level.is_empty() || !operation_level.contains(&key) {
                    tag(&kv.key, v);
                }
            }
            for e in &span.events {
                tag("event", Cow::Borrowed(&e.name));
                for kv in &e.attributes {
                    tag(&kv.key, search_text(&kv.value));
                }
            }
            // `span.kind` is the `kind` column of `search`; the scope is in `resource_tags`.
            for (k, v) in synthetic_tags_of(span)
                .filter(|(k, _)| !matches!(*k, "span.kind" | "otel.scope.name" | "otel.scope.version"))
            {
                tag(k, Cow::Borrowed(v));
            }
            red.add(span);
        }
        write_red_rows(&red, &mut rows.red);
        drop(refs);
        let (mut numbers_of_row, mut resources_of_row) = (Vec::new(), Vec::new());
        for ((service, name, kind, ts, slot), mut elements) in span_refs {
            // By number (the steps are small), then by start.
            elements.sort_unstable();
            numbers_of_row.clear();
            numbers_of_row.extend(elements.iter().map(|e| e.0));
            for run in number_runs(&numbers_of_row) {
                let w = &mut rows.span_refs;
                w.str(service);
                w.str(name);
                w.u8(kind);
                w.buf.extend_from_slice(&ts.to_le_bytes());
                write_numbers(w, &numbers_of_row[run.clone()]);
                let elements = &elements[run];
                codec::array(w, elements.iter(), |w, e| w.buf.extend_from_slice(&e.1.to_le_bytes()));
                codec::array(w, elements.iter(), |w, e| w.buf.extend_from_slice(&e.2.to_le_bytes()));
                // The row's resources once, and each span's as its place among them (at most
                // 65,535: a run has no more spans).
                resources_of_row.clear();
                resources_of_row.extend(elements.iter().map(|e| e.3));
                resources_of_row.sort_unstable();
                resources_of_row.dedup();
                codec::array(w, resources_of_row.iter(), |w, id| w.buf.extend_from_slice(&id.to_le_bytes()));
                codec::array(w, elements.iter(), |w, e| {
                    let place = resources_of_row.binary_search(&e.3).expect("a resource of the row") + 1;
                    w.buf.extend_from_slice(&(place as u16).to_le_bytes());
                });
                let longest = elements.iter().map(|e| e.2).max().expect("a run is not empty");
                let shortest = elements.iter().map(|e| e.2).min().expect("a run is not empty");
                w.buf.extend_from_slice(&longest.to_le_bytes());
                w.buf.extend_from_slice(&shortest.to_le_bytes());
                w.buf.extend_from_slice(&slot.to_le_bytes());
            }
        }
        for (trace_id, mut spans) in by_trace {
            // By start: the starts then grow within the row, and a parent mostly comes first.
            spans.sort_by_key(|(span, _)| span.start_time_unix_nano);
            for row in spans.chunks(MAX_ROW_SPANS) {
                codec::encode_trace_row(&mut rows.traces, &trace_id, row, &mut payload);
            }
        }
        for ((_, ts), (idx, short_key, slot)) in numbers {
            let w = &mut rows.trace_refs;
            w.buf.extend_from_slice(&ts.to_le_bytes());
            w.buf.extend_from_slice(&idx.to_le_bytes());
            w.buf.extend_from_slice(&short_key.to_le_bytes());
            w.buf.extend_from_slice(&slot.to_le_bytes());
        }
        for ((service, key, value, ts, slot), mut idxs) in tag_refs {
            // Sorted and written as steps ([`write_numbers`]; read back with `arrayCumSum`): a
            // value many traces share takes a few bits per trace, as most steps are small.
            idxs.sort_unstable();
            for run in number_runs(&idxs) {
                let w = &mut rows.tag_refs;
                w.str(key);
                w.bytes(&value);
                w.str(service);
                w.buf.extend_from_slice(&ts.to_le_bytes());
                // `idxs` (version 8) is empty.
                w.varint(0);
                write_numbers(w, &idxs[run]);
                w.buf.extend_from_slice(&slot.to_le_bytes());
            }
        }
        rows
    }

    fn insert_settings(&self) -> &'static [(&'static str, &'static str)] {
        if self.layout.cluster.is_some() { &[("insert_distributed_sync", "1")] } else { &[] }
    }

    async fn insert(&self, rows: Rows) -> Result<(), ChError> {
        // In the order of `TABLES` (the tables written; the older ones after them are only read).
        let written = [
            ("id, shard_key, timestamp, payload", rows.resources.buf),
            ("key, value, id, shard_key, timestamp", rows.resource_tags.buf),
            ("service, name, kind, date", rows.operations.buf),
            (
                "trace_id, timestamp, seconds, trace_start, span_ids, parents, parent_ids, starts, resource_ids, payloads",
                rows.traces.buf,
            ),
            (
                "service, name, kind, timestamp, first, first_high, steps, starts, durations, resources, resource_places, longest, shortest, slot",
                rows.span_refs.buf,
            ),
            ("timestamp, idx, trace_key, slot", rows.trace_refs.buf),
            ("key, value, service, timestamp, idxs, first, first_high, steps, slot", rows.tag_refs.buf),
            ("key, value, service, name, timestamp, last", rows.operation_tags.buf),
            (
                "service, name, kind, minute, calls, errors, zeros, latencyMap.bucket, latencyMap.count",
                rows.red.buf,
            ),
        ];
        for (table, (cols, body)) in TABLES.iter().zip(written) {
            if body.is_empty() {
                continue;
            }
            let sql = format!("INSERT INTO {} ({cols}) FORMAT RowBinary", self.layout.table(table));
            self.entry.insert(&sql, body, self.insert_settings()).await?;
        }
        remember(&self.written_resources, rows.new_resources);
        remember(&self.written_operations, rows.new_operations);
        remember(&self.written_scopes, rows.new_scopes);
        Ok(())
    }

    /// Delivers every batch whose WAL segment is complete, then removes those segments.
    async fn flush_once(&self) -> Result<(), ChError> {
        let _one = self.flushing.lock().await;
        let (boundary, batches) = {
            let _gate = self.gate.write().await;
            if self.pending.read().batches.is_empty() {
                return Ok(());
            }
            let boundary = match self.wal.rotate().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot rotate the local buffer");
                    return Ok(());
                }
            };
            let p = self.pending.read();
            let batches: Vec<Arc<Vec<Span>>> =
                p.batches.iter().filter(|b| b.segment < boundary).map(|b| Arc::clone(&b.spans)).collect();
            (boundary, batches)
        };
        let mut start = 0;
        while start < batches.len() {
            let mut end = start;
            let mut n = 0;
            while end < batches.len() && (n == 0 || n + batches[end].len() <= MAX_INSERT_SPANS) {
                n += batches[end].len();
                end += 1;
            }
            let chunk = &batches[start..end];
            let rows = self.build_rows(chunk.iter().flat_map(|b| b.iter()));
            self.insert(rows).await?;
            let mut p = self.pending.write();
            let mut freed = (0u64, 0usize);
            p.batches.retain(|b| {
                let delivered = chunk.iter().any(|c| Arc::ptr_eq(c, &b.spans));
                if delivered {
                    freed.0 += b.bytes;
                    freed.1 += b.spans.len();
                }
                !delivered
            });
            p.bytes -= freed.0;
            p.spans -= freed.1;
            start = end;
        }
        if let Err(e) = self.wal.remove_segments_before(boundary).await {
            tracing::warn!(error = %e, "cannot remove delivered buffer segments; they will be sent again");
        }
        Ok(())
    }

    /// Runs `sql` on shard number `shard` (an index into the topology), trying its replicas
    /// in turn.
    async fn query_shard(&self, shard: usize, sql: &str) -> Result<Vec<u8>, StoreError> {
        let mut last = None;
        for replica in &self.topology.shards[shard].replicas {
            match replica.query(sql, &[]).await {
                Ok(rows) => return Ok(rows),
                Err(e) => last = Some(e),
            }
        }
        Err(read_error(last.expect("a shard has at least one replica")))
    }

    async fn query(&self, sql: &str) -> Result<Vec<u8>, StoreError> {
        self.query_with(sql, &[]).await
    }

    /// [`Self::query`] with more settings.
    async fn query_with(&self, sql: &str, settings: &[(&str, &str)]) -> Result<Vec<u8>, StoreError> {
        let mut settings = settings.to_vec();
        // Lists of ids and key ranges make long statements: allow the statement's size (some
        // servers parse only a few kilobytes by default).
        let size = (sql.len() + 4096).to_string();
        if sql.len() > 4096 {
            settings.push(("max_query_size", &size));
        }
        if self.layout.cluster.is_some() {
            // Subqueries run on each shard against its local tables: exact, as a trace's
            // rows are all on one shard.
            settings.push(("distributed_product_mode", "local"));
        }
        self.entry.query(sql, &settings).await.map_err(read_error)
    }

    /// Resources by id: from the cache, else from `shard`'s local table, or through the
    /// entry server when no shard is given.
    async fn resources(
        &self,
        ids: HashSet<u64>,
        shard: Option<usize>,
    ) -> Result<HashMap<u64, Arc<Resource>>, StoreError> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.resources.lock();
            for id in ids {
                match cache.get(&id) {
                    Some(r) => {
                        out.insert(id, Arc::clone(r));
                    }
                    None => missing.push(id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let table = match shard {
            Some(_) => self.layout.local("resources"),
            None => self.layout.table("resources"),
        };
        let sql = format!(
            "SELECT id, any(payload) FROM {table} WHERE id IN {} GROUP BY id FORMAT RowBinary",
            tuple(missing.iter().map(|id| id.to_string()))
        );
        let rows = match shard {
            Some(s) => self.query_shard(s, &sql).await?,
            None => self.query(&sql).await?,
        };
        let mut r = Reader::new(&rows);
        let mut cache = self.resources.lock();
        if cache.len() > WRITTEN_CACHE {
            cache.clear();
        }
        while !r.is_empty() {
            let id = u64::from_le_bytes(r.array().map_err(corrupt)?);
            let res = Arc::new(codec::decode_resource(r.slice().map_err(corrupt)?).map_err(corrupt)?);
            cache.insert(id, Arc::clone(&res));
            out.insert(id, res);
        }
        Ok(out)
    }

    /// Decodes rows of [`Self::trace_rows`] into spans grouped by trace.
    async fn decode_span_rows(
        &self,
        rows: &[u8],
        shard: Option<usize>,
    ) -> Result<HashMap<TraceId, Vec<Span>>, StoreError> {
        let mut raw = Vec::new();
        let mut r = Reader::new(rows);
        while !r.is_empty() {
            codec::decode_trace_row(&mut r, &mut raw).map_err(corrupt)?;
        }
        let ids: HashSet<u64> = raw.iter().map(|(_, res, _)| *res).collect();
        let resources = self.resources(ids, shard).await?;
        let mut out: HashMap<TraceId, Vec<Span>> = HashMap::new();
        for (row, res, payload) in raw {
            let resource = resources.get(&res).cloned().ok_or_else(|| {
                StoreError::Internal(format!("resource {res:016x} of a span is missing in ClickHouse"))
            })?;
            out.entry(row.trace_id)
                .or_default()
                .push(codec::decode_payload(payload, row, resource).map_err(corrupt)?);
        }
        Ok(out)
    }

    /// The statement that reads the traces whose ids satisfy `ids` (a condition on `trace_id`,
    /// checked first) as rows of `traces` (schema version 8), and the `spans` rows of older
    /// versions grouped by trace into the same shape: `trace_id, trace_start, span_ids,
    /// parents, parent_ids, starts, resource_ids, payloads` ([`codec::decode_trace_row`]).
    /// Skein turns the arrays into spans itself: ClickHouse flattening them (`ARRAY JOIN`)
    /// took about twice as long per trace. On this server's local tables when `local`.
    fn trace_rows(&self, local: bool, ids: &str) -> String {
        let table = |t: &str| if local { self.layout.local(t) } else { self.layout.table(t) };
        format!(
            "SELECT trace_id, trace_start, span_ids, parents, parent_ids, starts, resource_ids, payloads \
             FROM {} PREWHERE {ids} UNION ALL SELECT trace_id, toUInt64(0), groupArray(span_id), \
             groupArray(toUInt16(0)), groupArray(parent_span_id), groupArray(start_ns), \
             groupArray(resource_id), groupArray(payload) FROM {} PREWHERE {ids} GROUP BY trace_id \
             FORMAT RowBinary",
            table("traces"),
            table("spans"),
        )
    }

    /// A subquery of span rows `trace_id, span_id, parent_span_id, start_ns, resource_id` from
    /// `traces` (schema version 8: its arrays joined, places turned back into parent ids,
    /// starts added to the row's) and `spans` (the rows of older versions), for dependencies.
    /// Keeps the spans that start in `starts` (not empty; rows and parts by their seconds
    /// first) and satisfy `and` (a condition on the output columns, from ` AND`).
    fn span_rows(&self, starts: std::ops::Range<u64>, and: &str) -> String {
        let (from, to) = (secs(starts.start), secs(starts.end - 1));
        let in_spans = format!("timestamp >= toDateTime({from}) AND timestamp <= toDateTime({to})");
        let in_rows = format!("timestamp <= toDateTime({to}) AND timestamp + seconds >= toDateTime({from})");
        let starts = format!("start_ns >= {} AND start_ns < {}", starts.start, starts.end);
        format!(
            "(SELECT trace_id, span_id, parent_span_id, start_ns, resource_id FROM \
             (SELECT trace_id, span_id, if(p = 0, outside, span_ids[p]) AS parent_span_id, \
             trace_start + st AS start_ns, resource_id FROM {} ARRAY JOIN span_ids AS span_id, \
             parents AS p, parent_ids AS outside, starts AS st, resource_ids AS resource_id \
             WHERE {in_rows}) WHERE {starts}{and} \
             UNION ALL SELECT trace_id, span_id, parent_span_id, start_ns, resource_id FROM {} \
             WHERE {in_spans} AND {starts}{and})",
            self.layout.table("traces"),
            self.layout.table("spans"),
        )
    }

    /// Whole traces from ClickHouse (through the Distributed table) and the buffer.
    async fn fetch_traces(&self, ids: &[TraceId]) -> Result<HashMap<TraceId, Vec<Span>>, StoreError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let list = tuple(chunk.iter().map(|t| unhex(t.as_bytes())));
            // PREWHERE: the granules the primary key selects are checked by `trace_id` first, and
            // the payloads read only where an id is (every part's index selects granules of its
            // own: at 10M spans in 8 parts a WHERE read 42 MB for 25 traces, a PREWHERE 1.9 MB).
            let sql = self.trace_rows(false, &format!("trace_id IN {list}"));
            let rows = self.query(&sql).await?;
            out.extend(self.decode_span_rows(&rows, None).await?);
        }
        let wanted: HashSet<TraceId> = ids.iter().copied().collect();
        self.add_pending(&mut out, |t| wanted.contains(t));
        for spans in out.values_mut() {
            dedup(spans);
        }
        Ok(out)
    }

    fn add_pending(&self, out: &mut HashMap<TraceId, Vec<Span>>, want: impl Fn(&TraceId) -> bool) {
        let p = self.pending.read();
        for b in &p.batches {
            for s in b.spans.iter() {
                if want(&s.trace_id) {
                    out.entry(s.trace_id).or_default().push(s.clone());
                }
            }
        }
    }

    /// Candidates when every tag is a span or event attribute (or a synthetic tag other than
    /// `span.kind` and the scope's): the key range of the first tag in the tag index,
    /// intersected with the others'. The index is `tag_refs` (trace numbers of an insert,
    /// turned into 4-byte trace keys by `trace_refs`; schema version 8) and, for rows written
    /// before, `tag_index` (4-byte trace keys, versions 5 to 7), `trace_tags` (8-byte keys,
    /// version 4) and `tags` (trace ids): all are asked, and the keys found are turned into the
    /// ids of the traces that have them by a primary-key range read of `spans`.
    async fn candidates_from_tags(
        &self,
        q: &TraceQuery,
        limit: usize,
        time: &str,
        service: &str,
    ) -> Result<Vec<TraceId>, StoreError> {
        let Some(((k0, v0), rest)) = q.tags.split_first() else { return Ok(Vec::new()) };
        let cond = |k: &str, v: &str| {
            format!("key = {} AND value IN {} AND {time}", quote(k), indexed_values_sql(v))
        };
        // Every further tag, in any of the indexes, for rows whose 4-byte trace key is `key`.
        let also = |key: &str| {
            rest.iter()
                .map(|(k, v)| format!(" AND {}", self.in_tag_index(key, &cond(k, v), time)))
                .collect::<String>()
        };
        let first = cond(k0, v0);
        let [tag_index, trace_tags, tags, trace_refs] =
            ["tag_index", "trace_tags", "tags", "trace_refs"].map(|t| self.layout.table(t));
        // The three indexes in one statement (one round trip, which on a cluster costs more
        // than an empty lookup): the newest `limit` of each, as (key length, key, id, time).
        let none = "toFixedString(unhex('00000000000000000000000000000000'), 16)";
        let newest = |len: u8, key: &str, id: &str, group: &str, table: &str, short: &str| {
            format!(
                "SELECT * FROM (SELECT toUInt8({len}) AS len, {key} AS k, {id} AS id, toUInt64(max(timestamp)) AS t \
                 FROM {table} WHERE {first}{service}{} GROUP BY {group} ORDER BY t DESC LIMIT {limit})",
                also(short)
            )
        };
        let tag_refs = self.layout.table("tag_refs");
        // `tag_refs`' numbers of the traces with the first tag, newest first, at most `cap` of
        // them, as `trace_refs` rows (a primary-key lookup per second and number) and so as
        // 4-byte keys. Each number costs a lookup, so a value that many traces have looks up
        // only the newest numbers: enough for `limit` traces, unless the other tags drop
        // them, when the next round looks up sixteen times as many (all of them at last).
        let mut cap = (limit * 4).max(256);
        let mut total = None;
        loop {
            let refs = self.numbered(
                time,
                &format!("{first}{service}"),
                &format!(" ORDER BY timestamp DESC LIMIT {cap}"),
            );
            // How many numbers the first tag has (to know whether `cap` left some out): asked
            // in the first round only.
            let count = match total {
                None => format!(
                    " UNION ALL SELECT toUInt8(0) AS len, toUInt64(count()) AS k, {none} AS id, toUInt64(0) AS t \
                     FROM {tag_refs} ARRAY JOIN {TAG_NUMBERS} AS n WHERE {first}{service}"
                ),
                Some(_) => String::new(),
            };
            let sql = [
                newest(4, "toUInt64(trace_key)", none, "trace_key", &tag_index, "trace_key"),
                format!(
                    "SELECT * FROM (SELECT toUInt8(4) AS len, toUInt64(trace_key) AS k, {none} AS id, \
                     toUInt64(max(timestamp)) AS t FROM {trace_refs} WHERE {refs}{} GROUP BY trace_key \
                     ORDER BY t DESC LIMIT {limit})",
                    also("trace_key")
                ),
                newest(8, "trace_key", none, "trace_key", &trace_tags, "toUInt32(trace_key)"),
                newest(16, "toUInt64(0)", "trace_id", "trace_id", &tags, "reinterpretAsUInt32(trace_id)"),
            ]
            .join(" UNION ALL ")
                + &count;
            let (ids, counted) = self.newest_traces(&sql, limit).await?;
            let numbers = *total.get_or_insert(counted);
            if ids.len() >= limit || numbers <= cap as u64 {
                return Ok(ids);
            }
            cap = (cap as u64).saturating_mul(16).min(numbers) as usize;
        }
    }

    /// Runs `sql`, whose rows are `(key length, key, trace id, time)`: a trace id (length 16)
    /// or the 4- or 8-byte key of traces (the first bytes of their ids, little-endian), and
    /// returns the ids of the newest `limit` traces; a key stands for every trace that has it
    /// (read from `spans` by primary-key ranges), at the key's time. A row of length 0 holds a
    /// count in its key (added up and returned with the ids).
    async fn newest_traces(&self, sql: &str, limit: usize) -> Result<(Vec<TraceId>, u64), StoreError> {
        let rows = self.query(&format!("{sql} FORMAT RowBinary")).await?;
        let mut found: Vec<(u64, TraceId)> = Vec::new();
        let mut prefixes: HashMap<(usize, u64), u64> = HashMap::new();
        let mut count = 0;
        let mut r = Reader::new(&rows);
        while !r.is_empty() {
            let len = r.u8().map_err(corrupt)?;
            let key = u64::from_le_bytes(r.array().map_err(corrupt)?);
            let id: [u8; 16] = r.array().map_err(corrupt)?;
            let t = u64::from_le_bytes(r.array().map_err(corrupt)?);
            match len {
                16 => found.push((
                    t,
                    TraceId::from_bytes(id)
                        .map_err(|e| corrupt(codec::DecodeError(format!("trace id: {e}"))))?,
                )),
                4 | 8 => {
                    prefixes.insert((usize::from(len), key), t);
                }
                0 => count += key,
                other => return Err(corrupt(codec::DecodeError(format!("unexpected key length {other}")))),
            }
        }
        // A key is the first 4 or 8 bytes of its traces' ids (little-endian): one id range.
        // (Reading the traces' spans by these ranges at once, with the ranges as PREWHERE, was
        // measured slower on a 2-shard cluster at 10M spans: 58 ms per shard against 33 ms for
        // the ids and 9 ms for their spans.)
        let keys: Vec<(usize, u64)> = prefixes.keys().copied().collect();
        for chunk in keys.chunks(200) {
            let ranges = chunk
                .iter()
                .map(|(len, key)| {
                    let mut lo = [0u8; 16];
                    lo[..*len].copy_from_slice(&key.to_le_bytes()[..*len]);
                    let mut hi = [0xffu8; 16];
                    hi[..*len].copy_from_slice(&key.to_le_bytes()[..*len]);
                    format!("(trace_id >= {} AND trace_id <= {})", unhex(&lo), unhex(&hi))
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            // The ranges select granules by the primary key; the first four bytes, checked
            // first (PREWHERE) against a set, drop most of their rows cheaply (a 2-shard
            // cluster at 10M spans: 46 -> 34 ms for 25 keys).
            let first_bytes = tuple(chunk.iter().map(|(_, key)| (*key as u32).to_string()));
            let ids_of = |table: &str| {
                format!(
                    "SELECT DISTINCT trace_id FROM {} PREWHERE reinterpretAsUInt32(trace_id) IN {first_bytes} \
                     WHERE {ranges}",
                    self.layout.table(table)
                )
            };
            let rows = self
                .query(&format!("{} UNION ALL {} FORMAT RowBinary", ids_of("traces"), ids_of("spans")))
                .await?;
            let mut r = Reader::new(&rows);
            while !r.is_empty() {
                let id = codec::trace_id(&mut r).map_err(corrupt)?;
                let short = (4, u64::from(short_trace_key(id.as_bytes())));
                if let Some(t) = prefixes.get(&short).or_else(|| prefixes.get(&(8, trace_key(id.as_bytes()))))
                {
                    found.push((*t, id));
                }
            }
        }
        found.sort_unstable_by(|a, b| b.cmp(a));
        let mut seen = HashSet::new();
        found.retain(|(_, id)| seen.insert(*id));
        found.truncate(limit);
        Ok((found.into_iter().map(|(_, id)| id).collect(), count))
    }

    /// The condition on `trace_refs` rows (in the window `time`) that the `tag_refs` rows
    /// satisfying `cond` name: their (second, number) pairs, the numbers turned back from steps
    /// ([`TAG_NUMBERS`]). `tail` follows that subquery's `WHERE` (an `ORDER BY … LIMIT`, or
    /// nothing).
    fn numbered(&self, time: &str, cond: &str, tail: &str) -> String {
        format!(
            "{time} AND (timestamp, idx) IN (SELECT timestamp, arrayJoin({TAG_NUMBERS}) AS idx \
             FROM {} WHERE {cond}{tail})",
            self.layout.table("tag_refs")
        )
    }

    /// SQL that holds when a trace whose 4-byte key is `key` (an expression) has rows that
    /// satisfy `cond` in any of the tag indexes (`tag_refs` through `trace_refs`, and
    /// `tag_index`, `trace_tags` and `tags` for rows of older schema versions).
    /// `time` is the window's condition on `timestamp` (which `trace_refs` has too: its rows
    /// are the seconds the tag rows name).
    fn in_tag_index(&self, key: &str, cond: &str, time: &str) -> String {
        format!(
            "({key} IN (SELECT trace_key FROM {} WHERE {}) \
             OR {key} IN (SELECT trace_key FROM {} WHERE {cond}) \
             OR {key} IN (SELECT toUInt32(trace_key) FROM {} WHERE {cond}) \
             OR {key} IN (SELECT reinterpretAsUInt32(trace_id) FROM {} WHERE {cond}))",
            self.layout.table("trace_refs"),
            self.numbered(time, cond, ""),
            self.layout.table("tag_index"),
            self.layout.table("trace_tags"),
            self.layout.table("tags"),
        )
    }

    /// Trace ids whose rows may hold a match, newest first, at most `limit`.
    async fn candidates(&self, q: &TraceQuery, limit: usize) -> Result<Vec<TraceId>, StoreError> {
        if q.time.is_empty() {
            return Ok(Vec::new());
        }
        let from = secs(q.time.start_unix_nano);
        let to = secs(q.time.end_unix_nano.saturating_sub(1));
        let time = format!("timestamp >= toDateTime({from}) AND timestamp <= toDateTime({to})");
        let service = q.service.as_ref().map(|s| format!(" AND service = {}", quote(s))).unwrap_or_default();
        let kind_of = |k: &str, v: &str| {
            (k == "span.kind")
                .then(|| {
                    SpanKind::ALL.iter().find(|kind| kind.as_str() == v && **kind != SpanKind::Unspecified)
                })
                .flatten()
        };
        // Which tags some resource has (one small lookup in `resource_tags`).
        // Which tags some resource has (one small lookup in `resource_tags`), with the ids of
        // those resources.
        let mut on_resources: HashMap<usize, std::collections::BTreeSet<u64>> = HashMap::new();
        let mut lookups = None;
        if !q.tags.is_empty() {
            let any = q
                .tags
                .iter()
                .map(|(k, v)| format!("(key = {} AND value IN {})", quote(k), indexed_values_sql(v)))
                .collect::<Vec<_>>()
                .join(" OR ");
            // Both lookups at once (on a cluster each is a round trip to every shard).
            let on_resources_sql = format!(
                "SELECT DISTINCT key, value, id FROM {} WHERE {any} FORMAT RowBinary",
                self.layout.table("resource_tags")
            );
            let on_operations_sql = format!(
                "SELECT key, value, service, name, toUInt32(min(timestamp)), toUInt32(max(last)) FROM {} \
                 WHERE ({any}) AND timestamp <= toDateTime({to}) AND last >= toDateTime({from}){service} \
                 GROUP BY key, value, service, name FORMAT RowBinary",
                self.layout.table("operation_tags")
            );
            let (rows, operation_rows) =
                tokio::try_join!(self.query(&on_resources_sql), self.query(&on_operations_sql))?;
            lookups = Some(operation_rows);
            let mut r = Reader::new(&rows);
            while !r.is_empty() {
                let (key, value) = (r.text().map_err(corrupt)?, r.text().map_err(corrupt)?);
                let id = u64::from_le_bytes(r.array().map_err(corrupt)?);
                for (i, (k, v)) in q.tags.iter().enumerate() {
                    if k == key && indexed_candidates(v).iter().any(|c| c == value) {
                        on_resources.entry(i).or_default().insert(id);
                    }
                }
            }
        }
        // Which tags some operation has in the window (`operation_tags`: a few rows per
        // batch), with the seconds its spans with them cover.
        let mut on_operations: HashMap<usize, Vec<String>> = HashMap::new();
        if let Some(rows) = lookups {
            let mut r = Reader::new(&rows);
            while !r.is_empty() {
                let (key, value) = (r.text().map_err(corrupt)?, r.text().map_err(corrupt)?);
                let (op_service, name) = (r.text().map_err(corrupt)?, r.text().map_err(corrupt)?);
                let first = u32::from_le_bytes(r.array().map_err(corrupt)?);
                let last = u32::from_le_bytes(r.array().map_err(corrupt)?);
                let rows_of_operation = format!(
                    "(service = {} AND name = {} AND timestamp >= toDateTime({first}) AND timestamp <= toDateTime({last}))",
                    quote(op_service),
                    quote(name)
                );
                for (i, (k, v)) in q.tags.iter().enumerate() {
                    if k == key && indexed_candidates(v).iter().any(|c| c == value) {
                        on_operations.entry(i).or_default().push(rows_of_operation.clone());
                    }
                }
            }
        }
        let tags_only = on_resources.is_empty()
            && on_operations.is_empty()
            && q.tags.iter().all(|(k, v)| kind_of(k, v).is_none());
        // Per tag, its condition in the tag indexes and the other ways a span may have it (on
        // a span's columns, and on a `span_refs` row's).
        let mut per_tag: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
        for (i, (k, v)) in q.tags.iter().enumerate() {
            let c = format!("key = {} AND value IN {} AND {time}{service}", quote(k), indexed_values_sql(v));
            let (mut span, mut row) = (Vec::new(), Vec::new());
            if let Some(ids) = on_resources.get(&i) {
                let ids = ids.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(", ");
                span.push(format!("resource_id IN ({ids})"));
                row.push(format!("hasAny(resources, [{ids}])"));
            }
            if let Some(kind) = kind_of(k, v) {
                span.push(format!("kind = {}", kind.code()));
                row.push(format!("kind = {}", kind.code()));
            }
            let operations = on_operations.remove(&i).unwrap_or_default();
            span.extend(operations.iter().cloned());
            row.extend(operations);
            per_tag.push((c, span, row));
        }
        if tags_only && !q.tags.is_empty() {
            // The tag index's key range of the first tag: values that many traces have are
            // mostly operation-level (above), so the range is short.
            return self.candidates_from_tags(q, limit, &time, &service).await;
        }
        // Which tags the tag indexes hold in the window at all (a key range each, at most one
        // row read): a tag they do not hold is checked by what a span has only, before the
        // spans' trace numbers are turned into keys (a resource attribute of another service
        // would otherwise turn every span of the window into a key first).
        let indexed = self.tags_in_index(&per_tag).await?;
        let per_tag: Vec<PerTag> = per_tag
            .into_iter()
            .enumerate()
            .map(|(i, (c, span, row))| (indexed.contains(&i).then_some(c), span, row))
            .collect();
        // Newest first, a slice of the window at a time: most searches find enough traces in
        // the newest slice and read only its rows (ClickHouse reads every row of the range it
        // is given before it sorts); the last slice is the whole window.
        let mut slices = if q.time.end_unix_nano.saturating_sub(q.time.start_unix_nano) > 60_000_000_000 {
            Slices::new(q.time, self.newest_second(q.service.as_deref()).await?.unwrap_or_else(now_secs))
        } else {
            Slices::new(q.time, 0)
        };
        let mut first = true;
        loop {
            let (slice, whole) = slices.current();
            let sql = self.span_index_sql(q, slice, limit, &service, &time, &per_tag);
            let (ids, _) = self.newest_traces(&sql, limit).await?;
            if ids.len() >= limit || whole {
                return Ok(ids);
            }
            if ids.is_empty() && std::mem::take(&mut first) && !self.may_match(q, &service, &per_tag).await? {
                return Ok(ids);
            }
            slices.widen(ids.len(), limit);
        }
    }

    /// The newest second with spans (of `service`, when given) in ClickHouse: the newest
    /// minute of the RED pre-aggregates (a few rows per minute), then the newest `span_refs`
    /// (or older `span_index`) row from that minute on (a primary-key range of each operation). Where a search's
    /// newest slice begins.
    async fn newest_second(&self, service: Option<&str>) -> Result<Option<u64>, StoreError> {
        let filter = service.map(|s| format!("service = {} AND ", quote(s))).unwrap_or_default();
        let red = self.layout.table("red");
        let newest = |table: &str| {
            format!(
                "SELECT max(timestamp) AS m, count() AS c FROM {} WHERE {filter}timestamp >= \
                 (SELECT max(minute) FROM {red} WHERE {filter}1)",
                self.layout.table(table)
            )
        };
        let rows = self
            .query(&format!(
                "SELECT toUInt32(max(m)), sum(c) FROM ({} UNION ALL {}) WHERE c > 0 FORMAT RowBinary",
                newest("span_refs"),
                newest("span_index")
            ))
            .await?;
        let mut r = Reader::new(&rows);
        let second = u32::from_le_bytes(r.array().map_err(corrupt)?);
        let count = u64::from_le_bytes(r.array().map_err(corrupt)?);
        Ok((count > 0).then_some(u64::from(second) + 1))
    }

    /// The tags (by their place in `per_tag`) that some row of the tag indexes (`tag_refs`,
    /// `tag_index`, `trace_tags`, `tags`) holds under its condition (the first element).
    async fn tags_in_index(
        &self,
        per_tag: &[(String, Vec<String>, Vec<String>)],
    ) -> Result<HashSet<usize>, StoreError> {
        if per_tag.is_empty() {
            return Ok(HashSet::new());
        }
        let sql = per_tag
            .iter()
            .enumerate()
            .flat_map(|(i, (c, ..))| {
                ["tag_refs", "tag_index", "trace_tags", "tags"].map(|t| {
                    // (The place is added outside the subquery: a constant column read through a
                    // `Distributed` table of 18.16 is refused.)
                    format!(
                        "SELECT toUInt8({i}) AS i, count() AS n FROM (SELECT key FROM {} WHERE {c} LIMIT 1)",
                        self.layout.table(t)
                    )
                })
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let rows = self.query(&format!("{sql} FORMAT RowBinary")).await?;
        let mut r = Reader::new(&rows);
        let mut found = HashSet::new();
        while !r.is_empty() {
            let i = r.u8().map_err(corrupt)?;
            if u64::from_le_bytes(r.array().map_err(corrupt)?) > 0 {
                found.insert(usize::from(i));
            }
        }
        Ok(found)
    }

    /// The statement that reads the newest `limit` traces with spans in `slice` that may match
    /// from `span_refs` (schema version 9) by trace number, turned into 4-byte trace keys by
    /// `trace_refs`, from `span_index` (versions 6 to 8) by 4-byte trace key, and from `search`
    /// (the rows of older versions) by trace id; `per_tag` holds each tag's condition in the tag
    /// indexes (`None` when they have no row with it in the window) and the other ways a span
    /// may have it.
    fn span_index_sql(
        &self,
        q: &TraceQuery,
        slice: TimeRange,
        limit: usize,
        service: &str,
        time: &str,
        per_tag: &[PerTag],
    ) -> String {
        let (rows, cond) = span_filters(q, slice, service, per_tag);
        // A tag that the tag indexes hold in the window is checked by trace (for a row whose
        // trace's 4-byte key is `short`); one they do not hold is in `cond` and `rows` already.
        let tags = |short: &str| {
            let mut out = String::new();
            for (c, others, _) in per_tag {
                if let Some(c) = c {
                    let mut alternatives = vec![self.in_tag_index(short, c, time)];
                    alternatives.extend(others.iter().cloned());
                    out.push_str(&any_of(&alternatives));
                }
            }
            out
        };
        // `span_refs` by trace number: a span of the row per element of its arrays (rows
        // without a span in the duration bounds, `longest` and `shortest`, or of a resource
        // a tag needs, `resources`, skipped before they are flattened), its start
        // from the row's second and its millisecond; each (second, number) turned into the
        // trace's 4-byte key by the slice's `trace_refs` rows of those numbers (all of them:
        // two nodes may have given one number in one second). Then `span_index` by 4-byte
        // trace key, and `search` by trace id, in one statement.
        let none = "toFixedString(unhex('00000000000000000000000000000000'), 16)";
        let spans = format!(
            "(SELECT service, name, kind, timestamp, idx, resources[place] AS resource_id, duration_ns, \
             toUInt64(timestamp) * 1000000000 + toUInt64(millisecond) * 1000000 AS start_ns FROM {} \
             ARRAY JOIN {SPAN_NUMBERS} AS idx, starts AS millisecond, durations AS duration_ns, \
             resource_places AS place PREWHERE {rows} WHERE {cond})",
            self.layout.table("span_refs"),
        );
        let span_refs = format!(
            "SELECT * FROM (SELECT toUInt8(4) AS len, toUInt64(trace_key) AS k, {none} AS id, max(start_ns) AS t \
             FROM {spans} AS spans ALL INNER JOIN (SELECT timestamp, idx, trace_key FROM {} WHERE {} \
             AND timestamp IN (SELECT timestamp FROM {} PREWHERE {rows})) AS refs USING (timestamp, idx) \
             WHERE 1{} GROUP BY trace_key ORDER BY t DESC LIMIT {limit})",
            self.layout.table("trace_refs"),
            seconds_in(slice),
            self.layout.table("span_refs"),
            tags("trace_key"),
        );
        let newest = |table: &str, key: &str, short: &str, len: u8, k: &str, id: &str| {
            format!(
                "SELECT * FROM (SELECT toUInt8({len}) AS len, {k} AS k, {id} AS id, max(start_ns) AS t FROM {} \
                 WHERE {cond}{} GROUP BY {key} ORDER BY t DESC LIMIT {limit})",
                self.layout.table(table),
                tags(short),
            )
        };
        [
            span_refs,
            newest("span_index", "trace_key", "trace_key", 4, "toUInt64(trace_key)", none),
            newest("search", "trace_id", "reinterpretAsUInt32(trace_id)", 16, "toUInt64(0)", "trace_id"),
        ]
        .join(" UNION ALL ")
    }

    /// Whether any row of the window may hold a match of the span path: a `span_refs` row that
    /// passes the row filters, or a row of `span_index` or `search` that satisfies the
    /// conditions on spans (tags the tag indexes hold are left out: a superset). One read of
    /// those columns, asked after the first slice found nothing, so that a search that matches
    /// nothing ends there instead of reading every wider slice.
    async fn may_match(&self, q: &TraceQuery, service: &str, per_tag: &[PerTag]) -> Result<bool, StoreError> {
        let (rows, cond) = span_filters(q, q.time, service, per_tag);
        let sql = format!(
            "SELECT count() FROM (SELECT * FROM (SELECT timestamp FROM {} PREWHERE {rows} LIMIT 1) \
             UNION ALL SELECT * FROM (SELECT timestamp FROM {} WHERE {cond} LIMIT 1) \
             UNION ALL SELECT * FROM (SELECT timestamp FROM {} WHERE {cond} LIMIT 1)) FORMAT RowBinary",
            self.layout.table("span_refs"),
            self.layout.table("span_index"),
            self.layout.table("search"),
        );
        let rows = self.query(&sql).await?;
        Ok(u64::from_le_bytes(Reader::new(&rows).array().map_err(corrupt)?) > 0)
    }

    async fn apply_retention(&self) -> Result<usize, ChError> {
        let keep_from = now_secs().saturating_sub(self.config.retention.as_secs());
        let mut dropped = 0;
        for shard in &self.topology.shards {
            for server in &shard.replicas {
                for table in TABLES {
                    let local = self.layout.local(table);
                    let name = local.rsplit('.').next().expect("db.table");
                    // Every table is partitioned by day: partition ids are `YYYYMMDD`.
                    let sql = format!(
                        "SELECT DISTINCT partition_id FROM system.parts WHERE database = {} AND table = {} AND active FORMAT RowBinary",
                        quote(&self.layout.database),
                        quote(name)
                    );
                    let rows = server.query(&sql, &[]).await?;
                    let mut r = Reader::new(&rows);
                    while let Ok(id) = r.text() {
                        let Some(day) = day_of_partition(id) else {
                            tracing::warn!(table = %local, partition = id, "partition id is not a day; left alone");
                            continue;
                        };
                        if (day + 1) * 86_400 <= keep_from {
                            server
                                .query(&format!("ALTER TABLE {local} DROP PARTITION ID {}", quote(id)), &[])
                                .await?;
                            dropped += 1;
                        }
                    }
                }
            }
        }
        if dropped > 0 {
            tracing::info!(partitions = dropped, "retention dropped old clickhouse partitions");
        }
        Ok(dropped)
    }
}

/// Days since 1970-01-01 of a `YYYYMMDD` partition id.
fn day_of_partition(id: &str) -> Option<u64> {
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (id[..4].parse().ok()?, id[4..6].parse().ok()?, id[6..].parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

fn remember<T: std::hash::Hash + Eq>(set: &Mutex<HashSet<T>>, items: Vec<T>) {
    let mut s = set.lock();
    if s.len() + items.len() > WRITTEN_CACHE {
        s.clear();
    }
    s.extend(items);
}

/// The `red` rows of a batch's pre-aggregates, in `RowBinary`: one per service, operation,
/// kind and minute (ClickHouse's SummingMergeTree adds up the rows of several batches).
fn write_red_rows(red: &RedSummary, w: &mut Writer) {
    for (service, ops) in &red.series {
        for (name, kinds) in ops {
            for (k, cells) in kinds.iter().enumerate() {
                for (minute, cell) in cells {
                    w.str(service);
                    w.str(name);
                    w.u8(k as u8);
                    w.buf.extend_from_slice(
                        &(minute.saturating_mul(60).min(u32::MAX as u64) as u32).to_le_bytes(),
                    );
                    w.buf.extend_from_slice(&cell.calls.to_le_bytes());
                    w.buf.extend_from_slice(&cell.errors.to_le_bytes());
                    w.buf.extend_from_slice(&cell.latency.zeros().to_le_bytes());
                    let buckets: Vec<(i32, u64)> = cell.latency.buckets().collect();
                    w.varint(buckets.len() as u64);
                    for (i, _) in &buckets {
                        w.buf.extend_from_slice(&i.to_le_bytes());
                    }
                    w.varint(buckets.len() as u64);
                    for (_, n) in &buckets {
                        w.buf.extend_from_slice(&n.to_le_bytes());
                    }
                }
            }
        }
    }
}

/// Reads the answer of the `red` query of [`SpanStore::red`] into `out`.
fn read_red_rows(rows: &[u8], latency: bool, out: &mut RedSummary) -> Result<(), codec::DecodeError> {
    let mut r = Reader::new(rows);
    let u64_of =
        |r: &mut Reader<'_>| -> Result<u64, codec::DecodeError> { Ok(u64::from_le_bytes(r.array()?)) };
    while !r.is_empty() {
        let service = r.text()?;
        let name = r.str()?;
        let kind = r.u8()? as usize;
        if kind >= SpanKind::ALL.len() {
            return Err(codec::DecodeError("bad span kind in red".into()));
        }
        let minute = u64::from(u32::from_le_bytes(r.array()?)) / 60;
        let (calls, errors, zeros) = (u64_of(&mut r)?, u64_of(&mut r)?, u64_of(&mut r)?);
        let latency = if latency {
            let n = r.count()?;
            let mut indexes = Vec::with_capacity(n);
            for _ in 0..n {
                indexes.push(i32::from(i16::from_le_bytes(r.array()?)));
            }
            if r.count()? != n {
                return Err(codec::DecodeError("red bucket arrays of different lengths".into()));
            }
            let mut buckets = Vec::with_capacity(n);
            for i in indexes {
                buckets.push((i, u64::from(u32::from_le_bytes(r.array()?))));
            }
            Sketch::from_parts(zeros, buckets)
        } else {
            Sketch::default()
        };
        let ops = match out.series.get_mut(service) {
            Some(ops) => ops,
            None => out.series.entry(service.to_owned()).or_default(),
        };
        let cells = &mut ops.entry(name).or_default()[kind];
        match cells.entry(minute) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(RedCell { calls, errors, latency });
            }
            // A key the table has not merged yet.
            std::collections::btree_map::Entry::Occupied(mut o) => {
                o.get_mut().merge(&RedCell { calls, errors, latency })
            }
        }
    }
    Ok(())
}

fn corrupt(e: codec::DecodeError) -> StoreError {
    StoreError::Internal(e.to_string())
}

fn read_error(e: ChError) -> StoreError {
    match e {
        ChError::Unreachable { .. } => StoreError::Unavailable(e.to_string()),
        e => StoreError::Internal(e.to_string()),
    }
}

/// Drops repeated spans (the same span id) of one trace.
fn dedup(spans: &mut Vec<Span>) {
    let mut seen: HashSet<SpanId> = HashSet::with_capacity(spans.len());
    spans.retain(|s| seen.insert(s.span_id));
}

async fn flush_loop(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(200);
    let mut failing = false;
    loop {
        let due = shared.pending.read().spans >= shared.config.flush_spans;
        if !due {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(shared.config.flush_interval) => {}
                _ = shared.stop.notified() => return,
            }
        }
        match shared.flush_once().await {
            Ok(()) => {
                if failing {
                    tracing::info!("clickhouse accepts inserts again; buffered spans delivered");
                }
                failing = false;
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "clickhouse insert failed; spans stay in the local buffer and are retried");
                }
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn retention_loop(shared: Arc<Shared>) {
    loop {
        if let Err(e) = shared.apply_retention().await {
            tracing::warn!(error = %e, "retention could not drop old partitions; retrying in an hour");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shared.stop.notified() => return,
        }
    }
}

#[async_trait]
impl SpanStore for ClickhouseStore {
    async fn write(&self, spans: Vec<Span>) -> Result<(), StoreError> {
        if spans.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let buffered = s.pending.read().bytes;
        if buffered >= s.config.buffer_max_bytes {
            return Err(StoreError::Overloaded(format!(
                "clickhouse is not taking inserts and the local buffer is full ({buffered} bytes); retry later"
            )));
        }
        let record = skein_store::codec::encode_spans(&spans);
        let bytes = record.len() as u64;
        let n = spans.len();
        let full = {
            let _gate = s.gate.read().await;
            let pos = s.wal.append(record).await.map_err(|e| {
                if e.is_disk_full() {
                    StoreError::DiskFull(format!("local buffer: {e}"))
                } else {
                    StoreError::Unavailable(format!("local buffer: {e}"))
                }
            })?;
            let mut p = s.pending.write();
            p.batches.push(PendingBatch { segment: pos.segment, spans: Arc::new(spans), bytes });
            p.bytes += bytes;
            p.spans += n;
            p.spans >= s.config.flush_spans
        };
        s.spans_written.fetch_add(n as u64, Ordering::Relaxed);
        if full {
            s.wake.notify_one();
        }
        Ok(())
    }

    async fn trace(&self, id: TraceId) -> Result<Option<Vec<Span>>, StoreError> {
        let s = &self.shared;
        let shard = s.topology.shard_of(trace_key(id.as_bytes()));
        let sql = s.trace_rows(true, &format!("trace_id = {}", unhex(id.as_bytes())));
        let mut found = match s.query_shard(shard, &sql).await {
            Ok(rows) => s.decode_span_rows(&rows, Some(shard)).await?,
            // The shard is down: what this node still buffers of the trace is better than
            // nothing; without that, the error.
            Err(e) if s.pending.read().batches.iter().any(|b| b.spans.iter().any(|sp| sp.trace_id == id)) => {
                tracing::warn!(error = %e, trace = %id.to_hex(), "trace read from the local buffer only");
                HashMap::new()
            }
            Err(e) => return Err(e),
        };
        s.add_pending(&mut found, |t| *t == id);
        Ok(found.remove(&id).map(|mut spans| {
            dedup(&mut spans);
            spans
        }))
    }

    async fn find_traces(&self, q: &TraceQuery) -> Result<Vec<Vec<Span>>, StoreError> {
        let s = &self.shared;
        let matcher = SpanMatcher::new(q);
        let limit = q.limit.max(1);
        // With at most one tag, a candidate has a span that matches (its service's row holds
        // the tag, or its `search` row the service, operation and duration): a few spare ones
        // cover the rare miss. Several tags may sit on different spans: ask for more.
        let mut want = if q.tags.len() <= 1 { limit + 5 } else { limit * 2 + 10 };
        let buffered: Vec<TraceId> = {
            let p = s.pending.read();
            let mut ids: Vec<TraceId> = p
                .batches
                .iter()
                .flat_map(|b| b.spans.iter())
                .filter(|sp| matcher.matches(sp))
                .map(|sp| sp.trace_id)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        loop {
            let mut ids = s.candidates(q, want).await?;
            let exhausted = ids.len() < want;
            ids.extend(buffered.iter().copied());
            ids.sort_unstable();
            ids.dedup();
            let traces = s.fetch_traces(&ids).await?;
            let mut found: Vec<(u64, Vec<Span>)> = traces
                .into_values()
                .filter(|spans| spans.iter().any(|sp| matcher.matches(sp)))
                .map(|spans| (spans.iter().map(|sp| sp.start_time_unix_nano).min().unwrap_or(0), spans))
                .collect();
            if found.len() >= limit || exhausted || want >= 100_000 {
                found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1[0].trace_id.cmp(&a.1[0].trace_id)));
                found.truncate(limit);
                return Ok(found.into_iter().map(|(_, spans)| spans).collect());
            }
            want *= 4;
        }
    }

    async fn services(&self) -> Result<Vec<String>, StoreError> {
        let s = &self.shared;
        let rows = s
            .query(&format!("SELECT DISTINCT service FROM {} FORMAT RowBinary", s.layout.table("operations")))
            .await?;
        let mut out: Vec<String> = Vec::new();
        let mut r = Reader::new(&rows);
        while !r.is_empty() {
            out.push(r.text().map_err(corrupt)?.to_owned());
        }
        {
            let p = s.pending.read();
            let buffered: HashSet<&str> =
                p.batches.iter().flat_map(|b| b.spans.iter()).map(Span::service_name).collect();
            out.extend(buffered.into_iter().map(str::to_owned));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn operations(&self, service: &str, kind: Option<SpanKind>) -> Result<Vec<Operation>, StoreError> {
        let s = &self.shared;
        let mut sql = format!(
            "SELECT DISTINCT name, kind FROM {} WHERE service = {}",
            s.layout.table("operations"),
            quote(service)
        );
        if let Some(k) = kind {
            sql.push_str(&format!(" AND kind = {}", k.code()));
        }
        sql.push_str(" FORMAT RowBinary");
        let rows = s.query(&sql).await?;
        let mut out = Vec::new();
        let mut r = Reader::new(&rows);
        while !r.is_empty() {
            let name = r.text().map_err(corrupt)?.to_owned();
            let code = r.u8().map_err(corrupt)?;
            let span_kind =
                SpanKind::from_code(code).ok_or_else(|| StoreError::Internal(format!("span kind {code}")))?;
            out.push(Operation { name, span_kind });
        }
        {
            let p = s.pending.read();
            let buffered: HashSet<(&str, SpanKind)> = p
                .batches
                .iter()
                .flat_map(|b| b.spans.iter())
                .filter(|sp| sp.service_name() == service && kind.is_none_or(|k| k == sp.kind))
                .map(|sp| (sp.name.as_str(), sp.kind))
                .collect();
            out.extend(
                buffered.into_iter().map(|(name, span_kind)| Operation { name: name.to_owned(), span_kind }),
            );
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn dependencies(&self, range: TimeRange) -> Result<Vec<DependencyLink>, StoreError> {
        let s = &self.shared;
        // Traces with spans in this node's buffer are counted here, whole (ClickHouse's and
        // the buffer's spans merged, repeats dropped); ClickHouse counts every other trace.
        // So a call is counted once whether its spans are delivered, buffered or both.
        let buffered: Vec<TraceId> = {
            let p = s.pending.read();
            let ids: HashSet<TraceId> =
                p.batches.iter().flat_map(|b| b.spans.iter()).map(|sp| sp.trace_id).collect();
            ids.into_iter().collect()
        };
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        if !range.is_empty() {
            let from = secs(range.start_unix_nano);
            let to = secs(range.end_unix_nano.saturating_sub(1));
            // Parents are looked for up to an hour around the range.
            let (pf, pt) = (from.saturating_sub(3600), to.saturating_add(3600));
            let not_buffered = if buffered.is_empty() {
                String::new()
            } else {
                format!(" AND trace_id NOT IN {}", tuple(buffered.iter().map(|t| unhex(t.as_bytes()))))
            };
            let window = format!(
                "timestamp >= toDateTime({from}) AND timestamp <= toDateTime({to}) AND start_ns >= {} AND start_ns < {}{not_buffered}",
                range.start_unix_nano, range.end_unix_nano
            );
            let parents = format!("timestamp >= toDateTime({pf}) AND timestamp <= toDateTime({pt})");
            // Schema versions 6 to 8: the span rows of `traces` and `spans` joined with
            // themselves by the parent column, counted per pair of resources (a handful), whose
            // services Skein looks up.
            let children = s.span_rows(range.start_unix_nano..range.end_unix_nano, &not_buffered);
            let parent_rows =
                s.span_rows(u64::from(pf) * 1_000_000_000..(u64::from(pt) + 1) * 1_000_000_000, "");
            let rows = s
                .query(&calls_sql(&format!("{children} AS children"), &parent_rows, "resource_id", "1"))
                .await?;
            let mut pairs = Vec::new();
            let mut r = Reader::new(&rows);
            while !r.is_empty() {
                let parent = u64::from_le_bytes(r.array().map_err(corrupt)?);
                let child = u64::from_le_bytes(r.array().map_err(corrupt)?);
                pairs.push((parent, child, u64::from_le_bytes(r.array().map_err(corrupt)?)));
            }
            let resources = s.resources(pairs.iter().flat_map(|p| [p.0, p.1]).collect(), None).await?;
            for (parent, child, n) in pairs {
                let service = |id: u64| {
                    resources.get(&id).map(|r| r.service_name().to_owned()).ok_or_else(|| {
                        StoreError::Internal(format!("resource {id:016x} of a span is missing in ClickHouse"))
                    })
                };
                let (parent, child) = (service(parent)?, service(child)?);
                if parent != child {
                    *counts.entry((parent, child)).or_default() += n;
                }
            }
            // Rows of schema versions before 6: `search` joined with itself (its rows hold
            // the services and both ids).
            let search = s.layout.table("search");
            let rows = s
                .query(&calls_sql(&search, &format!("{search} WHERE {parents}"), "service", &window))
                .await?;
            let mut r = Reader::new(&rows);
            while !r.is_empty() {
                let parent = r.text().map_err(corrupt)?.to_owned();
                let child = r.text().map_err(corrupt)?.to_owned();
                *counts.entry((parent, child)).or_default() +=
                    u64::from_le_bytes(r.array().map_err(corrupt)?);
            }
        }
        for spans in s.fetch_traces(&buffered).await?.values() {
            count_dependencies(spans.iter(), range, &mut counts);
        }
        Ok(dependency_links(counts))
    }

    /// From the `red` table (summed by ClickHouse) and the spans still in this node's buffer;
    /// `None` for minutes before the pre-aggregates began (a database migrated from schema
    /// version 1).
    async fn red(
        &self,
        minutes: std::ops::Range<u64>,
        services: &[String],
        latency: bool,
    ) -> Result<Option<RedSummary>, StoreError> {
        let s = &self.shared;
        if minutes.start.saturating_mul(60) < u64::from(s.red_since) {
            return Ok(None);
        }
        let mut out = RedSummary::default();
        if services.is_empty() || minutes.is_empty() {
            return Ok(Some(out));
        }
        let list = services.iter().map(|n| quote(n)).collect::<Vec<_>>().join(", ");
        let at = |m: u64| m.saturating_mul(60).min(u32::MAX as u64);
        // The rows as they are, not summed by a GROUP BY: ClickHouse's `sumMap` costs about a
        // second per 10,000 sketches, reading them costs a tenth of that, and Skein adds up the
        // rows of one key that the table has not merged yet.
        // Bucket indexes fit 16 bits (1 ns to 10^13 ns is buckets 0 to 1,484) and one row's
        // counts 32: half the bytes to send and read.
        let sketch = if latency {
            ", arrayMap(b -> toInt16(b), latencyMap.bucket), arrayMap(n -> toUInt32(n), latencyMap.count)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT service, name, kind, toUInt32(minute), calls, errors, zeros{sketch} FROM {} \
             WHERE service IN ({list}) AND minute >= toDateTime({}) AND minute < toDateTime({}) FORMAT RowBinary",
            s.layout.table("red"),
            at(minutes.start),
            at(minutes.end),
        );
        let rows = s.query(&sql).await?;
        read_red_rows(&rows, latency, &mut out).map_err(corrupt)?;
        // Spans acknowledged here but not inserted yet. (A batch being inserted right now may
        // count twice for the moment between its insert and its leaving the buffer.)
        let p = s.pending.read();
        for span in p.batches.iter().flat_map(|b| b.spans.iter()) {
            if minutes.contains(&(span.start_time_unix_nano / skein_store::red::RED_CELL_NANOS))
                && services.iter().any(|n| n == span.service_name())
            {
                out.add(span);
            }
        }
        Ok(Some(out))
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            spans_stored: self.shared.spans_written.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Cut short, a delivery is repeated from the buffer at the next start (read once).
        match tokio::time::timeout(Duration::from_secs(30), self.shared.flush_once()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("{e}; the spans stay in the local buffer"))),
            Err(_) => Err(StoreError::Unavailable(
                "clickhouse insert timed out; the spans stay in the local buffer".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_grow_from_the_newest_data_to_the_whole_window() {
        let s = 1_000_000_000u64;
        let now = 1_800_000_000u64;
        let all = |mut slices: Slices, found: usize| {
            let mut out = Vec::new();
            loop {
                let (slice, whole) = slices.current();
                assert_eq!(
                    slice.end_unix_nano, slices.window.end_unix_nano,
                    "every slice ends at the window's end"
                );
                out.push(slice.start_unix_nano / s);
                if whole {
                    assert_eq!(slice, slices.window);
                    return out;
                }
                slices.widen(found, 25);
            }
        };
        // Two hours ending now, data up to now, nothing found: 1 s, 50 s, 2500 s, the window.
        let window = TimeRange { start_unix_nano: (now - 7200) * s, end_unix_nano: now * s };
        assert_eq!(all(Slices::new(window, now), 0), [now - 1, now - 50, now - 2500, now - 7200]);
        // The newest data ten minutes ago: the slices begin before it.
        assert_eq!(all(Slices::new(window, now - 600), 0), [now - 601, now - 650, now - 3100, now - 7200]);
        // Finding some: smaller steps (25 wanted, 9 found: twice 25/10, at least 4).
        assert_eq!(
            all(Slices::new(window, now), 9),
            [now - 1, now - 5, now - 25, now - 125, now - 625, now - 3125, now - 7200]
        );
        // Newest data after the window's end, or before its start.
        assert_eq!(all(Slices::new(window, now + 9999), 0), all(Slices::new(window, now), 0));
        assert_eq!(all(Slices::new(window, 5), 0), [now - 7200]);
        // A window open to the future, and a short one.
        let open = TimeRange { start_unix_nano: 0, end_unix_nano: u64::MAX };
        let starts = all(Slices::new(open, now), 0);
        assert!(starts.len() > 1 && starts[0] < now && *starts.last().unwrap() == 0);
        let short = TimeRange { start_unix_nano: now * s, end_unix_nano: now * s + s / 2 };
        assert_eq!(Slices::new(short, now).current(), (short, true));
        assert_eq!(next_slice_width(10, 0, 20), 400);
        assert_eq!(next_slice_width(10, 19, 20), 40);
        assert_eq!(next_slice_width(10, 0, 1000), 640);
    }

    #[test]
    fn index_rounding_is_monotone_and_never_above() {
        let mut samples: Vec<u64> = (0..200).collect();
        for shift in 0..64 {
            let p = 1u64 << shift;
            samples.extend([p - 1, p, p + 1, p + p / 3, p.wrapping_mul(3) / 2]);
        }
        samples.extend([u64::MAX, u64::MAX - 1, 1_000_400, 1_000_600, 2_000_000_000]);
        samples.sort_unstable();
        for f in [index_start, index_duration] {
            for w in samples.windows(2) {
                assert!(f(w[0]) <= f(w[1]), "monotone at {} {}", w[0], w[1]);
            }
            for &x in &samples {
                assert!(f(x) <= x, "{x}");
            }
        }
        for &x in &samples {
            assert!(x - index_duration(x) <= x / 32, "{x}: {}", index_duration(x));
            assert!(x - index_start(x) < 1_000_000);
        }
        assert_eq!(index_duration(63), 63);
        assert_eq!(index_duration(1_000_600), 999_424);
    }

    #[test]
    fn partition_ids_are_days() {
        assert_eq!(day_of_partition("19700101"), Some(0));
        assert_eq!(day_of_partition("20240101"), Some(19_723));
        assert_eq!(day_of_partition("20261204"), Some(20_791));
        assert_eq!(day_of_partition("all"), None);
        assert_eq!(day_of_partition("20261304"), None);
    }

    #[test]
    fn long_values_are_indexed_by_a_prefix_on_a_char_boundary() {
        let long = "é".repeat(100);
        let v = indexed_value(&long);
        assert!(v.len() <= INDEXED_VALUE_BYTES && long.starts_with(v) && v.len() >= INDEXED_VALUE_BYTES - 1);
        assert_eq!(indexed_value("short"), "short");
    }

    #[test]
    fn query_values_cover_the_stored_texts_of_typed_attributes() {
        assert_eq!(indexed_candidates("+500"), ["+500", "500"]);
        assert_eq!(indexed_candidates("1.50"), ["1.5", "1.50"]);
        assert_eq!(indexed_candidates("web-1"), ["web-1"]);
        assert_eq!(indexed_candidates("true"), ["true"]);
    }

    #[test]
    fn long_values_are_hashed_in_tag_refs_and_looked_up_both_ways() {
        let session = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let hashed = tag_refs_value(Cow::Borrowed(session));
        assert_eq!(hashed.len(), 5);
        assert_eq!(hashed[0], 0xff, "never the first byte of a UTF-8 text");
        // The same on every node and in every build: a change here is a format change.
        assert_eq!(*hashed, hashed_value(session));
        assert_eq!(hashed_value("abc"), [0xff, 0xab, 0x0d, 0xf3, 0x1d]);
        assert_ne!(hashed_value(session), hashed_value("0f8fad5b-d9cb-469f-a165-70867728950f"));
        let exactly = "a".repeat(HASHED_VALUE_BYTES);
        assert_eq!(
            *tag_refs_value(Cow::Borrowed(&exactly)),
            *exactly.as_bytes(),
            "16 bytes kept as they are"
        );
        // A query looks up the hash (version 9) and the text (version 8 rows).
        let sql = indexed_values_sql(session);
        assert!(sql.contains(&quote(session)) && sql.contains(&unhex(&hashed_value(session))), "{sql}");
        assert_eq!(indexed_values_sql("short"), "('short')");
        // A float's canonical text can be long: hashed too.
        assert!(
            indexed_values_sql("0.30000000000000004").contains(&unhex(&hashed_value("0.30000000000000004")))
        );
    }

    #[test]
    fn numbers_are_split_where_a_step_does_not_fit_16_bits() {
        assert_eq!(number_runs(&[]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(number_runs(&[7]), vec![std::ops::Range { start: 0, end: 1 }]);
        let max = u32::from(u16::MAX);
        assert_eq!(number_runs(&[0, max, max + 1, 2 * max + 2, 2 * max + 2]), [0..3, 3..5]);
        // And at most 65,535 numbers a run, however close.
        let many = vec![9; 2 * usize::from(u16::MAX) + 1];
        let long = usize::from(u16::MAX);
        assert_eq!(number_runs(&many), [0..long, long..2 * long, 2 * long..2 * long + 1]);
        let numbers = [5 << 24 | 70_000, 5 << 24 | 70_003, 5 << 24 | 70_003, 5 << 24 | 135_000];
        let mut w = Writer::default();
        write_numbers(&mut w, &numbers);
        // first (low 16 bits), first_high, then the steps: length and UInt16s.
        let mut r = Reader::new(&w.buf);
        let first = u32::from(u16::from_le_bytes(r.array().unwrap()));
        let high = u32::from(u16::from_le_bytes(r.array().unwrap()));
        assert_eq!(high << 16 | first, numbers[0]);
        assert_eq!(r.varint().unwrap(), 3);
        let steps: Vec<u16> = (0..3).map(|_| u16::from_le_bytes(r.array().unwrap())).collect();
        assert_eq!(steps, [3, 0, 64_997]);
        assert!(r.is_empty());
    }
}
