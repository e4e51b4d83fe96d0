//! Release archives: build → read → inspect round trips, determinism, keys,
//! and every refusal of `read` (each test crafts the bad archive with the
//! `tar` crate directly and checks the exact kind of error, so it fails if
//! that protection is removed).

use std::fs;
use std::path::{Path, PathBuf};

use relive_releases::archive::{
    self, ArchiveError, ErrorKind, MANIFEST_ENTRY, SIGNATURE_ENTRY, build, generate_key, inspect,
    inspect_with_keys, load_signing_key, load_verifying_key, read,
};
use relive_releases::manifest::Manifest;

const MANIFEST: &str = r#"[release]
name = "kv"
version = "1.1.0"
upgrade_from = ">=1.0.0, <1.1.0"

[[module]]
name = "kv_store"
crate = "kv_store"

[[module]]
name = "kv_api"
crate = "crates/kv_api"

[[process]]
name = "store"
module = "kv_store"
args = { shards = 4 }

[[process]]
name = "api"
module = "kv_api"
restart = "transient"
"#;

const STORE_SO: &[u8] = b"\x7fELF not really: kv_store 1.1.0";
const API_SO: &[u8] = b"\x7fELF not really: kv_api 1.1.0, a little longer";

/// An application directory with a release.toml and two fake libraries.
struct App {
    dir: tempfile::TempDir,
    manifest: Manifest,
    libraries: Vec<(String, PathBuf)>,
}

impl App {
    fn new() -> App {
        let dir = tempfile::tempdir().unwrap();
        let manifest_path = dir.path().join("release.toml");
        fs::write(&manifest_path, MANIFEST).unwrap();
        let manifest = Manifest::from_path(&manifest_path).unwrap();
        fs::create_dir_all(dir.path().join("target")).unwrap();
        fs::write(dir.path().join("target/libkv_store.so"), STORE_SO).unwrap();
        fs::write(dir.path().join("target/libkv_api.so"), API_SO).unwrap();
        let libraries = vec![
            // One relative to the manifest's directory, one absolute.
            ("kv_store".to_string(), PathBuf::from("target/libkv_store.so")),
            ("kv_api".to_string(), dir.path().join("target/libkv_api.so")),
        ];
        App { dir, manifest, libraries }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn build(&self, key: Option<&ed25519_dalek::SigningKey>) -> PathBuf {
        build(&self.manifest, self.dir.path(), &self.libraries, &self.out(), key).unwrap()
    }

    /// A path for a crafted archive.
    fn crafted(&self) -> PathBuf {
        self.dir.path().join("crafted.tar.gz")
    }
}

/// One tar entry, written with raw header bytes (the `tar` crate's
/// `set_path` refuses absolute paths and `..`, which these tests need).
struct Raw {
    path: Vec<u8>,
    kind: tar::EntryType,
    data: Vec<u8>,
    link: Option<Vec<u8>>,
}

fn file(path: &str, data: &[u8]) -> Raw {
    Raw { path: path.as_bytes().to_vec(), kind: tar::EntryType::Regular, data: data.to_vec(), link: None }
}

fn special(path: &str, kind: tar::EntryType, link: Option<&str>) -> Raw {
    Raw { path: path.as_bytes().to_vec(), kind, data: Vec::new(), link: link.map(|l| l.as_bytes().to_vec()) }
}

fn write_tar_gz(path: &Path, entries: &[Raw]) {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..e.path.len()].copy_from_slice(&e.path);
            if let Some(link) = &e.link {
                old.linkname[..link.len()].copy_from_slice(link);
            }
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        builder.append(&h, e.data.as_slice()).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    fs::write(path, gz.finish().unwrap()).unwrap();
}

/// The entries of a built archive, as (path, type, data).
fn entries_of(path: &Path) -> Vec<Raw> {
    let gz = fs::read(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            Raw { path: e.path_bytes().into_owned(), kind: e.header().entry_type(), data, link: None }
        })
        .collect()
}

fn take(entries: &mut Vec<Raw>, path: &str) -> Raw {
    let i = entries.iter().position(|e| e.path == path.as_bytes()).unwrap();
    entries.remove(i)
}

