//! Upgrade safety from the CLI, end to end on a real node running the
//! meter example (examples/meter-*, four instances): `relive deploy` with a
//! canary and health windows judged by crashes, the modules' `health`
//! callbacks (or one named process's), the rate of error replies and
//! messages the new code cannot decode; the report's pause histogram; and
//! the options' errors.
//!
//! Each broken release is refused for the signal it breaks, the report
//! names that signal, and the node runs 1.0.0 as before. The windows that
//! need traffic (error replies, undecodable notes) get it from this test
//! while the deploy runs, until it ends: no assertion depends on timing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{NodeGuard, build, ok, relive, repo, wait_until};
use serde_json::Value;

const INSTANCES: usize = 4;

/// A release `version` of the meter application made of example crate
/// `krate`, four instances `meter-0` … `meter-3`, built into `dir/archives`.
fn meter_archive(dir: &Path, version: &str, krate: &str) -> PathBuf {
    let app = dir.join(format!("meter-{version}"));
    std::fs::create_dir_all(&app).unwrap();
    let upgrade_from = if version == "1.0.0" { "" } else { "upgrade_from = \"^1.0.0\"\n" };
    let manifest = format!(
        "[release]\nname = \"meter\"\nversion = \"{version}\"\n{upgrade_from}\n\
         [[module]]\nname = \"meter\"\ncrate = \"{}\"\n\n\
         [[process]]\nname = \"meter\"\nmodule = \"meter\"\nrestart = \"permanent\"\n\
         instances = {INSTANCES}\nargs = {{ label = \"m\" }}\n",
        repo().join("examples").join(krate).display()
    );
    std::fs::write(app.join("release.toml"), manifest).unwrap();
    build(&app, &dir.join("archives"))
}

fn meters() -> Vec<String> {
    (0..INSTANCES).map(|i| format!("meter-{i}")).collect()
}

/// Every meter answers `Version` with `version`, and the node runs
/// release `version` with meter `version` current and no process on another.
fn all_on(node: &NodeGuard, version: &str) {
    for name in meters() {
        assert_eq!(node.call(&name, "\"Version\""), serde_json::json!({"Ok": version}), "{name}");
    }
    let status = node.status();
    assert_eq!(status["release"]["version"], version, "{status}");
    let meter = status["modules"].as_array().unwrap().iter().find(|m| m["name"] == "meter").unwrap();
    assert_eq!(meter["current"]["version"], version, "{status}");
    let old = &meter["old"];
    assert!(old.is_null() || old["processes"] == 0, "nothing runs another version: {status}");
}

