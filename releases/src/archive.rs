//! Release archives: `<name>-<version>.tar.gz`, and the ed25519 keys that
//! sign them.
//!
//! This module owns the archive format, writing one ([`build`]), reading
//! and verifying one ([`read`], [`read_limited`], [`verify_bytes`]),
//! describing one ([`inspect`], [`Summary`]), and the key files
//! ([`generate_key`], [`load_signing_key`], [`load_verifying_key`]).
//!
//! # Format
//!
//! A gzip-compressed tar (GNU headers) holding, in this order:
//! - `release.toml`: the manifest, with each module's `sha256` and
//!   `file = "lib/<module>.so"` filled in;
//! - `release.sig` (only if signed): one line
//!   `ed25519 <public key, 64 hex> <signature, 128 hex>`, the signature being
//!   over the exact bytes of `release.toml`. Since `release.toml` carries
//!   every library's sha256, it signs everything;
//! - `lib/<module>.so` for each module, in manifest order.
//!
//! Entries are deterministic: mode 0644, mtime 0, uid/gid 0, no owner names,
//! gzip header mtime 0; the same inputs give the same bytes.
//!
//! # Reading the file
//!
//! Nothing at the archive's path can wedge [`read_limited`] (and [`read`],
//! which is [`read_limited`] with [`DEFAULT_MAX_ARCHIVE_BYTES`]): it opens
//! the path with `O_NONBLOCK` (a FIFO with no writer does not block the
//! open), `fstat`s the open file, and refuses anything but a regular file
//! ([`ErrorKind::NotAFile`]: a directory, a FIFO, a character device such
//! as `/dev/zero`, a socket, a block device) and a file larger than the cap
//! ([`ErrorKind::TooLarge`]) before it reads a byte. It then reads at most
//! the cap plus one byte, so a file that grows while it is read is refused
//! too, and verifies the bytes in memory with [`verify_bytes`], the one
//! verification path.
//!
//! # Invariants of [`read`]
//!
//! It reads the whole archive into memory (at most the cap, and at most
//! [`MAX_UNPACKED_BYTES`] once decompressed) and returns [`Contents`] only
//! when all of these hold, so that a caller can write the contents anywhere
//! without further checks:
//! - the gzip stream and the tar are well formed and complete;
//! - every entry is a regular file. A directory entry named exactly `lib/`
//!   is skipped (as `tar` itself would write one); every other directory,
//!   symlink, hard link, device, fifo or other entry type is refused;
//! - no entry path is absolute or has a `..` component, and no path appears
//!   twice;
//! - the only entries are `release.toml`, `release.sig` and `lib/<m>.so`
//!   for the manifest's modules, spelt exactly so (no `./` prefix);
//! - the manifest is valid (see [`crate::manifest`]), names every module's
//!   `file` as `lib/<module>.so` and gives its sha256, every module's
//!   library is present, and its sha256 matches;
//! - if `release.sig` is present, its signature over `release.toml` is valid
//!   for the key it names (even when no trusted keys are given: a signature
//!   that does not match means the archive was changed), and when trusted
//!   keys are given, that key is one of them; if signatures are required,
//!   `release.sig` is present and trusted keys are given.
//!
//! # Keys
//!
//! A private key file holds the 32-byte ed25519 secret as 64 hex digits and
//! a newline, mode 0600; a public key file the 32-byte public key as 64 hex
//! digits. Loading accepts either 64 hex digits (surrounding whitespace
//! ignored) or exactly 32 raw bytes. New keys come from `/dev/urandom`.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bounded::{self, ReadError};
use crate::manifest::{Manifest, Process};

/// The manifest's entry name.
pub const MANIFEST_ENTRY: &str = "release.toml";
/// The signature's entry name.
pub const SIGNATURE_ENTRY: &str = "release.sig";
/// The most bytes an archive may hold once decompressed.
pub const MAX_UNPACKED_BYTES: u64 = 1 << 30;
/// The largest archive file [`read`] reads (256 MiB); [`read_limited`]
/// takes another cap (the node's `--max-archive-size`).
pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 256 * 1024 * 1024;

/// The entry name of `module`'s library: `lib/<module>.so`.
pub fn library_entry(module: &str) -> String {
    format!("lib/{module}.so")
}

/// The file name of a release's archive: `<name>-<version>.tar.gz`.
pub fn archive_file_name(manifest: &Manifest) -> String {
    format!("{}-{}.tar.gz", manifest.release.name, manifest.release.version)
}

