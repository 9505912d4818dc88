//! Resource usage of a process from Linux `/proc`: CPU time (utime + stime
//! from `/proc/<pid>/stat`) and peak resident memory (`VmHWM` from
//! `/proc/<pid>/status`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Why a `/proc` file could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcError {
    /// The file could not be read (process gone, not Linux, …).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's content was not in the expected format.
    #[error("unexpected format of {what}: {detail}")]
    Format {
        /// Which file or field.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// CPU time a process has used, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTicks {
    /// Time in user mode.
    pub utime: u64,
    /// Time in kernel mode.
    pub stime: u64,
}

impl CpuTicks {
    /// User plus kernel time.
    pub(crate) fn total(self) -> u64 {
        self.utime + self.stime
    }
}

/// Parses utime and stime (fields 14 and 15) out of a `/proc/<pid>/stat` line.
/// The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted after its last `)`.
pub(crate) fn parse_stat(line: &str) -> Result<CpuTicks, ProcError> {
    let close = line.rfind(')').ok_or_else(|| ProcError::Format {
        what: "/proc/<pid>/stat",
        detail: "no `)` after the command name".into(),
    })?;
    // After `)`: field 3 (state) is token 0, so field N is token N - 3.
    let fields: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let field = |n: usize, name: &'static str| -> Result<u64, ProcError> {
        let raw = fields.get(n - 3).ok_or_else(|| ProcError::Format {
            what: "/proc/<pid>/stat",
            detail: format!("only {} fields, no {name} (field {n})", fields.len() + 2),
        })?;
        raw.parse().map_err(|_| ProcError::Format {
            what: "/proc/<pid>/stat",
            detail: format!("{name} (field {n}) is not a number: {raw:?}"),
        })
    };
    Ok(CpuTicks {
        utime: field(14, "utime")?,
        stime: field(15, "stime")?,
    })
}

/// Parses `VmHWM` (peak resident set size) out of `/proc/<pid>/status`, in bytes.
pub(crate) fn parse_vm_hwm(status: &str) -> Result<u64, ProcError> {
    parse_status_bytes(status, "VmHWM")
}

/// Parses the memory line `key` (e.g. `VmRSS`) out of `/proc/<pid>/status`, in bytes.
pub(crate) fn parse_status_bytes(status: &str, key: &'static str) -> Result<u64, ProcError> {
    let (value, unit) = status_field(status, key)?;
    let unit = match unit {
        Some("kB") => 1024,
        Some("mB") => 1024 * 1024,
        None => 1,
        Some(other) => {
            return Err(ProcError::Format {
                what: key,
                detail: format!("unknown unit {other:?}"),
            })
        }
    };
    Ok(value * unit)
}

/// The number and optional unit of the line `key:` of a `/proc/<pid>/status`.
fn status_field<'a>(
    status: &'a str,
    key: &'static str,
) -> Result<(u64, Option<&'a str>), ProcError> {
    let line = status
        .lines()
        .find(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(':'))
        })
        .ok_or_else(|| ProcError::Format {
            what: "/proc/<pid>/status",
            detail: format!("no {key} line"),
        })?;
    let mut parts = line[key.len() + 1..].split_whitespace();
    let value: u64 =
        parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ProcError::Format {
                what: key,
                detail: format!("no number in {line:?}"),
            })?;
    Ok((value, parts.next()))
}

/// Context switches of one thread or process (`/proc/.../status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Switches {
    /// `voluntary_ctxt_switches`: the thread blocked (slept, waited for I/O):
    /// each one is a wake-up when it runs again.
    pub voluntary: u64,
    /// `nonvoluntary_ctxt_switches`: the thread was preempted.
    pub nonvoluntary: u64,
}

impl Switches {
    /// Field-wise `self - earlier` (saturating: a thread may have ended).
    pub(crate) fn since(&self, earlier: &Switches) -> Switches {
        Switches {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            nonvoluntary: self.nonvoluntary.saturating_sub(earlier.nonvoluntary),
        }
    }
}

