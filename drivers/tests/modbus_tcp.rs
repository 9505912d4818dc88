//! The Modbus driver against a real tokio-modbus TCP server: decoding,
//! writes, exceptions, shared endpoints, losing and finding the server.

mod modbus_server;

use std::time::Duration;

use fieldgate_drivers::modbus::{describe_plan, ByteOrder, ByteSelect, RegisterKind, Transport};
use fieldgate_drivers::{
    Buses, DataType, DeviceCommand, DeviceEvent, ErrorKind, ReadCause, Value, WriteOutcome,
};
use modbus_server::*;
use tokio::sync::oneshot;

use RegisterKind::*;

const FAST: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_millis(500);

fn tcp(addr: std::net::SocketAddr) -> Transport {
    Transport::Tcp {
        endpoint: addr.to_string(),
    }
}

/// Holding 0..=25, coils 0..=1, discrete 0, input 30 with known images.
fn sample_storage() -> Storage {
    Storage::with(|t| {
        let holding: [(u16, u16); 17] = [
            (0, 0x41AC), // float32 21.5 ABCD
            (1, 0x0000),
            (2, 0x0000), // float32 21.5 CDAB
            (3, 0x41AC),
            (4, 0xFFFE), // int16 -2
            (5, 0x7856), // uint32 0x12345678 DCBA
            (6, 0x3412),
            (10, 0x4142), // "ABC"
            (11, 0x4320),
            (12, 0x0000),
            (13, 0x0000),
            (20, 0b1000), // bit 3
            (21, 0x80FF), // int8 high byte = -128
            (22, 0x0201), // int64 0x0102030405060708 BADC
            (23, 0x0403),
            (24, 0x0605),
            (25, 0x0807),
        ];
        t.holding.extend(holding);
        for a in 7..10 {
            t.holding.insert(a, 0);
        }
        for a in 14..20 {
            t.holding.insert(a, 0);
        }
        t.coils.extend([(0, true), (1, false)]);
        t.discrete.insert(0, true);
        t.input.insert(30, 4321);
    })
}

fn sample_properties() -> Vec<fieldgate_drivers::PropertySpec> {
    let mut cdab = reg(Holding, 2);
    cdab.byte_order = ByteOrder::Cdab;
    let mut dcba = reg(Holding, 5);
    dcba.byte_order = ByteOrder::Dcba;
    let mut text = reg(Holding, 10);
    text.quantity = Some(4);
    let mut bit = reg(Holding, 20);
    bit.bit = Some(3);
    let mut high = reg(Holding, 21);
    high.byte = ByteSelect::High;
    let mut badc = reg(Holding, 22);
    badc.byte_order = ByteOrder::Badc;
    vec![
        prop("f_abcd", DataType::Float32, reg(Holding, 0)),
        prop("f_cdab", DataType::Float32, cdab),
        prop("i16", DataType::Int16, reg(Holding, 4)),
        prop("u32_dcba", DataType::Uint32, dcba),
        prop("text", DataType::String, text),
        prop("alarm", DataType::Bool, bit),
        prop("i8_high", DataType::Int8, high),
        prop("i64_badc", DataType::Int64, badc),
        prop("pump", DataType::Bool, reg(Coil, 0)),
        prop("valve", DataType::Bool, reg(Coil, 1)),
        prop("door", DataType::Bool, reg(DiscreteInput, 0)),
        prop("count", DataType::Uint16, reg(Input, 30)),
    ]
}

fn sample_values() -> Vec<Result<Value, String>> {
    vec![
        Ok(Value::Float(21.5)),
        Ok(Value::Float(21.5)),
        Ok(Value::Int(-2)),
        Ok(Value::Uint(0x12345678)),
        Ok(Value::String("ABC".into())),
        Ok(Value::Bool(true)),
        Ok(Value::Int(-128)),
        Ok(Value::Int(0x0102030405060708)),
        Ok(Value::Bool(true)),
        Ok(Value::Bool(false)),
        Ok(Value::Bool(true)),
        Ok(Value::Uint(4321)),
    ]
}

