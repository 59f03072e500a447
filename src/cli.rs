//! The command line as clap derive structs. Parsing only: turning these into
//! validated settings is `config`'s job.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::exit_codes::ExitCode;
use crate::units::{parse_duration, parse_rate, parse_size};

/// A yes/no environment variable, read as people write them: `1`/`0`,
/// `yes`/`no`, `on`/`off`, `true`/`false` (any case); a bad value names
/// the variable. (The flags themselves take no value, so a value can only
/// come from the variable.)
fn boolish(value: &str, variable: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "on" | "true" => Ok(true),
        "0" | "no" | "n" | "off" | "false" | "" => Ok(false),
        _ => Err(format!(
            "{variable}={value:?} is not yes or no (use 1/0, yes/no, on/off or true/false)"
        )),
    }
}

fn env_quiet(value: &str) -> Result<bool, String> {
    boolish(value, "XFER_QUIET")
}

fn env_json(value: &str) -> Result<bool, String> {
    boolish(value, "XFER_JSON")
}

fn env_insecure(value: &str) -> Result<bool, String> {
    boolish(value, "XFER_INSECURE")
}

fn after_help(examples: &str) -> String {
    format!("Examples:\n{examples}\n{}", ExitCode::table())
}

fn main_help() -> String {
    after_help(
        "  xfer recv --port 9000                  # on the receiving machine: prints a code\n  \
           xfer send photos.tar host.example:9000 # on the sending machine: type the code\n  \
           xfer bench                             # measure verified throughput locally\n",
    )
}

fn send_help() -> String {
    after_help(
        "  xfer send backup.tar 192.0.2.10:9000          # asks for the receiver's code\n  \
           XFER_CODE=7f3k-q9wd xfer send photos/ notes.txt host:9000\n  \
           xfer send --key-file backup.key db.dump host:9000\n  \
           xfer send --json --quiet db.dump [::1]:9000\n  \
           tar c ./photos | xfer send - host:9000 --name photos.tar\n",
    )
}

fn recv_help() -> String {
    after_help(
        "  xfer recv --port 9000 --dir /srv/incoming        # prints a code for the sender\n  \
           xfer recv --port 9000 --key-file backup.key --keep-running\n  \
           xfer recv --port 0 --json -o /tmp/exact-name.bin\n  \
           xfer recv --port 9000 --keep-running --overwrite\n  \
           xfer recv --port 9000 --stdout | tar x\n",
    )
}

fn keygen_help() -> String {
    after_help(
        "  xfer keygen --out backup.key      # then copy it to the other machine\n  \
           xfer recv --port 9000 --key-file backup.key --keep-running\n  \
           xfer send db.dump host:9000 --key-file backup.key\n",
    )
}

fn bench_help() -> String {
    after_help("  xfer bench\n  xfer bench --size 1GiB --dir /var/tmp\n  xfer bench --insecure\n")
}

/// Verified file transfer: every byte checked with SHA-256, files appear
/// under their final name only when complete.
#[derive(Debug, Parser)]
#[command(name = "xfer", version, about, after_help = main_help())]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send files and directories to a waiting `xfer recv`.
    #[command(after_help = send_help())]
    Send(SendArgs),
    /// Wait for a sender and store what it sends.
    #[command(after_help = recv_help())]
    Recv(RecvArgs),
    /// Measure verified throughput over loopback, in one process.
    #[command(after_help = bench_help())]
    Bench(BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Make a random 256-bit key for --key-file (give both ends the same file).
    #[command(after_help = keygen_help(), override_usage = "xfer keygen [--out PATH]")]
    Keygen {
        /// Write the key to this new file, readable only by you, instead of
        /// to standard output.
        #[arg(long, value_name = "PATH")]
        out: Option<std::path::PathBuf>,
    },
    /// Print the man page (roff), or write every page into a directory.
    #[command(override_usage = "xfer man [--out-dir DIR]")]
    Man {
        /// Write xfer.1 and one page per subcommand into this directory.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
}

/// How the two ends know each other; both ends must choose alike.
#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// The code `xfer recv` printed (send), or a code of your own instead of
    /// a generated one (recv). Prefer the XFER_CODE variable or the prompt:
    /// other users can see command lines.
    #[arg(long, value_name = "CODE", env = "XFER_CODE", hide_env_values = true, conflicts_with_all = ["key_file", "insecure"])]
    pub code: Option<String>,

    /// Authenticate with the key in this file (made by `xfer keygen`),
    /// without a prompt: for scripts and servers.
    #[arg(
        long,
        value_name = "PATH",
        env = "XFER_KEY_FILE",
        conflicts_with = "insecure"
    )]
    pub key_file: Option<PathBuf>,

    /// No authentication and no encryption: frames and data in plaintext,
    /// for trusted networks and comparisons. Both ends must say it.
    #[arg(long, env = "XFER_INSECURE", value_parser = env_insecure)]
    pub insecure: bool,
}

