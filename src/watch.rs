//! `relive watch APP_DIR`: the development loop. When the sources of the
//! application's module crates change, it rebuilds them, packages a
//! pre-release and deploys it live to the node running on `--root`; a build
//! error is shown once and the node keeps the version it runs.
//!
//! # What counts as a change
//!
//! Only a change of content: a source file created, written, removed or
//! renamed (never a file being opened or read: cargo reads every source on
//! each build). The watched sources are the files of each module crate
//! and the application's release.toml, without cargo's output (`target/`,
//! `Cargo.lock`), hidden files and directories (`.git/`, editors' swap
//! files) and editors' backups (`name~`, `#name#`); only their directories
//! are watched, so a build writing into a `target/` inside a crate wakes
//! nothing. Events are settled for [`SETTLE`] (an editor writes a file in
//! several steps), then the sources are hashed: a batch that leaves the
//! hash where the last build found it (a `touch`, a save without an edit, a
//! file created and removed again) builds nothing.
//!
//! # Builds and versions
//!
//! Builds use cargo's dev profile with line tables only for debug info
//! (set through cargo's environment, the crates' Cargo.toml stays as it
//! is) and a fast gzip level: an unoptimized library is large, and each
//! second of building or packing is a second between a save and the new
//! code answering. `--release` builds optimized code instead.
//!
//! Each build gets versions of its own, above what runs: the release
//! `X.Y.(Z+1)-dev.<ms>` (upgrade_from exactly the running release), and
//! each module the same bump of the version the node runs, set at compile
//! time through relive-abi's `RELIVE_MODULE_VERSION`. The code server
//! refuses a second library under one name and version, and a lower
//! version would be taken for a downgrade, so both must move up.
//!
//! # The store
//!
//! After each deploy, the development releases (`-dev.` versions) older
//! than the one just replaced are removed from the node's store through
//! its protocol: the new one and the one before it stay, so `relive
//! rollback` still goes back one step.
//!
//! # Output
//!
//! One line on stdout per deploy, `HH:MM:SS deployed APP VERSION: live in
//! X.Y s (build X.Y s)` (UTC; "live in" counts from the first change of
//! the batch to the node's answer that the new code runs); builds and
//! errors on stderr. A build that fails is reported once, until the
//! sources change again; a deploy that fails (the node refused it or does
//! not answer) is tried again on the next change event, edit or not.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use relive_node::client::{Client, ClientError};
use relive_node::protocol::{DeployRequest, RemoveRequest, Request};
use relive_releases::archive::{self, ArchiveCompression, BuildOptions};
use relive_releases::manifest::Manifest;
use relive_releases::store::{ReleaseInfo, ReleaseState};
use semver::{Prerelease, Version, VersionReq};

use crate::control;
use crate::release::{Profile, RootArg, build_module};

/// How long the sources must be quiet before a build starts (an editor
/// writes a file in several steps: temporary file, write, rename).
const SETTLE: Duration = Duration::from_millis(100);

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
    /// Build optimized code (cargo's release profile; slower to build)
    /// instead of the dev profile.
    #[arg(long)]
    release: bool,
    /// Build and deploy once, then exit (no watching).
    #[arg(long)]
    once: bool,
}

/// How one build-and-deploy ended, which decides when the next one runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The node runs these sources: nothing to do until they change.
    Deployed,
    /// They do not build (or the application is not the node's): the same
    /// sources would fail the same way, so wait until they change.
    Rejected,
    /// The node refused the deploy or could not be asked: try again on the
    /// next change event, even one that leaves the sources as they were.
    NotDeployed,
}