/// What is wrong with an archive or a key; see [`ArchiveError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A file could not be read or written.
    Io,
    /// The gzip stream or the tar is malformed or truncated.
    Corrupt,
    /// The archive file is larger than the cap given to [`read_limited`]
    /// (or grew past it while it was read), or it decompresses to more
    /// than [`MAX_UNPACKED_BYTES`].
    TooLarge,
    /// The archive's path is not a regular file: a directory, a FIFO, a
    /// character device such as `/dev/zero`, a socket, a block device.
    NotAFile,
    /// An entry is not a regular file (symlink, hard link, device, fifo,
    /// directory other than `lib/`, ...).
    NotRegularFile,
    /// An entry's path is absolute.
    AbsolutePath,
    /// An entry's path has a `..` component.
    ParentDir,
    /// An entry that is not `release.toml`, `release.sig` or the library of
    /// one of the manifest's modules.
    UnknownEntry,
    /// Two entries with the same path.
    DuplicateEntry,
    /// No `release.toml`.
    MissingManifest,
    /// `release.toml` is not a valid archive manifest.
    InvalidManifest,
    /// A module of the manifest has no library in the archive.
    MissingLibrary,
    /// A library's sha256 differs from the manifest's.
    ChecksumMismatch,
    /// Signatures are required and the archive has none.
    Unsigned,
    /// Signatures are required and no trusted key was given.
    NoTrustedKeys,
    /// `release.sig` is malformed, or its signature does not match
    /// `release.toml`.
    BadSignature,
    /// The archive is signed by a key that is not trusted.
    UntrustedSigner,
    /// A key file is malformed.
    Key,
    /// [`build`] was given libraries that do not match the manifest.
    Build,
}

impl ErrorKind {
    /// What to do about it.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::Io => "check the path and its permissions",
            ErrorKind::Corrupt => {
                "the archive is damaged or incomplete: copy it again or rebuild it with \
                 `relive release build`"
            }
            ErrorKind::TooLarge => "a release archive this large is refused; check its source",
            ErrorKind::NotAFile => {
                "nothing was read from it; give the path of a release archive file \
                 (<name>-<version>.tar.gz, made by `relive release build`)"
            }
            ErrorKind::NotRegularFile
            | ErrorKind::AbsolutePath
            | ErrorKind::ParentDir
            | ErrorKind::UnknownEntry
            | ErrorKind::DuplicateEntry => {
                "an archive holds only regular files release.toml, release.sig and \
                 lib/<module>.so; nothing was written; do not trust this archive, rebuild \
                 it with `relive release build`"
            }
            ErrorKind::MissingManifest | ErrorKind::InvalidManifest | ErrorKind::MissingLibrary => {
                "this is not a complete release archive; rebuild it with `relive release build`"
            }
            ErrorKind::ChecksumMismatch => {
                "the library was changed after the archive was built; do not trust this \
                 archive, rebuild it or fetch it again"
            }
            ErrorKind::Unsigned => "sign it (`relive release build --sign KEY`) or do not require signatures",
            ErrorKind::NoTrustedKeys => "add the signers' public keys to the trusted keys",
            ErrorKind::BadSignature => {
                "the archive was changed after it was signed; do not trust it, rebuild and \
                 sign it again"
            }
            ErrorKind::UntrustedSigner => {
                "if you trust this signer, add its public key to the trusted keys; otherwise \
                 do not use this archive"
            }
            ErrorKind::Key => {
                "a key file holds 64 hex digits or 32 raw bytes; make one with \
                 `relive release keygen`"
            }
            ErrorKind::Build => "give exactly one built library for each [[module]]",
        }
    }
}

/// An archive or key that cannot be read, written or trusted; its message
/// names the file, the entry (if any), the problem and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}; {}", path.display(), entry_suffix(entry), kind.hint())]
pub struct ArchiveError {
    /// The archive (or key file, or library given to [`build`]).
    pub path: PathBuf,
    /// The entry inside the archive, when the problem is about one.
    pub entry: Option<String>,
    /// What kind of problem it is.
    pub kind: ErrorKind,
    /// What is wrong.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

fn entry_suffix(entry: &Option<String>) -> String {
    entry.as_ref().map(|e| format!(": entry `{e}`")).unwrap_or_default()
}

/// The `Result` of this module.
pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn err(path: &Path, entry: Option<&str>, kind: ErrorKind, message: impl Into<String>) -> ArchiveError {
    ArchiveError {
        path: path.to_path_buf(),
        entry: entry.map(str::to_string),
        kind,
        message: message.into(),
        source: None,
    }
}

fn io_err(path: &Path, what: &str, e: io::Error) -> ArchiveError {
    ArchiveError {
        path: path.to_path_buf(),
        entry: None,
        kind: ErrorKind::Io,
        message: format!("cannot {what}: {e}"),
        source: Some(Box::new(e)),
    }
}

/// The sha256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------- build

/// Writes `<out_dir>/<name>-<version>.tar.gz` (see the module doc) and
/// returns its path. `libraries` gives the built library of each module
/// (`(module name, path)`, exactly one per module of `manifest`); a
/// relative library path is taken relative to `manifest_dir`. The archive
/// is written atomically: a temporary file in `out_dir` (created if
/// missing), fsync, rename, fsync of the directory; an existing archive of
/// the same name is replaced.
///
/// # Errors
///
/// [`ErrorKind::Build`] if `libraries` do not give exactly one library per
/// module, [`ErrorKind::InvalidManifest`] if the manifest with the
/// checksums filled in does not serialize or parse back, [`ErrorKind::Io`]
/// if a library cannot be read or the archive cannot be written.
pub fn build(
    manifest: &Manifest,
    manifest_dir: &Path,
    libraries: &[(String, PathBuf)],
    out_dir: &Path,
    signing_key: Option<&SigningKey>,
) -> Result<PathBuf> {
    build_with(
        manifest,
        manifest_dir,
        libraries,
        out_dir,
        BuildOptions { signing_key, ..BuildOptions::default() },
    )
}

/// How [`build_with`] writes an archive.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildOptions<'a> {
    /// Sign `release.toml` with this key (writes `release.sig`).
    pub signing_key: Option<&'a SigningKey>,
    /// The gzip level.
    pub compression: ArchiveCompression,
}

