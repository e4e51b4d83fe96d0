//! The release store: states and transitions, refusals, atomic unpack,
//! the lock, and a crash between the state file's temp write and rename.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use relive_releases::store::{ReleaseInfo, ReleaseState, STATE_FILE, Store, StoreError};
use semver::Version;
use sha2::{Digest, Sha256};

/// Set for a child process of a crash test: `<test name>|<store root>`.
const CRASH_CHILD_VAR: &str = "RELIVE_STORE_TEST_CRASH_CHILD";

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `(module, sha256, bytes)` as `add_unpacked` takes them.
type Libraries = Vec<(String, String, Vec<u8>)>;

fn libs(modules: &[(&str, &[u8])]) -> Libraries {
    modules.iter().map(|(m, b)| (m.to_string(), sha(b), b.to_vec())).collect()
}

fn manifest(name: &str, version: &str) -> String {
    format!("[release]\nname = \"{name}\"\nversion = \"{version}\"\n")
}

fn unpack(store: &mut Store, name: &str, version: &str, modules: &[(&str, &[u8])]) -> PathBuf {
    store.add_unpacked(name, &v(version), &manifest(name, version), &libs(modules)).unwrap()
}

fn info(name: &str, version: &str, state: ReleaseState) -> ReleaseInfo {
    ReleaseInfo { name: name.to_string(), version: v(version), state }
}

fn states(store: &Store) -> Vec<(String, ReleaseState)> {
    store.which_releases().into_iter().map(|r| (format!("{} {}", r.name, r.version), r.state)).collect()
}

fn st(list: &[(&str, ReleaseState)]) -> Vec<(String, ReleaseState)> {
    list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
}

/// Every file and directory under `root` with its bytes (`None`: a directory).
fn listing(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn new_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (store, dir)
}

use ReleaseState::{Current, Old, Permanent, Unpacked};

#[test]
fn unpack_then_which_releases() {
    let (mut store, _dir) = new_store();
    assert!(store.which_releases().is_empty());
    assert_eq!(store.boot_release(), None);
    let dir = unpack(&mut store, "kv", "1.10.0", &[("kv_store", b"store v10"), ("kv_api", b"api")]);
    unpack(&mut store, "kv", "1.9.0", &[("kv_store", b"store v9")]);
    unpack(&mut store, "app", "2.0.0", &[]);

    // Sorted by name, then by semver (1.9.0 before 1.10.0).
    assert_eq!(
        store.which_releases(),
        vec![info("app", "2.0.0", Unpacked), info("kv", "1.9.0", Unpacked), info("kv", "1.10.0", Unpacked)]
    );
    assert_eq!(dir, store.root().join("releases/kv/1.10.0"));
    assert_eq!(fs::read_to_string(dir.join("release.toml")).unwrap(), manifest("kv", "1.10.0"));
    assert_eq!(
        fs::read(store.library_path(&sha(b"store v10"))).unwrap(),
        b"store v10",
        "libraries live content-addressed in code/"
    );
    let stored = store.release("kv", &v("1.10.0")).unwrap();
    assert_eq!(stored.manifest_text, manifest("kv", "1.10.0"));
    assert_eq!(
        stored.modules,
        BTreeMap::from([("kv_api".to_string(), sha(b"api")), ("kv_store".to_string(), sha(b"store v10"))])
    );
    // Nothing installed: nothing to boot.
    assert_eq!(store.boot_release(), None);
    assert_eq!(store.rollback_target(), None);

    // The state survives a reopen, and a reader sees it too.
    let root = store.root().to_path_buf();
    let before = store.which_releases();
    drop(store);
    assert_eq!(Store::open_read_only(&root).unwrap().which_releases(), before);
    assert_eq!(Store::open(&root).unwrap().which_releases(), before);
}