/// Parses the two context-switch counters out of a `/proc/.../status`.
pub(crate) fn parse_switches(status: &str) -> Result<Switches, ProcError> {
    Ok(Switches {
        voluntary: status_field(status, "voluntary_ctxt_switches")?.0,
        nonvoluntary: status_field(status, "nonvoluntary_ctxt_switches")?.0,
    })
}

/// The context switches of every thread of process `pid`, by thread id,
/// with each thread's name (`/proc/<pid>/task/<tid>/{status,comm}`).
pub(crate) fn thread_switches(pid: u32) -> Result<Vec<(u32, String, Switches)>, ProcError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = std::fs::read_dir(&dir).map_err(|source| ProcError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut threads = Vec::new();
    for entry in entries.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread may end between the listing and the read: skip it.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        threads.push((tid, name, parse_switches(&status)?));
    }
    threads.sort_by_key(|t| t.0);
    Ok(threads)
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if that cannot be asked.
pub(crate) fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

fn read_proc(pid: u32, file: &str) -> Result<String, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

/// The CPU ticks process `pid` has used so far.
pub(crate) fn cpu_ticks(pid: u32) -> Result<CpuTicks, ProcError> {
    parse_stat(&read_proc(pid, "stat")?)
}

/// The current resident memory (`VmRSS`) of process `pid`, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Result<u64, ProcError> {
    parse_status_bytes(&read_proc(pid, "status")?, "VmRSS")
}

/// Resident memory of a process from one read of `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// `VmRSS`: all resident pages, file-backed (code) included.
    pub rss: u64,
    /// `RssAnon`: resident anonymous pages, what the process itself holds
    /// (heap, stacks); the memory targets are on this.
    pub anon: u64,
}

impl Memory {
    /// The larger of each figure.
    pub(crate) fn max(self, other: Memory) -> Memory {
        Memory {
            rss: self.rss.max(other.rss),
            anon: self.anon.max(other.anon),
        }
    }
}

/// Parses `VmRSS` and `RssAnon` out of `/proc/<pid>/status`.
pub(crate) fn parse_memory(status: &str) -> Result<Memory, ProcError> {
    Ok(Memory {
        rss: parse_status_bytes(status, "VmRSS")?,
        anon: parse_status_bytes(status, "RssAnon")?,
    })
}

/// The current `VmRSS` and `RssAnon` of process `pid`.
pub(crate) fn memory(pid: u32) -> Result<Memory, ProcError> {
    parse_memory(&read_proc(pid, "status")?)
}

/// The peak resident memory of process `pid`, in bytes.
pub(crate) fn peak_rss_bytes(pid: u32) -> Result<u64, ProcError> {
    parse_vm_hwm(&read_proc(pid, "status")?)
}

/// Measures one process's CPU use over a window.
#[derive(Debug, Clone)]
pub(crate) struct CpuWindow {
    pid: u32,
    ticks_per_second: u64,
    start_ticks: u64,
    started: Instant,
}

/// CPU use over a finished window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CpuUsage {
    /// Wall-clock length of the window.
    pub elapsed: Duration,
    /// CPU seconds used in the window.
    pub cpu_seconds: f64,
}

impl CpuUsage {
    /// CPU use as a percentage of one core (may exceed 100 on several cores).
    pub(crate) fn percent_of_one_core(&self) -> f64 {
        let wall = self.elapsed.as_secs_f64();
        if wall > 0.0 {
            100.0 * self.cpu_seconds / wall
        } else {
            0.0
        }
    }
}

impl CpuWindow {
    /// Starts a window now.
    pub(crate) fn start(pid: u32, ticks_per_second: u64) -> Result<Self, ProcError> {
        Ok(Self {
            pid,
            ticks_per_second: ticks_per_second.max(1),
            start_ticks: cpu_ticks(pid)?.total(),
            started: Instant::now(),
        })
    }

