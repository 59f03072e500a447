//! Parsed arguments turned into typed, validated settings before any socket
//! is opened, so the rest of the program never re-checks a flag.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{BenchArgs, RecvArgs, SecurityArgs, SendArgs};
use crate::destination::Target;
use crate::exit_codes::{ExitCode, Failure};
use crate::net;
use crate::secure::Secret;

/// What one connection may ask of the receiver; going over ends it (or
/// refuses that file) with a clear refusal.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest file or stream, if limited.
    pub max_size: Option<u64>,
    /// Most entries one session may offer.
    pub max_entries: u64,
    /// Largest control frame read.
    pub max_frame: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: None,
            max_entries: 1_000_000,
            max_frame: crate::protocol::MAX_CONTROL_FRAME,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Files and directories to send; `-` alone is standard input.
    pub paths: Vec<PathBuf>,
    /// The name offered for the one path (required for standard input).
    pub name: Option<String>,
    pub target: Endpoint,
    /// Continue from what the receiver already holds of this file.
    pub resume: bool,
    /// Further attempts after a network failure or timeout.
    pub retries: u32,
    /// Skip by SHA-256 instead of size and mtime.
    pub checksum: bool,
    /// `--remove-source-files`.
    pub remove_source_files: bool,
    /// `--compress`, `--xattrs`, `--safe-links`.
    pub compress: bool,
    pub xattrs: bool,
    pub safe_links: bool,
    /// How to authenticate; `None`: ask for the code at the terminal.
    pub secret: Option<Secret>,
    pub quiet: bool,
    pub json: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// `--bwlimit`, `--min-speed`.
    pub pace: crate::pace::Limits,
}

/// Who connects: the sender to a listening receiver (the usual), or the
/// receiver to a sender that listens (`send --listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Connect(net::PeerAddress),
    Listen { bind: Option<IpAddr>, port: u16 },
}

#[derive(Debug, Clone)]
pub struct RecvConfig {
    /// `--connect HOST:PORT` to a listening sender, with `--retries`.
    pub connect: Option<(net::PeerAddress, u32)>,
    pub bind: Option<IpAddr>,
    pub port: u16,
    pub target: Target,
    pub overwrite: bool,
    /// `--portable-names`.
    pub names: crate::names::Policy,
    /// How entries are kept: owners by number, links inside the tree only.
    pub keep: crate::destination::Keep,
    /// Keep replaced files aside (`--backup`), how many per name.
    pub backups: Option<crate::destination::Backups>,
    /// Partial files untouched for longer are removed.
    pub partial_max_age: Duration,
    pub keep_running: bool,
    /// With `keep_running`: sessions served at once.
    pub max_connections: usize,
    /// Connections in their handshake at once.
    pub max_handshakes: usize,
    /// Connections in their handshake at once from one address (or IPv6 /64).
    pub max_per_source: usize,
    /// What failed handshakes cost their source; `None`: `--penalties off`.
    pub penalties: Option<crate::admission::Penalties>,
    pub limits: Limits,
    /// What senders must know; `None`: a code made up for this run.
    pub secret: Option<Secret>,
    pub quiet: bool,
    pub json: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// `--bwlimit`, `--min-speed`, for each session.
    pub pace: crate::pace::Limits,
    /// `--exec`, `--exec-timeout`.
    pub hook: Option<crate::hook::Hook>,
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub size: u64,
    pub dir: PathBuf,
    /// Plaintext instead of the default encrypted transport.
    pub insecure: bool,
    pub quiet: bool,
    pub json: bool,
}

