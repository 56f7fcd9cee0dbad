//! The WAL through its public surface: reopen, rotation, torn and corrupt tails, injected
//! faults (disk full, short writes, failed fsync), a model-based property test with reopens,
//! and a child process killed with SIGKILL while appending.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use skein_wal::fs::{FaultyFs, OsFs};
use skein_wal::{FsyncPolicy, Wal, WalConfig, WalError};

fn config(dir: &Path) -> WalConfig {
    WalConfig { dir: dir.to_owned(), segment_bytes: 1024 * 1024, fsync: FsyncPolicy::Always, writers: 1 }
}

fn open(dir: &Path) -> (Wal, skein_wal::Recovery) {
    Wal::open(config(dir), Arc::new(OsFs)).unwrap()
}

fn payloads(recovery: &skein_wal::Recovery) -> Vec<Vec<u8>> {
    recovery.records.iter().map(|(_, r)| r.clone()).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn records_survive_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, rec) = open(dir.path());
    assert!(rec.records.is_empty() && rec.truncations.is_empty());
    let p1 = wal.append_blocking(b"one".to_vec()).unwrap();
    let p2 = wal.append_blocking(b"two".to_vec()).unwrap();
    assert!(p1 < p2);
    drop(wal);
    let (wal, rec) = open(dir.path());
    assert_eq!(payloads(&rec), [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(rec.records[0].0, p1);
    wal.append_blocking(b"three".to_vec()).unwrap();
    drop(wal);
    assert_eq!(payloads(&open(dir.path()).1).len(), 3);
}

/// Several writers: appends are spread over them, each into segments of its own with ids
/// unique across writers; a rotation puts every earlier record below the id it returns;
/// removal deletes every writer's old segments and never a current one; a torn tail in any
/// writer's segment is cut on reopen; every intact record comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_writers_share_the_appends_and_rotate_together() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig { writers: 3, ..config(dir.path()) };
    let (wal, _) = Wal::open(cfg.clone(), Arc::new(OsFs)).unwrap();
    assert_eq!(wal.writers(), 3);
    let mut before = Vec::new();
    for i in 0..12u8 {
        before.push(wal.append(vec![i; 10]).await.unwrap());
    }
    let used: std::collections::BTreeSet<u64> = before.iter().map(|p| p.segment).collect();
    assert_eq!(used.len(), 3, "each writer has its own segment: {before:?}");
    let boundary = wal.rotate().await.unwrap();
    assert!(before.iter().all(|p| p.segment < boundary), "{before:?} < {boundary}");
    let mut after = Vec::new();
    for i in 12..18u8 {
        after.push(wal.append(vec![i; 10]).await.unwrap());
    }
    assert!(after.iter().all(|p| p.segment >= boundary), "{after:?} >= {boundary}");
    assert_eq!(wal.remove_segments_before(boundary).await.unwrap(), 3);
    // Nothing current is deleted, whatever the id asked for.
    assert_eq!(wal.remove_segments_before(u64::MAX).await.unwrap(), 0);
    drop(wal);
    let (_, rec) = Wal::open(cfg.clone(), Arc::new(OsFs)).unwrap();
    let mut got = payloads(&rec);
    got.sort();
    assert_eq!(got, (12..18u8).map(|i| vec![i; 10]).collect::<Vec<_>>());

    // A torn tail in the lowest segment (not the newest) is cut; the rest is read.
    let lowest = segments(dir.path()).into_iter().next().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&lowest).unwrap();
    f.write_all(&[100, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let (wal, rec) = Wal::open(cfg, Arc::new(OsFs)).unwrap();
    assert_eq!(rec.truncations.len(), 1, "{:?}", rec.truncations);
    assert_eq!(rec.records.len(), 6);
    wal.append(b"more".to_vec()).await.unwrap();
}

#[test]
fn segments_rotate_and_old_ones_can_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig { segment_bytes: 200, ..config(dir.path()) };
    let (wal, _) = Wal::open(cfg.clone(), Arc::new(OsFs)).unwrap();
    let positions: Vec<_> = (0..10u8).map(|i| wal.append_blocking(vec![i; 50]).unwrap()).collect();
    let last_segment = positions.last().unwrap().segment;
    assert!(last_segment >= 4, "10 records of 58 bytes in 200-byte segments: {positions:?}");
    let removed = wal.remove_segments_before_blocking(last_segment).unwrap();
    assert_eq!(removed as u64, last_segment - 1);
    drop(wal);
    let (_, rec) = Wal::open(cfg, Arc::new(OsFs)).unwrap();
    assert!(rec.records.iter().all(|(p, _)| p.segment == last_segment));
    assert_eq!(rec.records.last().unwrap().1, vec![9u8; 50]);
}

