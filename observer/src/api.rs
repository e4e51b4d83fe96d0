//! The routes: the page, the JSON API, the event stream and the actions.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt};
use relive_node::protocol::{DeployRequest, Request as NodeRequest, RollbackRequest};
use relive_runtime::ProcessOrder;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::auth::{self, COOKIE, Presented};
use crate::{MAX_STREAMS, Watched};

/// The page: one file, no build step.
const PAGE: &str = include_str!("page.html");
/// Most processes a top list returns.
const MAX_TOP: usize = 1000;
/// How often the event stream looks for changes.
const TICK: Duration = Duration::from_millis(250);
/// Ticks between two top lists (1 s).
const TOP_TICKS: u64 = 4;
/// Ticks between two status reads when nothing began or ended (5 s).
const STATUS_TICKS: u64 = 20;

/// What every route shares.
pub(crate) struct Shared {
    pub(crate) watched: Watched,
    pub(crate) token: String,
    pub(crate) loopback_only: bool,
    pub(crate) max_upload_bytes: u64,
    pub(crate) upload_dir: PathBuf,
    pub(crate) started: Instant,
    pub(crate) streams: AtomicUsize,
    pub(crate) uploads: AtomicU64,
}

/// The shared state, as the routes hold it.
type SharedRef = Arc<Shared>;

pub(crate) fn router(shared: SharedRef) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/api/processes", get(processes))
        .route("/api/reports", get(reports))
        .route("/api/releases", get(releases))
        .route("/api/events", get(events))
        .route("/api/deploy", post(deploy).layer(DefaultBodyLimit::disable()))
        .route("/api/rollback", post(rollback))
        .route("/api/make-permanent", post(make_permanent))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// A refusal or failure: the status and a message naming what and why.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], axum::Json(json!({ "error": message.into() })))
        .into_response()
}

async fn not_found(request: Request) -> Response {
    error(StatusCode::NOT_FOUND, format!("no such page or endpoint: {}", request.uri().path()))
}

/// Checks the peer, the host, the origin and the token before any route.
async fn guard(
    State(shared): State<SharedRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(why) = auth::refused_origin(shared.loopback_only, peer, request.method(), request.headers()) {
        return error(StatusCode::FORBIDDEN, why);
    }
    match auth::presented(&shared.token, request.uri(), request.headers()) {
        Presented::Kept => next.run(request).await,
        Presented::Query => {
            let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", shared.token);
            let mut response = if request.method() == Method::GET && request.uri().path() == "/" {
                // Off the address bar and out of the history.
                (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
            } else {
                next.run(request).await
            };
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
        Presented::Missing => error(
            StatusCode::UNAUTHORIZED,
            "this observer needs its token: open the address the node printed at start \
             (http://ADDR/?token=...; the token is also in <root>/run/http.token), or send \
             `Authorization: Bearer TOKEN`",
        ),
        Presented::Wrong => error(
            StatusCode::UNAUTHORIZED,
            "wrong token: the node makes a new one at each start; read it from its log or \
             <root>/run/http.token",
        ),
    }
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// Runs `work` on the blocking pool (it may wait for processes).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        error(StatusCode::INTERNAL_SERVER_ERROR, format!("the observer failed reading the node: {e}"))
    })
}

fn json_response(value: Value) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(value)).into_response()
}

// ------------------------------------------------------------------ data

impl Shared {
    fn handler(&self) -> Option<&Arc<relive_node::ReleaseHandler>> {
        match &self.watched {
            Watched::Handler(handler) => Some(handler),
            Watched::Node(_) => None,
        }
    }

    /// Modules with their versions and processes on each.
    fn modules(&self) -> Value {
        let Some(code) = self.watched.node().code_server() else { return json!([]) };
        let version = |v: &Option<relive_runtime::VersionInfo>| {
            v.as_ref().map(
                |v| json!({ "version": v.version.to_string(), "sha256": v.sha256, "processes": v.processes }),
            )
        };
        Value::Array(
            code.which_modules()
                .iter()
                .map(|m| json!({ "name": m.name, "current": version(&m.current), "old": version(&m.old) }))
                .collect(),
        )
    }

    /// What moves quickly: modules by version, the change running, counts.
    fn live(&self) -> Value {
        let node = self.watched.node();
        let (change, generation) = match self.handler() {
            Some(handler) => {
                let watch = handler.watch().snapshot();
                (serde_json::to_value(&watch.change).unwrap_or(Value::Null), watch.generation)
            }
            None => (Value::Null, 0),
        };
        json!({
            "modules": self.modules(),
            "change": change,
            "generation": generation,
            "processes": node.process_count(),
        })
    }

