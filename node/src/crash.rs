//! Crash points: kill -9 the node at a chosen phase of a deploy, so the
//! scenario tests (DESIGN.md §7) can show that a restart after a crash at
//! any phase boots the permanent release with a consistent store.
//!
//! Off unless the node was started with `RELIVE_CRASH_FILE=PATH` in its
//! environment. Then each deploy reads PATH once, when it starts: if it
//! names a point (one of [`POINTS`]), the node removes the file (the point
//! fires once, not again after the restart) and sends itself SIGKILL when
//! the deploy reaches that point: no destructor, flush or fsync runs, as
//! with `kill -9` from outside.

use std::path::PathBuf;

use relive_upgrader::{Phase, PhaseHook};

/// The environment variable naming the crash file.
pub const ENV: &str = "RELIVE_CRASH_FILE";

/// The crash points, in the order a deploy reaches them.
pub const POINTS: [(&str, &str); 7] = [
    (
        "verified",
        "the archive is verified and its libraries staged in the node's code directory; the store is untouched",
    ),
    ("prepared", "every new library is opened; no process touched"),
    ("suspended", "the first process is paused at its migration, before its code_change"),
    ("migrated", "the first process's code_change returned, before its switch"),
    ("switched", "every process runs the new code; health window and commit next"),
    ("committed", "the upgrade is committed; the store does not record it yet"),
    ("installed", "the store records the release as current, not yet permanent (even when asked)"),
];

/// The point a deploy must crash at, if the node runs with crash points and
/// the crash file names one.
#[derive(Clone, Debug)]
pub struct Armed {
    point: String,
    file: PathBuf,
}

/// Reads the crash file, if crash points are on and it names a point. An
/// unknown name is reported on the node's log and ignored.
pub fn armed() -> Option<Armed> {
    let file = PathBuf::from(std::env::var_os(ENV)?);
    let point = std::fs::read_to_string(&file).ok()?.trim().to_string();
    if point.is_empty() {
        return None;
    }
    if !POINTS.iter().any(|(name, _)| *name == point) {
        let known: Vec<&str> = POINTS.iter().map(|(name, _)| *name).collect();
        eprintln!(
            "node: {} names crash point {point:?}, which does not exist ({}); ignored",
            file.display(),
            known.join(", ")
        );
        return None;
    }
    Some(Armed { point, file })
}

impl Armed {
    /// Kills the node if `point` is the armed one.
    pub fn at(&self, point: &str) {
        if self.point != point {
            return;
        }
        let _ = std::fs::remove_file(&self.file);
        eprintln!("node: crash point {point:?} reached: kill -9 (pid {})", std::process::id());
        // SIGKILL: what `kill -9` does. Should it fail, abort() is the
        // nearest thing (no cleanup either).
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }

    /// The hook telling the upgrade controller's phases to [`Armed::at`].
    pub fn hook(&self) -> PhaseHook {
        let armed = self.clone();
        PhaseHook::new(move |phase: Phase| armed.at(phase.as_str()))
    }
}
