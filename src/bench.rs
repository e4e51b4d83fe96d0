//! `relive bench`: the workloads of ../shared/peers (BEAM and the Rust actor
//! runtimes), run on relive's native processes, so figures compare directly.
//!
//! - ring: N processes pass one token N×rounds hops (one message in flight),
//!   after 100 warm-up rounds.
//! - spawn: a process spawns N idle processes; time until every one has run
//!   its init, and resident memory growth per process.
//! - call: a client process makes sequential calls to a server process;
//!   mean and p99 round trip (plus the same from a thread outside the node).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use relive_runtime::{Actor, Ctx, ExitReason, Message, Node, NodeConfig, Pid, ReplyTo};
use serde::Serialize;

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
}

#[derive(Clone, Copy, ValueEnum)]
enum Bench {
    Ring,
    Spawn,
    Call,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut config = NodeConfig::default();
    if let Some(workers) = args.workers {
        if workers == 0 {
            bail!("--workers must be at least 1");
        }
        config.workers = workers;
    }
    let node = Node::start(config);
    let result = match args.bench {
        Bench::Ring => ring(&node, args.procs.unwrap_or(1_000), args.rounds.unwrap_or(1_000)).map(|r| {
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
        Bench::Spawn => spawn(&node, args.procs.unwrap_or(1_000_000)).map(|r| {
            report(&r, args.json, |r| {
                format!(
                    "spawn: {} idle processes in {:.3} s ({:.3} µs each), {:.0} bytes per process",
                    r.procs, r.seconds, r.us_per_spawn, r.bytes_per_proc
                )
            })
        }),
        Bench::Call => call(&node, args.rounds.unwrap_or(100_000)).map(|r| {
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
