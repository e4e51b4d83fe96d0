//! The commands that talk to a node through [`relive_node::client::Client`]:
//! `relive node start|stop`, `deploy`, `rollback`, `make-permanent`,
//! `status`, `releases`, `call`, `cast`. Each sends one request, prints the
//! response readably (or as JSON with `--json`) and exits non-zero if the
//! node refused it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use relive_node::client::{Client, ClientError};
use relive_node::protocol::{CanaryRequest, DeployRequest, Progress, Request, Response, Status};

use crate::node;
use crate::release::RootArg;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Start a node: it boots a release and takes commands on <root>/control.sock.
    Start(node::StartArgs),
    /// Stop the node gracefully (its heart, if any, stops too).
    Stop(Plain),
}

/// The arguments of a command that needs only the root.
#[derive(Args)]
pub struct Plain {
    #[command(flatten)]
    pub root: RootArg,
    /// Print the node's JSON response.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    plain: Plain,
    /// Go to this release of the store instead of undoing the last deploy
    /// (live when the newer of the two upgrades from the older one).
    #[arg(long)]
    to: Option<semver::Version>,
}

#[derive(Args)]
pub struct MakePermanentArgs {
    #[command(flatten)]
    plain: Plain,
    /// Only if this version is the one that runs: a deploy or rollback
    /// since you looked is refused and nothing is changed.
    #[arg(long)]
    version: Option<semver::Version>,
}

#[derive(Args)]
pub struct DeployArgs {
    /// The release archive to upgrade the running node to, live.
    archive: PathBuf,
    /// Make the release permanent once it runs (a restarted node boots it).
    #[arg(long)]
    permanent: bool,
    /// Watch the new code this long after the switch (e.g. 2s, 500ms); a
    /// crash on it, or a failed signal (below), rolls the upgrade back.
    #[arg(long, value_parser = parse_duration)]
    health_window: Option<Duration>,
    #[command(flatten)]
    safety: SafetyArgs,
    /// Run every migration on copies of the states and report; change
    /// nothing (the store stays byte-identical).
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    root: RootArg,
    /// Print the node's JSON response.
    #[arg(long)]
    json: bool,
}

/// The signals a deploy's canary and health windows judge (shared by
/// `relive deploy` and `relive cluster deploy`).
#[derive(Args)]
pub struct SafetyArgs {
    /// Move this share of each module's processes first (e.g. 10%), watch
    /// them for --canary-window, then move the rest; a failed signal moves
    /// the canaries back and leaves the others untouched.
    #[arg(long, value_name = "PERCENT", value_parser = parse_canary_percent)]
    canary: Option<f64>,
    /// How long the canaries are watched (default 5s).
    #[arg(long, value_name = "D", value_parser = parse_duration, requires = "canary")]
    canary_window: Option<Duration>,
    /// Crashes on the new code a window tolerates (default 0).
    #[arg(long, value_name = "N")]
    max_crashes: Option<u64>,
    /// Ask only this process's health callback at the end of each window
    /// (a process that checks the service end to end), instead of every
    /// process on the new code.
    #[arg(long, value_name = "NAME")]
    health_process: Option<String>,
    /// Roll back when more than this share of the new code's replies in a
    /// window are errors (e.g. 5%).
    #[arg(long, value_name = "PERCENT", value_parser = parse_error_rate)]
    max_error_rate: Option<f64>,
    /// Roll back when the new code's mean handler time is more than this
    /// many times the old code's (e.g. 2.0).
    #[arg(long, value_name = "RATIO", value_parser = parse_latency_ratio)]
    max_latency_ratio: Option<f64>,
}

