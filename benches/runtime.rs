//! Criterion benchmarks of the runtime's hot paths: one message hop through
//! a ring, and one call round trip from a thread outside the node. The
//! headline figures (and the peer comparisons) come from `relive bench`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use relive_runtime::{Actor, Ctx, ExitReason, Message, Node, NodeConfig, Pid, ReplyTo};

struct Hop {
    next: Option<Pid>,
    done: mpsc::Sender<()>,
}

impl Actor for Hop {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        match message.downcast::<u64>() {
            Ok(0) => drop(self.done.send(())),
            Ok(hops) => drop(self.next.map(|next| ctx.send(next, hops - 1))),
            Err(message) => self.next = message.downcast::<Pid>().ok(),
        }
    }
}

struct Echo;

impl Actor for Echo {
    fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}

    fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        reply.reply(request)
    }
}

fn ring_hop(c: &mut Criterion) {
    let node = Node::start(NodeConfig::default());
    let (tx, rx) = mpsc::channel();
    let pids: Vec<Pid> =
        (0..100).map(|_| node.spawn(Hop { next: None, done: tx.clone() }).unwrap()).collect();
    for (i, pid) in pids.iter().enumerate() {
        node.send(*pid, pids[(i + 1) % pids.len()]).unwrap();
    }
    c.bench_function("ring hop (100 processes)", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            node.send(pids[0], iters).unwrap();
            rx.recv_timeout(Duration::from_secs(60)).unwrap();
            started.elapsed()
        })
    });
    for pid in pids {
        node.exit(pid, ExitReason::Kill);
    }
    node.shutdown();
}

fn call_round_trip(c: &mut Criterion) {
    let node = Node::start(NodeConfig::default());
    let echo = node.spawn(Echo).unwrap();
    c.bench_function("call round trip from outside the node", |b| {
        b.iter(|| node.call(echo, 1u64, Duration::from_secs(5)).unwrap())
    });
    node.shutdown();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(2));
    targets = ring_hop, call_round_trip
}
criterion_main!(benches);
