//! `release.toml`: what a release is made of and how it boots.
//!
//! This module owns the manifest's data types ([`Manifest`], [`Release`],
//! [`Module`], [`Process`], [`Child`], [`Restart`]), parsing it from TOML
//! with errors that a person can act on, and writing it back
//! ([`Manifest::to_toml_string`]).
//!
//! ```toml
//! [release]
//! name = "kv"
//! version = "1.1.0"                 # semver
//! upgrade_from = ">=1.0.0, <1.1.0"  # semver requirement; absent = restart only
//! [[module]]
//! name = "kv_store"                 # the module name the library exports
//! crate = "kv_store"                # the module crate, relative to release.toml
//! # in an archive's copy: sha256 = "<hex>", file = "lib/kv_store.so"
//! [[process]]
//! name = "store"
//! module = "kv_store"
//! restart = "permanent"             # permanent | transient | temporary
//! args = {}                         # the init argument, any TOML value
//! [[process]]
//! name = "shard"
//! module = "kv_store"
//! instances = 4                     # optional, 1..=100000: 4 children, shard-0 … shard-3,
//!                                   # each with this module, restart and args
//! [[instruction]]                   # optional, opaque here; needs a string "op"
//! op = "update"
//! ```
//!
//! Invariants of every [`Manifest`] this module hands out (whether parsed or
//! checked with [`Manifest::validate`]):
//! - the release, every module and every process has a non-empty name made
//!   only of `[A-Za-z0-9_-]` (names become file names: `lib/<module>.so`,
//!   `releases/<name>/<version>/`, `<name>-<version>.tar.gz`);
//! - module names are unique, the names of the children the processes
//!   stand for are unique (see [`Manifest::children`]: a process with
//!   `instances = N` stands for `{name}-0` … `{name}-{N-1}`), and every
//!   process names a declared module;
//! - `instances`, when present, is in `1..=`[`MAX_INSTANCES`];
//! - a module's `sha256`, when present, is 64 hex digits;
//! - every instruction is a table with a string field `op`;
//! - no unknown field anywhere (a misspelt key is an error, not ignored).
//!
//! Every [`ManifestError`] names the file, the line (when the problem has a
//! place in the text), the field as a path such as `module[1].name`, what is
//! wrong and what to do about it.
//!
//! A process with `instances` stays one [`Process`] (one table in an
//! archive's copy, however many children it stands for); whatever makes
//! the release's processes real (the node's boot, the planner's view, a
//! listing) goes through [`Manifest::children`], which expands it.
//!
//! A process's `args` is kept as a [`serde_json::Value`]; an absent `args`
//! is `null` and is left out again when the manifest is written (TOML has
//! no null). Instructions are kept as opaque JSON values: the planner, in
//! relive-upgrader, interprets them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A parsed and checked `release.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// The `[release]` table.
    pub release: Release,
    /// The `[[module]]` tables, in file order.
    #[serde(rename = "module", skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<Module>,
    /// The `[[process]]` tables: the supervision tree the release boots, in
    /// file order.
    #[serde(rename = "process", skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<Process>,
    /// The `[[instruction]]` tables, opaque here; each is a JSON object with
    /// a string field `op`.
    #[serde(rename = "instruction", skip_serializing_if = "Vec::is_empty")]
    pub instructions: Vec<serde_json::Value>,
}

/// The `[release]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Release {
    /// The release's name: `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Its semver version.
    pub version: Version,
    /// Which running versions may be upgraded live to this one; `None`: only
    /// a restart reaches this release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_from: Option<VersionReq>,
}

/// A `[[module]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Module {
    /// The module name its library exports: `[A-Za-z0-9_-]+`.
    pub name: String,
    /// The module crate's directory, relative to `release.toml` (TOML key
    /// `crate`).
    #[serde(rename = "crate")]
    pub krate: PathBuf,
    /// The library's sha256 (64 hex digits); set in an archive's copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The library's path inside an archive (`lib/<name>.so`); set in an
    /// archive's copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// The largest `instances` a `[[process]]` may have.
pub const MAX_INSTANCES: u32 = 100_000;

/// A `[[process]]` table: one child of the release's supervision tree, or
/// with `instances` the template of several (see [`Process::names`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Process {
    /// The process's name: `[A-Za-z0-9_-]+`; with `instances`, the prefix
    /// of its children's names.
    pub name: String,
    /// The module it runs: one of the release's modules.
    pub module: String,
    /// When its supervisor restarts it.
    pub restart: Restart,
    /// How many children it stands for (`1..=`[`MAX_INSTANCES`]), named
    /// `{name}-{i}`; `None`: one child named `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// Its init argument; `null` when the manifest has no `args`.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub args: serde_json::Value,
}