pub fn run(args: WatchArgs) -> anyhow::Result<()> {
    let root = args.root.path();
    let app_dir = std::path::absolute(&args.app_dir).unwrap_or_else(|_| args.app_dir.clone());
    let mut sources = Sources::of(&app_dir)?;
    let profile = if args.release { Profile::Release } else { Profile::Dev };
    if args.once {
        return match deploy_once(&args, &root, &app_dir, profile, Instant::now()) {
            Ok(()) => Ok(()),
            Err((_, error)) => Err(error),
        };
    }
    let (events, changes) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && is_content_change(&event.kind)
        {
            // Stamped now: a change made during a build is read after it.
            let _ = events.send((Instant::now(), event));
        }
    })
    .context("starting the file watcher")?;
    for dir in &sources.crates {
        watch_tree(&mut watcher, dir)?;
    }
    watcher
        .watch(&app_dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", app_dir.display()))?;
    eprintln!(
        "relive watch: watching {} module crate(s) of {} ({} builds{})",
        sources.crates.len(),
        sources.manifest.display(),
        if args.release { "optimized" } else { "dev profile" },
        if args.release { "" } else { "; --release for optimized ones" }
    );

    let mut last: Option<(u64, Outcome)> = None;
    let mut changed_at = Instant::now();
    loop {
        // release.toml may name other crates now.
        if let Ok(now) = Sources::of(&app_dir)
            && now.crates != sources.crates
        {
            for dir in now.crates.iter().filter(|dir| !sources.crates.contains(dir)) {
                watch_tree(&mut watcher, dir)?;
            }
            sources = now;
        }
        let hash = sources.hash();
        let settled = matches!(last, Some((built, Outcome::Deployed | Outcome::Rejected)) if built == hash);
        if !settled {
            let outcome = match deploy_once(&args, &root, &app_dir, profile, changed_at) {
                Ok(()) => Outcome::Deployed,
                Err((outcome, error)) => {
                    eprintln!(
                        "{} relive watch: {error:#}\nrelive watch: the node keeps the version it runs; {}",
                        clock(),
                        match outcome {
                            Outcome::NotDeployed => "trying again on the next change",
                            _ => "waiting for changes",
                        }
                    );
                    outcome
                }
            };
            last = Some((hash, outcome));
        }
        // The next batch: wait for a change to a source, then until the
        // sources have been quiet for SETTLE.
        changed_at = loop {
            let (at, event) = changes.recv().context("the file watcher stopped")?;
            if sources.note(&event, &mut watcher) {
                break at;
            }
        };
        while let Ok((_, event)) = changes.recv_timeout(SETTLE) {
            sources.note(&event, &mut watcher);
        }
    }
}

/// A change of content: a file created, written, removed or renamed.
/// Opening, reading and closing files (cargo reads every source on each
/// build) and metadata changes (a `touch`) are not.
fn is_content_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(modify) => {
            matches!(modify, ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
        }
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// Whether a file or directory name is never a source: cargo's output,
/// hidden files and directories, editors' backups and autosaves.
fn is_ignored(name: &str) -> bool {
    name == "target"
        || name == "Cargo.lock"
        || name.starts_with('.')
        || name.starts_with('#')
        || name.ends_with('~')
}

/// Watches `dir` and each directory below it that is not ignored, one
/// directory at a time, so that no build output is ever watched. Watching
/// a directory again is harmless (one removed and made again needs it).
fn watch_tree(watcher: &mut impl Watcher, dir: &Path) -> anyhow::Result<()> {
    watcher.watch(dir, RecursiveMode::NonRecursive).with_context(|| format!("watching {}", dir.display()))?;
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if entry.file_type().is_ok_and(|t| t.is_dir()) && !is_ignored(&name.to_string_lossy()) {
            watch_tree(watcher, &entry.path())?;
        }
    }
    Ok(())
}

/// The files whose content makes a build: release.toml and the module
/// crates' sources.
struct Sources {
    manifest: PathBuf,
    crates: Vec<PathBuf>,
}

impl Sources {
    fn of(app_dir: &Path) -> anyhow::Result<Sources> {
        let manifest = app_dir.join("release.toml");
        let parsed = Manifest::from_path(&manifest)?;
        let mut crates: Vec<PathBuf> = parsed.modules.iter().map(|m| app_dir.join(&m.krate)).collect();
        crates.sort();
        crates.dedup();
        for dir in &crates {
            if !dir.is_dir() {
                bail!(
                    "{}: module crate directory {} not found: `crate` of each [[module]] is relative to release.toml",
                    manifest.display(),
                    dir.display()
                );
            }
        }
        Ok(Sources { manifest, crates })
    }

    /// Whether `path` is a source (or a directory that may hold some).
    fn holds(&self, path: &Path) -> bool {
        if path == self.manifest {
            return true;
        }
        self.crates.iter().any(|dir| {
            path.strip_prefix(dir).is_ok_and(|inside| {
                !inside.components().any(|c| is_ignored(&c.as_os_str().to_string_lossy()))
            })
        })
    }

