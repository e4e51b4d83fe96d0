//! The observer (`relive node start --http`): its JSON API and refusals
//! over plain HTTP, and the page in a real browser (headless Chromium
//! driven through chromedriver) watching a live deploy of the swarm's
//! 10,000 counters and rolling it back after its confirmation.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{NodeGuard, build, counter_archives, free_port, ok, repo};
use serde_json::{Value, json};

/// One HTTP answer.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// A request over a fresh connection (HTTP/1.1, closed after), with every
/// header as given: the test controls Host, Origin and the token.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the observer");
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (key, value) in headers {
        request.push_str(&format!("{key}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    // The server may answer (413) before reading the whole body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_string(), body: body.to_string() }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn token(root: &Path) -> String {
    let file = root.join("run").join("http.token");
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).trim().to_string()
}

/// Every file of the store (not the node's run/ directory, log or socket)
/// with its bytes.
fn store_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            let name = relative.to_string_lossy();
            if name == "run" || name == "node.log" || name.ends_with(".sock") {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.insert(relative, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

fn release_of(port: u16, token: &str) -> String {
    let status = http(port, "GET", "/api/status", &[("Authorization", &bearer(token))], b"");
    assert_eq!(status.status, 200, "{}", status.body);
    let status = status.json();
    format!(
        "{} {}",
        status["release"]["name"].as_str().unwrap(),
        status["release"]["version"].as_str().unwrap()
    )
}

#[test]
fn the_api_answers_with_the_token_and_refuses_everything_else() {
    let (v1, v2) = counter_archives();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _node = NodeGuard::start(
        &root,
        &["--boot", v1.to_str().unwrap(), "--http", &addr, "--http-max-upload", "1M"],
    );
    let token = token(&root);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(root.join("run").join("http.token")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the token file must be private");

    // No token, a wrong one, a foreign Host: refused, each saying why.
    let missing = http(port, "GET", "/api/status", &[], b"");
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert!(missing.json()["error"].as_str().unwrap().contains("needs its token"), "{}", missing.body);
    let wrong = http(port, "GET", "/api/status", &[("Authorization", "Bearer 00ff")], b"");
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("wrong token"), "{}", wrong.body);
    let page = http(port, "GET", "/", &[], b"");
    assert_eq!(page.status, 401, "the page itself needs the token");
    let rebound = http(
        port,
        "GET",
        "/api/status",
        &[("Host", "evil.example"), ("Authorization", &bearer(&token))],
        b"",
    );
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert!(rebound.body.contains("evil.example"), "{}", rebound.body);

    // The token once in the query: a cookie, and the token off the address.
    let first = http(port, "GET", &format!("/?token={token}"), &[], b"");
    assert_eq!(first.status, 303, "{}", first.head);
    assert_eq!(first.header("location"), Some("/"));
    let cookie = first.header("set-cookie").expect("a cookie").split(';').next().unwrap().to_string();
    assert!(cookie.ends_with(&token) && first.header("set-cookie").unwrap().contains("HttpOnly"));
    let page = http(port, "GET", "/", &[("Cookie", &cookie)], b"");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("relive observer") && page.body.contains("EventSource"), "{}", page.body);

    let auth = bearer(&token);
    let auth = [("Authorization", auth.as_str())];
    assert_eq!(release_of(port, &token), "counter 1.0.0");
    let status = http(port, "GET", "/api/status", &auth, b"").json();
    let modules = status["modules"].as_array().unwrap();
    assert_eq!(modules[0]["name"], "counter");
    assert_eq!(modules[0]["current"]["version"], "1.0.0");
    assert!(status["supervisors"].as_array().unwrap().iter().any(|s| s["name"] == "counter_sup"), "{status}");
    let bad_order = http(port, "GET", "/api/processes?order=size", &auth, b"");
    assert_eq!(bad_order.status, 400);
    assert!(bad_order.body.contains("mailbox, handled or memory"), "{}", bad_order.body);

    // Bad archives leave the node and its store as they were.
    let store = store_files(&root);
    let mut tampered = std::fs::read(v2).unwrap();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x5a;
    let refused = http(port, "POST", "/api/deploy", &auth, &tampered);
    assert_eq!(refused.status, 422, "{}", refused.body);
    let error = refused.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("nothing was changed"), "{error}");
    let oversized = http(port, "POST", "/api/deploy", &auth, &vec![0u8; 2 << 20]);
    assert_eq!(oversized.status, 413, "{}", oversized.body);
    assert!(oversized.body.contains("too large") && oversized.body.contains("1048576"), "{}", oversized.body);
    let empty = http(port, "POST", "/api/deploy", &auth, b"");
    assert_eq!(empty.status, 400, "{}", empty.body);
    let v2_bytes = std::fs::read(v2).unwrap();
    let foreign = http(port, "POST", "/api/deploy", &[auth[0], ("Origin", "http://evil.example")], &v2_bytes);
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert_eq!(store_files(&root), store, "a refused deploy changed the store");
    assert_eq!(release_of(port, &token), "counter 1.0.0");
    assert_eq!(http(port, "GET", "/api/reports", &auth, b"").json(), json!([]));
    let uploads = root.join("run").join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).map_or(0, |d| d.count()), 0, "uploads are removed");

    // A good archive deploys; its report is kept; processes show it.
    let deployed = http(port, "POST", "/api/deploy", &auth, &v2_bytes);
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    assert_eq!(deployed.json()["deployed"]["release"]["version"], "2.0.0");
    assert_eq!(release_of(port, &token), "counter 2.0.0");
    let reports = http(port, "GET", "/api/reports", &auth, b"").json();
    assert_eq!(reports.as_array().unwrap().len(), 1, "{reports}");
    assert_eq!(reports[0]["report"]["outcome"], "committed");
    assert!(reports[0]["what"].as_str().unwrap().contains("counter 2.0.0"), "{reports}");
    let top = http(port, "GET", "/api/processes?top=5&filter=main_counter&order=handled", &auth, b"").json();
    assert_eq!(top["matched"], 1, "{top}");
    assert!(top["total"].as_u64().unwrap() > 1, "{top}");
    let counter = &top["top"][0];
    assert_eq!(counter["name"], "main_counter", "{top}");
    assert_eq!((counter["module"].as_str(), counter["version"].as_str()), (Some("counter"), Some("2.0.0")));

    // Rollback and make-permanent, as the page's buttons send them.
    let back = http(port, "POST", "/api/rollback", &auth, b"");
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(release_of(port, &token), "counter 1.0.0");
    assert_eq!(http(port, "GET", "/api/reports", &auth, b"").json().as_array().unwrap().len(), 2);
    let stored = http(port, "POST", "/api/deploy?version=2.0.0", &auth, b"");
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert_eq!(release_of(port, &token), "counter 2.0.0");
    let permanent = http(port, "POST", "/api/make-permanent", &auth, b"");
    assert_eq!(permanent.status, 200, "{}", permanent.body);
    let releases = ok(&["releases", "--json", "--root", root.to_str().unwrap()]);
    assert!(releases.contains("\"2.0.0\"") && releases.contains("permanent"), "{releases}");
}

