//! relive-node: the release handler of a relive node and its control
//! protocol, as OTP's sasl `release_handler` sits above the code server.
//!
//! - [`ReleaseHandler`] (handler.rs) owns the node's [`Store`], its upgrade
//!   [`Controller`] and boot, and offers boot, deploy, rollback,
//!   make_permanent, remove, prune and status. What runs is recorded once:
//!   the store's state file and the controller's undo; nothing is kept in
//!   step beside them.
//! - [`protocol`] is the one typed control protocol (requests, progress,
//!   responses, versioned, unknown or wrong-typed fields refused by name);
//!   [`client::Client`] is its one client. The `relive` binary's daemon is
//!   a thin socket adapter that decodes a line, calls
//!   [`ReleaseHandler::handle`] and writes the replies.
//! - [`watch`]: the change running now and the last reports, for an
//!   observer (`ReleaseHandler::watch`).
//! - [`crash`]: crash points for the kill -9 tests, off unless the node
//!   runs with `RELIVE_CRASH_FILE`.
//!
//! # Invariants
//!
//! - A refused, failed or dry-run deploy leaves the store byte-identical:
//!   archives are verified in memory and their libraries opened from the
//!   node's own code directory (`<root>/run/code`) before anything is
//!   written to the store, and only a committed upgrade is recorded.
//! - Nothing a client sends can make the node busy before its archive is
//!   verified: the busy mark is taken after verification.
//! - A release is booted only after every library was hashed and matched
//!   its manifest, and the manifest matched what was verified at unpack
//!   (and its signature, when the store trusts keys).
//!
//! ```no_run
//! use relive_node::client::Client;
//! let status = Client::connect(std::path::Path::new(".relive"))?.status()?;
//! println!("{} {}", status.release.name, status.release.version);
//! # Ok::<(), relive_node::client::ClientError>(())
//! ```
//!
//! [`Store`]: relive_releases::store::Store
//! [`Controller`]: relive_upgrader::Controller

pub mod client;
pub mod crash;
mod handler;
pub mod protocol;
pub mod watch;

pub use handler::{BootError, Config, RUN_DIR, ReleaseHandler, VerifiedArchive, release_view, trusted_keys};
