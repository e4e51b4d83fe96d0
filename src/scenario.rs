//! `relive scenario run FILE... [--json]`: upgrade scenarios (DESIGN.md
//! §7) written in TOML, run against a real node.
//!
//! A scenario names an application (`app = "kv"`) and where its releases
//! are, and lists steps, each a table `[[step]]` with exactly one action.
//!
//! ```toml
//! [scenario]
//! name = "counters upgraded under load"
//! app = "counters"
//! outcome = "what the scenario must show, in words"
//! releases = "../releases"   # optional: holds <app>-<version>/release.toml
//! ```
//!
//! The release a `boot` or `deploy` step names comes from, in order: the
//! step's `path` (a directory holding release.toml, built by the runner,
//! or a release archive used as it is), else `<releases>/<app>-<version>`,
//! else, without `releases`, the relive checkout's
//! examples/releases/<app>-<version>. Paths are relative to the scenario
//! file; the release found must be `app` at the step's version.
//!
//! | step | what it does |
//! |---|---|
//! | `boot = "1.0.0"` | starts a node on a temporary root booting that release; with `path = "DIR-or-ARCHIVE"` |
//! | `load = { clients = 4, rate = 2000, duration = "3s", pipeline = 8 }` | starts RESP clients (SET/GET of their own key, every reply checked) that run until `stop_load`, the end or `duration`; `rate` caps the requests per second of all clients together, `pipeline` writes that many SET/GET pairs before reading the replies (all but `clients` optional) |
//! | `load = { kind = "json", to = "counter", call = "Get", cast = { Add = 1 }, clients = 2, rate = 500, duration = "3s" }` | starts clients (1 to 32) that each send, through the node's control socket, the JSON call and/or cast (written as TOML) to the process `to`, in turn; a refused call or cast counts as a failed request (`failed_requests`), a lost connection as a dropped one; `rate` and `duration` as for RESP |
//! | `stop_load = true` | stops the clients (their figures are kept) |
//! | `deploy = "1.1.0"` | deploys that release live; with `path` (as for boot), `health_window = "300ms"`, `permanent = true`, `expect = "ok" \| "refused" \| "rolled_back"` (default ok), `error_contains = "..."`; and the options below |
//! | `await = true` | waits for the `background` deploy and checks its result against that step's `expect` and `error_contains` |
//! | `rollback = true` / `rollback = "1.0.0"` | undoes the last deploy / goes to that release of the store; with `expect`, `error_contains` |
//! | `make_permanent = true` | makes the running release permanent |
//! | `kill = "-9"` / `kill = "graceful"` | SIGKILLs the node / stops it through its control socket |
//! | `restart = true` | starts the node again on the same root (it boots the permanent release) |
//! | `wait = "200ms"` | sleeps |
//! | `wait_busy = "10s"` | waits, up to that long, until the node says a change runs (a `background` deploy has passed its archive checks and holds the node); fails the step otherwise |
//! | `call = { name = "kv", message = "Version", equals = "1.1.0", pointer = "/a/b", within = "5s" }` | calls a process with a JSON message (written as TOML); `equals` compares the reply (or the part `pointer` selects), asking again until it holds for up to `within`; `name = "counter-{0..9999}"` calls each of those processes; `error_contains = "..."` instead expects the call to fail with that text |
//! | `cast = { name = "kv", message = { Add = 1 } }` | casts a JSON message (written as TOML) to a process (or each of a range, as for `call`); `error_contains = "..."` expects the node to refuse it |
//! | `resp = { command = ["SET", "k", "v"], reply = "+OK", reply_contains = "..." }` | sends one RESP command on a probe connection and checks the reply |
//! | `lines = { client = "alice", connect = true, send = ["NICK alice"], expect = ["OK *"] }` | named TCP clients of a line protocol that stay open across steps (`clients = [...]` for several): connect (to the app's `listen` address, or `connect = "HOST:PORT"`), send lines, expect the next lines received (`*` matches any text), `expect_closed`, `close`; see scenario_lines.rs |
//! | `assert = { release = "1.1.0", state = "current", failed_requests = 0, dropped_connections = 0, lost_messages = 0, min_requests = 1, pause_p99_us_below = 50000, modules = { kv = "1.1.0" }, releases = { "1.0.0" = "permanent" }, absent_files = ["escaped.txt"] }` | checks the node and the figures so far; `absent_files`: no file of that name anywhere under the scenario's directory (node root and archives) |
//!
//! A deploy's options for faults (DESIGN.md §7), at most one per step:
//!
//! | option | what it does |
//! |---|---|
//! | `background = true` | the deploy runs in a thread and the scenario goes on; a later `await = true` step checks its result (one at a time) |
//! | `library = "truncated" \| "not-elf" \| "garbage-elf" \| "wrong-abi" \| "no-export"` | deploys a well-formed archive of the release whose module library (the module named like the app) is half its bytes / a text file / an ELF header followed by random bytes / a real module built for another ABI version (examples/bad-abi) / a real library that exports no module (examples/no-export) |
//! | `archive = "checksum-mismatch" \| "truncated" \| "path-traversal" \| "symlink"` | deploys the release's archive with one byte of that library flipped inside the tar (its manifest sha256 no longer matches) / cut to half its size / with an extra entry `lib/../../escaped.txt` / with that library replaced by a symbolic link to /etc/passwd |
//! | `manifest = "bad-version" \| "duplicate-module"` | deploys the release's archive whose `release.toml` has `version = "not-semver"` / its first `[[module]]` twice |
//! | `kill_at = "verified" \| "prepared" \| "suspended" \| "migrated" \| "switched" \| "committed" \| "installed"` | the node SIGKILLs itself when the deploy reaches that point (`relive_node::crash::POINTS` says what each means: up to `committed` the store is untouched, at `installed` it records the release); the step checks that it died of SIGKILL before answering; `restart` follows |
//!
//! Unknown steps and fields are errors naming the file, the line and the
//! field. The releases the steps name are built first (as `relive demo`
//! does: copies of the manifests with absolute crate paths, and a free
//! port of 127.0.0.1 for every process argument named `listen`, the address
//! RESP loads and `resp` steps use; modules of the checkout's examples
//! into its `target/examples`, others into cargo's target directory for
//! each crate). Failed checks are recorded and
//! the scenario goes on; an error (the node does not answer) ends it. The
//! node is stopped (or killed) at the end whatever happens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use relive_node::client::{Client, ClientError};
use relive_node::crash;
use relive_node::protocol::{DeployRequest, Deployed};
use relive_releases::archive;
use relive_releases::manifest::Manifest;
use relive_upgrader::Report;
use serde::Deserialize;
use serde_json::{Value, json};
use toml::Spanned;

use crate::control;
use crate::demo::{self, Answer, Counts, Load, NodeProcess, Reply, Resp, Shape};
use crate::examples::{self, TempDir};

#[path = "scenario_lines.rs"]
mod lines;

#[derive(Subcommand)]
pub enum ScenarioCommand {
    /// Run scenario files: a progress line per step, a summary table; exit non-zero if a check fails.
    Run(RunArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Scenario files (TOML).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print the results as one JSON document on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
}

/// `relive scenario ...`.
pub fn run(command: ScenarioCommand) -> anyhow::Result<()> {
    match command {
        ScenarioCommand::Run(args) => run_files(&args),
    }
}

// ------------------------------------------------------------- the schema

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    scenario: Meta,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Meta {
    name: String,
    app: String,
    /// What the scenario must show, in words.
    #[serde(default)]
    outcome: String,
    /// The directory of the application's releases
    /// (`<app>-<version>/release.toml`), relative to the scenario file.
    releases: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStep {
    boot: Option<Spanned<String>>,
    load: Option<LoadSpec>,
    stop_load: Option<bool>,
    deploy: Option<Spanned<String>>,
    rollback: Option<RollbackSpec>,
    make_permanent: Option<bool>,
    kill: Option<Spanned<String>>,
    restart: Option<bool>,
    wait: Option<Spanned<String>>,
    wait_busy: Option<Spanned<String>>,
    call: Option<CallSpec>,
    cast: Option<CastSpec>,
    resp: Option<RespSpec>,
    lines: Option<lines::LinesSpec>,
    assert: Option<AssertSpec>,
    #[serde(rename = "await")]
    await_deploy: Option<bool>,
    // modifiers
    path: Option<Spanned<String>>,
    health_window: Option<Spanned<String>>,
    permanent: Option<bool>,
    expect: Option<Expect>,
    error_contains: Option<String>,
    background: Option<bool>,
    library: Option<Spanned<String>>,
    archive: Option<Spanned<String>>,
    manifest: Option<Spanned<String>>,
    kill_at: Option<Spanned<String>>,
}

/// What a deploy step breaks in the release's archive before deploying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    LibraryTruncated,
    LibraryNotElf,
    LibraryGarbageElf,
    LibraryWrongAbi,
    LibraryNoExport,
    ArchiveChecksumMismatch,
    ArchiveTruncated,
    ArchivePathTraversal,
    ArchiveSymlink,
    ManifestBadVersion,
    ManifestDuplicateModule,
}

impl Fault {
    const ALL: [(Fault, &'static str, &'static str); 11] = [
        (Fault::LibraryTruncated, "library", "truncated"),
        (Fault::LibraryNotElf, "library", "not-elf"),
        (Fault::LibraryGarbageElf, "library", "garbage-elf"),
        (Fault::LibraryWrongAbi, "library", "wrong-abi"),
        (Fault::LibraryNoExport, "library", "no-export"),
        (Fault::ArchiveChecksumMismatch, "archive", "checksum-mismatch"),
        (Fault::ArchiveTruncated, "archive", "truncated"),
        (Fault::ArchivePathTraversal, "archive", "path-traversal"),
        (Fault::ArchiveSymlink, "archive", "symlink"),
        (Fault::ManifestBadVersion, "manifest", "bad-version"),
        (Fault::ManifestDuplicateModule, "manifest", "duplicate-module"),
    ];

    fn parse(option: &str, value: &str) -> Result<Fault, String> {
        let known: Vec<&str> =
            Fault::ALL.iter().filter(|(_, o, _)| *o == option).map(|(_, _, v)| *v).collect();
        Fault::ALL
            .iter()
            .find(|(_, o, v)| *o == option && *v == value)
            .map(|(f, _, _)| *f)
            .ok_or_else(|| format!("{option} = {value:?}: write one of {}", known.join(", ")))
    }

