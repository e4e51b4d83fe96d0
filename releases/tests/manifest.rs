//! release.toml parsing: the full format, round trips, and one test per
//! kind of error, each checking the file, line, field and hint it names.

use std::path::Path;

use relive_releases::manifest::{
    ErrorKind, Flags, MAX_INSTANCES, Manifest, ManifestError, Restart, Shutdown, Strategy, TreeChild,
    TreeSupervisor,
};
use semver::Version;

const FILE: &str = "apps/kv/release.toml";

const FULL: &str = r#"[release]
name = "kv"
version = "1.1.0"
upgrade_from = ">=1.0.0, <1.1.0"

[[module]]
name = "kv_store"
crate = "kv_store"

[[module]]
name = "kv-api"
crate = "crates/kv_api"

[[process]]
name = "store"
module = "kv_store"
args = { shards = 4, path = "data", opts = { sync = true } }

[[process]]
name = "api"
module = "kv-api"
restart = "transient"

[[process]]
name = "janitor"
module = "kv_store"
restart = "temporary"
args = 7

[[instruction]]
op = "update"
module = "kv_store"
extra = [1, 2]
"#;

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(text, Path::new(FILE))
}

/// Parses `text`, expects an error of `kind` at `line` about `field`, and
/// checks that its message names all three and says what to do.
#[track_caller]
fn expect_err(text: &str, kind: ErrorKind, line: usize, field: &str) -> ManifestError {
    let e = match parse(text) {
        Ok(m) => panic!("expected {kind:?}, parsed {m:?}"),
        Err(e) => e,
    };
    let shown = e.to_string();
    assert_eq!(e.kind, kind, "{shown}");
    assert_eq!(e.line, Some(line), "{shown}");
    assert_eq!(e.field, field, "{shown}");
    assert_eq!(e.file, Path::new(FILE));
    assert!(shown.starts_with(&format!("{FILE}:{line}: ")), "{shown}");
    assert!(shown.contains(&format!("`{field}`")), "{shown}");
    assert!(shown.ends_with(kind.hint()), "{shown}");
    e
}

/// FULL with `from` replaced by `to` (which must occur once).
fn full_with(from: &str, to: &str) -> String {
    assert_eq!(FULL.matches(from).count(), 1, "{from:?}");
    FULL.replace(from, to)
}

#[test]
fn parses_every_field() {
    let m = parse(FULL).unwrap();
    assert_eq!(m.release.name, "kv");
    assert_eq!(m.release.version, Version::new(1, 1, 0));
    assert_eq!(m.release.upgrade_from.as_ref().unwrap().to_string(), ">=1.0.0, <1.1.0");
    assert_eq!(m.modules.len(), 2);
    assert_eq!(m.modules[1].name, "kv-api");
    assert_eq!(m.modules[1].krate, Path::new("crates/kv_api"));
    assert_eq!(m.modules[0].sha256, None);
    assert_eq!(m.modules[0].file, None);
    assert_eq!(m.processes.len(), 3);
    assert_eq!(m.processes[0].restart, Restart::Permanent, "the default");
    assert_eq!(m.processes[0].args, serde_json::json!({"shards": 4, "path": "data", "opts": {"sync": true}}));
    assert_eq!(m.processes[1].restart, Restart::Transient);
    assert_eq!(m.processes[1].args, serde_json::Value::Null, "absent args");
    assert_eq!(m.processes[2].restart, Restart::Temporary);
    assert_eq!(m.processes[2].args, serde_json::json!(7));
    assert_eq!(
        m.instructions,
        vec![serde_json::json!({"op": "update", "module": "kv_store", "extra": [1, 2]})]
    );
    assert!(m.module("kv_store").is_some());
    assert!(m.module("nope").is_none());
}

#[test]
fn minimal_manifest_has_empty_lists() {
    let m = parse("[release]\nname = \"x\"\nversion = \"0.1.0\"\n").unwrap();
    assert!(m.modules.is_empty() && m.processes.is_empty() && m.instructions.is_empty());
    assert!(m.release.upgrade_from.is_none());
}