#[test]
fn install_make_permanent_and_old_transitions() {
    let (mut store, _dir) = new_store();
    for ver in ["1.0.0", "1.1.0", "1.2.0"] {
        unpack(&mut store, "kv", ver, &[("kv_store", ver.as_bytes())]);
    }
    let (v1, v11, v12) = (v("1.0.0"), v("1.1.0"), v("1.2.0"));

    // First install: current; with no permanent release it is also what boots.
    store.install("kv", &v1).unwrap();
    assert_eq!(states(&store), st(&[("kv 1.0.0", Current), ("kv 1.1.0", Unpacked), ("kv 1.2.0", Unpacked)]));
    assert_eq!(store.boot_release(), Some(info("kv", "1.0.0", Current)));
    assert_eq!(store.rollback_target(), None);

    // Current + permanent reads `permanent`.
    store.make_permanent("kv", &v1).unwrap();
    assert_eq!(
        states(&store),
        st(&[("kv 1.0.0", Permanent), ("kv 1.1.0", Unpacked), ("kv 1.2.0", Unpacked)])
    );
    assert_eq!(store.running(), Some(info("kv", "1.0.0", Permanent)));
    // Already permanent and running: nothing to do.
    store.make_permanent("kv", &v1).unwrap();
    assert!(matches!(store.install("kv", &v1), Err(StoreError::AlreadyInstalled { .. })));

    // An install that is not made permanent: a restart boots the permanent one.
    store.install("kv", &v11).unwrap();
    assert_eq!(states(&store), st(&[("kv 1.0.0", Permanent), ("kv 1.1.0", Current), ("kv 1.2.0", Unpacked)]));
    assert_eq!(store.running(), Some(info("kv", "1.1.0", Current)));
    assert_eq!(store.rollback_target(), Some(info("kv", "1.0.0", Permanent)));
    assert_eq!(store.boot_release(), Some(info("kv", "1.0.0", Permanent)));
    assert!(matches!(store.install("kv", &v11), Err(StoreError::AlreadyInstalled { .. })));

    // Installing over a current release makes it old; the permanent one stays.
    store.install("kv", &v12).unwrap();
    assert_eq!(states(&store), st(&[("kv 1.0.0", Permanent), ("kv 1.1.0", Old), ("kv 1.2.0", Current)]));

    // Only the current release can be made permanent.
    for (ver, state) in [(&v11, Old), (&v1, Permanent)] {
        match store.make_permanent("kv", ver) {
            Err(e @ StoreError::NotCurrent { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("kv {ver}")) && msg.contains(&state.to_string()), "{msg}");
                assert!(msg.contains("install"), "says what to do: {msg}");
            }
            other => panic!("make_permanent of a {state} release: {other:?}"),
        }
    }
    assert_eq!(states(&store), st(&[("kv 1.0.0", Permanent), ("kv 1.1.0", Old), ("kv 1.2.0", Current)]));

    // The previous permanent one becomes old.
    store.make_permanent("kv", &v12).unwrap();
    assert_eq!(states(&store), st(&[("kv 1.0.0", Old), ("kv 1.1.0", Old), ("kv 1.2.0", Permanent)]));

    // An old release can be installed again (current), the permanent one stays.
    store.install("kv", &v1).unwrap();
    assert_eq!(states(&store), st(&[("kv 1.0.0", Current), ("kv 1.1.0", Old), ("kv 1.2.0", Permanent)]));
    // Rolling back = installing the permanent release: the current one becomes old.
    store.install("kv", &v12).unwrap();
    assert_eq!(states(&store), st(&[("kv 1.0.0", Old), ("kv 1.1.0", Old), ("kv 1.2.0", Permanent)]));
    assert_eq!(store.current(), None);

    // Persisted: a reopened store has the same states.
    let root = store.root().to_path_buf();
    let before = store.which_releases();
    drop(store);
    assert_eq!(Store::open(&root).unwrap().which_releases(), before);
}

