//! The `relive` binary from the outside: help, version, bench JSON, errors.

use std::process::Command;

fn relive(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_relive")).args(args).output().expect("running relive")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = relive(args);
    assert!(out.status.success(), "relive {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("relive {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

#[test]
fn help_and_version() {
    let help = relive(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("bench"));
    let version = relive(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("relive {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bench_ring_prints_the_stable_json_keys() {
    let v = json(&["bench", "ring", "--procs", "50", "--rounds", "20", "--json"]);
    assert_eq!(v["procs"], 50);
    assert_eq!(v["rounds"], 20);
    assert_eq!(v["messages"], 1000);
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    assert!(v["msgs_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_spawn_prints_the_stable_json_keys() {
    let v = json(&["bench", "spawn", "--procs", "20000", "--json"]);
    assert_eq!(v["procs"], 20000);
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    assert!(v["bytes_per_proc"].is_number());
}

#[test]
fn bench_call_prints_the_stable_json_keys() {
    let v = json(&["bench", "call", "--rounds", "2000", "--json"]);
    assert_eq!(v["calls"], 2000);
    let (mean, p99) = (v["mean_us"].as_f64().unwrap(), v["p99_us"].as_f64().unwrap());
    assert!(mean > 0.0 && p99 >= v["p50_us"].as_f64().unwrap());
}

#[test]
fn bad_input_is_a_clear_error_and_a_failure_exit() {
    let out = relive(&["bench", "ring", "--procs", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("relive: ") && err.contains("--procs must be at least 2"), "{err}");
    let out = relive(&["bench", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'nope'"));
}

#[test]
fn bench_call_module_prints_the_call_keys_and_the_native_comparison() {
    let v = json(&["bench", "call", "--module", "--rounds", "2000", "--json"]);
    assert_eq!(v["calls"], 2000);
    let (mean, p99) = (v["mean_us"].as_f64().unwrap(), v["p99_us"].as_f64().unwrap());
    assert!(mean > 0.0 && p99 >= v["p50_us"].as_f64().unwrap());
    for key in ["max_us", "external_mean_us", "external_p99_us"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {v}");
    }
    let native = v["native_mean_us"].as_f64().unwrap();
    assert!(native > 0.0 && v["native_p99_us"].as_f64().unwrap() > 0.0);
    let ratio = v["ratio"].as_f64().unwrap();
    assert!((ratio - mean / native).abs() < 1e-9, "{v}");
}

#[test]
fn bench_ring_module_prints_the_ring_keys() {
    let v = json(&["bench", "ring", "--module", "--procs", "50", "--rounds", "20", "--json"]);
    assert_eq!(v["procs"], 50);
    assert_eq!(v["rounds"], 20);
    assert_eq!(v["messages"], 1000);
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    assert!(v["msgs_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_spawn_module_is_refused_before_building() {
    let out = relive(&["bench", "spawn", "--module"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("relive: ") && err.contains("--module applies to the ring and call"), "{err}");
}

#[test]
fn bench_upgrade_moves_every_counter_under_load_and_loses_nothing() {
    let v = json(&["bench", "upgrade", "--procs", "300", "--rate", "20000", "--json"]);
    assert_eq!((v["procs"].as_u64(), v["rate"].as_u64()), (Some(300), Some(20000)), "{v}");
    assert_eq!(v["moved"], 300, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    let (sent, handled) = (v["sent"].as_u64().unwrap(), v["handled"].as_u64().unwrap());
    assert!(sent > 0 && sent == handled, "{v}");
    assert!(v["total_ms"].as_f64().unwrap() > 0.0, "{v}");
    let pause = &v["pause_us"];
    let (mean, p99, max) =
        (pause["mean"].as_f64().unwrap(), pause["p99"].as_f64().unwrap(), pause["max"].as_f64().unwrap());
    assert!(0.0 < mean && mean <= max && p99 <= max, "{v}");
}

#[test]
fn bench_rate_outside_the_upgrade_bench_is_refused() {
    let out = relive(&["bench", "ring", "--rate", "10"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--rate applies to the upgrade benchmark only"), "{err}");
}
