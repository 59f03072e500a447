//! The opening of every connection: both preambles, then (unless both ends
//! said `--insecure`) SPAKE2 and key confirmation, and the link the session
//! then runs over. It sits above both the link and the secure transport, so
//! neither needs the other's insides.

use crate::exit_codes::{ExitCode, Failure};
use crate::link::{Link, describe, send_error};
use crate::protocol::{self, Preamble, Reason, Transport};
use crate::secure::{Keys, Role, Secret};

/// Sends our preamble, reads the peer's, and checks we can talk.
pub fn exchange<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    secret: &Secret,
    role: Role,
) -> anyhow::Result<Option<Keys>> {
    let ours = Preamble::ours(secret.transport());
    ours.write_to(stream)
        .and_then(|()| stream.flush())
        .map_err(|e| Failure::network(format!("cannot talk to {peer}"), &e))?;
    let theirs = protocol::read_preamble(stream).map_err(|e| describe(e, peer))?;
    theirs
        .check_compatible()
        .map_err(|e| Failure::new(ExitCode::Network, format!("{peer}: {e}")))?;
    if theirs.transport != ours.transport {
        let (mine, peers) = (ours.transport, theirs.transport);
        if role == Role::Receiver {
            // For a peer that sends before it reads our preamble.
            send_error(
                stream,
                Reason::Auth,
                &transport_mismatch(role.other(), peers, mine),
            );
        }
        return Err(Failure::new(
            ExitCode::Auth,
            format!("{peer}: {}", transport_mismatch(role, mine, peers)),
        )
        .into());
    }
    if ours.transport == Transport::Plain {
        return Ok(None);
    }
    let (sender, receiver) = match role {
        Role::Sender => (ours.encode(), theirs.encode()),
        Role::Receiver => (theirs.encode(), ours.encode()),
    };
    crate::secure::authenticate(stream, role, secret, [&sender, &receiver], peer).map(Some)
}

/// The link a session runs over after [`exchange`]: encrypted records
/// when it agreed on keys, else the stream itself (plaintext).
pub fn secured<'a, S: Link + 'a>(stream: S, keys: Option<Keys>) -> Box<dyn Link + 'a> {
    match keys {
        Some(keys) => Box::new(crate::secure::Encrypted::new(stream, keys)),
        None => Box::new(stream),
    }
}

/// Why two ends that asked for different transports cannot talk, in the
/// words of the end `role` that asked for `mine`.
fn transport_mismatch(role: Role, mine: Transport, theirs: Transport) -> String {
    let other = match role {
        Role::Sender => "the receiver",
        Role::Receiver => "the sender",
    };
    match (mine, theirs) {
        (_, Transport::Plain) => format!(
            "{other} uses plaintext (--insecure), but this end requires a code or key; \
             plaintext needs --insecure on both ends"
        ),
        (Transport::Plain, _) => format!(
            "{other} requires an authenticated, encrypted connection (a code or --key-file); \
             plaintext needs --insecure on both ends"
        ),
        (Transport::Code, _) => {
            format!(
                "{other} uses a key file (--key-file), not a code: give this end the same key file"
            )
        }
        _ => format!("{other} uses a code, not a key file: drop --key-file and give the code"),
    }
}
