//! Ports: runtime-owned TCP listeners and connections that turn bytes into
//! messages for a process and back.
//!
//! # What a port owns
//!
//! A port is a listening socket ([`Node::listen`]), an accepted connection,
//! or an outbound one ([`Node::connect`]: its non-blocking connect is seen
//! through by the I/O thread, then it is a connection like an accepted one).
//! The *runtime* owns the socket, not the owner's code: a port has an owner
//! process that receives its events as plain messages ([`PortEvent`]), and
//! the owner can change ([`Node::port_set_owner`]) while the socket stays
//! open. That is how a connection outlives a code version: the upgrade moves
//! the process (or hands the port to a successor) and the client never
//! notices. Every open socket is listed in one table, with its raw fd
//! ([`Node::port_raw_fds`]), so the node can later hand all of them to a new
//! binary (DESIGN §8).
//!
//! Ports are linked to their owner as in Erlang: when the owner exits, its
//! ports close. An owner that is found dead when an event is delivered closes
//! the port too.
//!
//! # Threads
//!
//! Every socket is registered with one mio poller, and whoever holds the
//! poller (the baton) reads, accepts and writes out what could not be
//! written at once. An idle scheduler worker takes it and waits in the
//! poller instead of parking: when a socket becomes ready, that worker reads
//! it, queues the owner on its own run queue and runs the owner next, which
//! answers by writing straight to the socket ([`Node::port_send`]) - a
//! request is read, handled and answered on one thread, with no wake-up of
//! another (as in Redis's event loop). A worker that spins before parking
//! polls too (without waiting). The dedicated thread, `relive-ports`, is the
//! fallback: when no worker has polled for a millisecond (all are busy),
//! it takes the poller and keeps polling until an idle worker asks for it
//! back, so a busy scheduler cannot starve the network. It starts on the
//! first [`Node::listen`] and stops in [`Node::shutdown`], which joins it
//! and closes every socket. Other threads reach the poller through a
//! channel and a `mio::Waker`: [`Node::port_close`] and the owner's exit
//! queue a command and return at once. Writes skip the poller: only what
//! the socket does not take at once is queued, and written when the poller
//! says the socket is writable. Reads take turns: one connection reads at
//! most [`READS_PER_TURN`] buffers, delivered together, before the others
//! get a go.
//!
//! The accept handler ([`ListenOpts::handler`]) runs on whichever thread
//! polls: it should spawn a process and return, never block. Accepted
//! connections have `TCP_NODELAY` set (request/reply protocols want it).
//!
//! # Ordering
//!
//! - Events of one connection reach its owner in the order the bytes
//!   arrived: any `Data`, then one `Closed`. A listener owner gets
//!   `Accepted` before the connection's first `Data` whenever it owns the
//!   connection too.
//! - Bytes given to [`Node::port_send`] from one thread go out in that
//!   order; a partial write keeps the rest buffered and waits for the socket
//!   to become writable again.
//! - Once [`Node::port_set_owner`] returns, every later event goes to the new
//!   owner; events delivered before it stay in the old owner's mailbox.
//! - Once [`Node::port_close`] returns, no more events are delivered. Bytes
//!   already queued are still written (for up to [`CLOSE_LINGER`]) before the
//!   socket closes. No `Closed` event is sent for a close the program asked
//!   for, as with Erlang's `port_close/1`.
//!
//! # Framing
//!
//! [`Framing::Raw`] delivers whatever one `read` returned. [`Framing::Line`]
//! delivers one `Data` per complete line, without its `\n` or `\r\n`, and
//! keeps a partial line buffered; a line longer than
//! [`ListenOpts::max_line`] closes the connection, and a partial line left at
//! end of stream is delivered before `Closed`.
//!
//! # Limits against hostile peers
//!
//! - Backpressure both ways ([`ConnLimits`]): a port stops reading while
//!   its owner has too many of its bytes unhandled, or while too much of
//!   its output is unsent, and a connection whose unsent output keeps
//!   growing closes ([`CloseReason::OutputOverflow`]).
//! - Idle connections close after [`ConnLimits::idle_timeout`]
//!   ([`CloseReason::IdleTimeout`]).
//! - Connection caps: per listener ([`ListenOpts::max_connections`]) and
//!   per node ([`Node::set_max_connections`]); a client over either is
//!   sent [`ListenOpts::refusal`] and closed, never left hanging.
//! - Out of file descriptors, a client waiting to be accepted is not left
//!   hanging: the I/O thread keeps one descriptor in reserve, frees it to
//!   accept the client, sends it [`ListenOpts::refusal`], closes it and
//!   takes the spare again; clients connected already keep being served.
//!   An accept that fails otherwise (or when the spare could not be taken
//!   back) is retried after a pause that doubles up to a second, not at
//!   once. Either is logged at most once a second, with the count of
//!   failures left out.
//!
//! Buffered output and a partial input line are not yet part of what the
//! raw-fd table exposes.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
#[cfg(unix)]
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use parking_lot::Mutex;

use crate::ctx::Ctx;
use crate::message::{Envelope, Message};
use crate::node::{Node, NodeInner, Sched, panic_message};
use crate::pid::Pid;

/// How long a closed connection may keep writing the bytes queued before
/// its close.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Reads one connection may do per turn before the others get a go.
pub const READS_PER_TURN: usize = 16;

/// Connections one listener may accept per turn.
const ACCEPTS_PER_TURN: usize = 64;

/// Size of the I/O thread's read buffer.
const READ_BUFFER: usize = 64 * 1024;

/// Whether a read shorter than the buffer means the socket is drained
/// (true of TCP on Linux's epoll; elsewhere, read until WouldBlock).
const SHORT_READ_DRAINS: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// How long a listener first waits before accepting again after an error
/// such as running out of file descriptors; the wait doubles while the
/// error repeats, up to [`ACCEPT_RETRY_MAX`].
const ACCEPT_RETRY_MIN: Duration = Duration::from_millis(10);

/// The longest wait between accept attempts that keep failing.
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);

/// "Operation now in progress", which `peer_addr` of a connecting socket
/// may report instead of `NotConnected` (mio's advice; its `ErrorKind` is
/// not stable yet).
#[cfg(target_os = "linux")]
const EINPROGRESS: Option<i32> = Some(115);
#[cfg(not(target_os = "linux"))]
const EINPROGRESS: Option<i32> = None;

/// "Too many open files" for the process and for the system: an accept
/// that fails with one of them leaves the client in the kernel's queue.
#[cfg(unix)]
const OUT_OF_DESCRIPTORS: [i32; 2] = [24, 23];
#[cfg(not(unix))]
const OUT_OF_DESCRIPTORS: [i32; 0] = [];

fn out_of_descriptors(err: &io::Error) -> bool {
    err.raw_os_error().is_some_and(|code| OUT_OF_DESCRIPTORS.contains(&code))
}

/// A descriptor held in reserve by the I/O thread, so that out of
/// descriptors it can still accept a waiting client in order to refuse it.
fn spare_descriptor() -> Option<std::fs::File> {
    std::fs::File::open(if cfg!(windows) { "NUL" } else { "/dev/null" }).ok()
}

/// The waker's token; port ids start at 1, so they never collide with it.
const WAKER: Token = Token(0);

/// A port's identifier. Ids are never reused within a node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(u64);

impl PortId {
    /// The raw number (Erlang's port number).
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from [`PortId::as_u64`] (e.g. one read from the CLI);
    /// the API answers [`PortError::Unknown`] for a number never given out.
    pub const fn from_u64(raw: u64) -> PortId {
        PortId(raw)
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#Port<0.{}>", self.0)
    }
}

impl fmt::Debug for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How a connection's bytes are cut into [`PortEvent::Data`] messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// One message per complete line, without the trailing `\n` / `\r\n`.
    #[default]
    Line,
    /// One message per successful read, as the bytes came.
    Raw,
}

/// Chooses the owner of a newly accepted connection: typically spawns a
/// process for it and returns its pid. `None` refuses the connection (it is
/// closed at once). Runs on the thread that polls (see the module doc):
/// it must not block.
pub type AcceptHandler = Arc<dyn Fn(&Node, PortId) -> Option<Pid> + Send + Sync>;

/// Defaults of the per-connection limits ([`ConnLimits`]).
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 512 * 1024 * 1024;
/// Default of [`ConnLimits::max_unhandled_bytes`].
pub const DEFAULT_MAX_UNHANDLED_BYTES: usize = 4 * 1024 * 1024;

/// Limits of one connection, set by its listener ([`ListenOpts::limits`])
/// or by [`ConnectOpts::limits`].
///
/// # Backpressure, both ways
///
/// - Input: the port stops reading while its owner has more than
///   `max_unhandled_bytes` of its bytes unhandled (`Data` events delivered
///   to the mailbox whose handler has not returned yet), and reads again
///   when the owner catches up. The peer's further bytes wait in the
///   kernel, so TCP slows the peer down; nothing is dropped.
/// - Output: the port also stops reading while more than
///   `max_buffered_bytes` of output are unsent (a peer that does not read
///   its replies gets no more requests served), and the connection closes
///   with [`CloseReason::OutputOverflow`] if the owner keeps writing until
///   twice that is unsent. Stopping first keeps a slow but honest reader
///   connected; the hard cap bounds an owner that writes without being
///   asked (a push stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Output bytes that may wait unsent before reading stops (twice this
    /// closes the connection).
    pub max_buffered_bytes: usize,
    /// Bytes delivered to the owner and not yet handled before reading
    /// stops.
    pub max_unhandled_bytes: usize,
    /// A connection with no bytes read or written for this long (and none
    /// waiting for its owner) closes with [`CloseReason::IdleTimeout`].
    pub idle_timeout: Option<Duration>,
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits {
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            max_unhandled_bytes: DEFAULT_MAX_UNHANDLED_BYTES,
            idle_timeout: None,
        }
    }
}

