//! Shared by the tests that drive the `relive` binary: running it, and
//! building the example releases (module crates into target/examples, as
//! every test does, so cargo builds each once).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn relive(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relive")).args(args).output().expect("running relive")
}

/// Runs `relive ARGS`, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = relive(args);
    assert!(
        out.status.success(),
        "relive {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `relive ARGS`, which must fail with a `relive: ` error; its stderr.
pub fn failure(args: &[&str]) -> String {
    let out = relive(args);
    assert!(!out.status.success(), "relive {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("relive: "), "{err}");
    err
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the application at `app` into an archive in `out`.
pub fn build(app: &Path, out: &Path) -> PathBuf {
    let target = repo().join("target").join("examples");
    let printed = ok(&[
        "release",
        "build",
        app.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    PathBuf::from(printed.trim())
}

/// The counter application's releases 1.0.0 and 2.0.0 (examples/releases/),
/// built once per test binary into target/release-archives.
pub fn counter_archives() -> &'static (PathBuf, PathBuf) {
    static BUILT: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join("target").join("release-archives");
        let app = |version: &str| repo().join("examples").join("releases").join(format!("counter-{version}"));
        (build(&app("1.0.0"), &out), build(&app("2.0.0"), &out))
    })
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}
