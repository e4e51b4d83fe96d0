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

/// Set by [`run_isolated`] for the child: where the examples are built.
const EXAMPLES_DIR_VAR: &str = "RELIVE_TEST_EXAMPLES_DIR";
/// Set by [`run_isolated`] for the child: the test it is to run.
const ISOLATED_VAR: &str = "RELIVE_TEST_ISOLATED";

/// Builds the example modules (release) and returns their directory.
pub fn examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        // A test that re-runs its own binary in a child process passes the
        // directory it already built.
        if let Some(dir) = std::env::var_os(EXAMPLES_DIR_VAR) {
            return PathBuf::from(dir);
        }
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

/// A node with a code server keeping its libraries in a fresh temporary
/// directory; keep the directory alive as long as the node.
pub fn node_with_code() -> (relive_runtime::Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = relive_runtime::Node::start(relive_runtime::NodeConfig {
        code_dir: Some(dir.path().join("code")),
        ..relive_runtime::NodeConfig::default()
    });
    (node, dir)
}

/// A module init argument (or message) given as JSON, as MessagePack.
pub fn payload(value: serde_json::Value) -> relive_runtime::Payload {
    relive_runtime::module::json_to_payload(&value).expect("JSON always has a MessagePack form")
}

/// Runs `body` in a child process (this test binary again, running only the
/// test `name`), so that a crash of the whole process (a signal, an abort)
/// fails this one test with a clear message instead of taking every test of
/// the binary down with it. Call it as the whole body of test `name`.
pub fn run_isolated(name: &str, body: impl FnOnce()) {
    if std::env::var(ISOLATED_VAR).as_deref() == Ok(name) {
        return body();
    }
    let examples = examples();
    let output = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ISOLATED_VAR, name)
        .env(EXAMPLES_DIR_VAR, examples)
        .output()
        .expect("running the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&output.status) {
        panic!(
            "test {name} killed its process with signal {signal}{}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            if signal == 7 { " (SIGBUS)" } else { "" }
        );
    }
    assert!(
        output.status.success(),
        "test {name} failed in its child process ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(stdout.contains("1 passed"), "the child ran no test named {name}:\n{stdout}");
}