/// Options of [`Node::listen`].
#[derive(Clone)]
pub struct ListenOpts {
    /// How the accepted connections' bytes are framed.
    pub framing: Framing,
    /// Who owns each accepted connection; without one, the listener's owner
    /// does.
    pub handler: Option<AcceptHandler>,
    /// Longest line [`Framing::Line`] accepts (without its newline); a
    /// longer one closes the connection with [`CloseReason::LineTooLong`].
    pub max_line: usize,
    /// Connections of this listener open at once; a client over it is
    /// accepted, sent [`ListenOpts::refusal`] (if any) and closed, as
    /// Redis's `maxclients`. The node's own cap
    /// ([`Node::set_max_connections`]) applies as well.
    pub max_connections: Option<usize>,
    /// Written (best effort, without blocking) to a client refused for a
    /// cap before its close, e.g. `-ERR max number of clients reached\r\n`.
    pub refusal: Vec<u8>,
    /// Limits of each accepted connection.
    pub limits: ConnLimits,
}

impl Default for ListenOpts {
    fn default() -> ListenOpts {
        ListenOpts {
            framing: Framing::Line,
            handler: None,
            max_line: 1024 * 1024,
            max_connections: None,
            refusal: Vec::new(),
            limits: ConnLimits::default(),
        }
    }
}

impl ListenOpts {
    /// Line framing, no handler.
    pub fn line() -> ListenOpts {
        ListenOpts::default()
    }

    /// Raw framing, no handler.
    pub fn raw() -> ListenOpts {
        ListenOpts { framing: Framing::Raw, ..ListenOpts::default() }
    }

    /// Sets the accept handler (see [`AcceptHandler`]).
    pub fn with_handler(
        mut self,
        handler: impl Fn(&Node, PortId) -> Option<Pid> + Send + Sync + 'static,
    ) -> ListenOpts {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Caps the connections open at once; `refusal` is written to a client
    /// over the cap before its close (empty: just closed).
    pub fn with_max_connections(mut self, max: usize, refusal: impl Into<Vec<u8>>) -> ListenOpts {
        self.max_connections = Some(max);
        self.refusal = refusal.into();
        self
    }

    /// Sets the limits of each accepted connection.
    pub fn with_limits(mut self, limits: ConnLimits) -> ListenOpts {
        self.limits = limits;
        self
    }
}

impl fmt::Debug for ListenOpts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenOpts")
            .field("framing", &self.framing)
            .field("handler", &self.handler.as_ref().map(|_| ".."))
            .field("max_line", &self.max_line)
            .field("max_connections", &self.max_connections)
            .field("refusal", &String::from_utf8_lossy(&self.refusal))
            .field("limits", &self.limits)
            .finish()
    }
}

/// Options of [`Node::connect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectOpts {
    /// How the connection's bytes are framed.
    pub framing: Framing,
    /// Longest line [`Framing::Line`] accepts (see [`ListenOpts::max_line`]).
    pub max_line: usize,
    /// The connection's limits.
    pub limits: ConnLimits,
}

impl Default for ConnectOpts {
    fn default() -> ConnectOpts {
        ConnectOpts {
            framing: Framing::Line,
            max_line: ListenOpts::default().max_line,
            limits: ConnLimits::default(),
        }
    }
}

impl ConnectOpts {
    /// Line framing.
    pub fn line() -> ConnectOpts {
        ConnectOpts::default()
    }

    /// Raw framing: one event per read.
    pub fn raw() -> ConnectOpts {
        ConnectOpts { framing: Framing::Raw, ..ConnectOpts::default() }
    }
}

/// What [`Node::listen`] opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    /// The listener's port.
    pub port: PortId,
    /// The address it is bound to (the real port when asked for port 0).
    pub local_addr: SocketAddr,
}

/// One open listener, as [`Node::listeners`] reports it: where the node can
/// be reached and which process answers there. A status report needs the
/// owner to tie an address to a release process, and the bound address
/// because a listener asked for port 0 only knows its real port here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening {
    /// The listener's port.
    pub port: PortId,
    /// Who owns it now (it follows [`Node::port_set_owner`]).
    pub owner: Pid,
    /// The address it is bound to (the real port when asked for port 0).
    pub addr: SocketAddr,
}

/// What a port tells its owner, as a plain message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortEvent {
    /// A listener accepted a connection (sent to the listener's owner). A
    /// connection opened with [`Node::connect`] has no such event.
    Accepted {
        /// The listener.
        listener: PortId,
        /// The new connection's port.
        port: PortId,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// Bytes arrived (framed as the listener says).
    Data {
        /// The connection.
        port: PortId,
        /// One line (without its newline) or one read's bytes.
        bytes: Vec<u8>,
    },
    /// The connection closed by itself; the port is gone.
    Closed {
        /// The connection.
        port: PortId,
        /// Why.
        reason: CloseReason,
    },
}

/// Why a connection closed without being asked to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its end.
    PeerClosed,
    /// A line was longer than the listener's `max_line`.
    LineTooLong {
        /// The limit it broke.
        limit: usize,
    },
    /// More than twice [`ConnLimits::max_buffered_bytes`] of output was
    /// waiting for a peer that does not read it.
    OutputOverflow {
        /// The limit it broke (twice the configured one).
        limit: usize,
    },
    /// No bytes moved either way for [`ConnLimits::idle_timeout`].
    IdleTimeout {
        /// The timeout.
        after: Duration,
    },
    /// Reading or writing failed.
    Error {
        /// The kind of I/O error.
        kind: io::ErrorKind,
        /// The OS's message.
        message: String,
    },
}

impl CloseReason {
    fn io(err: &io::Error) -> CloseReason {
        CloseReason::Error { kind: err.kind(), message: err.to_string() }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("closed by peer"),
            CloseReason::LineTooLong { limit } => {
                write!(f, "line longer than {limit} bytes")
            }
            CloseReason::OutputOverflow { limit } => {
                write!(f, "more than {limit} bytes of output unsent: the peer does not read its replies")
            }
            CloseReason::IdleTimeout { after } => write!(f, "idle timeout: no bytes for {after:?}"),
            CloseReason::Error { message, .. } => write!(f, "i/o error: {message}"),
        }
    }
}

/// Whether a port listens or is a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// A listening socket.
    Listener,
    /// An accepted connection.
    Connection,
}

/// A snapshot of one open port ([`Node::port_info`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// The port.
    pub port: PortId,
    /// Listener or connection.
    pub kind: PortKind,
    /// Who receives its events.
    pub owner: Pid,
    /// The local address.
    pub local_addr: SocketAddr,
    /// The peer, for a connection.
    pub peer: Option<SocketAddr>,
    /// Bytes read from the socket so far.
    pub bytes_in: u64,
    /// Bytes written to the socket so far.
    pub bytes_out: u64,
    /// Output waiting for the socket to take it (see [`ConnLimits`]).
    pub bytes_queued: usize,
    /// Bytes delivered to the owner and not yet handled (see
    /// [`ConnLimits`]).
    pub bytes_unhandled: usize,
}

/// Why a port operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Binding or listening failed.
    #[error("cannot listen on {addr}: {source}; pick another address or port, or stop what holds it")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS's error.
        #[source]
        source: io::Error,
    },
    /// No port ever had this id.
    #[error("no port {0}: it was never opened on this node")]
    Unknown(PortId),
    /// The port has closed.
    #[error("port {0} is closed; open a new connection")]
    Closed(PortId),
    /// Sending on a listener.
    #[error("port {0} is a listener; send on the connections it accepts")]
    NotAConnection(PortId),
    /// Only a listener's owner may change its options.
    #[error(
        "{caller} cannot change the options of listener {port}: it is owned by {owner}; only its owner can"
    )]
    NotListenerOwner {
        /// The listener.
        port: PortId,
        /// Its owner.
        owner: Pid,
        /// Who tried.
        caller: Pid,
    },
    /// Listener options for a connection.
    #[error("port {0} is a connection, not a listener; change the options of the listener that accepted it")]
    NotAListener(PortId),
    /// The would-be owner is not alive.
    #[error("cannot give a port to {0}: no such process (it has exited)")]
    NoProc(Pid),
    /// Only a port's owner may give it away.
    #[error("{caller} cannot give port {port} away: it is owned by {owner}; only its owner can hand it over")]
    NotOwner {
        /// The port.
        port: PortId,
        /// Its owner.
        owner: Pid,
        /// Who tried.
        caller: Pid,
    },
    /// Connecting failed (refused, unreachable, reset).
    #[error("cannot connect to {addr}: {source}; is something listening there?")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The OS's error.
        #[source]
        source: io::Error,
    },
    /// The connection was not made in time.
    #[error("connecting to {addr} timed out after {timeout:?}; is the host reachable?")]
    ConnectTimeout {
        /// The address.
        addr: SocketAddr,
        /// The time allowed.
        timeout: Duration,
    },
    /// The node holds as many connections as it may
    /// ([`Node::set_max_connections`]).
    #[error(
        "cannot open a connection: the node holds its maximum of {max} connections; close some or raise the cap"
    )]
    TooManyConnections {
        /// The cap.
        max: usize,
    },
    /// The node is shutting down.
    #[error("the node is shutting down; ports can no longer be used")]
    ShuttingDown,
    /// The I/O thread stopped unexpectedly.
    #[error("the port I/O thread has stopped; see the log for why, and restart the node")]
    IoThreadGone,
    /// The I/O thread or its poller could not be set up.
    #[error("cannot start port I/O: {0}; the system may be out of threads or file descriptors")]
    Start(#[source] io::Error),
    /// The socket could not be registered with the poller.
    #[error("cannot watch the socket of port {port}: {source}; the system may be out of resources")]
    Register {
        /// The port that was being opened.
        port: PortId,
        /// The OS's error.
        #[source]
        source: io::Error,
    },
}

/// What the table knows of a port; shared by the API and the I/O thread.
struct PortShared {
    id: PortId,
    kind: PortKind,
    local_addr: SocketAddr,
    peer: Option<SocketAddr>,
    #[cfg(unix)]
    fd: RawFd,
    /// Held while an event is delivered and while the owner changes, so an
    /// owner change or close is ordered with deliveries. Lock order: this
    /// before a process's `relations`.
    state: Mutex<PortState>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// A connection's socket and queues (none for a listener).
    conn: Option<Arc<ConnShared>>,
    /// A listener's options, read at each accept: its owner may change
    /// them in place ([`Node::set_listen_opts`]).
    listen_opts: Option<Arc<Mutex<ListenOpts>>>,
}