/// The gzip level of an archive. Both read the same; the level changes
/// only the size and the time to write it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArchiveCompression {
    /// zlib's default level (6): releases that are shipped and kept.
    #[default]
    Default,
    /// The fastest level (1): development builds (`relive watch`), whose
    /// unoptimized libraries are large and live only minutes.
    Fast,
}

/// [`build`] with [`BuildOptions`].
///
/// # Errors
///
/// As [`build`].
pub fn build_with(
    manifest: &Manifest,
    manifest_dir: &Path,
    libraries: &[(String, PathBuf)],
    out_dir: &Path,
    options: BuildOptions<'_>,
) -> Result<PathBuf> {
    let BuildOptions { signing_key, compression } = options;
    let out = out_dir.join(archive_file_name(manifest));
    let manifest_path = manifest_dir.join(MANIFEST_ENTRY);

    // One library per module, none for anything else.
    let mut seen = HashSet::new();
    for (module, path) in libraries {
        if manifest.module(module).is_none() {
            return Err(err(
                path,
                None,
                ErrorKind::Build,
                format!(
                    "a library was given for module {module:?}, which {} does not declare",
                    manifest_path.display()
                ),
            ));
        }
        if !seen.insert(module.as_str()) {
            return Err(err(
                path,
                None,
                ErrorKind::Build,
                format!("two libraries were given for module {module:?}"),
            ));
        }
    }

    let mut archived = manifest.clone();
    let mut libs = Vec::with_capacity(manifest.modules.len());
    for module in &mut archived.modules {
        let Some((_, path)) = libraries.iter().find(|(m, _)| *m == module.name) else {
            return Err(err(
                &manifest_path,
                None,
                ErrorKind::Build,
                format!("no library was given for module {:?}", module.name),
            ));
        };
        let path = manifest_dir.join(path);
        let bytes = fs::read(&path).map_err(|e| io_err(&path, "read the library", e))?;
        module.sha256 = Some(sha256_hex(&bytes));
        module.file = Some(PathBuf::from(library_entry(&module.name)));
        libs.push((library_entry(&module.name), bytes));
    }
    let text = archived.to_toml_string().map_err(|e| ArchiveError {
        path: manifest_path.clone(),
        entry: None,
        kind: ErrorKind::InvalidManifest,
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    // What we write must be what `read` accepts.
    Manifest::parse(&text, Path::new(MANIFEST_ENTRY)).map_err(|e| ArchiveError {
        path: manifest_path.clone(),
        entry: None,
        kind: ErrorKind::InvalidManifest,
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;

    let mut entries: Vec<(String, Vec<u8>)> = Vec::with_capacity(libs.len() + 2);
    entries.push((MANIFEST_ENTRY.into(), text.clone().into_bytes()));
    if let Some(key) = signing_key {
        entries.push((SIGNATURE_ENTRY.into(), signature_file(key, text.as_bytes()).into_bytes()));
    }
    entries.extend(libs);

    let tar = tar_bytes(&entries).map_err(|e| io_err(&out, "write the tar", e))?;

    fs::create_dir_all(out_dir).map_err(|e| io_err(out_dir, "create the output directory", e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".relive-archive-")
        .suffix(".tmp")
        .tempfile_in(out_dir)
        .map_err(|e| io_err(out_dir, "create a temporary file", e))?;
    let level = match compression {
        ArchiveCompression::Default => Compression::default(),
        ArchiveCompression::Fast => Compression::fast(),
    };
    let mut gz = GzEncoder::new(tmp.as_file_mut(), level);
    gz.write_all(&tar).map_err(|e| io_err(&out, "write the archive", e))?;
    gz.finish().map_err(|e| io_err(&out, "write the archive", e))?;
    tmp.as_file().sync_all().map_err(|e| io_err(&out, "fsync the archive", e))?;
    tmp.persist(&out).map_err(|e| io_err(&out, "rename the archive into place", e.error))?;
    sync_dir(out_dir).map_err(|e| io_err(out_dir, "fsync the output directory", e))?;
    Ok(out)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    fs::File::open(dir)?.sync_all()
}

/// A tar of `entries` with deterministic headers.
fn tar_bytes(entries: &[(String, Vec<u8>)]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, name, data.as_slice())?;
    }
    builder.into_inner()
}

/// The text of `release.sig` for `message` signed by `key`.
fn signature_file(key: &SigningKey, message: &[u8]) -> String {
    let signature = key.sign(message);
    format!("ed25519 {} {}\n", hex::encode(key.verifying_key().as_bytes()), hex::encode(signature.to_bytes()))
}

/// Parses `release.sig`: the signer's key and the signature.
fn parse_signature_file(text: &[u8]) -> std::result::Result<(VerifyingKey, Signature), String> {
    let text = std::str::from_utf8(text).map_err(|_| "it is not UTF-8 text".to_string())?;
    let mut words = text.split_whitespace();
    let (Some("ed25519"), Some(key), Some(sig), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err("it is not one line `ed25519 <public key hex> <signature hex>`".into());
    };
    let key: [u8; 32] =
        hex::decode(key).ok().and_then(|b| b.try_into().ok()).ok_or("its public key is not 64 hex digits")?;
    let key = VerifyingKey::from_bytes(&key).map_err(|e| format!("its public key is invalid: {e}"))?;
    let sig: [u8; 64] =
        hex::decode(sig).ok().and_then(|b| b.try_into().ok()).ok_or("its signature is not 128 hex digits")?;
    Ok((key, Signature::from_bytes(&sig)))
}

/// Why a `release.sig` was refused by [`check_signature`].
#[derive(Debug)]
pub(crate) enum SignatureError {
    /// It is not one line `ed25519 <public key hex> <signature hex>`.
    Malformed(String),
    /// It was made by this key (its 32 bytes), which is not one of the
    /// trusted keys.
    Untrusted([u8; 32]),
    /// The signature by this key (its 32 bytes) does not match the message.
    Mismatch([u8; 32], ed25519_dalek::SignatureError),
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Malformed(m) => write!(f, "malformed signature: {m}"),
            SignatureError::Untrusted(key) => {
                write!(f, "signed by key {}, which is not trusted", hex::encode(key))
            }
            SignatureError::Mismatch(key, _) => {
                write!(f, "the signature by key {} does not match release.toml", hex::encode(key))
            }
        }
    }
}

/// A `release.sig` that [`check_signature`] accepted.
#[derive(Debug)]
pub(crate) struct CheckedSignature {
    /// The key that made it.
    pub(crate) key: VerifyingKey,
    /// The signature.
    pub(crate) signature: Signature,
    /// Whether `key` is one of the trusted keys given.
    pub(crate) trusted: bool,
}

/// Checks `sig_file` (the bytes of a `release.sig`) over `message` (the
/// bytes of `release.toml`): it must parse; when `trusted` is given, its key
/// must be one of them (so `Some(&[])` trusts no key); and its signature
/// must be valid for its key, trusted keys or not (a signature that does
/// not match means the manifest was changed). The one signature check of
/// the archive reader and the store.
pub(crate) fn check_signature(
    sig_file: &[u8],
    message: &[u8],
    trusted: Option<&[VerifyingKey]>,
) -> std::result::Result<CheckedSignature, SignatureError> {
    let (key, signature) = parse_signature_file(sig_file).map_err(SignatureError::Malformed)?;
    let mut is_trusted = false;
    if let Some(trusted) = trusted {
        if !trusted.iter().any(|t| t.as_bytes() == key.as_bytes()) {
            return Err(SignatureError::Untrusted(key.to_bytes()));
        }
        is_trusted = true;
    }
    key.verify_strict(message, &signature).map_err(|e| SignatureError::Mismatch(key.to_bytes(), e))?;
    Ok(CheckedSignature { key, signature, trusted: is_trusted })
}

// ---------------------------------------------------------------- read

/// A verified archive's contents (see the invariants in the module doc).
#[derive(Clone, Debug)]
pub struct Contents {
    /// The archive's manifest, with each module's `sha256` and `file`.
    pub manifest: Manifest,
    /// The exact text of `release.toml` (what the signature covers).
    pub manifest_text: String,
    /// The raw 64-byte ed25519 signature over `manifest_text`, if signed.
    pub signature: Option<Vec<u8>>,
    /// The exact bytes of `release.sig` (one line `ed25519 <key> <sig>`), if
    /// signed: what the store keeps beside `release.toml`.
    pub signature_file: Option<Vec<u8>>,
    /// The key that made `signature`, if signed.
    pub signer: Option<VerifyingKey>,
    /// Whether `signer` is one of the trusted keys given to [`read`].
    pub trusted: bool,
    /// Each module's library, in manifest order.
    pub libraries: Vec<Library>,
}

/// One module's library from an archive; `sha256` is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    /// The module's name.
    pub module: String,
    /// The sha256 of `bytes`, 64 lowercase hex digits.
    pub sha256: String,
    /// The library file.
    pub bytes: Vec<u8>,
}

