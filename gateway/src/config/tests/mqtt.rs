//! `mqtt:`: transports, client and message options, stores.

use super::*;

#[test]
fn mqtt_transports_and_options_resolve() {
    use crate::config::resolved::ServerAddress;
    let cases = [
        (
            "tcp://h",
            ServerAddress::Tcp {
                host: "h".into(),
                port: 1883,
            },
        ),
        (
            "ssl://h",
            ServerAddress::Tls {
                host: "h".into(),
                port: 8883,
            },
        ),
        (
            "tcps://h:1",
            ServerAddress::Tls {
                host: "h".into(),
                port: 1,
            },
        ),
        (
            "ws://h/mqtt",
            ServerAddress::WebSocket {
                url: "ws://h:80/mqtt".into(),
                host: "h".into(),
                secure: false,
            },
        ),
        (
            "wss://[::1]:9",
            ServerAddress::WebSocket {
                url: "wss://[::1]:9/".into(),
                host: "::1".into(),
                secure: true,
            },
        ),
        (
            "unix:///run/m.sock",
            ServerAddress::Unix {
                path: "/run/m.sock".into(),
            },
        ),
    ];
    for (url, want) in cases {
        assert_eq!(crate::config::load::parse_server(url), Ok(want), "{url}");
    }
    use crate::config::client::ServerError;
    assert_eq!(
        crate::config::load::parse_server("unix://"),
        Err(ServerError::NoSocketPath("unix://".into()))
    );
    let e = crate::config::load::parse_server("quic://h").unwrap_err();
    assert_eq!(e, ServerError::UnknownScheme("quic".into()));
    assert_eq!(
        e.to_string(),
        "unknown server scheme `quic`; allowed: tcp, ssl, tls, tcps, ws, wss, unix"
    );
    // Credentials in the URL are refused without repeating them.
    for url in ["tcp://bob:s3cret@h:1883", "wss://bob:s3cret@h/mqtt"] {
        let e = crate::config::load::parse_server(url)
            .unwrap_err()
            .to_string();
        assert!(e.contains("basicAuth") && !e.contains("s3cret"), "{e}");
    }
    ok("mqtt:\n  client: {server: 'wss://h', protocolVersion: 5, resumeSubs: true, order: false, pingTimeout: 2s, writeTimeout: 1s, httpHeaders: {X-A: b, X-B: [c, d]}, tlsConfig: {insecureSkipVerify: true}}\n  message: {contentType: text/json, userProperties: {a: b}, messageExpiryInterval: 1m}\n");
    ok("mqtt:\n  client: {protocolVersion: 3, clientId: short}\n");
}

#[test]
fn mqtt_option_errors_are_located() {
    let e = errs(
        "mqtt:\n  client:\n    protocolVersion: 3\n    clientId: a-client-id-longer-than-23\n",
    );
    has(
        &e,
        "c.yaml:4:15: mqtt.client.clientId: ",
        "at most 23 characters",
    );
    let e = errs("mqtt:\n  client:\n    server: ws://h\n    protocolVersion: 3\n    clientId: x\n");
    has(
        &e,
        "c.yaml:4:22: mqtt.client.protocolVersion: ",
        "not over ws/wss",
    );
    let e = errs("mqtt:\n  client:\n    tlsConfig:\n      caFile: /nonexistent/ca.pem\n");
    has(
        &e,
        "c.yaml:4:15: mqtt.client.tlsConfig.caFile: ",
        "cannot read",
    );
    let e = errs("mqtt:\n  client:\n    tlsConfig:\n      caFilePem: not a pem\n");
    has(&e, "mqtt.client.tlsConfig.caFilePem: ", "PEM certificates");
    let e = errs("mqtt:\n  client:\n    tlsConfig:\n      certFilePem: x\n");
    has(&e, "mqtt.client.tlsConfig.certFilePem: ", "keyFile");
    let e = errs("mqtt:\n  client:\n    httpHeaders: {'bad header': x}\n");
    has(
        &e,
        "c.yaml:3:19: mqtt.client.httpHeaders.bad header: ",
        "not a valid HTTP header",
    );
    let e = errs("mqtt:\n  message:\n    messageExpiryInterval: 500ms\n");
    has(&e, "mqtt.message.messageExpiryInterval: ", "whole seconds");
    let e = errs("mqtt:\n  client:\n    server: 'quic://h'\n");
    has(
        &e,
        "mqtt.client.server: ",
        "allowed: tcp, ssl, tls, tcps, ws, wss, unix",
    );
}