/// Flags both sides of a transfer take.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Print nothing on stderr but errors; no progress bar.
    #[arg(short, long, env = "XFER_QUIET", value_parser = env_quiet)]
    pub quiet: bool,

    /// Write one JSON object per line on stdout: the events and a summary.
    #[arg(long, env = "XFER_JSON", value_parser = env_json)]
    pub json: bool,

    /// How long to wait for the connection (send) or for the sender's
    /// handshake and offer after it connects (recv). E.g. 10s, 500ms, 2m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, env = "XFER_CONNECT_TIMEOUT")]
    pub connect_timeout: Duration,

    /// How long any read or write may stall before the transfer ends with
    /// the timeout exit code.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, env = "XFER_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,

    /// Move at most this many bytes a second over the wire, for the whole
    /// session (after encryption; resumed or skipped bytes cost nothing):
    /// 5M or 5MiB/s = 5 x 2^20, 5MB/s = 5,000,000. 0: no limit.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, env = "XFER_BWLIMIT")]
    pub bwlimit: Option<u64>,

    /// Fail the attempt (timeout code; --retries and resume take over) when
    /// a file's data moves slower than this for --min-speed-time, as curl's
    /// --speed-limit does. Time held back by --bwlimit does not count.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, env = "XFER_MIN_SPEED")]
    pub min_speed: Option<u64>,

    /// The window --min-speed is measured over.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, env = "XFER_MIN_SPEED_TIME")]
    pub min_speed_time: Duration,
}

#[derive(Debug, Args)]
#[command(
    override_usage = "xfer send [OPTIONS] PATH... HOST:PORT\n       xfer send --listen --port PORT [OPTIONS] PATH..."
)]
pub struct SendArgs {
    /// Files and directories to send (directories with everything in
    /// them), or `-` for standard input (needs --name); then, last, where
    /// `xfer recv` listens: HOST:PORT, with IPv6 in brackets ([::1]:9000).
    /// With --listen, only paths. Options may come anywhere.
    #[arg(value_name = "PATH... HOST:PORT", required = true, num_args = 1..)]
    pub operands: Vec<PathBuf>,

    /// Wait for the receiver to connect (`xfer recv --connect HOST:PORT`)
    /// instead of connecting to it: for a receiver behind NAT or a
    /// firewall. Same codes, keys, resume and exit codes.
    #[arg(long)]
    pub listen: bool,

    /// With --listen: the TCP port to listen on; 0 picks a free one.
    #[arg(short, long, requires = "listen")]
    pub port: Option<u16>,

    /// With --listen: listen only on this address (default: every IPv6 and
    /// IPv4 address).
    #[arg(long, value_name = "ADDR", requires = "listen")]
    pub bind: Option<IpAddr>,

    /// Offer the file under this name instead of its own (required for `-`).
    #[arg(long)]
    pub name: Option<String>,