/// Reads `path` expecting an error of `kind` about `entry`; checks the
/// message names the archive, the entry and what to do.
#[track_caller]
fn expect_err(
    path: &Path,
    trusted: Option<&[ed25519_dalek::VerifyingKey]>,
    require_signed: bool,
    kind: ErrorKind,
    entry: Option<&str>,
) -> ArchiveError {
    let e = match read(path, trusted, require_signed) {
        Ok(c) => panic!("expected {kind:?}, read {:?}", c.manifest.release),
        Err(e) => e,
    };
    let shown = e.to_string();
    assert_eq!(e.kind, kind, "{shown}");
    assert_eq!(e.entry.as_deref(), entry, "{shown}");
    assert_eq!(e.path, path);
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
    if let Some(entry) = entry {
        assert!(shown.contains(&format!("entry `{entry}`")), "{shown}");
    }
    assert!(shown.ends_with(kind.hint()), "{shown}");
    // `inspect` refuses it too.
    if trusted.is_none() && !require_signed {
        assert_eq!(inspect(path).unwrap_err().kind, kind);
    }
    e
}

/// A valid unsigned archive's entries with `edit` applied, written as the
/// crafted archive; returns its path.
fn crafted_from_valid(app: &App, edit: impl FnOnce(&mut Vec<Raw>)) -> PathBuf {
    let built = app.build(None);
    let mut entries = entries_of(&built);
    edit(&mut entries);
    let path = app.crafted();
    write_tar_gz(&path, &entries);
    path
}

// ------------------------------------------------------------ round trips

#[test]
fn build_read_inspect_round_trip() {
    let app = App::new();
    let path = app.build(None);
    assert_eq!(path, app.out().join("kv-1.1.0.tar.gz"));
    let names: Vec<String> =
        entries_of(&path).iter().map(|e| String::from_utf8(e.path.clone()).unwrap()).collect();
    assert_eq!(names, ["release.toml", "lib/kv_store.so", "lib/kv_api.so"]);
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(app.out()).unwrap().count(), 1);

    let c = read(&path, None, false).unwrap();
    assert_eq!(c.manifest.release, app.manifest.release);
    assert_eq!(c.manifest.processes, app.manifest.processes);
    assert_eq!(c.libraries.len(), 2);
    assert_eq!(c.libraries[0].module, "kv_store");
    assert_eq!(c.libraries[0].bytes, STORE_SO);
    assert_eq!(c.library("kv_api").unwrap().bytes, API_SO);
    let store = c.manifest.module("kv_store").unwrap();
    assert_eq!(store.sha256.as_deref(), Some(archive::sha256_hex(STORE_SO).as_str()));
    assert_eq!(store.file.as_deref(), Some(Path::new("lib/kv_store.so")));
    assert_eq!(store.krate, Path::new("kv_store"));
    assert_eq!(Manifest::parse(&c.manifest_text, Path::new("x")).unwrap(), c.manifest);
    assert!(c.signature.is_none() && c.signer.is_none() && !c.trusted);

    let s = inspect(&path).unwrap();
    assert_eq!((s.name.as_str(), s.version.as_str()), ("kv", "1.1.0"));
    assert_eq!(s.upgrade_from.as_deref(), Some(">=1.0.0, <1.1.0"));
    assert_eq!(s.modules[1].name, "kv_api");
    assert_eq!(s.modules[1].size, API_SO.len() as u64);
    assert_eq!(s.modules[1].sha256, archive::sha256_hex(API_SO));
    assert_eq!(s.processes.len(), 2);
    assert!(!s.signed);
    let text = s.to_string();
    for want in [
        "release kv 1.1.0",
        ">=1.0.0, <1.1.0",
        "kv_store",
        &archive::sha256_hex(STORE_SO),
        "transient",
        "signature: none",
        "2 sha256",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["name"], "kv");
    assert_eq!(json["modules"][0]["size"], STORE_SO.len());
    assert_eq!(json["processes"][0]["args"]["shards"], 4);
    assert_eq!(json["processes"][1]["restart"], "transient");
    assert_eq!(json["signed"], false);
}

#[test]
fn a_process_with_instances_stays_one_table_in_the_archive() {
    let app = App::new();
    let mut manifest = app.manifest.clone();
    manifest.processes[0].instances = Some(10_000);
    let path = build(&manifest, app.dir.path(), &app.libraries, &app.out(), None).unwrap();
    let c = read(&path, None, false).unwrap();
    assert_eq!(c.manifest.processes, manifest.processes);
    assert_eq!(c.manifest.child_count(), 10_001);
    assert_eq!(c.manifest_text.matches("[[process]]").count(), 2, "{}", c.manifest_text);
    assert!(c.manifest_text.contains("instances = 10000"), "{}", c.manifest_text);

    let s = inspect(&path).unwrap();
    let text = s.to_string();
    assert!(text.contains("store ×10000"), "{text}");
    assert!(text.contains("children store-0 … store-9999"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("store")).count(), 2, "module and template:\n{text}");
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["processes"][0]["instances"], 10_000);
    assert!(json["processes"][1].get("instances").is_none(), "only when given");
}

