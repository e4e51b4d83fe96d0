//! The wire: EPMD, the handshake and the framed control messages, behind
//! [`Wire`], implemented with erl_dist ([`ErlDist`]).
//!
//! erl_dist is async (futures-io). Each use here runs on a thread of this
//! crate's own (the acceptor, a connection's reader, a connecting thread)
//! over a blocking `std::net::TcpStream` with timeouts ([`Blocking`]):
//! `futures::executor::block_on` drives the future, and every poll does the
//! blocking read or write at once. No executor thread pool, no runtime
//! worker involved: a busy scheduler never delays a handshake or a tick.
//!
//! What erl_dist leaves to us, handled here: the frame length (its channel
//! allocates whatever length a peer claims; [`read_frame`] caps it), the
//! terms inside (eetf panics or over-allocates on hostile input; each term
//! is bounds-checked by [`crate::term::check`] first), the mandatory
//! distribution flags of a peer (not checked by its handshake), the
//! atom cache and fragments (erl_dist reads and writes pass-through frames
//! only, with no `DIST_HEADER`, `DIST_FRAG_HEADER` or `DIST_FRAG_CONT`: we
//! never offer `DIST_HDR_ATOM_CACHE` or `FRAGMENTS`, so peers send plain
//! pass-through frames, one whole message per frame, and [`read_frame`]
//! refuses a frame with a distribution header or a fragment, naming it).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use erl_dist::DistributionFlags;
use erl_dist::epmd::{EpmdClient, NodeEntry};
use erl_dist::handshake::{ClientSideHandshake, HandshakeStatus, ServerSideHandshake};
use erl_dist::message::Message;
use erl_dist::node::{Creation, LocalNode, NodeName, PeerNode};

use crate::term;

/// A blocking TCP stream seen as futures-io's async traits: every poll is
/// ready, having done the blocking call (bounded by the stream's
/// timeouts).
pub(crate) struct Blocking<'a>(pub(crate) &'a TcpStream);

impl futures::io::AsyncRead for Blocking<'_> {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut stream = self.0;
        Poll::Ready(stream.read(buf).map_err(timeout_as_error))
    }
}

impl futures::io::AsyncWrite for Blocking<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut stream = self.0;
        Poll::Ready(stream.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stream = self.0;
        Poll::Ready(stream.flush())
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn timeout_as_error(error: io::Error) -> io::Error {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, "the peer sent nothing in time")
        }
        _ => error,
    }
}

/// The flags a peer must offer (OTP 25's mandatory set, less what OTP 25
/// itself does not send).
pub(crate) fn mandatory_flags() -> DistributionFlags {
    DistributionFlags::EXTENDED_REFERENCES
        | DistributionFlags::FUN_TAGS
        | DistributionFlags::NEW_FUN_TAGS
        | DistributionFlags::EXTENDED_PIDS_PORTS
        | DistributionFlags::EXPORT_PTR_TAG
        | DistributionFlags::BIT_BINARIES
        | DistributionFlags::NEW_FLOATS
        | DistributionFlags::UTF8_ATOMS
        | DistributionFlags::MAP_TAGS
        | DistributionFlags::BIG_CREATION
        | DistributionFlags::HANDSHAKE_23
}

/// The flags we offer: the mandatory ones, monitors by name, SEND_SENDER,
/// the new link protocol, v4 node containers, and `PUBLISHED` when the
/// node is visible. Never the atom cache or fragments (see the module doc).
pub(crate) fn our_flags(published: bool) -> DistributionFlags {
    let mut flags = mandatory_flags()
        | DistributionFlags::DIST_MONITOR
        | DistributionFlags::DIST_MONITOR_NAME
        | DistributionFlags::SMALL_ATOM_TAGS
        | DistributionFlags::SEND_SENDER
        | DistributionFlags::UNLINK_ID
        | DistributionFlags::V4_NC
        | DistributionFlags::MANDATORY_25_DIGEST;
    if published {
        flags |= DistributionFlags::PUBLISHED;
    }
    flags
}