    fn label(self) -> String {
        let (_, option, value) = Fault::ALL.iter().find(|(f, _, _)| *f == self).expect("listed");
        format!("{option} {value}")
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct LoadSpec {
    /// "resp" (default) or "json".
    kind: Option<String>,
    /// json: the process the calls and casts go to.
    to: Option<String>,
    /// json: the call each client sends.
    call: Option<toml::Value>,
    /// json: the cast each client sends.
    cast: Option<toml::Value>,
    clients: u16,
    /// Requests per second, all clients together (default: as fast as
    /// replies come).
    rate: Option<f64>,
    /// The clients stop by themselves after this long (default: at
    /// `stop_load` or the end).
    duration: Option<Spanned<String>>,
    /// SET/GET pairs each client writes before reading the replies.
    pipeline: Option<u16>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum RollbackSpec {
    Last(bool),
    To(String),
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Ok,
    Refused,
    RolledBack,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct CallSpec {
    name: String,
    message: toml::Value,
    equals: Option<toml::Value>,
    pointer: Option<String>,
    /// Ask again until `equals` holds, for at most this long.
    within: Option<String>,
    /// The call must fail with an error containing this text.
    error_contains: Option<String>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct CastSpec {
    name: String,
    message: toml::Value,
    /// The cast must be refused with an error containing this text.
    error_contains: Option<String>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct RespSpec {
    command: Vec<String>,
    reply: Option<String>,
    reply_contains: Option<String>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
struct AssertSpec {
    release: Option<String>,
    state: Option<String>,
    failed_requests: Option<u64>,
    dropped_connections: Option<u64>,
    lost_messages: Option<u64>,
    min_requests: Option<u64>,
    pause_p99_us_below: Option<f64>,
    /// File names that must not exist anywhere under the scenario's
    /// directory (the node's root, the archives): what a hostile archive
    /// tried to write.
    absent_files: Option<Vec<String>>,
    modules: Option<BTreeMap<String, String>>,
    releases: Option<BTreeMap<String, String>>,
}

/// One checked step.
#[derive(Clone, Debug)]
enum Action {
    Boot(String),
    Load {
        clients: u16,
        shape: Shape,
        kind: LoadKind,
    },
    StopLoad,
    Deploy {
        version: String,
        health_window: Duration,
        permanent: bool,
        expect: Expect,
        error_contains: Option<String>,
        background: bool,
        fault: Option<Fault>,
        kill_at: Option<String>,
    },
    Await,
    Rollback {
        to: Option<semver::Version>,
        expect: Expect,
        error_contains: Option<String>,
    },
    MakePermanent,
    Kill {
        hard: bool,
    },
    Restart,
    Wait(Duration),
    WaitBusy(Duration),
    Call {
        spec: CallSpec,
        names: Vec<String>,
        within: Option<Duration>,
    },
    Cast {
        spec: CastSpec,
        names: Vec<String>,
    },
    Resp(RespSpec),
    Lines(lines::Lines),
    Assert(AssertSpec),
}

/// What a load's clients send.
#[derive(Clone, Debug)]
enum LoadKind {
    /// RESP SET/GET on their own connections to the app's `listen` address.
    Resp,
    /// JSON calls and casts to a process, through the control socket.
    Json { to: String, call: Option<Value>, cast: Option<Value> },
}

/// Where a release of the scenario comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// A directory holding release.toml: the runner builds it.
    Dir(PathBuf),
    /// A release archive, deployed as it is.
    Archive(PathBuf),
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::Dir(path) | Source::Archive(path) => path,
        }
    }
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Ok => "ok",
            Expect::Refused => "refused",
            Expect::RolledBack => "rolled_back",
        }
    }
}

impl Action {
    fn describe(&self) -> String {
        match self {
            Action::Boot(v) => format!("boot {v}"),
            Action::Load { clients, shape, kind } => {
                let mut text = match kind {
                    LoadKind::Resp => format!("load {clients} clients"),
                    LoadKind::Json { to, .. } => format!("load {clients} JSON clients → {to}"),
                };
                if let Some(rate) = shape.rate {
                    text.push_str(&format!(" at {rate} req/s"));
                }
                if shape.pipeline > 1 {
                    text.push_str(&format!(", pipeline {}", shape.pipeline));
                }
                if let Some(duration) = shape.duration {
                    text.push_str(&format!(" for {duration:?}"));
                }
                text
            }
            Action::StopLoad => "stop load".into(),
            Action::Deploy { version, expect, background, fault, kill_at, .. } => {
                let mut text = format!("deploy {version}");
                if let Some(fault) = fault {
                    text.push_str(&format!(" [{}]", fault.label()));
                }
                if let Some(point) = kill_at {
                    text.push_str(&format!(" [kill -9 at {point}]"));
                }
                if *background {
                    text.push_str(" in the background");
                }
                if *expect != Expect::Ok {
                    text.push_str(&format!(" (expect {})", expect.as_str()));
                }
                text
            }
            Action::Await => "await the background deploy".into(),
            Action::Rollback { to: None, .. } => "rollback".into(),
            Action::Rollback { to: Some(to), .. } => format!("rollback to {to}"),
            Action::MakePermanent => "make permanent".into(),
            Action::Kill { hard: true } => "kill -9".into(),
            Action::Kill { hard: false } => "stop (graceful)".into(),
            Action::Restart => "restart".into(),
            Action::Wait(d) => format!("wait {d:?}"),
            Action::WaitBusy(d) => format!("wait up to {d:?} for the node to be busy"),
            Action::Call { spec, names, .. } if names.len() > 1 => {
                format!("call {} ({} processes) {}", spec.name, names.len(), toml_json(&spec.message))
            }
            Action::Call { spec, .. } => format!("call {} {}", spec.name, toml_json(&spec.message)),
            Action::Cast { spec, names } if names.len() > 1 => {
                format!("cast {} ({} processes) {}", spec.name, names.len(), toml_json(&spec.message))
            }
            Action::Cast { spec, .. } => format!("cast {} {}", spec.name, toml_json(&spec.message)),
            Action::Resp(r) => format!("resp {}", r.command.join(" ")),
            Action::Lines(l) => l.describe(),
            Action::Assert(_) => "assert".into(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Action::Boot(_) => "boot",
            Action::Load { .. } => "load",
            Action::StopLoad => "stop_load",
            Action::Deploy { .. } => "deploy",
            Action::Await => "await",
            Action::Rollback { .. } => "rollback",
            Action::MakePermanent => "make_permanent",
            Action::Kill { .. } => "kill",
            Action::Restart => "restart",
            Action::Wait(_) => "wait",
            Action::WaitBusy(_) => "wait_busy",
            Action::Call { .. } => "call",
            Action::Cast { .. } => "cast",
            Action::Resp(_) => "resp",
            Action::Lines(_) => "lines",
            Action::Assert(_) => "assert",
        }
    }
}

const MODIFIERS: &str = "path (boot, deploy); health_window, permanent, background, library, archive, \
                         manifest, kill_at (deploy); expect, error_contains (deploy, rollback)";

const STEPS: &str = "boot, load, stop_load, deploy, await, rollback, make_permanent, kill, restart, wait, \
                     call, cast, resp, lines, assert";

struct Step {
    line: usize,
    action: Action,
}

struct Scenario {
    file: PathBuf,
    meta: Meta,
    steps: Vec<Step>,
    /// Each release the steps name (by version, in order of first use)
    /// and where it comes from.
    sources: Vec<(String, Source)>,
}

fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The table holding byte `offset`: `Some(n)` for the n-th `[[step]]`
/// (from 1), `None` for anything else.
fn step_at(text: &str, offset: usize) -> Option<usize> {
    let mut pos = 0;
    let mut step = None;
    let mut count = 0;
    for line in text.split_inclusive('\n') {
        if pos > offset {
            break;
        }
        pos += line.len();
        let t = line.split('#').next().unwrap_or("").trim();
        if t.starts_with("[[") && t.trim_start_matches('[').trim_end_matches(']').trim() == "step" {
            count += 1;
            step = Some(count);
        } else if t.starts_with('[') {
            step = None;
        }
    }
    step
}

/// Whether the table holding byte `offset` has a key naming an action
/// (then an unknown key in it is a misspelled field, not a step).
fn step_has_action(text: &str, offset: usize) -> bool {
    let start = text[..offset.min(text.len())].rfind("[[").unwrap_or(0);
    let actions: Vec<&str> = STEPS.split(", ").collect();
    text[start..]
        .lines()
        .skip(1)
        .take_while(|line| !line.trim_start().starts_with('['))
        .filter_map(|line| line.split_once('='))
        .any(|(key, _)| actions.contains(&key.trim()))
}

fn toml_json(value: &toml::Value) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Reads and checks a scenario file.
fn parse(file: &Path) -> anyhow::Result<Scenario> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    parse_text(file, &text)
}

fn parse_text(file: &Path, text: &str) -> anyhow::Result<Scenario> {
    let shown = file.display();
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            let message = error.message().trim().to_string();
            let Some(span) = error.span() else { bail!("{shown}: {message}") };
            let line = line_of(text, span.start);
            let message = match first_quoted(&message) {
                Some(name) if message.starts_with("unknown field") && message.contains("`boot`") => {
                    if step_has_action(text, span.start) {
                        format!("unknown field `{name}` (a step's fields besides its action: {MODIFIERS})")
                    } else {
                        format!("unknown step `{name}` (a step is one of {STEPS})")
                    }
                }
                _ => message,
            };
            match step_at(text, span.start) {
                Some(n) => bail!("{shown}:{line}: step {n}: {message}"),
                None => bail!("{shown}:{line}: {message}"),
            }
        }
    };
    let app = &raw.scenario.app;
    let base = file.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let releases = match &raw.scenario.releases {
        Some(dir) => {
            let path = base.join(dir.get_ref());
            if !path.is_dir() {
                bail!(
                    "{shown}:{}: releases = {:?}: {} is not a directory (the path is relative to the \
                     scenario file)",
                    line_of(text, dir.span().start),
                    dir.get_ref(),
                    path.display()
                );
            }
            Ok(path)
        }
        None => {
            let dir = examples::repo().join("examples").join("releases");
            if dir.is_dir() {
                Ok(dir)
            } else {
                Err(format!(
                    "no `releases` in [scenario], and the relive checkout's examples/releases ({}) is not \
                     there: write `path = \"DIR\"` on the step (a directory holding release.toml, or an \
                     archive) or `releases = \"DIR\"` in [scenario] (holding {app}-VERSION/release.toml), \
                     relative to the scenario file",
                    dir.display()
                ))
            }
        }
    };
    let mut sources: Vec<(String, Source)> = Vec::new();
    let mut steps = Vec::new();
    for (index, spanned) in raw.step.iter().enumerate() {
        let n = index + 1;
        let line = line_of(text, spanned.span().start);
        let at = |span: Option<Range<usize>>| span.map_or(line, |s| line_of(text, s.start));
        let err = |span: Option<Range<usize>>, message: String| -> anyhow::Error {
            anyhow::anyhow!("{shown}:{}: step {n}: {message}", at(span))
        };
        let raw = spanned.get_ref();
        let mut release = |version: &Spanned<String>| -> anyhow::Result<String> {
            let path = raw.path.as_ref().map(Spanned::get_ref).map(String::as_str);
            let source = locate(app, version.get_ref(), path, base, &releases)
                .map_err(|e| err(Some(raw.path.as_ref().map_or_else(|| version.span(), Spanned::span)), e))?;
            match sources.iter().find(|(v, _)| v == version.get_ref()) {
                Some((_, earlier)) if *earlier != source => {
                    return Err(err(
                        Some(version.span()),
                        format!(
                            "release {app} {} comes from {} here and from {} in an earlier step: one \
                             source per version",
                            version.get_ref(),
                            source.path().display(),
                            earlier.path().display()
                        ),
                    ));
                }
                Some(_) => {}
                None => sources.push((version.get_ref().clone(), source)),
            }
            Ok(version.get_ref().clone())
        };
        let duration = |d: &Spanned<String>, field: &str| -> anyhow::Result<Duration> {
            control::parse_duration(d.get_ref()).map_err(|e| err(Some(d.span()), format!("{field}: {e}")))
        };
        let mut actions = Vec::new();
        if let Some(v) = &raw.boot {
            actions.push(Action::Boot(release(v)?));
        }
        if let Some(l) = &raw.load {
            let kind = match l.kind.as_deref() {
                None | Some("resp") => {
                    if l.to.is_some() || l.call.is_some() || l.cast.is_some() {
                        return Err(err(
                            None,
                            "load: `to`, `call` and `cast` belong to a JSON load: add kind = \"json\"".into(),
                        ));
                    }
                    LoadKind::Resp
                }
                Some("json") => {
                    let Some(to) = l.to.clone() else {
                        return Err(err(None, "load: a JSON load names its process: to = \"NAME\"".into()));
                    };
                    if l.call.is_none() && l.cast.is_none() {
                        return Err(err(
                            None,
                            "load: a JSON load sends a `call`, a `cast` or both (messages written as TOML)"
                                .into(),
                        ));
                    }
                    if l.pipeline.is_some() {
                        return Err(err(None, "load: `pipeline` belongs to a RESP load".into()));
                    }
                    LoadKind::Json {
                        to,
                        call: l.call.as_ref().map(toml_json),
                        cast: l.cast.as_ref().map(toml_json),
                    }
                }
                Some(other) => {
                    return Err(err(None, format!("load: kind = {other:?}: write \"resp\" or \"json\"")));
                }
            };
            // JSON clients each hold one of the node's control connections
            // (64 at most), and the runner needs some for its own steps.
            let most = if matches!(kind, LoadKind::Json { .. }) { 32 } else { 256 };
            if l.clients == 0 || l.clients > most {
                return Err(err(None, format!("load: clients = {} (1 to {most})", l.clients)));
            }
            if let Some(rate) = l.rate
                && !(rate.is_finite() && rate > 0.0)
            {
                return Err(err(None, format!("load: rate = {rate} (requests per second, above 0)")));
            }
            if l.pipeline == Some(0) || l.pipeline.is_some_and(|p| p > 1000) {
                return Err(err(None, "load: pipeline is 1 to 1000 SET/GET pairs".into()));
            }
            let shape = Shape {
                rate: l.rate,
                duration: l.duration.as_ref().map(|d| duration(d, "load: duration")).transpose()?,
                pipeline: usize::from(l.pipeline.unwrap_or(1)),
            };
            actions.push(Action::Load { clients: l.clients, shape, kind });
        }
        if raw.stop_load == Some(true) {
            actions.push(Action::StopLoad);
        }
        if let Some(v) = &raw.deploy {
            let mut faults = Vec::new();
            for (option, value) in
                [("library", &raw.library), ("archive", &raw.archive), ("manifest", &raw.manifest)]
            {
                if let Some(value) = value {
                    faults
                        .push(Fault::parse(option, value.get_ref()).map_err(|e| err(Some(value.span()), e))?);
                }
            }
            if faults.len() > 1 {
                return Err(err(None, "one of library, archive, manifest per deploy step".into()));
            }
            let kill_at = match &raw.kill_at {
                Some(point) if !crash::POINTS.iter().any(|(name, _)| name == point.get_ref()) => {
                    let known: Vec<&str> = crash::POINTS.iter().map(|(name, _)| *name).collect();
                    return Err(err(
                        Some(point.span()),
                        format!("kill_at = {:?}: write one of {}", point.get_ref(), known.join(", ")),
                    ));
                }
                Some(_) if raw.background == Some(true) || raw.expect.is_some() || !faults.is_empty() => {
                    return Err(err(
                        None,
                        "kill_at: the deploy ends with the node killed; it takes no background, expect or fault"
                            .into(),
                    ));
                }
                Some(point) => Some(point.get_ref().clone()),
                None => None,
            };
            actions.push(Action::Deploy {
                version: release(v)?,
                health_window: match &raw.health_window {
                    Some(d) => duration(d, "health_window")?,
                    None => Duration::ZERO,
                },
                permanent: raw.permanent.unwrap_or(false),
                expect: raw.expect.unwrap_or(Expect::Ok),
                error_contains: raw.error_contains.clone(),
                background: raw.background.unwrap_or(false),
                fault: faults.first().copied(),
                kill_at,
            });
        }
        if raw.await_deploy == Some(true) {
            actions.push(Action::Await);
        }
        if let Some(r) = &raw.rollback {
            let to = match r {
                RollbackSpec::Last(true) => None,
                RollbackSpec::Last(false) => {
                    return Err(err(None, "rollback = false: write `rollback = true` or a version".into()));
                }
                RollbackSpec::To(v) => match v.parse::<semver::Version>() {
                    Ok(version) => Some(version),
                    Err(e) => {
                        return Err(err(
                            None,
                            format!("rollback = {v:?}: {e}: write `rollback = true` or a version"),
                        ));
                    }
                },
            };
            actions.push(Action::Rollback {
                to,
                expect: raw.expect.unwrap_or(Expect::Ok),
                error_contains: raw.error_contains.clone(),
            });
        }
        if raw.make_permanent == Some(true) {
            actions.push(Action::MakePermanent);
        }
        if let Some(k) = &raw.kill {
            let hard = match k.get_ref().as_str() {
                "-9" | "9" | "SIGKILL" => true,
                "graceful" => false,
                other => {
                    return Err(err(
                        Some(k.span()),
                        format!("kill = {other:?}: write \"-9\" or \"graceful\""),
                    ));
                }
            };
            actions.push(Action::Kill { hard });
        }
        if raw.restart == Some(true) {
            actions.push(Action::Restart);
        }
        if let Some(d) = &raw.wait {
            actions.push(Action::Wait(duration(d, "wait")?));
        }
        if let Some(d) = &raw.wait_busy {
            actions.push(Action::WaitBusy(duration(d, "wait_busy")?));
        }
        if let Some(c) = &raw.call {
            let names = expand_names(&c.name).map_err(|e| err(None, format!("call: name: {e}")))?;
            let within = match &c.within {
                Some(text) => {
                    Some(control::parse_duration(text).map_err(|e| err(None, format!("call: within: {e}")))?)
                }
                None => None,
            };
            if within.is_some() && c.equals.is_none() {
                return Err(err(None, "call: `within` asks again until `equals` holds: add `equals`".into()));
            }
            if c.error_contains.is_some() && (c.equals.is_some() || names.len() > 1) {
                return Err(err(
                    None,
                    "call: `error_contains` expects one call to fail: no `equals`, one name".into(),
                ));
            }
            actions.push(Action::Call { spec: c.clone(), names, within });
        }
        if let Some(c) = &raw.cast {
            let names = expand_names(&c.name).map_err(|e| err(None, format!("cast: name: {e}")))?;
            if c.error_contains.is_some() && names.len() > 1 {
                return Err(err(
                    None,
                    "cast: `error_contains` expects one cast to be refused: one name".into(),
                ));
            }
            actions.push(Action::Cast { spec: c.clone(), names });
        }
        if let Some(r) = &raw.resp {
            if r.command.is_empty() {
                return Err(err(None, "resp: command is empty".into()));
            }
            actions.push(Action::Resp(r.clone()));
        }
        if let Some(l) = &raw.lines {
            actions.push(Action::Lines(lines::parse(l).map_err(|e| err(None, e))?));
        }
        if let Some(a) = &raw.assert {
            actions.push(Action::Assert(a.clone()));
        }
        let action = match actions.len() {
            0 => return Err(err(None, format!("no action: a step is one of {STEPS}"))),
            1 => actions.remove(0),
            _ => {
                let names: Vec<&str> = actions.iter().map(Action::name).collect();
                return Err(err(None, format!("one action per step, this one has {}", names.join(", "))));
            }
        };
        let is = |names: &[&str]| names.contains(&action.name());
        let misplaced = [
            ("path", raw.path.is_some(), &["boot", "deploy"][..]),
            ("health_window", raw.health_window.is_some(), &["deploy"][..]),
            ("permanent", raw.permanent.is_some(), &["deploy"][..]),
            ("background", raw.background.is_some(), &["deploy"][..]),
            ("library", raw.library.is_some(), &["deploy"][..]),
            ("archive", raw.archive.is_some(), &["deploy"][..]),
            ("manifest", raw.manifest.is_some(), &["deploy"][..]),
            ("kill_at", raw.kill_at.is_some(), &["deploy"][..]),
            ("expect", raw.expect.is_some(), &["deploy", "rollback"][..]),
            ("error_contains", raw.error_contains.is_some(), &["deploy", "rollback"][..]),
        ];
        for (field, present, owners) in misplaced {
            if present && !is(owners) {
                return Err(err(
                    None,
                    format!("`{field}` belongs to a {} step, not `{}`", owners.join(" or "), action.name()),
                ));
            }
        }
        steps.push(Step { line, action });
    }
    if !matches!(steps.first().map(|s| &s.action), Some(Action::Boot(_))) {
        bail!("{shown}: the first step must be `boot = \"VERSION\"`");
    }
    Ok(Scenario { file: file.to_path_buf(), meta: raw.scenario, steps, sources })
}

/// Where release `version` of `app` comes from: `path` (relative to
/// `base`, the scenario file's directory), else `releases`'s
/// `<app>-<version>`; checked to be that release. The error, without file
/// or line.
fn locate(
    app: &str,
    version: &str,
    path: Option<&str>,
    base: &Path,
    releases: &Result<PathBuf, String>,
) -> Result<Source, String> {
    let wanted: semver::Version =
        version.parse().map_err(|e| format!("{version:?} is not a version ({e}): write e.g. \"1.0.0\""))?;
    let source = match path {
        Some(path) => {
            // Canonical, so that two spellings of one release are one source.
            let full = base.join(path).canonicalize().unwrap_or_else(|_| base.join(path));
            if full.is_dir() {
                if !full.join("release.toml").is_file() {
                    return Err(format!(
                        "path = {path:?}: {} holds no release.toml (the path is relative to the scenario file)",
                        full.display()
                    ));
                }
                Source::Dir(full)
            } else if full.is_file() {
                Source::Archive(full)
            } else {
                return Err(format!(
                    "path = {path:?}: {} not found (the path is relative to the scenario file)",
                    full.display()
                ));
            }
        }
        None => {
            let dir = releases.as_ref()?.join(format!("{app}-{version}"));
            if !dir.join("release.toml").is_file() {
                return Err(format!("no release {app} {version} ({} not found)", dir.display()));
            }
            Source::Dir(dir.canonicalize().unwrap_or(dir))
        }
    };
    let manifest = match &source {
        Source::Dir(dir) => Manifest::from_path(&dir.join("release.toml")).map_err(|e| e.to_string())?,
        Source::Archive(file) => {
            archive::read(file, None, false).map_err(|e| format!("{}: {e}", file.display()))?.manifest
        }
    };
    let found = (&manifest.release.name, &manifest.release.version);
    if found != (&app.to_string(), &wanted) {
        return Err(format!(
            "{} is release {} {}, not {app} {version}",
            source.path().display(),
            found.0,
            found.1
        ));
    }
    Ok(source)
}

/// `name`, or the names `{a..b}` in it stands for: `counter-{0..2}` is
/// counter-0, counter-1, counter-2.
fn expand_names(name: &str) -> Result<Vec<String>, String> {
    let Some(open) = name.find('{') else { return Ok(vec![name.to_string()]) };
    let close = open + name[open..].find('}').ok_or_else(|| format!("{name:?}: `{{` without `}}`"))?;
    let range = &name[open + 1..close];
    let parsed = range
        .split_once("..")
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)));
    let Some((first, last)) = parsed.filter(|(a, b)| a <= b) else {
        return Err(format!("{name:?}: write a range as {{FIRST..LAST}}, e.g. counter-{{0..9999}}"));
    };
    if last - first >= 1_000_000 {
        return Err(format!("{name:?}: at most 1,000,000 names"));
    }
    let (head, tail) = (&name[..open], &name[close + 1..]);
    Ok((first..=last).map(|i| format!("{head}{i}{tail}")).collect())
}

