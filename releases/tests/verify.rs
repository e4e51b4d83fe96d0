//! The store keeps what was verified (`Store::add_verified`) and proves it
//! again before a boot (`Store::verify_release`): each test stores a real
//! archive's verified contents, changes one thing on disk the way an
//! attacker or a bad disk would, and checks the exact refusal.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use relive_releases::archive::{self, Contents};
use relive_releases::manifest::Manifest;
use relive_releases::store::{
    MANIFEST_FILE, MODULES_FILE, ReleaseState, SIGNATURE_FILE, Store, StoreError, VERIFIED_FILE,
};
use semver::Version;

const STORE_SO: &[u8] = b"\x7fELF not really: kv_store 1.0.0";
const API_SO: &[u8] = b"\x7fELF not really: kv_api 1.0.0, another library";

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn sha(bytes: &[u8]) -> String {
    archive::sha256_hex(bytes)
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn manifest(version: &str) -> String {
    format!(
        r#"[release]
name = "kv"
version = "{version}"

[[module]]
name = "kv_store"
crate = "kv_store"

[[module]]
name = "kv_api"
crate = "kv_api"

[[process]]
name = "store"
module = "kv_store"
args = {{ shards = 4 }}

[[process]]
name = "api"
module = "kv_api"
"#
    )
}

/// A store, and a place to build archives.
struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        Fixture { dir, store }
    }

    /// Builds kv `version` (libraries `STORE_SO`, `API_SO`), signed by `key`
    /// if given, reads it back verified (no trusted keys) and returns it.
    fn archive(&self, version: &str, key: Option<&SigningKey>) -> Contents {
        let app = self.dir.path().join(format!("app-{version}"));
        fs::create_dir_all(&app).unwrap();
        fs::write(app.join("release.toml"), manifest(version)).unwrap();
        fs::write(app.join("libkv_store.so"), STORE_SO).unwrap();
        fs::write(app.join("libkv_api.so"), API_SO).unwrap();
        let m = Manifest::from_path(&app.join("release.toml")).unwrap();
        let libs = vec![
            ("kv_store".to_string(), PathBuf::from("libkv_store.so")),
            ("kv_api".to_string(), PathBuf::from("libkv_api.so")),
        ];
        let path = archive::build(&m, &app, &libs, &app.join("out"), key).unwrap();
        archive::read(&path, None, false).unwrap()
    }

    /// Stores kv `version` with `add_verified`; returns what was stored.
    fn add(&mut self, version: &str, key: Option<&SigningKey>) -> Contents {
        let contents = self.archive(version, key);
        let dir = self.store.add_verified(&contents).unwrap();
        assert_eq!(dir, self.store.release_dir("kv", &v(version)));
        contents
    }

    fn file(&self, version: &str, name: &str) -> PathBuf {
        self.store.release_dir("kv", &v(version)).join(name)
    }

    fn verify(&self, trusted: Option<&[VerifyingKey]>, require_signed: bool) -> Result<Contents, StoreError> {
        self.store.verify_release("kv", &v("1.0.0"), trusted, require_signed)
    }
}

/// `verify_release` returned `Tampered` about `path`, whose message has
/// each of `want`; returns the message.
#[track_caller]
fn expect_tampered(result: Result<Contents, StoreError>, path: &Path, want: &[&str]) -> String {
    let err = match result {
        Ok(c) => panic!("expected Tampered about {}, verified {:?}", path.display(), c.manifest.release),
        Err(e) => e,
    };
    let msg = err.to_string();
    match &err {
        StoreError::Tampered { release, path: p, .. } => {
            assert_eq!(release, "kv 1.0.0", "{msg}");
            assert_eq!(p, path, "{msg}");
        }
        other => panic!("expected Tampered about {}, got {other:?}", path.display()),
    }
    assert!(msg.contains("kv 1.0.0") && msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("refuses to boot it") && msg.contains("unpack its archive again"), "{msg}");
    for w in want {
        assert!(msg.contains(w), "{w:?} in {msg}");
    }
    msg
}

