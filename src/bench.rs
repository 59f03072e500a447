//! `xfer bench`: a receiver and a sender in one process, over loopback TCP,
//! through the real protocol, pipeline and destination code, on generated
//! data. It measures; it must never take a shortcut the real commands don't.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::config::BenchConfig;
use crate::destination::Target;
use crate::exit_codes::Failure;
use crate::link::Buffered;
use crate::output::{Reporter, rate};
use crate::protocol::{Offer, hex};
use crate::recv::{self, Policy};
use crate::secure::Secret;
use crate::send;
use crate::signals;
use crate::units::human_bytes;

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub fn run(config: &BenchConfig) -> anyhow::Result<()> {
    let reporter = Reporter::new(config.quiet, config.json);
    let workdir = tempfile::Builder::new()
        .prefix("xfer-bench-")
        .tempdir_in(&config.dir)
        .map_err(|e| {
            Failure::local(
                format!("cannot create a directory in '{}'", config.dir.display()),
                &e,
            )
        })?;
    let listener = crate::net::listen(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), 0)?;
    let addr = listener
        .local_addr()
        .context("cannot read the bench listener address")?;
    // A fresh random key, as `--key-file` would give both ends.
    let secret = if config.insecure {
        Secret::Insecure
    } else {
        Secret::Key(
            crate::secure::parse_key(&crate::secure::generate_key()?)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
    };
    let policy = Policy {
        target: Target::Dir(workdir.path().to_path_buf()),
        overwrite: false,
        backups: None,
        secret: secret.clone(),
        limits: crate::config::Limits::default(),
        handshake_timeout: TIMEOUT,
        idle_timeout: TIMEOUT,
        hook: None,
        names: crate::names::Policy::default(),
        keep: crate::destination::Keep::default(),
        batch_files: recv::BATCH_FILES,
    };
    let quiet = Reporter::new(true, false);
    let receiver = std::thread::spawn(move || -> anyhow::Result<Vec<recv::Received>> {
        let (mut stream, peer) = listener.accept().context("bench receiver cannot accept")?;
        let _watch = signals::watch_socket(&stream);
        crate::net::prepare(&stream, TIMEOUT)?;
        recv::serve(
            &mut Buffered::new(&mut stream),
            &peer.to_string(),
            &policy,
            &quiet,
            &mut Vec::new(),
            &mut || {},
        )
    });

    let mtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut entries = Generated {
        size: config.size,
        mtime,
    };
    reporter.info(|| {
        format!(
            "bench: sending {} of generated data over {addr}, receiver writing to {}",
            human_bytes(config.size),
            workdir.path().display()
        )
    });
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).context("bench sender cannot connect")?;
    let _watch = signals::watch_socket(&stream);
    crate::net::prepare(&stream, TIMEOUT)?;
    let options = send::Options {
        resume: false,
        idle_timeout: TIMEOUT,
        report_each: false,
        remove_source_files: false,
    };
    let sent = send::over_link(
        &mut Buffered::new(&mut stream),
        &addr.to_string(),
        &secret,
        &mut entries,
        &options,
        &Reporter::new(config.quiet || config.json, false),
    )?
    .only_sent()?;
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("bench receiver panicked"))??;
    let seconds = started.elapsed().as_secs_f64();

    let [file] = received.as_slice() else {
        bail!("bench receiver got {} files instead of 1", received.len());
    };
    let on_disk = std::fs::metadata(&file.path)
        .context("bench output vanished")?
        .len();
    if file.sha256 != sent.sha256 || on_disk != config.size {
        bail!("bench transfer did not verify: {} bytes on disk", on_disk);
    }
    let mb_per_s = config.size as f64 / seconds / 1e6;
    let transport = if config.insecure {
        "plaintext"
    } else {
        "encrypted (AES-256-GCM)"
    };
    if config.json {
        reporter.event(
            "bench",
            || json!({ "bytes": config.size, "seconds": seconds, "mb_per_s": mb_per_s, "sha256": hex(&sent.sha256), "encrypted": !config.insecure }),
        );
    } else {
        // A reader that went away (`xfer bench | true`) is not an error.
        let line = format!(
            "xfer bench: {} over loopback, {transport}, SHA-256 verified on both ends, in {:.3} s: {}\n",
            human_bytes(config.size),
            seconds,
            rate(config.size, seconds)
        );
        let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), line.as_bytes());
    }
    Ok(())
}

/// The benchmark's one entry: `size` bytes of generated data.
struct Generated {
    size: u64,
    mtime: i64,
}

impl send::Entries for Generated {
    fn count(&self) -> usize {
        1
    }

    fn open(&mut self, _index: usize) -> anyhow::Result<send::Opened> {
        Ok(send::Opened {
            offer: Offer {
                flags: 0,
                size: self.size,
                mode: 0o644,
                mtime_secs: self.mtime,
                mtime_nanos: 0,
                name: b"xfer-bench.bin".to_vec(),
                ..Offer::default()
            },
            source: Some((Box::new(Generator::new(self.size)), "generated data".into())),
            identity: None,
        })
    }

    fn name(&self, _index: usize) -> Vec<u8> {
        "xfer-bench.bin".into()
    }

    fn size_hint(&self, _index: usize) -> u64 {
        self.size
    }
}

/// Endless pseudo-random bytes (xorshift64*), fast enough never to be the
/// bottleneck and incompressible, ending after `remaining` bytes.
struct Generator {
    state: u64,
    remaining: u64,
}

impl Generator {
    fn new(len: u64) -> Self {
        Generator {
            state: 0x9e37_79b9_7f4a_7c15,
            remaining: len,
        }
    }
}

impl send::Source for Generator {
    fn seek_to(&mut self, _offset: u64) -> std::io::Result<bool> {
        Ok(false)
    }
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}