/// A connection's socket and what both its owner's thread and the I/O
/// thread touch: the owner writes straight to the socket from its own turn
/// while nothing is queued, the I/O thread reads and writes out the rest.
struct ConnShared {
    id: PortId,
    /// Registered for both readiness kinds once (edge-triggered), so
    /// neither side ever re-registers it.
    stream: TcpStream,
    /// Output the socket would not take yet. Whoever leaves it non-empty
    /// has just seen the socket refuse more (or queued a `Fail`), so a
    /// writable event is due.
    out: Mutex<Outbox>,
    /// `out`'s byte count, read without its lock.
    queued: AtomicUsize,
    limits: ConnLimits,
    /// Bytes delivered as `Data` and not yet handled by the owner.
    unhandled: AtomicUsize,
    /// Reading stopped for backpressure; whoever clears it asks the I/O
    /// thread to read again.
    paused: AtomicBool,
    /// When a byte last moved, in milliseconds since [`clock_ms`]'s start.
    last_active: AtomicU64,
    link: Arc<Link>,
    /// Counted against the connection caps until the socket closes.
    _slots: ConnSlots,
}

#[derive(Default)]
struct Outbox {
    /// The front chunk is written from `sent`.
    queue: VecDeque<Vec<u8>>,
    sent: usize,
}

/// Places taken in connection counters, given back when the socket closes.
struct ConnSlots(Vec<Arc<AtomicUsize>>);

