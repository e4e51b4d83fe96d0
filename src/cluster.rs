//! Clusters: `relive cluster deploy|status` and, on every distributed node,
//! the release handler's service over Erlang distribution.
//!
//! A node started with `--sname`/`--name` registers `relive_release_handler`,
//! a process that answers gen_server calls (terms, so `erl` can call it too):
//!
//! - `{request, Json}`: one line of the control protocol (node/src/protocol.rs),
//!   answered `{reply, Json}` with its final reply line. The same requests as
//!   the control socket: a peer that has the cookie may do what the node's
//!   user may do, as in Erlang.
//! - `{upload_begin, Size, Sha256Hex}` → `{ok, Id}`, `{upload_chunk, Id,
//!   Offset, Bytes}` → `ok`, `{upload_end, Id}` → `ok`: an archive copied to
//!   `<root>/incoming/` (under the node's archive cap, checked against its
//!   size and sha256 before it is kept), so a deploy can name an archive
//!   the node's machine does not have.
//! - `{deploy, Id, Json}`: the deploy request `Json` (a control-protocol
//!   line) on the uploaded archive `Id`; answered `{reply, Json}`; the
//!   upload is removed afterwards, whatever the outcome.
//!
//! Long requests run on a thread of their own with the reply deferred, so
//! the service never holds a scheduler worker for a deploy's health window.
//!
//! `relive cluster deploy ARCHIVE --nodes a@h,b@h,c@h` is a hidden node that
//! checks every node runs the same release, then upgrades them one after
//! the other; a node whose deploy fails (a refused plan, a failed canary or
//! health window) has rolled itself back, the deploy stops there and the
//! nodes after it are never touched. A report per node.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use relive_dist::{DistConfig, Distribution, Term, term};
use relive_node::ReleaseHandler;
use relive_node::protocol::{self, DeployRequest, Envelope, Failure, Reply, Request, Response};
use relive_runtime::{Actor, Ctx, Message, Node, Pid, RemoteMessage, ReplyTo};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::control::SafetyArgs;

/// The name the release handler's service is registered under on every
/// distributed node.
pub const SERVICE: &str = "relive_release_handler";

/// Where uploads land under the node's root.
const INCOMING: &str = "incoming";

/// Bytes per upload chunk: well under any frame cap, big enough that the
/// round trips do not dominate.
const CHUNK_BYTES: usize = 1 << 20;

// ---------------------------------------------------------------------------
// The node side.

/// Registers [`SERVICE`] on `node`, answering with `handler`. Partial
/// uploads a crash left in `<root>/incoming` are removed first.
///
/// # Errors
/// The incoming directory cannot be made, or the name is taken.
pub fn serve(node: &Node, handler: Arc<ReleaseHandler>, max_archive_bytes: u64) -> anyhow::Result<Pid> {
    let incoming = handler.root().join(INCOMING);
    if incoming.exists() {
        fs::remove_dir_all(&incoming).with_context(|| format!("clearing {}", incoming.display()))?;
    }
    fs::create_dir_all(&incoming).with_context(|| format!("creating {}", incoming.display()))?;
    let service = Service { handler, incoming, max_archive_bytes, uploads: HashMap::new(), next_id: 1 };
    let pid = node.spawn(service).map_err(|e| anyhow::anyhow!("starting {SERVICE}: {e}"))?;
    if let Err(error) = node.register(SERVICE, pid) {
        node.exit(pid, relive_runtime::ExitReason::Kill);
        bail!("registering {SERVICE}: {error}");
    }
    Ok(pid)
}

struct Upload {
    file: File,
    path: PathBuf,
    size: u64,
    sha256: String,
    written: u64,
    complete: bool,
}

struct Service {
    handler: Arc<ReleaseHandler>,
    incoming: PathBuf,
    max_archive_bytes: u64,
    uploads: HashMap<u64, Upload>,
    next_id: u64,
}

fn error_term(message: impl Into<String>) -> Term {
    term::tuple(vec![term::atom("error"), term::binary(message.into().into_bytes())])
}

