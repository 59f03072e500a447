//! A small test environment: a fresh temp directory per test, the real
//! `xfer` binary started as receiver on an ephemeral loopback port and as
//! sender, helpers to make and compare files, and a TCP proxy that can
//! corrupt or stall the stream. Failures print the commands' stderr.
//!
//! Every wait here is bounded: a hung child is killed and the test fails.

#![allow(dead_code)]

pub mod proxy;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The longest any single step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(120);

/// The key both ends use unless a test says otherwise, so every transfer
/// runs authenticated and encrypted, as by default. Not a secret.
pub const TEST_KEY: [u8; 32] = *b"xfer integration tests' own key!";

/// [`TEST_KEY`] in a key file readable by its owner only.
pub fn test_key_file() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xfer-test.key");
        let hex: String = TEST_KEY.iter().map(|b| format!("{b:02x}")).collect();
        fs::write(&path, format!("{hex}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    })
    .clone()
}

/// What a raw client in a test authenticates with.
pub fn test_secret() -> xfer::secure::Secret {
    xfer::secure::Secret::Key(TEST_KEY)
}

pub fn xfer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xfer"));
    c.stdin(Stdio::null());
    // A developer's own settings must not leak into the tests.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("XFER_") {
            c.env_remove(key);
        }
    }
    c.env("XFER_KEY_FILE", test_key_file());
    c
}

/// Drops the test key where a test chose another way to authenticate
/// (`--insecure`, `--code`, its own `--key-file`).
pub fn honour_security_flags(cmd: &mut Command, extra: &[&str]) {
    if extra
        .iter()
        .any(|a| matches!(*a, "--insecure" | "--code" | "--key-file"))
    {
        cmd.env_remove("XFER_KEY_FILE");
    }
}

/// Whether this machine has IPv6 loopback; some containers do not.
pub fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

pub struct TestEnv {
    pub root: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("xfer-test-")
            .tempdir()
            .expect("temp dir");
        fs::create_dir(root.path().join("src")).unwrap();
        fs::create_dir(root.path().join("dst")).unwrap();
        TestEnv { root }
    }

    pub fn src(&self) -> PathBuf {
        self.root.path().join("src")
    }

    pub fn dst(&self) -> PathBuf {
        self.root.path().join("dst")
    }

    /// Writes `len` pseudo-random bytes (seeded, so reruns are comparable).
    pub fn random_file(&self, name: &str, len: usize, seed: u64) -> PathBuf {
        let path = self.src().join(name);
        fs::write(&path, random_bytes(len, seed)).unwrap();
        path
    }

    /// Starts `xfer recv --port 0 --json --dir DST` plus `extra` args, and
    /// waits for its `listening` event.
    pub fn recv(&self, extra: &[&str]) -> RecvProcess {
        self.recv_with(extra, true)
    }

    pub fn recv_with(&self, extra: &[&str], default_dir: bool) -> RecvProcess {
        let mut cmd = xfer();
        cmd.args(["recv", "--port", "0", "--json"]);
        if default_dir {
            cmd.arg("--dir").arg(self.dst());
        }
        cmd.args(extra);
        honour_security_flags(&mut cmd, extra);
        RecvProcess::spawn(cmd)
    }

    /// Runs `xfer send` to completion (bounded by [`STEP`]).
    pub fn send(&self, file: &Path, target: &str, extra: &[&str]) -> Outcome {
        let mut cmd = xfer();
        cmd.arg("send").arg(file).arg(target).args(extra);
        honour_security_flags(&mut cmd, extra);
        run_bounded(cmd)
    }

    /// Runs `xfer send - TARGET --name NAME` with `file` as standard input,
    /// to completion (bounded by [`STEP`]).
    pub fn send_stdin(&self, file: &Path, target: &str, name: &str, extra: &[&str]) -> Outcome {
        let mut cmd = xfer();
        cmd.args(["send", "-", target, "--name", name]).args(extra);
        honour_security_flags(&mut cmd, extra);
        cmd.stdin(Stdio::from(fs::File::open(file).unwrap()));
        run_bounded(cmd)
    }

    /// Starts `xfer send` without waiting.
    pub fn spawn_send(&self, file: &Path, target: &str, extra: &[&str]) -> Child {
        let mut cmd = xfer();
        honour_security_flags(&mut cmd, extra);
        cmd.arg("send")
            .arg(file)
            .arg(target)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xfer send")
    }
}

/// A running `xfer recv`, its JSON events and its stderr.
pub struct RecvProcess {
    pub child: Child,
    events: Receiver<String>,
    pub seen: Vec<Value>,
    /// Lines that were not JSON (messages, when events share stderr).
    text: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
    pub port: u16,
}

impl RecvProcess {
    /// Starts a receiver command that was given `--json` and waits for its
    /// `listening` event.
    pub fn spawn(mut cmd: Command) -> RecvProcess {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xfer recv");
        let events = spawn_line_reader(child.stdout.take().unwrap());
        let stderr = spawn_collector(child.stderr.take().unwrap());
        Self::started(child, events, Some(stderr))
    }