/// The text between the first pair of backticks.
fn first_quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(&message[start..end])
}

// ------------------------------------------------------------- the runner

#[derive(Clone)]
struct StepResult {
    index: usize,
    line: usize,
    step: String,
    ok: bool,
    detail: String,
    failures: Vec<String>,
    took: Duration,
}

struct Outcome {
    scenario: String,
    file: PathBuf,
    app: String,
    outcome: String,
    steps: Vec<StepResult>,
    /// "file:line: step n (what): message" for every failed check or error.
    failures: Vec<String>,
    totals: Counts,
    lost: u64,
    pause_p99_max_us: f64,
    took: Duration,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "file": self.file,
            "app": self.app,
            "expected_outcome": self.outcome,
            "ok": self.ok(),
            "seconds": self.took.as_secs_f64(),
            "steps": self.steps.iter().map(|s| json!({
                "index": s.index, "line": s.line, "step": s.step, "ok": s.ok,
                "detail": s.detail, "failures": s.failures, "ms": s.took.as_secs_f64() * 1e3,
            })).collect::<Vec<_>>(),
            "failures": self.failures,
            "totals": {
                "requests": self.totals.requests,
                "calls": self.totals.calls,
                "casts": self.totals.casts,
                "failed_requests": self.totals.failures,
                "dropped_connections": self.totals.dropped,
                "lost_messages": self.lost,
                "pause_p99_us_max": self.pause_p99_max_us,
            },
        })
    }
}

