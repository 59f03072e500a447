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

use std::io::Seek;
use std::os::unix::fs::OpenOptionsExt;

use sha2::{Digest as _, Sha256};

use crate::exit_codes::io_reason;
use crate::names::{escape_for_terminal, shown, validate_name};
use crate::protocol::{FLAG_DIR, FLAG_PATH, FLAG_STREAM, Offer, Reason};
use crate::signals::{self, Watch};

/// Prefix of every temporary file xfer creates; the suffix is `.part`.
pub const TEMP_PREFIX: &str = ".xfer-";
pub const TEMP_SUFFIX: &str = ".part";
/// Suffix of a resumable partial file, kept after an interrupted transfer.
pub const PARTIAL_SUFFIX: &str = ".partial";

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

/// A file being received: the open partial file and where it will go.
///
/// Two kinds: a resumable partial (`.xfer-<hash>.partial`, named from the
/// final path, size and mtime) that survives an interrupted transfer so the
/// next attempt can continue it, and for streams a one-off temporary file
/// (`.xfer-<random>.part`) that is removed on any failure.
#[derive(Debug)]
pub struct PartialFile {
    file: File,
    path: PathBuf,
    final_path: PathBuf,
    overwrite: bool,
    resumable: bool,
    /// Bytes already held from an earlier, interrupted transfer.
    held: u64,
    /// Committed or discarded: nothing left for `Drop` to do.
    settled: bool,
    /// The sparse writer skipped a chunk of zeros.
    seeked: bool,
    _watch: Option<Watch>,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        // A resumable partial is kept for the next attempt; a one-off
        // temporary file never outlives its transfer.
        // An empty one (accepted, then never sent) holds nothing to resume.
        let empty = self.file.metadata().is_ok_and(|m| m.len() == 0);
        if !self.settled && (!self.resumable || empty) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// What to do with an offer that is not refused.
#[derive(Debug)]
pub enum Prepared {
    /// Receive the data into this partial file.
    Receive(PartialFile),
    /// The destination already holds this very file; nothing to send.
    Unchanged(PathBuf),
    /// A directory entry: the directory now exists here.
    Directory(PathBuf),
}

impl Prepared {
    /// The partial file, when data is to be received.
    pub fn partial(self) -> Option<PartialFile> {
        match self {
            Prepared::Receive(p) => Some(p),
            Prepared::Unchanged(_) | Prepared::Directory(_) => None,
        }
    }
}

/// Decides where `offer` would land and opens its partial file, finds the
/// file already there, or says why it must be refused. Nothing is written
/// when this fails.
pub fn prepare(target: &Target, overwrite: bool, offer: &Offer) -> Result<Prepared, Refusal> {
    let is_path = offer.flags & (FLAG_PATH | FLAG_DIR) != 0;
    let (dir, final_path) = match target {
        Target::Dir(dir) => {
            let final_path = resolve(dir, offer)?;
            if offer.flags & FLAG_DIR != 0 {
                return Ok(Prepared::Directory(final_path));
            }
            (parent_dir(&final_path), final_path)
        }
        Target::Output(_) | Target::Stdout if is_path => {
            return Err(Refusal::new(
                Reason::Unsupported,
                "this receiver takes exactly one file, not directories or paths",
            ));
        }
        Target::Output(path) => {
            validate_name(&offer.name).map_err(|e| bad_name(&offer.name, e))?;
            (parent_dir(path), path.clone())
        }
        Target::Stdout => {
            return Err(Refusal::new(
                Reason::LocalIo,
                "standard output is not a place for files",
            ));
        }
    };
    // Built only for a message: this runs once per file.
    let shown_final = || escape_for_terminal(&final_path.display().to_string());
    let shown_dir = || escape_for_terminal(&dir.display().to_string());

    match fs::symlink_metadata(&final_path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Refusal::new(
                Reason::Exists,
                format!("'{}' exists and is a directory", shown_final()),
            ));
        }
        Ok(meta)
            if meta.is_file()
                && offer.flags & FLAG_STREAM == 0
                && unchanged(&final_path, &meta, offer) =>
        {
            return Ok(Prepared::Unchanged(final_path));
        }
        Ok(_) if !overwrite => {
            return Err(Refusal::new(
                Reason::Exists,
                format!(
                    "'{}' already exists (the receiver can allow --overwrite)",
                    shown_final()
                ),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Refusal::new(
                Reason::LocalIo,
                format!("cannot check '{}': {}", shown_final(), io_reason(&e)),
            ));
        }
    }

