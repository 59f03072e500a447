//! What the sender reads, and the guarantee that it reads what it listed.
//!
//! The command-line paths are walked through directory handles (each child
//! looked at with `fstatat(AT_SYMLINK_NOFOLLOW)`, each subdirectory opened
//! with `O_NOFOLLOW`), and every entry records its [`Identity`]. When an
//! entry is sent, seconds later, it is opened again relative to its
//! directory's handle, never through a symbolic link, and its device and
//! inode must be the ones the walk saw. A local user who can write in the
//! tree can make an entry fail, but never make xfer read another file in its
//! place: the flaw of rsync's CVE-2024-12747.
//!
//! This module must never open anything below a command-line path by a path
//! string, and never follow a link there.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

use crate::exit_codes::{ExitCode, Failure};
use crate::names::escape_for_terminal;

/// What identifies a file and its content at one moment: the object (device
/// and inode) and what changes when it is written (size, mtime, ctime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// The whole `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Identity {
    // The casts are for 32-bit targets, where these fields are narrower.
    #[allow(clippy::unnecessary_cast)]
    pub fn of(st: &rfs::Stat) -> Identity {
        Identity {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mode: st.st_mode as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as u32),
        }
    }

    /// The same file system object, whatever happened to its content.
    pub fn same_object(&self, other: &Identity) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// A symbolic link below a command-line path, sent as a link.
    Symlink,
    /// A second name of the file of an earlier entry (its index): sent as
    /// a hard link to it.
    HardLink(usize),
}

/// One thing to offer, as the walk saw it.
#[derive(Debug)]
pub struct Entry {
    /// The name on the wire (`dir/sub/file` inside a tree): bytes, as the
    /// file system has them.
    pub name: Vec<u8>,
    pub kind: Kind,
    pub id: Identity,
    /// The directory entry this one was found in; `None` for a path named on
    /// the command line.
    parent: Option<usize>,
    /// A command-line path as given, or the name within `parent`.
    local: OsString,
}

/// Everything the command line names, walked (directories recursively, in
/// name order, symbolic links below the command line never followed).
#[derive(Default)]
pub struct Plan {
    pub entries: Vec<Entry>,
    /// Passed over on purpose: (name, reason).
    pub passed_over: Vec<(Vec<u8>, &'static str)>,
    /// Could not be read or named: (name, error).
    pub unreadable: Vec<(Vec<u8>, anyhow::Error)>,
    /// Regular files with more than one link, by (device, inode): the
    /// entry that names them first.
    linked: std::collections::HashMap<(u64, u64), usize>,
    /// `--safe-links`: links that could lead outside the tree are passed
    /// over.
    safe_links: bool,
}

impl Plan {
    /// Walks `paths`; with `rename`, each is offered under that name; with
    /// `safe_links`, links that could lead outside the tree are passed over.
    pub fn of(paths: &[PathBuf], rename: Option<&str>, safe_links: bool) -> Plan {
        let mut plan = Plan {
            safe_links,
            ..Plan::default()
        };
        for path in paths {
            let name = match rename {
                Some(n) => Some(n.as_bytes().to_vec()),
                None => top_name(path),
            };
            match name {
                Some(name) => plan.walk_top(path, name),
                None => plan.unreadable.push((
                    path.as_os_str().as_bytes().to_vec(),
                    Failure::new(
                        ExitCode::LocalFile,
                        format!(
                            "'{}' has no name to offer; give one with --name",
                            shown(path.as_os_str())
                        ),
                    )
                    .into(),
                )),
            }
        }
        plan
    }

    /// The target of the symbolic link of entry `index`, read now through
    /// its directory's handle; it must still be the link the walk saw.
    pub fn read_link(&self, opener: &mut Opener, index: usize) -> anyhow::Result<Vec<u8>> {
        let entry = &self.entries[index];
        let Some(parent) = entry.parent else {
            unreachable!("links are only found below a command-line path");
        };
        let read = opener.dir(self, parent).and_then(|dir| {
            let st = rfs::statat(dir, &entry.local, AtFlags::SYMLINK_NOFOLLOW)?;
            if !Identity::of(&st).same_object(&entry.id)
                || FileType::from_raw_mode(st.st_mode) != FileType::Symlink
            {
                return Err(REPLACED);
            }
            rfs::readlinkat(dir, &entry.local, Vec::new())
        });
        read.map(|target| target.into_bytes())
            .map_err(|e| self.changed_or(index, e, "cannot read the link"))
    }

