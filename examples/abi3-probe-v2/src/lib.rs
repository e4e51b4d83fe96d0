//! Test module for module ABI 3, version 2.0.0: the probe of abi3-probe-v1
//! (the same source) at a new version, so a test can move a process to it
//! and see that what the node holds for the process (links, monitors,
//! deferred calls, ports, its name) followed, and which version saw what.

#[allow(missing_docs)]
#[path = "../../abi3-probe-v1/src/probe.rs"]
mod probe;

relive_abi::export_module!(probe::Probe, name = "abi3-probe");
