//! Process identifiers, exit reasons and references.
//!
//! A [`Pid`] is 64 bits: a 32-bit slot index and a 32-bit serial, the shape of
//! Erlang's NEW_PID_EXT (ID and Serial) so a pid can later cross an Erlang
//! distribution link unchanged. The serial of a slot grows each time the slot
//! is reused and freed slots are reused in FIFO order, so a pid that anyone
//! still holds does not name a new process (see `table.rs`).
//!
//! A process of another node (Erlang distribution) gets a local [`Pid`] too,
//! so that everything that takes a pid (sends, links, monitors, the module
//! ABI's `u64`) takes it unchanged: [`Pid::from_external`] interns the
//! remote pid's `(node, id, serial, creation)` in a process-wide table and
//! returns a pid whose index has its top bit set ([`Pid::is_external`]),
//! which no local slot ever has. It shows as Erlang does, `<N.id.serial>`,
//! with `N` the number the node got when its first pid was seen. The
//! runtime routes what is addressed to such a pid to the installed
//! [`crate::Remote`].

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use parking_lot::RwLock;

/// A process identifier. Plain data: copy it, send it, store it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(u64);

impl Pid {
    /// The sender of signals that come from outside any process: the node's
    /// own API, the CLI, the watchdog. Never allocated to a process.
    pub const NODE: Pid = Pid::new(0, 1);

    pub(crate) const fn new(index: u32, serial: u32) -> Pid {
        Pid(((serial as u64) << 32) | index as u64)
    }

    /// The slot index (Erlang's pid ID).
    pub const fn index(self) -> u32 {
        self.0 as u32
    }