#[test]
fn torn_tail_is_truncated_and_reported_then_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append_blocking(b"kept".to_vec()).unwrap();
    drop(wal);
    let seg = segments(dir.path()).pop().unwrap();
    let intact = std::fs::metadata(&seg).unwrap().len();
    // A frame that announces 100 bytes but has 3: the process died mid-write.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&100u32.to_le_bytes()).unwrap();
    f.write_all(&[0, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);

    let (wal, rec) = open(dir.path());
    assert_eq!(payloads(&rec), [b"kept".to_vec()]);
    assert_eq!(rec.truncations.len(), 1);
    let t = &rec.truncations[0];
    assert_eq!((t.at, t.dropped_bytes), (intact, 11));
    assert_eq!(t.reason, "torn record: 100 bytes announced, 3 present");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), intact, "the tail is cut on disk");
    wal.append_blocking(b"after".to_vec()).unwrap();
    drop(wal);
    let (_, rec) = open(dir.path());
    assert_eq!(payloads(&rec), [b"kept".to_vec(), b"after".to_vec()]);
    assert!(rec.truncations.is_empty());
}

#[test]
fn crc_mismatch_stops_at_the_corrupt_record() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    let p =
        [b"first".to_vec(), b"second".to_vec(), b"third".to_vec()].map(|r| wal.append_blocking(r).unwrap());
    drop(wal);
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[p[1].offset as usize + 8] ^= 0xff; // flip a payload byte of "second"
    std::fs::write(&seg, &bytes).unwrap();
    let (_, rec) = open(dir.path());
    assert_eq!(payloads(&rec), [b"first".to_vec()]);
    assert_eq!(rec.truncations[0].reason, "record crc mismatch");
    assert_eq!(rec.truncations[0].at, p[1].offset);
}

#[test]
fn a_segment_with_a_foreign_header_is_set_aside_and_the_rest_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig { segment_bytes: 100, ..config(dir.path()) };
    let (wal, _) = Wal::open(cfg.clone(), Arc::new(OsFs)).unwrap();
    for i in 0..3u8 {
        wal.append_blocking(vec![i; 60]).unwrap();
    }
    drop(wal);
    let first = segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[..8].copy_from_slice(b"GARBAGE!");
    std::fs::write(&first, &bytes).unwrap();
    let (_, rec) = Wal::open(cfg, Arc::new(OsFs)).unwrap();
    assert_eq!(payloads(&rec), [vec![1u8; 60], vec![2u8; 60]]);
    assert_eq!(rec.truncations[0].reason, "not a skein wal segment (bad magic)");
    assert!(first.with_extension("wal.corrupt").exists(), "kept aside for a person to inspect");
}

/// A WAL in `dir` on a fault-injecting file system that syncs only when told (its interval is
/// an hour), with a runtime for its async calls.
fn syncing_when_told(dir: &Path) -> (Wal, WalConfig, FaultyFs, tokio::runtime::Runtime) {
    let fs = FaultyFs::default();
    let cfg = WalConfig { fsync: FsyncPolicy::Interval(Duration::from_secs(3600)), ..config(dir) };
    let (wal, _) = Wal::open(cfg.clone(), Arc::new(fs.clone())).unwrap();
    (wal, cfg, fs, tokio::runtime::Builder::new_current_thread().build().unwrap())
}

/// A rotation syncs nothing (a head is cut every few thousand spans): the closed segment's
/// records, the new segment and the directory are synced by the writer's next sync, so a
/// record acknowledged before the rotation is durable from then on.
#[test]
fn a_rotated_segment_is_synced_by_the_next_sync_not_at_the_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, cfg, fs, rt) = syncing_when_told(dir.path());
    let before = wal.append_blocking(b"before the rotation".to_vec()).unwrap();
    let fsyncs = fs.fsyncs();
    let new_segment = rt.block_on(wal.rotate()).unwrap();
    assert!(new_segment > before.segment);
    assert_eq!(fs.fsyncs(), fsyncs, "the rotation synced a file");
    wal.sync_blocking().unwrap();
    assert_eq!(fs.fsyncs(), fsyncs + 2, "the closed segment and the new one");
    wal.sync_blocking().unwrap();
    assert_eq!(fs.fsyncs(), fsyncs + 3, "the new one only: the closed one is synced once");
    // A closed segment whose sync fails poisons the writer, as the current one's does.
    let after = wal.append_blocking(b"after".to_vec()).unwrap();
    assert_eq!(after.segment, new_segment);
    rt.block_on(wal.rotate()).unwrap();
    fs.fail_next_fsync();
    assert!(matches!(wal.sync_blocking().unwrap_err(), WalError::Poisoned(_)));
    drop(wal);
    let (_, rec) = Wal::open(cfg, Arc::new(OsFs)).unwrap();
    assert_eq!(payloads(&rec), [b"before the rotation".to_vec(), b"after".to_vec()]);
    assert!(rec.truncations.is_empty());
}