/// A running load: the clients' shared counters and threads.
struct Running {
    load: Arc<Load>,
    threads: Vec<JoinHandle<()>>,
}

/// A deploy running in a thread (`background = true`), awaited later.
struct Background {
    version: String,
    expect: Expect,
    error_contains: Option<String>,
    thread: JoinHandle<anyhow::Result<Answer<Deployed>>>,
}

struct Runner<'a> {
    scenario: &'a Scenario,
    background: Option<Background>,
    tmp: TempDir,
    addr: String,
    archives: BTreeMap<String, PathBuf>,
    root: PathBuf,
    log: PathBuf,
    node: Option<NodeProcess>,
    load: Option<Running>,
    /// Figures of loads already stopped.
    finished: Counts,
    probe: Option<Resp>,
    lost: u64,
    pause_p99_max_us: f64,
    errors: Vec<String>,
    json: bool,
    /// The open clients of `lines` steps.
    clients: lines::Clients,
}

impl Runner<'_> {
    fn say(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    fn node(&self) -> anyhow::Result<&NodeProcess> {
        self.node.as_ref().context("no node runs (it was killed or stopped; add a `restart` step)")
    }

    fn counts(&self) -> Counts {
        let mut counts = self.finished;
        if let Some(running) = &self.load {
            let now = running.load.counts();
            counts.add(&now);
        }
        counts
    }

    fn stop_load(&mut self) -> Option<(Counts, Vec<String>)> {
        let running = self.load.take()?;
        running.load.stop.store(true, Ordering::SeqCst);
        for thread in running.threads {
            let _ = thread.join();
        }
        let counts = running.load.counts();
        self.finished.add(&counts);
        let errors = running.load.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.errors.extend(errors.iter().cloned());
        Some((counts, errors))
    }

    fn record_report(&mut self, report: Option<&Report>) -> String {
        let Some(report) = report else { return String::new() };
        let lost = report.messages_lost;
        let p99 = report.pause.p99_us;
        self.lost += lost;
        self.pause_p99_max_us = self.pause_p99_max_us.max(p99);
        format!(
            "{}, {} moved, pause p99 {p99:.1} µs, {lost} lost",
            demo::outcome_name(&report.outcome),
            report.moved
        )
    }

    /// Records a deploy's or rollback's report, checks its outcome, and
    /// says what happened.
    fn settle(
        &mut self,
        answer: &Answer<Deployed>,
        expect: Expect,
        error_contains: Option<&str>,
        failures: &mut Vec<String>,
    ) -> String {
        let report = self.record_report(report_of(answer));
        Self::expect_outcome(answer, expect, error_contains, failures);
        let report = if report.is_empty() { String::new() } else { format!(" ({report})") };
        match answer {
            Ok(done) => format!("{} runs{report}", done.release),
            Err(failure) => format!("refused{report}: {}", failure.error),
        }
    }

    /// Checks a deploy's or rollback's answer against `expect`.
    fn expect_outcome(
        answer: &Answer<Deployed>,
        expect: Expect,
        error_contains: Option<&str>,
        failures: &mut Vec<String>,
    ) {
        let ok = answer.is_ok();
        let error = answer.as_ref().err().map_or("", |failure| failure.error.as_str());
        let outcome = report_of(answer).map_or("none", |report| demo::outcome_name(&report.outcome));
        let observed =
            if ok { "ok".to_string() } else { format!("refused (report outcome {outcome}): {error}") };
        let matched = match expect {
            Expect::Ok => ok,
            Expect::Refused => !ok,
            Expect::RolledBack => {
                !ok && report_of(answer)
                    .is_some_and(|r| matches!(r.outcome, relive_upgrader::Outcome::RolledBack { .. }))
            }
        };
        if !matched {
            failures.push(format!("expected {}, observed {observed}", expect.as_str()));
        }
        if let Some(text) = error_contains
            && !error.contains(text)
        {
            failures.push(format!("the error does not contain {text:?}; observed {error:?}"));
        }
    }

    fn start_node(&mut self, boot: Option<&Path>) -> anyhow::Result<()> {
        let crash_file = self.crash_file();
        self.node = Some(NodeProcess::start(&self.root, boot, &self.log, Some(&crash_file))?);
        Ok(())
    }

    /// Where a `kill_at` deploy names its crash point for the node.
    fn crash_file(&self) -> PathBuf {
        self.tmp.path().join("crash-at")
    }

    /// A deploy that must kill the node at `point`: arms the point, sends
    /// the deploy, and checks that the node dies of SIGKILL before it
    /// answers.
    fn deploy_killed_at(
        &mut self,
        request: DeployRequest,
        point: &str,
        failures: &mut Vec<String>,
    ) -> anyhow::Result<String> {
        let file = self.crash_file();
        fs::write(&file, point).with_context(|| format!("writing {}", file.display()))?;
        let answer = self.node()?.ask(|c| c.deploy(request, None));
        self.probe = None;
        let mut node = self.node.take().expect("checked by node() above");
        node.stopped = true;
        let status = node.exit_within(Duration::from_secs(30))?;
        let _ = fs::remove_file(&file);
        let Some(status) = status else {
            failures.push(format!(
                "the node still ran 30 s after the deploy (crash point {point} never reached); killed it"
            ));
            return Ok(format!("node pid {} did not die at {point}", node.pid));
        };
        use std::os::unix::process::ExitStatusExt as _;
        if status.signal() != Some(9) {
            failures.push(format!("the node exited with {status}, not SIGKILL at {point}"));
        }
        if let Ok(Ok(deployed)) = answer {
            failures.push(format!(
                "the deploy answered before the node died at {point}: {} runs ({})",
                deployed.release,
                demo::outcome_name(&deployed.report.outcome)
            ));
        }
        Ok(format!("node pid {} killed at {point} ({status})", node.pid))
    }

    /// Calls `spec.message` on each of `names` (asking again until `equals`
    /// holds when `within` is given); returns the step's detail.
    fn call(
        &mut self,
        spec: &CallSpec,
        names: &[String],
        within: Option<Duration>,
        failures: &mut Vec<String>,
    ) -> anyhow::Result<String> {
        let deadline = within.map(|w| Instant::now() + w);
        let message = toml_json(&spec.message);
        let expected = spec.equals.as_ref().map(toml_json);
        let pointer = spec.pointer.as_deref().unwrap_or("");
        let mut wrong = Vec::new();
        let mut last = Value::Null;
        for name in names {
            loop {
                let answer = self.node()?.ask(|c| c.call(name, message.clone()))?;
                let retry = deadline.is_some_and(|d| Instant::now() < d);
                if let Some(text) = &spec.error_contains {
                    let error = match &answer {
                        Ok(reply) => {
                            wrong.push(format!(
                                "{name} answered {reply}, expected an error containing {text:?}"
                            ));
                            ""
                        }
                        Err(failure) => {
                            if !failure.error.contains(text.as_str()) {
                                wrong.push(format!(
                                    "{name} failed with {:?}, expected {text:?} in it",
                                    failure.error
                                ));
                            }
                            failure.error.as_str()
                        }
                    };
                    last = Value::String(error.to_string());
                    break;
                }
                let reply = match answer {
                    Ok(reply) => reply,
                    Err(_) if retry => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(failure) => {
                        wrong.push(format!("{name}: {}", failure.error));
                        break;
                    }
                };
                let observed = if pointer.is_empty() {
                    reply.clone()
                } else {
                    reply.pointer(pointer).cloned().unwrap_or(Value::Null)
                };
                if let Some(expected) = &expected
                    && observed != *expected
                {
                    if retry {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    wrong.push(format!("{name}{pointer} is {observed}, expected {expected}"));
                }
                last = reply;
                break;
            }
        }
        const SHOWN: usize = 3;
        failures.extend(wrong.iter().take(SHOWN).cloned());
        if wrong.len() > SHOWN {
            failures.push(format!("… and {} more of the {} calls", wrong.len() - SHOWN, names.len()));
        }
        Ok(if names.len() == 1 {
            if spec.error_contains.is_some() { format!("error {last}") } else { format!("reply {last}") }
        } else {
            format!("{} of {} as expected", names.len() - wrong.len(), names.len())
        })
    }

    fn status(&self) -> anyhow::Result<relive_node::protocol::Status> {
        self.node()?.checked(Client::status)
    }

    /// Runs one step: Ok((detail, failed checks)), or Err when the scenario
    /// cannot go on.
    fn step(&mut self, action: &Action) -> anyhow::Result<(String, Vec<String>)> {
        let mut failures = Vec::new();
        let detail = match action {
            Action::Boot(version) => {
                if self.node.is_some() {
                    bail!("a node already runs: `boot` starts the first one (use `restart` after a kill)");
                }
                let archive = self.archives[version].clone();
                self.start_node(Some(&archive))?;
                let status = self.status()?;
                let running = demo::release_of(&status);
                if running != format!("{} {version}", self.scenario.meta.app) {
                    failures.push(format!("booted {running}, expected {} {version}", self.scenario.meta.app));
                }
                format!("node pid {} runs {running}", self.node()?.pid)
            }
            Action::Load { clients, shape, kind } => {
                if self.load.is_some() {
                    bail!("a load already runs: add `stop_load = true` before starting another");
                }
                let clients = usize::from(*clients);
                let load = Arc::new(Load::shaped(clients, *shape));
                let root = self.node()?.root.clone();
                let threads = (0..clients)
                    .map(|i| {
                        let load = Arc::clone(&load);
                        let addr = self.addr.clone();
                        let kind = kind.clone();
                        let root = root.clone();
                        std::thread::Builder::new()
                            .name(format!("scenario-client-{i}"))
                            .spawn(move || match kind {
                                LoadKind::Resp => demo::client(i, &addr, &load),
                                LoadKind::Json { to, call, cast } => {
                                    json_client(i, &root, &to, call.as_ref(), cast.as_ref(), &load)
                                }
                            })
                            .context("starting a client thread")
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let target = match kind {
                    LoadKind::Resp => self.addr.clone(),
                    LoadKind::Json { .. } => root.join(relive_node::client::SOCKET).display().to_string(),
                };
                let deadline = Instant::now() + Duration::from_secs(10);
                while load.connected.load(Ordering::SeqCst) + load.done.load(Ordering::SeqCst) < clients
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let connected = load.connected.load(Ordering::SeqCst);
                self.load = Some(Running { load, threads });
                if connected < clients {
                    failures.push(format!("only {connected} of {clients} clients connected to {target}"));
                }
                format!("{connected} clients connected to {target}")
            }
            Action::StopLoad => match self.stop_load() {
                Some((counts, errors)) => {
                    for error in errors.iter().take(3) {
                        failures.push(format!("client: {error}"));
                    }
                    let json = if counts.calls + counts.casts > 0 {
                        format!(
                            " ({} calls, {} casts)",
                            demo::thousands(counts.calls),
                            demo::thousands(counts.casts)
                        )
                    } else {
                        String::new()
                    };
                    format!(
                        "{} requests{json}, {} failed, {} dropped",
                        demo::thousands(counts.requests),
                        counts.failures,
                        counts.dropped
                    )
                }
                None => "no load was running".into(),
            },
            Action::Deploy {
                version,
                health_window,
                permanent,
                expect,
                error_contains,
                background,
                fault,
                kill_at,
            } => {
                let archive = match fault {
                    Some(fault) => self.faulty_archive(version, *fault)?,
                    None => self.archives[version].clone(),
                };
                let request = DeployRequest {
                    archive: archive.clone(),
                    permanent: *permanent,
                    dry_run: false,
                    health_window_ms: health_window.as_millis() as u64,
                    ..DeployRequest::default()
                };
                if let Some(point) = kill_at {
                    return Ok((self.deploy_killed_at(request, point, &mut failures)?, failures));
                }
                if *background {
                    if self.background.is_some() {
                        bail!("a background deploy is pending: add `await = true` before starting another");
                    }
                    let root = self.node()?.root.clone();
                    let thread = std::thread::Builder::new()
                        .name("scenario-deploy".into())
                        .spawn(move || {
                            demo::answered(Client::connect(&root).and_then(|mut c| c.deploy(request, None)))
                        })
                        .context("starting the background deploy's thread")?;
                    self.background = Some(Background {
                        version: version.clone(),
                        expect: *expect,
                        error_contains: error_contains.clone(),
                        thread,
                    });
                    // Let the node take the request before the next step.
                    std::thread::sleep(Duration::from_millis(100));
                    return Ok((format!("started in the background ({})", archive.display()), failures));
                }
                let answer = self.node()?.ask(|c| c.deploy(request, None))?;
                self.settle(&answer, *expect, error_contains.as_deref(), &mut failures)
            }
            Action::Await => {
                let Some(background) = self.background.take() else {
                    bail!(
                        "no background deploy to await (a deploy step with `background = true` comes first)"
                    );
                };
                let answer = background
                    .thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("the background deploy's thread panicked"))??;
                self.settle(&answer, background.expect, background.error_contains.as_deref(), &mut failures)
            }
            Action::Rollback { to, expect, error_contains } => {
                let answer = self.node()?.ask(|c| c.rollback(to.clone(), None))?;
                self.settle(&answer, *expect, error_contains.as_deref(), &mut failures)
            }
            Action::MakePermanent => match self.node()?.ask(|client| client.make_permanent(None))? {
                Ok(done) => format!("{} is permanent", done.release),
                Err(failure) => {
                    failures.push(format!("refused: {}", failure.error));
                    "refused".into()
                }
            },
            Action::Kill { hard } => {
                self.probe = None;
                let Some(mut node) = self.node.take() else { bail!("no node runs to kill") };
                if *hard {
                    node.stopped = true;
                    node.child.kill().context("sending SIGKILL to the node")?;
                    let status = node.child.wait().context("waiting for the killed node")?;
                    format!("node pid {} killed ({status})", node.pid)
                } else {
                    node.stop()?;
                    format!("node pid {} stopped", node.pid)
                }
            }
            Action::Restart => {
                if self.node.is_some() {
                    bail!("the node still runs: `restart` follows a `kill`");
                }
                self.start_node(None)?;
                let status = self.status()?;
                format!("node pid {} runs {}", self.node()?.pid, status.release)
            }
            Action::Wait(duration) => {
                std::thread::sleep(*duration);
                format!("{} ms", duration.as_millis())
            }
            Action::WaitBusy(limit) => {
                let started = Instant::now();
                loop {
                    if let Some(busy) = self.status()?.busy {
                        break format!("busy after {} ms: {busy}", started.elapsed().as_millis());
                    }
                    if started.elapsed() >= *limit {
                        failures.push(format!("the node was not busy within {} ms", limit.as_millis()));
                        break "not busy".to_string();
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Action::Call { spec, names, within } => self.call(spec, names, *within, &mut failures)?,
            Action::Cast { spec, names } => {
                let message = toml_json(&spec.message);
                let mut refused = Vec::new();
                for name in names {
                    match (self.node()?.ask(|c| c.cast(name, message.clone()))?, &spec.error_contains) {
                        (Ok(()), None) => {}
                        (Ok(()), Some(text)) => failures
                            .push(format!("{name} took the cast, expected a refusal containing {text:?}")),
                        (Err(failure), Some(text)) if failure.error.contains(text.as_str()) => {
                            refused.push(failure.error)
                        }
                        (Err(failure), _) => {
                            failures.push(format!("{name} refused the cast: {}", failure.error));
                            refused.push(failure.error);
                        }
                    }
                }
                match (names.len(), refused.first()) {
                    (_, Some(error)) => format!("refused: {error}"),
                    (1, None) => "sent".into(),
                    (n, None) => format!("sent to {n} processes"),
                }
            }
            Action::Resp(spec) => {
                let reply = self.resp(&spec.command)?;
                let text = reply.to_string();
                if let Some(expected) = &spec.reply
                    && &text != expected
                {
                    failures.push(format!("{} answered {text}, expected {expected}", spec.command.join(" ")));
                }
                if let Some(part) = &spec.reply_contains
                    && !text.contains(part.as_str())
                {
                    failures.push(format!(
                        "{} answered {text}, expected it to contain {part:?}",
                        spec.command.join(" ")
                    ));
                }
                format!("reply {text}")
            }
            Action::Lines(step) => self.clients.run(step, &self.addr, &mut failures)?,
            Action::Assert(spec) => self.assert(spec, &mut failures)?,
        };
        Ok((detail, failures))
    }

    /// The release `version`'s archive with `fault` in it, under
    /// `<tmp>/faults/` (made once per version and fault).
    fn faulty_archive(&self, version: &str, fault: Fault) -> anyhow::Result<PathBuf> {
        let app = &self.scenario.meta.app;
        let good = &self.archives[version];
        let dir =
            self.tmp.path().join("faults").join(format!("{version}-{}", fault.label().replace(' ', "-")));
        let done = dir.join("archive.tar.gz");
        if done.is_file() {
            return Ok(done);
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let contents = archive::read(good, None, false)
            .with_context(|| format!("reading the built archive {}", good.display()))?;
        let module = contents
            .library(app)
            .or(contents.libraries.first())
            .map(|l| l.module.clone())
            .context("the release has no module library to break")?;
        match fault {
            Fault::LibraryTruncated
            | Fault::LibraryNotElf
            | Fault::LibraryGarbageElf
            | Fault::LibraryWrongAbi
            | Fault::LibraryNoExport => {
                let mut manifest = contents.manifest.clone();
                // A version of its own (1.1.0-truncated): were the good
                // 1.1.0 in the store, the node would refuse a broken build
                // under its version for its other libraries before ever
                // loading the broken one.
                let (_, _, value) = Fault::ALL.iter().find(|(f, _, _)| *f == fault).expect("listed");
                manifest.release.version = format!("{version}-{value}")
                    .parse()
                    .with_context(|| format!("{version}-{value} is not a semver version"))?;
                let mut libraries = Vec::new();
                for library in &contents.libraries {
                    let mut bytes = library.bytes.clone();
                    if library.module == module {
                        bytes = match fault {
                            Fault::LibraryTruncated => bytes[..bytes.len() / 2].to_vec(),
                            Fault::LibraryNotElf => b"this is a text file, not a shared library\n".to_vec(),
                            // Real modules, built by the examples' build:
                            // one of another ABI version, one that
                            // exports no module at all.
                            Fault::LibraryWrongAbi | Fault::LibraryNoExport => {
                                let krate =
                                    if fault == Fault::LibraryWrongAbi { "bad-abi" } else { "no-export" };
                                let path = examples::Examples::build("scenario run FILE")?.library(krate)?;
                                fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                            }
                            _ => {
                                let mut garbage = bytes[..64.min(bytes.len())].to_vec();
                                garbage.extend(random_bytes(64 * 1024));
                                garbage
                            }
                        };
                    }
                    let path = dir.join(format!("lib{}.so", library.module));
                    fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                    libraries.push((library.module.clone(), path));
                }
                let out = dir.join("dist");
                let built = archive::build(&manifest, &dir, &libraries, &out, None)
                    .with_context(|| format!("building the {} archive of {app} {version}", fault.label()))?;
                fs::rename(&built, &done).with_context(|| format!("moving {}", built.display()))?;
            }
            Fault::ArchiveTruncated => {
                let bytes = fs::read(good).with_context(|| format!("reading {}", good.display()))?;
                fs::write(&done, &bytes[..bytes.len() / 2])
                    .with_context(|| format!("writing {}", done.display()))?;
            }
            Fault::ArchiveChecksumMismatch => {
                let entry = archive::library_entry(&module);
                rewrite_archive(
                    good,
                    &done,
                    |name, data| {
                        if name == entry && !data.is_empty() {
                            let middle = data.len() / 2;
                            data[middle] ^= 0xff;
                        }
                        true
                    },
                    None,
                )?;
            }
            Fault::ArchivePathTraversal => {
                // An extra file that would land two directories above the
                // release's own.
                let extra = RawEntry {
                    path: "lib/../../escaped.txt".into(),
                    kind: tar::EntryType::Regular,
                    link: None,
                    data: b"written outside the release directory\n".to_vec(),
                };
                rewrite_archive(good, &done, |_, _| true, Some(extra))?;
            }
            Fault::ArchiveSymlink => {
                // The module's library replaced by a link to a file
                // outside the archive.
                let entry = archive::library_entry(&module);
                let link = RawEntry {
                    path: entry.clone(),
                    kind: tar::EntryType::Symlink,
                    link: Some("/etc/passwd".into()),
                    data: Vec::new(),
                };
                rewrite_archive(good, &done, |name, _| name != entry, Some(link))?;
            }
            Fault::ManifestBadVersion | Fault::ManifestDuplicateModule => {
                rewrite_archive(
                    good,
                    &done,
                    |name, data| {
                        if name != "release.toml" {
                            return true;
                        }
                        let text = String::from_utf8_lossy(data).to_string();
                        let changed = if fault == Fault::ManifestBadVersion {
                            let mut done = false;
                            text.lines()
                                .map(|line| {
                                    if !done && line.trim_start().starts_with("version") {
                                        done = true;
                                        "version = \"not-semver\"".to_string()
                                    } else {
                                        line.to_string()
                                    }
                                })
                                .collect::<Vec<_>>()
                                .join("\n")
                                + "\n"
                        } else {
                            let start = text.find("[[module]]").unwrap_or(text.len());
                            let end = text[start + 1..].find("[[").map_or(text.len(), |i| start + 1 + i);
                            format!("{}\n{}", text.trim_end(), &text[start..end])
                        };
                        *data = changed.into_bytes();
                        true
                    },
                    None,
                )?;
            }
        }
        Ok(done)
    }

    /// One RESP command on the probe connection (connected on first use,
    /// and again after a restart).
    fn resp(&mut self, command: &[String]) -> anyhow::Result<Reply> {
        if self.probe.is_none() {
            self.probe = Some(
                Resp::connect(&self.addr)
                    .with_context(|| format!("connecting the probe to {}", self.addr))?,
            );
        }
        let args: Vec<&[u8]> = command.iter().map(|a| a.as_bytes()).collect();
        let probe = self.probe.as_mut().expect("connected above");
        match probe.request(&args) {
            Ok(reply) => Ok(reply),
            Err(error) => {
                self.probe = None;
                Err(error).context("the probe's connection failed")
            }
        }
    }

    fn assert(&mut self, spec: &AssertSpec, failures: &mut Vec<String>) -> anyhow::Result<String> {
        let mut seen = Vec::new();
        let mut check = |what: &str, ok: bool, observed: String, expected: String| {
            seen.push(format!("{what} {observed}"));
            if !ok {
                failures.push(format!("{what} is {observed}, expected {expected}"));
            }
        };
        if spec.release.is_some() || spec.state.is_some() || spec.modules.is_some() {
            let status = self.status()?;
            let release = &status.release;
            if let Some(version) = &spec.release {
                let observed = release.version.to_string();
                check("release", &observed == version, observed, version.clone());
            }
            if let Some(state) = &spec.state {
                let observed = release.state.to_string();
                check("state", &observed == state, observed, state.clone());
            }
            for (name, version) in spec.modules.iter().flatten() {
                let observed =
                    status.modules.iter().find(|m| m.name == *name).map_or("absent".to_string(), |m| {
                        m.current.as_ref().map_or("none".to_string(), |c| c.version.to_string())
                    });
                check(&format!("module {name}"), &observed == version, observed, version.clone());
            }
        }
        if let Some(expected) = &spec.releases {
            let releases = self.node()?.checked(Client::releases)?;
            let observed: BTreeMap<String, String> = releases
                .iter()
                .filter(|r| r.name == self.scenario.meta.app)
                .map(|r| (r.version.to_string(), r.state.to_string()))
                .collect();
            let show = |m: &BTreeMap<String, String>| {
                m.iter().map(|(v, s)| format!("{v} {s}")).collect::<Vec<_>>().join(", ")
            };
            check(
                "releases",
                &observed == expected,
                format!("[{}]", show(&observed)),
                format!("[{}]", show(expected)),
            );
        }
        let counts = self.counts();
        if let Some(n) = spec.failed_requests {
            check("failed_requests", counts.failures == n, counts.failures.to_string(), n.to_string());
        }
        if let Some(n) = spec.dropped_connections {
            check("dropped_connections", counts.dropped == n, counts.dropped.to_string(), n.to_string());
        }
        if let Some(n) = spec.min_requests {
            check("requests", counts.requests >= n, counts.requests.to_string(), format!("at least {n}"));
        }
        if let Some(n) = spec.lost_messages {
            check("lost_messages", self.lost == n, self.lost.to_string(), n.to_string());
        }
        if let Some(bound) = spec.pause_p99_us_below {
            let p99 = self.pause_p99_max_us;
            check("pause_p99_us", p99 < bound, format!("{p99:.1}"), format!("below {bound}"));
        }
        for name in spec.absent_files.iter().flatten() {
            let found = find_files(self.tmp.path(), name);
            let observed = match found.first() {
                Some(path) => format!("present at {}", path.display()),
                None => "absent".to_string(),
            };
            check(&format!("file {name}"), found.is_empty(), observed, "absent".into());
        }
        Ok(seen.join(", "))
    }
}

/// JSON client `i` of a load: on a control connection of its own, sends
/// `call` and `cast` (either may be absent) to the process `to` in turn,
/// paced like a RESP client, until the load stops or its connection is
/// lost. A refusal is a failed request; a lost connection ends the client
/// as a dropped one.
fn json_client(i: usize, root: &Path, to: &str, call: Option<&Value>, cast: Option<&Value>, load: &Load) {
    struct Done<'a>(&'a Load);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.done.fetch_add(1, Ordering::SeqCst);
        }
    }
    let _done = Done(load);
    let mut client = match Client::connect(root) {
        Ok(client) => client,
        Err(error) => {
            load.dropped.fetch_add(1, Ordering::SeqCst);
            load.error(format!("client {i}: could not connect: {error}"));
            return;
        }
    };
    load.connected.fetch_add(1, Ordering::SeqCst);
    let mut pacer = demo::Pacer::new(load);
    while pacer.going(load) {
        let started = Instant::now();
        let mut sent = 0;
        for (what, message, counter) in [("call", call, &load.calls), ("cast", cast, &load.casts)] {
            let Some(message) = message else { continue };
            let result = if what == "call" {
                client.call(to, message.clone()).map(drop)
            } else {
                client.cast(to, message.clone())
            };
            load.requests.fetch_add(1, Ordering::SeqCst);
            counter.fetch_add(1, Ordering::SeqCst);
            sent += 1;
            match result {
                Ok(()) => {}
                Err(ClientError::Refused(failure)) => {
                    load.fail(format!("client {i}: {what} {message} to {to}: {}", failure.error));
                }
                Err(error) => {
                    load.dropped.fetch_add(1, Ordering::SeqCst);
                    load.error(format!("client {i}: connection lost during a {what} to {to}: {error}"));
                    return;
                }
            }
        }
        load.slowest_us.fetch_max(started.elapsed().as_micros() as u64, Ordering::SeqCst);
        load.iterations[i].fetch_add(1, Ordering::SeqCst);
        pacer.sent(sent, load);
    }
}

/// A tar entry written byte for byte: the `tar` crate's safe setters
/// refuse the `..` paths and links that fault archives need.
struct RawEntry {
    path: String,
    kind: tar::EntryType,
    link: Option<String>,
    data: Vec<u8>,
}

/// `src` (a .tar.gz) written to `dst` with each entry's data passed
/// through `edit`, which returns whether to keep the entry (headers kept,
/// sizes and checksums fixed), then `extra` appended.
fn rewrite_archive(
    src: &Path,
    dst: &Path,
    mut edit: impl FnMut(&str, &mut Vec<u8>) -> bool,
    extra: Option<RawEntry>,
) -> anyhow::Result<()> {
    let compressed = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut tar_bytes)
        .with_context(|| format!("gunzipping {}", src.display()))?;
    let mut input = tar::Archive::new(&tar_bytes[..]);
    let mut output = tar::Builder::new(Vec::new());
    for entry in input.entries().context("reading the tar")? {
        let mut entry = entry.context("reading the tar")?;
        let name = entry.path().context("reading the tar")?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).context("reading the tar")?;
        if !edit(&name, &mut data) {
            continue;
        }
        let mut header = entry.header().clone();
        header.set_size(data.len() as u64);
        header.set_cksum();
        output.append(&header, &data[..]).context("writing the tar")?;
    }
    if let Some(raw) = extra {
        let mut header = tar::Header::new_gnu();
        let old = header.as_old_mut();
        if raw.path.len() > old.name.len() || raw.link.as_ref().is_some_and(|l| l.len() > old.linkname.len())
        {
            bail!("the raw entry {:?} does not fit a tar header", raw.path);
        }
        old.name = [0; 100];
        old.name[..raw.path.len()].copy_from_slice(raw.path.as_bytes());
        if let Some(link) = &raw.link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(raw.kind);
        header.set_size(raw.data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        output.append(&header, &raw.data[..]).context("writing the tar")?;
    }
    let tar_out = output.into_inner().context("writing the tar")?;
    let file = fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    gz.write_all(&tar_out).context("writing the archive")?;
    gz.finish().context("writing the archive")?;
    Ok(())
}

/// Every file named `name` under `dir` (symbolic links not followed).
fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                _ if entry.file_name() == name => found.push(path),
                _ => {}
            }
        }
    }
    found
}

