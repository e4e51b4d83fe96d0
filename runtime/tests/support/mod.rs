//! Shared by the tests that need example modules: builds examples/ (its own
//! cargo workspace) into its own target directory, once per test binary,
//! so the outer cargo's build lock is never contended.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("runtime/ has a parent").to_path_buf()
}

/// Builds the example modules (release) and returns their directory.
pub fn examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = workspace();
        let target = root.join("target").join("examples");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(root.join("examples").join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("running cargo to build the example modules");
        assert!(status.success(), "building examples/ failed");
        target.join("release")
    })
}

/// The library of example crate `name` (e.g. "counter-v1").
pub fn library(name: &str) -> PathBuf {
    examples().join(format!("lib{}.so", name.replace('-', "_")))
}
