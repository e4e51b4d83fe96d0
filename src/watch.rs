//! `relive watch APP_DIR`: the development loop. On every change under the
//! application's module crates (notify), it rebuilds them, packages a
//! pre-release and deploys it live to the node running on `--root`; a build
//! error is shown and the node keeps the version it runs.
//!
//! Each build gets versions of its own, above what runs: the release
//! `X.Y.(Z+1)-dev.<ms>` (upgrade_from exactly the running release), and
//! each module the same bump of the version the node runs, set at compile
//! time through relive-abi's `RELIVE_MODULE_VERSION`. The code server
//! refuses a second library under one name and version, and a lower
//! version would be taken for a downgrade, so both must move up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use notify::{RecursiveMode, Watcher};
use relive_node::client::Client;
use relive_node::protocol::{DeployRequest, Progress};
use relive_releases::archive;
use relive_releases::manifest::Manifest;
use semver::{Prerelease, Version, VersionReq};

use crate::control;
use crate::release::{RootArg, build_module};

/// How long to wait for more changes before rebuilding (editors write a
/// file in several steps).
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Args)]
pub struct WatchArgs {
    /// The application's directory (holds release.toml).
    app_dir: PathBuf,
    #[command(flatten)]
    root: RootArg,
    /// cargo's target directory for the module crates.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// Health window of each deploy (e.g. 2s; default none).
    #[arg(long, value_parser = control::parse_duration)]
    health_window: Option<Duration>,
    /// Build and deploy once, then exit (no watching).
    #[arg(long)]
    once: bool,
}

pub fn run(args: WatchArgs) -> anyhow::Result<()> {
    let root = args.root.path();
    let manifest_path = args.app_dir.join("release.toml");
    let manifest = Manifest::from_path(&manifest_path)?;
    let crates: Vec<PathBuf> = manifest
        .modules
        .iter()
        .map(|m| {
            let dir = args.app_dir.join(&m.krate);
            std::path::absolute(&dir).unwrap_or(dir)
        })
        .collect();
    if args.once {
        return deploy_once(&args, &root, &manifest_path);
    }
    let (events, changes) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| is_source(p))
        {
            let _ = events.send(());
        }
    })
    .context("starting the file watcher")?;
    for dir in &crates {
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", dir.display()))?;
    }
    eprintln!("relive watch: watching {} module crate(s) of {}", crates.len(), manifest_path.display());
    if let Err(error) = deploy_once(&args, &root, &manifest_path) {
        eprintln!(
            "relive watch: {error:#}\nrelive watch: the node keeps the version it runs; waiting for changes"
        );
    }
    while changes.recv().is_ok() {
        while changes.recv_timeout(SETTLE).is_ok() {}
        if let Err(error) = deploy_once(&args, &root, &manifest_path) {
            eprintln!(
                "relive watch: {error:#}\nrelive watch: the node keeps the version it runs; waiting for changes"
            );
        }
    }
    Ok(())
}

/// A source file of a module crate (not cargo's output).
fn is_source(path: &Path) -> bool {
    !path.components().any(|c| c.as_os_str() == "target")
}

/// Builds the application as a development release and deploys it.
fn deploy_once(args: &WatchArgs, root: &Path, manifest_path: &Path) -> anyhow::Result<()> {
    let mut manifest = Manifest::from_path(manifest_path)?;
    let status = Client::connect(root)?.status()?;
    let running_name = &status.release.name;
    if *running_name != manifest.release.name {
        bail!(
            "the node on {} runs {running_name}, {} is {}: watch an application the node runs",
            root.display(),
            manifest_path.display(),
            manifest.release.name
        );
    }
    let running: Version = status.release.version.clone();
    let module_versions: BTreeMap<String, Version> = status
        .modules
        .iter()
        .filter_map(|m| Some((m.name.clone(), m.current.as_ref()?.version.clone())))
        .collect();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let release_version = development_version(&running, stamp);
    let mut libraries = Vec::new();
    for module in &manifest.modules {
        let base = module_versions.get(&module.name).cloned().unwrap_or_else(|| running.clone());
        let version = development_version(&base, stamp);
        let crate_dir = args.app_dir.join(&module.krate);
        eprintln!("relive watch: building {} {version}", module.name);
        let library =
            build_module(&module.name, &crate_dir, args.target_dir.as_deref(), Some(&version.to_string()))?;
        libraries.push((module.name.clone(), library));
    }
    manifest.release.version = release_version.clone();
    manifest.release.upgrade_from =
        Some(VersionReq::parse(&format!("={running}")).expect("an exact version"));
    let out = tempfile::tempdir().context("a temporary directory for the archive")?;
    let archive = archive::build(&manifest, &args.app_dir, &libraries, out.path(), None)?;
    eprintln!("relive watch: deploying {} {release_version} over {running}", manifest.release.name);
    let request = DeployRequest {
        archive: std::path::absolute(&archive).unwrap_or(archive),
        health_window_ms: args.health_window.map_or(0, |window| window.as_millis() as u64),
        ..DeployRequest::default()
    };
    let mut progress = |step: &Progress| eprintln!("relive watch: {}", step.phase);
    match Client::connect(root)?.deploy(request, Some(&mut progress)) {
        Ok(_) => {}
        Err(relive_node::client::ClientError::Refused(failure)) => bail!("the deploy failed: {failure}"),
        Err(error) => return Err(error.into()),
    }
    println!("deployed {} {release_version}", manifest.release.name);
    Ok(())
}

/// `X.Y.(Z+1)-dev.<stamp>` above a release, `X.Y.Z-dev.<stamp>` above a
/// development version (which is already a bump).
fn development_version(running: &Version, stamp: u64) -> Version {
    let mut version = running.clone();
    if running.pre.is_empty() {
        version.patch += 1;
    }
    version.pre = Prerelease::new(&format!("dev.{stamp}")).expect("a valid pre-release");
    version.build = semver::BuildMetadata::EMPTY;
    version
}

#[cfg(test)]
mod tests {
    use super::development_version;
    use semver::Version;

    #[test]
    fn development_versions_move_up() {
        let release: Version = "1.2.3".parse().unwrap();
        let first = development_version(&release, 10);
        assert_eq!(first.to_string(), "1.2.4-dev.10");
        assert!(first > release);
        let second = development_version(&first, 11);
        assert_eq!(second.to_string(), "1.2.4-dev.11");
        assert!(second > first);
    }
}