#[test]
fn to_toml_string_round_trips() {
    let mut m = parse(FULL).unwrap();
    m.modules[0].sha256 = Some("ab".repeat(32));
    m.modules[0].file = Some("lib/kv_store.so".into());
    let text = m.to_toml_string().unwrap();
    let back = parse(&text).unwrap();
    assert_eq!(back, m, "{text}");
    assert!(!text.contains("args = null"), "{text}");
    m.validate(Path::new(FILE)).unwrap();
}

#[test]
fn upgrade_from_is_a_requirement_on_the_running_version() {
    let m = parse(FULL).unwrap();
    assert!(m.allows_upgrade_from(&Version::new(1, 0, 0)));
    assert!(m.allows_upgrade_from(&Version::new(1, 0, 9)));
    assert!(!m.allows_upgrade_from(&Version::new(1, 1, 0)));
    assert!(!m.allows_upgrade_from(&Version::new(0, 9, 0)));
    let restart_only = full_with("upgrade_from = \">=1.0.0, <1.1.0\"\n", "");
    let m = parse(&restart_only).unwrap();
    assert!(!m.allows_upgrade_from(&Version::new(1, 0, 0)), "absent: restart only");
}

#[test]
fn from_path_reads_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("release.toml");
    std::fs::write(&path, FULL).unwrap();
    assert_eq!(Manifest::from_path(&path).unwrap(), parse(FULL).unwrap());

    let missing = dir.path().join("nope.toml");
    let e = Manifest::from_path(&missing).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io);
    assert!(e.to_string().contains(&missing.display().to_string()), "{e}");
    assert!(std::error::Error::source(&e).is_some());

    std::fs::write(&path, full_with("version = \"1.1.0\"", "version = \"one\"")).unwrap();
    let e = Manifest::from_path(&path).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidVersion);
    assert!(e.to_string().starts_with(&format!("{}:3: ", path.display())), "{e}");
}

#[test]
fn malformed_toml() {
    let text = full_with("crate = \"kv_store\"", "crate = \"kv_store");
    let e = expect_err_syntax(&text, 8);
    assert!(!e.message.is_empty());
    expect_err_syntax("[release\nname = \"x\"\n", 1);
}

#[track_caller]
fn expect_err_syntax(text: &str, line: usize) -> ManifestError {
    let e = parse(text).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Syntax, "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.to_string().starts_with(&format!("{FILE}:{line}: ")), "{e}");
    e
}

#[test]
fn missing_fields() {
    let e =
        expect_err(&full_with("version = \"1.1.0\"\n", ""), ErrorKind::MissingField, 1, "release.version");
    assert!(e.message.contains("version"), "{e}");
    expect_err(&full_with("crate = \"crates/kv_api\"\n", ""), ErrorKind::MissingField, 10, "module[1].crate");
    expect_err(
        &full_with("name = \"api\"\nmodule = \"kv-api\"\n", "name = \"api\"\n"),
        ErrorKind::MissingField,
        19,
        "process[1].module",
    );
    let e = parse("[[module]]\nname = \"a\"\ncrate = \"a\"\n").unwrap_err();
    assert_eq!(e.kind, ErrorKind::MissingField, "{e}");
    assert_eq!(e.field, "release", "{e}");
    assert_eq!(e.line, None, "the whole document: no one line");
    assert!(e.to_string().starts_with(&format!("{FILE}: field `release`: missing field")), "{e}");
}

#[test]
fn unknown_fields() {
    expect_err(
        &full_with("crate = \"crates/kv_api\"", "crate = \"crates/kv_api\"\ncrate_path = \"x\""),
        ErrorKind::UnknownField,
        13,
        "module[1].crate_path",
    );
    expect_err(
        &full_with("version = \"1.1.0\"", "version = \"1.1.0\"\nvesion = \"1\""),
        ErrorKind::UnknownField,
        4,
        "release.vesion",
    );
    expect_err(&format!("{FULL}\n[extra]\nx = 1\n"), ErrorKind::UnknownField, 35, "extra");
}

#[test]
fn wrong_types_and_variants() {
    expect_err(&full_with("name = \"kv\"", "name = 12"), ErrorKind::InvalidValue, 2, "release.name");
    let e = expect_err(
        &full_with("restart = \"transient\"", "restart = \"sometimes\""),
        ErrorKind::InvalidValue,
        22,
        "process[1].restart",
    );
    assert!(e.message.contains("permanent"), "{e}");
}

