//! Where an incoming file lands, and how it gets there safely: a temporary
//! file created exclusively beside the final name, fsynced, then renamed into
//! place atomically (without clobbering unless overwriting was asked for).
//!
//! This module must never open the final name for writing, and must never
//! leave its temporary file behind on any failure: dropping a
//! [`PartialFile`] removes it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::io::Seek;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, AtFlags, FileType, OFlags};

use sha2::{Digest as _, Sha256};

use crate::exit_codes::io_reason;
use crate::names::{
    PARTIAL_SUFFIX, TEMP_PREFIX, TEMP_SUFFIX, escape_for_terminal, shown, validate_name,
};
use crate::protocol::{
    FLAG_DIR, FLAG_HARDLINK, FLAG_PATH, FLAG_STREAM, FLAG_SYMLINK, MAX_LINK_LEN, Offer, Reason,
};
use crate::signals::{self, Watch};
use crate::units::human_bytes;

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
    /// The disk at the destination is too full: on this side that is a
    /// local file failure, whatever the sender is told.
    pub disk_full: bool,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
            disk_full: false,
        }
    }
}

/// An open directory: files are created, checked and renamed relative to
/// it, so no path is walked again once it is open.
type DirFd = Arc<OpenDir>;

/// An open directory and its device and inode, read once when it was
/// opened (they name partial files: see [`partial_name`]).
#[derive(Debug)]
struct OpenDir {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
    /// xfer's partial files found in it, listed on the first commit here
    /// (once per directory and session): the candidates for clean-up, by
    /// the prefix that names their destination (see [`partial_prefix`]).
    partials: std::sync::Mutex<Option<HashMap<Vec<u8>, Vec<OsString>>>>,
    /// Names in it ignore case (ext4 or f2fs casefolding, set per
    /// directory): entries that differ only in case land on one file.
    casefold: bool,
    /// This session made it: it held nothing when it was made, so there
    /// are no partial files of earlier attempts to look for, and no file
    /// at a final name to check before receiving one (a file that appears
    /// there meanwhile is still caught by the rename, which never
    /// replaces one without --overwrite). Saves a directory listing and a
    /// `stat` a file when a tree arrives for the first time.
    made: bool,
}

impl OpenDir {
    #[allow(clippy::unnecessary_cast)]
    fn new(fd: OwnedFd, made: bool) -> rustix::io::Result<OpenDir> {
        let st = rfs::fstat(&fd)?;
        Ok(OpenDir {
            casefold: is_casefolded(&fd),
            fd,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            partials: std::sync::Mutex::new(made.then(HashMap::new)),
            made,
        })
    }

    /// Removes the partial files an earlier attempt left for the same
    /// destination (names starting with `prefix`, see [`partial_name`]),
    /// other than `keep`: only regular, single-link files of our own user
    /// that no other session holds. Returns their names.
    fn remove_stale_partials(&self, prefix: &[u8], keep: &OsStr) -> Vec<OsString> {
        let mut listed = self
            .partials
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let by_place = listed.get_or_insert_with(|| list_partials(&self.fd));
        debug_assert_eq!(prefix.len(), PREFIX_LEN);
        let Some(names) = by_place.get_mut(prefix) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        names.retain(|name| {
            // `keep` was just renamed into place or removed: no longer a
            // partial file here.
            if name == keep {
                return false;
            }
            let gone = remove_own_partial(&self.fd, name, |_| true).is_some();
            if gone {
                removed.push(name.clone());
            }
            !gone
        });
        if names.is_empty() {
            by_place.remove(prefix);
        }
        removed
    }
}

/// The length of every [`partial_prefix`]: `.xfer-`, 16 hex digits, `-`.
const PREFIX_LEN: usize = TEMP_PREFIX.len() + 17;

/// The names of xfer's resumable partial files in a directory, by their
/// [`partial_prefix`]. (A commit looks up its own destination's: with one
/// list to scan, a directory of thousands of new files cost a scan of the
/// others' partials per file, 2.5 % of a receiver's CPU.)
fn list_partials(dir: &OwnedFd) -> HashMap<Vec<u8>, Vec<OsString>> {
    let mut by_place: HashMap<Vec<u8>, Vec<OsString>> = HashMap::new();
    for name in names_in(dir) {
        let bytes = name.as_encoded_bytes();
        if bytes.len() > PREFIX_LEN
            && bytes.starts_with(TEMP_PREFIX.as_bytes())
            && bytes.ends_with(PARTIAL_SUFFIX.as_bytes())
        {
            let place = bytes[..PREFIX_LEN].to_vec();
            by_place.entry(place).or_default().push(name);
        }
    }
    by_place
}

/// The names in a directory, without `.` and `..` (none if it cannot be
/// read).
fn names_in(dir: &OwnedFd) -> Vec<OsString> {
    let Ok(listing) = rfs::Dir::read_from(dir) else {
        return Vec::new();
    };
    listing
        .filter_map(Result::ok)
        .map(|entry| OsString::from(OsStr::from_bytes(entry.file_name().to_bytes())))
        .filter(|name| name != "." && name != "..")
        .collect()
}

/// Whether `st` is a partial file this process could have left: a regular
/// file with one link, owned by this user. Nothing else is resumed or
/// removed as xfer's own.
fn could_be_ours(st: &rfs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        && st.st_nlink == 1
        && st.st_uid == our_uid()
}

/// Removes the partial file `name` in `dir` if it could be ours, no
/// session holds its lock, and `also` agrees with its stat; that stat when
/// it was removed. Opened without following a link or blocking on a FIFO.
fn remove_own_partial(
    dir: &OwnedFd,
    name: &OsStr,
    also: impl FnOnce(&rfs::Stat) -> bool,
) -> Option<rfs::Stat> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, name, flags, rfs::Mode::empty()).ok()?;
    let st = rfs::fstat(&fd).ok()?;
    let removable = could_be_ours(&st)
        && also(&st)
        // Another session resuming it holds its lock.
        && rfs::flock(&fd, rfs::FlockOperation::NonBlockingLockExclusive).is_ok()
        && rfs::unlinkat(dir, name, AtFlags::empty()).is_ok();
    removable.then_some(st)
}

impl std::ops::Deref for OpenDir {
    type Target = OwnedFd;
    fn deref(&self) -> &OwnedFd {
        &self.fd
    }
}

impl std::os::fd::AsFd for OpenDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How many open directories a session keeps for reuse; past this the
/// cache starts afresh (a tree is sent directory by directory).
const MAX_OPEN_DIRS: usize = 256;

/// Free space read from the file system is trusted for this long, less what
/// was promised to files since, before it is read again.
const SPACE_FRESH: Duration = Duration::from_secs(1);

/// One session's destination: where offers land, and the directory handles
/// that confine them. Every path from the peer is walked one component at
/// a time from the destination directory's handle, never through a
/// symbolic link, so nothing can land outside it whatever the names or a
/// concurrent change to the tree.
#[derive(Debug)]
pub struct Destination {
    target: Target,
    overwrite: bool,
    /// Keep a replaced file aside instead of losing it.
    backups: Option<Backups>,
    /// Open directories by their path relative to the root ("" is the root).
    dirs: HashMap<PathBuf, DirFd>,
    /// Bytes believed free, and when that was read.
    space: Option<(u64, Instant)>,
    /// Every path offered so far, to refuse entries that collide.
    seen: crate::names::Seen,
    /// Which names are taken (`--portable-names`).
    policy: crate::names::Policy,
    /// How owners and links are kept.
    keep: Keep,
    /// Offered owners as this machine's numbers.
    owners: crate::owners::Mapper,
    /// Whether owners are kept at all (only root can give files away).
    chown: bool,
    /// Filled by `open_dir`: whether each directory on the way, the root
    /// first, ignores case (entry `i` holds component `i`).
    folds: Vec<bool>,
    /// The files this session put in place (or found unchanged), which
    /// later entries may name as hard-link targets.
    linkable: Linkable,
}

/// The regular files of one session that a HARDLINK entry may name: by a
/// digest of the name offered, the device and inode they got here. Shared
/// with the partial files, which add themselves when committed.
type Linkable = Arc<std::sync::Mutex<HashMap<u128, (u64, u64)>>>;

/// The key of an offered name in [`Linkable`].
fn link_key(name: &[u8]) -> u128 {
    let full: [u8; 32] = Sha256::digest(name).into();
    u128::from_be_bytes(full[..16].try_into().expect("16 of 32 bytes"))
}