#[test]
fn install_refuses_a_release_whose_library_is_gone() {
    let (mut store, _dir) = new_store();
    unpack(&mut store, "kv", "1.0.0", &[("kv_store", b"one")]);
    fs::remove_file(store.library_path(&sha(b"one"))).unwrap();
    let err = store.install("kv", &v("1.0.0")).unwrap_err();
    assert!(matches!(err, StoreError::CorruptRelease { .. }), "{err:?}");
    assert!(err.to_string().contains("kv_store"), "{err}");
    assert_eq!(states(&store), st(&[("kv 1.0.0", Unpacked)]));
}

#[test]
fn remove_refuses_current_and_permanent_and_frees_only_unshared_code() {
    let (mut store, _dir) = new_store();
    let a = unpack(&mut store, "kv", "1.0.0", &[("kv_store", b"shared"), ("kv_a", b"only a")]);
    let b = unpack(&mut store, "kv", "1.1.0", &[("kv_store", b"shared"), ("kv_b", b"only b")]);
    unpack(&mut store, "kv", "1.2.0", &[("kv_store", b"v12")]);
    store.install("kv", &v("1.0.0")).unwrap();
    store.make_permanent("kv", &v("1.0.0")).unwrap();
    store.install("kv", &v("1.1.0")).unwrap();

    for (ver, state, hint) in
        [("1.0.0", Permanent, "make another release permanent"), ("1.1.0", Current, "install another")]
    {
        let before = listing(store.root());
        match store.remove("kv", &v(ver)) {
            Err(e @ StoreError::InUse { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("kv {ver}")) && msg.contains(&state.to_string()), "{msg}");
                assert!(msg.contains(hint), "{msg}");
                assert!(msg.contains(&store.root().display().to_string()), "names the root: {msg}");
            }
            other => panic!("removing the {state} release: {other:?}"),
        }
        assert_eq!(listing(store.root()), before, "a refused remove changes nothing");
    }

    // 1.2.0 (unpacked) goes, with its library.
    store.remove("kv", &v("1.2.0")).unwrap();
    assert!(!store.library_path(&sha(b"v12")).exists());
    assert!(!store.release_dir("kv", &v("1.2.0")).exists());

    // Make 1.1.0 permanent, so 1.0.0 becomes old and can go: its own library
    // is freed, the one 1.1.0 shares stays.
    store.make_permanent("kv", &v("1.1.0")).unwrap();
    assert_eq!(store.get("kv", &v("1.0.0")).unwrap().state, Old);
    store.remove("kv", &v("1.0.0")).unwrap();
    assert!(!a.exists());
    assert!(!store.library_path(&sha(b"only a")).exists());
    assert_eq!(fs::read(store.library_path(&sha(b"shared"))).unwrap(), b"shared");
    assert_eq!(fs::read(store.library_path(&sha(b"only b"))).unwrap(), b"only b");
    assert!(b.join("modules.json").exists());
    assert_eq!(states(&store), st(&[("kv 1.1.0", Permanent)]));

    // A removed release is unknown; it can be unpacked again.
    assert!(matches!(store.remove("kv", &v("1.0.0")), Err(StoreError::UnknownRelease { .. })));
    unpack(&mut store, "kv", "1.0.0", &[("kv_store", b"shared"), ("kv_a", b"only a")]);
    assert_eq!(fs::read(store.library_path(&sha(b"only a"))).unwrap(), b"only a");
}

#[test]
fn unknown_release_is_an_error_naming_it_and_the_root() {
    let (mut store, _dir) = new_store();
    unpack(&mut store, "kv", "1.0.0", &[]);
    let root = store.root().display().to_string();
    let missing = v("9.9.9");
    for result in [
        store.install("kv", &missing),
        store.make_permanent("kv", &missing),
        store.remove("kv", &missing),
        store.install("nope", &v("1.0.0")),
        store.release("kv", &missing).map(|_| ()),
    ] {
        match result {
            Err(e @ StoreError::UnknownRelease { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&root), "names the root: {msg}");
                assert!(msg.contains("kv 1.0.0 (unpacked)"), "lists what the store has: {msg}");
                assert!(msg.contains("unpack"), "says what to do: {msg}");
            }
            other => panic!("expected UnknownRelease, got {other:?}"),
        }
    }
    assert_eq!(states(&store), st(&[("kv 1.0.0", Unpacked)]));
}

