//! A distributed node: the listener, the connections and their threads,
//! and the [`Remote`] the runtime routes other nodes' pids to.
//!
//! # Threads
//!
//! - `relive-dist-accept`: accepts connections; each gets a thread that
//!   runs the handshake (10 s at most) and then reads.
//! - per connection, a reader (frames in through a buffer, ticks, the
//!   read timeout that declares the peer dead) and a writer (what the
//!   senders left it: bursts, what the socket did not take at once, lazy
//!   frames; a tick when nothing went out for a quarter of
//!   `net_ticktime`).
//! - per outbound connection attempt, a short-lived connecting thread
//!   (EPMD lookup, connect, handshake); what is sent meanwhile waits in
//!   order and goes out once connected.
//!
//! A sender (a scheduler worker, the reader, a caller's thread) writes its
//! frame itself with one non-blocking `send` when nothing waits before it
//! ([`Conn::push`]); otherwise it appends to the connection's outbox for
//! the writer. Nothing here waits for a worker, and a worker never waits
//! for a socket.
//!
//! # State
//!
//! One lock over every peer's record: the connection (or the frames waiting
//! for it), and the links and monitors that cross it, so that a lost
//! connection can tell every local process involved (`noconnection`). The
//! lock is never held while calling into the runtime (which may call back
//! through [`Remote`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use eetf::Term;
use erl_dist::message::Message as Control;
use erl_dist::node::LocalNode;
use erl_dist::term::PidOrAtom;
use parking_lot::{Condvar, Mutex};
use relive_runtime::{
    Actor, Ctx, Down, ExitReason, ExternalTerm, Message, ModuleReply, MonitorRef, Node, Payload, Pid, Remote,
    RemoteMessage, ReplyTo,
};

use crate::term::{self, Pids};
use crate::wire::{ErlDist, Frame, Wire};
use crate::{DistConfig, DistError, NodeEvent};

/// How long a handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Incoming handshakes under way at once; more connections are closed.
const MAX_HANDSHAKES: usize = 64;

/// An established connection.
pub(crate) struct Conn {
    id: u64,
    peer: Arc<str>,
    creation: u32,
    send_sender: bool,
    /// What waits to be written, for the writer thread.
    out: Mutex<Outbox>,
    /// Wakes the writer thread: bytes to write, or the connection closed.
    wake: Condvar,
    stream: TcpStream,
}

/// Frames pushed closer together than this are a burst: after the first,
/// they go to the writer thread, which writes them in few large writes
/// (what a peer reads fastest) rather than one `send` each.
const BURST_GAP: Duration = Duration::from_micros(20);

/// The longest a [`Conn::push_lazy`] frame waits for a frame to share a
/// write with.
const LAZY_DELAY: Duration = Duration::from_millis(2);

/// A connection's outgoing bytes not written yet.
struct Outbox {
    /// Whole frames (or the tail of one a short write left), in order.
    buf: Vec<u8>,
    /// `buf` holds a frame that must go now (not only lazy ones).
    urgent: bool,
    /// When the oldest lazy frame in `buf` came.
    lazy_since: Option<Instant>,
    /// The writer thread is writing bytes it took from `buf`.
    writing: bool,
    /// When the last frame was pushed (not lazily).
    last_push: Instant,
    /// When bytes last went out (ticks are sent only on a silent link).
    last_write: Instant,
    closed: bool,
}

impl Outbox {
    fn new() -> Outbox {
        let long_ago = Instant::now().checked_sub(Duration::from_secs(1)).unwrap_or_else(Instant::now);
        Outbox {
            buf: Vec::new(),
            urgent: false,
            lazy_since: None,
            writing: false,
            last_push: long_ago,
            last_write: Instant::now(),
            closed: false,
        }
    }
}

