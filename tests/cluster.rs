//! `relive cluster deploy`: a rolling deploy over Erlang distribution, node
//! after node, against real nodes (each a `relive node start --sname`, under
//! an epmd of the test's own). The gateway example's 2.0.0 checks, in its
//! `health` callback, that the host's upstream (`GATEWAY_UPSTREAM`) accepts
//! connections: a node started with a dead upstream fails its health window.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{Epmd, NodeGuard, free_port, release_rows, repo, store_tree};
use serde_json::Value;

fn gateway_archives() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join("target").join("release-archives");
        let app = |version: &str| repo().join("examples").join("releases").join(format!("gateway-{version}"));
        (common::build(&app("1.0.0"), &out), common::build(&app("2.0.0"), &out))
    })
}

/// An epmd, a cookie and a HOME of the test's own.
struct World {
    epmd: Epmd,
}

impl World {
    fn new() -> Option<World> {
        Some(World { epmd: Epmd::start()? })
    }

    fn cookie(&self) -> String {
        self.epmd.cookie_file().to_str().unwrap().to_owned()
    }

    /// A node booting gateway 1.0.0 with the upstream `upstream`.
    fn node(&self, name: &str, upstream: &str) -> (NodeGuard, String) {
        let root = self.epmd.dir.path().join(name);
        let port = self.epmd.port.to_string();
        let home = self.epmd.dir.path().to_str().unwrap();
        let guard = NodeGuard::start_with_env(
            &root,
            &[
                "--boot",
                gateway_archives().0.to_str().unwrap(),
                "--sname",
                name,
                "--cookie-file",
                &self.cookie(),
            ],
            &[("ERL_EPMD_PORT", &port), ("HOME", home), ("GATEWAY_UPSTREAM", upstream)],
        );
        (guard, format!("{name}@{}", relive_dist::short_host_name()))
    }

    fn cluster(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_relive"))
            .arg("cluster")
            .args(args)
            .args(["--cookie-file", &self.cookie()])
            .env("ERL_EPMD_PORT", self.epmd.port.to_string())
            .env("HOME", self.epmd.dir.path())
            .output()
            .expect("running relive cluster")
    }
}

fn version(node: &NodeGuard) -> String {
    node.status()["release"]["version"].as_str().unwrap().to_owned()
}

fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_rolling_deploy_reaches_every_node() {
    let Some(world) = World::new() else { return };
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let good = upstream.local_addr().unwrap().to_string();
    let nodes: Vec<(NodeGuard, String)> = ["cla", "clb", "clc"]
        .iter()
        .map(|name| world.node(&format!("{name}{}", std::process::id()), &good))
        .collect();
    let names = nodes.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>().join(",");

    let status = world.cluster(&["status", "--nodes", &names, "--json"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let rows = report(&status);
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert!(rows.as_array().unwrap().iter().all(|row| row["version"] == "1.0.0"), "{rows}");

    let archive = gateway_archives().1.to_str().unwrap();
    let out =
        world.cluster(&["deploy", archive, "--nodes", &names, "--window", "1s", "--permanent", "--json"]);
    let report = report(&out);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report["completed"], true);
    for (row, (node, name)) in report["nodes"].as_array().unwrap().iter().zip(&nodes) {
        assert_eq!(row["node"], name.as_str());
        assert_eq!(row["outcome"], "upgraded", "{report}");
        assert_eq!(version(node), "2.0.0");
        assert!(row["detail"].as_str().unwrap().ends_with("; made permanent"), "{report}");
        let rows = release_rows(&["releases", "--json", "--root", node.root.to_str().unwrap()]);
        assert!(rows.iter().any(|(_, v, state)| v == "2.0.0" && state == "permanent"), "{rows:?}");
        // The upload was removed after the deploy.
        let incoming = node.root.join("incoming");
        assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0, "{} is not empty", incoming.display());
    }
    drop(upstream);
}

#[test]
fn a_node_that_fails_its_health_window_rolls_back_and_the_rest_stay_untouched() {
    let Some(world) = World::new() else { return };
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let good = upstream.local_addr().unwrap().to_string();
    // Nothing listens there: node 2's upstream is down.
    let dead = format!("127.0.0.1:{}", free_port());
    let pid = std::process::id();
    let nodes = [
        world.node(&format!("cfa{pid}"), &good),
        world.node(&format!("cfb{pid}"), &dead),
        world.node(&format!("cfc{pid}"), &good),
    ];
    let names = nodes.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>().join(",");
    let archive = gateway_archives().1.to_str().unwrap();
    let third_store = store_tree(&nodes[2].0.root);

    let out = world.cluster(&["deploy", archive, "--nodes", &names, "--window", "1s", "--json"]);
    assert!(!out.status.success(), "the deploy must fail at node 2");
    let report = report(&out);
    assert_eq!(report["completed"], false);
    let rows = report["nodes"].as_array().unwrap();
    assert_eq!(rows[0]["outcome"], "upgraded", "{report}");
    assert_eq!(rows[1]["outcome"], "rolled_back", "{report}");
    assert!(rows[1]["detail"].as_str().unwrap().contains("refuses connections"), "{report}");
    assert_eq!(rows[2]["outcome"], "untouched", "{report}");
    assert_eq!(version(&nodes[0].0), "2.0.0");
    assert_eq!(version(&nodes[1].0), "1.0.0");
    assert_eq!(version(&nodes[2].0), "1.0.0");
    assert!(
        store_tree(&nodes[2].0.root) == third_store,
        "node 3's store changed though it was never deployed to"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nodes after it were not touched"), "{stderr}");

    // The nodes now run different releases: another deploy is refused
    // before anything changes.
    let stores: Vec<_> = nodes.iter().map(|(node, _)| store_tree(&node.root)).collect();
    let again = world.cluster(&["deploy", archive, "--nodes", &names, "--window", "1s"]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("refused before any node changed") && stderr.contains("runs gateway 2.0.0"),
        "{stderr}"
    );
    for ((node, _), before) in nodes.iter().zip(stores) {
        assert!(store_tree(&node.root) == before, "a refused cluster deploy changed {}", node.root.display());
    }
    drop(upstream);
}
