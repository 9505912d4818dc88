//! `fieldgate probe modbus TARGET [--units 1-247] [--registers holding:0-99]
//! [--yaml]`: which unit ids answer, and each register decoded as
//! int16/uint16/int32/uint32/float32 in all four byte orders side by side,
//! so the right `type` and `byteOrder` can be picked. Read-only.

use std::fmt::Write as _;
use std::time::Duration;

use fieldgate_drivers::modbus::probe::{self, Block, ProbeReport, Range};
use fieldgate_drivers::modbus::{Parity, RegisterKind, SerialSettings, Transport};

/// The four orders, in table order.
pub const ORDERS: [&str; 4] = ["ABCD", "BADC", "CDAB", "DCBA"];

/// Why a `probe modbus` argument cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeArgError {
    /// `rtu:` without a port.
    #[error("rtu: needs a serial port, e.g. rtu:/dev/ttyUSB0?baud=9600")]
    NoSerialPort,
    /// A serial setting whose value does not parse.
    #[error("invalid `{setting}` in {target}")]
    BadSetting {
        /// `key=value` as written.
        setting: String,
        /// The whole target.
        target: String,
    },
    /// A parity other than none, even, odd.
    #[error("invalid `{setting}` in {target}: parity is none, even or odd")]
    BadParity {
        /// `parity=…` as written.
        setting: String,
        /// The whole target.
        target: String,
    },
    /// A serial setting fieldgate does not know.
    #[error("unknown `{key}` in {target}; allowed: baud, parity, dataBits, stopBits")]
    UnknownSetting {
        /// The key as written.
        key: String,
        /// The whole target.
        target: String,
    },
    /// Not a TCP, RTU-over-TCP or RTU target.
    #[error("`{0}`: write tcp://HOST:PORT, rtu+tcp://HOST:PORT or rtu:/dev/ttyUSB0?baud=9600")]
    BadTarget(String),
    /// A unit range that does not parse or runs backwards.
    #[error("invalid unit range `{0}`: use ids 0-255, e.g. 1-247 or 1,3")]
    BadUnits(String),
    /// `--units` lists nothing.
    #[error("no unit ids given")]
    NoUnits,
    /// A register range that does not parse.
    #[error("invalid register range `{0}`: write holding:0-99 or input:0-9")]
    BadRegisters(String),
    /// A register table other than holding or input.
    #[error(
        "invalid register range `{0}`: write holding:0-99 or input:0-9; tables: holding, input"
    )]
    BadTable(String),
    /// A range that runs backwards or spans 2000 registers or more.
    #[error("invalid register range `{0}`: write holding:0-99 or input:0-9: at most 2000 registers per range")]
    TooManyRegisters(String),
    /// `--registers` lists nothing.
    #[error("no register range given")]
    NoRegisters,
}

/// Parses `tcp://HOST[:PORT]`, `rtu+tcp://HOST:PORT` or
/// `rtu:PORT?baud=9600&parity=none&dataBits=8&stopBits=1`.
pub fn parse_target(s: &str) -> Result<Transport, ProbeArgError> {
    let with_port = |hp: &str| -> String {
        if hp
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hp.to_string()
        } else {
            format!("{hp}:502")
        }
    };
    if let Some(hp) = s.strip_prefix("tcp://") {
        return Ok(Transport::Tcp {
            endpoint: with_port(hp.trim_end_matches('/')),
        });
    }
    if let Some(hp) = s.strip_prefix("rtu+tcp://") {
        return Ok(Transport::RtuOverTcp {
            endpoint: with_port(hp.trim_end_matches('/')),
        });
    }
    if let Some(rest) = s.strip_prefix("rtu:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (port, query) = rest.split_once('?').unwrap_or((rest, ""));
        if port.is_empty() {
            return Err(ProbeArgError::NoSerialPort);
        }
        let mut settings = SerialSettings {
            port: port.to_string(),
            baud_rate: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        };
        for kv in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let bad = || ProbeArgError::BadSetting {
                setting: kv.to_owned(),
                target: s.to_owned(),
            };
            match k {
                "baud" | "baudRate" => settings.baud_rate = v.parse().map_err(|_| bad())?,
                "dataBits" => settings.data_bits = v.parse().map_err(|_| bad())?,
                "stopBits" => settings.stop_bits = v.parse().map_err(|_| bad())?,
                "parity" => {
                    settings.parity = match v {
                        "none" => Parity::None,
                        "even" => Parity::Even,
                        "odd" => Parity::Odd,
                        _ => {
                            return Err(ProbeArgError::BadParity {
                                setting: kv.to_owned(),
                                target: s.to_owned(),
                            })
                        }
                    }
                }
                _ => {
                    return Err(ProbeArgError::UnknownSetting {
                        key: k.to_owned(),
                        target: s.to_owned(),
                    })
                }
            }
        }
        return Ok(Transport::Rtu(settings));
    }
    Err(ProbeArgError::BadTarget(s.to_owned()))
}