impl Conn {
    /// Queues `frame` (one or more whole frames) on the connection, to go
    /// now. When the writer thread is idle and this is no burst, it is
    /// written from the calling thread, with whatever lazy frames wait, in
    /// one `send` with `MSG_DONTWAIT` (no thread hop); what the socket does
    /// not take at once goes to the writer thread. Never blocks on the
    /// network. `false` once the connection is closed.
    fn push(&self, frame: &[u8]) -> bool {
        let mut out = self.out.lock();
        if out.closed {
            return false;
        }
        let now = Instant::now();
        let burst = now.duration_since(out.last_push) < BURST_GAP;
        out.last_push = now;
        if out.writing || burst {
            out.buf.extend_from_slice(frame);
            out.urgent = true;
            drop(out);
            self.wake.notify_one();
            return true;
        }
        let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
        let lazy = !out.buf.is_empty();
        if lazy {
            out.buf.extend_from_slice(frame);
        }
        let bytes: &[u8] = if lazy { &out.buf } else { frame };
        let sent = match rustix::net::send(&self.stream, bytes, flags) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => 0,
            Err(error) => {
                tracing::debug!(peer = %self.peer, "writing to the connection failed: {error}");
                out.closed = true;
                drop(out);
                self.wake.notify_one();
                let _ = self.stream.shutdown(Shutdown::Both);
                return false;
            }
        };
        if sent > 0 {
            out.last_write = now;
        }
        if lazy {
            out.buf.drain(..sent);
        } else if sent < frame.len() {
            out.buf.extend_from_slice(&frame[sent..]);
        }
        out.lazy_since = None;
        if out.buf.is_empty() {
            return true;
        }
        out.urgent = true;
        drop(out);
        self.wake.notify_one();
        true
    }

    /// Queues `frame` to go with the next frame pushed, or within
    /// [`LAZY_DELAY`]: for what nobody waits on (a call's DEMONITOR_P after
    /// its reply), so that it costs no write of its own.
    fn push_lazy(&self, frame: &[u8]) -> bool {
        let mut out = self.out.lock();
        if out.closed {
            return false;
        }
        out.buf.extend_from_slice(frame);
        if out.lazy_since.is_none() {
            out.lazy_since = Some(Instant::now());
            drop(out);
            self.wake.notify_one();
        }
        true
    }

    /// Closes the connection: the writer thread ends, the reader sees the
    /// socket shut.
    fn close(&self) {
        self.out.lock().closed = true;
        self.wake.notify_one();
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// What we keep per peer node.
#[derive(Default)]
struct PeerState {
    conn: Option<Arc<Conn>>,
    /// Frames sent while the connection is being made, in order.
    pending: Vec<Vec<u8>>,
    /// Links across this connection: (local, remote).
    links: HashSet<(Pid, Pid)>,
    /// Local processes monitoring remote ones, by our monitor id.
    local_monitors: HashMap<u64, (Pid, MonitorRef)>,
    /// Remote processes monitoring local ones, by the runtime monitor id:
    /// the peer's reference, what it named, the watcher.
    remote_monitors: HashMap<u64, (eetf::Reference, PidOrAtom, Pid)>,
    /// The same monitors by the peer's reference id.
    remote_refs: HashMap<Vec<u32>, MonitorRef>,
}

pub(crate) struct Inner {
    pub(crate) wire: Box<dyn Wire>,
    pub(crate) node: Node,
    pub(crate) config: DistConfig,
    pub(crate) name: Arc<str>,
    pub(crate) creation: u32,
    pub(crate) pids: Pids,
    pub(crate) local: LocalNode,
    pub(crate) port: u16,
    peers: Mutex<HashMap<Arc<str>, PeerState>>,
    /// Downs of remote monitors that fired before the monitor was recorded
    /// (a target already dead fires inside `monitor_for_remote`).
    early_downs: Mutex<HashMap<u64, Down>>,
    /// Calls from local processes to other nodes' (`Remote::call`), by our
    /// reference id (their tag and their monitor's reference).
    pending_calls: Mutex<HashMap<u64, PendingCall>>,
    /// The local process other nodes' replies to those calls go to.
    router: std::sync::OnceLock<Pid>,
    /// Monitors by name made by `call`, by our reference id.
    name_monitors: Mutex<HashMap<u64, NameMonitor>>,
    node_watchers: Mutex<Vec<Pid>>,
    next_id: AtomicU64,
    pub(crate) stopping: AtomicBool,
    /// Incoming handshakes under way.
    handshakes: std::sync::atomic::AtomicUsize,
    /// The EPMD registration: our name is ours while it stays open.
    epmd: Mutex<Option<TcpStream>>,
    listener: Mutex<Option<TcpListener>>,
}

/// The runtime's hook: a weak handle, so the node does not keep the
/// distribution alive after it stopped.
struct Hook(Weak<Inner>);

impl Inner {
    pub(crate) fn start(node: Node, config: DistConfig) -> Result<Arc<Inner>, DistError> {
        let (alive, host) = config.split_name()?;
        let name: Arc<str> = format!("{alive}@{host}").into();
        crate::epmd::ensure_running(config.epmd_port, config.start_epmd)?;
        let listener = TcpListener::bind((config.listen_address, config.listen_port))
            .map_err(|e| DistError::Listen(format!("binding the distribution port: {e}")))?;
        let port = listener.local_addr().map_err(|e| DistError::Listen(e.to_string()))?.port();
        let wire: Box<dyn Wire> = Box::new(ErlDist);
        let (epmd, creation) =
            wire.epmd_register(config.epmd_port, &alive, port, config.published).map_err(DistError::Epmd)?;
        let local = crate::wire::local_node(&name, creation, config.published).map_err(DistError::Name)?;
        let inner = Arc::new(Inner {
            wire,
            node: node.clone(),
            pids: Pids { node: name.clone(), creation },
            name,
            creation,
            local,
            port,
            config,
            peers: Mutex::new(HashMap::new()),
            early_downs: Mutex::new(HashMap::new()),
            name_monitors: Mutex::new(HashMap::new()),
            pending_calls: Mutex::new(HashMap::new()),
            router: std::sync::OnceLock::new(),
            node_watchers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            handshakes: std::sync::atomic::AtomicUsize::new(0),
            epmd: Mutex::new(Some(epmd)),
            listener: Mutex::new(Some(listener.try_clone().map_err(|e| DistError::Listen(e.to_string()))?)),
        });
        if node.set_remote(Arc::new(Hook(Arc::downgrade(&inner)))).is_err() {
            return Err(DistError::AlreadyDistributed);
        }
        let kernel =
            node.spawn(NetKernel).map_err(|e| DistError::Listen(format!("starting net_kernel: {e}")))?;
        if let Err(e) = node.register("net_kernel", kernel) {
            return Err(DistError::Listen(format!("registering net_kernel: {e}")));
        }
        let router = node
            .spawn(Router(Arc::downgrade(&inner)))
            .map_err(|e| DistError::Listen(format!("starting the call router: {e}")))?;
        let _ = inner.router.set(router);
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("relive-dist-accept".into())
            .spawn(move || accept_loop(listener, weak))
            .map_err(|e| DistError::Listen(format!("starting the acceptor thread: {e}")))?;
        tracing::info!(node = %inner.name, port, creation, published = inner.config.published, "distribution started");
        Ok(inner)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Our reference for monitor `id`.
    fn reference(&self, id: u64) -> eetf::Reference {
        eetf::Reference {
            node: (*self.name).into(),
            id: vec![id as u32, (id >> 32) as u32, 0],
            creation: self.creation,
        }
    }

    fn id_of(reference: &eetf::Reference) -> u64 {
        let low = reference.id.first().copied().unwrap_or(0);
        let high = reference.id.get(1).copied().unwrap_or(0);
        u64::from(low) | (u64::from(high) << 32)
    }

    pub(crate) fn connected(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.peers.lock().iter().filter(|(_, p)| p.conn.is_some()).map(|(n, _)| n.to_string()).collect();
        names.sort();
        names
    }

    pub(crate) fn watch_nodes(&self, pid: Pid) {
        self.node_watchers.lock().push(pid);
    }

    /// Queues a frame for `peer`, connecting first if needed. `false` if it
    /// could not be queued (we are stopping, or the name is not a node name).
    pub(crate) fn send_frame(self: &Arc<Self>, peer: &str, frame: Vec<u8>) -> bool {
        self.queue_frame(peer, frame, false)
    }

    /// [`Inner::send_frame`] for a frame nobody waits on: it goes out with
    /// the next frame to `peer` or a little later ([`Conn::push_lazy`]).
    fn send_frame_lazy(self: &Arc<Self>, peer: &str, frame: Vec<u8>) -> bool {
        self.queue_frame(peer, frame, true)
    }

    fn queue_frame(self: &Arc<Self>, peer: &str, frame: Vec<u8>, lazy: bool) -> bool {
        if self.stopping.load(Ordering::Relaxed) || *peer == *self.name {
            return false;
        }
        let mut peers = self.peers.lock();
        if let Some(state) = peers.get_mut(peer) {
            match &state.conn {
                Some(conn) => {
                    let conn = conn.clone();
                    drop(peers);
                    return if lazy { conn.push_lazy(&frame) } else { conn.push(&frame) };
                }
                None => {
                    state.pending.push(frame);
                    return true;
                }
            }
        }
        let Some((alive, host)) = peer.split_once('@') else {
            return false;
        };
        let key: Arc<str> = peer.into();
        peers.insert(key.clone(), PeerState { pending: vec![frame], ..Default::default() });
        drop(peers);
        let (alive, host) = (alive.to_string(), host.to_string());
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("relive-dist-connect".into()).spawn(move || {
            if let Some(inner) = weak.upgrade() {
                inner.connect(key, &alive, &host);
            }
        });
        spawned.is_ok()
    }

    fn connect(self: &Arc<Self>, peer: Arc<str>, alive: &str, host: &str) {
        let attempt = || -> Result<(TcpStream, crate::wire::Peer), String> {
            let port = self.wire.epmd_port_please(host, self.config.epmd_port, alive)?;
            let stream =
                TcpStream::connect((host, port)).map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
            stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let handshake =
                self.wire.connect(&stream, &self.local, &self.config.cookie).map_err(|e| e.to_string())?;
            if handshake.name != *peer {
                return Err(format!("the node there is {}, not {peer}", handshake.name));
            }
            Ok((stream, handshake))
        };
        match attempt() {
            Ok((stream, handshake)) => self.established(stream, handshake),
            Err(why) => {
                tracing::warn!(node = %self.name, peer = %peer, "could not connect to {peer}: {why}");
                let mut peers = self.peers.lock();
                if peers.get(&peer).is_some_and(|p| p.conn.is_none()) {
                    let state = peers.remove(&peer).expect("present");
                    drop(peers);
                    self.tear_down(&peer, state, false);
                }
            }
        }
    }

    /// A handshake finished (either side): start the connection's threads.
    fn established(self: &Arc<Self>, stream: TcpStream, handshake: crate::wire::Peer) {
        let peer: Arc<str> = handshake.name.as_str().into();
        let Ok(read_half) = stream.try_clone() else { return };
        let conn = Arc::new(Conn {
            id: self.next_id(),
            peer: peer.clone(),
            creation: handshake.creation,
            send_sender: handshake.flags.contains(erl_dist::DistributionFlags::SEND_SENDER),
            out: Mutex::new(Outbox::new()),
            wake: Condvar::new(),
            stream,
        });
        let replaced = {
            let mut peers = self.peers.lock();
            let state = peers.entry(peer.clone()).or_default();
            let replaced = state.conn.replace(conn.clone());
            for frame in state.pending.drain(..) {
                conn.push(&frame);
            }
            replaced
        };
        if let Some(old) = replaced {
            // A new connection from a node we had one with: it restarted, or
            // both sides connected at once. The old one goes.
            old.close();
        }
        let tick = self.config.net_ticktime / 4;
        let writer_conn = conn.clone();
        let spawned = std::thread::Builder::new()
            .name("relive-dist-write".into())
            .spawn(move || write_loop(&writer_conn, tick));
        if spawned.is_err() {
            conn.close();
        }
        let weak = Arc::downgrade(self);
        let reader_conn = conn.clone();
        let spawned = std::thread::Builder::new().name("relive-dist-read".into()).stack_size(8 << 20).spawn(
            move || {
                read_loop(read_half, weak, reader_conn);
            },
        );
        if spawned.is_err() {
            conn.close();
        }
        tracing::info!(node = %self.name, peer = %peer, creation = conn.creation, "connected to {peer}");
        for watcher in self.node_watchers.lock().clone() {
            let _ = self.node.send(watcher, NodeEvent::Up(peer.to_string()));
        }
    }

    /// The connection `conn` ended: everything that crossed it learns
    /// `noconnection`.
    fn connection_lost(self: &Arc<Self>, conn: &Conn, why: &str) {
        conn.close();
        let state = {
            let mut peers = self.peers.lock();
            match peers.get(&conn.peer) {
                Some(state) if state.conn.as_ref().is_some_and(|c| c.id == conn.id) => {
                    peers.remove(&conn.peer)
                }
                _ => None,
            }
        };
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        tracing::warn!(node = %self.name, peer = %conn.peer, "connection to {} closed: {why}", conn.peer);
        if let Some(state) = state {
            self.tear_down(&conn.peer, state, true);
        }
    }

    fn tear_down(&self, peer: &str, state: PeerState, was_up: bool) {
        let reason = ExitReason::error("noconnection");
        for (local, remote) in state.links {
            self.node.exit_from_remote(remote, local, reason.clone(), true);
        }
        for (_, (watcher, monitor)) in state.local_monitors {
            self.node.remote_down(watcher, Down { monitor, pid: monitor.target(), reason: reason.clone() });
        }
        for monitor in state.remote_refs.into_values() {
            self.node.demonitor_for_remote(monitor);
        }
        let pending: Vec<PendingCall> = {
            let mut calls = self.pending_calls.lock();
            let ids: Vec<u64> = calls.iter().filter(|(_, c)| *c.peer == *peer).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| calls.remove(&id)).collect()
        };
        for call in pending {
            call.reply.reply_with::<ModuleReply>(Err(format!("{}: noconnection", call.target)));
        }
        let calls: Vec<_> = {
            let mut monitors = self.name_monitors.lock();
            let ids: Vec<u64> =
                monitors.iter().filter(|(_, (node, _))| **node == *peer).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| monitors.remove(&id)).collect()
        };
        for (_, tx) in calls {
            let _ = tx.send(CallEvent::Down(reason.clone()));
        }
        if was_up {
            for watcher in self.node_watchers.lock().clone() {
                let _ = self.node.send(watcher, NodeEvent::Down(peer.to_string(), "noconnection".into()));
            }
        }
    }

    fn encode(&self, control: Control) -> Option<Vec<u8>> {
        match self.wire.encode(control) {
            Ok(frame) => Some(frame),
            Err(why) => {
                tracing::warn!(node = %self.name, "dropped an outgoing message: {why}");
                None
            }
        }
    }

    fn pid_term(&self, pid: Pid) -> eetf::Pid {
        self.pids.to_term(pid)
    }

    /// The node of an external pid, or `None` for a pid of this node's
    /// earlier life (it names no process).
    fn node_of(&self, pid: Pid) -> Option<Arc<str>> {
        pid.external().map(|e| e.node).filter(|node| **node != *self.name)
    }

    /// The term a local message crosses as.
    fn message_term(&self, message: &Message) -> Result<Term, String> {
        if let Some(payload) = message.downcast_ref::<Payload>() {
            return term::from_msgpack(&payload.0, &self.pids).map_err(|e| e.0);
        }
        if let Some(external) = message.downcast_ref::<ExternalTerm>() {
            return term::decode(&external.0).map(|(t, _)| t).map_err(|e| e.0);
        }
        if let Some(remote) = message.downcast_ref::<RemoteMessage>() {
            return term::decode(&remote.term.0).map(|(t, _)| t).map_err(|e| e.0);
        }
        if let Some(reply) = message.downcast_ref::<ModuleReply>() {
            return Ok(match reply {
                Ok(payload) => term::from_msgpack(&payload.0, &self.pids).map_err(|e| e.0)?,
                Err(text) => term::tuple(vec![term::atom("error"), term::binary(text.as_bytes())]),
            });
        }
        Err("a message of a type that does not cross nodes (send a relive_runtime::ExternalTerm or a MessagePack Payload)".into())
    }

    /// The encoded term (version byte first) a local message crosses as,
    /// borrowed when it is one already (no decoding and re-encoding), and
    /// wrapped as `{'$gen_cast', Message}` for a cast.
    fn message_bytes<'m>(&self, message: &'m Message, cast: bool) -> Result<Cow<'m, [u8]>, String> {
        let raw = message
            .downcast_ref::<ExternalTerm>()
            .map(|external| &external.0)
            .or_else(|| message.downcast_ref::<RemoteMessage>().map(|remote| &remote.term.0));
        let bytes = match raw {
            Some(raw) => {
                // A native actor's bytes: checked, so a peer never gets a
                // malformed term from us.
                let len = term::check(raw).map_err(|e| e.0)?;
                if len != raw.len() {
                    return Err(format!("{} bytes after the term", raw.len() - len));
                }
                Cow::Borrowed(raw.as_slice())
            }
            None => Cow::Owned(term::encode(&self.message_term(message)?)),
        };
        if !cast {
            return Ok(bytes);
        }
        Ok(Cow::Owned(splice_tuple(&[GEN_CAST_ATOM, &bytes[1..]])))
    }

    // -------------------------------------------------------- from the wire

    fn handle(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        control: Control,
        body: &[u8],
        message: Option<std::ops::Range<usize>>,
    ) {
        let raw = |range: &Option<std::ops::Range<usize>>| {
            range.clone().map(|r| body[r].to_vec()).unwrap_or_default()
        };
        match control {
            Control::Tick => {}
            Control::Send(s) => self.deliver(conn, None, PidOrAtom::Pid(s.to_pid), s.message, raw(&message)),
            Control::SendTt(s) => {
                self.deliver(conn, None, PidOrAtom::Pid(s.to_pid), s.message, raw(&message))
            }
            Control::SendSender(s) => {
                let from = Some(self.pids.from_term(&s.from_pid));
                self.deliver(conn, from, PidOrAtom::Pid(s.to_pid), s.message, raw(&message))
            }
            Control::SendSenderTt(s) => {
                let from = Some(self.pids.from_term(&s.from_pid));
                self.deliver(conn, from, PidOrAtom::Pid(s.to_pid), s.message, raw(&message))
            }
            Control::RegSend(s) => {
                let from = Some(self.pids.from_term(&s.from_pid));
                self.deliver(conn, from, PidOrAtom::Atom(s.to_name), s.message, raw(&message))
            }
            Control::RegSendTt(s) => {
                let from = Some(self.pids.from_term(&s.from_pid));
                self.deliver(conn, from, PidOrAtom::Atom(s.to_name), s.message, raw(&message))
            }
            Control::Link(l) => self.remote_link(conn, &l.from_pid, &l.to_pid),
            Control::Unlink(u) => self.remote_unlink(conn, None, &u.from_pid, &u.to_pid),
            Control::UnlinkId(u) => self.remote_unlink(conn, Some(u.id), &u.from_pid, &u.to_pid),
            Control::UnlinkIdAck(_) => {}
            Control::Exit(e) => self.remote_exit(conn, &e.from_pid, &e.to_pid, &e.reason, true),
            Control::ExitTt(e) => self.remote_exit(conn, &e.from_pid, &e.to_pid, &e.reason, true),
            Control::PayloadExit(e) => self.remote_exit(conn, &e.from_pid, &e.to_pid, &e.reason, true),
            Control::PayloadExitTt(e) => self.remote_exit(conn, &e.from_pid, &e.to_pid, &e.reason, true),
            Control::Exit2(e) => self.remote_exit(conn, &e.from_pid, &e.to_pid, &e.reason, false),
            Control::Exit2Tt(e) => self.remote_exit(conn, &e.from_pid, &e.to_pid, &e.reason, false),
            Control::PayloadExit2(e) => self.remote_exit(conn, &e.from_pid, &e.to_pid, &e.reason, false),
            Control::PayloadExit2Tt(e) => self.remote_exit(conn, &e.from_pid, &e.to_pid, &e.reason, false),
            Control::MonitorP(m) => self.remote_monitor(conn, &m.from_pid, m.to_proc, m.reference),
            Control::DemonitorP(m) => self.remote_demonitor(conn, &m.reference),
            Control::MonitorPExit(m) => self.monitor_exit(conn, &m.reference, &m.reason),
            Control::PayloadMonitorPExit(m) => self.monitor_exit(conn, &m.reference, &m.reason),
            Control::NodeLink(_) | Control::GroupLeader(_) => {}
            other => {
                // Known to erl_dist but never negotiated by us (spawn
                // requests, aliases): the peer should not send them.
                tracing::warn!(node = %self.name, peer = %conn.peer, "ignored a control message we did not negotiate: {other:?}");
            }
        }
    }

    fn deliver(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        from: Option<Pid>,
        to: PidOrAtom,
        message: Term,
        raw: Vec<u8>,
    ) {
        let target = match &to {
            PidOrAtom::Pid(pid) => Some(self.pids.from_term(pid)).filter(|p| !p.is_external()),
            PidOrAtom::Atom(name) => self.node.whereis(&name.name),
        };
        let Some(target) = target else {
            // As in Erlang: a message to a dead pid or a free name is
            // dropped without a word.
            return;
        };
        if Some(&target) == self.router.get() && self.reply_to_router(&message) {
            return;
        }
        if let Some((reply_to, tag, request)) = gen_call(&message) {
            return self.gen_call(conn, target, reply_to, tag, request);
        }
        if let Term::Tuple(t) = &message
            && t.elements.len() == 2
            && term::atom_name(&t.elements[0]) == Some("$gen_cast")
        {
            let request = t.elements[1].clone();
            let _ = self.node.cast(target, self.remote_message(from, &request, term::encode(&request)));
            return;
        }
        let _ = self.node.send(target, self.remote_message(from, &message, raw));
    }

    fn remote_message(&self, from: Option<Pid>, message: &Term, raw: Vec<u8>) -> RemoteMessage {
        let raw = if raw.is_empty() { term::encode(message) } else { raw };
        RemoteMessage {
            from,
            term: ExternalTerm(raw),
            payload: term::to_msgpack(message, &self.pids).map(Payload).map_err(|e| e.0),
        }
    }

    /// `{'$gen_call', {From, Tag}, Request}` to a local process: a call
    /// that runs without anyone waiting; its reply goes back as
    /// `{Tag, Reply}` from the callee's worker (a push onto the
    /// connection's channel). No reply (the callee exited): nothing is
    /// sent, and the caller's monitor tells it.
    fn gen_call(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        target: Pid,
        reply_to: eetf::Pid,
        tag: Term,
        request: Term,
    ) {
        let request = self.remote_message(Some(self.pids.from_term(&reply_to)), &request, Vec::new());
        let tag = term::encode(&tag);
        let weak = Arc::downgrade(self);
        let peer = conn.peer.clone();
        let _ = self.node.call_then(target, request, move |reply| {
            let (Some(inner), Some(reply)) = (weak.upgrade(), reply) else { return };
            let reply = inner.message_bytes(&reply, false).unwrap_or_else(|why| {
                Cow::Owned(term::encode(&term::tuple(vec![
                    term::atom("error"),
                    term::binary(format!("the reply has no Erlang form: {why}")),
                ])))
            });
            let message = splice_tuple(&[&tag[1..], &reply[1..]]);
            let control = term::tuple(vec![small(2), term::atom(""), Term::from(reply_to)]);
            if let Some(frame) = frame_with(&control, &message) {
                inner.send_frame(&peer, frame);
            }
        });
    }

    fn remote_link(self: &Arc<Self>, conn: &Arc<Conn>, from: &eetf::Pid, to: &eetf::Pid) {
        let remote = self.pids.from_term(from);
        let local = self.pids.from_term(to);
        if !local.is_external() && self.node.link_remote(remote, local).is_ok() {
            if let Some(state) = self.peers.lock().get_mut(&conn.peer) {
                state.links.insert((local, remote));
            }
            return;
        }
        if let Some(frame) = self.encode(Control::exit(to.clone(), from.clone(), term::atom("noproc"))) {
            conn.push(&frame);
        }
    }

    fn remote_unlink(&self, conn: &Arc<Conn>, id: Option<Term>, from: &eetf::Pid, to: &eetf::Pid) {
        let remote = self.pids.from_term(from);
        let local = self.pids.from_term(to);
        self.node.unlink_remote(remote, local);
        if let Some(state) = self.peers.lock().get_mut(&conn.peer) {
            state.links.remove(&(local, remote));
        }
        if let Some(id) = id
            && let Some(frame) = self.encode(Control::UnlinkIdAck(erl_dist::message::UnlinkIdAck {
                id,
                from_pid: to.clone(),
                to_pid: from.clone(),
            }))
        {
            conn.push(&frame);
        }
    }

    fn remote_exit(
        &self,
        conn: &Arc<Conn>,
        from: &eetf::Pid,
        to: &eetf::Pid,
        reason: &Term,
        link_broken: bool,
    ) {
        let remote = self.pids.from_term(from);
        let local = self.pids.from_term(to);
        if local.is_external() {
            return;
        }
        if link_broken && let Some(state) = self.peers.lock().get_mut(&conn.peer) {
            state.links.remove(&(local, remote));
        }
        self.node.exit_from_remote(remote, local, term::term_to_reason(reason), link_broken);
    }

    fn remote_monitor(
        &self,
        conn: &Arc<Conn>,
        from: &eetf::Pid,
        target: PidOrAtom,
        reference: eetf::Reference,
    ) {
        let watcher = self.pids.from_term(from);
        let local = match &target {
            PidOrAtom::Pid(pid) => Some(self.pids.from_term(pid)).filter(|p| !p.is_external()),
            PidOrAtom::Atom(name) => self.node.whereis(&name.name),
        };
        let Some(local) = local else {
            let exit = Control::monitor_p_exit(target, from.clone(), reference, term::atom("noproc"));
            if let Some(frame) = self.encode(exit) {
                conn.push(&frame);
            }
            return;
        };
        let monitor = self.node.monitor_for_remote(watcher, local);
        let mut peers = self.peers.lock();
        if let Some(down) = self.early_downs.lock().remove(&monitor_id(&monitor)) {
            drop(peers);
            let exit =
                Control::monitor_p_exit(target, from.clone(), reference, term::reason_to_term(&down.reason));
            if let Some(frame) = self.encode(exit) {
                conn.push(&frame);
            }
            return;
        }
        if let Some(state) = peers.get_mut(&conn.peer) {
            state.remote_refs.insert(reference.id.clone(), monitor);
            state.remote_monitors.insert(monitor_id(&monitor), (reference, target, watcher));
        }
    }

    fn remote_demonitor(&self, conn: &Arc<Conn>, reference: &eetf::Reference) {
        let monitor = {
            let mut peers = self.peers.lock();
            let Some(state) = peers.get_mut(&conn.peer) else { return };
            let Some(monitor) = state.remote_refs.remove(&reference.id) else { return };
            state.remote_monitors.remove(&monitor_id(&monitor));
            monitor
        };
        self.node.demonitor_for_remote(monitor);
    }

    fn monitor_exit(&self, conn: &Arc<Conn>, reference: &eetf::Reference, reason: &Term) {
        let id = Self::id_of(reference);
        if let Some(call) = self.pending_calls.lock().remove(&id) {
            let why = match term::term_to_reason(reason) {
                relive_runtime::ExitReason::NoProc => {
                    format!("{}: noproc (no such process there)", call.target)
                }
                other => format!("{} exited before replying: {other}", call.target),
            };
            call.reply.reply_with::<ModuleReply>(Err(why));
            return;
        }
        if let Some((_, tx)) = self.name_monitors.lock().remove(&id) {
            let _ = tx.send(CallEvent::Down(term::term_to_reason(reason)));
            return;
        }
        let found = self.peers.lock().get_mut(&conn.peer).and_then(|s| s.local_monitors.remove(&id));
        if let Some((watcher, monitor)) = found {
            self.node.remote_down(
                watcher,
                Down { monitor, pid: monitor.target(), reason: term::term_to_reason(reason) },
            );
        }
    }

    /// `{Tag, Reply}` sent to the router: the reply to a call made with
    /// [`Remote::call`] or [`Inner::call`], handed to its caller on the
    /// calling thread (the connection's reader: no hop through a worker).
    /// `false` if it answers no call of ours.
    fn reply_to_router(self: &Arc<Self>, message: &Term) -> bool {
        let Term::Tuple(t) = message else { return false };
        let [Term::Reference(tag), reply] = t.elements.as_slice() else { return false };
        if *tag.node.name != *self.name {
            return false;
        }
        let id = Inner::id_of(tag);
        if let Some(call) = self.pending_calls.lock().remove(&id) {
            if let Some(router) = self.router.get()
                && let Some(frame) =
                    self.encode(Control::demonitor_p(self.pid_term(*router), call.proc, (**tag).clone()))
            {
                self.send_frame_lazy(&call.peer, frame);
            }
            let answer = term::to_msgpack(reply, &self.pids)
                .map(Payload)
                .map_err(|e| format!("the reply of {} has no MessagePack form: {e}", call.target));
            call.reply.reply_with::<ModuleReply>(answer);
            return true;
        }
        if let Some((_, tx)) = self.name_monitors.lock().get(&id) {
            let _ = tx.send(CallEvent::Reply(reply.clone()));
            return true;
        }
        false
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(listener) = self.listener.lock().take() {
            // Wakes the acceptor: a connection to ourselves that it drops.
            if let Ok(addr) = listener.local_addr() {
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
            }
        }
        self.epmd.lock().take();
        let conns: Vec<Arc<Conn>> = self.peers.lock().drain().filter_map(|(_, p)| p.conn).collect();
        for conn in conns {
            conn.close();
        }
    }

    /// Makes a gen_server call to `name` on `node` from a short-lived
    /// local process: monitor by name, `{'$gen_call', {Pid, Ref}, Request}`,
    /// then the reply, the monitor's exit, or the timeout.
    pub(crate) fn call(
        self: &Arc<Self>,
        node: &str,
        name: &str,
        request: Term,
        timeout: Duration,
    ) -> Result<Term, DistError> {
        let (tx, rx) = mpsc::channel::<CallEvent>();
        // The reply comes to the router's pid; the reader thread that gets
        // it hands it to this thread straight away (see `reply_to_router`).
        let Some(&proxy) = self.router.get() else {
            return Err(DistError::Call("the distribution is not running".into()));
        };
        let id = self.next_id();
        let reference = self.reference(id);
        self.name_monitors.lock().insert(id, (node.into(), tx));
        let me = self.pid_term(proxy);
        let call = term::tuple(vec![
            term::atom("$gen_call"),
            term::tuple(vec![Term::from(me.clone()), Term::from(reference.clone())]),
            request,
        ]);
        let sent = [
            Control::monitor_p(me.clone(), PidOrAtom::Atom(name.into()), reference.clone()),
            Control::reg_send(me.clone(), name.into(), call),
        ]
        .into_iter()
        .map(|control| self.encode(control))
        .collect::<Option<Vec<_>>>()
        .is_some_and(|frames| self.send_frame(node, frames.concat()));
        let result = if !sent {
            Err(DistError::Call(format!("cannot reach {node}")))
        } else {
            match rx.recv_timeout(timeout) {
                Ok(CallEvent::Reply(reply)) => Ok(reply),
                Ok(CallEvent::Down(reason)) => {
                    Err(DistError::Call(format!("{name} on {node} exited or is not there: {reason}")))
                }
                Err(_) => Err(DistError::Timeout(format!("{name} on {node}"), timeout)),
            }
        };
        if self.name_monitors.lock().remove(&id).is_some()
            && let Some(frame) =
                self.encode(Control::demonitor_p(me, PidOrAtom::Atom(name.into()), reference))
        {
            self.send_frame_lazy(node, frame);
        }
        result
    }
}

