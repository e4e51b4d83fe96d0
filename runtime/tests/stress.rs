//! Stress of the mailbox/scheduler hand-off: 1,000 receivers get messages
//! from sender threads (through the injector) and sender processes (through
//! the workers' LIFO slots and run queues) while another thread suspends and
//! resumes receivers and senders at random. Every message must be handled
//! exactly once and each sender's messages to a receiver in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use relive_runtime::{Actor, Ctx, Message, Node, NodeConfig, Pid, ReplyTo, SuspendError};

const RECEIVERS: usize = 1_000;
const SENDER_THREADS: u32 = 3;
const SENDER_PROCESSES: u32 = 8;
/// How long the senders run.
const RUN_FOR: Duration = Duration::from_millis(1500);
/// Cap per sender thread, so a fast machine does not build a huge backlog.
const MAX_PER_THREAD: u64 = 150_000;
const BURST: usize = 400;

/// xorshift64*: enough randomness for picking targets, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Messages are `(sender, seq)`, seq counting per (sender, receiver) pair.
struct Receiver {
    next: HashMap<u32, u64>,
    count: u64,
    /// First few order violations: (sender, expected, got).
    violations: Vec<(u32, u64, u64)>,
    violation_count: u64,
}

struct Report {
    next: HashMap<u32, u64>,
    count: u64,
    violations: Vec<(u32, u64, u64)>,
    violation_count: u64,
}

struct Sync;

impl Actor for Receiver {
    fn handle(&mut self, message: Message, _ctx: &mut Ctx<'_>) {
        let (sender, seq) = message.downcast::<(u32, u64)>().expect("(u32, u64)");
        let next = self.next.entry(sender).or_insert(0);
        if seq != *next {
            self.violation_count += 1;
            if self.violations.len() < 10 {
                self.violations.push((sender, *next, seq));
            }
        }
        *next = seq + 1;
        self.count += 1;
    }

    fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        if request.is::<Sync>() {
            return reply.reply_with(());
        }
        reply.reply_with(Report {
            next: self.next.clone(),
            count: self.count,
            violations: self.violations.clone(),
            violation_count: self.violation_count,
        });
    }
}

/// A sender process: on `Burst` sends that many messages to random
/// receivers, alternating send and cast; a call returns its per-receiver
/// counts.
struct Sender {
    id: u32,
    receivers: Arc<Vec<Pid>>,
    sent: Vec<u64>,
    rng: Rng,
}

struct Burst(usize);

impl Actor for Sender {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        let Ok(Burst(n)) = message.downcast::<Burst>() else {
            panic!("sender: unexpected message");
        };
        for i in 0..n {
            let r = self.rng.below(self.receivers.len());
            let seq = self.sent[r];
            self.sent[r] += 1;
            let to = self.receivers[r];
            let result = if i % 2 == 0 { ctx.send(to, (self.id, seq)) } else { ctx.cast(to, (self.id, seq)) };
            result.expect("receivers never exit");
        }
    }

    fn handle_call(&mut self, _request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        reply.reply_with(self.sent.clone());
    }
}

