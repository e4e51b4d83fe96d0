//! `relive new` as a person outside the checkout uses it: an installed
//! relive (a copy of the binary in a temporary directory, with
//! `RELIVE_CHECKOUT` naming an empty directory, so nothing can come from
//! the relive checkout) makes a project in a temporary directory, builds
//! it, boots it, calls and casts, develops it with `watch`, deploys its
//! next version live, rolls back, makes a release permanent, restarts, and
//! passes the project's own scenario: the commands of the generated
//! README and of docs/guide.md, run as they are written there. Plus the
//! refusals of `relive new`, and `demo`, `bench --module` and scenarios
//! without a checkout saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use common::{NodeGuard, install_relive, repo};

/// A relive "installed" in a directory of its own.
struct Installed {
    exe: PathBuf,
    /// What RELIVE_CHECKOUT names: an empty directory.
    no_checkout: PathBuf,
    _dir: tempfile::TempDir,
}

impl Installed {
    fn new() -> Installed {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("relive");
        install_relive(&exe);
        let no_checkout = dir.path().join("no-checkout");
        std::fs::create_dir_all(&no_checkout).unwrap();
        Installed { exe, no_checkout, _dir: dir }
    }

    /// `relive ARGS` in `dir`. The module crates build into a target
    /// directory kept between runs (only the build cache: the project and
    /// its sources are the temporary ones), so that cargo compiles serde
    /// and friends once, not on every test run.
    fn run(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(&self.exe)
            .args(args)
            .current_dir(dir)
            .env("RELIVE_CHECKOUT", &self.no_checkout)
            .env("CARGO_TARGET_DIR", repo().join("target").join("new-app"))
            .env_remove("RELIVE_ROOT")
            .env_remove("RELIVE_MODULE_VERSION")
            .output()
            .expect("running the installed relive")
    }

