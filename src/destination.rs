//! Where an incoming file lands, and how it gets there safely: a temporary
//! file created exclusively beside the final name, fsynced, then renamed into
//! place atomically (without clobbering unless overwriting was asked for).
//!
//! This module must never open the final name for writing, and must never
//! leave its temporary file behind on any failure: dropping a
//! [`PartialFile`] removes it.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::NamedTempFile;

use crate::exit_codes::io_reason;
use crate::names::{escape_for_terminal, shown, validate_name};
use crate::protocol::{Offer, Reason};
use crate::signals::{self, Watch};

/// Prefix of every temporary file xfer creates; the suffix is `.part`.
pub const TEMP_PREFIX: &str = ".xfer-";
pub const TEMP_SUFFIX: &str = ".part";

/// Where the receiver puts files, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Files land in this directory under the sender's name.
    Dir(PathBuf),
    /// The one incoming file lands at exactly this path.
    Output(PathBuf),
    /// The one incoming file goes to standard output as it arrives.
    Stdout,
}

/// Why an offer is declined; becomes a REFUSE frame and an exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// A file being received: the open temporary file and where it will go.
#[derive(Debug)]
pub struct PartialFile {
    temp: NamedTempFile,
    final_path: PathBuf,
    overwrite: bool,
    _watch: Watch,
}

/// Decides where `offer` would land and opens its temporary file, or says
/// why it must be refused. Nothing is written when this fails.
pub fn prepare(target: &Target, overwrite: bool, offer: &Offer) -> Result<PartialFile, Refusal> {
    validate_name(&offer.name).map_err(|e| {
        Refusal::new(
            Reason::BadName,
            format!("refused name '{}': {e}", shown(&offer.name)),
        )
    })?;
    let (dir, final_path) = match target {
        Target::Dir(dir) => (dir.clone(), dir.join(&offer.name)),
        Target::Output(path) => (parent_dir(path), path.clone()),
        Target::Stdout => {
            return Err(Refusal::new(
                Reason::LocalIo,
                "standard output is not a place for files",
            ));
        }
    };
    let shown = escape_for_terminal(&final_path.display().to_string());

    match fs::symlink_metadata(&final_path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Refusal::new(
                Reason::Exists,
                format!("'{shown}' exists and is a directory"),
            ));
        }
        Ok(_) if !overwrite => {
            return Err(Refusal::new(
                Reason::Exists,
                format!("'{shown}' already exists (the receiver can allow --overwrite)"),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Refusal::new(
                Reason::LocalIo,
                format!("cannot check '{shown}': {}", io_reason(&e)),
            ));
        }
    }

    let free = free_space(&dir).map_err(|e| {
        Refusal::new(
            Reason::LocalIo,
            format!(
                "cannot use directory '{}': {}",
                escape_for_terminal(&dir.display().to_string()),
                io_reason(&e)
            ),
        )
    })?;
    if offer.size > free {
        return Err(Refusal::new(
            Reason::TooLarge,
            format!(
                "'{}' needs {} but only {} is free at the destination",
                crate::names::shown(&offer.name),
                human_bytes(offer.size),
                human_bytes(free)
            ),
        ));
    }

    let temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(&dir)
        .map_err(|e| {
            Refusal::new(
                Reason::LocalIo,
                format!(
                    "cannot create a file in '{}': {}",
                    escape_for_terminal(&dir.display().to_string()),
                    io_reason(&e)
                ),
            )
        })?;
    let watch = signals::watch_temp(temp.path());
    Ok(PartialFile {
        temp,
        final_path,
        overwrite,
        _watch: watch,
    })
}

impl PartialFile {
    /// A writer for the data: all-zero chunks become holes instead of
    /// written blocks, so sparse files stay sparse and cost no disk.
    pub fn writer(&mut self) -> SparseWriter<'_> {
        SparseWriter {
            file: self.temp.as_file_mut(),
        }
    }

    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// Makes the verified `size` bytes durable and visible under their final
    /// name:
    /// permission bits and mtime applied, fsync, atomic rename, directory
    /// fsync. On error the temporary file is removed and the final name is
    /// untouched (or, with overwrite, still holds its old content).
    pub fn commit(self, offer: &Offer, size: u64) -> Result<PathBuf, Refusal> {
        let shown = escape_for_terminal(&self.final_path.display().to_string());
        let io_refusal = |what: &str, e: &io::Error| {
            Refusal::new(
                Reason::LocalIo,
                format!("{what} '{shown}': {}", io_reason(e)),
            )
        };
        let file = self.temp.as_file();
        // A trailing hole left by the sparse writer still counts as data.
        file.set_len(size)
            .map_err(|e| io_refusal("cannot size", &e))?;
        // Only permission bits travel, never set-id or sticky bits, and the
        // receiver's umask applies as it would to any file it creates.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
            offer.mode & 0o777 & !umask(),
        ))
        .map_err(|e| io_refusal("cannot set permissions of", &e))?;
        if let Some(mtime) = mtime_of(offer) {
            file.set_modified(mtime)
                .map_err(|e| io_refusal("cannot set the time of", &e))?;
        }
        file.sync_all()
            .map_err(|e| io_refusal("cannot flush data for", &e))?;

        let dir = parent_dir(&self.final_path);
        let final_path = self.final_path.clone();
        let persisted = if self.overwrite {
            self.temp.persist(&final_path).map(drop)
        } else {
            self.temp.persist_noclobber(&final_path).map(drop)
        };
        // On failure the PersistError still owns the temporary file and
        // removes it when dropped here.
        persisted.map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                Refusal::new(
                    Reason::Exists,
                    format!("'{shown}' appeared while receiving; kept it"),
                )
            } else {
                io_refusal("cannot rename into", &e.error)
            }
        })?;
        // The rename is durable only once the directory is synced.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(final_path)
    }
}