/// Records that the session's entry `name` is the file `st` here.
#[allow(clippy::unnecessary_cast)]
fn note_linkable(linkable: &Linkable, name: &[u8], st: &rfs::Stat) {
    let mut table = linkable.lock().unwrap_or_else(|p| p.into_inner());
    if table.len() < crate::names::MAX_SEEN {
        table.insert(link_key(name), (st.st_dev as u64, st.st_ino as u64));
    }
}

/// How a receiver keeps what it is sent beyond the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keep {
    /// `--numeric-ids`: owners by number, never by name.
    pub numeric_ids: bool,
    /// `--safe-links`: refuse links that point outside the destination.
    pub safe_links: bool,
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
    /// The directory holding both the partial file and the final name.
    dir: DirFd,
    temp_name: OsString,
    final_name: OsString,
    /// Both paths, for messages and the signal handler's cleanup.
    path: PathBuf,
    final_path: PathBuf,
    overwrite: bool,
    backups: Option<Backups>,
    resumable: bool,
    /// Bytes already held from an earlier, interrupted transfer.
    held: u64,
    /// Committed or discarded: nothing left for `Drop` to do.
    settled: bool,
    /// The sparse writer skipped a chunk of zeros.
    seeked: bool,
    /// Owner and group to give the file (as root).
    owner: Option<(u32, u32)>,
    /// Its stat when it was kept (device and inode are all that is used
    /// of it after that).
    stat: Option<rfs::Stat>,
    /// Where the file is noted once in place, as a hard-link target.
    linkable: Linkable,
    /// The name it was offered under.
    name: Vec<u8>,
    _watch: Option<Watch>,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // A resumable partial is kept for the next attempt; a one-off
        // temporary file never outlives its transfer.
        // An empty one (accepted, then never sent) holds nothing to resume.
        if !self.resumable || self.file.metadata().is_ok_and(|m| m.len() == 0) {
            self.remove();
        }
    }
}

/// A verified file waiting, under its temporary name, for its batch to be
/// made durable (see [`PartialFile::seal`]).
#[derive(Debug)]
pub struct Sealed {
    partial: PartialFile,
}

impl Sealed {
    /// The directory it lands in, which [`make_durable`] flushes, and its
    /// device.
    pub fn dir(&self) -> (&OwnedFd, u64) {
        (&self.partial.dir, self.partial.dir.dev)
    }

    pub fn final_path(&self) -> &Path {
        &self.partial.final_path
    }

    /// Once its data is durable: gives it the owner, attributes, mode and
    /// time of `offer` (for its `size` bytes) and renames it into place.
    /// Both become durable with the batch's second [`make_durable`].
    pub fn place(mut self, offer: &Offer, size: u64) -> Result<Committed, Refusal> {
        let result = self
            .partial
            .keep(offer, size, true)
            .and_then(|()| self.partial.place());
        self.partial.settled(result)
    }
}

/// Makes a directory's entries durable. A file system that cannot fsync a
/// directory (EINVAL, ENOTSUP: some FUSE and network ones) has nothing
/// more to give; any other error is the caller's.
fn sync_dir(dir: &OwnedFd) -> io::Result<()> {
    match rfs::fsync(dir) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes everything written in the file systems holding `dirs` (each with
/// its device number) durable:
/// one `syncfs` per file system, however many files a batch wrote there.
/// The group commit of a tree of small files: one flush for a batch where
/// each file used to cost an fsync of its own and one of its directory.
pub fn make_durable<'a>(dirs: impl IntoIterator<Item = (&'a OwnedFd, u64)>) -> io::Result<()> {
    let mut done: Vec<u64> = Vec::new();
    for (dir, dev) in dirs {
        if !done.contains(&dev) {
            rfs::syncfs(dir)?;
            done.push(dev);
        }
    }
    Ok(())
}

/// A file in place under its final name.
#[derive(Debug)]
pub struct Committed {
    pub path: PathBuf,
    /// Partial files of earlier attempts at the same name, removed.
    pub stale: Vec<OsString>,
    /// The directory it is in.
    dir: DirFd,
}

impl Committed {
    /// The directory the file is in (to make its rename durable), and its
    /// device.
    pub fn dir(&self) -> (&OwnedFd, u64) {
        (&self.dir, self.dir.dev)
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
    /// A link to make once its (empty) data is verified.
    Link(PendingLink),
}

impl Prepared {
    /// The partial file, when data is to be received.
    pub fn partial(self) -> Option<PartialFile> {
        match self {
            Prepared::Receive(p) => Some(p),
            Prepared::Unchanged(_) | Prepared::Directory(_) | Prepared::Link(_) => None,
        }
    }
}

impl Destination {
    pub fn new(target: Target, overwrite: bool) -> Self {
        Destination {
            target,
            overwrite,
            backups: None,
            dirs: HashMap::new(),
            space: None,
            seen: crate::names::Seen::default(),
            policy: crate::names::Policy::default(),
            keep: Keep::default(),
            owners: crate::owners::Mapper::new(false),
            chown: crate::owners::can_chown(),
            linkable: Linkable::default(),
            folds: Vec::new(),
        }
    }

    /// The same destination, judging names by `policy` and keeping owners
    /// and links as `keep` says.
    pub fn with_policy(mut self, policy: crate::names::Policy, keep: Keep) -> Self {
        self.policy = policy;
        self.keep = keep;
        self.owners = crate::owners::Mapper::new(keep.numeric_ids);
        self
    }

    /// The owner to give an entry, if owners are kept and it has one.
    fn owner_for(&mut self, offer: &Offer) -> Option<(u32, u32)> {
        match &offer.owner {
            Some(owner) if self.chown => Some(self.owners.ids(owner)),
            _ => None,
        }
    }

    /// The same destination, keeping each file it replaces aside (which
    /// implies replacing).
    pub fn with_backups(mut self, backups: Option<Backups>) -> Self {
        if backups.is_some() {
            self.overwrite = true;
        }
        self.backups = backups;
        self
    }

    /// Decides where `offer` would land and opens its partial file, finds
    /// the file already there, or says why it must be refused. Nothing is
    /// written when this fails (but for directories on the way).
    pub fn prepare(&mut self, offer: &Offer) -> Result<Prepared, Refusal> {
        let (dir, final_name, final_path) = match self.place(offer)? {
            Placed::File(dir, name, path) => (dir, name, path),
            Placed::Directory(path) => return Ok(Prepared::Directory(path)),
        };
        if offer.flags & (FLAG_SYMLINK | FLAG_HARDLINK) != 0 {
            return self.prepare_link(offer, dir, final_name, final_path);
        }
        // Built only for a message: this runs once per file.
        let shown_final = || crate::names::escape_path(&final_path);
        let dir_path = parent_dir(&final_path);
        let shown_dir = || crate::names::escape_path(&dir_path);

        if let Some(st) = existing(&dir, &final_name, offer, self.overwrite, &shown_final)? {
            note_linkable(&self.linkable, &offer.name, &st);
            return Ok(Prepared::Unchanged(final_path));
        }
        let owner = self.owner_for(offer);

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
        let mut resumable = offer.flags & FLAG_STREAM == 0;
        let ours = if resumable {
            let name = partial_name(&dir, &final_name, offer);
            match open_partial(&dir, &name) {
                Ok(Some((file, held))) => Some((file, name, held)),
                // Planted by someone else: never trusted, never touched;
                // this attempt goes to a one-off temporary file instead.
                Ok(None) => None,
                Err(PartialError::Busy) => {
                    return Err(Refusal::new(
                        Reason::Busy,
                        format!(
                            "'{}' is being received from another sender right now",
                            shown_final()
                        ),
                    ));
                }
                Err(PartialError::Io(e)) => return Err(cannot_create(&e)),
            }
        } else {
            None
        };
        let (file, temp_name, held) = match ours {
            Some(partial) => partial,
            None => {
                resumable = false;
                let (file, name) = create_temp(&dir).map_err(|e| cannot_create(&e))?;
                (file, name, 0)
            }
        };
        let path = dir_path.join(&temp_name);
        let watch = (!resumable).then(|| signals::watch_temp(&path));
        let mut partial = PartialFile {
            file,
            dir: dir.clone(),
            temp_name,
            final_name,
            path,
            final_path,
            overwrite: self.overwrite,
            backups: self.backups,
            resumable,
            held,
            settled: false,
            seeked: false,
            owner,
            stat: None,
            linkable: self.linkable.clone(),
            name: offer.name.clone(),
            _watch: watch,
        };
        if partial.held > offer.size {
            // Longer than the file can be: not a prefix of it.
            partial.restart_at(0).map_err(|e| cannot_create(&e))?;
        }
        // Refused here, the partial file goes again if it holds nothing.
        self.reserve_space(&dir, offer.size - partial.held, &offer.name)
            .map_err(|r| {
                r.unwrap_or_else(|e| {
                    Refusal::new(
                        Reason::LocalIo,
                        format!("cannot use directory '{}': {}", shown_dir(), io_reason(&e)),
                    )
                })
            })?;
        Ok(Prepared::Receive(partial))
    }

