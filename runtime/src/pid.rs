//! Process identifiers, exit reasons and references.
//!
//! A [`Pid`] is 64 bits: a 32-bit slot index and a 32-bit serial, the shape of
//! Erlang's NEW_PID_EXT (ID and Serial) so a pid can later cross an Erlang
//! distribution link unchanged. The serial of a slot grows each time the slot
//! is reused and freed slots are reused in FIFO order, so a pid that anyone
//! still holds does not name a new process (see `table.rs`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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

    /// The raw 64-bit form, for storage in atomics and wire formats.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Rebuilds a pid from [`Pid::as_u64`]; `None` for 0 or a zero serial.
    pub const fn from_u64(raw: u64) -> Option<Pid> {
        if raw >> 32 == 0 { None } else { Some(Pid(raw)) }
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
    fn kill_propagates_as_killed() {
        assert_eq!(ExitReason::Kill.propagated(), ExitReason::Killed);
        assert_eq!(ExitReason::Normal.propagated(), ExitReason::Normal);
        assert!(ExitReason::Shutdown.is_clean());
        assert!(!ExitReason::Killed.is_clean());
    }
}