/// A call of a local process to another node's, waiting for its reply.
struct PendingCall {
    peer: Arc<str>,
    /// What was called, for errors: `<N.id.serial>` or `{name, node}`.
    target: String,
    /// What the monitor and DEMONITOR_P name.
    proc: PidOrAtom,
    reply: ReplyTo,
}

/// Gets the replies `{Tag, Reply}` to [`Remote::call`]s and answers the
/// waiting callers.
struct Router(Weak<Inner>);

impl Actor for Router {
    fn handle(&mut self, message: Message, _ctx: &mut Ctx<'_>) {
        let (Ok(message), Some(inner)) = (message.downcast::<RemoteMessage>(), self.0.upgrade()) else {
            return;
        };
        if let Ok((reply, _)) = term::decode(&message.term.0) {
            inner.reply_to_router(&reply);
        }
    }
}

/// A call's monitor by name: the node, and where its caller listens.
type NameMonitor = (Arc<str>, mpsc::Sender<CallEvent>);

/// What a call's caller hears.
pub(crate) enum CallEvent {
    Reply(Term),
    Down(ExitReason),
}

fn monitor_id(monitor: &MonitorRef) -> u64 {
    monitor.id()
}

/// `'$gen_cast'` in the external term format (SMALL_ATOM_UTF8_EXT).
const GEN_CAST_ATOM: &[u8] = b"\x77\x09$gen_cast";

