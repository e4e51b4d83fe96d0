//! `relive bench`: the workloads of ../shared/peers (BEAM and the Rust actor
//! runtimes), run on relive's native processes, so figures compare directly.
//!
//! - ring: N processes pass one token N×rounds hops (one message in flight),
//!   after 100 warm-up rounds.
//! - spawn: a process spawns N idle processes; time until every one has run
//!   its init, and resident memory growth per process.
//! - call: a client process makes sequential calls to a server process;
//!   mean and p99 round trip (plus the same from a thread outside the node).
//!
//! With `--module`, ring and call run module processes instead (the example
//! modules of examples/, built with cargo and loaded by the code server):
//! the ring is made of `ring` module processes, and the calls go to a
//! `counter` module process, with the native call measured in the same run
//! for the ratio.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use relive_runtime::module::{json_to_payload, payload_to_json};
use relive_runtime::{Actor, Ctx, ExitReason, Message, ModuleReply, Node, NodeConfig, Payload, Pid, ReplyTo};
use serde::Serialize;
use serde_json::json;

use crate::examples::{Examples, TempDir};

#[derive(Args)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum)]
    bench: Bench,
    /// Processes (ring: ring size, default 1,000; spawn: how many, default 1,000,000).
    #[arg(long)]
    procs: Option<usize>,
    /// Rounds (ring: laps of the token, default 1,000; call: calls, default 100,000).
    #[arg(long)]
    rounds: Option<u64>,
    /// Scheduler workers (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// dist: casts per run (default 200,000); calls come from --rounds
    /// (default 20,000).
    #[arg(long)]
    messages: Option<u64>,
    /// dist: runs of each pair; the medians are reported (default 3).
    #[arg(long)]
    runs: Option<usize>,
    /// dist: serve the sink and echo as this node (the bench starts itself
    /// this way for its relive side).
    #[arg(long, hide = true)]
    serve_as: Option<String>,
    /// upgrade: casts per second kept flowing to the counters during the
    /// upgrade (default 200,000).
    #[arg(long)]
    rate: Option<u64>,
    /// Run module processes (ring: a ring of `ring` module processes; call:
    /// calls to a `counter` module process, compared with a native server in
    /// the same run). Builds the example modules with cargo first.
    #[arg(long)]
    module: bool,
    /// Serve the observer page over the benchmark's node on this address
    /// (a port on 127.0.0.1, or IP:PORT), read-only, to measure what a page
    /// streaming from it costs.
    #[arg(long, value_parser = relive_observer::parse_listen, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// With --http: write the observer's token to this file (0600).
    #[arg(long, requires = "http")]
    http_token_file: Option<std::path::PathBuf>,
    /// With --http: wait (up to a minute) until a page streams from the
    /// observer before the benchmark starts.
    #[arg(long, requires = "http")]
    http_wait: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Bench {
    Ring,
    Spawn,
    Call,
    /// N counter module processes upgraded live (v1 → v2) under a steady
    /// load of casts; fails if a cast is lost.
    Upgrade,
    /// Messages per second and call round trips over Erlang distribution
    /// on loopback: relive ↔ relive, relive ↔ erl and erl ↔ erl, same run
    /// (needs Erlang: erl, erlc, epmd).
    Dist,
}