/// Parses `1-247` or `1,3,10-12` into unit ids.
pub fn parse_units(s: &str) -> Result<Vec<u8>, ProbeArgError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let bad = || ProbeArgError::BadUnits(part.to_owned());
        let a: u8 = a.trim().parse().map_err(|_| bad())?;
        let b: u8 = b.trim().parse().map_err(|_| bad())?;
        if a > b {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    out.dedup();
    if out.is_empty() {
        return Err(ProbeArgError::NoUnits);
    }
    Ok(out)
}

/// Parses `holding:0-99` (or `input:…`, a single address, several separated by commas).
pub fn parse_registers(s: &str) -> Result<Vec<Range>, ProbeArgError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || ProbeArgError::BadRegisters(part.to_owned());
        let (kind, span) = part.split_once(':').ok_or_else(bad)?;
        let kind = match kind {
            "holding" => RegisterKind::Holding,
            "input" => RegisterKind::Input,
            _ => return Err(ProbeArgError::BadTable(part.to_owned())),
        };
        let (a, b) = span.split_once('-').unwrap_or((span, span));
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first > last || last - first >= 2000 {
            return Err(ProbeArgError::TooManyRegisters(part.to_owned()));
        }
        out.push(Range { kind, first, last });
    }
    if out.is_empty() {
        return Err(ProbeArgError::NoRegisters);
    }
    Ok(out)
}

/// The 4 bytes of registers `hi`, `lo` as the big-endian value, for `order`.
fn bytes32(a: u16, b: u16, order: &str) -> [u8; 4] {
    let [a0, a1] = a.to_be_bytes();
    let [b0, b1] = b.to_be_bytes();
    match order {
        "ABCD" => [a0, a1, b0, b1],
        "BADC" => [a1, a0, b1, b0],
        "CDAB" => [b0, b1, a0, a1],
        _ => [b1, b0, a1, a0],
    }
}

/// A float32 that looks like a measurement: finite, not denormal, and of a
/// magnitude field values have (or exactly zero).
pub fn plausible(f: f32) -> bool {
    f == 0.0 || (f.is_normal() && (1e-3..1e7).contains(&f.abs()))
}

fn fmt_float(f: f32) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else {
            "inf".into()
        };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-3..1e7).contains(&a) {
        return format!("{f:.3e}");
    }
    let s = format!("{f:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn kind_name(k: RegisterKind) -> &'static str {
    match k {
        RegisterKind::Input => "input",
        RegisterKind::Holding => "holding",
        RegisterKind::Coil => "coil",
        RegisterKind::DiscreteInput => "discreteInput",
    }
}

