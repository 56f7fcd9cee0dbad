//! The schema: which tables exist, their DDL for the server's version, the migrations table,
//! and the cluster's shards. `docs/clickhouse.md` explains every choice.

use crate::client::{ChError, Client};
use crate::codec::Reader;
use crate::sql::quote;

/// The schema version this build writes and reads. Version 2 added `red`; version 3 indexes
/// resource attributes once per resource (`resource_tags`, and `resource_id` in `search`)
/// instead of once per trace in `tags`; version 4 writes the tag index into `trace_tags`, with
/// 8-byte trace keys instead of 16-byte trace ids; version 5 writes it into `tag_index`, with
/// 4-byte trace keys, and indexes a span's instrumentation scope once per resource in
/// `resource_tags` (`trace_tags` and `tags` keep the rows of older versions); version 6 keeps a
/// span's parent in `spans.parent_span_id` (dependencies join `spans` with itself) and writes
/// the search rows into `span_index`, with 4-byte trace keys and no span ids, instead of
/// `search` (which keeps the rows of older versions), and indexes an attribute value that (almost)
/// every span of an operation in a batch has once per batch in `operation_tags` instead of once
/// per trace in `tag_index`; version 7 writes `span_index.start_ns` rounded down to the
/// millisecond and `span_index.duration_ns` to its six leading binary digits, each insert's rows sorted by
/// start within the table's key (the same table: older rows hold exact values, and searches
/// compare with bounds rounded the same way); version 8 writes the tag index into `tag_refs`:
/// one row per (key, value, service, second) of an insert with the insert's small numbers
/// (`idx`) of the traces that have it, which `trace_refs` turns into 4-byte trace keys
/// (`tag_index` keeps the rows of version 5 to 7), and writes spans into `traces`, one row per
/// trace and insert, a parent in the row named by its place (`spans` keeps the rows of
/// versions 1 to 7); version 9 writes the search rows into `span_refs`, one row per (service,
/// operation, kind, second) of an insert with the numbers of its spans' traces and their
/// starts, durations and resources as arrays (`span_index` keeps the rows of versions 6 to 8),
/// writes `tag_refs`' numbers as a first number and `UInt16` steps (`first`, `steps`; `idxs`
/// holds those of version 8) and its values longer than 16 bytes as a 4-byte hash.
pub const SCHEMA_VERSION: u32 = 9;

/// The tables, in the order a batch is inserted (lookups before the spans and references that
/// need them, the pre-aggregates last). `span_index`, `spans`, `tag_index`, `search`,
/// `trace_tags` and `tags` are no longer written, only read and dropped by retention.
pub const TABLES: [&str; 15] = [
    "resources",
    "resource_tags",
    "operations",
    "traces",
    "span_refs",
    "trace_refs",
    "tag_refs",
    "operation_tags",
    "red",
    "span_index",
    "spans",
    "tag_index",
    "search",
    "trace_tags",
    "tags",
];

/// The `tag_refs` row's trace numbers (SQL): `idxs` as steps (schema version 8), or from
/// version 9 on, the first number and the following steps as `UInt16`s (the store writes them).
pub const TAG_NUMBERS: &str = "arrayMap(x -> toUInt32(x), arrayCumSum(if(empty(idxs), \
     arrayConcat([toUInt32(first_high) * 65536 + first], arrayMap(x -> toUInt32(x), steps)), idxs)))";

/// The `span_refs` row's trace numbers (SQL), one per element of its arrays.
pub const SPAN_NUMBERS: &str = "arrayMap(x -> toUInt32(x), \
     arrayCumSum(arrayConcat([toUInt32(first_high) * 65536 + first], arrayMap(x -> toUInt32(x), steps))))";

/// Rows per primary-index mark of `traces`: a row is a trace's spans of one insert (about a
/// dozen on real traffic), so a trace read decompresses about as many spans per part as the
/// 1,024 rows of `spans` held.
const TRACES_INDEX_GRANULARITY: u32 = 128;

/// The most spans of one trace in one `traces` row (a parent is named by its place in the
/// row, a `UInt16`; a trace with more spans in an insert takes several rows).
pub const MAX_ROW_SPANS: usize = 4096;