    /// A SYMLINK or HARDLINK offer at `final_name` in `dir`: judged now,
    /// made when its (empty) data and trailer are verified, so its ACK
    /// says it is there like a file's.
    fn prepare_link(
        &mut self,
        offer: &Offer,
        dir: DirFd,
        final_name: OsString,
        final_path: PathBuf,
    ) -> Result<Prepared, Refusal> {
        let shown_final = escape_for_terminal(final_path.as_os_str().as_bytes());
        let target = offer.link.clone().unwrap_or_default();
        let kind = if offer.flags & FLAG_SYMLINK != 0 {
            if target.is_empty() || target.contains(&0) || target.len() as u64 > MAX_LINK_LEN {
                return Err(Refusal::new(
                    Reason::BadName,
                    format!(
                        "'{shown_final}': a link target must be 1 to {MAX_LINK_LEN} bytes without NUL"
                    ),
                ));
            }
            let depth = offer.name.iter().filter(|b| **b == b'/').count();
            if self.keep.safe_links && crate::names::link_leaves_tree(depth, &target) {
                return Err(Refusal::new(
                    Reason::BadName,
                    format!(
                        "'{shown_final}' is a symbolic link to '{}', outside the destination (--safe-links)",
                        shown(&target)
                    ),
                ));
            }
            LinkKind::Symbolic(target)
        } else {
            // The target must be a file this session put in place (or
            // found unchanged): never anything else in the destination.
            let components = crate::names::validate_path(&target, self.policy)
                .map_err(|e| bad_name(&target, e))?;
            let (last, parents) = components.split_last().expect("never empty");
            let target_dir = self.open_dir(parents, false)?;
            LinkKind::Hard {
                key: link_key(&target),
                shown: shown(&target),
                dir: target_dir,
                name: OsStr::from_bytes(last).to_owned(),
            }
        };
        // What is at the final name now: the very link (nothing to do), a
        // thing it may replace, or a refusal.
        let replace = match rfs::statat(&*dir, &final_name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => false,
            Err(e) => {
                return Err(Refusal::new(
                    Reason::LocalIo,
                    format!("cannot check '{shown_final}': {}", io_reason(&e.into())),
                ));
            }
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(Refusal::new(
                    Reason::Exists,
                    format!("'{shown_final}' exists and is a directory"),
                ));
            }
            Ok(st) if kind.already(&dir, &final_name, &st, offer, &self.linkable) => {
                return Ok(Prepared::Unchanged(final_path));
            }
            // The same link with another time is the same link: remade.
            Ok(st) if kind.same_target(&dir, &final_name, &st) => true,
            Ok(_) if !self.overwrite => {
                return Err(Refusal::new(
                    Reason::Exists,
                    format!(
                        "'{shown_final}' already exists (the receiver can allow --overwrite, or --backup to keep the old copy)"
                    ),
                ));
            }
            Ok(_) => true,
        };
        Ok(Prepared::Link(PendingLink {
            dir,
            final_name,
            final_path,
            kind,
            replace,
            backups: self.backups,
            owner: self.owner_for(offer),
            mtime: mtime_of(offer),
            linkable: self.linkable.clone(),
        }))
    }

    /// Where `offer` would land: its directory (opened, and made if
    /// missing), final name and path; or for a directory entry, the
    /// directory itself, made. Names are judged here.
    fn place(&mut self, offer: &Offer) -> Result<Placed, Refusal> {
        let is_path = offer.flags & (FLAG_PATH | FLAG_DIR) != 0;
        let policy = self.policy;
        match &self.target {
            Target::Dir(root) => {
                let root = root.clone();
                let components = if is_path {
                    crate::names::validate_path(&offer.name, policy)
                        .map_err(|e| bad_name(&offer.name, e))?
                } else {
                    validate_name(&offer.name, policy).map_err(|e| bad_name(&offer.name, e))?;
                    vec![offer.name.as_slice()]
                };
                let (last, parents) = components.split_last().expect("never empty");
                // The directories on the way are opened (made) first: each
                // says whether the names in it ignore case.
                let dir = self.open_dir(parents, true)?;
                let casefold = std::mem::take(&mut self.folds);
                let checked = self
                    .seen
                    .check(&components, offer.flags & FLAG_DIR != 0, |i| {
                        policy.portable || casefold[i]
                    });
                self.folds = casefold; // kept for the next offer
                checked.map_err(|e| bad_name(&offer.name, e))?;
                let final_path: PathBuf = std::iter::once(root.as_os_str())
                    .chain(components.iter().map(|c| OsStr::from_bytes(c)))
                    .collect();
                if offer.flags & FLAG_DIR != 0 {
                    self.open_dir(&components, true)?;
                    return Ok(Placed::Directory(final_path));
                }
                Ok(Placed::File(
                    dir,
                    OsStr::from_bytes(last).to_owned(),
                    final_path,
                ))
            }
            Target::Output(_) | Target::Stdout if is_path => Err(Refusal::new(
                Reason::Unsupported,
                "this receiver takes exactly one file (it runs with -o or --stdout), and this offer is one of several entries or a directory; send one file, or use a receiver with --dir",
            )),
            Target::Output(path) => {
                validate_name(&offer.name, policy).map_err(|e| bad_name(&offer.name, e))?;
                let path = path.clone();
                let dir = self.output_dir(&path)?;
                let name = path.file_name().map(OsString::from).ok_or_else(|| {
                    Refusal::new(
                        Reason::LocalIo,
                        format!("'{}' does not name a file", path.display()),
                    )
                })?;
                Ok(Placed::File(dir, name, path))
            }
            Target::Stdout => Err(Refusal::new(
                Reason::LocalIo,
                "standard output is not a place for files",
            )),
        }
    }

    /// Applies a directory entry's permission bits (through the umask) and
    /// mtime; done after its files, since writing them changes the mtime.
    pub fn finish_directory(&mut self, offer: &Offer) -> io::Result<()> {
        let components = crate::names::validate_path(&offer.name, self.policy)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let dir = self
            .open_dir(&components, false)
            .map_err(|r| io::Error::other(r.message))?;
        if let Some((uid, gid)) = self.owner_for(offer) {
            rfs::fchown(
                &*dir,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
            )?;
        }
        if let Some(xattrs) = &offer.xattrs {
            crate::xattrs::apply(&*dir, xattrs)?;
        }
        rfs::fchmod(
            &*dir,
            rfs::Mode::from_raw_mode(offer.mode & 0o777 & !umask()),
        )?;
        if let Some(mtime) = mtime_of(offer) {
            File::from(dir.try_clone()?).set_modified(mtime)?;
        }
        Ok(())
    }

    /// The destination directory's handle, opened on first use (following
    /// links in the path the user gave: that path is theirs to choose).
    fn root(&mut self) -> Result<DirFd, Refusal> {
        if let Some(fd) = self.dirs.get(Path::new("")) {
            return Ok(fd.clone());
        }
        let Target::Dir(root) = &self.target else {
            unreachable!("only a directory target has a root");
        };
        let root = root.clone();
        self.base(&root)
    }

    /// The directory that `-o PATH` lands in.
    fn output_dir(&mut self, path: &Path) -> Result<DirFd, Refusal> {
        self.base(&parent_dir(path))
    }

