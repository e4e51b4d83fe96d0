//! `relive bench upgrade`: the upgrade workload of ../shared/peers
//! (beam/upgrade.erl, "rate" load): N counter servers move from v1 to v2
//! (examples/counter-v1 → counter-v2, whose state type differs, so every
//! process runs a real `code_change`) while two loader processes keep a
//! fixed total rate of casts flowing to them; every cast must be counted.
//!
//! Timeline, as in the BEAM program: spawn and start the load, 300 ms of
//! load, the upgrade (the controller's `apply`: load v2, move every
//! process), 300 ms more, stop the loaders, then count. A loader reports
//! how many casts it sent once it has stopped; every one of them is then
//! already in its counter's mailbox (a cast is queued before `send`
//! returns), so a `Get` from the bench, queued after them, sees them all:
//! `lost = sent - sum of counts`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use relive_runtime::module::json_to_payload;
use relive_runtime::{Actor, Ctx, ExitReason, Message, Node, Payload, Pid};
use relive_upgrader::{Controller, Instruction, Options, Plan, Processes};
use serde::Serialize;
use serde_json::json;

use crate::examples::Examples;

const WAIT: Duration = Duration::from_secs(120);
/// How often a loader sends its share (BEAM's loaders: every 10 ms).
const TICK: Duration = Duration::from_millis(10);
/// Load before and after the upgrade.
const SETTLE: Duration = Duration::from_millis(300);
/// Loaders, as in the BEAM program.
const LOADERS: usize = 2;

#[derive(Serialize)]
pub struct UpgradeResult {
    procs: usize,
    /// Casts per second asked for.
    rate: u64,
    /// Casts per second achieved over the whole run.
    achieved_rate: f64,
    /// Installing v2 and moving every process, ms (the upgrade proper).
    total_ms: f64,
    /// Installing v2 alone, ms.
    load_ms: f64,
    /// Opening v2 before that (reading, hashing, copying into the code
    /// directory, dlopen), ms: the node sees none of it; BEAM's equivalent,
    /// compiling v2, is outside its figure too.
    prepare_ms: f64,
    pause_us: Pause,
    sent: u64,
    handled: u64,
    lost: u64,
    /// Processes on v2 after the upgrade.
    moved: usize,
    /// Messages the counters received while the upgrade ran, and those the
    /// controller's mailbox accounting found missing.
    upgrade_messages_received: u64,
    upgrade_messages_lost: u64,
}

impl UpgradeResult {
    /// One line for people.
    pub fn text(&self) -> String {
        format!(
            "upgrade: {} counter processes 1.0.0 → 2.0.0 under {} casts/s ({:.0} achieved): {:.1} ms \
             (install {:.1} ms, after {:.1} ms opening the library); pause per process mean {:.1} µs, p99 {:.1} µs, max {:.1} µs; \
             sent {}, handled {}, lost {}",
            self.procs,
            self.rate,
            self.achieved_rate,
            self.total_ms,
            self.load_ms,
            self.prepare_ms,
            self.pause_us.mean,
            self.pause_us.p99,
            self.pause_us.max,
            self.sent,
            self.handled,
            self.lost
        )
    }

