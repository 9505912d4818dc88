//! The status page's HTTP API against the real binary: `/api/v1/status`,
//! `/api/v1/devices[/<name>]`, writes through `POST .../set` (off by
//! default; same origin, JSON only, size limit, token), the page's own
//! assets and headers, the connection limit, and the config rules for
//! `gateway.metrics.commands` / `token` / `tokenFile`.

use crate::support;

use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;

use support::http::{get, post_json, request};
use support::{free_port, wait_port_open, wait_until, Gateway, Mosquitto, MqttProbe};

const WAIT: Duration = Duration::from_secs(20);

/// Simulated devices (`boiler` with a counter, a writable setpoint and
/// markup in a property name and unit, the `fan` model) and a Modbus device
/// on a closed port; `metrics` is the body of `gateway.metrics`.
fn config(broker: u16, metrics: &str, dead_port: u16) -> String {
    format!(
        r#"gateway:
  namespace: test
  metrics: {{ {metrics} }}
mqtt:
  client:
    server: tcp://127.0.0.1:{broker}
    maxReconnectInterval: 2s
devices:
  - name: boiler
    driver: dummy
    syncInterval: 200ms
    properties:
      - {{ name: temperature, type: float64, unit: "°C", simulate: {{ sine: {{ min: 18, max: 24, period: 60s }} }} }}
      - {{ name: count, type: uint32, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}
      - {{ name: setpoint, type: float32, writable: true, min: 5, max: 90, unit: "°C", simulate: {{ constant: 21.0 }} }}
      - {{ name: "<script>alert(1)</script>", type: float64, unit: "<img src=x onerror=alert(2)>", description: "<b>bold</b>", simulate: {{ constant: 1.5 }} }}
  - name: fan
    driver: dummy
    model: fan
    syncInterval: 200ms
  - name: dead
    driver: modbus
    syncInterval: 300ms
    timeout: 300ms
    protocol: {{ tcp: {{ endpoint: "127.0.0.1:{dead_port}" }} }}
    properties:
      - {{ name: level, register: holding, address: 0, type: uint16 }}
"#
    )
}

/// Starts a gateway whose listener is on a free loopback port; returns it
/// and `host:port`.
fn start(broker: &Mosquitto, metrics_extra: &str) -> (Gateway, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let metrics = format!("listen: \"{addr}\"{metrics_extra}");
    let gw = Gateway::start(&config(broker.port(), &metrics, free_port()));
    assert!(
        wait_port_open(port, WAIT),
        "listener did not open; log:\n{}",
        gw.log()
    );
    (gw, addr)
}

/// The device `name` from `/api/v1/devices`.
fn device<'a>(list: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    list["devices"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == name)
}

