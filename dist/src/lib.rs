//! relive-dist: a relive node as a real Erlang distribution node.
//!
//! [`Distribution::start`] makes a running [`relive_runtime::Node`] a node
//! of an Erlang cluster: it registers with EPMD (starting `epmd -daemon`
//! when none answers, as erl does; `ERL_EPMD_PORT` is honoured), accepts
//! and makes the v6 handshake with the cookie check, ticks
//! (`net_ticktime`), and is hidden unless [`DistConfig::published`]. From
//! then on the runtime routes whatever is addressed to another node's pid
//! or to `{Name, Node}` here (its [`relive_runtime::Remote`] hook): sends,
//! links, monitors and exit signals cross as Erlang's control messages, and
//! a lost connection tells every local process involved (`noconnection`).
//!
//! - A `net_kernel` process answers `{is_auth, Node}`: `net_adm:ping`
//!   gives `pong`.
//! - A `gen_server:call({Name, Node}, Req)` from Erlang to any local
//!   process runs as a runtime call that nobody waits on; the reply goes
//!   back as `{Tag, Reply}`. A module process reads `Req` as MessagePack
//!   and its reply becomes a term (the mapping: [`term`] and
//!   docs/distribution.md).
//! - Native actors get [`relive_runtime::RemoteMessage`]s and send
//!   [`relive_runtime::ExternalTerm`]s ([`encode`] a [`Term`]).
//!
//! # API for tools (a CLI that talks to nodes)
//!
//! - [`Distribution::start_client`]: a hidden node for a command-line
//!   process, on a small runtime node of its own
//!   ([`Distribution::start`] on an existing [`relive_runtime::Node`] works
//!   the same).
//! - [`Distribution::call`]: a gen_server call to a process registered on
//!   another node, with a term and a timeout, giving the reply term.
//! - [`serve`]: the node side: registers a process that answers such calls
//!   with a closure from term to term.
//!
//! ```no_run
//! use std::time::Duration;
//! use relive_dist::{DistConfig, Distribution, term};
//!
//! let config = DistConfig::new("deployer@localhost", "COOKIE".into());
//! let client = Distribution::start_client(config).unwrap();
//! let reply = client
//!     .call("node1@localhost", "release_handler", term::atom("status"), Duration::from_secs(5))
//!     .unwrap();
//! println!("{reply}");
//! ```
//!
//! # Threads
//!
//! Sockets and ticks have threads of their own (an acceptor, a reader and a
//! writer per connection, a short-lived thread per connection attempt);
//! erl_dist's async handshake and EPMD client run on those threads over
//! blocking sockets (see `wire.rs`). A busy scheduler never delays a tick.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cookie;
pub mod epmd;
mod node;
pub mod term;
mod wire;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

pub use eetf::Term;
use relive_runtime::{Actor, Ctx, ExternalTerm, Message, Node, NodeConfig, Pid, RemoteMessage, ReplyTo};

/// Encodes a term for [`relive_runtime::ExternalTerm`].
pub fn encode(term: &Term) -> ExternalTerm {
    ExternalTerm(term::encode(term))
}

/// Settings of a distributed node.
#[derive(Clone, Debug)]
pub struct DistConfig {
    /// `name@host`, or a bare `name` (the host is then this machine's short
    /// host name, as `erl -sname`).
    pub name: String,
    /// The cookie (never logged).
    pub cookie: String,
    /// Visible to other nodes' `nodes()` (`--published`); hidden otherwise.
    pub published: bool,
    /// A peer silent this long is dead; ticks go out every quarter of it.
    pub net_ticktime: Duration,
    /// EPMD's port ([`epmd::port_from_env`] by default).
    pub epmd_port: u16,
    /// Start `epmd -daemon` when none answers.
    pub start_epmd: bool,
    /// Address the distribution port binds (all interfaces by default).
    pub listen_address: IpAddr,
    /// The distribution port (0: any free one, registered with EPMD).
    pub listen_port: u16,
    /// The largest frame read from a peer; a larger one closes the
    /// connection.
    pub max_frame_bytes: usize,
}

