//! `lines` steps of a scenario: named TCP clients of a line-based protocol
//! (a chat, SMTP, anything that speaks `\n`-ended lines) that stay
//! connected across steps, so a scenario can hold connections open through
//! a deploy or a rollback and check what each one receives before and
//! after.
//!
//! ```toml
//! [[step]]
//! lines = { clients = ["alice", "bob"], connect = true, expect = ["OK welcome*"] }
//! [[step]]
//! lines = { client = "alice", send = ["NICK alice", "JOIN lobby"], expect = ["OK you are alice", "OK joined lobby*"] }
//! [[step]]
//! lines = { client = "bob", send = ["QUIT"], expect = ["OK bye"], expect_closed = true }
//! ```
//!
//! A step names one client (`client`) or several (`clients`) and does, for
//! each of them in turn and in this order:
//! - `connect = true`: opens a connection to the application's `listen`
//!   address (the free port the runner gave it), or `connect = "HOST:PORT"`
//!   to that address; the client is known by its name until it is closed;
//! - `send = [...]`: writes those lines (each followed by `\n`);
//! - `expect = [...]`: the next lines the client receives must match these
//!   patterns, in order (`*` in a pattern matches any text, every other
//!   character itself); lines received earlier and not yet checked count,
//!   so a line is never missed between two steps. Each client waits at
//!   most `within` (default 10 s) for its lines;
//! - `expect_closed = true`: the server must close the connection (within
//!   `within`) with no line before the close that `expect` did not take;
//!   the client is then forgotten;
//! - `close = true`: the client closes its connection and is forgotten.
//!
//! A connection that fails, a line that does not match, a wait that runs
//! out, or a close by the server while lines are expected is a failed
//! check of the step (the scenario goes on); naming a client that is not
//! open is an error that ends the scenario. Every client still open is
//! closed at the end.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Deserialize;

/// How long a client waits for its lines (or the close) by default.
const DEFAULT_WITHIN: Duration = Duration::from_secs(10);
/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many received lines a failure quotes.
const QUOTED: usize = 5;

/// A `lines` step as written.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinesSpec {
    client: Option<String>,
    clients: Option<Vec<String>>,
    connect: Option<Connect>,
    send: Option<Vec<String>>,
    expect: Option<Vec<String>>,
    expect_closed: Option<bool>,
    close: Option<bool>,
    within: Option<String>,
}

/// `connect = true` (the application's address) or `connect = "HOST:PORT"`.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum Connect {
    App(bool),
    Addr(String),
}

/// A checked `lines` step.
#[derive(Clone, Debug)]
pub(crate) struct Lines {
    clients: Vec<String>,
    /// `Some(None)`: connect to the application's address.
    connect: Option<Option<String>>,
    send: Vec<String>,
    expect: Vec<String>,
    expect_closed: bool,
    close: bool,
    within: Duration,
}

/// Checks a `lines` step; the error names the field, without file or line.
pub(crate) fn parse(spec: &LinesSpec) -> Result<Lines, String> {
    let clients = match (&spec.client, &spec.clients) {
        (Some(one), None) => vec![one.clone()],
        (None, Some(many)) if !many.is_empty() => many.clone(),
        (None, Some(_)) => return Err("lines: clients = []: name at least one client".into()),
        (Some(_), Some(_)) => {
            return Err("lines: write `client = \"NAME\"` or `clients = [...]`, not both".into());
        }
        (None, None) => {
            return Err("lines: name the client: client = \"alice\" or clients = [\"alice\", \"bob\"]".into());
        }
    };
    for (i, name) in clients.iter().enumerate() {
        if name.trim().is_empty() {
            return Err("lines: a client's name is empty".into());
        }
        if clients[..i].contains(name) {
            return Err(format!("lines: client {name:?} is named twice"));
        }
    }
    let connect = match &spec.connect {
        None | Some(Connect::App(false)) => None,
        Some(Connect::App(true)) => Some(None),
        Some(Connect::Addr(addr)) => Some(Some(addr.clone())),
    };
    if let Some(line) = spec.send.iter().flatten().find(|line| line.contains('\n')) {
        return Err(format!("lines: send: {line:?} holds a newline: write one line per string"));
    }
    let expect_closed = spec.expect_closed.unwrap_or(false);
    let close = spec.close.unwrap_or(false);
    let expect = spec.expect.clone().unwrap_or_default();
    let send = spec.send.clone().unwrap_or_default();
    if connect.is_none() && send.is_empty() && expect.is_empty() && !expect_closed && !close {
        return Err(
            "lines: nothing to do: add connect = true, send = [...], expect = [...], expect_closed = true or close = true"
                .into(),
        );
    }
    if expect_closed && close {
        return Err("lines: expect_closed = true already forgets the client: drop close = true".into());
    }
    let within = match &spec.within {
        Some(text) => {
            if expect.is_empty() && !expect_closed {
                return Err("lines: `within` bounds the wait of `expect` or `expect_closed`: add one".into());
            }
            crate::control::parse_duration(text).map_err(|e| format!("lines: within: {e}"))?
        }
        None => DEFAULT_WITHIN,
    };
    Ok(Lines { clients, connect, send, expect, expect_closed, close, within })
}