/// Serves the observer over the benchmark's node; with `wait`, returns
/// once a page streams from it.
fn observe(
    node: &Node,
    addr: std::net::SocketAddr,
    token_file: Option<std::path::PathBuf>,
    wait: bool,
) -> anyhow::Result<relive_observer::Observer> {
    let settings =
        relive_observer::Settings { addr, max_upload_bytes: 0, token_file, upload_dir: std::env::temp_dir() };
    let observer = relive_observer::Observer::start(settings, relive_observer::Watched::Node(node.clone()))?;
    eprintln!("bench: observer on {}", observer.url());
    if wait {
        let started = Instant::now();
        while observer.streaming() == 0 {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("no page opened {} within a minute (--http-wait)", observer.url());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: a page streams from the observer; starting");
    }
    Ok(observer)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Bench::Dist = args.bench {
        if let Some(name) = &args.serve_as {
            return crate::bench_dist::serve(name);
        }
        let runs = args.runs.unwrap_or(3);
        if runs == 0 {
            bail!("--runs must be at least 1");
        }
        let calls = args.rounds.unwrap_or(20_000).max(1);
        return crate::bench_dist::run(args.messages.unwrap_or(200_000), calls, runs, args.json);
    }
    if args.messages.is_some() || args.runs.is_some() {
        bail!("--messages and --runs apply to the dist benchmark only");
    }
    let mut config = NodeConfig::default();
    if let Some(workers) = args.workers {
        if workers == 0 {
            bail!("--workers must be at least 1");
        }
        config.workers = workers;
    }
    let modules = match (args.module, args.bench) {
        (_, Bench::Upgrade) | (true, Bench::Ring | Bench::Call) => {
            let command = match args.bench {
                Bench::Ring => "bench ring --module",
                Bench::Call => "bench call --module",
                _ => "bench upgrade",
            };
            let examples = Examples::build(command)?;
            let dir = TempDir::new("bench")?;
            config.code_dir = Some(dir.path().join("code"));
            Some((examples, dir))
        }
        (false, _) => None,
        (true, Bench::Spawn | Bench::Dist) => bail!("--module applies to the ring and call benchmarks"),
    };
    if args.rate.is_some() && !matches!(args.bench, Bench::Upgrade) {
        bail!("--rate applies to the upgrade benchmark only");
    }
    let node = Node::start(config);
    let _observer = match args.http {
        Some(addr) => Some(observe(&node, addr, args.http_token_file.clone(), args.http_wait)?),
        None => None,
    };
    let result = match (args.bench, &modules) {
        (Bench::Upgrade, Some((examples, _))) => crate::bench_upgrade::upgrade(
            &node,
            examples,
            args.procs.unwrap_or(10_000),
            args.rate.unwrap_or(200_000),
        )
        .map(|r| report(&r, args.json, crate::bench_upgrade::UpgradeResult::text).and_then(|()| r.check())),
        (Bench::Ring, Some((examples, _))) => {
            module_ring(&node, examples, args.procs.unwrap_or(1_000), args.rounds.unwrap_or(1_000)).map(|r| {
                report(&r, args.json, |r| {
                    format!(
                        "ring of module processes: {} processes × {} rounds = {} messages in {:.3} s: \
                         {:.2} M msgs/s",
                        r.procs,
                        r.rounds,
                        r.messages,
                        r.seconds,
                        r.msgs_per_sec / 1e6
                    )
                })
            })
        }
        (Bench::Call, Some((examples, _))) => module_call(&node, examples, args.rounds.unwrap_or(100_000))
            .map(|r| {
                report(&r, args.json, |r| {
                    format!(
                        "call to a module process: {} round trips from a process: mean {:.3} µs, \
                         p99 {:.3} µs; to a native server in the same run: mean {:.3} µs, p99 {:.3} µs; \
                         module / native: {:.2}× (from an outside thread: mean {:.3} µs, p99 {:.3} µs)",
                        r.module.calls,
                        r.module.mean_us,
                        r.module.p99_us,
                        r.native_mean_us,
                        r.native_p99_us,
                        r.ratio,
                        r.module.external_mean_us,
                        r.module.external_p99_us
                    )
                })
            }),
        (Bench::Upgrade, None) => unreachable!("the upgrade bench always loads the examples"),
        (Bench::Dist, _) => unreachable!("the dist bench returned above"),
        (Bench::Ring, _) => ring(&node, args.procs.unwrap_or(1_000), args.rounds.unwrap_or(1_000)).map(|r| {
            report(&r, args.json, |r| {
                format!(
                    "ring: {} processes × {} rounds = {} messages in {:.3} s: {:.2} M msgs/s",
                    r.procs,
                    r.rounds,
                    r.messages,
                    r.seconds,
                    r.msgs_per_sec / 1e6
                )
            })
        }),
        (Bench::Spawn, _) => spawn(&node, args.procs.unwrap_or(1_000_000)).map(|r| {
            report(&r, args.json, |r| {
                format!(
                    "spawn: {} idle processes in {:.3} s ({:.3} µs each), {:.0} bytes per process",
                    r.procs, r.seconds, r.us_per_spawn, r.bytes_per_proc
                )
            })
        }),
        (Bench::Call, _) => call(&node, args.rounds.unwrap_or(100_000)).map(|r| {
            report(&r, args.json, |r| {
                format!(
                    "call: {} round trips from a process: mean {:.3} µs, p99 {:.3} µs \
                     (from an outside thread: mean {:.3} µs, p99 {:.3} µs)",
                    r.calls, r.mean_us, r.p99_us, r.external_mean_us, r.external_p99_us
                )
            })
        }),
    };
    node.shutdown();
    drop(modules);
    result?
}

fn report<T: Serialize>(result: &T, json: bool, text: impl Fn(&T) -> String) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, result)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", text(result))?;
    }
    Ok(())
}