/// Writes data at the file's cursor, seeking over chunks that are all
/// zero. Only for files that start empty (holes read back as zeros).
pub struct SparseWriter<'a> {
    file: &'a mut File,
}

impl io::Write for SparseWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() >= 4096 && buf.iter().all(|&b| b == 0) {
            io::Seek::seek(self.file, io::SeekFrom::Current(buf.len() as i64))?;
            return Ok(buf.len());
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn mtime_of(offer: &Offer) -> Option<SystemTime> {
    let nanos = Duration::new(0, offer.mtime_nanos);
    if offer.mtime_secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(offer.mtime_secs as u64) + nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(offer.mtime_secs.unsigned_abs()))?
            .checked_add(nanos)
    }
}

/// This process's umask, read without changing it (Linux 4.7+ reports it
/// in /proc); 022 where it cannot be read.
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

/// Bytes available to an unprivileged writer in `dir`'s file system.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// `1.5 GiB`-style sizes for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn offer(name: &str, size: u64) -> Offer {
        Offer {
            flags: 0,
            size,
            mode: 0o100640,
            mtime_secs: 1_600_000_000,
            mtime_nanos: 5,
            name: name.into(),
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commit_places_file_with_mode_and_mtime_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let o = offer("a.txt", 3);
        let mut p = prepare(&Target::Dir(dir.path().into()), false, &o).unwrap();
        let temp_name = p
            .temp_path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(temp_name.starts_with(TEMP_PREFIX) && temp_name.ends_with(TEMP_SUFFIX));
        p.writer().write_all(b"abc").unwrap();
        let path = p.commit(&o, o.size).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        let meta = fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(
            meta.modified().unwrap(),
            UNIX_EPOCH + Duration::new(1_600_000_000, 5)
        );
        assert_eq!(entries(dir.path()), vec!["a.txt"]);
    }

    #[test]
    fn dropping_a_partial_file_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = prepare(&Target::Dir(dir.path().into()), false, &offer("a", 1)).unwrap();
        p.writer().write_all(b"x").unwrap();
        drop(p);
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn existing_file_is_refused_and_kept_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"old").unwrap();
        let t = Target::Dir(dir.path().into());
        let err = prepare(&t, false, &offer("a", 3)).unwrap_err();
        assert_eq!(err.reason, Reason::Exists);
        assert_eq!(entries(dir.path()), vec!["a"]);

        let o = offer("a", 3);
        let mut p = prepare(&t, true, &o).unwrap();
        p.writer().write_all(b"new").unwrap();
        p.commit(&o, o.size).unwrap();
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"new");
        assert_eq!(entries(dir.path()), vec!["a"]);
    }

    #[test]
    fn a_file_appearing_during_the_transfer_is_not_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let o = offer("a", 3);
        let mut p = prepare(&Target::Dir(dir.path().into()), false, &o).unwrap();
        p.writer().write_all(b"new").unwrap();
        fs::write(dir.path().join("a"), b"old").unwrap();
        let err = p.commit(&o, o.size).unwrap_err();
        assert_eq!(err.reason, Reason::Exists);
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"old");
        assert_eq!(entries(dir.path()), vec!["a"]);
    }

    #[test]
    fn bad_names_and_huge_sizes_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::Dir(dir.path().into());
        assert_eq!(
            prepare(&t, false, &offer("../x", 1)).unwrap_err().reason,
            Reason::BadName
        );
        assert_eq!(
            prepare(&t, false, &offer("big", u64::MAX))
                .unwrap_err()
                .reason,
            Reason::TooLarge
        );
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn output_target_lands_at_the_exact_path() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("chosen.bin");
        let o = offer("original-name", 2);
        let mut p = prepare(&Target::Output(out.clone()), false, &o).unwrap();
        p.writer().write_all(b"hi").unwrap();
        assert_eq!(p.commit(&o, o.size).unwrap(), out);
        assert_eq!(entries(dir.path()), vec!["chosen.bin"]);
    }

    #[test]
    fn zero_chunks_become_holes_and_trailing_holes_keep_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * 1024 * 1024;
        let o = offer("sparse", size);
        let mut p = prepare(&Target::Dir(dir.path().into()), false, &o).unwrap();
        let zeros = vec![0u8; 1024 * 1024];
        let mut w = p.writer();
        w.write_all(b"head").unwrap();
        w.write_all(&zeros[4..]).unwrap();
        w.write_all(&zeros).unwrap();
        w.write_all(&zeros).unwrap();
        let path = p.commit(&o, o.size).unwrap();
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, size);
        assert_eq!(&data[..4], b"head");
        assert!(data[4..].iter().all(|&b| b == 0));
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&path).unwrap().blocks() * 512 < size);
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
