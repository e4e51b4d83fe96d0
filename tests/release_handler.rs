//! The release handler (relive-node) through the binary: what a refused,
//! failed or dry-run deploy leaves in the store (nothing), signatures at
//! deploy and at boot, tampered libraries refused at boot, archives that
//! are not files or are too large, the typed protocol refusing bad lines on
//! the raw socket, SIGTERM and heart's ping, `release remove|prune`, and
//! the status's permanent release, restarts and listening sockets.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{
    NodeGuard, Tree, alive, build, counter_archives as archives, failure, free_port, kv_archive, ok, rel,
    release_rows, relive, relive_within, repo, signal, store_tree, wait_until,
};

/// Kills a child process (a node in the foreground) on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fails naming the paths that differ (not dumping libraries).
fn assert_same_tree(before: &Tree, root: &Path, what: &str) {
    let after = store_tree(root);
    let differ: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(differ.is_empty(), "{what} changed the store under {}: {differ:?}", root.display());
}

/// `(name, version, state)` of every release, read from the store (works
/// with or without a node).
fn stored(root: &Path) -> Vec<(String, String, String)> {
    release_rows(&["release", "list", "--root", root.to_str().unwrap(), "--json"])
}

fn version_of(status: &Value) -> String {
    status["release"]["version"].as_str().unwrap_or_default().to_string()
}

/// The sha256 of an archive's only module's library.
fn library_sha(archive: &Path) -> String {
    let summary: Value =
        serde_json::from_str(&ok(&["release", "inspect", archive.to_str().unwrap(), "--json"])).unwrap();
    summary["modules"][0]["sha256"].as_str().expect("a sha256").to_string()
}

/// `relive deploy` that must be refused: its stderr.
fn refused_deploy(archive: &Path, root: &str) -> String {
    failure(&["deploy", archive.to_str().unwrap(), "--root", root])
}

/// Where this test binary keeps archives it builds once.
fn shared_dir(name: &str) -> PathBuf {
    let dir = repo().join("target").join("release-archives").join("release-handler").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A forged counter 2.0.0: the real 2.0.0 manifest, but its library is the
/// example module built for another ABI version (examples/bad-abi). The
/// archive verifies; the upgrade fails when the code server opens it.
fn broken_v2() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = shared_dir("bad-abi");
        // The bad-abi library, built by cargo as the examples are (`relive
        // release build` refuses it, rightly: it checks each library's ABI).
        let target = repo().join("target").join("examples");
        let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--quiet", "-p", "bad-abi", "--manifest-path"])
            .arg(repo().join("examples").join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("running cargo");
        assert!(status.success(), "building examples/bad-abi failed");
        let library = dir.join("libcounter.so");
        std::fs::copy(target.join("release").join("libbad_abi.so"), &library).unwrap();
        let manifest_path = repo().join("examples/releases/counter-2.0.0/release.toml");
        let manifest = relive_releases::manifest::Manifest::from_path(&manifest_path).unwrap();
        let forged = relive_releases::archive::build(
            &manifest,
            manifest_path.parent().unwrap(),
            &[("counter".to_string(), library)],
            &dir.join("forged"),
            None,
        )
        .expect("forging counter 2.0.0 with the bad-abi library");
        assert_eq!(forged.file_name().unwrap(), "counter-2.0.0.tar.gz");
        forged
    })
}

/// counter 3.0.0 (examples/counter-v3, upgrades from 2.x).
fn counter_v3() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = shared_dir("counter-3.0.0");
        let app = dir.join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(
            app.join("release.toml"),
            format!(
                "[release]\nname = \"counter\"\nversion = \"3.0.0\"\nupgrade_from = \"^2.0.0\"\n\n\
                 [[module]]\nname = \"counter\"\ncrate = {:?}\n\n\
                 [[process]]\nname = \"main_counter\"\nmodule = \"counter\"\nrestart = \"permanent\"\nargs = {{ label = \"main\" }}\n",
                repo().join("examples").join("counter-v3").to_str().unwrap()
            ),
        )
        .unwrap();
        build(&app, &dir.join("built"))
    })
}