const WAIT: Duration = Duration::from_secs(120);

#[derive(Serialize)]
struct RingResult {
    procs: usize,
    rounds: u64,
    messages: u64,
    seconds: f64,
    msgs_per_sec: f64,
}

enum RingMsg {
    Next(Pid),
    Token(u64),
}

struct RingNode {
    next: Option<Pid>,
    done: mpsc::Sender<()>,
}

impl Actor for RingNode {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        match message.downcast::<RingMsg>() {
            Ok(RingMsg::Token(0)) => {
                let _ = self.done.send(());
            }
            Ok(RingMsg::Token(hops)) => {
                if let Some(next) = self.next {
                    let _ = ctx.send(next, RingMsg::Token(hops - 1));
                }
            }
            Ok(RingMsg::Next(next)) => self.next = Some(next),
            Err(_) => {}
        }
    }
}

fn ring(node: &Node, procs: usize, rounds: u64) -> anyhow::Result<RingResult> {
    if procs < 2 {
        bail!("--procs must be at least 2 for a ring");
    }
    let (done_tx, done_rx) = mpsc::channel();
    let pids = (0..procs)
        .map(|_| node.spawn(RingNode { next: None, done: done_tx.clone() }))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, pid) in pids.iter().enumerate() {
        node.send(*pid, RingMsg::Next(pids[(i + 1) % procs]))?;
    }
    let lap = |hops: u64| -> anyhow::Result<f64> {
        let started = Instant::now();
        node.send(pids[0], RingMsg::Token(hops - 1))?;
        done_rx.recv_timeout(WAIT).context("the ring token did not come back")?;
        Ok(started.elapsed().as_secs_f64())
    };
    lap(procs as u64 * 100)?;
    let messages = procs as u64 * rounds;
    let seconds = lap(messages)?;
    for pid in pids {
        node.exit(pid, ExitReason::Kill);
    }
    Ok(RingResult { procs, rounds, messages, seconds, msgs_per_sec: messages as f64 / seconds })
}

#[derive(Serialize)]
struct SpawnResult {
    procs: usize,
    seconds: f64,
    bytes_per_proc: f64,
    us_per_spawn: f64,
}

struct Idle {
    started: Arc<AtomicUsize>,
    target: usize,
    all_started: mpsc::Sender<Instant>,
}

impl Actor for Idle {
    fn init(&mut self, _ctx: &mut Ctx<'_>) -> Result<(), ExitReason> {
        if self.started.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            let _ = self.all_started.send(Instant::now());
        }
        Ok(())
    }

    fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}
}

/// Spawns in chunks and sends itself the rest, so other processes (the new
/// ones' inits) get to run between chunks. The turn budget counts messages,
/// so a chunk must be small: 64 chunks may run in one turn.
struct Spawner {
    idle: Idle,
    pids: Vec<Pid>,
    done: mpsc::Sender<Vec<Pid>>,
}

