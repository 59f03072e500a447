//! The man pages, from the command-line definitions: clap_mangen's title,
//! name, synopsis, description, options and subcommands, then the examples
//! and the exit codes in sections of their own (clap_mangen would put both
//! under a section called EXTRA), and the version where it belongs.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Every page: `xfer.1`, then `xfer-send.1`, `xfer-recv.1`, ...
pub fn pages() -> Vec<(String, Vec<u8>)> {
    let mut root =
        <crate::cli::Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    root.build();
    let mut pages = Vec::new();
    let subcommands: Vec<clap::Command> = root.get_subcommands().cloned().collect();
    pages.push(page(root, None));
    for sub in subcommands {
        pages.push(page(sub, Some("xfer")));
    }
    pages
}

fn page(cmd: clap::Command, parent: Option<&str>) -> (String, Vec<u8>) {
    let name = match parent {
        Some(parent) => format!("{parent}-{}", cmd.get_name()),
        None => cmd.get_name().to_string(),
    };
    let after = cmd
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let man = clap_mangen::Man::new(cmd.clone())
        .title(name.clone())
        .source(format!("xfer {}", env!("CARGO_PKG_VERSION")))
        .manual("xfer manual");
    let mut out = Vec::new();
    let rendered: io::Result<()> = (|| {
        man.render_title(&mut out)?;
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
        if cmd.get_subcommands().next().is_some() {
            man.render_subcommands_section(&mut out)?;
        }
        let (examples, codes) = match after.split_once("Exit codes:") {
            Some((examples, codes)) => (examples, Some(codes)),
            None => (after.as_str(), None),
        };
        let examples = examples.trim().trim_start_matches("Examples:");
        if !examples.trim().is_empty() {
            verbatim(&mut out, "EXAMPLES", examples)?;
        }
        if let Some(codes) = codes {
            verbatim(&mut out, "EXIT STATUS", codes)?;
        }
        Ok(())
    })();
    rendered.expect("writing to memory");
    (format!("{name}.1"), out)
}

/// A section of preformatted lines, escaped for roff.
fn verbatim(out: &mut Vec<u8>, title: &str, text: &str) -> io::Result<()> {
    writeln!(out, ".SH \"{title}\"\n.nf")?;
    for line in text.trim_matches('\n').lines() {
        let escaped = line.replace('\\', "\\e").replace('-', "\\-");
        // A line may not start with a control character.
        writeln!(out, "\\&{escaped}")?;
    }
    writeln!(out, ".fi")
}

/// Writes every page into `dir`, making it (and its parents) first.
pub fn write_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, text) in pages() {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}
