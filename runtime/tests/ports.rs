//! Ports against real TCP clients on 127.0.0.1.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use relive_runtime::{
    Actor, CloseReason, ConnLimits, ExitReason, ListenOpts, Listening, Node, NodeConfig, Pid, PortError,
    PortEvent, PortId, PortKind, actor_fn,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connecting");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    BufReader::new(stream)
}

fn send(client: &mut BufReader<TcpStream>, text: &str) {
    client.get_mut().write_all(text.as_bytes()).unwrap();
}

fn read_line(client: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    client.read_line(&mut line).expect("reading a reply line");
    assert!(line.ends_with('\n'), "reply {line:?} is not a whole line");
    line.pop();
    line
}

/// True once the server has closed the connection (EOF or reset).
fn sees_close(client: &mut BufReader<TcpStream>) -> bool {
    let mut buf = [0u8; 64];
    match client.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("expected the connection to close, read {:?}", &buf[..n]),
        Err(err) => matches!(err.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted),
    }
}

fn next_event(events: &Receiver<PortEvent>) -> PortEvent {
    events.recv_timeout(TIMEOUT).expect("no port event within the timeout")
}

/// Replies to each line with `prefix` + the line in upper case, and
/// forwards every event it gets to `events`.
fn upper_echo(prefix: String, events: Option<Sender<PortEvent>>) -> impl Actor {
    actor_fn(move |message, ctx| {
        let Ok(event) = message.downcast::<PortEvent>() else {
            return;
        };
        if let PortEvent::Data { port, bytes } = &event {
            let mut reply = prefix.clone().into_bytes();
            reply.extend(bytes.to_ascii_uppercase());
            reply.push(b'\n');
            ctx.port_send(*port, reply).expect("port_send from the owner");
        }
        if let Some(events) = &events {
            let _ = events.send(event);
        }
    })
}

/// Forwards every event to `events`, and does nothing else.
fn forwarder(events: Sender<PortEvent>) -> impl Actor {
    actor_fn(move |message, _ctx| {
        if let Ok(event) = message.downcast::<PortEvent>() {
            let _ = events.send(event);
        }
    })
}