const SPAWN_CHUNK: usize = 1_000;

impl Actor for Spawner {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        let Ok(remaining) = message.downcast::<usize>() else { return };
        let chunk = remaining.min(SPAWN_CHUNK);
        for _ in 0..chunk {
            let child = Idle {
                started: self.idle.started.clone(),
                target: self.idle.target,
                all_started: self.idle.all_started.clone(),
            };
            match ctx.spawn(child) {
                Ok(pid) => self.pids.push(pid),
                Err(_) => return drop(self.done.send(std::mem::take(&mut self.pids))),
            }
        }
        if remaining > chunk {
            let _ = ctx.send(ctx.pid(), remaining - chunk);
        } else {
            let _ = self.done.send(std::mem::take(&mut self.pids));
        }
    }
}

fn spawn(node: &Node, procs: usize) -> anyhow::Result<SpawnResult> {
    if procs == 0 {
        bail!("--procs must be at least 1");
    }
    let run = |count: usize| -> anyhow::Result<(f64, f64)> {
        let (started_tx, started_rx) = mpsc::channel();
        let (pids_tx, pids_rx) = mpsc::channel();
        let idle = Idle { started: Arc::new(AtomicUsize::new(0)), target: count, all_started: started_tx };
        let spawner = node.spawn(Spawner { idle, pids: Vec::with_capacity(count), done: pids_tx })?;
        std::thread::sleep(Duration::from_millis(20));
        let before = rss_bytes()?;
        let t0 = Instant::now();
        node.send(spawner, count)?;
        let pids = pids_rx.recv_timeout(WAIT).context("the spawner did not finish")?;
        if pids.len() != count {
            bail!("spawned only {} of {count} processes", pids.len());
        }
        let all_started = started_rx.recv_timeout(WAIT).context("not every process started")?;
        let seconds = all_started.duration_since(t0).as_secs_f64();
        let after = rss_bytes()?;
        for pid in pids {
            node.exit(pid, ExitReason::Kill);
        }
        node.exit(spawner, ExitReason::Kill);
        let deadline = Instant::now() + WAIT;
        while node.process_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((seconds, (after as f64 - before as f64) / count as f64))
    };
    // Warm-up, as the BEAM peer does, so allocators are touched once.
    run(procs.min(10_000))?;
    let (seconds, bytes_per_proc) = run(procs)?;
    Ok(SpawnResult { procs, seconds, bytes_per_proc, us_per_spawn: seconds * 1e6 / procs as f64 })
}

fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS line in /proc/self/status")?;
    Ok(kib * 1024)
}

#[derive(Serialize)]
struct CallResult {
    calls: u64,
    mean_us: f64,
    p99_us: f64,
    p50_us: f64,
    max_us: f64,
    external_mean_us: f64,
    external_p99_us: f64,
}

struct Server;

impl Actor for Server {
    fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}

    fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        if let Ok(n) = request.downcast::<u64>() {
            reply.reply_with(n + 1);
        }
    }
}

struct Client {
    server: Pid,
    latencies: mpsc::Sender<Vec<u64>>,
}

impl Actor for Client {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        let Ok(calls) = message.downcast::<u64>() else { return };
        let mut latencies = Vec::with_capacity(calls as usize);
        for i in 0..calls {
            let t = Instant::now();
            match ctx.call(self.server, i, Duration::from_secs(5)).map(|r| r.downcast::<u64>()) {
                Ok(Ok(n)) if n == i + 1 => latencies.push(t.elapsed().as_nanos() as u64),
                _ => break,
            }
        }
        let _ = self.latencies.send(latencies);
    }
}