    /// The handle of the directory everything lands in, `dir`, opened once.
    fn base(&mut self, dir: &Path) -> Result<DirFd, Refusal> {
        if let Some(fd) = self.dirs.get(Path::new("")) {
            return Ok(fd.clone());
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let opened =
            rfs::open(dir, flags, rfs::Mode::empty()).and_then(|fd| OpenDir::new(fd, false));
        let fd = opened.map_err(|e| {
            Refusal::new(
                Reason::LocalIo,
                format!(
                    "cannot use directory '{}': {}",
                    crate::names::escape_path(dir),
                    io_reason(&e.into())
                ),
            )
        })?;
        let fd = Arc::new(fd);
        self.dirs.insert(PathBuf::new(), fd.clone());
        Ok(fd)
    }

    /// Opens the directory at `components` beneath the root, one level at a
    /// time and never through a symbolic link; with `create`, missing ones
    /// are made. A file in the way is refused.
    fn open_dir(&mut self, components: &[&[u8]], create: bool) -> Result<DirFd, Refusal> {
        let mut dir = self.root()?;
        let mut key = PathBuf::new();
        self.folds.clear();
        for component in components {
            self.folds.push(dir.casefold);
            let component = OsStr::from_bytes(component);
            key.push(component);
            if let Some(open) = self.dirs.get(&key) {
                dir = open.clone();
                continue;
            }
            let child = open_child_dir(&dir, component, create).map_err(|(reason, what)| {
                let shown = match &self.target {
                    Target::Dir(root) => crate::names::escape_path(&root.join(&key)),
                    _ => crate::names::escape_path(&key),
                };
                Refusal::new(reason, format!("'{shown}' {what}"))
            })?;
            if self.dirs.len() >= MAX_OPEN_DIRS {
                let root = self.dirs.remove(Path::new(""));
                self.dirs.clear();
                self.dirs.extend(root.map(|r| (PathBuf::new(), r)));
            }
            dir = Arc::new(child);
            self.dirs.insert(key.clone(), dir.clone());
        }
        self.folds.push(dir.casefold);
        Ok(dir)
    }

    /// Promises `need` bytes of the file system holding `dir` to one file:
    /// free space is read at most once a second while the promises fit,
    /// so a tree of small files costs no extra system call per file.
    /// `Err(Ok(refusal))` when it does not fit, `Err(Err(e))` when the
    /// free space cannot be read.
    fn reserve_space(
        &mut self,
        dir: &OwnedFd,
        need: u64,
        name: &[u8],
    ) -> Result<(), Result<Refusal, io::Error>> {
        if let Some((left, at)) = self.space
            && need <= left
            && at.elapsed() < SPACE_FRESH
        {
            self.space = Some((left - need, at));
            return Ok(());
        }
        let st = rfs::fstatvfs(dir).map_err(|e| Err(e.into()))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if need > free {
            self.space = None;
            return Err(Ok(Refusal {
                disk_full: true,
                ..Refusal::new(
                    Reason::TooLarge,
                    format!(
                        "'{}' needs {} but only {} is free at the destination",
                        shown(name),
                        human_bytes(need),
                        human_bytes(free)
                    ),
                )
            }));
        }
        self.space = Some((free - need, Instant::now()));
        Ok(())
    }
}

/// What is already at the final name: nothing (or something overwriting
/// may replace), `Ok(false)`; the very file offered, `Ok(true)`; or why the
/// offer must be refused.
fn existing(
    dir: &DirFd,
    final_name: &OsStr,
    offer: &Offer,
    overwrite: bool,
    shown_final: &dyn Fn() -> String,
) -> Result<Option<rfs::Stat>, Refusal> {
    if dir.made {
        return Ok(None);
    }
    match rfs::statat(&**dir, final_name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            return Err(Refusal::new(
                Reason::Exists,
                format!("'{}' exists and is a directory", shown_final()),
            ));
        }
        Ok(st)
            if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                && offer.flags & FLAG_STREAM == 0
                && unchanged(dir, final_name, &st, offer) =>
        {
            return Ok(Some(st));
        }
        Ok(_) if !overwrite => {
            return Err(Refusal::new(
                Reason::Exists,
                format!(
                    "'{}' already exists (the receiver can allow --overwrite, or --backup to keep the old copy)",
                    shown_final()
                ),
            ));
        }
        Ok(_) => {}
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => {
            return Err(Refusal::new(
                Reason::LocalIo,
                format!("cannot check '{}': {}", shown_final(), io_reason(&e.into())),
            ));
        }
    }
    Ok(None)
}

/// Where an offer lands.
enum Placed {
    /// A file: its directory, final name and final path.
    File(DirFd, OsString, PathBuf),
    /// A directory entry: the directory, now there.
    Directory(PathBuf),
}

/// Whether the directory `fd` has the casefold attribute (`chattr +F`, the
/// kernel's `FS_CASEFOLD_FL`): its names are compared without case. A file
/// system without per-directory flags answers no.
fn is_casefolded(fd: &OwnedFd) -> bool {
    /// `FS_CASEFOLD_FL` from linux/fs.h.
    const FS_CASEFOLD_FL: u32 = 0x4000_0000;
    rustix::fs::ioctl_getflags(fd).is_ok_and(|flags| flags.bits() & FS_CASEFOLD_FL != 0)
}

/// Removes xfer's partial files under `root` that no transfer has written
/// for longer than `max_age` (resumable `.partial` files of attempts that
/// never came back, and `.part` files a killed receiver left): only regular
/// files of this user that no session holds, never through a symbolic
/// link, below subdirectories too when `recursive`. Returns each one
/// removed, with how long it had lain untouched.
pub fn reap_partials(root: &Path, max_age: Duration, recursive: bool) -> Vec<(PathBuf, Duration)> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let Ok(fd) = rfs::open(root, flags, rfs::Mode::empty()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    reap_in(&fd, root, max_age, recursive, 0, &mut removed);
    removed
}

fn reap_in(
    dir: &OwnedFd,
    path: &Path,
    max_age: Duration,
    recursive: bool,
    depth: usize,
    removed: &mut Vec<(PathBuf, Duration)>,
) {
    // Deep enough for any real tree; a bound all the same.
    if depth > 4096 {
        return;
    }
    let age_of = |st: &rfs::Stat| {
        #[allow(clippy::unnecessary_cast)]
        let written = UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64);
        SystemTime::now()
            .duration_since(written)
            .unwrap_or_default()
    };
    for name in names_in(dir) {
        let bytes = name.as_encoded_bytes();
        let ours = bytes.starts_with(TEMP_PREFIX.as_bytes())
            && (bytes.ends_with(PARTIAL_SUFFIX.as_bytes())
                || bytes.ends_with(TEMP_SUFFIX.as_bytes()));
        if ours {
            if let Some(st) = remove_own_partial(dir, &name, |st| age_of(st) > max_age) {
                removed.push((path.join(&name), age_of(&st)));
            }
            continue;
        }
        if recursive {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            if let Ok(child) = rfs::openat(dir, &name, flags, rfs::Mode::empty()) {
                reap_in(
                    &child,
                    &path.join(&name),
                    max_age,
                    recursive,
                    depth + 1,
                    removed,
                );
            }
        }
    }
}

/// Opens (or with `create` makes) the directory `name` inside `parent`,
/// never following a symbolic link. The error is a reason and the rest of
/// a message after the path.
fn open_child_dir(
    parent: &OwnedFd,
    name: &OsStr,
    create: bool,
) -> Result<OpenDir, (Reason, String)> {
    let (fd, made) = open_child_dir_fd(parent, name, create)?;
    OpenDir::new(fd, made).map_err(|e| {
        (
            Reason::LocalIo,
            format!("cannot be opened: {}", io_reason(&e.into())),
        )
    })
}

/// The directory, and whether this call made it.
fn open_child_dir_fd(
    parent: &OwnedFd,
    name: &OsStr,
    create: bool,
) -> Result<(OwnedFd, bool), (Reason, String)> {
    use rustix::io::Errno;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let open = || rfs::openat(parent, name, flags, rfs::Mode::empty());
    let io_error =
        |what: &str, e: Errno| (Reason::LocalIo, format!("{what}: {}", io_reason(&e.into())));
    match open() {
        Ok(fd) => Ok((fd, false)),
        Err(Errno::NOENT) if create => {
            let made = match rfs::mkdirat(parent, name, rfs::Mode::from_raw_mode(0o777)) {
                Ok(()) => true,
                // Made meanwhile by a concurrent session: fine if a directory.
                Err(Errno::EXIST) => false,
                Err(e) => return Err(io_error("cannot be created", e)),
            };
            let fd = open().map_err(|e| match e {
                Errno::LOOP | Errno::NOTDIR => not_a_directory(parent, name),
                e => io_error("cannot be opened", e),
            })?;
            Ok((fd, made))
        }
        Err(Errno::LOOP | Errno::NOTDIR) => Err(not_a_directory(parent, name)),
        Err(e) => Err(io_error("cannot be opened", e)),
    }
}

/// Why `name` in `parent` could not be opened as a directory.
fn not_a_directory(parent: &OwnedFd, name: &OsStr) -> (Reason, String) {
    match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => (
            Reason::BadName,
            "is a symbolic link; xfer never writes through one".into(),
        ),
        _ => (Reason::Exists, "exists and is not a directory".into()),
    }
}

/// How long a second sender of the same file waits for the first to let
/// go of its partial file before it is refused as busy.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

enum PartialError {
    Busy,
    Io(io::Error),
}