/// Rows per primary-index mark of `trace_refs`: a search reads one mark per reference it
/// looks up (the default of 8,192 would read eight times more rows).
const TRACE_REFS_INDEX_GRANULARITY: u32 = 1024;

/// Rows per primary-index mark of `spans`: a trace read decompresses about this many
/// payloads per day partition (ClickHouse's default of 8,192 would be eight times more).
const SPANS_INDEX_GRANULARITY: u32 = 1024;

/// Bytes of payloads compressed at once in `spans` where the server takes it as a table
/// setting (21.1 on; older servers take it from the user profile, see `docs/clickhouse.md`):
/// zstd finds a span's values in the spans around it, and 1 MiB instead of ClickHouse's
/// 64 KiB minimum takes about 2 bytes per span off the payload.
const SPANS_COMPRESS_BLOCK: u32 = 1 << 20;

/// The codec of `spans.payload` where columns have codecs (20.3 on). Level 6 instead of 3:
/// 67.7 instead of 74.1 bytes per span on ClickHouse 26.9 at 2M spans of the realistic load,
/// for 14 % more of the server's CPU (25 against 22 s).
const PAYLOAD_CODEC: &str = "ZSTD(6)";

/// What the server's version allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    pub version: (u32, u32),
    /// Column codecs (ZSTD, Delta), `LowCardinality` without the experimental setting and
    /// data-skipping indexes: all generally available from 20.3 on.
    pub modern: bool,
}

impl Features {
    pub fn from_version(text: &str) -> Result<Features, String> {
        let mut parts = text.trim().split('.');
        let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
        let (Some(major), Some(minor)) = (next(), next()) else {
            return Err(format!("cannot read ClickHouse's version from {text:?}"));
        };
        Ok(Features { version: (major, minor), modern: (major, minor) >= (20, 3) })
    }

    /// `min_compress_block_size` as a MergeTree table setting (ClickHouse 21.1 on).
    fn table_compress_blocks(&self) -> bool {
        self.version >= (21, 1)
    }

    fn low_cardinality(&self, ty: &str) -> String {
        if self.modern { format!("LowCardinality({ty})") } else { ty.to_owned() }
    }

    fn codec(&self, codec: &str) -> String {
        if self.modern { format!(" CODEC({codec})") } else { String::new() }
    }
}

/// Where the tables live and how rows are spread.
#[derive(Clone, Debug)]
pub struct Layout {
    pub database: String,
    /// The cluster name when sharded.
    pub cluster: Option<String>,
}

impl Layout {
    /// The table queries and inserts use: the Distributed table when sharded.
    pub fn table(&self, name: &str) -> String {
        format!("{}.{name}", self.database)
    }

    /// The table that holds rows on one server.
    pub fn local(&self, name: &str) -> String {
        match self.cluster {
            Some(_) => format!("{}.{name}_local", self.database),
            None => format!("{}.{name}", self.database),
        }
    }

