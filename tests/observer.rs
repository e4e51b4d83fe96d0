//! The observer (`relive node start --http`): its JSON API and refusals
//! over plain HTTP, and the page in a real browser (headless Chromium
//! driven through chromedriver) watching a live deploy of the swarm's
//! 10,000 counters and rolling it back after its confirmation.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{NodeGuard, build, counter_archives, free_port, ok, repo, store_tree};
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
    let store = store_tree(&root);
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
    assert_eq!(store_tree(&root), store, "a refused deploy changed the store");
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

/// chromedriver, and the Chromium it starts, in a process group of their
/// own: the whole group is killed on drop, so a failing test leaves no
/// browser behind.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        let port = free_port();
        let mut command = Command::new(chromedriver);
        command.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        Driver { child: command.spawn().expect("starting chromedriver"), port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(group) = i32::try_from(self.child.id()).ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
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

/// The process count the page shows for the counter module at `version`
/// in `role` (current or old), `None` while it shows no such row.
const COUNT: &str = r#"
    const [module, version, role] = arguments;
    const row = document.querySelector(`tr[data-module="${module}"][data-version="${version}"][data-role="${role}"]`);
    return row ? row.querySelector('.count').textContent : null;
"#;

async fn count(client: &fantoccini::Client, version: &str, role: &str) -> Option<u64> {
    let value = client.execute(COUNT, vec![json!("counter"), json!(version), json!(role)]).await.unwrap();
    let text = value.as_str()?.replace(',', "");
    Some(text.parse().unwrap_or_else(|_| panic!("the page shows {text:?} as a count")))
}

/// The counter module's processes on the page: (1.0.0, 2.0.0), each as
/// current or old, whichever the page shows (0 when it shows no row).
async fn counts(client: &fantoccini::Client) -> (u64, u64) {
    let mut on = [0, 0];
    for (slot, version) in on.iter_mut().zip(["1.0.0", "2.0.0"]) {
        for role in ["current", "old"] {
            *slot += count(client, version, role).await.unwrap_or(0);
        }
    }
    (on[0], on[1])
}

async fn js(client: &fantoccini::Client, script: &str) -> Value {
    client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until `script` returns true on the page.
async fn page_until(client: &fantoccini::Client, what: &str, limit: Duration, script: &str) {
    wait_for(what, limit, || async { js(client, script).await == json!(true) }).await
}

async fn click(client: &fantoccini::Client, id: &str) {
    client.find(fantoccini::Locator::Id(id)).await.unwrap().click().await.unwrap();
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The confirmation is open and asks about `about`; the release is still
/// `release` (nothing happens before the confirmation).
async fn asked(client: &fantoccini::Client, about: &str, port: u16, token: &str, release: &str) {
    assert_eq!(js(client, "return document.getElementById('confirm').open").await, json!(true));
    let text = js(client, "return document.getElementById('confirm-text').textContent").await;
    assert!(text.as_str().unwrap().contains(about), "the confirmation asks {text}, not about {about}");
    assert_eq!(release_of(port, token), release, "it acted before the confirmation");
}

async fn result_done(client: &fantoccini::Client, what: &str) {
    wait_for(&format!("the page says {what:?} is done"), Duration::from_secs(120), || async {
        let result = js(client, "return document.getElementById('result').textContent").await;
        result.as_str().is_some_and(|r| r.starts_with(what) && r.contains(": done"))
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_page_follows_a_live_deploy_of_10000_processes_and_acts_after_confirmation() {
    let Some(chromium) = find("chromium").or_else(|| find("chromium-browser")) else {
        eprintln!(
            "SKIPPED: the observer's browser test needs Chromium, and none is on PATH \
             (Debian: apt-get install chromium chromium-driver; .ci/run installs them)"
        );
        return;
    };
    let chromedriver = find("chromedriver").unwrap_or_else(|| {
        panic!(
            "{} is installed but chromedriver is not: install it (Debian: apt-get install chromium-driver)",
            chromium.display()
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = swarm_archives(&repo().join("target").join("release-archives"));
    let root = dir.path().join("root");
    let port = free_port();
    let _node =
        NodeGuard::start(&root, &["--boot", v1.to_str().unwrap(), "--http", &format!("127.0.0.1:{port}")]);
    let token = token(&root);

    let driver = Driver::start(&chromedriver);
    let profile = dir.path().join("chromium-profile");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--hide-scrollbars", "--disable-crash-reporter", "--disable-breakpad",
                     "--window-size=1440,2000", format!("--user-data-dir={}", profile.display())],
        }),
    );
    let webdriver = format!("http://127.0.0.1:{}", driver.port);
    let mut connected = None;
    for _ in 0..400 {
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
    let client = connected.expect("chromedriver did not start a Chromium session");
    let base = format!("http://127.0.0.1:{port}");

    // Without the token, or with a wrong one: refused, saying why.
    client.goto(&format!("{base}/")).await.unwrap();
    let text = js(&client, "return document.body.innerText").await;
    assert!(text.as_str().unwrap().contains("needs its token"), "{text}");
    client.goto(&format!("{base}/?token=0123abcd")).await.unwrap();
    let text = js(&client, "return document.body.innerText").await;
    assert!(text.as_str().unwrap().contains("wrong token"), "{text}");
    assert_eq!(
        js(&client, "return typeof window.observer").await,
        json!("undefined"),
        "no page without the token"
    );

    // With it: the page, fed by its event stream.
    client.goto(&format!("{base}/?token={token}")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/", "the token stays in the address");
    wait_for("the page shows 10,000 counters on 1.0.0", Duration::from_secs(60), || async {
        count(&client, "1.0.0", "current").await == Some(10_000)
    })
    .await;
    assert_eq!(js(&client, "return document.getElementById('release').textContent").await, "swarm 1.0.0");
    page_until(
        &client,
        "the page shows the supervision tree",
        Duration::from_secs(30),
        "return !!document.querySelector('#tree li[data-group=\"counter\"]')",
    )
    .await;
    // Set on this very page: still there at the end means it was never
    // reloaded.
    js(&client, "window.notReloaded = true; return null").await;

    // The busiest processes, filtered.
    client.find(fantoccini::Locator::Id("filter")).await.unwrap().send_keys("counter-4242").await.unwrap();
    page_until(
        &client,
        "the filter keeps one counter",
        Duration::from_secs(30),
        "const t = window.observer.top; const rows = document.querySelectorAll('#top tbody tr'); \
             return !!t && t.filter === 'counter-4242' && t.matched === 1 && t.total > 10000 \
                 && rows.length === 1 && rows[0].children[1].textContent === 'counter-4242'",
    )
    .await;
    client.find(fantoccini::Locator::Id("filter")).await.unwrap().clear().await.unwrap();
    js(&client, "document.getElementById('filter').dispatchEvent(new Event('input')); return null").await;

    // A deploy by upload from the page: cancelled first, then confirmed.
    client
        .find(fantoccini::Locator::Id("archive"))
        .await
        .unwrap()
        .send_keys(v2.to_str().unwrap())
        .await
        .unwrap();
    let file_name = v2.file_name().unwrap().to_str().unwrap();
    click(&client, "deploy").await;
    asked(&client, file_name, port, &token, "swarm 1.0.0").await;
    click(&client, "confirm-no").await;
    assert_eq!(js(&client, "return document.getElementById('confirm').open").await, json!(false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(release_of(port, &token), "swarm 1.0.0", "a cancelled deploy deployed");
    click(&client, "deploy").await;
    asked(&client, file_name, port, &token, "swarm 1.0.0").await;
    click(&client, "confirm-yes").await;
    wait_for("the page shows 10,000 counters on 2.0.0", Duration::from_secs(120), || async {
        counts(&client).await == (0, 10_000)
    })
    .await;
    result_done(&client, "deploy of").await;
    assert_eq!(release_of(port, &token), "swarm 2.0.0");

    // Rollback from the page after its confirmation.
    page_until(
        &client,
        "the page offers the rollback to 1.0.0",
        Duration::from_secs(30),
        "const s = window.observer.status; \
             return !!s && s.rollback_to === 'swarm 1.0.0' && !document.getElementById('rollback').disabled",
    )
    .await;
    click(&client, "rollback").await;
    asked(&client, "swarm 1.0.0", port, &token, "swarm 2.0.0").await;
    click(&client, "confirm-yes").await;
    wait_for("the page shows 10,000 counters back on 1.0.0", Duration::from_secs(120), || async {
        counts(&client).await == (10_000, 0)
    })
    .await;
    result_done(&client, "rollback to swarm 1.0.0").await;
    assert_eq!(release_of(port, &token), "swarm 1.0.0");

    // A deploy from the command line with a canary: the page shows the
    // counts moving, 1,000 first, then the rest, and the health window
    // counting down, without a reload.
    let deploy = {
        let (root, v2) = (root.clone(), v2.clone());
        std::thread::spawn(move || {
            common::relive(&[
                "deploy",
                v2.to_str().unwrap(),
                "--root",
                root.to_str().unwrap(),
                "--canary",
                "10%",
                "--canary-window",
                "3s",
                "--health-window",
                "3s",
            ])
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let split = loop {
        let split = counts(&client).await;
        if split.0 > 0 && split.1 > 0 && split.0 + split.1 == 10_000 {
            break split;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until the page shows the canaries on 2.0.0 and the others on 1.0.0 (last {split:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(split.1 <= 1_000, "more than the canaries moved first: {split:?}");
    let moved = js(&client, "const m = document.getElementById('moved'); return m && m.textContent").await;
    assert!(moved.as_str().is_some_and(|m| m != "0"), "the page shows no process moved: {moved}");
    if let Ok(path) = std::env::var("RELIVE_SCREENSHOT") {
        let png = client.screenshot().await.unwrap();
        let path = if Path::new(&path).is_absolute() { PathBuf::from(path) } else { repo().join(path) };
        std::fs::write(&path, png).unwrap();
        eprintln!(
            "screenshot of the page during the upgrade ({split:?} on 1.0.0, 2.0.0): {}",
            path.display()
        );
    }
    page_until(
        &client,
        "the page counts the health window down",
        Duration::from_secs(120),
        "return !!document.getElementById('health-left')",
    )
    .await;
    assert_eq!(counts(&client).await, (0, 10_000), "the health window began before every counter moved");
    let output = deploy.join().unwrap();
    assert!(output.status.success(), "the deploy failed: {}", String::from_utf8_lossy(&output.stderr));
    page_until(
        &client,
        "the page shows the three reports, the last with its canary",
        Duration::from_secs(30),
        "const r = window.observer.reports; \
             return r.length === 3 && !!r[2].report.canary \
                 && !!document.querySelector('#reports .report[data-seq=\"3\"] svg.hist rect')",
    )
    .await;
    assert_eq!(js(&client, "return window.notReloaded === true").await, json!(true), "the page reloaded");

    // Make-permanent, then a release picked from the store, each after
    // its confirmation.
    // The store's permanent release.
    let permanent = || {
        let rows = common::release_rows(&["releases", "--json", "--root", root.to_str().unwrap()]);
        rows.into_iter().find(|(_, _, state)| state == "permanent").map(|(_, version, _)| version)
    };
    // The page knows the deploy ended (its actions enabled) and shows what
    // runs now: the confirmation names what it shows.
    page_until(
        &client,
        "the page shows 2.0.0 running, its actions enabled",
        Duration::from_secs(30),
        "const s = window.observer.status; \
             return !!s && !!s.release && s.release.version === '2.0.0' && !s.busy \
                 && !document.getElementById('make-permanent').disabled",
    )
    .await;
    // Asked to make permanent a version that no longer runs (the page's
    // view before a deploy from elsewhere), the node refuses it.
    let store = store_tree(&root);
    let auth = bearer(&token);
    let stale = http(port, "POST", "/api/make-permanent?version=1.0.0", &[("Authorization", &auth)], b"");
    assert_eq!(stale.status, 422, "{}", stale.body);
    assert!(
        stale.body.contains("swarm 2.0.0 runs now, not 1.0.0") && stale.body.contains("nothing was changed"),
        "{}",
        stale.body
    );
    assert!(store_tree(&root) == store, "a refused make-permanent changed the store");
    let before = permanent();
    click(&client, "make-permanent").await;
    asked(&client, "swarm 2.0.0", port, &token, "swarm 2.0.0").await;
    assert_eq!(permanent(), before, "made permanent before the confirmation");
    click(&client, "confirm-yes").await;
    wait_for("2.0.0 is permanent", Duration::from_secs(60), || async {
        permanent().as_deref() == Some("2.0.0")
    })
    .await;
    page_until(
        &client,
        "the page offers 1.0.0 from the store",
        Duration::from_secs(30),
        "const s = document.getElementById('stored'); \
         return !s.disabled && !document.getElementById('goto').disabled \
             && [...s.options].some((o) => o.value === '1.0.0')",
    )
    .await;
    js(&client, "document.getElementById('stored').value = '1.0.0'; return null").await;
    click(&client, "goto").await;
    asked(&client, "1.0.0", port, &token, "swarm 2.0.0").await;
    click(&client, "confirm-yes").await;
    wait_for("the page shows 10,000 counters on 1.0.0 again", Duration::from_secs(120), || async {
        counts(&client).await == (10_000, 0)
    })
    .await;
    result_done(&client, "going to 1.0.0").await;
    assert_eq!(release_of(port, &token), "swarm 1.0.0");
    assert_eq!(permanent().as_deref(), Some("2.0.0"));
    assert_eq!(js(&client, "return window.notReloaded === true").await, json!(true), "the page reloaded");
    client.close().await.unwrap();
}
