//! relive-releases: what a release is on disk, and nothing else. It depends
//! on no other crate of relive.
//!
//! - [`manifest`]: `release.toml` (name, semver version, `upgrade_from`,
//!   modules, the supervision tree of supervisors and processes, the
//!   application's `[config]`, explicit instructions), parsed with errors
//!   that name the file, line and field; a process with `instances = N` is
//!   one table standing for N children.
//! - [`archive`]: `<name>-<version>.tar.gz` holding the manifest and each
//!   module's library with its sha256; reading one (only a regular file, at
//!   most a cap of bytes, opened so that nothing can block it) verifies
//!   every entry before anything is written.
//! - [`store`]: the release store under a root directory:
//!   `releases/<name>/<version>/`, the content-addressed `code/`, and one
//!   state file (each release unpacked, current, permanent or old) that is
//!   only ever replaced atomically. A release keeps what was verified when
//!   it was unpacked (its signature, the manifest's sha256, its signer), and
//!   `Store::verify_release` checks all of it again before a node boots it.

pub mod archive;
mod bounded;
pub mod manifest;
pub mod store;