#[test]
fn every_message_is_handled_exactly_once_and_in_order_under_suspend_resume() {
    let started = Instant::now();
    let node = Node::start(NodeConfig { workers: 2, ..NodeConfig::default() });
    let receivers: Arc<Vec<Pid>> =
        Arc::new((0..RECEIVERS).map(|_| node.spawn(Receiver::new()).unwrap()).collect());
    let senders: Vec<Pid> = (0..SENDER_PROCESSES)
        .map(|i| {
            node.spawn(Sender {
                id: 1_000 + i,
                receivers: receivers.clone(),
                sent: vec![0; RECEIVERS],
                rng: Rng::new(1_000 + u64::from(i)),
            })
            .unwrap()
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let suspends = Arc::new(AtomicU64::new(0));

    // Sender threads: plain sends from outside, with a call now and then
    // for back-pressure (and to mix calls into the same mailboxes).
    let threads: Vec<_> = (0..SENDER_THREADS)
        .map(|id| {
            let (node, receivers, stop) = (node.clone(), receivers.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = Rng::new(u64::from(id) + 1);
                let mut sent = vec![0u64; RECEIVERS];
                let mut total = 0u64;
                while total < MAX_PER_THREAD && !stop.load(Ordering::Relaxed) {
                    let r = rng.below(RECEIVERS);
                    node.send(receivers[r], (id, sent[r])).expect("receivers never exit");
                    sent[r] += 1;
                    total += 1;
                    if total.is_multiple_of(2_000) {
                        let r = rng.below(RECEIVERS);
                        node.call(receivers[r], Sync, Duration::from_secs(10)).expect("sync call");
                    }
                }
                sent
            })
        })
        .collect();

    // Drives the sender processes with bursts, a few queued at a time.
    let driver = {
        let (node, senders, stop) = (node.clone(), senders.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for &pid in &senders {
                    if node.message_queue_len(pid).is_some_and(|n| n < 2) {
                        node.send(pid, Burst(BURST)).unwrap();
                        idle = false;
                    }
                }
                if idle {
                    thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };

    // Suspends and resumes receivers and sender processes at random.
    let suspender = {
        let (node, receivers, senders, stop, suspends) =
            (node.clone(), receivers.clone(), senders.clone(), stop.clone(), suspends.clone());
        thread::spawn(move || {
            let mut rng = Rng::new(99);
            let mut suspended: Vec<Pid> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if suspended.len() < 30 && rng.below(3) != 0 {
                    let pid = if rng.below(10) == 0 {
                        senders[rng.below(senders.len())]
                    } else {
                        receivers[rng.below(RECEIVERS)]
                    };
                    match node.suspend(pid, Duration::from_secs(1)) {
                        Ok(()) => {
                            suspends.fetch_add(1, Ordering::Relaxed);
                            suspended.push(pid);
                        }
                        Err(SuspendError::AlreadySuspended(_)) => {}
                        Err(other) => panic!("suspend {pid}: {other}"),
                    }
                } else if !suspended.is_empty() {
                    let pid = suspended.swap_remove(rng.below(suspended.len()));
                    node.resume(pid).unwrap_or_else(|e| panic!("resume {pid}: {e}"));
                }
                thread::sleep(Duration::from_micros(100));
            }
            for pid in suspended {
                node.resume(pid).unwrap_or_else(|e| panic!("resume {pid}: {e}"));
            }
        })
    };

    thread::sleep(RUN_FOR);
    stop.store(true, Ordering::Relaxed);
    let mut sent: HashMap<u32, Vec<u64>> = HashMap::new();
    for (id, t) in threads.into_iter().enumerate() {
        sent.insert(id as u32, t.join().expect("sender thread"));
    }
    driver.join().expect("driver");
    suspender.join().expect("suspender");
    // A call to a sender process queues behind its bursts: its answer
    // counts everything it sent.
    for (i, &pid) in senders.iter().enumerate() {
        let counts = node
            .call(pid, (), Duration::from_secs(10))
            .expect("sender process answers")
            .downcast::<Vec<u64>>()
            .unwrap();
        sent.insert(1_000 + i as u32, counts);
    }
    let total_sent: u64 = sent.values().flatten().sum();

    let mut total_handled = 0u64;
    for (r, &pid) in receivers.iter().enumerate() {
        let report = node
            .call(pid, (), Duration::from_secs(10))
            .expect("receiver answers")
            .downcast::<Report>()
            .unwrap_or_else(|_| panic!("report"));
        assert_eq!(
            report.violation_count, 0,
            "receiver {r} ({pid}) saw out-of-order messages (sender, expected, got): {:?}",
            report.violations
        );
        for (sender, counts) in &sent {
            let handled = report.next.get(sender).copied().unwrap_or(0);
            assert_eq!(
                handled, counts[r],
                "receiver {r} ({pid}) handled {handled} messages of sender {sender}, which sent {}",
                counts[r]
            );
        }
        total_handled += report.count;
    }
    assert_eq!(total_handled, total_sent);
    assert!(total_sent > 100_000, "too little traffic to mean anything: {total_sent}");
    assert!(suspends.load(Ordering::Relaxed) > 100, "too few suspensions");
    eprintln!(
        "stress: {total_sent} messages, {} suspensions, {:?}",
        suspends.load(Ordering::Relaxed),
        started.elapsed()
    );
    node.shutdown();
}

impl Receiver {
    fn new() -> Receiver {
        Receiver { next: HashMap::new(), count: 0, violations: Vec::new(), violation_count: 0 }
    }
}
