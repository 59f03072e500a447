//! xfer: verified file transfer. The binary is a thin shell around [`run`];
//! everything else lives in one module per idea.

pub mod bench;
pub mod cli;
pub mod config;
pub mod destination;
pub mod exit_codes;
pub mod names;
pub mod net;
pub mod output;
pub mod pipeline;
pub mod protocol;
pub mod recv;
pub mod send;
pub mod session;
pub mod signals;

use cli::{Cli, Command};

/// Validates the parsed command line and runs it.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Send(args) => send::run(&config::SendConfig::from_args(args)?),
        Command::Recv(args) => recv::run(&config::RecvConfig::from_args(args)?),
        Command::Bench(args) => bench::run(&config::BenchConfig::from_args(args)?),
    }
}