// ------------------------------------------------------------- browser

/// chromedriver on a port of its own, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// The swarm's releases 1.0.0 and 2.0.0 (10,000 counters and a ticker).
fn swarm_archives(out: &Path) -> (PathBuf, PathBuf) {
    let app = |version: &str| repo().join("examples").join("releases").join(format!("swarm-{version}"));
    (build(&app("1.0.0"), out), build(&app("2.0.0"), out))
}

/// The text of the process count of `module` `version` (`role`: current
/// or old) on the page, `None` while the page shows no such row.
const COUNT: &str = r#"
    const [module, version, role] = arguments;
    const row = document.querySelector(`tr[data-module="${module}"][data-version="${version}"][data-role="${role}"]`);
    return row ? row.querySelector('.count').textContent : null;
"#;

async fn count(client: &fantoccini::Client, version: &str, role: &str) -> Option<String> {
    let value = client.execute(COUNT, vec![json!("counter"), json!(version), json!(role)]).await.unwrap();
    value.as_str().map(str::to_string)
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_page_follows_a_live_deploy_of_10000_processes_and_rolls_it_back() {
    let (Some(chromium), Some(chromedriver)) = (find("chromium"), find("chromedriver")) else {
        eprintln!(
            "SKIPPED: the browser test needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run installs them)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = swarm_archives(&repo().join("target").join("release-archives"));
    let root = dir.path().join("root");
    let port = free_port();
    let _node =
        NodeGuard::start(&root, &["--boot", v1.to_str().unwrap(), "--http", &format!("127.0.0.1:{port}")]);
    let token = token(&root);

    let driver_port = free_port();
    let driver = Driver {
        child: Command::new(&chromedriver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver"),
        port: driver_port,
    };
    let profile = dir.path().join("chromium-profile");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1400,1200", format!("--user-data-dir={}", profile.display())],
        }),
    );
    let webdriver = format!("http://127.0.0.1:{}", driver.port);
    let mut connected = None;
    for _ in 0..200 {
        let mut builder =
            fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        match builder.capabilities(capabilities.clone()).connect(&webdriver).await {
            Ok(client) => {
                connected = Some(client);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let client = connected.expect("chromedriver did not start a session");
    let base = format!("http://127.0.0.1:{port}");

    // Without the token: refused.
    client.goto(&format!("{base}/")).await.unwrap();
    let text = client.execute("return document.body.innerText", vec![]).await.unwrap();
    assert!(text.as_str().unwrap().contains("needs its token"), "{text}");

    // With it: the page, fed by its event stream.
    client.goto(&format!("{base}/?token={token}")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/");
    wait_for("the page shows 10,000 counters on 1.0.0", Duration::from_secs(60), || async {
        count(&client, "1.0.0", "current").await.as_deref() == Some("10,000")
    })
    .await;
    let release =
        client.execute("return document.getElementById('release').textContent", vec![]).await.unwrap();
    assert_eq!(release, "swarm 1.0.0");
    // Set on this very page: still there after the deploy means it was
    // never reloaded.
    client.execute("window.notReloaded = true", vec![]).await.unwrap();

    // A deploy from the command line, with a health window to watch.
    let deploy = {
        let (root, v2) = (root.clone(), v2.clone());
        std::thread::spawn(move || {
            common::relive(&[
                "deploy",
                v2.to_str().unwrap(),
                "--root",
                root.to_str().unwrap(),
                "--health-window",
                "6s",
            ])
        })
    };
    wait_for("the page shows 10,000 counters on 2.0.0", Duration::from_secs(120), || async {
        count(&client, "2.0.0", "current").await.as_deref() == Some("10,000")
    })
    .await;
    let old = count(&client, "1.0.0", "old").await;
    assert!(old.is_none() || old.as_deref() == Some("0"), "still on 1.0.0: {old:?}");
    let phase = client
        .execute("return document.getElementById('change-body').dataset.phase || null", vec![])
        .await
        .unwrap();
    if let Ok(path) = std::env::var("RELIVE_SCREENSHOT") {
        let png = client.screenshot().await.unwrap();
        let path = if Path::new(&path).is_absolute() { PathBuf::from(path) } else { repo().join(path) };
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot of the page during the upgrade (phase {phase}): {}", path.display());
    }
    let output = deploy.join().unwrap();
    assert!(output.status.success(), "the deploy failed: {}", String::from_utf8_lossy(&output.stderr));
    let still = client.execute("return window.notReloaded === true", vec![]).await.unwrap();
    assert_eq!(still, json!(true), "the page reloaded");
    wait_for("the page shows the deploy's report", Duration::from_secs(30), || async {
        let seq = client.execute("return window.observer.reports.length", vec![]).await.unwrap();
        seq == json!(1)
    })
    .await;

    // Rollback from the page: nothing happens until it is confirmed.
    wait_for("the page offers the rollback to 1.0.0", Duration::from_secs(30), || async {
        let ready = client
            .execute(
                "const s = window.observer.status; \
                 return !!s && s.rollback_to === 'swarm 1.0.0' && !document.getElementById('rollback').disabled",
                vec![],
            )
            .await
            .unwrap();
        ready == json!(true)
    })
    .await;
    client.find(fantoccini::Locator::Id("rollback")).await.unwrap().click().await.unwrap();
    let open = client.execute("return document.getElementById('confirm').open", vec![]).await.unwrap();
    assert_eq!(open, json!(true), "the rollback asks for a confirmation");
    let asked =
        client.execute("return document.getElementById('confirm-text').textContent", vec![]).await.unwrap();
    assert!(asked.as_str().unwrap().contains("swarm 1.0.0"), "{asked}");
    assert_eq!(release_of(port, &token), "swarm 2.0.0", "rolled back before the confirmation");
    client.find(fantoccini::Locator::Id("confirm-yes")).await.unwrap().click().await.unwrap();
    wait_for("the page shows 10,000 counters back on 1.0.0", Duration::from_secs(120), || async {
        count(&client, "1.0.0", "current").await.as_deref() == Some("10,000")
            && count(&client, "2.0.0", "old").await.is_none_or(|n| n == "0")
    })
    .await;
    wait_for("the page says the rollback is done", Duration::from_secs(60), || async {
        let result =
            client.execute("return document.getElementById('result').textContent", vec![]).await.unwrap();
        result.as_str().is_some_and(|r| r.contains("done"))
    })
    .await;
    assert_eq!(release_of(port, &token), "swarm 1.0.0");
    let status: Value =
        serde_json::from_str(&ok(&["status", "--json", "--root", root.to_str().unwrap()])).unwrap();
    assert_eq!(status["release"]["version"], "1.0.0");
    client.close().await.unwrap();
}
