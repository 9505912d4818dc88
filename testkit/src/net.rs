//! Free loopback ports and waiting for a listener.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::wait::wait_until;
use crate::Error;

/// A loopback TCP port that was free a moment ago (bind port 0, read, drop).
pub fn try_free_port() -> Result<u16, Error> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind 127.0.0.1:0", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("local address of 127.0.0.1:0", e))?;
    Ok(addr.port())
}

/// [`try_free_port`] for tests: panics if no port can be bound.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// True if something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Waits until 127.0.0.1:`port` accepts TCP connections; false on timeout.
pub fn wait_port_open(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || port_open(port))
}

/// [`wait_port_open`] without blocking the async runtime.
pub async fn wait_port_open_async(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        );
        if matches!(attempt.await, Ok(Ok(_))) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
