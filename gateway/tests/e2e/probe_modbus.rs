//! `fieldgate probe modbus` against a tokio-modbus server holding known
//! values in each byte order: the table shows each value in the column of
//! its order, silent units are reported, `--yaml` prints a skeleton that
//! `fieldgate check` accepts, and nothing is ever written.

use crate::modbus_server;
use crate::support;

use std::collections::HashMap;

use modbus_server::{tcp_server, Storage};

/// The two registers of the big-endian bytes `b` laid out in `order`.
fn image(b: [u8; 4], order: &str) -> [u16; 2] {
    let [a, b_, c, d] = b;
    let bytes = match order {
        "ABCD" => [a, b_, c, d],
        "BADC" => [b_, a, d, c],
        "CDAB" => [c, d, a, b_],
        _ => [d, c, b_, a],
    };
    [
        u16::from_be_bytes([bytes[0], bytes[1]]),
        u16::from_be_bytes([bytes[2], bytes[3]]),
    ]
}

const ORDERS: [&str; 4] = ["ABCD", "BADC", "CDAB", "DCBA"];

/// float32 230.5 at 0/2/4/6, int32 -123456 at 10/12/14/16, uint32
/// 3000000000 at 20/22/24/26 (each in ABCD, BADC, CDAB, DCBA), int16 -5 at 30.
fn storage() -> Storage {
    Storage::with(|t| {
        for (i, o) in ORDERS.iter().enumerate() {
            let a = (i * 2) as u16;
            let [x, y] = image(230.5f32.to_be_bytes(), o);
            t.holding.extend([(a, x), (a + 1, y)]);
            let [x, y] = image((-123456i32).to_be_bytes(), o);
            t.holding.extend([(10 + a, x), (11 + a, y)]);
            let [x, y] = image(3_000_000_000u32.to_be_bytes(), o);
            t.holding.extend([(20 + a, x), (21 + a, y)]);
        }
        for a in [8, 9, 18, 19, 28, 29, 31] {
            t.holding.insert(a, 0);
        }
        t.holding.insert(30, (-5i16) as u16);
        t.silent_units.extend([2u8, 4]);
    })
}

/// The table rows (address → column → cell) of the first block of `out`.
fn table(out: &str) -> HashMap<u32, HashMap<String, String>> {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("addr"));
    let header: Vec<String> = lines
        .next()
        .expect("a table header")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut rows = HashMap::new();
    for l in lines {
        let cells: Vec<&str> = l.split_whitespace().collect();
        let Some(addr) = cells.first().and_then(|a| a.parse::<u32>().ok()) else {
            break;
        };
        rows.insert(
            addr,
            header
                .iter()
                .cloned()
                .zip(cells.iter().map(|c| c.to_string()))
                .collect(),
        );
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_shows_each_value_in_its_byte_order_and_nothing_is_written() {
    let storage = storage();
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let target = format!("tcp://{}", server.addr);
    let t = target.clone();
    let out = tokio::task::spawn_blocking(move || {
        support::fieldgate(&[
            "probe",
            "modbus",
            &t,
            "--units",
            "1-4",
            "--registers",
            "holding:0-31",
            "--timeout",
            "500ms",
        ])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(text.contains("unit 1 answers"), "{text}");
    assert!(text.contains("unit 3 answers"), "{text}");
    assert!(text.contains("no answer from unit(s): 2, 4"), "{text}");
    let rows = table(&text);
    for (i, o) in ORDERS.iter().enumerate() {
        let a = (i * 2) as u32;
        // The value reads right in its own order's column, marked plausible…
        assert_eq!(rows[&a][&format!("float32:{o}")], "230.5*", "{o}: {text}");
        assert_eq!(
            rows[&(10 + a)][&format!("int32:{o}")],
            "-123456",
            "{o}: {text}"
        );
        assert_eq!(
            rows[&(20 + a)][&format!("uint32:{o}")],
            "3000000000",
            "{o}: {text}"
        );
        // …and wrong in the others.
        for other in ORDERS.iter().filter(|x| *x != o) {
            assert_ne!(
                rows[&a][&format!("float32:{other}")],
                "230.5*",
                "{o} as {other}"
            );
            assert_ne!(rows[&(10 + a)][&format!("int32:{other}")], "-123456");
        }
    }
    assert_eq!(rows[&30]["int16"], "-5");
    assert_eq!(rows[&30]["uint16"], "65531");
    assert_eq!(rows[&30]["hex"], "FFFB");

    // --yaml: a skeleton with the float in each order, valid for check.
    let t = target.clone();
    let out = tokio::task::spawn_blocking(move || {
        support::fieldgate(&[
            "probe",
            "modbus",
            &t,
            "--units",
            "1",
            "--registers",
            "holding:0-7",
            "--yaml",
        ])
    })
    .await
    .unwrap();
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{yaml}");
    for (i, o) in ORDERS.iter().enumerate() {
        let line = format!(
            "name: holding_{a}, register: holding, address: {a}, type: float32, byteOrder: {o} }}   # 230.5",
            a = i * 2
        );
        assert!(yaml.contains(&line), "{line}\n{yaml}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("probe.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let check = support::fieldgate(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Read-only, and every register unchanged.
    assert!(storage.requests() > 0);
    assert_eq!(storage.writes(), 0);
    let again = self::storage();
    for a in 0..32u16 {
        assert_eq!(storage.holding(a), again.holding(a), "register {a}");
    }
    server.stop().await;
}

#[test]
fn a_closed_port_is_an_error_not_a_hang() {
    let port = support::free_port();
    let out = support::fieldgate(&[
        "probe",
        "modbus",
        &format!("tcp://127.0.0.1:{port}"),
        "--units",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("probe modbus"));
}