impl SafetyArgs {
    /// Sets these options on `request`.
    ///
    /// # Errors
    /// `--canary-window 0`.
    pub fn apply(&self, request: &mut DeployRequest) -> anyhow::Result<()> {
        if self.canary_window.is_some_and(|window| window.is_zero()) {
            bail!("--canary-window 0: give the canaries time to be watched (e.g. 5s)");
        }
        request.canary = self.canary.map(|percent| CanaryRequest {
            percent,
            window_ms: self.canary_window.unwrap_or(DEFAULT_CANARY_WINDOW).as_millis().max(1) as u64,
        });
        request.max_crashes = self.max_crashes.unwrap_or(0);
        request.health_process = self.health_process.clone();
        request.max_error_rate_percent = self.max_error_rate;
        request.max_latency_ratio = self.max_latency_ratio;
        Ok(())
    }
}

#[derive(Args)]
pub struct CallArgs {
    /// The process's name (a [[process]] of the release).
    name: String,
    /// The message, as JSON (e.g. '{"Add": 2}' or '"Get"').
    message: String,
    #[command(flatten)]
    root: RootArg,
    /// Print the node's JSON response.
    #[arg(long)]
    json: bool,
}

/// How long canaries are watched without `--canary-window`.
const DEFAULT_CANARY_WINDOW: Duration = Duration::from_secs(5);

/// Parses `10%` or `10` (percent), `2.5%`.
fn parse_percent(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let number = trimmed.strip_suffix('%').unwrap_or(trimmed).trim();
    match number.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(format!("{text:?} is not a percentage: write e.g. 10%")),
    }
}

/// `--canary`: a percentage above 0 and below 100.
fn parse_canary_percent(text: &str) -> Result<f64, String> {
    let percent = parse_percent(text)?;
    if percent <= 0.0 {
        return Err(format!("{text}: the canary must move more than 0% of the processes"));
    }
    if percent >= 100.0 {
        return Err(format!(
            "{text}: a canary of 100% or more moves every process at once; give less than 100%, or drop --canary"
        ));
    }
    Ok(percent)
}

/// `--max-error-rate`: a percentage from 0 to 100.
fn parse_error_rate(text: &str) -> Result<f64, String> {
    let percent = parse_percent(text)?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("{text}: give a percentage from 0% to 100%"));
    }
    Ok(percent)
}

/// `--max-latency-ratio`: a positive number.
fn parse_latency_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if ratio.is_finite() && ratio > 0.0 => Ok(ratio),
        _ => Err(format!(
            "{text:?} is not a ratio above 0: write e.g. 2.0 (up to twice the old code's handler time)"
        )),
    }
}

/// Parses `2s`, `500ms`, `1m`, `1.5s`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration: write e.g. 2s, 500ms or 1m"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1e3,
        "us" | "µs" => number / 1e6,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// The JSON of a response without its kind: `relive status --json`
/// prints the status object itself (`{"pid": ..., "release": ...}`).
pub fn payload(response: &Response) -> serde_json::Value {
    match serde_json::to_value(response).expect("responses serialize") {
        serde_json::Value::Object(map) if map.len() == 1 => map.into_iter().next().expect("one entry").1,
        // A response without data (`cast`).
        _ => serde_json::json!({}),
    }
}

/// Prints what the node answered, as one JSON line: the response's data,
/// or the failure (`{"error": ..., "report": ...}`; the exit code is then
/// non-zero). Nothing when the node could not be reached.
fn print_json(answer: &Result<Response, ClientError>) -> anyhow::Result<()> {
    let line = match answer {
        Ok(response) => serde_json::to_string(&payload(response))?,
        Err(ClientError::Refused(failure)) => serde_json::to_string(failure)?,
        Err(_) => return Ok(()),
    };
    println!("{line}");
    Ok(())
}

/// Sends `request` to the node on `root`.
fn ask(root: &std::path::Path, request: &Request) -> Result<Response, ClientError> {
    Client::connect(root)?.request(request, None)
}

fn unexpected(response: Response) -> anyhow::Error {
    anyhow::anyhow!(
        "the node answered with an unexpected response: {}",
        relive_node::protocol::encode(&response)
    )
}

/// `relive node start|stop`.
pub fn node(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Start(args) => node::start(args),
        NodeCommand::Stop(args) => stop(args),
    }
}