const NEVER: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn decodes_every_type_and_order_with_a_merged_plan() {
    let storage = sample_storage();
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    // A long interval: only the first poll runs on its own.
    let spec = spec(
        "plc",
        tcp(server.addr),
        1,
        NEVER,
        TIMEOUT,
        sample_properties(),
    );
    let plan = describe_plan(&spec);
    assert_eq!(
        plan[0],
        "read plan: 4 requests per cycle (holding 0..=25, coil 0..=1, discreteInput 0..=0, input 30..=30)"
    );
    assert_eq!(plan.len(), 5);
    assert!(
        plan[1].contains("FC3 holding 0..=25 (26 registers): f_abcd, f_cdab"),
        "{}",
        plan[1]
    );

    let buses = Buses::new();
    let mut dev = start(spec, &buses);
    assert!(matches!(dev.wait_for(|_| true).await, DeviceEvent::Online));
    let r = dev.next_readings().await;
    assert_eq!(r.cause, ReadCause::Poll);
    assert!(r.duration.is_some());
    assert_eq!(values(&r), sample_values());
    // One request per planned read, not one per property.
    assert_eq!(storage.requests(), 4);

    dev.commands.send(DeviceCommand::ReadNow).await.unwrap();
    let r = dev.next_readings().await;
    assert_eq!(r.cause, ReadCause::Forced);
    assert_eq!(values(&r), sample_values());
    assert_eq!(storage.requests(), 8);
    dev.stop().await;
    server.stop().await;
}

async fn write(dev: &Running, writes: Vec<(usize, Value)>) -> WriteOutcome {
    let (reply, outcome) = oneshot::channel();
    dev.commands
        .send(DeviceCommand::Write { writes, reply })
        .await
        .unwrap();
    tokio::time::timeout(WAIT, outcome).await.unwrap().unwrap()
}

#[tokio::test]
async fn writes_reach_the_server_and_are_read_back() {
    let storage = sample_storage();
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let mut props = sample_properties();
    props[2].writable = false;
    let spec = spec("plc", tcp(server.addr), 1, NEVER, TIMEOUT, props);
    let buses = Buses::new();
    let mut dev = start(spec, &buses);
    dev.next_good_readings().await;

    let outcome = write(
        &dev,
        vec![
            (0, Value::Float(-1.5)),         // FC16, ABCD
            (3, Value::Uint(0xA1B2C3D4)),    // FC16, DCBA
            (4, Value::String("hi".into())), // FC16, padded
            (5, Value::Bool(false)),         // read-modify-write of bit 3
            (6, Value::Int(5)),              // high byte only
            (8, Value::Bool(false)),         // FC5
            (9, Value::Bool(true)),          // FC5
        ],
    )
    .await;
    assert_eq!(outcome.applied, 7);
    assert!(outcome.failed.is_none());
    assert_eq!(storage.holding(0), Some(0xBFC0));
    assert_eq!(storage.holding(1), Some(0x0000));
    assert_eq!(storage.holding(5), Some(0xD4C3));
    assert_eq!(storage.holding(6), Some(0xB2A1));
    assert_eq!(
        (10..14)
            .map(|a| storage.holding(a).unwrap())
            .collect::<Vec<_>>(),
        vec![0x6869, 0, 0, 0]
    );
    assert_eq!(storage.holding(20), Some(0));
    assert_eq!(storage.holding(21), Some(0x05FF));
    assert_eq!(storage.coil(0), Some(false));
    assert_eq!(storage.coil(1), Some(true));

    let r = dev.next_readings().await;
    assert_eq!(r.cause, ReadCause::Forced);
    let v = values(&r);
    assert_eq!(v[0], Ok(Value::Float(-1.5)));
    assert_eq!(v[3], Ok(Value::Uint(0xA1B2C3D4)));
    assert_eq!(v[4], Ok(Value::String("hi".into())));
    assert_eq!(v[5], Ok(Value::Bool(false)));
    assert_eq!(v[6], Ok(Value::Int(5)));
    assert_eq!(v[8], Ok(Value::Bool(false)));
    assert_eq!(v[9], Ok(Value::Bool(true)));

    // Stops at the first refusal; later writes are not attempted.
    let outcome = write(
        &dev,
        vec![
            (0, Value::Float(2.0)),
            (2, Value::Int(7)), // not writable
            (8, Value::Bool(true)),
        ],
    )
    .await;
    assert_eq!(outcome.applied, 1);
    let (at, err) = outcome.failed.unwrap();
    assert_eq!((at, err.kind), (1, ErrorKind::Rejected));
    assert_eq!(storage.coil(0), Some(false));
    assert_eq!(storage.holding(0), Some(0x4000));
    dev.next_readings().await;
    dev.stop().await;
    server.stop().await;
}