/// A small integer term (a control message's operation).
fn small(value: i32) -> Term {
    Term::from(eetf::FixInteger { value })
}

/// A tuple of already encoded terms (each without its version byte), with
/// the version byte.
fn splice_tuple(elements: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + elements.iter().map(|e| e.len()).sum::<usize>());
    out.push(131);
    match u8::try_from(elements.len()) {
        Ok(n) => out.extend_from_slice(&[104, n]),
        Err(_) => {
            out.push(105);
            out.extend_from_slice(&(elements.len() as u32).to_be_bytes());
        }
    }
    for element in elements {
        out.extend_from_slice(element);
    }
    out
}

/// A whole pass-through frame: `control` (encoded here) followed by
/// `message`, a term already encoded (version byte first), copied as is.
/// `None` for a frame over 4 GiB.
fn frame_with(control: &Term, message: &[u8]) -> Option<Vec<u8>> {
    let control = term::encode(control);
    let len = u32::try_from(1 + control.len() + message.len()).ok()?;
    let mut frame = Vec::with_capacity(4 + len as usize);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(112);
    frame.extend_from_slice(&control);
    frame.extend_from_slice(message);
    Some(frame)
}

/// `{'$gen_call', {From, Tag}, Request}`.
fn gen_call(message: &Term) -> Option<(eetf::Pid, Term, Term)> {
    let Term::Tuple(t) = message else { return None };
    let [label, from, request] = t.elements.as_slice() else { return None };
    if term::atom_name(label) != Some("$gen_call") {
        return None;
    }
    let Term::Tuple(from) = from else { return None };
    let [Term::Pid(pid), tag] = from.elements.as_slice() else { return None };
    Some((pid.clone(), tag.clone(), request.clone()))
}

