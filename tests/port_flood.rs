//! A connection flood against a node with a low open-file limit: clients
//! past the node's cap are refused (closed at once, never left hanging),
//! the held ones keep being served, and `relive status` keeps answering,
//! so an operator is never locked out.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{NodeGuard, free_port, kv_archive, relive_within};

/// The limit the node runs under: its cap is this minus a quarter.
const NOFILE: usize = 256;

fn get(client: &mut TcpStream, key: &str) -> Vec<u8> {
    let request = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    client.write_all(request.as_bytes()).expect("sending GET");
    let mut reply = vec![0u8; 256];
    let n = client.read(&mut reply).expect("reading the GET reply");
    reply.truncate(n);
    reply
}

#[test]
fn a_flood_past_the_cap_is_refused_and_status_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let archive = kv_archive("1.1.0", port, dir.path());
    // `relive` under a low open-file limit, soft and hard, so the node
    // cannot raise it.
    let wrapper = dir.path().join("relive-low-nofile");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec prlimit --nofile={NOFILE}:{NOFILE} {} \"$@\"\n",
            env!("CARGO_BIN_EXE_relive")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("node");
    let node = NodeGuard::start_as(&root, &["--boot", archive.to_str().unwrap()], None, &wrapper);
    let addr = format!("127.0.0.1:{port}");
    common::wait_until("kv listens", Duration::from_secs(20), || TcpStream::connect(&addr).is_ok());

    let mut first = TcpStream::connect(&addr).unwrap();
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(get(&mut first, "nothing"), b"$-1\r\n");
    // Twice the node's limit: without a cap it would run out of
    // descriptors (and its control socket with it).
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..2 * NOFILE {
        let mut client = TcpStream::connect(&addr).expect("the kernel still takes the connection");
        client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut byte = [0u8; 1];
        match client.read(&mut byte) {
            // Closed by the node: refused over the cap.
            Ok(0) => refused += 1,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            // Held (nothing to read yet).
            Err(_) => flood.push(client),
            Ok(_) => panic!("kv said something unasked"),
        }
    }
    assert!(refused >= NOFILE, "only {refused} of {} clients were refused", 2 * NOFILE);
    assert!(flood.len() < NOFILE, "{} clients held under a limit of {NOFILE} files", flood.len());

    // The operator is not locked out, and held clients are still served.
    let status = relive_within(&["status", "--root", node.root()], Duration::from_secs(20))
        .expect("relive status answers during the flood");
    assert!(status.status.success(), "status failed: {}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(get(&mut first, "nothing"), b"$-1\r\n");
    let mut last = flood.pop().expect("some clients are held");
    last.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(get(&mut last, "nothing"), b"$-1\r\n");

    // Places freed are places for new clients.
    drop(flood);
    common::wait_until("a new client is served", Duration::from_secs(20), || {
        let Ok(mut client) = TcpStream::connect(&addr) else { return false };
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let request = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        client.write_all(request).is_ok() && {
            let mut reply = [0u8; 16];
            matches!(client.read(&mut reply), Ok(n) if &reply[..n] == b"$-1\r\n")
        }
    });
    // Refusals are logged at most once a second, not once per client.
    let log = std::fs::read_to_string(root.join("node.log")).unwrap_or_default();
    let lines = log.lines().filter(|l| l.contains("connection refused")).count();
    assert!(lines <= 30, "{lines} refusal lines in the log for {refused} refusals");
    node.stop();
}
