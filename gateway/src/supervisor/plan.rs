//! Reload as a plan: a pure function turning the running config and a new
//! one into the steps that move one to the other (which devices keep
//! running, move to another session, restart, stop or start; which sessions
//! start, stop or are replaced by a successor that takes over their store).
//! [`super::Supervisor::apply`] executes a plan; nothing here does I/O.

use std::collections::{HashMap, HashSet};

use crate::config::resolved::{DeviceSettings, Resolved};

/// What happens to one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceStep {
    /// Runs on untouched (its settings and session are the same).
    Keep,
    /// Runs on untouched, publishing through another session.
    Move,
    /// Stops and starts again with new settings; `clear_retained` when its
    /// topic changed (the old retained topics go).
    Restart {
        /// Clear the old topic's retained messages when stopping.
        clear_retained: bool,
    },
    /// Stops and clears its retained topics (no longer configured).
    Stop,
    /// Starts (newly configured).
    Start,
}

/// What happens to one MQTT session (indices into the old and new
/// [`Resolved::sessions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionStep {
    /// A new session starts (`new` index).
    Start(usize),
    /// A session with the same client id but other options replaces the old
    /// one and takes over its undelivered messages.
    Replace {
        /// Index in the old config.
        old: usize,
        /// Index in the new config.
        new: usize,
    },
    /// A session no longer used stops cleanly (`old` index).
    Stop(usize),
}

/// The steps from one config to the next. Devices appear in the old
/// config's order, then the added ones in the new config's order; sessions
/// not listed keep running.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Every device of either config and its step.
    pub devices: Vec<(String, DeviceStep)>,
    /// Sessions that start, stop or are replaced.
    pub sessions: Vec<SessionStep>,
}

/// Equal when a device's driver can keep running: everything but the
/// session it publishes through is the same.
pub(crate) fn same_device(a: &DeviceSettings, b: &DeviceSettings) -> bool {
    a.name == b.name
        && a.driver == b.driver
        && a.spec == b.spec
        && a.properties == b.properties
        && a.publish == b.publish
        && a.message == b.message
}

/// The plan that moves the topology running `old` to `new`.
pub(crate) fn plan(old: &Resolved, new: &Resolved) -> Plan {
    let new_by_name: HashMap<&str, &DeviceSettings> = new
        .devices
        .iter()
        .map(|d| (d.name.as_str(), &**d))
        .collect();
    let mut devices = Vec::with_capacity(old.devices.len().max(new.devices.len()));
    for d in &old.devices {
        let step = match new_by_name.get(d.name.as_str()) {
            None => DeviceStep::Stop,
            Some(next) if same_device(d, next) => {
                if old.sessions.get(d.session) == new.sessions.get(next.session) {
                    DeviceStep::Keep
                } else {
                    DeviceStep::Move
                }
            }
            Some(next) => DeviceStep::Restart {
                clear_retained: d.message.topic != next.message.topic,
            },
        };
        devices.push((d.name.clone(), step));
    }
    let old_names: HashSet<&str> = old.devices.iter().map(|d| d.name.as_str()).collect();
    for d in &new.devices {
        if !old_names.contains(d.name.as_str()) {
            devices.push((d.name.clone(), DeviceStep::Start));
        }
    }

    let mut sessions = Vec::new();
    let mut replaced = HashSet::new();
    for (n, s) in new.sessions.iter().enumerate() {
        if old.sessions.contains(s) {
            continue;
        }
        let replaces = old
            .sessions
            .iter()
            .position(|o| o.client_id == s.client_id && !new.sessions.contains(o));
        match replaces {
            Some(o) if replaced.insert(o) => sessions.push(SessionStep::Replace { old: o, new: n }),
            _ => sessions.push(SessionStep::Start(n)),
        }
    }
    for (o, s) in old.sessions.iter().enumerate() {
        if !new.sessions.contains(s) && !replaced.contains(&o) {
            sessions.push(SessionStep::Stop(o));
        }
    }
    Plan { devices, sessions }
}

impl Plan {
    /// Whether any device starts, stops, restarts or moves.
    pub(crate) fn changes_devices(&self) -> bool {
        self.devices.iter().any(|(_, s)| *s != DeviceStep::Keep)
    }

    /// The devices running both before and after: kept, moved and
    /// restarted ones (what a probation watches).
    pub(crate) fn kept_and_changed(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter(|(_, s)| !matches!(s, DeviceStep::Start | DeviceStep::Stop))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The names of the devices with `step`.
    fn with(&self, f: impl Fn(&DeviceStep) -> bool) -> Vec<String> {
        self.devices
            .iter()
            .filter(|(_, s)| f(s))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The plan as lists of names (for the log and tests).
    pub(crate) fn summary(&self, old: &Resolved, new: &Resolved) -> DiffSummary {
        let id = |v: &[crate::config::resolved::SessionSettings], i: usize| {
            v.get(i).map(|s| s.client_id.clone()).unwrap_or_default()
        };
        let mut started = Vec::new();
        let mut stopped = Vec::new();
        for s in &self.sessions {
            match *s {
                SessionStep::Start(n) => started.push(id(&new.sessions, n)),
                SessionStep::Replace { old: o, new: n } => {
                    started.push(id(&new.sessions, n));
                    stopped.push(id(&old.sessions, o));
                }
                SessionStep::Stop(o) => stopped.push(id(&old.sessions, o)),
            }
        }
        DiffSummary {
            added: self.with(|s| *s == DeviceStep::Start),
            changed: self.with(|s| matches!(s, DeviceStep::Restart { .. })),
            removed: self.with(|s| *s == DeviceStep::Stop),
            unchanged: self.with(|s| *s == DeviceStep::Keep),
            moved: self.with(|s| *s == DeviceStep::Move),
            sessions_started: started,
            sessions_stopped: stopped,
        }
    }
}

/// What a config change does, device by device (for logs and tests).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DiffSummary {
    /// Devices started that did not exist.
    pub added: Vec<String>,
    /// Devices restarted with new settings.
    pub changed: Vec<String>,
    /// Devices stopped and cleared.
    pub removed: Vec<String>,
    /// Devices left running untouched.
    pub unchanged: Vec<String>,
    /// Devices left running but moved to another MQTT session.
    pub moved: Vec<String>,
    /// Sessions (client ids) started.
    pub sessions_started: Vec<String>,
    /// Sessions (client ids) stopped.
    pub sessions_stopped: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Resolved {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).expect("write");
        crate::config::load(&path).unwrap_or_else(|e| panic!("config: {e}"))
    }