fn binary_of(term: &Term) -> Option<&[u8]> {
    match term {
        Term::Binary(binary) => Some(&binary.bytes),
        _ => None,
    }
}

fn integer_of(term: &Term) -> Option<u64> {
    match term {
        Term::FixInteger(n) => u64::try_from(n.value).ok(),
        Term::BigInteger(n) => u64::try_from(&n.value).ok(),
        _ => None,
    }
}

impl Service {
    fn answer(&mut self, request: Term, reply: ReplyTo) {
        let elements = match &request {
            Term::Tuple(tuple) => tuple.elements.as_slice(),
            _ => &[],
        };
        let tag = elements.first().and_then(term::atom_name);
        let now = match (tag, elements) {
            (Some("request"), [_, json]) => match binary_of(json).map(std::str::from_utf8) {
                Some(Ok(line)) => {
                    let line = line.to_owned();
                    self.spawn_request(line, None, reply);
                    return;
                }
                _ => error_term(
                    "{request, Json}: Json must be a UTF-8 binary holding one control-protocol line",
                ),
            },
            (Some("deploy"), [_, id, json]) => {
                match (integer_of(id), binary_of(json).map(std::str::from_utf8)) {
                    (Some(id), Some(Ok(line))) => match self.uploads.remove(&id) {
                        Some(upload) if upload.complete => {
                            let line = line.to_owned();
                            self.spawn_request(line, Some(upload.path), reply);
                            return;
                        }
                        Some(upload) => {
                            let _ = fs::remove_file(&upload.path);
                            error_term(format!(
                                "upload {id} is not complete ({} of {} bytes): nothing was deployed",
                                upload.written, upload.size
                            ))
                        }
                        None => error_term(format!("no upload {id} on this node: upload the archive first")),
                    },
                    _ => error_term("{deploy, Id, Json}: Id is an upload id, Json a UTF-8 binary"),
                }
            }
            (Some("upload_begin"), [_, size, sha]) => self.upload_begin(integer_of(size), binary_of(sha)),
            (Some("upload_chunk"), [_, id, offset, bytes]) => {
                self.upload_chunk(integer_of(id), integer_of(offset), binary_of(bytes))
            }
            (Some("upload_end"), [_, id]) => self.upload_end(integer_of(id)),
            _ => error_term(format!(
                "{SERVICE} does not know {request}: send {{request, Json}}, {{upload_begin, Size, Sha256}}, \
                 {{upload_chunk, Id, Offset, Bytes}}, {{upload_end, Id}} or {{deploy, Id, Json}}"
            )),
        };
        reply.reply_with(relive_dist::encode(&now));
    }

