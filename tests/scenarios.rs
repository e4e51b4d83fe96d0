//! Every scenario under tests/scenarios/ runs through the same runner as
//! `relive scenario run FILE --json` (the relive binary), and must pass;
//! plus the runner's own behaviour: an unknown step or field is an error
//! naming the file and line, and a failed assertion exits non-zero naming
//! the check and the observed value.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

use common::{relive, repo};

fn scenario_files() -> Vec<PathBuf> {
    let dir = repo().join("tests").join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn run_json(file: &Path) -> (bool, Value, String) {
    let out = relive(&["scenario", "run", file.to_str().unwrap(), "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let doc = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), doc, stderr)
}

#[test]
fn every_scenario_passes() {
    let files = scenario_files();
    assert!(files.len() >= 4, "expected the scenario library under tests/scenarios/, found {files:?}");
    // Each file is its own node on its own root and port: run them at once.
    let runs: Vec<_> = files
        .iter()
        .cloned()
        .map(|file| std::thread::spawn(move || (file.clone(), run_json(&file))))
        .collect();
    let mut problems = Vec::new();
    for run in runs {
        let (file, (ok, doc, stderr)) = run.join().unwrap();
        let scenario = &doc["scenarios"][0];
        if !ok || doc["ok"] != Value::Bool(true) {
            problems.push(format!(
                "{}: failed: {}\n{stderr}",
                file.display(),
                serde_json::to_string_pretty(&scenario["failures"]).unwrap()
            ));
            continue;
        }
        assert!(
            scenario["expected_outcome"].as_str().is_some_and(|s| !s.is_empty()),
            "{}: states no expected outcome",
            file.display()
        );
        assert!(scenario["steps"].as_array().unwrap().iter().all(|s| s["ok"] == Value::Bool(true)));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const HEAD: &str =
    "[scenario]\nname = \"t\"\napp = \"kv\"\noutcome = \"an error\"\n\n[[step]]\nboot = \"1.0.0\"\n";

#[test]
fn unknown_step_or_field_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "typo.toml", &format!("{HEAD}\n[[step]]\ndeplo = \"1.1.0\"\n"));
    let out = relive(&["scenario", "run", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:10: step 2: unknown step `deplo`", file.display())), "{err}");

    let file = write(
        dir.path(),
        "field.toml",
        &format!("{HEAD}\n[[step]]\ndeploy = \"1.1.0\"\nhealth_windo = \"1s\"\n"),
    );
    let out = relive(&["scenario", "run", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:11: step 2: unknown field `health_windo`", file.display())), "{err}");

    let file =
        write(dir.path(), "nested.toml", &format!("{HEAD}\n[[step]]\nassert = {{ releas = \"1.0.0\" }}\n"));
    let err =
        String::from_utf8_lossy(&relive(&["scenario", "run", file.to_str().unwrap()]).stderr).to_string();
    assert!(err.contains(&format!("{}:10: step 2: unknown field `releas`", file.display())), "{err}");
}

#[test]
fn failed_assertion_exits_non_zero_with_the_observed_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "wrong.toml",
        &format!(
            "{HEAD}\n[[step]]\nassert = {{ release = \"1.1.0\" }}\n\n[[step]]\ncall = {{ name = \"kv\", message = \"Version\", equals = \"9.9.9\" }}\n"
        ),
    );
    let (ok, doc, stderr) = run_json(&file);
    assert!(!ok, "{doc}");
    assert_eq!(doc["ok"], Value::Bool(false));
    let failures = doc["scenarios"][0]["failures"].to_string();
    assert!(failures.contains("step 2 (assert): release is 1.0.0, expected 1.1.0"), "{failures}");
    assert!(failures.contains("kv is \\\"1.0.0\\\", expected \\\"9.9.9\\\""), "{failures}");
    assert!(stderr.contains("relive: 1 of 1 scenario(s) failed"), "{stderr}");
}