impl Contents {
    /// The library of `module`.
    pub fn library(&self, module: &str) -> Option<&Library> {
        self.libraries.iter().find(|l| l.module == module)
    }
}

/// Reads the archive at `path` into memory and verifies it (every
/// invariant of the module doc) before returning anything: [`read_limited`]
/// with [`DEFAULT_MAX_ARCHIVE_BYTES`]. `trusted`: the keys a signature must
/// be made by, if given; `require_signed`: refuse an archive without a
/// signature by one of `trusted`.
///
/// # Errors
///
/// Every error of [`read_limited`].
pub fn read(path: &Path, trusted: Option<&[VerifyingKey]>, require_signed: bool) -> Result<Contents> {
    read_limited(path, DEFAULT_MAX_ARCHIVE_BYTES, trusted, require_signed)
}

/// Reads the archive at `path`, at most `max_bytes` of it, and verifies it
/// with [`verify_bytes`]. Nothing at `path` can wedge it (see "Reading the
/// file" in the module doc): the path is opened with `O_NONBLOCK`, and
/// what was opened must be a regular file of at most `max_bytes` bytes
/// before a byte is read.
///
/// # Errors
///
/// - [`ErrorKind::Io`]: the path cannot be opened or read (missing,
///   permissions);
/// - [`ErrorKind::NotAFile`]: the path is a directory, a FIFO, a character
///   device (such as `/dev/zero`), a socket or a block device;
/// - [`ErrorKind::TooLarge`]: the file is larger than `max_bytes` (or grew
///   past it while it was read); the message gives its size and the cap;
/// - every error of [`verify_bytes`].
pub fn read_limited(
    path: &Path,
    max_bytes: u64,
    trusted: Option<&[VerifyingKey]>,
    require_signed: bool,
) -> Result<Contents> {
    let compressed = bounded::read_regular(path, max_bytes).map_err(|e| match e {
        ReadError::Io(e) => io_err(path, "read the archive", e),
        ReadError::NotAFile(what) => {
            err(path, None, ErrorKind::NotAFile, format!("the path is {what}, not a regular file"))
        }
        ReadError::TooLarge { size } => {
            let cap = bounded::human_size(max_bytes);
            let size = match size {
                Some(size) => format!("the archive is {}", bounded::human_size(size)),
                None => "the archive grew while it was read".to_string(),
            };
            err(
                path,
                None,
                ErrorKind::TooLarge,
                format!(
                    "{size}, more than the cap of {cap}; nothing was read; if the archive is genuine, \
                     the node option --max-archive-size raises the cap"
                ),
            )
        }
    })?;
    verify_bytes(path, &compressed, trusted, require_signed)
}