    fn upload_begin(&mut self, size: Option<u64>, sha: Option<&[u8]>) -> Term {
        let (Some(size), Some(sha)) = (size, sha) else {
            return error_term("{upload_begin, Size, Sha256Hex}: Size is an integer, Sha256Hex a binary");
        };
        if size > self.max_archive_bytes {
            return error_term(format!(
                "the archive is {size} bytes, over this node's cap of {} bytes (relive node start --max-archive-size)",
                self.max_archive_bytes
            ));
        }
        let sha256 = String::from_utf8_lossy(sha).to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return error_term("Sha256Hex must be 64 hex digits");
        }
        // One upload at a time per client is the normal case; a few stale
        // ones (a client that died) are dropped so they cannot fill the disk.
        if self.uploads.len() >= 4 {
            let oldest = *self.uploads.keys().min().expect("not empty");
            if let Some(stale) = self.uploads.remove(&oldest) {
                let _ = fs::remove_file(stale.path);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let path = self.incoming.join(format!("upload-{id}.tar.gz"));
        match File::create(&path) {
            Ok(file) => {
                self.uploads.insert(id, Upload { file, path, size, sha256, written: 0, complete: false });
                term::tuple(vec![term::atom("ok"), Term::from(eetf::BigInteger::from(id))])
            }
            Err(error) => error_term(format!("creating {}: {error}", path.display())),
        }
    }

    fn upload_chunk(&mut self, id: Option<u64>, offset: Option<u64>, bytes: Option<&[u8]>) -> Term {
        let (Some(id), Some(offset), Some(bytes)) = (id, offset, bytes) else {
            return error_term("{upload_chunk, Id, Offset, Bytes}: integers and a binary");
        };
        let Some(upload) = self.uploads.get_mut(&id) else {
            return error_term(format!("no upload {id} on this node"));
        };
        if offset != upload.written || upload.complete {
            return error_term(format!("upload {id}: chunk at offset {offset}, expected {}", upload.written));
        }
        if upload.written + bytes.len() as u64 > upload.size {
            let path = upload.path.clone();
            self.uploads.remove(&id);
            let _ = fs::remove_file(path);
            return error_term(format!("upload {id}: more bytes than announced; dropped"));
        }
        if let Err(error) = upload.file.write_all(bytes) {
            let path = upload.path.clone();
            self.uploads.remove(&id);
            let _ = fs::remove_file(&path);
            return error_term(format!("writing {}: {error}", path.display()));
        }
        upload.written += bytes.len() as u64;
        term::atom("ok")
    }

    fn upload_end(&mut self, id: Option<u64>) -> Term {
        let Some(id) = id else { return error_term("{upload_end, Id}: Id is an integer") };
        let Some(upload) = self.uploads.get_mut(&id) else {
            return error_term(format!("no upload {id} on this node"));
        };
        let checked = upload.file.sync_all().map_err(|e| e.to_string()).and_then(|()| {
            if upload.written != upload.size {
                return Err(format!("{} of {} bytes arrived", upload.written, upload.size));
            }
            let digest = sha256_file(&upload.path).map_err(|e| e.to_string())?;
            if digest != upload.sha256 {
                return Err(format!("sha256 {digest}, announced {}", upload.sha256));
            }
            Ok(())
        });
        match checked {
            Ok(()) => {
                upload.complete = true;
                term::atom("ok")
            }
            Err(why) => {
                let path = upload.path.clone();
                self.uploads.remove(&id);
                let _ = fs::remove_file(path);
                error_term(format!("upload {id} is damaged ({why}); dropped: upload it again"))
            }
        }
    }

    /// Runs one control-protocol line on a thread of its own and replies
    /// from there; `archive` (an upload) replaces a deploy's archive and is
    /// removed afterwards.
    fn spawn_request(&self, line: String, archive: Option<PathBuf>, reply: ReplyTo) {
        let handler = Arc::clone(&self.handler);
        let spawned = std::thread::Builder::new().name("cluster-request".into()).spawn(move || {
            let answer = run_line(&handler, &line, archive.as_deref());
            if let Some(path) = archive {
                let _ = fs::remove_file(path);
            }
            reply.reply_with(relive_dist::encode(&term::tuple(vec![
                term::atom("reply"),
                term::binary(protocol::encode(&answer).into_bytes()),
            ])));
        });
        if let Err(error) = spawned {
            tracing::error!("{SERVICE}: could not start a thread for a request: {error}");
        }
    }
}

impl Actor for Service {
    fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}

    fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        match request.downcast::<RemoteMessage>() {
            Ok(request) => match term::decode(&request.term.0) {
                Ok((term, _)) => self.answer(term, reply),
                Err(error) => reply.reply_with(relive_dist::encode(&error_term(error.0))),
            },
            Err(_) => reply.reply_with(relive_dist::encode(&error_term("not an Erlang term"))),
        }
    }
}

