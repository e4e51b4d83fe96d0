//! The example modules (examples/, its own cargo workspace) for commands
//! that run module processes (`relive bench --module`): built on demand
//! with cargo into target/examples, as the tests build them, and loaded
//! from a code directory of their own.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

/// The variable that names the relive source checkout, for a binary
/// installed away from the one it was built from.
pub(crate) const CHECKOUT_ENV: &str = "RELIVE_CHECKOUT";

/// The relive source checkout: `$RELIVE_CHECKOUT`, else the one this
/// binary was built from (it may be gone: see [`checkout`]).
pub(crate) fn repo() -> PathBuf {
    std::env::var_os(CHECKOUT_ENV)
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// The relive source checkout, for `relive COMMAND`, which builds `builds`
/// from it; an error saying so plainly when there is none.
///
/// # Errors
/// No examples/ in [`repo`].
pub(crate) fn checkout(command: &str, builds: &str) -> anyhow::Result<PathBuf> {
    let repo = repo();
    if repo.join("examples").join("Cargo.toml").is_file() {
        return Ok(repo);
    }
    let first = command.split_whitespace().next().unwrap_or(command);
    bail!(
        "relive {first} needs the relive source checkout (it builds {builds}), and {} is not one: \
         run it from the checkout with `cargo run --release -- {command}`, or set {CHECKOUT_ENV} to \
         the checkout's directory",
        repo.display()
    )
}

/// The built example modules.
pub struct Examples {
    dir: PathBuf,
}

impl Examples {
    /// Builds examples/ (release) into `<repo>/target/examples`, saying so
    /// on stderr; `command` is what needs them (`bench call --module`), for
    /// the error when there is no checkout.
    ///
    /// # Errors
    /// No source tree, cargo missing, or the build failing: each says what
    /// to do.
    pub fn build(command: &str) -> anyhow::Result<Examples> {
        let repo = checkout(command, "the example modules of examples/")?;
        let manifest = repo.join("examples").join("Cargo.toml");
        let target = repo.join("target").join("examples");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        eprintln!("relive: building the example modules (cargo build --release, {})", manifest.display());
        let status = Command::new(&cargo)
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .with_context(|| {
                format!(
                    "could not run {} to build the example modules: install Rust (https://rustup.rs) \
                     or set CARGO to the path of cargo",
                    cargo.to_string_lossy()
                )
            })?;
        if !status.success() {
            bail!(
                "building the example modules failed ({status}): fix the errors cargo printed above, \
                 or run `CARGO_TARGET_DIR={} cargo build --release --manifest-path {}` to see them",
                target.display(),
                manifest.display()
            );
        }
        Ok(Examples { dir: target.join("release") })
    }

    /// The library of example crate `krate` (e.g. "counter-v1").
    ///
    /// # Errors
    /// The build did not produce it.
    pub fn library(&self, krate: &str) -> anyhow::Result<PathBuf> {
        let file = format!(
            "{}{}{}",
            std::env::consts::DLL_PREFIX,
            krate.replace('-', "_"),
            std::env::consts::DLL_SUFFIX
        );
        let path = self.dir.join(file);
        if !path.is_file() {
            bail!("the example module {krate} was not built: {} is missing", path.display());
        }
        Ok(path)
    }
}

/// A temporary directory (removed on drop) for a node's code directory.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/relive-<what>-<pid>-<nanos>`.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(what: &str) -> anyhow::Result<TempDir> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("relive-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
