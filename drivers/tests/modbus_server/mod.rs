//! A real Modbus device for the integration tests: register storage behind a
//! tokio-modbus server over TCP, RTU on a pseudo-terminal, or RTU over TCP,
//! plus helpers to build specs and wait for events.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldgate_drivers::modbus::{
    ByteOrder, ByteSelect, ModbusConnection, RegisterAddress, RegisterKind, Transport,
};
use fieldgate_drivers::{
    Buses, Connection, DataType, DeviceEvent, DeviceLink, DeviceSpec, PropertyAddress,
    PropertySpec, Readings, Value,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

/// Upper bound for every wait in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// The data tables of the simulated units, and which unit ids stay silent.
#[derive(Default)]
pub(crate) struct Tables {
    pub coils: HashMap<u16, bool>,
    pub discrete: HashMap<u16, bool>,
    pub input: HashMap<u16, u16>,
    pub holding: HashMap<u16, u16>,
    pub silent_units: HashSet<u8>,
    pub requests: usize,
    /// Write requests received (of any function code).
    pub writes: usize,
}

/// Shared storage; every unit id that is not silent sees the same tables.
#[derive(Clone, Default)]
pub(crate) struct Storage(pub Arc<Mutex<Tables>>);

impl Storage {
    pub(crate) fn with(f: impl FnOnce(&mut Tables)) -> Self {
        let s = Storage::default();
        f(&mut s.0.lock().unwrap());
        s
    }

    pub(crate) fn holding(&self, address: u16) -> Option<u16> {
        self.0.lock().unwrap().holding.get(&address).copied()
    }

    pub(crate) fn coil(&self, address: u16) -> Option<bool> {
        self.0.lock().unwrap().coils.get(&address).copied()
    }

    pub(crate) fn requests(&self) -> usize {
        self.0.lock().unwrap().requests
    }

    pub(crate) fn writes(&self) -> usize {
        self.0.lock().unwrap().writes
    }
}

fn range<T: Copy>(map: &HashMap<u16, T>, start: u16, count: u16) -> Result<Vec<T>, ExceptionCode> {
    (start as u32..start as u32 + count as u32)
        .map(|a| {
            map.get(&(a as u16))
                .copied()
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect()
}

fn store<T: Copy>(
    map: &mut HashMap<u16, T>,
    start: u16,
    values: &[T],
) -> Result<(), ExceptionCode> {
    for (i, _) in values.iter().enumerate() {
        if !map.contains_key(&(start + i as u16)) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
    }
    for (i, v) in values.iter().enumerate() {
        map.insert(start + i as u16, *v);
    }
    Ok(())
}

impl Service for Storage {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let mut t = self.0.lock().unwrap();
        if t.silent_units.contains(&req.slave) {
            return ready(Ok(None));
        }
        t.requests += 1;
        if matches!(
            req.request,
            Request::WriteSingleCoil(..)
                | Request::WriteMultipleCoils(..)
                | Request::WriteSingleRegister(..)
                | Request::WriteMultipleRegisters(..)
                | Request::MaskWriteRegister(..)
                | Request::ReadWriteMultipleRegisters(..)
        ) {
            t.writes += 1;
        }
        let r = match req.request {
            Request::ReadCoils(a, n) => range(&t.coils, a, n).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => {
                range(&t.discrete, a, n).map(Response::ReadDiscreteInputs)
            }
            Request::ReadInputRegisters(a, n) => {
                range(&t.input, a, n).map(Response::ReadInputRegisters)
            }
            Request::ReadHoldingRegisters(a, n) => {
                range(&t.holding, a, n).map(Response::ReadHoldingRegisters)
            }
            Request::WriteSingleCoil(a, v) => {
                store(&mut t.coils, a, &[v]).map(|_| Response::WriteSingleCoil(a, v))
            }
            Request::WriteMultipleCoils(a, v) => {
                store(&mut t.coils, a, &v).map(|_| Response::WriteMultipleCoils(a, v.len() as u16))
            }
            Request::WriteSingleRegister(a, v) => {
                store(&mut t.holding, a, &[v]).map(|_| Response::WriteSingleRegister(a, v))
            }
            Request::WriteMultipleRegisters(a, v) => store(&mut t.holding, a, &v)
                .map(|_| Response::WriteMultipleRegisters(a, v.len() as u16)),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        ready(r.map(Some))
    }
}

/// A running server; dropping or `stop()`ping it closes the listener and
/// every connection.
pub(crate) struct Server {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Modbus TCP (MBAP) on `addr` (use port 0 for a free one).
pub(crate) async fn tcp_server(storage: Storage, addr: &str) -> Server {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (count, token) = (connections.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = move |stream, peer| {
            count.fetch_add(1, Ordering::SeqCst);
            let storage = storage.clone();
            async move {
                tokio_modbus::server::tcp::accept_tcp_connection(stream, peer, move |_| {
                    Ok(Some(storage.clone()))
                })
            }
        };
        let _ = server
            .serve_until(
                &on_connected,
                |_| {},
                async move { token.cancelled().await },
            )
            .await;
    });
    Server {
        addr,
        connections,
        stop,
        task,
    }
}

/// RTU framing over TCP on `addr`.
pub(crate) async fn rtu_over_tcp_server(storage: Storage, addr: &str) -> Server {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (count, token) = (connections.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let server = tokio_modbus::server::rtu_over_tcp::Server::new(listener);
        let on_connected = move |stream, peer| {
            count.fetch_add(1, Ordering::SeqCst);
            let storage = storage.clone();
            async move {
                tokio_modbus::server::rtu_over_tcp::accept_tcp_connection(stream, peer, move |_| {
                    Ok(Some(storage.clone()))
                })
            }
        };
        let _ = server
            .serve_until(
                &on_connected,
                |_| {},
                async move { token.cancelled().await },
            )
            .await;
    });
    Server {
        addr,
        connections,
        stop,
        task,
    }
}

/// An RTU server on the master side of a pseudo-terminal pair. Returns the
/// path of the slave side (for the driver) and the slave stream, which must
/// stay open for the pty to stay usable.
pub(crate) fn rtu_server(storage: Storage) -> (String, tokio_serial::SerialStream, JoinHandle<()>) {
    use tokio_serial::SerialPort as _;
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let path = slave.name().unwrap();
    let task = tokio::spawn(async move {
        let _ = tokio_modbus::server::rtu::Server::new(master)
            .serve_forever(storage)
            .await;
    });
    (path, slave, task)
}

/// A register address with the defaults (ABCD, low byte).
pub(crate) fn reg(kind: RegisterKind, address: u16) -> RegisterAddress {
    RegisterAddress {
        kind,
        address,
        bit: None,
        quantity: None,
        byte_order: ByteOrder::Abcd,
        byte: ByteSelect::Low,
    }
}

/// A property.
pub(crate) fn prop(name: &str, data_type: DataType, address: RegisterAddress) -> PropertySpec {
    PropertySpec {
        name: name.into(),
        data_type,
        writable: true,
        address: PropertyAddress::Modbus(address),
    }
}

/// A Modbus device spec.
pub(crate) fn spec(
    name: &str,
    transport: Transport,
    unit_id: u8,
    sync_interval: Duration,
    timeout: Duration,
    properties: Vec<PropertySpec>,
) -> DeviceSpec {
    DeviceSpec {
        name: name.into(),
        sync_interval,
        timeout,
        connection: Connection::Modbus(ModbusConnection {
            transport,
            unit_id,
            max_registers_per_read: 125,
            max_gap: 10,
        }),
        properties: properties.into(),
    }
}

/// A running device: its event stream, command sender and stop switch.
pub(crate) struct Running {
    pub events: fieldgate_drivers::EventReceiver,
    pub commands: fieldgate_drivers::CommandSender,
    pub cancel: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Running {
    /// The next event matching `pred`, skipping others; panics after [`WAIT`].
    pub(crate) async fn wait_for(
        &mut self,
        mut pred: impl FnMut(&DeviceEvent) -> bool,
    ) -> DeviceEvent {
        tokio::time::timeout(WAIT, async {
            loop {
                let ev = self.events.recv().await.expect("device stopped");
                if pred(&ev) {
                    return ev;
                }
            }
        })
        .await
        .expect("timed out waiting for an event")
    }

    /// The next readings with every property readable.
    pub(crate) async fn next_good_readings(&mut self) -> Readings {
        match self
            .wait_for(|e| matches!(e, DeviceEvent::Readings(r) if r.values.iter().all(|(_, v)| v.is_ok())))
            .await
        {
            DeviceEvent::Readings(r) => r,
            _ => unreachable!(),
        }
    }

    /// The next readings of any kind.
    pub(crate) async fn next_readings(&mut self) -> Readings {
        match self
            .wait_for(|e| matches!(e, DeviceEvent::Readings(_)))
            .await
        {
            DeviceEvent::Readings(r) => r,
            _ => unreachable!(),
        }
    }

    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("device did not stop")
            .unwrap();
    }
}

/// Starts `spec` on `buses` with real channels.
pub(crate) fn start(spec: DeviceSpec, buses: &Buses) -> Running {
    let (events_tx, events) = fieldgate_drivers::event_channel(64);
    let (commands, commands_rx) = fieldgate_drivers::command_channel(8);
    let cancel = CancellationToken::new();
    let link = DeviceLink {
        events: events_tx,
        commands: commands_rx,
        cancel: cancel.clone(),
    };
    let buses = buses.clone();
    let task = tokio::spawn(async move { fieldgate_drivers::run_device(spec, link, &buses).await });
    Running {
        events,
        commands,
        cancel,
        task,
    }
}

/// The values of readings by property index (errors as `Err(message)`).
pub(crate) fn values(r: &Readings) -> Vec<Result<Value, String>> {
    let mut v: Vec<_> = r.values.clone();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter()
        .map(|(_, x)| x.map_err(|e| e.message))
        .collect()
}