#[test]
fn file_store_options_resolve_with_defaults() {
    use crate::config::resolved::StoreSettings;
    let r = ok("gateway: {stateDirectory: /var/lib/fg}\nmqtt:\n  client:\n    clientId: 'gw/1'\n    store: {type: file}\n");
    assert_eq!(
        r.sessions[0].store,
        StoreSettings::File {
            directory: "/var/lib/fg/mqtt/gw_1".into(),
            max_bytes: 64 << 20,
            max_age: None,
            min_free_bytes: 64 << 20,
        }
    );
    let r = ok("mqtt:\n  client:\n    store: {type: file, direcotryPrefix: /data/q, maxBytes: 1MiB, maxAge: 2h, minFreeBytes: 1MiB}\n");
    assert_eq!(
        r.sessions[0].store,
        StoreSettings::File {
            directory: "/data/q".into(),
            max_bytes: 1 << 20,
            max_age: Some(std::time::Duration::from_secs(7200)),
            min_free_bytes: 1 << 20,
        }
    );
    // Two sessions inheriting one directory get a subdirectory each.
    let r = ok("mqtt:\n  client:\n    clientId: a\n    store: {type: file, directoryPrefix: /q}\ndevices:\n  - name: d\n    driver: dummy\n    model: fan\n    mqtt: {client: {clientId: b}}\n");
    let dirs: Vec<_> = r
        .sessions
        .iter()
        .map(|s| match &s.store {
            StoreSettings::File { directory, .. } => directory.display().to_string(),
            StoreSettings::Memory => String::new(),
        })
        .collect();
    assert_eq!(dirs, ["/q/a", "/q/b"]);
    let e = errs("mqtt:\n  client:\n    store: {type: file, maxBytes: 1KiB}\n");
    has(&e, "c.yaml:3:", "mqtt.client.store.maxBytes: ");
    assert!(e[0].contains("at least 64KiB"), "{e:?}");
}

#[test]
fn response_topic_filters_are_checked_where_they_are_written() {
    let e = errs("mqtt:\n  message:\n    responseTopics:\n      - replies/#\n      - ''\n      - a/#/b\n      - a/b+\n      - x/+/y\n");
    has(
        &e,
        "c.yaml:5:9: mqtt.message.responseTopics[1]",
        "must not be empty",
    );
    has(
        &e,
        "c.yaml:6:9: mqtt.message.responseTopics[2]",
        "`#` must be a whole level and the last one",
    );
    has(
        &e,
        "c.yaml:7:9: mqtt.message.responseTopics[3]",
        "`+` must be a whole level",
    );
    assert_eq!(e.len(), 3, "{e:?}");
    let e = errs("devices:\n  - name: fan\n    driver: dummy\n    model: fan\n    mqtt: {message: {responseTopics: ['#/x']}}\n");
    has(
        &e,
        "devices[0].mqtt.message.responseTopics[0]",
        "`#` must be a whole level",
    );
    let r = ok("mqtt:\n  message: {responseTopics: ['replies/#', '+/r', '#']}\n");
    assert_eq!(r.sessions.len(), 1);
    ok("mqtt:\n  message: {responseTopics: none}\n");
}

#[test]
fn a_server_list_keeps_its_order_and_each_entry_is_checked() {
    let r = ok("mqtt:\n  client:\n    server: [tcp://a:1884, 'ssl://b', ws://c/mqtt]\n");
    let s = &r.sessions[0];
    let all: Vec<String> = s.servers().map(ToString::to_string).collect();
    assert_eq!(all, ["tcp://a:1884", "tls://b:8883", "ws://c:80/mqtt"]);
    assert_eq!(s.server_count(), 3);
    // Rounds wrap around.
    assert_eq!(s.server_at(3).to_string(), "tcp://a:1884");
    let one = ok("mqtt:\n  client:\n    server: tcp://a\n");
    assert_eq!(one.sessions[0].server_count(), 1);
    let e = errs("mqtt:\n  client:\n    server: [tcp://a, 'quic://b']\n");
    has(&e, "mqtt.client.server: ", "unknown server scheme `quic`");
    let e = errs("mqtt:\n  client:\n    server: []\n");
    has(&e, "mqtt.client.server: ", "lists no server");
    let e = errs(
        "mqtt:\n  client:\n    server: [tcp://a, ws://b]\n    protocolVersion: 3\n    clientId: x\n",
    );
    has(&e, "mqtt.client.protocolVersion: ", "not over ws/wss");
}
