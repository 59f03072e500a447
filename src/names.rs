//! File names from the network: which ones the receiver accepts, and how any
//! name is shown on a terminal.
//!
//! A name is accepted only if it is one plain path component, so joining it
//! onto the destination directory can never leave that directory. This module
//! must never touch the file system; it judges strings.

use crate::protocol::{MAX_NAME_LEN, MAX_PATH_LEN};

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
    Ok(())
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
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_invisible_format(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
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