impl Drop for ConnSlots {
    fn drop(&mut self) {
        for counter in &self.0 {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Milliseconds since the first call: a cheap clock for idle timeouts.
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl ConnShared {
    fn new(
        id: PortId,
        stream: TcpStream,
        limits: ConnLimits,
        link: Arc<Link>,
        slots: ConnSlots,
    ) -> ConnShared {
        ConnShared {
            id,
            stream,
            out: Mutex::new(Outbox::default()),
            queued: AtomicUsize::new(0),
            limits,
            unhandled: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            last_active: AtomicU64::new(clock_ms()),
            link,
            _slots: slots,
        }
    }

    fn touch(&self) {
        self.last_active.store(clock_ms(), Ordering::Relaxed);
    }

    fn over_limits(&self) -> bool {
        self.unhandled.load(Ordering::SeqCst) > self.limits.max_unhandled_bytes
            || self.queued.load(Ordering::SeqCst) > self.limits.max_buffered_bytes
    }

    /// Stops reading if a limit is passed; true if reading stays stopped.
    /// The flag is set before the limits are checked again, so an owner
    /// that catches up in between either sees the flag (and asks for a
    /// resume) or is seen here.
    fn pause_if_over(&self) -> bool {
        if !self.over_limits() {
            return false;
        }
        self.paused.store(true, Ordering::SeqCst);
        if self.over_limits() {
            return true;
        }
        // Caught up meanwhile. If someone else cleared the flag, its resume
        // is on the way; otherwise keep reading now.
        !self.paused.swap(false, Ordering::SeqCst)
    }

    /// Resumes reading if it was stopped and no limit is passed any more.
    fn resume_if_under(&self) -> bool {
        !self.over_limits() && self.paused.load(Ordering::SeqCst) && self.paused.swap(false, Ordering::SeqCst)
    }

    /// Writes queued output until all is written or the socket is full.
    fn pump(&self, out: &mut Outbox, bytes_out: &AtomicU64) -> io::Result<()> {
        while let Some(front) = out.queue.front() {
            match (&self.stream).write(&front[out.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    self.queued.fetch_sub(n, Ordering::SeqCst);
                    self.touch();
                    out.sent += n;
                    if out.sent == front.len() {
                        out.queue.pop_front();
                        out.sent = 0;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Writes `bytes` from the caller's thread, straight to the socket when
    /// nothing is queued before them; queues what the socket does not take.
    /// An error or an overflow is left to the I/O thread to close on.
    fn write(&self, bytes: Cow<'_, [u8]>, bytes_out: &AtomicU64) {
        let mut out = self.out.lock();
        let mut written = 0;
        let mut failed = None;
        if out.queue.is_empty() {
            while written < bytes.len() {
                match (&self.stream).write(&bytes[written..]) {
                    Ok(0) => {
                        failed = Some(io::Error::from(io::ErrorKind::WriteZero));
                        break;
                    }
                    Ok(n) => written += n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        failed = Some(err);
                        break;
                    }
                }
            }
            if written > 0 {
                bytes_out.fetch_add(written as u64, Ordering::Relaxed);
                self.touch();
            }
        }
        if written < bytes.len() {
            let rest = match bytes {
                Cow::Owned(mut owned) if written == 0 => {
                    owned.shrink_to_fit();
                    owned
                }
                bytes => bytes[written..].to_vec(),
            };
            let queued = self.queued.fetch_add(rest.len(), Ordering::SeqCst) + rest.len();
            out.queue.push_back(rest);
            let hard_limit = self.limits.max_buffered_bytes.saturating_mul(2);
            if failed.is_none() && queued > hard_limit {
                drop(out);
                let _ =
                    self.link.send(Command::Fail(self.id, CloseReason::OutputOverflow { limit: hard_limit }));
                return;
            }
        }
        drop(out);
        if let Some(err) = failed {
            let _ = self.link.send(Command::Fail(self.id, CloseReason::io(&err)));
        }
    }
}

/// Bytes of one `Data` event counted as unhandled until the event is
/// dropped: after the owner's handler returns, or with its mailbox. It
/// travels beside the message ([`Envelope::PortData`]), so the event the
/// owner sees is a plain [`PortEvent`].
pub(crate) struct PortCredit {
    conn: Weak<ConnShared>,
    bytes: usize,
}

impl Drop for PortCredit {
    fn drop(&mut self) {
        // A port already gone needs no resume.
        let Some(conn) = self.conn.upgrade() else {
            return;
        };
        conn.unhandled.fetch_sub(self.bytes, Ordering::SeqCst);
        if conn.resume_if_under() {
            let _ = conn.link.send(Command::Resume(conn.id));
        }
    }
}

struct PortState {
    /// [`Pid::NODE`] while an accepted connection's handler runs.
    owner: Pid,
    /// Set once; afterwards no event is delivered and the API refuses it.
    closed: bool,
}

/// Outcome of delivering events to a port's owner.
enum Delivery {
    Delivered,
    /// The port was closed meanwhile, or its owner is dead: close it
    /// quietly.
    Stop,
}

impl PortShared {
    fn owner(&self) -> Pid {
        self.state.lock().owner
    }

    /// Delivers events in order while holding the state lock; each `Data`
    /// counts as unhandled until its owner has handled it.
    fn deliver(
        &self,
        node: &NodeInner,
        events: impl IntoIterator<Item = PortEvent>,
        sched: Sched<'_>,
    ) -> Delivery {
        let state = self.state.lock();
        if state.closed {
            return Delivery::Stop;
        }
        for event in events {
            let envelope = match (&event, &self.conn) {
                (PortEvent::Data { bytes, .. }, Some(conn)) => {
                    conn.unhandled.fetch_add(bytes.len(), Ordering::SeqCst);
                    let credit = PortCredit { conn: Arc::downgrade(conn), bytes: bytes.len() };
                    Envelope::PortData(Message::new(event), credit)
                }
                _ => Envelope::Info(Message::new(event)),
            };
            if node.deliver(state.owner, envelope, sched).is_err() {
                return Delivery::Stop;
            }
        }
        Delivery::Delivered
    }
}

enum Command {
    Listen(Arc<PortShared>, TcpListener),
    /// A connect in progress, and when to give up on it.
    Connect(Connecting, Instant),
    /// Read again: the owner caught up.
    Resume(PortId),
    /// Close with this reason (a write failed or overflowed on the owner's
    /// thread).
    Fail(PortId, CloseReason),
    Close(PortId),
    Shutdown,
}

/// The way to the I/O thread.
struct Link {
    tx: Sender<Command>,
    /// Wakes whoever polls (the ports thread or an idle worker).
    waker: Arc<Waker>,
    registry: Registry,
    /// Set by a sender that woke the thread and not yet seen by it: later
    /// senders skip the wake-up syscall.
    wake_pending: Arc<AtomicBool>,
}

impl Link {
    fn send(&self, command: Command) -> Result<(), ()> {
        self.tx.send(command).map_err(|_| ())?;
        if !self.wake_pending.swap(true, Ordering::AcqRel)
            && let Err(err) = self.waker.wake()
        {
            tracing::error!(%err, "waking the port I/O thread failed");
        }
        Ok(())
    }
}

/// The node-wide connection cap ([`Node::set_max_connections`]).
struct NodeCaps {
    /// Connections whose socket is open (accepted or outbound).
    live: Arc<AtomicUsize>,
    max: AtomicUsize,
}

impl NodeCaps {
    fn full(&self) -> Option<usize> {
        let max = self.max.load(Ordering::Relaxed);
        (self.live.load(Ordering::Acquire) >= max).then_some(max)
    }
}

#[derive(Default)]
struct Lifecycle {
    thread: Option<JoinHandle<()>>,
    stopped: bool,
}

/// The ports of a node: the table of open ports and the I/O thread.
pub(crate) struct Ports {
    table: Arc<Mutex<HashMap<PortId, Arc<PortShared>>>>,
    next_id: AtomicU64,
    link: OnceLock<Arc<Link>>,
    /// The I/O state, polled by an idle worker or the ports thread.
    baton: OnceLock<Arc<Baton>>,
    caps: Arc<NodeCaps>,
    lifecycle: Mutex<Lifecycle>,
    stopped: AtomicBool,
}

impl Ports {
    pub(crate) fn new() -> Ports {
        Ports {
            table: Arc::default(),
            next_id: AtomicU64::new(1),
            link: OnceLock::new(),
            baton: OnceLock::new(),
            caps: Arc::new(NodeCaps {
                live: Arc::new(AtomicUsize::new(0)),
                max: AtomicUsize::new(usize::MAX),
            }),
            lifecycle: Mutex::new(Lifecycle::default()),
            stopped: AtomicBool::new(false),
        }
    }

    fn gone(&self) -> PortError {
        if self.stopped.load(Ordering::Acquire) { PortError::ShuttingDown } else { PortError::IoThreadGone }
    }

    /// The link to the I/O thread, starting it on first use.
    fn link(&self, node: &Arc<NodeInner>) -> Result<&Arc<Link>, PortError> {
        if let Some(link) = self.link.get() {
            return Ok(link);
        }
        let mut lifecycle = self.lifecycle.lock();
        if lifecycle.stopped {
            return Err(PortError::ShuttingDown);
        }
        if let Some(link) = self.link.get() {
            return Ok(link);
        }
        let poll = Poll::new().map_err(PortError::Start)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(PortError::Start)?);
        let registry = poll.registry().try_clone().map_err(PortError::Start)?;
        let (tx, rx) = mpsc::channel();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let link = Arc::new(Link { tx, waker: waker.clone(), registry, wake_pending: wake_pending.clone() });
        let io = Io {
            poll,
            events: Events::with_capacity(256),
            node: Arc::downgrade(node),
            table: self.table.clone(),
            rx,
            wake_pending,
            link: link.clone(),
            caps: self.caps.clone(),
            socks: HashMap::new(),
            again: Vec::new(),
            timers: Vec::new(),
            idle_sweep: None,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            spare: spare_descriptor(),
            stopped: false,
        };
        let baton = Arc::new(Baton {
            io: Mutex::new(io),
            polled_at: AtomicU64::new(clock_us()),
            blocked_poller: AtomicBool::new(false),
            thread_holds: AtomicBool::new(false),
            wanted: AtomicBool::new(false),
            resting: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            thread: OnceLock::new(),
            waker: waker.clone(),
        });
        let thread_baton = baton.clone();
        let io_node = Arc::downgrade(node);
        let thread = thread::Builder::new()
            .name("relive-ports".into())
            .spawn(move || run_io(thread_baton, io_node))
            .map_err(PortError::Start)?;
        let _ = baton.thread.set(thread.thread().clone());
        lifecycle.thread = Some(thread);
        let _ = node.scheduler.io_waker.set(waker);
        let _ = self.baton.set(baton);
        let _ = self.link.set(link);
        self.link.get().ok_or(PortError::IoThreadGone)
    }

    /// Caps the connections (accepted and outbound) the node holds at once;
    /// `None` lifts the cap.
    pub(crate) fn set_max_connections(&self, max: Option<usize>) {
        self.caps.max.store(max.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Connections whose socket is open now.
    pub(crate) fn connections(&self) -> usize {
        self.caps.live.load(Ordering::Acquire)
    }

    fn alloc_id(&self) -> PortId {
        PortId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// The open (not closed) port `port`.
    fn get(&self, port: PortId) -> Result<Arc<PortShared>, PortError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PortError::ShuttingDown);
        }
        let shared = self.table.lock().get(&port).cloned();
        match shared {
            Some(shared) if !shared.state.lock().closed => Ok(shared),
            Some(_) => Err(PortError::Closed(port)),
            None if port.0 == 0 || port.0 >= self.next_id.load(Ordering::Relaxed) => {
                Err(PortError::Unknown(port))
            }
            None => Err(PortError::Closed(port)),
        }
    }

    pub(crate) fn listen(
        &self,
        node: &Arc<NodeInner>,
        addr: SocketAddr,
        owner: Pid,
        opts: ListenOpts,
    ) -> Result<ListenerInfo, PortError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PortError::ShuttingDown);
        }
        if node.table.get(owner).is_none() {
            return Err(PortError::NoProc(owner));
        }
        let link = self.link(node)?;
        let mut listener = TcpListener::bind(addr).map_err(|source| PortError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| PortError::Bind { addr, source })?;
        let id = self.alloc_id();
        link.registry
            .register(&mut listener, token(id), Interest::READABLE)
            .map_err(|source| PortError::Register { port: id, source })?;
        let shared = Arc::new(PortShared {
            id,
            kind: PortKind::Listener,
            local_addr,
            peer: None,
            #[cfg(unix)]
            fd: listener.as_raw_fd(),
            state: Mutex::new(PortState { owner, closed: false }),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            conn: None,
            listen_opts: Some(Arc::new(Mutex::new(opts))),
        });
        // In the table before the owner's relations, so an owner exiting in
        // between finds the port to close.
        self.table.lock().insert(id, shared.clone());
        {
            let mut state = shared.state.lock();
            if !node.add_port(owner, id.0) {
                state.closed = true;
                drop(state);
                self.table.lock().remove(&id);
                return Err(PortError::NoProc(owner));
            }
        }
        if link.send(Command::Listen(shared.clone(), listener)).is_err() {
            let mut state = shared.state.lock();
            state.closed = true;
            node.remove_port(state.owner, id.0);
            drop(state);
            self.table.lock().remove(&id);
            return Err(self.gone());
        }
        tracing::debug!(port = %id, %local_addr, %owner, "listening");
        Ok(ListenerInfo { port: id, local_addr })
    }

    /// Writes `bytes` on `port` from the caller's thread (see
    /// [`ConnShared::write`]); copies them only if the socket does not take
    /// them all at once (a `Cow::Owned` is queued as it is).
    pub(crate) fn send(&self, port: PortId, bytes: Cow<'_, [u8]>) -> Result<(), PortError> {
        let shared = self.get(port)?;
        let Some(conn) = &shared.conn else {
            return Err(PortError::NotAConnection(port));
        };
        if !bytes.is_empty() {
            conn.write(bytes, &shared.bytes_out);
        }
        Ok(())
    }

    pub(crate) fn close(&self, node: &NodeInner, port: PortId) -> Result<(), PortError> {
        let shared = self.get(port)?;
        {
            let mut state = shared.state.lock();
            if state.closed {
                return Err(PortError::Closed(port));
            }
            state.closed = true;
            node.remove_port(state.owner, port.0);
        }
        self.request_close(port);
        Ok(())
    }

    /// Opens a connection to `addr` for `owner`: the socket is made and
    /// its non-blocking connect started here (neither blocks), the I/O
    /// thread sees it through, and this waits for its word.
    pub(crate) fn connect(
        &self,
        node: &Arc<NodeInner>,
        addr: SocketAddr,
        owner: Pid,
        opts: ConnectOpts,
        timeout: Duration,
    ) -> Result<PortId, PortError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PortError::ShuttingDown);
        }
        if node.table.get(owner).is_none() {
            return Err(PortError::NoProc(owner));
        }
        let link = self.link(node)?.clone();
        let slot = self.caps.live.fetch_add(1, Ordering::AcqRel);
        let slots = ConnSlots(vec![self.caps.live.clone()]);
        let max = self.caps.max.load(Ordering::Relaxed);
        if slot >= max {
            return Err(PortError::TooManyConnections { max });
        }
        let mut stream = TcpStream::connect(addr).map_err(|source| PortError::Connect { addr, source })?;
        let id = self.alloc_id();
        link.registry
            .register(&mut stream, token(id), Interest::READABLE | Interest::WRITABLE)
            .map_err(|source| PortError::Register { port: id, source })?;
        let unspecified = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
        let local_addr = stream.local_addr().unwrap_or(unspecified);
        #[cfg(unix)]
        let fd = stream.as_raw_fd();
        let conn = Arc::new(ConnShared::new(id, stream, opts.limits, link.clone(), slots));
        let shared = Arc::new(PortShared {
            id,
            kind: PortKind::Connection,
            local_addr,
            peer: Some(addr),
            #[cfg(unix)]
            fd,
            state: Mutex::new(PortState { owner, closed: false }),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            conn: Some(conn.clone()),
            listen_opts: None,
        });
        self.table.lock().insert(id, shared.clone());
        {
            let mut state = shared.state.lock();
            if !node.add_port(owner, id.0) {
                state.closed = true;
                drop(state);
                self.table.lock().remove(&id);
                return Err(PortError::NoProc(owner));
            }
        }
        let (done, outcome) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let connecting = Connecting { shared: shared.clone(), conn, opts, done };
        if link.send(Command::Connect(connecting, deadline)).is_err() {
            let mut state = shared.state.lock();
            state.closed = true;
            node.remove_port(state.owner, id.0);
            drop(state);
            self.table.lock().remove(&id);
            return Err(self.gone());
        }
        // The I/O thread answers by the deadline; the margin covers a busy
        // poll loop. Past it, the port is closed so no connection is left
        // that nobody knows of.
        match outcome.recv_timeout(timeout + CONNECT_MARGIN) {
            Ok(Ok(())) => {
                tracing::debug!(port = %id, %addr, %owner, "connected");
                Ok(id)
            }
            Ok(Err(error)) if error.kind() == io::ErrorKind::TimedOut => {
                Err(PortError::ConnectTimeout { addr, timeout })
            }
            Ok(Err(source)) => Err(PortError::Connect { addr, source }),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.close(node, id);
                Err(PortError::ConnectTimeout { addr, timeout })
            }
            // Closed before it connected: its owner exited, someone closed
            // it, or the node is stopping.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if self.stopped.load(Ordering::Acquire) {
                    Err(PortError::ShuttingDown)
                } else {
                    Err(PortError::Closed(id))
                }
            }
        }
    }

    /// Replaces a listener's options in place; with `from`, only if `from`
    /// owns it. Connections it accepts from now on get them (framing, cap,
    /// refusal, limits); connections open already keep theirs.
    pub(crate) fn set_listen_opts(
        &self,
        port: PortId,
        from: Option<Pid>,
        opts: ListenOpts,
    ) -> Result<(), PortError> {
        let shared = self.get(port)?;
        let Some(current) = &shared.listen_opts else {
            return Err(PortError::NotAListener(port));
        };
        // Under the port's lock: no owner change or close slips between
        // the check and the change.
        let state = shared.state.lock();
        if state.closed {
            return Err(PortError::Closed(port));
        }
        if let Some(caller) = from
            && state.owner != caller
        {
            return Err(PortError::NotListenerOwner { port, owner: state.owner, caller });
        }
        tracing::debug!(%port, ?opts, "listener options changed");
        *current.lock() = opts;
        Ok(())
    }

    pub(crate) fn set_owner(&self, node: &NodeInner, port: PortId, owner: Pid) -> Result<(), PortError> {
        self.hand_over(node, port, None, owner)
    }

    /// Gives `port` to `owner`; with `from`, only if `from` owns it now
    /// (checked under the port's lock, so no other change slips between).
    pub(crate) fn hand_over(
        &self,
        node: &NodeInner,
        port: PortId,
        from: Option<Pid>,
        owner: Pid,
    ) -> Result<(), PortError> {
        let shared = self.get(port)?;
        let mut state = shared.state.lock();
        if state.closed {
            return Err(PortError::Closed(port));
        }
        if let Some(caller) = from
            && state.owner != caller
        {
            return Err(PortError::NotOwner { port, owner: state.owner, caller });
        }
        if state.owner == owner {
            return Ok(());
        }
        if !node.add_port(owner, port.0) {
            return Err(PortError::NoProc(owner));
        }
        node.remove_port(state.owner, port.0);
        tracing::debug!(%port, from = %state.owner, to = %owner, "port owner changed");
        state.owner = owner;
        Ok(())
    }

    pub(crate) fn info(&self, port: PortId) -> Option<PortInfo> {
        let shared = self.get(port).ok()?;
        let owner = shared.owner();
        Some(PortInfo {
            port,
            kind: shared.kind,
            owner,
            local_addr: shared.local_addr,
            peer: shared.peer,
            bytes_in: shared.bytes_in.load(Ordering::Relaxed),
            bytes_out: shared.bytes_out.load(Ordering::Relaxed),
            bytes_queued: shared.conn.as_ref().map_or(0, |c| c.queued.load(Ordering::Relaxed)),
            bytes_unhandled: shared.conn.as_ref().map_or(0, |c| c.unhandled.load(Ordering::Relaxed)),
        })
    }

    /// Open ports, by id.
    pub(crate) fn list(&self) -> Vec<PortId> {
        let table = self.table.lock();
        let mut ports: Vec<PortId> =
            table.values().filter(|p| !p.state.lock().closed).map(|p| p.id).collect();
        drop(table);
        ports.sort();
        ports
    }

    /// Open listeners, by id. Read from the table under its lock, never
    /// through the I/O thread: a status query costs the I/O thread nothing
    /// and cannot wait behind a busy poll loop. A listener is gone from it
    /// as soon as it is closed (before the I/O thread drops the socket).
    pub(crate) fn listeners(&self) -> Vec<Listening> {
        if self.stopped.load(Ordering::Acquire) {
            return Vec::new();
        }
        let table = self.table.lock();
        let mut listeners: Vec<Listening> = table
            .values()
            .filter(|p| p.kind == PortKind::Listener)
            .filter_map(|p| {
                let state = p.state.lock();
                (!state.closed).then_some(Listening { port: p.id, owner: state.owner, addr: p.local_addr })
            })
            .collect();
        drop(table);
        listeners.sort_by_key(|l| l.port);
        listeners
    }

    /// The raw fd of every socket the node holds (including connections
    /// still writing out what was queued before their close), by port id.
    /// Each stays valid while its port is in the table.
    #[cfg(unix)]
    pub(crate) fn raw_fds(&self) -> Vec<(PortId, RawFd)> {
        let mut fds: Vec<_> = self.table.lock().values().map(|p| (p.id, p.fd)).collect();
        fds.sort();
        fds
    }

    /// Closes `port` if `owner` still owns it (its owner is exiting).
    pub(crate) fn close_owned(&self, port: u64, owner: Pid) {
        let port = PortId(port);
        let Some(shared) = self.table.lock().get(&port).cloned() else {
            return;
        };
        {
            let mut state = shared.state.lock();
            if state.closed || state.owner != owner {
                return;
            }
            state.closed = true;
        }
        tracing::debug!(%port, %owner, "owner exited; closing its port");
        self.request_close(port);
    }

    fn request_close(&self, port: PortId) {
        if let Some(link) = self.link.get() {
            // A failed send means the thread is gone, and its sockets with it.
            let _ = link.send(Command::Close(port));
        }
    }

    /// Stops the I/O thread, closing every socket, and waits for it.
    /// Idempotent.
    pub(crate) fn shutdown(&self) {
        let thread = {
            let mut lifecycle = self.lifecycle.lock();
            lifecycle.stopped = true;
            self.stopped.store(true, Ordering::Release);
            lifecycle.thread.take()
        };
        if let Some(baton) = self.baton.get() {
            baton.stop();
        }
        if let Some(link) = self.link.get() {
            let _ = link.send(Command::Shutdown);
        }
        if let Some(thread) = thread {
            // The last node handle may be dropped on the I/O thread itself
            // (or a handler may shut the node down): never join oneself.
            if thread.thread().id() != thread::current().id() && thread.join().is_err() {
                tracing::error!("the port I/O thread panicked");
            }
        }
        let ports: Vec<_> = self.table.lock().drain().map(|(_, p)| p).collect();
        for shared in ports {
            shared.state.lock().closed = true;
        }
    }
}