impl Remote for Hook {
    fn send(&self, from: Option<Pid>, to: Pid, message: Message, cast: bool) -> Result<(), Message> {
        let Some(inner) = self.0.upgrade() else { return Err(message) };
        let Some(peer) = inner.node_of(to) else {
            // A pid of this node's earlier life: no such process.
            return Err(message);
        };
        let bytes = match inner.message_bytes(&message, cast) {
            Ok(bytes) => bytes,
            Err(why) => {
                tracing::warn!(node = %inner.name, to = %to, "dropped a message to another node: {why}");
                return Err(message);
            }
        };
        let to_term = Term::from(inner.pid_term(to));
        let send_sender = inner.peers.lock().get(&peer).and_then(|p| p.conn.as_ref().map(|c| c.send_sender));
        let control = match from {
            Some(from) if send_sender.unwrap_or(true) => {
                term::tuple(vec![small(22), Term::from(inner.pid_term(from)), to_term])
            }
            _ => term::tuple(vec![small(2), term::atom(""), to_term]),
        };
        match frame_with(&control, &bytes).map(|frame| inner.send_frame(&peer, frame)) {
            Some(true) => Ok(()),
            _ => Err(message),
        }
    }

    fn send_named(
        &self,
        from: Option<Pid>,
        name: &str,
        node: &str,
        message: Message,
        cast: bool,
    ) -> Result<(), Message> {
        let Some(inner) = self.0.upgrade() else { return Err(message) };
        if *node == *inner.name {
            return match inner.node.whereis(name) {
                Some(pid) if cast => inner.node.cast(pid, message).map_err(|_| Message::new(())),
                Some(pid) => inner.node.send(pid, message).map_err(|_| Message::new(())),
                None => Ok(()),
            };
        }
        let bytes = match inner.message_bytes(&message, cast) {
            Ok(bytes) => bytes,
            Err(why) => {
                tracing::warn!(node = %inner.name, to = %format!("{{{name}, {node}}}"), "dropped a message to another node: {why}");
                return Err(message);
            }
        };
        let from = Term::from(inner.pid_term(from.unwrap_or(Pid::NODE)));
        let control = term::tuple(vec![small(6), from, term::atom(""), term::atom(name)]);
        match frame_with(&control, &bytes).map(|frame| inner.send_frame(node, frame)) {
            Some(true) => Ok(()),
            _ => Err(message),
        }
    }