#[test]
fn build_is_deterministic_and_entries_are_plain() {
    let app = App::new();
    let a = fs::read(app.build(None)).unwrap();
    let other = app.dir.path().join("other");
    let b = fs::read(build(&app.manifest, app.dir.path(), &app.libraries, &other, None).unwrap()).unwrap();
    assert_eq!(a, b);
    assert_eq!(&a[4..8], &[0, 0, 0, 0], "gzip header mtime 0");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(a.as_slice()));
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.entry_type(), tar::EntryType::Regular);
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.username_bytes().unwrap_or_default(), b"");
        assert_eq!(h.groupname_bytes().unwrap_or_default(), b"");
    }
}

#[test]
fn build_refuses_libraries_that_do_not_match_the_manifest() {
    let app = App::new();
    let one = &app.libraries[..1];
    let e = build(&app.manifest, app.dir.path(), one, &app.out(), None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Build, "{e}");
    assert!(e.message.contains("kv_api"), "{e}");

    let mut extra = app.libraries.clone();
    extra.push(("kv_cache".into(), "target/libkv_api.so".into()));
    assert_eq!(
        build(&app.manifest, app.dir.path(), &extra, &app.out(), None).unwrap_err().kind,
        ErrorKind::Build
    );

    let mut twice = app.libraries.clone();
    twice.push(app.libraries[0].clone());
    assert_eq!(
        build(&app.manifest, app.dir.path(), &twice, &app.out(), None).unwrap_err().kind,
        ErrorKind::Build
    );

    let mut missing = app.libraries.clone();
    missing[0].1 = "target/nope.so".into();
    let e = build(&app.manifest, app.dir.path(), &missing, &app.out(), None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("nope.so"), "{e}");
    assert!(!app.out().join("kv-1.1.0.tar.gz").exists(), "nothing written");
}

#[test]
fn signed_round_trip_with_trusted_key() {
    let app = App::new();
    let key_path = app.dir.path().join("keys/release.key");
    fs::create_dir_all(key_path.parent().unwrap()).unwrap();
    let key = generate_key(&key_path).unwrap();
    let public = load_verifying_key(&archive::public_key_path(&key_path)).unwrap();
    assert_eq!(public, key.verifying_key());
    assert_eq!(load_signing_key(&key_path).unwrap().to_bytes(), key.to_bytes());

    let path = app.build(Some(&key));
    let names: Vec<Vec<u8>> = entries_of(&path).into_iter().map(|e| e.path).collect();
    assert_eq!(names[1], SIGNATURE_ENTRY.as_bytes());

    let c = read(&path, Some(&[public]), true).unwrap();
    assert!(c.trusted);
    assert_eq!(c.signer, Some(public));
    assert_eq!(c.signature.as_ref().unwrap().len(), 64);

    // Without trusted keys the signature is still checked against its own key.
    let c = read(&path, None, false).unwrap();
    assert!(!c.trusted && c.signer.is_some());
    let s = inspect(&path).unwrap();
    assert!(s.signed && !s.trusted);
    assert!(s.to_string().contains("not checked against trusted keys"), "{s}");
    let s = inspect_with_keys(&path, Some(&[public])).unwrap();
    assert!(s.trusted);
    assert!(s.to_string().contains("by trusted key"), "{s}");
}

// ------------------------------------------------------------ keys

