//! `relive release build|inspect|unpack|list` and `relive plan` on the
//! counter application in two versions (examples/releases/), through the
//! binary: the round trip of issue 6, bad archives refused with the
//! store left as it was, and what `release build` refuses before packing
//! (a library exporting another module name; with `--previous`, types that
//! changed under the same module version), built from the real example
//! crates.

mod common;

use std::path::{Path, PathBuf};

use common::{counter_archives as archives, failure, ok, repo};

fn listing(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n != "store.lock") {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn build_inspect_unpack_and_plan_round_trip() {
    let (v1, v2) = archives();
    assert_eq!(v1.file_name().unwrap(), "counter-1.0.0.tar.gz", "release build prints the archive's path");
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().to_str().unwrap();

    let summary: serde_json::Value =
        serde_json::from_str(&ok(&["release", "inspect", v2.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!((summary["name"].as_str(), summary["version"].as_str()), (Some("counter"), Some("2.0.0")));
    assert_eq!(summary["upgrade_from"], "^1.0.0");
    assert_eq!(summary["modules"][0]["name"], "counter");
    assert_eq!(summary["modules"][0]["sha256"].as_str().map(str::len), Some(64));
    let text = ok(&["release", "inspect", v1.to_str().unwrap()]);
    assert!(text.contains("counter") && text.contains("1.0.0"), "{text}");

    for archive in [v1, v2] {
        let said = ok(&["release", "unpack", archive.to_str().unwrap(), "--root", root_arg]);
        assert!(said.starts_with("unpacked counter"), "{said}");
    }
    let releases: serde_json::Value =
        serde_json::from_str(&ok(&["release", "list", "--root", root_arg, "--json"])).unwrap();
    let states: Vec<(String, String)> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["version"].as_str().unwrap().to_string(), r["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(states, vec![("1.0.0".into(), "unpacked".into()), ("2.0.0".into(), "unpacked".into())]);
    let sha = summary["modules"][0]["sha256"].as_str().unwrap();
    assert!(root.path().join("code").join(format!("{sha}.so")).is_file(), "content-addressed library");

    let planned: serde_json::Value = serde_json::from_str(&ok(&[
        "plan",
        v2.to_str().unwrap(),
        "--root",
        root_arg,
        "--from",
        "1.0.0",
        "--json",
    ]))
    .unwrap();
    assert_eq!(planned["kind"], "upgrade", "{planned}");
    let ops: Vec<&str> = planned["plan"]["instruction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, vec!["load_module", "update"], "{planned}");
    let library = PathBuf::from(planned["plan"]["instruction"][0]["path"].as_str().unwrap());
    assert!(library.is_absolute() && library.is_file(), "{}", library.display());
    let readable = ok(&["plan", v2.to_str().unwrap(), "--root", root_arg, "--from", "1.0.0"]);
    assert!(
        readable.contains("1. load_module counter") && readable.contains("2. update counter"),
        "{readable}"
    );

    // 2.0.0 upgrades from ^1.0.0, so going back is live too: 1.0.0's
    // library comes back and every process moves down.
    let back = ok(&["plan", v1.to_str().unwrap(), "--root", root_arg, "--from", "2.0.0"]);
    assert!(back.contains("counter 2.0.0 → 1.0.0") && back.contains("2. update counter"), "{back}");
    // Nothing runs yet: plan needs --from.
    let error = failure(&["plan", v2.to_str().unwrap(), "--root", root_arg]);
    assert!(error.contains("--from"), "{error}");
    let error = failure(&["plan", v2.to_str().unwrap(), "--root", root_arg, "--from", "9.9.9"]);
    assert!(error.contains("9.9.9"), "{error}");
}

#[test]
fn a_bad_archive_is_refused_and_the_store_is_left_as_it_was() {
    let (v1, v2) = archives();
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().to_str().unwrap();
    ok(&["release", "unpack", v1.to_str().unwrap(), "--root", root_arg]);
    let before = listing(root.path());

    let bytes = std::fs::read(v2).unwrap();
    let truncated = root.path().parent().unwrap().join(format!("truncated-{}.tar.gz", std::process::id()));
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error = failure(&["release", "unpack", truncated.to_str().unwrap(), "--root", root_arg]);
    assert!(error.contains(truncated.file_name().unwrap().to_str().unwrap()), "{error}");
    std::fs::remove_file(&truncated).unwrap();

    let error = failure(&["release", "unpack", v1.to_str().unwrap(), "--root", root_arg]);
    assert!(error.contains("1.0.0"), "unpacking twice: {error}");
    let error = failure(&["release", "unpack", v2.to_str().unwrap(), "--root", root_arg, "--require-signed"]);
    assert!(error.contains("keys"), "{error}");
    assert_eq!(listing(root.path()), before, "a refused unpack changed the store");

    let error = failure(&["release", "build", root_arg]);
    assert!(error.contains("release.toml"), "{error}");
}

#[test]
fn a_signed_archive_is_accepted_only_with_its_key_trusted() {
    let (v1, _) = archives();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signer");
    ok(&["release", "keygen", key.to_str().unwrap()]);
    let app = repo().join("examples").join("releases").join("counter-1.0.0");
    let out = dir.path().join("out");
    let target = repo().join("target").join("examples");
    let signed = PathBuf::from(
        ok(&[
            "release",
            "build",
            app.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--sign",
            key.to_str().unwrap(),
            "--target-dir",
            target.to_str().unwrap(),
        ])
        .trim(),
    );
    let root = dir.path().join("store");
    let root_arg = root.to_str().unwrap();
    std::fs::create_dir_all(root.join("keys")).unwrap();
    let other = dir.path().join("other");
    ok(&["release", "keygen", other.to_str().unwrap()]);
    std::fs::copy(dir.path().join("other.pub"), root.join("keys").join("other.pub")).unwrap();
    let error = failure(&["release", "unpack", v1.to_str().unwrap(), "--root", root_arg, "--require-signed"]);
    assert!(error.contains("sign"), "an unsigned archive: {error}");
    let error =
        failure(&["release", "unpack", signed.to_str().unwrap(), "--root", root_arg, "--require-signed"]);
    assert!(error.contains("trust") || error.contains("key"), "signed by an untrusted key: {error}");
    std::fs::copy(dir.path().join("signer.pub"), root.join("keys").join("signer.pub")).unwrap();
    let said = ok(&["release", "unpack", signed.to_str().unwrap(), "--root", root_arg, "--require-signed"]);
    assert!(said.starts_with("unpacked counter 1.0.0"), "{said}");
}

/// An application directory in `dir` with one module `module` built from
/// the example crate `krate` (examples/KRATE), release `version`.
fn app_with(dir: &Path, module: &str, krate: &str, version: &str) -> PathBuf {
    let app = dir.join(format!("{module}-{krate}-{version}"));
    std::fs::create_dir_all(&app).unwrap();
    let krate = repo().join("examples").join(krate);
    std::fs::write(
        app.join("release.toml"),
        format!(
            "[release]\nname = \"counter\"\nversion = \"{version}\"\n\n[[module]]\nname = \"{module}\"\n\
             crate = {:?}\n\n[[process]]\nname = \"main_counter\"\nmodule = \"{module}\"\n",
            krate.to_str().unwrap()
        ),
    )
    .unwrap();
    app
}

/// `relive release build APP --out OUT [--previous ARCHIVE]` in the
/// examples' target directory: the command's output.
fn release_build(app: &Path, out: &Path, previous: Option<&Path>) -> std::process::Output {
    let target = repo().join("target").join("examples");
    let mut args = vec![
        "release",
        "build",
        app.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--target-dir",
        target.to_str().unwrap(),
    ];
    if let Some(previous) = previous {
        args.extend(["--previous", previous.to_str().unwrap()]);
    }
    common::relive(&args)
}

fn refused(output: &std::process::Output) -> String {
    assert!(!output.status.success(), "built: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn a_library_exporting_another_module_name_is_refused_at_build() {
    let dir = tempfile::tempdir().unwrap();
    // counter-v1 exports `counter`; this release calls it `greeter`.
    let app = app_with(dir.path(), "greeter", "counter-v1", "1.0.0");
    let out = dir.path().join("out");
    let error = refused(&release_build(&app, &out, None));
    let manifest = app.join("release.toml");
    let crate_dir = repo().join("examples").join("counter-v1");
    for needed in [
        "module greeter",
        "exports module `counter`",
        "names it `greeter`",
        manifest.to_str().unwrap(),
        crate_dir.to_str().unwrap(),
    ] {
        assert!(error.contains(needed), "{needed:?} missing from: {error}");
    }
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(), "an archive was written");
}

#[test]
fn previous_refuses_changed_types_under_the_same_version_and_passes_the_rest() {
    let (v1, _) = archives();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");

    // counter-v1-clash is counter 1.0.0 too, with another state.
    let clash = app_with(dir.path(), "counter", "counter-v1-clash", "1.0.1");
    let error = refused(&release_build(&clash, &out, Some(v1)));
    let cargo_toml = repo().join("examples").join("counter-v1-clash").join("Cargo.toml");
    let expected = format!(
        "state type of counter changed: bump `version` in {} and write code_change",
        cargo_toml.display()
    );
    assert!(error.contains(&expected), "{expected:?} missing from: {error}");
    assert!(error.contains(v1.to_str().unwrap()), "the previous archive is not named: {error}");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(), "an archive was written");
    // Without --previous nothing tells the two apart.
    assert!(release_build(&clash, &out, None).status.success());

    // The same types under the same version, and other types under a new
    // version, pass.
    for (krate, version) in [("counter-v1", "1.0.1"), ("counter-v2", "2.0.0")] {
        let app = app_with(dir.path(), "counter", krate, version);
        let built = release_build(&app, &out, Some(v1));
        assert!(built.status.success(), "{krate}: {}", String::from_utf8_lossy(&built.stderr));
        let archive = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
        assert_eq!(archive, out.join(format!("counter-{version}.tar.gz")));
    }
}