    fn link(&self, local: Pid, remote: Pid) {
        let Some(inner) = self.0.upgrade() else { return };
        let Some(peer) = inner.node_of(remote) else {
            inner.node.exit_from_remote(remote, local, ExitReason::NoProc, true);
            return;
        };
        let frame = inner.encode(Control::link(inner.pid_term(local), inner.pid_term(remote)));
        let queued = frame.is_some_and(|frame| inner.send_frame(&peer, frame));
        // Recorded after queuing: a connection that fails later finds it.
        if let Some(state) = inner.peers.lock().get_mut(&peer) {
            state.links.insert((local, remote));
        }
        if !queued {
            inner.node.exit_from_remote(remote, local, ExitReason::error("noconnection"), true);
        }
    }

    fn unlink(&self, local: Pid, remote: Pid) {
        let Some(inner) = self.0.upgrade() else { return };
        let Some(peer) = inner.node_of(remote) else { return };
        if let Some(state) = inner.peers.lock().get_mut(&peer) {
            state.links.remove(&(local, remote));
        }
        let id = Term::from(eetf::FixInteger { value: (inner.next_id() & 0x7fff_ffff) as i32 });
        if let Some(frame) = inner.encode(Control::UnlinkId(erl_dist::message::UnlinkId {
            id,
            from_pid: inner.pid_term(local),
            to_pid: inner.pid_term(remote),
        })) {
            inner.send_frame(&peer, frame);
        }
    }

