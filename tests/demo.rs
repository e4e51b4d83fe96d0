//! `relive demo` end to end: it builds the kv releases, runs a node under
//! its own client load, deploys 1.1.0 live, sees 1.2.0-broken refused and
//! undone, rolls back to 1.0.0, and exits 0 only if nothing failed,
//! dropped or was lost.

use std::process::Command;
use std::time::Instant;

#[test]
fn demo_upgrades_kv_live_under_load_and_loses_nothing() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_relive"))
        .args(["demo", "--clients", "4", "--load", "300ms"])
        .output()
        .expect("running relive demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "relive demo failed ({}):\n{stdout}\n{stderr}", out.status);
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{stdout}"))
            .to_string()
    };
    assert!(stderr.contains("relive: building kv 1.0.0"), "it says what cargo builds: {stderr}");
    assert!(line("[1/7] build").contains("kv 1.0.0, 1.1.0, 1.2.0-broken built"));
    assert!(line("[2/7] boot").contains("runs kv 1.0.0"));
    let load = line("[3/7] load");
    assert!(load.contains("0 failed, 0 dropped"), "{load}");
    assert!(load.contains("INCR is not there yet"), "{load}");
    let deploy = line("[4/7] deploy");
    for part in [
        "kv 1.1.0 live, committed",
        "0 messages lost",
        "all 5 connections kept",
        "0 failed, 0 dropped",
        "INCR works",
    ] {
        assert!(deploy.contains(part), "{part:?} not in {deploy}");
    }
    let broken = line("[5/7] broken");
    for part in ["refused and undone", "still runs kv 1.1.0", "all 5 connections kept", "0 failed, 0 dropped"]
    {
        assert!(broken.contains(part), "{part:?} not in {broken}");
    }
    assert!(stdout.contains("bad:demo"), "the refusal names the key 1.2.0-broken refuses:\n{stdout}");
    let rollback = line("[6/7] rollback");
    for part in ["kv 1.0.0 live, rolled back", "all 5 connections kept", "0 failed, 0 dropped"] {
        assert!(rollback.contains(part), "{part:?} not in {rollback}");
    }
    assert!(line("[7/7] stop").contains("stopped"));
    assert!(line("  clients").contains("0 dropped"));
    assert!(line("  requests").contains(", 0 failed"));
    assert!(line("  kv 1.0.0 → 1.1.0").contains("pause p99"));
    assert!(line("result: OK").contains("no request failed"));
    eprintln!("relive demo took {:.1} s", started.elapsed().as_secs_f64());
}