/// Opens (creating if need be) the resumable partial file `name` in `dir`,
/// locked against a second sender of the same file. Only a file this
/// process could have left is trusted: a regular file with one link, owned
/// by this user. Anything else under that name (a link, a FIFO, another
/// user's file planted in a shared directory) gives `Ok(None)` and is left
/// alone. A new partial file is created exclusively.
fn open_partial(dir: &OwnedFd, name: &OsStr) -> Result<Option<(File, u64)>, PartialError> {
    use rustix::io::Errno;
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    // Most files are new: create exclusively first (one system call); a
    // partial already there (a resume, or something planted) is opened and
    // judged instead.
    let create = flags | OFlags::CREATE | OFlags::EXCL;
    match rfs::openat(dir, name, create, rfs::Mode::from_raw_mode(0o600)) {
        Ok(fd) => {
            // Ours by construction, and empty; still locked against a
            // second sender of the same file.
            if rfs::flock(&fd, rfs::FlockOperation::NonBlockingLockExclusive).is_err() {
                return Err(PartialError::Busy);
            }
            Ok(Some((File::from(fd), 0)))
        }
        Err(Errno::EXIST) => open_partial_existing(dir, name, flags),
        Err(e) => not_ours_or(e),
    }
}

fn open_partial_existing(
    dir: &OwnedFd,
    name: &OsStr,
    flags: OFlags,
) -> Result<Option<(File, u64)>, PartialError> {
    match rfs::openat(dir, name, flags, rfs::Mode::empty()) {
        Ok(fd) => trust_partial(fd),
        Err(e) => not_ours_or(e),
    }
}

/// A partial name that cannot be opened as a plain file: a link (`ELOOP`),
/// something not openable for writing, or a real error.
fn not_ours_or(e: rustix::io::Errno) -> Result<Option<(File, u64)>, PartialError> {
    use rustix::io::Errno;
    match e {
        Errno::LOOP | Errno::ISDIR | Errno::NXIO | Errno::ACCESS | Errno::PERM => Ok(None),
        e => Err(PartialError::Io(e.into())),
    }
}

/// The user this process writes as, read once.
fn our_uid() -> u32 {
    static UID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UID.get_or_init(|| rustix::process::geteuid().as_raw())
}