fn stop(args: Plain) -> anyhow::Result<()> {
    let root = args.root.path();
    let answer = ask(&root, &Request::Stop);
    if args.json {
        print_json(&answer)?;
    }
    let Response::Stopped(pid) = answer? else { bail!("the node did not say it stops") };
    // The node exits right after it answers: wait for it to be gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !args.json {
        println!("node stopped (pid {pid}) on {}", root.display());
    }
    Ok(())
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

/// Shows each progress step as a spinner line (or a plain stderr line
/// without a terminal) with how long it took.
struct Steps {
    spinner: indicatif::ProgressBar,
    current: Option<(String, Instant)>,
}

impl Steps {
    fn new() -> Steps {
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(120));
        Steps { spinner, current: None }
    }

    fn finish_step(&mut self) {
        if let Some((done, since)) = self.current.take() {
            let line = format!("  {done} ({:.0} ms)", since.elapsed().as_secs_f64() * 1e3);
            // Without a terminal the spinner draws nothing.
            if self.spinner.is_hidden() { eprintln!("{line}") } else { self.spinner.println(line) }
        }
    }

    fn step(&mut self, progress: &Progress) {
        self.finish_step();
        self.spinner.set_message(progress.phase.clone());
        self.current = Some((progress.phase.clone(), Instant::now()));
    }

    fn finish(mut self) {
        self.finish_step();
        self.spinner.finish_and_clear();
    }
}

/// Runs a request with progress steps shown unless `quiet`.
fn with_steps(root: &std::path::Path, request: &Request, quiet: bool) -> Result<Response, ClientError> {
    let mut client = Client::connect(root)?;
    if quiet {
        return client.request(request, None);
    }
    let mut steps = Steps::new();
    let answer = client.request(request, Some(&mut |p: &Progress| steps.step(p)));
    steps.finish();
    answer
}

/// Prints a failed upgrade's report before the error.
fn print_failure_report(answer: &Result<Response, ClientError>) {
    if let Err(ClientError::Refused(failure)) = answer {
        if let Some(report) = &failure.report {
            println!("{}", report.to_string().trim_end());
        }
        if let Some(dry_run) = &failure.dry_run {
            println!("dry run of {}: {} processes checked", dry_run.plan, dry_run.checked);
            for error in &dry_run.load_errors {
                println!("  load error: {error}");
            }
            for failure in &dry_run.failures {
                println!("  {} ({}): {}", failure.pid, failure.module, failure.error);
            }
        }
    }
}

/// `relive deploy`.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let root = args.root.path();
    let archive = std::path::absolute(&args.archive).unwrap_or(args.archive.clone());
    let mut deploy = DeployRequest {
        archive,
        permanent: args.permanent,
        dry_run: args.dry_run,
        health_window_ms: args.health_window.map_or(0, |d| d.as_millis() as u64),
        ..DeployRequest::default()
    };
    args.safety.apply(&mut deploy)?;
    let request = Request::Deploy(deploy);
    if let Request::Deploy(deploy) = &request {
        // The node checks them too; here the mistake is named before the
        // archive is read.
        deploy.options().map_err(anyhow::Error::msg)?;
    }
    let started = Instant::now();
    let answer = with_steps(&root, &request, args.json);
    if args.json {
        print_json(&answer)?;
        return answer.map(|_| ()).map_err(Into::into);
    }
    print_failure_report(&answer);
    match answer? {
        Response::Deployed(deployed) => {
            println!("{}", deployed.report.to_string().trim_end());
            let release = &deployed.release;
            let permanent = release.state == relive_releases::store::ReleaseState::Permanent;
            println!(
                "{} {} runs now ({}, was {} {}) after {:.1} s{}",
                release.name,
                release.version,
                release.state,
                deployed.from.name,
                deployed.from.version,
                started.elapsed().as_secs_f64(),
                if permanent {
                    ""
                } else {
                    "; `relive make-permanent` keeps it across a restart, `relive rollback` undoes it"
                }
            );
        }
        Response::DryRun(dry_run) => {
            println!("dry run of {}: {} processes checked", dry_run.report.plan, dry_run.report.checked);
            println!("the dry run found no problem; nothing was changed");
        }
        other => return Err(unexpected(other)),
    }
    Ok(())
}

