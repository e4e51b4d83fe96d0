//! The `relive` command: thin glue over the crates. Each subcommand is one
//! function; errors are printed once, prefixed `relive:`, with their chain.

mod bench;
mod bench_dist;
mod bench_upgrade;
mod cluster;
mod control;
mod demo;
mod examples;
mod new;
mod node;
mod release;
mod scenario;
mod watch;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Erlang/OTP-style live upgrades for Rust services.
#[derive(Parser)]
#[command(name = "relive", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a new project: a module crate, its release, a scenario, and relive-abi vendored.
    New(new::NewArgs),
    /// Build the kv example, run it on a temporary node under load, upgrade it live, and report.
    Demo(demo::DemoArgs),
    /// Measure the runtime (processes, messages, calls, live upgrades) on this machine.
    Bench(bench::BenchArgs),
    /// Release archives and the release store: build, inspect, unpack, list, keygen.
    #[command(subcommand)]
    Release(release::ReleaseCommand),
    /// Show the upgrade plan from a release in the store to an archive's.
    Plan(release::PlanArgs),
    /// Run a node (it boots a release and takes commands on <root>/control.sock), or stop it.
    #[command(subcommand)]
    Node(control::NodeCommand),
    /// Upgrade the running node to a release archive, live.
    Deploy(control::DeployArgs),
    /// Undo the last deploy, live (or go to `--to VERSION` of the store).
    Rollback(control::RollbackArgs),
    /// Make the release the node runs permanent (a restarted node boots it).
    MakePermanent(control::MakePermanentArgs),
    /// The node's release, modules, processes and last upgrade.
    Status(control::Plain),
    /// The releases in the node's store and their states.
    Releases(control::Plain),
    /// Call a process of the running release with a JSON request; print its reply.
    Call(control::CallArgs),
    /// Cast a JSON message to a process of the running release.
    Cast(control::CallArgs),
    /// Rebuild and deploy an application live on every source change.
    Watch(watch::WatchArgs),
    /// Upgrade scenarios in TOML (boot, load, deploy, rollback, kill, restart, assertions) on a real node.
    #[command(subcommand)]
    Scenario(scenario::ScenarioCommand),
    /// Several distributed nodes: a rolling deploy, node after node, and their status.
    Cluster(cluster::ClusterArgs),
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RELIVE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "relive: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::New(args) => new::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Watch(args) => watch::run(args),
        Command::Release(command) => release::run(command),
        Command::Plan(args) => release::plan(args),
        Command::Node(command) => control::node(command),
        Command::Deploy(args) => control::deploy(args),
        Command::Rollback(args) => control::rollback(args),
        Command::MakePermanent(args) => control::make_permanent(args),
        Command::Status(args) => control::status(args),
        Command::Releases(args) => control::releases(args),
        Command::Call(args) => control::call(args, false),
        Command::Cast(args) => control::call(args, true),
        Command::Scenario(command) => scenario::run(command),
        Command::Cluster(args) => cluster::run(args),
    }
}

/// `relive status | head`: printing to a closed pipe ends the command
/// quietly, as other Unix tools do, instead of a panic message.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