/// A closed segment deleted before the next sync (its records are in a block) is not synced.
#[test]
fn a_closed_segment_deleted_before_the_next_sync_is_not_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, fs, rt) = syncing_when_told(dir.path());
    wal.append_blocking(b"in a block soon".to_vec()).unwrap();
    let new_segment = rt.block_on(wal.rotate()).unwrap();
    assert_eq!(wal.remove_segments_before_blocking(new_segment).unwrap(), 1);
    let fsyncs = fs.fsyncs();
    wal.sync_blocking().unwrap();
    assert_eq!(fs.fsyncs(), fsyncs + 1, "the new segment only");
}

/// A segment a crash took before its first sync (empty, or part of its header) never held a
/// record: opening removes it without reporting a damaged WAL.
#[test]
fn a_segment_lost_before_its_first_sync_is_removed_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append_blocking(b"kept".to_vec()).unwrap();
    drop(wal);
    let last = segments(dir.path()).pop().unwrap();
    let id: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let header = std::fs::read(&last).unwrap()[..24].to_vec();
    let empty = dir.path().join(format!("{:020}.wal", id + 1));
    std::fs::write(&empty, b"").unwrap();
    // Part of the header of segment id + 2: its magic and version, as the first bytes of any.
    let torn = dir.path().join(format!("{:020}.wal", id + 2));
    std::fs::write(&torn, &header[..8]).unwrap();
    let (wal, rec) = open(dir.path());
    assert_eq!(payloads(&rec), [b"kept".to_vec()]);
    assert!(rec.truncations.is_empty(), "{:?}", rec.truncations);
    assert!(!empty.exists() && !torn.exists());
    assert!(segments(dir.path()).iter().all(|p| p.extension().unwrap() == "wal"));
    let next = wal.append_blocking(b"next".to_vec()).unwrap();
    assert!(next.segment <= id + 3, "segment ids go on: {next:?}");
}

#[test]
fn records_that_can_never_be_written_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    assert!(matches!(wal.append_blocking(Vec::new()), Err(WalError::EmptyRecord)));
    assert!(matches!(
        wal.append_blocking(vec![0; skein_wal::MAX_RECORD_BYTES + 1]),
        Err(WalError::RecordTooLarge(_))
    ));
    wal.append_blocking(b"fine".to_vec()).unwrap();
}

#[test]
fn disk_full_refuses_the_append_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let (wal, _) = Wal::open(config(dir.path()), Arc::new(fs.clone())).unwrap();
    wal.append_blocking(b"before".to_vec()).unwrap();
    fs.short_write_then_enospc(5);
    let err = wal.append_blocking(b"refused record".to_vec()).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    // Space is back: appends work again, and nothing half-written sits between records.
    wal.append_blocking(b"after".to_vec()).unwrap();
    drop(wal);
    let (_, rec) = Wal::open(config(dir.path()), Arc::new(OsFs)).unwrap();
    assert_eq!(payloads(&rec), [b"before".to_vec(), b"after".to_vec()]);
    assert!(rec.truncations.is_empty(), "{:?}", rec.truncations);
}

#[test]
fn failed_fsync_poisons_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let (wal, _) = Wal::open(config(dir.path()), Arc::new(fs.clone())).unwrap();
    wal.append_blocking(b"durable".to_vec()).unwrap();
    fs.fail_next_fsync();
    let err = wal.append_blocking(b"unknown fate".to_vec()).unwrap_err();
    assert!(matches!(err, WalError::Poisoned(_)), "{err}");
    let err = wal.append_blocking(b"refused".to_vec()).unwrap_err();
    assert!(err.to_string().contains("restart to recover"), "{err}");
    drop(wal);
    let (wal, rec) = Wal::open(config(dir.path()), Arc::new(OsFs)).unwrap();
    assert_eq!(rec.records[0].1, b"durable");
    assert!(payloads(&rec).iter().all(|r| r != b"refused"));
    wal.append_blocking(b"works again".to_vec()).unwrap();
}

