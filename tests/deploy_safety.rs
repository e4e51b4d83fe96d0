//! Upgrade safety from the CLI, end to end on a real node running the
//! meter example (examples/meter-*, four instances): `relive deploy` with a
//! canary and health windows judged by crashes, the modules' `health`
//! callbacks (or one named process's), the rate of error replies and
//! messages the new code cannot decode, handler time against the old
//! code's; the report's pause histogram; and the options' errors.
//!
//! Each broken release is refused for the signal it breaks, the report
//! names that signal, and the node runs 1.0.0 as before: the same
//! processes (pids), the same store (byte for byte). The windows that need
//! traffic (error replies, undecodable notes, slow handlers) get it from
//! this test while the deploy runs, until it ends: no assertion depends on
//! timing. (The latency case compares a handler that sleeps 20 ms with
//! 1.0.0's of a few µs against a ratio of 10: it holds on any machine that
//! runs 1.0.0's handler in under 2 ms on average.)

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{NodeGuard, Tree, build, ok, relive, repo, store_tree, wait_until};
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

/// Each meter's pid, by name, with its restarts: a process moved back
/// keeps its pid, one restarted would not.
fn meter_pids(node: &NodeGuard) -> Vec<(String, String, u64)> {
    let status = node.status();
    let group = status["processes"].as_array().unwrap().iter().find(|g| g["name"] == "meter").unwrap();
    group["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let pid = c["pid"].as_str().unwrap_or_else(|| panic!("{c} runs")).to_string();
            (c["name"].as_str().unwrap().to_string(), pid, c["restarts"].as_u64().unwrap())
        })
        .collect()
}

/// The node is as it was: the same meters (pids) on 1.0.0, the same store.
fn unchanged(node: &NodeGuard, pids: &[(String, String, u64)], store: &Tree, what: &str) {
    all_on(node, "1.0.0");
    assert_eq!(meter_pids(node), pids, "{what}: the meters are the same processes");
    let after = store_tree(Path::new(node.root()));
    let differ: Vec<&String> = store
        .keys()
        .chain(after.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| store.get(*k) != after.get(*k))
        .collect();
    assert!(differ.is_empty(), "{what} changed the store: {differ:?}");
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
    let (pids, store) = (meter_pids(&node), store_tree(Path::new(r)));

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
    unchanged(&node, &pids, &store, "a release refused by its health callbacks");

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
    unchanged(&node, &pids, &store, "a release refused by its health process");
    // A health process that does not run is refused before anything moves.
    let failure =
        refused(&[v210.to_str().unwrap(), "--root", r, "--health-window", "1s", "--health-process", "ghost"]);
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("no process is registered as \"ghost\""), "{error}");
    assert!(failure["report"].is_null(), "nothing ran: {failure}");
    unchanged(&node, &pids, &store, "a refused health process");
    // Nor one that runs no module: a supervisor has no health callback.
    let failure = refused(&[
        v210.to_str().unwrap(),
        "--root",
        r,
        "--health-window",
        "1s",
        "--health-process",
        "meter_sup",
    ]);
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("\"meter_sup\"") && error.contains("runs no module"), "{error}");
    assert!(failure["report"].is_null(), "nothing ran: {failure}");
    unchanged(&node, &pids, &store, "a health process that runs no module");

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
    unchanged(&node, &pids, &store, "a failed canary");
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
    let (pids, store) = (meter_pids(&node), store_tree(Path::new(&r)));

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
    unchanged(&node, &pids, &store, "a release answering errors");
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
    unchanged(&node, &pids, &store, "a release that cannot decode notes");
    node.stop();
}