fn run_line(handler: &ReleaseHandler, line: &str, archive: Option<&Path>) -> Reply {
    let envelope = match protocol::decode_request(line) {
        Ok(envelope) => envelope,
        Err(error) => return Reply::Error(Failure::new(error)),
    };
    let mut request = envelope.request;
    if let Some(path) = archive {
        match &mut request {
            Request::Deploy(deploy) => deploy.archive = path.to_path_buf(),
            other => {
                return Reply::Error(Failure::new(format!(
                    "{{deploy, Id, Json}} carries a {} request; it must be a deploy",
                    other.name()
                )));
            }
        }
    }
    if request == Request::Stop {
        return Reply::Error(Failure::new(
            "stop is not served over distribution: stop the node on its machine (relive node stop)",
        ));
    }
    let answer =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(request, &mut |_| {})))
            .unwrap_or_else(|_| {
                Err(Failure::new("the node failed while answering (a bug: see its log); it keeps running"))
            });
    match answer {
        Ok(response) => Reply::Ok(response),
        Err(failure) => Reply::Error(failure),
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

// ---------------------------------------------------------------------------
// The CLI side.

#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Upgrade nodes one after the other; stop at the first that fails
    /// (it rolls itself back) and leave the rest untouched.
    Deploy(ClusterDeployArgs),
    /// The release each node runs.
    Status(ClusterStatusArgs),
}

#[derive(Args)]
struct NodesArg {
    /// The nodes, in order: NAME@HOST,NAME@HOST,...
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// The cookie file (default: ~/.erlang.cookie, as erl).
    #[arg(long, value_name = "FILE")]
    cookie_file: Option<PathBuf>,
    /// How long to wait for a node to answer a short request.
    #[arg(long, value_name = "D", value_parser = crate::control::parse_duration, default_value = "10s")]
    connect_timeout: Duration,
}

#[derive(Args)]
struct ClusterDeployArgs {
    /// The release archive (read here and copied to each node).
    archive: PathBuf,
    #[command(flatten)]
    nodes: NodesArg,
    /// Watch each node's new code this long before going to the next (a
    /// failed signal rolls that node back and stops the deploy).
    #[arg(long, value_name = "D", value_parser = crate::control::parse_duration, default_value = "10s")]
    window: Duration,
    #[command(flatten)]
    safety: SafetyArgs,
    /// Make the release permanent on each node once every node runs it.
    #[arg(long)]
    permanent: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ClusterStatusArgs {
    #[command(flatten)]
    nodes: NodesArg,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// What happened on one node.
#[derive(Clone, Debug, Serialize)]
struct NodeReport {
    node: String,
    /// upgraded, rolled_back, failed, untouched
    outcome: &'static str,
    from: Option<String>,
    to: Option<String>,
    /// The version it runs at the end, when known.
    runs: Option<String>,
    detail: String,
    seconds: f64,
}

#[derive(Serialize)]
struct ClusterReport {
    archive: PathBuf,
    release: String,
    version: String,
    completed: bool,
    nodes: Vec<NodeReport>,
}

pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Deploy(args) => deploy(args),
        ClusterCommand::Status(args) => status(args),
    }
}

/// A hidden node of this command, talking to the cluster's services.
struct Cluster {
    dist: Distribution,
    short_timeout: Duration,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.dist.stop();
    }
}

impl Cluster {
    fn connect(nodes: &NodesArg) -> anyhow::Result<Cluster> {
        let mut seen = std::collections::HashSet::new();
        for node in &nodes.nodes {
            if !node.contains('@') {
                bail!(
                    "--nodes: {node:?} is not a node name: write NAME@HOST (as `relive node start --sname` prints it)"
                );
            }
            if !seen.insert(node) {
                bail!("--nodes names {node} twice");
            }
        }
        let cookie = relive_dist::cookie::read_or_create(nodes.cookie_file.as_deref())?;
        let name = format!("relive_cluster_{}", std::process::id());
        let dist = Distribution::start_client(DistConfig::new(&name, cookie))
            .context("starting this command's hidden node")?;
        Ok(Cluster { dist, short_timeout: nodes.connect_timeout })
    }