/// Verifies an archive held in memory (`compressed`: the bytes of the
/// `.tar.gz`; `path`: where it came from, for messages only) and returns its
/// contents: every invariant of the module doc is checked before anything
/// is returned. [`read`] and [`read_limited`] call this; it is the one
/// verification path. `trusted` and `require_signed` are as for [`read`].
///
/// # Errors
///
/// An [`ArchiveError`] of the kind of the first problem found:
/// [`ErrorKind::Corrupt`], [`ErrorKind::TooLarge`] (decompressed),
/// [`ErrorKind::NotRegularFile`], [`ErrorKind::AbsolutePath`],
/// [`ErrorKind::ParentDir`], [`ErrorKind::UnknownEntry`],
/// [`ErrorKind::DuplicateEntry`], [`ErrorKind::MissingManifest`],
/// [`ErrorKind::InvalidManifest`], [`ErrorKind::MissingLibrary`],
/// [`ErrorKind::ChecksumMismatch`], [`ErrorKind::Unsigned`],
/// [`ErrorKind::NoTrustedKeys`], [`ErrorKind::BadSignature`],
/// [`ErrorKind::UntrustedSigner`].
pub fn verify_bytes(
    path: &Path,
    compressed: &[u8],
    trusted: Option<&[VerifyingKey]>,
    require_signed: bool,
) -> Result<Contents> {
    let tar = gunzip(path, compressed)?;
    let mut entries = tar_entries(path, &tar)?;

    // release.toml and release.sig
    let take = |entries: &mut Vec<(String, Vec<u8>)>, name: &str| {
        entries.iter().position(|(n, _)| n == name).map(|i| entries.remove(i).1)
    };
    let manifest_bytes = take(&mut entries, MANIFEST_ENTRY).ok_or_else(|| {
        err(path, Some(MANIFEST_ENTRY), ErrorKind::MissingManifest, "the archive has no release.toml")
    })?;
    let sig_bytes = take(&mut entries, SIGNATURE_ENTRY);

    if require_signed && trusted.is_none_or(|t| t.is_empty()) {
        return Err(err(
            path,
            Some(SIGNATURE_ENTRY),
            ErrorKind::NoTrustedKeys,
            "signatures are required but no trusted key was given to check them against",
        ));
    }

    // The signature, before anything else reads the manifest.
    let mut signer = None;
    let mut signature = None;
    let mut is_trusted = false;
    match &sig_bytes {
        None if require_signed => {
            return Err(err(
                path,
                Some(SIGNATURE_ENTRY),
                ErrorKind::Unsigned,
                "signatures are required and the archive has no release.sig",
            ));
        }
        None => {}
        Some(bytes) => {
            let checked = check_signature(bytes, &manifest_bytes, trusted).map_err(|e| match e {
                SignatureError::Malformed(m) => err(
                    path,
                    Some(SIGNATURE_ENTRY),
                    ErrorKind::BadSignature,
                    format!("malformed signature: {m}"),
                ),
                SignatureError::Untrusted(key) => err(
                    path,
                    Some(SIGNATURE_ENTRY),
                    ErrorKind::UntrustedSigner,
                    format!("the archive is signed by key {}, which is not trusted", hex::encode(key)),
                ),
                SignatureError::Mismatch(key, e) => ArchiveError {
                    path: path.to_path_buf(),
                    entry: Some(MANIFEST_ENTRY.into()),
                    kind: ErrorKind::BadSignature,
                    message: format!("the signature by key {} does not match release.toml", hex::encode(key)),
                    source: Some(Box::new(e)),
                },
            })?;
            is_trusted = checked.trusted;
            signer = Some(checked.key);
            signature = Some(checked.signature.to_bytes().to_vec());
        }
    }
    // The manifest.
    let manifest_text = String::from_utf8(manifest_bytes).map_err(|_| {
        err(path, Some(MANIFEST_ENTRY), ErrorKind::InvalidManifest, "release.toml is not UTF-8 text")
    })?;
    let manifest = Manifest::parse(&manifest_text, Path::new(MANIFEST_ENTRY)).map_err(|e| ArchiveError {
        path: path.to_path_buf(),
        entry: Some(MANIFEST_ENTRY.into()),
        kind: ErrorKind::InvalidManifest,
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    for m in &manifest.modules {
        let want = library_entry(&m.name);
        if m.file.as_deref() != Some(Path::new(&want)) || m.sha256.is_none() {
            return Err(err(
                path,
                Some(MANIFEST_ENTRY),
                ErrorKind::InvalidManifest,
                format!("module {:?} must have sha256 and file = {want:?} in an archive's manifest", m.name),
            ));
        }
    }

    // Only the manifest's libraries, each present, each matching.
    let wanted: Vec<String> = manifest.modules.iter().map(|m| library_entry(&m.name)).collect();
    if let Some((name, _)) = entries.iter().find(|(n, _)| !wanted.contains(n)) {
        return Err(err(
            path,
            Some(name),
            ErrorKind::UnknownEntry,
            "the entry is not the library of any module of release.toml",
        ));
    }
    let mut libraries = Vec::with_capacity(manifest.modules.len());
    for (m, entry) in manifest.modules.iter().zip(&wanted) {
        let bytes = take(&mut entries, entry).ok_or_else(|| {
            err(
                path,
                Some(entry),
                ErrorKind::MissingLibrary,
                format!("module {:?} has no library in the archive", m.name),
            )
        })?;
        let sha256 = sha256_hex(&bytes);
        let expected = m.sha256.as_deref().unwrap_or_default();
        if !sha256.eq_ignore_ascii_case(expected) {
            return Err(err(
                path,
                Some(entry),
                ErrorKind::ChecksumMismatch,
                format!("its sha256 is {sha256}, release.toml says {expected}"),
            ));
        }
        libraries.push(Library { module: m.name.clone(), sha256, bytes });
    }

    Ok(Contents {
        manifest,
        manifest_text,
        signature,
        signature_file: sig_bytes,
        signer,
        trusted: is_trusted,
        libraries,
    })
}

fn gunzip(path: &Path, compressed: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(compressed).take(MAX_UNPACKED_BYTES + 1).read_to_end(&mut out).map_err(|e| {
        ArchiveError {
            path: path.to_path_buf(),
            entry: None,
            kind: ErrorKind::Corrupt,
            message: format!("not a complete gzip file: {e}"),
            source: Some(Box::new(e)),
        }
    })?;
    if out.len() as u64 > MAX_UNPACKED_BYTES {
        return Err(err(
            path,
            None,
            ErrorKind::TooLarge,
            format!("it decompresses to more than {MAX_UNPACKED_BYTES} bytes"),
        ));
    }
    Ok(out)
}

/// Every entry of `tar`, in order, with the path and type checks of the
/// module doc (names are not yet checked against the manifest, except that
/// anything outside `release.toml`, `release.sig` and `lib/*.so` is
/// refused at once).
fn tar_entries(path: &Path, tar: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let corrupt = |entry: Option<&str>, e: io::Error| ArchiveError {
        path: path.to_path_buf(),
        entry: entry.map(str::to_string),
        kind: ErrorKind::Corrupt,
        message: format!("malformed or truncated tar: {e}"),
        source: Some(Box::new(e)),
    };
    let mut archive = tar::Archive::new(tar);
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut names = HashSet::new();
    for entry in archive.entries().map_err(|e| corrupt(None, e))? {
        let mut entry = entry.map_err(|e| corrupt(None, e))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let at = Some(name.as_str());
        if std::str::from_utf8(&raw).is_err() {
            return Err(err(path, at, ErrorKind::UnknownEntry, "the entry's path is not UTF-8"));
        }
        if name.starts_with('/') || name.starts_with('\\') || name.as_bytes().get(1) == Some(&b':') {
            return Err(err(path, at, ErrorKind::AbsolutePath, "the entry's path is absolute"));
        }
        if name.split(['/', '\\']).any(|c| c == "..") {
            return Err(err(path, at, ErrorKind::ParentDir, "the entry's path has a `..` component"));
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular => {}
            tar::EntryType::Directory if name.trim_end_matches('/') == "lib" => continue,
            other => {
                let what = match other {
                    tar::EntryType::Symlink => "a symbolic link",
                    tar::EntryType::Link => "a hard link",
                    tar::EntryType::Char => "a character device",
                    tar::EntryType::Block => "a block device",
                    tar::EntryType::Fifo => "a fifo",
                    tar::EntryType::Directory => "a directory other than lib/",
                    _ => "not a regular file",
                };
                let target = entry
                    .link_name_bytes()
                    .map(|t| format!(" to {:?}", String::from_utf8_lossy(&t)))
                    .unwrap_or_default();
                return Err(err(
                    path,
                    at,
                    ErrorKind::NotRegularFile,
                    format!(
                        "the entry is {what}{target} (type {:?}); only regular files are allowed",
                        other.as_byte() as char
                    ),
                ));
            }
        }
        let known = name == MANIFEST_ENTRY
            || name == SIGNATURE_ENTRY
            || name
                .strip_prefix("lib/")
                .and_then(|r| r.strip_suffix(".so"))
                .is_some_and(|m| crate::manifest::check_name(m).is_ok());
        if !known {
            return Err(err(
                path,
                at,
                ErrorKind::UnknownEntry,
                "an archive holds only release.toml, release.sig and lib/<module>.so",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(err(path, at, ErrorKind::DuplicateEntry, "the archive has this entry twice"));
        }
        let mut data = Vec::with_capacity(entry.size().min(tar.len() as u64) as usize);
        entry.read_to_end(&mut data).map_err(|e| corrupt(Some(&name), e))?;
        // A tar cut inside an entry's data reads short without an error.
        if data.len() as u64 != entry.size() {
            return Err(corrupt(
                Some(&name),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the entry has {} of its {} bytes", data.len(), entry.size()),
                ),
            ));
        }
        out.push((name, data));
    }
    Ok(out)
}

// ---------------------------------------------------------------- inspect

/// What `relive release inspect` prints: [`fmt::Display`] for people,
/// [`Serialize`] for `--json`. Built only from an archive [`read`]
/// verified, so every entry, checksum and (if signed) the signature
/// against its own key are checked.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The archive's path.
    pub archive: PathBuf,
    /// The release's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its semver requirement on the running version for a live upgrade;
    /// `None`: only a restart.
    pub upgrade_from: Option<String>,
    /// Its modules.
    pub modules: Vec<ModuleSummary>,
    /// The processes it boots.
    pub processes: Vec<Process>,
    /// Its explicit upgrade instructions (opaque here).
    pub instructions: Vec<serde_json::Value>,
    /// Whether it has a valid signature.
    pub signed: bool,
    /// The signer's public key, hex.
    pub signer: Option<String>,
    /// Whether the signer is one of the trusted keys given (always false
    /// from [`inspect`], which is given none).
    pub trusted: bool,
}

/// One module in a [`Summary`].
#[derive(Clone, Debug, Serialize)]
pub struct ModuleSummary {
    /// The module's name.
    pub name: String,
    /// Its library's sha256.
    pub sha256: String,
    /// Its library's size in bytes.
    pub size: u64,
}

impl Summary {
    /// The summary of verified `contents` read from `archive`.
    pub fn new(archive: &Path, contents: &Contents) -> Summary {
        let m = &contents.manifest;
        Summary {
            archive: archive.to_path_buf(),
            name: m.release.name.clone(),
            version: m.release.version.to_string(),
            upgrade_from: m.release.upgrade_from.as_ref().map(|r| r.to_string()),
            modules: contents
                .libraries
                .iter()
                .map(|l| ModuleSummary {
                    name: l.module.clone(),
                    sha256: l.sha256.clone(),
                    size: l.bytes.len() as u64,
                })
                .collect(),
            processes: m.processes.clone(),
            instructions: m.instructions.clone(),
            signed: contents.signature.is_some(),
            signer: contents.signer.map(|k| hex::encode(k.as_bytes())),
            trusted: contents.trusted,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "release {} {}  ({})", self.name, self.version, self.archive.display())?;
        match &self.upgrade_from {
            Some(req) => writeln!(f, "upgrade from: {req}")?,
            None => writeln!(f, "upgrade from: none (only a restart reaches this release)")?,
        }
        writeln!(f, "modules:")?;
        for m in &self.modules {
            writeln!(f, "  {:<20} {:>10} bytes  sha256 {}", m.name, m.size, m.sha256)?;
        }
        writeln!(f, "processes:")?;
        if self.processes.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for p in &self.processes {
            // A process with instances is shown once, as its template.
            match p.instances {
                None => write!(f, "  {:<20} module {}, {}", p.name, p.module, p.restart)?,
                Some(n) => write!(
                    f,
                    "  {:<20} module {}, {}, children {name}-0 … {name}-{last}",
                    format!("{} ×{n}", p.name),
                    p.module,
                    p.restart,
                    name = p.name,
                    last = n - 1
                )?,
            }
            if !p.args.is_null() {
                write!(f, ", args {}", p.args)?;
            }
            writeln!(f)?;
        }
        if !self.instructions.is_empty() {
            writeln!(f, "instructions:")?;
            for i in &self.instructions {
                writeln!(f, "  {i}")?;
            }
        }
        match (&self.signer, self.trusted) {
            (None, _) => writeln!(f, "signature: none")?,
            (Some(k), true) => writeln!(f, "signature: valid, by trusted key {k}")?,
            (Some(k), false) => {
                writeln!(f, "signature: valid, by key {k} (not checked against trusted keys)")?
            }
        }
        write!(
            f,
            "verified: entry paths and types, {} sha256 checksum(s){}",
            self.modules.len(),
            if self.signed { ", signature" } else { "" }
        )
    }
}

/// Reads and verifies the archive at `path` (no trusted keys, signature not
/// required) and summarizes it.
///
/// # Errors
///
/// Every error of [`read`].
pub fn inspect(path: &Path) -> Result<Summary> {
    inspect_with_keys(path, None)
}

/// [`inspect`], checking a signature against `trusted` keys if given.
///
/// # Errors
///
/// Every error of [`read`].
pub fn inspect_with_keys(path: &Path, trusted: Option<&[VerifyingKey]>) -> Result<Summary> {
    let contents = read(path, trusted, false)?;
    Ok(Summary::new(path, &contents))
}

// ---------------------------------------------------------------- keys

/// Makes a new ed25519 key from `/dev/urandom`, writes its secret to `path`
/// (64 hex digits and a newline, mode 0600) and its public key to
/// `<path>.pub` (64 hex digits and a newline), and returns it. Refuses to
/// replace an existing file at either path. Each file is written to a
/// temporary file first, fsynced, and linked into place.
///
/// # Errors
///
/// [`ErrorKind::Io`] if `/dev/urandom` cannot be read, either file exists
/// already, or a file cannot be written.
pub fn generate_key(path: &Path) -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| io_err(Path::new("/dev/urandom"), "read random bytes", e))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let public = public_key_path(path);
    for p in [path, public.as_path()] {
        if p.exists() {
            return Err(err(p, None, ErrorKind::Io, "the file exists already; refusing to replace a key"));
        }
    }
    write_new_file(path, format!("{}\n", hex::encode(key.to_bytes())).as_bytes(), 0o600)?;
    write_new_file(&public, format!("{}\n", hex::encode(key.verifying_key().as_bytes())).as_bytes(), 0o644)?;
    Ok(key)
}