fn same(a: &Contents, b: &Contents) {
    assert_eq!(a.manifest, b.manifest);
    assert_eq!(a.manifest_text, b.manifest_text);
    assert_eq!(a.libraries, b.libraries);
    assert_eq!(a.signature, b.signature);
    assert_eq!(a.signature_file, b.signature_file);
    assert_eq!(a.signer.map(|k| k.to_bytes()), b.signer.map(|k| k.to_bytes()));
}

#[test]
fn add_verified_keeps_the_signature_and_what_was_verified() {
    let mut f = Fixture::new();
    let signed = f.add("1.0.0", Some(&key(1)));
    assert_eq!(
        fs::read(f.file("1.0.0", SIGNATURE_FILE)).unwrap(),
        signed.signature_file.clone().unwrap(),
        "release.sig is the archive's, byte for byte"
    );
    assert_eq!(fs::read_to_string(f.file("1.0.0", MANIFEST_FILE)).unwrap(), signed.manifest_text);
    let verified: serde_json::Value =
        serde_json::from_slice(&fs::read(f.file("1.0.0", VERIFIED_FILE)).unwrap()).unwrap();
    assert_eq!(
        verified,
        serde_json::json!({
            "manifest_sha256": sha(signed.manifest_text.as_bytes()),
            "signer": hex::encode(key(1).verifying_key().as_bytes()),
        })
    );
    assert_eq!(fs::read(f.store.library_path(&sha(STORE_SO))).unwrap(), STORE_SO);
    assert_eq!(f.store.get("kv", &v("1.0.0")).unwrap().state, ReleaseState::Unpacked);

    let unsigned = f.add("1.1.0", None);
    assert!(!f.file("1.1.0", SIGNATURE_FILE).exists());
    let verified: serde_json::Value =
        serde_json::from_slice(&fs::read(f.file("1.1.0", VERIFIED_FILE)).unwrap()).unwrap();
    assert_eq!(verified["manifest_sha256"], sha(unsigned.manifest_text.as_bytes()));
    assert_eq!(verified["signer"], serde_json::Value::Null);
}

#[test]
fn a_good_release_verifies_and_returns_the_bytes_it_hashed() {
    let mut f = Fixture::new();
    let stored = f.add("1.0.0", Some(&key(1)));
    let back = f.verify(None, false).unwrap();
    same(&back, &stored);
    assert!(!back.trusted, "no trusted keys given");
    assert_eq!(back.library("kv_store").unwrap().bytes, STORE_SO);
    assert_eq!(back.library("kv_api").unwrap().sha256, sha(API_SO));

    let trusted = [key(3).verifying_key(), key(1).verifying_key()];
    for require in [false, true] {
        let back = f.verify(Some(&trusted), require).unwrap();
        same(&back, &stored);
        assert!(back.trusted);
    }

    // An unsigned release verifies when no signature is asked for.
    let mut g = Fixture::new();
    let stored = g.add("1.0.0", None);
    same(&g.verify(None, false).unwrap(), &stored);
    same(&g.verify(Some(&[]), false).unwrap(), &stored);
}

#[test]
fn a_flipped_byte_in_a_library_is_refused() {
    let mut f = Fixture::new();
    f.add("1.0.0", None);
    let path = f.store.library_path(&sha(STORE_SO));
    let mut bytes = fs::read(&path).unwrap();
    bytes[7] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    expect_tampered(f.verify(None, false), &path, &["kv_store", &sha(&bytes), &sha(STORE_SO)]);
}

#[test]
fn a_library_swapped_for_another_valid_one_is_refused() {
    let mut f = Fixture::new();
    f.add("1.0.0", None);
    // kv_store's file now holds kv_api's library: a real library, with a
    // real checksum, just not the one release.toml names.
    let path = f.store.library_path(&sha(STORE_SO));
    fs::copy(f.store.library_path(&sha(API_SO)), &path).unwrap();
    expect_tampered(f.verify(None, false), &path, &["kv_store", &sha(API_SO), &sha(STORE_SO)]);
}