fn accepted_port(events: &Receiver<PortEvent>) -> PortId {
    match next_event(events) {
        PortEvent::Accepted { port, .. } => port,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

/// Waits until `condition` holds; false if it never did within TIMEOUT.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

fn kill_and_wait(node: &Node, pid: Pid) {
    let waiter = node.exit_waiter(pid);
    node.exit(pid, ExitReason::Kill);
    assert_eq!(waiter.wait(TIMEOUT), Some(ExitReason::Killed));
}

#[test]
fn line_echo_server_replies_each_line_in_upper_case() {
    let node = Node::start(NodeConfig::default());
    let (tx, events) = mpsc::channel();
    let owner = node.spawn(upper_echo(String::new(), Some(tx))).unwrap();
    let listener = node.listen(any_port(), owner, ListenOpts::line()).unwrap();
    assert_ne!(listener.local_addr.port(), 0);

    let mut client = connect(listener.local_addr);
    let port = accepted_port(&events);
    // Two lines in one write, one of them with \r\n.
    send(&mut client, "hello\nworld\r\n");
    assert_eq!(read_line(&mut client), "HELLO");
    assert_eq!(read_line(&mut client), "WORLD");
    // A line split across writes is buffered until it is complete.
    send(&mut client, "par");
    client.get_mut().flush().unwrap();
    thread::sleep(Duration::from_millis(30));
    send(&mut client, "tial\n");
    assert_eq!(read_line(&mut client), "PARTIAL");

    let lines: Vec<_> = (0..3)
        .map(|_| match next_event(&events) {
            PortEvent::Data { port: p, bytes } => {
                assert_eq!(p, port);
                String::from_utf8(bytes).unwrap()
            }
            other => panic!("expected Data, got {other:?}"),
        })
        .collect();
    assert_eq!(lines, ["hello", "world", "partial"]);

    let info = node.port_info(port).expect("the connection is open");
    assert_eq!(info.kind, PortKind::Connection);
    assert_eq!(info.owner, owner);
    assert_eq!(info.bytes_in, "hello\nworld\r\npartial\n".len() as u64);
    // The counter moves just after the write the client already saw.
    let out = "HELLO\nWORLD\nPARTIAL\n".len() as u64;
    assert!(eventually(|| node.port_info(port).unwrap().bytes_out == out));
    assert_eq!(info.peer, Some(client.get_ref().local_addr().unwrap()));
    node.shutdown();
}

#[test]
fn raw_framing_echoes_a_large_payload_intact() {
    const SIZE: usize = 1 << 20;
    let node = Node::start(NodeConfig::default());
    let (tx, events) = mpsc::channel();
    let owner = node
        .spawn(actor_fn(move |message, ctx| {
            if let Ok(event) = message.downcast::<PortEvent>() {
                if let PortEvent::Data { port, bytes } = &event {
                    ctx.port_send(*port, bytes.clone()).unwrap();
                }
                let _ = tx.send(event);
            }
        }))
        .unwrap();
    let listener = node.listen(any_port(), owner, ListenOpts::raw()).unwrap();

    let payload: Vec<u8> = (0..SIZE as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let client = connect(listener.local_addr).into_inner();
    let mut writer = client.try_clone().unwrap();
    let sent = payload.clone();
    let writing = thread::spawn(move || writer.write_all(&sent));
    // Read late, so the server's writes fill the socket and must be
    // buffered and resumed on WRITABLE.
    thread::sleep(Duration::from_millis(100));
    let mut echoed = vec![0u8; SIZE];
    (&client).read_exact(&mut echoed).expect("reading the echo");
    writing.join().unwrap().unwrap();
    assert!(echoed == payload, "the echoed bytes differ from the payload");

    let port = accepted_port(&events);
    let mut received = 0;
    while received < SIZE {
        match next_event(&events) {
            PortEvent::Data { bytes, .. } => received += bytes.len(),
            other => panic!("expected Data, got {other:?}"),
        }
    }
    assert_eq!(node.port_info(port).unwrap().bytes_in, SIZE as u64);
    assert!(eventually(|| node.port_info(port).unwrap().bytes_out == SIZE as u64));
    node.shutdown();
}

#[test]
fn interleaved_clients_stay_separate() {
    let node = Node::start(NodeConfig::default());
    let owner = node.spawn(upper_echo(String::new(), None)).unwrap();
    let listener = node.listen(any_port(), owner, ListenOpts::line()).unwrap();
    let mut a = connect(listener.local_addr);
    let mut b = connect(listener.local_addr);

    // Partial lines of both, interleaved: each connection has its own buffer.
    send(&mut a, "hel");
    send(&mut b, "wor");
    thread::sleep(Duration::from_millis(20));
    send(&mut a, "lo\n");
    send(&mut b, "ld\n");
    assert_eq!(read_line(&mut a), "HELLO");
    assert_eq!(read_line(&mut b), "WORLD");
    for i in 0..20 {
        send(&mut a, &format!("a{i}\n"));
        send(&mut b, &format!("b{i}\n"));
    }
    for i in 0..20 {
        assert_eq!(read_line(&mut a), format!("A{i}"));
        assert_eq!(read_line(&mut b), format!("B{i}"));
    }
    node.shutdown();
}

#[test]
fn handler_spawns_one_process_per_connection() {
    let node = Node::start(NodeConfig::default());
    let (tx, events) = mpsc::channel();
    let owner = node.spawn(forwarder(tx)).unwrap();
    let (spawned_tx, spawned) = mpsc::channel();
    let opts = ListenOpts::line().with_handler(move |node, _port| {
        // Each connection's process answers with its own pid.
        let pid = node
            .spawn(actor_fn(|message, ctx| {
                if let Ok(PortEvent::Data { port, bytes }) = message.downcast::<PortEvent>() {
                    let line = String::from_utf8_lossy(&bytes).to_uppercase();
                    ctx.port_send(port, format!("{} {line}\n", ctx.pid())).unwrap();
                }
            }))
            .ok()?;
        spawned_tx.send(pid).unwrap();
        Some(pid)
    });
    let listener = node.listen(any_port(), owner, opts).unwrap();

    let mut a = connect(listener.local_addr);
    let mut b = connect(listener.local_addr);
    send(&mut a, "from a\n");
    send(&mut b, "from b\n");
    let reply_a = read_line(&mut a);
    let reply_b = read_line(&mut b);
    let pid_a = spawned.recv_timeout(TIMEOUT).unwrap();
    let pid_b = spawned.recv_timeout(TIMEOUT).unwrap();
    assert_ne!(pid_a, pid_b);
    let replies = [reply_a.as_str(), reply_b.as_str()];
    assert!(
        replies.contains(&format!("{pid_a} FROM A").as_str())
            || replies.contains(&format!("{pid_b} FROM A").as_str()),
        "{replies:?}"
    );
    let (who_a, _) = reply_a.split_once(' ').unwrap();
    let (who_b, _) = reply_b.split_once(' ').unwrap();
    assert_ne!(who_a, who_b, "two connections shared one process");
    assert_eq!(reply_a, format!("{who_a} FROM A"));
    assert_eq!(reply_b, format!("{who_b} FROM B"));

    // The listener's owner hears of both connections; each belongs to the
    // process the handler spawned for it.
    let mut owners = Vec::new();
    for _ in 0..2 {
        let port = accepted_port(&events);
        owners.push(node.port_info(port).unwrap().owner);
    }
    owners.sort();
    let mut expected = vec![pid_a, pid_b];
    expected.sort();
    assert_eq!(owners, expected);
    node.shutdown();
}

#[test]
fn owner_exit_closes_its_connection_and_listener() {
    let node = Node::start(NodeConfig::default());
    let (tx, events) = mpsc::channel();
    let listener_owner = node.spawn(forwarder(tx)).unwrap();
    let opts =
        ListenOpts::line().with_handler(|node, _port| node.spawn(upper_echo(String::new(), None)).ok());
    let listener = node.listen(any_port(), listener_owner, opts).unwrap();

    let mut first = connect(listener.local_addr);
    send(&mut first, "hi\n");
    assert_eq!(read_line(&mut first), "HI");
    let port = accepted_port(&events);
    let conn_owner = node.port_info(port).unwrap().owner;
    kill_and_wait(&node, conn_owner);
    assert!(sees_close(&mut first), "the client did not see the close");
    assert!(node.port_info(port).is_none());
    assert!(matches!(
        node.port_send(port, "late\n"),
        Err(PortError::Closed(p)) if p == port
    ));

    // Only that connection closed: the listener still serves.
    let mut second = connect(listener.local_addr);
    send(&mut second, "again\n");
    assert_eq!(read_line(&mut second), "AGAIN");

    // The listener's owner exits: the listener closes, and new connections
    // are refused.
    kill_and_wait(&node, listener_owner);
    let deadline = Instant::now() + TIMEOUT;
    while TcpStream::connect_timeout(&listener.local_addr, TIMEOUT).is_ok() {
        assert!(Instant::now() < deadline, "the listener is still open");
        thread::sleep(Duration::from_millis(10));
    }
    assert!(node.port_info(listener.port).is_none());
    // The second connection belongs to its own process and stays open.
    send(&mut second, "still here\n");
    assert_eq!(read_line(&mut second), "STILL HERE");
    node.shutdown();
}

/// The property behind live upgrades: the connection belongs to the runtime,
/// so a new owner (the next code version) keeps the very same socket.
#[test]
fn set_owner_keeps_the_socket_and_routes_later_lines_to_the_new_owner() {
    let node = Node::start(NodeConfig::default());
    let (tx_a, events_a) = mpsc::channel();
    let old = node.spawn(upper_echo("v1:".into(), Some(tx_a))).unwrap();
    let listener = node.listen(any_port(), old, ListenOpts::line()).unwrap();

    let mut client = connect(listener.local_addr);
    let client_addr = client.get_ref().local_addr().unwrap();
    send(&mut client, "one\n");
    assert_eq!(read_line(&mut client), "v1:ONE");
    let port = accepted_port(&events_a);
    let fd_before = node
        .port_raw_fds()
        .into_iter()
        .find(|(p, _)| *p == port)
        .expect("the connection's fd is in the table");

    let (tx_b, events_b) = mpsc::channel();
    let new = node.spawn(upper_echo("v2:".into(), Some(tx_b))).unwrap();
    node.port_set_owner(port, new).unwrap();
    // The old version goes away; the connection must not go with it.
    kill_and_wait(&node, old);

    send(&mut client, "two\n");
    assert_eq!(read_line(&mut client), "v2:TWO");
    assert_eq!(next_event(&events_b), PortEvent::Data { port, bytes: b"two".to_vec() });
    let info = node.port_info(port).unwrap();
    assert_eq!(info.owner, new);
    assert_eq!(info.peer, Some(client_addr));
    let fd_after = node.port_raw_fds().into_iter().find(|(p, _)| *p == port);
    assert_eq!(fd_after, Some(fd_before), "the socket was replaced");
    // The old owner saw only what came before the hand-over.
    let old_saw: Vec<_> = events_a.try_iter().collect();
    assert_eq!(old_saw, [PortEvent::Data { port, bytes: b"one".to_vec() }]);

    // A dead process cannot take it; it stays with the new owner.
    assert!(matches!(
        node.port_set_owner(port, old),
        Err(PortError::NoProc(p)) if p == old
    ));
    send(&mut client, "three\n");
    assert_eq!(read_line(&mut client), "v2:THREE");
    node.shutdown();
}

#[test]
fn peer_close_delivers_the_last_partial_line_then_closed() {
    let node = Node::start(NodeConfig::default());
    let (tx, events) = mpsc::channel();
    let owner = node.spawn(forwarder(tx)).unwrap();
    let listener = node.listen(any_port(), owner, ListenOpts::line()).unwrap();

    let mut client = connect(listener.local_addr);
    send(&mut client, "whole\nlast words");
    client.get_ref().shutdown(Shutdown::Both).unwrap();
    drop(client);

    let port = accepted_port(&events);
    assert_eq!(next_event(&events), PortEvent::Data { port, bytes: b"whole".to_vec() });
    assert_eq!(next_event(&events), PortEvent::Data { port, bytes: b"last words".to_vec() });
    assert_eq!(next_event(&events), PortEvent::Closed { port, reason: CloseReason::PeerClosed });
    assert!(node.port_info(port).is_none());
    assert!(!node.ports().contains(&port));
    assert!(node.ports().contains(&listener.port));
    node.shutdown();
}

#[test]
fn an_overlong_line_closes_only_that_connection() {
    let node = Node::start(NodeConfig::default());
    let (tx, events) = mpsc::channel();
    let owner = node.spawn(upper_echo(String::new(), Some(tx))).unwrap();
    let opts = ListenOpts { max_line: 8, ..ListenOpts::line() };
    let listener = node.listen(any_port(), owner, opts).unwrap();

    let mut bad = connect(listener.local_addr);
    let bad_port = accepted_port(&events);
    send(&mut bad, "this line is far too long");
    assert_eq!(
        next_event(&events),
        PortEvent::Closed { port: bad_port, reason: CloseReason::LineTooLong { limit: 8 } }
    );
    assert!(sees_close(&mut bad));

    let mut good = connect(listener.local_addr);
    send(&mut good, "short\n");
    assert_eq!(read_line(&mut good), "SHORT");
    node.shutdown();
}

#[test]
fn shutdown_closes_every_socket_and_returns() {
    let node = Node::start(NodeConfig::default());
    let owner = node.spawn(upper_echo(String::new(), None)).unwrap();
    let listener = node.listen(any_port(), owner, ListenOpts::line()).unwrap();
    let mut clients: Vec<_> = (0..2).map(|_| connect(listener.local_addr)).collect();
    for client in &mut clients {
        send(client, "up\n");
        assert_eq!(read_line(client), "UP");
    }
    assert_eq!(node.ports().len(), 3);
    assert_eq!(node.port_raw_fds().len(), 3);
    let port = node.ports()[1];

    let started = Instant::now();
    node.shutdown();
    assert!(started.elapsed() < Duration::from_secs(1));
    for client in &mut clients {
        assert!(sees_close(client), "a connection outlived the node");
    }
    assert!(
        TcpStream::connect_timeout(&listener.local_addr, TIMEOUT).is_err(),
        "the listener outlived the node"
    );
    assert!(node.ports().is_empty());
    assert!(node.port_raw_fds().is_empty());
    assert!(matches!(node.port_send(port, "x"), Err(PortError::ShuttingDown)));
    assert!(matches!(node.listen(any_port(), owner, ListenOpts::line()), Err(PortError::ShuttingDown)));
    node.shutdown();
}

#[test]
fn listeners_lists_each_open_listener_with_its_owner_and_bound_address() {
    let node = Node::start(NodeConfig::default());
    assert!(node.listeners().is_empty(), "no listener before the first listen");
    let (tx, _events) = mpsc::channel();
    let first_owner = node.spawn(forwarder(tx.clone())).unwrap();
    let second_owner = node.spawn(forwarder(tx)).unwrap();
    let first = node.listen(any_port(), first_owner, ListenOpts::line()).unwrap();
    let second = node.listen(any_port(), second_owner, ListenOpts::raw()).unwrap();
    assert_ne!(first.local_addr.port(), 0);
    assert_ne!(second.local_addr.port(), 0);

    // A connection is a port too, but not a listener.
    let _client = connect(first.local_addr);
    assert!(eventually(|| node.ports().len() == 3));

    let listed = node.listeners();
    assert_eq!(
        listed,
        [
            Listening { port: first.port, owner: first_owner, addr: first.local_addr },
            Listening { port: second.port, owner: second_owner, addr: second.local_addr },
        ]
    );
    assert!(first.port < second.port, "sorted by port id");

    // The owner follows port_set_owner.
    node.port_set_owner(second.port, first_owner).unwrap();
    assert_eq!(node.listeners()[1].owner, first_owner);

    // A closed listener is gone once port_close returns.
    node.port_close(first.port).unwrap();
    assert_eq!(
        node.listeners(),
        [Listening { port: second.port, owner: first_owner, addr: second.local_addr }]
    );
    // So is one whose owner exited.
    kill_and_wait(&node, first_owner);
    assert!(eventually(|| node.listeners().is_empty()));
    node.shutdown();
    assert!(node.listeners().is_empty());
}

#[test]
fn errors_say_what_failed() {
    let node = Node::start(NodeConfig::default());
    let owner = node.spawn(upper_echo(String::new(), None)).unwrap();
    let listener = node.listen(any_port(), owner, ListenOpts::line()).unwrap();
    assert_eq!(listener.port.to_string(), format!("#Port<0.{}>", listener.port.as_u64()));

    // The address is taken.
    let err = node.listen(listener.local_addr, owner, ListenOpts::line()).unwrap_err();
    assert!(matches!(err, PortError::Bind { addr, .. } if addr == listener.local_addr));
    let text = err.to_string();
    assert!(text.contains(&listener.local_addr.to_string()), "{text}");
    assert!(text.starts_with("cannot listen on"), "{text}");

    // Sending on a listener, or on a port that never was.
    assert!(matches!(node.port_send(listener.port, "x"), Err(PortError::NotAConnection(_))));
    let never = PortId::from_u64(u64::MAX);
    assert!(matches!(node.port_send(never, "x"), Err(PortError::Unknown(p)) if p == never));
    assert!(node.port_info(never).is_none());

    // A closed port says so.
    let other = node.listen(any_port(), owner, ListenOpts::line()).unwrap();
    node.port_close(other.port).unwrap();
    let err = node.port_close(other.port).unwrap_err();
    assert!(matches!(err, PortError::Closed(p) if p == other.port));
    assert!(err.to_string().contains("is closed"), "{err}");
    assert!(node.port_info(other.port).is_none());

    // A dead owner cannot listen.
    let dead = node.spawn(upper_echo(String::new(), None)).unwrap();
    kill_and_wait(&node, dead);
    assert!(matches!(
        node.listen(any_port(), dead, ListenOpts::line()),
        Err(PortError::NoProc(p)) if p == dead
    ));
    node.shutdown();
}

const REFUSAL: &str = "-ERR max number of clients reached\r\n";

#[test]
fn clients_over_the_listener_cap_get_the_refusal_and_a_close_and_the_node_keeps_serving() {
    let node = Node::start(NodeConfig::default());
    let owner = node.spawn(upper_echo(String::new(), None)).unwrap();
    let opts = ListenOpts::line().with_max_connections(50, REFUSAL);
    let listener = node.listen(any_port(), owner, opts).unwrap();

    let mut served: Vec<_> = (0..50).map(|_| connect(listener.local_addr)).collect();
    assert!(eventually(|| node.port_connections() == 50), "the first 50 clients are held");
    // 150 more: each is told why and closed, none is left hanging.
    for _ in 0..150 {
        let mut refused = connect(listener.local_addr);
        let mut line = String::new();
        refused.read_line(&mut line).expect("reading the refusal");
        assert_eq!(line, REFUSAL);
        assert!(sees_close(&mut refused));
    }
    assert_eq!(node.port_connections(), 50);
    // The held clients are served all along.
    send(&mut served[0], "still here\n");
    assert_eq!(read_line(&mut served[0]), "STILL HERE");
    // A place freed is a place for the next client.
    served.truncate(40);
    assert!(eventually(|| node.port_connections() == 40));
    let mut late = connect(listener.local_addr);
    send(&mut late, "late\n");
    assert_eq!(read_line(&mut late), "LATE");
    node.shutdown();
}

#[test]
fn the_node_cap_counts_every_listener() {
    let node = Node::start(NodeConfig::default());
    let owner = node.spawn(upper_echo(String::new(), None)).unwrap();
    node.set_max_connections(Some(3));
    let a = node.listen(any_port(), owner, ListenOpts::line().with_max_connections(100, REFUSAL)).unwrap();
    let b = node.listen(any_port(), owner, ListenOpts::line()).unwrap();
    let _held = [connect(a.local_addr), connect(a.local_addr), connect(b.local_addr)];
    assert!(eventually(|| node.port_connections() == 3));
    let mut refused = connect(a.local_addr);
    let mut line = String::new();
    refused.read_line(&mut line).unwrap();
    assert_eq!(line, REFUSAL, "the node's cap refuses with the listener's refusal");
    let mut closed = connect(b.local_addr);
    assert!(sees_close(&mut closed), "a listener without a refusal just closes");
    let err = node.connect(a.local_addr, owner, Default::default(), TIMEOUT).unwrap_err();
    assert!(matches!(err, PortError::TooManyConnections { max: 3 }), "{err}");
    node.shutdown();
}

#[test]
fn a_listeners_options_change_in_place_for_the_connections_it_accepts_later() {
    let node = Node::start(NodeConfig::default());
    let (tx, events) = mpsc::channel();
    let owner = node.spawn(upper_echo(String::new(), Some(tx))).unwrap();
    let listener = node.listen(any_port(), owner, ListenOpts::line()).unwrap();
    let mut first = connect(listener.local_addr);
    let first_port = accepted_port(&events);
    let mut second = connect(listener.local_addr);
    accepted_port(&events);
    let mut third = connect(listener.local_addr);
    accepted_port(&events);
    drop(third);

    // A cap of 2 while 2 are open: the next client is refused; the open
    // ones keep being served; the socket is the same.
    let capped = ListenOpts::line().with_max_connections(2, REFUSAL);
    assert!(eventually(|| node.port_connections() == 2));
    node.set_listen_opts(listener.port, capped).unwrap();
    let mut refused = connect(listener.local_addr);
    let mut line = String::new();
    refused.read_line(&mut line).unwrap();
    assert_eq!(line, REFUSAL);
    send(&mut first, "still here\n");
    assert_eq!(read_line(&mut first), "STILL HERE");
    send(&mut second, "me too\n");
    assert_eq!(read_line(&mut second), "ME TOO");
    assert_eq!(node.listeners()[0].addr, listener.local_addr);

    // Lifted again: a third client is served.
    node.set_listen_opts(listener.port, ListenOpts::line()).unwrap();
    third = connect(listener.local_addr);
    send(&mut third, "in\n");
    assert_eq!(read_line(&mut third), "IN");

    let err = node.set_listen_opts(first_port, ListenOpts::line()).unwrap_err();
    assert!(matches!(err, PortError::NotAListener(port) if port == first_port), "{err}");
    node.port_close(listener.port).unwrap();
    let err = node.set_listen_opts(listener.port, ListenOpts::line()).unwrap_err();
    assert!(matches!(err, PortError::Closed(_)), "{err}");
    node.shutdown();
}

#[test]
fn an_idle_connection_closes_with_idle_timeout_and_a_busy_one_stays() {
    let node = Node::start(NodeConfig::default());
    let (tx, events) = mpsc::channel();
    let owner = node.spawn(upper_echo(String::new(), Some(tx))).unwrap();
    let limits = ConnLimits { idle_timeout: Some(Duration::from_millis(300)), ..ConnLimits::default() };
    let listener = node.listen(any_port(), owner, ListenOpts::line().with_limits(limits)).unwrap();

    let mut idle = connect(listener.local_addr);
    let idle_port = accepted_port(&events);
    send(&mut idle, "once\n");
    assert_eq!(read_line(&mut idle), "ONCE");
    assert!(matches!(next_event(&events), PortEvent::Data { .. }));
    let mut busy = connect(listener.local_addr);
    accepted_port(&events);
    // Talks ten times as often as the timeout allows, for longer than it.
    for i in 0..20 {
        send(&mut busy, &format!("tick {i}\n"));
        assert_eq!(read_line(&mut busy), format!("TICK {i}"));
        thread::sleep(Duration::from_millis(30));
    }
    let closed = loop {
        match events.recv_timeout(Duration::from_secs(5)).expect("the idle client is closed") {
            PortEvent::Closed { port, reason } => break (port, reason),
            PortEvent::Data { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(closed.0, idle_port);
    assert_eq!(closed.1, CloseReason::IdleTimeout { after: Duration::from_millis(300) });
    assert!(closed.1.to_string().starts_with("idle timeout"), "{}", closed.1);
    assert!(sees_close(&mut idle));
    node.shutdown();
}

/// Echoes each `Data` `factor` times over (a request with a large reply),
/// after waiting for `gate` once if given.
fn amplifier(factor: usize, gate: Option<Receiver<()>>, received: Sender<usize>) -> impl Actor {
    let mut gate = gate;
    actor_fn(move |message, ctx| {
        let Ok(PortEvent::Data { port, bytes }) = message.downcast::<PortEvent>() else {
            return;
        };
        if let Some(gate) = gate.take() {
            let _ = gate.recv();
        }
        let _ = received.send(bytes.len());
        // A closed port (the case the overflow test wants) is fine.
        if factor > 0 {
            let _ = ctx.port_send(port, bytes.repeat(factor));
        }
    })
}

/// Writes `total` bytes, blocking as TCP makes it; returns what it wrote.
fn flood(addr: SocketAddr, total: usize) -> (TcpStream, thread::JoinHandle<usize>) {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let handle = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            match writer.write(&chunk[..(total - sent).min(chunk.len())]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    (stream, handle)
}

/// The first connection (not a listener) `owner` owns, once accepted.
fn connection_owned_by(node: &Node, owner: Pid) -> PortId {
    let mut found = None;
    let accepted = eventually(|| {
        found = node
            .ports()
            .into_iter()
            .find(|p| node.port_info(*p).is_some_and(|i| i.peer.is_some() && i.owner == owner));
        found.is_some()
    });
    assert!(accepted, "no connection of {owner} was accepted");
    found.unwrap()
}

#[test]
fn a_slow_owner_stops_its_port_reading_until_it_catches_up() {
    let node = Node::start(NodeConfig::default());
    let (gate_tx, gate) = mpsc::channel();
    let (received_tx, received) = mpsc::channel();
    let owner = node.spawn(amplifier(0, Some(gate), received_tx)).unwrap();
    let limits = ConnLimits { max_unhandled_bytes: 256 * 1024, ..ConnLimits::default() };
    let listener = node.listen(any_port(), owner, ListenOpts::raw().with_limits(limits)).unwrap();
    let other_owner = node.spawn(upper_echo(String::new(), None)).unwrap();
    let other = node.listen(any_port(), other_owner, ListenOpts::line()).unwrap();

    let total = 32 * 1024 * 1024;
    let (_client, writer) = flood(listener.local_addr, total);
    let port = connection_owned_by(&node, owner);
    assert!(eventually(|| node.port_info(port).unwrap().bytes_in >= 256 * 1024));
    // The owner is stuck on its first message: the port reads at most one
    // buffer past the limit, however long the client keeps sending.
    thread::sleep(Duration::from_millis(300));
    let info = node.port_info(port).unwrap();
    let bound = 256 * 1024 + 64 * 1024;
    assert!(info.bytes_in <= bound as u64, "read {} bytes for a stuck owner", info.bytes_in);
    assert!(info.bytes_unhandled <= bound, "{} unhandled", info.bytes_unhandled);
    // Another connection is served meanwhile.
    let mut bystander = connect(other.local_addr);
    send(&mut bystander, "ping\n");
    assert_eq!(read_line(&mut bystander), "PING");
    // Once the owner catches up, every byte arrives.
    gate_tx.send(()).unwrap();
    let mut got = 0;
    while got < total {
        got += received.recv_timeout(Duration::from_secs(10)).expect("the rest of the flood arrives");
    }
    assert_eq!(got, total);
    assert_eq!(writer.join().unwrap(), total);
    node.shutdown();
}

#[test]
fn a_client_that_never_reads_its_replies_stops_its_port_and_others_are_served() {
    let node = Node::start(NodeConfig::default());
    let (received_tx, received) = mpsc::channel();
    // Each request byte makes 16 reply bytes, as GET of a large value.
    let owner = node.spawn(amplifier(16, None, received_tx)).unwrap();
    // Little input in flight, so what is asked before reading stops stays
    // under the hard cap.
    let limits = ConnLimits {
        max_buffered_bytes: 4 * 1024 * 1024,
        max_unhandled_bytes: 64 * 1024,
        ..ConnLimits::default()
    };
    let listener = node.listen(any_port(), owner, ListenOpts::raw().with_limits(limits)).unwrap();
    let other_owner = node.spawn(upper_echo(String::new(), None)).unwrap();
    let other = node.listen(any_port(), other_owner, ListenOpts::line()).unwrap();

    let total = 32 * 1024 * 1024;
    let (client, writer) = flood(listener.local_addr, total);
    let port = connection_owned_by(&node, owner);
    assert!(eventually(|| node.port_info(port).unwrap().bytes_queued > 4 * 1024 * 1024));
    thread::sleep(Duration::from_millis(300));
    let info = node.port_info(port).expect("the connection stays open");
    // Reading stopped: unsent output stays under the hard cap (twice the
    // limit), and the connection is still open for a reader that wakes up.
    assert!(info.bytes_queued <= 8 * 1024 * 1024, "{} bytes queued", info.bytes_queued);
    assert!(info.bytes_in < total as u64 / 4, "read {} of {total} bytes", info.bytes_in);
    let mut bystander = connect(other.local_addr);
    send(&mut bystander, "ping\n");
    assert_eq!(read_line(&mut bystander), "PING");
    // The client reads at last: everything it asked for comes back.
    let mut reader = client.try_clone().unwrap();
    reader.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut replies = 0usize;
    while replies < 16 * total {
        let n = reader.read(&mut buf).expect("reading the replies");
        assert!(n > 0, "closed after {replies} reply bytes");
        replies += n;
    }
    assert_eq!(writer.join().unwrap(), total);
    drop(received);
    node.shutdown();
}

#[test]
fn an_owner_that_outwrites_a_peer_that_never_reads_closes_it_with_output_overflow() {
    let node = Node::start(NodeConfig::default());
    let (tx, events) = mpsc::channel();
    let pushed = vec![b'y'; 1024 * 1024];
    // Pushes 64 MB for every line, as a stream nobody asked to slow down.
    let owner = node
        .spawn(actor_fn(move |message, ctx| {
            let Ok(event) = message.downcast::<PortEvent>() else { return };
            if let PortEvent::Data { port, .. } = &event {
                for _ in 0..64 {
                    if ctx.port_send_slice(*port, &pushed).is_err() {
                        break;
                    }
                }
            }
            let _ = tx.send(event);
        }))
        .unwrap();
    let limits = ConnLimits { max_buffered_bytes: 1024 * 1024, ..ConnLimits::default() };
    let listener = node.listen(any_port(), owner, ListenOpts::line().with_limits(limits)).unwrap();
    let mut client = connect(listener.local_addr);
    let port = accepted_port(&events);
    send(&mut client, "subscribe\n");
    loop {
        match next_event(&events) {
            PortEvent::Data { .. } => {}
            PortEvent::Closed { port: closed, reason } => {
                assert_eq!(closed, port);
                assert_eq!(reason, CloseReason::OutputOverflow { limit: 2 * 1024 * 1024 });
                assert!(reason.to_string().contains("does not read"), "{reason}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(eventually(|| node.port_info(port).is_none()));
    node.shutdown();
}

/// Set in the child process that [`out_of_descriptors_clients_are_refused_not_left_hanging`]
/// runs itself in.
const EMFILE_CHILD: &str = "RELIVE_TEST_EMFILE_CHILD";

/// The port module's warnings, counted by a minimal subscriber (the I/O
/// thread logs through `tracing`).
mod warnings {
    use std::sync::Mutex;

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    pub static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

    pub struct Counter;

    struct Text(String);

    impl Visit for Text {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }

    impl Subscriber for Counter {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            *metadata.level() <= Level::WARN
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            if event.metadata().target().ends_with("port") {
                let mut text = Text(String::new());
                event.record(&mut text);
                LINES.lock().unwrap().push(text.0);
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

/// Out of file descriptors, a client waiting to be accepted gets the
/// refusal and a close at once instead of hanging in the kernel's queue;
/// connected clients keep being served; the log gets at most about a line a
/// second; and once descriptors free up, clients are served again. Runs in
/// a child process under a low open-file limit, which it then uses up.
#[test]
fn out_of_descriptors_clients_are_refused_not_left_hanging() {
    const NAME: &str = "out_of_descriptors_clients_are_refused_not_left_hanging";
    if std::env::var_os(EMFILE_CHILD).is_none() {
        let output = std::process::Command::new("prlimit")
            .arg("--nofile=512:512")
            .arg(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(EMFILE_CHILD, "1")
            .output()
            .expect("running the test under prlimit (util-linux)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "the child failed ({})\n{stdout}\n{stderr}", output.status);
        assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}\n{stderr}");
        return;
    }

    tracing::subscriber::set_global_default(warnings::Counter).unwrap();
    let node = Node::start(NodeConfig::default());
    let owner = node.spawn(upper_echo(String::new(), None)).unwrap();
    let opts = ListenOpts { refusal: REFUSAL.as_bytes().to_vec(), ..ListenOpts::line() };
    let listener = node.listen(any_port(), owner, opts).unwrap();
    let mut served = connect(listener.local_addr);
    send(&mut served, "before\n");
    assert_eq!(read_line(&mut served), "BEFORE");

    // Use up every descriptor; each client below takes the one freed for it.
    let mut hogs = Vec::new();
    let exhausted = loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(err) => break err,
        }
    };
    assert_eq!(exhausted.raw_os_error(), Some(24), "{exhausted}");
    drop(hogs.pop());

    let started = Instant::now();
    for i in 0..200 {
        let stream = TcpStream::connect(listener.local_addr).expect("the client's own descriptor is free");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut refused = BufReader::new(stream);
        let mut line = String::new();
        refused
            .read_line(&mut line)
            .unwrap_or_else(|err| panic!("client {i} waits in the queue instead of being refused: {err}"));
        assert_eq!(line, REFUSAL, "client {i}");
        assert!(sees_close(&mut refused), "client {i}");
        if i == 100 {
            send(&mut served, "during\n");
            assert_eq!(read_line(&mut served), "DURING", "a connected client is served meanwhile");
        }
    }
    let elapsed = started.elapsed();
    let lines = warnings::LINES.lock().unwrap().clone();
    assert!(
        lines.iter().all(|line| line.contains("out of file descriptors")),
        "only refusals are logged: {lines:#?}"
    );
    assert!(!lines.is_empty(), "the refusals are logged");
    assert!(
        lines.len() as u64 <= elapsed.as_secs() + 1,
        "{} lines in {elapsed:?}: more than one a second: {lines:#?}",
        lines.len()
    );

    drop(hogs);
    let mut late = connect(listener.local_addr);
    send(&mut late, "after\n");
    assert_eq!(read_line(&mut late), "AFTER", "with descriptors back, clients are served");
    node.shutdown();
}