impl Drop for Ports {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn token(id: PortId) -> Token {
    // Ids are counted from 1 and never reach usize::MAX on 64-bit targets.
    Token(id.0 as usize)
}

/// How long [`Ports::connect`] waits for the I/O thread past the connect
/// timeout before it gives up on it.
const CONNECT_MARGIN: Duration = Duration::from_secs(5);

/// A socket as the I/O thread holds it.
enum Sock {
    Listener(ListenerSock),
    Connecting(Connecting),
    Conn(ConnSock),
}

/// An outbound connection whose connect is in progress.
struct Connecting {
    shared: Arc<PortShared>,
    conn: Arc<ConnShared>,
    opts: ConnectOpts,
    /// Told once: connected, or why not.
    done: mpsc::SyncSender<io::Result<()>>,
}

struct ListenerSock {
    socket: TcpListener,
    shared: Arc<PortShared>,
    /// Shared with the table's entry (see `PortShared::listen_opts`).
    opts: Arc<Mutex<ListenOpts>>,
    /// Its connections whose socket is open.
    live: Arc<AtomicUsize>,
    /// How long to wait before accepting again after a failure; doubles
    /// while accepting keeps failing.
    backoff: Duration,
    /// Accept failures, logged at most once a second.
    failures: RateLog,
    /// Clients refused for a cap, logged at most once a second.
    refusals: RateLog,
}

/// At most one log line a second for a repeated event, counting the ones
/// left out.
#[derive(Default)]
struct RateLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    /// `Some(left out since the last line)` when a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < Duration::from_secs(1)) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

struct ConnSock {
    shared: Arc<PortShared>,
    conn: Arc<ConnShared>,
    framing: Framing,
    max_line: usize,
    /// The partial line (Line framing).
    line: Vec<u8>,
    /// Closed, writing out what is left until its linger deadline.
    lingering: bool,
}

impl ConnSock {
    fn new(shared: Arc<PortShared>, conn: Arc<ConnShared>, framing: Framing, max_line: usize) -> ConnSock {
        ConnSock { shared, conn, framing, max_line, line: Vec::new(), lingering: false }
    }

    /// Cuts `data` into events.
    fn frame(&mut self, data: &[u8], events: &mut Vec<PortEvent>) -> Result<(), CloseReason> {
        let port = self.shared.id;
        match self.framing {
            Framing::Raw => events.push(PortEvent::Data { port, bytes: data.to_vec() }),
            Framing::Line => {
                let mut rest = data;
                while let Some(at) = rest.iter().position(|&b| b == b'\n') {
                    let mut line = std::mem::take(&mut self.line);
                    line.extend_from_slice(&rest[..at]);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.len() > self.max_line {
                        return Err(CloseReason::LineTooLong { limit: self.max_line });
                    }
                    events.push(PortEvent::Data { port, bytes: line });
                    rest = &rest[at + 1..];
                }
                self.line.extend_from_slice(rest);
                // One more byte may be the '\r' of a "\r\n" still to come.
                if self.line.len() > self.max_line.saturating_add(1) {
                    return Err(CloseReason::LineTooLong { limit: self.max_line });
                }
            }
        }
        Ok(())
    }
}

/// A deadline the I/O thread waits for.
enum Timer {
    /// Accept again after an error.
    Accept(PortId),
    /// Give up writing out a closed connection.
    Linger(PortId),
    /// Give up a connect still in progress.
    Connect(PortId),
    /// Close the connections idle for longer than their timeout.
    IdleSweep,
}

/// The I/O state: the poller, every socket, timers. Whoever holds it (the
/// [`Baton`]) polls and handles what the poller reports.
struct Io {
    poll: Poll,
    /// What the last poll reported, handled by [`Io::dispatch`].
    events: Events,
    node: Weak<NodeInner>,
    table: Arc<Mutex<HashMap<PortId, Arc<PortShared>>>>,
    rx: Receiver<Command>,
    wake_pending: Arc<AtomicBool>,
    link: Arc<Link>,
    caps: Arc<NodeCaps>,
    socks: HashMap<PortId, Sock>,
    /// Sockets that may have more to read or accept (their turn ran out).
    again: Vec<PortId>,
    timers: Vec<(Instant, Timer)>,
    /// How often idle connections are looked for (the shortest idle
    /// timeout seen, divided by four), once one has a timeout.
    idle_sweep: Option<Duration>,
    buf: Box<[u8]>,
    /// Given up to accept (and refuse) a client when the process is out of
    /// descriptors, then taken again (see [`Io::accept`]).
    spare: Option<std::fs::File>,
    /// Shut down, or failed: nothing is polled any more.
    stopped: bool,
}

/// How often the ports thread looks whether anyone polls: a worker that
/// polled less than this long ago is trusted to poll again.
const POLL_FALLBACK: Duration = Duration::from_millis(1);

/// The longest the ports thread rests while a worker sits in a blocking
/// poll (that worker wakes it when it leaves).
const POLL_REST: Duration = Duration::from_millis(100);

/// Microseconds since the first call (the baton's clock).
fn clock_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Who polls. An idle scheduler worker takes the baton and waits in the
/// poller instead of parking: readiness wakes the very thread that then
/// reads the socket, queues the owner on its own LIFO slot and runs it, so
/// a request is read, handled and answered on one thread with no hop (as
/// Redis's event loop). The ports thread is the fallback: when no worker
/// polled for [`POLL_FALLBACK`] (all are busy), it takes the baton and polls
/// until an idle worker asks for it back.
pub(crate) struct Baton {
    io: Mutex<Io>,
    /// When a poll last returned ([`clock_us`]).
    polled_at: AtomicU64,
    /// A worker holds the baton in a blocking poll.
    blocked_poller: AtomicBool,
    /// The ports thread holds the baton.
    thread_holds: AtomicBool,
    /// An idle worker waits for the baton the ports thread holds.
    wanted: AtomicBool,
    /// The ports thread rests up to [`POLL_REST`]; whoever gives up a
    /// blocking poll wakes it.
    resting: AtomicBool,
    stopped: AtomicBool,
    thread: OnceLock<thread::Thread>,
    waker: Arc<Waker>,
}

impl Baton {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
        let _ = self.waker.wake();
    }