    /// Whether `event` touches a source; a directory created under a
    /// crate is watched from now on.
    fn note(&self, event: &notify::Event, watcher: &mut impl Watcher) -> bool {
        let mut touched = false;
        for path in &event.paths {
            if !self.holds(path) {
                continue;
            }
            touched = true;
            if path.is_dir()
                && let Err(error) = watch_tree(watcher, path)
            {
                eprintln!("relive watch: {error:#}: changes in it are not seen");
            }
        }
        touched
    }

    /// A hash of every source's path and content.
    fn hash(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        std::fs::read(&self.manifest).unwrap_or_default().hash(&mut hasher);
        for dir in &self.crates {
            let mut pending = vec![dir.clone()];
            let mut files = Vec::new();
            while let Some(dir) = pending.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                for entry in entries.flatten() {
                    if is_ignored(&entry.file_name().to_string_lossy()) {
                        continue;
                    }
                    match entry.file_type() {
                        Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                        Ok(_) => files.push(entry.path()),
                        Err(_) => {}
                    }
                }
            }
            files.sort();
            for file in files {
                // A file removed since the listing hashes as absent.
                if let Ok(bytes) = std::fs::read(&file) {
                    file.hash(&mut hasher);
                    bytes.hash(&mut hasher);
                }
            }
        }
        hasher.finish()
    }
}

/// The time of day, `HH:MM:SS` (UTC).
fn clock() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

/// Builds the application as a development release and deploys it; the
/// error says whether the same sources can be tried again.
fn deploy_once(
    args: &WatchArgs,
    root: &Path,
    app_dir: &Path,
    profile: Profile,
    changed_at: Instant,
) -> Result<(), (Outcome, anyhow::Error)> {
    let not_deployed = |error: anyhow::Error| (Outcome::NotDeployed, error);
    let rejected = |error: anyhow::Error| (Outcome::Rejected, error);
    let manifest_path = app_dir.join("release.toml");
    let mut manifest = Manifest::from_path(&manifest_path).map_err(|e| rejected(e.into()))?;
    let status =
        Client::connect(root).and_then(|mut client| client.status()).map_err(|e| not_deployed(e.into()))?;
    let running_name = &status.release.name;
    if *running_name != manifest.release.name {
        return Err(rejected(anyhow::anyhow!(
            "the node on {} runs {running_name}, {} is {}: watch an application the node runs",
            root.display(),
            manifest_path.display(),
            manifest.release.name
        )));
    }
    let running: Version = status.release.version.clone();
    let module_versions: BTreeMap<String, Version> = status
        .modules
        .iter()
        .filter_map(|m| Some((m.name.clone(), m.current.as_ref()?.version.clone())))
        .collect();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let release_version = development_version(&running, stamp);
    let build_started = Instant::now();
    let mut libraries = Vec::new();
    for module in &manifest.modules {
        let base = module_versions.get(&module.name).cloned().unwrap_or_else(|| running.clone());
        let version = development_version(&base, stamp);
        let crate_dir = app_dir.join(&module.krate);
        eprintln!("{} relive watch: building {} {version}", clock(), module.name);
        let built = build_module(
            &module.name,
            &crate_dir,
            args.target_dir.as_deref(),
            Some(&version.to_string()),
            profile,
        )
        .map_err(rejected)?;
        libraries.push((module.name.clone(), built.library));
    }
    let build_time = build_started.elapsed();
    manifest.release.version = release_version.clone();
    manifest.release.upgrade_from =
        Some(VersionReq::parse(&format!("={running}")).expect("an exact version"));
    let out = tempfile::tempdir().context("a temporary directory for the archive").map_err(rejected)?;
    let options = BuildOptions {
        compression: match profile {
            Profile::Dev => ArchiveCompression::Fast,
            Profile::Release => ArchiveCompression::Default,
        },
        ..BuildOptions::default()
    };
    let archive = archive::build_with(&manifest, app_dir, &libraries, out.path(), options)
        .map_err(|e| rejected(e.into()))?;
    let request = DeployRequest {
        archive: std::path::absolute(&archive).unwrap_or(archive),
        health_window_ms: args.health_window.map_or(0, |window| window.as_millis() as u64),
        ..DeployRequest::default()
    };
    let deployed = match Client::connect(root).and_then(|mut client| client.deploy(request, None)) {
        Ok(deployed) => deployed,
        Err(ClientError::Refused(failure)) => {
            return Err(not_deployed(anyhow::anyhow!("the deploy of {release_version} failed: {failure}")));
        }
        Err(error) => return Err(not_deployed(error.into())),
    };
    println!(
        "{} deployed {} {}: live in {:.1} s (build {:.1} s)",
        clock(),
        deployed.release.name,
        deployed.release.version,
        changed_at.elapsed().as_secs_f64(),
        build_time.as_secs_f64()
    );
    if let Err(error) = remove_older_development_releases(root, &deployed.release, &deployed.from.version) {
        eprintln!("relive watch: removing older development releases from the store: {error:#}");
    }
    Ok(())
}