    /// The release, its state, the tree: [`relive_node::protocol::Status`]
    /// without the list of every process.
    fn status(&self) -> Value {
        let node = self.watched.node();
        let Some(handler) = self.handler() else {
            return json!({
                "release": null,
                "node": { "pid": std::process::id(), "uptime_ms": self.started.elapsed().as_millis() as u64 },
                "modules": self.modules(),
                "processes": node.process_count(),
                "supervisors": [],
                "groups": [],
                "listening": [],
                "actions": false,
            });
        };
        let status = handler.status();
        let groups: Vec<Value> = status
            .processes
            .iter()
            .map(|g| {
                json!({
                    "name": g.name,
                    "module": g.module,
                    "supervisor": g.supervisor,
                    "instances": g.instances,
                    "children": g.children.len(),
                    "running": g.running,
                    "restarts": g.restarts,
                    "restarting": g.children.iter().filter(|c| c.restarting).count(),
                    "pid": if g.children.len() == 1 { g.children[0].pid.clone() } else { None },
                })
            })
            .collect();
        json!({
            "release": status.release,
            "permanent": status.permanent,
            "rollback_to": status.rollback_to,
            "busy": status.busy,
            "node": { "pid": status.pid, "uptime_ms": status.uptime_ms, "root": status.root },
            "supervisor": status.supervisor,
            "modules": status.modules,
            "processes": node.process_count(),
            "supervisors": status.supervisors,
            "groups": groups,
            "listening": status.listening,
            "actions": true,
        })
    }

    fn reports(&self) -> Value {
        match self.handler() {
            Some(handler) => serde_json::to_value(
                handler.watch().snapshot().reports.iter().map(|r| &**r).collect::<Vec<_>>(),
            )
            .unwrap_or(Value::Null),
            None => json!([]),
        }
    }

    fn top(&self, query: &TopQuery) -> Result<Value, String> {
        let order: ProcessOrder = query.order.as_deref().unwrap_or("mailbox").parse()?;
        let n = query.top.unwrap_or(20).min(MAX_TOP);
        let filter = query.filter.as_deref().unwrap_or("").trim();
        let began = Instant::now();
        let found = self.watched.node().top_processes(n, order, filter);
        let took_us = began.elapsed().as_micros() as u64;
        let top: Vec<Value> = found
            .top
            .iter()
            .map(|p| {
                json!({
                    "pid": p.pid.to_string(),
                    "name": p.name.as_deref(),
                    "module": p.module.as_ref().map(|m| &m.0),
                    "version": p.module.as_ref().map(|m| m.1.to_string()),
                    "mailbox": p.mailbox,
                    "handled": p.handled,
                    "memory": p.memory,
                })
            })
            .collect();
        Ok(json!({
            "order": order.as_str(),
            "filter": filter,
            "total": found.total,
            "matched": found.matched,
            "queued": found.queued,
            "took_us": took_us,
            "top": top,
        }))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct TopQuery {
    top: Option<usize>,
    order: Option<String>,
    filter: Option<String>,
}

async fn status(State(shared): State<SharedRef>) -> Response {
    match blocking(move || shared.status()).await {
        Ok(value) => json_response(value),
        Err(response) => response,
    }
}

async fn reports(State(shared): State<SharedRef>) -> Response {
    json_response(shared.reports())
}

async fn processes(State(shared): State<SharedRef>, Query(query): Query<TopQuery>) -> Response {
    match blocking(move || shared.top(&query)).await {
        Ok(Ok(value)) => json_response(value),
        Ok(Err(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(response) => response,
    }
}

async fn releases(State(shared): State<SharedRef>) -> Response {
    let Some(handler) = shared.handler().cloned() else { return json_response(json!([])) };
    node_request(handler, NodeRequest::Releases).await
}

// ---------------------------------------------------------------- events

/// The state of one page's event stream.
struct EventLoop {
    shared: SharedRef,
    query: TopQuery,
    pending: VecDeque<Event>,
    tick: u64,
    last_live: String,
    last_generation: Option<u64>,
    _slot: StreamSlot,
}

/// Counts a stream while it lives.
struct StreamSlot(SharedRef);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn event(name: &str, value: &Value) -> Event {
    Event::default().event(name).data(value.to_string())
}

impl EventLoop {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.tick > 0 {
                tokio::time::sleep(TICK).await;
            }
            let first = self.tick == 0;
            self.tick += 1;
            let shared = Arc::clone(&self.shared);
            let live = blocking(move || shared.live()).await.ok()?;
            let generation = live["generation"].as_u64();
            let changed = generation != self.last_generation;
            self.last_generation = generation;
            let text = live.to_string();
            if text != self.last_live {
                self.pending.push_back(Event::default().event("live").data(text.clone()));
                self.last_live = text;
            }
            if first || changed || self.tick.is_multiple_of(STATUS_TICKS) {
                let shared = Arc::clone(&self.shared);
                let status = blocking(move || shared.status()).await.ok()?;
                self.pending.push_back(event("status", &status));
            }
            if first || changed {
                self.pending.push_back(event("reports", &self.shared.reports()));
            }
            if first || self.tick.is_multiple_of(TOP_TICKS) {
                let shared = Arc::clone(&self.shared);
                let query = self.query.clone();
                match blocking(move || shared.top(&query)).await.ok()? {
                    Ok(top) => self.pending.push_back(event("top", &top)),
                    Err(why) => self.pending.push_back(event("failure", &json!({ "error": why }))),
                }
            }
        }
    }
}

async fn events(State(shared): State<SharedRef>, Query(query): Query<TopQuery>) -> Response {
    if shared.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        shared.streams.fetch_sub(1, Ordering::SeqCst);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} pages already stream from this observer; close one and reload"),
        );
    }
    let stream = EventLoop {
        shared: Arc::clone(&shared),
        query,
        pending: VecDeque::new(),
        tick: 0,
        last_live: String::new(),
        last_generation: None,
        _slot: StreamSlot(shared),
    };
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.next_event().await?;
        Some((Ok::<Event, Infallible>(event), stream))
    });
    sse(events)
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut response = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