#[test]
fn invalid_semver_version() {
    let e = expect_err(
        &full_with("version = \"1.1.0\"", "version = \"1.1\""),
        ErrorKind::InvalidVersion,
        3,
        "release.version",
    );
    assert!(e.message.contains("\"1.1\""), "{e}");
}

#[test]
fn invalid_semver_requirement() {
    expect_err(
        &full_with(">=1.0.0, <1.1.0", ">=1.0.0 <<1.1"),
        ErrorKind::InvalidRequirement,
        4,
        "release.upgrade_from",
    );
}

#[test]
fn empty_names() {
    expect_err(&full_with("name = \"kv\"", "name = \"\""), ErrorKind::EmptyName, 2, "release.name");
    expect_err(&full_with("name = \"kv-api\"", "name = \"\""), ErrorKind::EmptyName, 11, "module[1].name");
    expect_err(&full_with("name = \"store\"", "name = \"\""), ErrorKind::EmptyName, 15, "process[0].name");
}

#[test]
fn names_with_other_characters() {
    expect_err(&full_with("name = \"kv\"", "name = \"../kv\""), ErrorKind::InvalidName, 2, "release.name");
    expect_err(&full_with("name = \"kv\"", "name = \"k v\""), ErrorKind::InvalidName, 2, "release.name");
    let e = expect_err(
        &full_with("name = \"kv_store\"", "name = \"kv/store\"")
            .replace("module = \"kv_store\"", "module = \"kv/store\""),
        ErrorKind::InvalidName,
        7,
        "module[0].name",
    );
    assert!(e.message.contains("'/'"), "{e}");
    expect_err(
        &full_with("name = \"janitor\"", "name = \"jan.itor\""),
        ErrorKind::InvalidName,
        25,
        "process[2].name",
    );
    expect_err(
        &full_with("name = \"janitor\"", "name = \"jänitor\""),
        ErrorKind::InvalidName,
        25,
        "process[2].name",
    );
}

#[test]
fn duplicate_module_names() {
    let e = expect_err(
        &full_with("name = \"kv-api\"", "name = \"kv_store\"")
            .replace("module = \"kv-api\"", "module = \"kv_store\""),
        ErrorKind::DuplicateModule,
        11,
        "module[1].name",
    );
    assert!(e.message.contains("kv_store"), "{e}");
}

#[test]
fn duplicate_process_names() {
    expect_err(
        &full_with("name = \"janitor\"", "name = \"store\""),
        ErrorKind::DuplicateProcess,
        25,
        "process[2].name",
    );
}

#[test]
fn process_naming_an_unknown_module() {
    let e = expect_err(
        &full_with("module = \"kv-api\"", "module = \"kv_apii\""),
        ErrorKind::UnknownModule,
        21,
        "process[1].module",
    );
    assert!(e.message.contains("kv_apii"), "{e}");
}

#[test]
fn instruction_without_op() {
    expect_err(&full_with("op = \"update\"\n", ""), ErrorKind::InstructionWithoutOp, 30, "instruction[0].op");
    expect_err(
        &full_with("op = \"update\"", "op = 3"),
        ErrorKind::InstructionWithoutOp,
        30,
        "instruction[0].op",
    );
}

#[test]
fn invalid_sha256() {
    expect_err(
        &full_with("crate = \"kv_store\"", "crate = \"kv_store\"\nsha256 = \"abc\""),
        ErrorKind::InvalidChecksum,
        9,
        "module[0].sha256",
    );
}

#[test]
fn the_first_problem_is_reported() {
    // Two problems: the earlier one in the file wins.
    let text =
        full_with("version = \"1.1.0\"", "version = \"x\"").replace("name = \"janitor\"", "name = \"store\"");
    expect_err(&text, ErrorKind::InvalidVersion, 3, "release.version");
}

// ------------------------------------------------------------- instances