    fn call(&self, node: &str, request: Term, timeout: Duration) -> anyhow::Result<Term> {
        let reply = self.dist.call(node, SERVICE, request, timeout).with_context(|| node.to_string())?;
        if let Term::Tuple(tuple) = &reply
            && let [tag, message] = tuple.elements.as_slice()
            && term::atom_name(tag) == Some("error")
        {
            let text = binary_of(message)
                .map_or_else(|| message.to_string(), |b| String::from_utf8_lossy(b).into_owned());
            bail!("{node}: {text}");
        }
        Ok(reply)
    }

    /// One control-protocol request; its final reply.
    fn request(
        &self,
        node: &str,
        request: Request,
        timeout: Duration,
    ) -> anyhow::Result<Result<Response, Failure>> {
        let line = protocol::encode(&Envelope::new(request, false));
        let reply = self.call(
            node,
            term::tuple(vec![term::atom("request"), term::binary(line.into_bytes())]),
            timeout,
        )?;
        decode_reply(node, &reply)
    }

    fn status(&self, node: &str) -> anyhow::Result<protocol::Status> {
        match self.request(node, Request::Status, self.short_timeout)? {
            Ok(Response::Status(status)) => Ok(*status),
            Ok(other) => bail!("{node}: answered status with {other:?}"),
            Err(failure) => bail!("{node}: {}", failure.error),
        }
    }

    fn upload(&self, node: &str, bytes: &[u8], sha256: &str) -> anyhow::Result<u64> {
        let begin = term::tuple(vec![
            term::atom("upload_begin"),
            Term::from(eetf::BigInteger::from(bytes.len() as u64)),
            term::binary(sha256.as_bytes().to_vec()),
        ]);
        let reply = self.call(node, begin, self.short_timeout)?;
        let id = match &reply {
            Term::Tuple(tuple) => match tuple.elements.as_slice() {
                [ok, id] if term::atom_name(ok) == Some("ok") => integer_of(id),
                _ => None,
            },
            _ => None,
        }
        .with_context(|| format!("{node}: upload_begin answered {reply}"))?;
        for (index, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            let chunk_term = term::tuple(vec![
                term::atom("upload_chunk"),
                Term::from(eetf::BigInteger::from(id)),
                Term::from(eetf::BigInteger::from((index * CHUNK_BYTES) as u64)),
                term::binary(chunk.to_vec()),
            ]);
            self.call(node, chunk_term, self.short_timeout.max(Duration::from_secs(30)))?;
        }
        let end = term::tuple(vec![term::atom("upload_end"), Term::from(eetf::BigInteger::from(id))]);
        self.call(node, end, self.short_timeout.max(Duration::from_secs(60)))?;
        Ok(id)
    }
}

fn decode_reply(node: &str, reply: &Term) -> anyhow::Result<Result<Response, Failure>> {
    let line = match reply {
        Term::Tuple(tuple) => match tuple.elements.as_slice() {
            [tag, json] if term::atom_name(tag) == Some("reply") => binary_of(json),
            _ => None,
        },
        _ => None,
    }
    .with_context(|| format!("{node}: {SERVICE} answered {reply}, not {{reply, Json}}"))?;
    let reply: Reply =
        serde_json::from_slice(line).with_context(|| format!("{node}: a reply this relive cannot read"))?;
    match reply {
        Reply::Ok(response) => Ok(Ok(response)),
        Reply::Error(failure) => Ok(Err(failure)),
        Reply::Progress(_) => bail!("{node}: a progress line where the reply was due"),
    }
}

fn running(status: &protocol::Status) -> String {
    format!("{} {}", status.release.name, status.release.version)
}

