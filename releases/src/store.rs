//! The release store: OTP's `release_handler` bookkeeping, on disk.
//!
//! This module owns one directory, the store's *root*:
//!
//! ```text
//! ROOT/
//!   store.lock                  flock'ed by the one Store open for writing
//!   state.json                  every release and its state (see below)
//!   code/<sha256>.so            libraries, content-addressed, shared by releases
//!                               (and by a code server using this directory)
//!   releases/<name>/<version>/
//!     release.toml              the manifest text, as given
//!     modules.json              module name -> sha256 of its library in code/
//!     release.sig               the archive's signature file, byte for byte
//!                               (only if the archive was signed)
//!     verified.json             what was verified at unpack:
//!                               {"manifest_sha256": "<hex>", "signer": "<hex>" | null}
//! ```
//!
//! # States (as OTP's release_handler)
//!
//! Each release is [`Unpacked`](ReleaseState::Unpacked) (in the store, never
//! installed), [`Current`](ReleaseState::Current) (installed and running,
//! not yet permanent), [`Permanent`](ReleaseState::Permanent) (what a node
//! boots after a restart; it also reads `permanent`, not `current`, while it
//! runs) or [`Old`](ReleaseState::Old) (installed once, since replaced).
//! At most one release is current and at most one is permanent. The release
//! that runs is the current one, else the permanent one.
//!
//! - [`Store::install`] makes an unpacked, old or permanent release the one
//!   that runs: the previous current release (if any) becomes old; a
//!   permanent target stays permanent (that is a rollback to it), any other
//!   target becomes current. The permanent release is never changed by an
//!   install. Installing the release that already runs is refused
//!   ([`StoreError::AlreadyInstalled`]).
//! - [`Store::make_permanent`] needs the current release (or the permanent
//!   one while it runs: nothing to do); the previous permanent one becomes
//!   old.
//! - [`Store::remove`] refuses the current and the permanent release.
//! - [`Store::prune`] removes (as [`Store::remove`]) the unpacked and old
//!   releases of one application except the newest `keep` of them by
//!   semver; the current and the permanent release, and the versions the
//!   caller spares, are never touched and do not count towards `keep`.
//! - [`Store::rollback_target`] is the permanent release, and so is
//!   [`Store::boot_release`] (else the current one, for a store that has
//!   never had a permanent release).
//!
//! | operation        | unpacked    | current     | permanent        | old         |
//! |------------------|-------------|-------------|------------------|-------------|
//! | `install`        | → current   | refused     | runs it¹         | → current   |
//! | `make_permanent` | refused     | → permanent | nothing to do²   | refused     |
//! | `remove`         | removed     | refused     | refused          | removed     |
//! | `prune`          | removed³    | kept        | kept             | removed³    |
//!
//! ¹ a rollback; refused when it already runs (no current release).
//! ² while it runs; refused while another release is current.
//! ³ except the newest `keep` unpacked or old releases of that application
//! and the versions spared.
//!
//! # Verification at boot
//!
//! [`Store::add_verified`] stores an archive's verified
//! [`Contents`](crate::archive::Contents) and keeps what was verified:
//! `release.sig` as it was in the archive, and `verified.json` with the
//! sha256 of `release.toml` and the signer's key. [`Store::verify_release`]
//! reads a release back and checks all of it again before a node boots it:
//! the manifest parses and matches `verified.json`, `modules.json` agrees
//! with the manifest, every library in `code/` hashes to the manifest's
//! sha256, and (when trusted keys are given or signatures required)
//! `release.sig` verifies over `release.toml` with a trusted key. It returns
//! the bytes it hashed, so the caller loads exactly what was checked. A
//! release written by an older relive has no `verified.json`: it is
//! accepted with a warning, every other check still applies.
//! ([`Store::add_unpacked`] writes `verified.json` too, with no signer.)
//!
//! # Invariants
//!
//! - `state.json` is only ever replaced atomically: the new text goes to
//!   `state.json.tmp` in the root, is fsynced, renamed over `state.json`,
//!   and the root directory is fsynced. A crash at any point leaves the old
//!   or the new file, never a torn one; a leftover temp file is deleted by
//!   the next [`Store::open`]. A state file that does not parse or breaks
//!   the rules above is an error ([`StoreError::CorruptState`]), never
//!   silently reset.
//! - The state file is the truth: a release is in the store if and only if
//!   the state file lists it. Every change writes its files first and the
//!   state file last ([`Store::add_unpacked`]), or the state file first and
//!   deletes files after ([`Store::remove`]), so a crash leaves at worst an
//!   unlisted release directory (replaced by the next unpack of that
//!   release) or an unreferenced library in `code/` (harmless).
//! - A release directory appears whole: it is built in
//!   `releases/<name>/.<version>.tmp`, fsynced and renamed into place.
//!   Libraries are written the same way (`code/.<sha256>.so.tmp`).
//! - [`Store::add_verified`] and [`Store::add_unpacked`] check everything
//!   (names, checksums, that the release is new) before they write
//!   anything.
//! - Every file of a release is read the way an archive is: opened with
//!   `O_NONBLOCK`, refused unless it is a regular file of a bounded size, so
//!   a FIFO or a device planted in the store cannot wedge a boot.
//! - At most one [`Store`] per root is open for writing, across processes:
//!   [`Store::open`] takes an exclusive `flock` on `store.lock` for the
//!   handle's lifetime; another one gets [`StoreError::Locked`].
//!   [`Store::open_read_only`] takes no lock and sees a snapshot.
//! - Names of releases and modules are 1 to 128 of `A-Z a-z 0-9 _ -` (they
//!   become paths); versions are semver.
//!
//! # Crash hook
//!
//! [`Store::crash_before_state_rename_for_tests`] (hidden from the docs)
//! makes the next state change of that one handle kill its own process with
//! SIGKILL after the temp state file is written and fsynced, before the
//! rename: the crash test uses it in a child process. It is a method call
//! on a handle, not an environment variable, so nothing outside the program
//! can turn it on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::{self, Library, SignatureError};
use crate::bounded::{self, ReadError};
use crate::manifest::Manifest;

