//! A cheap look at every process, for an observer: the busiest `n` by
//! mailbox length, messages handled or memory, among those a filter keeps.
//!
//! # Cost
//!
//! One pass over the process table (lock-free slot reads, no copy of the
//! table), and per process two short critical sections, one after the
//! other (never nested, as process.rs's lock order asks): its mailbox lock
//! for the counters and the module it runs, its relations lock for its
//! name. Only the `n` kept are built into [`ProcessSample`]s; the rest is
//! a bounded heap of (key, slot) pairs, so a node of 100,000 processes is
//! sampled without sorting or allocating per process.
//!
//! # What memory means
//!
//! [`ProcessSample::memory`] is what the runtime holds for the process:
//! its record, its mailbox's allocated queue and its relations. A module's
//! own state lives in the module's library and is not counted.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::loader::ModuleCode;
use crate::message::Envelope;
use crate::node::Node;
use crate::pid::Pid;
use crate::process::{Proc, Relations};

/// How [`Node::top_processes`] ranks processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProcessOrder {
    /// Messages waiting in the mailbox (the default).
    #[default]
    Mailbox,
    /// Messages ever handled.
    Handled,
    /// Memory the runtime holds for it.
    Memory,
}

impl ProcessOrder {
    /// `mailbox`, `handled`, `memory`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessOrder::Mailbox => "mailbox",
            ProcessOrder::Handled => "handled",
            ProcessOrder::Memory => "memory",
        }
    }
}

impl std::str::FromStr for ProcessOrder {
    type Err = String;

    fn from_str(text: &str) -> Result<ProcessOrder, String> {
        match text {
            "mailbox" => Ok(ProcessOrder::Mailbox),
            "handled" => Ok(ProcessOrder::Handled),
            "memory" => Ok(ProcessOrder::Memory),
            other => Err(format!("unknown order {other:?}: use mailbox, handled or memory")),
        }
    }
}

/// One process as an observer sees it.
#[derive(Clone, Debug)]
pub struct ProcessSample {
    /// Its pid.
    pub pid: Pid,
    /// Its registered name, if any.
    pub name: Option<Arc<str>>,
    /// The module and version it runs, when it is a module process whose
    /// code was at hand (not while a worker runs it or an upgrade moves it).
    pub module: Option<(String, semver::Version)>,
    /// Messages waiting in its mailbox.
    pub mailbox: usize,
    /// Envelopes it has taken out of its mailbox (messages handled, system
    /// tasks included).
    pub handled: u64,
    /// Bytes the runtime holds for it (see the module doc).
    pub memory: usize,
}

/// What [`Node::top_processes`] found.
#[derive(Clone, Debug, Default)]
pub struct TopProcesses {
    /// Processes alive during the pass.
    pub total: usize,
    /// Of those, the ones the filter kept.
    pub matched: usize,
    /// Messages waiting over every matched process.
    pub queued: u64,
    /// The busiest `n` matched, busiest first.
    pub top: Vec<ProcessSample>,
}

/// What is read of one process under its locks.
struct Raw {
    mailbox: usize,
    handled: u64,
    memory: usize,
    code: Option<Arc<ModuleCode>>,
    name: Option<Arc<str>>,
}

fn read(proc: &Proc) -> Raw {
    let (mailbox, capacity, handled, code) = proc.mailbox.glance(|glance| {
        let code = glance.actor.and_then(|actor| actor.as_module_process()).map(|m| Arc::clone(m.code()));
        (glance.queued, glance.capacity, glance.taken, code)
    });
    let (name, relations) = {
        let cell = proc.relations.lock();
        match cell.relations.as_deref() {
            Some(r) => (r.name.clone(), relations_bytes(r)),
            None => (None, 0),
        }
    };
    let memory = std::mem::size_of::<Proc>() + capacity * std::mem::size_of::<Envelope>() + relations;
    Raw { mailbox, handled, memory, code, name }
}

fn relations_bytes(r: &Relations) -> usize {
    std::mem::size_of::<Relations>()
        + r.links.capacity() * std::mem::size_of::<Pid>()
        + r.monitored_by.capacity() * 32
        + r.monitoring.capacity() * 16
        + r.ports.capacity() * 8
        + r.name.as_ref().map_or(0, |n| n.len())
}

