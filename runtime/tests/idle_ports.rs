//! An idle node with open ports leaves its core alone: its scheduler worker
//! waits in the port poller (a blocking `epoll_wait`) once its short spin is
//! over, rather than polling without end. A test binary of its own, so that
//! the only scheduler workers in the process are this node's.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use relive_runtime::{ListenOpts, Node, NodeConfig, PortEvent, actor_fn};

/// How long the idle node is watched.
const WATCH: Duration = Duration::from_secs(1);

/// CPU time (user and system) of every scheduler worker thread of this
/// process so far, from /proc/self/task/*/stat.
fn worker_cpu() -> Duration {
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    let ticks_per_second = 100;
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("reading /proc/self/task") {
        let path = task.expect("a /proc/self/task entry").path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else { continue };
        if !comm.starts_with("relive-worker") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        // Fields after the command (which ends with the last ')'): state is
        // field 3, utime and stime fields 14 and 15.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("a task's stat") + 2..].split(' ').collect();
        for field in &fields[11..13] {
            ticks += field.parse::<u64>().expect("utime and stime in a task's stat");
        }
    }
    Duration::from_millis(ticks * 1000 / ticks_per_second)
}

#[test]
fn an_idle_worker_waits_in_the_poller_instead_of_spinning() {
    let node = Node::start(NodeConfig { workers: 1, ..NodeConfig::default() });
    let owner = node
        .spawn(actor_fn(|message, ctx| {
            if let Ok(PortEvent::Data { port, bytes }) = message.downcast::<PortEvent>() {
                let mut reply = bytes;
                reply.push(b'\n');
                ctx.port_send(port, reply).expect("port_send from the owner");
            }
        }))
        .unwrap();
    let listener = node.listen("127.0.0.1:0".parse().unwrap(), owner, ListenOpts::line()).unwrap();
    // One request answered: the worker has taken the poller and read a
    // socket through it, the path that used to spin afterwards.
    let mut client = BufReader::new(TcpStream::connect(listener.local_addr).expect("connecting"));
    client.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    client.get_mut().write_all(b"ping\n").unwrap();
    let mut line = String::new();
    client.read_line(&mut line).expect("reading the reply");
    assert_eq!(line, "ping\n");

    // Idle now: the worker spins for 50 µs, then blocks in the poller (or
    // parks) until something happens. One that polls without end burns its
    // core the whole time. Half the time watched is far from either.
    let before = worker_cpu();
    thread::sleep(WATCH);
    let busy = worker_cpu() - before;
    assert!(
        busy < WATCH / 2,
        "the idle worker used {busy:?} of CPU in {WATCH:?}: it keeps polling instead of waiting"
    );
    node.shutdown();
}
