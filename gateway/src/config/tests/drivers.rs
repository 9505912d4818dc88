//! Device and driver rules: properties, the dummy, modbus, ble and opcua
//! drivers, and drivers this build lacks.

use fieldgate_drivers::dummy::Generator;
use fieldgate_drivers::{Connection, PropertyAddress, Value};

use super::*;

#[test]
fn not_supported_yet_is_an_error() {
    // Defaults written out are fine.
    ok("mqtt:\n  client: {pingTimeout: 10s, writeTimeout: 30s, order: true, resumeSubs: false, store: {type: memory}}\n");
    let opcua = "devices:\n  - name: o\n    driver: opcua\n    protocol: {endpoint: 'opc.tcp://plc:4840'}\n    properties: [{name: s, nodeId: 'ns=2;s=S', type: float64}]\n";
    #[cfg(not(feature = "opcua"))]
    {
        let e = errs(opcua);
        assert_eq!(
            e,
            vec![format!(
                "c.yaml:3:13: devices[0].driver: driver `opcua` is not supported by this build yet; drivers available: {}",
                fieldgate_drivers::enabled_drivers().join(", ")
            )]
        );
    }
    #[cfg(feature = "opcua")]
    ok(opcua);
    let e = errs("devices:\n  - name: o\n    driver: ble\n    protocol: {address: 'A4:C1', endpoint: x}\n    properties: [{name: s, characteristic: abc, type: int16, register: coil}]\n");
    #[cfg(not(feature = "ble"))]
    has(
        &e,
        "c.yaml:3:13: devices[0].driver: ",
        "not supported by this build yet",
    );
    #[cfg(feature = "ble")]
    {
        has(
            &e,
            "c.yaml:4:25: devices[0].protocol.address: ",
            "is not a Bluetooth address",
        );
        has(
            &e,
            "c.yaml:5:44: devices[0].properties[0].characteristic: ",
            "is not a GATT UUID",
        );
    }
    has(
        &e,
        "c.yaml:4:34: devices[0].protocol.endpoint: ",
        "belongs to the opcua driver",
    );
    has(
        &e,
        "c.yaml:5:62: devices[0].properties[0].register: ",
        "belongs to the modbus driver",
    );
}

#[test]
fn numeric_only_keys_and_enum_keys() {
    let e = errs("devices:\n  - name: a\n    driver: dummy\n    properties:\n      - {name: s, type: string, scale: 2, deadband: 1, simulate: {constant: x}}\n      - {name: e, type: uint8, enum: {0: a, 300: b, -1: c}, simulate: {constant: 0}}\n      - {name: b, type: bool, enum: {true: on, 2: x}, simulate: {constant: true}}\n");
    has(
        &e,
        "c.yaml:5:33: devices[0].properties[0].scale: ",
        "only to numeric types",
    );
    has(
        &e,
        "c.yaml:5:43: devices[0].properties[0].deadband: ",
        "only to numeric types",
    );
    has(
        &e,
        "c.yaml:6:45: devices[0].properties[1].enum.300: ",
        "out of range for `uint8`",
    );
    has(
        &e,
        "c.yaml:6:53: devices[0].properties[1].enum.-1: ",
        "out of range",
    );
    has(
        &e,
        "c.yaml:7:48: devices[0].properties[2].enum.2: ",
        "does not fit",
    );
    assert_eq!(e.len(), 5, "{}", e.join("\n"));
}