/// The table of one block.
pub fn table(block: &Block) -> String {
    let mut out = String::new();
    let mut header = vec![
        "addr".to_string(),
        "hex".into(),
        "int16".into(),
        "uint16".into(),
    ];
    for t in ["float32", "int32", "uint32"] {
        for o in ORDERS {
            header.push(format!("{t}:{o}"));
        }
    }
    let mut rows = vec![header];
    for (i, v) in block.values.iter().enumerate() {
        let addr = u32::from(block.range.first) + i as u32;
        let mut row = vec![addr.to_string()];
        match v {
            None => {
                row.extend(std::iter::repeat_n("--".to_string(), 15));
            }
            Some(v) => {
                row.push(format!("{v:04X}"));
                row.push((*v as i16).to_string());
                row.push(v.to_string());
                let next = block.values.get(i + 1).copied().flatten();
                for t in 0..3 {
                    for o in ORDERS {
                        row.push(match next {
                            None => "--".into(),
                            Some(n) => {
                                let b = bytes32(*v, n, o);
                                match t {
                                    0 => {
                                        let f = f32::from_be_bytes(b);
                                        let mut s = fmt_float(f);
                                        if plausible(f) && f != 0.0 {
                                            s.push('*');
                                        }
                                        s
                                    }
                                    1 => i32::from_be_bytes(b).to_string(),
                                    _ => u32::from_be_bytes(b).to_string(),
                                }
                            }
                        });
                    }
                }
            }
        }
        rows.push(row);
    }
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:>w$}", w = widths[c]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// The report as text: units, then each block's table.
pub fn render(target: &str, report: &ProbeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "probe {target} (read-only)");
    if report.units.is_empty() {
        let _ = writeln!(out, "no unit answered");
    }
    for u in &report.units {
        let _ = writeln!(out, "\nunit {} answers", u.unit);
        for b in &u.blocks {
            let _ = writeln!(
                out,
                "\n{} {}-{} (unit {}): 32-bit columns combine a register with the next one; * = plausible float32",
                kind_name(b.range.kind),
                b.range.first,
                b.range.last,
                u.unit
            );
            out.push_str(&table(b));
            for n in &b.notes {
                let _ = writeln!(out, "  note: {n}");
            }
        }
    }
    if !report.silent.is_empty() {
        let _ = writeln!(out, "\nno answer from unit(s): {}", ids(&report.silent));
    }
    if !report.not_tried.is_empty() {
        let _ = writeln!(
            out,
            "not tried (total time bound reached): {}",
            ids(&report.not_tried)
        );
    }
    out
}

/// `1-5, 9` from sorted ids.
fn ids(v: &[u8]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// A device skeleton: plausible floats as float32 with the order that makes
/// them plausible (ABCD first), other registers as uint16/int16.
pub fn yaml(transport: &Transport, report: &ProbeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by `fieldgate probe modbus`: a skeleton. Rename the properties, check each\n# type and byteOrder against the device's register map, drop what you do not need."
    );
    let _ = writeln!(out, "devices:");
    for u in &report.units {
        let _ = writeln!(out, "  - name: unit-{}", u.unit);
        let _ = writeln!(out, "    driver: modbus");
        let _ = writeln!(out, "    protocol:");
        match transport {
            Transport::Tcp { endpoint } => {
                let _ = writeln!(out, "      tcp: {{ endpoint: \"{endpoint}\" }}");
            }
            Transport::RtuOverTcp { endpoint } => {
                let _ = writeln!(out, "      rtuOverTcp: {{ endpoint: \"{endpoint}\" }}");
            }
            Transport::Rtu(s) => {
                let _ = writeln!(
                    out,
                    "      rtu: {{ port: \"{}\", baudRate: {}, dataBits: {}, parity: {}, stopBits: {} }}",
                    s.port,
                    s.baud_rate,
                    s.data_bits,
                    match s.parity {
                        Parity::None => "none",
                        Parity::Even => "even",
                        Parity::Odd => "odd",
                    },
                    s.stop_bits
                );
            }
        }
        let _ = writeln!(out, "      unitId: {}", u.unit);
        let _ = writeln!(out, "    properties:");
        let mut any = false;
        for b in &u.blocks {
            let kind = kind_name(b.range.kind);
            let mut i = 0;
            while i < b.values.len() {
                let addr = u32::from(b.range.first) + i as u32;
                let Some(v) = b.values[i] else {
                    i += 1;
                    continue;
                };
                let next = b.values.get(i + 1).copied().flatten();
                let float = next.and_then(|n| {
                    ["ABCD", "CDAB", "BADC", "DCBA"].into_iter().find_map(|o| {
                        let f = f32::from_be_bytes(bytes32(v, n, o));
                        (plausible(f) && f != 0.0).then_some((o, f))
                    })
                });
                any = true;
                match float {
                    Some((o, f)) => {
                        let _ = writeln!(
                            out,
                            "      - {{ name: {kind}_{addr}, register: {kind}, address: {addr}, type: float32, byteOrder: {o} }}   # {}",
                            fmt_float(f)
                        );
                        i += 2;
                    }
                    None => {
                        let t = if v & 0x8000 != 0 { "int16" } else { "uint16" };
                        let shown = if t == "int16" {
                            (v as i16).to_string()
                        } else {
                            v.to_string()
                        };
                        let _ = writeln!(
                            out,
                            "      - {{ name: {kind}_{addr}, register: {kind}, address: {addr}, type: {t} }}   # {shown}"
                        );
                        i += 1;
                    }
                }
            }
        }
        if !any {
            let _ = writeln!(out, "      []");
        }
    }
    if report.units.is_empty() {
        let _ = writeln!(out, "  []   # no unit answered");
    }
    out
}