#[test]
fn key_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let key = generate_key(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim().len(), 64);

    // Never replaces an existing key.
    let e = generate_key(&path).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    assert_eq!(fs::read_to_string(&path).unwrap(), text);

    // Raw 32 bytes are accepted too.
    let raw = dir.path().join("raw");
    fs::write(&raw, key.to_bytes()).unwrap();
    assert_eq!(load_signing_key(&raw).unwrap().to_bytes(), key.to_bytes());
    let raw_pub = dir.path().join("raw.pub");
    fs::write(&raw_pub, key.verifying_key().as_bytes()).unwrap();
    assert_eq!(load_verifying_key(&raw_pub).unwrap(), key.verifying_key());
    let hex_pub = dir.path().join("hex.pub");
    archive::write_verifying_key(&hex_pub, &key.verifying_key()).unwrap();
    assert_eq!(load_verifying_key(&hex_pub).unwrap(), key.verifying_key());

    // Malformed key files name the file.
    let bad = dir.path().join("bad");
    fs::write(&bad, "not a key\n").unwrap();
    let e = load_signing_key(&bad).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Key);
    assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
    assert_eq!(load_verifying_key(&bad).unwrap_err().kind, ErrorKind::Key);
    assert_eq!(load_verifying_key(&dir.path().join("none")).unwrap_err().kind, ErrorKind::Io);
}

// ------------------------------------------------------------ path attacks

#[test]
fn absolute_path_is_refused() {
    let app = App::new();
    let path = crafted_from_valid(&app, |e| {
        let m = take(e, MANIFEST_ENTRY);
        e.insert(0, Raw { path: b"/release.toml".to_vec(), ..m });
    });
    expect_err(&path, None, false, ErrorKind::AbsolutePath, Some("/release.toml"));

    let path = crafted_from_valid(&app, |e| e.push(file("/etc/cron.d/evil", b"* * * * * root sh")));
    expect_err(&path, None, false, ErrorKind::AbsolutePath, Some("/etc/cron.d/evil"));
}

#[test]
fn parent_dir_component_is_refused() {
    let app = App::new();
    let path = crafted_from_valid(&app, |e| {
        let m = take(e, MANIFEST_ENTRY);
        e.insert(0, Raw { path: b"lib/../release.toml".to_vec(), ..m });
    });
    expect_err(&path, None, false, ErrorKind::ParentDir, Some("lib/../release.toml"));

    let path = crafted_from_valid(&app, |e| e.push(file("../../.bashrc", b"evil")));
    expect_err(&path, None, false, ErrorKind::ParentDir, Some("../../.bashrc"));
}

#[test]
fn symlink_is_refused() {
    let app = App::new();
    let path = crafted_from_valid(&app, |e| {
        take(e, "lib/kv_api.so");
        e.push(special("lib/kv_api.so", tar::EntryType::Symlink, Some("/etc/passwd")));
    });
    let err = expect_err(&path, None, false, ErrorKind::NotRegularFile, Some("lib/kv_api.so"));
    assert!(err.message.contains("symbolic link") && err.message.contains("/etc/passwd"), "{err}");
}

#[test]
fn hard_link_is_refused() {
    let app = App::new();
    let path = crafted_from_valid(&app, |e| {
        take(e, "lib/kv_api.so");
        e.push(special("lib/kv_api.so", tar::EntryType::Link, Some("lib/kv_store.so")));
    });
    let err = expect_err(&path, None, false, ErrorKind::NotRegularFile, Some("lib/kv_api.so"));
    assert!(err.message.contains("hard link"), "{err}");
}

#[test]
fn device_and_fifo_entries_are_refused() {
    let app = App::new();
    for (kind, what) in [
        (tar::EntryType::Char, "character device"),
        (tar::EntryType::Block, "block device"),
        (tar::EntryType::Fifo, "fifo"),
    ] {
        let path = crafted_from_valid(&app, |e| {
            take(e, "lib/kv_store.so");
            e.push(special("lib/kv_store.so", kind, None));
        });
        let err = expect_err(&path, None, false, ErrorKind::NotRegularFile, Some("lib/kv_store.so"));
        assert!(err.message.contains(what), "{err}");
    }
}

#[test]
fn directories_other_than_lib_are_refused_and_lib_is_skipped() {
    let app = App::new();
    let path = crafted_from_valid(&app, |e| e.insert(1, special("lib/", tar::EntryType::Directory, None)));
    assert_eq!(read(&path, None, false).unwrap().libraries.len(), 2, "lib/ is skipped");

    let path = crafted_from_valid(&app, |e| e.push(special("etc/", tar::EntryType::Directory, None)));
    expect_err(&path, None, false, ErrorKind::NotRegularFile, Some("etc/"));
}