    /// Statements that create every table on one server (all `IF NOT EXISTS`).
    pub fn create_statements(&self, f: &Features) -> Vec<String> {
        let lc = |t: &str| f.low_cardinality(t);
        let zstd = f.codec("ZSTD(3)");
        let payload_zstd = f.codec(PAYLOAD_CODEC);
        let delta = f.codec("Delta, ZSTD(1)");
        let plain_zstd = f.codec("ZSTD(1)");
        // The table setting of `spans` and `traces` where the server takes it (21.1 on).
        let compress_blocks = if f.table_compress_blocks() {
            format!(", min_compress_block_size = {SPANS_COMPRESS_BLOCK}")
        } else {
            String::new()
        };
        let tables = [
            (
                "resources",
                format!("id UInt64, shard_key UInt64, timestamp DateTime, payload String{zstd}"),
                "ReplacingMergeTree() PARTITION BY toDate(timestamp) ORDER BY id".to_owned(),
                "shard_key",
            ),
            (
                "resource_tags",
                format!(
                    "key {}, value String{plain_zstd}, id UInt64, shard_key UInt64, timestamp DateTime",
                    lc("String")
                ),
                "ReplacingMergeTree() PARTITION BY toDate(timestamp) ORDER BY (key, value, id)".to_owned(),
                "shard_key",
            ),
            (
                "operations",
                format!("service {}, name {}, kind UInt8, date Date", lc("String"), lc("String")),
                "ReplacingMergeTree() PARTITION BY date ORDER BY (service, name, kind)".to_owned(),
                "rand()",
            ),
            (
                "spans",
                format!(
                    "trace_id FixedString(16){plain_zstd}, span_id FixedString(8){plain_zstd}, timestamp DateTime{delta}, \
                     start_ns UInt64{delta}, resource_id UInt64{plain_zstd}, payload String{payload_zstd}, \
                     parent_span_id FixedString(8){plain_zstd}"
                ),
                format!(
                    "MergeTree() PARTITION BY toDate(timestamp) ORDER BY (trace_id, span_id) \
                     SETTINGS index_granularity = {SPANS_INDEX_GRANULARITY}{}",
                    compress_blocks
                ),
                "reinterpretAsUInt64(trace_id)",
            ),
            (
                // A trace's spans of one insert (schema version 8): the ids, starts (from
                // `trace_start`), resources and payloads of its spans as arrays, and each
                // span's parent as its place in the row (1-based; 0: none, or a parent outside
                // the row, whose id is then in `parent_ids`, zeros elsewhere). `timestamp` is
                // the first second of the row's spans and `seconds` how many more they cover.
                "traces",
                format!(
                    "trace_id FixedString(16){plain_zstd}, timestamp DateTime{delta}, seconds UInt32, \
                     trace_start UInt64{delta}, span_ids Array(FixedString(8)){plain_zstd}, \
                     parents Array(UInt16){plain_zstd}, parent_ids Array(FixedString(8)){plain_zstd}, \
                     starts Array(UInt64){plain_zstd}, resource_ids Array(UInt64){plain_zstd}, \
                     payloads Array(String){payload_zstd}"
                ),
                format!(
                    "MergeTree() PARTITION BY toDate(timestamp) ORDER BY trace_id \
                     SETTINGS index_granularity = {TRACES_INDEX_GRANULARITY}{}",
                    compress_blocks
                ),
                "reinterpretAsUInt64(trace_id)",
            ),
            (
                "search",
                format!(
                    "service {}, name {}, kind UInt8, timestamp DateTime{delta}, start_ns UInt64{delta}, \
                     duration_ns UInt64{plain_zstd}, error UInt8, trace_id FixedString(16){plain_zstd}, \
                     span_id FixedString(8){plain_zstd}, parent_span_id FixedString(8){plain_zstd}, \
                     resource_id UInt64{plain_zstd}",
                    lc("String"),
                    lc("String")
                ),
                "MergeTree() PARTITION BY toDate(timestamp) ORDER BY (service, name, timestamp)".to_owned(),
                "reinterpretAsUInt64(trace_id)",
            ),
            (
                // A span's row for searches by service, operation, time and duration, with the
                // trace's 4-byte key and sharding slot (as in `tag_index`) instead of ids.
                "span_index",
                format!(
                    "service {}, name {}, kind UInt8, timestamp DateTime{delta}, start_ns UInt64{delta}, \
                     duration_ns UInt64{plain_zstd}, error UInt8, resource_id UInt64{plain_zstd}, \
                     trace_key UInt32{plain_zstd}, slot UInt16",
                    lc("String"),
                    lc("String")
                ),
                "MergeTree() PARTITION BY toDate(timestamp) ORDER BY (service, name, timestamp)".to_owned(),
                "slot",
            ),
            (
                // The search rows of schema version 9: per (service, operation, kind, second,
                // slot) of an insert, its spans as arrays in the order of their traces' numbers
                // (`trace_refs.idx`; the first as in `tag_refs`, then `UInt16` steps): the
                // millisecond of each span's start within the second, its duration
                // (`index_duration`) and its resource (its place in `resources`, the row's
                // resources). An operation's spans of a second take one row, and a trace number
                // a few bits where a 4-byte trace key took almost four bytes. `longest`,
                // `shortest` and `resources` let a search skip a row without flattening it.
                "span_refs",
                format!(
                    "service {}, name {}, kind UInt8, timestamp DateTime{delta}, first UInt16{plain_zstd}, \
                     first_high UInt16{plain_zstd}, steps Array(UInt16){plain_zstd}, starts Array(UInt16){plain_zstd}, \
                     durations Array(UInt64){plain_zstd}, resources Array(UInt64){plain_zstd}, \
                     resource_places Array(UInt16){plain_zstd}, longest UInt64{plain_zstd}, shortest UInt64{plain_zstd}, \
                     slot UInt16",
                    lc("String"),
                    lc("String")
                ),
                "MergeTree() PARTITION BY toDate(timestamp) ORDER BY (service, name, timestamp)".to_owned(),
                "slot",
            ),
            (
                "tags",
                format!(
                    "key {}, value String{plain_zstd}, service {}, timestamp DateTime{delta}, \
                     trace_id FixedString(16){plain_zstd}",
                    lc("String"),
                    lc("String")
                ),
                "MergeTree() PARTITION BY toDate(timestamp) ORDER BY (key, value, timestamp)".to_owned(),
                "reinterpretAsUInt64(trace_id)",
            ),
            (
                "trace_tags",
                format!(
                    "key {}, value String{plain_zstd}, service {}, timestamp DateTime{delta}, trace_key UInt64{plain_zstd}",
                    lc("String"),
                    lc("String")
                ),
                "MergeTree() PARTITION BY toDate(timestamp) ORDER BY (key, value, timestamp)".to_owned(),
                "trace_key",
            ),
            (
                // `slot` is the trace's sharding slot (its 8-byte key modulo the cluster's total
                // weight, computed by Skein): the 4-byte key alone cannot say which shard holds
                // the trace. Within one server it is one value, which compresses to nothing.
                "tag_index",
                format!(
                    "key {}, value String{plain_zstd}, service {}, timestamp DateTime{delta}, \
                     trace_key UInt32{plain_zstd}, slot UInt16",
                    lc("String"),
                    lc("String")
                ),
                "MergeTree() PARTITION BY toDate(timestamp) ORDER BY (key, value, timestamp)".to_owned(),
                "slot",
            ),
            (
                // The traces of an insert by number: `idx` is the number an insert gave a trace
                // (see `tag_refs`), one row per second the trace's spans in the insert start
                // in, with the trace's 4-byte key and slot.
                "trace_refs",
                format!(
                    "timestamp DateTime{delta}, idx UInt32{delta}, trace_key UInt32{plain_zstd}, slot UInt16"
                ),
                format!(
                    "MergeTree() PARTITION BY toDate(timestamp) ORDER BY (timestamp, idx) \
                     SETTINGS index_granularity = {TRACE_REFS_INDEX_GRANULARITY}"
                ),
                "slot",
            ),
            (
                // The tag index (schema version 8): per distinct (key, value, service, second,
                // slot) of an insert, the sorted numbers of the insert's traces that have it.
                // A value many traces share is one row per second instead of one per trace, and
                // a number takes about a byte and a half where a 4-byte trace key took four.
                // Version 8 wrote the numbers into `idxs` as `UInt32` steps; version 9 writes
                // the first into `first` and `first_high` (its low and high 16 bits) and the
                // steps into `steps` as `UInt16`s (`idxs` empty), and a value longer than 16
                // bytes as 0xFF and 4 bytes of its hash.
                "tag_refs",
                format!(
                    "key {}, value String{plain_zstd}, service {}, timestamp DateTime{delta}, \
                     idxs Array(UInt32){delta}, slot UInt16, first UInt16{plain_zstd}, first_high UInt16{plain_zstd}, \
                     steps Array(UInt16){plain_zstd}",
                    lc("String"),
                    lc("String")
                ),
                "MergeTree() PARTITION BY toDate(timestamp) ORDER BY (key, value, timestamp)".to_owned(),
                "slot",
            ),
            (
                // A value (almost) every span of an operation had in one batch: one row per
                // batch, with the time the batch's spans of the operation span.
                "operation_tags",
                format!(
                    "key {}, value String{plain_zstd}, service {}, name {}, timestamp DateTime, last DateTime",
                    lc("String"),
                    lc("String"),
                    lc("String")
                ),
                "MergeTree() PARTITION BY toDate(timestamp) ORDER BY (key, value, service, name, timestamp)"
                    .to_owned(),
                "rand()",
            ),
            (
                "red",
                format!(
                    "service {}, name {}, kind UInt8, minute DateTime, calls UInt64, errors UInt64, zeros UInt64, \
                     latencyMap Nested(bucket Int32, count UInt64)",
                    lc("String"),
                    lc("String")
                ),
                "SummingMergeTree() PARTITION BY toDate(minute) ORDER BY (service, name, kind, minute)"
                    .to_owned(),
                "rand()",
            ),
        ];
        let mut out = Vec::new();
        for (name, columns, engine, shard_by) in tables {
            let local = self.local(name);
            out.push(format!("CREATE TABLE IF NOT EXISTS {local} ({columns}) ENGINE = {engine}"));
            if let Some(cluster) = &self.cluster {
                out.push(format!(
                    "CREATE TABLE IF NOT EXISTS {} AS {local} ENGINE = Distributed({}, {}, {}, {shard_by})",
                    self.table(name),
                    quote(cluster),
                    quote(&self.database),
                    quote(&format!("{name}_local")),
                ));
            }
        }
        out
    }

