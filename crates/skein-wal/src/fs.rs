//! The one trait all file I/O of the WAL (and the engine) goes through, so tests can inject
//! faults: ENOSPC, short writes, failed fsyncs.

use std::fmt::Debug;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file opened for appending.
pub trait AppendFile: Send + Debug {
    /// Writes the whole buffer at the end of the file, or fails (possibly after a short write).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Writes the buffers one after another at the end of the file, as [`AppendFile::write_all`]
    /// of them joined would (and fails as it would, possibly after a short write). The default
    /// joins them; the real file system writes them as they are (`writev`).
    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        self.write_all(&bufs.concat())
    }
    /// Makes everything written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The file system operations Skein's storage needs.
pub trait Fs: Send + Sync + Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The paths of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// `len` bytes of `path` from `offset`.
    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Several ranges of `path` (offset, length), in the order given. The default reads them
    /// one by one; a file system that can opens the file once for all.
    fn read_ranges(&self, path: &Path, ranges: &[(u64, usize)]) -> io::Result<Vec<Vec<u8>>> {
        ranges.iter().map(|(offset, len)| self.read_range(path, *offset, *len)).collect()
    }
    /// The size of `path` in bytes.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Writes a whole new file atomically: to `<path>.tmp`, fsync, rename over `path`, fsync
    /// the directory. Readers never see a partial file.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Opens `path` for appending, creating it when missing.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Cuts `path` to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creation and removal of entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

/// `len` bytes of `file` from `offset`, read into room that is not zeroed first (a search
/// reads a few MB of Bloom filter lines at 100M spans: zeroing them before the read cost a
/// sixth of its instructions); an error when the file ends before. It moves the file's
/// position: `file` is the caller's own, opened for these reads.
fn read_at(mut file: &std::fs::File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    file.seek(io::SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ends before the range"));
    }
    Ok(buf)
}

#[derive(Debug)]
struct OsFile(std::fs::File);

impl AppendFile for OsFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        io::IoSlice::advance_slices(&mut rest, 0); // past leading empty buffers
        while !rest.is_empty() {
            match self.0.write_vectored(rest) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Fs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        read_at(&std::fs::File::open(path)?, offset, len)
    }

    fn read_ranges(&self, path: &Path, ranges: &[(u64, usize)]) -> io::Result<Vec<Vec<u8>>> {
        let file = std::fs::File::open(path)?;
        ranges.iter().map(|(offset, len)| read_at(&file, *offset, *len)).collect()
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            self.sync_dir(dir)?;
        }
        Ok(())
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(any(test, feature = "testsuite"))]
mod faulty;
#[cfg(any(test, feature = "testsuite"))]
pub use faulty::{Faults, FaultyFs};

/// Why [`lock_dir`] could not take a directory.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{0} is in use by another skein process")]
    Locked(PathBuf),
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Takes the exclusive lock of directory `dir` (the file `LOCK` in it), for as long as the
/// returned file is open: one process per data directory, since a second writer would
/// corrupt the WAL. The lock is the operating system's, so it goes with the process, also
/// on kill -9.
pub fn lock_dir(dir: &Path) -> Result<std::fs::File, LockError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LockError::Io { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Locked(dir.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(LockError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vectored append writes exactly what one append of the buffers joined writes — with
    /// empty buffers among them, and more buffers than one `writev` takes (1,024 on Linux) —
    /// after what the file held, and a faulty file system's faults apply to it as to
    /// `write_all`.
    #[test]
    fn a_vectored_append_writes_the_buffers_joined() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let owned: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| if i % 7 == 0 { Vec::new() } else { i.to_le_bytes().repeat(1 + i as usize % 5) })
            .collect();
        let bufs: Vec<&[u8]> = owned.iter().map(|b| &b[..]).collect();
        let mut file = OsFs.open_append(&path).expect("open");
        file.write_all(b"before").expect("write");
        file.write_all_vectored(&bufs).expect("vectored write");
        file.write_all_vectored(&[&[][..], &[][..]]).expect("nothing to write");
        drop(file);
        let mut expected = b"before".to_vec();
        expected.extend(owned.concat());
        assert_eq!(OsFs.read(&path).expect("read"), expected);

        let faulty = FaultyFs::default();
        let mut file = faulty.open_append(&dir.path().join("g")).expect("open");
        faulty.short_write_then_enospc(5);
        let err = file.write_all_vectored(&[b"abc", b"defgh"]).expect_err("a short write");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(faulty.read(&dir.path().join("g")).expect("read"), b"abcde");
    }

    /// Ranges read give exactly the file's bytes there, in the order asked, with one open for
    /// several; a range that runs past the end is an error, not a short answer.
    #[test]
    fn ranges_read_are_the_files_bytes_and_none_runs_past_its_end() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(OsFs.read_range(&path, 9_990, 10).expect("read"), &bytes[9_990..]);
        let ranges = [(5_000, 3_000), (0, 1), (9_999, 1), (1_234, 0)];
        let read = OsFs.read_ranges(&path, &ranges).expect("read");
        let want: Vec<&[u8]> = ranges.iter().map(|&(o, n)| &bytes[o as usize..o as usize + n]).collect();
        assert_eq!(read, want);
        let err = OsFs.read_range(&path, 9_995, 10).expect_err("past the end");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(OsFs.read_ranges(&path, &[(0, 10), (10_000, 1)]).is_err());
    }
}