fn trust_partial(fd: OwnedFd) -> Result<Option<(File, u64)>, PartialError> {
    let st = rfs::fstat(&fd).map_err(|e| PartialError::Io(e.into()))?;
    if !could_be_ours(&st) {
        return Ok(None);
    }
    // Two senders of the same file must not write one partial file. The
    // holder may be a session on its way out (a sender's retry can arrive
    // while the receiver still tears down the attempt it gave up on, e.g.
    // after --min-speed), so wait a moment for the lock before refusing.
    let until = std::time::Instant::now() + LOCK_WAIT;
    while rfs::flock(&fd, rfs::FlockOperation::NonBlockingLockExclusive).is_err() {
        if std::time::Instant::now() >= until || crate::signals::interrupted() {
            return Err(PartialError::Busy);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(Some((File::from(fd), st.st_size as u64)))
}

/// Creates a new one-off temporary file in `dir` under a random name.
fn create_temp(dir: &OwnedFd) -> io::Result<(File, OsString)> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let (fd, name) =
        with_fresh_temp(|name| rfs::openat(dir, name, flags, rfs::Mode::from_raw_mode(0o600)))?;
    Ok((File::from(fd), name))
}

/// Makes something under a fresh random temporary name
/// (`.xfer-<random>.part`): `make` creates it exclusively, failing with
/// EEXIST if the name is taken, and another name is tried (16 in all).
fn with_fresh_temp<T>(
    mut make: impl FnMut(&OsStr) -> rustix::io::Result<T>,
) -> io::Result<(T, OsString)> {
    for _ in 0..16 {
        let mut random = [0u8; 8];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let name = OsString::from(format!(
            "{TEMP_PREFIX}{}{TEMP_SUFFIX}",
            crate::protocol::hex(&random)
        ));
        match make(&name) {
            Ok(made) => return Ok((made, name)),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no unused temporary name after 16 tries",
    ))
}

/// Whether the existing file `name` in `dir` is the offered one: the same
/// SHA-256 when the sender sent one (`--checksum`), else the same size and
/// mtime (rsync's quick check). Unreadable counts as changed.
fn unchanged(dir: &OwnedFd, name: &OsStr, st: &rfs::Stat, offer: &Offer) -> bool {
    if st.st_size as u64 != offer.size {
        return false;
    }
    match &offer.sha256 {
        Some(theirs) => {
            // Non-blocking and checked against `st`: a FIFO swapped in
            // after the check must not hang this session.
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            let Ok(fd) = rfs::openat(dir, name, flags, rfs::Mode::empty()) else {
                return false;
            };
            match rfs::fstat(&fd) {
                Ok(now)
                    if same_object(&now, st)
                        && FileType::from_raw_mode(now.st_mode) == FileType::RegularFile => {}
                _ => return false,
            }
            match crate::pipeline::hash_prefix(&mut File::from(fd), None) {
                Ok((hasher, total)) => {
                    let ours: [u8; 32] = hasher.finalize().into();
                    total == offer.size && ours == *theirs
                }
                Err(_) => false,
            }
        }
        // The casts are for 32-bit targets, where these fields are narrower.
        #[allow(clippy::unnecessary_cast)]
        None => {
            st.st_mtime as i64 == offer.mtime_secs
                && st.st_mtime_nsec as i64 == i64::from(offer.mtime_nanos)
        }
    }
}

fn bad_name(name: &[u8], e: crate::names::NameError) -> Refusal {
    Refusal::new(
        Reason::BadName,
        format!("refused name '{}': {e}", shown(name)),
    )
}

/// The resumable partial file's name: hidden, plainly xfer's, and the same
/// for the same destination, size and mtime, so a retry finds it however
/// the receiver's `--dir` was spelled. `.xfer-` + 16 hex digits naming the
/// destination (the directory's device and inode, and the final name) +
/// `-` + 8 naming the version (size and mtime) + `.partial`: every partial
/// of one destination name shares the first part. (docs/PROTOCOL.md,
/// "Resuming", gives the exact bytes hashed.)
fn partial_name(dir: &OpenDir, final_name: &OsStr, offer: &Offer) -> OsString {
    let prefix = partial_prefix(dir, final_name);
    let mut version = Sha256::new();
    version.update(offer.size.to_be_bytes());
    version.update(offer.mtime_secs.to_be_bytes());
    version.update(offer.mtime_nanos.to_be_bytes());
    let version: [u8; 32] = version.finalize().into();
    OsString::from(format!(
        "{prefix}{}{PARTIAL_SUFFIX}",
        crate::protocol::hex(&version[..4])
    ))
}

/// What every partial file of one destination's name starts with:
/// `.xfer-D-`, `D` naming the directory (device, inode) and the final name.
fn partial_prefix(dir: &OpenDir, final_name: &OsStr) -> String {
    let mut place = Sha256::new();
    place.update(dir.dev.to_be_bytes());
    place.update(dir.ino.to_be_bytes());
    place.update(final_name.as_encoded_bytes());
    let place: [u8; 32] = place.finalize().into();
    format!("{TEMP_PREFIX}{}-", crate::protocol::hex(&place[..8]))
}

/// What a link entry makes.
#[derive(Debug)]
enum LinkKind {
    /// A symbolic link with this target (never followed here).
    Symbolic(Vec<u8>),
    /// A second name for an earlier entry of this session: its key in the
    /// session's table, as shown, and its directory and name.
    Hard {
        key: u128,
        shown: String,
        dir: DirFd,
        name: OsString,
    },
}

impl LinkKind {
    /// Whether `st`, at `name` in `dir`, already is this very link (with
    /// the offered time, for a symbolic one).
    #[allow(clippy::unnecessary_cast)]
    fn already(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        st: &rfs::Stat,
        offer: &Offer,
        linkable: &Linkable,
    ) -> bool {
        match self {
            LinkKind::Symbolic(_) => {
                self.same_target(dir, name, st)
                    && st.st_mtime as i64 == offer.mtime_secs
                    && st.st_mtime_nsec as i64 == i64::from(offer.mtime_nanos)
            }
            LinkKind::Hard { key, .. } => {
                let table = linkable.lock().unwrap_or_else(|p| p.into_inner());
                table.get(key) == Some(&(st.st_dev as u64, st.st_ino as u64))
            }
        }
    }

    /// Whether `st` is a symbolic link with this target.
    fn same_target(&self, dir: &OwnedFd, name: &OsStr, st: &rfs::Stat) -> bool {
        match self {
            LinkKind::Symbolic(target) => {
                FileType::from_raw_mode(st.st_mode) == FileType::Symlink
                    && rfs::readlinkat(dir, name, Vec::new())
                        .is_ok_and(|now| now.as_bytes() == target.as_slice())
            }
            LinkKind::Hard { .. } => false,
        }
    }
}

/// A link entry accepted and waiting for its trailer.
#[derive(Debug)]
pub struct PendingLink {
    dir: DirFd,
    final_name: OsString,
    final_path: PathBuf,
    kind: LinkKind,
    /// Whatever is at the final name may be replaced.
    replace: bool,
    backups: Option<Backups>,
    owner: Option<(u32, u32)>,
    mtime: Option<SystemTime>,
    /// The session's files a hard link may name.
    linkable: Linkable,
}

impl PendingLink {
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Makes the link under a temporary name (owner and time applied), then
    /// renames it into place atomically, replacing only what was allowed;
    /// the directory is synced. A hard link's target must still be the
    /// file this session put there.
    pub fn commit(self) -> Result<Committed, Refusal> {
        let shown = escape_for_terminal(self.final_path.as_os_str().as_bytes());
        let io_refusal = |what: &str, e: io::Error| {
            Refusal::new(
                Reason::LocalIo,
                format!("{what} '{shown}': {}", io_reason(&e)),
            )
        };
        let temp = self.make_temp().map_err(|e| match e {
            Made::Refused(r) => r,
            Made::Io(e) => io_refusal("cannot make the link", e),
        })?;
        let placed = self.place(&temp);
        if placed.is_err() {
            let _ = rfs::unlinkat(&*self.dir, &temp, AtFlags::empty());
        }
        placed.map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Refusal::new(
                    Reason::Exists,
                    format!("'{shown}' appeared while receiving; kept it"),
                )
            } else {
                io_refusal("cannot put in place the link", e)
            }
        })?;
        // Acknowledged only once the rename is durable.
        sync_dir(&self.dir).map_err(|e| io_refusal("cannot flush the directory of", e))?;
        Ok(Committed {
            path: self.final_path,
            stale: Vec::new(),
            dir: self.dir,
        })
    }

    /// The link under a fresh temporary name beside the final one.
    fn make_temp(&self) -> Result<OsString, Made> {
        if let LinkKind::Hard {
            key,
            shown,
            dir,
            name,
        } = &self.kind
        {
            self.check_target(*key, shown, dir, name)?;
        }
        let ((), temp) = with_fresh_temp(|temp| match &self.kind {
            LinkKind::Symbolic(target) => {
                rfs::symlinkat(OsStr::from_bytes(target), &*self.dir, temp)
            }
            LinkKind::Hard { dir, name, .. } => {
                rfs::linkat(&**dir, name, &*self.dir, temp, AtFlags::empty())
            }
        })
        .map_err(Made::Io)?;
        if let Err(e) = self.finish_temp(&temp) {
            let _ = rfs::unlinkat(&*self.dir, &temp, AtFlags::empty());
            return Err(Made::Io(e));
        }
        Ok(temp)
    }

    /// A hard link's target must be the file this session put (or found)
    /// at that name, and still be there.
    #[allow(clippy::unnecessary_cast)]
    fn check_target(
        &self,
        key: u128,
        shown: &str,
        dir: &OwnedFd,
        name: &OsStr,
    ) -> Result<(), Made> {
        let refused = |why: &str| {
            Made::Refused(Refusal::new(
                Reason::BadName,
                format!(
                    "'{}' would be a hard link to '{shown}', {why}",
                    escape_for_terminal(self.final_path.as_os_str().as_bytes())
                ),
            ))
        };
        let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|_| refused("which is not there"))?;
        let want = {
            let table = self.linkable.lock().unwrap_or_else(|p| p.into_inner());
            table.get(&key).copied()
        };
        match want {
            Some(id) if id == (st.st_dev as u64, st.st_ino as u64) => Ok(()),
            Some(_) => Err(refused(
                "which was replaced since this session put it there",
            )),
            None => Err(refused("which is not a file this session sent")),
        }
    }

    /// Owner and time on the link itself (never on what it points at).
    fn finish_temp(&self, temp: &OsStr) -> io::Result<()> {
        if let LinkKind::Hard { .. } = self.kind {
            return Ok(()); // a second name: the file has its owner and time
        }
        if let Some((uid, gid)) = self.owner {
            rfs::chownat(
                &*self.dir,
                temp,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(mtime) = self.mtime {
            let when = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
            let stamp = rustix::time::Timespec {
                tv_sec: when.as_secs() as _,
                tv_nsec: when.subsec_nanos() as _,
            };
            let times = rfs::Timestamps {
                last_access: stamp,
                last_modification: stamp,
            };
            rfs::utimensat(&*self.dir, temp, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Ok(())
    }

    /// Renames the made link onto the final name: replacing only what the
    /// offer was judged to replace (an old copy kept aside with
    /// `--backup`), never a name that appeared meanwhile.
    fn place(&self, temp: &OsStr) -> io::Result<()> {
        if !self.replace {
            return rename_noclobber(&self.dir, temp, &self.final_name);
        }
        if let Some(backups) = self.backups
            && keep_aside(&self.dir, &self.final_name)?.is_some()
        {
            prune_backups(&self.dir, &self.final_name, backups);
        }
        Ok(rfs::renameat(
            &*self.dir,
            temp,
            &*self.dir,
            &self.final_name,
        )?)
    }
}

/// Why a link could not be made.
enum Made {
    Refused(Refusal),
    Io(io::Error),
}

impl PartialFile {
    /// A resumable partial file, which outlives a failed session (a
    /// stream's one-off temporary file does not).
    pub fn resumable(&self) -> bool {
        self.resumable
    }

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

    fn remove(&self) {
        let _ = rfs::unlinkat(&*self.dir, &self.temp_name, AtFlags::empty());
    }

    /// Removes the partial data: it is wrong (digest mismatch) or can never
    /// complete here (disk full).
    pub fn discard(mut self) {
        self.remove();
        self.settled = true;
    }

    /// Makes the verified `size` bytes durable and visible under their final
    /// name: permission bits and mtime applied, fsync, atomic rename (never
    /// replacing a file unless overwriting), directory fsync. On error the
    /// partial file is removed and the final name is untouched (or, with
    /// overwrite, still holds its old content).
    pub fn commit(mut self, offer: &Offer, size: u64) -> Result<Committed, Refusal> {
        let result = self.keep(offer, size, true).and_then(|()| {
            self.file
                .sync_all()
                .map_err(|e| self.io_refusal("cannot flush data for", &e))?;
            let path = self.place()?;
            // The rename is durable only once the directory is synced.
            sync_dir(&self.dir)
                .map_err(|e| self.io_refusal("cannot flush the directory of", &e))?;
            Ok(path)
        });
        self.settled(result)
    }

    /// For a batch (group commit): everything [`commit`](Self::commit) does
    /// but making the file durable and renaming it. It waits under its
    /// temporary name until [`make_durable`] has flushed its batch; then
    /// [`Sealed::place`] renames it. Dropped before that, it stays a
    /// resumable partial file.
    pub fn seal(mut self, offer: &Offer, size: u64) -> Result<Sealed, Refusal> {
        // Owner, attributes, mode and time are set when it is placed: until
        // then it must stay a partial file the next attempt can resume (its
        // own, writable) and the reaper does not take for abandoned (a
        // partial dated years back would look so).
        match self.keep(offer, size, false) {
            Ok(()) => Ok(Sealed { partial: self }),
            Err(r) => {
                self.remove();
                self.settled = true;
                Err(r)
            }
        }
    }

    /// The end of a commit, whatever the way there: removed on failure;
    /// in place, with the partial files of earlier attempts at the same
    /// name (another size or time, never to be resumed now) removed.
    fn settled(mut self, result: Result<PathBuf, Refusal>) -> Result<Committed, Refusal> {
        if result.is_err() {
            self.remove();
        }
        self.settled = true;
        let path = result?;
        // A resumable partial's own name starts with the prefix.
        let own = self.temp_name.as_encoded_bytes();
        let stale = if self.resumable && own.len() > PREFIX_LEN {
            self.dir
                .remove_stale_partials(&own[..PREFIX_LEN], &self.temp_name)
        } else {
            let prefix = partial_prefix(&self.dir, &self.final_name);
            self.dir
                .remove_stale_partials(prefix.as_bytes(), &self.temp_name)
        };
        Ok(Committed {
            path,
            stale,
            dir: self.dir.clone(),
        })
    }

    fn io_refusal(&self, what: &str, e: &io::Error) -> Refusal {
        Refusal::new(
            Reason::LocalIo,
            format!(
                "{what} '{}': {}",
                crate::names::escape_path(&self.final_path),
                io_reason(e)
            ),
        )
    }

    /// The verified file as it is to be kept: its length, owner, extended
    /// attributes, permission bits and mtime.
    fn keep(&mut self, offer: &Offer, size: u64, whole: bool) -> Result<(), Refusal> {
        let io_refusal = |what: &str, e: &io::Error| self.io_refusal(what, e);
        let file = &self.file;
        // A trailing hole left by the sparse writer still counts as data.
        // (Without a skipped chunk the writes themselves made the length.)
        if self.seeked {
            file.set_len(size)
                .map_err(|e| io_refusal("cannot size", &e))?;
        }
        if !whole {
            // Sealed for a batch: it stays a partial file this receiver can
            // resume (its own, writable, dated now) until it is placed.
            return Ok(());
        }
        // One stat of the file serves the owner (a file already of the
        // owner wanted, the usual case, costs no chown) and, later, the
        // check that the name still holds it.
        let st = rfs::fstat(file).map_err(|e| io_refusal("cannot check", &e.into()))?;
        if let Some((uid, gid)) = self.owner
            && (st.st_uid, st.st_gid) != (uid, gid)
        {
            rfs::fchown(
                file,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
            )
            .map_err(|e| io_refusal("cannot set the owner of", &e.into()))?;
        }
        if let Some(xattrs) = &offer.xattrs {
            crate::xattrs::apply(file, xattrs)
                .map_err(|e| io_refusal("cannot set the extended attributes of", &e))?;
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
        self.stat = Some(st);
        Ok(())
    }

    /// Renames the kept file onto its final name (never replacing one
    /// unless overwriting, an old copy kept aside with `--backup`), after
    /// checking the temporary name still holds it.
    fn place(&mut self) -> Result<PathBuf, Refusal> {
        let kept = self.stat.take();
        // Built only for a message: this runs once per file.
        let shown = || crate::names::escape_path(&self.final_path);
        let io_refusal = |what: &str, e: &io::Error| self.io_refusal(what, e);
        let file = &self.file;
        // The name must still be this file: in a directory others can
        // write to, a file renamed over it must never become the result.
        let ours = match kept {
            Some(st) => st,
            None => rfs::fstat(file).map_err(|e| io_refusal("cannot check", &e.into()))?,
        };
        let replaced = || {
            Refusal::new(
                Reason::LocalIo,
                format!(
                    "the partial file for '{}' was replaced by another while receiving; \
                     not kept",
                    shown()
                ),
            )
        };
        // Replacing a file: first make sure what replaces it is ours, or
        // the old content would be lost to an impostor. (Without
        // --overwrite the check after the rename is enough: the name was
        // free, so an impostor there is simply taken out again.)
        if self.overwrite {
            match rfs::statat(&*self.dir, &self.temp_name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if same_object(&st, &ours) => {}
                _ => return Err(replaced()),
            }
        }
        // Keeping old copies: the file about to be replaced gets a second
        // name first (a hard link, so the final name is never missing),
        // then the new file is renamed over the final name.
        let kept_aside = match self.backups {
            Some(_) => keep_aside(&self.dir, &self.final_name)
                .map_err(|e| io_refusal("cannot keep the old copy of", &e))?,
            None => None,
        };
        let renamed = if self.overwrite {
            rfs::renameat(&*self.dir, &self.temp_name, &*self.dir, &self.final_name)
                .map_err(io::Error::from)
        } else {
            rename_noclobber(&self.dir, &self.temp_name, &self.final_name)
        };
        renamed.map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Refusal::new(
                    Reason::Exists,
                    format!("'{}' appeared while receiving; kept it", shown()),
                )
            } else {
                io_refusal("cannot rename into", &e)
            }
        })?;
        // Swapped between the check and the rename: what was renamed is
        // not ours. Without --overwrite the final name was free, so the
        // impostor is taken out again.
        match rfs::statat(&*self.dir, &self.final_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if same_object(&st, &ours) => {}
            Ok(_) => {
                if !self.overwrite {
                    let _ = rfs::unlinkat(&*self.dir, &self.final_name, AtFlags::empty());
                }
                return Err(replaced());
            }
            Err(e) => return Err(io_refusal("cannot check", &e.into())),
        }
        if let (Some(backups), Some(_)) = (self.backups, &kept_aside) {
            prune_backups(&self.dir, &self.final_name, backups);
        }
        note_linkable(&self.linkable, &self.name, &ours);
        Ok(self.final_path.clone())
    }
}

/// Links the file now under the final name (if there is one, a regular
/// file) to a backup name: `NAME~20261130T033001.123Z~`, the UTC time
/// to the millisecond, with `-2`, `-3`, ... before the last `~` if
/// that name is taken. Returns the name used.
fn keep_aside(dir: &OwnedFd, final_name: &OsStr) -> io::Result<Option<OsString>> {
    match rfs::statat(dir, final_name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
        _ => return Ok(None),
    }
    let stamp = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .replace(['-', ':'], "");
    for n in 1..=1000 {
        let mut name = final_name.to_os_string();
        name.push(if n == 1 {
            format!("~{stamp}~")
        } else {
            format!("~{stamp}-{n}~")
        });
        match rfs::linkat(dir, final_name, dir, &name, AtFlags::empty()) {
            Ok(()) => return Ok(Some(name)),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free backup name after 1000 tries",
    ))
}

/// With a limit, removes the oldest copies kept aside for this name
/// beyond it (their names sort by time).
fn prune_backups(dir: &OwnedFd, final_name: &OsStr, backups: Backups) {
    let Some(keep) = backups.keep else { return };
    let mut prefix = final_name.as_encoded_bytes().to_vec();
    prefix.extend_from_slice(b"~");
    let mut kept: Vec<OsString> = names_in(dir)
        .into_iter()
        .filter(|n| {
            let b = n.as_encoded_bytes();
            b.starts_with(&prefix) && is_backup_suffix(&b[prefix.len()..])
        })
        .collect();
    kept.sort();
    let excess = kept.len().saturating_sub(keep);
    for old in &kept[..excess] {
        let _ = rfs::unlinkat(dir, old, AtFlags::empty());
    }
}

/// Whether `suffix` (after `NAME~`) is one of ours: `20261130T033001.123Z~`
/// or `...Z-N~`.
fn is_backup_suffix(suffix: &[u8]) -> bool {
    let Some(body) = suffix.strip_suffix(b"~") else {
        return false;
    };
    let stamp = match body.iter().position(|&b| b == b'Z') {
        Some(z) => &body[..z],
        None => return false,
    };
    stamp.len() == 19
        && stamp[8] == b'T'
        && stamp[15] == b'.'
        && stamp
            .iter()
            .enumerate()
            .all(|(i, b)| i == 8 || i == 15 || b.is_ascii_digit())
}

/// Old copies kept aside when a file is replaced, and how many per name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backups {
    /// `None`: every copy is kept.
    pub keep: Option<usize>,
}