/// Names the mandatory flags `flags` lacks.
pub(crate) fn missing_flags(flags: DistributionFlags) -> Vec<&'static str> {
    let named = [
        (DistributionFlags::EXTENDED_REFERENCES, "EXTENDED_REFERENCES"),
        (DistributionFlags::FUN_TAGS, "FUN_TAGS"),
        (DistributionFlags::NEW_FUN_TAGS, "NEW_FUN_TAGS"),
        (DistributionFlags::EXTENDED_PIDS_PORTS, "EXTENDED_PIDS_PORTS"),
        (DistributionFlags::EXPORT_PTR_TAG, "EXPORT_PTR_TAG"),
        (DistributionFlags::BIT_BINARIES, "BIT_BINARIES"),
        (DistributionFlags::NEW_FLOATS, "NEW_FLOATS"),
        (DistributionFlags::UTF8_ATOMS, "UTF8_ATOMS"),
        (DistributionFlags::MAP_TAGS, "MAP_TAGS"),
        (DistributionFlags::BIG_CREATION, "BIG_CREATION"),
        (DistributionFlags::HANDSHAKE_23, "HANDSHAKE_23"),
    ];
    named.into_iter().filter(|(flag, _)| !flags.contains(*flag)).map(|(_, name)| name).collect()
}

/// A finished handshake.
pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) creation: u32,
    pub(crate) flags: DistributionFlags,
}

/// Why a handshake failed, for the log line naming the peer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeFailure {
    #[error("the cookie does not match (the peer's digest is wrong)")]
    Cookie,
    #[error("the peer lacks mandatory distribution flags: {0}")]
    Flags(String),
    #[error("{0}")]
    Protocol(String),
}

/// The distribution protocol as this crate uses it: an EPMD client, both
/// handshake sides, and the control-message codec. [`ErlDist`] is the
/// implementation; the rest of the crate sees only this.
pub(crate) trait Wire: Send + Sync + 'static {
    /// Registers `name` with the EPMD at `epmd_port`, listening on
    /// `listen_port`; returns the registration's connection (the name is
    /// ours while it stays open) and the creation EPMD gave.
    fn epmd_register(
        &self,
        epmd_port: u16,
        name: &str,
        listen_port: u16,
        published: bool,
    ) -> Result<(TcpStream, u32), String>;

    /// The distribution port of `name` on the EPMD at `host:epmd_port`.
    fn epmd_port_please(&self, host: &str, epmd_port: u16, name: &str) -> Result<u16, String>;

    /// Accepts a handshake on `stream`.
    fn accept(
        &self,
        stream: &TcpStream,
        local: &LocalNode,
        cookie: &str,
    ) -> Result<Peer, (Option<String>, HandshakeFailure)>;

    /// Makes a handshake on `stream` to `peer_name`.
    fn connect(&self, stream: &TcpStream, local: &LocalNode, cookie: &str) -> Result<Peer, HandshakeFailure>;

    /// Decodes a frame's body (after the pass-through byte 112): the
    /// control message and, for sends, the raw message term (which the
    /// decoded control message also holds).
    fn decode(&self, body: &[u8]) -> Result<(Message, Option<std::ops::Range<usize>>), String>;

    /// Encodes a control message as a whole frame (length included).
    fn encode(&self, message: Message) -> Result<Vec<u8>, String>;
}

/// [`Wire`] with erl_dist.
pub(crate) struct ErlDist;

