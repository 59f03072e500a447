//! The `xfer` binary: parse arguments, run, turn the result into an exit
//! code. Nothing else.

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
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
                fail(
                    ExitCode::Usage,
                    "no command given: use 'xfer send', 'xfer recv' or 'xfer bench' (see 'xfer --help')",
                )
            }
            _ => fail(ExitCode::Usage, &one_line(&e.render().to_string())),
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
        // A server stopped on request has said so; no error line.
        Err(e) if e.is::<xfer::exit_codes::Stopped>() => {
            process::exit(ExitCode::Interrupted.code())
        }
        // After a signal, every error is the interruption's.
        Err(e) if ExitCode::for_error(&e) == ExitCode::Interrupted => {
            fail(ExitCode::Interrupted, "interrupted")
        }
        Err(e) => fail(ExitCode::for_error(&e), &format!("{e:#}")),
    }
}

/// clap's message on one line: the error and any indented details (such as
/// which required arguments are missing), without usage and tips.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let mut text = first.strip_prefix("error: ").unwrap_or(first).to_string();
    for detail in lines.take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more")) {
        // The indented details (what is missing) and clap's suggestions
        // ("tip: a similar argument exists: '--keep-running'").
        if detail.starts_with("  ") && !detail.trim().is_empty() {
            text.push_str(if text.ends_with('.') { " " } else { "; " });
            text.push_str(detail.trim());
        }
    }
    format!("{text} (see 'xfer --help')")
}

fn fail(code: ExitCode, message: &str) -> ! {
    xfer::output::error_line(message);
    process::exit(code.code());
}