impl SendConfig {
    pub fn from_args(args: SendArgs) -> Result<Self, Failure> {
        let mut paths = args.operands;
        let target = if args.listen {
            let Some(port) = args.port else {
                return Err(Failure::new(
                    ExitCode::Usage,
                    "--listen needs --port PORT (0 picks a free one)",
                ));
            };
            Endpoint::Listen {
                bind: args.bind,
                port,
            }
        } else {
            let target = match paths.pop() {
                Some(last) if !paths.is_empty() => last,
                _ => {
                    return Err(Failure::new(
                        ExitCode::Usage,
                        "missing HOST:PORT: give where 'xfer recv' listens after the paths \
                         (xfer send FILE HOST:PORT), or wait for the receiver with --listen",
                    ));
                }
            };
            Endpoint::Connect(
                target
                    .to_str()
                    .ok_or_else(|| "HOST:PORT is not valid text".to_string())
                    .and_then(str::parse)
                    .map_err(|e: String| Failure::new(ExitCode::Usage, e))?,
            )
        };
        let stdin = paths.iter().any(|p| p.as_os_str() == "-");
        if stdin && paths.len() > 1 {
            return Err(Failure::new(
                ExitCode::Usage,
                "'-' (standard input) cannot be combined with other paths",
            ));
        }
        if stdin && args.remove_source_files {
            return Err(Failure::new(
                ExitCode::Usage,
                "--remove-source-files cannot remove standard input",
            ));
        }
        if stdin && args.name.is_none() {
            return Err(Failure::new(
                ExitCode::Usage,
                "sending standard input needs a name for it: add --name NAME",
            ));
        }
        if args.name.is_some() && paths.len() > 1 {
            return Err(Failure::new(
                ExitCode::Usage,
                "--name renames one path; several were given",
            ));
        }
        Ok(SendConfig {
            paths,
            name: args.name,
            target,
            resume: !args.no_resume,
            retries: args.retries,
            checksum: args.checksum,
            remove_source_files: args.remove_source_files,
            compress: args.compress,
            xattrs: args.xattrs,
            safe_links: args.safe_links,
            secret: {
                let secret = secret_from(&args.security, args.common.quiet)?;
                // Listening, the code is ours to choose, and strangers can
                // guess at it as at a receiver's.
                if args.listen {
                    chosen_code(&secret, args.common.quiet, false)?;
                }
                secret
            },
            quiet: args.common.quiet,
            json: args.common.json,
            connect_timeout: positive(args.common.connect_timeout, "--connect-timeout")?,
            idle_timeout: positive(args.common.idle_timeout, "--idle-timeout")?,
            pace: pace_limits(&args.common)?,
        })
    }
}

/// The secret the flags name, if any. A key file that others can read is
/// used, with a warning.
fn secret_from(args: &SecurityArgs, quiet: bool) -> Result<Option<Secret>, Failure> {
    if args.insecure {
        return Ok(Some(Secret::Insecure));
    }
    if let Some(path) = &args.key_file {
        let (key, warning) = crate::secure::read_key_file(path).map_err(|e| {
            e.downcast::<Failure>()
                .unwrap_or_else(|e| Failure::new(ExitCode::LocalFile, format!("{e:#}")))
        })?;
        if let (Some(warning), false) = (warning, quiet) {
            crate::output::warning_line(&warning);
        }
        return Ok(Some(Secret::Key(key)));
    }
    match &args.code {
        Some(code) if crate::secure::normalize_code(code).is_empty() => {
            Err(Failure::new(ExitCode::Usage, "--code is empty"))
        }
        Some(code) => Ok(Some(Secret::Code(code.clone()))),
        None => Ok(None),
    }
}

/// A receiver's own chosen code must be at least as strong as a generated
/// one (8 characters of Crockford's base 32: 40 bits), and when it comes
/// from XFER_CODE rather than --code, the receiver says so.
fn chosen_code(secret: &Option<Secret>, quiet: bool, force: bool) -> Result<(), Failure> {
    let Some(Secret::Code(code)) = secret else {
        return Ok(());
    };
    let len = crate::secure::normalize_code(code).chars().count();
    if len < crate::secure::CODE_LEN && force {
        if !quiet {
            crate::output::warning_line(&format!(
                "a chosen code of {len} characters can be guessed; --force uses it anyway"
            ));
        }
    } else if len < crate::secure::CODE_LEN {
        return Err(Failure::new(
            ExitCode::Usage,
            format!(
                "a chosen code needs at least {} characters (it has {len}); a short one can be guessed: \
                 choose a longer one, or leave out --code and XFER_CODE to get a generated one",
                crate::secure::CODE_LEN
            ),
        ));
    }
    let from_env = std::env::var("XFER_CODE").is_ok_and(|v| v == *code)
        && !std::env::args().any(|a| a == "--code" || a.starts_with("--code="));
    if from_env && !quiet {
        crate::output::info_line("using the code in XFER_CODE");
    }
    Ok(())
}