#[test]
fn unknown_entries_are_refused() {
    let app = App::new();
    let path = crafted_from_valid(&app, |e| e.push(file("notes.txt", b"hello")));
    expect_err(&path, None, false, ErrorKind::UnknownEntry, Some("notes.txt"));

    let path = crafted_from_valid(&app, |e| {
        let m = take(e, MANIFEST_ENTRY);
        e.insert(0, Raw { path: b"./release.toml".to_vec(), ..m });
    });
    expect_err(&path, None, false, ErrorKind::UnknownEntry, Some("./release.toml"));

    // A library of a module the manifest does not declare.
    let path = crafted_from_valid(&app, |e| e.push(file("lib/kv_cache.so", b"\x7fELF")));
    let err = expect_err(&path, None, false, ErrorKind::UnknownEntry, Some("lib/kv_cache.so"));
    assert!(err.message.contains("not the library of any module"), "{err}");
}

#[test]
fn duplicate_entries_are_refused() {
    let app = App::new();
    // The same library twice, identical: nothing else is wrong with it.
    let path = crafted_from_valid(&app, |e| e.push(file("lib/kv_store.so", STORE_SO)));
    expect_err(&path, None, false, ErrorKind::DuplicateEntry, Some("lib/kv_store.so"));

    let path = crafted_from_valid(&app, |e| {
        let m = take(e, MANIFEST_ENTRY);
        e.push(Raw { path: m.path.clone(), kind: m.kind, data: m.data.clone(), link: None });
        e.insert(0, m);
    });
    expect_err(&path, None, false, ErrorKind::DuplicateEntry, Some(MANIFEST_ENTRY));
}

// ------------------------------------------------------------ contents

#[test]
fn checksum_mismatch_is_refused() {
    let app = App::new();
    let path = crafted_from_valid(&app, |e| {
        take(e, "lib/kv_api.so");
        e.push(file("lib/kv_api.so", b"\x7fELF a different library"));
    });
    let err = expect_err(&path, None, false, ErrorKind::ChecksumMismatch, Some("lib/kv_api.so"));
    assert!(err.message.contains(&archive::sha256_hex(API_SO)), "{err}");
}

#[test]
fn truncated_archive_is_refused() {
    let app = App::new();
    let built = app.build(None);
    let bytes = fs::read(&built).unwrap();
    let path = app.crafted();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = expect_err(&path, None, false, ErrorKind::Corrupt, None);
    assert!(err.to_string().contains("crafted.tar.gz"), "{err}");

    // A gzip stream that is complete but holds a truncated tar.
    let gz = fs::read(&built).unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut tar).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &tar[..512 + 100]).unwrap();
    fs::write(&path, enc.finish().unwrap()).unwrap();
    expect_err(&path, None, false, ErrorKind::Corrupt, Some(MANIFEST_ENTRY));

    // Not gzip at all.
    fs::write(&path, b"PK\x03\x04 a zip file").unwrap();
    expect_err(&path, None, false, ErrorKind::Corrupt, None);
}

#[test]
fn missing_library_is_refused() {
    let app = App::new();
    let path = crafted_from_valid(&app, |e| {
        take(e, "lib/kv_api.so");
    });
    let err = expect_err(&path, None, false, ErrorKind::MissingLibrary, Some("lib/kv_api.so"));
    assert!(err.message.contains("kv_api"), "{err}");
}

#[test]
fn missing_or_invalid_manifest_is_refused() {
    let app = App::new();
    let path = crafted_from_valid(&app, |e| {
        take(e, MANIFEST_ENTRY);
    });
    expect_err(&path, None, false, ErrorKind::MissingManifest, Some(MANIFEST_ENTRY));

    // A source manifest (no sha256/file) is not an archive manifest.
    let path = crafted_from_valid(&app, |e| {
        take(e, MANIFEST_ENTRY);
        e.insert(0, file(MANIFEST_ENTRY, MANIFEST.as_bytes()));
    });
    let err = expect_err(&path, None, false, ErrorKind::InvalidManifest, Some(MANIFEST_ENTRY));
    assert!(err.message.contains("sha256"), "{err}");

    let path = crafted_from_valid(&app, |e| {
        take(e, MANIFEST_ENTRY);
        e.insert(0, file(MANIFEST_ENTRY, b"[release]\nname = \"kv\"\n"));
    });
    let err = expect_err(&path, None, false, ErrorKind::InvalidManifest, Some(MANIFEST_ENTRY));
    assert!(err.message.contains("release.toml:1: field `release.version`"), "{err}");
}

// ------------------------------------------------------------ signatures

fn key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