impl Node {
    /// The busiest `n` processes by `order`, among those whose pid (as
    /// printed), registered name or module name contains `filter` (every
    /// process when it is empty); see [`crate::snapshot`] for the cost.
    pub fn top_processes(&self, n: usize, order: ProcessOrder, filter: &str) -> TopProcesses {
        let mut found = TopProcesses::default();
        // Min-heap of the best `n` so far: (key, pid index, pid serial).
        let mut best: BinaryHeap<Reverse<(u64, u32, u32)>> = BinaryHeap::with_capacity(n + 1);
        let mut pid_text = String::new();
        self.inner.table.for_each(|proc| {
            found.total += 1;
            let raw = read(proc);
            if !filter.is_empty() {
                use std::fmt::Write;
                pid_text.clear();
                let _ = write!(pid_text, "{}", proc.pid);
                let kept = pid_text.contains(filter)
                    || raw.name.as_deref().is_some_and(|name| name.contains(filter))
                    || raw.code.as_ref().is_some_and(|code| code.name().contains(filter));
                if !kept {
                    return;
                }
            }
            found.matched += 1;
            found.queued += raw.mailbox as u64;
            if n == 0 {
                return;
            }
            let key = match order {
                ProcessOrder::Mailbox => raw.mailbox as u64,
                ProcessOrder::Handled => raw.handled,
                ProcessOrder::Memory => raw.memory as u64,
            };
            let entry = Reverse((key, proc.pid.index(), proc.pid.serial()));
            if best.len() < n {
                best.push(entry);
            } else if best.peek().is_some_and(|least| entry < *least) {
                best.pop();
                best.push(entry);
            }
        });
        let mut kept: Vec<(u64, u32, u32)> = best.into_iter().map(|Reverse(e)| e).collect();
        kept.sort_unstable_by(|a, b| b.cmp(a));
        found.top = kept
            .into_iter()
            .filter_map(|(_, index, serial)| {
                let pid = Pid::new(index, serial);
                let proc = self.inner.table.get(pid)?;
                let raw = read(&proc);
                Some(ProcessSample {
                    pid,
                    name: raw.name,
                    module: raw.code.map(|c| (c.name().to_string(), c.version().clone())),
                    mailbox: raw.mailbox,
                    handled: raw.handled,
                    memory: raw.memory,
                })
            })
            .collect();
        found
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Actor, Ctx, Message, NodeConfig};

    /// Handles nothing until told, so its mailbox fills.
    struct Gate;

    impl Actor for Gate {
        fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}
    }

    #[test]
    fn the_busiest_come_first_and_the_filter_applies() {
        let node = Node::start(NodeConfig { workers: 2, ..NodeConfig::default() });
        let pids: Vec<Pid> = (0..50).map(|_| node.spawn(Gate).unwrap()).collect();
        for pid in &pids {
            node.suspend(*pid, Duration::from_secs(5)).unwrap();
        }
        // Process i has i messages waiting.
        for (i, pid) in pids.iter().enumerate() {
            for _ in 0..i {
                node.send(*pid, ()).unwrap();
            }
        }
        node.register("busy-one", pids[49]).unwrap();
        node.register("busy-two", pids[10]).unwrap();
        let top = node.top_processes(3, ProcessOrder::Mailbox, "");
        assert_eq!(top.total, 50);
        assert_eq!(top.matched, 50);
        assert_eq!(top.queued, (0..50u64).sum::<u64>());
        let firsts: Vec<(Pid, usize)> = top.top.iter().map(|s| (s.pid, s.mailbox)).collect();
        assert_eq!(firsts, vec![(pids[49], 49), (pids[48], 48), (pids[47], 47)]);
        assert_eq!(top.top[0].name.as_deref(), Some("busy-one"));
        // The longest queue and a name: the most memory.
        let biggest = node.top_processes(1, ProcessOrder::Memory, "");
        assert_eq!(biggest.top[0].pid, pids[49]);
        assert!(biggest.top[0].memory > std::mem::size_of::<Proc>() + 49 * std::mem::size_of::<Envelope>());

        let named = node.top_processes(10, ProcessOrder::Mailbox, "busy");
        assert_eq!(named.matched, 2);
        let pids_kept: Vec<Pid> = named.top.iter().map(|s| s.pid).collect();
        assert_eq!(pids_kept, vec![pids[49], pids[10]]);

        let by_pid = pids[7].to_string();
        let one = node.top_processes(10, ProcessOrder::Handled, &by_pid);
        assert!(one.top.iter().any(|s| s.pid == pids[7]), "{by_pid}");
        assert_eq!(one.top[0].pid, pids[7]);

        for pid in &pids {
            node.resume(*pid).unwrap();
        }
        // Once they ran, handled counts rank them the same way.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let top = node.top_processes(1, ProcessOrder::Handled, "");
            if top.queued == 0 && top.top[0].pid == pids[49] && top.top[0].handled >= 49 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the mailboxes never drained");
            std::thread::sleep(Duration::from_millis(10));
        }
        node.shutdown();
    }
}