    /// Ends the window now.
    pub(crate) fn finish(&self) -> Result<CpuUsage, ProcError> {
        let ticks = cpu_ticks(self.pid)?.total();
        Ok(CpuUsage {
            elapsed: self.started.elapsed(),
            cpu_seconds: ticks.saturating_sub(self.start_ticks) as f64
                / self.ticks_per_second as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (fieldgate) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                        150 37 0 0 20 0 9 0 123456 98765432 3210 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17987 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_14_and_15() {
        assert_eq!(
            parse_stat(STAT).unwrap(),
            CpuTicks {
                utime: 150,
                stime: 37
            }
        );
    }

    #[test]
    fn stat_command_names_with_spaces_and_parens() {
        let line = STAT.replace("(fieldgate)", "(tokio (worker) 1)");
        let t = parse_stat(&line).unwrap();
        assert_eq!(t.total(), 187);
    }

    #[test]
    fn stat_errors_are_reported() {
        assert!(parse_stat("4242 fieldgate S 1").is_err());
        assert!(parse_stat("4242 (fieldgate) S 1 2 3").is_err());
        let bad = STAT.replace(" 150 ", " x ");
        assert!(matches!(parse_stat(&bad), Err(ProcError::Format { .. })));
    }

    #[test]
    fn vm_hwm_in_bytes() {
        let status =
            "Name:\tfieldgate\nVmPeak:\t  200000 kB\nVmHWM:\t   12800 kB\nVmRSS:\t   11000 kB\n";
        assert_eq!(parse_vm_hwm(status).unwrap(), 12800 * 1024);
        assert!(parse_vm_hwm("Name:\tx\n").is_err());
        assert!(parse_vm_hwm("VmHWM:\t  12 parsecs\n").is_err());
        assert_eq!(parse_status_bytes(status, "VmRSS").unwrap(), 11000 * 1024);
        // `VmRSS` is not mistaken for a longer key that starts with it.
        assert!(parse_status_bytes("VmRSSx:\t 5 kB\n", "VmRSS").is_err());
        let m = parse_memory("VmRSS:\t   11000 kB\nRssAnon:\t    4000 kB\nRssFile:\t 7000 kB\n")
            .unwrap();
        assert_eq!(
            m,
            Memory {
                rss: 11000 * 1024,
                anon: 4000 * 1024
            }
        );
        assert!(parse_memory("VmRSS:\t 1 kB\n").is_err());
    }

    #[test]
    fn context_switches() {
        let status =
            "Name:\tfieldgate\nvoluntary_ctxt_switches:\t153\nnonvoluntary_ctxt_switches:\t7\n";
        let s = parse_switches(status).unwrap();
        assert_eq!(
            s,
            Switches {
                voluntary: 153,
                nonvoluntary: 7
            }
        );
        let later = Switches {
            voluntary: 160,
            nonvoluntary: 7,
        };
        assert_eq!(later.since(&s).voluntary, 7);
        assert!(parse_switches("Name:\tx\n").is_err());
    }

    #[test]
    fn own_threads_have_switch_counters() {
        let threads = thread_switches(std::process::id()).unwrap();
        assert!(threads.iter().any(|(tid, _, _)| *tid == std::process::id()));
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn own_process_is_measurable() {
        let pid = std::process::id();
        assert!(peak_rss_bytes(pid).unwrap() > 0);
        let window = CpuWindow::start(pid, clock_ticks_per_second()).unwrap();
        let usage = window.finish().unwrap();
        assert!(usage.cpu_seconds >= 0.0);
        assert!(usage.percent_of_one_core() >= 0.0);
    }

    #[test]
    fn percent_of_one_core() {
        let u = CpuUsage {
            elapsed: Duration::from_secs(10),
            cpu_seconds: 2.5,
        };
        assert!((u.percent_of_one_core() - 25.0).abs() < 1e-9);
    }
}