#[test]
fn duplicate_unpack_is_refused_and_changes_nothing() {
    let (mut store, _dir) = new_store();
    unpack(&mut store, "kv", "1.0.0", &[("kv_store", b"one")]);
    store.install("kv", &v("1.0.0")).unwrap();
    let before = listing(store.root());
    let err =
        store.add_unpacked("kv", &v("1.0.0"), "other text", &libs(&[("kv_store", b"other")])).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyUnpacked { state: Current, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("kv 1.0.0") && msg.contains("already") && msg.contains("current"), "{msg}");
    assert_eq!(listing(store.root()), before);
}

#[test]
fn a_failed_check_in_add_unpacked_leaves_the_store_exactly_as_it_was() {
    let (mut store, _dir) = new_store();
    unpack(&mut store, "kv", "1.0.0", &[("kv_store", b"one")]);
    let before = listing(store.root());

    // The second library's bytes do not match its checksum: the first,
    // good one must not be written either.
    let mut bad = libs(&[("kv_store", b"two"), ("kv_api", b"api")]);
    bad[1].2 = b"tampered".to_vec();
    let err = store.add_unpacked("kv", &v("1.1.0"), "m", &bad).unwrap_err();
    match &err {
        StoreError::ChecksumMismatch { module, expected, actual, .. } => {
            assert_eq!(module, "kv_api");
            assert_eq!(expected, &sha(b"api"));
            assert_eq!(actual, &sha(b"tampered"));
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("kv 1.1.0") && msg.contains("kv_api") && msg.contains("nothing was written"),
        "{msg}"
    );
    assert_eq!(listing(store.root()), before);

    // Other refused inputs, same promise.
    let cases: Vec<(&str, Libraries)> = vec![
        ("../evil", libs(&[("m", b"x")])),
        ("", libs(&[])),
        ("kv", libs(&[("a/b", b"x")])),
        ("kv", vec![("m".into(), "not-hex".into(), b"x".to_vec())]),
        ("kv", libs(&[("m", b"x"), ("m", b"x")])),
    ];
    for (name, libraries) in cases {
        let err = store.add_unpacked(name, &v("1.1.0"), "m", &libraries).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::InvalidName { .. }
                    | StoreError::InvalidChecksum { .. }
                    | StoreError::DuplicateModule { .. }
            ),
            "{name:?}: {err:?}"
        );
        assert_eq!(listing(store.root()), before, "{name:?}: {err}");
    }
    assert_eq!(states(&store), st(&[("kv 1.0.0", Unpacked)]));
}

#[test]
fn a_corrupt_state_file_is_an_error_and_is_never_reset() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    {
        let mut store = Store::open(&root).unwrap();
        unpack(&mut store, "kv", "1.0.0", &[]);
    }
    let path = root.join(STATE_FILE);
    let good = fs::read_to_string(&path).unwrap();
    let two_current = good.replace("unpacked", "current");
    let doubled = {
        let mut s: serde_json::Value = serde_json::from_str(&two_current).unwrap();
        let r = s["releases"][0].clone();
        let mut r2 = r.clone();
        r2["version"] = "2.0.0".into();
        s["releases"] = serde_json::json!([r, r2]);
        serde_json::to_string(&s).unwrap()
    };
    for (bad, why) in [
        (String::new(), "EOF"),
        (good[..good.len() / 2].to_string(), "EOF"),
        ("{ not json".to_string(), "key must be a string"),
        (good.replace("unpacked", "sleeping"), "unknown variant"),
        (good.replace("\"format\": 1", "\"format\": 7"), "format 7"),
        (doubled, "2 releases are current"),
    ] {
        fs::write(&path, &bad).unwrap();
        for result in [Store::open(&root), Store::open_read_only(&root)] {
            match result {
                Err(e @ StoreError::CorruptState { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&path.display().to_string()), "names the file: {msg}");
                    assert!(msg.contains(why), "says why ({why}): {msg}");
                    assert!(msg.contains("never reset"), "{msg}");
                }
                other => panic!("state {bad:?}: expected CorruptState, got {other:?}"),
            }
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), bad, "the corrupt file is left as it is");
    }

    // A missing state file with releases present is an error too.
    fs::remove_file(&path).unwrap();
    let err = Store::open(&root).unwrap_err();
    assert!(matches!(err, StoreError::StateMissing { .. }), "{err:?}");
    assert!(!path.exists(), "no empty state file was made up");
}

