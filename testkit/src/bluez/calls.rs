//! Answers to the D-Bus method calls of BlueZ clients, and the signals they cause.

use std::collections::HashMap;
use std::sync::Mutex;

use dbus::arg::{RefArg, Variant};
use dbus::strings::ErrorName;
use dbus::Message;

use super::objects::{
    interfaces_added, prop_map, props_changed, Interfaces, Prop, PropMap, State, ADAPTER, ADAPTER1,
    CHAR1, DEVICE1, INTROSPECT, OM, PROPS,
};
use super::DiscoveryFilter;

pub(super) fn error(msg: &Message, name: &str, text: &str) -> Message {
    let name = ErrorName::new(name.to_string()).expect("error name");
    let text = std::ffi::CString::new(text).expect("error text");
    msg.error(&name, &text)
}

/// Children of `path` among the exported objects (for Introspect).
pub(super) fn children(objects: &[(String, Interfaces)], path: &str) -> Vec<String> {
    let prefix = if path == "/" {
        "/".to_string()
    } else {
        format!("{path}/")
    };
    let mut names: Vec<String> = objects
        .iter()
        .filter_map(|(p, _)| p.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('/').next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The reply to one method call and the signals it causes.
pub(super) fn handle_call(state: &Mutex<State>, msg: &Message) -> (Message, Vec<Message>) {
    let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
    let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    let mut st = state.lock().unwrap();
    st.calls.push(format!("{iface}.{member}"));
    let objects = st.objects();
    let object = objects.iter().find(|(p, _)| *p == path);
    let mut signals = Vec::new();
    let on_adapter = path == ADAPTER && st.adapter_present;
    let reply = match (iface.as_str(), member.as_str()) {
        (OM, "GetManagedObjects") if path == "/" => {
            let map: HashMap<dbus::Path<'static>, HashMap<String, PropMap>> = objects
                .iter()
                .map(|(p, ifaces)| {
                    (
                        dbus::Path::from(p.clone()),
                        ifaces
                            .iter()
                            .map(|(i, props)| (i.to_string(), prop_map(props)))
                            .collect(),
                    )
                })
                .collect();
            msg.method_return().append1(map)
        }
        (INTROSPECT, "Introspect") => {
            let known = path == "/"
                || object.is_some()
                || objects
                    .iter()
                    .any(|(p, _)| p.starts_with(&format!("{path}/")));
            if !known {
                error(
                    msg,
                    "org.freedesktop.DBus.Error.UnknownObject",
                    "no such object",
                )
            } else {
                let mut xml = String::from(
                    "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n",
                );
                let mut ifaces = vec![INTROSPECT, PROPS];
                if path == "/" {
                    ifaces.push(OM);
                }
                if let Some((_, own)) = object {
                    ifaces.extend(own.iter().map(|(i, _)| *i));
                }
                for i in ifaces {
                    xml.push_str(&format!("  <interface name=\"{i}\"/>\n"));
                }
                for c in children(&objects, &path) {
                    xml.push_str(&format!("  <node name=\"{c}\"/>\n"));
                }
                xml.push_str("</node>\n");
                msg.method_return().append1(xml)
            }
        }
        (PROPS, "GetAll") | (PROPS, "Get") | (PROPS, "Set") => {
            let Ok(want) = msg.read1::<String>() else {
                return (
                    error(msg, "org.freedesktop.DBus.Error.InvalidArgs", "bad args"),
                    Vec::new(),
                );
            };
            let props = object.and_then(|(_, ifaces)| {
                ifaces
                    .iter()
                    .find(|(i, _)| *i == want)
                    .map(|(_, p)| p.clone())
            });
            match (member.as_str(), props) {
                (_, None) => error(
                    msg,
                    "org.freedesktop.DBus.Error.InvalidArgs",
                    "no such interface",
                ),
                ("GetAll", Some(p)) => msg.method_return().append1(prop_map(&p)),
                ("Get", Some(p)) => {
                    let name: String = msg
                        .read2::<String, String>()
                        .map(|x| x.1)
                        .unwrap_or_default();
                    match p.iter().find(|(k, _)| *k == name) {
                        Some((_, v)) => msg.method_return().append1(v.variant()),
                        None => error(
                            msg,
                            "org.freedesktop.DBus.Error.InvalidArgs",
                            "no such property",
                        ),
                    }
                }
                (_, Some(_)) => {
                    // Set: only the adapter's Powered is writable here.
                    let mut it = msg.iter_init();
                    it.next();
                    let name: String = it.read().unwrap_or_default();
                    let value: Option<bool> = it
                        .get::<Variant<Box<dyn RefArg>>>()
                        .and_then(|v| v.0.as_i64())
                        .map(|v| v != 0);
                    if path == ADAPTER && want == ADAPTER1 && name == "Powered" {
                        if let Some(v) = value {
                            st.powered = v;
                            signals.push(props_changed(
                                ADAPTER,
                                ADAPTER1,
                                &[("Powered", Prop::Bool(v))],
                            ));
                        }
                        msg.method_return()
                    } else {
                        error(
                            msg,
                            "org.freedesktop.DBus.Error.PropertyReadOnly",
                            "read-only property",
                        )
                    }
                }
            }
        }
        (ADAPTER1, "SetDiscoveryFilter") if on_adapter => {
            let sender = msg.sender().map(|s| s.to_string()).unwrap_or_default();
            match msg.read1::<PropMap>() {
                Err(_) => error(msg, "org.bluez.Error.InvalidArguments", "Invalid arguments"),
                Ok(map) => {
                    let mut f = DiscoveryFilter::default();
                    let mut bad = None;
                    for (k, v) in &map {
                        match k.as_str() {
                            "Transport" => match v.0.as_str() {
                                Some(t @ ("auto" | "le" | "bredr")) => f.transport = t.into(),
                                _ => bad = Some("Transport"),
                            },
                            "DuplicateData" => match v.0.as_i64() {
                                Some(b) => f.duplicate_data = b != 0,
                                None => bad = Some("DuplicateData"),
                            },
                            "UUIDs" | "RSSI" | "Pathloss" | "Discoverable" | "Pattern" => {}
                            _ => bad = Some("unknown key"),
                        }
                    }
                    match bad {
                        Some(_) => {
                            error(msg, "org.bluez.Error.InvalidArguments", "Invalid arguments")
                        }
                        None => {
                            if map.is_empty() {
                                st.filters.remove(&sender);
                            } else {
                                st.filters.insert(sender, f);
                            }
                            msg.method_return()
                        }
                    }
                }
            }
        }
        (ADAPTER1, "StartDiscovery") if on_adapter => {
            let sender = msg.sender().map(|s| s.to_string()).unwrap_or_default();
            if !st.powered {
                error(msg, "org.bluez.Error.NotReady", "Resource Not Ready")
            } else if st.discovering_clients.contains(&sender) {
                error(
                    msg,
                    "org.bluez.Error.InProgress",
                    "Operation already in progress",
                )
            } else {
                st.discovering_clients.push(sender);
                if !st.discovering {
                    st.discovering = true;
                    signals.push(props_changed(
                        ADAPTER,
                        ADAPTER1,
                        &[("Discovering", Prop::Bool(true))],
                    ));
                }
                for d in st.devices.iter_mut().filter(|d| d.present && !d.exported) {
                    d.exported = true;
                    for (p, ifaces) in State::device_objects(d) {
                        signals.push(interfaces_added(&p, &ifaces));
                    }
                }
                msg.method_return()
            }
        }
        (ADAPTER1, "StopDiscovery") if on_adapter => {
            let sender = msg.sender().map(|s| s.to_string()).unwrap_or_default();
            if st.discovering_clients.contains(&sender) {
                st.discovering_clients.retain(|c| *c != sender);
                if st.discovering_clients.is_empty() && st.discovering {
                    st.discovering = false;
                    signals.push(props_changed(
                        ADAPTER,
                        ADAPTER1,
                        &[("Discovering", Prop::Bool(false))],
                    ));
                }
                msg.method_return()
            } else {
                error(msg, "org.bluez.Error.Failed", "No discovery started")
            }
        }
        (DEVICE1, "Connect") => match st.device_at(&path) {
            None => error(
                msg,
                "org.freedesktop.DBus.Error.UnknownObject",
                "no such device",
            ),
            Some(d) if !d.present => error(
                msg,
                "org.bluez.Error.Failed",
                "le-connection-abort-by-local",
            ),
            Some(d) => {
                let address = d.address.clone();
                if !d.connected {
                    d.connected = true;
                    signals.push(props_changed(
                        &path,
                        DEVICE1,
                        &[("Connected", Prop::Bool(true))],
                    ));
                    signals.push(props_changed(
                        &path,
                        DEVICE1,
                        &[("ServicesResolved", Prop::Bool(true))],
                    ));
                }
                *st.connects.entry(address).or_default() += 1;
                msg.method_return()
            }
        },
        (DEVICE1, "Disconnect") => match st.device_at(&path) {
            None => error(
                msg,
                "org.freedesktop.DBus.Error.UnknownObject",
                "no such device",
            ),
            Some(d) => {
                if d.connected {
                    d.connected = false;
                    for s in &mut d.services {
                        for c in &mut s.chars {
                            c.notifying = false;
                        }
                    }
                    signals.push(props_changed(
                        &path,
                        DEVICE1,
                        &[
                            ("ServicesResolved", Prop::Bool(false)),
                            ("Connected", Prop::Bool(false)),
                        ],
                    ));
                }
                msg.method_return()
            }
        },
        (CHAR1, m @ ("ReadValue" | "WriteValue" | "StartNotify" | "StopNotify")) => {
            let written: Option<Vec<u8>> = if m == "WriteValue" {
                msg.read1::<Vec<u8>>().ok()
            } else {
                None
            };
            match st.char_at(&path) {
                None => error(
                    msg,
                    "org.freedesktop.DBus.Error.UnknownObject",
                    "no such characteristic",
                ),
                Some((d, _, _)) if !d.connected => {
                    error(msg, "org.bluez.Error.Failed", "Not connected")
                }
                Some((d, si, ci)) => {
                    let c = &mut d.services[si].chars[ci];
                    let has = |f: &str| c.flags.contains(&f);
                    match m {
                        "ReadValue" if has("read") => msg.method_return().append1(c.value.clone()),
                        "WriteValue" if has("write") || has("write-without-response") => {
                            let v = written.unwrap_or_default();
                            c.value = v.clone();
                            let uuid = c.uuid.clone();
                            st.writes.push((uuid, v));
                            msg.method_return()
                        }
                        "StartNotify" if has("notify") || has("indicate") => {
                            if !c.notifying {
                                c.notifying = true;
                                signals.push(props_changed(
                                    &path,
                                    CHAR1,
                                    &[("Notifying", Prop::Bool(true))],
                                ));
                            }
                            msg.method_return()
                        }
                        "StopNotify" => {
                            if c.notifying {
                                c.notifying = false;
                                signals.push(props_changed(
                                    &path,
                                    CHAR1,
                                    &[("Notifying", Prop::Bool(false))],
                                ));
                                msg.method_return()
                            } else {
                                error(msg, "org.bluez.Error.Failed", "No notify session started")
                            }
                        }
                        _ => error(
                            msg,
                            "org.bluez.Error.NotPermitted",
                            "Operation not permitted",
                        ),
                    }
                }
            }
        }
        _ => error(
            msg,
            "org.freedesktop.DBus.Error.UnknownMethod",
            &format!("unknown method {iface}.{member} on {path}"),
        ),
    };
    (reply, signals)
}
