//! File names from the network: which ones the receiver accepts, and how any
//! name is shown on a terminal and in JSON.
//!
//! Names are bytes, as on Linux. A name is accepted only if it is one safe
//! path component, so joining it onto the destination directory can never
//! leave that directory; everything else the file system takes is taken
//! (control characters, backslashes, `aux.c`, names that are not UTF-8).
//! The checks for names that other systems cannot hold are a
//! [`Policy`] the receiver chooses (`--portable-names`). This module must
//! never touch the file system; it judges bytes.

use crate::protocol::{MAX_NAME_LEN, MAX_PATH_LEN};

/// Prefix of every temporary file xfer creates; the suffix is `.part`.
pub const TEMP_PREFIX: &str = ".xfer-";
pub const TEMP_SUFFIX: &str = ".part";
/// Suffix of a resumable partial file, kept after an interrupted transfer.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Which names a receiver accepts beyond the safe minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Also refuse what Windows or macOS could not hold: device names,
    /// drive prefixes, backslashes, control characters, characters Windows
    /// forbids, trailing dots and spaces, names that are not UTF-8; and
    /// names differing only in case or Unicode normalisation everywhere.
    pub portable: bool,
}

/// Why a name from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is '.' or '..'")]
    Dots,
    #[error("name contains a path separator")]
    Separator,
    #[error("name contains a NUL byte")]
    Nul,
    #[error("name contains control characters (refused with --portable-names)")]
    Control,
    #[error("name contains a backslash (refused with --portable-names)")]
    Backslash,
    #[error("name contains a character Windows forbids (refused with --portable-names)")]
    Forbidden,
    #[error("name ends with a dot or space (refused with --portable-names)")]
    Trailing,
    #[error("name is not UTF-8 (refused with --portable-names)")]
    NotUtf8,
    #[error("name is {0} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error("path is {0} bytes long, the limit is {MAX_PATH_LEN}")]
    PathTooLong(usize),
    #[error("path component '{0}': {1}")]
    Component(String, Box<NameError>),
    #[error("name starts with a drive prefix (refused with --portable-names)")]
    Drive,
    #[error("'{0}' is a Windows device name (refused with --portable-names)")]
    Device(String),
    #[error("'{0}' is the name of xfer's own temporary files")]
    Reserved(String),
    #[error("'{0}' differs from an earlier entry only in case or Unicode normalisation")]
    Collision(String),
    #[error("more than {0} distinct paths in one session")]
    TooManyPaths(usize),
    #[error("'{0}' is both a file and a directory in this transfer")]
    FileAndDirectory(String),
    #[error("'{0}' appears twice in this transfer")]
    Duplicate(String),
}

/// Accepts `name` only if it is one safe path component, and with
/// `policy.portable` one that Windows and macOS could hold too.
pub fn validate_name(name: &[u8], policy: Policy) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name == b"." || name == b".." {
        return Err(NameError::Dots);
    }
    if name.contains(&b'/') {
        return Err(NameError::Separator);
    }
    if name.contains(&0) {
        return Err(NameError::Nul);
    }
    if is_xfer_temporary(name) {
        return Err(NameError::Reserved(shown(name)));
    }
    if policy.portable {
        portable(name)?;
    }
    Ok(())
}

/// What Windows (and macOS, for UTF-8) refuse or treat specially.
fn portable(name: &[u8]) -> Result<(), NameError> {
    let Ok(text) = std::str::from_utf8(name) else {
        return Err(NameError::NotUtf8);
    };
    for c in text.chars() {
        match c {
            '\\' => return Err(NameError::Backslash),
            c if c.is_control() || is_invisible_format(c) => return Err(NameError::Control),
            '<' | '>' | '"' | '|' | '?' | '*' => return Err(NameError::Forbidden),
            _ => {}
        }
    }
    // `C:` names a drive (or an NTFS stream) where the tree may be copied on.
    if let [letter, b':', ..] = name
        && letter.is_ascii_alphabetic()
    {
        return Err(NameError::Drive);
    }
    if text.contains(':') {
        return Err(NameError::Forbidden);
    }
    if text.ends_with(['.', ' ']) {
        return Err(NameError::Trailing);
    }
    if is_windows_device(text) {
        return Err(NameError::Device(shown(name)));
    }
    Ok(())
}

