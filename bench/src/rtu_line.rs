//! The `rtu-line` scenario (issue #26): N Modbus RTU units on one serial
//! line. The line is a pseudo-terminal pair (as in the end-to-end RTU
//! tests): a tokio-modbus RTU server on the master side answers unit ids
//! 1..=N, every gateway device opens the slave side with its own `unitId`,
//! so the gateway's bus task serialises all of them on the one port.
//!
//! Reported: the achieved poll cycle (the window over the polls each unit
//! answered), values/s delivered, CPU-seconds, `RssAnon`/`VmRSS`. A pty has
//! no wire time: the report also gives what the same frames would take on a
//! real line at `--baud`, so the cycle on real hardware can be estimated.

use std::future::{ready, Ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::counter::StateCounter;
use crate::online::{self, Online};
use crate::process;
use crate::scenario;

/// Options of the `rtu-line` scenario.
#[derive(Args)]
pub(crate) struct RtuLineArgs {
    /// Units on the line (unit ids 1..=N, at most 247).
    #[arg(long, default_value_t = 100)]
    pub units: u8,
    /// Holding registers per unit (uint16, addresses 0..M, one read each poll).
    #[arg(long, default_value_t = 10)]
    pub registers: u16,
    /// `syncInterval` of every unit: the poll cycle asked for. The line
    /// serialises the units, so the achieved cycle is at least N request/
    /// response round trips.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// `baudRate` in the config (sets the driver's 3.5-character gap between
    /// frames; a pty itself has no baud rate).
    #[arg(long, default_value_t = 19_200)]
    pub baud: u32,
    /// Time between every unit online and the window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Length of the measurement window.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub common: crate::cli::CommonArgs,
}

/// The units of the line: registers that change on every request, one
/// request counter per unit id; other unit ids stay silent (as on a real
/// line, where nobody answers).
#[derive(Clone)]
struct Line {
    units: u8,
    requests: Arc<[AtomicU64]>,
}

impl Service for Line {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let unit = req.slave;
        if unit == 0 || unit > self.units {
            return ready(Ok(None));
        }
        let Some(counter) = self.requests.get(usize::from(unit - 1)) else {
            return ready(Ok(None));
        };
        let tick = counter.fetch_add(1, Ordering::Relaxed);
        ready(match req.request {
            Request::ReadHoldingRegisters(start, count) => {
                Ok(Some(Response::ReadHoldingRegisters(
                    (0..count)
                        .map(|i| (tick as u16).wrapping_add(start).wrapping_add(i))
                        .collect(),
                )))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// The config: one RTU device per unit, all on `port`.
fn config(args: &RtuLineArgs, port: &str, broker_port: u16, state: &std::path::Path) -> String {
    let interval = humantime::format_duration(args.interval).to_string();
    let mut y = scenario::header(
        &format!(
            "{} RTU units on one line x {} holding registers every {interval}",
            args.units, args.registers
        ),
        broker_port,
        state,
    );
    for unit in 1..=args.units {
        y.push(format!("  - name: unit-{unit:03}"));
        y.push("    driver: modbus".into());
        y.push(format!("    syncInterval: {interval}"));
        y.push("    timeout: 500ms".into());
        y.push(format!(
            "    protocol: {{ rtu: {{ port: \"{port}\", baudRate: {}, dataBits: 8, parity: none, stopBits: 1 }}, unitId: {unit} }}",
            args.baud
        ));
        y.push("    properties:".into());
        for r in 0..args.registers {
            y.push(format!(
                "      - {{ name: r{r:03}, register: holding, address: {r}, type: uint16 }}"
            ));
        }
    }
    y.push(String::new());
    y.join("\n")
}

/// Seconds the frames of one poll would occupy a real line at `baud`
/// (8N1: 10 bits a character): the request (8 bytes), the response
/// (5 + 2 × registers bytes) and the 3.5-character gap after each.
fn wire_seconds_per_poll(registers: u16, baud: u32) -> f64 {
    let chars = 8.0 + 5.0 + 2.0 * f64::from(registers) + 2.0 * 3.5;
    chars * 10.0 / f64::from(baud.max(1))
}

/// Runs the scenario and prints its result.
pub(crate) async fn run_rtu_line(args: RtuLineArgs) -> anyhow::Result<()> {
    use tokio_serial::SerialPort as _;
    if args.units == 0 || args.units > 247 || args.registers == 0 || args.registers > 125 {
        bail!("--units is 1..=247 and --registers 1..=125");
    }
    if args.interval.is_zero() || args.duration.is_zero() {
        bail!("--interval and --duration must be more than 0");
    }
    let units = usize::from(args.units);
    let scenario = format!(
        "rtu-line units={} registers={} interval={} baud={}",
        args.units,
        args.registers,
        humantime::format_duration(args.interval),
        args.baud
    );
    let expected = (units * usize::from(args.registers)) as f64 / args.interval.as_secs_f64();

    let (master, slave) = tokio_serial::SerialStream::pair().context("open a pty pair")?;
    let path = slave.name().context("the pty's slave path")?;
    let line = Line {
        units: args.units,
        requests: (0..units).map(|_| AtomicU64::new(0)).collect(),
    };
    let server = {
        let line = line.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio_modbus::server::rtu::Server::new(master)
                .serve_forever(line)
                .await
            {
                eprintln!("fieldgate-bench: the RTU line's server stopped: {e}");
            }
        })
    };

    let dir = crate::harness::RunDir::create(args.common.keep)?;
    let (_broker, port) = process::start_mosquitto(dir.path()).await?;
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, config(&args, &path, port, &dir.path().join("state")))
        .with_context(|| format!("write {}", cfg.display()))?;
    let counter = StateCounter::connect(port, scenario::PREFIX).await?;
    let online = Online::connect(port, units, None).await?;

    let load_before = online::load_average();
    let started = Instant::now();
    let mut gateway =
        process::start_fieldgate(&crate::cli::binary(&args.common), &cfg, dir.path())?;
    let startup = online::wait_online(
        &mut gateway,
        &online,
        started,
        Duration::from_secs(120).max(args.interval * 5),
    )
    .await?;
    crate::harness::run_for(&mut gateway, args.warmup).await?;
    let before: Vec<u64> = line
        .requests
        .iter()
        .map(|r| r.load(Ordering::Relaxed))
        .collect();
    let mut report =
        online::measure_window(&mut gateway, &counter, args.duration, scenario, expected).await?;
    let polls: Vec<u64> = line
        .requests
        .iter()
        .zip(&before)
        .map(|(r, b)| r.load(Ordering::Relaxed).saturating_sub(*b))
        .collect();
    let load_after = online::load_average();
    gateway.terminate(Duration::from_secs(5)).await;
    server.abort();
    drop(slave);

    let window = report.cpu.elapsed.as_secs_f64();
    let total: u64 = polls.iter().sum();
    report.device_requests = Some(total);
    let fewest = polls.iter().copied().min().unwrap_or(0);
    let most = polls.iter().copied().max().unwrap_or(0);
    // The achieved cycle: how long one unit waited between two of its polls,
    // on average (and for the unit polled least often).
    let cycle = |n: u64| {
        if n > 0 {
            window / n as f64
        } else {
            f64::INFINITY
        }
    };
    let mean_polls = total as f64 / units as f64;
    let mean_cycle = if mean_polls > 0.0 {
        window / mean_polls
    } else {
        f64::INFINITY
    };
    let wire = wire_seconds_per_poll(args.registers, args.baud) * units as f64;
    let per_thousand = online::cpu_seconds_per_thousand(&report);
    if args.common.json {
        let mut j = report.json();
        j["cycle_ms_mean"] = serde_json::json!(mean_cycle * 1e3);
        j["cycle_ms_slowest_unit"] = serde_json::json!(cycle(fewest) * 1e3);
        j["polls_per_unit_min_max"] = serde_json::json!([fewest, most]);
        j["line_round_trips_per_second"] = serde_json::json!(total as f64 / window);
        j["wire_ms_per_cycle_at_baud"] = serde_json::json!(wire * 1e3);
        j["all_online_ms"] = serde_json::json!(startup.all_online.as_secs_f64() * 1e3);
        j["cpu_seconds_per_1000_values"] = serde_json::json!(per_thousand);
        j["load_average"] = serde_json::json!([load_before, load_after]);
        println!("{j}");
    } else {
        println!("{}", report.line());
        println!(
            "poll cycle achieved {:.1} ms mean, {:.1} ms for the least-polled unit ({fewest}..{most} polls per unit), \
             {:.0} round trips/s on the line; at {} baud the frames alone would take {:.0} ms a cycle; \
             start → all {} units online {:.0} ms; CPU-s per 1 000 values {:.4}; load average {load_before} → {load_after}",
            mean_cycle * 1e3,
            cycle(fewest) * 1e3,
            total as f64 / window,
            args.baud,
            wire * 1e3,
            args.units,
            startup.all_online.as_secs_f64() * 1e3,
            per_thousand,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_time_counts_request_response_and_gaps() {
        // 8 + 5 + 20 + 7 = 40 characters of 10 bits at 19 200 baud.
        let s = wire_seconds_per_poll(10, 19_200);
        assert!((s - 400.0 / 19_200.0).abs() < 1e-9, "{s}");
    }

    #[test]
    fn config_puts_every_unit_on_the_one_port() {
        let args = RtuLineArgs {
            units: 3,
            registers: 2,
            interval: Duration::from_secs(1),
            baud: 19_200,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            common: crate::cli::CommonArgs {
                fieldgate: None,
                json: false,
                keep: false,
            },
        };
        let y = config(&args, "/dev/pts/9", 1883, std::path::Path::new("/s"));
        assert_eq!(y.matches("port: \"/dev/pts/9\"").count(), 3);
        assert!(y.contains("unitId: 3 }"));
        assert_eq!(y.matches("register: holding").count(), 6);
    }
}
