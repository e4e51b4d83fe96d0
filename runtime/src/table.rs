//! The process table: pid → process, owned here and nowhere else.
//!
//! Slots live in segments of [`SEGMENT`] allocated on first use, so slots
//! never move and the table grows without a stop-the-world copy. A slot is an
//! `ArcSwapOption`: a lookup is lock-free and takes no reference count (the
//! hot path of every send), and it checks the pid's serial against the
//! process found, so a stale pid never reaches a newer process.
//!
//! Invariants:
//! - A pid is issued once: a freed slot comes back with its serial plus one,
//!   and freed slots are reused oldest first (FIFO), so a serial repeats only
//!   after 2^32 reuses of that very slot.
//! - Index 0 is never issued; `Pid::NODE` lives there.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwapOption, Guard};
use parking_lot::Mutex;

use crate::mailbox::Push;
use crate::message::Envelope;
use crate::pid::Pid;
use crate::process::Proc;

const SEGMENT_BITS: u32 = 16;
const SEGMENT: usize = 1 << SEGMENT_BITS;

/// A segment of slots, allocated on first use.
type Segment = OnceLock<Box<[ArcSwapOption<Proc>]>>;

pub(crate) struct ProcessTable {
    segments: Box<[Segment]>,
    free: Mutex<FreeSlots>,
    live: AtomicUsize,
    max: usize,
}

struct FreeSlots {
    /// The next pid to issue for each freed slot, oldest first.
    reusable: VecDeque<Pid>,
    /// The lowest index never issued.
    fresh: u32,
}

/// A borrowed process, valid while held (no reference count taken).
pub(crate) struct ProcRef(Guard<Option<Arc<Proc>>>);

impl std::ops::Deref for ProcRef {
    type Target = Arc<Proc>;

    fn deref(&self) -> &Arc<Proc> {
        self.0.as_ref().expect("ProcRef is built only from an occupied slot")
    }
}

impl ProcessTable {
    pub(crate) fn new(max_processes: usize) -> ProcessTable {
        let max = max_processes.clamp(SEGMENT, u32::MAX as usize);
        let segments = max.div_ceil(SEGMENT);
        ProcessTable {
            segments: (0..segments).map(|_| OnceLock::new()).collect(),
            free: Mutex::new(FreeSlots { reusable: VecDeque::new(), fresh: 1 }),
            live: AtomicUsize::new(0),
            max,
        }
    }

    fn slot(&self, index: u32) -> Option<&ArcSwapOption<Proc>> {
        let index = index as usize;
        let segment = self.segments.get(index >> SEGMENT_BITS)?.get()?;
        Some(&segment[index & (SEGMENT - 1)])
    }

    /// Issues a pid, builds the process for it and publishes it.
    pub(crate) fn insert(&self, build: impl FnOnce(Pid) -> Arc<Proc>) -> Option<Arc<Proc>> {
        let pid = {
            let mut free = self.free.lock();
            if let Some(pid) = free.reusable.pop_front() {
                pid
            } else if (free.fresh as usize) < self.max {
                free.fresh += 1;
                Pid::new(free.fresh - 1, 1)
            } else {
                return None;
            }
        };
        let index = pid.index() as usize;
        let segment = self.segments[index >> SEGMENT_BITS]
            .get_or_init(|| (0..SEGMENT).map(|_| ArcSwapOption::empty()).collect());
        let proc = build(pid);
        segment[index & (SEGMENT - 1)].store(Some(proc.clone()));
        self.live.fetch_add(1, Ordering::Relaxed);
        Some(proc)
    }

    pub(crate) fn get(&self, pid: Pid) -> Option<ProcRef> {
        let guard = self.slot(pid.index())?.load();
        match &*guard {
            Some(proc) if proc.pid == pid => Some(ProcRef(guard)),
            _ => None,
        }
    }

    /// Removes a process; its slot returns to the free list with the next serial.
    pub(crate) fn remove(&self, pid: Pid) {
        let Some(slot) = self.slot(pid.index()) else {
            return;
        };
        let current = slot.load();
        if !matches!(&*current, Some(proc) if proc.pid == pid) {
            return;
        }
        drop(current);
        slot.store(None);
        self.live.fetch_sub(1, Ordering::Relaxed);
        let serial = match pid.serial().wrapping_add(1) {
            0 => 1,
            serial => serial,
        };
        self.free.lock().reusable.push_back(Pid::new(pid.index(), serial));
    }

    pub(crate) fn capacity(&self) -> usize {
        self.max
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Visits every live process without copying the table or taking a
    /// reference count (a lock-free read of each slot).
    pub(crate) fn for_each(&self, mut visit: impl FnMut(&Arc<Proc>)) {
        let fresh = self.free.lock().fresh;
        for index in 1..fresh {
            if let Some(slot) = self.slot(index) {
                let guard = slot.load();
                if let Some(proc) = &*guard {
                    visit(proc);
                }
            }
        }
    }

    /// Every live process (a snapshot).
    pub(crate) fn all(&self) -> Vec<Arc<Proc>> {
        let fresh = self.free.lock().fresh;
        (1..fresh).filter_map(|index| self.slot(index).and_then(|slot| slot.load_full())).collect()
    }
}

/// Slots in a worker's [`ProcCache`].
const CACHE_SLOTS: usize = 4096;

/// A worker's direct-mapped cache of recently used processes, by slot
/// index, so a send or run that hits it skips the table lookup.
///
/// Sound for dead processes: a pid names one process forever, so a cached
/// entry either is the process the pid names or misses; and a dead process's
/// mailbox is closed, so a push to it fails and a turn of it does nothing.
/// A cached entry keeps only the emptied shell of an exited process alive
/// (its actor, queue and relations are gone), at most `CACHE_SLOTS` of them.
pub(crate) struct ProcCache {
    slots: RefCell<Box<[Option<Arc<Proc>>]>>,
}

impl ProcCache {
    pub(crate) fn new() -> ProcCache {
        ProcCache { slots: RefCell::new((0..CACHE_SLOTS).map(|_| None).collect()) }
    }

    /// The process `pid` names, if alive or still cached.
    pub(crate) fn get(&self, table: &ProcessTable, pid: Pid) -> Option<Arc<Proc>> {
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[pid.index() as usize % CACHE_SLOTS];
        if let Some(proc) = slot
            && proc.pid == pid
        {
            return Some(proc.clone());
        }
        let proc = Arc::clone(&*table.get(pid)?);
        *slot = Some(proc.clone());
        Some(proc)
    }

    /// Pushes to the mailbox of `pid` without taking a reference count.
    pub(crate) fn push(&self, table: &ProcessTable, pid: Pid, envelope: Envelope) -> Push<Envelope> {
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[pid.index() as usize % CACHE_SLOTS];
        if let Some(proc) = slot
            && proc.pid == pid
        {
            return proc.mailbox.push(envelope);
        }
        let Some(found) = table.get(pid) else { return Push::Dead(envelope) };
        let proc = Arc::clone(&*found);
        drop(found);
        let pushed = proc.mailbox.push(envelope);
        *slot = Some(proc);
        pushed
    }
}