/// The state file's name, in the root.
pub const STATE_FILE: &str = "state.json";
/// The lock file's name, in the root.
pub const LOCK_FILE: &str = "store.lock";
/// The temp file a new state is written to before the rename.
const STATE_TMP: &str = "state.json.tmp";
/// The manifest's name in a release directory.
pub const MANIFEST_FILE: &str = "release.toml";
/// The module → sha256 map's name in a release directory.
pub const MODULES_FILE: &str = "modules.json";
/// The archive's signature file, kept as it was, in a release directory.
pub const SIGNATURE_FILE: &str = "release.sig";
/// What was verified at unpack, in a release directory.
pub const VERIFIED_FILE: &str = "verified.json";
/// The most bytes [`Store::verify_release`] reads of one file of a release
/// (a library, the manifest, ...): what an archive may hold decompressed.
const MAX_FILE_BYTES: u64 = crate::archive::MAX_UNPACKED_BYTES;
/// The state file format this code reads and writes.
const FORMAT: u32 = 1;
/// The longest release or module name.
const MAX_NAME: usize = 128;

/// A release's state, as OTP's release_handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseState {
    /// In the store, never installed.
    Unpacked,
    /// Installed and running, not permanent.
    Current,
    /// Booted by a restarted node; reads `permanent` while it runs too.
    Permanent,
    /// Installed once, since replaced.
    Old,
}

impl fmt::Display for ReleaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReleaseState::Unpacked => "unpacked",
            ReleaseState::Current => "current",
            ReleaseState::Permanent => "permanent",
            ReleaseState::Old => "old",
        })
    }
}

/// One release known to the store. Ordered by name, then version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseInfo {
    pub name: String,
    pub version: Version,
    pub state: ReleaseState,
}

impl fmt::Display for ReleaseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.name, self.version, self.state)
    }
}

/// A release read back from the store: enough to boot it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRelease {
    pub info: ReleaseInfo,
    /// `releases/<name>/<version>/`.
    pub dir: PathBuf,
    /// The manifest text as it was unpacked.
    pub manifest_text: String,
    /// Module name → sha256 (lowercase hex) of its library; the file is
    /// [`Store::library_path`].
    pub modules: BTreeMap<String, String>,
}

/// What went wrong, where, and what to do. Every variant names the store's
/// root or the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("release store: could not {action} {}: {source}; check that the path exists, is writable and the disk has space", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no release store at {}: the directory does not exist; pass --root DIR or set RELIVE_ROOT, or unpack a release to create one", .root.display())]
    NoStore { root: PathBuf },
    #[error("the release store {} is in use by another process{holder}; wait for it to finish or stop it, then try again (lock file {})", .root.display(), .root.join(LOCK_FILE).display())]
    Locked { root: PathBuf, holder: String },
    #[error("the release store {} was opened read-only; open it for writing to change it", .root.display())]
    ReadOnly { root: PathBuf },
    #[error("the state file {} is corrupt: {reason}; it is never reset automatically: restore it from a backup or repair it by hand (the releases are under releases/ beside it)", .path.display())]
    CorruptState { path: PathBuf, reason: String },
    #[error("the state file {} is missing but {} holds releases; restore the state file, or move releases/ away to start an empty store", .path.display(), .root.join("releases").display())]
    StateMissing { root: PathBuf, path: PathBuf },
    #[error("invalid {what} name {name:?} for the release store {}: use 1 to {MAX_NAME} of A-Z a-z 0-9 _ -; nothing was written", .root.display())]
    InvalidName { root: PathBuf, what: &'static str, name: String },
    #[error("release {release}, module {module}: {sha256:?} is not a sha256 (64 hex digits); nothing was written to the release store {}; rebuild the archive", .root.display())]
    InvalidChecksum { root: PathBuf, release: String, module: String, sha256: String },
    #[error("release {release} lists module {module} twice; nothing was written to the release store {}; fix the manifest and rebuild the archive", .root.display())]
    DuplicateModule { root: PathBuf, release: String, module: String },
    #[error("release {release}, module {module}: the library's sha256 is {actual} but {expected} was expected; nothing was written to the release store {}; the archive is corrupt or was changed: rebuild it", .root.display())]
    ChecksumMismatch { root: PathBuf, release: String, module: String, expected: String, actual: String },
    #[error("no release {release} in the release store {} (it has: {known}); unpack its archive first", .root.display())]
    UnknownRelease { root: PathBuf, release: String, known: String },
    #[error("release {release} is already in the release store {} (it is {state}); remove it first (it must be neither current nor permanent) or build a new version", .root.display())]
    AlreadyUnpacked { root: PathBuf, release: String, state: ReleaseState },
    #[error("release {release} is already installed in the release store {} (it is {state} and it is the one that runs); nothing to do", .root.display())]
    AlreadyInstalled { root: PathBuf, release: String, state: ReleaseState },
    #[error("cannot make release {release} permanent in the release store {}: it is {state}, not current; {hint}", .root.display())]
    NotCurrent { root: PathBuf, release: String, state: ReleaseState, hint: String },
    #[error("cannot remove release {release} from the release store {}: it is the {state} release; {hint}", .root.display())]
    InUse { root: PathBuf, release: String, state: ReleaseState, hint: String },
    #[error("release {release} in the release store is damaged: {}: {reason}; remove the release and unpack its archive again", .path.display())]
    CorruptRelease { release: String, path: PathBuf, reason: String },
    /// [`Store::verify_release`]: a file of the release is not what was
    /// verified when it was unpacked (or is missing, or is not a file).
    #[error("release {release} in the release store does not match what was verified when it was unpacked: {}: {reason}; relive refuses to boot it; restore the file, or remove the release and unpack its archive again", .path.display())]
    Tampered { release: String, path: PathBuf, reason: String },
    /// [`Store::verify_release`]: a signature by a trusted key is required
    /// and the release has none.
    #[error("release {release} in the release store has no signature ({} is missing) but one by a trusted key is required (trusted keys: {trusted}); relive refuses to boot it; remove the release and unpack an archive of it signed by one of those keys (`relive release build --sign KEY`)", .path.display())]
    Unsigned { release: String, path: PathBuf, trusted: String },
    /// [`Store::verify_release`]: the release is signed by a key that is not
    /// one of the trusted keys.
    #[error("release {release} in the release store is signed by key {key} ({}), which is not one of the trusted keys ({trusted}); relive refuses to boot it; if you trust this signer add its public key to the trusted keys, otherwise remove the release and unpack an archive signed by a trusted key", .path.display())]
    UntrustedSigner { release: String, path: PathBuf, key: String, trusted: String },
    /// [`Store::verify_release`]: signatures are required but no trusted key
    /// was given.
    #[error("signatures are required to boot release {release} from the release store {} but no trusted key was given to check them against; give the signers' public keys as trusted keys", .root.display())]
    NoTrustedKeys { root: PathBuf, release: String },
    /// [`Store::add_verified`]: the contents do not agree with themselves,
    /// so they are not what [`crate::archive::read`] returned.
    #[error("release {release}: the archive contents given to the release store {} are inconsistent: {reason}; nothing was written; pass the contents exactly as archive::read returned them", .root.display())]
    InvalidContents { root: PathBuf, release: String, reason: String },
}

