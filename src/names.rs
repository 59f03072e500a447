//! File names from the network: which ones the receiver accepts, and how any
//! name is shown on a terminal.
//!
//! A name is accepted only if it is one plain path component, so joining it
//! onto the destination directory can never leave that directory. This module
//! must never touch the file system; it judges strings.

use crate::protocol::{MAX_NAME_LEN, MAX_PATH_LEN};

/// Prefix of every temporary file xfer creates; the suffix is `.part`.
pub const TEMP_PREFIX: &str = ".xfer-";
pub const TEMP_SUFFIX: &str = ".part";
/// Suffix of a resumable partial file, kept after an interrupted transfer.
pub const PARTIAL_SUFFIX: &str = ".partial";

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
    #[error("name contains control or escape characters")]
    Control,
    #[error("name is {0} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error("path is {0} bytes long, the limit is {MAX_PATH_LEN}")]
    PathTooLong(usize),
    #[error("path component '{0}': {1}")]
    Component(String, Box<NameError>),
    #[error("name starts with a drive prefix")]
    Drive,
    #[error("'{0}' is a reserved name (a Windows device, or xfer's own temporary files)")]
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

/// Accepts `name` only if it is one plain path component.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots);
    }
    for c in name.chars() {
        match c {
            '/' | '\\' => return Err(NameError::Separator),
            '\0' => return Err(NameError::Nul),
            c if c.is_control() || is_invisible_format(c) => return Err(NameError::Control),
            _ => {}
        }
    }
    // `C:` names a drive (or an NTFS stream) where the tree may be copied on.
    if let [letter, b':', ..] = name.as_bytes()
        && letter.is_ascii_alphabetic()
    {
        return Err(NameError::Drive);
    }
    if is_reserved(name) {
        return Err(NameError::Reserved(shown(name)));
    }
    Ok(())
}