    /// The local path of entry `index`, escaped for messages.
    pub fn shown(&self, index: usize) -> String {
        shown(self.local_path(index).as_os_str())
    }

    fn local_path(&self, index: usize) -> PathBuf {
        let entry = &self.entries[index];
        match entry.parent {
            None => PathBuf::from(&entry.local),
            Some(p) => self.local_path(p).join(&entry.local),
        }
    }

    /// A path named on the command line: followed if it is a link (it is the
    /// user's to choose), and it must be a file or a directory.
    fn walk_top(&mut self, path: &Path, name: Vec<u8>) {
        let fail = |e: rustix::io::Errno, what: &str| -> anyhow::Error {
            Failure::local(format!("{what} '{}'", shown(path.as_os_str())), &e.into()).into()
        };
        let st = match rfs::stat(path) {
            Ok(st) => st,
            Err(e) => return self.unreadable.push((name, fail(e, "cannot open"))),
        };
        let id = Identity::of(&st);
        match id.file_type() {
            FileType::RegularFile => self.entries.push(Entry {
                name,
                kind: Kind::File,
                id,
                parent: None,
                local: path.as_os_str().to_owned(),
            }),
            FileType::Directory => {
                let fd = match open_dir_at(rfs::CWD, path.as_os_str(), &id, false) {
                    Ok(fd) => fd,
                    Err(e) => return self.unreadable.push((name, fail(e, "cannot list"))),
                };
                self.entries.push(Entry {
                    name: name.clone(),
                    kind: Kind::Dir,
                    id,
                    parent: None,
                    local: path.as_os_str().to_owned(),
                });
                let index = self.entries.len() - 1;
                self.walk_dir(&fd, index, &name);
            }
            _ => self.unreadable.push((
                name,
                Failure::new(
                    ExitCode::LocalFile,
                    format!(
                        "cannot send '{}': not a regular file (use '-' for a stream)",
                        shown(path.as_os_str())
                    ),
                )
                .into(),
            )),
        }
    }