#[test]
fn unsigned_archive_is_refused_when_signatures_are_required() {
    let app = App::new();
    let path = app.build(None);
    let trusted = [key(1).verifying_key()];
    expect_err(&path, Some(&trusted), true, ErrorKind::Unsigned, Some(SIGNATURE_ENTRY));
    // Accepted when not required.
    assert!(read(&path, Some(&trusted), false).is_ok());
}

#[test]
fn required_signature_needs_trusted_keys() {
    let app = App::new();
    let path = app.build(Some(&key(1)));
    expect_err(&path, None, true, ErrorKind::NoTrustedKeys, Some(SIGNATURE_ENTRY));
    expect_err(&path, Some(&[]), true, ErrorKind::NoTrustedKeys, Some(SIGNATURE_ENTRY));
}

#[test]
fn signature_by_untrusted_key_is_refused() {
    let app = App::new();
    let path = app.build(Some(&key(2)));
    let trusted = [key(1).verifying_key(), key(3).verifying_key()];
    let err = expect_err(&path, Some(&trusted), false, ErrorKind::UntrustedSigner, Some(SIGNATURE_ENTRY));
    assert!(err.message.contains(&hex::encode(key(2).verifying_key().as_bytes())), "{err}");
    expect_err(&path, Some(&trusted), true, ErrorKind::UntrustedSigner, Some(SIGNATURE_ENTRY));
}

#[test]
fn manifest_tampered_after_signing_is_refused() {
    let app = App::new();
    let signed = app.build(Some(&key(1)));
    let mut entries = entries_of(&signed);
    let m = take(&mut entries, MANIFEST_ENTRY);
    let text = String::from_utf8(m.data).unwrap();
    // Still a valid manifest whose checksums match: only the signature
    // catches it.
    let tampered = text.replace("shards = 4", "shards = 400");
    assert_ne!(tampered, text);
    entries.insert(0, file(MANIFEST_ENTRY, tampered.as_bytes()));
    let path = app.crafted();
    write_tar_gz(&path, &entries);
    let trusted = [key(1).verifying_key()];
    expect_err(&path, Some(&trusted), true, ErrorKind::BadSignature, Some(MANIFEST_ENTRY));
    // Even with no trusted keys: a signature that does not match its own key.
    expect_err(&path, None, false, ErrorKind::BadSignature, Some(MANIFEST_ENTRY));
}

#[test]
fn malformed_signature_file_is_refused() {
    let app = App::new();
    let signed = app.build(Some(&key(1)));
    let mut entries = entries_of(&signed);
    take(&mut entries, SIGNATURE_ENTRY);
    entries.insert(1, file(SIGNATURE_ENTRY, b"ed25519 abc def\n"));
    let path = app.crafted();
    write_tar_gz(&path, &entries);
    let err = expect_err(&path, None, false, ErrorKind::BadSignature, Some(SIGNATURE_ENTRY));
    assert!(err.message.contains("malformed"), "{err}");
}

// ------------------------------------------------------------ the file itself

/// Runs `read_limited(path, cap)` on a thread and waits at most 2 s for it:
/// a read that blocks (a FIFO's open, an endless device) fails the test
/// instead of hanging it.
#[track_caller]
fn read_limited_within_2s(path: &Path, cap: u64) -> Result<archive::Contents, ArchiveError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(archive::read_limited(&p, cap, None, false));
    });
    rx.recv_timeout(std::time::Duration::from_secs(2))
        .unwrap_or_else(|_| panic!("read_limited({}) did not return within 2 s", path.display()))
}

/// `read_limited` refused `path` as `kind`; the message names the path,
/// says `what` and ends with the kind's hint.
#[track_caller]
fn expect_refused(path: &Path, cap: u64, kind: ErrorKind, what: &[&str]) -> ArchiveError {
    let e = match read_limited_within_2s(path, cap) {
        Ok(c) => panic!("expected {kind:?}, read {:?}", c.manifest.release),
        Err(e) => e,
    };
    let shown = e.to_string();
    assert_eq!(e.kind, kind, "{shown}");
    assert_eq!(e.path, path, "{shown}");
    assert_eq!(e.entry, None, "{shown}");
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
    for w in what {
        assert!(shown.contains(w), "{w:?} in {shown}");
    }
    assert!(shown.ends_with(kind.hint()), "{shown}");
    e
}