impl SendConfig {
    /// Whether the data comes from standard input.
    pub fn stdin(&self) -> bool {
        matches!(self.paths.as_slice(), [one] if one.as_os_str() == "-")
    }
}

/// A `--keep-running` setting: at least 1; given (flag or variable)
/// without `--keep-running`, it changes nothing, which a warning says.
/// `--bwlimit`, `--min-speed` and `--min-speed-time`.
fn pace_limits(common: &crate::cli::CommonArgs) -> Result<crate::pace::Limits, Failure> {
    Ok(crate::pace::Limits {
        bwlimit: common.bwlimit.filter(|&n| n > 0),
        min_speed: common.min_speed.filter(|&n| n > 0),
        floor_window: positive(common.min_speed_time, "--min-speed-time")?,
    })
}

fn at_least_one(n: usize, flag: &str) -> Result<usize, Failure> {
    if n == 0 {
        return Err(Failure::new(
            ExitCode::Usage,
            format!("{flag} must be at least 1"),
        ));
    }
    Ok(n)
}

fn server_only(
    given: Option<usize>,
    default: usize,
    flag: &str,
    keep_running: bool,
    quiet: bool,
) -> Result<usize, Failure> {
    match given {
        Some(0) => Err(Failure::new(
            ExitCode::Usage,
            format!("{flag} must be at least 1"),
        )),
        Some(n) => {
            if !keep_running && !quiet {
                crate::output::warning_line(&format!(
                    "{flag} only applies with --keep-running; ignored"
                ));
            }
            Ok(n)
        }
        None => Ok(default),
    }
}

impl RecvConfig {
    pub fn from_args(args: RecvArgs) -> Result<Self, Failure> {
        let target = match args.output {
            _ if args.stdout => {
                use std::io::IsTerminal;
                // As curl and zstd do: binary data over a terminal is a
                // mistake unless asked for.
                if std::io::stdout().is_terminal() && !args.force {
                    return Err(Failure::new(
                        ExitCode::Usage,
                        "standard output is a terminal and the data would be written over it: \
                         redirect it (| tar x, > FILE), use -o FILE, or add --force",
                    ));
                }
                Target::Stdout
            }
            Some(path) => {
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                require_dir(&parent)?;
                writable_dir(&parent)?;
                if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                    return Err(Failure::new(
                        ExitCode::Usage,
                        format!(
                            "--output '{0}' is a directory; to receive into it, use --dir '{0}'",
                            crate::names::escape_path(&path)
                        ),
                    ));
                }
                if path.file_name().is_none() {
                    return Err(Failure::new(
                        ExitCode::Usage,
                        format!(
                            "--output '{}' must name a file",
                            crate::names::escape_path(&path)
                        ),
                    ));
                }
                Target::Output(path)
            }
            None => {
                destination_dir(&args.dir, args.common.quiet)?;
                writable_dir(&args.dir)?;
                Target::Dir(args.dir)
            }
        };
        let hook = match (args.exec, &target) {
            (Some(_), Target::Stdout) => {
                return Err(Failure::new(
                    ExitCode::Usage,
                    "--exec runs after a file is in place; with --stdout there is no file",
                ));
            }
            (Some(command), _) if command.is_empty() => {
                return Err(Failure::new(ExitCode::Usage, "--exec needs a command"));
            }
            (Some(command), _) => Some(crate::hook::Hook {
                command,
                timeout: positive(args.exec_timeout, "--exec-timeout")?,
            }),
            (None, _) => None,
        };
        Ok(RecvConfig {
            bind: args.bind,
            port: args.port.unwrap_or(0),
            connect: match &args.connect {
                None => None,
                Some(text) => Some((
                    text.parse()
                        .map_err(|e: String| Failure::new(ExitCode::Usage, e))?,
                    args.retries,
                )),
            },
            target,
            overwrite: args.overwrite,
            names: crate::names::Policy {
                portable: args.portable_names,
            },
            keep: crate::destination::Keep {
                numeric_ids: args.numeric_ids,
                safe_links: args.safe_links,
            },
            backups: match (args.backup, args.keep_backups) {
                (_, Some(0)) => {
                    return Err(Failure::new(
                        ExitCode::Usage,
                        "--keep-backups must be at least 1 (leave out --backup to keep none)",
                    ));
                }
                (true, keep) => Some(crate::destination::Backups { keep }),
                (false, _) => None,
            },
            partial_max_age: positive(args.partial_max_age, "--partial-max-age")?,
            keep_running: args.keep_running,
            max_connections: server_only(
                args.max_connections,
                64,
                "--max-connections",
                args.keep_running,
                args.common.quiet,
            )?,
            hook,
            max_handshakes: at_least_one(args.max_handshakes, "--max-handshakes")?,
            max_per_source: at_least_one(args.max_per_source, "--max-per-source")?,
            penalties: match args.penalties.trim() {
                "off" => None,
                spec => Some(spec.parse().map_err(|e: String| {
                    Failure::new(ExitCode::Usage, format!("--penalties: {e}"))
                })?),
            },
            limits: Limits {
                max_size: args.max_size,
                max_entries: match args.max_entries {
                    0 => {
                        return Err(Failure::new(
                            ExitCode::Usage,
                            "--max-entries must be at least 1",
                        ));
                    }
                    n => n,
                },
                max_frame: match args.max_frame {
                    n @ 8192..=65536 => n as u32,
                    _ => {
                        return Err(Failure::new(
                            ExitCode::Usage,
                            "--max-frame must be between 8KiB and 64KiB",
                        ));
                    }
                },
            },
            secret: {
                let secret = secret_from(&args.security, args.common.quiet)?;
                // Connecting, the code is the listening sender's to choose.
                if args.connect.is_none() {
                    chosen_code(&secret, args.common.quiet, args.force)?;
                }
                secret
            },
            quiet: args.common.quiet,
            json: args.common.json,
            connect_timeout: positive(args.common.connect_timeout, "--connect-timeout")?,
            idle_timeout: positive(args.common.idle_timeout, "--idle-timeout")?,
            pace: pace_limits(&args.common)?,
        })
    }
}