/// Options of `fieldgate probe modbus`.
#[derive(Debug, Clone)]
pub struct Options {
    /// `tcp://…` or `rtu:…`.
    pub target: String,
    /// Unit ids, e.g. `1-247`.
    pub units: String,
    /// Ranges, e.g. `holding:0-99`.
    pub registers: Vec<String>,
    /// Print a device skeleton instead of the table.
    pub yaml: bool,
    /// Per-unit (and per-request) timeout.
    pub timeout: Duration,
    /// Bound on the whole scan.
    pub total: Duration,
}

/// Runs the probe; the exit code.
pub fn run(o: Options) -> i32 {
    let parsed = (|| -> Result<(Transport, Vec<u8>, Vec<Range>), ProbeArgError> {
        let t = parse_target(&o.target)?;
        let units = parse_units(&o.units)?;
        let mut ranges = Vec::new();
        for r in &o.registers {
            ranges.extend(parse_registers(r)?);
        }
        Ok((t, units, ranges))
    })();
    let (transport, units, ranges) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fieldgate probe modbus: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fieldgate probe modbus: {e}");
            return 1;
        }
    };
    match rt.block_on(probe::probe(
        &transport, &units, &ranges, o.timeout, o.total,
    )) {
        Ok(report) => {
            if o.yaml {
                print!("{}", yaml(&transport, &report));
            } else {
                print!("{}", render(&o.target, &report));
            }
            if report.units.is_empty() {
                3
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("fieldgate probe modbus: {}: {e}", o.target);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_units_and_ranges_parse() {
        assert_eq!(
            parse_target("tcp://127.0.0.1:5020").unwrap(),
            Transport::Tcp {
                endpoint: "127.0.0.1:5020".into()
            }
        );
        assert_eq!(
            parse_target("tcp://plc").unwrap(),
            Transport::Tcp {
                endpoint: "plc:502".into()
            }
        );
        match parse_target("rtu:/dev/ttyUSB0?baud=19200&parity=even").unwrap() {
            Transport::Rtu(s) => {
                assert_eq!(
                    (s.port.as_str(), s.baud_rate, s.parity),
                    ("/dev/ttyUSB0", 19200, Parity::Even)
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_target("udp://x").is_err());
        assert_eq!(parse_units("1-3,7").unwrap(), vec![1, 2, 3, 7]);
        assert!(parse_units("3-1").is_err());
        let r = parse_registers("holding:0-99,input:5").unwrap();
        assert_eq!(
            r[0],
            Range {
                kind: RegisterKind::Holding,
                first: 0,
                last: 99
            }
        );
        assert_eq!(
            r[1],
            Range {
                kind: RegisterKind::Input,
                first: 5,
                last: 5
            }
        );
        assert!(parse_registers("coil:0-1").is_err());
    }

    #[test]
    fn every_order_decodes_its_own_image() {
        let v = 230.5f32.to_be_bytes();
        let images = [
            ("ABCD", [v[0], v[1], v[2], v[3]]),
            ("BADC", [v[1], v[0], v[3], v[2]]),
            ("CDAB", [v[2], v[3], v[0], v[1]]),
            ("DCBA", [v[3], v[2], v[1], v[0]]),
        ];
        for (o, img) in images {
            let a = u16::from_be_bytes([img[0], img[1]]);
            let b = u16::from_be_bytes([img[2], img[3]]);
            assert_eq!(f32::from_be_bytes(bytes32(a, b, o)), 230.5, "{o}");
        }
        assert!(plausible(230.5));
        assert!(!plausible(f32::from_bits(1)));
        assert_eq!(fmt_float(230.5), "230.5");
    }
}
