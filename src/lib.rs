//! xfer: verified file transfer. The binary is a thin shell around [`run`];
//! everything else lives in one module per idea.

pub mod admission;
pub mod bench;
pub mod cli;
pub mod compress;
pub mod config;
pub mod destination;
pub mod exit_codes;
pub mod gate;
pub mod handshake;
pub mod hook;
pub mod link;
pub mod manual;
pub mod names;
pub mod net;
pub mod output;
pub mod owners;
pub mod pace;
pub mod pipeline;
pub mod prompt;
pub mod protocol;
pub mod recv;
pub mod retry;
pub mod secure;
pub mod send;
pub mod session;
pub mod signals;
pub mod source;
pub mod units;
pub mod xattrs;

use std::io::Write;

use anyhow::Context;
use cli::{Cli, Command};

/// Writes generated text to stdout; a reader that stopped early (`| head`)
/// is not an error.
fn print_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Validates the parsed command line and runs it.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Send(args) => send::run(&config::SendConfig::from_args(args)?),
        Command::Recv(args) => recv::run(&config::RecvConfig::from_args(args)?),
        Command::Bench(args) => bench::run(&config::BenchConfig::from_args(args)?),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "xfer", &mut out);
            print_stdout(&out)
        }
        Command::Keygen { out: None } => {
            let key = secure::generate_key().context("cannot read random bytes")?;
            print_stdout(key.as_bytes())
        }
        Command::Keygen { out: Some(path) } => {
            use std::os::unix::fs::OpenOptionsExt;
            let key = secure::generate_key().context("cannot read random bytes")?;
            let shown = names::escape_path(&path);
            // A new file only, readable by its owner alone from the start.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(key.as_bytes()).and_then(|()| f.sync_all()))
                .map_err(|e| exit_codes::Failure::local(format!("cannot write '{shown}'"), &e))?;
            Ok(())
        }
        Command::Man { out_dir: None } => {
            let (_, page) = manual::pages().into_iter().next().expect("the main page");
            print_stdout(&page)
        }
        Command::Man { out_dir: Some(dir) } => {
            manual::write_pages(&dir).map_err(|e| {
                exit_codes::Failure::local(
                    format!("cannot write man pages to '{}'", names::escape_path(&dir)),
                    &e,
                )
            })?;
            Ok(())
        }
    }
}

/// The layers of the crate, lowest first: a module may import (`crate::`)
/// only modules of a lower layer, so data flows one way, from the command
/// line through the session rules to the wire, and there are no cycles.
/// This is the intended shape, not a copy of today's imports: a new import
/// that goes up or sideways fails `cargo test`.
#[cfg(test)]
const LAYERS: &[&[&str]] = &[
    &["protocol"],
    &["names", "exit_codes", "units", "owners", "compress"],
    &["output", "cli", "xattrs"],
    &[
        "signals",
        "net",
        "pipeline",
        "source",
        "session",
        "admission",
    ],
    &["link", "destination", "hook", "retry"],
    &["secure", "pace"],
    &["handshake", "config", "prompt"],
    &["gate"],
    &["send", "recv"],
    &["bench", "manual"],
];

#[cfg(test)]
mod layering {
    use super::LAYERS;
    use std::path::Path;

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    /// The `crate::NAME` modules a file names.
    fn imports(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !found.contains(&name) {
                found.push(name);
            }
        }
        found
    }

    #[test]
    fn no_module_imports_one_of_its_own_layer_or_above() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                for inner in std::fs::read_dir(&path).unwrap() {
                    files.push(inner.unwrap().path());
                }
            } else {
                files.push(path);
            }
        }
        let mut wrong = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&src).unwrap();
            let module = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let Some(own) = layer_of(&module) else {
                wrong.push(format!("{module} has no layer in LAYERS"));
                continue;
            };
            for import in imports(&std::fs::read_to_string(&file).unwrap()) {
                if import == module {
                    continue;
                }
                match layer_of(&import) {
                    Some(theirs) if theirs < own => {}
                    _ => wrong.push(format!("{} imports crate::{import}", relative.display())),
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "imports against the layers:\n{}",
            wrong.join("\n")
        );
    }
}