/// `relive rollback`.
pub fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let RollbackArgs { plain: args, to } = args;
    let root = args.root.path();
    let answer =
        with_steps(&root, &Request::Rollback(relive_node::protocol::RollbackRequest { to }), args.json);
    if args.json {
        print_json(&answer)?;
        return answer.map(|_| ()).map_err(Into::into);
    }
    print_failure_report(&answer);
    let Response::RolledBack(done) = answer? else { bail!("the node did not say it rolled back") };
    println!("{}", done.report.to_string().trim_end());
    println!(
        "rolled back from {} {} to {} {} ({})",
        done.from.name, done.from.version, done.release.name, done.release.version, done.release.state
    );
    Ok(())
}

/// `relive make-permanent`.
pub fn make_permanent(args: MakePermanentArgs) -> anyhow::Result<()> {
    let root = args.plain.root.path();
    let answer = ask(&root, &Request::make_permanent(args.version));
    if args.plain.json {
        print_json(&answer)?;
        return answer.map(|_| ()).map_err(Into::into);
    }
    let Response::Permanent(done) = answer? else {
        bail!("the node did not say it made the release permanent")
    };
    let label = format!("{} {}", done.release.name, done.release.version);
    if done.already {
        println!("{label} is already permanent");
    } else {
        println!("{label} is permanent: a restarted node boots it");
    }
    Ok(())
}

/// Prints the supervision tree, one line per supervisor, indented under
/// its parent (the status lists them depth first). A release with only
/// its top supervisor prints nothing here: the processes line names it.
fn print_supervisors(supervisors: &[relive_node::protocol::SupervisorStatus]) {
    if supervisors.len() < 2 {
        return;
    }
    println!("supervisors:");
    for supervisor in supervisors {
        let mut depth = 0;
        let mut parent = supervisor.parent.as_deref();
        while let Some(name) = parent {
            depth += 1;
            parent = supervisors.iter().find(|s| s.name == name).and_then(|s| s.parent.as_deref());
            if depth > supervisors.len() {
                break;
            }
        }
        let restarts = match supervisor.restarts {
            0 => String::new(),
            1 => ", restarted once".to_string(),
            n => format!(", restarted {n} times"),
        };
        println!(
            "  {:indent$}{} {} ({} restarts in {:.1} s) {}: {} children, {} running{restarts}",
            "",
            supervisor.name,
            supervisor.strategy,
            supervisor.intensity,
            supervisor.period_ms as f64 / 1e3,
            supervisor.pid.as_deref().unwrap_or("not running"),
            supervisor.children,
            supervisor.running,
            indent = depth * 2
        );
    }
}

