//! Home Assistant discovery against Home Assistant Core itself (from PyPI,
//! in a venv cached under /var/cache/fieldgate-test/homeassistant): the real
//! `fieldgate` binary with a simulated device and a Modbus device on a
//! tokio-modbus server, Home Assistant's MQTT integration on the same
//! Mosquitto, and every assertion made through Home Assistant's REST API.
//! One Home Assistant start (~10 s) serves the whole scenario.

use crate::homeassistant;
use crate::modbus_server;
use crate::support;

use std::time::{Duration, Instant};

use modbus_server::{tcp_server, Storage};
use serde_json::{json, Value};
use support::{Gateway, Mosquitto, MqttProbe};

use homeassistant::HomeAssistant;

/// Upper bound for Home Assistant to show a change.
const WAIT: Duration = Duration::from_secs(60);

fn config(broker: u16, modbus: &str, with_sim: bool) -> String {
    let sim = if with_sim {
        r#"
  - name: sim
    driver: dummy
    syncInterval: 500ms
    properties:
      - { name: alarm, type: bool, simulate: { constant: true } }
      - { name: pump, type: bool, writable: true, simulate: { constant: false } }
      - { name: temperature, type: float64, unit: "°C", simulate: { constant: 21.5 } }
      - { name: level, type: float32, writable: true, min: 0, max: 100, unit: "%", simulate: { constant: 40 } }
      - { name: gear, type: uint8, enum: { 0: slow, 1: middle, 2: fast }, writable: true, simulate: { constant: 0 } }
      - { name: mode, type: uint8, enum: { 0: auto, 1: manual }, simulate: { constant: 1 } }
      - { name: label, type: string, simulate: { constant: "hello" } }
      - name: energy
        type: uint32
        unit: kWh
        simulate: { counter: { start: 100, step: 1 } }
        homeAssistant: { deviceClass: energy, stateClass: total_increasing, icon: "mdi:flash" }
  - name: quiet
    driver: dummy
    syncInterval: 1h
    properties:
      - { name: count, type: float64, simulate: { constant: 1 } }
      - { name: flag, type: bool, simulate: { constant: true } }
      - { name: note, type: string, simulate: { constant: "kept" } }
      - { name: kind, type: uint8, enum: { 0: alpha, 1: beta }, simulate: { constant: 1 } }
      - { name: amount, type: uint16, writable: true, simulate: { constant: 7 } }"#
    } else {
        ""
    };
    format!(
        r#"gateway:
  namespace: ha
  metrics: {{ listen: "" }}
  # The store backlog is a figure of the periodic document (a change of it
  # alone does not publish): republished often, so a message in flight when
  # the first document was taken is not seen as a backlog for a minute.
  healthInterval: 2s
mqtt:
  client:
    server: tcp://127.0.0.1:{broker}
    maxReconnectInterval: 1s
  discovery:
    homeAssistant: {{ enabled: true }}
devices:{sim}
  - name: plc
    driver: modbus
    syncInterval: 300ms
    timeout: 300ms
    protocol: {{ tcp: {{ endpoint: "{modbus}" }}, unitId: 1 }}
    properties:
      - {{ name: setpoint, register: holding, address: 0, type: int16, scale: 0.5, min: 0, max: 50, unit: "°C", writable: true }}
      - {{ name: valve, register: coil, address: 0, type: bool, writable: true }}
      - {{ name: fan, register: holding, address: 1, type: uint16, enum: {{ 0: stop, 1: low, 2: high }}, writable: true }}
      - {{ name: flow, register: holding, address: 2, type: uint16, unit: "L/min" }}
"#
    )
}