#[test]
fn a_second_writer_on_the_same_root_is_refused() {
    let (mut first, _dir) = new_store();
    unpack(&mut first, "kv", "1.0.0", &[]);
    let root = first.root().to_path_buf();

    let err = Store::open(&root).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&root.display().to_string()), "names the root: {msg}");
    assert!(msg.contains(&format!("pid {}", std::process::id())), "names the holder: {msg}");

    // A reader is fine, and cannot change anything.
    let mut reader = Store::open_read_only(&root).unwrap();
    assert_eq!(reader.which_releases(), first.which_releases());
    assert!(matches!(reader.install("kv", &v("1.0.0")), Err(StoreError::ReadOnly { .. })));
    assert!(matches!(reader.add_unpacked("kv", &v("2.0.0"), "", &[]), Err(StoreError::ReadOnly { .. })));

    // The lock goes with the handle.
    drop(first);
    let mut second = Store::open(&root).unwrap();
    second.install("kv", &v("1.0.0")).unwrap();
}

#[test]
fn a_second_writer_in_another_process_is_refused() {
    if let Some(root) = child_root("a_second_writer_in_another_process_is_refused") {
        let err = Store::open(&root).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        return;
    }
    let (_store, _dir) = new_store();
    let output = run_child("a_second_writer_in_another_process_is_refused", _store.root());
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the child ran no test: {}",
        describe(&output)
    );
}

/// In a crash test's child: the store root it is to use.
fn child_root(test: &str) -> Option<PathBuf> {
    let value = std::env::var(CRASH_CHILD_VAR).ok()?;
    let (name, root) = value.split_once('|')?;
    (name == test).then(|| PathBuf::from(root))
}

/// Runs this test binary again, only test `test`, as a crash child.
fn run_child(test: &str, root: &Path) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_VAR, format!("{test}|{}", root.display()))
        .output()
        .unwrap()
}