/// The names of xfer's own partial and temporary files, which a peer must
/// not be able to plant or replace.
fn is_xfer_temporary(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX.as_bytes())
        && (name.ends_with(PARTIAL_SUFFIX.as_bytes()) || name.ends_with(TEMP_SUFFIX.as_bytes()))
}

/// Windows device names (`CON`, `nul.txt`, `COM1`...), which cannot be
/// files there.
fn is_windows_device(name: &str) -> bool {
    // Windows ignores everything from the first dot, and trailing spaces.
    let stem = name.split('.').next().unwrap_or("").trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        _ => {
            let number = upper
                .strip_prefix("COM")
                .or_else(|| upper.strip_prefix("LPT"));
            number.is_some_and(|n| {
                n.chars().count() == 1
                    && n.chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, '¹' | '²' | '³'))
            })
        }
    }
}

/// What one session was offered so far, to refuse entries that would land
/// on each other: a name used twice, or for both a file and a directory;
/// and where a directory is case-insensitive (or with `--portable-names`),
/// names that differ only in case or Unicode normalisation.
///
/// Paths are kept as 128-bit digests, not strings, so memory stays small
/// (about 50 bytes a path) however long the names, and the number of paths
/// is capped at [`MAX_SEEN`].
#[derive(Debug, Default)]
pub struct Seen {
    /// Digest of the (folded where folding applies) path -> (digest of the
    /// path as first offered, whether a directory).
    paths: std::collections::HashMap<u128, (u128, bool)>,
    /// The parent directories of the entry checked last, whether each
    /// folds, and the digests' states after them: the next entry in the
    /// same directory (the usual next one in a tree) starts from there, so
    /// it costs one level's digests instead of every level's.
    last_parent: Option<Parent>,
}

#[derive(Debug)]
struct Parent {
    components: Vec<Vec<u8>>,
    folds: Vec<bool>,
    state: Hashing,
}

/// A path's two digests, built one component at a time.
#[derive(Debug, Clone, Default)]
struct Hashing {
    /// The path as offered.
    path: sha2::Sha256,
    /// The path as compared, once a component was folded (until then it
    /// is the path as offered: one digest serves both).
    key: Option<sha2::Sha256>,
}

impl Hashing {
    fn add(&mut self, component: &[u8], fold: bool) {
        use sha2::Digest as _;
        if fold && self.key.is_none() {
            self.key = Some(self.path.clone());
        }
        // A separator that cannot occur in a component keeps ("ab", "c")
        // and ("a", "bc") apart.
        if let Some(key) = &mut self.key {
            if fold {
                key.update(folded(component));
            } else {
                key.update(component);
            }
            key.update(b"/");
        }
        self.path.update(component);
        self.path.update(b"/");
    }

    /// (key, path) digests of the path so far.
    fn digests(&self) -> (u128, u128) {
        let path = digest128(&self.path);
        (self.key.as_ref().map_or(path, digest128), path)
    }
}

/// Most distinct paths (entries and their parent directories) one session
/// may name.
pub const MAX_SEEN: usize = 2_000_000;

fn digest128(hasher: &sha2::Sha256) -> u128 {
    use sha2::Digest as _;
    let full: [u8; 32] = hasher.clone().finalize().into();
    u128::from_be_bytes(full[..16].try_into().expect("16 of 32 bytes"))
}