fn deploy(args: ClusterDeployArgs) -> anyhow::Result<()> {
    let bytes = fs::read(&args.archive).with_context(|| format!("reading {}", args.archive.display()))?;
    // Verified here first: a damaged archive is refused before any node
    // is asked anything (each node verifies it again, with its own keys).
    let contents =
        relive_releases::archive::verify_bytes(&args.archive, &bytes, None, false).with_context(|| {
            format!("{} is not a release archive this relive can read", args.archive.display())
        })?;
    let release = contents.manifest.release.name.clone();
    let release_version = contents.manifest.release.version.clone();
    let version = release_version.to_string();
    let sha256 = relive_releases::archive::sha256_hex(&bytes);
    let cluster = Cluster::connect(&args.nodes)?;

    // Every node must answer and run the same release before anything moves.
    let mut from = None;
    let mut problems = Vec::new();
    for node in &args.nodes.nodes {
        match cluster.status(node) {
            Ok(status) => {
                if let Some(busy) = &status.busy {
                    problems.push(format!("{node} is busy ({busy})"));
                }
                let runs = running(&status);
                match &from {
                    None => from = Some((node.clone(), runs, status.release.version.to_string())),
                    Some((first, first_runs, _)) if *first_runs != runs => {
                        problems.push(format!("{node} runs {runs}, {first} runs {first_runs}"))
                    }
                    Some(_) => {}
                }
            }
            Err(error) => problems.push(format!("{error:#}")),
        }
    }
    if !problems.is_empty() {
        bail!(
            "cluster deploy refused before any node changed:\n  {}\n(every node must answer and run the same release; fix that, then deploy again)",
            problems.join("\n  ")
        );
    }
    let (_, from_runs, from_version) = from.expect("--nodes is required");
    if !from_runs.starts_with(&format!("{release} ")) {
        bail!("the archive holds {release} {version}, the nodes run {from_runs}: nothing was changed");
    }

    let mut request = DeployRequest {
        archive: PathBuf::new(),
        health_window_ms: args.window.as_millis() as u64,
        ..DeployRequest::default()
    };
    args.safety.apply(&mut request)?;
    request.options().map_err(|error| anyhow::anyhow!(error))?;
    let deploy_timeout = args.window
        + request.canary.as_ref().map_or(Duration::ZERO, |c| Duration::from_millis(c.window_ms))
        + Duration::from_secs(300);

    let mut reports: Vec<NodeReport> = Vec::new();
    let mut stopped = false;
    for node in &args.nodes.nodes {
        if stopped {
            reports.push(NodeReport {
                node: node.clone(),
                outcome: "untouched",
                from: Some(from_version.clone()),
                to: None,
                runs: Some(from_version.clone()),
                detail: "not deployed: an earlier node failed".into(),
                seconds: 0.0,
            });
            continue;
        }
        if !args.json {
            eprintln!("{node}: deploying {release} {version} ...");
        }
        let started = Instant::now();
        let outcome = cluster.upload(node, &bytes, &sha256).and_then(|id| {
            let line = protocol::encode(&Envelope::new(Request::Deploy(request.clone()), false));
            let term = term::tuple(vec![
                term::atom("deploy"),
                Term::from(eetf::BigInteger::from(id)),
                term::binary(line.into_bytes()),
            ]);
            let reply = cluster.call(node, term, deploy_timeout)?;
            decode_reply(node, &reply)
        });
        let seconds = started.elapsed().as_secs_f64();
        let report = match outcome {
            Ok(Ok(response)) => NodeReport {
                node: node.clone(),
                outcome: "upgraded",
                from: Some(from_version.clone()),
                to: Some(version.clone()),
                runs: Some(version.clone()),
                detail: deployed_detail(&response),
                seconds,
            },
            Ok(Err(failure)) => {
                stopped = true;
                // The handler never records a failed deploy: the node runs
                // what it ran. Ask it, so the report says what is true.
                let runs = cluster.status(node).ok().map(|s| s.release.version.to_string());
                NodeReport {
                    node: node.clone(),
                    outcome: if runs.as_deref() == Some(from_version.as_str()) {
                        "rolled_back"
                    } else {
                        "failed"
                    },
                    from: Some(from_version.clone()),
                    to: Some(version.clone()),
                    runs,
                    detail: failure.error,
                    seconds,
                }
            }
            Err(error) => {
                stopped = true;
                // The node did not answer in time, or the link broke: if it
                // runs the new release, roll it back; say what it runs.
                let detail = format!("{error:#}");
                let runs = cluster.status(node).ok().map(|s| s.release.version.to_string());
                let rolled = if runs.as_deref() == Some(version.as_str()) {
                    let rollback = Request::Rollback(protocol::RollbackRequest::default());
                    matches!(cluster.request(node, rollback, deploy_timeout), Ok(Ok(_)))
                } else {
                    false
                };
                let runs = if rolled {
                    cluster.status(node).ok().map(|s| s.release.version.to_string())
                } else {
                    runs
                };
                NodeReport {
                    node: node.clone(),
                    outcome: if rolled { "rolled_back" } else { "failed" },
                    from: Some(from_version.clone()),
                    to: Some(version.clone()),
                    runs,
                    detail,
                    seconds,
                }
            }
        };
        if !args.json {
            eprintln!("{node}: {} ({})", report.outcome.replace('_', " "), report.detail);
        }
        reports.push(report);
    }

    let completed = !stopped;
    if completed && args.permanent {
        for (node, report) in args.nodes.nodes.iter().zip(reports.iter_mut()) {
            // Only the version this rollout deployed: a node rolled back by
            // someone else meanwhile keeps its permanent release.
            let request = Request::make_permanent(Some(release_version.clone()));
            match cluster.request(node, request, cluster.short_timeout) {
                Ok(Ok(_)) => report.detail.push_str("; made permanent"),
                Ok(Err(failure)) => {
                    report.detail.push_str(&format!("; not made permanent: {}", failure.error))
                }
                Err(error) => report.detail.push_str(&format!("; not made permanent: {error:#}")),
            }
        }
    }

    let report = ClusterReport { archive: args.archive.clone(), release, version, completed, nodes: reports };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    if !completed {
        bail!("cluster deploy stopped at the first failed node; the nodes after it were not touched");
    }
    Ok(())
}