/// Prints a status for people.
pub fn print_status(status: &Status) {
    println!(
        "node pid {} on {} (up {:.1} s)",
        status.pid,
        status.root.display(),
        status.uptime_ms as f64 / 1e3
    );
    println!("release {} {} ({})", status.release.name, status.release.version, status.release.state);
    if let Some(permanent) = &status.permanent {
        println!(
            "permanent release {} {}: a restarted node boots it, not {}",
            permanent.name, permanent.version, status.release.version
        );
    }
    if let Some(back) = &status.rollback_to {
        println!("`relive rollback` returns to {back}");
    }
    if let Some(busy) = &status.busy {
        println!("busy: {busy}");
    }
    if let Some(distribution) = &status.distribution {
        let connected = if distribution.connected.is_empty() {
            "none".to_string()
        } else {
            distribution.connected.join(", ")
        };
        println!("distribution: {} (connected: {connected})", distribution.name);
    }
    println!("modules:");
    for module in &status.modules {
        let version = |v: &Option<relive_node::protocol::ModuleVersion>| match v {
            None => "-".to_string(),
            Some(v) => format!("{} ({} processes)", v.version, v.processes),
        };
        println!("  {:<20} current {}, old {}", module.name, version(&module.current), version(&module.old));
    }
    print_supervisors(&status.supervisors);
    let total: usize = status.processes.iter().map(|g| g.children.len()).sum();
    let running: usize = status.processes.iter().map(|g| g.running).sum();
    println!("processes (under {}): {running} running, {} not running", status.supervisor, total - running);
    // A group of thousands (`instances`) is one line; beyond a few, only
    // the ones not running are named.
    const NAMED: usize = 10;
    for group in &status.processes {
        let restarts =
            if group.restarts > 0 { format!(", {} restarts", group.restarts) } else { String::new() };
        match group.instances {
            Some(n) => {
                println!("  {} ×{n} ({}): {} running{restarts}", group.name, group.module, group.running);
                let down: Vec<&str> =
                    group.children.iter().filter(|c| c.pid.is_none()).map(|c| c.name.as_str()).collect();
                if !down.is_empty() {
                    let more = down.len().saturating_sub(NAMED);
                    let more = if more > 0 { format!(" … and {more} more") } else { String::new() };
                    println!("    not running: {}{more}", down[..down.len().min(NAMED)].join(", "));
                }
            }
            None => {
                for child in &group.children {
                    let restarts = if child.restarts > 0 {
                        format!(", {} restarts", child.restarts)
                    } else {
                        String::new()
                    };
                    println!(
                        "  {:<20} {} ({}){restarts}{}",
                        child.name,
                        child.pid.as_deref().unwrap_or("not running"),
                        group.module,
                        if child.restarting { ", restarting" } else { "" }
                    );
                }
            }
        }
    }
    if !status.listening.is_empty() {
        println!("listening:");
        for listening in &status.listening {
            println!(
                "  {:<22} {} {}",
                listening.addr,
                listening.process.as_deref().unwrap_or("-"),
                listening.pid
            );
        }
    }
    match &status.last_report {
        Some(report) => println!("last upgrade:\n  {}", report.to_string().trim_end().replace('\n', "\n  ")),
        None => println!("last upgrade: none since the node started"),
    }
}

/// `relive status`.
pub fn status(args: Plain) -> anyhow::Result<()> {
    let root = args.root.path();
    let answer = ask(&root, &Request::Status);
    if args.json {
        print_json(&answer)?;
        return answer.map(|_| ()).map_err(Into::into);
    }
    let Response::Status(status) = answer? else { bail!("the node did not answer with its status") };
    print_status(&status);
    Ok(())
}

/// `relive releases`.
pub fn releases(args: Plain) -> anyhow::Result<()> {
    let root = args.root.path();
    let answer = ask(&root, &Request::Releases);
    if args.json {
        print_json(&answer)?;
        return answer.map(|_| ()).map_err(Into::into);
    }
    let Response::Releases(releases) = answer? else { bail!("the node did not list its releases") };
    if releases.is_empty() {
        println!("no release in {}", root.display());
    }
    for release in releases {
        println!("{release}");
    }
    Ok(())
}

/// `relive call` (`cast` false) and `relive cast`.
pub fn call(args: CallArgs, cast: bool) -> anyhow::Result<()> {
    let root = args.root.path();
    let message: serde_json::Value = serde_json::from_str(&args.message).with_context(|| {
        format!("the message {:?} is not JSON (a string needs its quotes: '\"Get\"')", args.message)
    })?;
    let request = relive_node::protocol::MessageRequest { name: args.name, message };
    let request = if cast { Request::Cast(request) } else { Request::Call(request) };
    let answer = ask(&root, &request);
    if args.json {
        print_json(&answer)?;
        return answer.map(|_| ()).map_err(Into::into);
    }
    match answer? {
        Response::Reply(reply) => println!("{}", serde_json::to_string(&reply)?),
        Response::Cast => {}
        other => return Err(unexpected(other)),
    }
    Ok(())
}