    let resumable = offer.flags & FLAG_STREAM == 0;
    let partial_path = dir.join(partial_name(&final_path, offer));
    let already = if resumable {
        fs::symlink_metadata(&partial_path)
            .map(|m| m.len().min(offer.size))
            .unwrap_or(0)
    } else {
        0
    };
    let free = free_space(&dir).map_err(|e| {
        Refusal::new(
            Reason::LocalIo,
            format!("cannot use directory '{}': {}", shown_dir(), io_reason(&e)),
        )
    })?;
    if offer.size - already > free {
        return Err(Refusal::new(
            Reason::TooLarge,
            format!(
                "'{}' needs {} but only {} is free at the destination",
                shown(&offer.name),
                human_bytes(offer.size - already),
                human_bytes(free)
            ),
        ));
    }

    let cannot_create = |e: &io::Error| {
        Refusal::new(
            Reason::LocalIo,
            format!(
                "cannot create a file in '{}': {}",
                shown_dir(),
                io_reason(e)
            ),
        )
    };
    let mut partial = if resumable {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            // Never follow a link planted where the partial file goes.
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&partial_path)
            .map_err(|e| cannot_create(&e))?;
        let meta = file.metadata().map_err(|e| cannot_create(&e))?;
        if !meta.is_file() {
            return Err(Refusal::new(
                Reason::LocalIo,
                format!("'{}' is not a regular file", partial_path.display()),
            ));
        }
        // Two senders of the same file must not write one partial file.
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(Refusal::new(
                Reason::Busy,
                format!(
                    "'{}' is being received from another sender right now",
                    shown_final()
                ),
            ));
        }
        PartialFile {
            file,
            path: partial_path,
            final_path,
            overwrite,
            resumable: true,
            held: meta.len(),
            settled: false,
            seeked: false,
            _watch: None,
        }
    } else {
        let (file, path) = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(&dir)
            .and_then(|t| t.keep().map_err(|e| e.error))
            .map_err(|e| cannot_create(&e))?;
        let watch = signals::watch_temp(&path);
        PartialFile {
            file,
            path,
            final_path,
            overwrite,
            resumable: false,
            held: 0,
            settled: false,
            seeked: false,
            _watch: Some(watch),
        }
    };
    if partial.held > offer.size {
        // Longer than the file can be: not a prefix of it.
        partial.restart_at(0).map_err(|e| cannot_create(&e))?;
    }
    Ok(Prepared::Receive(partial))
}

/// Whether the existing file at `path` is the offered one: the same SHA-256
/// when the sender sent one (`--checksum`), else the same size and mtime
/// (rsync's quick check). Unreadable counts as changed.
fn unchanged(path: &Path, meta: &fs::Metadata, offer: &Offer) -> bool {
    if meta.len() != offer.size {
        return false;
    }
    match &offer.sha256 {
        Some(theirs) => {
            let Ok(mut file) = File::open(path) else {
                return false;
            };
            match crate::pipeline::hash_prefix(&mut file, None) {
                Ok((hasher, total)) => {
                    let ours: [u8; 32] = hasher.finalize().into();
                    total == offer.size && ours == *theirs
                }
                Err(_) => false,
            }
        }
        None => {
            use std::os::unix::fs::MetadataExt;
            meta.mtime() == offer.mtime_secs && meta.mtime_nsec() == i64::from(offer.mtime_nanos)
        }
    }
}

fn bad_name(name: &str, e: crate::names::NameError) -> Refusal {
    Refusal::new(
        Reason::BadName,
        format!("refused name '{}': {e}", shown(name)),
    )
}

/// Where the offered name lands under `dir`: one plain component, or with
/// the PATH or DIR flag a relative path judged component by component.
/// Missing directories on the way are created, one level at a time; an
/// existing symbolic link on the way is never followed (refused), nor is
/// a file used as a directory. For a DIR entry the last component is made
/// a directory too.
fn resolve(dir: &Path, offer: &Offer) -> Result<PathBuf, Refusal> {
    let components = if offer.flags & (FLAG_PATH | FLAG_DIR) != 0 {
        crate::names::validate_path(&offer.name).map_err(|e| bad_name(&offer.name, e))?
    } else {
        validate_name(&offer.name).map_err(|e| bad_name(&offer.name, e))?;
        vec![offer.name.as_str()]
    };
    let make_last = offer.flags & FLAG_DIR != 0;
    let mut path = dir.to_path_buf();
    let last = components.len() - 1;
    for (i, component) in components.iter().enumerate() {
        path.push(component);
        if i == last && !make_last {
            break;
        }
        let shown_path = escape_for_terminal(&path.display().to_string());
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Refusal::new(
                    Reason::BadName,
                    format!("'{shown_path}' is a symbolic link; xfer never writes through one"),
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Refusal::new(
                    Reason::Exists,
                    format!("'{shown_path}' exists and is not a directory"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&path) {
                Ok(()) => {}
                // Made meanwhile by a concurrent session: fine if a directory.
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) => {}
                Err(e) => {
                    return Err(Refusal::new(
                        Reason::LocalIo,
                        format!("cannot create directory '{shown_path}': {}", io_reason(&e)),
                    ));
                }
            },
            Err(e) => {
                return Err(Refusal::new(
                    Reason::LocalIo,
                    format!("cannot check '{shown_path}': {}", io_reason(&e)),
                ));
            }
        }
    }
    Ok(path)
}