/// The value of property `prop` of a device object.
fn value(d: &serde_json::Value, prop: &str) -> serde_json::Value {
    d["properties"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == prop))
        .map(|p| p["value"].clone())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn status_and_devices_as_json() {
    let broker = Mosquitto::start();
    let (gw, addr) = start(&broker, "");

    // Every device, sorted by name; the dead one offline with its error.
    let mut list = serde_json::Value::Null;
    let ready = wait_until(WAIT, || {
        list = get(&addr, "/api/v1/devices").json();
        device(&list, "dead").is_some_and(|d| d["status"] == "offline")
            && device(&list, "boiler")
                .is_some_and(|d| d["status"] == "online" && d["lastReading"].is_string())
            && device(&list, "fan").is_some_and(|d| d["status"] == "online")
    });
    assert!(ready, "devices never settled: {list:#}\n{}", gw.log());
    let names: Vec<&str> = list["devices"]
        .as_array()
        .expect("devices array")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["boiler", "dead", "fan"]);
    let dead = device(&list, "dead").expect("dead");
    assert_eq!(dead["online"], false);
    assert_eq!(dead["driver"], "modbus");
    let err = dead["error"].as_str().expect("offline error text");
    assert!(err.contains("refused"), "{err}");
    assert_eq!(dead["lastReading"], serde_json::Value::Null, "{dead}");
    assert!(dead["errors"]["level"].is_string(), "{dead}");

    let boiler = device(&list, "boiler").expect("boiler");
    assert_eq!(boiler["driver"], "dummy");
    assert_eq!(boiler["topic"], "fieldgate/test/boiler");
    assert!(boiler["lastReading"].is_string(), "{boiler}");
    assert!(boiler["lastReadingAgeSeconds"].as_f64().expect("age") < 10.0);
    let props = boiler["properties"].as_array().expect("properties");
    assert_eq!(props[0]["name"], "temperature");
    assert_eq!(props[0]["unit"], "°C");
    assert!(props[0]["value"].is_f64());
    assert_eq!(props[2]["writable"], true);
    assert_eq!(props[2]["min"], 5.0);
    assert_eq!(value(boiler, "setpoint"), 21.0);
    // Device-provided strings come back verbatim (the page escapes them).
    assert_eq!(props[3]["name"], "<script>alert(1)</script>");
    assert_eq!(props[3]["unit"], "<img src=x onerror=alert(2)>");
    let fan = device(&list, "fan").expect("fan");
    let gear = fan["properties"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "gear"))
        .expect("gear");
    assert_eq!(gear["enum"], serde_json::json!(["slow", "middle", "fast"]));

    // Values move between two looks (the counter advances every poll).
    let first = value(boiler, "count").as_u64().expect("count");
    assert!(wait_until(WAIT, || {
        let d = get(&addr, "/api/v1/devices/boiler").json();
        d["properties"][1]["value"]
            .as_u64()
            .is_some_and(|n| n > first)
    }));

    // One device; an unknown one is a 404.
    let one = get(&addr, "/api/v1/devices/dead");
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["status"], "offline");
    let missing = get(&addr, "/api/v1/devices/nope");
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(missing.json()["error"], "no such device");

    // The gateway and its session.
    let mut status = serde_json::Value::Null;
    assert!(wait_until(WAIT, || {
        status = get(&addr, "/api/v1/status").json();
        status["sessions"][0]["connected"] == true
    }));
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["namespace"], "test");
    assert!(status["uptimeSeconds"].is_u64());
    assert_eq!(status["sessions"][0]["id"], "fieldgate-test");
    assert_eq!(
        status["sessions"][0]["server"],
        format!("tcp://127.0.0.1:{}", broker.port())
    );
    assert!(status["sessions"][0]["storeMessages"].is_u64());
    let hash = status["config"]["hash"].as_str().expect("hash");
    assert_eq!(hash.len(), 16, "{hash}");
    assert_eq!(status["config"]["lastReload"], serde_json::Value::Null);
    assert_eq!(status["devices"]["total"], 3);
    assert_eq!(status["commands"]["enabled"], false);
    // No CORS, ever.
    let r = get(&addr, "/api/v1/status");
    assert!(!r.head.contains("access-control-"), "{}", r.head);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );

    // The listener still serves /metrics and /healthz.
    let m = get(&addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.body.contains("fieldgate_device_up{device=\"dead\"} 0"));
    let h = get(&addr, "/healthz");
    assert!(h.body.contains("\"status\""), "{}", h.body);
}