// --------------------------------------------------------------- actions

fn no_actions() -> Response {
    error(
        StatusCode::CONFLICT,
        "this observer watches a node without a release handler (a benchmark's): \
         there is nothing to deploy, roll back or make permanent",
    )
}

/// Asks the release handler, as the control socket does.
async fn node_request(handler: Arc<relive_node::ReleaseHandler>, request: NodeRequest) -> Response {
    let answer = blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(request, &mut |_| {})))
    })
    .await;
    match answer {
        Ok(Ok(Ok(response))) => json_response(serde_json::to_value(&response).unwrap_or(Value::Null)),
        Ok(Ok(Err(failure))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::to_value(&failure).unwrap_or(Value::Null)),
        )
            .into_response(),
        Ok(Err(_)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the node failed while answering (a bug: see its log); it keeps running",
        ),
        Err(response) => response,
    }
}

#[derive(Debug, Default, Deserialize)]
struct DeployQuery {
    /// A release of the store to go to, instead of an uploaded archive.
    version: Option<semver::Version>,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    health_window_ms: u64,
}

fn too_large(shared: &Shared, size: Option<u64>) -> Response {
    let size = size.map_or_else(|| "more".to_string(), |s| format!("{s} bytes"));
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the archive is too large: {size}, and this observer takes at most {} bytes \
             (the node's --max-archive-size, or --http-max-upload); nothing was changed",
            shared.max_upload_bytes
        ),
    )
}

/// Removes an upload when dropped, whatever happened to the deploy.
struct Upload(PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes the request's body to a new 0600 file, refusing it past the cap.
async fn receive(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<(Upload, u64), Response> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|size| size > shared.max_upload_bytes) {
        return Err(too_large(shared, declared));
    }
    let failed = |what: &str, e: std::io::Error| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} {}: {e}; nothing was changed", shared.upload_dir.display()),
        )
    };
    let mut dir = tokio::fs::DirBuilder::new();
    dir.recursive(true).mode(0o700);
    dir.create(&shared.upload_dir).await.map_err(|e| failed("creating the upload directory", e))?;
    let n = shared.uploads.fetch_add(1, Ordering::Relaxed);
    let upload = Upload(shared.upload_dir.join(format!("upload-{}-{n}.tar.gz", std::process::id())));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&upload.0)
        .await
        .map_err(|e| failed("writing an upload in", e))?;
    let mut size = 0u64;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("the upload broke off after {size} bytes: {e}; nothing was changed"),
            )
        })?;
        size += chunk.len() as u64;
        if size > shared.max_upload_bytes {
            return Err(too_large(shared, declared));
        }
        file.write_all(&chunk).await.map_err(|e| failed("writing an upload in", e))?;
    }
    file.flush().await.map_err(|e| failed("writing an upload in", e))?;
    Ok((upload, size))
}