/// `<path>.pub`: where [`generate_key`] writes the public key.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".relive-key-")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, "create a temporary file", e))?;
    set_mode(tmp.as_file(), mode).map_err(|e| io_err(path, "set the file's mode", e))?;
    tmp.write_all(bytes).map_err(|e| io_err(path, "write the key", e))?;
    tmp.as_file().sync_all().map_err(|e| io_err(path, "fsync the key", e))?;
    tmp.persist_noclobber(path).map_err(|e| io_err(path, "move the key into place", e.error))?;
    sync_dir(dir).map_err(|e| io_err(dir, "fsync the directory", e))
}

#[cfg(unix)]
fn set_mode(file: &fs::File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &fs::File, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// 32 key bytes from a key file: 64 hex digits (whitespace around ignored)
/// or exactly 32 raw bytes.
fn key_bytes(path: &Path) -> Result<[u8; 32]> {
    let bytes = fs::read(path).map_err(|e| io_err(path, "read the key", e))?;
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let t = text.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut out = [0u8; 32];
            hex::decode_to_slice(t, &mut out).expect("64 hex digits");
            return Ok(out);
        }
    }
    bytes.as_slice().try_into().map_err(|_| {
        err(
            path,
            None,
            ErrorKind::Key,
            format!("the file has {} bytes, neither 64 hex digits nor 32 raw bytes", bytes.len()),
        )
    })
}