    fn polled_since(&self, ago: Duration) -> bool {
        clock_us().saturating_sub(self.polled_at.load(Ordering::Relaxed)) < ago.as_micros() as u64
    }
}

/// The baton as an idle worker holds it: [`Poller::wait`] polls,
/// [`Poller::dispatch`] handles what came (after the worker left the
/// sleepers, so the owners it queues run on it).
pub(crate) struct Poller<'a> {
    baton: &'a Baton,
    io: parking_lot::MutexGuard<'a, Io>,
    polled: bool,
}

impl Poller<'_> {
    /// Polls, waiting at most `wait` (less if a timer is due sooner);
    /// woken early by any port command or by the scheduler
    /// (`Scheduler::notify`).
    pub(crate) fn wait(&mut self, wait: Duration) {
        if self.io.stopped {
            return;
        }
        let blocking = !wait.is_zero();
        self.baton.blocked_poller.store(blocking, Ordering::SeqCst);
        let result = self.io.poll_events(Some(wait));
        self.baton.blocked_poller.store(false, Ordering::SeqCst);
        self.baton.polled_at.store(clock_us(), Ordering::Relaxed);
        if blocking
            && self.baton.resting.swap(false, Ordering::SeqCst)
            && let Some(thread) = self.baton.thread.get()
        {
            // The ports thread rested while this worker covered the I/O;
            // this worker may now be busy for long.
            thread.unpark();
        }
        match result {
            Ok(()) => self.polled = true,
            Err(err) => {
                self.io.fail(CloseReason::io(&err));
                self.baton.stop();
            }
        }
    }

    /// Handles what the poll reported: reads go to their owners through
    /// `sched` (the worker's own queue).
    pub(crate) fn dispatch(mut self, node: &Arc<NodeInner>, sched: Sched<'_>) {
        if !self.polled || self.io.stopped {
            return;
        }
        let io = &mut *self.io;
        match catch_unwind(AssertUnwindSafe(|| io.dispatch(node, sched))) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop) => self.baton.stop(),
            Err(panic) => {
                tracing::error!(
                    panic = panic_message(panic.as_ref()),
                    "port I/O panicked on a worker; closing every port"
                );
                self.io.fail(CloseReason::Error {
                    kind: io::ErrorKind::Other,
                    message: "the port I/O crashed".into(),
                });
                self.baton.stop();
            }
        }
    }
}

impl Ports {
    /// The baton for an idle worker, unless someone else polls.
    pub(crate) fn poller(&self) -> Option<Poller<'_>> {
        let baton = self.baton.get()?;
        if baton.stopped.load(Ordering::Acquire) {
            return None;
        }
        let io = match baton.io.try_lock() {
            Some(io) => io,
            // The ports thread polls (workers were busy): ask for the baton
            // back and wait the moment it takes to hand it over. Another
            // worker polling is left alone.
            None if !baton.blocked_poller.load(Ordering::SeqCst) && baton.thread_polls() => {
                baton.wanted.store(true, Ordering::SeqCst);
                let _ = baton.waker.wake();
                let io = baton.io.try_lock_for(POLL_FALLBACK)?;
                baton.wanted.store(false, Ordering::SeqCst);
                io
            }
            None => return None,
        };
        // Failed: the ports thread is closing everything.
        if io.stopped {
            return None;
        }
        Some(Poller { baton, io, polled: false })
    }
}

impl Baton {
    /// Whether the ports thread holds the baton now.
    fn thread_polls(&self) -> bool {
        self.thread_holds.load(Ordering::SeqCst)
    }
}

/// The ports thread: the fallback poller (see [`Baton`]), and the one that
/// closes every port when polling fails.
fn run_io(baton: Arc<Baton>, node: Weak<NodeInner>) {
    let mut rest = POLL_FALLBACK;
    loop {
        if baton.stopped.load(Ordering::SeqCst) {
            break;
        }
        if rest > POLL_FALLBACK {
            baton.resting.store(true, Ordering::SeqCst);
        }
        thread::park_timeout(rest);
        baton.resting.store(false, Ordering::SeqCst);
        if baton.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Some(mut io) = baton.io.try_lock() else {
            // A worker holds it: blocked in a poll (it covers the I/O, so
            // rest longer) or handling what it polled.
            rest = if baton.blocked_poller.load(Ordering::SeqCst) { POLL_REST } else { POLL_FALLBACK };
            continue;
        };
        rest = POLL_FALLBACK;
        if baton.polled_since(POLL_FALLBACK) {
            continue;
        }
        let Some(node) = node.upgrade() else {
            break;
        };
        // Nobody polled lately: every worker is busy. Poll here until an
        // idle worker wants the baton.
        baton.thread_holds.store(true, Ordering::SeqCst);
        while !baton.wanted.load(Ordering::SeqCst) && !io.stopped {
            let polled = io.poll_events(Some(POLL_REST));
            baton.polled_at.store(clock_us(), Ordering::Relaxed);
            if let Err(err) = polled {
                io.fail(CloseReason::io(&err));
                baton.stopped.store(true, Ordering::SeqCst);
                break;
            }
            match catch_unwind(AssertUnwindSafe(|| io.dispatch(&node, Sched::Global))) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => {
                    baton.stopped.store(true, Ordering::SeqCst);
                    break;
                }
                Err(panic) => {
                    tracing::error!(
                        panic = panic_message(panic.as_ref()),
                        "the port I/O thread panicked; closing every port"
                    );
                    io.fail(CloseReason::Error {
                        kind: io::ErrorKind::Other,
                        message: "the port I/O thread crashed".into(),
                    });
                    baton.stopped.store(true, Ordering::SeqCst);
                }
            }
        }
        baton.thread_holds.store(false, Ordering::SeqCst);
        drop(io);
        drop(node);
    }
    // Shut down: the sockets close here, not when the last handle goes.
    let mut io = baton.io.lock();
    io.stopped = true;
    io.socks.clear();
    io.again.clear();
    io.timers.clear();
}

enum Flow {
    Continue,
    Stop,
}