    fn exit(&self, from: Pid, to: Pid, reason: &ExitReason, link_broken: bool) {
        let Some(inner) = self.0.upgrade() else { return };
        let Some(peer) = inner.node_of(to) else { return };
        if link_broken && let Some(state) = inner.peers.lock().get_mut(&peer) {
            state.links.remove(&(from, to));
        }
        let (from_term, to_term, reason) =
            (inner.pid_term(from), inner.pid_term(to), term::reason_to_term(reason));
        let control = if link_broken {
            Control::exit(from_term, to_term, reason)
        } else {
            Control::exit2(from_term, to_term, reason)
        };
        if let Some(frame) = inner.encode(control) {
            inner.send_frame(&peer, frame);
        }
    }

    fn monitor(&self, watcher: Pid, monitor: MonitorRef) {
        let Some(inner) = self.0.upgrade() else { return };
        let target = monitor.target();
        let Some(peer) = inner.node_of(target) else {
            inner.node.remote_down(watcher, Down { monitor, pid: target, reason: ExitReason::NoProc });
            return;
        };
        let control = Control::monitor_p(
            inner.pid_term(watcher),
            PidOrAtom::Pid(inner.pid_term(target)),
            inner.reference(monitor.id()),
        );
        let queued = inner.encode(control).is_some_and(|frame| inner.send_frame(&peer, frame));
        if let Some(state) = inner.peers.lock().get_mut(&peer) {
            state.local_monitors.insert(monitor.id(), (watcher, monitor));
        }
        if !queued {
            inner.node.remote_down(
                watcher,
                Down { monitor, pid: target, reason: ExitReason::error("noconnection") },
            );
        }
    }

    fn demonitor(&self, watcher: Pid, monitor: MonitorRef) {
        let Some(inner) = self.0.upgrade() else { return };
        let Some(peer) = inner.node_of(monitor.target()) else { return };
        let removed = inner.peers.lock().get_mut(&peer).and_then(|s| s.local_monitors.remove(&monitor.id()));
        if removed.is_some()
            && let Some(frame) = inner.encode(Control::demonitor_p(
                inner.pid_term(watcher),
                PidOrAtom::Pid(inner.pid_term(monitor.target())),
                inner.reference(monitor.id()),
            ))
        {
            inner.send_frame(&peer, frame);
        }
    }

    fn info(&self) -> relive_runtime::RemoteInfo {
        self.info_of()
    }

    fn call(&self, from: Option<Pid>, to: &relive_runtime::Dest, request: Message, reply: ReplyTo) {
        let Some(inner) = self.0.upgrade() else { return drop(reply) };
        let (peer, proc, target) = match to {
            relive_runtime::Dest::Pid(pid) => match inner.node_of(*pid) {
                Some(peer) => (peer, PidOrAtom::Pid(inner.pid_term(*pid)), pid.to_string()),
                None => {
                    return reply.reply_with::<ModuleReply>(Err(format!(
                        "{pid}: noproc (a pid of this node's earlier life)"
                    )));
                }
            },
            relive_runtime::Dest::Remote { name, node } => {
                (node.clone(), PidOrAtom::Atom(name.as_ref().into()), format!("{{{name}, {node}}}"))
            }
            relive_runtime::Dest::Name(name) => {
                return reply.reply_with::<ModuleReply>(Err(format!("{name} is a local name")));
            }
        };
        if *peer == *inner.name {
            return reply
                .reply_with::<ModuleReply>(Err(format!("{target} is on this node: call it directly")));
        }
        let request = match inner.message_term(&request) {
            Ok(term) => term,
            Err(why) => {
                return reply
                    .reply_with::<ModuleReply>(Err(format!("the request has no Erlang form: {why}")));
            }
        };
        let Some(&router) = inner.router.get() else { return drop(reply) };
        let router = inner.pid_term(router);
        let id = inner.next_id();
        let tag = inner.reference(id);
        let call = term::tuple(vec![
            term::atom("$gen_call"),
            term::tuple(vec![Term::from(router.clone()), Term::from(tag.clone())]),
            request,
        ]);
        let message = match &proc {
            PidOrAtom::Pid(to) => Control::send_sender(router.clone(), to.clone(), call),
            PidOrAtom::Atom(name) => Control::reg_send(router.clone(), name.clone(), call),
        };
        let _ = from;
        inner
            .pending_calls
            .lock()
            .insert(id, PendingCall { peer: peer.clone(), target, proc: proc.clone(), reply });
        let sent = [Control::monitor_p(router, proc, tag), message]
            .into_iter()
            .map(|control| inner.encode(control))
            .collect::<Option<Vec<_>>>()
            .is_some_and(|frames| inner.send_frame(&peer, frames.concat()));
        if !sent && let Some(call) = inner.pending_calls.lock().remove(&id) {
            call.reply.reply_with::<ModuleReply>(Err(format!("{}: cannot reach {peer}", call.target)));
        }
    }

    fn down(&self, watcher: Pid, down: Down) {
        let Some(inner) = self.0.upgrade() else { return };
        let Some(peer) = inner.node_of(watcher) else { return };
        let mut peers = inner.peers.lock();
        let found = peers.get_mut(&peer).and_then(|state| {
            let found = state.remote_monitors.remove(&down.monitor.id())?;
            state.remote_refs.remove(&found.0.id);
            Some(found)
        });
        let Some((reference, target, watcher_pid)) = found else {
            inner.early_downs.lock().insert(down.monitor.id(), down);
            return;
        };
        drop(peers);
        let exit = Control::monitor_p_exit(
            target,
            inner.pid_term(watcher_pid),
            reference,
            term::reason_to_term(&down.reason),
        );
        if let Some(frame) = inner.encode(exit) {
            inner.send_frame(&peer, frame);
        }
    }
}

impl Hook {
    fn info_of(&self) -> relive_runtime::RemoteInfo {
        match self.0.upgrade() {
            Some(inner) => {
                relive_runtime::RemoteInfo { node: inner.name.to_string(), connected: inner.connected() }
            }
            None => relive_runtime::RemoteInfo { node: String::new(), connected: Vec::new() },
        }
    }
}

