#!/usr/bin/env python3
"""Runs Skein's ClickHouse DDL for modern servers and the query shapes the store sends
against a current ClickHouse in-process (PyPI `chdb-core`). Not part of scripts/test yet.

    python3 -m venv /tmp/chdb && /tmp/chdb/bin/pip install chdb-core
    SKEIN_DDL_VERSION=26.9 cargo test -q -p skein-clickhouse --lib print_ddl -- --ignored --nocapture \
      | grep '^CREATE' | /tmp/chdb/bin/python scripts/clickhouse-modern-check.py

The query texts below are copies of the shapes in crates/skein-clickhouse/src/store.rs.
"""
import sys, chdb
from chdb import session
s = session.Session()
ddl = [x.strip() for x in sys.stdin.read().split(";\n") if x.strip()]
s.query("CREATE DATABASE IF NOT EXISTS skein")
for d in ddl:
    s.query(d.rstrip(";"))
s.query("CREATE TABLE IF NOT EXISTS skein.schema_migrations (version UInt32, applied_at DateTime, by String) ENGINE = TinyLog"); s.query("INSERT INTO skein.schema_migrations VALUES (1, now(), 'x')")
print("DDL ok:", len(ddl), "statements")
tid = "unhex('0102030405060708090a0b0c0d0e0f10')"
sid = "unhex('0102030405060708')"
pid = "unhex('0000000000000001')"
s.query(f"INSERT INTO skein.spans (trace_id, span_id, timestamp, start_ns, resource_id, payload) VALUES ({tid}, {sid}, toDateTime(1764000000), 1764000000000000000, 7, 'x')")
s.query(f"INSERT INTO skein.search (service, name, kind, timestamp, start_ns, duration_ns, error, trace_id, span_id, parent_span_id) VALUES ('a','op',2,toDateTime(1764000000),1764000000000000000,5,0,{tid},{sid},{pid}), ('b','op2',3,toDateTime(1764000000),1764000000000000001,5,0,{tid},{pid},unhex('0000000000000000'))")
s.query(f"INSERT INTO skein.tags (key, value, service, timestamp, trace_id) VALUES ('k','v','a',toDateTime(1764000000),{tid})")
s.query("INSERT INTO skein.resources (id, shard_key, timestamp, payload) VALUES (7, 1, toDateTime(1764000000), 'r')")
s.query("INSERT INTO skein.operations (service, name, kind, date) VALUES ('a','op',2,toDate(20000))")
queries = [
 f"SELECT trace_id, resource_id, payload FROM skein.spans WHERE trace_id = {tid} FORMAT RowBinary",
 f"SELECT trace_id, resource_id, payload FROM skein.spans WHERE trace_id IN ({tid}, {tid}) FORMAT RowBinary",
 "SELECT id, any(payload) FROM skein.resources WHERE id IN (7, 8) GROUP BY id FORMAT RowBinary",
 "SELECT trace_id, toUInt64(max(timestamp)) AS t FROM skein.tags WHERE key = 'k' AND value IN ('v', 'w') AND timestamp >= toDateTime(0) AND timestamp <= toDateTime(4294967295) AND service = 'a' AND trace_id IN (SELECT trace_id FROM skein.tags WHERE key = 'k' AND value IN ('v') AND timestamp >= toDateTime(0) AND timestamp <= toDateTime(4294967295)) GROUP BY trace_id ORDER BY t DESC LIMIT 10 FORMAT RowBinary",
 "SELECT trace_id, max(start_ns) AS t FROM skein.search WHERE timestamp >= toDateTime(0) AND timestamp <= toDateTime(4294967295) AND start_ns >= 0 AND start_ns < 18446744073709551615 AND service = 'a' AND name = 'op' AND duration_ns >= 1 AND duration_ns <= 10 GROUP BY trace_id ORDER BY t DESC LIMIT 10 FORMAT RowBinary",
 "SELECT DISTINCT service FROM skein.operations FORMAT RowBinary",
 "SELECT DISTINCT name, kind FROM skein.operations WHERE service = 'a' AND kind = 2 FORMAT RowBinary",
 "SELECT parent_service, service, toUInt64(uniqExact(trace_id, span_id)) FROM skein.search ANY INNER JOIN (SELECT trace_id, span_id AS parent_span_id, service AS parent_service FROM skein.search WHERE timestamp >= toDateTime(0) AND timestamp <= toDateTime(4294967295)) AS parents USING (trace_id, parent_span_id) WHERE timestamp >= toDateTime(0) AND timestamp <= toDateTime(4294967295) AND start_ns >= 0 AND start_ns < 18446744073709551615 AND parent_service != service AND trace_id NOT IN (unhex('ffffffffffffffffffffffffffffffff')) GROUP BY parent_service, service FORMAT TSV",
 "SELECT DISTINCT partition_id FROM system.parts WHERE database = 'skein' AND table = 'spans' AND active FORMAT TSV",
 "SELECT toUInt32(max(version)) FROM skein.schema_migrations FORMAT TSV",
]
for q in queries:
    r = s.query(q)
    print("ok", len(r.bytes()), "bytes:", q[:70], "|", r.bytes()[:60] if "TSV" in q else "")
s.query("ALTER TABLE skein.spans DROP PARTITION ID '20251124'")
print("drop partition ok; spans left:", s.query("SELECT count() FROM skein.spans", "CSV").bytes())