    /// Adds everything in the directory `fd` (entry `index`, named `name` on
    /// the wire): files and directories, links and special files passed over.
    fn walk_dir(&mut self, fd: &OwnedFd, index: usize, name: &[u8]) {
        let cannot_list = |plan: &Plan, e: rustix::io::Errno| -> anyhow::Error {
            Failure::local(format!("cannot list '{}'", plan.shown(index)), &e.into()).into()
        };
        let listed: Result<Vec<OsString>, _> = rfs::Dir::read_from(fd).and_then(|dir| {
            dir.filter_map(|entry| match entry {
                Ok(e) if matches!(e.file_name().to_bytes(), b"." | b"..") => None,
                Ok(e) => Some(Ok(OsStr::from_bytes(e.file_name().to_bytes()).to_owned())),
                Err(e) => Some(Err(e)),
            })
            .collect()
        });
        let mut children = match listed {
            Ok(c) => c,
            Err(e) => {
                let err = cannot_list(self, e);
                return self.unreadable.push((name.to_vec(), err));
            }
        };
        children.sort();
        for child in children {
            let child_path = || self.local_path(index).join(&child);
            let child_name = [name, b"/", child.as_bytes()].concat();
            let st = match rfs::statat(fd, &child, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    let err = Failure::local(
                        format!("cannot open '{}'", shown(child_path().as_os_str())),
                        &e.into(),
                    );
                    self.unreadable.push((child_name, err.into()));
                    continue;
                }
            };
            let id = Identity::of(&st);
            let kind = match id.file_type() {
                FileType::RegularFile if st.st_nlink > 1 => {
                    let first = self.entries.len();
                    match self.linked.entry((id.dev, id.ino)) {
                        std::collections::hash_map::Entry::Occupied(o) => Kind::HardLink(*o.get()),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(first);
                            Kind::File
                        }
                    }
                }
                FileType::RegularFile => Kind::File,
                FileType::Directory => Kind::Dir,
                FileType::Symlink if self.safe_links => {
                    // Depth within the tree: the command-line path is 0.
                    let depth = child_name.iter().filter(|b| **b == b'/').count() - 1;
                    match rfs::readlinkat(fd, &child, Vec::new()) {
                        Ok(target) if crate::names::link_leaves_tree(depth, target.as_bytes()) => {
                            self.passed_over.push((
                                child_name,
                                "symbolic link pointing outside the tree (--safe-links)",
                            ));
                            continue;
                        }
                        _ => Kind::Symlink,
                    }
                }
                FileType::Symlink => Kind::Symlink,
                FileType::Fifo => {
                    self.passed_over.push((child_name, "a FIFO (named pipe)"));
                    continue;
                }
                FileType::Socket => {
                    self.passed_over.push((child_name, "a socket"));
                    continue;
                }
                FileType::CharacterDevice | FileType::BlockDevice => {
                    self.passed_over.push((child_name, "a device"));
                    continue;
                }
                _ => {
                    self.passed_over
                        .push((child_name, "not a file, directory or link"));
                    continue;
                }
            };
            self.entries.push(Entry {
                name: child_name.clone(),
                kind,
                id,
                parent: Some(index),
                local: child.clone(),
            });
            let child_index = self.entries.len() - 1;
            if kind == Kind::Dir {
                match open_dir_at(fd, &child, &id, true) {
                    Ok(child_fd) => self.walk_dir(&child_fd, child_index, &child_name),
                    Err(e) => {
                        let err = self.changed_or(child_index, e, "cannot list");
                        self.unreadable.push((child_name, err));
                    }
                }
            }
        }
    }

    /// The error for entry `index` that could not be opened: replaced since
    /// it was listed, or the system's own reason.
    fn changed_or(&self, index: usize, e: rustix::io::Errno, what: &str) -> anyhow::Error {
        if e == REPLACED {
            replaced(&self.shown(index))
        } else {
            Failure::local(format!("{what} '{}'", self.shown(index)), &e.into()).into()
        }
    }
}

/// Stands for "not the object the walk saw" in this module's results.
const REPLACED: rustix::io::Errno = rustix::io::Errno::STALE;

fn replaced(shown: &str) -> anyhow::Error {
    Failure::new(
        ExitCode::LocalFile,
        format!("'{shown}' was replaced after it was listed (not sent; run again to send it)"),
    )
    .into()
}

/// Opens the directory `name` in `at` and checks it is the object `want`
/// (`REPLACED` otherwise); `nofollow` below the command line.
fn open_dir_at<Fd: std::os::fd::AsFd>(
    at: Fd,
    name: &OsStr,
    want: &Identity,
    nofollow: bool,
) -> rustix::io::Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if nofollow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = rfs::openat(at, name, flags, Mode::empty())?;
    if !Identity::of(&rfs::fstat(&fd)?).same_object(want) {
        return Err(REPLACED);
    }
    Ok(fd)
}

/// Opens a plan's entries for reading, keeping the handles of the
/// directories on the way to the last one (a tree is sent directory by
/// directory, so each directory is opened once).
#[derive(Default)]
pub struct Opener {
    /// Entry index and handle of each directory from a command-line path
    /// down to the directory of the last file opened.
    chain: Vec<(usize, OwnedFd)>,
}

