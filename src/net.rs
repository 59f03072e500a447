//! Sockets: parsing `HOST:PORT`, connecting with a deadline, listening on
//! both address families, and the per-connection options.
//!
//! Nothing here knows the protocol; it hands connected streams to the
//! session code and maps socket errors onto exit codes with the address named.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::exit_codes::{ExitCode, Failure};

/// Where the sender connects (`HOST:PORT`): a host name or address, and a
/// port. (Where the receiver puts files is `destination::Target`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for PeerAddress {
    type Err = String;

    /// Accepts `name:port`, `1.2.3.4:port` and `[v6addr]:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("'{s}': missing ']' after the IPv6 address"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| format!("'{s}': expected ':PORT' after ']'"))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(format!("'{s}': '{host}' is not an IPv6 address"));
            }
            (host, port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| format!("'{s}': expected HOST:PORT"))?;
            if host.contains(':') {
                return Err(format!(
                    "'{s}': put an IPv6 address in brackets, like [::1]:9000"
                ));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(format!("'{s}': the host is empty"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{s}': '{port}' is not a port number (1-65535)"))?;
        if port == 0 {
            return Err(format!("'{s}': port 0 cannot be connected to"));
        }
        Ok(PeerAddress {
            host: host.to_string(),
            port,
        })
    }
}

/// Connects to the first address of `target` that answers within `timeout`.
pub fn connect(target: &PeerAddress, timeout: Duration) -> Result<TcpStream, Failure> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| Failure::network(format!("cannot resolve '{}'", target.host), &e))?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address found");
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(Failure::network(
        format!("cannot connect to {target}"),
        &last,
    ))
}

/// Listens on `bind`, or on every IPv6 and IPv4 address when `bind` is
/// `None` (falling back to IPv4 alone where IPv6 is disabled).
pub fn listen(bind: Option<IpAddr>, port: u16) -> Result<TcpListener, Failure> {
    let result = match bind {
        Some(ip) => bind_one(SocketAddr::new(ip, port), false),
        None => {
            bind_one(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port), true).or_else(|e| match e
                .kind()
            {
                io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied => Err(e),
                _ => bind_one(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port), false),
            })
        }
    };
    result.map_err(|e| {
        let addr = match bind {
            Some(ip) => SocketAddr::new(ip, port).to_string(),
            None => format!("port {port}"),
        };
        Failure::new(
            if e.kind() == io::ErrorKind::AddrNotAvailable {
                ExitCode::Usage
            } else {
                ExitCode::Network
            },
            format!(
                "cannot listen on {addr}: {}",
                crate::exit_codes::io_reason(&e)
            ),
        )
    })
}

fn bind_one(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// Applies the options every transfer connection gets: no Nagle delay for
/// the small control frames, and the idle deadline on every read and write.
pub fn prepare(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    set_deadline(stream, idle)
}

/// Caps the kernel's receive buffer of `stream` at about `bytes` (at least
/// 16 KiB); best effort.
pub fn limit_receive_buffer(stream: &TcpStream, bytes: u64) {
    let bytes = bytes.clamp(16 << 10, 64 << 20) as usize;
    let _ = socket2::SockRef::from(stream).set_recv_buffer_size(bytes);
}

/// Sets the read and write deadline of `stream`.
pub fn set_deadline(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

/// `HOST:PORT` forms another machine could use to reach a socket bound to
/// `bind` (or everything) on `port`: the bound address, or up to three of
/// [`reachable_names`].
pub fn addresses_for(bind: Option<IpAddr>, port: u16) -> Vec<String> {
    match bind {
        Some(ip) if !ip.is_unspecified() => vec![std::net::SocketAddr::new(ip, port).to_string()],
        _ => reachable_names(3)
            .into_iter()
            .map(|h| format!("{h}:{port}"))
            .collect(),
    }
}

/// Where another machine can plausibly reach this one: the host name, then
/// this machine's own IPv4 and global IPv6 addresses (from /proc; loopback
/// and link-local left out), at most `most` in all. For the command a
/// receiver prints; nothing here is sent anywhere.
pub fn reachable_names(most: usize) -> Vec<String> {
    let mut names = Vec::new();
    let host = rustix::system::uname();
    if let Ok(host) = host.nodename().to_str()
        && !host.is_empty()
        && host != "localhost"
        && host != "(none)"
    {
        names.push(host.to_string());
    }
    // IPv4: the LOCAL /32 entries of the routing trie.
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let lines: Vec<&str> = trie.lines().collect();
        for pair in lines.windows(2) {
            let (Some(addr), true) = (
                pair[0].trim().strip_prefix("|-- "),
                pair[1].contains("/32 host LOCAL"),
            ) else {
                continue;
            };
            match addr.parse::<std::net::Ipv4Addr>() {
                Ok(ip) if !ip.is_loopback() && !names.contains(&ip.to_string()) => {
                    names.push(ip.to_string());
                }
                _ => {}
            }
        }
    }
    // IPv6: global-scope addresses (scope 00).
    if let Ok(list) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in list.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 || fields[3] != "00" || fields[0].len() != 32 {
                continue;
            }
            let groups: Vec<&str> = (0..8).map(|g| &fields[0][g * 4..g * 4 + 4]).collect();
            if let Ok(ip) = groups.join(":").parse::<std::net::Ipv6Addr>()
                && !ip.is_loopback()
            {
                names.push(format!("[{ip}]"));
            }
        }
    }
    names.truncate(most);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Result<PeerAddress, String> {
        s.parse()
    }

    #[test]
    fn parses_names_ipv4_and_bracketed_ipv6() {
        assert_eq!(
            t("example.org:9000").unwrap(),
            PeerAddress {
                host: "example.org".into(),
                port: 9000
            }
        );
        assert_eq!(t("127.0.0.1:1").unwrap().host, "127.0.0.1");
        let v6 = t("[::1]:9000").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:9000");
    }

    #[test]
    fn rejects_malformed_targets_with_a_reason() {
        for bad in [
            "host",
            "host:",
            ":9000",
            "host:0",
            "host:70000",
            "::1:9000",
            "[::1]9000",
            "[nope]:1",
            "[::1",
        ] {
            let err = t(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn listens_on_an_ephemeral_port_and_accepts_ipv4() {
        let l = listen(None, 0).unwrap();
        let port = l.local_addr().unwrap().port();
        assert_ne!(port, 0);
        TcpStream::connect(("127.0.0.1", port)).unwrap();
    }
}