    /// Like [`spawn`](Self::spawn) for `--stdout` receivers, whose JSON
    /// events come on stderr among the other messages; the caller decides
    /// where stdout goes.
    pub fn spawn_with_events_on_stderr(mut cmd: Command) -> RecvProcess {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn xfer recv");
        let events = spawn_line_reader(child.stderr.take().unwrap());
        Self::started(child, events, None)
    }

    fn started(
        child: Child,
        events: Receiver<String>,
        stderr: Option<thread::JoinHandle<String>>,
    ) -> RecvProcess {
        let mut r = RecvProcess {
            child,
            events,
            seen: Vec::new(),
            text: Vec::new(),
            stderr,
            port: 0,
        };
        let listening = r.wait_event("listening");
        r.port = listening["port"].as_u64().expect("port in listening event") as u16;
        r
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits (bounded) for the next event named `name`, keeping all events.
    pub fn wait_event(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(v) = self.seen.iter().find(|v| v["event"] == name) {
                return v.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(line) => self.take_line(line),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("receiver did not emit '{name}' within {STEP:?}");
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let out = self.finish();
                    panic!("receiver exited without emitting '{name}':\n{out}");
                }
            }
        }
    }

    /// Waits (bounded) until `count` events named `name` were seen; all of
    /// them, oldest first.
    pub fn wait_events(&mut self, name: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + STEP;
        loop {
            let found: Vec<Value> = self
                .seen
                .iter()
                .filter(|v| v["event"] == name)
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(line) => self.take_line(line),
                Err(_) => {
                    let _ = self.child.kill();
                    let out = self.finish();
                    panic!("receiver did not emit {count} '{name}' events:\n{out}");
                }
            }
        }
    }

    /// Waits (bounded) for the receiver to exit; collects all events.
    pub fn finish(&mut self) -> Outcome {
        let status = wait_bounded(&mut self.child);
        while let Ok(line) = self.events.recv_timeout(Duration::from_secs(5)) {
            self.take_line(line);
        }
        let stderr = match self.stderr.take() {
            Some(h) => h.join().unwrap(),
            None => self.text.join("\n"),
        };
        Outcome {
            status,
            stdout: self
                .seen
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            stderr,
        }
    }

    /// Sends `sig` (e.g. `Signal::INT`) to the receiver process.
    fn take_line(&mut self, line: String) {
        if self.stderr.is_none() && !line.starts_with('{') {
            self.text.push(line);
            return;
        }
        let v = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("receiver printed non-JSON {line:?}: {e}"));
        self.seen.push(v);
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a live pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }
}

impl Drop for RecvProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A finished command: exit status and captured output, printed whole when
/// an assertion about it fails.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    pub fn assert_code(&self, want: i32) -> &Self {
        assert_eq!(self.code(), Some(want), "wrong exit code\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    /// The first JSON event named `name` (there must be one).
    #[track_caller]
    pub fn event(&self, name: &str) -> Value {
        self.events()
            .into_iter()
            .find(|e| e["event"] == name)
            .unwrap_or_else(|| panic!("no '{name}' event\n{self}"))
    }

    /// The JSON events printed on stdout.
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
            .collect()
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

pub fn run_bounded(mut cmd: Command) -> Outcome {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xfer");
    collect(&mut child)
}

/// Waits for a spawned child (bounded) and captures its output.
pub fn collect(child: &mut Child) -> Outcome {
    let out = spawn_collector(child.stdout.take().unwrap());
    let err = spawn_collector(child.stderr.take().unwrap());
    let status = wait_bounded(child);
    Outcome {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

pub fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {STEP:?}", child.id());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn spawn_line_reader(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    rx
}

fn spawn_collector<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let mut bytes = Vec::new();
        let _ = r.read_to_end(&mut bytes);
        s.push_str(&String::from_utf8_lossy(&bytes));
        s
    })
}

pub fn stderr_of(child: &mut ChildStderr) -> String {
    let mut s = String::new();
    let _ = child.read_to_string(&mut s);
    s
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Names in a directory, sorted (hidden files included).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Writes all of `data` or panics; for raw protocol clients.
pub fn put(w: &mut impl Write, data: &[u8]) {
    w.write_all(data).unwrap();
}

/// Whether the tests run as root (CI does): tests that act as a second
/// local user or mount a file system need it.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The uid and gid of an unprivileged second user ("nobody").
pub const OTHER_USER: u32 = 65534;

/// Runs `cmd` as [`OTHER_USER`] (for "a file this user cannot read" and
/// "another local user" tests; the tests themselves run as root).
pub fn as_other_user(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.uid(OTHER_USER).gid(OTHER_USER)
}

/// `cmd` run in a mount namespace of its own where `dir` is mounted
/// read-only (a bind mount over itself), for "read-only destination" tests.
/// Needs root and util-linux's `unshare`; the mount vanishes with the process.
pub fn with_read_only(dir: &Path, cmd: &Command) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped
        .arg("-m")
        .arg("--propagation")
        .arg("private")
        .arg("sh")
        .arg("-c");
    wrapped.arg(r#"mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@""#);
    wrapped.arg(dir).arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    wrapped.stdin(Stdio::null());
    wrapped
}

/// A directory every user may enter and read (a test's own temporary
/// directories are private to root), removed with the guard.
pub fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}