/// `verified.json`: what was verified when the release was unpacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Verified {
    /// The sha256 of `release.toml`, 64 lowercase hex digits.
    manifest_sha256: String,
    /// The public key (64 hex digits) whose signature over `release.toml`
    /// was verified; `None`: the archive was not signed.
    signer: Option<String>,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: u32,
    releases: Vec<ReleaseInfo>,
}

impl StateFile {
    fn empty() -> StateFile {
        StateFile { format: FORMAT, releases: Vec::new() }
    }

    fn find(&self, name: &str, version: &Version) -> Option<&ReleaseInfo> {
        self.releases.iter().find(|r| r.name == name && &r.version == version)
    }

    fn find_mut(&mut self, name: &str, version: &Version) -> Option<&mut ReleaseInfo> {
        self.releases.iter_mut().find(|r| r.name == name && &r.version == version)
    }

    fn with_state(&self, state: ReleaseState) -> Option<&ReleaseInfo> {
        self.releases.iter().find(|r| r.state == state)
    }

    /// Why this state breaks the store's rules, if it does.
    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} is not {FORMAT} (written by another version of relive?)",
                self.format
            ));
        }
        let mut seen = BTreeSet::new();
        for r in &self.releases {
            if !valid_name(&r.name) {
                return Err(format!("invalid release name {:?}", r.name));
            }
            if !seen.insert((&r.name, &r.version)) {
                return Err(format!("release {} {} is listed twice", r.name, r.version));
            }
        }
        for state in [ReleaseState::Current, ReleaseState::Permanent] {
            let n: Vec<_> = self
                .releases
                .iter()
                .filter(|r| r.state == state)
                .map(|r| format!("{} {}", r.name, r.version))
                .collect();
            if n.len() > 1 {
                return Err(format!(
                    "{} releases are {state} ({}); at most one may be",
                    n.len(),
                    n.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The release store under one root directory. See the module doc.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    state: StateFile,
    /// The locked `store.lock` of a writer; `None` when read-only.
    lock: Option<File>,
    /// Test hook: SIGKILL this process between the temp write and the rename.
    crash_before_state_rename: bool,
}

impl Store {
    /// Opens the store at `root` for writing, creating it if needed, and
    /// locks it for the handle's lifetime. Deletes temp files a crash left.
    ///
    /// # Errors
    ///
    /// [`StoreError::Locked`] if another handle (in any process) has it
    /// open for writing, [`StoreError::CorruptState`],
    /// [`StoreError::StateMissing`], [`StoreError::Io`].
    pub fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root).map_err(io_err("create the store directory", &root))?;
        let lock = lock_store(&root)?;
        for dir in [root.join("code"), root.join("releases")] {
            fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        }
        clean_temp_files(&root)?;
        let state = match load_state(&root)? {
            Some(state) => state,
            None => {
                let state = StateFile::empty();
                write_state(&root, &state, false)?;
                state
            }
        };
        Ok(Store { root, state, lock: Some(lock), crash_before_state_rename: false })
    }

    /// Opens the store at `root` to read it: no lock, nothing created or
    /// cleaned, a snapshot of the state as it is now. Every change returns
    /// [`StoreError::ReadOnly`].
    ///
    /// # Errors
    ///
    /// [`StoreError::NoStore`] if `root` is not a directory,
    /// [`StoreError::CorruptState`], [`StoreError::StateMissing`],
    /// [`StoreError::Io`].
    pub fn open_read_only(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(StoreError::NoStore { root });
        }
        let state = load_state(&root)?.unwrap_or_else(StateFile::empty);
        Ok(Store { root, state, lock: None, crash_before_state_rename: false })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this handle may change the store.
    pub fn is_writable(&self) -> bool {
        self.lock.is_some()
    }

    /// `ROOT/code`: the libraries, `<sha256>.so`.
    pub fn code_dir(&self) -> PathBuf {
        self.root.join("code")
    }

    /// `ROOT/code/<sha256>.so`.
    pub fn library_path(&self, sha256: &str) -> PathBuf {
        self.code_dir().join(format!("{sha256}.so"))
    }

    /// `ROOT/releases/<name>/<version>` (whether or not it exists).
    pub fn release_dir(&self, name: &str, version: &Version) -> PathBuf {
        self.root.join("releases").join(name).join(version.to_string())
    }

    /// Every release with its state, sorted by name then version.
    pub fn which_releases(&self) -> Vec<ReleaseInfo> {
        let mut all = self.state.releases.clone();
        all.sort();
        all
    }

    /// One release, if the store has it.
    pub fn get(&self, name: &str, version: &Version) -> Option<ReleaseInfo> {
        self.state.find(name, version).cloned()
    }

    /// The current release (installed, not permanent), if any.
    pub fn current(&self) -> Option<ReleaseInfo> {
        self.state.with_state(ReleaseState::Current).cloned()
    }

    /// The permanent release, if any.
    pub fn permanent(&self) -> Option<ReleaseInfo> {
        self.state.with_state(ReleaseState::Permanent).cloned()
    }

    /// The release that runs: the current one, else the permanent one.
    pub fn running(&self) -> Option<ReleaseInfo> {
        self.current().or_else(|| self.permanent())
    }

    /// What a rollback returns to, and what a node that crashed after an
    /// install that was not made permanent boots: the permanent release.
    pub fn rollback_target(&self) -> Option<ReleaseInfo> {
        self.permanent()
    }

    /// What a (re)starting node boots: the permanent release, else the
    /// current one (a store whose first install was never made permanent).
    pub fn boot_release(&self) -> Option<ReleaseInfo> {
        self.permanent().or_else(|| self.current())
    }

    /// Reads a release back: its manifest text and module → sha256 map
    /// (nothing is verified; a node about to boot it calls
    /// [`Store::verify_release`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownRelease`], [`StoreError::CorruptRelease`] if a
    /// file cannot be read or parsed.
    pub fn release(&self, name: &str, version: &Version) -> Result<StoredRelease, StoreError> {
        let info = self.known(name, version)?.clone();
        let dir = self.release_dir(name, version);
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_text = fs::read_to_string(&manifest_path).map_err(|e| StoreError::CorruptRelease {
            release: label(name, version),
            path: manifest_path.clone(),
            reason: e.to_string(),
        })?;
        let modules = self.read_modules(name, version)?;
        Ok(StoredRelease { info, dir, manifest_text, modules })
    }

    /// Reads a release back and checks everything before returning it, for
    /// a node about to boot it (see "Verification at boot" in the module
    /// doc): `release.toml` parses as a manifest of this release in which
    /// every module has a sha256; its sha256 is the one `verified.json`
    /// recorded at unpack (a release without `verified.json`, written by an
    /// older relive, is accepted with a warning); `modules.json` agrees with
    /// the manifest; every library `code/<sha256>.so` is a regular file
    /// whose sha256 is the manifest's. If `release.sig` is there, its
    /// signature over `release.toml` must be valid (for its own key when no
    /// trusted key is given) and by the signer `verified.json` recorded. If
    /// `require_signed`, or if trusted keys are given (a non-empty slice),
    /// `release.sig` must be there and be by one of `trusted`.
    ///
    /// Returns the release as [`archive::Contents`], with the bytes of each
    /// library that were hashed, so that the caller loads exactly those.
    /// Every file is read as an archive is (only a regular file, bounded):
    /// nothing planted in the store can wedge it.
    ///
    /// # Errors
    ///
    /// - [`StoreError::UnknownRelease`]: the store does not list it;
    /// - [`StoreError::NoTrustedKeys`]: `require_signed` without trusted keys;
    /// - [`StoreError::Tampered`]: a file is missing, not a regular file, or
    ///   not what was verified (names the file and, for a checksum, both
    ///   sums);
    /// - [`StoreError::Unsigned`]: a signature is required and there is none;
    /// - [`StoreError::UntrustedSigner`]: signed by a key not in `trusted`;
    /// - [`StoreError::Io`]: a file cannot be read (permissions, ...).
    pub fn verify_release(
        &self,
        name: &str,
        version: &Version,
        trusted: Option<&[VerifyingKey]>,
        require_signed: bool,
    ) -> Result<archive::Contents, StoreError> {
        self.known(name, version)?;
        let release = label(name, version);
        let dir = self.release_dir(name, version);
        let tampered = |path: &Path, reason: String| StoreError::Tampered {
            release: release.clone(),
            path: path.to_path_buf(),
            reason,
        };
        let trusted = trusted.filter(|t| !t.is_empty());
        if require_signed && trusted.is_none() {
            return Err(StoreError::NoTrustedKeys { root: self.root.clone(), release });
        }

        // release.toml and what was recorded of it.
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_bytes = read_release_file(&release, &manifest_path)?
            .ok_or_else(|| tampered(&manifest_path, "the file is missing".into()))?;
        let manifest_sha256 = hex::encode(Sha256::digest(&manifest_bytes));
        let verified_path = dir.join(VERIFIED_FILE);
        let verified: Option<Verified> = match read_release_file(&release, &verified_path)? {
            None => {
                tracing::warn!(
                    release = %release,
                    path = %verified_path.display(),
                    "the release has no verified.json (a store written by an older relive): its manifest \
                     cannot be compared with what was verified at unpack; every other check still applies"
                );
                None
            }
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                tampered(&verified_path, format!("it is not {{\"manifest_sha256\", \"signer\"}} JSON: {e}"))
            })?),
        };
        if let Some(v) = &verified
            && !v.manifest_sha256.eq_ignore_ascii_case(&manifest_sha256)
        {
            return Err(tampered(
                &manifest_path,
                format!(
                    "its sha256 is {manifest_sha256}, but {} recorded {} when the release was unpacked",
                    verified_path.display(),
                    v.manifest_sha256
                ),
            ));
        }

        // The signature, before anything reads the manifest.
        let sig_path = dir.join(SIGNATURE_FILE);
        let signature_file = read_release_file(&release, &sig_path)?;
        let trusted_list = || {
            trusted
                .unwrap_or_default()
                .iter()
                .map(|k| hex::encode(k.as_bytes()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut signer = None;
        let mut signature = None;
        let mut is_trusted = false;
        match &signature_file {
            None if trusted.is_some() => {
                return Err(StoreError::Unsigned { release, path: sig_path, trusted: trusted_list() });
            }
            None => {}
            Some(bytes) => match archive::check_signature(bytes, &manifest_bytes, trusted) {
                Ok(checked) => {
                    signer = Some(checked.key);
                    signature = Some(checked.signature.to_bytes().to_vec());
                    is_trusted = checked.trusted;
                }
                Err(SignatureError::Untrusted(key)) => {
                    return Err(StoreError::UntrustedSigner {
                        release,
                        path: sig_path,
                        key: hex::encode(key),
                        trusted: trusted_list(),
                    });
                }
                Err(e @ SignatureError::Malformed(_)) => return Err(tampered(&sig_path, e.to_string())),
                Err(e @ SignatureError::Mismatch(..)) => {
                    return Err(tampered(&manifest_path, format!("{e} ({})", sig_path.display())));
                }
            },
        }
        if let Some(v) = &verified {
            let found = signer.map(|k| hex::encode(k.as_bytes()));
            let recorded = v.signer.as_ref().map(|k| k.to_ascii_lowercase());
            if found != recorded {
                let reason = match (&recorded, &found) {
                    (Some(want), None) => format!(
                        "the file is missing, but {} recorded a signature by key {want} when the release was unpacked",
                        verified_path.display()
                    ),
                    (None, Some(key)) => format!(
                        "the release was unpacked unsigned ({} records no signer), but it now has a signature by key {key}",
                        verified_path.display()
                    ),
                    (want, key) => format!(
                        "it is signed by key {}, but {} recorded key {} when the release was unpacked",
                        key.as_deref().unwrap_or("none"),
                        verified_path.display(),
                        want.as_deref().unwrap_or("none")
                    ),
                };
                return Err(tampered(&sig_path, reason));
            }
        }

        // The manifest.
        let manifest_text = String::from_utf8(manifest_bytes)
            .map_err(|_| tampered(&manifest_path, "it is not UTF-8 text".into()))?;
        let manifest = Manifest::parse(&manifest_text, &manifest_path)
            .map_err(|e| tampered(&manifest_path, format!("it is not a valid manifest: {e}")))?;
        if manifest.release.name != name || &manifest.release.version != version {
            return Err(tampered(
                &manifest_path,
                format!("it is the manifest of {} {}", manifest.release.name, manifest.release.version),
            ));
        }
        let mut wanted = BTreeMap::new();
        for m in &manifest.modules {
            let sha256 = m.sha256.as_deref().map(str::to_ascii_lowercase).unwrap_or_default();
            if !is_sha256(&sha256) {
                return Err(tampered(
                    &manifest_path,
                    format!("module {} has no sha256 (64 hex digits)", m.name),
                ));
            }
            wanted.insert(m.name.clone(), sha256);
        }

        // modules.json agrees with it.
        let modules_path = dir.join(MODULES_FILE);
        let modules_bytes = read_release_file(&release, &modules_path)?
            .ok_or_else(|| tampered(&modules_path, "the file is missing".into()))?;
        let modules: BTreeMap<String, String> = serde_json::from_slice(&modules_bytes)
            .map_err(|e| tampered(&modules_path, format!("it is not a JSON map of module to sha256: {e}")))?;
        let modules: BTreeMap<String, String> =
            modules.into_iter().map(|(m, s)| (m, s.to_ascii_lowercase())).collect();
        if modules != wanted {
            let differ: Vec<String> = wanted
                .keys()
                .chain(modules.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|m| wanted.get(*m) != modules.get(*m))
                .map(|m| {
                    format!(
                        "module {m}: release.toml says {}, modules.json {}",
                        wanted.get(m).map_or("nothing", String::as_str),
                        modules.get(m).map_or("nothing", String::as_str)
                    )
                })
                .collect();
            return Err(tampered(
                &modules_path,
                format!("it does not agree with release.toml ({})", differ.join("; ")),
            ));
        }

        // Every library is there and is what the manifest hashed.
        let mut libraries = Vec::with_capacity(manifest.modules.len());
        for m in &manifest.modules {
            let expected = &wanted[&m.name];
            let path = self.library_path(expected);
            let bytes = read_release_file(&release, &path)?
                .ok_or_else(|| tampered(&path, format!("the library of module {} is missing", m.name)))?;
            let actual = hex::encode(Sha256::digest(&bytes));
            if &actual != expected {
                return Err(tampered(
                    &path,
                    format!(
                        "the library of module {} has sha256 {actual}, but release.toml says {expected}",
                        m.name
                    ),
                ));
            }
            libraries.push(Library { module: m.name.clone(), sha256: actual, bytes });
        }

        Ok(archive::Contents {
            manifest,
            manifest_text,
            signature,
            signature_file,
            signer,
            trusted: is_trusted,
            libraries,
        })
    }

    /// Adds a release as unpacked: checks every name and every library's
    /// sha256 (`libraries` are `(module, sha256 hex, bytes)`), then writes
    /// the libraries to `code/` (skipping those already there with the
    /// right content), the release directory (`release.toml` = the
    /// `manifest_text`, `modules.json`, `verified.json` with the manifest's
    /// sha256 and no signer), and last the state file. Nothing is written if
    /// a check fails. Returns the release directory. Prefer
    /// [`Store::add_verified`], which keeps the archive's signature.
    ///
    /// # Errors
    ///
    /// [`StoreError::ReadOnly`], [`StoreError::InvalidName`],
    /// [`StoreError::AlreadyUnpacked`], [`StoreError::InvalidChecksum`],
    /// [`StoreError::ChecksumMismatch`], [`StoreError::DuplicateModule`]
    /// (nothing written for any of these), [`StoreError::Io`].
    pub fn add_unpacked(
        &mut self,
        name: &str,
        version: &Version,
        manifest_text: &str,
        libraries: &[(String, String, Vec<u8>)],
    ) -> Result<PathBuf, StoreError> {
        let libraries: Vec<(&str, &str, &[u8])> =
            libraries.iter().map(|(m, s, b)| (m.as_str(), s.as_str(), b.as_slice())).collect();
        self.add_release(name, version, manifest_text, &libraries, None, None)
    }

    /// Adds the verified contents of an archive (what
    /// [`crate::archive::read`] returned) as an unpacked release, as
    /// [`Store::add_unpacked`] does, and keeps what was verified: the
    /// release directory also gets `release.sig` (the archive's signature
    /// file, byte for byte, if it was signed) and `verified.json` (the
    /// sha256 of `release.toml` and the signer's key), which
    /// [`Store::verify_release`] checks before a node boots the release.
    /// Checks first that `contents` agree with themselves (the manifest text
    /// parses to the manifest, one library per module with the manifest's
    /// sha256, the signature file is valid for the signer). Nothing is
    /// written if a check fails. Returns the release directory.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidContents`] if `contents` are inconsistent, and
    /// every error of [`Store::add_unpacked`].
    pub fn add_verified(&mut self, contents: &archive::Contents) -> Result<PathBuf, StoreError> {
        self.writable()?;
        let name = &contents.manifest.release.name;
        let version = &contents.manifest.release.version;
        self.check_name("release", name)?;
        let invalid = |reason: String| StoreError::InvalidContents {
            root: self.root.clone(),
            release: label(name, version),
            reason,
        };
        match Manifest::parse(&contents.manifest_text, Path::new(MANIFEST_FILE)) {
            Ok(parsed) if parsed == contents.manifest => {}
            Ok(_) => return Err(invalid("the manifest text does not parse to the manifest given".into())),
            Err(e) => return Err(invalid(format!("the manifest text does not parse: {e}"))),
        }
        if contents.libraries.len() != contents.manifest.modules.len() {
            return Err(invalid(format!(
                "{} libraries for {} modules",
                contents.libraries.len(),
                contents.manifest.modules.len()
            )));
        }
        for m in &contents.manifest.modules {
            let Some(library) = contents.library(&m.name) else {
                return Err(invalid(format!("module {} has no library", m.name)));
            };
            if !m.sha256.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(&library.sha256)) {
                return Err(invalid(format!(
                    "module {}: the manifest's sha256 is {}, its library's {}",
                    m.name,
                    m.sha256.as_deref().unwrap_or("missing"),
                    library.sha256
                )));
            }
        }
        match (&contents.signature_file, &contents.signer) {
            (None, None) => {}
            (None, Some(_)) => return Err(invalid("a signer but no signature file".into())),
            (Some(file), signer) => {
                let checked = archive::check_signature(file, contents.manifest_text.as_bytes(), None)
                    .map_err(|e| invalid(format!("the signature file is not valid: {e}")))?;
                if signer.as_ref().map(|k| k.as_bytes()) != Some(checked.key.as_bytes()) {
                    return Err(invalid(format!(
                        "the signature file is by key {}, the signer given is {}",
                        hex::encode(checked.key.as_bytes()),
                        signer.map(|k| hex::encode(k.as_bytes())).unwrap_or_else(|| "none".into())
                    )));
                }
            }
        }
        let libraries: Vec<(&str, &str, &[u8])> = contents
            .libraries
            .iter()
            .map(|l| (l.module.as_str(), l.sha256.as_str(), l.bytes.as_slice()))
            .collect();
        self.add_release(
            name,
            version,
            &contents.manifest_text,
            &libraries,
            contents.signature_file.as_deref(),
            contents.signer.as_ref(),
        )
    }

    /// What [`Store::add_unpacked`] and [`Store::add_verified`] share: the
    /// checks, then code/, the release directory (with `release.sig` if
    /// `signature_file`, and `verified.json`), and the state file.
    fn add_release(
        &mut self,
        name: &str,
        version: &Version,
        manifest_text: &str,
        libraries: &[(&str, &str, &[u8])],
        signature_file: Option<&[u8]>,
        signer: Option<&VerifyingKey>,
    ) -> Result<PathBuf, StoreError> {
        self.writable()?;
        self.check_name("release", name)?;
        let release = label(name, version);
        if let Some(existing) = self.state.find(name, version) {
            return Err(StoreError::AlreadyUnpacked {
                root: self.root.clone(),
                release,
                state: existing.state,
            });
        }
        let mut modules = BTreeMap::new();
        for &(module, sha256, bytes) in libraries {
            self.check_name("module", module)?;
            let expected = sha256.to_ascii_lowercase();
            if !is_sha256(&expected) {
                return Err(StoreError::InvalidChecksum {
                    root: self.root.clone(),
                    release,
                    module: module.to_string(),
                    sha256: sha256.to_string(),
                });
            }
            let actual = hex::encode(Sha256::digest(bytes));
            if actual != expected {
                return Err(StoreError::ChecksumMismatch {
                    root: self.root.clone(),
                    release,
                    module: module.to_string(),
                    expected,
                    actual,
                });
            }
            if modules.insert(module.to_string(), expected).is_some() {
                return Err(StoreError::DuplicateModule {
                    root: self.root.clone(),
                    release,
                    module: module.to_string(),
                });
            }
        }

        // Every check passed: write the libraries, then the release
        // directory, then the state file.
        let code = self.code_dir();
        let mut written = BTreeSet::new();
        for &(module, _, bytes) in libraries {
            let sha256 = &modules[module];
            if written.insert(sha256.clone()) {
                write_library(&self.library_path(sha256), sha256, bytes)?;
            }
        }
        sync_dir(&code)?;

        let releases = self.root.join("releases");
        let name_dir = releases.join(name);
        if !name_dir.is_dir() {
            fs::create_dir(&name_dir).map_err(io_err("create directory", &name_dir))?;
            sync_dir(&releases)?;
        }
        let dir = self.release_dir(name, version);
        if dir.exists() {
            // Not in the state file: left by a crash during an earlier
            // unpack or remove of this release.
            tracing::warn!(dir = %dir.display(), "replacing a release directory the state file does not list");
            fs::remove_dir_all(&dir).map_err(io_err("remove the unlisted release directory", &dir))?;
        }
        let tmp = name_dir.join(format!(".{version}.tmp"));
        let result = (|| {
            if tmp.exists() {
                fs::remove_dir_all(&tmp).map_err(io_err("remove the leftover directory", &tmp))?;
            }
            fs::create_dir(&tmp).map_err(io_err("create directory", &tmp))?;
            write_synced(&tmp.join(MANIFEST_FILE), manifest_text.as_bytes())?;
            let modules_json =
                serde_json::to_string_pretty(&modules).expect("a map of strings serializes") + "\n";
            write_synced(&tmp.join(MODULES_FILE), modules_json.as_bytes())?;
            if let Some(signature_file) = signature_file {
                write_synced(&tmp.join(SIGNATURE_FILE), signature_file)?;
            }
            let verified = Verified {
                manifest_sha256: hex::encode(Sha256::digest(manifest_text.as_bytes())),
                signer: signer.map(|k| hex::encode(k.as_bytes())),
            };
            let verified_json =
                serde_json::to_string_pretty(&verified).expect("strings and null serialize") + "\n";
            write_synced(&tmp.join(VERIFIED_FILE), verified_json.as_bytes())?;
            sync_dir(&tmp)?;
            fs::rename(&tmp, &dir).map_err(io_err("move the new release directory into place at", &dir))?;
            sync_dir(&name_dir)
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }

        let mut new = self.state.clone();
        new.releases.push(ReleaseInfo {
            name: name.to_string(),
            version: version.clone(),
            state: ReleaseState::Unpacked,
        });
        self.commit(new)?;
        Ok(dir)
    }

    /// Makes a release the one that runs (see the module doc): an unpacked
    /// or old release becomes current; the permanent one stays permanent
    /// (a rollback to it). The previous current release becomes old.
    /// Checks first that the release's files and libraries are there.
    ///
    /// # Errors
    ///
    /// [`StoreError::ReadOnly`], [`StoreError::UnknownRelease`],
    /// [`StoreError::AlreadyInstalled`], [`StoreError::CorruptRelease`] (a
    /// file or library is missing), [`StoreError::Io`].
    pub fn install(&mut self, name: &str, version: &Version) -> Result<(), StoreError> {
        self.writable()?;
        let target = self.known(name, version)?.clone();
        let running = self.running();
        if running.as_ref().is_some_and(|r| r.name == name && &r.version == version) {
            return Err(StoreError::AlreadyInstalled {
                root: self.root.clone(),
                release: label(name, version),
                state: target.state,
            });
        }
        self.check_intact(name, version)?;
        let mut new = self.state.clone();
        for r in &mut new.releases {
            if r.state == ReleaseState::Current {
                r.state = ReleaseState::Old;
            }
        }
        let t = new.find_mut(name, version).expect("checked above");
        if t.state != ReleaseState::Permanent {
            t.state = ReleaseState::Current;
        }
        self.commit(new)
    }

    /// Makes the current release permanent; the previous permanent one
    /// becomes old. The permanent release while it runs is already
    /// permanent: nothing to do. Any other is [`StoreError::NotCurrent`].
    ///
    /// # Errors
    ///
    /// [`StoreError::ReadOnly`], [`StoreError::UnknownRelease`],
    /// [`StoreError::NotCurrent`], [`StoreError::Io`].
    pub fn make_permanent(&mut self, name: &str, version: &Version) -> Result<(), StoreError> {
        self.writable()?;
        let target = self.known(name, version)?.clone();
        match target.state {
            ReleaseState::Current => {}
            ReleaseState::Permanent if self.current().is_none() => return Ok(()),
            state => {
                let hint = match (state, self.current()) {
                    (ReleaseState::Permanent, Some(c)) => format!(
                        "{} {} is current; install {} {} first (a rollback), or make {} {} permanent",
                        c.name, c.version, name, version, c.name, c.version
                    ),
                    _ => "install it first (relive deploy), then make it permanent".to_string(),
                };
                return Err(StoreError::NotCurrent {
                    root: self.root.clone(),
                    release: label(name, version),
                    state,
                    hint,
                });
            }
        }
        let mut new = self.state.clone();
        for r in &mut new.releases {
            if r.state == ReleaseState::Permanent {
                r.state = ReleaseState::Old;
            }
        }
        new.find_mut(name, version).expect("checked above").state = ReleaseState::Permanent;
        self.commit(new)
    }

    /// Removes an unpacked or old release: first from the state file, then
    /// its directory and each library in `code/` that no other release
    /// uses. Refuses the current and the permanent release. (A library a
    /// running node has loaded stays usable after its file is deleted.)
    ///
    /// # Errors
    ///
    /// [`StoreError::ReadOnly`], [`StoreError::UnknownRelease`],
    /// [`StoreError::InUse`] (current or permanent), [`StoreError::Io`].
    pub fn remove(&mut self, name: &str, version: &Version) -> Result<(), StoreError> {
        self.writable()?;
        let target = self.known(name, version)?.clone();
        let hint = match target.state {
            ReleaseState::Current => Some("install another release first (a rollback), then remove it"),
            ReleaseState::Permanent => Some("make another release permanent first, then remove it"),
            ReleaseState::Unpacked | ReleaseState::Old => None,
        };
        if let Some(hint) = hint {
            return Err(StoreError::InUse {
                root: self.root.clone(),
                release: label(name, version),
                state: target.state,
                hint: hint.to_string(),
            });
        }

        // Which libraries only this release uses. A modules.json that
        // cannot be read frees nothing (its references are unknown).
        let mut unshared: BTreeSet<String> = match self.read_modules(name, version) {
            Ok(modules) => modules.into_values().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "removing a release whose module list is unreadable; its libraries stay");
                BTreeSet::new()
            }
        };
        for other in &self.state.releases {
            if other.name == name && &other.version == version {
                continue;
            }
            match self.read_modules(&other.name, &other.version) {
                Ok(modules) => {
                    for sha256 in modules.values() {
                        unshared.remove(sha256);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "another release's module list is unreadable; no library is freed");
                    unshared.clear();
                    break;
                }
            }
        }

        let mut new = self.state.clone();
        new.releases.retain(|r| !(r.name == name && &r.version == version));
        self.commit(new)?;

        let dir = self.release_dir(name, version);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove the release directory", &dir)(e));
            }
            _ => {}
        }
        let name_dir = self.root.join("releases").join(name);
        if name_dir.is_dir() {
            sync_dir(&name_dir)?;
        }
        if fs::remove_dir(&name_dir).is_ok() {
            // It was empty: that was this name's last version.
            sync_dir(&self.root.join("releases"))?;
        }
        for sha256 in &unshared {
            let path = self.library_path(sha256);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("remove the library", &path)(e));
                }
                _ => {}
            }
        }
        sync_dir(&self.code_dir())
    }

    /// Removes the unpacked and old releases of application `name` except
    /// the newest `keep` of them (by semver), each as [`Store::remove`]
    /// does (state file first, then its directory and the libraries no
    /// other release uses). The current and the permanent release are
    /// never touched and do not count towards `keep`, nor are the versions
    /// in `spare` (a node spares what its rollback returns to). Returns what was
    /// removed, oldest first (empty if there was nothing to remove).
    ///
    /// # Errors
    ///
    /// [`StoreError::ReadOnly`], [`StoreError::InvalidName`], and the
    /// errors of [`Store::remove`]. On an error the releases removed before
    /// it stay removed (the state file lists what is left).
    pub fn prune(
        &mut self,
        name: &str,
        keep: usize,
        spare: &[Version],
    ) -> Result<Vec<ReleaseInfo>, StoreError> {
        self.writable()?;
        self.check_name("release", name)?;
        let mut candidates: Vec<ReleaseInfo> = self
            .state
            .releases
            .iter()
            .filter(|r| r.name == name && matches!(r.state, ReleaseState::Unpacked | ReleaseState::Old))
            // A node spares what its rollback returns to.
            .filter(|r| !spare.contains(&r.version))
            .cloned()
            .collect();
        candidates.sort_by(|a, b| a.version.cmp(&b.version));
        let surplus = candidates.len().saturating_sub(keep);
        let mut removed = Vec::with_capacity(surplus);
        for r in candidates.into_iter().take(surplus) {
            self.remove(&r.name, &r.version)?;
            removed.push(r);
        }
        Ok(removed)
    }

    /// Test hook, for crash tests only: the next state change of this
    /// handle kills its own process with SIGKILL after the temp state file
    /// is written and fsynced, before it is renamed over the state file.
    #[doc(hidden)]
    pub fn crash_before_state_rename_for_tests(&mut self) {
        self.crash_before_state_rename = true;
    }

    fn writable(&self) -> Result<(), StoreError> {
        if self.lock.is_some() { Ok(()) } else { Err(StoreError::ReadOnly { root: self.root.clone() }) }
    }

    fn check_name(&self, what: &'static str, name: &str) -> Result<(), StoreError> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(StoreError::InvalidName { root: self.root.clone(), what, name: name.to_string() })
        }
    }

    fn known(&self, name: &str, version: &Version) -> Result<&ReleaseInfo, StoreError> {
        self.state.find(name, version).ok_or_else(|| {
            let known: Vec<String> = self.which_releases().iter().map(|r| r.to_string()).collect();
            StoreError::UnknownRelease {
                root: self.root.clone(),
                release: label(name, version),
                known: if known.is_empty() { "no releases".to_string() } else { known.join(", ") },
            }
        })
    }

    fn read_modules(&self, name: &str, version: &Version) -> Result<BTreeMap<String, String>, StoreError> {
        let path = self.release_dir(name, version).join(MODULES_FILE);
        let corrupt = |reason: String| StoreError::CorruptRelease {
            release: label(name, version),
            path: path.clone(),
            reason,
        };
        let text = fs::read_to_string(&path).map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))
    }

    /// The release's files and every library it names are there.
    fn check_intact(&self, name: &str, version: &Version) -> Result<(), StoreError> {
        let dir = self.release_dir(name, version);
        let manifest = dir.join(MANIFEST_FILE);
        if !manifest.is_file() {
            return Err(StoreError::CorruptRelease {
                release: label(name, version),
                path: manifest,
                reason: "missing".to_string(),
            });
        }
        for (module, sha256) in self.read_modules(name, version)? {
            let path = self.library_path(&sha256);
            if !path.is_file() {
                return Err(StoreError::CorruptRelease {
                    release: label(name, version),
                    path,
                    reason: format!("the library of module {module} is missing"),
                });
            }
        }
        Ok(())
    }

    /// Replaces the state file atomically with `new`, then adopts it.
    fn commit(&mut self, mut new: StateFile) -> Result<(), StoreError> {
        new.releases.sort();
        debug_assert_eq!(new.check(), Ok(()));
        write_state(&self.root, &new, self.crash_before_state_rename)?;
        self.state = new;
        Ok(())
    }
}

