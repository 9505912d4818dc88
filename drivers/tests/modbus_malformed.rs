//! The Modbus driver against a device that sends malformed answers: short
//! responses, bad CRCs, bad MBAP headers, answers to other transactions and
//! gateway exceptions never panic, and the driver recovers once the answers
//! are right again. The device is a raw RTU-over-TCP or Modbus TCP peer that
//! answers by script.

mod modbus_server;

use std::time::Duration;

use fieldgate_drivers::modbus::{RegisterKind, Transport};
use fieldgate_drivers::{Buses, DataType, DeviceCommand, DeviceEvent, ErrorKind, Value};
use modbus_server::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for b in data {
        crc ^= *b as u16;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn frame(mut pdu: Vec<u8>, good_crc: bool) -> Vec<u8> {
    let crc = crc16(&pdu) ^ if good_crc { 0 } else { 0x5555 };
    pdu.extend(crc.to_le_bytes());
    pdu
}

/// Starts a device with the two properties the scripts answer for (a
/// uint16 at 0 and a uint32 at 1), polled on demand only, 300 ms timeout.
fn start_scripted(name: &str, transport: Transport, buses: &Buses) -> Running {
    let props = vec![
        prop("a", DataType::Uint16, reg(RegisterKind::Holding, 0)),
        prop("b", DataType::Uint32, reg(RegisterKind::Holding, 1)),
    ];
    start(
        spec(
            name,
            transport,
            4,
            Duration::from_secs(3600),
            Duration::from_millis(300),
            props,
        ),
        buses,
    )
}

/// The end of both scripts: a "gateway target device failed to respond"
/// exception takes the device offline, then good answers (7 and 9) bring
/// it back; stops the device.
async fn gone_then_recovered(mut dev: Running) {
    dev.commands.send(DeviceCommand::ReadNow).await.unwrap();
    match dev.wait_for(|e| matches!(e, DeviceEvent::Offline(_))).await {
        DeviceEvent::Offline(e) => {
            assert_eq!(e.kind, ErrorKind::Exception);
            assert_eq!(e.message, "gateway target device failed to respond (11)");
        }
        _ => unreachable!(),
    }
    dev.next_readings().await;

    dev.commands.send(DeviceCommand::ReadNow).await.unwrap();
    dev.wait_for(|e| matches!(e, DeviceEvent::Online)).await;
    let r = dev.next_readings().await;
    assert_eq!(values(&r), vec![Ok(Value::Uint(7)), Ok(Value::Uint(9))]);
    dev.stop().await;
}

/// Answers the n-th FC3 request (of 3 registers at 0) by script.
fn answer(n: usize, slave: u8) -> Vec<u8> {
    match n {
        // Two registers where three were asked for.
        0 => frame(vec![slave, 3, 4, 0, 1, 0, 2], true),
        // A corrupt frame.
        1 => frame(vec![slave, 3, 6, 0, 1, 0, 0, 0, 2], false),
        // "Gateway target device failed to respond".
        2 => frame(vec![slave, 0x83, 0x0B], true),
        _ => frame(vec![slave, 3, 6, 0, 7, 0, 0, 0, 9], true),
    }
}

#[tokio::test]
async fn malformed_answers_are_errors_and_the_device_recovers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut n = 0;
        let mut request = [0u8; 8];
        while stream.read_exact(&mut request).await.is_ok() {
            assert_eq!(&request[1..6], &[3, 0, 0, 0, 3]);
            assert_eq!(crc16(&request[..6]).to_le_bytes(), [request[6], request[7]]);
            if stream.write_all(&answer(n, request[0])).await.is_err() {
                break;
            }
            n += 1;
        }
    });
    let buses = Buses::new();
    let mut dev = start_scripted(
        "odd",
        Transport::RtuOverTcp {
            endpoint: addr.to_string(),
        },
        &buses,
    );

    // Short response: decode errors, but the device answered.
    assert!(matches!(dev.wait_for(|_| true).await, DeviceEvent::Online));
    let r = dev.next_readings().await;
    for (_, v) in &r.values {
        let e = v.clone().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Decode, "{e}");
    }

    // Corrupt frame: the RTU decoder drops it, so no answer comes in time.
    dev.commands.send(DeviceCommand::ReadNow).await.unwrap();
    match dev.wait_for(|_| true).await {
        DeviceEvent::Offline(e) => assert_eq!(e.kind, ErrorKind::Timeout, "{e}"),
        other => panic!("expected offline, got {other:?}"),
    }
    let r = dev.next_readings().await;
    for (_, v) in &r.values {
        assert_eq!(v.clone().unwrap_err().message, "timeout after 300ms");
    }

    gone_then_recovered(dev).await;
    peer.abort();
}

/// Answers the n-th FC3 request (of 3 registers at 0) of Modbus TCP
/// transaction `tid` by script.
fn mbap_answer(n: usize, tid: [u8; 2], unit: u8) -> Vec<u8> {
    let adu = |tid: [u8; 2], protocol: u8, pdu: &[u8]| {
        let mut v = vec![tid[0], tid[1], 0, protocol, 0, pdu.len() as u8 + 1, unit];
        v.extend_from_slice(pdu);
        v
    };
    match n {
        // Two registers where three were asked for.
        0 => adu(tid, 0, &[3, 4, 0, 1, 0, 2]),
        // The answer to another transaction.
        1 => adu(
            [tid[0], tid[1].wrapping_add(1)],
            0,
            &[3, 6, 0, 1, 0, 0, 0, 2],
        ),
        // Not Modbus (protocol id 1).
        2 => adu(tid, 1, &[3, 6, 0, 1, 0, 0, 0, 2]),
        // "Gateway target device failed to respond".
        3 => adu(tid, 0, &[0x83, 0x0B]),
        _ => adu(tid, 0, &[3, 6, 0, 7, 0, 0, 0, 9]),
    }
}

#[tokio::test]
async fn malformed_modbus_tcp_answers_are_errors_and_the_device_recovers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        // The driver dials again after a frame that puts the stream out of
        // step, so the script runs across connections.
        let mut n = 0;
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 12];
            while stream.read_exact(&mut request).await.is_ok() {
                assert_eq!(&request[2..6], &[0, 0, 0, 6], "MBAP header");
                assert_eq!(&request[7..], &[3, 0, 0, 0, 3], "FC3 of 3 at 0");
                let tid = [request[0], request[1]];
                if stream
                    .write_all(&mbap_answer(n, tid, request[6]))
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
            }
        }
    });
    let buses = Buses::new();
    let mut dev = start_scripted(
        "odd-tcp",
        Transport::Tcp {
            endpoint: addr.to_string(),
        },
        &buses,
    );

    // Short response, answer to another transaction, not Modbus: each one
    // is a decode error of every property.
    assert!(matches!(dev.wait_for(|_| true).await, DeviceEvent::Online));
    for case in ["short", "other transaction", "protocol id"] {
        if case != "short" {
            dev.commands.send(DeviceCommand::ReadNow).await.unwrap();
        }
        let r = dev.next_readings().await;
        for (_, v) in &r.values {
            let e = v.clone().unwrap_err();
            assert_eq!(e.kind, ErrorKind::Decode, "{case}: {e}");
        }
    }

    gone_then_recovered(dev).await;
    peer.abort();
}