impl Lines {
    /// The step in a few words, for the progress line.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.connect {
            Some(None) => parts.push("connect".to_string()),
            Some(Some(addr)) => parts.push(format!("connect {addr}")),
            None => {}
        }
        if !self.send.is_empty() {
            parts.push(format!("send {}", self.send.len()));
        }
        if !self.expect.is_empty() {
            parts.push(format!("expect {}", self.expect.len()));
        }
        if self.expect_closed {
            parts.push("expect closed".into());
        }
        if self.close {
            parts.push("close".into());
        }
        format!("lines {}: {}", self.clients.join(", "), parts.join(", "))
    }
}

/// One open client.
struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes received after the last complete line.
    partial: Vec<u8>,
    /// Lines received and not yet checked.
    lines: VecDeque<String>,
    /// Lines checked so far (for messages).
    checked: usize,
    /// The server closed the connection (or it broke: then why).
    ended: Option<String>,
}

/// What waiting for a line gave.
enum Next {
    Line(String),
    TimedOut,
    Ended(String),
}

impl Client {
    fn connect(addr: &str) -> Result<Client, String> {
        let addrs: Vec<SocketAddr> =
            addr.to_socket_addrs().map_err(|e| format!("{addr} is not an address: {e}"))?.collect();
        let mut last = format!("{addr} resolves to no address");
        for candidate in addrs {
            match TcpStream::connect_timeout(&candidate, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Client {
                        stream,
                        addr: candidate,
                        partial: Vec::new(),
                        lines: VecDeque::new(),
                        checked: 0,
                        ended: None,
                    });
                }
                Err(error) => last = format!("connecting to {candidate}: {error}"),
            }
        }
        Err(last)
    }

    /// The next line, waiting until `deadline` at most.
    fn next_line(&mut self, deadline: Instant) -> Next {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(line) = self.lines.pop_front() {
                self.checked += 1;
                return Next::Line(line);
            }
            if let Some(why) = &self.ended {
                return Next::Ended(why.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::TimedOut;
            }
            if let Err(error) = self.stream.set_read_timeout(Some(left)) {
                self.ended = Some(format!("the connection broke: {error}"));
                continue;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.ended = Some("the server closed the connection".into());
                    if !self.partial.is_empty() {
                        let rest = std::mem::take(&mut self.partial);
                        self.lines.push_back(String::from_utf8_lossy(&rest).into_owned());
                    }
                }
                Ok(n) => self.take(&buf[..n]),
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => self.ended = Some(format!("the connection broke: {error}")),
            }
        }
    }

    /// Splits received bytes into lines (without `\n` or `\r\n`).
    fn take(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.partial.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.lines.push_back(String::from_utf8_lossy(&line).into_owned());
        }
    }

    /// The lines still unchecked, quoted for a failure.
    fn unchecked(&self) -> String {
        let shown: Vec<String> = self.lines.iter().take(QUOTED).map(|l| format!("{l:?}")).collect();
        match self.lines.len() {
            0 => "nothing after it yet".into(),
            n if n > QUOTED => format!("then {} … ({n} lines)", shown.join(", ")),
            _ => format!("then {}", shown.join(", ")),
        }
    }
}