/// When a supervisor restarts a child, as in OTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Always restarted.
    #[default]
    Permanent,
    /// Restarted only after an abnormal exit.
    Transient,
    /// Never restarted.
    Temporary,
}

impl Process {
    /// How many children it stands for: `instances`, else 1.
    pub fn count(&self) -> usize {
        self.instances.map_or(1, |n| n as usize)
    }

    /// The names of the children it stands for, in start order: `name`, or
    /// with `instances = N` `{name}-0` … `{name}-{N-1}`.
    pub fn names(&self) -> impl ExactSizeIterator<Item = String> + '_ {
        let indexed = self.instances.is_some();
        (0..self.count()).map(move |i| if indexed { format!("{}-{i}", self.name) } else { self.name.clone() })
    }
}

/// One child a release runs: a `[[process]]`, or one of the instances it
/// stands for; see [`Manifest::children`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child<'a> {
    /// Its name (its id under the release's supervisor).
    pub name: String,
    /// The `[[process]]` it comes from (module, restart, args).
    pub process: &'a Process,
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Restart::Permanent => "permanent",
            Restart::Transient => "transient",
            Restart::Temporary => "temporary",
        })
    }
}

/// What is wrong with a manifest; see [`ManifestError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// Not valid TOML.
    Syntax,
    /// A required field is absent.
    MissingField,
    /// A field this manifest format does not have.
    UnknownField,
    /// A field has a value of the wrong type or an unknown variant.
    InvalidValue,
    /// `release.version` is not a semver version.
    InvalidVersion,
    /// `release.upgrade_from` is not a semver requirement.
    InvalidRequirement,
    /// A name is empty.
    EmptyName,
    /// A name has a character other than `[A-Za-z0-9_-]`.
    InvalidName,
    /// Two modules have the same name.
    DuplicateModule,
    /// Two processes have the same name, or stand for (with `instances`)
    /// a child of the same name.
    DuplicateProcess,
    /// `instances` is not in `1..=`[`MAX_INSTANCES`].
    InvalidInstances,
    /// A process names a module the release does not declare.
    UnknownModule,
    /// A module's `sha256` is not 64 hex digits.
    InvalidChecksum,
    /// An instruction is not a table with a string field `op`.
    InstructionWithoutOp,
    /// The manifest could not be written as TOML.
    Serialize,
}

impl ErrorKind {
    /// What to do about it.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::Io => "check that the file exists and is readable",
            ErrorKind::Syntax => "fix the TOML syntax there",
            ErrorKind::MissingField => "add the field",
            ErrorKind::UnknownField => "remove the field or correct its spelling",
            ErrorKind::InvalidValue => "give the field a value of the expected type",
            ErrorKind::InvalidVersion => "write a semver version such as \"1.2.3\"",
            ErrorKind::InvalidRequirement => {
                "write a semver requirement such as \">=1.0.0, <1.1.0\", or remove \
                 upgrade_from so that only a restart reaches this release"
            }
            ErrorKind::EmptyName => "give it a name",
            ErrorKind::InvalidName => "use only letters, digits, '_' and '-': names become file names",
            ErrorKind::DuplicateModule => "give each [[module]] its own name",
            ErrorKind::DuplicateProcess => {
                "give each [[process]] its own name (one with instances = N stands for \
                 <name>-0 … <name>-<N-1>)"
            }
            ErrorKind::InvalidInstances => {
                "write instances = N with 1 <= N <= 100000, or remove it for a single process"
            }
            ErrorKind::UnknownModule => "name a module declared in a [[module]] table, or declare it",
            ErrorKind::InvalidChecksum => {
                "remove sha256 (`relive release build` fills it in) or write the 64 hex \
                 digits of the library's sha256"
            }
            ErrorKind::InstructionWithoutOp => {
                "give every [[instruction]] a string field \"op\", such as op = \"update\""
            }
            ErrorKind::Serialize => "this is a bug in relive: report it",
        }
    }
}

