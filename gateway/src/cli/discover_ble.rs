//! `fieldgate discover ble [--duration 10s] [--adapter hci0]`: listens to
//! advertisements passively (never connects, never writes) and prints what
//! is nearby — address, name, RSSI, recognised formats with their decoded
//! values — then a ready device YAML for each recognised one.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use fieldgate_drivers::ble::adverts::{
    format_address, recognise, scan::observe, Advertisement, DecodeError, Format,
};
use fieldgate_drivers::ble::describe_uuid;
use fieldgate_drivers::Value;

/// Options of `fieldgate discover ble`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to listen (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Adapter (e.g. hci0); default: the first adapter.
    #[arg(long)]
    pub adapter: Option<String>,
}

/// Runs the discovery; the process exit code.
pub fn run(args: &Args) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fieldgate discover ble: cannot start the runtime: {e}");
            return 1;
        }
    };
    let buses = fieldgate_drivers::Buses::new();
    let found = rt.block_on(observe(buses.ble().adverts(), &args.adapter, args.duration));
    match found {
        Ok(seen) => {
            print!("{}", render(&seen, args.duration));
            0
        }
        Err(e) => {
            eprintln!("fieldgate discover ble: {e}");
            1
        }
    }
}

fn value(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A device name from the advertised name or the format and address.
fn device_name(adv: &Advertisement, format: Format, taken: &mut HashSet<String>) -> String {
    let from_name: String = adv
        .name
        .as_deref()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    let a = adv.address;
    let base = if from_name.is_empty() {
        format!("{}-{:02x}{:02x}{:02x}", format.as_str(), a[3], a[4], a[5])
    } else {
        from_name
    };
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// The report: one comment block per device, then the YAML.
pub fn render(seen: &[std::sync::Arc<Advertisement>], listened: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {} BLE device(s) heard in {} (passive scan; nothing was connected or written)",
        seen.len(),
        humantime::format_duration(listened)
    );
    let mut yaml = String::new();
    let mut taken = HashSet::new();
    for adv in seen {
        let _ = write!(out, "# {}", format_address(&adv.address));
        if let Some(n) = &adv.name {
            let _ = write!(out, "  name {n:?}");
        }
        if let Some(r) = adv.rssi {
            let _ = write!(out, "  RSSI {r} dBm");
        }
        let _ = writeln!(out);
        let formats = recognise(adv);
        if formats.is_empty() {
            let mut parts: Vec<String> = adv
                .manufacturer_data
                .iter()
                .map(|(id, d)| format!("manufacturer data 0x{id:04x}: {}", hex(d)))
                .collect();
            parts.extend(
                adv.service_data
                    .iter()
                    .map(|(u, d)| format!("service data {}: {}", describe_uuid(u), hex(d))),
            );
            parts.sort();
            if parts.is_empty() {
                let _ = writeln!(out, "#   no advertisement data");
            } else {
                let _ = writeln!(
                    out,
                    "#   no known format ({}); read it with format: raw",
                    parts.join(", ")
                );
            }
            continue;
        }
        for (format, decoded) in formats {
            let mut encrypted = false;
            match &decoded {
                Ok(d) => {
                    let fields: Vec<String> = d
                        .fields
                        .iter()
                        .map(|(n, v)| {
                            let unit = format
                                .field(n)
                                .and_then(|f| f.unit)
                                .map(|u| format!(" {u}"))
                                .unwrap_or_default();
                            format!("{n}={}{unit}", value(v))
                        })
                        .collect();
                    let _ = writeln!(out, "#   {}: {}", format.as_str(), fields.join(", "));
                }
                Err(DecodeError::Invalid(m)) => {
                    encrypted = m.contains("encrypted");
                    let _ = writeln!(out, "#   {}: {m}", format.as_str());
                    if !encrypted {
                        continue;
                    }
                }
                Err(DecodeError::Absent(_)) => continue,
            }
            let name = device_name(adv, format, &mut taken);
            let _ = writeln!(yaml, "  - name: {name}");
            let _ = writeln!(yaml, "    driver: ble");
            let _ = writeln!(yaml, "    protocol:");
            let _ = writeln!(yaml, "      address: \"{}\"", format_address(&adv.address));
            let _ = writeln!(yaml, "      mode: advertisement");
            let _ = writeln!(yaml, "      format: {}", format.as_str());
            if encrypted {
                let _ = writeln!(
                    yaml,
                    "      bindKey: \"\"   # the sensor encrypts: its 32-hex-digit key goes here"
                );
            }
        }
    }
    if yaml.is_empty() {
        let _ = writeln!(
            out,
            "# no recognised advertisement format (bthome, pvvx, atc1441, ruuvi)"
        );
    } else {
        let _ = writeln!(out, "devices:");
        out.push_str(&yaml);
    }
    out
}
