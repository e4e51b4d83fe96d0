//! `relive new APP [--dir DIR]`: a new project for a service upgraded live.
//!
//! It writes, into DIR (default `./APP`), which must be new or empty:
//!
//! - `module/`: the module crate APP 1.0.0 (a cdylib on relive-abi), a
//!   small service of named counters with `init`, `handle_call`,
//!   `handle_cast`, `code_change` and `downgrade`;
//! - `release.toml`: the release APP 1.0.0 that runs it as process APP;
//! - `next/`: the release 2.0.0 and its module crate, whose state adds a
//!   field with a serde default: the upgrade the scenario deploys;
//! - `scenarios/APP.toml`: boots 1.0.0, calls and casts, deploys 2.0.0 under
//!   a JSON load and rolls back, checking the state at each step;
//! - `vendor/relive-abi/`: relive-abi's sources as this binary was built
//!   with them (embedded at compile time by build.rs), so the project
//!   builds anywhere, against exactly the ABI of the relive that made it;
//! - `Cargo.toml` (a workspace of its own, so that no enclosing workspace
//!   takes the crates in), `README.md` with the commands, `.gitignore`.
//!
//! Everything is written into a temporary sibling directory first and
//! renamed into place: a failed `relive new` leaves no half project.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

include!(concat!(env!("OUT_DIR"), "/abi_sources.rs"));

#[derive(Args)]
pub struct NewArgs {
    /// The application's name: the release, its module and its process
    /// ([a-z][a-z0-9_-]*, as a crate name).
    name: String,
    /// Where to write the project (default: ./NAME); it must not exist or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The project's files: path (with `@app@` for the name), template.
const TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("new/template/Cargo.toml.in")),
    ("release.toml", include_str!("new/template/release.toml.in")),
    ("module/Cargo.toml", include_str!("new/template/module/Cargo.toml.in")),
    ("module/src/lib.rs", include_str!("new/template/module/src/lib.rs.in")),
    ("next/release.toml", include_str!("new/template/next/release.toml.in")),
    ("next/module/Cargo.toml", include_str!("new/template/next/module/Cargo.toml.in")),
    ("next/module/src/lib.rs", include_str!("new/template/next/module/src/lib.rs.in")),
    ("scenarios/@app@.toml", include_str!("new/template/scenarios/APP.toml.in")),
    ("README.md", include_str!("new/template/README.md.in")),
    (".gitignore", include_str!("new/template/gitignore.in")),
];

/// Where the vendored relive-abi goes in a project.
const VENDOR_DIR: &str = "vendor/relive-abi";

/// Names a new application cannot take: Rust keywords (the library's name
/// would be one), the crates of the sysroot, and the project's own
/// dependencies.
#[rustfmt::skip]
const RESERVED: &[&str] = &[
    "abstract", "alloc", "as", "async", "await", "become", "box", "break", "const", "continue", "core",
    "crate", "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "proc_macro", "pub",
    "ref", "relive", "relive_abi", "return", "self", "serde", "static", "std", "struct", "super", "test",
    "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while",
    "yield",
];

/// `relive new`.
pub fn run(args: NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    let files = project_files(&args.name)?;
    write_project(&dir, &files)?;
    let shown = dir.display();
    let app = &args.name;
    println!(
        "created {app} in {shown}: module {app} 1.0.0 (module/), release {app} 1.0.0 (release.toml), \
         release {app} 2.0.0 (next/), a scenario (scenarios/{app}.toml), relive-abi vendored \
         ({VENDOR_DIR}/)\n\
         next:\n  \
         cd {shown}\n  \
         relive release build .\n  \
         relive node start --boot {app}-1.0.0.tar.gz\n  \
         relive call {app} '{{\"Add\": {{\"name\": \"main\", \"by\": 5}}}}'\n  \
         relive scenario run scenarios/{app}.toml\n\
         {shown}/README.md has the rest"
    );
    Ok(())
}