#[test]
fn a_missing_library_or_one_that_is_a_fifo_is_refused_at_once() {
    let mut f = Fixture::new();
    f.add("1.0.0", None);
    let path = f.store.library_path(&sha(API_SO));
    fs::remove_file(&path).unwrap();
    expect_tampered(f.verify(None, false), &path, &["kv_api", "missing"]);

    // A FIFO with no writer in its place: refused, not waited on.
    rustix::fs::mkfifoat(rustix::fs::CWD, &path, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
    let root = f.store.root().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let store = Store::open_read_only(&root).unwrap();
        let _ = tx.send(store.verify_release("kv", &v("1.0.0"), None, false));
    });
    let result = rx.recv_timeout(Duration::from_secs(2)).expect("verify_release returns within 2 s");
    expect_tampered(result, &path, &["a FIFO", "not a regular file"]);
}

#[test]
fn an_edited_manifest_is_refused() {
    let mut f = Fixture::new();
    f.add("1.0.0", None);
    let path = f.file("1.0.0", MANIFEST_FILE);
    let text = fs::read_to_string(&path).unwrap();
    // Still a valid manifest with the same libraries: only the recorded
    // sha256 tells.
    let edited = text.replace("shards = 4", "shards = 400");
    assert_ne!(edited, text);
    fs::write(&path, &edited).unwrap();
    expect_tampered(
        f.verify(None, false),
        &path,
        &[&sha(edited.as_bytes()), &sha(text.as_bytes()), VERIFIED_FILE],
    );
}

#[test]
fn an_edited_signed_manifest_is_refused_even_without_verified_json() {
    let mut f = Fixture::new();
    f.add("1.0.0", Some(&key(1)));
    let path = f.file("1.0.0", MANIFEST_FILE);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replace("shards = 4", "shards = 400")).unwrap();
    fs::remove_file(f.file("1.0.0", VERIFIED_FILE)).unwrap();
    // The signature no longer matches, keys given or not.
    expect_tampered(f.verify(None, false), &path, &["does not match", SIGNATURE_FILE]);
    let trusted = [key(1).verifying_key()];
    expect_tampered(f.verify(Some(&trusted), true), &path, &["does not match"]);
}

#[test]
fn a_release_from_an_older_store_without_verified_json_is_accepted() {
    let mut f = Fixture::new();
    let stored = f.add("1.0.0", None);
    fs::remove_file(f.file("1.0.0", VERIFIED_FILE)).unwrap();
    same(&f.verify(None, false).unwrap(), &stored);
    // Every other check still applies.
    let path = f.store.library_path(&sha(API_SO));
    fs::write(&path, b"not it").unwrap();
    expect_tampered(f.verify(None, false), &path, &["kv_api"]);
}

#[test]
fn modules_json_that_disagrees_with_the_manifest_is_refused() {
    let mut f = Fixture::new();
    f.add("1.0.0", None);
    let path = f.file("1.0.0", MODULES_FILE);
    // Point kv_store at kv_api's library.
    let json = serde_json::json!({ "kv_store": sha(API_SO), "kv_api": sha(API_SO) });
    fs::write(&path, json.to_string()).unwrap();
    expect_tampered(f.verify(None, false), &path, &["module kv_store", &sha(STORE_SO), &sha(API_SO)]);
}

#[test]
fn with_trusted_keys_an_unsigned_release_is_refused() {
    let mut f = Fixture::new();
    f.add("1.0.0", None);
    let trusted = [key(1).verifying_key()];
    let sig = f.file("1.0.0", SIGNATURE_FILE);
    for require in [false, true] {
        let err = f.verify(Some(&trusted), require).unwrap_err();
        let msg = err.to_string();
        match &err {
            StoreError::Unsigned { release, path, .. } => {
                assert_eq!(release, "kv 1.0.0");
                assert_eq!(path, &sig);
            }
            other => panic!("expected Unsigned, got {other:?}"),
        }
        assert!(msg.contains(&sig.display().to_string()), "{msg}");
        assert!(msg.contains(&hex::encode(key(1).verifying_key().as_bytes())), "names the key wanted: {msg}");
        assert!(msg.contains("refuses to boot it"), "{msg}");
    }
    // Required, with no key to check against.
    let err = f.verify(None, true).unwrap_err();
    assert!(matches!(err, StoreError::NoTrustedKeys { .. }), "{err:?}");
    assert!(err.to_string().contains("kv 1.0.0"), "{err}");
}

