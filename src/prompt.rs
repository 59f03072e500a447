//! Asking a person for the code at the terminal (never on standard input,
//! which may carry the data), for whichever side connects: `xfer send`, or
//! `xfer recv --connect` to a sender that listens.

use std::fs::File;
use std::io::Read as _;

use crate::exit_codes::{ExitCode, Failure};
use crate::secure::Secret;
use crate::signals;

fn no_terminal(whose: &str) -> Failure {
    Failure::new(
        ExitCode::Auth,
        format!(
            "{whose} code is needed and there is no terminal to ask at: \
             set XFER_CODE or pass --code, or use --key-file (or --insecure on both ends)"
        ),
    )
}

/// The terminal to ask the code at; `whose` names the side that shows it,
/// for the error when there is none ("the receiver's").
pub fn terminal(whose: &str) -> anyhow::Result<File> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| no_terminal(whose))?)
}

/// Reads the code that `shown_by` printed, at the terminal.
pub fn ask_for_code(tty: File, shown_by: &str) -> anyhow::Result<Secret> {
    use std::io::{BufRead, Write};
    let _prompting = signals::prompting();
    let whose = "the other side's";
    (&tty)
        .write_all(format!("Code shown by {shown_by}: ").as_bytes())
        .map_err(|_| no_terminal(whose))?;
    let mut line = String::new();
    std::io::BufReader::new(&tty)
        .take(256)
        .read_line(&mut line)
        .map_err(|_| no_terminal(whose))?;
    if crate::secure::normalize_code(&line).is_empty() {
        return Err(Failure::new(ExitCode::Auth, "no code was typed").into());
    }
    Ok(Secret::Code(line))
}