/// Waits until `check` holds for the state of `entity` (or its absence, `None`).
async fn wait_entity(
    ha: &HomeAssistant,
    entity: &str,
    what: &str,
    mut check: impl FnMut(Option<&Value>) -> bool,
) -> Option<Value> {
    let t0 = Instant::now();
    loop {
        let s = ha.state(entity);
        if check(s.as_ref()) {
            return s;
        }
        if t0.elapsed() > WAIT {
            panic!(
                "{entity}: {what} not seen within {WAIT:?}; last state {s:?}\nHome Assistant's log:\n{}",
                ha.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_state(ha: &HomeAssistant, entity: &str, state: &str) -> Value {
    wait_entity(ha, entity, &format!("state `{state}`"), |s| {
        s.is_some_and(|s| s["state"] == state)
    })
    .await
    .unwrap_or(Value::Null)
}

async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        support::wait_until_async(WAIT, cond).await,
        "{what} not seen within {WAIT:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_sees_controls_and_loses_fieldgate_devices() {
    let storage = Storage::with(|t| {
        t.holding.extend([(0, 40), (1, 1), (2, 12)]);
        t.coils.insert(0, false);
    });
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let broker = Mosquitto::start();
    let port = broker.port();
    let ha = tokio::task::spawn_blocking(move || HomeAssistant::start(port))
        .await
        .expect("Home Assistant start");

    let modbus = server.addr.to_string();
    let gw = Gateway::start(&config(port, &modbus, true));

    // Entities with the right domains, units, options and states.
    let t = wait_state(&ha, "sensor.sim_temperature", "21.5").await;
    assert_eq!(t["attributes"]["unit_of_measurement"], "°C");
    assert_eq!(t["attributes"]["state_class"], "measurement");
    wait_state(&ha, "binary_sensor.sim_alarm", "on").await;
    wait_state(&ha, "switch.sim_pump", "off").await;
    let level = wait_state(&ha, "number.sim_level", "40.0").await;
    assert_eq!(
        (
            &level["attributes"]["min"],
            &level["attributes"]["max"],
            &level["attributes"]["unit_of_measurement"]
        ),
        (&json!(0.0), &json!(100.0), &json!("%"))
    );
    let gear = wait_state(&ha, "select.sim_gear", "slow").await;
    assert_eq!(
        gear["attributes"]["options"],
        json!(["slow", "middle", "fast"])
    );
    let mode = wait_state(&ha, "sensor.sim_mode", "manual").await;
    assert_eq!(mode["attributes"]["device_class"], "enum");
    assert_eq!(mode["attributes"]["options"], json!(["auto", "manual"]));
    wait_state(&ha, "sensor.sim_label", "hello").await;
    let energy = wait_entity(&ha, "sensor.sim_energy", "a counter value", |s| {
        s.and_then(|s| s["state"].as_str()?.parse::<u64>().ok())
            .is_some_and(|v| v >= 100)
    })
    .await
    .unwrap_or(Value::Null);
    assert_eq!(energy["attributes"]["device_class"], "energy");
    assert_eq!(energy["attributes"]["state_class"], "total_increasing");
    assert_eq!(energy["attributes"]["icon"], "mdi:flash");
    assert_eq!(energy["attributes"]["unit_of_measurement"], "kWh");

    let sp = wait_state(&ha, "number.plc_setpoint", "20.0").await;
    assert_eq!(
        (
            &sp["attributes"]["min"],
            &sp["attributes"]["max"],
            &sp["attributes"]["step"]
        ),
        (&json!(0.0), &json!(50.0), &json!(0.5))
    );
    wait_state(&ha, "switch.plc_valve", "off").await;
    let fan = wait_state(&ha, "select.plc_fan", "low").await;
    assert_eq!(fan["attributes"]["options"], json!(["stop", "low", "high"]));
    let flow = wait_state(&ha, "sensor.plc_flow", "12").await;
    assert_eq!(flow["attributes"]["unit_of_measurement"], "L/min");

    // The gateway's own device and its diagnostics.
    wait_state(&ha, "binary_sensor.fieldgate_ha_connectivity", "on").await;
    wait_state(&ha, "sensor.fieldgate_ha_devices_online", "3").await;
    wait_state(&ha, "sensor.fieldgate_ha_store_backlog", "0").await;

    // Commands from Home Assistant reach the devices.
    ha.call("switch", "turn_on", json!({"entity_id": "switch.sim_pump"}));
    wait_state(&ha, "switch.sim_pump", "on").await;
    ha.call(
        "select",
        "select_option",
        json!({"entity_id": "select.sim_gear", "option": "fast"}),
    );
    wait_state(&ha, "select.sim_gear", "fast").await;
    ha.call(
        "number",
        "set_value",
        json!({"entity_id": "number.sim_level", "value": 55}),
    );
    wait_state(&ha, "number.sim_level", "55.0").await;

    ha.call(
        "switch",
        "turn_on",
        json!({"entity_id": "switch.plc_valve"}),
    );
    wait_until("coil 0 set by switch.turn_on", || {
        storage.coil(0) == Some(true)
    })
    .await;
    ha.call(
        "number",
        "set_value",
        json!({"entity_id": "number.plc_setpoint", "value": 22.5}),
    );
    wait_until("holding 0 = 45 by number.set_value", || {
        storage.holding(0) == Some(45)
    })
    .await;
    ha.call(
        "select",
        "select_option",
        json!({"entity_id": "select.plc_fan", "option": "high"}),
    );
    wait_until("holding 1 = 2 by select.select_option", || {
        storage.holding(1) == Some(2)
    })
    .await;
    wait_state(&ha, "switch.plc_valve", "on").await;
    wait_state(&ha, "number.plc_setpoint", "22.5").await;
    wait_state(&ha, "select.plc_fan", "high").await;

    // `quiet` publishes once an hour: its first state went out before Home
    // Assistant had its entities (and subscribed); the gateway's `T/$get`
    // after announcing them brings the state.
    let quiet = [
        ("binary_sensor.quiet_flag", "on"),
        ("sensor.quiet_note", "kept"),
        ("sensor.quiet_kind", "beta"),
        ("number.quiet_amount", "7"),
    ];
    wait_state(&ha, "sensor.quiet_count", "1.0").await;
    for (entity, state) in quiet {
        wait_state(&ha, entity, state).await;
    }

    // A property absent from a state payload leaves its entity unchanged.
    // (A state the gateway publishes meanwhile has the same values; the
    // message is sent again until Home Assistant shows its count.)
    let probe = MqttProbe::connect(port).await;
    let t0 = Instant::now();
    'seen: loop {
        probe
            .publish(
                "fieldgate/ha/quiet",
                r#"{"name":"quiet","properties":{"count":99.5},"errors":{"flag":"timeout after 1s","note":"timeout after 1s","kind":"timeout after 1s","amount":"timeout after 1s"}}"#,
                1,
                false,
            )
            .await;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let states: Vec<Option<Value>> = std::iter::once("sensor.quiet_count")
                .chain(quiet.iter().map(|(e, _)| *e))
                .map(|e| ha.state(e).map(|s| s["state"].clone()))
                .collect();
            if states[0] == Some(json!("99.5")) {
                for ((entity, state), got) in quiet.iter().zip(&states[1..]) {
                    assert_eq!(got, &Some(json!(state)), "{entity} changed");
                }
                break 'seen;
            }
        }
        assert!(
            t0.elapsed() < WAIT,
            "Home Assistant never showed the count 99.5"
        );
    }

    // Home Assistant's birth message (here: its MQTT integration reloaded,
    // as after a restart) makes the gateway publish every config again.
    ha.reload_mqtt();
    assert!(
        gw.wait_for_log("Home Assistant is online", WAIT),
        "no re-announce on Home Assistant's birth:\n{}",
        gw.log()
    );
    wait_state(&ha, "switch.sim_pump", "on").await;

    // A device taken offline becomes unavailable; the count follows.
    server.stop().await;
    for e in [
        "number.plc_setpoint",
        "switch.plc_valve",
        "select.plc_fan",
        "sensor.plc_flow",
    ] {
        wait_state(&ha, e, "unavailable").await;
    }
    wait_state(&ha, "sensor.fieldgate_ha_devices_online", "2").await;
    assert_eq!(
        ha.state("sensor.sim_temperature")
            .map(|s| s["state"].clone()),
        Some(json!("21.5"))
    );

    // A device removed by reload disappears from Home Assistant.
    // (The same reload removes a property of the other device: its entity goes.)
    let without_flow = config(port, &modbus, false).replace(
        "      - { name: flow, register: holding, address: 2, type: uint16, unit: \"L/min\" }\n",
        "",
    );
    assert!(!without_flow.contains("name: flow"));
    gw.replace_config(&without_flow);
    for e in [
        "sensor.sim_temperature",
        "switch.sim_pump",
        "select.sim_gear",
        "number.sim_level",
        "sensor.sim_energy",
        "sensor.quiet_count",
        "number.quiet_amount",
    ] {
        wait_entity(&ha, e, "removal", |s| s.is_none()).await;
    }
    assert!(
        !ha.entity_ids()
            .iter()
            .any(|e| e.contains(".sim_") || e.contains(".quiet_")),
        "sim entities left: {:?}",
        ha.entity_ids()
    );
    wait_entity(&ha, "sensor.plc_flow", "removal", |s| s.is_none()).await;
    // The other device's other entities stay.
    assert!(ha.state("switch.plc_valve").is_some());

    // fieldgate stopped: its session's will makes everything unavailable.
    drop(gw);
    wait_state(&ha, "binary_sensor.fieldgate_ha_connectivity", "off").await;
    wait_state(&ha, "switch.plc_valve", "unavailable").await;
    let log = ha.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("mqtt"))
        .collect();
    assert!(
        errors.is_empty(),
        "Home Assistant's MQTT integration logged errors:\n{}",
        errors.join("\n")
    );
}