/// `n` pseudo-random bytes (xorshift seeded from the clock).
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The report of a deploy or rollback that ran, whether it went through
/// or not.
fn report_of(answer: &Answer<Deployed>) -> Option<&Report> {
    match answer {
        Ok(done) => Some(&done.report),
        Err(failure) => failure.report.as_deref(),
    }
}

/// Builds the releases a scenario names, runs its steps, stops everything.
fn execute(scenario: &Scenario, json: bool) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let meta = &scenario.meta;
    let versions: Vec<&str> = scenario.sources.iter().map(|(v, _)| v.as_str()).collect();
    let tmp = TempDir::new("scenario")?;
    let addr = demo::free_addr()?;
    // The checkout's examples build into its target/examples, as every
    // test builds them; any other crate into cargo's own target directory.
    let examples = examples::repo().join("examples");
    let examples_target = examples::repo().join("target").join("examples");
    let mut archives = BTreeMap::new();
    for (version, source) in &scenario.sources {
        let archive = match source {
            Source::Dir(dir) => {
                let target = dir.starts_with(&examples).then_some(examples_target.as_path());
                demo::build_release(tmp.path(), dir, &addr, target)?
            }
            Source::Archive(file) => file.clone(),
        };
        archives.insert(version.clone(), archive);
    }
    let root = tmp.path().join("root");
    let log = tmp.path().join("node.log");
    let mut runner = Runner {
        scenario,
        background: None,
        tmp,
        addr,
        archives,
        root,
        log,
        node: None,
        load: None,
        finished: Counts::default(),
        probe: None,
        lost: 0,
        pause_p99_max_us: 0.0,
        errors: Vec::new(),
        json,
        clients: lines::Clients::default(),
    };
    runner.say(&format!(
        "scenario {} ({}): {} {}, {} steps, node root {}",
        meta.name,
        scenario.file.display(),
        meta.app,
        versions.join(", "),
        scenario.steps.len(),
        runner.tmp.path().display()
    ));
    let total = scenario.steps.len();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        let index = i + 1;
        let what = step.action.describe();
        let t = Instant::now();
        let outcome = runner.step(&step.action);
        let took = t.elapsed();
        let where_ = format!("{}:{}: step {index} ({what})", scenario.file.display(), step.line);
        let (ok, detail, step_failures, fatal) = match outcome {
            Ok((detail, fails)) => (fails.is_empty(), detail, fails, false),
            Err(error) => {
                let mut message = format!("{error:#}");
                if runner.log.is_file() {
                    message
                        .push_str(&format!("; the node's log ends with:\n{}", demo::tail(&runner.log, 10)));
                }
                (false, String::from("error"), vec![message], true)
            }
        };
        runner.say(&format!(
            "  {:>7} {:<4} {what:<28} {detail}{} ({:.0} ms)",
            format!("[{index}/{total}]"),
            if ok { "ok" } else { "FAIL" },
            if step_failures.is_empty() {
                String::new()
            } else {
                format!(" — {}", step_failures.join("; "))
            },
            took.as_secs_f64() * 1e3
        ));
        for failure in &step_failures {
            failures.push(format!("{where_}: {failure}"));
        }
        results.push(StepResult {
            index,
            line: step.line,
            step: what,
            ok,
            detail,
            failures: step_failures,
            took,
        });
        if fatal {
            runner.say(&format!("  the scenario stops at step {index}"));
            break;
        }
    }
    if let Some(background) = runner.background.take() {
        let _ = background.thread.join();
        failures.push(format!(
            "{}: the background deploy of {} was never awaited (add `await = true`)",
            scenario.file.display(),
            background.version
        ));
    }
    runner.stop_load();
    runner.probe = None;
    if let Some(mut node) = runner.node.take()
        && let Err(error) = node.stop()
    {
        failures.push(format!("{}: stopping the node at the end: {error:#}", scenario.file.display()));
    }
    Ok(Outcome {
        scenario: meta.name.clone(),
        file: scenario.file.clone(),
        app: meta.app.clone(),
        outcome: meta.outcome.clone(),
        steps: results,
        failures,
        totals: runner.counts(),
        lost: runner.lost,
        pause_p99_max_us: runner.pause_p99_max_us,
        took: started.elapsed(),
    })
}