impl BenchConfig {
    pub fn from_args(args: BenchArgs) -> Result<Self, Failure> {
        let dir = match args.dir {
            Some(d) => {
                require_dir(&d)?;
                d
            }
            None => {
                let shm = PathBuf::from("/dev/shm");
                if shm.is_dir() {
                    shm
                } else {
                    std::env::temp_dir()
                }
            }
        };
        Ok(BenchConfig {
            size: args.size,
            dir,
            insecure: args.insecure,
            quiet: args.quiet,
            json: args.json,
        })
    }
}

/// `--dir`: an existing directory, or (as rsync does with a destination's
/// last component) one made now inside an existing one, which is said.
fn destination_dir(dir: &std::path::Path, quiet: bool) -> Result<(), Failure> {
    if std::fs::symlink_metadata(dir).is_err() {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if std::fs::metadata(parent).is_ok_and(|m| m.is_dir()) {
            let shown = crate::names::escape_path(dir);
            std::fs::create_dir(dir)
                .map_err(|e| Failure::local(format!("cannot create directory '{shown}'"), &e))?;
            if !quiet {
                crate::output::info_line(&format!("created directory '{shown}'"));
            }
        }
    }
    require_dir(dir)
}

/// Whether this user may create files in `dir` (a read-only file system, a
/// directory of another user): said at start-up, before any code is printed
/// or sender waits, not once per refused file.
fn writable_dir(dir: &std::path::Path) -> Result<(), Failure> {
    use rustix::fs::Access;
    rustix::fs::access(dir, Access::WRITE_OK | Access::EXEC_OK).map_err(|e| {
        Failure::local(
            format!("cannot receive into '{}'", crate::names::escape_path(dir)),
            &e.into(),
        )
    })
}

fn require_dir(dir: &std::path::Path) -> Result<(), Failure> {
    let shown = crate::names::escape_path(dir);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Failure::new(
            ExitCode::LocalFile,
            format!("'{shown}' is not a directory"),
        )),
        Err(e) => Err(Failure::local(
            format!("cannot use directory '{shown}'"),
            &e,
        )),
    }
}

fn positive(d: Duration, flag: &str) -> Result<Duration, Failure> {
    if d.is_zero() {
        Err(Failure::new(
            ExitCode::Usage,
            format!("{flag} must be greater than zero"),
        ))
    } else {
        Ok(d)
    }
}