fn call(node: &Node, calls: u64) -> anyhow::Result<CallResult> {
    if calls == 0 {
        bail!("--rounds (calls) must be at least 1");
    }
    let server = node.spawn(Server)?;
    let (tx, rx) = mpsc::channel();
    let client = node.spawn(Client { server, latencies: tx })?;
    // Warm-up, as the BEAM peer does.
    node.send(client, 10_000u64)?;
    rx.recv_timeout(WAIT).context("warm-up calls did not finish")?;
    node.send(client, calls)?;
    let latencies = rx.recv_timeout(WAIT).context("the calls did not finish")?;
    if latencies.len() as u64 != calls {
        bail!("only {} of {calls} calls succeeded", latencies.len());
    }
    let mut external = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        let t = Instant::now();
        let reply = node.call(server, i, Duration::from_secs(5))?;
        external.push(t.elapsed().as_nanos() as u64);
        if reply.downcast::<u64>().ok() != Some(i + 1) {
            bail!("wrong reply to call {i}");
        }
    }
    let (mean_us, p50_us, p99_us, max_us) = stats(latencies);
    let (external_mean_us, _, external_p99_us, _) = stats(external);
    Ok(CallResult { calls, mean_us, p99_us, p50_us, max_us, external_mean_us, external_p99_us })
}