    /// Statements that bring tables made by an older schema version up to this one, given the
    /// columns each local table already has on the server (`columns(table)`): `search.resource_id`
    /// (version 3; rows written before hold 0, which no resource has) and
    /// `spans.parent_span_id` (version 6; rows written before hold zeros and keep their parent
    /// in their payload), on the local table and, when sharded, the Distributed one; and, on
    /// servers with codecs, `spans.payload`'s codec and compression blocks (version 7), when
    /// the database was at version 1 to 6 (`from`; 0 for a database created now, whose tables
    /// have them), so that they run once and not at every later migration.
    pub fn upgrade_statements(
        &self,
        f: &Features,
        from: u32,
        columns: impl Fn(&str) -> Vec<String>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (table, column, ty) in [
            ("search", "resource_id", "UInt64"),
            ("spans", "parent_span_id", "FixedString(8)"),
            ("tag_refs", "first", "UInt16"),
            ("tag_refs", "first_high", "UInt16"),
            ("tag_refs", "steps", "Array(UInt16)"),
        ] {
            let have = columns(table);
            if have.is_empty() || have.iter().any(|c| c == column) {
                continue;
            }
            out.push(format!(
                "ALTER TABLE {} ADD COLUMN {column} {ty}{}",
                self.local(table),
                f.codec("ZSTD(1)")
            ));
            if self.cluster.is_some() {
                out.push(format!("ALTER TABLE {} ADD COLUMN {column} {ty}", self.table(table)));
            }
        }
        // Version 7: `spans` made by an older version on a server with codecs gets version 7's
        // payload codec and compression blocks (both apply to the parts written from then on).
        if f.modern && (1..7).contains(&from) && !columns("spans").is_empty() {
            let spans = self.local("spans");
            out.push(format!("ALTER TABLE {spans} MODIFY COLUMN payload String CODEC({PAYLOAD_CODEC})"));
            if f.table_compress_blocks() {
                out.push(format!(
                    "ALTER TABLE {spans} MODIFY SETTING min_compress_block_size = {SPANS_COMPRESS_BLOCK}"
                ));
            }
        }
        out
    }
}

