//! Snapshots in files: an atomic save and a bounded load.
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest snapshot [`load_file`] reads: 4 GiB (a 1M-nodeid session with small
/// node values is about 15 MB).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 4 << 30;

/// Writes `bytes` to `path` atomically: into a new temporary file (mode 0600) in
/// the same directory, fsync, rename over `path`, fsync the directory. Afterwards
/// `path` holds either its old content or all of `bytes`, even across a crash.
///
/// # Errors
/// Any IO error; the temporary file is removed on failure.
pub fn save_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "snapshot path has no file name",
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&dir)?.sync_all()
}

/// Reads a snapshot file of at most [`DEFAULT_MAX_FILE_SIZE`] bytes.
///
/// # Errors
/// Any IO error; `InvalidData` if the file is larger than the limit.
pub fn load_file(path: &Path) -> io::Result<Vec<u8>> {
    load_file_with_limit(path, DEFAULT_MAX_FILE_SIZE)
}

/// Reads a file of at most `limit` bytes (checked before reading, and while
/// reading, in case the file grows).
///
/// # Errors
/// Any IO error; `InvalidData` if the file is larger than `limit`.
pub fn load_file_with_limit(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let too_large = |size: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is {size} bytes, more than the {limit}-byte limit for a snapshot",
                path.display()
            ),
        )
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    f.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(too_large(out.len() as u64));
    }
    Ok(out)
}
