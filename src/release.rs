//! `relive release build|inspect|unpack|list|keygen` and `relive plan`: the
//! release files, without a running node (as OTP's release_handler does
//! for unpack_release).
//!
//! - build: runs cargo on every module crate of `APP_DIR/release.toml`
//!   (a spinner per module while cargo runs), checks each library before
//!   packing it (the module name it exports is its `[[module]]`'s, its ABI
//!   version this relive's, its version its crate's; with `--previous
//!   ARCHIVE`, a module whose state or message types changed must have a
//!   new version), then writes `<name>-<version>.tar.gz` with the manifest
//!   and each library and its sha256, signed if `--sign KEY` is given. What
//!   the node would refuse at deploy is refused here, naming the crate and
//!   what to change.
//! - inspect: verifies an archive and shows it.
//! - unpack: verifies an archive and adds it to the store under `--root`
//!   as unpacked; `--require-signed` accepts only archives signed by a key
//!   in `<root>/keys/*.pub`.
//! - plan: the upgrade plan from a release in the store (the one running,
//!   or `--from VERSION`) to an archive's release, readable or `--json`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use relive_node::client::{Client, ClientError};
use relive_node::protocol::{PruneRequest, RemoveRequest, Request, Response};
use relive_releases::archive;
use relive_releases::manifest::Manifest;
use relive_releases::store::{ReleaseInfo, Store};
use relive_upgrader::planner::{self, Planned};

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Build an application's modules and package them as an archive.
    Build {
        /// The application's directory (holds release.toml).
        app_dir: PathBuf,
        /// Where to write the archive (default: the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Sign the archive with this private key (see `release keygen`).
        #[arg(long)]
        sign: Option<PathBuf>,
        /// cargo's target directory for the module crates (default: each
        /// crate's own).
        #[arg(long)]
        target_dir: Option<PathBuf>,
        /// The release this one will upgrade: a module whose state or
        /// message types differ from its library there must have another
        /// version (and a code_change).
        #[arg(long, value_name = "ARCHIVE")]
        previous: Option<PathBuf>,
    },
    /// Verify an archive and show what it holds.
    Inspect {
        /// The archive.
        archive: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify an archive and add it to the store, unpacked.
    Unpack {
        /// The archive.
        archive: PathBuf,
        #[command(flatten)]
        root: RootArg,
        /// Accept only archives signed by a key in <root>/keys/*.pub.
        #[arg(long)]
        require_signed: bool,
    },
    /// The releases in the store and their states.
    List {
        #[command(flatten)]
        root: RootArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a release from the store (not the current or the permanent
    /// one), and the libraries no other release uses. Through the node when
    /// one runs on the root.
    Remove {
        /// The version to remove.
        version: semver::Version,
        /// The application (default: the one the store runs, if it holds one).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        root: RootArg,
    },
    /// Remove the unpacked and old releases of an application but the
    /// newest --keep (never the current or the permanent one). Through the
    /// node when one runs on the root.
    Prune {
        /// How many unpacked or old releases to keep (the newest).
        #[arg(long, default_value_t = 2)]
        keep: usize,
        /// The application (default: the one the store runs, if it holds one).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        root: RootArg,
    },
    /// Make a signing key: PATH (private, 0600) and PATH.pub.
    Keygen {
        /// Where to write the private key.
        path: PathBuf,
    },
}

#[derive(Args)]
pub struct RootArg {
    /// The release store (default: $RELIVE_ROOT, else ./.relive).
    #[arg(long)]
    root: Option<PathBuf>,
}

impl RootArg {
    /// Absolute, so plans name libraries wherever they are applied from.
    pub(crate) fn path(&self) -> PathBuf {
        let root = self
            .root
            .clone()
            .or_else(|| std::env::var_os("RELIVE_ROOT").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(".relive"));
        std::path::absolute(&root).unwrap_or(root)
    }
}

#[derive(Args)]
pub struct PlanArgs {
    /// The archive of the release to go to.
    archive: PathBuf,
    /// The release to come from: this version of the same application in
    /// the store (default: the one running, else the permanent one).
    #[arg(long)]
    from: Option<semver::Version>,
    #[command(flatten)]
    root: RootArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: ReleaseCommand) -> anyhow::Result<()> {
    match command {
        ReleaseCommand::Build { app_dir, out, sign, target_dir, previous } => {
            let key = sign.as_deref().map(archive::load_signing_key).transpose()?;
            let out = out.unwrap_or_else(|| PathBuf::from("."));
            let path =
                build_checked(&app_dir, &out, key.as_ref(), target_dir.as_deref(), previous.as_deref())?;
            println!("{}", path.display());
            Ok(())
        }
        ReleaseCommand::Inspect { archive: path, json } => {
            let summary = archive::inspect(&path)?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{}", summary.to_string().trim_end());
            }
            Ok(())
        }
        ReleaseCommand::Unpack { archive: path, root, require_signed } => {
            let root = root.path();
            let trusted = relive_node::trusted_keys(&root).map_err(anyhow::Error::msg)?;
            if require_signed && trusted.is_empty() {
                bail!(
                    "--require-signed: no trusted key in {}: copy the signer's .pub file there",
                    root.join("keys").display()
                );
            }
            // With no key in the store, a signature is still checked
            // against the key it names; a store that trusts keys accepts
            // only archives signed by one of them, as its node does.
            let require_signed = require_signed || !trusted.is_empty();
            let trusted = (!trusted.is_empty()).then_some(trusted.as_slice());
            let contents = archive::read(&path, trusted, require_signed)?;
            let mut store = Store::open(&root)?;
            let release = &contents.manifest.release;
            let dir = store.add_verified(&contents)?;
            println!("unpacked {} {} into {}", release.name, release.version, dir.display());
            Ok(())
        }
        ReleaseCommand::List { root, json } => {
            let store = Store::open_read_only(root.path())?;
            let releases = store.which_releases();
            if json {
                println!("{}", serde_json::to_string(&releases)?);
            } else if releases.is_empty() {
                println!("no release in {}", store.root().display());
            } else {
                for release in releases {
                    println!("{release}");
                }
            }
            Ok(())
        }
        ReleaseCommand::Remove { version, name, root } => {
            let root = root.path();
            let request = Request::Remove(RemoveRequest { name: name.clone(), version: version.clone() });
            let removed = match through_node(&root, &request)? {
                Some(removed) => removed,
                None => {
                    let mut store = Store::open(&root)?;
                    let name = app_name(&store, name)?;
                    let info = store.get(&name, &version).with_context(|| {
                        format!("no release {name} {version} in the store {}", root.display())
                    })?;
                    store.remove(&name, &version)?;
                    vec![info]
                }
            };
            for info in removed {
                println!("removed {} {} ({})", info.name, info.version, info.state);
            }
            Ok(())
        }
        ReleaseCommand::Prune { keep, name, root } => {
            let root = root.path();
            let request = Request::Prune(PruneRequest { name: name.clone(), keep });
            let removed = match through_node(&root, &request)? {
                Some(removed) => removed,
                None => {
                    let mut store = Store::open(&root)?;
                    let name = app_name(&store, name)?;
                    store.prune(&name, keep, &[])?
                }
            };
            if removed.is_empty() {
                println!("nothing to prune (keeping the newest {keep} unpacked or old releases)");
            }
            for info in removed {
                println!("removed {} {} ({})", info.name, info.version, info.state);
            }
            Ok(())
        }
        ReleaseCommand::Keygen { path } => {
            let key = archive::generate_key(&path)?;
            println!(
                "wrote {} (private) and {} (public key {})",
                path.display(),
                archive::public_key_path(&path).display(),
                hex_of(key.verifying_key().as_bytes())
            );
            Ok(())
        }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds every module crate of `app_dir/release.toml`, checks each
/// library ([`check_library`]) and writes the archive into `out`.
pub(crate) fn build(
    app_dir: &Path,
    out: &Path,
    key: Option<&ed25519_dalek::SigningKey>,
    target_dir: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    build_checked(app_dir, out, key, target_dir, None)
}

/// [`build`], and with `previous` (an archive of the release this one
/// upgrades) each module's types compared with its library there: types
/// that changed under the same version are refused before anything is
/// packed.
fn build_checked(
    app_dir: &Path,
    out: &Path,
    key: Option<&ed25519_dalek::SigningKey>,
    target_dir: Option<&Path>,
    previous: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let manifest_path = app_dir.join("release.toml");
    let manifest = Manifest::from_path(&manifest_path)?;
    // Read first: a bad --previous fails before minutes of building.
    let previous = previous
        .map(|path| {
            let contents = archive::read(path, None, false)
                .with_context(|| format!("--previous {}: not a readable release archive", path.display()))?;
            if contents.manifest.release.name != manifest.release.name {
                bail!(
                    "--previous {} is a release of {}, {} is one of {}: give an archive of {}",
                    path.display(),
                    contents.manifest.release.name,
                    manifest_path.display(),
                    manifest.release.name,
                    manifest.release.name
                );
            }
            Ok((path, contents))
        })
        .transpose()?;
    let mut libraries = Vec::new();
    for module in &manifest.modules {
        let crate_dir = app_dir.join(&module.krate);
        let built = build_module(&module.name, &crate_dir, target_dir, None, Profile::Release)?;
        let metadata = check_library(&manifest_path, &module.name, &crate_dir, &built)?;
        if let Some((path, contents)) = &previous
            && let Some(library) = contents.library(&module.name)
        {
            check_types_against(path, library, &metadata, &module.name, &crate_dir)?;
        }
        libraries.push((module.name.clone(), built.library));
    }
    Ok(archive::build(&manifest, app_dir, &libraries, out, key)?)
}

/// Opens a library just built and checks that the node will take it as
/// the `[[module]]` it was built for: the module name it exports is
/// `module`, its ABI version is the one this relive's nodes speak (the
/// loader refuses any other), and its version is its crate's. Each
/// refusal names the crate directory and what to change.
fn check_library(
    manifest_path: &Path,
    module: &str,
    crate_dir: &Path,
    built: &BuiltModule,
) -> anyhow::Result<relive_runtime::LibraryMetadata> {
    let (library, version) = (&built.library, &built.crate_version);
    let cargo_toml = crate_dir.join("Cargo.toml");
    let metadata = match relive_runtime::inspect_library(library) {
        Ok(metadata) => metadata,
        Err(error @ relive_runtime::LoadError::AbiMismatch { .. }) => bail!(
            "module {module} (crate {}): {error}: point the relive-abi dependency in {} at this relive's \
             relive-abi and build again",
            crate_dir.display(),
            cargo_toml.display()
        ),
        Err(error) => {
            return Err(anyhow::Error::new(error).context(format!(
                "module {module}: the library built from {} is refused",
                crate_dir.display()
            )));
        }
    };
    if metadata.name != module {
        bail!(
            "module {module}: the library built from {} ({}) exports module `{}`, but {} names it `{module}`: \
             set `name = \"{}\"` in that [[module]], or export it as `{module}` \
             (relive_abi::export_module!(State, name = \"{module}\"))",
            crate_dir.display(),
            library.display(),
            metadata.name,
            manifest_path.display(),
            metadata.name
        );
    }
    if metadata.version != *version {
        bail!(
            "module {module}: the library built from {} ({}) says it is version {}, the release expects {version} \
             (the `version` in {}): let export_module! take the crate's version (remove any \
             RELIVE_MODULE_VERSION its build script or environment sets)",
            crate_dir.display(),
            library.display(),
            metadata.version,
            cargo_toml.display()
        );
    }
    Ok(metadata)
}

/// Refuses `new` when the previous release's library of the same module
/// has the same version but other types: the node would take it as the
/// same code and move states between two layouts without a code_change.
fn check_types_against(
    previous: &Path,
    old_library: &archive::Library,
    new: &relive_runtime::LibraryMetadata,
    module: &str,
    crate_dir: &Path,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("a temporary directory for the previous release's library")?;
    let file = dir.path().join(archive::library_entry(module).replace('/', "-"));
    std::fs::write(&file, &old_library.bytes).with_context(|| format!("writing {}", file.display()))?;
    let old = match relive_runtime::inspect_library(&file) {
        Ok(old) => old,
        // No node of this relive can run it, so none runs its states:
        // nothing to keep apart.
        Err(relive_runtime::LoadError::AbiMismatch { found, .. }) => {
            eprintln!(
                "relive: --previous {}: its library of module {module} speaks module ABI {found}, which this \
                 relive's nodes do not load; its types are not compared",
                previous.display()
            );
            return Ok(());
        }
        Err(error) => {
            return Err(anyhow::Error::new(error)
                .context(format!("--previous {}: its library of module {module}", previous.display())));
        }
    };
    if old.version != new.version || old.fingerprint == new.fingerprint {
        return Ok(());
    }
    let cargo_toml = crate_dir.join("Cargo.toml");
    let what = match changed_roles(&old.types, &new.types) {
        Some(roles) if roles.contains(&"state") => format!("state type of {module} changed"),
        Some(roles) if !roles.is_empty() => {
            format!("message types of {module} changed ({})", roles.join(", "))
        }
        _ => format!("state or message types of {module} changed"),
    };
    let code_change = if what.starts_with("state") { " and write code_change" } else { "" };
    bail!(
        "{what}: bump `version` in {}{code_change} (version {} is also the version of {module} in --previous {}, \
         with other types; the node would move states and messages between two layouts as if they were one)",
        cargo_toml.display(),
        new.version,
        previous.display()
    )
}

/// Which roles (state, init, call, cast, info, reply) differ between two
/// type descriptions (relive-abi's `describe_types`: a `role: format` line
/// each, then the registry of named types): a role differs when its line
/// does or when a named type it reaches does. `None` when a description
/// does not read as one.
fn changed_roles(old: &str, new: &str) -> Option<Vec<&'static str>> {
    let (old, new) = (TypeDescription::parse(old)?, TypeDescription::parse(new)?);
    let mut changed = Vec::new();
    for role in ["state", "init", "call", "cast", "info", "reply"] {
        let (before, after) = (old.roles.get(role)?, new.roles.get(role)?);
        let mut names = old.reached(before);
        names.extend(new.reached(after));
        if before != after || names.iter().any(|name| old.registry.get(name) != new.registry.get(name)) {
            changed.push(role);
        }
    }
    Some(changed)
}

/// A type description read back: its `role: format` lines and its
/// registry of named types (`name → format`).
struct TypeDescription<'a> {
    roles: BTreeMap<&'a str, &'a str>,
    registry: BTreeMap<&'a str, &'a str>,
}

impl<'a> TypeDescription<'a> {
    fn parse(text: &'a str) -> Option<TypeDescription<'a>> {
        let mut description = TypeDescription { roles: BTreeMap::new(), registry: BTreeMap::new() };
        for line in text.lines() {
            if let Some(body) = line.strip_prefix('{') {
                for entry in split_top_level(body.strip_suffix('}')?) {
                    let (name, format) = entry.trim().split_once("\": ")?;
                    description.registry.insert(name.strip_prefix('"')?, format);
                }
            } else if let Some((role, format)) = line.split_once(": ") {
                description.roles.insert(role, format);
            }
        }
        Some(description)
    }

    /// The named types `format` refers to, directly or through others.
    fn reached(&self, format: &'a str) -> BTreeSet<&'a str> {
        let mut seen = BTreeSet::new();
        let mut queue = type_names(format);
        while let Some(name) = queue.pop() {
            if seen.insert(name) {
                queue.extend(self.registry.get(name).map(|f| type_names(f)).unwrap_or_default());
            }
        }
        seen
    }
}

/// `body` split at the commas outside brackets and quotes.
fn split_top_level(body: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut quoted, mut escaped, mut start) = (Vec::new(), 0i32, false, false, 0);
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' | '[' | '{' if !quoted => depth += 1,
            ')' | ']' | '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !body[start..].trim().is_empty() {
        parts.push(&body[start..]);
    }
    parts
}

/// The named types a format refers to (`TypeName("X")`).
fn type_names(format: &str) -> Vec<&str> {
    format
        .split("TypeName(\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name))
        .collect()
}

/// cargo's profile for a module build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    /// `cargo build --release`: what releases ship.
    Release,
    /// cargo's dev profile, debug info cut to line tables (through
    /// cargo's environment, not the crate's Cargo.toml): a smaller library
    /// that links and packs faster, with backtraces that still name lines.
    /// What `relive watch` builds unless told `--release`.
    Dev,
}

/// A module crate built by [`build_module`].
pub(crate) struct BuiltModule {
    /// Its cdylib.
    pub(crate) library: PathBuf,
    /// The crate's version (its Cargo.toml's), as cargo reports it.
    pub(crate) crate_version: semver::Version,
}

/// Runs cargo on one module crate (`profile`) and returns its cdylib.
/// `version` overrides the module's version (relive-abi's
/// `RELIVE_MODULE_VERSION`); without it an inherited override is removed.
pub(crate) fn build_module(
    module: &str,
    crate_dir: &Path,
    target_dir: Option<&Path>,
    version: Option<&str>,
    profile: Profile,
) -> anyhow::Result<BuiltModule> {
    let cargo_toml = crate_dir.join("Cargo.toml");
    if !cargo_toml.is_file() {
        bail!(
            "module {module}: {} not found: `crate` in release.toml must be the module crate's directory, \
             relative to release.toml",
            cargo_toml.display()
        );
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("building module {module} ({})", crate_dir.display()));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command.arg("build");
    match profile {
        Profile::Release => command.arg("--release"),
        Profile::Dev => command.env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only"),
    };
    command
        .args(["--message-format=json-render-diagnostics", "--manifest-path"])
        .arg(&cargo_toml)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = target_dir {
        command.env("CARGO_TARGET_DIR", dir);
    }
    match version {
        Some(version) => command.env("RELIVE_MODULE_VERSION", version),
        None => command.env_remove("RELIVE_MODULE_VERSION"),
    };
    let mut child = command
        .spawn()
        .with_context(|| format!("running {} to build module {module}", cargo.to_string_lossy()))?;
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut built = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(Result::ok) {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let is_cdylib = message["reason"] == "compiler-artifact"
            && message["target"]["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if is_cdylib
            && let Some(file) = message["filenames"].as_array().into_iter().flatten().find_map(|f| {
                f.as_str().filter(|f| f.ends_with(std::env::consts::DLL_SUFFIX)).map(PathBuf::from)
            })
        {
            built = Some((file, message["package_id"].as_str().unwrap_or_default().to_string()));
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    let errors = errors.join().unwrap_or_default();
    spinner.finish_and_clear();
    if !status.success() {
        let _ = std::io::stderr().write_all(errors.as_bytes());
        bail!("building module {module} failed ({status}): fix the errors above and build again");
    }
    let (library, package_id) = built.with_context(|| {
        format!(
            "module {module}: cargo built no cdylib; add `[lib] crate-type = [\"cdylib\"]` to {}",
            cargo_toml.display()
        )
    })?;
    let crate_version = package_version(&package_id).with_context(|| {
        format!(
            "module {module}: cargo's package id {package_id:?} of {} names no version",
            cargo_toml.display()
        )
    })?;
    Ok(BuiltModule { library, crate_version })
}

/// The version in a cargo package id: `path+file:///dir#1.2.3`,
/// `path+file:///dir#name@1.2.3`, or before cargo 1.77 `name 1.2.3 (path+file:///dir)`.
fn package_version(package_id: &str) -> Option<semver::Version> {
    let text = match package_id.rsplit_once('#') {
        Some((_, tail)) => tail.rsplit_once('@').map_or(tail, |(_, version)| version),
        None => package_id.split_whitespace().nth(1)?,
    };
    semver::Version::parse(text).ok()
}

/// `relive plan`.
pub fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let root = args.root.path();
    // A running node plans from what it runs.
    if args.from.is_none() {
        let archive = std::path::absolute(&args.archive).unwrap_or_else(|_| args.archive.clone());
        let request = Request::Plan(relive_node::protocol::PlanRequest { archive });
        match Client::connect(&root) {
            Ok(mut client) => match client.request(&request, None)? {
                Response::Planned(planned) => return print_planned(&planned, args.json),
                other => {
                    bail!("the node answered a plan request with {}", relive_node::protocol::encode(&other))
                }
            },
            // No node (or a socket left by one that died): plan from the store.
            Err(ClientError::NoNode { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let store = Store::open_read_only(&root)?;
    let contents = archive::read(&args.archive, None, false)?;
    let to_manifest = &contents.manifest;
    let name = &to_manifest.release.name;
    let from = match &args.from {
        Some(version) => store.release(name, version)?,
        None => {
            let running = store.running().or_else(|| store.permanent()).with_context(|| {
                format!("no release of {name} runs in {}: say which with --from VERSION", root.display())
            })?;
            store.release(&running.name, &running.version)?
        }
    };
    let from_manifest = Manifest::parse(&from.manifest_text, &from.dir.join("release.toml"))?;
    let from_view = relive_node::release_view(&from_manifest, |module| {
        from.modules.get(module).map(|sha| (sha.clone(), store.library_path(sha)))
    })
    .map_err(anyhow::Error::msg)?;
    let to_view = relive_node::release_view(to_manifest, |module| {
        contents.library(module).map(|l| (l.sha256.clone(), store.library_path(&l.sha256)))
    })
    .map_err(anyhow::Error::msg)?;
    let planned = planner::plan(&from_view, &to_view)?;
    if args.json {
        println!("{}", serde_json::to_string(&planned)?);
    } else {
        match &planned {
            Planned::Upgrade { plan, explicit } => {
                print!("{plan}");
                if *explicit {
                    println!("(the release's own instructions)");
                }
            }
            Planned::Restart { reason } => println!("restart: {reason}"),
        }
    }
    Ok(())
}

/// Prints a plan.
fn print_planned(planned: &Planned, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(planned)?);
        return Ok(());
    }
    match planned {
        Planned::Upgrade { plan, explicit } => {
            print!("{plan}");
            if *explicit {
                println!("(the release's own instructions)");
            }
        }
        Planned::Restart { reason } => println!("restart: {reason}"),
    }
    Ok(())
}

/// Sends a store request to the node on `root`, if one runs: the releases
/// it removed (`None`: no node, the caller opens the store itself).
fn through_node(root: &Path, request: &Request) -> anyhow::Result<Option<Vec<ReleaseInfo>>> {
    match Client::connect(root) {
        Ok(mut client) => match client.request(request, None)? {
            Response::Removed(removed) => Ok(Some(removed.removed)),
            other => bail!("the node answered with {}", relive_node::protocol::encode(&other)),
        },
        Err(ClientError::NoNode { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The application a store command is about: `name`, else the one the
/// store runs.
fn app_name(store: &Store, name: Option<String>) -> anyhow::Result<String> {
    if let Some(name) = name {
        return Ok(name);
    }
    let mut names: Vec<String> = store.which_releases().into_iter().map(|r| r.name).collect();
    names.dedup();
    match (store.running(), names.as_slice()) {
        (Some(running), _) => Ok(running.name),
        (None, [only]) => Ok(only.clone()),
        (None, []) => bail!("the store {} holds no release", store.root().display()),
        (None, many) => bail!(
            "the store {} holds several applications ({}): say which with --name",
            store.root().display(),
            many.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{changed_roles, package_version};

    /// counter-v1's description (relive-abi's describe_types).
    const V1: &str = r#"state: TypeName("Counter")
init: TypeName("Start")
call: TypeName("Request")
cast: TypeName("Cast")
info: U64
reply: counter_v1::Reply
{"Cast": Enum({0: Named { name: "Add", value: NewType(U64) }, 1: Named { name: "Stop", value: NewType(Str) }}), "Counter": Struct([Named { name: "count", value: U64 }, Named { name: "label", value: Str }]), "Request": Enum({0: Named { name: "Get", value: Unit }, 1: Named { name: "Add", value: NewType(U64) }}), "Start": Struct([Named { name: "label", value: Str }, Named { name: "count", value: U64 }])}"#;

    #[test]
    fn changed_roles_follow_the_named_types_each_role_reaches() {
        assert_eq!(changed_roles(V1, V1), Some(vec![]));
        let add = V1.replace(r#"name: "Add", value: NewType(U64)"#, r#"name: "Add", value: NewType(I64)"#);
        assert_eq!(changed_roles(V1, &add), Some(vec!["call", "cast"]), "both have an Add");
        let state_only = V1.replace(
            r#""Counter": Struct([Named { name: "count""#,
            r#""Counter": Struct([Named { name: "total""#,
        );
        assert_eq!(changed_roles(V1, &state_only), Some(vec!["state"]));
        let call = V1.replace(
            r#"{0: Named { name: "Get", value: Unit }"#,
            r#"{0: Named { name: "Get", value: NewType(Str) }"#,
        );
        assert_eq!(changed_roles(V1, &call), Some(vec!["call"]));
        let info = V1.replace("info: U64", "info: Str");
        assert_eq!(changed_roles(V1, &info), Some(vec!["info"]));
        assert_eq!(changed_roles(V1, "registry incomplete"), None);
    }

    #[test]
    fn package_versions_in_every_cargo_spelling() {
        for (id, version) in [
            ("path+file:///work/examples/counter-v1#1.0.0", "1.0.0"),
            ("path+file:///work/app/watched#counter@2.1.0-dev.5", "2.1.0-dev.5"),
            ("counter 1.2.3 (path+file:///work/app/counter)", "1.2.3"),
        ] {
            assert_eq!(package_version(id), Some(version.parse().unwrap()), "{id}");
        }
        assert_eq!(package_version("path+file:///work/app#counter"), None);
    }
}