/// One shard of the cluster: its weight and a client per replica.
#[derive(Clone, Debug)]
pub struct Shard {
    pub number: u32,
    pub weight: u32,
    pub replicas: Vec<Client>,
}

/// The shards, and which one a sharding key goes to (the rule of ClickHouse's Distributed
/// engine: key modulo the sum of weights, slots given to shards in order by weight).
#[derive(Clone, Debug)]
pub struct Topology {
    pub shards: Vec<Shard>,
    slots: Vec<usize>,
}

impl Topology {
    pub fn single(client: Client) -> Topology {
        Topology { shards: vec![Shard { number: 1, weight: 1, replicas: vec![client] }], slots: vec![0] }
    }

    /// Reads the cluster from `system.clusters` of the server `entry` talks to. Each replica
    /// is reached over HTTP at its host and the entry URL's port.
    pub async fn of_cluster(entry: &Client, cluster: &str) -> Result<Topology, TopologyError> {
        let sql = format!(
            "SELECT toUInt32(shard_num), toUInt32(shard_weight), host_address FROM system.clusters \
             WHERE cluster = {} ORDER BY shard_num, replica_num FORMAT RowBinary",
            quote(cluster)
        );
        let rows = entry.query(&sql, &[]).await.map_err(TopologyError::Query)?;
        let mut r = Reader::new(&rows);
        let mut shards: Vec<Shard> = Vec::new();
        while !r.is_empty() {
            let bad = |e: crate::codec::DecodeError| TopologyError::Bad(e.to_string());
            let number = u32::from_le_bytes(r.array().map_err(bad)?);
            let weight = u32::from_le_bytes(r.array().map_err(bad)?);
            let host = r.text().map_err(bad)?.to_owned();
            let replica = entry.at(&host, entry.port());
            match shards.last_mut() {
                Some(s) if s.number == number => s.replicas.push(replica),
                _ => shards.push(Shard { number, weight, replicas: vec![replica] }),
            }
        }
        if shards.is_empty() {
            return Err(TopologyError::NoSuchCluster(cluster.to_owned()));
        }
        let mut slots = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            slots.extend(std::iter::repeat_n(i, s.weight as usize));
        }
        if slots.is_empty() {
            return Err(TopologyError::Bad(format!("every shard of cluster {cluster} has weight 0")));
        }
        if slots.len() > usize::from(u16::MAX) + 1 {
            return Err(TopologyError::Bad(format!(
                "the shard weights of cluster {cluster} add up to {}; Skein supports at most 65,536",
                slots.len()
            )));
        }
        Ok(Topology { shards, slots })
    }

    /// The shard holding rows with this sharding key.
    pub fn shard_of(&self, key: u64) -> usize {
        self.slots[self.slot_of(key) as usize]
    }

    /// The slot of a sharding key: the key modulo the total weight. A Distributed table whose
    /// sharding expression is the slot puts a row on the same shard as the key would.
    pub fn slot_of(&self, key: u64) -> u16 {
        (key % self.slots.len() as u64) as u16
    }

    pub fn is_sharded(&self) -> bool {
        self.shards.len() > 1
    }
}