fn check_exception_readings(r: &fieldgate_drivers::Readings) {
    let v = values(r);
    assert_eq!(v[3], Err("illegal data address (2)".to_string()));
    let err = r.values.iter().find(|(i, _)| *i == 3).unwrap().1.clone();
    assert_eq!(err.unwrap_err().kind, ErrorKind::Exception);
    for a in [0usize, 1, 2, 4, 5] {
        assert_eq!(v[a], Ok(Value::Uint(a as u64 * 10)));
    }
}

#[tokio::test]
async fn an_exception_errors_only_the_refusing_property() {
    let storage = Storage::with(|t| {
        for a in [0u16, 1, 2, 4, 5] {
            t.holding.insert(a, a * 10);
        }
        // Address 3 does not exist: "illegal data address".
    });
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let props = (0..6)
        .map(|a| prop(&format!("r{a}"), DataType::Uint16, reg(Holding, a)))
        .collect();
    let spec = spec("plc", tcp(server.addr), 1, NEVER, TIMEOUT, props);
    assert!(describe_plan(&spec)[0].starts_with("read plan: 1 request per cycle"));
    let buses = Buses::new();
    let mut dev = start(spec, &buses);
    assert!(matches!(dev.wait_for(|_| true).await, DeviceEvent::Online));
    let DeviceEvent::Readings(r) = dev.wait_for(|_| true).await else {
        panic!("expected readings");
    };
    check_exception_readings(&r);
    // 0..=5 refused, then 0..=2 ok, 3..=5 refused, 3 refused, 4..=5 ok.
    assert_eq!(storage.requests(), 5);
    // The split is remembered: the next cycle makes three requests.
    dev.commands.send(DeviceCommand::ReadNow).await.unwrap();
    let DeviceEvent::Readings(r) = dev.wait_for(|_| true).await else {
        panic!("expected readings, the device must stay online");
    };
    check_exception_readings(&r);
    assert_eq!(storage.requests(), 8);
    dev.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_silent_unit_does_not_stall_its_neighbour_on_a_shared_endpoint() {
    let storage = Storage::with(|t| {
        t.holding.insert(0, 7);
        t.silent_units.insert(2);
    });
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let buses = Buses::new();
    let props = || vec![prop("r0", DataType::Uint16, reg(Holding, 0))];
    let mut healthy = start(
        spec("healthy", tcp(server.addr), 1, FAST, TIMEOUT, props()),
        &buses,
    );
    let mut dead = start(
        spec(
            "dead",
            tcp(server.addr),
            2,
            FAST,
            Duration::from_millis(300),
            props(),
        ),
        &buses,
    );
    match dead
        .wait_for(|e| matches!(e, DeviceEvent::Offline(_)))
        .await
    {
        DeviceEvent::Offline(e) => {
            assert_eq!(e.kind, ErrorKind::Timeout);
            assert_eq!(e.message, "timeout after 300ms");
        }
        _ => unreachable!(),
    }
    // The healthy unit keeps getting polled while its neighbour is dead.
    for _ in 0..20 {
        let r = healthy.next_readings().await;
        assert_eq!(values(&r), vec![Ok(Value::Uint(7))]);
    }
    // Both units share one bus: one TCP connection.
    assert_eq!(server.connections(), 1);
    healthy.stop().await;
    dead.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn server_lost_goes_offline_and_comes_back_online() {
    let storage = sample_storage();
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let addr = server.addr;
    let buses = Buses::new();
    let mut dev = start(
        spec("plc", tcp(addr), 1, FAST, TIMEOUT, sample_properties()),
        &buses,
    );
    assert_eq!(values(&dev.next_good_readings().await), sample_values());
    server.stop().await;
    match dev.wait_for(|e| matches!(e, DeviceEvent::Offline(_))).await {
        DeviceEvent::Offline(e) => assert_eq!(e.kind, ErrorKind::Io, "{e}"),
        _ => unreachable!(),
    }
    let server = tcp_server(storage.clone(), &addr.to_string()).await;
    dev.wait_for(|e| matches!(e, DeviceEvent::Online)).await;
    assert_eq!(values(&dev.next_good_readings().await), sample_values());
    dev.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn unreachable_at_start_retries_until_the_server_appears() {
    // A free port with nothing listening on it.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let buses = Buses::new();
    let mut dev = start(
        spec("plc", tcp(addr), 1, FAST, TIMEOUT, sample_properties()),
        &buses,
    );
    match dev.wait_for(|_| true).await {
        DeviceEvent::Offline(e) => {
            assert_eq!(e.kind, ErrorKind::Io);
            assert!(e.message.contains(&addr.to_string()), "{e}");
        }
        other => panic!("expected offline, got {other:?}"),
    }
    let server = tcp_server(sample_storage(), &addr.to_string()).await;
    dev.wait_for(|e| matches!(e, DeviceEvent::Online)).await;
    assert_eq!(values(&dev.next_good_readings().await), sample_values());
    assert_eq!(server.connections(), 1);
    dev.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_bus_closes_with_its_last_device() {
    let storage = sample_storage();
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let buses = Buses::new();
    let mut a = start(
        spec("a", tcp(server.addr), 1, FAST, TIMEOUT, sample_properties()),
        &buses,
    );
    a.next_good_readings().await;
    a.stop().await;
    // A new device opens a new bus (a second connection).
    let mut b = start(
        spec("b", tcp(server.addr), 1, FAST, TIMEOUT, sample_properties()),
        &buses,
    );
    b.next_good_readings().await;
    assert_eq!(server.connections(), 2);
    b.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_write_the_device_refuses_stops_the_batch() {
    let storage = Storage::with(|t| {
        t.holding.insert(0, 1);
    });
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let props = vec![
        prop("ok", DataType::Uint16, reg(Holding, 0)),
        prop("missing", DataType::Uint16, reg(Holding, 50)),
    ];
    let buses = Buses::new();
    let mut dev = start(
        spec("plc", tcp(server.addr), 1, NEVER, TIMEOUT, props),
        &buses,
    );
    dev.next_readings().await;
    let outcome = write(
        &dev,
        vec![
            (0, Value::Uint(5)),
            (1, Value::Uint(6)),
            (0, Value::Uint(7)),
        ],
    )
    .await;
    assert_eq!(outcome.applied, 1);
    let (at, err) = outcome.failed.unwrap();
    assert_eq!(at, 1);
    assert_eq!(err.kind, ErrorKind::Exception);
    assert_eq!(err.message, "illegal data address (2)");
    assert_eq!(storage.holding(0), Some(5));
    let r = dev.next_readings().await;
    assert_eq!(r.cause, ReadCause::Forced);
    assert_eq!(
        values(&r),
        vec![
            Ok(Value::Uint(5)),
            Err("illegal data address (2)".to_string())
        ]
    );
    dev.stop().await;
    server.stop().await;
}
