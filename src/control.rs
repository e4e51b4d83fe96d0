//! The client side of a node's control socket, and the commands that use
//! it: `relive node start|stop`, `deploy`, `rollback`, `make-permanent`,
//! `status`, `releases`, `call`, `cast`. Each connects to
//! `<root>/control.sock`, sends one request, prints the response readably
//! (or as JSON with `--json`) and exits non-zero if the node refused it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::node::{self, SOCKET};
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
    root: RootArg,
    /// Print the node's JSON response.
    #[arg(long)]
    json: bool,
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
pub struct DeployArgs {
    /// The release archive to upgrade the running node to, live.
    archive: PathBuf,
    /// Make the release permanent once it runs (a restarted node boots it).
    #[arg(long)]
    permanent: bool,
    /// Watch the new code this long after the switch (e.g. 2s, 500ms); a
    /// crash on it rolls the upgrade back.
    #[arg(long, value_parser = parse_duration)]
    health_window: Option<Duration>,
    /// Run every migration on copies of the states and report; change
    /// nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    root: RootArg,
    /// Print the node's JSON response.
    #[arg(long)]
    json: bool,
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

fn no_node(root: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "no node is running on {} (start one with `relive node start --root {}`)",
        root.display(),
        root.display()
    )
}

/// Sends one request to the node on `root` and returns its response (`ok`
/// true or false). `progress` gets each progress line the node sends
/// first.
pub fn request(root: &Path, request: &Value, mut progress: impl FnMut(&str)) -> anyhow::Result<Value> {
    let path = root.join(SOCKET);
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(no_node(root));
        }
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            bail!(
                "cannot connect to {}: permission denied: the node runs as another user; run the command as that user",
                path.display()
            );
        }
        Err(error) => return Err(error).with_context(|| format!("connecting to {}", path.display())),
    };
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    // A node that refuses the connection (another uid) answers and closes
    // at once: the write may fail while its answer waits to be read. I/O
    // errors are made text here, so that a broken pipe is not taken for a
    // closed stdout.
    let sent = stream.write_all(line.as_bytes());
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                let error = sent.err().unwrap_or(error);
                bail!("talking to the node on {}: {error}", path.display());
            }
        };
        let value: Value = serde_json::from_str(&line).with_context(|| {
            format!("the node on {} answered something that is not JSON: {line}", path.display())
        })?;
        if let Some(text) = value.get("progress").and_then(Value::as_str) {
            progress(text);
            continue;
        }
        return Ok(value);
    }
    match sent {
        Err(error) => bail!("sending a request to the node on {}: {error}", path.display()),
        Ok(()) => {
            bail!("the node on {} closed the connection without answering (did it stop?)", path.display())
        }
    }
}

/// A request whose `ok: false` becomes an error.
fn checked(root: &Path, request_value: &Value, progress: impl FnMut(&str)) -> anyhow::Result<Value> {
    let response = request(root, request_value, progress)?;
    if response["ok"] == Value::Bool(true) {
        return Ok(response);
    }
    Err(refused(&response))
}

fn refused(response: &Value) -> anyhow::Error {
    anyhow::anyhow!(
        "{}",
        response["error"].as_str().unwrap_or("the node refused the request without saying why")
    )
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
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
    let response = checked(&root, &json!({"cmd": "stop"}), |_| {})?;
    // The node exits right after it answers: wait for it to be gone.
    if let Some(pid) = response["stopped"].as_u64() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if args.json {
        return print_json(&response);
    }
    println!("node stopped (pid {}) on {}", response["stopped"], root.display());
    Ok(())
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

/// `relive deploy`.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let root = args.root.path();
    let archive = std::path::absolute(&args.archive).unwrap_or(args.archive.clone());
    if !archive.is_file() {
        bail!("{}: no such archive (build one with `relive release build APP_DIR`)", archive.display());
    }
    let request_value = json!({
        "cmd": "deploy",
        "archive": archive,
        "permanent": args.permanent,
        "dry_run": args.dry_run,
        "health_window_ms": args.health_window.map_or(0, |d| d.as_millis() as u64),
        "progress": !args.json,
    });
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let mut phase_started = Instant::now();
    let mut phase: Option<String> = None;
    // Without a terminal the spinner draws nothing: the phases go to stderr
    // as plain lines instead.
    let plain = spinner.is_hidden();
    let finish = |done: &str, took: Duration| {
        let line = format!("  {done} ({:.0} ms)", took.as_secs_f64() * 1e3);
        if plain { eprintln!("{line}") } else { spinner.println(line) }
    };
    let response = request(&root, &request_value, |text| {
        if let Some(done) = phase.take() {
            finish(&done, phase_started.elapsed());
        }
        phase_started = Instant::now();
        spinner.set_message(text.to_string());
        phase = Some(text.to_string());
    });
    if let Some(done) = phase.take() {
        finish(&done, phase_started.elapsed());
    }
    spinner.finish_and_clear();
    let response = response?;
    if args.json {
        print_json(&response)?;
    } else {
        if let Some(text) = response["report_text"].as_str() {
            println!("{}", text.trim_end());
        }
        if response["ok"] == Value::Bool(true) && !args.dry_run {
            let release = &response["release"];
            let state = release["state"].as_str().unwrap_or("?");
            println!(
                "{} {} runs now ({state}, was {}) after {:.1} s{}",
                release["name"].as_str().unwrap_or("?"),
                release["version"].as_str().unwrap_or("?"),
                response["previous"].as_str().unwrap_or("?"),
                started.elapsed().as_secs_f64(),
                if state == "permanent" {
                    ""
                } else {
                    "; `relive make-permanent` keeps it across a restart, `relive rollback` undoes it"
                }
            );
        } else if response["ok"] == Value::Bool(true) {
            println!("the dry run found no problem; nothing was changed");
        }
    }
    if response["ok"] != Value::Bool(true) {
        return Err(refused(&response));
    }
    Ok(())
}