#[test]
fn page_and_assets_are_embedded_with_strict_headers() {
    let broker = Mosquitto::start();
    let (_gw, addr) = start(&broker, "");
    let page = get(&addr, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(page.header("x-frame-options").as_deref(), Some("deny"));
    // Nothing from elsewhere: no absolute URLs to other hosts.
    let mut total = page.body.len();
    for asset in ["/app.js", "/style.css"] {
        let r = get(&addr, asset);
        assert_eq!(r.status, 200, "{asset}");
        total += r.body.len();
        for text in [&page.body, &r.body] {
            // (The inline SVG icon names its XML namespace; nothing is loaded from it.)
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{asset}"
            );
        }
    }
    assert!(page.body.contains("app.js") && page.body.contains("style.css"));
    assert!(total < 100 * 1024, "page weighs {total} bytes");
    // The script never turns data into markup.
    let js = get(&addr, "/app.js").body;
    assert!(
        !js.contains("innerHTML")
            && !js.contains("outerHTML")
            && !js.contains("insertAdjacentHTML")
    );
    assert_eq!(get(&addr, "/nothing-here").status, 404);
    let r = request(&addr, "DELETE", "/api/v1/status", &[], b"").expect("DELETE");
    assert_eq!(r.status, 405);
    let r = request(&addr, "OPTIONS", "/api/v1/devices/boiler/set", &[], b"").expect("OPTIONS");
    assert_eq!(r.status, 405);
    assert!(!r.head.contains("access-control-"), "{}", r.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_off_unless_configured() {
    let broker = Mosquitto::start();
    let (_gw, addr) = start(&broker, "");
    let a = addr.clone();
    let r = tokio::task::spawn_blocking(move || {
        post_json(&a, "/api/v1/devices/boiler/set", &[], r#"{"setpoint": 30}"#)
    })
    .await
    .expect("post");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("gateway.metrics.commands"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_set_validation_and_reach_the_device() {
    let broker = Mosquitto::start();
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe
        .subscribe("fieldgate/test/boiler/$set/result", 1)
        .await;
    let (gw, addr) = start(&broker, ", commands: true");
    let a = addr.clone();
    let ready = tokio::task::spawn_blocking(move || {
        wait_until(WAIT, || {
            let d = get(&a, "/api/v1/devices/boiler").json();
            d["status"] == "online" && value(&d, "setpoint") == 21.0
        })
    })
    .await
    .expect("wait");
    assert!(ready, "{}", gw.log());
    let post = |body: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let a = addr.clone();
        tokio::task::spawn_blocking(move || {
            post_json(&a, "/api/v1/devices/boiler/set", &headers, body)
        })
    };

    // Accepted and applied: the result, T/$set/result, and the new value.
    let r = post(r#"{"setpoint": 55.5, "$id": "page-1"}"#, vec![])
        .await
        .expect("post");
    assert_eq!(r.status, 200, "{}", r.body);
    let result = r.json();
    assert_eq!(result["ok"], true);
    assert_eq!(result["applied"]["setpoint"], 55.5);
    assert_eq!(result["$id"], "page-1");
    let on_mqtt = probe
        .wait_topic(WAIT, "fieldgate/test/boiler/$set/result")
        .await
        .expect("T/$set/result");
    assert_eq!(on_mqtt.json()["$id"], "page-1");
    let a = addr.clone();
    let changed = tokio::task::spawn_blocking(move || {
        wait_until(WAIT, || {
            value(&get(&a, "/api/v1/devices/boiler").json(), "setpoint") == 55.5
        })
    })
    .await
    .expect("wait");
    assert!(changed);

    // The same validation as $set: bounds, read-only and unknown properties.
    let r = post(r#"{"setpoint": 500}"#, vec![]).await.expect("post");
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.json()["errors"]["setpoint"]
        .as_str()
        .is_some_and(|e| e.contains("maximum")));
    let r = post(r#"{"count": 1}"#, vec![]).await.expect("post");
    assert_eq!(r.status, 422, "{}", r.body);
    let r = post(r#"not json"#, vec![]).await.expect("post");
    assert_eq!(r.status, 422);
    assert!(r.json()["errors"]["$payload"].is_string(), "{}", r.body);

    // Same origin only, JSON only, bounded, known devices only.
    let r = post(
        r#"{"setpoint": 6}"#,
        vec![("Origin", "http://evil.example")],
    )
    .await
    .expect("post");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post(r#"{"setpoint": 6}"#, vec![("Sec-Fetch-Site", "cross-site")])
        .await
        .expect("post");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post(r#"{"setpoint": 6}"#, vec![("Host", "rebind.example:80")])
        .await
        .expect("post");
    assert_eq!(r.status, 403, "{}", r.body);
    let a = addr.clone();
    let r = tokio::task::spawn_blocking(move || {
        request(
            &a,
            "POST",
            "/api/v1/devices/boiler/set",
            &[("Content-Type", "text/plain")],
            br#"{"setpoint": 6}"#,
        )
        .expect("post")
    })
    .await
    .expect("post");
    assert_eq!(r.status, 415, "{}", r.body);
    let a = addr.clone();
    let r = tokio::task::spawn_blocking(move || {
        let big = format!(r#"{{"setpoint": 6, "pad": "{}"}}"#, "x".repeat(70 * 1024));
        post_json(&a, "/api/v1/devices/boiler/set", &[], &big)
    })
    .await
    .expect("post");
    assert_eq!(r.status, 413, "{}", r.body);
    let a = addr.clone();
    let r = tokio::task::spawn_blocking(move || {
        post_json(&a, "/api/v1/devices/nope/set", &[], r#"{"x": 1}"#)
    })
    .await
    .expect("post");
    assert_eq!(r.status, 404);
    // The device is unchanged by all of that.
    let a = addr.clone();
    let d = tokio::task::spawn_blocking(move || get(&a, "/api/v1/devices/boiler").json())
        .await
        .expect("get");
    assert_eq!(value(&d, "setpoint"), 55.5);
}

#[test]
fn token_guards_writes_and_is_required_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Commands on an address other than loopback, without a token: refused.
    let cfg = dir.path().join("remote.yaml");
    std::fs::write(
        &cfg,
        "gateway:\n  metrics:\n    listen: 0.0.0.0:9880\n    commands: true\n",
    )
    .expect("write");
    let out = support::fieldgate(&["check", "-c", cfg.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("remote.yaml:4:15: gateway.metrics.commands:")
            && err.contains("need `gateway.metrics.token` or `tokenFile`"),
        "{err}"
    );
    // A token file that is missing, and both token and tokenFile.
    std::fs::write(
        &cfg,
        "gateway:\n  metrics:\n    commands: true\n    tokenFile: nowhere.txt\n",
    )
    .expect("write");
    let out = support::fieldgate(&["check", "-c", cfg.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.metrics.tokenFile: cannot read"),
        "{err}"
    );
    std::fs::write(
        &cfg,
        "gateway:\n  metrics:\n    token: abc\n    tokenFile: t.txt\n",
    )
    .expect("write");
    let out = support::fieldgate(&["check", "-c", cfg.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not both"), "{err}");
    // With a token file the same config is fine.
    std::fs::write(dir.path().join("token.txt"), "0123456789abcdef-token\n").expect("token");
    std::fs::write(
        &cfg,
        "gateway:\n  metrics:\n    listen: 0.0.0.0:9880\n    commands: true\n    tokenFile: token.txt\n",
    )
    .expect("write");
    let out = support::fieldgate(&["check", "-c", cfg.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("commands on, token required"));

    // A running gateway with a token: writes need it, compared exactly
    // (the first line of the file, without its line ending).
    let token = dir.path().join("token.txt");
    std::fs::write(&token, "0123456789abcdef-token\r\nsecond line ignored\n").expect("token");
    let broker = Mosquitto::start();
    let (gw, addr2) = start(
        &broker,
        &format!(", commands: true, tokenFile: \"{}\"", token.display()),
    );
    let _ = &gw;
    let status = get(&addr2, "/api/v1/status").json();
    assert_eq!(status["commands"]["tokenRequired"], true);
    assert!(wait_until(WAIT, || {
        get(&addr2, "/api/v1/devices/boiler").json()["status"] == "online"
    }));
    let path = "/api/v1/devices/boiler/set";
    let r = post_json(&addr2, path, &[], r#"{"setpoint": 7}"#);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("bearer"));
    let r = post_json(
        &addr2,
        path,
        &[("Authorization", "Bearer 0123456789abcdef-tokeN")],
        r#"{"setpoint": 7}"#,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = post_json(
        &addr2,
        path,
        &[("Authorization", "Bearer 0123456789abcdef-token")],
        r#"{"setpoint": 7}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // With a token, any Host may be used (a name on the plant network).
    let r = post_json(
        &addr2,
        path,
        &[
            ("Authorization", "Bearer 0123456789abcdef-token"),
            ("Host", "gateway.plant.example:9880"),
        ],
        r#"{"setpoint": 8}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_failed_reload_shows_its_errors_with_file_and_line() {
    let broker = Mosquitto::start();
    let (gw, addr) = start(&broker, "");
    let status = get(&addr, "/api/v1/status").json();
    let hash = status["config"]["hash"].clone();
    gw.replace_config(
        "gateway:\n  namespace: test\ndevices:\n  - name: x\n    driver: dummy\n    model: nosuchmodel\n",
    );
    let mut status = serde_json::Value::Null;
    assert!(
        wait_until(WAIT, || {
            status = get(&addr, "/api/v1/status").json();
            status["config"]["lastReload"]["result"] == "invalid"
        }),
        "{}",
        gw.log()
    );
    let errors = status["config"]["lastReload"]["errors"]
        .as_array()
        .expect("errors");
    assert!(!errors.is_empty());
    let e = errors
        .iter()
        .find(|e| e["path"] == "devices[0].model")
        .expect("the error at devices[0].model");
    assert!(
        e["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("config.yaml")),
        "{e}"
    );
    assert_eq!(e["line"], 6, "{e}");
    assert_eq!(e["column"], 12, "{e}");
    assert!(e["text"]
        .as_str()
        .is_some_and(|t| t.contains("config.yaml:6:")));
    // The running config is the old one.
    assert_eq!(status["config"]["hash"], hash);
    assert_eq!(status["devices"]["total"], 3);
}

#[test]
fn connections_beyond_the_limit_wait_their_turn() {
    let broker = Mosquitto::start();
    let (_gw, addr) = start(&broker, "");
    // Fill every slot with a connection that sends nothing yet.
    let mut idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // The kernel queues connections in order: this one is accepted last.
    let mut extra = TcpStream::connect(&addr).expect("connect 65th");
    extra
        .set_read_timeout(Some(Duration::from_millis(800)))
        .expect("timeout");
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 64];
    let early = std::io::Read::read(&mut extra, &mut buf);
    assert!(
        early.is_err(),
        "the 65th connection was served while 64 were open: {early:?}"
    );
    // One slot frees up: the waiting request is answered.
    idle.pop();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let n = std::io::Read::read(&mut extra, &mut buf).expect("answer after a slot freed");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 "));
}