    /// Fails unless every cast was handled exactly once and every process
    /// moved.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.handled != self.sent {
            bail!(
                "{} casts sent but {} handled: {} lost during the upgrade",
                self.sent,
                self.handled,
                self.sent as i64 - self.handled as i64
            );
        }
        if self.moved != self.procs {
            bail!("only {} of {} processes run 2.0.0 after the upgrade", self.moved, self.procs);
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct Pause {
    mean: f64,
    p99: f64,
    max: f64,
}

/// Sends its share of the rate, spread over every counter, on each tick:
/// as many casts as keep it at `per_second` since it started (so a late
/// tick catches up instead of lowering the rate).
struct Loader {
    counters: Vec<Pid>,
    index: usize,
    per_second: f64,
    cast: Payload,
    started: Option<Instant>,
    sent: u64,
    stopped: bool,
    report: mpsc::Sender<u64>,
}

enum LoaderMsg {
    Tick,
    Stop,
}

impl Actor for Loader {
    fn init(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ExitReason> {
        self.started = Some(Instant::now());
        ctx.send_after(ctx.pid(), LoaderMsg::Tick, TICK);
        Ok(())
    }

    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        match message.downcast::<LoaderMsg>() {
            Ok(LoaderMsg::Tick) if !self.stopped => {
                let elapsed = self.started.expect("init ran").elapsed().as_secs_f64();
                let due = (elapsed * self.per_second) as u64;
                let n = self.counters.len();
                while self.sent < due {
                    let k = self.sent as usize;
                    let to = self.counters[(k * 7 + self.index) % n];
                    // A counter that is gone is a lost cast: counted as sent.
                    let _ = ctx.cast(to, self.cast.clone());
                    self.sent += 1;
                }
                ctx.send_after(ctx.pid(), LoaderMsg::Tick, TICK);
            }
            Ok(LoaderMsg::Stop) => {
                self.stopped = true;
                let _ = self.report.send(self.sent);
            }
            _ => {}
        }
    }
}

pub fn upgrade(node: &Node, examples: &Examples, procs: usize, rate: u64) -> anyhow::Result<UpgradeResult> {
    if procs == 0 {
        bail!("--procs must be at least 1");
    }
    if rate == 0 {
        bail!("--rate must be at least 1 message per second");
    }
    let code = node.code_server().context("the node has no code server")?;
    let v1 = examples.library("counter-v1")?;
    let v2 = examples.library("counter-v2")?;
    code.load(&v1).with_context(|| format!("loading {}", v1.display()))?;
    let start = json_to_payload(&json!({"label": "bench"})).map_err(anyhow::Error::msg)?;
    let counters = (0..procs)
        .map(|_| node.spawn_module("counter", start.clone(), WAIT))
        .collect::<Result<Vec<_>, _>>()
        .context("spawning the counter processes")?;
    let cast = json_to_payload(&json!({"Add": 1})).map_err(anyhow::Error::msg)?;
    let (report_tx, report_rx) = mpsc::channel();
    let loaders = (0..LOADERS)
        .map(|index| {
            node.spawn(Loader {
                counters: counters.clone(),
                index,
                per_second: rate as f64 / LOADERS as f64,
                cast: cast.clone(),
                started: None,
                sent: 0,
                stopped: false,
                report: report_tx.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let load_started = Instant::now();
    std::thread::sleep(SETTLE);

    let plan = Plan::new(
        "counter 1.0.0 → 2.0.0",
        vec![
            Instruction::LoadModule { module: "counter".into(), path: v2 },
            Instruction::Update {
                module: "counter".into(),
                processes: Processes::All,
                extra: serde_json::Value::Null,
                suspend_together: false,
            },
        ],
    );
    let controller = Controller::new(node)?;
    let report = controller.apply(&plan, &Options::default())?;

    std::thread::sleep(SETTLE);
    for loader in &loaders {
        node.send(*loader, LoaderMsg::Stop)?;
    }
    let mut sent = 0;
    for _ in &loaders {
        sent += report_rx.recv_timeout(WAIT).context("a loader did not stop")?;
    }
    let seconds = load_started.elapsed().as_secs_f64();
    let mut handled = 0u64;
    let mut moved = 0;
    for pid in &counters {
        let count = node.call_json(*pid, &json!("Get"), WAIT).with_context(|| format!("counting {pid}"))?;
        handled += count.as_u64().with_context(|| format!("{pid} answered Get with {count}"))?;
        if node.call_json(*pid, &json!("Version"), WAIT)? == json!("2.0.0") {
            moved += 1;
        }
    }
    for pid in loaders.into_iter().chain(counters) {
        node.exit(pid, ExitReason::Kill);
    }
    let load_ms = report.steps.first().map_or(0.0, |step| step.took_us / 1e3);
    Ok(UpgradeResult {
        procs,
        rate,
        achieved_rate: sent as f64 / seconds,
        total_ms: report.upgrade_ms,
        load_ms,
        prepare_ms: report.prepare_ms,
        pause_us: Pause { mean: report.pause.mean_us, p99: report.pause.p99_us, max: report.pause.max_us },
        sent,
        handled,
        lost: sent.saturating_sub(handled),
        moved,
        upgrade_messages_received: report.messages_received,
        upgrade_messages_lost: report.messages_lost,
    })
}