impl DistConfig {
    /// Defaults: hidden, `net_ticktime` 60 s, EPMD from `ERL_EPMD_PORT`,
    /// frames up to 64 MiB.
    pub fn new(name: &str, cookie: String) -> DistConfig {
        DistConfig {
            name: name.to_string(),
            cookie,
            published: false,
            net_ticktime: Duration::from_secs(60),
            epmd_port: epmd::port_from_env(),
            start_epmd: true,
            listen_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            listen_port: 0,
            max_frame_bytes: 64 << 20,
        }
    }

    /// The alive part and the host of [`DistConfig::name`].
    ///
    /// # Errors
    /// [`DistError::Name`] for an empty part or characters EPMD refuses.
    pub fn split_name(&self) -> Result<(String, String), DistError> {
        let (alive, host) = match self.name.split_once('@') {
            Some((alive, host)) => (alive.to_string(), host.to_string()),
            None => (self.name.clone(), short_host_name()),
        };
        let valid =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !valid(&alive) || !valid(&host) {
            return Err(DistError::Name(format!(
                "{:?} is not a node name: write NAME@HOST (letters, digits, _ - . on both sides)",
                self.name
            )));
        }
        Ok((alive, host))
    }
}

/// This machine's host name up to the first dot (erl's `-sname` host).
pub fn short_host_name() -> String {
    let full = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "localhost".into());
    full.trim().split('.').next().filter(|s| !s.is_empty()).unwrap_or("localhost").to_string()
}

/// What can go wrong starting or using distribution.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistError {
    /// The node name is not valid.
    #[error("{0}")]
    Name(String),
    /// The cookie could not be read or made.
    #[error("{0}")]
    Cookie(String),
    /// EPMD is not there, could not be started, or refused the name.
    #[error("EPMD: {0}")]
    Epmd(String),
    /// The distribution port could not be opened.
    #[error("{0}")]
    Listen(String),
    /// The runtime node is distributed already.
    #[error("this runtime node already runs distribution")]
    AlreadyDistributed,
    /// A call failed: the node is unreachable, or the process exited or is
    /// not registered there.
    #[error("call failed: {0}")]
    Call(String),
    /// A call got no reply in time.
    #[error("call to {0} timed out after {1:?}")]
    Timeout(String, Duration),
}

/// A node's distribution. Cheap to clone. [`Distribution::stop`] (or the
/// runtime node's shutdown) ends it.
#[derive(Clone)]
pub struct Distribution {
    inner: Arc<node::Inner>,
    /// The runtime node [`Distribution::start_client`] started, to stop
    /// with it.
    own_node: Option<Node>,
}

/// Told to processes that asked with [`Distribution::monitor_nodes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A connection to the node is up.
    Up(String),
    /// The connection to the node is gone, with the reason.
    Down(String, String),
}

impl Distribution {
    /// Makes `node` a distributed node (see the crate doc).
    ///
    /// # Errors
    /// [`DistError`]: a bad name, no EPMD, a name taken, the port, or a
    /// node already distributed.
    pub fn start(node: &Node, config: DistConfig) -> Result<Distribution, DistError> {
        Ok(Distribution { inner: node::Inner::start(node.clone(), config)?, own_node: None })
    }

    /// A hidden node for a command-line tool: its own small runtime node
    /// (one worker, no code server) and [`Distribution::start`] on it.
    ///
    /// # Errors
    /// As [`Distribution::start`].
    pub fn start_client(mut config: DistConfig) -> Result<Distribution, DistError> {
        config.published = false;
        let node = Node::start(NodeConfig { workers: 1, watchdog: None, ..NodeConfig::default() });
        match Distribution::start(&node, config) {
            Ok(mut dist) => {
                dist.own_node = Some(node);
                Ok(dist)
            }
            Err(error) => {
                node.shutdown();
                Err(error)
            }
        }
    }