/// Applies a directory entry's permission bits (through the umask) and
/// mtime; done after its files, since writing them changes the mtime.
pub fn finish_directory(path: &Path, offer: &Offer) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Never through a link: the entry was checked when made, check again.
    if fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(io::Error::other("became a symbolic link"));
    }
    let dir = File::open(path)?;
    dir.set_permissions(fs::Permissions::from_mode(offer.mode & 0o777 & !umask()))?;
    if let Some(mtime) = mtime_of(offer) {
        dir.set_modified(mtime)?;
    }
    Ok(())
}

/// The resumable partial file's name: hidden, plainly xfer's, and the same
/// for the same destination, size and mtime, so a retry finds it.
fn partial_name(final_path: &Path, offer: &Offer) -> String {
    let mut h = Sha256::new();
    h.update(final_path.as_os_str().as_encoded_bytes());
    h.update(offer.size.to_be_bytes());
    h.update(offer.mtime_secs.to_be_bytes());
    h.update(offer.mtime_nanos.to_be_bytes());
    let digest: [u8; 32] = h.finalize().into();
    format!(
        "{TEMP_PREFIX}{}{PARTIAL_SUFFIX}",
        crate::protocol::hex(&digest)[..16].to_owned()
    )
}

impl PartialFile {
    /// Bytes held from an earlier attempt (0 for a fresh file).
    pub fn held(&self) -> u64 {
        self.held
    }

    /// The SHA-256 state after the bytes held, read back from disk.
    pub fn held_hasher(&mut self) -> io::Result<Sha256> {
        self.file.seek(io::SeekFrom::Start(0))?;
        let (hasher, read) = crate::pipeline::hash_prefix(&mut self.file, Some(self.held))?;
        if read < self.held {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the partial file shrank while being read",
            ));
        }
        Ok(hasher)
    }

    /// Positions the file for data from `offset` on, dropping anything held
    /// past it (0 starts over).
    pub fn restart_at(&mut self, offset: u64) -> io::Result<()> {
        if offset == 0 && self.held == 0 {
            return Ok(()); // a fresh file, already at its start
        }
        if offset < self.held {
            self.file.set_len(offset)?;
            self.held = offset;
        }
        self.file.seek(io::SeekFrom::Start(offset))?;
        Ok(())
    }

    /// A writer for the data: all-zero chunks become holes instead of
    /// written blocks, so sparse files stay sparse and cost no disk.
    pub fn writer(&mut self) -> SparseWriter<'_> {
        SparseWriter {
            file: &mut self.file,
            seeked: &mut self.seeked,
        }
    }

    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    pub fn temp_path(&self) -> &Path {
        &self.path
    }

    /// Removes the partial data: it is wrong (digest mismatch) or can never
    /// complete here (disk full).
    pub fn discard(mut self) {
        let _ = fs::remove_file(&self.path);
        self.settled = true;
    }

    /// Makes the verified `size` bytes durable and visible under their final
    /// name: permission bits and mtime applied, fsync, atomic rename (never
    /// replacing a file unless overwriting), directory fsync. On error the
    /// partial file is removed and the final name is untouched (or, with
    /// overwrite, still holds its old content).
    pub fn commit(mut self, offer: &Offer, size: u64) -> Result<PathBuf, Refusal> {
        let result = self.finish(offer, size);
        if result.is_err() {
            let _ = fs::remove_file(&self.path);
        }
        self.settled = true;
        result
    }

    fn finish(&mut self, offer: &Offer, size: u64) -> Result<PathBuf, Refusal> {
        let shown = escape_for_terminal(&self.final_path.display().to_string());
        let io_refusal = |what: &str, e: &io::Error| {
            Refusal::new(
                Reason::LocalIo,
                format!("{what} '{shown}': {}", io_reason(e)),
            )
        };
        let file = &self.file;
        // A trailing hole left by the sparse writer still counts as data.
        // (Without a skipped chunk the writes themselves made the length.)
        if self.seeked {
            file.set_len(size)
                .map_err(|e| io_refusal("cannot size", &e))?;
        }
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

        let renamed = if self.overwrite {
            fs::rename(&self.path, &self.final_path)
        } else {
            rename_noclobber(&self.path, &self.final_path)
        };
        renamed.map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Refusal::new(
                    Reason::Exists,
                    format!("'{shown}' appeared while receiving; kept it"),
                )
            } else {
                io_refusal("cannot rename into", &e)
            }
        })?;
        // The rename is durable only once the directory is synced.
        if let Ok(d) = File::open(parent_dir(&self.final_path)) {
            let _ = d.sync_all();
        }
        Ok(self.final_path.clone())
    }
}

