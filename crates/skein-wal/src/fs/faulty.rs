//! [`FaultyFs`]: faults injected into the real file system, for tests (compiled for this
//! crate's tests and with the `testsuite` feature).

use std::io;
use std::path::{Path, PathBuf};

use super::{AppendFile, Fs, OsFs};

/// The real file system with faults injected on demand, for tests of the WAL and the engine:
/// a full disk, a short write, a failed fsync, slow block writes. Cloning shares the switches.
#[derive(Debug, Clone, Default)]
pub struct FaultyFs(std::sync::Arc<Faults>);

/// The switches of a [`FaultyFs`].
#[derive(Debug, Default)]
pub struct Faults {
    disk_full: std::sync::atomic::AtomicBool,
    short_write: std::sync::Mutex<Option<usize>>,
    fail_next_fsync: std::sync::atomic::AtomicBool,
    fsyncs: std::sync::atomic::AtomicUsize,
    write_atomic_delay: std::sync::Mutex<std::time::Duration>,
}

fn storage_full() -> io::Error {
    io::Error::from(io::ErrorKind::StorageFull)
}

impl FaultyFs {
    /// While set, every append and every new file fails with ENOSPC.
    pub fn set_disk_full(&self, full: bool) {
        self.0.disk_full.store(full, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next append writes `bytes` bytes, then fails with ENOSPC.
    pub fn short_write_then_enospc(&self, bytes: usize) {
        *self.0.short_write.lock().expect("fault lock") = Some(bytes);
    }

    /// The next fsync fails.
    pub fn fail_next_fsync(&self) {
        self.0.fail_next_fsync.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// fsyncs of appended files so far.
    pub fn fsyncs(&self) -> usize {
        self.0.fsyncs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every `write_atomic` (a block write) first sleeps this long: a slow disk.
    pub fn set_write_atomic_delay(&self, delay: std::time::Duration) {
        *self.0.write_atomic_delay.lock().expect("fault lock") = delay;
    }

    fn disk_full(&self) -> bool {
        self.0.disk_full.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn AppendFile>,
    fs: FaultyFs,
}

impl AppendFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.fs.disk_full() {
            return Err(storage_full());
        }
        let short = self.fs.0.short_write.lock().expect("fault lock").take();
        if let Some(n) = short {
            self.inner.write_all(&buf[..n.min(buf.len())])?;
            return Err(storage_full());
        }
        self.inner.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.fs.0.fsyncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.fs.0.fail_next_fsync.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.inner.sync_data()
    }
}

impl Fs for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        OsFs.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        OsFs.list(dir)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        OsFs.read(path)
    }
    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        OsFs.read_range(path, offset, len)
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        OsFs.len(path)
    }
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let delay = *self.0.write_atomic_delay.lock().expect("fault lock");
        std::thread::sleep(delay);
        if self.disk_full() {
            return Err(storage_full());
        }
        OsFs.write_atomic(path, bytes)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        Ok(Box::new(FaultyFile { inner: OsFs.open_append(path)?, fs: self.clone() }))
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        OsFs.truncate(path, len)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        OsFs.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsFs.sync_dir(dir)
    }
}