impl Opener {
    /// Opens the file of entry `index` without following a link and
    /// without blocking (a FIFO put in its place cannot hang the open), and
    /// checks it is the object the walk saw. Returns it with its identity
    /// now, which gives the size and times to offer.
    pub fn open_file(&mut self, plan: &Plan, index: usize) -> anyhow::Result<(File, Identity)> {
        let entry = &plan.entries[index];
        let flags =
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let opened = match entry.parent {
            // A command-line path may itself be a link: the user's choice.
            None => rfs::open(
                Path::new(&entry.local),
                flags - OFlags::NOFOLLOW,
                Mode::empty(),
            ),
            Some(parent) => match self.dir(plan, parent) {
                Ok(dir) => rfs::openat(dir, &entry.local, flags, Mode::empty()),
                Err(e) => Err(e),
            },
        };
        let fd = opened
            .and_then(|fd| {
                let now = Identity::of(&rfs::fstat(&fd)?);
                if !now.same_object(&entry.id) || now.file_type() != FileType::RegularFile {
                    return Err(REPLACED);
                }
                Ok((fd, now))
            })
            .map_err(|e| match e {
                // O_NOFOLLOW met a link: something was put in its place.
                rustix::io::Errno::LOOP => replaced(&plan.shown(index)),
                e => plan.changed_or(index, e, "cannot open"),
            })?;
        Ok((File::from(fd.0), fd.1))
    }

    /// Removes the file of entry `index` (`--remove-source-files`) if it is
    /// still exactly the file that was read: same device, inode, size,
    /// modification and change time as `read`. Found through the same
    /// directory handles as when it was opened, never through a link. `Ok`
    /// with the reason when it is kept instead.
    pub fn remove_file(
        &mut self,
        plan: &Plan,
        index: usize,
        read: &Identity,
    ) -> std::io::Result<Result<(), &'static str>> {
        let entry = &plan.entries[index];
        let (dir, name): (OwnedFd, OsString) = match entry.parent {
            None => {
                let path = Path::new(&entry.local);
                let Some(name) = path.file_name() else {
                    return Ok(Err("it has no file name to remove"));
                };
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                let fd = rfs::open(
                    parent,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                (fd, name.to_os_string())
            }
            Some(parent) => {
                let dir = self.dir(plan, parent)?;
                (dir.try_clone()?, entry.local.clone())
            }
        };
        let now = match rfs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Identity::of(&st),
            Err(rustix::io::Errno::NOENT) => return Ok(Err("it is no longer there")),
            Err(e) => return Err(e.into()),
        };
        if now.file_type() == FileType::Symlink {
            return Ok(Err("the path is now (or was given as) a symbolic link"));
        }
        if !now.same_object(read)
            || now.size != read.size
            || now.mtime != read.mtime
            || now.ctime != read.ctime
        {
            return Ok(Err(
                "it changed or was replaced since it was read (or the receiver wrote over this very file)",
            ));
        }
        rfs::unlinkat(&dir, &name, AtFlags::empty())?;
        Ok(Ok(()))
    }

    /// The handle of directory entry `index`, opened along the chain from
    /// its command-line path, each checked against the walk.
    pub fn dir(&mut self, plan: &Plan, index: usize) -> rustix::io::Result<&OwnedFd> {
        let mut wanted = vec![index];
        while let Some(p) = plan.entries[*wanted.last().expect("not empty")].parent {
            wanted.push(p);
        }
        wanted.reverse();
        let kept = self
            .chain
            .iter()
            .zip(&wanted)
            .take_while(|((have, _), want)| have == *want)
            .count();
        self.chain.truncate(kept);
        for &i in &wanted[kept..] {
            let entry = &plan.entries[i];
            let fd = match self.chain.last() {
                None => open_dir_at(rfs::CWD, &entry.local, &entry.id, false),
                Some((_, parent)) => open_dir_at(parent, &entry.local, &entry.id, true),
            };
            match fd {
                Ok(fd) => self.chain.push((i, fd)),
                Err(e) => {
                    self.chain.clear();
                    return Err(e);
                }
            }
        }
        Ok(&self.chain.last().expect("at least the wanted directory").1)
    }
}

/// The name a command-line path is offered under: its last component
/// (`.` and `dir/` name the directory itself).
fn top_name(path: &Path) -> Option<Vec<u8>> {
    let named = match path.file_name() {
        Some(n) => Some(n.to_os_string()),
        None => std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_os_string())),
    };
    named.map(|n| n.into_vec())
}