/// Renames `from` to `to` only if `to` does not exist, atomically: with
/// RENAME_NOREPLACE, or where the file system lacks it, a hard link (which
/// fails on an existing name) and an unlink.
fn rename_noclobber(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes data at the file's cursor, seeking over chunks that are all
/// zero. Only for files that start empty (holes read back as zeros).
pub struct SparseWriter<'a> {
    file: &'a mut File,
    /// Set once a chunk was skipped, so the length must be set at the end.
    seeked: &'a mut bool,
}

impl io::Write for SparseWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() >= 4096 && buf.iter().all(|&b| b == 0) {
            io::Seek::seek(self.file, io::SeekFrom::Current(buf.len() as i64))?;
            *self.seeked = true;
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
            sha256: None,
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
        let mut p = prepare(&Target::Dir(dir.path().into()), false, &o)
            .unwrap()
            .partial()
            .unwrap();
        let temp_name = p
            .temp_path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(temp_name.starts_with(TEMP_PREFIX) && temp_name.ends_with(PARTIAL_SUFFIX));
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
    fn an_interrupted_partial_is_kept_and_found_again_with_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::Dir(dir.path().into());
        let o = offer("a", 10);
        let mut p = prepare(&t, false, &o).unwrap().partial().unwrap();
        assert_eq!(p.held(), 0);
        p.writer().write_all(b"01234").unwrap();
        drop(p); // interrupted
        let names = entries(dir.path());
        assert_eq!(names.len(), 1);
        assert!(names[0].ends_with(PARTIAL_SUFFIX), "{names:?}");

        let mut again = prepare(&t, false, &o).unwrap().partial().unwrap();
        assert_eq!(again.held(), 5);
        let want: [u8; 32] = Sha256::digest(b"01234").into();
        let got: [u8; 32] = again.held_hasher().unwrap().finalize().into();
        assert_eq!(got, want);
        again.restart_at(5).unwrap();
        again.writer().write_all(b"56789").unwrap();
        let path = again.commit(&o, 10).unwrap();
        assert_eq!(fs::read(path).unwrap(), b"0123456789");
        assert_eq!(entries(dir.path()), vec!["a"]);
    }

    #[test]
    fn a_different_file_under_the_same_name_gets_its_own_partial() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::Dir(dir.path().into());
        let mut p = prepare(&t, false, &offer("a", 10))
            .unwrap()
            .partial()
            .unwrap();
        p.writer().write_all(b"old").unwrap();
        drop(p);
        let other = prepare(&t, false, &offer("a", 11))
            .unwrap()
            .partial()
            .unwrap();
        assert_eq!(other.held(), 0);
    }

    #[test]
    fn a_partial_in_use_is_refused_as_busy() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::Dir(dir.path().into());
        let _first = prepare(&t, false, &offer("a", 10))
            .unwrap()
            .partial()
            .unwrap();
        assert_eq!(
            prepare(&t, false, &offer("a", 10)).unwrap_err().reason,
            Reason::Busy
        );
    }

    #[test]
    fn discarding_and_stream_temporaries_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::Dir(dir.path().into());
        let mut p = prepare(&t, false, &offer("a", 10))
            .unwrap()
            .partial()
            .unwrap();
        p.writer().write_all(b"x").unwrap();
        p.discard();
        assert!(entries(dir.path()).is_empty());
        let mut stream = offer("s", 0);
        stream.flags = FLAG_STREAM;
        let mut p = prepare(&t, false, &stream).unwrap().partial().unwrap();
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
        let mut p = prepare(&t, true, &o).unwrap().partial().unwrap();
        p.writer().write_all(b"new").unwrap();
        p.commit(&o, o.size).unwrap();
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"new");
        assert_eq!(entries(dir.path()), vec!["a"]);
    }

    #[test]
    fn a_file_appearing_during_the_transfer_is_not_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let o = offer("a", 3);
        let mut p = prepare(&Target::Dir(dir.path().into()), false, &o)
            .unwrap()
            .partial()
            .unwrap();
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
        let mut p = prepare(&Target::Output(out.clone()), false, &o)
            .unwrap()
            .partial()
            .unwrap();
        p.writer().write_all(b"hi").unwrap();
        assert_eq!(p.commit(&o, o.size).unwrap(), out);
        assert_eq!(entries(dir.path()), vec!["chosen.bin"]);
    }

    #[test]
    fn zero_chunks_become_holes_and_trailing_holes_keep_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * 1024 * 1024;
        let o = offer("sparse", size);
        let mut p = prepare(&Target::Dir(dir.path().into()), false, &o)
            .unwrap()
            .partial()
            .unwrap();
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
