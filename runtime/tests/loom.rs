//! Runs the loom model checks of the mailbox hand-off (`mailbox::loom_tests`
//! in runtime/src/mailbox.rs, compiled only with `--cfg loom`) in a child
//! cargo, and checks that all of them ran and passed.
//!
//! The child uses its own target directory (target/loom) so that it neither
//! waits on the build lock the outer `cargo test` holds nor invalidates the
//! normal build with different RUSTFLAGS.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// How many loom tests mailbox.rs defines; update with it.
const LOOM_TESTS: usize = 3;

#[test]
fn loom_model_checks_of_the_mailbox_pass() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let started = Instant::now();
    let output = Command::new(cargo)
        .current_dir(&workspace)
        .args(["test", "-p", "relive-runtime", "--lib", "--release", "loom_"])
        .env("RUSTFLAGS", "--cfg loom")
        // These would override RUSTFLAGS in the child.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", workspace.join("target").join("loom"))
        .env("LOOM_MAX_PREEMPTIONS", "3")
        // The panic message is what matters; backtraces bury it.
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running cargo for the loom tests");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = || {
        // Keep the failure message readable: the tail of each stream.
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            // Indented, so the child's "test result" lines are not taken for
            // this runner's own.
            lines[lines.len().saturating_sub(60)..]
                .iter()
                .map(|l| format!("  | {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!("--- stdout ---\n{}\n--- stderr ---\n{}", tail(&stdout), tail(&stderr))
    };
    assert!(output.status.success(), "the loom tests failed ({}):\n{}", output.status, report());
    let expected = format!("test result: ok. {LOOM_TESTS} passed");
    assert!(
        stdout.contains(&expected),
        "expected `{expected}` (every loom test found and run):\n{}",
        report()
    );
    eprintln!("loom: {LOOM_TESTS} model checks passed in {:?}", started.elapsed());
}