/// Windows device names (`CON`, `nul.txt`, `COM1`...), which cannot be
/// files there, and the names of xfer's own partial and temporary files,
/// which a peer must not be able to plant or replace.
fn is_reserved(name: &str) -> bool {
    if name.starts_with(TEMP_PREFIX)
        && (name.ends_with(PARTIAL_SUFFIX) || name.ends_with(TEMP_SUFFIX))
    {
        return true;
    }
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
/// on each other: names that differ only in case or Unicode normalisation
/// (one file on case-insensitive or normalising file systems, and a way to
/// confuse a reader), and a name used for both a file and a directory.
///
/// Paths are kept as 128-bit digests, not strings, so memory stays small
/// (about 50 bytes a path) however long the names, and the number of paths
/// is capped at [`MAX_SEEN`].
#[derive(Debug, Default)]
pub struct Seen {
    /// Digest of the folded path -> (digest of the path as first offered,
    /// whether a directory).
    paths: std::collections::HashMap<u128, (u128, bool)>,
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
    pub fn check(&mut self, components: &[&str], is_dir: bool) -> Result<(), NameError> {
        use sha2::Digest as _;
        let mut key = sha2::Sha256::new();
        let mut path = sha2::Sha256::new();
        let shown_path = |upto: usize| shown(&components[..=upto].join("/"));
        for (i, component) in components.iter().enumerate() {
            // A separator that cannot occur in a component keeps
            // ("ab", "c") and ("a", "bc") apart.
            key.update(fold(component).as_bytes());
            key.update(b"/");
            path.update(component.as_bytes());
            path.update(b"/");
            let (key_digest, path_digest) = (digest128(&key), digest128(&path));
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
        }
        Ok(())
    }
}

/// A name as a case-insensitive, normalising file system would see it.
fn fold(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let lower: String = name.nfkc().flat_map(char::to_lowercase).collect();
    lower.nfkc().collect()
}

/// Accepts a relative path of `/`-separated components only if every
/// component is a plain name by [`validate_name`]: no absolute paths, no
/// `..` or `.`, no empty components, nothing that could leave the
/// destination when joined onto it.
pub fn validate_path(path: &str) -> Result<Vec<&str>, NameError> {
    if path.len() > MAX_PATH_LEN {
        return Err(NameError::PathTooLong(path.len()));
    }
    if path.is_empty() {
        return Err(NameError::Empty);
    }
    path.split('/')
        .map(|c| {
            validate_name(c)
                .map(|()| c)
                .map_err(|e| NameError::Component(shown(c), Box::new(e)))
        })
        .collect()
}

/// Bidirectional overrides and isolates can make a name display as another
/// (`exe.txt` shown for `txt.exe`); they have no place in a file name.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A form of `s` safe to print to a terminal: control, escape and
/// bidirectional characters are shown as `\u{..}` escapes, backslashes are
/// doubled so an escape cannot be faked, everything else is kept as is.
pub fn escape_for_terminal(s: &str) -> String {
    escape(s, true)
}

/// Control and invisible characters as `\u{..}`; backslashes doubled when
/// `backslashes`, so an escape can be told from a name that looks like one.
fn escape(s: &str, backslashes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' if backslashes => out.push_str("\\\\"),
            c if c.is_control() || is_invisible_format(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// A message the peer wrote (a REFUSE, ACK or ERROR), for a terminal:
/// control and invisible characters neutralised, but backslashes kept,
/// since the peer already escaped the names in it (escaping again showed
/// `back\\\\slash.txt` for a name with one backslash).
pub fn escape_peer_message(s: &str) -> String {
    escape(s, false)
}

/// Longest name shown in a message; a hostile peer must not be able to
/// flood a log line with a 64 KiB name.
const SHOWN_MAX_CHARS: usize = 120;

/// A name from the network as shown in messages: escaped, and cut to
/// [`SHOWN_MAX_CHARS`] characters with a marker when longer.
pub fn shown(name: &str) -> String {
    if name.chars().count() <= SHOWN_MAX_CHARS {
        return escape_for_terminal(name);
    }
    let cut: String = name.chars().take(SHOWN_MAX_CHARS).collect();
    format!("{}...({} bytes)", escape_for_terminal(&cut), name.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn accepted_paths_never_leave_the_destination(path in "\\PC{0,40}|[a./\\\\:A-Z]{0,12}") {
            if let Ok(components) = validate_path(&path) {
                for c in &components {
                    proptest::prop_assert!(!c.is_empty() && *c != "." && *c != "..");
                    proptest::prop_assert!(!c.contains(['/', '\\', '\0']));
                }
                let mut seen = Seen::default();
                let _ = seen.check(&components, false);
            }
            proptest::prop_assert!(!escape_for_terminal(&path).contains('\x1b'));
        }
    }

    #[test]
    fn windows_devices_drives_and_xfer_temporaries_are_refused() {
        for bad in [
            "CON",
            "con",
            "nul.txt",
            "Aux.tar.gz",
            "COM1",
            "lpt9.log",
            "COM¹",
            "PRN ",
            "c:",
            "C:x",
            "z:stream",
            ".xfer-0123456789abcdef.partial",
            ".xfer-abc.part",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "CONSOLE",
            "com10",
            "nullable",
            "LPT",
            "1:2",
            "ab:c",
            ".xfer-notes.txt",
        ] {
            assert_eq!(validate_name(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn entries_that_would_land_on_each_other_are_refused() {
        let mut seen = Seen::default();
        assert_eq!(seen.check(&["Docs", "a.txt"], false), Ok(()));
        assert_eq!(seen.check(&["Docs", "b.txt"], false), Ok(()));
        assert_eq!(
            seen.check(&["Docs"], true),
            Ok(()),
            "a directory and its files"
        );
        assert!(matches!(
            seen.check(&["docs", "c.txt"], false),
            Err(NameError::Collision(_))
        ));
        assert!(matches!(
            seen.check(&["Docs", "A.TXT"], false),
            Err(NameError::Collision(_))
        ));
        assert!(matches!(
            seen.check(&["Docs", "a.txt"], false),
            Err(NameError::Duplicate(_))
        ));
        assert!(matches!(
            seen.check(&["Docs", "a.txt", "x"], false),
            Err(NameError::FileAndDirectory(_))
        ));
        assert!(matches!(
            seen.check(&["Docs", "b.txt"], true),
            Err(NameError::FileAndDirectory(_))
        ));
        // Composed and decomposed forms of the same name.
        assert_eq!(seen.check(&["caf\u{e9}"], false), Ok(()));
        assert!(matches!(
            seen.check(&["cafe\u{301}"], false),
            Err(NameError::Collision(_))
        ));
    }

    #[test]
    fn plain_names_are_accepted() {
        for n in [
            "a",
            "report.pdf",
            ".hidden",
            "...",
            "ünïcødé ✓.txt",
            "name with spaces",
        ] {
            assert_eq!(validate_name(n), Ok(()), "{n}");
        }
        assert_eq!(validate_name(&"x".repeat(255)), Ok(()));
    }

    #[test]
    fn hostile_names_are_refused() {
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            (".", NameError::Dots),
            ("..", NameError::Dots),
            ("../x", NameError::Separator),
            ("/etc/x", NameError::Separator),
            ("a/b", NameError::Separator),
            ("a\\b", NameError::Separator),
            ("..\\..\\x", NameError::Separator),
            ("a\0b", NameError::Nul),
            ("\x1b[1A", NameError::Control),
            ("tab\there", NameError::Control),
            ("new\nline", NameError::Control),
            ("del\x7f", NameError::Control),
            ("c1\u{9b}", NameError::Control),
            ("evil\u{202e}txt.exe", NameError::Control),
        ];
        for (name, want) in cases {
            assert_eq!(validate_name(name).as_ref(), Err(want), "{name:?}");
        }
        assert_eq!(
            validate_name(&"x".repeat(256)),
            Err(NameError::TooLong(256))
        );
        // 255 bytes means bytes, not characters.
        assert!(validate_name(&"é".repeat(128)).is_err());
    }

    #[test]
    fn relative_paths_are_judged_component_by_component() {
        assert_eq!(validate_path("a/b/c.txt").unwrap(), vec!["a", "b", "c.txt"]);
        assert_eq!(validate_path("ünï/ok").unwrap().len(), 2);
        for bad in [
            "",
            "/etc/x",
            "a/../b",
            "..",
            "a/./b",
            "a//b",
            "a/",
            "a\\b/c",
            "a/\x1b[1A",
            "a/b\0",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_path(&"a/".repeat(2100)).is_err());
    }

    #[test]
    fn shown_names_are_bounded() {
        let long = "\x1b".repeat(10_000);
        let s = shown(&long);
        assert!(s.len() < 1000, "{}", s.len());
        assert!(!s.contains('\x1b'));
        assert!(s.ends_with("...(10000 bytes)"));
        assert_eq!(shown("short.txt"), "short.txt");
    }

    #[test]
    fn escaping_neutralises_terminal_sequences() {
        assert_eq!(escape_for_terminal("\x1b[1Aok"), "\\u{1b}[1Aok");
        assert_eq!(escape_for_terminal("a\nb"), "a\\u{a}b");
        assert_eq!(escape_for_terminal("plain ✓"), "plain ✓");
        assert_eq!(escape_for_terminal("it's"), "it's");
        assert_eq!(escape_for_terminal("a\\b"), "a\\\\b");
        assert!(!escape_for_terminal("\u{202e}x").contains('\u{202e}'));
    }
}