fn run_files(args: &RunArgs) -> anyhow::Result<()> {
    // Every file is checked before anything runs.
    let scenarios = args.files.iter().map(|f| parse(f)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut outcomes = Vec::new();
    for scenario in &scenarios {
        outcomes.push(execute(scenario, args.json)?);
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok()).collect();
    if args.json {
        let doc = json!({
            "ok": failed.is_empty(),
            "scenarios": outcomes.iter().map(Outcome::json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let mut out = String::from("\nsummary\n");
        let _ = writeln!(
            out,
            "  {:<40} {:>7} {:>10} {:>7} {:>8} {:>5} {:>9}  result",
            "scenario", "steps", "requests", "failed", "dropped", "lost", "seconds"
        );
        for o in &outcomes {
            let passed = o.steps.iter().filter(|s| s.ok).count();
            let _ = writeln!(
                out,
                "  {:<40} {:>7} {:>10} {:>7} {:>8} {:>5} {:>9.1}  {}",
                o.scenario,
                format!("{passed}/{}", o.steps.len()),
                demo::thousands(o.totals.requests),
                o.totals.failures,
                o.totals.dropped,
                o.lost,
                o.took.as_secs_f64(),
                if o.ok() { "ok" } else { "FAILED" }
            );
        }
        for o in &failed {
            for failure in &o.failures {
                let _ = writeln!(out, "  - {failure}");
            }
        }
        print!("{out}");
    }
    if !failed.is_empty() {
        let first = failed[0].failures.first().map(String::as_str).unwrap_or("");
        bail!(
            "{} of {} scenario(s) failed; first: {}",
            failed.len(),
            outcomes.len(),
            first.lines().next().unwrap_or(first)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!(
            "{:#}",
            parse_text(Path::new("x.toml"), text).err().unwrap_or_else(|| panic!("no error for {text}"))
        )
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let head = "[scenario]\nname = \"t\"\napp = \"kv\"\n[[step]]\nboot = \"1.0.0\"\n";
        assert!(
            err(&format!("{head}[[step]]\ndeplo = \"1.1.0\"\n"))
                .starts_with("x.toml:7: step 2: unknown step `deplo`")
        );
        assert!(
            err(&format!("{head}[[step]]\nload = {{ clients = 2, burst = 1 }}\n"))
                .starts_with("x.toml:7: step 2: unknown field `burst`")
        );
        assert!(
            err(&format!("{head}[[step]]\nwait = \"3 parsecs\"\n")).starts_with("x.toml:7: step 2: wait:")
        );
        assert!(err(&format!("{head}[[step]]\ndeploy = \"9.9.9\"\n")).contains("no release kv 9.9.9"));
        assert!(
            err(&format!("{head}[[step]]\nwait = \"1s\"\nexpect = \"ok\"\n"))
                .contains("step 2: `expect` belongs to a deploy or rollback step")
        );
        assert!(
            err(&format!("{head}[[step]]\ndeploy = \"1.1.0\"\nlibrary = \"bogus\"\n"))
                .starts_with("x.toml:8: step 2: library = \"bogus\": write one of truncated, not-elf")
        );
        assert!(
            err(&format!("{head}[[step]]\nwait = \"1s\"\nbackground = true\n"))
                .contains("step 2: `background` belongs to a deploy step")
        );
        assert!(
            err("[scenario]\nname = \"t\"\napp = \"kv\"\nnope = 1\n")
                .starts_with("x.toml:4: unknown field `nope`")
        );
        assert!(
            err(&format!("{head}[[step]]\ndeploy = \"1.1.0\"\nkill_at = \"lunch\"\n"))
                .starts_with("x.toml:8: step 2: kill_at = \"lunch\": write one of verified, prepared")
        );
        assert!(
            err(&format!("{head}[[step]]\ndeploy = \"1.1.0\"\nkill_at = \"migrated\"\nbackground = true\n"))
                .contains("kill_at: the deploy ends with the node killed")
        );
        assert!(
            err(&format!("{head}[[step]]\nrollback = \"one\"\n"))
                .contains("step 2: rollback = \"one\": unexpected character")
        );
        assert!(
            err(&format!("{head}[[step]]\nload = {{ clients = 2, rate = 0 }}\n"))
                .contains("step 2: load: rate = 0")
        );
        assert!(
            err(&format!("{head}[[step]]\nload = {{ clients = 2, duration = \"soon\" }}\n"))
                .contains("step 2: load: duration:")
        );
        assert!(
            err(&format!("{head}[[step]]\ncall = {{ name = \"c-{{1..}}\", message = \"Get\" }}\n"))
                .contains("step 2: call: name: \"c-{1..}\": write a range as {FIRST..LAST}")
        );
        assert!(
            err(&format!("{head}[[step]]\ncall = {{ name = \"c\", message = \"Get\", within = \"1s\" }}\n"))
                .contains("`within` asks again until `equals` holds")
        );
    }

    #[test]
    fn find_files_looks_in_every_directory() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("root").join("releases");
        fs::create_dir_all(&deep).unwrap();
        assert!(find_files(dir.path(), "escaped.txt").is_empty());
        fs::write(deep.join("escaped.txt"), "x").unwrap();
        assert_eq!(find_files(dir.path(), "escaped.txt"), [deep.join("escaped.txt")]);
    }

    #[test]
    fn names_expand_ranges() {
        assert_eq!(expand_names("kv").unwrap(), ["kv"]);
        assert_eq!(expand_names("c-{0..2}").unwrap(), ["c-0", "c-1", "c-2"]);
        assert_eq!(expand_names("w{7..7}x").unwrap(), ["w7x"]);
        assert!(expand_names("c-{2..1}").is_err());
        assert!(expand_names("c-{0..").is_err());
        assert!(expand_names("c-{0..9999999}").is_err());
    }

    #[test]
    fn a_load_and_a_killed_deploy_parse() {
        let text = "[scenario]\nname = \"t\"\napp = \"kv\"\n[[step]]\nboot = \"1.0.0\"\n\
                    [[step]]\nload = { clients = 3, rate = 500.0, duration = \"2s\", pipeline = 4 }\n\
                    [[step]]\ndeploy = \"1.1.0\"\nkill_at = \"switched\"\n";
        let scenario = parse_text(Path::new("x.toml"), text).unwrap();
        let Action::Load { clients: 3, shape, kind: LoadKind::Resp } = &scenario.steps[1].action else {
            panic!()
        };
        assert_eq!(
            (shape.rate, shape.duration, shape.pipeline),
            (Some(500.0), Some(Duration::from_secs(2)), 4)
        );
        assert!(
            matches!(&scenario.steps[2].action, Action::Deploy { kill_at: Some(p), .. } if p == "switched")
        );
    }

    #[test]
    fn a_json_load_and_a_cast_parse() {
        let head = "[scenario]\nname = \"t\"\napp = \"kv\"\n[[step]]\nboot = \"1.0.0\"\n";
        let text = format!(
            "{head}[[step]]\nload = {{ kind = \"json\", to = \"kv\", call = \"Version\", cast = {{ Add = 1 }}, \
             clients = 2, rate = 100.0 }}\n[[step]]\ncast = {{ name = \"c-{{0..2}}\", message = \"Tick\" }}\n"
        );
        let scenario = parse_text(Path::new("x.toml"), &text).unwrap();
        let Action::Load { clients: 2, kind: LoadKind::Json { to, call, cast }, .. } =
            &scenario.steps[1].action
        else {
            panic!("{:?}", scenario.steps[1].action)
        };
        assert_eq!(to, "kv");
        assert_eq!(call.as_ref(), Some(&json!("Version")));
        assert_eq!(cast.as_ref(), Some(&json!({"Add": 1})));
        let Action::Cast { names, .. } = &scenario.steps[2].action else { panic!() };
        assert_eq!(names, &["c-0", "c-1", "c-2"]);

        let load = |fields: &str| err(&format!("{head}[[step]]\nload = {{ {fields} }}\n"));
        assert!(
            load("kind = \"xml\", clients = 1")
                .contains("step 2: load: kind = \"xml\": write \"resp\" or \"json\"")
        );
        assert!(
            load("kind = \"json\", call = \"Get\", clients = 1").contains("names its process: to = \"NAME\"")
        );
        assert!(
            load("kind = \"json\", to = \"kv\", clients = 1").contains("sends a `call`, a `cast` or both")
        );
        assert!(load("to = \"kv\", call = \"Get\", clients = 1").contains("belong to a JSON load"));
        assert!(
            load("kind = \"json\", to = \"kv\", call = \"Get\", clients = 33")
                .contains("clients = 33 (1 to 32)")
        );
        assert!(
            load("kind = \"json\", to = \"kv\", call = \"Get\", clients = 1, pipeline = 2")
                .contains("`pipeline` belongs to a RESP load")
        );
        assert!(
            err(&format!(
                "{head}[[step]]\ncast = {{ name = \"c-{{0..1}}\", message = 1, error_contains = \"x\" }}\n"
            ))
            .contains("cast: `error_contains` expects one cast to be refused")
        );
    }

    /// A directory of a release: release.toml of `name` `version`.
    fn release_dir(dir: &Path, name: &str, version: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(
            dir.join("release.toml"),
            format!(
                "[release]\nname = \"{name}\"\nversion = \"{version}\"\n\n[[module]]\nname = \"m\"\ncrate = \"m\"\n\n\
                 [[process]]\nname = \"p\"\nmodule = \"m\"\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn releases_come_from_paths_relative_to_the_scenario_file() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("app");
        release_dir(&project, "app", "1.0.0");
        release_dir(&project.join("next"), "app", "2.0.0");
        release_dir(&tmp.path().join("rel").join("app-3.0.0"), "app", "3.0.0");
        let scenarios = project.join("scenarios");
        fs::create_dir_all(&scenarios).unwrap();
        fs::write(project.join("kept.tar.gz"), "not an archive").unwrap();
        let file = scenarios.join("s.toml");
        let head = "[scenario]\nname = \"t\"\napp = \"app\"\nreleases = \"../../rel\"\n";
        let parse = |steps: &str| parse_text(&file, &format!("{head}{steps}"));

        let scenario = parse(
            "[[step]]\nboot = \"1.0.0\"\npath = \"..\"\n[[step]]\ndeploy = \"2.0.0\"\npath = \"../next\"\n\
             [[step]]\ndeploy = \"3.0.0\"\n[[step]]\ndeploy = \"2.0.0\"\npath = \"../next/\"\n",
        )
        .unwrap();
        let sources: Vec<(&str, &Source)> = scenario.sources.iter().map(|(v, s)| (v.as_str(), s)).collect();
        let dir = |p: &Path| Source::Dir(p.canonicalize().unwrap());
        assert_eq!(
            sources,
            [
                ("1.0.0", &dir(&scenarios.join(".."))),
                ("2.0.0", &dir(&scenarios.join("../next"))),
                ("3.0.0", &dir(&tmp.path().join("rel").join("app-3.0.0")))
            ]
        );

        let error = |steps: &str| format!("{:#}", parse(steps).err().unwrap());
        let e = error("[[step]]\nboot = \"2.0.0\"\npath = \"..\"\n");
        assert!(e.contains("step 1: ") && e.contains("is release app 1.0.0, not app 2.0.0"), "{e}");
        let e = error("[[step]]\nboot = \"1.0.0\"\npath = \"../nowhere\"\n");
        assert!(e.contains("path = \"../nowhere\"") && e.contains("not found (the path is relative"), "{e}");
        let e = error("[[step]]\nboot = \"1.0.0\"\npath = \"../scenarios\"\n");
        assert!(e.contains("holds no release.toml"), "{e}");
        let e = error("[[step]]\nboot = \"1.0.0\"\npath = \"../kept.tar.gz\"\n");
        assert!(e.contains("kept.tar.gz"), "{e}");
        let e = error("[[step]]\nboot = \"1.0.0\"\npath = \"..\"\n[[step]]\nwait = \"1s\"\npath = \"..\"\n");
        assert!(e.contains("step 2: `path` belongs to a boot or deploy step"), "{e}");
        let e = error(
            "[[step]]\nboot = \"2.0.0\"\npath = \"../next\"\n[[step]]\ndeploy = \"2.0.0\"\npath = \"../../rel/app-3.0.0\"\n",
        );
        assert!(e.contains("is release app 3.0.0"), "{e}");
        let e = error("[[step]]\nboot = \"9.0.0\"\n");
        assert!(e.contains("no release app 9.0.0"), "{e}");
        let e = format!(
            "{:#}",
            parse_text(&file, "[scenario]\nname = \"t\"\napp = \"app\"\nreleases = \"nope\"\n")
                .err()
                .unwrap()
        );
        assert!(e.contains(":4: releases = \"nope\"") && e.contains("is not a directory"), "{e}");
    }
}