#[test]
fn a_release_whose_handlers_are_slower_than_the_latency_ratio_allows_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let v100 = meter_archive(dir.path(), "1.0.0", "meter-1.0.0");
    let v240 = meter_archive(dir.path(), "2.4.0", "meter-2.4.0-slow");
    let node = NodeGuard::start(&dir.path().join("node"), &["--boot", v100.to_str().unwrap()]);
    let r = node.root().to_string();
    // The old code's handler time is what the new code's is held to: one
    // handler call in STATS_BATCH (8) is timed, so 16 additions per meter
    // time two of each on 1.0.0.
    for name in meters() {
        for _ in 0..16 {
            ok(&["cast", "--root", &r, &name, r#"{"Add": 1}"#]);
        }
        assert_eq!(node.call(&name, "\"Get\""), serde_json::json!({"Ok": 16}), "{name}");
    }
    let (pids, store) = (meter_pids(&node), store_tree(Path::new(&r)));

    // 2.4.0 takes 20 ms per addition; additions go on until the window
    // ends (eight per meter time one on the new code).
    let mut deploy = Background::deploy(&[
        v240.to_str().unwrap(),
        "--root",
        &r,
        "--health-window",
        "5s",
        "--max-latency-ratio",
        "10",
    ]);
    wait_for_load(&node, "2.4.0");
    while deploy.running() {
        for name in meters() {
            ok(&["cast", "--root", &r, &name, r#"{"Add": 1}"#]);
        }
    }
    let failure = deploy.refused();
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("health window failed on latency:"), "{error}");
    assert!(error.contains("the old code's"), "{error}");
    let health = &failure["report"]["health"];
    assert_eq!(failed_signals(health), ["latency"], "only the latency failed: {failure}");
    let signals = &health["signals"];
    let (new, old) =
        (signals["new_handler_us"].as_f64().unwrap(), signals["old_handler_us"].as_f64().unwrap());
    assert!(new >= 20_000.0, "each timed handler slept 20 ms: {signals}");
    assert!(new > 10.0 * old, "{signals}");
    assert_eq!(failure["report"]["rollback"]["unloaded"], serde_json::json!(["meter 2.4.0"]), "{failure}");
    unchanged(&node, &pids, &store, "a slow release");
    node.stop();
}

#[test]
fn bad_canary_and_threshold_options_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Without a node: the CLI names the mistake before it connects.
    let root = dir.path().join("no-node");
    let archive = dir.path().join("a.tar.gz");
    let (root, archive) = (root.to_str().unwrap(), archive.to_str().unwrap());
    let refused = |root: &str, extra: &[&str], wanted: &str| {
        let out = relive(&[&["deploy", archive, "--root", root], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(wanted), "{extra:?}: {stderr:?} should contain {wanted:?}");
        assert!(!stderr.contains("control.sock"), "refused before connecting: {stderr}");
    };
    let cases: &[(&[&str], &str)] = &[
        (&["--canary", "0%"], "more than 0%"),
        (&["--canary", "100%"], "less than 100%"),
        (&["--canary", "150"], "less than 100%"),
        (&["--canary", "ten"], "\"ten\" is not a percentage: write e.g. 10%"),
        (&["--canary", "10%", "--canary-window", "soon"], "is not a duration"),
        (&["--canary", "10%", "--canary-window", "0s"], "--canary-window 0"),
        (&["--canary-window", "2s"], "--canary"),
        (&["--health-window", "1s", "--max-error-rate", "105%"], "from 0% to 100%"),
        (&["--health-window", "1s", "--max-error-rate=-1%"], "from 0% to 100%"),
        (&["--max-error-rate", "5%"], "--max-error-rate is judged during a canary or health window"),
        (&["--health-window", "1s", "--max-latency-ratio", "0"], "not a ratio above 0"),
        (&["--health-window", "1s", "--max-latency-ratio", "fast"], "not a ratio above 0"),
        (&["--max-latency-ratio", "2"], "--max-latency-ratio is judged during a canary or health window"),
        (&["--max-crashes", "2"], "--max-crashes is judged during a canary or health window"),
        (&["--health-process", "checker"], "--health-process is judged during a canary or health window"),
    ];
    for (extra, wanted) in cases {
        refused(root, extra, wanted);
    }

    // With a node: the same options change nothing there either.
    let v100 = meter_archive(dir.path(), "1.0.0", "meter-1.0.0");
    let v200 = meter_archive(dir.path(), "2.0.0", "meter-2.0.0");
    let node = NodeGuard::start(&dir.path().join("node"), &["--boot", v100.to_str().unwrap()]);
    let r = node.root();
    let (pids, store) = (meter_pids(&node), store_tree(Path::new(r)));
    let out = relive(&["deploy", v200.to_str().unwrap(), "--root", r, "--canary", "0%"]);
    assert!(!out.status.success(), "--canary 0% was accepted");
    unchanged(&node, &pids, &store, "a refused --canary");
    // A client other than the CLI (the protocol is public) is refused by
    // the node itself, which names the option and says nothing changed.
    let base = relive_node::protocol::DeployRequest {
        archive: v200.clone(),
        health_window_ms: 1000,
        ..Default::default()
    };
    let canary =
        |percent: f64, window_ms: u64| Some(relive_node::protocol::CanaryRequest { percent, window_ms });
    let bad: Vec<(relive_node::protocol::DeployRequest, &str)> = vec![
        (relive_node::protocol::DeployRequest { canary: canary(0.0, 1000), ..base.clone() }, "more than 0%"),
        (
            relive_node::protocol::DeployRequest { canary: canary(100.0, 1000), ..base.clone() },
            "less than 100%",
        ),
        (relive_node::protocol::DeployRequest { canary: canary(-5.0, 1000), ..base.clone() }, "--canary -5%"),
        (
            relive_node::protocol::DeployRequest { canary: canary(10.0, 0), ..base.clone() },
            "--canary-window 0",
        ),
        (
            relive_node::protocol::DeployRequest { max_error_rate_percent: Some(101.0), ..base.clone() },
            "from 0% to 100%",
        ),
        (
            relive_node::protocol::DeployRequest { max_latency_ratio: Some(-2.0), ..base.clone() },
            "--max-latency-ratio -2",
        ),
        (
            relive_node::protocol::DeployRequest { health_process: Some(" ".into()), ..base.clone() },
            "--health-process needs the name",
        ),
        (
            relive_node::protocol::DeployRequest {
                health_window_ms: 0,
                max_error_rate_percent: Some(5.0),
                ..base.clone()
            },
            "--max-error-rate is judged during a canary or health window",
        ),
    ];
    let mut client = relive_node::client::Client::connect(Path::new(r)).unwrap();
    for (request, wanted) in bad {
        let error = match client.deploy(request.clone(), None) {
            Ok(deployed) => panic!("{request:?} was deployed: {deployed:?}"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains(wanted), "{request:?}: {error:?} should contain {wanted:?}");
        assert!(error.contains("nothing was changed"), "{error}");
        unchanged(&node, &pids, &store, &format!("{request:?}"));
    }
    node.stop();
}