#[test]
fn read_limited_refuses_a_fifo_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("kv-1.1.0.tar.gz");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
    // No writer ever opens it: a blocking open would wait forever.
    let started = std::time::Instant::now();
    expect_refused(
        &fifo,
        archive::DEFAULT_MAX_ARCHIVE_BYTES,
        ErrorKind::NotAFile,
        &["a FIFO", "not a regular file"],
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // `read` (the default cap) goes the same way.
    let (tx, rx) = std::sync::mpsc::channel();
    let p = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(read(&p, None, false).map(|_| ()).map_err(|e| e.kind));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(2)).expect("read returns within 2 s");
    assert_eq!(got, Err(ErrorKind::NotAFile));
}

#[test]
fn read_limited_refuses_a_directory_a_device_and_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cap = archive::DEFAULT_MAX_ARCHIVE_BYTES;
    expect_refused(dir.path(), cap, ErrorKind::NotAFile, &["a directory"]);
    // Endless zeros: read without the check, it would be 256 MiB of
    // reading and then a corrupt gzip, not this.
    expect_refused(Path::new("/dev/zero"), cap, ErrorKind::NotAFile, &["a character device"]);
    let socket = dir.path().join("sock.tar.gz");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    expect_refused(&socket, cap, ErrorKind::NotAFile, &["a socket"]);
    // A missing file is an I/O error, as before.
    expect_refused(&dir.path().join("missing.tar.gz"), cap, ErrorKind::Io, &["cannot read the archive"]);
}

#[test]
fn read_refuses_a_sparse_3_gib_file_by_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.tar.gz");
    // Sparse: 3 GiB long, no data blocks on disk.
    fs::File::create(&path).unwrap().set_len(3 << 30).unwrap();
    let e = expect_refused(
        &path,
        archive::DEFAULT_MAX_ARCHIVE_BYTES,
        ErrorKind::TooLarge,
        &["3221225472 bytes (3.0 GiB)", "268435456 bytes (256.0 MiB)", "--max-archive-size"],
    );
    assert!(e.message.contains("nothing was read"), "{e}");
    // `read` uses the 256 MiB default.
    assert_eq!(archive::DEFAULT_MAX_ARCHIVE_BYTES, 256 * 1024 * 1024);
    assert_eq!(read(&path, None, false).unwrap_err().kind, ErrorKind::TooLarge);
}

#[test]
fn read_limited_caps_at_exactly_max_bytes() {
    let app = App::new();
    let key = key(1);
    let path = app.build(Some(&key));
    let len = fs::metadata(&path).unwrap().len();

    // One byte over a small cap: refused, naming both numbers.
    let e = expect_refused(
        &path,
        len - 1,
        ErrorKind::TooLarge,
        &[&format!("{len} bytes"), &format!("{} bytes", len - 1)],
    );
    assert!(e.message.contains("--max-archive-size"), "{e}");

    // At the cap: read and verified as `read` does.
    let c = read_limited_within_2s(&path, len).unwrap();
    let full = read(&path, None, false).unwrap();
    assert_eq!(c.manifest, full.manifest);
    assert_eq!(c.manifest_text, full.manifest_text);
    assert_eq!(c.libraries, full.libraries);
    assert_eq!(c.signer.map(|k| k.to_bytes()), Some(key.verifying_key().to_bytes()));
    // The signature file is kept byte for byte, as it is in the archive.
    let sig = entries_of(&path).into_iter().find(|e| e.path == SIGNATURE_ENTRY.as_bytes()).unwrap();
    assert_eq!(c.signature_file.as_deref(), Some(sig.data.as_slice()));
    assert!(read(&app.build(None), None, false).unwrap().signature_file.is_none());

    // The same verification path: a tampered archive under the cap is
    // refused exactly as `read` refuses it.
    let bad = crafted_from_valid(&app, |entries| {
        let lib = entries.iter_mut().find(|e| e.path == b"lib/kv_api.so").unwrap();
        lib.data[0] ^= 1;
    });
    let e = archive::read_limited(&bad, archive::DEFAULT_MAX_ARCHIVE_BYTES, None, false).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ChecksumMismatch, "{e}");
    let bytes = fs::read(&bad).unwrap();
    assert_eq!(
        archive::verify_bytes(&bad, &bytes, None, false).unwrap_err().kind,
        ErrorKind::ChecksumMismatch
    );
    assert_eq!(
        archive::verify_bytes(&path, &fs::read(&path).unwrap(), None, false).unwrap().libraries,
        full.libraries
    );
}
