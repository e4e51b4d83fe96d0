//! relive-releases: what a release is on disk, and nothing else. It depends
//! on no other crate of relive.
//!
//! - [`manifest`]: `release.toml` (name, semver version, `upgrade_from`,
//!   modules, processes, explicit instructions), parsed with errors that
//!   name the file, line and field; a process with `instances = N` is one
//!   table standing for N children.
//! - [`archive`]: `<name>-<version>.tar.gz` holding the manifest and each
//!   module's library with its sha256; reading one verifies every entry
//!   before anything is written.
//! - [`store`]: the release store under a root directory:
//!   `releases/<name>/<version>/`, the content-addressed `code/`, and one
//!   state file (each release unpacked, current, permanent or old) that is
//!   only ever replaced atomically.

pub mod archive;
pub mod manifest;
pub mod store;