/// FULL with `instances = {value}` added to process[0] ("store", line 15),
/// on line 17.
fn store_with_instances(value: &str) -> String {
    full_with("module = \"kv_store\"\nargs", &format!("module = \"kv_store\"\ninstances = {value}\nargs"))
}

#[test]
fn instances_parse_and_expand_to_numbered_children() {
    let m = parse(&store_with_instances("3")).unwrap();
    assert_eq!(m.processes.len(), 3, "still one [[process]] per table");
    assert_eq!(m.processes[0].instances, Some(3));
    assert_eq!(m.processes[1].instances, None, "absent");
    assert_eq!(m.processes[0].count(), 3);
    assert_eq!(m.processes[1].count(), 1);
    assert_eq!(m.processes[0].names().collect::<Vec<_>>(), ["store-0", "store-1", "store-2"]);
    assert_eq!(m.processes[1].names().collect::<Vec<_>>(), ["api"]);
    let children: Vec<(String, &str, Restart)> =
        m.children().map(|c| (c.name, c.process.module.as_str(), c.process.restart)).collect();
    assert_eq!(
        children,
        [
            ("store-0".to_string(), "kv_store", Restart::Permanent),
            ("store-1".to_string(), "kv_store", Restart::Permanent),
            ("store-2".to_string(), "kv_store", Restart::Permanent),
            ("api".to_string(), "kv-api", Restart::Transient),
            ("janitor".to_string(), "kv_store", Restart::Temporary),
        ]
    );
    assert_eq!(m.child_count(), 5);
    assert!(m.children().take(3).all(|c| c.process.args["shards"] == 4), "the same args for each");

    let one = parse(&store_with_instances("1")).unwrap();
    assert_eq!(one.processes[0].names().collect::<Vec<_>>(), ["store-0"], "instances = 1 still numbers");
    let most = parse(&store_with_instances(&MAX_INSTANCES.to_string())).unwrap();
    assert_eq!(most.child_count(), MAX_INSTANCES as usize + 2);
    assert_eq!(most.children().nth(99_999).unwrap().name, "store-99999");
}

#[test]
fn instances_round_trip_and_stay_compact() {
    let m = parse(&store_with_instances("10000")).unwrap();
    let text = m.to_toml_string().unwrap();
    assert_eq!(text.matches("[[process]]").count(), 3, "{text}");
    assert_eq!(text.matches("instances").count(), 1, "written only when given:\n{text}");
    assert!(text.len() < 1000, "{text}");
    assert_eq!(parse(&text).unwrap(), m, "{text}");
    m.validate(Path::new(FILE)).unwrap();
    assert!(!parse(FULL).unwrap().to_toml_string().unwrap().contains("instances"));
}

#[test]
fn instances_out_of_bounds() {
    for bad in ["0", "-1", "100001", "4294967297"] {
        let e =
            expect_err(&store_with_instances(bad), ErrorKind::InvalidInstances, 17, "process[0].instances");
        assert!(e.message.contains(&format!("instances = {bad}")), "{e}");
        assert!(e.message.contains("1..=100000"), "{e}");
        assert!(e.message.contains("\"store\""), "{e}");
    }
    let e = expect_err(&store_with_instances("\"3\""), ErrorKind::InvalidValue, 17, "process[0].instances");
    assert!(e.message.contains("string"), "{e}");
    expect_err(&store_with_instances("2.5"), ErrorKind::InvalidValue, 17, "process[0].instances");
}