fn describe(output: &std::process::Output) -> String {
    format!(
        "child {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_killed(output: &std::process::Output) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), Some(9), "the child was to die of SIGKILL: {}", describe(output));
}

#[test]
fn crash_between_writing_and_renaming_the_state_file_keeps_the_old_state() {
    const TEST: &str = "crash_between_writing_and_renaming_the_state_file_keeps_the_old_state";
    if let Some(root) = child_root(TEST) {
        let mut store = Store::open(&root).unwrap();
        store.crash_before_state_rename_for_tests();
        let _ = store.install("kv", &v("1.1.0"));
        panic!("the crash hook did not kill the process");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    {
        let mut store = Store::open(&root).unwrap();
        unpack(&mut store, "kv", "1.0.0", &[("kv_store", b"one")]);
        unpack(&mut store, "kv", "1.1.0", &[("kv_store", b"two")]);
        store.install("kv", &v("1.0.0")).unwrap();
        store.make_permanent("kv", &v("1.0.0")).unwrap();
    }
    let state_path = root.join(STATE_FILE);
    let old_state = fs::read(&state_path).unwrap();

    let output = run_child(TEST, &root);
    assert_killed(&output);

    // The child got as far as the temp file (with the new state), no further.
    let tmp = root.join("state.json.tmp");
    let written: serde_json::Value =
        serde_json::from_slice(&fs::read(&tmp).expect("the temp state file")).unwrap();
    assert_eq!(written["releases"][1]["state"], "current", "the temp file has the new state: {written}");
    assert_eq!(fs::read(&state_path).unwrap(), old_state, "the state file is the old one, byte for byte");

    // Reopened: the old state, the temp file gone, and the store works.
    let mut store = Store::open(&root).unwrap();
    assert_eq!(states(&store), st(&[("kv 1.0.0", Permanent), ("kv 1.1.0", Unpacked)]));
    assert!(!tmp.exists(), "the leftover temp file is cleaned up");
    store.install("kv", &v("1.1.0")).unwrap();
    assert_eq!(states(&store), st(&[("kv 1.0.0", Permanent), ("kv 1.1.0", Current)]));
}

#[test]
fn crash_during_add_unpacked_leaves_the_release_out_and_a_retry_works() {
    const TEST: &str = "crash_during_add_unpacked_leaves_the_release_out_and_a_retry_works";
    if let Some(root) = child_root(TEST) {
        let mut store = Store::open(&root).unwrap();
        store.crash_before_state_rename_for_tests();
        let _ = store.add_unpacked("kv", &v("1.1.0"), "half", &libs(&[("kv_store", b"two")]));
        panic!("the crash hook did not kill the process");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    {
        let mut store = Store::open(&root).unwrap();
        unpack(&mut store, "kv", "1.0.0", &[("kv_store", b"one")]);
    }
    let old_state = fs::read(root.join(STATE_FILE)).unwrap();

    let output = run_child(TEST, &root);
    assert_killed(&output);
    assert_eq!(fs::read(root.join(STATE_FILE)).unwrap(), old_state);

    let mut store = Store::open(&root).unwrap();
    assert_eq!(states(&store), st(&[("kv 1.0.0", Unpacked)]), "the half-added release is not listed");
    assert!(!root.join("state.json.tmp").exists());
    // The unpack can be done again; its directory, left unlisted, is replaced.
    let dir = unpack(&mut store, "kv", "1.1.0", &[("kv_store", b"two")]);
    assert_eq!(fs::read_to_string(dir.join("release.toml")).unwrap(), manifest("kv", "1.1.0"));
    assert_eq!(states(&store), st(&[("kv 1.0.0", Unpacked), ("kv 1.1.0", Unpacked)]));
}

#[test]
fn prune_keeps_the_newest_unpacked_and_old_never_current_or_permanent_and_frees_unshared_code() {
    let (mut store, _dir) = new_store();
    // 1.10.0 is the newest (semver, not text order); "three-ten" is shared
    // by 1.3.0 and 1.10.0, "shared" by every release.
    unpack(&mut store, "kv", "1.0.0", &[("kv_store", b"shared"), ("kv_x", b"only 1.0.0")]);
    unpack(&mut store, "kv", "1.1.0", &[("kv_store", b"shared"), ("kv_x", b"only 1.1.0")]);
    unpack(&mut store, "kv", "1.2.0", &[("kv_store", b"shared"), ("kv_x", b"only 1.2.0")]);
    unpack(&mut store, "kv", "1.3.0", &[("kv_store", b"shared"), ("kv_x", b"three-ten")]);
    unpack(&mut store, "kv", "1.4.0", &[("kv_store", b"shared"), ("kv_x", b"only 1.4.0")]);
    unpack(&mut store, "kv", "1.10.0", &[("kv_store", b"shared"), ("kv_x", b"three-ten")]);
    unpack(&mut store, "other", "0.1.0", &[("o", b"only other")]);
    store.install("kv", &v("1.0.0")).unwrap();
    store.make_permanent("kv", &v("1.0.0")).unwrap();
    store.install("kv", &v("1.1.0")).unwrap();
    store.make_permanent("kv", &v("1.1.0")).unwrap();
    store.install("kv", &v("1.2.0")).unwrap();
    assert_eq!(
        states(&store),
        st(&[
            ("kv 1.0.0", Old),
            ("kv 1.1.0", Permanent),
            ("kv 1.2.0", Current),
            ("kv 1.3.0", Unpacked),
            ("kv 1.4.0", Unpacked),
            ("kv 1.10.0", Unpacked),
            ("other 0.1.0", Unpacked),
        ])
    );

    // Keep 2 of the unpacked/old ones (1.4.0, 1.10.0): 1.0.0 and 1.3.0 go,
    // oldest first.
    let removed = store.prune("kv", 2, &[]).unwrap();
    assert_eq!(removed, vec![info("kv", "1.0.0", Old), info("kv", "1.3.0", Unpacked)]);
    assert_eq!(
        states(&store),
        st(&[
            ("kv 1.1.0", Permanent),
            ("kv 1.2.0", Current),
            ("kv 1.4.0", Unpacked),
            ("kv 1.10.0", Unpacked),
            ("other 0.1.0", Unpacked),
        ])
    );
    assert!(!store.release_dir("kv", &v("1.0.0")).exists());
    assert!(!store.release_dir("kv", &v("1.3.0")).exists());
    assert!(
        !store.library_path(&sha(b"only 1.0.0")).exists(),
        "a library only a pruned release used is freed"
    );
    assert!(store.library_path(&sha(b"three-ten")).exists(), "1.10.0 still uses it");
    assert!(store.library_path(&sha(b"shared")).exists());
    // Nothing more to prune at 2; the state survives a reopen.
    assert_eq!(store.prune("kv", 2, &[]).unwrap(), vec![]);
    let root = store.root().to_path_buf();
    drop(store);
    let mut store = Store::open(&root).unwrap();

    // Keep none but spare 1.4.0 (say, what an undo returns to): only 1.10.0
    // goes, and the library it shared with the pruned 1.3.0 with it.
    let removed = store.prune("kv", 0, &[v("1.4.0")]).unwrap();
    assert_eq!(removed, vec![info("kv", "1.10.0", Unpacked)]);
    assert!(!store.library_path(&sha(b"three-ten")).exists());
    assert!(store.release_dir("kv", &v("1.4.0")).exists());
    assert_eq!(store.get("kv", &v("1.4.0")), Some(info("kv", "1.4.0", Unpacked)));

    // Keep none: every unpacked/old kv release goes; the current and the
    // permanent one stay, as does the other application.
    let removed = store.prune("kv", 0, &[]).unwrap();
    assert_eq!(removed, vec![info("kv", "1.4.0", Unpacked)]);
    assert_eq!(
        states(&store),
        st(&[("kv 1.1.0", Permanent), ("kv 1.2.0", Current), ("other 0.1.0", Unpacked)])
    );
    assert!(!store.library_path(&sha(b"three-ten")).exists());
    assert!(!store.library_path(&sha(b"only 1.4.0")).exists());
    for kept in [&b"shared"[..], b"only 1.1.0", b"only 1.2.0", b"only other"] {
        assert_eq!(fs::read(store.library_path(&sha(kept))).unwrap(), kept);
    }
    store.install("kv", &v("1.1.0")).unwrap();
    assert_eq!(states(&store), st(&[("kv 1.1.0", Permanent), ("kv 1.2.0", Old), ("other 0.1.0", Unpacked)]));

    // Refusals.
    assert!(matches!(store.prune("../kv", 0, &[]), Err(StoreError::InvalidName { .. })));
    let reader = Store::open_read_only(&root);
    drop(store);
    assert!(matches!(reader.unwrap().prune("kv", 0, &[]), Err(StoreError::ReadOnly { .. })));
    // An unknown application has nothing to prune.
    assert_eq!(Store::open(&root).unwrap().prune("nope", 0, &[]).unwrap(), vec![]);
}