fn label(name: &str, version: &Version) -> String {
    format!("{name} {version}")
}

/// 64 hex digits.
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The bytes of a file of release `release` (its directory's files, or a
/// library in `code/`), read as an archive is: only a regular file, at most
/// [`MAX_FILE_BYTES`]. `None`: the file does not exist.
fn read_release_file(release: &str, path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let tampered = |reason: String| StoreError::Tampered {
        release: release.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    match bounded::read_regular(path, MAX_FILE_BYTES) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(ReadError::Io(source)) => {
            Err(StoreError::Io { action: "read", path: path.to_path_buf(), source })
        }
        Err(ReadError::NotAFile(what)) => Err(tampered(format!("it is {what}, not a regular file"))),
        Err(ReadError::TooLarge { .. }) => Err(tampered(format!(
            "it is larger than {}, more than any release archive holds",
            bounded::human_size(MAX_FILE_BYTES)
        ))),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { action, path, source }
}

/// Takes the exclusive lock on `ROOT/store.lock` and writes our pid in it
/// (for the error another process gets).
fn lock_store(root: &Path) -> Result<File, StoreError> {
    let path = root.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open the lock file", &path))?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return Err(StoreError::Locked { root: root.to_path_buf(), holder });
        }
        Err(fs4::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
    }
    let pid = std::process::id().to_string();
    file.set_len(0).map_err(io_err("write", &path))?;
    (&file).write_all(pid.as_bytes()).map_err(io_err("write", &path))?;
    Ok(file)
}

/// Deletes what a crash may have left: the temp state file, temp
/// libraries, half-built release directories.
fn clean_temp_files(root: &Path) -> Result<(), StoreError> {
    let is_temp = |p: &Path| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
    };
    let state_tmp = root.join(STATE_TMP);
    if state_tmp.exists() {
        tracing::warn!(path = %state_tmp.display(), "deleting the temp state file an interrupted change left");
        fs::remove_file(&state_tmp).map_err(io_err("remove", &state_tmp))?;
    }
    let mut temps = Vec::new();
    for entry in read_dir(&root.join("code"))? {
        if is_temp(&entry) {
            temps.push(entry);
        }
    }
    for name_dir in read_dir(&root.join("releases"))? {
        if name_dir.is_dir() {
            temps.extend(read_dir(&name_dir)?.into_iter().filter(|p| is_temp(p)));
        }
    }
    for temp in temps {
        tracing::warn!(path = %temp.display(), "deleting a temp file an interrupted change left");
        let removed = if temp.is_dir() { fs::remove_dir_all(&temp) } else { fs::remove_file(&temp) };
        removed.map_err(io_err("remove", &temp))?;
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.path()).map_err(io_err("list", dir))).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("list", dir)(e)),
    }
}

