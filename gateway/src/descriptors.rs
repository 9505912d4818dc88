//! File descriptors: how many a config needs, and the process limit raised
//! to match before anything starts. Every Modbus TCP endpoint, serial port,
//! OPC-UA session and MQTT connection holds one; the default soft limit of
//! 1 024 would otherwise cap a gateway at about a thousand endpoints, and
//! running out shows only later as connect errors on random devices.

use std::collections::HashSet;

use fieldgate_drivers::Connection;

use crate::config::Resolved;

/// Descriptors the process holds whatever the config: stdio, the runtime's
/// epoll and wake-up descriptors, the config watcher, the metrics listener
/// and its connections.
const BASE: u64 = 64;
/// Per MQTT session: the broker connection, the relay pair to the client
/// library, and the file store's open segment and directory.
const PER_SESSION: u64 = 5;
/// The embedded broker's listeners and its clients.
const BROKER: u64 = 128;

/// How many descriptors running `config` takes, about: one per distinct
/// Modbus endpoint or serial line, per OPC-UA device and per BLE adapter,
/// a few per MQTT session, and a fixed allowance for the rest.
pub(crate) fn needed(config: &Resolved) -> u64 {
    #[cfg(feature = "modbus")]
    let mut modbus_buses = HashSet::new();
    #[cfg(feature = "ble")]
    let mut ble_adapters = HashSet::new();
    let mut per_device = 0u64;
    for d in &config.devices {
        match &d.spec.connection {
            Connection::Dummy => {}
            #[cfg(feature = "modbus")]
            Connection::Modbus(c) => {
                modbus_buses.insert(&c.transport);
            }
            #[cfg(feature = "ble")]
            Connection::Ble(c) => {
                ble_adapters.insert(c.adapter.as_deref());
            }
            // The passive scan's own D-Bus session, one per adapter too.
            #[cfg(feature = "ble")]
            Connection::BleAdvert(c) => {
                ble_adapters.insert(c.adapter.as_deref());
            }
            #[cfg(feature = "opcua")]
            Connection::OpcUa(_) => per_device += 1,
        }
    }
    #[cfg(feature = "modbus")]
    {
        per_device += modbus_buses.len() as u64;
    }
    #[cfg(feature = "ble")]
    {
        // The D-Bus connection of each adapter's session.
        per_device += 2 * ble_adapters.len() as u64;
    }
    let broker = if config.broker.is_some() { BROKER } else { 0 };
    BASE + broker + PER_SESSION * config.sessions.len() as u64 + per_device
}

/// Why the process cannot hold what a config needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "the config needs about {needed} open files (Modbus endpoints, OPC-UA sessions, MQTT \
     connections), but this process may open at most {limit}: raise the limit \
     (`LimitNOFILE=` in the systemd unit, `ulimit -n` in a shell)"
)]
pub(crate) struct TooFewDescriptors {
    /// What the config needs.
    pub needed: u64,
    /// The hard limit.
    pub limit: u64,
}

/// Raises the soft limit on open files as far as `needed` requires (up to
/// the hard limit, which an unprivileged process cannot pass). Fails when
/// even the hard limit is too low. Returns the soft limit now in force.
pub(crate) fn ensure(needed: u64) -> Result<u64, TooFewDescriptors> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `lim` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        // Cannot tell: let the config run and its connects report errors.
        return Ok(u64::MAX);
    }
    // rlim_t is 32 bits wide on armhf, 64 elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let (soft, hard) = (lim.rlim_cur as u64, lim.rlim_max as u64);
    if soft >= needed {
        return Ok(soft);
    }
    if hard < needed {
        return Err(TooFewDescriptors {
            needed,
            limit: hard,
        });
    }
    // Some headroom over the estimate, within the hard limit.
    let raised = hard.min(needed.saturating_mul(2));
    lim.rlim_cur = raised as libc::rlim_t;
    // SAFETY: setrlimit reads one rlimit struct, which `lim` is; a soft
    // limit at or below the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(TooFewDescriptors {
            needed,
            limit: soft,
        });
    }
    Ok(raised)
}
