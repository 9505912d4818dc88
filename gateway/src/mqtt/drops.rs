//! The reasons under which a session drops a message or ignores a command:
//! the `reason` label values of `fieldgate_mqtt_dropped_total` and
//! `fieldgate_mqtt_commands_ignored_total` (listed in docs/mqtt.md).

/// The store was full while the broker was unreachable: the oldest went.
pub const STORE_FULL: &str = "store_full";
/// The session did not take a device's message within `waitTimeout`.
pub const WAIT_TIMEOUT: &str = "wait_timeout";
/// The broker refused the message (a PUBACK/PUBREC failure reason code,
/// or the connection ended each of the 3 times it was sent).
pub const REFUSED: &str = "refused";
/// Larger than the broker's maximum packet size: dropped before sending.
pub const TOO_LARGE: &str = "too_large";
/// Unreadable records the file store skipped when it recovered from disk.
pub const STORE_DAMAGED: &str = "store_damaged";
/// A reload's hand-over timed out and the new session was gone when the
/// old one passed its messages on (memory store).
pub const HANDOVER: &str = "handover";
/// Older than the file store's `maxAge`.
pub const EXPIRED: &str = "expired";
/// Dropped (oldest first) so that the file store leaves `minFreeBytes`
/// free on its disk.
pub const DISK_FLOOR: &str = "disk_floor";
/// A stored Sparkplug reading whose device is gone or offline when the
/// history is replayed (its metric has no alias in the new births).
pub const DEVICE_GONE: &str = "device_gone";

/// A command arrived retained (a replay by the broker, not a new command).
pub const CMD_RETAINED: &str = "retained";
/// More commands than `mqtt.message.commandRate` allows.
pub const CMD_RATE_LIMITED: &str = "rate_limited";
/// The device's command inbox was full.
pub const CMD_INBOX_FULL: &str = "inbox_full";
/// No device claimed the topic (held briefly, then dropped).
pub const CMD_UNROUTED: &str = "unrouted";
/// A `$get` while the driver was busy.
pub const CMD_BUSY: &str = "busy";