fn shown(path: &OsStr) -> String {
    escape_for_terminal(Path::new(path).display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn plan_of(dir: &Path) -> Plan {
        Plan::of(&[dir.to_path_buf()], None, false)
    }

    fn index_of(plan: &Plan, name: &str) -> usize {
        plan.entries
            .iter()
            .position(|e| e.name == name.as_bytes())
            .unwrap()
    }

    fn read(file: &mut File) -> Vec<u8> {
        let mut v = Vec::new();
        file.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn a_tree_is_walked_in_name_order_with_links_kept_and_specials_passed_over() {
        let top = tempfile::tempdir().unwrap();
        let t = top.path().join("t");
        fs::create_dir_all(t.join("sub")).unwrap();
        fs::write(t.join("b"), b"b").unwrap();
        fs::write(t.join("a"), b"a").unwrap();
        fs::write(t.join("sub/c"), b"c").unwrap();
        fs::hard_link(t.join("a"), t.join("sub/a2")).unwrap();
        symlink("/etc/passwd", t.join("link")).unwrap();
        symlink("sub/c", t.join("inside")).unwrap();
        std::fs::write(
            t.join(std::ffi::OsStr::from_bytes(b"caf\xe9")),
            b"not utf-8",
        )
        .unwrap();
        rustix::fs::mkfifoat(rfs::CWD, t.join("fifo"), Mode::from_raw_mode(0o600)).unwrap();
        let plan = plan_of(&t);
        let names: Vec<_> = plan
            .entries
            .iter()
            .map(|e| (e.name.as_slice(), e.kind))
            .collect();
        let a = index_of(&plan, "t/a");
        assert_eq!(
            names,
            [
                (&b"t"[..], Kind::Dir),
                (b"t/a", Kind::File),
                (b"t/b", Kind::File),
                (b"t/caf\xe9", Kind::File),
                (b"t/inside", Kind::Symlink),
                (b"t/link", Kind::Symlink),
                (b"t/sub", Kind::Dir),
                (b"t/sub/a2", Kind::HardLink(a)),
                (b"t/sub/c", Kind::File),
            ]
        );
        let over: Vec<_> = plan.passed_over.iter().map(|p| p.0.as_slice()).collect();
        assert_eq!(over, [b"t/fifo"]);
        let mut opener = Opener::default();
        assert_eq!(
            plan.read_link(&mut opener, index_of(&plan, "t/link"))
                .unwrap(),
            b"/etc/passwd"
        );
        let (mut f, id) = opener.open_file(&plan, index_of(&plan, "t/sub/c")).unwrap();
        assert_eq!((read(&mut f), id.size), (b"c".to_vec(), 1));
        let (mut f, _) = opener.open_file(&plan, index_of(&plan, "t/a")).unwrap();
        assert_eq!(read(&mut f), b"a");

        // --safe-links: only the link that stays inside the tree is kept.
        let plan = Plan::of(std::slice::from_ref(&t), None, true);
        let over: Vec<_> = plan.passed_over.iter().map(|p| p.0.as_slice()).collect();
        assert_eq!(over, [&b"t/fifo"[..], b"t/link"]);
        assert_eq!(
            plan.entries[index_of(&plan, "t/inside")].kind,
            Kind::Symlink
        );
    }

    /// Issue 12, hostile neighbours: a file swapped for a link to a file the
    /// sender may read but the tree's owner may not, after the walk and
    /// before the open, must not be sent.
    #[test]
    fn a_file_swapped_for_a_link_after_the_walk_is_not_read() {
        let top = tempfile::tempdir().unwrap();
        let t = top.path().join("t");
        fs::create_dir(&t).unwrap();
        let secret = top.path().join("secret");
        fs::write(&secret, b"root only").unwrap();
        fs::write(t.join("a"), b"harmless").unwrap();
        let plan = plan_of(&t);
        fs::remove_file(t.join("a")).unwrap();
        symlink(&secret, t.join("a")).unwrap();
        let err = Opener::default()
            .open_file(&plan, index_of(&plan, "t/a"))
            .unwrap_err();
        assert_eq!(ExitCode::for_error(&err), ExitCode::LocalFile);
        assert!(
            format!("{err:#}").contains("was replaced after it was listed"),
            "{err:#}"
        );
        // A hard link or a rename brings another inode: refused as well.
        fs::remove_file(t.join("a")).unwrap();
        fs::hard_link(&secret, t.join("a")).unwrap();
        assert!(
            Opener::default()
                .open_file(&plan, index_of(&plan, "t/a"))
                .is_err()
        );
    }

    #[test]
    fn only_the_very_file_that_was_read_is_removed() {
        let top = tempfile::tempdir().unwrap();
        let t = top.path().join("t");
        fs::create_dir(&t).unwrap();
        for name in ["same", "grown", "swapped"] {
            fs::write(t.join(name), b"contents").unwrap();
        }
        let plan = plan_of(&t);
        let mut opener = Opener::default();
        let mut read = |name: &str| {
            let (mut f, _) = opener.open_file(&plan, index_of(&plan, name)).unwrap();
            read(&mut f);
            Identity::of(&rfs::fstat(&f).unwrap())
        };
        let (same, grown, swapped) = (read("t/same"), read("t/grown"), read("t/swapped"));
        // Written to after it was read: kept.
        use std::io::Write as _;
        fs::OpenOptions::new()
            .append(true)
            .open(t.join("grown"))
            .unwrap()
            .write_all(b"more")
            .unwrap();
        // Replaced by a link to something else: kept, and so is the target.
        let elsewhere = top.path().join("elsewhere");
        fs::write(&elsewhere, b"contents").unwrap();
        fs::remove_file(t.join("swapped")).unwrap();
        symlink(&elsewhere, t.join("swapped")).unwrap();
        let mut opener = Opener::default();
        let mut remove = |name: &str, id: &Identity| {
            opener
                .remove_file(&plan, index_of(&plan, name), id)
                .unwrap()
        };
        assert!(remove("t/grown", &grown).is_err());
        assert!(remove("t/swapped", &swapped).is_err());
        assert_eq!(remove("t/same", &same), Ok(()));
        assert!(!t.join("same").exists());
        assert!(t.join("grown").exists() && t.join("swapped").exists() && elsewhere.exists());
        // Gone already: kept (nothing to do), not an error.
        assert!(remove("t/same", &same).is_err());
    }

    #[test]
    fn a_directory_swapped_for_a_link_after_the_walk_is_not_entered() {
        let top = tempfile::tempdir().unwrap();
        let t = top.path().join("t");
        fs::create_dir_all(t.join("sub")).unwrap();
        fs::write(t.join("sub/key"), b"harmless").unwrap();
        let private = top.path().join("private");
        fs::create_dir(&private).unwrap();
        fs::write(private.join("key"), b"root only").unwrap();
        let plan = plan_of(&t);
        fs::rename(t.join("sub"), top.path().join("moved")).unwrap();
        symlink(&private, t.join("sub")).unwrap();
        let err = Opener::default()
            .open_file(&plan, index_of(&plan, "t/sub/key"))
            .unwrap_err();
        assert_eq!(ExitCode::for_error(&err), ExitCode::LocalFile);
        // The same directory moved back in place is fine again.
        fs::remove_file(t.join("sub")).unwrap();
        fs::rename(top.path().join("moved"), t.join("sub")).unwrap();
        let (mut f, _) = Opener::default()
            .open_file(&plan, index_of(&plan, "t/sub/key"))
            .unwrap();
        assert_eq!(read(&mut f), b"harmless");
    }

    #[test]
    fn a_fifo_put_in_place_of_a_file_fails_at_once() {
        let top = tempfile::tempdir().unwrap();
        let t = top.path().join("t");
        fs::create_dir(&t).unwrap();
        fs::write(t.join("a"), b"x").unwrap();
        let plan = plan_of(&t);
        fs::remove_file(t.join("a")).unwrap();
        rustix::fs::mkfifoat(rfs::CWD, t.join("a"), Mode::from_raw_mode(0o600)).unwrap();
        assert!(
            Opener::default()
                .open_file(&plan, index_of(&plan, "t/a"))
                .is_err()
        );
    }
}