    /// `relive ARGS` in `dir`, which must succeed: its stdout.
    fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args);
        assert!(
            out.status.success(),
            "relive {args:?} failed in {}:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `relive ARGS` in `dir`, which must fail: its stderr.
    fn fails(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args);
        assert!(!out.status.success(), "relive {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `relive call ...` in `dir`: the reply as JSON.
    fn call(&self, dir: &Path, name: &str, message: &str) -> Value {
        serde_json::from_str(self.ok(dir, &["call", name, message]).trim()).unwrap()
    }

    fn status(&self, dir: &Path) -> Value {
        serde_json::from_str(&self.ok(dir, &["status", "--json"])).unwrap()
    }
}

/// The version of `module` the node runs, from `status --json`.
fn module_version(status: &Value, module: &str) -> String {
    let modules = status["modules"].as_array().expect("modules");
    let module =
        modules.iter().find(|m| m["name"] == module).unwrap_or_else(|| panic!("no {module}: {status}"));
    module["current"]["version"].as_str().unwrap().to_string()
}

#[test]
fn a_new_project_builds_boots_upgrades_and_passes_its_scenario_outside_the_checkout() {
    let relive = Installed::new();
    let work = tempfile::tempdir().unwrap();
    assert!(!work.path().starts_with(repo()), "the project must live outside the checkout");

    let created = relive.ok(work.path(), &["new", "demoapp"]);
    assert!(created.contains("relive release build ."), "{created}");
    let app = work.path().join("demoapp");
    let readme = std::fs::read_to_string(app.join("README.md")).unwrap();
    // The README's commands are the ones this test runs.
    for command in [
        "relive release build .",
        "relive node start --boot demoapp-1.0.0.tar.gz",
        "relive call demoapp '{\"Add\": {\"name\": \"main\", \"by\": 5}}'",
        "relive release build next",
        "relive deploy demoapp-2.0.0.tar.gz",
        "relive rollback",
        "relive deploy demoapp-2.0.0.tar.gz --permanent",
        "relive scenario run scenarios/demoapp.toml",
        "relive watch .",
    ] {
        assert!(readme.contains(command), "the README lacks {command:?}");
    }

    // A second project into the same directory is refused, naming it.
    let refused = relive.fails(work.path(), &["new", "demoapp"]);
    assert!(refused.contains("demoapp is not empty"), "{refused}");
    let refused = relive.fails(work.path(), &["new", "Demo"]);
    assert!(refused.contains("[a-z][a-z0-9_-]*"), "{refused}");

    // Build and boot 1.0.0; talk to it.
    let archive = relive.ok(&app, &["release", "build", "."]);
    assert_eq!(archive.trim(), "./demoapp-1.0.0.tar.gz");
    let node = NodeGuard::start_in(&app, &["--boot", "demoapp-1.0.0.tar.gz"], &relive.exe);
    assert_eq!(relive.call(&app, "demoapp", r#"{"Add": {"name": "main", "by": 5}}"#), 5);
    relive.ok(&app, &["cast", "demoapp", r#"{"Add": {"name": "main", "by": 2}}"#]);
    assert_eq!(relive.call(&app, "demoapp", r#"{"Get": "main"}"#), 7);
    assert_eq!(relive.call(&app, "demoapp", r#""Names""#), serde_json::json!(["main"]));
    assert_eq!(relive.call(&app, "demoapp", r#""Version""#), "1.0.0");
    let wrong = relive.fails(&app, &["call", "demoapp", r#"{"Get": 5}"#]);
    assert!(wrong.contains("invalid type: integer `5`, expected a string"), "{wrong}");
    assert!(relive.ok(&app, &["status"]).contains("release demoapp 1.0.0 (permanent)"));

    // watch: the code of module/ built as a development version above
    // 1.0.0 and deployed live, then undone.
    std::fs::write(
        app.join("module/src/lib.rs"),
        std::fs::read_to_string(app.join("module/src/lib.rs"))
            .unwrap()
            .replace("saturating_add", "wrapping_add"),
    )
    .unwrap();
    relive.ok(&app, &["watch", ".", "--once"]);
    let watched = module_version(&relive.status(&app), "demoapp");
    assert!(watched.starts_with("1.0.1-dev."), "{watched}");
    assert_eq!(relive.call(&app, "demoapp", r#"{"Get": "main"}"#), 7);
    relive.ok(&app, &["rollback"]);
    assert_eq!(module_version(&relive.status(&app), "demoapp"), "1.0.0");

    // 2.0.0 live: the state survives, the new field is serde's default.
    assert_eq!(relive.ok(&app, &["release", "build", "next"]).trim(), "./demoapp-2.0.0.tar.gz");
    let deployed = relive.ok(&app, &["deploy", "demoapp-2.0.0.tar.gz"]);
    assert!(deployed.contains("committed"), "{deployed}");
    assert_eq!(relive.call(&app, "demoapp", r#"{"Get": "main"}"#), 7);
    assert_eq!(relive.call(&app, "demoapp", r#""Resets""#), 0);
    relive.ok(&app, &["cast", "demoapp", r#"{"Reset": "gone"}"#]);
    assert_eq!(relive.call(&app, "demoapp", r#""Resets""#), 1);
    assert_eq!(relive.call(&app, "demoapp", r#""Version""#), "2.0.0");

    // Back to 1.0.0 live: 2.0.0 downgrades the state to 1.x's shape.
    relive.ok(&app, &["rollback"]);
    assert_eq!(relive.call(&app, "demoapp", r#""Version""#), "1.0.0");
    assert_eq!(relive.call(&app, "demoapp", r#"{"Get": "main"}"#), 7);
    let unknown = relive.fails(&app, &["call", "demoapp", r#""Resets""#]);
    assert!(unknown.contains("unknown variant `Resets`"), "{unknown}");

    // Again, permanent: a restarted node boots 2.0.0 (its state starts
    // from the release's args).
    relive.ok(&app, &["deploy", "demoapp-2.0.0.tar.gz", "--permanent"]);
    let releases = relive.ok(&app, &["releases"]);
    assert!(releases.contains("2.0.0") && releases.contains("permanent"), "{releases}");
    assert!(relive.ok(&app, &["node", "stop"]).contains("node stopped"));
    drop(node);
    let node = NodeGuard::start_in(&app, &[], &relive.exe);
    assert_eq!(relive.call(&app, "demoapp", r#""Version""#), "2.0.0");
    assert_eq!(relive.call(&app, "demoapp", r#"{"Get": "main"}"#), 0);
    relive.ok(&app, &["node", "stop"]);
    drop(node);

    // The project's scenario passes, on a node of its own.
    let report = relive.ok(&app, &["scenario", "run", "scenarios/demoapp.toml", "--json"]);
    let report: Value = serde_json::from_str(&report).unwrap();
    let scenario = &report["scenarios"][0];
    assert_eq!(report["ok"], true, "{report}");
    assert!(scenario["steps"].as_array().unwrap().iter().all(|s| s["ok"] == true), "{report}");
    assert!(scenario["totals"]["calls"].as_u64().unwrap() > 0, "{report}");
    assert!(scenario["totals"]["casts"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(scenario["totals"]["failed_requests"], 0, "{report}");

    // A JSON load whose calls the node refuses: each refusal is counted,
    // and an assertion on them fails naming the count.
    std::fs::write(
        app.join("scenarios/refused.toml"),
        "[scenario]\nname = \"refused calls are counted\"\napp = \"demoapp\"\n\n\
         [[step]]\nboot = \"1.0.0\"\npath = \"..\"\n\n\
         [[step]]\nload = { kind = \"json\", to = \"demoapp\", call = { Get = 5 }, clients = 1, rate = 100 }\n\n\
         [[step]]\nwait = \"300ms\"\n\n[[step]]\nstop_load = true\n\n\
         [[step]]\nassert = { failed_requests = 0 }\n",
    )
    .unwrap();
    let out = relive.run(&app, &["scenario", "run", "scenarios/refused.toml", "--json"]);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed = report["scenarios"][0]["totals"]["failed_requests"].as_u64().unwrap();
    assert!(failed > 0, "{report}");
    let failures = report["scenarios"][0]["failures"].to_string();
    assert!(failures.contains(&format!("failed_requests is {failed}, expected 0")), "{failures}");
    assert!(failures.contains("expected a string"), "the refusal is listed: {failures}");
}

#[test]
fn without_the_checkout_demo_bench_and_example_scenarios_say_they_need_it() {
    let relive = Installed::new();
    let work = tempfile::tempdir().unwrap();
    let err = relive.fails(work.path(), &["demo"]);
    assert!(err.contains("relive demo needs the relive source checkout"), "{err}");
    assert!(err.contains("cargo run --release -- demo"), "{err}");
    assert!(err.contains("RELIVE_CHECKOUT"), "{err}");
    let err = relive.fails(work.path(), &["bench", "call", "--module"]);
    assert!(err.contains("relive bench needs the relive source checkout"), "{err}");
    assert!(err.contains("cargo run --release -- bench call --module"), "{err}");

    let file = work.path().join("kv.toml");
    std::fs::write(&file, "[scenario]\nname = \"t\"\napp = \"kv\"\n\n[[step]]\nboot = \"1.0.0\"\n").unwrap();
    let err = relive.fails(work.path(), &["scenario", "run", "kv.toml"]);
    assert!(err.contains("kv.toml:6: step 1: no `releases` in [scenario]"), "{err}");
    assert!(err.contains("write `path = \"DIR\"` on the step"), "{err}");
}