/// `relive rollback`.
pub fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let RollbackArgs { plain: args, to } = args;
    let root = args.root.path();
    let mut request_value = json!({"cmd": "rollback", "progress": true});
    if let Some(to) = &to {
        request_value["to"] = Value::String(to.to_string());
    }
    let response = request(&root, &request_value, |line| eprintln!("relive: {line}"))?;
    if args.json {
        print_json(&response)?;
    } else if let Some(text) = response["report_text"].as_str() {
        println!("{}", text.trim_end());
    }
    if response["ok"] != Value::Bool(true) {
        return Err(refused(&response));
    }
    if !args.json {
        let release = &response["release"];
        println!(
            "rolled back from {} to {} {} ({})",
            response["from"].as_str().or(response["previous"].as_str()).unwrap_or("?"),
            release["name"].as_str().unwrap_or("?"),
            release["version"].as_str().unwrap_or("?"),
            release["state"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// `relive make-permanent`.
pub fn make_permanent(args: Plain) -> anyhow::Result<()> {
    let root = args.root.path();
    let response = checked(&root, &json!({"cmd": "make_permanent"}), |_| {})?;
    if args.json {
        return print_json(&response);
    }
    let release = &response["release"];
    let label =
        format!("{} {}", release["name"].as_str().unwrap_or("?"), release["version"].as_str().unwrap_or("?"));
    if response["already"] == Value::Bool(true) {
        println!("{label} is already permanent");
    } else {
        println!("{label} is permanent: a restarted node boots it");
    }
    Ok(())
}

/// `relive status`.
pub fn status(args: Plain) -> anyhow::Result<()> {
    let root = args.root.path();
    let status = checked(&root, &json!({"cmd": "status"}), |_| {})?;
    if args.json {
        return print_json(&status);
    }
    let release = &status["release"];
    println!(
        "node pid {} on {} (up {:.1} s)",
        status["pid"],
        root.display(),
        status["uptime_ms"].as_u64().unwrap_or(0) as f64 / 1e3
    );
    println!(
        "release {} {} ({})",
        release["name"].as_str().unwrap_or("?"),
        release["version"].as_str().unwrap_or("?"),
        release["state"].as_str().unwrap_or("?")
    );
    if let Some(busy) = status["busy"].as_str() {
        println!("busy: {busy}");
    }
    println!("modules:");
    for module in status["modules"].as_array().into_iter().flatten() {
        let version = |v: &Value| {
            if v.is_null() {
                "-".to_string()
            } else {
                format!("{} ({} processes)", v["version"].as_str().unwrap_or("?"), v["processes"])
            }
        };
        println!(
            "  {:<20} current {}, old {}",
            module["name"].as_str().unwrap_or("?"),
            version(&module["current"]),
            version(&module["old"])
        );
    }
    // A release may run thousands of processes (`instances`): beyond a
    // screenful, list only those not running.
    const LISTED: usize = 30;
    let processes: Vec<&Value> = status["processes"].as_array().into_iter().flatten().collect();
    let stopped: Vec<&Value> = processes.iter().copied().filter(|p| p["pid"].as_str().is_none()).collect();
    println!(
        "processes (under {}): {} running, {} not running",
        status["supervisor"].as_str().unwrap_or("?"),
        processes.len() - stopped.len(),
        stopped.len()
    );
    let listed = if processes.len() <= LISTED { &processes } else { &stopped };
    for process in listed.iter().take(LISTED) {
        println!(
            "  {:<20} {}",
            process["name"].as_str().unwrap_or("?"),
            process["pid"].as_str().unwrap_or("not running")
        );
    }
    if listed.len() > LISTED || processes.len() > LISTED {
        println!("  (`relive status --json` lists every process with its pid)");
    }
    match status["last_report_text"].as_str() {
        Some(text) => println!("last upgrade:\n  {}", text.trim_end().replace('\n', "\n  ")),
        None => println!("last upgrade: none since the node started"),
    }
    Ok(())
}

/// `relive releases`.
pub fn releases(args: Plain) -> anyhow::Result<()> {
    let root = args.root.path();
    let response = checked(&root, &json!({"cmd": "releases"}), |_| {})?;
    if args.json {
        return print_json(&response["releases"]);
    }
    let releases = response["releases"].as_array().cloned().unwrap_or_default();
    if releases.is_empty() {
        println!("no release in {}", root.display());
    }
    for release in releases {
        println!(
            "{} {} ({})",
            release["name"].as_str().unwrap_or("?"),
            release["version"].as_str().unwrap_or("?"),
            release["state"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// `relive call` (`cast` false) and `relive cast`.
pub fn call(args: CallArgs, cast: bool) -> anyhow::Result<()> {
    let root = args.root.path();
    let message: Value = serde_json::from_str(&args.message).with_context(|| {
        format!("the message {:?} is not JSON (a string needs its quotes: '\"Get\"')", args.message)
    })?;
    let cmd = if cast { "cast" } else { "call" };
    let response = checked(&root, &json!({"cmd": cmd, "name": args.name, "json": message}), |_| {})?;
    if args.json {
        return print_json(&response);
    }
    if !cast {
        print_json(&response["reply"])?;
    }
    Ok(())
}