impl Io {
    /// Polls once, at most `wait` (less if a timer is due or a socket has
    /// more to read).
    fn poll_events(&mut self, wait: Option<Duration>) -> io::Result<()> {
        let timeout = match (self.timeout(), wait) {
            (Some(due), Some(wait)) => Some(due.min(wait)),
            (due, wait) => due.or(wait),
        };
        match self.poll.poll(&mut self.events, timeout) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                self.events.clear();
                Ok(())
            }
            result => result,
        }
    }

    /// Handles what the last poll reported, the commands, the sockets with
    /// more to read and the timers due.
    fn dispatch(&mut self, node: &Arc<NodeInner>, sched: Sched<'_>) -> Flow {
        if let Flow::Stop = self.commands(node) {
            self.stopped = true;
            return Flow::Stop;
        }
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            if event.token() == WAKER {
                continue;
            }
            let id = PortId(event.token().0 as u64);
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            let writable = event.is_writable() || event.is_write_closed() || event.is_error();
            self.ready(node, id, readable, writable, sched);
        }
        self.events = events;
        self.events.clear();
        for id in std::mem::take(&mut self.again) {
            self.ready(node, id, true, false, sched);
        }
        self.fire_timers(node);
        Flow::Continue
    }

    /// Polling failed: tells every owner its connection is gone and stops.
    fn fail(&mut self, reason: CloseReason) {
        tracing::error!(%reason, "polling sockets failed; closing every port");
        self.stopped = true;
        let ports: Vec<_> = self.table.lock().drain().map(|(_, p)| p).collect();
        self.socks.clear();
        self.again.clear();
        self.timers.clear();
        let Some(node) = self.node.upgrade() else {
            return;
        };
        for shared in ports {
            let mut state = shared.state.lock();
            if state.closed {
                continue;
            }
            state.closed = true;
            if shared.kind == PortKind::Connection {
                let closed = PortEvent::Closed { port: shared.id, reason: reason.clone() };
                let envelope = Envelope::Info(Message::new(closed));
                let _ = node.deliver(state.owner, envelope, Sched::Global);
            }
            node.remove_port(state.owner, shared.id.0);
        }
    }

    fn timeout(&self) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let next = self.timers.iter().map(|(at, _)| *at).min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    fn fire_timers(&mut self, node: &Arc<NodeInner>) {
        if self.timers.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.timers).into_iter().partition(|(at, _)| *at <= now);
        self.timers = later;
        for (_, timer) in due {
            match timer {
                Timer::Accept(id) => self.ready(node, id, true, false, Sched::Global),
                Timer::Linger(id) => {
                    if let Some(Sock::Conn(conn)) = self.socks.get(&id)
                        && conn.lingering
                    {
                        tracing::debug!(port = %id, "gave up writing out a closed connection");
                        self.finish(id);
                    }
                }
                Timer::Connect(id) => {
                    if let Some(Sock::Connecting(_)) = self.socks.get(&id) {
                        let timed_out = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                        self.connect_failed(node, id, timed_out);
                    }
                }
                Timer::IdleSweep => self.sweep_idle(node),
            }
        }
    }

    /// Watches `limits.idle_timeout` of a new connection: the sweep runs
    /// at least four times per shortest timeout.
    fn watch_idle(&mut self, limits: &ConnLimits) {
        let Some(timeout) = limits.idle_timeout else {
            return;
        };
        let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        match self.idle_sweep {
            Some(current) if current <= period => {}
            Some(_) => self.idle_sweep = Some(period),
            None => {
                self.idle_sweep = Some(period);
                self.timers.push((Instant::now() + period, Timer::IdleSweep));
            }
        }
    }

    /// Closes every connection that moved no byte for its idle timeout and
    /// has nothing waiting for its owner (an owner busy with its bytes is
    /// not the peer's idleness).
    fn sweep_idle(&mut self, node: &NodeInner) {
        let now = clock_ms();
        let mut watched = false;
        let mut idle = Vec::new();
        for (id, sock) in &self.socks {
            let Sock::Conn(conn) = sock else { continue };
            let Some(timeout) = conn.conn.limits.idle_timeout else { continue };
            if conn.lingering {
                continue;
            }
            watched = true;
            let quiet = now.saturating_sub(conn.conn.last_active.load(Ordering::Relaxed));
            if u128::from(quiet) >= timeout.as_millis() && conn.conn.unhandled.load(Ordering::SeqCst) == 0 {
                idle.push((*id, timeout));
            }
        }
        for (id, after) in idle {
            self.close(node, id, Some(CloseReason::IdleTimeout { after }), false);
        }
        match self.idle_sweep {
            Some(period) if watched => self.timers.push((Instant::now() + period, Timer::IdleSweep)),
            _ => self.idle_sweep = None,
        }
    }

    fn commands(&mut self, node: &Arc<NodeInner>) -> Flow {
        self.wake_pending.swap(false, Ordering::AcqRel);
        loop {
            let command = match self.rx.try_recv() {
                Ok(command) => command,
                Err(TryRecvError::Empty) => return Flow::Continue,
                Err(TryRecvError::Disconnected) => return Flow::Stop,
            };
            match command {
                Command::Shutdown => return Flow::Stop,
                Command::Listen(shared, socket) => {
                    let id = shared.id;
                    let Some(opts) = shared.listen_opts.clone() else {
                        continue;
                    };
                    let listener = ListenerSock {
                        socket,
                        shared,
                        opts,
                        live: Arc::new(AtomicUsize::new(0)),
                        backoff: Duration::ZERO,
                        failures: RateLog::default(),
                        refusals: RateLog::default(),
                    };
                    self.socks.insert(id, Sock::Listener(listener));
                    // Registered before it got here: connections may wait.
                    self.again.push(id);
                }
                Command::Connect(connecting, deadline) => {
                    let id = connecting.shared.id;
                    self.socks.insert(id, Sock::Connecting(connecting));
                    self.timers.push((deadline, Timer::Connect(id)));
                    // Registered before it got here: its event may be gone.
                    self.again.push(id);
                }
                Command::Resume(id) => self.again.push(id),
                Command::Fail(id, reason) => self.close(node, id, Some(reason), false),
                Command::Close(id) => self.close(node, id, None, true),
            }
        }
    }

    fn ready(&mut self, node: &Arc<NodeInner>, id: PortId, readable: bool, writable: bool, sched: Sched<'_>) {
        match self.socks.get(&id) {
            Some(Sock::Listener(_)) if readable => self.accept(node, id),
            None | Some(Sock::Listener(_)) => {}
            Some(Sock::Connecting(_)) => self.connecting(node, id),
            Some(Sock::Conn(_)) => {
                if writable {
                    self.writable(node, id);
                }
                if readable {
                    self.readable(node, id, sched);
                }
            }
        }
    }

    fn accept(&mut self, node: &Arc<NodeInner>, id: PortId) {
        if self.spare.is_none() {
            // Freed for a refusal and taken by another thread meanwhile.
            self.spare = spare_descriptor();
        }
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(Sock::Listener(listener)) = self.socks.get_mut(&id) else {
                return;
            };
            match listener.socket.accept() {
                Ok((stream, peer)) => {
                    listener.backoff = Duration::ZERO;
                    self.accepted(node, id, stream, peer);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(err) if out_of_descriptors(&err) && self.spare.is_some() => {
                    // The client would wait in the kernel's queue, with no
                    // answer, until a descriptor frees (if ever): free the
                    // spare one to accept it, refuse it, and take the spare
                    // again. Clients connected already keep being served.
                    self.spare = None;
                    let refusal = listener.opts.lock().refusal.clone();
                    let shed = listener.socket.accept().map(|(stream, peer)| {
                        if !refusal.is_empty() {
                            let _ = (&stream).write(&refusal);
                        }
                        peer
                    });
                    // The client's socket is closed by now: its descriptor
                    // becomes the spare again.
                    self.spare = spare_descriptor();
                    match shed {
                        Ok(peer) => {
                            if let Some(suppressed) = listener.failures.allow() {
                                tracing::warn!(port = %id, %peer, %err, suppressed, "connection refused: the node is out of file descriptors (suppressed: like failures left out of the log in the last second)");
                            }
                        }
                        Err(shed) if shed.kind() == io::ErrorKind::WouldBlock => return,
                        Err(shed) => {
                            self.accept_later(id, &shed);
                            return;
                        }
                    }
                }
                Err(err) => {
                    self.accept_later(id, &err);
                    return;
                }
            }
        }
        self.again.push(id);
    }

    /// After an accept error: accept again after a pause, longer each time
    /// it fails again, logging at most once a second. Typically out of file
    /// descriptors: retrying at once would spin (the pending client stays
    /// ready).
    fn accept_later(&mut self, id: PortId, err: &io::Error) {
        let Some(Sock::Listener(listener)) = self.socks.get_mut(&id) else {
            return;
        };
        listener.backoff = (listener.backoff * 2).clamp(ACCEPT_RETRY_MIN, ACCEPT_RETRY_MAX);
        let backoff = listener.backoff;
        if let Some(suppressed) = listener.failures.allow() {
            tracing::warn!(port = %id, %err, ?backoff, suppressed, "accept failed; retrying after a pause (suppressed: like failures left out of the log in the last second)");
        }
        self.timers.push((Instant::now() + backoff, Timer::Accept(id)));
    }

    /// Takes an accepted connection: refused over a cap, else given an
    /// owner and watched.
    fn accepted(&mut self, node: &Arc<NodeInner>, listener_id: PortId, stream: TcpStream, peer: SocketAddr) {
        let Some(Sock::Listener(listener)) = self.socks.get_mut(&listener_id) else {
            return;
        };
        let opts = listener.opts.lock().clone();
        let listener_cap = opts.max_connections.filter(|max| listener.live.load(Ordering::Acquire) >= *max);
        if let Some(max) = listener_cap.or_else(|| self.caps.full()) {
            // Best effort: a client that reads gets the reason, none waits.
            if !opts.refusal.is_empty() {
                let _ = (&stream).write(&opts.refusal);
            }
            if let Some(suppressed) = listener.refusals.allow() {
                let cap = if listener_cap.is_some() { "the listener's" } else { "the node's" };
                tracing::warn!(port = %listener_id, %peer, max, suppressed, "connection refused: {cap} maximum of {max} connections is reached (suppressed: refusals left out of the log in the last second)");
            }
            return;
        }
        let slots = ConnSlots(vec![listener.live.clone(), self.caps.live.clone()]);
        for counter in &slots.0 {
            counter.fetch_add(1, Ordering::AcqRel);
        }
        let listener = listener.shared.clone();
        let listener_owner = {
            let state = listener.state.lock();
            if state.closed {
                return;
            }
            state.owner
        };
        let mut stream = stream;
        let _ = stream.set_nodelay(true);
        let id = node.ports.alloc_id();
        // Both kinds at once, edge-triggered: never registered again.
        if let Err(err) =
            self.poll.registry().register(&mut stream, token(id), Interest::READABLE | Interest::WRITABLE)
        {
            tracing::warn!(port = %id, %err, "cannot watch an accepted connection; closing it");
            return;
        }
        let local_addr = stream.local_addr().unwrap_or(listener.local_addr);
        #[cfg(unix)]
        let fd = stream.as_raw_fd();
        let conn = Arc::new(ConnShared::new(id, stream, opts.limits, self.link.clone(), slots));
        let shared = Arc::new(PortShared {
            id,
            kind: PortKind::Connection,
            local_addr,
            peer: Some(peer),
            #[cfg(unix)]
            fd,
            state: Mutex::new(PortState { owner: Pid::NODE, closed: false }),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            conn: Some(conn.clone()),
            listen_opts: None,
        });
        self.table.lock().insert(id, shared.clone());
        let owner = match &opts.handler {
            None => Some(listener_owner),
            Some(handler) => {
                let handle = Node { inner: node.clone() };
                match catch_unwind(AssertUnwindSafe(|| handler(&handle, id))) {
                    Ok(owner) => owner,
                    Err(panic) => {
                        tracing::error!(listener = %listener.id, panic = panic_message(panic.as_ref()), "accept handler panicked; connection refused");
                        None
                    }
                }
            }
        };
        let owned = {
            let mut state = shared.state.lock();
            match owner {
                _ if state.closed => false,
                // Someone gave the port away while the handler ran.
                _ if state.owner != Pid::NODE => true,
                Some(owner) if node.add_port(owner, id.0) => {
                    state.owner = owner;
                    true
                }
                _ => {
                    state.closed = true;
                    false
                }
            }
        };
        if !owned {
            tracing::debug!(listener = %listener.id, %peer, "connection refused");
            self.table.lock().remove(&id);
            return;
        }
        self.watch_idle(&opts.limits);
        self.socks.insert(id, Sock::Conn(ConnSock::new(shared, conn, opts.framing, opts.max_line)));
        tracing::debug!(listener = %listener.id, port = %id, %peer, "accepted");
        let accepted = PortEvent::Accepted { listener: listener.id, port: id, peer };
        // Told even if the listener was closed meanwhile: the connection
        // was accepted before, and its owner must know what it owns.
        let owner_gone = {
            let state = listener.state.lock();
            let envelope = Envelope::Info(Message::new(accepted));
            node.deliver(state.owner, envelope, Sched::Global).is_err()
        };
        if owner_gone {
            self.close(node, listener.id, None, false);
        }
        // Bytes may have come with the connection (registered after they
        // did): read them now.
        self.again.push(id);
    }

    /// Sees an outbound connect through: connected (it becomes a
    /// connection like an accepted one), failed, or still in progress.
    fn connecting(&mut self, node: &Arc<NodeInner>, id: PortId) {
        let Some(Sock::Connecting(connecting)) = self.socks.get(&id) else {
            return;
        };
        let stream = &connecting.conn.stream;
        let outcome = match stream.take_error() {
            Ok(Some(error)) | Err(error) => Err(error),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => Ok(()),
                Err(error)
                    if error.kind() == io::ErrorKind::NotConnected
                        || (error.raw_os_error().is_some() && error.raw_os_error() == EINPROGRESS) =>
                {
                    return;
                }
                Err(error) => Err(error),
            },
        };
        if let Err(error) = outcome {
            return self.connect_failed(node, id, error);
        }
        let Some(Sock::Connecting(Connecting { shared, conn, opts, done })) = self.socks.remove(&id) else {
            return;
        };
        let _ = conn.stream.set_nodelay(true);
        self.watch_idle(&opts.limits);
        self.socks.insert(id, Sock::Conn(ConnSock::new(shared, conn, opts.framing, opts.max_line)));
        if done.send(Ok(())).is_err() {
            // The caller gave up; it closes the port (queued after this).
            tracing::debug!(port = %id, "connected after the caller gave up");
        }
        // Bytes may have come with the connection: their event is spent.
        self.again.push(id);
    }

    /// A connect that failed: the port is gone, and its caller told why.
    fn connect_failed(&mut self, node: &NodeInner, id: PortId, error: io::Error) {
        let Some(Sock::Connecting(Connecting { shared, done, .. })) = self.socks.get(&id) else {
            return;
        };
        let (shared, done) = (shared.clone(), done.clone());
        {
            let mut state = shared.state.lock();
            if !state.closed {
                state.closed = true;
                node.remove_port(state.owner, id.0);
            }
        }
        tracing::debug!(port = %id, peer = ?shared.peer, %error, "connect failed");
        let _ = done.send(Err(error));
        self.finish(id);
    }

    /// Reads a connection: up to [`READS_PER_TURN`] reads, all delivered
    /// at once, unless a limit stops reading first (see [`ConnLimits`]).
    fn readable(&mut self, node: &Arc<NodeInner>, id: PortId, sched: Sched<'_>) {
        let Some(Sock::Conn(sock)) = self.socks.get_mut(&id) else {
            return;
        };
        if sock.lingering {
            return;
        }
        let conn = sock.conn.clone();
        if conn.pause_if_over() {
            return;
        }
        enum Then {
            Drained,
            TurnOver,
            Pause,
            Close(CloseReason),
        }
        let mut events = Vec::new();
        let mut read = 0;
        let mut then = Then::TurnOver;
        for _ in 0..READS_PER_TURN {
            match (&conn.stream).read(&mut self.buf) {
                Ok(0) => {
                    then = Then::Close(CloseReason::PeerClosed);
                    break;
                }
                Ok(n) => {
                    read += n;
                    if let Err(reason) = sock.frame(&self.buf[..n], &mut events) {
                        then = Then::Close(reason);
                        break;
                    }
                    // What this turn read counts before it is delivered.
                    if conn.unhandled.load(Ordering::SeqCst).saturating_add(read)
                        > conn.limits.max_unhandled_bytes
                    {
                        then = Then::Pause;
                        break;
                    }
                    // A short read emptied the socket's buffer: bytes that
                    // come later raise a new edge (Linux wakes an
                    // edge-triggered poller on every arrival), so the read
                    // that would only say WouldBlock is saved, as Tokio does.
                    if SHORT_READ_DRAINS && n < self.buf.len() {
                        then = Then::Drained;
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    then = Then::Drained;
                    break;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    then = Then::Close(CloseReason::io(&err));
                    break;
                }
            }
        }
        if read > 0 {
            sock.shared.bytes_in.fetch_add(read as u64, Ordering::Relaxed);
            conn.touch();
        }
        if let Then::Close(CloseReason::PeerClosed) = then
            && !sock.line.is_empty()
        {
            let rest = std::mem::take(&mut sock.line);
            events.push(PortEvent::Data { port: id, bytes: rest });
        }
        let delivery = sock.shared.deliver(node, events, sched);
        match (then, delivery) {
            (Then::Close(reason), Delivery::Delivered) => {
                let linger = reason == CloseReason::PeerClosed;
                self.close(node, id, Some(reason), linger);
            }
            (Then::Close(reason), Delivery::Stop) => {
                self.close(node, id, None, reason == CloseReason::PeerClosed);
            }
            (_, Delivery::Stop) => self.close(node, id, None, true),
            (Then::Drained, Delivery::Delivered) => {}
            (Then::TurnOver | Then::Pause, Delivery::Delivered) => {
                // Paused: the credit of the last event handled resumes it.
                if !conn.pause_if_over() {
                    self.again.push(id);
                }
            }
        }
    }

    /// Writes out what owners queued; reading resumes once output is
    /// under its limit again.
    fn writable(&mut self, node: &NodeInner, id: PortId) {
        let Some(Sock::Conn(sock)) = self.socks.get(&id) else {
            return;
        };
        let conn = &sock.conn;
        let written = {
            let mut out = conn.out.lock();
            conn.pump(&mut out, &sock.shared.bytes_out).map(|()| out.queue.is_empty())
        };
        match written {
            Ok(true) if sock.lingering => self.finish(id),
            Ok(_) if sock.lingering => {}
            Ok(_) => {
                if conn.resume_if_under() {
                    self.again.push(id);
                }
            }
            Err(_) if sock.lingering => self.finish(id),
            Err(err) => self.close(node, id, Some(CloseReason::io(&err)), false),
        }
    }

    /// Closes a port on the I/O thread: tells its owner `reason` (if the
    /// port was still open and a reason is given), unlinks it from the
    /// owner, and drops the socket, or with `linger`, first writes out what
    /// is queued.
    fn close(&mut self, node: &NodeInner, id: PortId, reason: Option<CloseReason>, linger: bool) {
        let Some(sock) = self.socks.remove(&id) else {
            return;
        };
        let shared = match &sock {
            Sock::Listener(l) => l.shared.clone(),
            Sock::Connecting(c) => c.shared.clone(),
            Sock::Conn(c) => c.shared.clone(),
        };
        {
            let mut state = shared.state.lock();
            if !state.closed {
                state.closed = true;
                if let (Some(reason), PortKind::Connection) = (reason, shared.kind) {
                    tracing::debug!(port = %id, %reason, "connection closed");
                    let closed = PortEvent::Closed { port: id, reason };
                    let _ = node.deliver(state.owner, Envelope::Info(Message::new(closed)), Sched::Global);
                }
                node.remove_port(state.owner, id.0);
            }
        }
        match sock {
            Sock::Conn(mut conn) if linger && conn.conn.queued.load(Ordering::SeqCst) > 0 => {
                // A writable event is due (the queue is only left non-empty
                // after the socket refused more).
                conn.lingering = true;
                conn.line = Vec::new();
                self.socks.insert(id, Sock::Conn(conn));
                self.timers.push((Instant::now() + CLOSE_LINGER, Timer::Linger(id)));
            }
            sock => {
                self.socks.insert(id, sock);
                self.finish(id);
            }
        }
    }

    /// Drops a closed port's socket and its table entry. A connection's
    /// socket closes (and leaves the poller) with the last reference to
    /// it, at once unless an owner is writing to it this instant.
    fn finish(&mut self, id: PortId) {
        if let Some(Sock::Listener(mut l)) = self.socks.remove(&id) {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        self.table.lock().remove(&id);
    }
}

/// Port operations from inside a handler, as this process.
impl Ctx<'_> {
    /// Opens a TCP listener owned by this process (see [`Node::listen`]).
    ///
    /// # Errors
    /// As [`Node::listen`].
    pub fn listen(&self, addr: SocketAddr, opts: ListenOpts) -> Result<ListenerInfo, PortError> {
        self.node().listen(addr, self.pid(), opts)
    }

    /// Queues bytes on a connection (see [`Node::port_send`]).
    ///
    /// # Errors
    /// As [`Node::port_send`].
    pub fn port_send(&self, port: PortId, bytes: impl Into<Vec<u8>>) -> Result<(), PortError> {
        self.node().port_send(port, bytes)
    }

    /// Writes borrowed bytes on a connection (see
    /// [`Node::port_send_slice`]).
    ///
    /// # Errors
    /// As [`Node::port_send`].
    pub fn port_send_slice(&self, port: PortId, bytes: &[u8]) -> Result<(), PortError> {
        self.node().port_send_slice(port, bytes)
    }

    /// Closes a port (see [`Node::port_close`]).
    ///
    /// # Errors
    /// As [`Node::port_close`].
    pub fn port_close(&self, port: PortId) -> Result<(), PortError> {
        self.node().port_close(port)
    }

    /// Opens a TCP connection owned by this process (see
    /// [`Node::connect`]); this handler waits for it, at most `timeout`.
    ///
    /// # Errors
    /// As [`Node::connect`].
    pub fn connect(
        &self,
        addr: SocketAddr,
        opts: ConnectOpts,
        timeout: Duration,
    ) -> Result<PortId, PortError> {
        self.node().connect(addr, self.pid(), opts, timeout)
    }

    /// Gives a port to another process (see [`Node::port_set_owner`]).
    ///
    /// # Errors
    /// As [`Node::port_set_owner`].
    pub fn port_set_owner(&self, port: PortId, owner: Pid) -> Result<(), PortError> {
        self.node().port_set_owner(port, owner)
    }
}
