//! The Modbus driver over RTU: a tokio-modbus RTU server on one end of a
//! pseudo-terminal pair, the driver on the other; and RTU framing over TCP.

mod modbus_server;

use std::time::Duration;

use fieldgate_drivers::modbus::{ByteOrder, Parity, RegisterKind, SerialSettings, Transport};
use fieldgate_drivers::{Buses, DataType, DeviceCommand, DeviceEvent, ErrorKind, Value};
use modbus_server::*;
use tokio::sync::oneshot;

use RegisterKind::*;

const FAST: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_millis(500);

fn storage() -> Storage {
    Storage::with(|t| {
        t.holding
            .extend([(0, 0x0000), (1, 0x41AC), (2, 0xFFFE), (3, 0x0000)]);
        t.coils.insert(5, true);
        t.input.insert(7, 0x0102);
    })
}

fn properties() -> Vec<fieldgate_drivers::PropertySpec> {
    let mut cdab = reg(Holding, 0);
    cdab.byte_order = ByteOrder::Cdab;
    vec![
        prop("temperature", DataType::Float32, cdab),
        prop("offset", DataType::Int16, reg(Holding, 2)),
        prop("setpoint", DataType::Uint16, reg(Holding, 3)),
        prop("pump", DataType::Bool, reg(Coil, 5)),
        prop("raw", DataType::Bytes, {
            let mut a = reg(Input, 7);
            a.quantity = Some(1);
            a
        }),
    ]
}

fn expected() -> Vec<Result<Value, String>> {
    vec![
        Ok(Value::Float(21.5)),
        Ok(Value::Int(-2)),
        Ok(Value::Uint(0)),
        Ok(Value::Bool(true)),
        Ok(Value::Bytes(vec![1, 2])),
    ]
}

fn serial(port: String) -> Transport {
    Transport::Rtu(SerialSettings {
        port,
        baud_rate: 19200,
        data_bits: 8,
        parity: Parity::None,
        stop_bits: 1,
    })
}

async fn write_and_read_back(dev: &mut Running, storage: &Storage) {
    let (reply, outcome) = oneshot::channel();
    dev.commands
        .send(DeviceCommand::Write {
            writes: vec![(2, Value::Uint(1234)), (3, Value::Bool(false))],
            reply,
        })
        .await
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, outcome).await.unwrap().unwrap();
    assert_eq!(outcome.applied, 2);
    assert!(outcome.failed.is_none());
    assert_eq!(storage.holding(3), Some(1234));
    assert_eq!(storage.coil(5), Some(false));
    let r = dev
        .wait_for(|e| {
            matches!(e, DeviceEvent::Readings(r) if r.cause == fieldgate_drivers::ReadCause::Forced)
        })
        .await;
    let DeviceEvent::Readings(r) = r else {
        unreachable!()
    };
    let v = values(&r);
    assert_eq!(v[2], Ok(Value::Uint(1234)));
    assert_eq!(v[3], Ok(Value::Bool(false)));
}

#[tokio::test]
async fn rtu_on_a_serial_line_reads_and_writes() {
    let storage = storage();
    let (path, _slave, server) = rtu_server(storage.clone());
    let buses = Buses::new();
    let mut dev = start(
        spec("meter", serial(path), 1, FAST, TIMEOUT, properties()),
        &buses,
    );
    dev.wait_for(|e| matches!(e, DeviceEvent::Online)).await;
    assert_eq!(values(&dev.next_good_readings().await), expected());
    write_and_read_back(&mut dev, &storage).await;
    dev.stop().await;
    server.abort();
}

#[tokio::test]
async fn a_silent_unit_on_a_shared_serial_line_does_not_stall_its_neighbour() {
    let storage = storage();
    storage.0.lock().unwrap().silent_units.insert(9);
    let (path, _slave, server) = rtu_server(storage.clone());
    let buses = Buses::new();
    let mut healthy = start(
        spec(
            "meter",
            serial(path.clone()),
            1,
            FAST,
            TIMEOUT,
            properties(),
        ),
        &buses,
    );
    let mut dead = start(
        spec(
            "gone",
            serial(path),
            9,
            FAST,
            Duration::from_millis(200),
            properties(),
        ),
        &buses,
    );
    match dead
        .wait_for(|e| matches!(e, DeviceEvent::Offline(_)))
        .await
    {
        DeviceEvent::Offline(e) => assert_eq!(e.kind, ErrorKind::Timeout),
        _ => unreachable!(),
    }
    for _ in 0..10 {
        assert_eq!(values(&healthy.next_readings().await), expected());
    }
    // Writes still get through between the polls of both units.
    write_and_read_back(&mut healthy, &storage).await;
    healthy.stop().await;
    dead.stop().await;
    server.abort();
}

#[tokio::test]
async fn rtu_framing_over_tcp_reads_writes_and_reconnects() {
    let storage = storage();
    let server = rtu_over_tcp_server(storage.clone(), "127.0.0.1:0").await;
    let addr = server.addr;
    let transport = Transport::RtuOverTcp {
        endpoint: addr.to_string(),
    };
    let buses = Buses::new();
    let mut dev = start(
        spec("bridge", transport, 1, FAST, TIMEOUT, properties()),
        &buses,
    );
    dev.wait_for(|e| matches!(e, DeviceEvent::Online)).await;
    assert_eq!(values(&dev.next_good_readings().await), expected());
    write_and_read_back(&mut dev, &storage).await;
    server.stop().await;
    dev.wait_for(|e| matches!(e, DeviceEvent::Offline(_))).await;
    let server = rtu_over_tcp_server(storage.clone(), &addr.to_string()).await;
    dev.wait_for(|e| matches!(e, DeviceEvent::Online)).await;
    dev.next_good_readings().await;
    dev.stop().await;
    server.stop().await;
}
