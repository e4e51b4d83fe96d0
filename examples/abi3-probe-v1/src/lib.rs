//! Test module for module ABI 3, version 1.0.0: the probe (see probe.rs),
//! one call per host service, and a log of what reached it. The runtime's
//! tests (runtime/tests/abi3.rs) drive it; abi3-probe-v2 is the same code
//! at 2.0.0, to move processes between versions.

#[allow(missing_docs)]
mod probe;

relive_abi::export_module!(probe::Probe, name = "abi3-probe");