    fn config(client: &str, devices: &[&str]) -> Resolved {
        let mut y = format!(
            "gateway: {{ namespace: t }}\nmqtt: {{ client: {{ server: tcp://127.0.0.1:1883 {client} }} }}\ndevices:\n"
        );
        for d in devices {
            y.push_str(d);
            y.push('\n');
        }
        load(&y)
    }

    fn dummy(name: &str, start: u32) -> String {
        format!("  - {{ name: {name}, driver: dummy, properties: [ {{ name: n, type: uint32, simulate: {{ counter: {{ start: {start} }} }} }} ] }}")
    }

    fn empty(r: &Resolved) -> Resolved {
        Resolved {
            devices: Vec::new(),
            sessions: Vec::new(),
            ..r.clone()
        }
    }

    #[test]
    fn start_up_starts_everything() {
        let r = config("", &[&dummy("a", 0), &dummy("b", 0)]);
        let p = plan(&empty(&r), &r);
        assert_eq!(
            p.devices,
            [
                ("a".into(), DeviceStep::Start),
                ("b".into(), DeviceStep::Start)
            ]
        );
        assert_eq!(p.sessions, [SessionStep::Start(0)]);
        assert!(p.changes_devices());
        assert!(p.kept_and_changed().is_empty());
    }

    #[test]
    fn the_same_config_keeps_everything() {
        let r = config("", &[&dummy("a", 0)]);
        let p = plan(&r, &r.clone());
        assert_eq!(p.devices, [("a".into(), DeviceStep::Keep)]);
        assert!(p.sessions.is_empty());
        assert!(!p.changes_devices());
        assert_eq!(p.kept_and_changed(), ["a"]);
    }

    #[test]
    fn added_changed_removed_and_kept() {
        let old = config(
            "",
            &[&dummy("keep", 0), &dummy("chg", 0), &dummy("gone", 0)],
        );
        let new = config("", &[&dummy("keep", 0), &dummy("chg", 5), &dummy("new", 0)]);
        let p = plan(&old, &new);
        assert_eq!(
            p.devices,
            [
                ("keep".into(), DeviceStep::Keep),
                (
                    "chg".into(),
                    DeviceStep::Restart {
                        clear_retained: false
                    }
                ),
                ("gone".into(), DeviceStep::Stop),
                ("new".into(), DeviceStep::Start),
            ]
        );
        assert!(p.sessions.is_empty());
        assert_eq!(p.kept_and_changed(), ["keep", "chg"]);
        let s = p.summary(&old, &new);
        assert_eq!(s.added, ["new"]);
        assert_eq!(s.changed, ["chg"]);
        assert_eq!(s.removed, ["gone"]);
        assert_eq!(s.unchanged, ["keep"]);
    }

    #[test]
    fn a_new_topic_clears_the_old_retained_topics() {
        let old = config("", &[&dummy("a", 0)]);
        let moved = "  - { name: a, driver: dummy, mqtt: { message: { topic: { name: other/a } } }, properties: [ { name: n, type: uint32, simulate: { counter: { start: 0 } } } ] }";
        let new = config("", &[moved]);
        assert_ne!(old.devices[0].message.topic, new.devices[0].message.topic);
        assert_eq!(
            plan(&old, &new).devices,
            [(
                "a".into(),
                DeviceStep::Restart {
                    clear_retained: true
                }
            )]
        );
    }

    #[test]
    fn a_session_option_change_replaces_the_session_and_moves_devices() {
        let old = config("", &[&dummy("a", 0)]);
        let new = config(", keepAlive: 7s", &[&dummy("a", 0)]);
        let p = plan(&old, &new);
        assert_eq!(p.devices, [("a".into(), DeviceStep::Move)]);
        assert_eq!(p.sessions, [SessionStep::Replace { old: 0, new: 0 }]);
        let s = p.summary(&old, &new);
        assert_eq!(s.sessions_started, ["fieldgate-t"]);
        assert_eq!(s.sessions_stopped, ["fieldgate-t"]);
        assert_eq!(s.moved, ["a"]);
    }

    #[test]
    fn another_client_id_starts_a_new_session_and_stops_the_old() {
        let old = config("", &[&dummy("a", 0)]);
        let new = config(", clientId: other", &[&dummy("a", 0)]);
        let p = plan(&old, &new);
        assert_eq!(p.sessions, [SessionStep::Start(0), SessionStep::Stop(0)]);
        assert_eq!(p.devices, [("a".into(), DeviceStep::Move)]);
    }

    #[test]
    fn everything_removed_stops_everything() {
        let old = config("", &[&dummy("a", 0)]);
        let p = plan(&old, &empty(&old));
        assert_eq!(p.devices, [("a".into(), DeviceStep::Stop)]);
        assert_eq!(p.sessions, [SessionStep::Stop(0)]);
    }
}