/// Loads a private key written by [`generate_key`] (64 hex digits or 32 raw
/// bytes).
///
/// # Errors
///
/// [`ErrorKind::Io`] if the file cannot be read, [`ErrorKind::Key`] if it
/// holds neither 64 hex digits nor 32 raw bytes.
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let mut bytes = key_bytes(path)?;
    let key = SigningKey::from_bytes(&bytes);
    bytes.fill(0);
    Ok(key)
}

/// Loads a public key (64 hex digits or 32 raw bytes).
///
/// # Errors
///
/// [`ErrorKind::Io`] if the file cannot be read, [`ErrorKind::Key`] if it
/// holds neither 64 hex digits nor 32 raw bytes, or not a valid key.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let bytes = key_bytes(path)?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| ArchiveError {
        path: path.to_path_buf(),
        entry: None,
        kind: ErrorKind::Key,
        message: format!("not a valid ed25519 public key: {e}"),
        source: Some(Box::new(e)),
    })
}

/// Writes `key`'s public key to `path` (64 hex digits and a newline),
/// refusing to replace an existing file.
///
/// # Errors
///
/// [`ErrorKind::Io`] if the file exists already or cannot be written.
pub fn write_verifying_key(path: &Path, key: &VerifyingKey) -> Result<()> {
    write_new_file(path, format!("{}\n", hex::encode(key.as_bytes())).as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fast archive holds what a default one holds and reads back
    /// verified; only its compression differs.
    #[test]
    fn a_fast_archive_reads_back_like_a_default_one() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path();
        fs::write(
            app.join(MANIFEST_ENTRY),
            "[release]\nname = \"app\"\nversion = \"1.0.0\"\n\n[[module]]\nname = \"m\"\ncrate = \"m\"\n",
        )
        .unwrap();
        // Compressible, like an unoptimized library's debug sections.
        let library: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        fs::write(app.join("libm.so"), &library).unwrap();
        let manifest = Manifest::from_path(&app.join(MANIFEST_ENTRY)).unwrap();
        let libraries = [("m".to_string(), PathBuf::from("libm.so"))];
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut archives = Vec::new();
        for (out, compression) in
            [("default", ArchiveCompression::Default), ("fast", ArchiveCompression::Fast)]
        {
            let options = BuildOptions { signing_key: Some(&key), compression };
            let path = build_with(&manifest, app, &libraries, &app.join(out), options).unwrap();
            let contents = read(&path, Some(&[key.verifying_key()]), true).unwrap();
            archives.push((fs::read(&path).unwrap(), contents));
        }
        let [(default_bytes, default), (fast_bytes, fast)] = &archives[..] else { unreachable!() };
        assert_ne!(default_bytes, fast_bytes, "the levels were not applied");
        assert_eq!(fast.manifest_text, default.manifest_text);
        assert_eq!(fast.libraries, default.libraries);
        assert_eq!(fast.libraries[0].bytes, library);
        assert!(fast.trusted && default.trusted);
    }
}
