//! The end-to-end tests of fieldgate, as one test binary: one module per
//! topic (the former `gateway/tests/<topic>.rs` files; a test is named
//! `<topic>::<test>`, e.g. `cargo test -p fieldgate --test e2e backbone::`).
//!
//! One binary instead of one per file: the harness (`support/`, the shared
//! `fieldgate-testkit` crate and the drivers' test servers) is compiled and
//! linked once. All modules run in one process: a test must not change
//! process-wide state (environment, working directory, limits, signal
//! handling); everything it starts (brokers, gateways, servers) is its own,
//! on free ports.
//!
//! A new test file `gateway/tests/e2e/<topic>.rs` gets a `mod <topic>;` line
//! below and uses the harness with `use crate::support;`.

// Shared harness of these tests.
mod fault_rig;
// Stops Home Assistant with kill(2) (a `// SAFETY:` comment at the call).
#[allow(unsafe_code)]
mod homeassistant;
#[path = "../../../drivers/tests/modbus_server/mod.rs"]
mod modbus_server;
#[path = "../../../drivers/tests/opcua_server/mod.rs"]
mod opcua_server;
// geteuid(2) for the unprivileged gateway (`// SAFETY:` at the call).
#[allow(unsafe_code)]
mod support;

// The tests, one module per topic.
mod backbone;
mod ble;
mod ble_adverts;
mod ble_parsers;
mod broker_cluster;
mod broker_log;
mod brokers;
mod client_options;
mod config_cli;
mod configs_schema;
mod delivery_e2e;
mod discover_opcua;
mod embedded_broker;
mod example_configs;
mod faults;
// geteuid(2) to skip the root-only test (`// SAFETY:` at the call).
#[allow(unsafe_code)]
mod faults_dns;
// geteuid(2) to skip the root-only test (`// SAFETY:` at the call).
#[allow(unsafe_code)]
mod faults_modbus;
mod fleet;
mod fuzz_regressions;
mod harness_smoke;
mod homeassistant_e2e;
mod modbus_e2e;
mod opcua_e2e;
mod pacing;
mod probe_modbus;
mod profiles;
mod quickstart;
mod reload_e2e;
mod security;
mod sparkplug_e2e;
mod status_page;
mod status_page_browser;
mod store_e2e;
mod systemd;
mod transports;
mod untrusted;