// ------------------------------------------------------------------ a, b

#[test]
fn dry_run_and_every_refused_deploy_leave_the_store_byte_identical() {
    let (v1, v2) = archives();
    let dir = tempfile::tempdir().unwrap();
    let kv = kv_archive("1.0.0", free_port(), dir.path());
    let broken = broken_v2();
    let root = dir.path().join("node");
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    let r = node.root();
    assert_eq!(node.call("main_counter", r#"{"Add":3}"#), 3);
    let before = store_tree(&root);
    assert!(
        before.contains_key("state.json") && before.keys().any(|k| k.starts_with("code/")),
        "{:?}",
        before.keys()
    );

    // A dry run: checked, nothing changed.
    let out = ok(&["deploy", v2.to_str().unwrap(), "--root", r, "--dry-run"]);
    assert!(out.contains("1 processes checked") && out.contains("nothing was changed"), "{out}");
    assert_same_tree(&before, &root, "a dry run");
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");

    // The running version again.
    let err = refused_deploy(v1, r);
    assert!(err.contains("counter 1.0.0 already runs"), "{err}");
    assert_same_tree(&before, &root, "deploying the running version");

    // Another application.
    let err = refused_deploy(&kv, r);
    assert!(err.contains("another application") && err.contains("kv 1.0.0"), "{err}");
    assert_same_tree(&before, &root, "deploying another application");

    // A truncated archive.
    let bytes = std::fs::read(v2).unwrap();
    let truncated = dir.path().join("counter-2.0.0-truncated.tar.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = refused_deploy(&truncated, r);
    assert!(err.contains(truncated.to_str().unwrap()) && err.contains("nothing was changed"), "{err}");
    assert_same_tree(&before, &root, "a truncated archive");

    // A release whose upgrade fails when it is applied (a library of
    // another ABI version).
    let err = refused_deploy(broken, r);
    assert!(err.contains("deploying counter 2.0.0"), "{err}");
    assert!(err.contains("still runs counter 1.0.0") && err.contains("nothing was changed"), "{err}");
    assert_same_tree(&before, &root, "a deploy that failed at apply");
    // With --json: the failure object, and a failure exit.
    let out = relive(&["deploy", broken.to_str().unwrap(), "--root", r, "--json"]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("deploy --json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    });
    let error = json["error"].as_str().unwrap_or_else(|| panic!("no error in {json}"));
    assert!(error.contains("deploying counter 2.0.0") && error.contains("nothing was changed"), "{json}");
    assert_same_tree(&before, &root, "a deploy that failed at apply (--json)");

    // The node runs what it ran, with its state.
    let status = node.status();
    assert_eq!(version_of(&status), "1.0.0");
    assert!(status["busy"].is_null(), "{status}");
    assert_eq!(node.call("main_counter", r#""Get""#), 3);
    assert_eq!(stored(&root), vec![rel("counter", "1.0.0", "permanent")]);
}

#[test]
fn a_corrected_archive_of_a_refused_version_deploys() {
    let (v1, v2) = archives();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    let r = node.root();
    assert_eq!(node.call("main_counter", r#"{"Add":5}"#), 5);

    let err = refused_deploy(broken_v2(), r);
    assert!(err.contains("deploying counter 2.0.0"), "{err}");
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");

    // The real 2.0.0: the refused one left nothing behind to clash with.
    let out = ok(&["deploy", v2.to_str().unwrap(), "--root", r]);
    assert!(out.contains("counter 2.0.0 runs now"), "{out}");
    assert_eq!(node.call("main_counter", r#""Version""#), "2.0.0");
    assert_eq!(node.call("main_counter", r#""Get""#), 5);
    let releases: Value = serde_json::from_str(&ok(&["releases", "--root", r, "--json"])).unwrap();
    let states: Vec<(String, String)> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["version"].as_str().unwrap().to_string(), x["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(states, vec![("1.0.0".into(), "permanent".into()), ("2.0.0".into(), "current".into())]);
    let text = ok(&["releases", "--root", r]);
    assert!(text.contains("counter 2.0.0 (current)"), "{text}");
    // Its library in code/ is the real one.
    let sha = library_sha(v2);
    assert!(root.join("code").join(format!("{sha}.so")).is_file());
}

// --------------------------------------------------------------------- c

#[test]
fn trusted_keys_refuse_unsigned_archives_at_deploy_and_unsigned_releases_at_boot() {
    let (v1, _) = archives();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("K");
    let said = ok(&["release", "keygen", key.to_str().unwrap()]);
    let hex: String = said
        .split("public key ")
        .nth(1)
        .expect("keygen prints the public key")
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(hex.len(), 64, "{said}");
    let target = repo().join("target").join("examples");
    let app_v2 = repo().join("examples").join("releases").join("counter-2.0.0");
    let signed_v2 = PathBuf::from(
        ok(&[
            "release",
            "build",
            app_v2.to_str().unwrap(),
            "--out",
            dir.path().join("signed").to_str().unwrap(),
            "--sign",
            key.to_str().unwrap(),
            "--target-dir",
            target.to_str().unwrap(),
        ])
        .trim(),
    );
    let unsigned_v2 = &archives().1;

    // A node booted without keys; then the store trusts K.
    let root = dir.path().join("node");
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    let r = node.root();
    std::fs::create_dir_all(root.join("keys")).unwrap();
    std::fs::copy(dir.path().join("K.pub"), root.join("keys").join("K.pub")).unwrap();
    let before = store_tree(&root);

    let err = refused_deploy(unsigned_v2, r);
    assert!(err.contains(unsigned_v2.to_str().unwrap()), "the error names the archive: {err}");
    assert!(err.contains(&hex), "the error names the trusted key: {err}");
    assert_same_tree(&before, &root, "an unsigned archive refused");
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");

    let out = ok(&["deploy", signed_v2.to_str().unwrap(), "--root", r]);
    assert!(out.contains("counter 2.0.0 runs now"), "{out}");
    assert_eq!(node.call("main_counter", r#""Version""#), "2.0.0");
    assert_eq!(stored(&root), vec![rel("counter", "1.0.0", "permanent"), rel("counter", "2.0.0", "current")]);
    assert!(root.join("releases/counter/2.0.0/release.sig").is_file());

    // At the next boot, the permanent 1.0.0 (unpacked before the key was
    // trusted, unsigned) is refused.
    node.stop();
    let before = store_tree(&root);
    let err = failure(&["node", "start", "--root", r]);
    assert!(err.contains("cannot boot counter 1.0.0"), "{err}");
    assert!(err.contains("no signature") && err.contains("release.sig"), "{err}");
    assert!(!root.join("control.sock").exists());
    assert_same_tree(&before, &root, "a refused boot");

    // Booting the signed 2.0.0 (in the store) makes it permanent and runs.
    let node = NodeGuard::start(&root, &["--boot", signed_v2.to_str().unwrap()]);
    let status = node.status();
    assert_eq!(version_of(&status), "2.0.0");
    assert_eq!(status["release"]["state"], "permanent");
    node.stop();

    // A fresh store that trusts K does not boot an unsigned archive.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(fresh.join("keys")).unwrap();
    std::fs::copy(dir.path().join("K.pub"), fresh.join("keys").join("K.pub")).unwrap();
    let err = failure(&["node", "start", "--root", fresh.to_str().unwrap(), "--boot", v1.to_str().unwrap()]);
    assert!(err.contains(v1.to_str().unwrap()) && err.contains("sign"), "{err}");
    assert!(err.contains(&hex), "{err}");
    assert!(!fresh.join("control.sock").exists());
    assert!(!fresh.join("releases").join("counter").exists(), "the refused archive was unpacked");
    // Nor does --require-signed with no key at all.
    let bare = dir.path().join("bare");
    let err = failure(&[
        "node",
        "start",
        "--root",
        bare.to_str().unwrap(),
        "--require-signed",
        "--boot",
        v1.to_str().unwrap(),
    ]);
    assert!(err.contains("sign"), "{err}");
    assert!(!bare.join("releases").join("counter").exists());
}

// --------------------------------------------------------------------- d

#[test]
fn a_flipped_or_swapped_library_of_the_permanent_release_is_refused_at_boot() {
    let (v1, v2) = archives();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let r = root.to_str().unwrap();
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    ok(&["deploy", v2.to_str().unwrap(), "--root", r]);
    node.stop();
    let (sha1, sha2) = (library_sha(v1), library_sha(v2));
    let lib1 = root.join("code").join(format!("{sha1}.so"));
    let lib2 = root.join("code").join(format!("{sha2}.so"));
    let original = std::fs::read(&lib1).unwrap();
    let named = format!("code/{sha1}.so");

    // One byte flipped.
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&lib1, &flipped).unwrap();
    let out = relive(&["node", "start", "--root", r]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a flipped library booted: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(&named), "the error names {named}: {err}");
    assert!(!root.join("control.sock").exists());

    // 2.0.0's library in place of 1.0.0's.
    std::fs::copy(&lib2, &lib1).unwrap();
    let out = relive(&["node", "start", "--root", r]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a swapped library booted: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(&named), "the error names {named}: {err}");
    assert!(err.contains(&sha2), "the error gives the sha256 found: {err}");

    // Restored, it boots (the permanent 1.0.0).
    std::fs::write(&lib1, &original).unwrap();
    let node = NodeGuard::start(&root, &[]);
    assert_eq!(version_of(&node.status()), "1.0.0");
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");
}

// --------------------------------------------------------------------- e

#[test]
fn a_fifo_a_directory_a_device_and_an_oversized_file_are_refused_quickly() {
    let (v1, v2) = archives();
    let dir = tempfile::tempdir().unwrap();
    let size = std::fs::metadata(v2).unwrap().len();
    assert!(size < 1 << 20, "counter 2.0.0's archive is {size} bytes: raise the test's cap");
    let root = dir.path().join("node");
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap(), "--max-archive-size", "1M"]);
    let r = node.root();
    let before = store_tree(&root);

    let fifo = dir.path().join("fifo.tar.gz");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("running mkfifo");
    assert!(made.success());
    let directory = dir.path().join("directory.tar.gz");
    std::fs::create_dir(&directory).unwrap();
    let big = dir.path().join("big.tar.gz");
    std::fs::File::create(&big).unwrap().set_len(2 << 20).unwrap();
    let cases: [(&Path, &str); 4] = [
        (&fifo, "not a regular file"),
        (&directory, "not a regular file"),
        (Path::new("/dev/zero"), "not a regular file"),
        (&big, "more than the cap"),
    ];
    for (path, expected) in cases {
        let started = Instant::now();
        let out = relive_within(&["deploy", path.to_str().unwrap(), "--root", r], Duration::from_secs(10))
            .unwrap_or_else(|| panic!("deploying {} did not return within 10 s", path.display()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "deploying {} succeeded", path.display());
        assert!(err.contains(path.to_str().unwrap()) && err.contains(expected), "{}: {err}", path.display());
        eprintln!("{} refused in {:.0} ms", path.display(), started.elapsed().as_secs_f64() * 1e3);
        let status = node.status();
        assert!(status["busy"].is_null(), "busy after {}: {status}", path.display());
        assert_eq!(version_of(&status), "1.0.0");
        assert_same_tree(&before, &root, &format!("deploying {}", path.display()));
    }
    let out = ok(&["deploy", v2.to_str().unwrap(), "--root", r]);
    assert!(out.contains("counter 2.0.0 runs now"), "{out}");
}

// --------------------------------------------------------------------- f

/// A raw connection to the control socket.
struct Raw {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Raw {
    fn connect(root: &Path) -> Raw {
        let stream = UnixStream::connect(root.join("control.sock")).expect("connecting to control.sock");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
        self.writer.flush().unwrap();
    }

    /// The next reply line, as JSON.
    fn reply(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a reply line");
        assert!(n > 0, "the node closed the connection without answering");
        serde_json::from_str(line.trim_end()).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The text of an error reply.
    fn error(&mut self) -> String {
        let reply = self.reply();
        reply["error"]["error"].as_str().unwrap_or_else(|| panic!("not an error: {reply}")).to_string()
    }

    /// Whether the node closed the connection (EOF or reset).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
        }
    }
}

#[test]
fn wrong_typed_unknown_and_oversized_requests_are_refused_on_the_raw_socket() {
    let (v1, v2) = archives();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    let r = node.root();
    ok(&["deploy", v2.to_str().unwrap(), "--root", r]);

    let mut raw = Raw::connect(&root);
    raw.send(b"{\"v\":1,\"request\":{\"rollback\":{\"to\":5}}}\n");
    let error = raw.error();
    assert!(error.contains("request.rollback.to"), "{error}");
    raw.send(b"{\"v\":1,\"request\":{\"deploy\":{\"archive\":\"/x\",\"permanent\":\"yes\"}}}\n");
    let error = raw.error();
    assert!(error.contains("permanent"), "{error}");
    raw.send(b"{\"cmd\":\"rollback\",\"to\":5}\n");
    let error = raw.error();
    assert!(error.contains("cmd"), "{error}");
    // The connection goes on after a refused line.
    raw.send(b"{\"v\":1,\"request\":\"ping\"}\n");
    assert_eq!(raw.reply()["ok"]["pong"], node.pid());

    // Nothing was rolled back.
    let status = node.status();
    assert_eq!(version_of(&status), "2.0.0");
    assert_eq!(node.call("main_counter", r#""Version""#), "2.0.0");

    // A line that is not UTF-8: an error, then the connection is closed.
    let mut raw = Raw::connect(&root);
    raw.send(b"{\"v\":1,\"request\":\"\xff\xfe\"}\n");
    let error = raw.error();
    assert!(error.contains("UTF-8"), "{error}");
    assert!(raw.closed(), "the connection stays open after a line that is not UTF-8");

    // 2 MiB without a newline: an error, then the connection is closed.
    let mut raw = Raw::connect(&root);
    let mut writer = raw.writer.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..32 {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let error = raw.error();
    assert!(error.contains("longer than"), "{error}");
    assert!(raw.closed(), "the connection stays open after an oversized line");
    flood.join().unwrap();

    // The node still answers, on 2.0.0.
    let status = node.status();
    assert_eq!(version_of(&status), "2.0.0");
    assert!(status["busy"].is_null(), "{status}");
    assert_eq!(node.call("main_counter", r#""Version""#), "2.0.0");
    assert_eq!(stored(&root), vec![rel("counter", "1.0.0", "permanent"), rel("counter", "2.0.0", "current")]);
}

// --------------------------------------------------------------------- g

#[test]
fn sigterm_stops_a_node_gracefully_and_a_heart_with_it() {
    let (v1, _) = archives();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let r = root.to_str().unwrap();

    // A daemonized node: SIGTERM, it exits, the socket goes, the log says so.
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    signal(node.pid(), "TERM");
    wait_until("the node exits after SIGTERM", Duration::from_secs(20), || !alive(node.pid()));
    assert!(!root.join("control.sock").exists(), "the socket is left behind");
    assert!(!root.join("run").exists(), "the node's staged libraries are left behind");
    let log = std::fs::read_to_string(root.join("node.log")).unwrap();
    assert!(log.contains("node: stopped (SIGTERM or SIGINT)"), "{log}");
    drop(node);

    // It starts again on the permanent release, without --boot.
    let node = NodeGuard::start(&root, &[]);
    assert_eq!(version_of(&node.status()), "1.0.0");
    node.stop();
    assert!(!root.join("run").exists(), "`node stop` leaves the node's staged libraries behind");
    drop(node);

    // In the foreground: exit code 0 after SIGTERM, and after SIGINT.
    for sig in ["TERM", "INT"] {
        let stderr = dir.path().join(format!("foreground-{sig}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_relive"))
            .args(["node", "start", "--foreground", "--root", r])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting a node in the foreground");
        let mut child = ChildGuard(child);
        let pid = child.0.id();
        wait_until("the foreground node answers", Duration::from_secs(60), || {
            let out = relive(&["status", "--root", r, "--json"]);
            out.status.success()
                && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| s["pid"] == pid)
        });
        signal(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the node did not exit within 20 s of SIG{sig}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(&stderr).unwrap();
        assert_eq!(status.code(), Some(0), "SIG{sig}: {status}; {log}");
        assert!(log.contains("node: stopped (SIGTERM or SIGINT)"), "{log}");
        assert!(!root.join("control.sock").exists());
    }

    // With heart: SIGTERM to the heart stops the node, then the heart.
    let node = NodeGuard::start(&root, &["--heart"]);
    assert_eq!(node.pids.len(), 2, "node and heart pids: {:?}", node.pids);
    let (pid, heart) = (node.pids[0], node.pids[1]);
    assert_eq!(node.status()["parent_pid"], heart);
    signal(heart, "TERM");
    wait_until("the node and its heart exit", Duration::from_secs(20), || !alive(pid) && !alive(heart));
    assert!(!root.join("control.sock").exists());
    let log = std::fs::read_to_string(root.join("node.log")).unwrap();
    assert!(log.contains("heart exits"), "{log}");
    let err = failure(&["status", "--root", r]);
    assert!(err.contains("no node is running"), "{err}");
}

// --------------------------------------------------------------------- h

#[test]
fn heart_restarts_a_node_that_stops_answering() {
    let (v1, _) = archives();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let r = root.to_str().unwrap();
    let mut node =
        NodeGuard::start(&root, &["--boot", v1.to_str().unwrap(), "--heart", "--heart-timeout", "3s"]);
    assert_eq!(node.pids.len(), 2, "node and heart pids: {:?}", node.pids);
    let (first, heart) = (node.pids[0], node.pids[1]);
    // Let heart see the node answer before it goes silent.
    std::thread::sleep(Duration::from_millis(2500));
    let stopped_at = Instant::now();
    signal(first, "STOP");
    // A status request would hang on the stopped node: wait for heart to
    // kill it first.
    wait_until("heart kills the silent node", Duration::from_secs(30), || !alive(first));
    let mut restarted = None;
    wait_until("heart starts the node again", Duration::from_secs(30), || {
        let Some(out) = relive_within(&["status", "--root", r, "--json"], Duration::from_secs(10)) else {
            return false;
        };
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        restarted = status["pid"].as_u64().map(|p| p as u32).filter(|&p| p != first);
        restarted.is_some()
    });
    let pid = restarted.unwrap();
    node.pids.push(pid);
    eprintln!("heart restarted the silent node in {:.1} s", stopped_at.elapsed().as_secs_f64());
    assert!(!alive(first));
    assert!(alive(heart));
    assert_eq!(node.status()["parent_pid"], heart);
    assert_eq!(node.call("main_counter", r#""Version""#), "1.0.0");
    let log = std::fs::read_to_string(root.join("node.log")).unwrap();
    assert!(log.contains(&format!("the node (pid {first}) has not answered")), "{log}");
}

// --------------------------------------------------------------------- i

#[test]
fn release_remove_and_prune_with_and_without_a_node() {
    let (v1, v2) = archives();
    let v3 = counter_v3();
    let (sha1, sha2, sha3) = (library_sha(v1), library_sha(v2), library_sha(v3));
    assert!(sha1 != sha2 && sha2 != sha3 && sha1 != sha3);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let r = root.to_str().unwrap();
    let lib = |sha: &str| root.join("code").join(format!("{sha}.so"));

    // 1.0.0 permanent, 2.0.0 current: neither can go.
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    ok(&["deploy", v2.to_str().unwrap(), "--root", r]);
    let before = store_tree(&root);
    let err = failure(&["release", "remove", "2.0.0", "--root", r]);
    assert!(err.contains("counter 2.0.0") && err.contains("current"), "{err}");
    let err = failure(&["release", "remove", "1.0.0", "--root", r]);
    assert!(err.contains("1.0.0") && (err.contains("permanent") || err.contains("rollback")), "{err}");
    let out = ok(&["release", "prune", "--keep", "0", "--root", r]);
    assert!(out.contains("nothing to prune"), "{out}");
    assert_same_tree(&before, &root, "refused removes and an empty prune");

    // 2.0.0 permanent, 1.0.0 old but what `relive rollback` returns to.
    ok(&["make-permanent", "--root", r]);
    assert_eq!(stored(&root), vec![rel("counter", "1.0.0", "old"), rel("counter", "2.0.0", "permanent")]);
    let before = store_tree(&root);
    let err = failure(&["release", "remove", "1.0.0", "--root", r]);
    assert!(err.contains("1.0.0") && err.contains("rollback"), "{err}");
    let out = ok(&["release", "prune", "--keep", "0", "--root", r]);
    assert!(out.contains("nothing to prune"), "prune spares the rollback's target: {out}");
    assert_same_tree(&before, &root, "removing or pruning what rollback returns to");
    node.stop();
    drop(node);

    // A restarted node (no rollback): the old 1.0.0 goes, with its library.
    let node = NodeGuard::start(&root, &[]);
    assert_eq!(version_of(&node.status()), "2.0.0");
    let before = store_tree(&root);
    let err = failure(&["release", "remove", "2.0.0", "--root", r]);
    assert!(err.contains("counter 2.0.0") && err.contains("permanent"), "{err}");
    assert_same_tree(&before, &root, "removing the permanent release");
    let out = ok(&["release", "remove", "1.0.0", "--root", r]);
    assert!(out.contains("removed counter 1.0.0 (old)"), "{out}");
    assert_eq!(stored(&root), vec![rel("counter", "2.0.0", "permanent")]);
    assert!(!root.join("releases/counter/1.0.0").exists());
    assert!(!lib(&sha1).exists(), "1.0.0's library stays in code/");
    assert!(lib(&sha2).is_file());
    let err = failure(&["release", "remove", "1.0.0", "--root", r]);
    assert!(err.contains("no release counter 1.0.0"), "{err}");
    node.stop();
    drop(node);

    // Without a node: on the store directly.
    ok(&["release", "unpack", v1.to_str().unwrap(), "--root", r]);
    ok(&["release", "unpack", v3.to_str().unwrap(), "--root", r]);
    let before = store_tree(&root);
    let err = failure(&["release", "remove", "2.0.0", "--root", r]);
    assert!(err.contains("counter 2.0.0") && err.contains("permanent"), "{err}");
    assert_same_tree(&before, &root, "removing the permanent release without a node");
    let out = ok(&["release", "remove", "3.0.0", "--root", r]);
    assert!(out.contains("removed counter 3.0.0 (unpacked)"), "{out}");
    assert!(!lib(&sha3).exists() && !root.join("releases/counter/3.0.0").exists());
    ok(&["release", "unpack", v3.to_str().unwrap(), "--root", r]);
    let out = ok(&["release", "prune", "--keep", "1", "--root", r]);
    assert!(out.contains("removed counter 1.0.0 (unpacked)") && !out.contains("3.0.0"), "{out}");
    assert!(!lib(&sha1).exists() && lib(&sha3).is_file() && lib(&sha2).is_file());
    assert_eq!(
        stored(&root),
        vec![rel("counter", "2.0.0", "permanent"), rel("counter", "3.0.0", "unpacked")]
    );

    // Prune through a node (nothing to roll back to): all but what runs.
    let node = NodeGuard::start(&root, &[]);
    let out = ok(&["release", "prune", "--keep", "0", "--root", r]);
    assert!(out.contains("removed counter 3.0.0 (unpacked)"), "{out}");
    assert_eq!(stored(&root), vec![rel("counter", "2.0.0", "permanent")]);
    assert!(!lib(&sha3).exists() && lib(&sha2).is_file());
    assert_eq!(node.call("main_counter", r#""Version""#), "2.0.0");
}

// --------------------------------------------------------------------- j

#[test]
fn status_shows_the_permanent_release_restarts_and_listening_sockets() {
    let (v1, v2) = archives();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let node = NodeGuard::start(&root, &["--boot", v1.to_str().unwrap()]);
    let r = node.root();
    let status = node.status();
    assert!(status["permanent"].is_null(), "the permanent release runs: {status}");
    ok(&["deploy", v2.to_str().unwrap(), "--root", r]);
    let status = node.status();
    assert_eq!(status["release"]["version"], "2.0.0");
    assert_eq!(status["release"]["state"], "current");
    assert_eq!(status["permanent"]["name"], "counter", "{status}");
    assert_eq!(status["permanent"]["version"], "1.0.0", "{status}");
    assert_eq!(status["permanent"]["state"], "permanent", "{status}");
    assert_eq!(status["rollback_to"], "counter 1.0.0", "{status}");
    let text = ok(&["status", "--root", r]);
    assert!(text.contains("permanent release counter 1.0.0"), "{text}");

    // A crash: the supervisor restarts the process, status counts it.
    let group = &status["processes"][0];
    assert_eq!(group["name"], "main_counter");
    assert_eq!(group["module"], "counter");
    assert_eq!(group["running"], 1);
    assert_eq!(group["restarts"], 0);
    let before = group["children"][0]["pid"].as_str().expect("a pid").to_string();
    let crashed = relive(&["call", "--root", r, "main_counter", r#""Crash""#]);
    assert!(!crashed.status.success(), "a call that panics answers nothing");
    let mut after = Value::Null;
    wait_until("the supervisor restarts main_counter", Duration::from_secs(10), || {
        after = node.status();
        after["processes"][0]["restarts"] == 1 && after["processes"][0]["children"][0]["pid"].is_string()
    });
    let child = &after["processes"][0]["children"][0];
    assert_eq!(child["name"], "main_counter");
    assert_eq!(child["restarts"], 1);
    assert_eq!(child["restarting"], false);
    assert_ne!(child["pid"].as_str().unwrap(), before, "a new process");
    assert_eq!(node.call("main_counter", r#""Version""#), "2.0.0");
    let text = ok(&["status", "--root", r]);
    assert!(text.contains("main_counter") && text.contains("1 restarts"), "{text}");
    assert!(after["listening"].as_array().unwrap().is_empty(), "{after}");
    drop(node);

    // A kv node lists the socket its process listens on.
    let port = free_port();
    let kv = kv_archive("1.0.0", port, dir.path());
    let kv_node = NodeGuard::start(&dir.path().join("kv"), &["--boot", kv.to_str().unwrap()]);
    let addr = format!("127.0.0.1:{port}");
    let mut status = Value::Null;
    wait_until("kv listens", Duration::from_secs(10), || {
        status = kv_node.status();
        !status["listening"].as_array().unwrap().is_empty()
    });
    let listening = status["listening"].as_array().unwrap();
    assert_eq!(listening.len(), 1, "{status}");
    assert_eq!(listening[0]["addr"], addr.as_str());
    assert_eq!(listening[0]["process"], "kv");
    let kv_pid = status["processes"][0]["children"][0]["pid"].as_str().unwrap();
    assert_eq!(listening[0]["pid"], kv_pid);
    let text = ok(&["status", "--root", kv_node.root()]);
    assert!(text.contains("listening:") && text.contains(&addr), "{text}");
}