    /// The slot's reuse serial (Erlang's pid Serial); never 0.
    pub const fn serial(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Whether this pid names a process of another node (see the module
    /// doc).
    pub const fn is_external(self) -> bool {
        self.index() & EXTERNAL_INDEX_BIT != 0
    }

    /// The local pid of a process of another node: the same remote pid
    /// always gives the same local pid (interned, for the life of the OS
    /// process; the table grows by one entry per distinct remote pid seen).
    pub fn from_external(external: &ExternalPid) -> Pid {
        if let Some(&slot) = EXTERNAL_PIDS.read().by_pid.get(external) {
            return Pid::new(EXTERNAL_INDEX_BIT | slot, 1);
        }
        let mut table = EXTERNAL_PIDS.write();
        if let Some(&slot) = table.by_pid.get(external) {
            return Pid::new(EXTERNAL_INDEX_BIT | slot, 1);
        }
        let slot = u32::try_from(table.slots.len())
            .ok()
            .filter(|slot| slot & EXTERNAL_INDEX_BIT == 0)
            .expect("fewer than 2^31 distinct remote pids in one OS process");
        let next = table.node_numbers.len() as u32 + 1;
        table.node_numbers.entry(external.node.clone()).or_insert(next);
        table.slots.push(external.clone());
        table.by_pid.insert(external.clone(), slot);
        Pid::new(EXTERNAL_INDEX_BIT | slot, 1)
    }

    /// The remote pid this local pid stands for; `None` for a local pid.
    pub fn external(self) -> Option<ExternalPid> {
        if !self.is_external() {
            return None;
        }
        EXTERNAL_PIDS.read().slots.get((self.index() & !EXTERNAL_INDEX_BIT) as usize).cloned()
    }

    /// The raw 64-bit form, for storage in atomics and wire formats.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Rebuilds a pid from [`Pid::as_u64`]; `None` for 0 or a zero serial.
    pub const fn from_u64(raw: u64) -> Option<Pid> {
        if raw >> 32 == 0 { None } else { Some(Pid(raw)) }
    }
}

/// The top bit of the index of a pid that stands for a remote process.
const EXTERNAL_INDEX_BIT: u32 = 1 << 31;

/// A process of another node, as Erlang's NEW_PID_EXT names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExternalPid {
    /// The node's full name, `name@host`.
    pub node: Arc<str>,
    /// The pid's ID on its node.
    pub id: u32,
    /// The pid's serial on its node.
    pub serial: u32,
    /// The node's creation (a restarted node has a new one).
    pub creation: u32,
}

#[derive(Default)]
struct ExternalPids {
    by_pid: HashMap<ExternalPid, u32>,
    slots: Vec<ExternalPid>,
    /// The `N` of `<N.id.serial>`, by node, from 1 in order of first sight.
    node_numbers: HashMap<Arc<str>, u32>,
}

static EXTERNAL_PIDS: LazyLock<RwLock<ExternalPids>> = LazyLock::new(Default::default);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_external() {
            let table = EXTERNAL_PIDS.read();
            if let Some(external) = table.slots.get((self.index() & !EXTERNAL_INDEX_BIT) as usize) {
                let node = table.node_numbers.get(&external.node).copied().unwrap_or(0);
                return write!(f, "<{node}.{}.{}>", external.id, external.serial);
            }
        }
        write!(f, "<0.{}.{}>", self.index(), self.serial())
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error of [`Pid::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pid {0:?}: expected the form <0.INDEX.SERIAL>, e.g. <0.42.1>")]
pub struct ParsePidError(String);

/// As its text, `<0.index.serial>`, in reports and JSON.
impl serde::Serialize for Pid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Pid, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Pid {
    type Err = ParsePidError;

    fn from_str(s: &str) -> Result<Pid, ParsePidError> {
        let err = || ParsePidError(s.to_string());
        let inner = s.strip_prefix('<').and_then(|s| s.strip_suffix('>')).ok_or_else(err)?;
        let mut parts = inner.split('.');
        let (Some("0"), Some(index), Some(serial), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        let index: u32 = index.parse().map_err(|_| err())?;
        let serial: u32 = serial.parse().map_err(|_| err())?;
        if serial == 0 {
            return Err(err());
        }
        Ok(Pid::new(index, serial))
    }
}

/// Why a process ended, with Erlang's meanings.
///
/// Exit signals carrying [`ExitReason::Normal`] are ignored by processes that
/// do not trap exits; [`ExitReason::Kill`] cannot be trapped and turns into
/// [`ExitReason::Killed`] for the victim's own links and monitors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// The process finished its work.
    Normal,
    /// Stopped on purpose by a supervisor or the node (not a failure).
    Shutdown,
    /// The untrappable kill signal; only ever sent, never an exit reason.
    Kill,
    /// The process was killed by [`ExitReason::Kill`].
    Killed,
    /// The target did not exist (linking or monitoring a dead pid).
    NoProc,
    /// A handler panicked; carries the panic message.
    Panic(Arc<str>),
    /// Any other failure, described for people.
    Error(Arc<str>),
}

impl ExitReason {
    /// Builds [`ExitReason::Error`].
    pub fn error(message: impl Into<Arc<str>>) -> ExitReason {
        ExitReason::Error(message.into())
    }

    /// `normal` or `shutdown`: the reasons that a transient child is not
    /// restarted for and that supervisors do not report as crashes.
    pub fn is_clean(&self) -> bool {
        matches!(self, ExitReason::Normal | ExitReason::Shutdown)
    }

    /// What linked processes see when a process exits with this reason.
    pub(crate) fn propagated(&self) -> ExitReason {
        match self {
            ExitReason::Kill => ExitReason::Killed,
            other => other.clone(),
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Kill => f.write_str("kill"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::NoProc => f.write_str("noproc"),
            ExitReason::Panic(msg) => write!(f, "panic: {msg}"),
            ExitReason::Error(msg) => f.write_str(msg),
        }
    }
}

/// A monitor, as returned by `monitor`; pass it to `demonitor`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MonitorRef {
    pub(crate) id: u64,
    pub(crate) target: Pid,
}

impl MonitorRef {
    /// The monitored process.
    pub fn target(&self) -> Pid {
        self.target
    }

    /// The node's number for this monitor (unique per node).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl fmt::Display for MonitorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#Ref<{}>", self.id)
    }
}

/// A pending timer, as returned by `send_after`; pass it to `cancel_timer`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerRef(pub(crate) u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_round_trips_through_text_and_u64() {
        let pid = Pid::new(42, 7);
        assert_eq!(pid.to_string(), "<0.42.7>");
        assert_eq!("<0.42.7>".parse::<Pid>().unwrap(), pid);
        assert_eq!(Pid::from_u64(pid.as_u64()), Some(pid));
        assert_eq!(Pid::from_u64(0), None);
        assert!("<0.1.0>".parse::<Pid>().is_err());
        assert!("<1.2.3>".parse::<Pid>().is_err());
        assert!("0.2.3".parse::<Pid>().is_err());
    }

    #[test]
    fn external_pids_are_interned_apart_from_local_ones() {
        let remote = ExternalPid { node: "erl@host".into(), id: 85, serial: 0, creation: 7 };
        let pid = Pid::from_external(&remote);
        assert!(pid.is_external());
        assert!(!Pid::new(85, 1).is_external());
        assert_eq!(Pid::from_external(&remote), pid, "the same remote pid interns once");
        assert_eq!(pid.external(), Some(remote.clone()));
        assert_eq!(Pid::from_u64(pid.as_u64()), Some(pid));
        let restarted = ExternalPid { creation: 8, ..remote };
        assert_ne!(Pid::from_external(&restarted), pid, "a new creation is another process");
        assert!(pid.to_string().ends_with(".85.0>"), "{pid}");
        assert!(!pid.to_string().starts_with("<0."), "{pid}");
    }

    #[test]
    fn kill_propagates_as_killed() {
        assert_eq!(ExitReason::Kill.propagated(), ExitReason::Killed);
        assert_eq!(ExitReason::Normal.propagated(), ExitReason::Normal);
        assert!(ExitReason::Shutdown.is_clean());
        assert!(!ExitReason::Killed.is_clean());
    }
}
