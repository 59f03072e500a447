//! xfer: verified file transfer. The binary is a thin shell around [`run`];
//! everything else lives in one module per idea.

pub mod bench;
pub mod cli;
pub mod config;
pub mod destination;
pub mod exit_codes;
pub mod link;
pub mod names;
pub mod net;
pub mod output;
pub mod pipeline;
pub mod protocol;
pub mod recv;
pub mod secure;
pub mod send;
pub mod session;
pub mod signals;
pub mod source;

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
            let shown = names::escape_for_terminal(&path.display().to_string());
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
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut out)
                .context("cannot render the man page")?;
            print_stdout(&out)
        }
        Command::Man { out_dir: Some(dir) } => {
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir).map_err(
                |e| {
                    exit_codes::Failure::local(
                        format!("cannot write man pages to '{}'", dir.display()),
                        &e,
                    )
                },
            )?;
            Ok(())
        }
    }
}