/// Removes the development releases of the application `new` belongs to
/// from the node's store, but `new` and `previous` (the one a rollback
/// returns to).
fn remove_older_development_releases(
    root: &Path,
    new: &ReleaseInfo,
    previous: &Version,
) -> anyhow::Result<()> {
    let mut client = Client::connect(root)?;
    let app = &new.name;
    for release in client.releases()? {
        let is_development = release.version.pre.as_str().starts_with("dev.");
        let in_use = matches!(release.state, ReleaseState::Current | ReleaseState::Permanent);
        if release.name != *app
            || !is_development
            || in_use
            || release.version == new.version
            || release.version == *previous
        {
            continue;
        }
        let request =
            Request::Remove(RemoveRequest { name: Some(app.clone()), version: release.version.clone() });
        client.request(&request, None).with_context(|| format!("removing {app} {}", release.version))?;
    }
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
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode,
    };

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

    #[test]
    fn only_content_changes_count() {
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Any),
        ] {
            assert!(is_content_change(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
            EventKind::Any,
        ] {
            assert!(!is_content_change(&kind), "{kind:?}");
        }
    }

    #[test]
    fn the_hash_follows_content_not_builds_or_touches() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path();
        std::fs::write(
            app.join("release.toml"),
            "[release]\nname = \"app\"\nversion = \"1.0.0\"\n\n[[module]]\nname = \"m\"\ncrate = \"m\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(app.join("m/src")).unwrap();
        std::fs::write(app.join("m/src/lib.rs"), "fn a() {}\n").unwrap();
        let sources = Sources::of(app).unwrap();
        let before = sources.hash();

        // What a build, git and editors write beside the sources.
        std::fs::create_dir_all(app.join("m/target/debug")).unwrap();
        std::fs::write(app.join("m/target/debug/libm.so"), "built").unwrap();
        std::fs::write(app.join("m/Cargo.lock"), "# lock").unwrap();
        std::fs::create_dir_all(app.join("m/.git")).unwrap();
        std::fs::write(app.join("m/.git/index"), "git").unwrap();
        std::fs::write(app.join("m/src/.lib.rs.swp"), "swap").unwrap();
        std::fs::write(app.join("m/src/lib.rs~"), "backup").unwrap();
        // A touch: the same bytes again.
        std::fs::write(app.join("m/src/lib.rs"), "fn a() {}\n").unwrap();
        assert_eq!(sources.hash(), before);
        for ignored in ["m/target/debug/libm.so", "m/Cargo.lock", "m/.git/index", "m/src/.lib.rs.swp"] {
            assert!(!sources.holds(&app.join(ignored)), "{ignored}");
        }
        assert!(sources.holds(&app.join("m/src/lib.rs")));
        assert!(sources.holds(&app.join("release.toml")));

        std::fs::write(app.join("m/src/lib.rs"), "fn b() {}\n").unwrap();
        assert_ne!(sources.hash(), before, "an edit");
        std::fs::write(app.join("m/src/lib.rs"), "fn a() {}\n").unwrap();
        assert_eq!(sources.hash(), before, "an edit undone");
        std::fs::write(app.join("m/src/new.rs"), "").unwrap();
        assert_ne!(sources.hash(), before, "a new file");
    }
}