fn accept_loop(listener: TcpListener, inner: Weak<Inner>) {
    for stream in listener.incoming() {
        let Some(strong) = inner.upgrade() else { return };
        if strong.stopping.load(Ordering::Relaxed) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(node = %strong.name, "accepting a distribution connection failed: {error}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // A flood of connections that never finish their handshake gets
        // a bounded number of threads; the rest are closed at once.
        if strong.handshakes.fetch_add(1, Ordering::AcqRel) >= MAX_HANDSHAKES {
            strong.handshakes.fetch_sub(1, Ordering::AcqRel);
            let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
            tracing::warn!(node = %strong.name, "refused a distribution connection from {peer}: {MAX_HANDSHAKES} handshakes are under way");
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let weak = inner.clone();
        let spawned = std::thread::Builder::new().name("relive-dist-handshake".into()).spawn(move || {
            if let Some(inner) = weak.upgrade() {
                accept_one(&inner, stream);
                inner.handshakes.fetch_sub(1, Ordering::AcqRel);
            }
        });
        if spawned.is_err() {
            strong.handshakes.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn accept_one(inner: &Arc<Inner>, stream: TcpStream) {
    let addr = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    match inner.wire.accept(&stream, &inner.local, &inner.config.cookie) {
        Ok(peer) => inner.established(stream, peer),
        Err((peer, why)) => {
            let peer =
                peer.map_or_else(|| format!("a peer at {addr}"), |name| format!("{name} (from {addr})"));
            tracing::warn!(node = %inner.name, "refused a distribution connection from {peer}: {why}");
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn read_loop(stream: TcpStream, inner: Weak<Inner>, conn: Arc<Conn>) {
    let Some(strong) = inner.upgrade() else { return };
    let _ = stream.set_read_timeout(Some(strong.config.net_ticktime));
    // Frames come in bursts: one read takes many.
    let mut stream = BufReader::with_capacity(64 << 10, stream);
    let max = strong.config.max_frame_bytes;
    drop(strong);
    let why = loop {
        let frame = match crate::wire::read_frame(&mut stream, max) {
            Ok(frame) => frame,
            Err(why) => break why,
        };
        let Some(inner) = inner.upgrade() else { return };
        let body = match frame {
            Frame::Tick => continue,
            Frame::Body(body) => body,
        };
        match inner.wire.decode(&body) {
            Ok((control, message)) => inner.handle(&conn, control, &body, message),
            Err(why) => break format!("a bad frame: {why}"),
        }
    };
    if let Some(inner) = inner.upgrade() {
        inner.connection_lost(&conn, &why);
    }
}

/// The writer thread: writes what [`Conn::push`] left (bursts, and what
/// the socket did not take at once) in one blocking write per round, lazy
/// frames when they are due, and a tick when the link was silent for
/// `tick`.
fn write_loop(conn: &Conn, tick: Duration) {
    let tick = tick.max(Duration::from_millis(100));
    let mut spare = Vec::new();
    loop {
        let mut out = conn.out.lock();
        loop {
            if out.closed {
                return;
            }
            let wait = match out.lazy_since {
                _ if out.urgent && !out.buf.is_empty() => break,
                Some(since) if since.elapsed() >= LAZY_DELAY => break,
                Some(since) => LAZY_DELAY.saturating_sub(since.elapsed()),
                None => tick,
            };
            let timed_out = conn.wake.wait_for(&mut out, wait).timed_out();
            if timed_out && out.buf.is_empty() && out.last_write.elapsed() >= tick {
                out.buf.extend_from_slice(&[0, 0, 0, 0]);
                out.urgent = true;
            }
        }
        if out.buf.is_empty() {
            out.lazy_since = None;
            out.urgent = false;
            continue;
        }
        let data = std::mem::replace(&mut out.buf, std::mem::take(&mut spare));
        out.urgent = false;
        out.lazy_since = None;
        out.writing = true;
        drop(out);
        let written = (&conn.stream).write_all(&data);
        let mut out = conn.out.lock();
        out.writing = false;
        out.last_write = Instant::now();
        spare = data;
        spare.clear();
        if let Err(error) = written {
            tracing::debug!(peer = %conn.peer, "writing to the connection failed: {error}");
            out.closed = true;
            drop(out);
            let _ = conn.stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// The `net_kernel` process: answers `{is_auth, Node}` (net_adm:ping) with
/// `yes`.
struct NetKernel;

impl Actor for NetKernel {
    fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}

    fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        let Ok(request) = request.downcast::<RemoteMessage>() else { return drop(reply) };
        let answer = match term::decode(&request.term.0) {
            Ok((Term::Tuple(t), _)) if t.elements.first().and_then(term::atom_name) == Some("is_auth") => {
                term::atom("yes")
            }
            _ => term::tuple(vec![term::atom("error"), term::atom("not_supported")]),
        };
        reply.reply_with(ExternalTerm(term::encode(&answer)));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn spliced_frames_decode_as_the_control_messages_they_stand_for() {
        let from = eetf::Pid::new("a@h", 1, 0, 1);
        let message = term::encode(&term::binary(b"payload".to_vec()));
        let control =
            term::tuple(vec![small(6), Term::from(from.clone()), term::atom(""), term::atom("sink")]);
        let frame = frame_with(&control, &message).unwrap();
        assert_eq!(u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - 4);
        let (decoded, range) = ErlDist.decode(&frame[5..]).unwrap();
        match decoded {
            Control::RegSend(s) => {
                assert_eq!(s.from_pid, from);
                assert_eq!(s.to_name.name, "sink");
                assert_eq!(s.message, term::binary(b"payload".to_vec()));
            }
            other => panic!("decoded {other:?}"),
        }
        assert_eq!(&frame[5..][range.unwrap()], &message[..]);
        let cast = splice_tuple(&[GEN_CAST_ATOM, &message[1..]]);
        let expected = term::tuple(vec![term::atom("$gen_cast"), term::binary(b"payload".to_vec())]);
        assert_eq!(term::decode(&cast).unwrap().0, expected);
    }

    #[test]
    fn pushed_bursts_and_lazy_frames_arrive_whole_and_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let conn = Arc::new(Conn {
            id: 1,
            peer: "p@h".into(),
            creation: 1,
            send_sender: true,
            out: Mutex::new(Outbox::new()),
            wake: Condvar::new(),
            stream,
        });
        let writer = conn.clone();
        let thread = std::thread::spawn(move || write_loop(&writer, Duration::from_secs(60)));
        // Frames of growing size, some lazy, many in bursts: what arrives
        // is every one of them, whole, in the order pushed.
        let frames: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| {
                let body = vec![(i % 251) as u8; 1 + (i as usize * 37) % 3000];
                let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&body);
                frame
            })
            .collect();
        for (i, frame) in frames.iter().enumerate() {
            assert!(if i % 7 == 3 { conn.push_lazy(frame) } else { conn.push(frame) });
        }
        let expected: Vec<u8> = frames.concat();
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).unwrap();
        assert!(got == expected, "the bytes read differ from the frames pushed");
        conn.close();
        thread.join().unwrap();
        assert!(!conn.push(&frames[0]), "a closed connection takes no more frames");
    }
}