fn deployed_detail(response: &Response) -> String {
    match response {
        Response::Deployed(deployed) => {
            let pause = &deployed.report.pause;
            format!(
                "{} processes moved, pause p99 {:.1} µs, health window passed",
                deployed.report.moved, pause.p99_us
            )
        }
        other => format!("{other:?}"),
    }
}

fn print_report(report: &ClusterReport) {
    println!("{} {} on {} node(s):", report.release, report.version, report.nodes.len());
    let width = report.nodes.iter().map(|n| n.node.len()).max().unwrap_or(4).max(4);
    println!("  {:width$}  {:12}  {:8}  {:>8}  detail", "node", "outcome", "runs", "seconds");
    for node in &report.nodes {
        println!(
            "  {:width$}  {:12}  {:8}  {:>8.1}  {}",
            node.node,
            node.outcome,
            node.runs.as_deref().unwrap_or("?"),
            node.seconds,
            node.detail
        );
    }
}

fn status(args: ClusterStatusArgs) -> anyhow::Result<()> {
    let cluster = Cluster::connect(&args.nodes)?;
    let mut rows = Vec::new();
    for node in &args.nodes.nodes {
        let row = match cluster.status(node) {
            Ok(status) => serde_json::json!({
                "node": node, "release": status.release.name, "version": status.release.version.to_string(),
                "state": status.release.state, "busy": status.busy,
            }),
            Err(error) => serde_json::json!({ "node": node, "error": format!("{error:#}") }),
        };
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        for row in &rows {
            match row.get("error") {
                Some(error) => println!(
                    "{}  unreachable: {}",
                    row["node"].as_str().unwrap_or("?"),
                    error.as_str().unwrap_or("?")
                ),
                None => println!(
                    "{}  {} {}  {}",
                    row["node"].as_str().unwrap_or("?"),
                    row["release"].as_str().unwrap_or("?"),
                    row["version"].as_str().unwrap_or("?"),
                    row["state"]
                ),
            }
        }
    }
    if rows.iter().any(|row| row.get("error").is_some()) {
        bail!("some nodes did not answer");
    }
    Ok(())
}