    /// This node's full name, `name@host`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The creation EPMD gave this node (a restart gets another one).
    pub fn creation(&self) -> u32 {
        self.inner.creation
    }

    /// Whether other nodes list this one in `nodes()` (`--published`).
    pub fn published(&self) -> bool {
        self.inner.config.published
    }

    /// The distribution port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The runtime node this distribution serves.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The nodes connected now, sorted.
    pub fn connected_nodes(&self) -> Vec<String> {
        self.inner.connected()
    }

    /// `pid` gets a [`NodeEvent`] message each time a connection comes up
    /// or goes down (Erlang's `net_kernel:monitor_nodes(true)`).
    pub fn monitor_nodes(&self, pid: Pid) {
        self.inner.watch_nodes(pid);
    }

    /// The term of a pid (ours or another node's), to put in messages.
    pub fn pid_term(&self, pid: Pid) -> Term {
        Term::from(self.inner.pids.to_term(pid))
    }

    /// The runtime pid of a pid term.
    pub fn pid_of(&self, pid: &eetf::Pid) -> Pid {
        self.inner.pids.from_term(pid)
    }

    /// A gen_server call to the process registered as `name` on `node`
    /// (`name@host`): `gen_server:call({Name, Node}, Request, Timeout)`.
    /// Connects first if needed. Blocks the calling thread (not for a
    /// scheduler worker: call it from a thread of your own).
    ///
    /// # Errors
    /// [`DistError::Call`] when the node cannot be reached, nothing is
    /// registered as `name` there (`noproc`), or the process exits before
    /// replying (its reason); [`DistError::Timeout`].
    pub fn call(&self, node: &str, name: &str, request: Term, timeout: Duration) -> Result<Term, DistError> {
        self.inner.call(node, name, request, timeout)
    }

    /// Sends `message` to the process registered as `name` on `node`.
    ///
    /// # Errors
    /// [`DistError::Call`] if the node cannot be reached at all.
    pub fn send(&self, node: &str, name: &str, message: &Term) -> Result<(), DistError> {
        self.inner
            .node
            .send(relive_runtime::Dest::Remote { name: name.into(), node: node.into() }, encode(message))
            .map_err(|e| DistError::Call(e.to_string()))
    }

    /// Stops accepting and closes every connection (peers see the node
    /// go down); unregisters from EPMD. The runtime node keeps running
    /// unless [`Distribution::start_client`] made it.
    pub fn stop(&self) {
        self.inner.stop();
        if let Some(node) = &self.own_node {
            node.shutdown();
        }
    }
}

/// Registers a process named `name` on `node` that answers gen_server
/// calls (from Erlang, or [`Distribution::call`]) with `handler(request)`;
/// plain messages are ignored. For relive-node's release handler and
/// similar services.
///
/// # Errors
/// The name is taken, or the process could not start.
pub fn serve(
    node: &Node,
    name: &str,
    handler: impl Fn(Term) -> Term + Send + 'static,
) -> Result<Pid, String> {
    struct Server<F>(F);
    impl<F: Fn(Term) -> Term + Send + 'static> Actor for Server<F> {
        fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}

        fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
            let answer = match request.downcast::<RemoteMessage>() {
                Ok(request) => match term::decode(&request.term.0) {
                    Ok((term, _)) => (self.0)(term),
                    Err(e) => term::tuple(vec![term::atom("error"), term::binary(e.0)]),
                },
                Err(_) => term::tuple(vec![term::atom("error"), term::atom("not_a_term")]),
            };
            reply.reply_with(encode(&answer));
        }
    }
    let pid = node.spawn(Server(handler)).map_err(|e| e.to_string())?;
    node.register(name, pid).map_err(|e| {
        node.exit(pid, relive_runtime::ExitReason::Kill);
        e.to_string()
    })?;
    Ok(pid)
}