impl Wire for ErlDist {
    fn epmd_register(
        &self,
        epmd_port: u16,
        name: &str,
        listen_port: u16,
        published: bool,
    ) -> Result<(TcpStream, u32), String> {
        let stream = TcpStream::connect(("127.0.0.1", epmd_port))
            .map_err(|e| format!("connecting to EPMD on port {epmd_port}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let entry = if published {
            NodeEntry::new(name, listen_port)
        } else {
            NodeEntry::new_hidden(name, listen_port)
        };
        let client = EpmdClient::new(Blocking(&stream));
        let (_, creation) = futures::executor::block_on(client.register(entry)).map_err(|e| match e {
            erl_dist::epmd::EpmdError::RegisterNodeError { code } => format!(
                "EPMD refused the name {name:?} (code {code}): a node of that name is running already on this host"
            ),
            other => format!("registering {name:?} with EPMD: {other}"),
        })?;
        stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        Ok((stream, creation.get()))
    }

    fn epmd_port_please(&self, host: &str, epmd_port: u16, name: &str) -> Result<u16, String> {
        let stream = TcpStream::connect((host, epmd_port))
            .map_err(|e| format!("connecting to EPMD on {host}:{epmd_port}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let client = EpmdClient::new(Blocking(&stream));
        match futures::executor::block_on(client.get_node(name)) {
            Ok(Some(entry)) => Ok(entry.port),
            Ok(None) => Err(format!("no node {name:?} is registered with EPMD on {host}")),
            Err(e) => Err(format!("asking EPMD on {host} for {name:?}: {e}")),
        }
    }

    fn accept(
        &self,
        stream: &TcpStream,
        local: &LocalNode,
        cookie: &str,
    ) -> Result<Peer, (Option<String>, HandshakeFailure)> {
        let mut handshake = ServerSideHandshake::new(Blocking(stream), local.clone(), cookie);
        let name =
            futures::executor::block_on(handshake.execute_recv_name()).map_err(|e| (None, protocol(e)))?;
        let Some(name) = name else {
            return Err((
                None,
                HandshakeFailure::Protocol("the peer asked for a dynamic name (not supported)".into()),
            ));
        };
        let peer_name = name.to_string();
        let (_, peer) = futures::executor::block_on(handshake.execute_rest(HandshakeStatus::Ok))
            .map_err(|e| (Some(peer_name.clone()), protocol(e)))?;
        finish(peer).map_err(|f| (Some(peer_name), f))
    }

    fn connect(&self, stream: &TcpStream, local: &LocalNode, cookie: &str) -> Result<Peer, HandshakeFailure> {
        let mut handshake = ClientSideHandshake::new(Blocking(stream), local.clone(), cookie);
        let status = futures::executor::block_on(
            handshake.execute_send_name(erl_dist::LOWEST_DISTRIBUTION_PROTOCOL_VERSION),
        )
        .map_err(protocol)?;
        if !matches!(status, HandshakeStatus::Ok | HandshakeStatus::OkSimultaneous) {
            return Err(HandshakeFailure::Protocol(format!("the peer answered {status:?}")));
        }
        let (_, peer) = futures::executor::block_on(handshake.execute_rest(true)).map_err(protocol)?;
        finish(peer)
    }

    fn decode(&self, body: &[u8]) -> Result<(Message, Option<std::ops::Range<usize>>), String> {
        let control_len = term::check(body).map_err(|e| format!("control message: {e}"))?;
        let message = if control_len < body.len() {
            let len = term::check(&body[control_len..]).map_err(|e| format!("message: {e}"))?;
            if control_len + len != body.len() {
                return Err(format!("{} bytes after the message", body.len() - control_len - len));
            }
            Some(control_len..body.len())
        } else {
            None
        };
        let decoded = Message::read_from(&mut &body[..]).map_err(|e| {
            let text = e.to_string();
            match text.strip_prefix("unsupported distributed operation ") {
                Some(op) => format!("unknown control message (operation {op})"),
                None => format!("control message: {text}"),
            }
        })?;
        Ok((decoded, message))
    }

    fn encode(&self, message: Message) -> Result<Vec<u8>, String> {
        let mut frame = vec![0, 0, 0, 0, 112];
        message.write_into(&mut frame).map_err(|e| format!("encoding a control message: {e}"))?;
        let len = u32::try_from(frame.len() - 4).map_err(|_| "a message over 4 GiB".to_string())?;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        Ok(frame)
    }
}

fn protocol(error: erl_dist::handshake::HandshakeError) -> HandshakeFailure {
    match error {
        erl_dist::handshake::HandshakeError::CookieMismatch => HandshakeFailure::Cookie,
        other => HandshakeFailure::Protocol(other.to_string()),
    }
}

fn finish(peer: PeerNode) -> Result<Peer, HandshakeFailure> {
    let missing = missing_flags(peer.flags);
    if !missing.is_empty() {
        return Err(HandshakeFailure::Flags(missing.join(", ")));
    }
    Ok(Peer {
        name: peer.name.to_string(),
        creation: peer.creation.map_or(0, Creation::get),
        flags: peer.flags,
    })
}

/// Our node as erl_dist's handshake takes it.
pub(crate) fn local_node(name: &str, creation: u32, published: bool) -> Result<LocalNode, String> {
    let name: NodeName = name.parse().map_err(|e| format!("the node name {name:?}: {e}"))?;
    let mut local = LocalNode::new(name, Creation::new(creation));
    local.flags = our_flags(published);
    Ok(local)
}

/// What one read of the connection gave.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A tick (a zero-length frame).
    Tick,
    /// A frame's body after the pass-through byte.
    Body(Vec<u8>),
}

/// Reads one frame, refusing one longer than `max` before allocating it.
pub(crate) fn read_frame(stream: &mut impl Read, max: usize) -> Result<Frame, String> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => "the peer closed the connection".to_string(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "tick timeout".to_string(),
        _ => format!("reading: {e}"),
    })?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Ok(Frame::Tick);
    }
    if len > max {
        return Err(format!("a frame of {len} bytes, over the limit of {max} (max_frame_bytes)"));
    }
    let mut tag = [0u8; 1];
    stream.read_exact(&mut tag).map_err(|e| format!("reading: {e}"))?;
    match tag[0] {
        112 => {}
        // 131 then 68 (DIST_HEADER), 69 (DIST_FRAG_HEADER) or 70
        // (DIST_FRAG_CONT): what a peer sends only when we offered
        // DIST_HDR_ATOM_CACHE or FRAGMENTS, which we never do.
        131 if len >= 2 => {
            let mut kind = [0u8; 1];
            stream.read_exact(&mut kind).map_err(|e| format!("reading: {e}"))?;
            return Err(match kind[0] {
                68 => "a frame with a distribution header (the atom cache was not negotiated)".into(),
                69 | 70 => {
                    "a message fragment (DIST_FRAG_HEADER/DIST_FRAG_CONT: fragments were not negotiated)"
                        .into()
                }
                other => format!("a frame of unknown type 131, {other} (expected pass-through, 112)"),
            });
        }
        other => return Err(format!("a frame of unknown type {other} (expected pass-through, 112)")),
    }
    let mut body = vec![0u8; len - 1];
    stream.read_exact(&mut body).map_err(|e| format!("reading a {len}-byte frame: {e}"))?;
    Ok(Frame::Body(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_over_the_cap_are_refused_before_allocation() {
        let mut huge: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 112];
        assert!(read_frame(&mut huge, 1 << 20).unwrap_err().contains("over the limit"));
        let mut tick: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(read_frame(&mut tick, 10), Ok(Frame::Tick)));
        let mut cached: &[u8] = &[0, 0, 0, 3, 131, 68, 0];
        assert!(read_frame(&mut cached, 10).unwrap_err().contains("distribution header"));
        let mut fragment: &[u8] = &[0, 0, 0, 3, 131, 69, 0];
        assert!(read_frame(&mut fragment, 10).unwrap_err().contains("fragment"));
        let mut unknown: &[u8] = &[0, 0, 0, 2, 7, 0];
        assert!(read_frame(&mut unknown, 10).unwrap_err().contains("unknown type 7"));
    }

    #[test]
    fn control_messages_round_trip_and_unknown_ones_are_named() {
        let wire = ErlDist;
        let from = eetf::Pid::new("a@h", 1, 0, 1);
        let to = eetf::Pid::new("b@h", 2, 0, 1);
        let frame = wire.encode(Message::send_sender(from.clone(), to.clone(), term::atom("hi"))).unwrap();
        let (decoded, message) = wire.decode(&frame[5..]).unwrap();
        assert!(matches!(decoded, Message::SendSender(ref s) if s.to_pid == to));
        let range = message.unwrap();
        assert_eq!(term::decode(&frame[5..][range]).unwrap().0, term::atom("hi"));
        let unknown = term::encode(&term::tuple(vec![eetf::Term::from(eetf::FixInteger { value: 99 })]));
        assert!(wire.decode(&unknown).unwrap_err().contains("unknown control message"));
        assert!(wire.decode(&[131, 108, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(missing_flags(DistributionFlags::HANDSHAKE_23).contains(&"UTF8_ATOMS"));
        assert!(missing_flags(our_flags(false)).is_empty());
    }
}
