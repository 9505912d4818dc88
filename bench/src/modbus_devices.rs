//! Simulated Modbus TCP devices for the `modbus` scenario: one tokio-modbus
//! server per device on a free loopback port, answering holding-register
//! reads with values that change on every request, and counting requests.

use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// The register bank of one simulated device.
#[derive(Clone)]
struct Device {
    /// Requests answered by every device of the fleet.
    requests: Arc<AtomicU64>,
    /// This device's requests; the registers it returns start at this value.
    tick: Arc<AtomicU64>,
}

impl Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        ready(match req.request {
            Request::ReadHoldingRegisters(start, count) => Ok(Response::ReadHoldingRegisters(
                (0..count)
                    .map(|i| (tick as u16).wrapping_add(start).wrapping_add(i))
                    .collect(),
            )),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// A fleet of simulated devices; dropping it stops every server.
pub struct Fleet {
    /// The endpoint of each device.
    pub endpoints: Vec<SocketAddr>,
    requests: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Starts `devices` servers, each on its own free loopback port.
    pub async fn start(devices: usize) -> anyhow::Result<Self> {
        let requests = Arc::new(AtomicU64::new(0));
        let mut endpoints = Vec::with_capacity(devices);
        let mut tasks = Vec::with_capacity(devices);
        for _ in 0..devices {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("bind a simulated Modbus device on 127.0.0.1:0")?;
            endpoints.push(listener.local_addr()?);
            let device = Device {
                requests: requests.clone(),
                tick: Arc::new(AtomicU64::new(0)),
            };
            tasks.push(tokio::spawn(async move {
                let on_connected = move |stream, peer| {
                    let device = device.clone();
                    async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(device.clone()))) }
                };
                if let Err(e) = Server::new(listener).serve(&on_connected, |_| {}).await {
                    eprintln!("fieldgate-bench: simulated Modbus device stopped: {e}");
                }
            }));
        }
        Ok(Self {
            endpoints,
            requests,
            tasks,
        })
    }

    /// Requests answered so far by all devices (shared counter).
    pub fn requests(&self) -> Arc<AtomicU64> {
        self.requests.clone()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_modbus::client::{tcp, Reader as _};

    #[tokio::test]
    async fn devices_answer_changing_registers_and_count_requests() {
        let fleet = Fleet::start(2).await.unwrap();
        assert_eq!(fleet.endpoints.len(), 2);
        assert_ne!(fleet.endpoints[0], fleet.endpoints[1]);
        let mut ctx = tcp::connect(fleet.endpoints[1]).await.unwrap();
        let first = ctx.read_holding_registers(10, 3).await.unwrap().unwrap();
        assert_eq!(first, vec![10, 11, 12]);
        let second = ctx.read_holding_registers(10, 3).await.unwrap().unwrap();
        assert_eq!(second, vec![11, 12, 13]);
        let refused = ctx.read_input_registers(0, 1).await.unwrap();
        assert_eq!(refused, Err(ExceptionCode::IllegalFunction));
        assert_eq!(fleet.requests().load(Ordering::Relaxed), 3);
    }
}