#[test]
fn concurrent_appends_are_all_kept_with_unique_positions() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let (wal, _) = Wal::open(config(dir.path()), Arc::new(fs.clone())).unwrap();
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..50u8).map(|i| wal.append_blocking(vec![t, i]).unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut positions: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), 400);
    let fsyncs = fs.fsyncs();
    println!("400 appends from 8 threads took {fsyncs} fsyncs (group commit)");
    drop(Arc::try_unwrap(wal).unwrap());
    let (_, rec) = Wal::open(config(dir.path()), Arc::new(OsFs)).unwrap();
    let mut got = payloads(&rec);
    got.sort();
    let mut want: Vec<Vec<u8>> = (0..8u8).flat_map(|t| (0..50u8).map(move |i| vec![t, i])).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn async_appends_work_from_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(
        WalConfig { fsync: FsyncPolicy::Interval(Duration::from_millis(5)), ..config(dir.path()) },
        Arc::new(OsFs),
    )
    .unwrap();
    let p = wal.append(b"from a task".to_vec()).await.unwrap();
    assert_eq!(p.offset, skein_wal::SEGMENT_HEADER_LEN);
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Reopen,
    TearTail(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 1..300).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => proptest::collection::vec(any::<u8>(), 1..20).prop_map(Op::TearTail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever happens — appends, reopens, garbage after the last record — a reopen returns
    /// exactly the acknowledged records, in order.
    #[test]
    fn model_with_reopen(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WalConfig { segment_bytes: 1000, fsync: FsyncPolicy::Never, ..config(dir.path()) };
        let mut model: Vec<Vec<u8>> = Vec::new();
        let (mut wal, _) = Wal::open(cfg.clone(), Arc::new(OsFs)).unwrap();
        for op in ops {
            match op {
                Op::Append(r) => {
                    wal.append_blocking(r.clone()).unwrap();
                    model.push(r);
                }
                Op::Reopen => {
                    drop(wal);
                    let (w, rec) = Wal::open(cfg.clone(), Arc::new(OsFs)).unwrap();
                    prop_assert_eq!(payloads(&rec), model.clone());
                    wal = w;
                }
                Op::TearTail(garbage) => {
                    drop(wal);
                    let last = segments(dir.path()).into_iter().rfind(|p| p.extension().is_some_and(|e| e == "wal")).unwrap();
                    std::fs::OpenOptions::new().append(true).open(&last).unwrap().write_all(&garbage).unwrap();
                    let (w, rec) = Wal::open(cfg.clone(), Arc::new(OsFs)).unwrap();
                    prop_assert_eq!(payloads(&rec), model.clone());
                    wal = w;
                }
            }
        }
        drop(wal);
        let (_, rec) = Wal::open(cfg, Arc::new(OsFs)).unwrap();
        prop_assert_eq!(payloads(&rec), model);
    }
}

/// In the child: append numbered records forever, printing each number once acknowledged.
#[test]
fn child_append_forever() {
    let Some(dir) = std::env::var_os("SKEIN_WAL_CHILD_DIR") else { return };
    let cfg = WalConfig {
        dir: PathBuf::from(dir),
        segment_bytes: 64 * 1024,
        fsync: FsyncPolicy::Interval(Duration::from_millis(50)),
        writers: 2,
    };
    let (wal, _) = Wal::open(cfg, Arc::new(OsFs)).unwrap();
    let mut out = io::stdout().lock();
    for i in 0u64.. {
        let mut record = i.to_le_bytes().to_vec();
        record.resize(100 + (i % 400) as usize, 0xab);
        wal.append_blocking(record).unwrap();
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_during_appends_loses_no_acknowledged_record() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["child_append_forever", "--exact", "--nocapture", "--test-threads=1"])
            .env("SKEIN_WAL_CHILD_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = Vec::new();
        for line in io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("ack ") {
                acked.push(n.parse::<u64>().unwrap());
                if acked.len() == 2000 + round * 500 {
                    child.kill().unwrap(); // SIGKILL, mid-stream
                    break;
                }
            }
        }
        child.wait().unwrap();
        let (_, rec) =
            Wal::open(WalConfig { segment_bytes: 64 * 1024, ..config(dir.path()) }, Arc::new(OsFs)).unwrap();
        let present: std::collections::HashSet<u64> =
            rec.records.iter().map(|(_, r)| u64::from_le_bytes(r[..8].try_into().unwrap())).collect();
        let lost: Vec<_> = acked.iter().filter(|n| !present.contains(n)).collect();
        assert!(lost.is_empty(), "round {round}: acknowledged records lost after SIGKILL: {lost:?}");
    }
}