/// Mean, p50, p99 and max in µs, with the peers' percentile rule.
fn stats(mut ns: Vec<u64>) -> (f64, f64, f64, f64) {
    ns.sort_unstable();
    let n = ns.len();
    let at = |q: f64| ns[((n as f64 * q).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3;
    let mean = ns.iter().sum::<u64>() as f64 / n as f64 / 1e3;
    (mean, at(0.5), at(0.99), ns[n - 1] as f64 / 1e3)
}

/// Loads example crate `krate` into the node's code server.
fn load(node: &Node, examples: &Examples, krate: &str) -> anyhow::Result<()> {
    let path = examples.library(krate)?;
    let code = node.code_server().context("the node has no code server")?;
    code.load(&path).with_context(|| format!("loading {}", path.display()))?;
    Ok(())
}

/// The registered name the ring module's last hop casts to
/// (examples/ring's `DRIVER`).
const RING_DRIVER: &str = "ring_driver";

/// Registered as [`RING_DRIVER`]: tells the bench the token came back.
struct RingDriver {
    done: mpsc::Sender<()>,
}

impl Actor for RingDriver {
    fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {
        let _ = self.done.send(());
    }
}

/// The ring of module processes: the same laps as [`ring`], each process a
/// `ring` module process passing a MessagePack `{"Hop": n}` on.
fn module_ring(node: &Node, examples: &Examples, procs: usize, rounds: u64) -> anyhow::Result<RingResult> {
    if procs < 2 {
        bail!("--procs must be at least 2 for a ring");
    }
    load(node, examples, "ring")?;
    let payload = |value: serde_json::Value| json_to_payload(&value).map_err(anyhow::Error::msg);
    let (done_tx, done_rx) = mpsc::channel();
    let driver = node.spawn(RingDriver { done: done_tx })?;
    node.register(RING_DRIVER, driver)?;
    let start = payload(json!({}))?;
    let pids = (0..procs)
        .map(|_| node.spawn_module("ring", start.clone(), WAIT))
        .collect::<Result<Vec<_>, _>>()
        .context("spawning the ring's module processes")?;
    for (i, pid) in pids.iter().enumerate() {
        node.send(*pid, payload(json!({"Next": pids[(i + 1) % procs].as_u64()}))?)?;
    }
    let lap = |hops: u64| -> anyhow::Result<f64> {
        let token = payload(json!({"Hop": hops - 1}))?;
        let started = Instant::now();
        node.send(pids[0], token)?;
        done_rx.recv_timeout(WAIT).context("the ring token did not come back")?;
        Ok(started.elapsed().as_secs_f64())
    };
    lap(procs as u64 * 100)?;
    let messages = procs as u64 * rounds;
    let seconds = lap(messages)?;
    for pid in pids {
        node.exit(pid, ExitReason::Kill);
    }
    node.unregister(RING_DRIVER);
    node.exit(driver, ExitReason::Kill);
    Ok(RingResult { procs, rounds, messages, seconds, msgs_per_sec: messages as f64 / seconds })
}

#[derive(Serialize)]
struct ModuleCallResult {
    /// The calls to the module process (the same keys as the native call).
    #[serde(flatten)]
    module: CallResult,
    native_mean_us: f64,
    native_p99_us: f64,
    /// Module mean / native mean.
    ratio: f64,
}

/// Makes sequential calls with one MessagePack request (encoded once) to a
/// module process; each reply must be a module's `Ok` reply.
struct ModuleClient {
    server: Pid,
    request: Payload,
    latencies: mpsc::Sender<Vec<u64>>,
}

impl Actor for ModuleClient {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        let Ok(calls) = message.downcast::<u64>() else { return };
        let mut latencies = Vec::with_capacity(calls as usize);
        for _ in 0..calls {
            let t = Instant::now();
            match ctx
                .call(self.server, self.request.clone(), Duration::from_secs(5))
                .map(|r| r.downcast::<ModuleReply>())
            {
                Ok(Ok(Ok(reply))) if !reply.0.is_empty() => latencies.push(t.elapsed().as_nanos() as u64),
                _ => break,
            }
        }
        let _ = self.latencies.send(latencies);
    }
}

/// The native call bench, then the same calls to a `counter` module process
/// (`{"Add": 1}`), in one node.
fn module_call(node: &Node, examples: &Examples, calls: u64) -> anyhow::Result<ModuleCallResult> {
    let native = call(node, calls)?;
    load(node, examples, "counter-v1")?;
    let start = json_to_payload(&json!({"label": "bench"})).map_err(anyhow::Error::msg)?;
    let server = node.spawn_module("counter", start, WAIT).context("spawning the counter module process")?;
    let request = json_to_payload(&json!({"Add": 1})).map_err(anyhow::Error::msg)?;
    let (tx, rx) = mpsc::channel();
    let client = node.spawn(ModuleClient { server, request: request.clone(), latencies: tx })?;
    let warm_up = 10_000u64;
    node.send(client, warm_up)?;
    let done = rx.recv_timeout(WAIT).context("warm-up calls did not finish")?;
    if done.len() as u64 != warm_up {
        bail!("only {} of {warm_up} warm-up calls to the module process succeeded", done.len());
    }
    node.send(client, calls)?;
    let latencies = rx.recv_timeout(WAIT).context("the calls did not finish")?;
    if latencies.len() as u64 != calls {
        bail!("only {} of {calls} calls to the module process succeeded", latencies.len());
    }
    let mut external = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        let t = Instant::now();
        let reply = node.call(server, request.clone(), Duration::from_secs(5))?;
        external.push(t.elapsed().as_nanos() as u64);
        match reply.downcast::<ModuleReply>() {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => bail!("the module refused call {i}: {error}"),
            Err(_) => bail!("call {i}: the answer is not a module reply"),
        }
    }
    // Every call added 1: the total proves each one ran in the module.
    let total = node.call(server, json_to_payload(&json!("Get")).map_err(anyhow::Error::msg)?, WAIT)?;
    let total = match total.downcast::<ModuleReply>() {
        Ok(Ok(payload)) => payload_to_json(&payload).map_err(anyhow::Error::msg)?,
        _ => bail!("the counter did not answer Get"),
    };
    if total != json!(warm_up + 2 * calls) {
        bail!("the counter counted {total}, not {} calls", warm_up + 2 * calls);
    }
    node.exit(client, ExitReason::Kill);
    node.exit(server, ExitReason::Kill);
    let (mean_us, p50_us, p99_us, max_us) = stats(latencies);
    let (external_mean_us, _, external_p99_us, _) = stats(external);
    Ok(ModuleCallResult {
        module: CallResult { calls, mean_us, p99_us, p50_us, max_us, external_mean_us, external_p99_us },
        native_mean_us: native.mean_us,
        native_p99_us: native.p99_us,
        ratio: mean_us / native.mean_us,
    })
}