#[test]
fn scale_factor_must_name_another_plain_integer_property() {
    let lines = [
        "      - {name: v, type: uint16, scaleFactor: v, simulate: {constant: 1}}",
        "      - {name: w, type: uint16, scaleFactor: w_sff, simulate: {constant: 1}}",
        "      - {name: w_sf, type: float32, simulate: {constant: 1}}",
        "      - {name: x, type: int16, scaleFactor: w_sf, simulate: {constant: 1}}",
        "      - {name: y, type: int16, scaleFactor: x, simulate: {constant: 1}}",
        "      - {name: s, type: string, scaleFactor: x, simulate: {constant: a}}",
        "      - {name: z, type: int16, scaleFactor: xx, simulate: {constant: 1}}",
    ];
    let e = errs(&format!(
        "devices:\n  - name: a\n    driver: dummy\n    properties:\n{}\n",
        lines.join("\n")
    ));
    has(
        &e,
        "c.yaml:5:46: devices[0].properties[0].scaleFactor: ",
        "`scaleFactor: v` names the property itself",
    );
    has(
        &e,
        "c.yaml:6:46: devices[0].properties[1].scaleFactor: ",
        "this device has no property `w_sff`; name an integer property",
    );
    // A suggestion names only what would be valid: another integer property.
    has(
        &e,
        "c.yaml:11:45: devices[0].properties[6].scaleFactor: ",
        "this device has no property `xx` (did you mean `x`?)",
    );
    has(
        &e,
        "c.yaml:8:45: devices[0].properties[3].scaleFactor: ",
        "`w_sf` is `float32`; a scale factor must be an integer property",
    );
    has(
        &e,
        "c.yaml:9:45: devices[0].properties[4].scaleFactor: ",
        "`x` has a `scaleFactor` itself (`w_sf`); scale factors do not chain",
    );
    has(
        &e,
        "c.yaml:10:33: devices[0].properties[5].scaleFactor: ",
        "only to numeric types",
    );
    assert_eq!(e.len(), 6, "{}", e.join("\n"));
}

#[test]
fn scale_factor_resolves_to_the_named_property() {
    let r = ok("devices:\n  - name: a\n    driver: dummy\n    properties:\n      - {name: PhVphA, type: uint16, scaleFactor: V_SF, simulate: {constant: 2301}}\n      - {name: V_SF, type: int16, simulate: {constant: -1}}\n");
    let props = &r.devices[0].properties;
    let sf = props[0].scale_factor().expect("linked");
    assert_eq!((&*sf.name, sf.index), ("V_SF", 1));
    assert!(props[0].is_scaled() && !props[1].is_scaled());
    assert!(props[1].scale_factor().is_none());
    let report = crate::config::report::render(&r);
    assert!(
        report.contains("PhVphA: uint16, read-only, scaleFactor V_SF"),
        "{report}"
    );
}

#[test]
fn dummy_rules() {
    let e = errs("devices:\n  - name: a\n    driver: dummy\n    model: fan\n    properties: []\n");
    has(
        &e,
        "c.yaml:5:5: devices[0].properties: ",
        "either `model` or `properties`",
    );
    let e = errs("devices:\n  - name: a\n    driver: dummy\n    properties:\n      - {name: x, type: int8}\n      - {name: y, type: int8, simulate: {constant: 200}}\n      - {name: z, type: string, simulate: {counter: {}}}\n      - {name: w, type: float32, simulate: {sine: {min: 5, max: 1, period: 0s}}}\n");
    has(
        &e,
        "c.yaml:5:9: devices[0].properties[0]: ",
        "needs `simulate`",
    );
    has(
        &e,
        "c.yaml:6:52: devices[0].properties[1].simulate.constant: ",
        "out of range for `int8`",
    );
    has(
        &e,
        "c.yaml:7:44: devices[0].properties[2].simulate.counter: ",
        "generates numbers",
    );
    has(
        &e,
        "devices[0].properties[3].simulate.sine.max: ",
        "below min",
    );
    has(
        &e,
        "devices[0].properties[3].simulate.sine.period: ",
        "greater than 0s",
    );
    let e = errs("devices:\n  - name: a\n    driver: modbus\n    model: fan\n    protocol: {tcp: {endpoint: 'h:502'}}\n    properties: [{name: x, register: coil, address: 0, type: bool, simulate: {constant: true}}]\n");
    has(&e, "c.yaml:4:5: devices[0].model: ", "dummy driver");
    has(
        &e,
        "devices[0].properties[0].simulate: ",
        "belongs to the dummy driver",
    );
    let r = ok("devices:\n  - name: a\n    driver: dummy\n    properties:\n      - {name: c, type: uint32, simulate: {counter: {start: 5, step: 2}}}\n      - {name: k, type: float32, writable: true, simulate: {constant: 21}}\n      - {name: s, type: string, simulate: {constant: hello}}\n");
    assert_eq!(
        r.devices[0].spec.properties[0].address,
        PropertyAddress::Simulated(Generator::Counter {
            start: 5.0,
            step: 2.0
        })
    );
    assert_eq!(
        r.devices[0].spec.properties[1].address,
        PropertyAddress::Simulated(Generator::Constant(Value::Float(21.0)))
    );
    assert_eq!(
        r.devices[0].spec.properties[2].address,
        PropertyAddress::Simulated(Generator::Constant(Value::String("hello".into())))
    );
}