#[test]
fn duplicate_names_after_expansion() {
    // "store" × 3 stands for store-0 … store-2; a later "store-1" clashes.
    let text = store_with_instances("3").replace("name = \"janitor\"", "name = \"store-1\"");
    let e = expect_err(&text, ErrorKind::DuplicateProcess, 26, "process[2].name");
    assert!(e.message.contains("\"store-1\""), "{e}");
    assert!(e.message.contains("process[0] (\"store\" with instances = 3: store-0 … store-2)"), "{e}");

    // And the other way round: the template comes after the plain name.
    let text = full_with("name = \"store\"", "name = \"c-2\"")
        .replace("restart = \"temporary\"", "restart = \"temporary\"\ninstances = 5")
        .replace("name = \"janitor\"", "name = \"c\"");
    let e = expect_err(&text, ErrorKind::DuplicateProcess, 25, "process[2].name");
    assert!(e.message.contains("process \"c\" with instances = 5 stands for a child named \"c-2\""), "{e}");
    assert!(e.message.contains("already declared by process[0]"), "{e}");

    // Two templates whose children overlap.
    let text = store_with_instances("3").replace(
        "name = \"janitor\"\nmodule = \"kv_store\"",
        "name = \"store\"\nmodule = \"kv_store\"\ninstances = 2",
    );
    let e = expect_err(&text, ErrorKind::DuplicateProcess, 26, "process[2].name");
    assert!(e.message.contains("\"store-0\""), "{e}");

    // The template's own name is not a child's: "c" × 2 and "c" do not clash.
    let text = store_with_instances("2").replace("name = \"janitor\"", "name = \"store\"");
    let m = parse(&text).unwrap();
    assert_eq!(m.children().map(|c| c.name).collect::<Vec<_>>(), ["store-0", "store-1", "api", "store"]);
}

// ------------------------------------------------------ supervision tree

const TREE: &str = r#"[release]
name = "chat"
version = "2.0.0"

[release.supervisor]
strategy = "rest_for_one"
intensity = 3
period_ms = 2000

[config]
motd = "hi"
limits = { rooms = 10 }

[[module]]
name = "room"
crate = "room"

[[process]]
name = "log"
module = "room"
shutdown = "brutal_kill"

[[supervisor]]
name = "rooms"
strategy = "simple_one_for_one"
intensity = 10
period_ms = 1000

[[process]]
name = "room"
module = "room"
supervisor = "rooms"
restart = "temporary"
shutdown = 250
args = { history = 5 }

[[supervisor]]
name = "pool"
strategy = "one_for_all"
restart = "transient"
shutdown = 8000

[[process]]
name = "worker"
module = "room"
supervisor = "pool"
instances = 2

[[supervisor]]
name = "inner"
parent = "pool"

[[process]]
name = "deep"
module = "room"
supervisor = "inner"

[[process]]
name = "last"
module = "room"
supervisor = "chat_sup"
"#;

fn tree_with(from: &str, to: &str) -> String {
    assert_eq!(TREE.matches(from).count(), 1, "{from:?}");
    TREE.replace(from, to)
}

/// The tree as `(depth, name, what)` lines, depth first.
fn outline(m: &Manifest) -> Vec<String> {
    fn walk(sup: &TreeSupervisor<'_>, depth: usize, out: &mut Vec<String>) {
        out.push(format!(
            "{depth} {} {} {}/{}",
            sup.name, sup.flags.strategy, sup.flags.intensity, sup.flags.period_ms
        ));
        for child in &sup.children {
            match child {
                TreeChild::Process(c) => out.push(format!(
                    "{} {} {} {} {}",
                    depth + 1,
                    c.name,
                    c.process.restart,
                    c.process.shutdown,
                    c.process.args
                )),
                TreeChild::Supervisor(s) => walk(s, depth + 1, out),
            }
        }
    }
    let mut out = Vec::new();
    walk(&m.tree(), 0, &mut out);
    out
}

#[test]
fn supervisors_nest_and_children_start_in_file_order() {
    let m = parse(TREE).unwrap();
    assert_eq!(m.supervisor_name(), "chat_sup");
    assert_eq!(m.release.supervisor, Flags { strategy: Strategy::RestForOne, intensity: 3, period_ms: 2000 });
    assert_eq!(m.config, serde_json::json!({"motd": "hi", "limits": {"rooms": 10}}));
    assert_eq!(
        outline(&m),
        [
            "0 chat_sup rest_for_one 3/2000",
            "1 log permanent brutal_kill null",
            "1 rooms simple_one_for_one 10/1000",
            "2 room temporary 250 ms {\"history\":5}",
            "1 pool one_for_all 5/10000",
            "2 worker-0 permanent 5000 ms null",
            "2 worker-1 permanent 5000 ms null",
            "2 inner one_for_one 5/10000",
            "3 deep permanent 5000 ms null",
            "1 last permanent 5000 ms null",
        ]
    );
    let pool = &m.supervisors[1];
    assert_eq!((pool.restart, pool.shutdown), (Restart::Transient, Shutdown::Millis(8000)));
    assert_eq!(m.supervisors[0].shutdown, Shutdown::Infinity, "a supervisor's default");
    assert_eq!(m.processes[4].supervisor, None, "naming the top supervisor is the default");
    // The template of rooms is not a child the release runs.
    let children: Vec<String> = m.children().map(|c| c.name).collect();
    assert_eq!(children, ["log", "worker-0", "worker-1", "deep", "last"]);
    assert_eq!(m.child_count(), 5);
}