impl Seen {
    /// Records an entry of validated `components`; `is_dir` for a directory
    /// entry. Its parent directories are recorded as directories.
    /// `fold(i)` says whether component `i` lives in a directory that
    /// ignores case and normalisation.
    pub fn check(
        &mut self,
        components: &[&[u8]],
        is_dir: bool,
        fold: impl Fn(usize) -> bool,
    ) -> Result<(), NameError> {
        let shown_path = |upto: usize| shown(components[..=upto].join(&b'/'));
        // The parents were checked (and recorded as directories) with the
        // last entry: nothing since can have changed their verdict, as a
        // file entry at one of their paths was refused.
        let parents = components.len().saturating_sub(1);
        let (mut hashing, start) = match &self.last_parent {
            Some(last)
                if last.components.len() == parents
                    && last
                        .components
                        .iter()
                        .zip(components)
                        .all(|(a, b)| a.as_slice() == *b)
                    && last.folds.iter().enumerate().all(|(i, f)| *f == fold(i)) =>
            {
                (last.state.clone(), parents)
            }
            _ => (Hashing::default(), 0),
        };
        for (i, component) in components.iter().enumerate().skip(start) {
            hashing.add(component, fold(i));
            let (key_digest, path_digest) = hashing.digests();
            let dir = is_dir || i + 1 < components.len();
            match self.paths.get(&key_digest) {
                None if self.paths.len() >= MAX_SEEN => {
                    return Err(NameError::TooManyPaths(MAX_SEEN));
                }
                None => {
                    self.paths.insert(key_digest, (path_digest, dir));
                }
                Some((first, _)) if *first != path_digest => {
                    return Err(NameError::Collision(shown_path(i)));
                }
                Some((_, was_dir)) if *was_dir != dir => {
                    return Err(NameError::FileAndDirectory(shown_path(i)));
                }
                Some(_) if !dir => return Err(NameError::Duplicate(shown_path(i))),
                Some(_) => {}
            }
            if i + 1 == parents {
                self.last_parent = Some(Parent {
                    components: components[..parents].iter().map(|c| c.to_vec()).collect(),
                    folds: (0..parents).map(&fold).collect(),
                    state: hashing.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A name as a case-insensitive, normalising file system would see it
/// (bytes that are not UTF-8 are compared as they are, but for ASCII case).
fn folded(name: &[u8]) -> Vec<u8> {
    use unicode_normalization::UnicodeNormalization;
    match std::str::from_utf8(name) {
        Ok(text) => {
            let lower: String = text.nfkc().flat_map(char::to_lowercase).collect();
            lower.nfkc().collect::<String>().into_bytes()
        }
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// Accepts a relative path of `/`-separated components only if every
/// component is a plain name by [`validate_name`]: no absolute paths, no
/// `..` or `.`, no empty components, nothing that could leave the
/// destination when joined onto it.
pub fn validate_path(path: &[u8], policy: Policy) -> Result<Vec<&[u8]>, NameError> {
    if path.len() > MAX_PATH_LEN {
        return Err(NameError::PathTooLong(path.len()));
    }
    if path.is_empty() {
        return Err(NameError::Empty);
    }
    path.split(|b| *b == b'/')
        .map(|c| {
            validate_name(c, policy)
                .map(|()| c)
                .map_err(|e| NameError::Component(shown(c), Box::new(e)))
        })
        .collect()
}

/// Whether a symbolic link at `depth` directories below the root of a tree
/// (0 for a link in the root itself), pointing at `target`, could lead
/// outside that tree: an absolute target, more leading `..` than the link
/// is deep, or a `..` after any other component. rsync's `--safe-links`
/// counts `..` anywhere, which two links can defeat together (`d/up` ->
/// `..`, then `esc` -> `d/up/../etc`: `up` is not the directory it looks
/// like); with `..` only at the start, every link points at a place
/// inside the tree however links are chained.
pub fn link_leaves_tree(depth: usize, target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") {
        return true;
    }
    let mut level = depth as isize;
    let mut descended = false;
    for component in target.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." if descended => return true,
            b".." => {
                level -= 1;
                if level < 0 {
                    return true;
                }
            }
            _ => descended = true,
        }
    }
    false
}

/// Bidirectional overrides and isolates can make a name display as another
/// (`exe.txt` shown for `txt.exe`).
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A form of `s` safe to print to a terminal: control, escape and
/// bidirectional characters are shown as `\u{..}` escapes, bytes that are
/// not UTF-8 as `\xHH`, backslashes are doubled so an escape cannot be
/// faked; everything else is kept as is.
pub fn escape_for_terminal(s: impl AsRef<[u8]>) -> String {
    escape(s.as_ref(), true)
}

/// A local path for a terminal, escaped as [`escape_for_terminal`] does
/// (bytes that are not UTF-8 as `\xHH`, never lost).
pub fn escape_path(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    escape_for_terminal(path.as_os_str().as_bytes())
}

/// Control and invisible characters as `\u{..}`, invalid bytes as `\xHH`;
/// backslashes doubled when `backslashes`, so an escape can be told from a
/// name that looks like one.
fn escape(s: &[u8], backslashes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' if backslashes => out.push_str("\\\\"),
                c if c.is_control() || is_invisible_format(c) => {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// A message the peer wrote (a REFUSE, ACK or ERROR), for a terminal:
/// control and invisible characters neutralised, but backslashes kept,
/// since the peer already escaped the names in it (escaping again showed
/// `back\\\\slash.txt` for a name with one backslash).
pub fn escape_peer_message(s: &str) -> String {
    escape(s.as_bytes(), false)
}

/// Longest name shown in a message; a hostile peer must not be able to
/// flood a log line with a 64 KiB name.
const SHOWN_MAX_BYTES: usize = 240;

/// [`shown`], made only when it is displayed: for messages that most
/// files never need (a receiver of many small files built four such
/// strings a file, for nothing).
#[derive(Clone, Copy)]
pub struct Shown<'a>(pub &'a [u8]);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&shown(self.0))
    }
}

/// A name from the network as shown in messages: escaped, and cut to about
/// [`SHOWN_MAX_BYTES`] bytes with a marker when longer.
pub fn shown(name: impl AsRef<[u8]>) -> String {
    let name = name.as_ref();
    if name.len() <= SHOWN_MAX_BYTES {
        return escape_for_terminal(name);
    }
    let mut cut = SHOWN_MAX_BYTES;
    // Cut at a character boundary where the bytes are UTF-8.
    while cut > 0 && name[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    format!(
        "{}...({} bytes)",
        escape_for_terminal(&name[..cut]),
        name.len()
    )
}

/// A name for JSON: the text itself when it is UTF-8; otherwise a
/// readable form with U+FFFD for each invalid byte, and [`json_hex`] gives
/// the exact bytes.
pub fn json_text(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// The exact bytes of a name that is not UTF-8, as lowercase hex, for the
/// `*_hex` field beside its [`json_text`]; `None` for a UTF-8 name.
pub fn json_hex(name: &[u8]) -> Option<String> {
    std::str::from_utf8(name)
        .is_err()
        .then(|| crate::protocol::hex(name))
}

/// Puts `name` in a JSON object under `key` (as [`json_text`]) and, when it
/// is not UTF-8, its exact bytes under `key_hex`: the documented lossless
/// form.
pub fn put_json_name(object: &mut serde_json::Value, key: &str, name: &[u8]) {
    object[key] = serde_json::Value::String(json_text(name));
    if let Some(hex) = json_hex(name) {
        object[format!("{key}_hex")] = serde_json::Value::String(hex);
    }
}

/// `object` with `name` put in it under "name" (see [`put_json_name`]).
pub fn with_name(name: impl AsRef<[u8]>, mut object: serde_json::Value) -> serde_json::Value {
    put_json_name(&mut object, "name", name.as_ref());
    object
}

/// `object` with `path` put in it under "path" (see [`put_json_path`]).
pub fn with_path(path: &std::path::Path, mut object: serde_json::Value) -> serde_json::Value {
    put_json_path(&mut object, "path", path);
    object
}

/// A path of this machine for JSON, in the same form as [`put_json_name`].
pub fn put_json_path(object: &mut serde_json::Value, key: &str, path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    put_json_name(object, key, path.as_os_str().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX: Policy = Policy { portable: false };
    const PORTABLE: Policy = Policy { portable: true };

    fn no_fold(_: usize) -> bool {
        false
    }
    fn fold_all(_: usize) -> bool {
        true
    }

    proptest::proptest! {
        #[test]
        fn accepted_paths_never_leave_the_destination(path in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..60), portable: bool) {
            if let Ok(components) = validate_path(&path, Policy { portable }) {
                for c in &components {
                    proptest::prop_assert!(!c.is_empty() && *c != b"." && *c != b"..");
                    proptest::prop_assert!(!c.contains(&b'/') && !c.contains(&0));
                    if portable {
                        proptest::prop_assert!(!c.contains(&b'\\'));
                    }
                }
                let mut seen = Seen::default();
                let _ = seen.check(&components, false, |_| portable);
            }
            let shown = escape_for_terminal(&path);
            proptest::prop_assert!(!shown.contains('\x1b') && !shown.contains('\n'));
        }
    }

    #[test]
    fn every_name_linux_takes_is_accepted_by_default() {
        for good in [
            &b"CON"[..],
            b"aux.c",
            b"nul",
            b"prn.log",
            b"com1.txt",
            b"LPT9",
            b"a:b.txt",
            b"back\\slash.txt",
            b"new\nline",
            b"\x1b[1A",
            b"tab\there",
            b"caf\xe9",
            b"trailing. ",
            "evil\u{202e}txt.exe".as_bytes(),
            b".xfer-notes.txt",
        ] {
            assert_eq!(validate_name(good, LINUX), Ok(()), "{good:?}");
        }
        assert_eq!(validate_name(&[b'x'; 255], LINUX), Ok(()));
    }

    #[test]
    fn portable_names_refuse_what_windows_and_macos_cannot_hold() {
        for bad in [
            &b"CON"[..],
            b"con",
            b"nul.txt",
            b"Aux.tar.gz",
            b"COM1",
            b"lpt9.log",
            "COM¹".as_bytes(),
            b"PRN ",
            b"c:",
            b"C:x",
            b"z:stream",
            b"a:b.txt",
            b"back\\slash.txt",
            b"new\nline",
            b"del\x7f",
            "c1\u{9b}".as_bytes(),
            "evil\u{202e}txt.exe".as_bytes(),
            b"caf\xe9",
            b"what?",
            b"dot.",
        ] {
            assert!(validate_name(bad, PORTABLE).is_err(), "{bad:?} accepted");
            assert_eq!(validate_name(bad, LINUX), Ok(()), "{bad:?}");
        }
        for good in [
            &b"CONSOLE"[..],
            b"com10",
            b"nullable",
            b"LPT",
            b".xfer-notes.txt",
        ] {
            assert_eq!(validate_name(good, PORTABLE), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn only_what_cannot_be_one_safe_component_is_always_refused() {
        let cases: &[(&[u8], NameError)] = &[
            (b"", NameError::Empty),
            (b".", NameError::Dots),
            (b"..", NameError::Dots),
            (b"../x", NameError::Separator),
            (b"/etc/x", NameError::Separator),
            (b"a/b", NameError::Separator),
            (b"a\0b", NameError::Nul),
        ];
        for (name, want) in cases {
            for policy in [LINUX, PORTABLE] {
                assert_eq!(validate_name(name, policy).as_ref(), Err(want), "{name:?}");
            }
        }
        for temp in [&b".xfer-0123456789abcdef.partial"[..], b".xfer-abc.part"] {
            assert!(matches!(
                validate_name(temp, LINUX),
                Err(NameError::Reserved(_))
            ));
        }
        assert_eq!(
            validate_name(&[b'x'; 256], LINUX),
            Err(NameError::TooLong(256))
        );
        // 255 bytes means bytes, not characters.
        assert!(validate_name("é".repeat(128).as_bytes(), LINUX).is_err());
    }

    /// [`Seen::check`] as it was before it reused the last parent's
    /// digests: every level hashed anew, two digests each.
    fn check_every_level(
        paths: &mut std::collections::HashMap<u128, (u128, bool)>,
        components: &[&[u8]],
        is_dir: bool,
        fold: impl Fn(usize) -> bool,
    ) -> Result<(), NameError> {
        use sha2::Digest as _;
        let mut key = sha2::Sha256::new();
        let mut path = sha2::Sha256::new();
        let shown_path = |upto: usize| shown(components[..=upto].join(&b'/'));
        for (i, component) in components.iter().enumerate() {
            if fold(i) {
                key.update(folded(component));
            } else {
                key.update(component);
            }
            key.update(b"/");
            path.update(component);
            path.update(b"/");
            let (key_digest, path_digest) = (digest128(&key), digest128(&path));
            let dir = is_dir || i + 1 < components.len();
            match paths.get(&key_digest) {
                None => {
                    paths.insert(key_digest, (path_digest, dir));
                }
                Some((first, _)) if *first != path_digest => {
                    return Err(NameError::Collision(shown_path(i)));
                }
                Some((_, was_dir)) if *was_dir != dir => {
                    return Err(NameError::FileAndDirectory(shown_path(i)));
                }
                Some(_) if !dir => return Err(NameError::Duplicate(shown_path(i))),
                Some(_) => {}
            }
        }
        Ok(())
    }

    proptest::proptest! {
        /// Reusing the last parent's digests changes no verdict, whatever
        /// the order of entries, their kinds and where names fold.
        #[test]
        fn seen_judges_as_if_it_hashed_every_level(
            entries in proptest::collection::vec(
                (proptest::collection::vec(0..5usize, 1..5), proptest::prelude::any::<bool>(), 0..16u8),
                1..60,
            ),
        ) {
            const NAMES: [&str; 5] = ["a", "A", "b", "caf\u{e9}", "cafe\u{301}"];
            let mut seen = Seen::default();
            let mut reference = std::collections::HashMap::new();
            for (path, is_dir, folds) in entries {
                let components: Vec<&[u8]> = path.iter().map(|&n| NAMES[n].as_bytes()).collect();
                let fold = |i: usize| folds & (1 << i) != 0;
                proptest::prop_assert_eq!(
                    seen.check(&components, is_dir, fold),
                    check_every_level(&mut reference, &components, is_dir, fold)
                );
            }
        }
    }

    #[test]
    fn entries_that_would_land_on_each_other_are_refused() {
        let mut seen = Seen::default();
        let p =
            |s: &'static str| -> Vec<&'static [u8]> { s.split('/').map(str::as_bytes).collect() };
        assert_eq!(seen.check(&p("Docs/a.txt"), false, no_fold), Ok(()));
        assert_eq!(seen.check(&p("Docs/b.txt"), false, no_fold), Ok(()));
        assert_eq!(
            seen.check(&p("Docs"), true, no_fold),
            Ok(()),
            "a directory and its files"
        );
        assert!(matches!(
            seen.check(&p("Docs/a.txt"), false, no_fold),
            Err(NameError::Duplicate(_))
        ));
        assert!(matches!(
            seen.check(&p("Docs/a.txt/x"), false, no_fold),
            Err(NameError::FileAndDirectory(_))
        ));
        assert!(matches!(
            seen.check(&p("Docs/b.txt"), true, no_fold),
            Err(NameError::FileAndDirectory(_))
        ));
        // On a case-sensitive directory, case makes another name.
        assert_eq!(seen.check(&p("docs/c.txt"), false, no_fold), Ok(()));
        assert_eq!(seen.check(&p("Docs/A.TXT"), false, no_fold), Ok(()));

        // Where folding applies, they are one name.
        let mut seen = Seen::default();
        assert_eq!(seen.check(&p("Docs/a.txt"), false, fold_all), Ok(()));
        assert!(matches!(
            seen.check(&p("docs/c.txt"), false, fold_all),
            Err(NameError::Collision(_))
        ));
        assert!(matches!(
            seen.check(&p("Docs/A.TXT"), false, fold_all),
            Err(NameError::Collision(_))
        ));
        // Composed and decomposed forms of the same name.
        assert_eq!(
            seen.check(&["caf\u{e9}".as_bytes()], false, fold_all),
            Ok(())
        );
        assert!(matches!(
            seen.check(&["cafe\u{301}".as_bytes()], false, fold_all),
            Err(NameError::Collision(_))
        ));
        // Folding only below a case-insensitive directory: `Top` and `top`
        // are two directories, and only inside `top` does case not count.
        let mut seen = Seen::default();
        assert_eq!(seen.check(&p("Top/x"), false, |i| i == 1), Ok(()));
        assert_eq!(seen.check(&p("top/x"), false, |i| i == 1), Ok(()));
        assert!(matches!(
            seen.check(&p("top/X"), false, |i| i == 1),
            Err(NameError::Collision(_))
        ));
    }

    #[test]
    fn relative_paths_are_judged_component_by_component() {
        let v = validate_path(b"a/b/c.txt", LINUX).unwrap();
        assert_eq!(v, vec![&b"a"[..], b"b", b"c.txt"]);
        assert_eq!(validate_path(b"\xff\xfe/ok", LINUX).unwrap().len(), 2);
        for bad in [
            &b""[..],
            b"/etc/x",
            b"a/../b",
            b"..",
            b"a/./b",
            b"a//b",
            b"a/",
            b"a/b\0",
        ] {
            assert!(validate_path(bad, LINUX).is_err(), "{bad:?}");
        }
        assert!(validate_path(b"a\\b/c", PORTABLE).is_err());
        assert!(validate_path("a/".repeat(2100).as_bytes(), LINUX).is_err());
    }

    #[test]
    fn links_that_could_leave_the_tree_are_told_apart() {
        assert!(link_leaves_tree(0, b"/etc/passwd"));
        assert!(link_leaves_tree(0, b"../x"));
        assert!(link_leaves_tree(1, b"../../x"));
        assert!(link_leaves_tree(2, b"a/../../../../x"));
        assert!(link_leaves_tree(0, b""));
        assert!(!link_leaves_tree(0, b"sub/file"));
        assert!(!link_leaves_tree(1, b"../sibling"));
        assert!(!link_leaves_tree(2, b"../../x/./y"));
        // A `..` after a name: that name may be a link to anywhere in the
        // tree (the review's `d/up` -> `..`, `esc` -> `d/up/../etc`).
        assert!(link_leaves_tree(0, b"d/up/../etc"));
        assert!(link_leaves_tree(2, b"a/../b"));
        assert!(!link_leaves_tree(1, b".."));
    }

    #[test]
    fn shown_names_are_bounded() {
        let long = "\x1b".repeat(10_000);
        let s = shown(&long);
        assert!(s.len() < 2000, "{}", s.len());
        assert!(!s.contains('\x1b'));
        assert!(s.ends_with("...(10000 bytes)"));
        assert_eq!(shown("short.txt"), "short.txt");
        let s = shown("é".repeat(200));
        assert!(s.starts_with('é') && s.ends_with("...(400 bytes)"), "{s}");
    }

    #[test]
    fn escaping_neutralises_terminal_sequences() {
        assert_eq!(escape_for_terminal("\x1b[1Aok"), "\\u{1b}[1Aok");
        assert_eq!(escape_for_terminal("a\nb"), "a\\u{a}b");
        assert_eq!(escape_for_terminal("plain ✓"), "plain ✓");
        assert_eq!(escape_for_terminal("it's"), "it's");
        assert_eq!(escape_for_terminal("a\\b"), "a\\\\b");
        assert_eq!(escape_for_terminal(b"caf\xe9"), "caf\\xE9");
        assert!(!escape_for_terminal("\u{202e}x").contains('\u{202e}'));
    }

    #[test]
    fn json_keeps_names_that_are_not_utf8_exactly() {
        let mut v = serde_json::json!({});
        put_json_name(&mut v, "name", b"caf\xe9");
        assert_eq!(v["name"], "caf\u{fffd}");
        assert_eq!(v["name_hex"], "636166e9");
        let mut v = serde_json::json!({});
        put_json_name(&mut v, "name", "café".as_bytes());
        assert_eq!(v, serde_json::json!({"name": "café"}));
    }
}