/// The sharding key of a trace: its first eight bytes read little-endian, exactly what the
/// Distributed tables compute with `reinterpretAsUInt64(trace_id)`.
pub fn trace_key(trace_id: &[u8; 16]) -> u64 {
    u64::from_le_bytes(trace_id[..8].try_into().expect("8 bytes"))
}

/// The key of a trace in `tag_index`: its first four bytes read little-endian, what
/// `reinterpretAsUInt32(trace_id)` and `toUInt32(trace_key)` compute. Several traces may share
/// one; a search turns keys into the ids of every trace that has them and checks each.
pub fn short_trace_key(trace_id: &[u8; 16]) -> u32 {
    u32::from_le_bytes(trace_id[..4].try_into().expect("4 bytes"))
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{0}")]
    Query(ChError),
    #[error(
        "ClickHouse knows no cluster named {0:?}: check --clickhouse-cluster against <remote_servers> in the server's configuration (SELECT DISTINCT cluster FROM system.clusters lists them)"
    )]
    NoSuchCluster(String),
    #[error("unexpected answer reading the cluster: {0}")]
    Bad(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_choose_features() {
        assert!(!Features::from_version("18.16.1").unwrap().modern);
        assert!(!Features::from_version("19.17.4.11").unwrap().modern);
        assert!(Features::from_version("20.3.1").unwrap().modern);
        assert!(Features::from_version("26.1.2.3").unwrap().modern);
        assert!(Features::from_version("banana").is_err());
    }

    #[test]
    fn old_servers_get_no_codecs_and_new_ones_do() {
        let layout = Layout { database: "skein".into(), cluster: None };
        let old = layout.create_statements(&Features::from_version("18.16.1").unwrap()).join("\n");
        assert!(!old.contains("CODEC") && !old.contains("LowCardinality"), "{old}");
        let new = layout.create_statements(&Features::from_version("26.1").unwrap()).join("\n");
        assert!(new.contains("CODEC(ZSTD(3))") && new.contains("LowCardinality(String)"), "{new}");
        assert!(new.contains("payload String CODEC(ZSTD(6))"), "{new}");
        // The table setting exists from 21.1 on; older servers take it from the user profile.
        assert!(new.contains("min_compress_block_size = 1048576"), "{new}");
        let v20 = layout.create_statements(&Features::from_version("20.3.1").unwrap()).join("\n");
        assert!(v20.contains("CODEC(ZSTD(6))") && !v20.contains("min_compress_block_size"), "{v20}");
        assert!(!old.contains("min_compress_block_size"), "{old}");
    }

    #[test]
    fn the_payload_codec_is_changed_once_when_migrating_from_before_version_7() {
        let layout = Layout { database: "skein".into(), cluster: None };
        let modern = Features::from_version("26.9.2.1").unwrap();
        let has = |t: &str| -> Vec<String> {
            match t {
                "spans" => vec!["trace_id".into(), "payload".into(), "parent_span_id".into()],
                "search" => vec!["resource_id".into()],
                _ => Vec::new(),
            }
        };
        let modify = |from: u32| {
            layout.upgrade_statements(&modern, from, has).iter().filter(|s| s.contains("MODIFY")).count()
        };
        assert_eq!(modify(6), 2, "codec and compression blocks, from version 6");
        assert_eq!(modify(1), 2);
        assert_eq!(modify(0), 0, "a database created now has them");
        assert_eq!(modify(7), 0, "applied when it went to version 7");
        let old = Features::from_version("18.16.1").unwrap();
        assert!(layout.upgrade_statements(&old, 6, has).is_empty(), "no codecs on 18.16");
    }

    #[test]
    fn sharded_layout_makes_local_and_distributed_tables() {
        let layout = Layout { database: "skein".into(), cluster: Some("c'1".into()) };
        let ddl = layout.create_statements(&Features::from_version("18.16.1").unwrap());
        assert_eq!(ddl.len(), 30);
        assert!(ddl.iter().any(|d| d.contains("skein.tag_refs AS skein.tag_refs_local ENGINE = Distributed('c\\'1', 'skein', 'tag_refs_local', slot)")));
        assert!(ddl.iter().any(|d| d.contains("skein.trace_refs AS skein.trace_refs_local ENGINE = Distributed('c\\'1', 'skein', 'trace_refs_local', slot)")));
        assert!(ddl.iter().any(|d| d.contains("skein.span_refs AS skein.span_refs_local ENGINE = Distributed('c\\'1', 'skein', 'span_refs_local', slot)")));
        assert!(ddl[7].contains("skein.spans AS skein.spans_local ENGINE = Distributed('c\\'1', 'skein', 'spans_local', reinterpretAsUInt64(trace_id))"), "{}", ddl[5]);
        assert!(ddl.iter().any(|d| d.contains("skein.traces AS skein.traces_local ENGINE = Distributed('c\\'1', 'skein', 'traces_local', reinterpretAsUInt64(trace_id))")));
    }

    #[test]
    fn trace_keys_follow_clickhouse_reinterpret() {
        // SELECT reinterpretAsUInt64(unhex('0102030405060708090a0b0c0d0e0f10')) = 578437695752307201
        let id: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        assert_eq!(trace_key(&id), 578437695752307201);
        // SELECT reinterpretAsUInt32(unhex('0102…')) = toUInt32(578437695752307201) = 67305985
        assert_eq!(short_trace_key(&id), 67305985);
        assert_eq!(short_trace_key(&id), trace_key(&id) as u32);
    }

    #[test]
    fn a_slot_goes_to_the_shard_of_its_key() {
        let shard = |number, weight| Shard { number, weight, replicas: Vec::new() };
        let t = Topology { shards: vec![shard(1, 2), shard(2, 1)], slots: vec![0, 0, 1] };
        for key in [0u64, 1, 2, 3, 4, 5, u64::MAX, u64::MAX - 1] {
            let slot = t.slot_of(key);
            assert!(slot < 3);
            // ClickHouse computes `slot % total weight`, which is the slot itself.
            assert_eq!(t.slots[(u64::from(slot) % 3) as usize], t.shard_of(key));
        }
    }
}