    /// After a network failure or timeout, try again this many times
    /// (waiting 1 s, 2 s, 4 s, ... up to 30 s), resuming each time. Not for
    /// standard input, which cannot be read twice.
    #[arg(long, value_name = "N", default_value_t = 3, env = "XFER_RETRIES")]
    pub retries: u32,

    /// Start from the first byte even if the receiver holds part of the
    /// file from an interrupted attempt.
    #[arg(long)]
    pub no_resume: bool,

    /// Decide whether the receiver already has the file by SHA-256 (read
    /// once more before sending) instead of by size and modification time.
    #[arg(long)]
    pub checksum: bool,

    /// Move instead of copy: remove each file here once the receiver has
    /// verified it, made it durable and put it in place, if it is still
    /// exactly the file that was read. Never for standard input; files the
    /// receiver already had are kept; directories stay.
    #[arg(long)]
    pub remove_source_files: bool,

    /// Compress the data with zstd where that helps (the receiver must
    /// offer it; data that does not compress is sent as is). Off by
    /// default: it costs CPU on fast links, and compressed sizes can leak
    /// what a file holds to someone watching the encrypted traffic.
    #[arg(long)]
    pub compress: bool,

    /// Send extended attributes of the `user.` namespace (the receiver
    /// takes no other: never capabilities, labels or ACLs from a peer).
    #[arg(long)]
    pub xattrs: bool,

    /// Pass over symbolic links that could point outside the tree being
    /// sent (absolute targets, more leading `..` than the link is deep, or
    /// `..` after another component).
    #[arg(long)]
    pub safe_links: bool,

    #[command(flatten)]
    pub security: SecurityArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
#[command(
    override_usage = "xfer recv [OPTIONS] --port PORT\n       xfer recv [OPTIONS] --connect HOST:PORT"
)]
pub struct RecvArgs {
    /// TCP port to listen on; 0 picks a free one (printed before accepting).
    #[arg(short, long, env = "XFER_PORT", required_unless_present = "connect")]
    pub port: Option<u16>,

    /// Connect to a sender that waits with `xfer send --listen` instead of
    /// listening (for a receiver behind NAT or a firewall); --port and
    /// --bind are then not used.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "keep_running")]
    pub connect: Option<String>,

    /// With --connect: after a network failure or timeout, connect again
    /// this many times (waiting 1 s, 2 s, 4 s, ...), resuming each time.
    #[arg(long, value_name = "N", default_value_t = 3, env = "XFER_RETRIES")]
    pub retries: u32,

    /// Listen only on this address (default: every IPv6 and IPv4 address).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<IpAddr>,

    /// Directory where files land.
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,

    /// Exact path for the one incoming file (instead of --dir and its name).
    #[arg(short, long, value_name = "PATH", conflicts_with_all = ["dir", "keep_running"])]
    pub output: Option<PathBuf>,

    /// Write the one incoming file to standard output as it arrives (JSON
    /// events, if asked for, go to stderr). Exit code 4 means the output
    /// failed verification and must be discarded.
    #[arg(long, conflicts_with_all = ["dir", "output", "keep_running", "overwrite"])]
    pub stdout: bool,

    /// Replace an existing file (atomically, only once the new one is verified).
    #[arg(long)]
    pub overwrite: bool,

    /// Refuse names that Windows or macOS could not hold (device names such
    /// as aux.c, drive prefixes, backslashes, control characters, names that
    /// are not UTF-8, names differing only in case). Without it, every name
    /// Linux takes is taken, and case collisions are refused only in
    /// case-insensitive directories.
    #[arg(long)]
    pub portable_names: bool,

    /// Keep owners by number, not by name (as root; otherwise files belong
    /// to the receiving user).
    #[arg(long)]
    pub numeric_ids: bool,

    /// Refuse symbolic links that could point outside the destination
    /// (absolute targets, more leading `..` than the link is deep, or `..`
    /// after another component, which chained links could abuse).
    #[arg(long)]
    pub safe_links: bool,

