//! The `xfer` binary: parse arguments, run, turn the result into an exit
//! code. Nothing else.

use std::io::Write;
use std::process;

use clap::Parser;
use clap::error::ErrorKind;
use xfer::cli::Cli;
use xfer::exit_codes::ExitCode;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                let _ = e.print();
                process::exit(ExitCode::Success.code());
            }
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = e.print();
                process::exit(ExitCode::Usage.code());
            }
            _ => {
                let rendered = e.render().to_string();
                let first = rendered.lines().next().unwrap_or("invalid arguments");
                let first = first.strip_prefix("error: ").unwrap_or(first);
                fail(ExitCode::Usage, &format!("{first} (see 'xfer --help')"));
            }
        },
    };
    if let Err(e) = xfer::signals::install() {
        fail(
            ExitCode::Internal,
            &format!("cannot install signal handlers: {e}"),
        );
    }
    match xfer::run(cli) {
        Ok(()) => process::exit(ExitCode::Success.code()),
        Err(_) if xfer::signals::interrupted() => fail(ExitCode::Interrupted, "interrupted"),
        Err(e) => fail(ExitCode::for_error(&e), &format!("{e:#}")),
    }
}

fn fail(code: ExitCode, message: &str) -> ! {
    let _ = writeln!(std::io::stderr().lock(), "xfer: error: {message}");
    process::exit(code.code());
}