#[test]
fn a_tree_round_trips_in_file_order() {
    let m = parse(TREE).unwrap();
    let text = m.to_toml_string().unwrap();
    let back = parse(&text).unwrap();
    assert_eq!(back, m, "{text}");
    assert_eq!(outline(&back), outline(&m), "{text}");
    assert!(text.contains("[release.supervisor]") && text.contains("[config]"), "{text}");
    m.validate(Path::new(FILE)).unwrap();
    // Flat manifests are written as before: no new key appears.
    let flat = parse(FULL).unwrap().to_toml_string().unwrap();
    for key in ["supervisor", "shutdown", "config", "strategy"] {
        assert!(!flat.contains(key), "{key} in\n{flat}");
    }
    let flat = parse(FULL).unwrap();
    assert_eq!(flat.release.supervisor, Flags::default());
    assert_eq!(outline(&flat)[0], "0 kv_sup one_for_one 5/10000", "today's top supervisor");
}

#[test]
fn unknown_supervisors() {
    let e = expect_err(
        &tree_with("supervisor = \"pool\"", "supervisor = \"poool\""),
        ErrorKind::UnknownSupervisor,
        46,
        "process[2].supervisor",
    );
    assert!(e.message.contains("\"poool\"") && e.message.contains("\"worker\""), "{e}");
    expect_err(
        &tree_with("parent = \"pool\"", "parent = \"nope\""),
        ErrorKind::UnknownSupervisor,
        51,
        "supervisor[2].parent",
    );
}

#[test]
fn duplicate_supervisor_names() {
    let e = expect_err(
        &tree_with("name = \"inner\"", "name = \"rooms\"")
            .replace("supervisor = \"inner\"", "supervisor = \"rooms\""),
        ErrorKind::DuplicateSupervisor,
        50,
        "supervisor[2].name",
    );
    assert!(e.message.contains("supervisor[0]"), "{e}");
    let e = expect_err(
        &tree_with("name = \"pool\"", "name = \"log\"").replace("\"pool\"", "\"log\""),
        ErrorKind::DuplicateSupervisor,
        38,
        "supervisor[1].name",
    );
    assert!(e.message.contains("process[0]"), "{e}");
    expect_err(
        &tree_with("name = \"inner\"", "name = \"worker-1\"").replace("\"inner\"", "\"worker-1\""),
        ErrorKind::DuplicateSupervisor,
        50,
        "supervisor[2].name",
    );
    let e = expect_err(
        &tree_with("name = \"inner\"", "name = \"chat_sup\"").replace("parent = \"pool\"\n", ""),
        ErrorKind::DuplicateSupervisor,
        50,
        "supervisor[2].name",
    );
    assert!(e.message.contains("top supervisor"), "{e}");
    expect_err(
        &tree_with("name = \"last\"", "name = \"chat_sup\""),
        ErrorKind::DuplicateProcess,
        59,
        "process[4].name",
    );
}

#[test]
fn supervisors_in_a_cycle() {
    let text = tree_with("strategy = \"one_for_all\"", "strategy = \"one_for_all\"\nparent = \"inner\"");
    let e = expect_err(&text, ErrorKind::SupervisorCycle, 40, "supervisor[1].parent");
    assert!(e.message.contains("\"pool\" → \"inner\" → \"pool\""), "{e}");
    let itself = tree_with("parent = \"pool\"", "parent = \"inner\"");
    expect_err(&itself, ErrorKind::SupervisorCycle, 51, "supervisor[2].parent");
}

