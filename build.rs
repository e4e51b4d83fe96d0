//! Embeds relive-abi's sources (runtime/abi: its Cargo.toml, build script
//! if any, its top-level Markdown documents, and every file under src/)
//! and the workspace manifest its Cargo.toml inherits from, so that
//! `relive new` can write a vendored copy of exactly the ABI this binary
//! speaks into a new project. The list is made from the directory at build
//! time: a file added to runtime/abi/src is embedded without anyone
//! updating a list.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let abi = root.join("runtime").join("abi");
    // A directory makes cargo rerun this script when anything under it
    // changes, a new file included.
    println!("cargo:rerun-if-changed={}", abi.display());
    println!("cargo:rerun-if-changed={}", root.join("Cargo.toml").display());

    let mut files = Vec::new();
    for top in ["Cargo.toml", "build.rs"] {
        if abi.join(top).is_file() {
            files.push(PathBuf::from(top));
        }
    }
    // Its documents (README.md, which Cargo.toml may name, and the like).
    let entries = std::fs::read_dir(&abi).unwrap_or_else(|e| panic!("reading {}: {e}", abi.display()));
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".md") && entry.path().is_file() {
            files.push(PathBuf::from(name));
        }
    }
    collect(&abi, Path::new("src"), &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f == Path::new("src/lib.rs")),
        "{} has no src/lib.rs: relive embeds relive-abi's sources from there",
        abi.display()
    );

    let mut code = String::from(
        "/// relive-abi's files: path inside the crate, contents (see build.rs).\n\
         pub(crate) const ABI_FILES: &[(&str, &[u8])] = &[\n",
    );
    for file in &files {
        let relative = file.to_str().expect("relive-abi's file names are UTF-8").replace('\\', "/");
        let absolute = abi.join(file);
        let absolute = absolute.to_str().expect("the checkout's path is UTF-8");
        writeln!(code, "    ({relative:?}, include_bytes!({absolute:?})),").expect("writing to a String");
    }
    code.push_str("];\n\n");
    let workspace = root.join("Cargo.toml");
    writeln!(
        code,
        "/// The workspace manifest relive-abi's Cargo.toml inherits from.\n\
         pub(crate) const WORKSPACE_MANIFEST: &str = include_str!({:?});",
        workspace.to_str().expect("the checkout's path is UTF-8")
    )
    .expect("writing to a String");

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("abi_sources.rs");
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

/// Every file under `base/dir`, as paths relative to `base`.
fn collect(base: &Path, dir: &Path, files: &mut Vec<PathBuf>) {
    let full = base.join(dir);
    let entries = std::fs::read_dir(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", full.display()));
        let name = entry.file_name();
        let shown = name.to_string_lossy();
        // Hidden files and editor backups are not sources.
        if shown.starts_with('.') || shown.ends_with('~') {
            continue;
        }
        let relative = dir.join(&name);
        let kind = entry.file_type().unwrap_or_else(|e| panic!("reading {}: {e}", entry.path().display()));
        if kind.is_dir() {
            collect(base, &relative, files);
        } else if kind.is_file() {
            files.push(relative);
        }
    }
}
