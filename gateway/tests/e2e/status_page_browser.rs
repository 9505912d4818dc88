//! The status page in a real browser: headless Chromium (Debian `chromium`)
//! driven over the DevTools protocol loads `/` from the real binary running
//! simulated devices and a dead Modbus device. Screenshots are saved under
//! `target/test-artifacts/`.

use crate::support;

use std::time::{Duration, Instant};

use support::cdp::{artifact, Browser};
use support::http::get;
use support::{free_port, wait_port_open, wait_until, Gateway, Mosquitto};

const WAIT: Duration = Duration::from_secs(20);

fn config(broker: u16, listen: &str, dead_port: u16) -> String {
    format!(
        r#"gateway:
  namespace: plant-a
  metrics: {{ listen: "{listen}", commands: true }}
mqtt:
  client:
    server: tcp://127.0.0.1:{broker}
    maxReconnectInterval: 2s
devices:
  - name: boiler
    driver: dummy
    syncInterval: 200ms
    properties:
      - {{ name: temperature, type: float64, unit: "°C", description: "flow temperature", simulate: {{ sine: {{ min: 60, max: 75, period: 60s }} }} }}
      - {{ name: count, type: uint32, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}
      - {{ name: setpoint, type: float32, writable: true, min: 5, max: 90, unit: "°C", simulate: {{ constant: 21.0 }} }}
      - {{ name: "<script>alert(1)</script>", type: float64, unit: "<img src=x onerror=alert(2)>", simulate: {{ constant: 1.5 }} }}
  - name: fan
    driver: dummy
    model: fan
    syncInterval: 200ms
  - name: dead-meter
    driver: modbus
    syncInterval: 300ms
    timeout: 300ms
    protocol: {{ tcp: {{ endpoint: "127.0.0.1:{dead_port}" }} }}
    properties:
      - {{ name: energy, register: holding, address: 0, type: uint32, unit: kWh }}
"#
    )
}

/// A device's table row, as a JS expression.
fn tr(device: &str) -> String {
    format!("document.querySelector('tr[data-device=\"{device}\"]')")
}

/// `document.querySelector` of a device row's part, as a JS expression.
fn row(device: &str, part: &str) -> String {
    format!("document.querySelector('tr[data-device=\"{device}\"] {part}')")
}

#[test]
fn the_status_page_in_headless_chromium() {
    let broker = Mosquitto::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let gw = Gateway::start(&config(broker.port(), &addr, free_port()));
    assert!(wait_port_open(port, WAIT), "{}", gw.log());

    let mut b = Browser::launch(1280, 860);
    b.navigate(&format!("http://{addr}/"));

    // Every device is listed, in name order.
    let listed = b.wait_for(
        "JSON.stringify([...document.querySelectorAll('#devices tbody tr[data-device]')]\
         .map(r => r.dataset.device)) === '[\"boiler\",\"dead-meter\",\"fan\"]'",
        WAIT,
    );
    assert!(
        listed,
        "rows: {}\n{}",
        b.eval("document.querySelector('#devices').innerText"),
        gw.log()
    );

    // The dead one is offline, stands out, and shows its error.
    let dead = format!(
        "{r}.classList.contains('offline') && {s}.textContent === 'offline' \
         && {e}.textContent.includes('Connection refused')",
        r = tr("dead-meter"),
        s = row("dead-meter", "td.status"),
        e = row("dead-meter", "td.errors"),
    );
    assert!(
        b.wait_for(&dead, WAIT),
        "{}",
        b.eval("document.querySelector('#devices').innerText")
    );
    let dead_bg = b.eval(&format!(
        "getComputedStyle({}).backgroundColor",
        row("dead-meter", "td.name")
    ));
    let ok_bg = b.eval(&format!(
        "getComputedStyle({}).backgroundColor",
        row("boiler", "td.name")
    ));
    assert_ne!(dead_bg, ok_bg, "the offline row must look different");

    // A simulated value changes on screen within 3 s, without a reload.
    b.eval("window.__sameDocument = 'yes'");
    let count = row("boiler", "[data-prop=\"count\"] .v");
    assert!(b.wait_for(&format!("{count} !== null"), WAIT));
    let before = b.eval(&format!("{count}.textContent"));
    let t0 = Instant::now();
    let changed = b.wait_for(
        &format!("{count}.textContent !== {}", before),
        Duration::from_secs(3),
    );
    assert!(
        changed,
        "count stayed {before} for {:?} (gateway says {})",
        t0.elapsed(),
        get(&addr, "/api/v1/devices/boiler").body
    );
    assert_eq!(b.eval("window.__sameDocument"), "yes", "the page reloaded");

    // Device-provided strings render as text, never as markup.
    let as_text = b.eval(
        "[...document.querySelectorAll('#devices .pv .k')]\
         .some(e => e.textContent === '<script>alert(1)</script>')",
    );
    assert_eq!(as_text, true);
    let unit = b.eval(
        "[...document.querySelectorAll('#devices .pv .u')]\
         .some(e => e.textContent === '<img src=x onerror=alert(2)>')",
    );
    assert_eq!(unit, true);
    assert_eq!(
        b.eval("document.querySelectorAll('#devices script, #devices img').length"),
        0
    );
    assert_eq!(b.count_events("Page.javascriptDialogOpening"), 0);

    // The filter box narrows the table.
    b.type_into("#filter", "offline");
    assert!(b.wait_for(
        &format!("{}.hidden && !{}.hidden", tr("boiler"), tr("dead-meter")),
        WAIT
    ));
    b.eval("(() => { const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input')); })()");
    assert!(b.wait_for(&format!("!{}.hidden", tr("boiler")), WAIT));

    // Commands on: set the boiler's setpoint through its form.
    b.click("tr[data-device=\"boiler\"] button.set-open");
    assert!(b.wait_for(
        "document.querySelector('form[data-set=\"boiler\"] input[name=\"setpoint\"]') !== null",
        WAIT
    ));
    b.type_into("form[data-set=\"boiler\"] input[name=\"setpoint\"]", "55.5");
    b.click("form[data-set=\"boiler\"] button[type=\"submit\"]");
    let result = "document.querySelector('tr[data-set-row=\"boiler\"] .result')";
    assert!(
        b.wait_for(
            &format!("{result}.classList.contains('ok') && {result}.textContent.includes('55.5')"),
            WAIT
        ),
        "result: {}",
        b.eval(&format!("{result}.textContent"))
    );
    // The device changed: the API says so, and the table shows it.
    assert!(wait_until(WAIT, || {
        get(&addr, "/api/v1/devices/boiler").json()["properties"][2]["value"] == 55.5
    }));
    assert!(b.wait_for(
        &format!(
            "{}.textContent === '55.5'",
            row("boiler", "[data-prop=\"setpoint\"] .v")
        ),
        WAIT
    ));
    // A value out of bounds is refused with the $set error, shown on the page.
    b.eval(
        "document.querySelector('form[data-set=\"boiler\"] input[name=\"setpoint\"]').value = ''",
    );
    b.type_into("form[data-set=\"boiler\"] input[name=\"setpoint\"]", "500");
    b.click("form[data-set=\"boiler\"] button[type=\"submit\"]");
    assert!(b.wait_for(
        &format!("{result}.classList.contains('bad') && {result}.textContent.includes('maximum')"),
        WAIT
    ));
    b.screenshot(&artifact("status-page.png"));

    // A phone: the table becomes cards, nothing wider than the screen.
    b.phone(390, 844);
    assert!(b.wait_for(
        "document.documentElement.scrollWidth <= window.innerWidth",
        WAIT
    ));
    b.screenshot(&artifact("status-page-phone.png"));
}