/// Reads and checks the state file; `None` if there is none and no
/// release directory either (a new store).
fn load_state(root: &Path) -> Result<Option<StateFile>, StoreError> {
    let path = root.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return if read_dir(&root.join("releases"))?.is_empty() {
                Ok(None)
            } else {
                Err(StoreError::StateMissing { root: root.to_path_buf(), path })
            };
        }
        Err(e) => return Err(io_err("read the state file", &path)(e)),
    };
    let corrupt = |reason: String| StoreError::CorruptState { path: path.clone(), reason };
    let mut state: StateFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    state.check().map_err(corrupt)?;
    state.releases.sort();
    Ok(Some(state))
}

/// Writes `state` to the temp file, fsyncs it, renames it over the state
/// file and fsyncs the root. `crash`: the test hook.
fn write_state(root: &Path, state: &StateFile, crash: bool) -> Result<(), StoreError> {
    let text = serde_json::to_string_pretty(state).expect("the state serializes") + "\n";
    let tmp = root.join(STATE_TMP);
    let path = root.join(STATE_FILE);
    write_synced(&tmp, text.as_bytes())?;
    if crash {
        kill_self();
    }
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("replace the state file", &path)(e));
    }
    sync_dir(root)
}

/// The crash hook: SIGKILL this process, as a power cut or `kill -9` would
/// (no destructor, no buffered write, no cleanup runs).
fn kill_self() -> ! {
    #[cfg(unix)]
    {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // The signal may take a moment to land (seconds on a machine
        // loaded with other work): wait for it rather than abort.
        for _ in 0..60 {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    std::process::abort()
}

/// Writes `path` (`<sha256>.so`) atomically unless it is already there with
/// this content.
fn write_library(path: &Path, sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
    if let Ok(existing) = fs::read(path) {
        if hex::encode(Sha256::digest(&existing)) == sha256 {
            return Ok(());
        }
        tracing::warn!(path = %path.display(), "replacing a library whose content does not match its name");
    }
    let dir = path.parent().expect("a library path has a directory");
    let tmp = dir.join(format!(".{sha256}.so.tmp"));
    let result = write_synced(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("move the library into place at", path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates (or truncates) `path`, writes `bytes` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = File::create(path).map_err(io_err("create", path))?;
    file.write_all(bytes).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

/// Fsyncs a directory, so that the names created or renamed in it last.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync the directory", dir))
}