#[test]
fn with_trusted_keys_a_release_signed_by_another_key_is_refused() {
    let mut f = Fixture::new();
    f.add("1.0.0", Some(&key(2)));
    let trusted = [key(1).verifying_key()];
    let err = f.verify(Some(&trusted), false).unwrap_err();
    let msg = err.to_string();
    let found = hex::encode(key(2).verifying_key().as_bytes());
    match &err {
        StoreError::UntrustedSigner { release, path, key, .. } => {
            assert_eq!(release, "kv 1.0.0");
            assert_eq!(path, &f.file("1.0.0", SIGNATURE_FILE));
            assert_eq!(key, &found);
        }
        other => panic!("expected UntrustedSigner, got {other:?}"),
    }
    assert!(msg.contains(&found), "names the key found: {msg}");
    assert!(msg.contains(&hex::encode(key(1).verifying_key().as_bytes())), "names the key wanted: {msg}");
    assert!(msg.contains(&f.file("1.0.0", SIGNATURE_FILE).display().to_string()), "{msg}");
    // The right key passes.
    assert!(f.verify(Some(&[key(2).verifying_key()]), true).unwrap().trusted);
}

#[test]
fn a_removed_or_replaced_signature_is_refused() {
    // Re-signed by another key over the same manifest: valid on its own,
    // but not the signer verified.json recorded.
    let mut f = Fixture::new();
    f.add("1.0.0", Some(&key(1)));
    let other = f.archive("1.0.0", Some(&key(2)));
    let sig = f.file("1.0.0", SIGNATURE_FILE);
    fs::write(&sig, other.signature_file.unwrap()).unwrap();
    expect_tampered(
        f.verify(None, false),
        &sig,
        &[&hex::encode(key(2).verifying_key().as_bytes()), &hex::encode(key(1).verifying_key().as_bytes())],
    );

    // Removed: with no trusted keys, verified.json still says it was signed.
    fs::remove_file(&sig).unwrap();
    expect_tampered(f.verify(None, false), &sig, &["missing", VERIFIED_FILE]);

    // Added to a release unpacked unsigned.
    let mut g = Fixture::new();
    g.add("1.0.0", None);
    let signed = g.archive("1.0.0", Some(&key(1)));
    let sig = g.file("1.0.0", SIGNATURE_FILE);
    fs::write(&sig, signed.signature_file.unwrap()).unwrap();
    expect_tampered(g.verify(None, false), &sig, &["unpacked unsigned"]);
}

#[test]
fn add_verified_refuses_inconsistent_contents_and_writes_nothing() {
    let mut f = Fixture::new();
    let good = f.archive("1.0.0", Some(&key(1)));
    let root = f.store.root().to_path_buf();
    let releases_before = fs::read_dir(root.join("releases")).unwrap().count();

    let mut edited = good.clone();
    edited.manifest_text = edited.manifest_text.replace("shards = 4", "shards = 400");
    let mut other_signer = good.clone();
    other_signer.signer = Some(key(2).verifying_key());
    let mut no_sig = good.clone();
    no_sig.signature_file = None;
    let mut bad_lib = good.clone();
    bad_lib.libraries[0].sha256 = sha(b"something else");

    for (what, contents) in [
        ("edited text", edited),
        ("other signer", other_signer),
        ("signer without signature", no_sig),
        ("library checksum", bad_lib),
    ] {
        let err = f.store.add_verified(&contents).unwrap_err();
        assert!(matches!(err, StoreError::InvalidContents { .. }), "{what}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains("kv 1.0.0") && msg.contains("nothing was written"), "{what}: {msg}");
        assert!(f.store.which_releases().is_empty(), "{what}");
        assert_eq!(fs::read_dir(root.join("releases")).unwrap().count(), releases_before, "{what}");
        assert_eq!(fs::read_dir(root.join("code")).unwrap().count(), 0, "{what}");
    }
    // The good one goes in.
    f.store.add_verified(&good).unwrap();
    same(&f.verify(Some(&[key(1).verifying_key()]), true).unwrap(), &good);
}