#[test]
fn simple_one_for_one_needs_exactly_one_process_template() {
    // None.
    let e = expect_err(
        &tree_with("supervisor = \"rooms\"", "supervisor = \"pool\""),
        ErrorKind::SimpleOneForOne,
        25,
        "supervisor[0].strategy",
    );
    assert!(e.message.contains("\"rooms\" has no [[process]]"), "{e}");
    // Two.
    let e = expect_err(
        &tree_with("supervisor = \"chat_sup\"", "supervisor = \"rooms\""),
        ErrorKind::SimpleOneForOne,
        61,
        "process[4].supervisor",
    );
    assert!(e.message.contains("\"last\" is a second child") && e.message.contains("\"room\""), "{e}");
    // A supervisor.
    expect_err(
        &tree_with("parent = \"pool\"", "parent = \"rooms\""),
        ErrorKind::SimpleOneForOne,
        51,
        "supervisor[2].parent",
    );
    // A template with instances.
    expect_err(
        &tree_with("args = { history = 5 }", "instances = 3"),
        ErrorKind::SimpleOneForOne,
        35,
        "process[1].instances",
    );
    // The top supervisor too: its children are the processes without one.
    let e = expect_err(
        &tree_with("strategy = \"rest_for_one\"", "strategy = \"simple_one_for_one\""),
        ErrorKind::SimpleOneForOne,
        24,
        "supervisor[0].parent",
    );
    assert!(e.message.contains("\"chat_sup\""), "{e}");
    let only = "[release]\nname = \"a\"\nversion = \"1.0.0\"\n[release.supervisor]\nstrategy = \"simple_one_for_one\"\n";
    expect_err(only, ErrorKind::SimpleOneForOne, 5, "release.supervisor.strategy");
}

#[test]
fn invalid_shutdowns_periods_strategies_and_config() {
    let e = expect_err(
        &tree_with("shutdown = \"brutal_kill\"", "shutdown = \"infinity\""),
        ErrorKind::InvalidShutdown,
        21,
        "process[0].shutdown",
    );
    assert!(e.message.contains("only a supervisor"), "{e}");
    expect_err(
        &tree_with("shutdown = 250", "shutdown = -1"),
        ErrorKind::InvalidShutdown,
        34,
        "process[1].shutdown",
    );
    expect_err(
        &tree_with("shutdown = 250", "shutdown = 2.5"),
        ErrorKind::InvalidShutdown,
        34,
        "process[1].shutdown",
    );
    expect_err(
        &tree_with("shutdown = 8000", "shutdown = \"soon\""),
        ErrorKind::InvalidShutdown,
        41,
        "supervisor[1].shutdown",
    );
    let sup_infinity = parse(&tree_with("shutdown = 8000", "shutdown = \"infinity\"")).unwrap();
    assert_eq!(sup_infinity.supervisors[1].shutdown, Shutdown::Infinity);
    expect_err(
        &tree_with("period_ms = 1000", "period_ms = 0"),
        ErrorKind::InvalidPeriod,
        27,
        "supervisor[0].period_ms",
    );
    expect_err(
        &tree_with("period_ms = 2000", "period_ms = 0"),
        ErrorKind::InvalidPeriod,
        8,
        "release.supervisor.period_ms",
    );
    let e = expect_err(
        &tree_with("strategy = \"one_for_all\"", "strategy = \"all_for_one\""),
        ErrorKind::InvalidValue,
        39,
        "supervisor[1].strategy",
    );
    assert!(e.message.contains("simple_one_for_one"), "{e}");
    expect_err(
        &tree_with("intensity = 10", "intensity = -1"),
        ErrorKind::InvalidValue,
        26,
        "supervisor[0].intensity",
    );
    expect_err(
        &tree_with("restart = \"transient\"", "restarts = \"transient\""),
        ErrorKind::UnknownField,
        40,
        "supervisor[1].restarts",
    );
    let not_a_table = TREE
        .replace("[config]\nmotd = \"hi\"\nlimits = { rooms = 10 }\n", "")
        .replace("[release]\n", "config = 5\n[release]\n");
    let e = expect_err(&not_a_table, ErrorKind::InvalidConfig, 1, "config");
    assert!(e.message.contains('5'), "{e}");
}
