//! EPMD: found on its port, or started as erl starts it (`epmd -daemon`).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::DistError;

/// The port EPMD listens on: `ERL_EPMD_PORT`, else 4369 (as erl).
pub fn port_from_env() -> u16 {
    std::env::var("ERL_EPMD_PORT").ok().and_then(|p| p.trim().parse().ok()).unwrap_or(4369)
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

/// Makes sure an EPMD answers on `port`: when none does and `start` is
/// set, runs `epmd -daemon -port PORT` (it detaches itself and outlives
/// this process, as with erl) and waits up to 5 s for it.
///
/// # Errors
/// [`DistError::Epmd`]: none answers and it could not be started.
pub fn ensure_running(port: u16, start: bool) -> Result<(), DistError> {
    if answers(port) {
        return Ok(());
    }
    if !start {
        return Err(DistError::Epmd(format!("no EPMD answers on port {port}")));
    }
    let status = std::process::Command::new("epmd")
        .args(["-daemon", "-port", &port.to_string()])
        .env("ERL_EPMD_PORT", port.to_string())
        .status()
        .map_err(|e| {
            DistError::Epmd(format!(
                "no EPMD answers on port {port} and `epmd -daemon` could not run ({e}): install Erlang's epmd \
                 (Debian: erlang-base) or start one"
            ))
        })?;
    if !status.success() {
        return Err(DistError::Epmd(format!("`epmd -daemon -port {port}` failed ({status})")));
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if answers(port) {
            tracing::info!(port, "started epmd");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(DistError::Epmd(format!("started epmd on port {port}, but it does not answer")))
}