async fn deploy(
    State(shared): State<SharedRef>,
    Query(query): Query<DeployQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(handler) = shared.handler().cloned() else { return no_actions() };
    if let Some(version) = query.version {
        return node_request(handler, NodeRequest::Rollback(RollbackRequest { to: Some(version) })).await;
    }
    let (upload, size) = match receive(&shared, &headers, body).await {
        Ok(received) => received,
        Err(response) => return response,
    };
    if size == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "no archive: send a release archive (relive release build) as the request's body, \
             or ?version=V to go to a release of the store; nothing was changed",
        );
    }
    let request = NodeRequest::Deploy(DeployRequest {
        archive: upload.0.clone(),
        permanent: query.permanent,
        health_window_ms: query.health_window_ms,
        ..DeployRequest::default()
    });
    let response = node_request(handler, request).await;
    drop(upload);
    response
}

#[derive(Debug, Default, Deserialize)]
struct RollbackQuery {
    to: Option<semver::Version>,
}

async fn rollback(State(shared): State<SharedRef>, Query(query): Query<RollbackQuery>) -> Response {
    let Some(handler) = shared.handler().cloned() else { return no_actions() };
    node_request(handler, NodeRequest::Rollback(RollbackRequest { to: query.to })).await
}

#[derive(Debug, Default, Deserialize)]
struct MakePermanentQuery {
    /// The version the page showed running when its user confirmed.
    version: Option<semver::Version>,
}

/// Makes the running release permanent; with `?version=V`, only if V is
/// the one that runs (the page sends what its confirmation named, so a
/// deploy from elsewhere since is not made permanent in its name). The
/// release handler checks it while no other change can run.
async fn make_permanent(
    State(shared): State<SharedRef>,
    Query(query): Query<MakePermanentQuery>,
) -> Response {
    let Some(handler) = shared.handler().cloned() else { return no_actions() };
    node_request(handler, NodeRequest::make_permanent(query.version)).await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use tower_service::Service;

    use super::*;

    /// One request through the whole router (the guard included), as if
    /// it came from `peer`.
    fn ask(
        shared: &SharedRef,
        peer: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(Body::empty()).unwrap();
        request.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let response = router(Arc::clone(shared)).call(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        })
    }

    /// Bound to loopback, a peer from elsewhere is refused even with the
    /// token, and a loopback peer with it is served: the guard sits in
    /// front of every route.
    #[test]
    fn a_peer_from_outside_loopback_is_refused_whatever_it_carries() {
        let node =
            relive_runtime::Node::start(relive_runtime::NodeConfig { workers: 1, ..Default::default() });
        let shared = Arc::new(Shared {
            watched: Watched::Node(node.clone()),
            token: "0123456789abcdef".into(),
            loopback_only: true,
            max_upload_bytes: 1024,
            upload_dir: std::env::temp_dir(),
            started: Instant::now(),
            streams: AtomicUsize::new(0),
            uploads: AtomicU64::new(0),
        });
        let bearer = [("authorization", "Bearer 0123456789abcdef"), ("host", "127.0.0.1:8080")];
        for (method, path) in
            [(Method::GET, "/api/status"), (Method::GET, "/"), (Method::POST, "/api/rollback")]
        {
            let (status, body) = ask(&shared, "192.0.2.7:40000", method.clone(), path, &bearer);
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
            let why = body["error"].as_str().unwrap();
            assert!(why.contains("192.0.2.7") && why.contains("loopback only"), "{why}");
        }
        let (status, body) = ask(&shared, "127.0.0.1:40000", Method::GET, "/api/status", &bearer);
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["actions"], json!(false));
        let (status, body) = ask(&shared, "127.0.0.1:40000", Method::GET, "/api/status", &bearer[1..]);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        // Bound to another address on purpose: any peer with the token.
        let open = Arc::new(Shared { loopback_only: false, ..Arc::into_inner(shared).unwrap() });
        let (status, body) = ask(
            &open,
            "192.0.2.7:40000",
            Method::GET,
            "/api/status",
            &[bearer[0], ("host", "node.example:8080")],
        );
        assert_eq!(status, StatusCode::OK, "{body}");
        node.shutdown();
    }
}