/// A crate and module name: `[a-z][a-z0-9_-]*`, at most 64 characters,
/// not reserved.
fn check_name(name: &str) -> anyhow::Result<()> {
    let what = "write a crate name such as `counters` or `my-service`: [a-z][a-z0-9_-]*";
    let Some(first) = name.chars().next() else { bail!("the application's name is empty: {what}") };
    if !first.is_ascii_lowercase() {
        bail!("the application's name {name:?} starts with {first:?}: {what}");
    }
    if let Some(c) =
        name.chars().find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'))
    {
        bail!("the application's name {name:?} has the character {c:?}: {what}");
    }
    if name.len() > 64 {
        bail!("the application's name {name:?} is longer than 64 characters");
    }
    let as_library = name.replace('-', "_");
    if RESERVED.contains(&as_library.as_str()) {
        bail!(
            "the application's name {name:?} is reserved (a Rust keyword or a crate the project uses): choose another"
        );
    }
    Ok(())
}

/// Every file of a new project `app`: relative path, contents.
fn project_files(app: &str) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let vendored = vendored_manifest().context("vendoring relive-abi")?;
    let abi_version = vendored
        .get("package")
        .and_then(|p| p.get("version"))
        .and_then(toml::Value::as_str)
        .context("relive-abi's Cargo.toml has no package.version")?
        .to_string();
    let fill = |text: &str| {
        text.replace("@app@", app)
            .replace("@abi_version@", &abi_version)
            .replace("@relive_version@", env!("CARGO_PKG_VERSION"))
    };
    let mut files: Vec<(PathBuf, Vec<u8>)> =
        TEMPLATE.iter().map(|(path, text)| (PathBuf::from(fill(path)), fill(text).into_bytes())).collect();
    for (path, bytes) in ABI_FILES {
        let contents = if *path == "Cargo.toml" {
            let header = format!(
                "# relive-abi {abi_version}, vendored by relive {} (`relive new`): the module ABI\n\
                 # this project's modules are built against. Once relive-abi is published on\n\
                 # crates.io, depend on `relive-abi = \"{abi_version}\"` instead and delete vendor/.\n\n",
                env!("CARGO_PKG_VERSION")
            );
            format!("{header}{}", manifest_text(&vendored)?).into_bytes()
        } else {
            bytes.to_vec()
        };
        files.push((Path::new(VENDOR_DIR).join(path), contents));
    }
    Ok(files)
}

/// relive-abi's Cargo.toml made standalone: every field it inherits from
/// the workspace (`x.workspace = true`) replaced by the workspace's value,
/// registry dependencies only, no dev-dependencies (its tests are not
/// vendored).
fn vendored_manifest() -> anyhow::Result<toml::Table> {
    let abi_text = ABI_FILES
        .iter()
        .find(|(path, _)| *path == "Cargo.toml")
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
        .context("relive-abi's Cargo.toml was not embedded")?;
    let mut manifest: toml::Table = toml::from_str(&abi_text).context("reading relive-abi's Cargo.toml")?;
    let workspace: toml::Table =
        toml::from_str(WORKSPACE_MANIFEST).context("reading the workspace's Cargo.toml")?;
    let empty = toml::Table::new();
    let section = |name: &str| {
        workspace.get("workspace").and_then(|w| w.get(name)).and_then(toml::Value::as_table).unwrap_or(&empty)
    };
    let (package_fields, dependencies) = (section("package"), section("dependencies"));

    if let Some(package) = manifest.get_mut("package").and_then(toml::Value::as_table_mut) {
        for (key, value) in package.iter_mut() {
            if inherits(value) {
                *value = package_fields
                    .get(key)
                    .cloned()
                    .with_context(|| format!("package.{key} inherits a field the workspace does not set"))?;
            }
        }
    }
    manifest.remove("dev-dependencies");
    if manifest.get("lints").is_some_and(inherits) {
        match section("lints") {
            lints if lints.is_empty() => manifest.remove("lints"),
            lints => manifest.insert("lints".into(), toml::Value::Table(lints.clone())),
        };
    }
    for table in ["dependencies", "build-dependencies"] {
        let Some(deps) = manifest.get_mut(table).and_then(toml::Value::as_table_mut) else { continue };
        for (name, dep) in deps.iter_mut() {
            *dep =
                standalone_dependency(name, dep, dependencies).with_context(|| format!("{table}.{name}"))?;
        }
    }
    Ok(manifest)
}