/// A manifest that cannot be read or is not valid; its message names the
/// file, the line (if known), the field, the problem and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {}{message}; {}", file.display(), line_suffix(*line), field_prefix(field), kind.hint())]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// The 1-based line of the problem, when it has a place in the text.
    pub line: Option<usize>,
    /// The field, as a path such as `release.version` or `module[1].name`;
    /// empty when the problem is not about one field.
    pub field: String,
    /// What kind of problem it is.
    pub kind: ErrorKind,
    /// What is wrong.
    pub message: String,
    /// The I/O error, for [`ErrorKind::Io`].
    #[source]
    pub source: Option<std::io::Error>,
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() { String::new() } else { format!("field `{field}`: ") }
}

/// The `Result` of this module.
pub type Result<T, E = ManifestError> = std::result::Result<T, E>;

// What the TOML is deserialized into: the same shape, with spans where a
// later check needs a line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    release: RawRelease,
    #[serde(default)]
    module: Vec<RawModule>,
    #[serde(default)]
    process: Vec<RawProcess>,
    #[serde(default)]
    instruction: Vec<Spanned<serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    name: Spanned<String>,
    version: Spanned<String>,
    upgrade_from: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    name: Spanned<String>,
    #[serde(rename = "crate")]
    krate: PathBuf,
    sha256: Option<Spanned<String>>,
    file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    name: Spanned<String>,
    module: Spanned<String>,
    #[serde(default)]
    restart: Restart,
    instances: Option<Spanned<i64>>,
    #[serde(default)]
    args: serde_json::Value,
}

/// Builds errors for one file's text.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn err(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError {
            file: self.file.to_path_buf(),
            line: span.map(|s| self.line_of(s.start)),
            field: field.into(),
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Turns a toml/serde error into a [`ManifestError`]: its kind from the
    /// message, its field from the message (missing and unknown fields) or
    /// from the key on the error's line, qualified by the table the line is
    /// in.
    fn toml_error(&self, e: &toml::de::Error) -> ManifestError {
        let message = e.message().trim().to_string();
        let kind = if message.starts_with("missing field") {
            ErrorKind::MissingField
        } else if message.starts_with("unknown field") {
            ErrorKind::UnknownField
        } else if message.starts_with("invalid type")
            || message.starts_with("unknown variant")
            || message.starts_with("invalid value")
            || message.starts_with("invalid length")
        {
            ErrorKind::InvalidValue
        } else {
            ErrorKind::Syntax
        };
        // A span over the whole document (a missing top-level table) has no
        // one line and no table.
        let span =
            e.span().filter(|s| !(s.start == 0 && (s.end == 0 || s.end >= self.text.trim_end().len())));
        let field = match kind {
            ErrorKind::Syntax => String::new(),
            _ => {
                let table = span.as_ref().map(|s| self.table_at(s.start)).unwrap_or_default();
                let key = match kind {
                    ErrorKind::MissingField | ErrorKind::UnknownField => {
                        first_quoted(&message).map(str::to_string)
                    }
                    _ => span.as_ref().and_then(|s| self.key_on_line(s.start)),
                };
                match (table.is_empty(), key) {
                    (_, None) => table,
                    (true, Some(k)) => k,
                    (false, Some(k)) if k == table => k,
                    (false, Some(k)) => format!("{table}.{k}"),
                }
            }
        };
        self.err(span, field, kind, message)
    }

    /// The table the byte `offset` is in, as `release` or `module[1]`, from
    /// the table headers before it (`[x]` or `[[x]]`, counted).
    fn table_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let mut current = String::new();
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        let mut pos = 0;
        for line in self.text.split_inclusive('\n') {
            // A header whose line holds the offset counts too (a missing
            // field's span is often the header itself).
            if pos > offset {
                break;
            }
            pos += line.len();
            let t = line.trim();
            let t = t.split('#').next().unwrap_or("").trim();
            if let Some(inner) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
                let name = inner.trim().to_string();
                if is_header_name(&name) {
                    let n = counts.entry(name.clone()).or_insert(0);
                    current = format!("{name}[{n}]");
                    *n += 1;
                }
            } else if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                let name = inner.trim().to_string();
                if is_header_name(&name) {
                    current = name;
                }
            }
        }
        current
    }

    /// The key of a `key = value` line holding the byte `offset`.
    fn key_on_line(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.text.len());
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("");
        let (key, _) = line.split_once('=')?;
        let key = key.trim().trim_matches('"');
        (!key.is_empty() && key.chars().all(|c| is_name_char(c) || c == '.')).then(|| key.to_string())
    }
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| is_name_char(c) || c == '.')
}

