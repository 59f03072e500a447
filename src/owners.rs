//! Owners and groups between machines: the sender names them (a user and a
//! group name besides the numbers), the receiver maps the names back to its
//! own numbers, as rsync does, falling back to the numbers when a name is
//! unknown here or `--numeric-ids` asks for numbers only.
//!
//! Lookups go through the system's user database (NSS) once per id and
//! session: a tree of a million files owned by one user costs one lookup.

use std::collections::HashMap;

use crate::protocol::Owner;

/// The sender's side: numbers to names, cached.
#[derive(Debug, Default)]
pub struct Namer {
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
}

impl Namer {
    /// The owner to offer for a file of `uid` and `gid` (names empty where
    /// the system has none).
    pub fn owner(&mut self, uid: u32, gid: u32) -> Owner {
        let user = self
            .users
            .entry(uid)
            .or_insert_with(|| {
                let user = nix::unistd::User::from_uid(uid.into());
                user.ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_default()
                    .into_bytes()
            })
            .clone();
        let group = self
            .groups
            .entry(gid)
            .or_insert_with(|| {
                let group = nix::unistd::Group::from_gid(gid.into());
                group
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_default()
                    .into_bytes()
            })
            .clone();
        Owner {
            uid,
            gid,
            user,
            group,
        }
    }
}

/// Most names each cache of a [`Mapper`] keeps: a peer choosing a new name
/// for every file must not grow a session's memory without bound (past
/// this, names are looked up each time).
const MAX_CACHED: usize = 4096;

/// Looks `name` up through `cache`, keeping the answer while there is room.
fn cached(
    cache: &mut HashMap<Vec<u8>, Option<u32>>,
    name: &[u8],
    lookup: impl FnOnce(&str) -> Option<u32>,
) -> Option<u32> {
    if let Some(known) = cache.get(name) {
        return *known;
    }
    let found = std::str::from_utf8(name).ok().and_then(lookup);
    if cache.len() < MAX_CACHED {
        cache.insert(name.to_vec(), found);
    }
    found
}

/// The receiver's side: an offered owner to this machine's numbers, cached.
#[derive(Debug, Default)]
pub struct Mapper {
    /// `--numeric-ids`: the numbers as sent, names ignored.
    numeric: bool,
    users: HashMap<Vec<u8>, Option<u32>>,
    groups: HashMap<Vec<u8>, Option<u32>>,
}

impl Mapper {
    pub fn new(numeric: bool) -> Self {
        Mapper {
            numeric,
            ..Mapper::default()
        }
    }

    /// The uid and gid to give an entry offered with `owner`: by name where
    /// this machine knows the name, else the sender's numbers.
    pub fn ids(&mut self, owner: &Owner) -> (u32, u32) {
        if self.numeric {
            return (owner.uid, owner.gid);
        }
        let uid = match owner.user.as_slice() {
            [] => None,
            name => cached(&mut self.users, name, |n| {
                nix::unistd::User::from_name(n)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw())
            }),
        };
        let gid = match owner.group.as_slice() {
            [] => None,
            name => cached(&mut self.groups, name, |n| {
                nix::unistd::Group::from_name(n)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
            }),
        };
        (uid.unwrap_or(owner.uid), gid.unwrap_or(owner.gid))
    }
}

/// Whether this process may give files away (owners are kept only then,
/// as rsync does: an ordinary user's files are its own).
pub fn can_chown() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_back_to_numbers_and_unknown_names_keep_the_numbers() {
        let mut namer = Namer::default();
        let root = namer.owner(0, 0);
        assert_eq!(root.user, b"root");
        assert_eq!(root.group, b"root");
        let mut mapper = Mapper::new(false);
        assert_eq!(mapper.ids(&root), (0, 0));
        let stranger = Owner {
            uid: 4242,
            gid: 4343,
            user: b"no-such-user-here".to_vec(),
            group: b"no-such-group-here".to_vec(),
        };
        assert_eq!(mapper.ids(&stranger), (4242, 4343));
        // By name: "root" sent with other numbers is root here.
        let renumbered = Owner {
            uid: 77,
            gid: 78,
            ..root.clone()
        };
        assert_eq!(mapper.ids(&renumbered), (0, 0));
        assert_eq!(Mapper::new(true).ids(&renumbered), (77, 78));
    }
}
