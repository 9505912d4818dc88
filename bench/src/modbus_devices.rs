//! Simulated Modbus TCP devices for the `modbus` and `latency` scenarios:
//! one tokio-modbus server per device on a free loopback port, answering
//! holding-register reads with values that change on every request (or,
//! writable, with what was last written), and counting requests.

use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
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
    /// Writable holding registers: reads return them, writes change them.
    bank: Option<Arc<[AtomicU16]>>,
}

impl Device {
    /// Reads `count` registers from `start` of the writable bank.
    fn read_bank(bank: &[AtomicU16], start: u16, count: u16) -> Result<Response, ExceptionCode> {
        let range = usize::from(start)..usize::from(start) + usize::from(count);
        let regs = bank.get(range).ok_or(ExceptionCode::IllegalDataAddress)?;
        Ok(Response::ReadHoldingRegisters(
            regs.iter().map(|r| r.load(Ordering::SeqCst)).collect(),
        ))
    }

    /// Writes `values` from `start` into the writable bank.
    fn write_bank(bank: &[AtomicU16], start: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        let range = usize::from(start)..usize::from(start) + values.len();
        let regs = bank.get(range).ok_or(ExceptionCode::IllegalDataAddress)?;
        for (r, v) in regs.iter().zip(values) {
            r.store(*v, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some(bank) = &self.bank {
            return ready(match req.request {
                Request::ReadHoldingRegisters(start, count) => Self::read_bank(bank, start, count),
                Request::WriteSingleRegister(address, value) => {
                    Self::write_bank(bank, address, &[value])
                        .map(|()| Response::WriteSingleRegister(address, value))
                }
                Request::WriteMultipleRegisters(start, values) => {
                    Self::write_bank(bank, start, &values)
                        .map(|()| Response::WriteMultipleRegisters(start, values.len() as u16))
                }
                _ => Err(ExceptionCode::IllegalFunction),
            });
        }
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
pub(crate) struct Fleet {
    /// The endpoint of each device.
    pub endpoints: Vec<SocketAddr>,
    requests: Arc<AtomicU64>,
    /// The writable register bank of each device (empty for a read-only fleet).
    banks: Vec<Arc<[AtomicU16]>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Starts `devices` servers, each on its own free loopback port.
    pub(crate) async fn start(devices: usize) -> anyhow::Result<Self> {
        Self::start_with(devices, None).await
    }

    /// Starts `devices` servers with `registers` writable holding registers
    /// each (all 0 at first).
    pub(crate) async fn start_writable(devices: usize, registers: u16) -> anyhow::Result<Self> {
        Self::start_with(devices, Some(registers)).await
    }

    async fn start_with(devices: usize, writable: Option<u16>) -> anyhow::Result<Self> {
        let mut banks = Vec::new();
        let requests = Arc::new(AtomicU64::new(0));
        let mut endpoints = Vec::with_capacity(devices);
        let mut tasks = Vec::with_capacity(devices);
        for _ in 0..devices {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("bind a simulated Modbus device on 127.0.0.1:0")?;
            endpoints.push(listener.local_addr()?);
            let bank: Option<Arc<[AtomicU16]>> =
                writable.map(|n| (0..n).map(|_| AtomicU16::new(0)).collect());
            if let Some(b) = &bank {
                banks.push(b.clone());
            }
            let device = Device {
                requests: requests.clone(),
                tick: Arc::new(AtomicU64::new(0)),
                bank,
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
            banks,
            tasks,
        })
    }

    /// The holding register `address` of writable device `device`, if it exists.
    pub(crate) fn register(&self, device: usize, address: u16) -> Option<u16> {
        self.banks
            .get(device)?
            .get(usize::from(address))
            .map(|r| r.load(Ordering::SeqCst))
    }

    /// Requests answered so far by all devices (shared counter).
    pub(crate) fn requests(&self) -> Arc<AtomicU64> {
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
        assert_eq!(fleet.register(0, 0), None);
    }

    #[tokio::test]
    async fn writable_devices_keep_what_is_written() {
        use tokio_modbus::client::Writer as _;
        let fleet = Fleet::start_writable(2, 4).await.unwrap();
        let mut ctx = tcp::connect(fleet.endpoints[1]).await.unwrap();
        ctx.write_single_register(2, 4711).await.unwrap().unwrap();
        ctx.write_multiple_registers(0, &[7, 8])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fleet.register(1, 2), Some(4711));
        assert_eq!(fleet.register(1, 1), Some(8));
        assert_eq!(fleet.register(0, 2), Some(0));
        assert_eq!(fleet.register(1, 4), None);
        let read = ctx.read_holding_registers(0, 4).await.unwrap().unwrap();
        assert_eq!(read, vec![7, 8, 4711, 0]);
        let beyond = ctx.write_single_register(4, 1).await.unwrap();
        assert_eq!(beyond, Err(ExceptionCode::IllegalDataAddress));
    }
}
