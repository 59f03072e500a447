//! Extended attributes (`send --xattrs`): read from an open file or
//! directory on the sender, set on the receiver's file before it gets its
//! final name.
//!
//! Only the `user.` namespace travels. The others are not data: `system.`
//! holds ACLs (another feature), `security.` capabilities and labels, and
//! `trusted.` needs root; a peer must never be able to give a file
//! capabilities on the receiver.

use std::os::fd::AsFd;

use crate::protocol::{MAX_XATTRS, Xattr};

/// The namespace that travels.
pub const NAMESPACE: &[u8] = b"user.";

/// Most bytes of names and values one entry's attributes may take: they
/// ride in its OFFER, a control frame capped at 64 KiB.
pub const MAX_TOTAL: usize = 48 * 1024;

/// Why an entry's attributes cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum XattrError {
    #[error("cannot read its extended attributes: {0}")]
    Io(#[from] std::io::Error),
    #[error("its extended attributes take {0} bytes, more than the {MAX_TOTAL} xfer carries")]
    TooLarge(usize),
    #[error("it has more than {MAX_XATTRS} extended attributes")]
    TooMany,
}

/// The `user.` attributes of the open file or directory `fd`, in name
/// order. A file system without extended attributes has none.
pub fn read(fd: impl AsFd) -> Result<Vec<Xattr>, XattrError> {
    let fd = fd.as_fd();
    let list = match list(fd) {
        Ok(list) => list,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e.into()),
    };
    let mut names: Vec<&[u8]> = list
        .split(|b| *b == 0)
        .filter(|n| n.starts_with(NAMESPACE))
        .collect();
    names.sort_unstable();
    if names.len() > MAX_XATTRS {
        return Err(XattrError::TooMany);
    }
    let mut total = 0;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let value = match get(fd, name) {
            Ok(v) => v,
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) => {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        total += name.len() + value.len();
        if total > MAX_TOTAL {
            return Err(XattrError::TooLarge(total));
        }
        out.push(Xattr {
            name: name.to_vec(),
            value,
        });
    }
    Ok(out)
}

fn list(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<u8>> {
    sized(
        || rustix::fs::flistxattr_query(fd),
        |buf| rustix::fs::flistxattr(fd, buf),
    )
}

fn get(fd: std::os::fd::BorrowedFd<'_>, name: &[u8]) -> std::io::Result<Vec<u8>> {
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    sized(
        || rustix::fs::fgetxattr_query(fd, name.as_c_str()),
        |buf| rustix::fs::fgetxattr(fd, name.as_c_str(), buf),
    )
}

/// A list or value the kernel hands out by size: asked for its size
/// first, then read; it can grow in between (ERANGE), so up to 4 tries.
fn sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    read: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> std::io::Result<Vec<u8>> {
    for _ in 0..4 {
        let mut buf = vec![0u8; query()?];
        match read(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other(
        "extended attributes kept growing while being read",
    ))
}

/// Sets `xattrs` on the open file or directory `fd`. Names outside the
/// `user.` namespace, or with a NUL, are refused: they never come from an
/// xfer sender.
pub fn apply(fd: impl AsFd, xattrs: &[Xattr]) -> std::io::Result<()> {
    for x in xattrs {
        if !x.name.starts_with(NAMESPACE) || x.name.contains(&0) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "extended attribute '{}' is outside the user namespace",
                    crate::names::shown(&x.name)
                ),
            ));
        }
        let name = std::ffi::CString::new(x.name.clone()).map_err(std::io::Error::other)?;
        rustix::fs::fsetxattr(
            fd.as_fd(),
            name.as_c_str(),
            &x.value,
            rustix::fs::XattrFlags::empty(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_attributes_round_trip_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::fs::File::create(dir.path().join("a")).unwrap();
        let set = vec![
            Xattr {
                name: b"user.b".to_vec(),
                value: vec![0, 1, 2],
            },
            Xattr {
                name: b"user.a".to_vec(),
                value: b"hello".to_vec(),
            },
        ];
        match apply(&a, &set) {
            Ok(()) => {}
            // A file system without user attributes (tmpfs of old kernels).
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => {
                eprintln!("no user xattrs on this file system; nothing to check");
                return;
            }
            Err(e) => panic!("{e}"),
        }
        let got = read(&a).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].name.as_slice(), got[0].value.as_slice()),
            (&b"user.a"[..], &b"hello"[..])
        );
        assert_eq!(got[1].value, vec![0, 1, 2]);
        let hostile = [Xattr {
            name: b"security.capability".to_vec(),
            value: vec![1],
        }];
        assert!(apply(&a, &hostile).is_err());
    }
}