fn first_quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Checks that `name` is non-empty and made of `[A-Za-z0-9_-]`; the error
/// message (without file or field) otherwise. Public so that other parts of
/// relive apply the same rule to names they turn into file names.
pub fn check_name(name: &str) -> std::result::Result<(), (ErrorKind, String)> {
    if name.is_empty() {
        return Err((ErrorKind::EmptyName, "the name is empty".into()));
    }
    if let Some(c) = name.chars().find(|&c| !is_name_char(c)) {
        return Err((ErrorKind::InvalidName, format!("the name {name:?} has the character {c:?}")));
    }
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Manifest {
    /// Reads and parses the manifest at `path`.
    pub fn from_path(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_path_buf(),
            line: None,
            field: String::new(),
            kind: ErrorKind::Io,
            message: format!("cannot read the manifest: {e}"),
            source: Some(e),
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses and checks the manifest `text`; errors name `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Manifest> {
        let cx = Ctx { file, text };
        let raw: RawManifest = toml::from_str(text).map_err(|e| cx.toml_error(&e))?;
        let mut errs_first: Option<ManifestError> = None;
        let mut fail = |e: ManifestError| {
            if errs_first.is_none() {
                errs_first = Some(e);
            }
        };

        let name_check = |name: &Spanned<String>, field: String| {
            check_name(name.get_ref()).map_err(|(kind, msg)| cx.err(Some(name.span()), field, kind, msg))
        };

        // [release]
        if let Err(e) = name_check(&raw.release.name, "release.name".into()) {
            fail(e);
        }
        let version = match Version::parse(raw.release.version.get_ref().trim()) {
            Ok(v) => Some(v),
            Err(e) => {
                fail(cx.err(
                    Some(raw.release.version.span()),
                    "release.version",
                    ErrorKind::InvalidVersion,
                    format!("{:?} is not a semver version: {e}", raw.release.version.get_ref()),
                ));
                None
            }
        };
        let upgrade_from = match &raw.release.upgrade_from {
            None => None,
            Some(req) => match VersionReq::parse(req.get_ref()) {
                Ok(r) => Some(r),
                Err(e) => {
                    fail(cx.err(
                        Some(req.span()),
                        "release.upgrade_from",
                        ErrorKind::InvalidRequirement,
                        format!("{:?} is not a semver requirement: {e}", req.get_ref()),
                    ));
                    None
                }
            },
        };

        // [[module]]
        let mut module_names = HashSet::new();
        let mut modules = Vec::with_capacity(raw.module.len());
        for (i, m) in raw.module.into_iter().enumerate() {
            if let Err(e) = name_check(&m.name, format!("module[{i}].name")) {
                fail(e);
            } else if !module_names.insert(m.name.get_ref().clone()) {
                fail(cx.err(
                    Some(m.name.span()),
                    format!("module[{i}].name"),
                    ErrorKind::DuplicateModule,
                    format!("a module named {:?} is already declared", m.name.get_ref()),
                ));
            }
            if let Some(sha) = &m.sha256
                && !is_sha256_hex(sha.get_ref())
            {
                fail(cx.err(
                    Some(sha.span()),
                    format!("module[{i}].sha256"),
                    ErrorKind::InvalidChecksum,
                    format!("{:?} is not 64 hex digits", sha.get_ref()),
                ));
            }
            modules.push(Module {
                name: m.name.into_inner(),
                krate: m.krate,
                sha256: m.sha256.map(|s| s.into_inner().to_ascii_lowercase()),
                file: m.file,
            });
        }

        // [[process]]
        // The name of every child the processes stand for (expanded), and
        // the index of the process that declares it.
        let mut child_names: HashMap<String, usize> = HashMap::new();
        let mut processes: Vec<Process> = Vec::with_capacity(raw.process.len());
        for (i, p) in raw.process.into_iter().enumerate() {
            let name_ok = match name_check(&p.name, format!("process[{i}].name")) {
                Ok(()) => true,
                Err(e) => {
                    fail(e);
                    false
                }
            };
            if !module_names.contains(p.module.get_ref()) {
                fail(cx.err(
                    Some(p.module.span()),
                    format!("process[{i}].module"),
                    ErrorKind::UnknownModule,
                    format!(
                        "process {:?} runs module {:?}, which the release does not declare",
                        p.name.get_ref(),
                        p.module.get_ref()
                    ),
                ));
            }
            let instances = match &p.instances {
                None => Some(None),
                Some(n) => match u32::try_from(*n.get_ref()) {
                    Ok(count) if (1..=MAX_INSTANCES).contains(&count) => Some(Some(count)),
                    _ => {
                        fail(cx.err(
                            Some(n.span()),
                            format!("process[{i}].instances"),
                            ErrorKind::InvalidInstances,
                            format!(
                                "process {:?} has instances = {}, outside 1..={MAX_INSTANCES}",
                                p.name.get_ref(),
                                n.get_ref()
                            ),
                        ));
                        None
                    }
                },
            };
            let name_span = p.name.span();
            let process = Process {
                name: p.name.into_inner(),
                module: p.module.into_inner(),
                restart: p.restart,
                instances: instances.flatten(),
                args: p.args,
            };
            if name_ok && instances.is_some() {
                let clash = process.names().find_map(|child| match child_names.entry(child) {
                    Entry::Occupied(taken) => Some((taken.key().clone(), *taken.get())),
                    Entry::Vacant(free) => {
                        free.insert(i);
                        None
                    }
                });
                if let Some((child, first)) = clash {
                    let earlier = &processes[first];
                    let declared_by = match earlier.instances {
                        None => format!("process[{first}]"),
                        Some(n) => format!(
                            "process[{first}] ({:?} with instances = {n}: {0}-0 … {0}-{})",
                            earlier.name,
                            n - 1
                        ),
                    };
                    let message = match process.instances {
                        None => format!("a process named {child:?} is already declared by {declared_by}"),
                        Some(n) => format!(
                            "process {:?} with instances = {n} stands for a child named {child:?}, \
                             already declared by {declared_by}",
                            process.name
                        ),
                    };
                    fail(cx.err(
                        Some(name_span),
                        format!("process[{i}].name"),
                        ErrorKind::DuplicateProcess,
                        message,
                    ));
                }
            }
            processes.push(process);
        }

        // [[instruction]]
        let mut instructions = Vec::with_capacity(raw.instruction.len());
        for (i, ins) in raw.instruction.into_iter().enumerate() {
            if !ins.get_ref().get("op").is_some_and(|op| op.is_string()) {
                fail(cx.err(
                    Some(ins.span()),
                    format!("instruction[{i}].op"),
                    ErrorKind::InstructionWithoutOp,
                    "the instruction has no string field \"op\"",
                ));
            }
            instructions.push(ins.into_inner());
        }

        if let Some(e) = errs_first {
            return Err(e);
        }
        Ok(Manifest {
            release: Release {
                name: raw.release.name.into_inner(),
                version: version.expect("checked above"),
                upgrade_from,
            },
            modules,
            processes,
            instructions,
        })
    }

    /// Checks the invariants of the module doc on a manifest built or
    /// changed in code, by writing it and parsing it back; errors name
    /// `file`.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let text = self.to_toml_string().map_err(|mut e| {
            e.file = file.to_path_buf();
            e
        })?;
        Manifest::parse(&text, file).map(|_| ())
    }

    /// The manifest as TOML; [`Manifest::parse`] of it gives an equal
    /// manifest. Fails only if an `args` or instruction holds a JSON null
    /// (TOML has none), which a parsed manifest never does.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| ManifestError {
            file: PathBuf::from(format!("<{}-{}>", self.release.name, self.release.version)),
            line: None,
            field: String::new(),
            kind: ErrorKind::Serialize,
            message: format!("cannot write the manifest as TOML: {e}"),
            source: None,
        })
    }

    /// Whether a node running version `from` of this release may be upgraded
    /// live to this one: `upgrade_from` is present and matches `from` (with
    /// semver's rules: a pre-release matches only a requirement that names
    /// the same major.minor.patch with a pre-release).
    pub fn allows_upgrade_from(&self, from: &Version) -> bool {
        self.release.upgrade_from.as_ref().is_some_and(|req| req.matches(from))
    }

    /// The module named `name`.
    pub fn module(&self, name: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.name == name)
    }

    /// Every child the release runs, in start order: each process, with
    /// one that has `instances = N` expanded to its N children
    /// ([`Process::names`]). Their names are unique (checked by
    /// [`Manifest::parse`]).
    pub fn children(&self) -> impl Iterator<Item = Child<'_>> {
        self.processes.iter().flat_map(|process| process.names().map(move |name| Child { name, process }))
    }

    /// How many children [`Manifest::children`] yields.
    pub fn child_count(&self) -> usize {
        self.processes.iter().map(Process::count).sum()
    }
}