/// Whether two stats are of one file system object.
fn same_object(a: &rfs::Stat, b: &rfs::Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Renames `from` to `to` within `dir` only if `to` does not exist,
/// atomically: with RENAME_NOREPLACE, or where the file system lacks it, a
/// hard link (which fails on an existing name) and an unlink.
fn rename_noclobber(dir: &OwnedFd, from: &OsStr, to: &OsStr) -> io::Result<()> {
    use rustix::io::Errno;
    match rfs::renameat_with(dir, from, dir, to, rfs::RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL | Errno::NOSYS) => {
            rfs::linkat(dir, from, dir, to, AtFlags::empty())?;
            Ok(rfs::unlinkat(dir, from, AtFlags::empty())?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fresh session's destination for each offer.
    fn prepare(target: &Target, overwrite: bool, offer: &Offer) -> Result<Prepared, Refusal> {
        Destination::new(target.clone(), overwrite).prepare(offer)
    }

    fn offer(name: &str, size: u64) -> Offer {
        Offer {
            flags: 0,
            size,
            mode: 0o100640,
            mtime_secs: 1_600_000_000,
            mtime_nanos: 5,
            name: name.into(),
            ..Default::default()
        }
    }

    fn open_dir(dir: &Path) -> OpenDir {
        OpenDir::new(
            rfs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY, rfs::Mode::empty()).unwrap(),
            false,
        )
        .unwrap()
    }

    /// Issue 11, bug 4: the partial's name hashed the destination path as
    /// typed, so a receiver restarted with `--dir ./d` instead of `/abs/d`
    /// started from 0 and orphaned the old partial.
    #[test]
    fn a_partial_is_found_again_however_the_directory_is_spelled() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        let o = offer("a", 10);
        let absolute = Target::Dir(dir.path().join("d"));
        let mut p = prepare(&absolute, false, &o).unwrap().partial().unwrap();
        p.writer().write_all(b"01234").unwrap();
        drop(p);
        let roundabout = Target::Dir(dir.path().join("d/../d/."));
        let again = prepare(&roundabout, false, &o).unwrap().partial().unwrap();
        assert_eq!(again.held(), 5);
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
        let path = p.commit(&o, o.size).unwrap().path;
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
        let path = again.commit(&o, 10).unwrap().path;
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

    /// Issue 12, no orphans: a partial left by an attempt at an earlier
    /// version of a file stayed, hidden, forever, once the next version
    /// arrived under the same name. It is removed now; another user's file
    /// under such a name, and other names' partials, are left alone.
    #[test]
    fn a_completed_file_removes_the_partials_of_earlier_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::Dir(dir.path().into());
        let mut old = offer("a", 10);
        old.mtime_secs -= 86_400;
        let mut p = prepare(&t, false, &old).unwrap().partial().unwrap();
        p.writer().write_all(b"yesterday").unwrap();
        let stale = p.temp_path().file_name().unwrap().to_owned();
        drop(p);
        let mut other = prepare(&t, false, &offer("b", 10))
            .unwrap()
            .partial()
            .unwrap();
        other.writer().write_all(b"bb").unwrap();
        drop(other);
        let o = offer("a", 10);
        let mut p = prepare(&t, false, &o).unwrap().partial().unwrap();
        p.writer().write_all(b"0123456789").unwrap();
        let committed = p.commit(&o, o.size).unwrap();
        assert_eq!(committed.stale, vec![stale]);
        let left = entries(dir.path());
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&"a".to_string()));
        assert!(
            left.iter().any(|n| n.ends_with(PARTIAL_SUFFIX)),
            "b's partial stays"
        );
    }

    /// Issue 12: two replacements within one millisecond still keep both
    /// old copies, under distinct names.
    #[test]
    fn copies_kept_aside_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::Dir(dir.path().into());
        for (i, body) in [b"one", b"two", b"3rd", b"4th"].iter().enumerate() {
            let mut o = offer("f", 3);
            o.mtime_secs += i as i64;
            let mut p = Destination::new(t.clone(), false)
                .with_backups(Some(Backups { keep: None }))
                .prepare(&o)
                .unwrap()
                .partial()
                .unwrap();
            p.writer().write_all(*body).unwrap();
            p.commit(&o, o.size).unwrap();
        }
        let names = entries(dir.path());
        assert_eq!(names.len(), 4, "{names:?}");
        let mut bodies: Vec<Vec<u8>> = names
            .iter()
            .map(|n| fs::read(dir.path().join(n)).unwrap())
            .collect();
        bodies.sort();
        assert_eq!(
            bodies,
            [
                b"3rd".to_vec(),
                b"4th".to_vec(),
                b"one".to_vec(),
                b"two".to_vec()
            ]
        );
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"4th");
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
        assert_eq!(p.commit(&o, o.size).unwrap().path, out);
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
        let path = p.commit(&o, o.size).unwrap().path;
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, size);
        assert_eq!(&data[..4], b"head");
        assert!(data[4..].iter().all(|&b| b == 0));
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&path).unwrap().blocks() * 512 < size);
    }

    #[test]
    fn a_link_on_the_way_is_never_followed_and_nothing_lands_outside() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        let t = Target::Dir(dir.path().into());
        let mut o = offer("sub/x", 1);
        o.flags = FLAG_PATH;
        assert_eq!(prepare(&t, false, &o).unwrap_err().reason, Reason::BadName);
        // Nor as the last component of a directory entry.
        o.flags = FLAG_DIR;
        o.name = "sub".into();
        o.size = 0;
        assert_eq!(prepare(&t, false, &o).unwrap_err().reason, Reason::BadName);
        assert!(entries(outside.path()).is_empty());
        // A file where a directory must go is refused, not replaced.
        fs::write(dir.path().join("file"), b"keep").unwrap();
        let mut o = offer("file/x", 1);
        o.flags = FLAG_PATH;
        assert_eq!(prepare(&t, false, &o).unwrap_err().reason, Reason::Exists);
        assert_eq!(fs::read(dir.path().join("file")).unwrap(), b"keep");
    }

    #[test]
    fn a_partial_name_planted_as_a_link_to_another_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let t = Target::Dir(dir.path().into());
        let o = offer("a", 10);
        let name = partial_name(&open_dir(dir.path()), OsStr::new("a"), &o);
        let plant = |how: &dyn Fn(&Path, &Path) -> io::Result<()>| {
            let _ = fs::remove_file(dir.path().join(&name));
            how(&victim, &dir.path().join(&name)).unwrap();
            let mut p = prepare(&t, false, &o).unwrap().partial().unwrap();
            assert_eq!(p.held(), 0);
            assert_ne!(p.temp_path(), dir.path().join(&name));
            p.writer().write_all(b"0123456789").unwrap();
            let path = p.commit(&o, o.size).unwrap().path;
            assert_eq!(fs::read(&path).unwrap(), b"0123456789");
            fs::remove_file(path).unwrap();
            assert_eq!(fs::read(&victim).unwrap(), b"precious");
        };
        plant(&|from, to| fs::hard_link(from, to));
        plant(&|from, to| std::os::unix::fs::symlink(from, to));
    }

    /// Issue 12, hostile neighbours: a partial file another user planted
    /// under the predictable name (in a sticky or group-writable directory)
    /// was resumed, so the received file ended up theirs, read and rewritten
    /// by them. Only a partial of our own uid is resumed.
    #[test]
    fn a_partial_planted_by_another_user_is_not_resumed() {
        if !rustix::process::geteuid().is_root() {
            eprintln!(
                "a_partial_planted_by_another_user_is_not_resumed needs root to chown; CI runs as root"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let t = Target::Dir(dir.path().into());
        let o = offer("a", 10);
        let planted = dir
            .path()
            .join(partial_name(&open_dir(dir.path()), OsStr::new("a"), &o));
        fs::write(&planted, b"01234").unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        let mut p = prepare(&t, false, &o).unwrap().partial().unwrap();
        assert_eq!(p.held(), 0, "another user's partial must not be resumed");
        p.writer().write_all(b"abcdefghij").unwrap();
        let path = p.commit(&o, o.size).unwrap().path;
        assert_eq!(fs::read(&path).unwrap(), b"abcdefghij");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&path).unwrap().uid(), 0);
        // Theirs is left as it was, not deleted or written.
        assert_eq!(fs::read(&planted).unwrap(), b"01234");
    }

    /// Issue 12, hostile neighbours: a file renamed over the partial file
    /// mid-transfer became the "verified" final file.
    #[test]
    fn a_partial_file_replaced_mid_transfer_never_becomes_the_final_file() {
        for overwrite in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let o = offer("a", 3);
            if overwrite {
                fs::write(dir.path().join("a"), b"old").unwrap();
            }
            let mut p = prepare(&Target::Dir(dir.path().into()), overwrite, &o)
                .unwrap()
                .partial()
                .unwrap();
            p.writer().write_all(b"new").unwrap();
            let impostor = dir.path().join("impostor");
            fs::write(&impostor, b"bad").unwrap();
            fs::rename(&impostor, p.temp_path()).unwrap();
            let err = p.commit(&o, o.size).unwrap_err();
            assert_eq!(err.reason, Reason::LocalIo);
            assert!(err.message.contains("replaced"), "{}", err.message);
            if overwrite {
                assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"old");
            } else {
                assert!(!dir.path().join("a").exists());
            }
        }
    }

    /// Issue 12, hostile neighbours: under --checksum a FIFO swapped in for
    /// the existing file after its stat blocked the session forever.
    #[test]
    fn a_fifo_swapped_in_for_the_existing_file_does_not_block_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"abc").unwrap();
        let fd = rfs::open(
            dir.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            rfs::Mode::empty(),
        )
        .unwrap();
        let st = rfs::statat(&fd, "a", AtFlags::SYMLINK_NOFOLLOW).unwrap();
        fs::remove_file(dir.path().join("a")).unwrap();
        rfs::mkfifoat(&fd, "a", rfs::Mode::from_raw_mode(0o600)).unwrap();
        let mut o = offer("a", 3);
        o.sha256 = Some(Sha256::digest(b"abc").into());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(unchanged(&fd, OsStr::new("a"), &st, &o));
        });
        let answer = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(answer, Ok(false), "the check must not block on a FIFO");
    }
}