/// Whether `line` matches `pattern`, where `*` matches any text (also
/// none) and every other character itself.
pub(crate) fn matches(pattern: &str, line: &str) -> bool {
    let (p, l): (Vec<char>, Vec<char>) = (pattern.chars().collect(), line.chars().collect());
    let (mut pi, mut li) = (0, 0);
    // The last `*` seen and the line position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while li < l.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, li));
            pi += 1;
        } else if pi < p.len() && p[pi] == l[li] {
            pi += 1;
            li += 1;
        } else if let Some((sp, sl)) = star {
            // Let that `*` take one more character.
            pi = sp + 1;
            li = sl + 1;
            star = Some((sp, sl + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The clients a scenario holds open, by name.
#[derive(Default)]
pub(crate) struct Clients {
    open: BTreeMap<String, Client>,
}

impl Clients {
    /// Runs a `lines` step; `app_addr` is the application's `listen`
    /// address. Failed checks go to `failures`; returns the step's detail.
    ///
    /// # Errors
    /// The step names a client that is not open, or connects one that is.
    pub(crate) fn run(
        &mut self,
        step: &Lines,
        app_addr: &str,
        failures: &mut Vec<String>,
    ) -> anyhow::Result<String> {
        let mut detail = Vec::new();
        // Clients whose connect failed (a failure already): the rest of
        // the step skips them.
        let mut unreachable = Vec::new();
        if let Some(addr) = &step.connect {
            let addr = addr.as_deref().unwrap_or(app_addr);
            let mut connected = 0;
            for name in &step.clients {
                if self.open.contains_key(name) {
                    bail!("client {name} is already connected: close it first (close = true)");
                }
                match Client::connect(addr) {
                    Ok(client) => {
                        self.open.insert(name.clone(), client);
                        connected += 1;
                    }
                    Err(error) => {
                        failures.push(format!("{name}: {error}"));
                        unreachable.push(name.as_str());
                    }
                }
            }
            detail.push(format!("{connected} connected to {addr}"));
        }
        for name in &step.clients {
            if !self.open.contains_key(name) && !unreachable.contains(&name.as_str()) {
                let open: Vec<&str> = self.open.keys().map(String::as_str).collect();
                bail!(
                    "no client {name} is open (open: {}): connect it first with connect = true; clients stay \
                     open until close = true, expect_closed = true or the end",
                    if open.is_empty() { "none".to_string() } else { open.join(", ") }
                );
            }
        }
        if !step.send.is_empty() {
            let mut text = step.send.join("\n");
            text.push('\n');
            for name in &step.clients {
                let Some(client) = self.open.get_mut(name) else { continue };
                if let Err(error) = client.stream.write_all(text.as_bytes()) {
                    failures.push(format!("{name}: sending to {}: {error}", client.addr));
                }
            }
            detail.push(format!("sent {} line(s)", step.send.len()));
        }
        if !step.expect.is_empty() {
            let mut matched = 0;
            for name in &step.clients {
                let Some(client) = self.open.get_mut(name) else { continue };
                let deadline = Instant::now() + step.within;
                for pattern in &step.expect {
                    let at = client.checked + 1;
                    match client.next_line(deadline) {
                        Next::Line(line) if matches(pattern, &line) => matched += 1,
                        Next::Line(line) => {
                            failures.push(format!(
                                "{name}: line {at} is {line:?}, expected {pattern:?} ({})",
                                client.unchecked()
                            ));
                            break;
                        }
                        Next::TimedOut => {
                            failures.push(format!(
                                "{name}: no line {at} within {:?}, expected {pattern:?}",
                                step.within
                            ));
                            break;
                        }
                        Next::Ended(why) => {
                            failures.push(format!("{name}: {why} before line {at}, expected {pattern:?}"));
                            break;
                        }
                    }
                }
            }
            detail
                .push(format!("{matched} of {} line(s) as expected", step.expect.len() * step.clients.len()));
        }
        if step.expect_closed {
            let mut closed = 0;
            for name in &step.clients {
                let Some(mut client) = self.open.remove(name) else { continue };
                let deadline = Instant::now() + step.within;
                loop {
                    match client.next_line(deadline) {
                        Next::Line(line) => {
                            failures.push(format!(
                                "{name}: got {line:?} (line {}) where the server should have closed the connection",
                                client.checked
                            ));
                        }
                        Next::TimedOut => {
                            failures.push(format!(
                                "{name}: the connection to {} is still open after {:?}; expected the server to close it",
                                client.addr, step.within
                            ));
                            break;
                        }
                        Next::Ended(_) => {
                            closed += 1;
                            break;
                        }
                    }
                }
            }
            detail.push(format!("{closed} closed by the server"));
        }
        if step.close {
            for name in &step.clients {
                let Some(client) = self.open.remove(name) else { continue };
                let _ = client.stream.shutdown(Shutdown::Both);
            }
            detail.push(format!("{} closed", step.clients.len()));
        }
        Ok(detail.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn spec(text: &str) -> Result<Lines, String> {
        let spec: LinesSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        parse(&spec)
    }

    #[test]
    fn patterns() {
        assert!(matches("OK joined lobby (2 members)", "OK joined lobby (2 members)"));
        assert!(matches("OK welcome to * 1.0.0*", "OK welcome to relive chat 1.0.0; NICK <name> to begin"));
        assert!(matches("*", "") && matches("a*b*c", "aXbYbZc") && matches("**x", "yx"));
        assert!(!matches("OK joined lobby", "OK joined lobby (2 members)"));
        assert!(!matches("a*b", "acbc") && !matches("x*", "yx"));
        assert!(matches("[lobby] <bob> hi", "[lobby] <bob> hi"), "brackets are plain characters");
    }

    #[test]
    fn steps_parse_and_refuse_what_cannot_run() {
        let step =
            spec("clients = [\"a\", \"b\"]\nconnect = true\nexpect = [\"OK*\"]\nwithin = \"2s\"").unwrap();
        assert_eq!(step.clients, ["a", "b"]);
        assert_eq!(step.connect, Some(None));
        assert_eq!(step.within, Duration::from_secs(2));
        assert_eq!(step.describe(), "lines a, b: connect, expect 1");
        let step = spec("client = \"a\"\nconnect = \"127.0.0.1:1\"\nsend = [\"QUIT\"]").unwrap();
        assert_eq!(step.connect, Some(Some("127.0.0.1:1".into())));
        assert!(spec("connect = true").unwrap_err().contains("name the client"));
        assert!(spec("client = \"a\"").unwrap_err().contains("nothing to do"));
        assert!(spec("client = \"a\"\nclients = [\"b\"]\nclose = true").unwrap_err().contains("not both"));
        assert!(spec("clients = [\"a\", \"a\"]\nclose = true").unwrap_err().contains("named twice"));
        assert!(spec("client = \"a\"\nsend = [\"x\\ny\"]").unwrap_err().contains("newline"));
        assert!(spec("client = \"a\"\nclose = true\nwithin = \"1s\"").unwrap_err().contains("within"));
        assert!(spec("client = \"a\"\nexpect = [\"x\"]\nwithin = \"soon\"").unwrap_err().contains("within:"));
        assert!(
            spec("client = \"a\"\nexpect_closed = true\nclose = true").unwrap_err().contains("drop close")
        );
        assert!(
            spec("client = \"a\"\nclose = true\nbogus = 1").unwrap_err().contains("unknown field `bogus`")
        );
    }

    /// A server that greets, echoes one line as `echo: LINE`, then closes.
    fn echo_server() -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let thread = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"hello\r\npart").unwrap();
            conn.write_all(b"ial line\n").unwrap();
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while conn.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                got.push(byte[0]);
            }
            conn.write_all(format!("echo: {}\n", String::from_utf8_lossy(&got)).as_bytes()).unwrap();
        });
        (addr, thread)
    }

    #[test]
    fn a_client_stays_open_across_steps_and_sees_the_close() {
        let (addr, server) = echo_server();
        let mut clients = Clients::default();
        let mut failures = Vec::new();
        let step = |text: &str| spec(text).unwrap();
        clients
            .run(&step("client = \"a\"\nconnect = true\nexpect = [\"hello\"]"), &addr, &mut failures)
            .unwrap();
        // The second line came in two reads; it is checked by a later step.
        let detail = clients
            .run(
                &step("client = \"a\"\nsend = [\"ping\"]\nexpect = [\"partial line\", \"echo: p*\"]"),
                &addr,
                &mut failures,
            )
            .unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        assert!(detail.contains("2 of 2 line(s) as expected"), "{detail}");
        clients.run(&step("client = \"a\"\nexpect_closed = true"), &addr, &mut failures).unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        server.join().unwrap();
        // Forgotten once closed.
        let error = clients.run(&step("client = \"a\"\nsend = [\"x\"]"), &addr, &mut failures).unwrap_err();
        assert!(error.to_string().contains("no client a is open"), "{error}");
    }

    #[test]
    fn a_wrong_line_a_close_and_a_refused_connect_are_failures() {
        let (addr, server) = echo_server();
        let mut clients = Clients::default();
        let mut failures = Vec::new();
        let step = |text: &str| spec(text).unwrap();
        clients
            .run(&step("client = \"a\"\nconnect = true\nexpect = [\"goodbye\"]"), &addr, &mut failures)
            .unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("a: line 1 is \"hello\", expected \"goodbye\" (then \"partial line\")"),
            "{failures:?}"
        );
        failures.clear();
        clients
            .run(
                &step("client = \"a\"\nsend = [\"x\"]\nexpect = [\"partial line\", \"echo: x\", \"more\"]"),
                &addr,
                &mut failures,
            )
            .unwrap();
        server.join().unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("the server closed the connection before line 4"), "{failures:?}");
        // Nothing listens there any more.
        failures.clear();
        // The rest of the step skips it.
        clients.run(&step("client = \"b\"\nconnect = true\nsend = [\"x\"]"), &addr, &mut failures).unwrap();
        assert!(failures.len() == 1 && failures[0].starts_with("b: connecting to"), "{failures:?}");
    }
}
