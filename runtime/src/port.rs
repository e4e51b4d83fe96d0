//! Ports: runtime-owned TCP connections (filled in below).
use crate::pid::Pid;

pub(crate) struct Ports {}

impl Ports {
    pub(crate) fn new() -> Ports {
        Ports {}
    }
    pub(crate) fn shutdown(&self) {}
    pub(crate) fn close_owned(&self, _port: u64, _owner: Pid) {}
}