/// `relive deploy ARGS --json`, which must be refused: the failure's JSON
/// (`error`, `report`).
fn refused(args: &[&str]) -> Value {
    let out = relive(&[&["deploy", "--json"], args].concat());
    assert!(!out.status.success(), "deploy {args:?} went through: {}", String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// The signals that failed a window, by name.
fn failed_signals(window: &Value) -> Vec<String> {
    window["signals"]["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["signal"].as_str().unwrap().into())
        .collect()
}

/// A deploy running in the background; killed if the test fails first.
struct Background(Option<Child>);

impl Background {
    fn deploy(args: &[&str]) -> Background {
        let child = Command::new(env!("CARGO_BIN_EXE_relive"))
            .args([&["deploy", "--json"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running relive deploy");
        Background(Some(child))
    }

    fn running(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Its JSON answer; it must have been refused.
    fn refused(mut self) -> Value {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        assert!(!out.status.success(), "the deploy went through: {}", String::from_utf8_lossy(&out.stdout));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the node has loaded meter `version` (the deploy is past
/// its loads and moves processes or watches them).
fn wait_for_load(node: &NodeGuard, version: &str) {
    wait_until(&format!("meter {version} is loaded"), Duration::from_secs(60), || {
        let status = node.status();
        let meter = status["modules"].as_array().unwrap().iter().find(|m| m["name"] == "meter").cloned();
        meter.is_some_and(|m| m["current"]["version"] == version)
    });
}

#[test]
fn health_callbacks_refuse_a_release_in_the_window_and_in_a_canary_that_leaves_the_others_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let v100 = meter_archive(dir.path(), "1.0.0", "meter-1.0.0");
    let v200 = meter_archive(dir.path(), "2.0.0", "meter-2.0.0");
    let v210 = meter_archive(dir.path(), "2.1.0", "meter-2.1.0-unhealthy");
    let node = NodeGuard::start(&dir.path().join("node"), &["--boot", v100.to_str().unwrap()]);
    let r = node.root();
    for name in meters() {
        ok(&["cast", "--root", r, &name, r#"{"Add": 5}"#]);
    }
    all_on(&node, "1.0.0");

    // 2.1.0 in a health window: every process moves, answers, and its
    // health callback says its index is missing: rolled back.
    let failure = refused(&[v210.to_str().unwrap(), "--root", r, "--health-window", "300ms"]);
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("health window failed on health:"), "{error}");
    assert!(error.contains("code_change did not rebuild the index"), "{error}");
    let report = &failure["report"];
    assert_eq!(report["outcome"], "rolled_back", "{report}");
    assert_eq!(report["moved"], INSTANCES, "{report}");
    assert_eq!(failed_signals(&report["health"]), ["health"], "{report}");
    assert_eq!(report["health"]["signals"]["health_asked"], INSTANCES, "{report}");
    assert_eq!(report["rollback"]["unloaded"], serde_json::json!(["meter 2.1.0"]), "{report}");
    all_on(&node, "1.0.0");

    // The same with one named health process: only it is asked.
    let failure = refused(&[
        v210.to_str().unwrap(),
        "--root",
        r,
        "--health-window",
        "300ms",
        "--health-process",
        "meter-2",
    ]);
    let health = &failure["report"]["health"];
    assert_eq!(health["signals"]["health_asked"], 1, "{failure}");
    let detail = health["signals"]["failed"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("(meter-2) is unhealthy"), "{detail}");
    all_on(&node, "1.0.0");
    // A health process that does not run is refused before anything moves.
    let failure =
        refused(&[v210.to_str().unwrap(), "--root", r, "--health-window", "1s", "--health-process", "ghost"]);
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("no process is registered as \"ghost\""), "{error}");
    assert!(failure["report"].is_null(), "nothing ran: {failure}");
    all_on(&node, "1.0.0");

    // 2.1.0 as a 25% canary: one process moves, is found unhealthy and
    // moves back; the three others are never touched.
    let out = relive(&[
        "deploy",
        v210.to_str().unwrap(),
        "--root",
        r,
        "--canary",
        "25%",
        "--canary-window",
        "200ms",
    ]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canary of meter failed on health:"), "{stderr}");
    assert!(stderr.contains("the other 3 processes were never moved"), "{stderr}");
    assert!(text.contains("canary meter: 1 of 4 processes first"), "{text}");
    assert!(text.contains("failed health:"), "the text report names the signal: {text}");
    let failure =
        refused(&[v210.to_str().unwrap(), "--root", r, "--canary", "25%", "--canary-window", "200ms"]);
    let report = &failure["report"];
    assert_eq!(report["outcome"], "aborted", "{report}");
    let canary = &report["canary"];
    assert_eq!((canary["canaries"].as_u64(), canary["others"].as_u64()), (Some(1), Some(3)), "{report}");
    assert_eq!(canary["passed"], false);
    assert_eq!(failed_signals(canary), ["health"], "{report}");
    assert_eq!(canary["signals"]["health_asked"], 1, "only the canary is asked: {report}");
    // Only the canary was paused: the others were never suspended.
    assert_eq!(report["moved"], 1, "{report}");
    assert_eq!(report["pause"]["count"], 1, "{report}");
    let paused: u64 = report["pause_histogram"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(paused, 1, "{report}");
    assert_eq!(report["rollback"]["restored"], 1, "{report}");
    all_on(&node, "1.0.0");
    for name in meters() {
        assert_eq!(node.call(&name, "\"Get\""), serde_json::json!({"Ok": 5}), "{name} kept its count");
    }

    // 2.0.0, sound, through a canary and a health window with every
    // threshold: committed; the report's histogram counts every pause and
    // is drawn.
    let out = ok(&[
        "deploy",
        v200.to_str().unwrap(),
        "--root",
        r,
        "--canary",
        "50%",
        "--canary-window",
        "200ms",
        "--health-window",
        "200ms",
        "--max-error-rate",
        "5%",
        "--max-latency-ratio",
        "1000",
    ]);
    assert!(out.contains("meter 2.0.0 runs now"), "{out}");
    assert!(out.contains("pauses:") && out.contains('█'), "the histogram is drawn: {out}");
    all_on(&node, "2.0.0");
    let status = node.status();
    let report = &status["last_report"];
    assert_eq!(report["outcome"], "committed", "{report}");
    assert_eq!(report["canary"]["canaries"], 2, "{report}");
    assert_eq!(report["canary"]["passed"], true, "{report}");
    assert_eq!(report["health"]["signals"]["health_asked"], INSTANCES, "{report}");
    let buckets = report["pause_histogram"]["buckets"].as_array().unwrap();
    let counted: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, INSTANCES as u64, "{report}");
    for pair in buckets.windows(2) {
        assert_eq!(
            pair[1]["upper_us"].as_u64().unwrap(),
            2 * pair[0]["upper_us"].as_u64().unwrap(),
            "{report}"
        );
    }
    node.stop();
}

#[test]
fn error_replies_and_undecodable_messages_in_the_window_roll_a_release_back() {
    let dir = tempfile::tempdir().unwrap();
    let v100 = meter_archive(dir.path(), "1.0.0", "meter-1.0.0");
    let v220 = meter_archive(dir.path(), "2.2.0", "meter-2.2.0-errors");
    let v230 = meter_archive(dir.path(), "2.3.0", "meter-2.3.0-narrow");
    let node = NodeGuard::start(&dir.path().join("node"), &["--boot", v100.to_str().unwrap()]);
    let r = node.root().to_string();

    // 2.2.0 answers every Get with an error; Gets go on until the window
    // ends.
    let mut deploy = Background::deploy(&[
        v220.to_str().unwrap(),
        "--root",
        &r,
        "--health-window",
        "2s",
        "--max-error-rate",
        "5%",
    ]);
    wait_for_load(&node, "2.2.0");
    while deploy.running() {
        for name in meters() {
            ok(&["call", "--root", &r, &name, "\"Get\""]);
        }
    }
    let failure = deploy.refused();
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("health window failed on error_rate:"), "{error}");
    let health = &failure["report"]["health"];
    assert_eq!(failed_signals(health), ["error_rate"], "{failure}");
    let signals = &health["signals"];
    assert!(signals["error_replies"].as_u64().unwrap() > 0, "{signals}");
    assert_eq!(signals["error_replies"], signals["replies"], "every Get was an error: {signals}");
    all_on(&node, "1.0.0");
    assert_eq!(node.call("meter-0", "\"Get\""), serde_json::json!({"Ok": 0}), "1.0.0 answers again");

    // 2.3.0 cannot decode the notes 1.0.0 took: each one sent to a moved
    // process is lost, which fails the window.
    let mut deploy = Background::deploy(&[v230.to_str().unwrap(), "--root", &r, "--health-window", "20s"]);
    wait_for_load(&node, "2.3.0");
    while deploy.running() {
        for name in meters() {
            ok(&["cast", "--root", &r, &name, r#"{"Note": "still sent"}"#]);
        }
    }
    let failure = deploy.refused();
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("health window failed on lost:"), "{error}");
    let report = &failure["report"];
    assert_eq!(failed_signals(&report["health"]), ["lost"], "{report}");
    let undecodable = report["messages_undecodable"].as_u64().unwrap();
    assert!(undecodable > 0, "{report}");
    assert!(report["messages_lost"].as_u64().unwrap() >= undecodable, "{report}");
    assert!(
        report["health"]["watched_ms"].as_f64().unwrap() < 20_000.0,
        "a lost message ends the window early: {report}"
    );
    all_on(&node, "1.0.0");
    node.stop();
}

#[test]
fn bad_canary_and_threshold_options_are_refused_before_the_node_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("no-node");
    let archive = dir.path().join("a.tar.gz");
    let (root, archive) = (root.to_str().unwrap(), archive.to_str().unwrap());
    let refused = |extra: &[&str], wanted: &str| {
        let out = relive(&[&["deploy", archive, "--root", root], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(wanted), "{extra:?}: {stderr:?} should contain {wanted:?}");
        assert!(!stderr.contains("control.sock"), "refused before connecting: {stderr}");
    };
    refused(&["--canary", "0%"], "more than 0%");
    refused(&["--canary", "100%"], "less than 100%");
    refused(&["--canary", "150"], "less than 100%");
    refused(&["--canary", "ten"], "\"ten\" is not a percentage: write e.g. 10%");
    refused(&["--canary", "10%", "--canary-window", "soon"], "is not a duration");
    refused(&["--canary", "10%", "--canary-window", "0s"], "--canary-window 0");
    refused(&["--canary-window", "2s"], "--canary");
    refused(&["--health-window", "1s", "--max-error-rate", "105%"], "from 0% to 100%");
    refused(&["--max-error-rate", "5%"], "--max-error-rate is judged during a canary or health window");
    refused(&["--health-window", "1s", "--max-latency-ratio", "0"], "not a ratio above 0");
    refused(&["--health-process", "checker"], "--health-process is judged during a canary or health window");
}
