//! relive-observer: a live web page, and the same data as JSON, watching a
//! relive node as OTP's observer or Phoenix's LiveDashboard do: the
//! release and its state, modules with the processes on each version
//! (moving during an upgrade), the supervision tree and its restarts, the
//! busiest processes, the upgrade in progress and the last reports with
//! their pause histograms; and deploy, rollback and make-permanent, each
//! behind a confirmation on the page.
//!
//! It hangs off relive-node (the node knows nothing of it): the daemon
//! starts it with `relive node start --http ADDR` over its
//! [`ReleaseHandler`], and `relive bench upgrade --http ADDR` over a bare
//! [`Node`] (read-only). [`Observer::start`] binds at once (a bad address
//! is an error there) and serves on a thread of its own.
//!
//! # Server
//!
//! axum on a current-thread tokio runtime, on one thread: axum is tokio's
//! own HTTP framework (hyper underneath), well kept, with server-sent
//! events built in; one thread is plenty for a page and keeps the
//! observer off the scheduler's cores. Anything that may block (status
//! asks the supervisors; a deploy runs for seconds) runs on tokio's
//! blocking pool. The page is one static file (page.html, embedded), with
//! no build step and nothing fetched from elsewhere.
//!
//! # Access
//!
//! - A random token (32 bytes from the OS) is made at start, printed, and
//!   written 0600 to the file the caller names (the daemon:
//!   `<root>/run/http.token`). Every request must carry it: `?token=` once
//!   (the page then gets an HttpOnly, SameSite=Strict cookie and is
//!   redirected to drop the token from its address), the cookie, or an
//!   `Authorization: Bearer` header. Without it: 401.
//! - Bound to a loopback address, it refuses peers that are not loopback
//!   and `Host` headers that do not name a loopback address (DNS
//!   rebinding): 403. A POST whose `Origin` is not the page's own is
//!   refused too (403).
//! - An upload over the cap is refused with 413 before it is written
//!   whole; an archive is deployed by the release handler exactly as
//!   `relive deploy` does (verified in memory first; on any refusal the
//!   node and its store are unchanged), and its error is the answer (422).
//!
//! # Endpoints
//!
//! - `GET /`: the page. `GET /api/events?top=N&order=O&filter=F`: the
//!   page's server-sent events (`live` every 250 ms when it changed: modules by
//!   version, the change running, process count; `top` every second;
//!   `status` and `reports` when a change begins or ends, and every 5 s).
//! - `GET /api/status`, `/api/processes?top=N&order=mailbox|handled|memory&filter=F`,
//!   `/api/reports`, `/api/releases`.
//! - `POST /api/deploy` (the archive as the body; `?permanent=true`,
//!   `?health_window_ms=N`; or `?version=V` for a release of the store),
//!   `POST /api/rollback` (`?to=V`), `POST /api/make-permanent`
//!   (`?version=V`: only if V runs). The page sends the version each
//!   confirmation named, so a deploy from elsewhere meanwhile cannot make
//!   an action do something other than what its user confirmed.
//!
//! # Cost to the node
//!
//! The busiest processes come from [`Node::top_processes`] (one pass,
//! counters read under each process's own lock, a bounded heap), never a
//! sort or a serialization of every process; status (which asks each
//! supervisor for its children) is read only when a change begins or ends
//! and every few seconds; at most [`MAX_STREAMS`] pages stream at once.

mod api;
mod auth;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use futures_util::future::{self, Either};
use relive_node::ReleaseHandler;
use relive_runtime::Node;

/// Pages streaming events at once; more are answered 503.
pub const MAX_STREAMS: usize = 16;

/// Why the observer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    /// The address could not be bound.
    #[error("the observer cannot listen on {addr}: {source} (pick another port with --http ADDR:PORT)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The token could not be made or written.
    #[error("the observer's token: {0}")]
    Token(String),
    /// Its thread or runtime could not start.
    #[error("the observer could not start: {0}")]
    Start(#[source] std::io::Error),
}

/// What the observer watches.
#[derive(Clone)]
pub enum Watched {
    /// A node's release handler: everything, and the actions.
    Handler(Arc<ReleaseHandler>),
    /// A bare node (a benchmark's): modules, processes; no release, no
    /// actions.
    Node(Node),
}

impl Watched {
    fn node(&self) -> &Node {
        match self {
            Watched::Handler(handler) => handler.node(),
            Watched::Node(node) => node,
        }
    }
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The largest archive a deploy uploads.
    pub max_upload_bytes: u64,
    /// Where to write the token (0600), for scripts and tests.
    pub token_file: Option<PathBuf>,
    /// Where uploads are written before the handler reads them (made 0700).
    pub upload_dir: PathBuf,
}

/// Parses `--http`'s value: `PORT` (loopback), or `IP:PORT` /
/// `localhost:PORT` / `[IPv6]:PORT`.
///
/// # Errors
/// Not a port or an address with a port, said plainly.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        let port = port.parse::<u16>().map_err(|_| format!("{text:?}: {port:?} is not a port"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!("{text:?} is not an address to listen on: write a port (8080, on 127.0.0.1) or IP:PORT (127.0.0.1:8080)")
    })
}