    /// Replace an existing, different file, keeping the old one beside it
    /// as NAME~20261130T033001.123Z~ (its time of replacement, UTC), so a
    /// mistaken or compromised sender cannot destroy earlier copies.
    #[arg(long, conflicts_with_all = ["overwrite", "stdout"])]
    pub backup: bool,

    /// Remove xfer's partial files that no transfer has written for this
    /// long (at start-up, and every hour with --keep-running): attempts that
    /// will never be resumed. E.g. 7d, 12h.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration, env = "XFER_PARTIAL_MAX_AGE")]
    pub partial_max_age: Duration,

    /// With --backup: keep at most N old copies per name, removing the
    /// oldest (default: keep them all; a sender can then fill the disk,
    /// while with N it can push out copies older than N).
    #[arg(long, value_name = "N", requires = "backup")]
    pub keep_backups: Option<usize>,

    /// Do what xfer refuses as a likely mistake: use a chosen code shorter
    /// than a generated one, or write --stdout to a terminal.
    #[arg(long)]
    pub force: bool,

    /// Keep serving senders, several at once, until interrupted.
    #[arg(long)]
    pub keep_running: bool,

    /// With --keep-running: how many senders are served at once (default
    /// 64); one more gets a "busy" refusal (exit code 5 on its side).
    #[arg(long, value_name = "N", env = "XFER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// How many connections may be in their handshake at once; when full,
    /// the oldest handshake of the address holding the most is dropped.
    /// Handshakes run without a thread each, so thousands cost little.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16384,
        env = "XFER_MAX_HANDSHAKES"
    )]
    pub max_handshakes: usize,

    /// How many connections from one address (an IPv6 /64) may be in their
    /// handshake at once; one more drops that address's oldest.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        env = "XFER_MAX_PER_SOURCE"
    )]
    pub max_per_source: usize,

    /// What failed handshakes cost their address: each wrong code, timeout
    /// or malformed opening adds its time; once an address owes `min`, it
    /// is refused until the time runs out (never more than `max`). `off`
    /// turns penalties off.
    #[arg(
        long,
        value_name = "SPEC",
        default_value = "wrong-code:5s,timeout:10s,garbage:5s,min:15s,max:10m",
        env = "XFER_PENALTIES"
    )]
    pub penalties: String,

    /// Refuse any file (or stream) larger than this, e.g. 10GiB. Free
    /// space is always checked.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "XFER_MAX_SIZE")]
    pub max_size: Option<u64>,

    /// Most files and directories one session may offer.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1_000_000,
        env = "XFER_MAX_ENTRIES"
    )]
    pub max_entries: u64,

    /// Run this command (with /bin/sh -c) after each file is verified,
    /// durable and in place, one at a time per session. It gets the facts
    /// in XFER_PATH, XFER_NAME, XFER_SIZE, XFER_SHA256 and XFER_PEER (never
    /// interpolated into the command). A failing hook is logged and makes
    /// the receiver exit 10; the file stays.
    #[arg(long, value_name = "CMD", env = "XFER_EXEC")]
    pub exec: Option<std::ffi::OsString>,

    /// How long one --exec command may run before it is killed (and counts
    /// as failed).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration, env = "XFER_EXEC_TIMEOUT")]
    pub exec_timeout: Duration,

    /// Largest control frame accepted (8KiB to 64KiB).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size, env = "XFER_MAX_FRAME")]
    pub max_frame: u64,

    #[command(flatten)]
    pub security: SecurityArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
#[command(override_usage = "xfer bench [OPTIONS]")]
pub struct BenchArgs {
    /// How much generated data to send, e.g. 256MiB, 1GiB, 1000000.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub size: u64,

    /// Where the receiver writes (default: /dev/shm if present, else the temp dir).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Measure the plaintext transport instead of the default encrypted one.
    #[arg(long)]
    pub insecure: bool,

    /// Print only the result.
    #[arg(short, long)]
    pub quiet: bool,

    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}