/// A Cargo.toml as people write one: `[package]` first, dependencies one
/// line each.
fn manifest_text(manifest: &toml::Table) -> anyhow::Result<String> {
    let mut keys: Vec<&String> = manifest.keys().collect();
    keys.sort_by_key(|key| (key.as_str() != "package", key.contains("dependencies")));
    let mut text = String::new();
    for key in keys {
        let value = &manifest[key];
        match value.as_table() {
            Some(deps) if key.ends_with("dependencies") => {
                text.push_str(&format!("[{key}]\n"));
                for (name, dep) in deps {
                    text.push_str(&format!("{name} = {dep}\n"));
                }
            }
            _ => {
                let single = toml::Table::from_iter([(key.clone(), value.clone())]);
                text.push_str(&toml::to_string(&single).context("writing relive-abi's Cargo.toml")?);
            }
        }
        text.push('\n');
    }
    Ok(text.trim_end().to_string() + "\n")
}

/// `field.workspace = true`.
fn inherits(value: &toml::Value) -> bool {
    value.get("workspace").and_then(toml::Value::as_bool) == Some(true)
}

/// A dependency of relive-abi as a standalone crate declares it.
fn standalone_dependency(
    name: &str,
    dep: &toml::Value,
    workspace: &toml::Table,
) -> anyhow::Result<toml::Value> {
    let mut resolved = if inherits(dep) {
        let base = workspace.get(name).with_context(|| format!("the workspace has no dependency {name}"))?;
        let mut table = match base {
            toml::Value::String(version) => {
                toml::Table::from_iter([("version".to_string(), toml::Value::String(version.clone()))])
            }
            toml::Value::Table(table) => table.clone(),
            other => bail!("the workspace's dependency {name} is {other}, not a version or a table"),
        };
        // The member's own keys (features are added to the workspace's).
        if let Some(own) = dep.as_table() {
            for (key, value) in own {
                match (key.as_str(), table.get_mut("features")) {
                    ("workspace", _) => {}
                    ("features", Some(toml::Value::Array(features))) => {
                        features.extend(value.as_array().into_iter().flatten().cloned());
                    }
                    _ => {
                        table.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        table
    } else {
        match dep {
            toml::Value::String(version) => return Ok(toml::Value::String(version.clone())),
            toml::Value::Table(table) => table.clone(),
            other => bail!("{other} is not a version or a table"),
        }
    };
    if resolved.contains_key("path") || resolved.contains_key("git") {
        if !resolved.contains_key("version") {
            bail!("a path or git dependency without a version cannot be vendored");
        }
        resolved.remove("path");
        resolved.remove("git");
    }
    Ok(toml::Value::Table(resolved))
}

/// Writes `files` into `dir` (new or empty), through a temporary sibling
/// directory renamed into place.
fn write_project(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> anyhow::Result<()> {
    let shown = dir.display();
    let exists = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{shown} is not empty: relive new writes a project only into a new or empty directory; \
                     choose another with --dir, or remove what is there"
                );
            }
            true
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) if error.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("{shown} exists and is not a directory: choose another with --dir")
        }
        Err(error) => return Err(error).with_context(|| format!("reading {shown}")),
    };
    // An existing directory (perhaps the shell's current one, `--dir .`)
    // stays: the files are staged inside it and moved up. A new one is
    // staged beside it and renamed into place whole.
    let (target, staging) = if exists {
        let target = dir.canonicalize().with_context(|| format!("resolving {shown}"))?;
        let staging = target.join(format!(".relive-new-{}", std::process::id()));
        (target, staging)
    } else {
        let target = std::path::absolute(dir).with_context(|| format!("resolving {shown}"))?;
        let parent = target.parent().context("the project's directory cannot be /")?;
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let leaf = target.file_name().map_or("project".into(), |n| n.to_string_lossy().into_owned());
        let staging = parent.join(format!(".{leaf}.relive-new-{}", std::process::id()));
        (target, staging)
    };
    let mut moved = Vec::new();
    let written = (|| -> anyhow::Result<()> {
        for (path, contents) in files {
            let file = staging.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
        }
        if !exists {
            // Fails if a directory with files appeared there meanwhile.
            return std::fs::rename(&staging, &target)
                .with_context(|| format!("moving the new project to {shown}"));
        }
        for entry in std::fs::read_dir(&staging).with_context(|| format!("reading {}", staging.display()))? {
            let entry = entry.with_context(|| format!("reading {}", staging.display()))?;
            let to = target.join(entry.file_name());
            if std::fs::symlink_metadata(&to).is_ok() {
                bail!(
                    "{} appeared while relive new wrote the project: remove it and try again",
                    to.display()
                );
            }
            std::fs::rename(entry.path(), &to)
                .with_context(|| format!("moving {} into {shown}", to.display()))?;
            moved.push(to);
        }
        std::fs::remove_dir(&staging).with_context(|| format!("removing {}", staging.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        for path in moved {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(name: &str) -> String {
        format!("{:#}", check_name(name).unwrap_err())
    }

    #[test]
    fn names_are_crate_names() {
        for good in ["counters", "my-service", "a", "svc_2", "x-1-y"] {
            check_name(good).unwrap();
        }
        assert!(error("").contains("empty"));
        assert!(error("Counters").contains("starts with 'C'"));
        assert!(error("1st").contains("starts with '1'"));
        assert!(error("my.app").contains("has the character '.'"));
        assert!(error("my app").contains("has the character ' '"));
        assert!(error("fn").contains("reserved"));
        assert!(error("relive-abi").contains("reserved"));
        assert!(error(&"a".repeat(65)).contains("longer than 64"));
    }

    /// Every file of runtime/abi/src, its Cargo.toml and its documents are
    /// embedded as they are (build.rs lists the directory; this fails if the
    /// list went stale).
    #[test]
    fn every_abi_source_is_embedded() {
        let abi = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/abi");
        let mut pending = vec![abi.join("src")];
        let mut on_disk = vec![abi.join("Cargo.toml")];
        for entry in std::fs::read_dir(&abi).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                on_disk.push(path);
            }
        }
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    on_disk.push(path);
                }
            }
        }
        assert!(on_disk.len() > 2);
        for path in on_disk {
            let relative = path.strip_prefix(&abi).unwrap();
            let embedded = ABI_FILES
                .iter()
                .find(|(p, _)| Path::new(p) == relative)
                .unwrap_or_else(|| panic!("{} is not embedded", relative.display()));
            assert_eq!(embedded.1, std::fs::read(&path).unwrap(), "{} is stale", relative.display());
        }
    }

    #[test]
    fn the_vendored_manifest_stands_alone() {
        let manifest = vendored_manifest().unwrap();
        let text = manifest_text(&manifest).unwrap();
        assert!(text.starts_with("[package]"), "{text}");
        assert_eq!(toml::from_str::<toml::Table>(&text).unwrap(), manifest, "{text}");
        assert!(!text.contains("workspace"), "{text}");
        assert!(!text.contains("path"), "{text}");
        let package = manifest["package"].as_table().unwrap();
        assert_eq!(package["name"].as_str(), Some("relive-abi"));
        assert!(package["version"].as_str().unwrap().parse::<semver::Version>().is_ok());
        assert!(package["edition"].as_str().is_some());
        // Each dependency has a version, and serde keeps its derive feature.
        for (name, dep) in manifest["dependencies"].as_table().unwrap() {
            assert!(dep.is_str() || dep.get("version").is_some(), "{name}: {dep}");
        }
        let serde = &manifest["dependencies"]["serde"];
        assert!(
            serde["features"].as_array().unwrap().iter().any(|f| f.as_str() == Some("derive")),
            "{serde}"
        );
    }

    #[test]
    fn a_dependency_keeps_the_workspace_and_its_own_features() {
        let workspace: toml::Table = toml::from_str(
            "a = \"1\"\nb = { version = \"2\", features = [\"x\"] }\nc = { path = \"../c\", version = \"0.3\" }\nd = { path = \"../d\" }\n",
        )
        .unwrap();
        let dep = |text: &str| text.parse::<toml::Table>().unwrap()["d"].clone();
        let resolve = |name: &str, text: &str| standalone_dependency(name, &dep(text), &workspace);
        assert_eq!(resolve("a", "d = { workspace = true }").unwrap().to_string(), "{ version = \"1\" }");
        let b = resolve("b", "d = { workspace = true, features = [\"y\"], optional = true }").unwrap();
        assert_eq!(b["features"].as_array().unwrap().len(), 2);
        assert_eq!(b["optional"].as_bool(), Some(true));
        assert_eq!(resolve("c", "d = { workspace = true }").unwrap().to_string(), "{ version = \"0.3\" }");
        assert!(
            format!("{:#}", resolve("d", "d = { workspace = true }").unwrap_err())
                .contains("without a version")
        );
        assert!(
            format!("{:#}", resolve("e", "d = { workspace = true }").unwrap_err())
                .contains("no dependency e")
        );
        assert_eq!(resolve("a", "d = \"1.2\"").unwrap().as_str(), Some("1.2"));
    }

    #[test]
    fn a_project_is_written_into_an_empty_directory_only() {
        let tmp = tempfile::tempdir().unwrap();
        let files = project_files("demo-app").unwrap();
        let paths: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        for expected in [
            "Cargo.toml",
            "release.toml",
            "module/src/lib.rs",
            "next/module/src/lib.rs",
            "scenarios/demo-app.toml",
            "README.md",
            "vendor/relive-abi/Cargo.toml",
            "vendor/relive-abi/src/lib.rs",
        ] {
            assert!(paths.iter().any(|p| p == expected), "{expected} not in {paths:?}");
        }
        for (path, contents) in &files {
            let text = String::from_utf8_lossy(contents);
            assert!(
                !text.contains("@app@") && !text.contains("@abi_version@"),
                "{} keeps a placeholder",
                path.display()
            );
        }

        // A new directory, and an empty one, take the project.
        let new = tmp.path().join("deep").join("demo-app");
        write_project(&new, &files).unwrap();
        assert!(new.join("module/Cargo.toml").is_file());
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        write_project(&empty.join("."), &files).unwrap();
        assert!(empty.join("release.toml").is_file());
        assert!(empty.join("vendor/relive-abi/src/lib.rs").is_file());
        let hidden: Vec<_> = std::fs::read_dir(&empty)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".relive-new"))
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");

        // A directory with anything in it is refused, and left as it was.
        let busy = tmp.path().join("busy");
        std::fs::create_dir(&busy).unwrap();
        std::fs::write(busy.join("notes.txt"), "mine").unwrap();
        let refused = format!("{:#}", write_project(&busy, &files).unwrap_err());
        assert!(refused.contains("is not empty"), "{refused}");
        assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(format!("{:#}", write_project(&file, &files).unwrap_err()).contains("not a directory"));
        // No staging directory is left behind.
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
