//! `relive node start|stop`, `deploy`, `rollback`, `make-permanent`,
//! `status`, `releases`, `call` through the binary, on the counter
//! application (examples/releases/): a node booted from an archive, a live
//! deploy that keeps the state, rollback, heart restarting a killed node on
//! the permanent release, the refusals (no node, a second node, another
//! application, a deploy during a deploy, another uid), and `relive watch`
//! (an edit deployed once, no build without a change, a build error
//! reported once, its older development releases removed).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::{
    NodeGuard, alive, build, counter_archives as archives, failure, install_relive, ok, rel, relive, repo,
    store_tree, wait_until,
};

fn release_of(status: &Value) -> (String, String, String) {
    let release = &status["release"];
    let field = |k: &str| release[k].as_str().unwrap_or_default().to_string();
    (field("name"), field("version"), field("state"))
}

#[test]
fn boot_deploy_live_rollback_make_permanent_and_stop() {
    let (v1, v2) = archives();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    let r = node.root();

    // The socket is private.
    let mode = std::fs::metadata(root.join("control.sock")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control.sock mode {mode:o}");

    // The release runs, its process answers under its name.
    assert_eq!(node.call("main_counter", r#"{"Add":2}"#), 2);
    let status = node.status();
    assert_eq!(release_of(&status), rel("counter", "1.0.0", "permanent"));
    assert_eq!(status["modules"][0]["name"], "counter");
    assert_eq!(status["modules"][0]["current"]["version"], "1.0.0");
    assert_eq!(status["modules"][0]["current"]["processes"], 1);
    assert_eq!(status["processes"][0]["name"], "main_counter");

    // A second node on the same root is refused; the first keeps running.
    let err = failure(&["node", "start", "--root", r, "--foreground"]);
    assert!(err.contains("already running"), "{err}");
    assert!(err.contains(&node.pid().to_string()), "{err}");
    assert_eq!(node.call("main_counter", r#""Get""#), 2);

    // Deploy 2.0.0 live: new code, same count.
    let out = ok(&["deploy", v2.to_str().unwrap(), "--root", r]);
    assert!(out.contains("committed"), "{out}");
    assert_eq!(node.call("main_counter", r#""Version""#), "2.0.0");
    assert_eq!(node.call("main_counter", r#""Get""#), 2);
    let status = node.status();
    assert_eq!(release_of(&status), rel("counter", "2.0.0", "current"));
    assert_eq!(status["modules"][0]["current"]["version"], "2.0.0");
    assert_eq!(status["last_report"]["outcome"], "committed");
    assert_eq!(status["last_report"]["moved"], 1);
    assert_eq!(
        node.releases(),
        vec![rel("counter", "1.0.0", "permanent"), rel("counter", "2.0.0", "current")]
    );

    // Rollback: 1.0.0 again, the count kept; a second rollback has nothing to do.
    let out = ok(&["rollback", "--root", r]);
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");
    assert_eq!(node.call("main_counter", r#"{"Add":1}"#), 3);
    assert_eq!(release_of(&node.status()), rel("counter", "1.0.0", "permanent"));
    assert_eq!(node.releases(), vec![rel("counter", "1.0.0", "permanent"), rel("counter", "2.0.0", "old")]);
    let err = failure(&["rollback", "--root", r]);
    assert!(err.contains("nothing to roll back"), "{err}");

    // A deploy while a deploy runs (in its health window) is refused.
    let slow = {
        let (r, v2) = (r.to_string(), v2.clone());
        std::thread::spawn(move || {
            relive(&["deploy", v2.to_str().unwrap(), "--root", &r, "--health-window", "1500ms"])
        })
    };
    wait_until("the first deploy runs", Duration::from_secs(10), || node.status()["busy"].is_string());
    let err = failure(&["deploy", v2.to_str().unwrap(), "--root", r]);
    assert!(err.contains("is running"), "{err}");
    let first = slow.join().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("health window"));
    assert_eq!(node.call("main_counter", r#""Version""#), "2.0.0");
    assert_eq!(node.call("main_counter", r#""Get""#), 3);

    // make-permanent --version names what must run: 1.0.0 no longer does
    // (a deploy came since), so it is refused and the store is untouched.
    let store = store_tree(&root);
    let err = failure(&["make-permanent", "--version", "1.0.0", "--root", r]);
    assert!(
        err.contains("counter 2.0.0 runs now, not 1.0.0") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(store_tree(&root) == store, "a refused make-permanent changed the store");

    // make-permanent: 2.0.0 is what a restart boots now.
    let out = ok(&["make-permanent", "--version", "2.0.0", "--root", r]);
    assert!(out.contains("counter 2.0.0 is permanent"), "{out}");
    assert_eq!(node.releases(), vec![rel("counter", "1.0.0", "old"), rel("counter", "2.0.0", "permanent")]);
    assert_eq!(release_of(&node.status()), rel("counter", "2.0.0", "permanent"));

    // Deploying the older release goes down live: 2.0.0 upgrades from ^1.0.0,
    // so 2.0.0's downgrade and 1.0.0's code_change carry the state back.
    ok(&["deploy", v1.to_str().unwrap(), "--root", r]);
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");
    assert_eq!(node.call("main_counter", r#""Get""#), 3);
    assert_eq!(
        node.releases(),
        vec![rel("counter", "1.0.0", "current"), rel("counter", "2.0.0", "permanent")]
    );
    // Undo that, then go to 1.0.0 again from the store with rollback --to.
    ok(&["rollback", "--root", r]);
    assert_eq!(node.call("main_counter", r#""Version""#), "2.0.0");
    let out = ok(&["rollback", "--to", "1.0.0", "--root", r]);
    assert!(out.contains("1.0.0"), "{out}");
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");
    assert_eq!(node.call("main_counter", r#""Get""#), 3);
    let err = failure(&["rollback", "--to", "9.9.9", "--root", r]);
    assert!(err.contains("9.9.9"), "{err}");

    // stop: the socket goes, the process exits, commands find no node.
    let out = ok(&["node", "stop", "--root", r]);
    assert!(out.contains("node stopped"), "{out}");
    assert!(!root.join("control.sock").exists());
    wait_until("the node process exits", Duration::from_secs(5), || !alive(node.pid()));
    let err = failure(&["status", "--root", r]);
    assert!(err.contains(&format!("no node is running on {r}")), "{err}");
}

#[test]
fn commands_without_a_node_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().to_str().unwrap();
    let expected =
        format!("relive: no node is running on {r} (start one with `relive node start --root {r}`)");
    for args in [
        vec!["status"],
        vec!["releases", "--json"],
        vec!["rollback"],
        vec!["make-permanent"],
        vec!["call", "main_counter", r#""Get""#],
        vec!["cast", "main_counter", r#"{"Add":1}"#],
        vec!["node", "stop"],
    ] {
        let mut args = args.clone();
        args.extend(["--root", r]);
        let err = failure(&args);
        assert_eq!(err.trim(), expected, "relive {args:?}");
    }
    // A store without a release and no --boot: the node says what to pass.
    let err = failure(&["node", "start", "--root", r]);
    assert!(err.contains("pass --boot ARCHIVE"), "{err}");
    assert!(!dir.path().join("control.sock").exists());
}

#[test]
fn a_release_of_another_application_is_refused_and_the_node_keeps_running() {
    let (v1, v2) = archives();
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("other-app");
    std::fs::create_dir(&app).unwrap();
    let crate_dir = repo().join("examples").join("counter-v1");
    std::fs::write(
        app.join("release.toml"),
        format!(
            "[release]\nname = \"other\"\nversion = \"1.1.0\"\nupgrade_from = \"^1.0.0\"\n\n\
             [[module]]\nname = \"counter\"\ncrate = {:?}\n\n\
             [[process]]\nname = \"main_counter\"\nmodule = \"counter\"\nrestart = \"permanent\"\n",
            crate_dir.to_str().unwrap()
        ),
    )
    .unwrap();
    let other = build(&app, dir.path());
    // The same application, but a release that upgrades only from 2.x.
    let later = dir.path().join("later-app");
    std::fs::create_dir(&later).unwrap();
    std::fs::write(
        later.join("release.toml"),
        format!(
            "[release]\nname = \"counter\"\nversion = \"3.0.0\"\nupgrade_from = \">=2.0.0, <3.0.0\"\n\n\
             [[module]]\nname = \"counter\"\ncrate = {:?}\n",
            repo().join("examples").join("counter-v2").to_str().unwrap()
        ),
    )
    .unwrap();
    let later = build(&later, dir.path());

    let root = dir.path().join("node");
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    let r = node.root();
    assert_eq!(node.call("main_counter", r#"{"Add":7}"#), 7);
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec!["deploy", other.to_str().unwrap(), "--root", r];
        args.extend(extra);
        let err = failure(&args);
        assert!(err.contains("another application"), "{err}");
        assert!(err.contains("deploy a release of counter"), "{err}");
    }
    // Outside upgrade_from: only a restart could reach it.
    let err = failure(&["deploy", later.to_str().unwrap(), "--root", r]);
    assert!(err.contains("cannot be deployed live") && err.contains(">=2.0.0, <3.0.0"), "{err}");
    let planned = ok(&["plan", later.to_str().unwrap(), "--root", r]);
    assert!(planned.starts_with("restart: "), "relive plan asks the running node: {planned}");
    // Nothing changed: same release, same process, same state, and the
    // store did not take the other release in.
    assert_eq!(release_of(&node.status()), rel("counter", "1.0.0", "permanent"));
    assert_eq!(node.call("main_counter", r#""Get""#), 7);
    assert_eq!(node.releases(), vec![rel("counter", "1.0.0", "permanent")]);

    // A dry run of a good release changes nothing, not even the store's list.
    let out = ok(&["deploy", v2.to_str().unwrap(), "--root", r, "--dry-run"]);
    assert!(out.contains("1 processes checked") && out.contains("no problem"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");
    assert_eq!(node.releases(), vec![rel("counter", "1.0.0", "permanent")]);
    // --permanent: deployed and made permanent in one go.
    ok(&["deploy", v2.to_str().unwrap(), "--root", r, "--permanent"]);
    assert_eq!(node.call("main_counter", r#""Get""#), 7);
    assert_eq!(node.releases(), vec![rel("counter", "1.0.0", "old"), rel("counter", "2.0.0", "permanent")]);
}

#[test]
fn heart_restarts_a_killed_node_on_the_permanent_release() {
    let (v1, v2) = archives();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let mut node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap(), "--heart"]);
    assert_eq!(node.pids.len(), 2, "node and heart pids: {:?}", node.pids);
    let (first, heart) = (node.pids[0], node.pids[1]);
    let r = root.to_str().unwrap();
    assert_eq!(node.status()["parent_pid"], heart);

    // 2.0.0 deployed but not made permanent.
    ok(&["deploy", v2.to_str().unwrap(), "--root", r]);
    assert_eq!(node.call("main_counter", r#""Version""#), "2.0.0");
    assert_eq!(
        node.releases(),
        vec![rel("counter", "1.0.0", "permanent"), rel("counter", "2.0.0", "current")]
    );

    let killed = Command::new("kill").args(["-9", &first.to_string()]).status().unwrap();
    assert!(killed.success());
    let mut restarted = None;
    wait_until("heart starts the node again", Duration::from_secs(15), || {
        let out = relive(&["status", "--root", r, "--json"]);
        if !out.status.success() {
            return false;
        }
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        let pid = status["pid"].as_u64().unwrap() as u32;
        if pid == first {
            return false;
        }
        restarted = Some((pid, status));
        true
    });
    let (pid, status) = restarted.unwrap();
    node.pids.push(pid);
    assert!(!alive(first));
    assert!(alive(heart));
    assert_eq!(status["parent_pid"], heart);
    // The crash undid the deploy that was not permanent, as in OTP; the
    // store says so too.
    assert_eq!(release_of(&status), rel("counter", "1.0.0", "permanent"));
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");
    assert_eq!(node.releases(), vec![rel("counter", "1.0.0", "permanent"), rel("counter", "2.0.0", "old")]);

    // kill -9 in the middle of a deploy (its health window): the deploy
    // fails, heart boots the permanent release, the store is as before.
    let deploy = {
        let (r, v2) = (r.to_string(), v2.clone());
        std::thread::spawn(move || {
            relive(&["deploy", v2.to_str().unwrap(), "--root", &r, "--health-window", "3s"])
        })
    };
    wait_until("the deploy runs", Duration::from_secs(10), || node.status()["busy"].is_string());
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let out = deploy.join().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("closed the connection"), "{out:?}");
    let mut third = None;
    wait_until("heart starts the node a second time", Duration::from_secs(15), || {
        let out = relive(&["status", "--root", r, "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        third = status["pid"].as_u64().map(|p| p as u32).filter(|&p| p != pid);
        third.is_some()
    });
    let pid = third.unwrap();
    node.pids.push(pid);
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");
    assert_eq!(node.releases(), vec![rel("counter", "1.0.0", "permanent"), rel("counter", "2.0.0", "old")]);

    // A requested stop ends heart too.
    ok(&["node", "stop", "--root", r]);
    wait_until("the node and heart exit", Duration::from_secs(5), || !alive(pid) && !alive(heart));
    assert!(!root.join("control.sock").exists());
}

#[test]
fn a_connection_from_another_uid_is_refused() {
    if own_uid() != 0 {
        eprintln!("skipped: only root can run a node as another user (this test runs as uid {})", own_uid());
        return;
    }
    let (v1, _) = archives();
    const NOBODY: u32 = 65534;
    // Everything the node needs, where that user can read it wherever the
    // checkout lives: the binary (the node re-executes itself) and the
    // archive, in a fresh directory of their own.
    let dir = tempfile::tempdir().unwrap();
    if let Some(closed) = dir
        .path()
        .ancestors()
        .skip(1)
        .find(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
    {
        eprintln!(
            "skipped: uid {NOBODY} cannot enter {} (mode {:o}), above the temporary directory {}; set TMPDIR elsewhere",
            closed.display(),
            std::fs::metadata(closed).unwrap().permissions().mode() & 0o777,
            dir.path().display()
        );
        return;
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = bin.join("relive");
    install_relive(&exe);
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = bin.join("counter-1.0.0.tar.gz");
    std::fs::copy(v1, &archive).unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).unwrap();
    let root = dir.path().join("node");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&root, Some(NOBODY), Some(NOBODY)).unwrap();
    let node = NodeGuard::start_as(&root, &["--boot", archive.to_str().unwrap()], Some(NOBODY), &exe);
    let r = node.root();
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid_line.split_whitespace().nth(1), Some(NOBODY.to_string().as_str()), "{uid_line}");
    let meta = std::fs::metadata(root.join("control.sock")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), NOBODY);
    // Root gets past the file mode; the node's peer check refuses it.
    let err = failure(&["status", "--root", r]);
    assert!(err.contains("refused") && err.contains("uid 0"), "{err}");
    let err = failure(&["call", "--root", r, "main_counter", r#"{"Add":1}"#]);
    assert!(err.contains("refused"), "{err}");
}

/// The test's own uid (root, in the container CI runs in).
fn own_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().expect("running id -u");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a uid")
}

/// A module crate of its own (the counter's source, standalone, building
/// against this checkout's relive-abi), in an application named "counter"
/// like the example release, so `relive watch` can edit and redeploy it.
fn watched_app(dir: &Path) -> PathBuf {
    let app = dir.join("app");
    let krate = app.join("watched");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    let abi = repo().join("runtime").join("abi");
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            "[package]\nname = \"watched\"\nversion = \"1.0.0\"\nedition = \"2024\"\npublish = false\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nrelive-abi = {{ path = {:?} }}\n\
             serde = {{ version = \"1\", features = [\"derive\"] }}\n\n[workspace]\n",
            abi.to_str().unwrap()
        ),
    )
    .unwrap();
    let source = std::fs::read_to_string(repo().join("examples/counter-v1/src/lib.rs")).unwrap();
    std::fs::write(krate.join("src/lib.rs"), source).unwrap();
    std::fs::write(
        app.join("release.toml"),
        "[release]\nname = \"counter\"\nversion = \"1.0.0\"\n\n[[module]]\nname = \"counter\"\ncrate = \"watched\"\n\n\
         [[process]]\nname = \"main_counter\"\nmodule = \"counter\"\nargs = { label = \"main\" }\n",
    )
    .unwrap();
    app
}

/// A `relive watch` process; dropping it kills it, even when the test
/// failed.
struct WatchGuard(std::process::Child);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_deploys_each_edit_once_settles_reports_a_build_error_once_and_prunes_its_releases() {
    let (v1, _) = archives();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    node.call("main_counter", r#"{"Add": 5}"#);
    let app = watched_app(dir.path());
    // The examples' target directory, where the module's dependencies are
    // built once for every run of this test (watch builds the dev profile);
    // the crate is "watched", so its builds replace no example library.
    let target = repo().join("target").join("examples");
    let (out, err) = (dir.path().join("watch.out"), dir.path().join("watch.err"));
    // Declared after the node: dropped (killed) before it.
    let _watch = WatchGuard(
        Command::new(env!("CARGO_BIN_EXE_relive"))
            .args([
                "watch",
                app.to_str().unwrap(),
                "--root",
                node.root(),
                "--target-dir",
                target.to_str().unwrap(),
            ])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("starting relive watch"),
    );
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let deploys =
        || read(&out).lines().filter(|l| l.contains(" deployed ")).map(str::to_string).collect::<Vec<_>>();
    let builds = || read(&err).matches("relive watch: building counter").count();
    let release_version = |node: &NodeGuard| release_of(&node.status()).1;
    let lib = app.join("watched/src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let version_line = r#"Request::Version => Reply::Text(env!("CARGO_PKG_VERSION").to_string())"#;
    assert!(source.contains(version_line), "the counter's Version line changed; update this test");
    let answering = |text: &str| {
        source.replace(version_line, &format!("Request::Version => Reply::Text({text:?}.to_string())"))
    };

    // The sources as they are, built and deployed at once, above the
    // running release.
    wait_until("the first development build is deployed", Duration::from_secs(600), || deploys().len() == 1);
    let first = release_version(&node);
    assert!(first.starts_with("1.0.1-dev."), "{first}");
    let line = &deploys()[0];
    let (clock, rest) = line.split_once(' ').unwrap();
    assert!(clock.len() == 8 && clock.chars().filter(|c| *c == ':').count() == 2, "HH:MM:SS: {line}");
    assert!(
        rest.starts_with(&format!("deployed counter {first}: live in ")) && rest.contains(" s (build "),
        "{line}"
    );
    assert_eq!(node.call("main_counter", r#""Get""#), Value::from(5), "the state moved with it");

    // One edit: one build, one deploy, answering with the new code.
    std::fs::write(&lib, answering("edited")).unwrap();
    wait_until("the edit answers", Duration::from_secs(240), || {
        node.call("main_counter", r#""Version""#) == "edited"
    });
    wait_until("the edit's deploy is reported", Duration::from_secs(30), || deploys().len() == 2);
    let second = release_version(&node);
    assert!(second.starts_with("1.0.1-dev.") && second != first, "{second}");
    assert_eq!(node.call("main_counter", r#""Get""#), Value::from(5));

    // The same bytes written again, and a few idle seconds: nothing builds.
    std::fs::write(&lib, answering("edited")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!((builds(), deploys().len()), (2, 2), "a build without a change:\n{}", read(&err));

    // A build error is reported once, also when the broken file is saved
    // again; the node keeps what it runs.
    let broken = format!("{}\nthis is not Rust\n", answering("edited"));
    std::fs::write(&lib, &broken).unwrap();
    wait_until("the build error is reported", Duration::from_secs(240), || {
        read(&err).contains("the node keeps the version it runs")
    });
    std::fs::write(&lib, &broken).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let log = read(&err);
    assert_eq!(log.matches("building module counter failed").count(), 1, "{log}");
    assert_eq!(log.matches("the node keeps the version it runs").count(), 1, "{log}");
    assert_eq!(builds(), 3, "{log}");
    assert_eq!(release_version(&node), second);
    assert_eq!(node.call("main_counter", r#""Version""#), Value::from("edited"));

    // Fixed: deployed, and the development releases before the previous
    // one are gone from the store (the previous one stays for rollback).
    std::fs::write(&lib, answering("fixed")).unwrap();
    wait_until("the fix answers", Duration::from_secs(240), || {
        node.call("main_counter", r#""Version""#) == "fixed"
    });
    wait_until("the fix's deploy is reported", Duration::from_secs(30), || deploys().len() == 3);
    let third = release_version(&node);
    let expected = vec![
        rel("counter", "1.0.0", "permanent"),
        rel("counter", &second, "old"),
        rel("counter", &third, "current"),
    ];
    wait_until("the first development release is removed", Duration::from_secs(30), || {
        node.releases() == expected
    });
    assert_eq!(node.call("main_counter", r#""Get""#), Value::from(5));
}