#[cfg(feature = "modbus")]
#[test]
fn modbus_rules() {
    let head = "devices:\n  - name: m\n    driver: modbus\n    protocol: {tcp: {endpoint: 'h:502'}}\n    properties:\n";
    let cases = [
        (
            "{name: a, register: coil, address: 0, type: int16}",
            "c.yaml:6:53: devices[0].properties[0].type: ",
            "single bit",
        ),
        (
            "{name: a, register: holding, address: 0, type: bool, bit: 16}",
            "c.yaml:6:67: devices[0].properties[0].bit: ",
            "0..=15",
        ),
        (
            "{name: a, register: coil, address: 0, type: bool, bit: 1}",
            "c.yaml:6:59: devices[0].properties[0].bit: ",
            "only to input and holding",
        ),
        (
            "{name: a, register: holding, address: 0, type: int16, bit: 1}",
            "c.yaml:6:63: devices[0].properties[0].bit: ",
            "needs `type: bool`",
        ),
        (
            "{name: a, register: holding, address: 0, type: string}",
            "c.yaml:6:9: devices[0].properties[0]: ",
            "needs `quantity`",
        ),
        (
            "{name: a, register: holding, address: 0, type: int32, quantity: 2}",
            "c.yaml:6:63: devices[0].properties[0].quantity: ",
            "only to `string` and `bytes`",
        ),
        (
            "{name: a, register: holding, address: 0, type: int32, byteOrder: little}",
            "c.yaml:6:74: devices[0].properties[0].byteOrder: ",
            "ABCD",
        ),
        (
            "{name: a, register: input, address: 0, type: int16, writable: true}",
            "c.yaml:6:71: devices[0].properties[0].writable: ",
            "read-only",
        ),
        (
            "{name: a, register: discreteInput, address: 0, type: bool, writable: true}",
            "devices[0].properties[0].writable: ",
            "read-only",
        ),
        (
            "{name: a, register: holding, address: 65534, type: int64}",
            "c.yaml:6:47: devices[0].properties[0].address: ",
            "past 65535",
        ),
        (
            "{name: a, address: 0, type: int16}",
            "c.yaml:6:9: devices[0].properties[0]: ",
            "needs `register`",
        ),
        (
            "{name: a, register: holding, type: int16}",
            "c.yaml:6:9: devices[0].properties[0]: ",
            "needs `address`",
        ),
        (
            "{name: a, register: holding, address: 0, type: int16, nodeId: x}",
            "c.yaml:6:63: devices[0].properties[0].nodeId: ",
            "belongs to the opcua driver; a modbus property takes",
        ),
        (
            "{name: a, register: hold, address: 0, type: int16}",
            "c.yaml:6:29: devices[0].properties[0].register: ",
            "did you mean `holding`?",
        ),
    ];
    for (p, prefix, needle) in cases {
        let e = errs(&format!("{head}      - {p}\n"));
        has(&e, prefix, needle);
    }
    // An invalid `register` is reported once, not also as missing.
    let e = errs(&format!(
        "{head}      - {{name: a, register: hold, address: 0, type: int16}}\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    let e = errs("devices:\n  - name: m\n    driver: modbus\n    protocol: {tcp: {endpoint: 'h:502'}, rtu: {port: /dev/x}, maxRegistersPerRead: 126, byteOrder: big}\n    properties: [{name: a, register: coil, address: 0, type: bool}]\n");
    has(
        &e,
        "c.yaml:4:42: devices[0].protocol.rtu: ",
        "exactly one of",
    );
    has(
        &e,
        "c.yaml:4:84: devices[0].protocol.maxRegistersPerRead: ",
        "1..=125",
    );
    has(&e, "c.yaml:4:100: devices[0].protocol.byteOrder: ", "ABCD");
    let e = errs("devices:\n  - name: m\n    driver: modbus\n    properties: [{name: a, register: coil, address: 0, type: bool}]\n");
    has(&e, "c.yaml:3:5: devices[0].driver: ", "needs `protocol`");

    use fieldgate_drivers::modbus::*;
    let r = ok("devices:\n  - name: m\n    driver: modbus\n    protocol: {rtu: {port: /dev/ttyUSB0}, byteOrder: CDAB}\n    properties:\n      - {name: a, register: holding, address: 3, type: float32}\n      - {name: b, register: holding, address: 5, type: float32, byteOrder: DCBA}\n      - {name: c, register: holding, address: 7, type: uint8, byte: high}\n      - {name: d, register: input, address: 8, type: int8}\n");
    let Connection::Modbus(c) = &r.devices[0].spec.connection else {
        panic!()
    };
    assert_eq!(c.unit_id, 1);
    assert_eq!(c.max_registers_per_read, 125);
    assert_eq!(c.max_gap, 10);
    assert_eq!(
        c.transport,
        Transport::Rtu(SerialSettings {
            port: "/dev/ttyUSB0".into(),
            baud_rate: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1
        })
    );
    let addr = |i: usize| match &r.devices[0].spec.properties[i].address {
        PropertyAddress::Modbus(a) => a.clone(),
        _ => panic!(),
    };
    assert_eq!(addr(0).byte_order, ByteOrder::Cdab);
    assert_eq!(addr(1).byte_order, ByteOrder::Dcba);
    assert_eq!(addr(2).byte, ByteSelect::High);
    assert_eq!(addr(3).byte, ByteSelect::Low);
    assert_eq!(addr(3).kind, RegisterKind::Input);
}

#[cfg(feature = "ble")]
#[test]
fn ble_is_lowered_with_defaults() {
    use fieldgate_drivers::ble::{Access, BleConnection, Endian, Target};
    let r = ok("devices:\n  - name: t\n    driver: ble\n    protocol: {name: LYWSD03MMC, byteOrder: big}\n    properties:\n      - {name: a, service: '0x180F', characteristic: '2a19', type: uint8}\n      - {name: b, characteristic: ebe0ccc1-7a0a-4b0c-8a1a-6ff2997da3a6, type: int16, byteOrder: little, byteOffset: 2, writable: true}\n      - {name: c, characteristic: '2a00', access: notify, type: string}\n");
    let d = &r.devices[0];
    assert_eq!(
        d.spec.connection,
        Connection::Ble(BleConnection {
            adapter: None,
            target: Target::Name("LYWSD03MMC".into()),
            scan_timeout: std::time::Duration::from_secs(30),
        })
    );
    let addr = |i: usize| match &d.spec.properties[i].address {
        PropertyAddress::Ble(a) => a.clone(),
        other => panic!("{other:?}"),
    };
    let a = addr(0);
    assert_eq!(
        a.service.map(|u| u.to_string()),
        Some("0000180f-0000-1000-8000-00805f9b34fb".to_string())
    );
    assert_eq!(
        (a.access, a.byte_order, a.byte_offset),
        (Access::Read, Endian::Big, 0)
    );
    let b = addr(1);
    assert_eq!(
        (b.access, b.byte_order, b.byte_offset),
        (Access::ReadWrite, Endian::Little, 2)
    );
    assert!(d.spec.properties[1].writable && d.properties[1].writable);
    assert_eq!(addr(2).access, Access::Notify);
    assert!(!d.spec.properties[2].writable);
    let e = errs("devices:\n  - name: t\n    driver: ble\n    protocol: {address: 'A4:C1:38:00:11:22', name: x}\n    properties: [{name: a, characteristic: '2a19', type: uint8}]\n");
    has(&e, "c.yaml:4:46: devices[0].protocol.name: ", "not both");
}

#[cfg(feature = "opcua")]
#[test]
fn opcua_devices_lower_to_connections_and_node_addresses() {
    use fieldgate_drivers::opcua::{Identity, Mode, Policy, SecurityMode};
    let r = ok("gateway: {stateDirectory: /var/lib/fg}\ndevices:\n  - name: o\n    driver: opcua\n    protocol: {endpoint: 'opc.tcp://plc:4840', securityPolicy: Basic256Sha256, username: op, password: pw, trustedServerCertificates: /etc/fg/trusted, mode: poll}\n    properties: [{name: s, nodeId: 'ns=2;s=Line1.Speed', type: float64}]\n");
    let d = &r.devices[0];
    let Connection::OpcUa(c) = &d.spec.connection else {
        panic!("not opcua: {:?}", d.spec.connection)
    };
    assert_eq!(c.endpoint, "opc.tcp://plc:4840");
    assert_eq!(c.policy, Policy::Basic256Sha256);
    // A policy without a mode means the strongest mode.
    assert_eq!(c.security_mode, SecurityMode::SignAndEncrypt);
    assert_eq!(c.mode, Mode::Poll);
    assert_eq!(
        c.identity,
        Identity::UserName {
            user: "op".into(),
            password: "pw".into()
        }
    );
    assert_eq!(c.trusted_dir, Path::new("/etc/fg/trusted"));
    assert_eq!(c.state_dir, Path::new("/var/lib/fg/opcua"));
    assert!(c.certificate.is_none());
    let PropertyAddress::OpcUa(a) = &d.spec.properties[0].address else {
        panic!("not an opcua address")
    };
    assert_eq!(a.node_id, "ns=2;s=Line1.Speed");

    let e = errs("devices:\n  - name: o\n    driver: opcua\n    protocol: {endpoint: 'http://plc', securityPolicy: None, securityMode: Sign, password: x, certificate: c.der}\n    properties: [{name: s, nodeId: 'ns=2;x=1', type: float64}]\n");
    has(
        &e,
        "c.yaml:4:26: devices[0].protocol.endpoint: ",
        "is not an OPC-UA endpoint",
    );
    has(
        &e,
        "devices[0].protocol.securityMode: ",
        "needs a securityPolicy other than None",
    );
    has(
        &e,
        "devices[0].protocol.password: ",
        "a password needs `username`",
    );
    has(
        &e,
        "devices[0].protocol.certificate: ",
        "needs `privateKey` too",
    );
    has(
        &e,
        "c.yaml:5:",
        "devices[0].properties[0].nodeId: `ns=2;x=1` is not a valid NodeId",
    );
}

#[cfg(feature = "opcua")]
#[test]
fn opcua_password_over_no_security_needs_allow_plaintext_password() {
    let dev = |extra: &str| {
        format!("gateway: {{stateDirectory: /var/lib/fg}}\ndevices:\n  - name: o\n    driver: opcua\n    protocol: {{endpoint: 'opc.tcp://plc:4840', username: op, password: pw{extra}}}\n    properties: [{{name: s, nodeId: 'ns=2;s=S', type: float64}}]\n")
    };
    let e = errs(&dev(""));
    has(
        &e,
        "c.yaml:5:",
        "devices[0].protocol.username: with `securityPolicy: None` the user name and password travel in plain text",
    );
    let e = errs(&dev(
        ", securityPolicy: None, allowPlaintextPassword: false",
    ));
    has(
        &e,
        "devices[0].protocol.username",
        "allowPlaintextPassword: true",
    );
    let r = ok(&dev(", allowPlaintextPassword: true"));
    let Connection::OpcUa(c) = &r.devices[0].spec.connection else {
        panic!("not opcua")
    };
    assert!(matches!(
        c.identity,
        fieldgate_drivers::opcua::Identity::UserName { .. }
    ));
    // Anonymous over None needs nothing; the key belongs to opcua only.
    ok("devices:\n  - name: o\n    driver: opcua\n    protocol: {endpoint: 'opc.tcp://plc:4840'}\n    properties: [{name: s, nodeId: 'ns=2;s=S', type: float64}]\n");
    let e = errs("devices:\n  - name: m\n    driver: modbus\n    protocol: {tcp: {endpoint: 'h:502'}, allowPlaintextPassword: true}\n    properties: [{name: r, register: holding, address: 0, type: uint16}]\n");
    has(
        &e,
        "devices[0].protocol.allowPlaintextPassword",
        "belongs to the opcua driver",
    );
}