/// A running observer; dropping it stops it.
pub struct Observer {
    addr: SocketAddr,
    token: String,
    shared: Arc<api::Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Observer {
    /// Binds `settings.addr`, writes the token, and serves `watched` on a
    /// thread of its own.
    ///
    /// # Errors
    /// See [`ObserverError`].
    pub fn start(settings: Settings, watched: Watched) -> Result<Observer, ObserverError> {
        let listener = std::net::TcpListener::bind(settings.addr)
            .map_err(|source| ObserverError::Bind { addr: settings.addr, source })?;
        let addr =
            listener.local_addr().map_err(|source| ObserverError::Bind { addr: settings.addr, source })?;
        listener.set_nonblocking(true).map_err(ObserverError::Start)?;
        let token = auth::new_token().map_err(ObserverError::Token)?;
        if let Some(file) = &settings.token_file {
            auth::write_token(file, &token).map_err(ObserverError::Token)?;
        }
        let shared = Arc::new(api::Shared {
            watched,
            token: token.clone(),
            loopback_only: addr.ip().is_loopback(),
            max_upload_bytes: settings.max_upload_bytes,
            upload_dir: std::path::absolute(&settings.upload_dir).unwrap_or(settings.upload_dir.clone()),
            started: Instant::now(),
            streams: Default::default(),
            uploads: Default::default(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(8)
            .thread_name("relive-observer-io")
            .build()
            .map_err(ObserverError::Start)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served_state = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("relive-observer".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            eprintln!("observer: cannot serve on {addr}: {error}");
                            return;
                        }
                    };
                    let app = api::router(served_state).into_make_service_with_connect_info::<SocketAddr>();
                    let served = std::pin::pin!(axum::serve(listener, app).into_future());
                    // Not a graceful shutdown: a page's event stream never
                    // ends by itself, and nothing it holds needs finishing.
                    if let Either::Left((Err(error), _)) = future::select(served, stopped).await {
                        eprintln!("observer: stopped serving on {addr}: {error}");
                    }
                });
                // Drops the connections still open.
                runtime.shutdown_background();
            })
            .map_err(ObserverError::Start)?;
        Ok(Observer { addr, token, shared, stop: Some(stop), thread: Some(thread) })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token requests must carry.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Pages streaming events now.
    pub fn streaming(&self) -> usize {
        self.shared.streams.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The page's address with the token, to open once.
    pub fn url(&self) -> String {
        format!("http://{}/?token={}", self.addr, self.token)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `<root>/run/http.token`: where the daemon writes the token.
pub fn token_file(root: &Path) -> PathBuf {
    root.join(relive_node::RUN_DIR).join("http.token")
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;

    fn request(addr: SocketAddr, text: &str) -> std::net::TcpStream {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.write_all(text.as_bytes()).unwrap();
        stream
    }

    /// A benchmark's node: read-only, and a page streaming from it does
    /// not keep the observer (and so the benchmark) from stopping.
    #[test]
    fn a_bare_node_is_read_only_and_stops_with_a_page_open() {
        let node = Node::start(relive_runtime::NodeConfig { workers: 1, ..Default::default() });
        let dir = std::env::temp_dir().join(format!("relive-observer-test-{}", std::process::id()));
        let settings = Settings {
            addr: "127.0.0.1:0".parse().unwrap(),
            max_upload_bytes: 1024,
            token_file: Some(dir.join("http.token")),
            upload_dir: dir.join("uploads"),
        };
        let observer = Observer::start(settings, Watched::Node(node.clone())).unwrap();
        let written = std::fs::read_to_string(dir.join("http.token")).unwrap();
        assert_eq!(written.trim(), observer.token());
        let addr = observer.addr();
        let head = |method: &str, path: &str| {
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                observer.token()
            )
        };
        let mut answer = String::new();
        request(addr, &head("POST", "/api/rollback")).read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 409") && answer.contains("without a release handler"),
            "{answer}"
        );

        let mut stream = request(addr, &head("GET", "/api/events?top=3"));
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("event: top") {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "the stream closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buffer[..n]);
        }
        assert_eq!(observer.streaming(), 1);
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(observer);
            let _ = done.send(());
        });
        stopped.recv_timeout(Duration::from_secs(30)).expect("the observer did not stop with a page open");
        node.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(parse_listen("localhost:9000").unwrap(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(parse_listen("0.0.0.0:80").unwrap(), "0.0.0.0:80".parse().unwrap());
        assert_eq!(parse_listen("[::1]:81").unwrap(), "[::1]:81".parse().unwrap());
        let error = parse_listen("example.com:80").unwrap_err();
        assert!(error.contains("IP:PORT"), "{error}");
        assert!(parse_listen("localhost:http").unwrap_err().contains("not a port"));
    }
}
