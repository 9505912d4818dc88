"""Adapters: how each gateway is configured, started and read.

Every adapter gets the same load (a `Load`: devices = Modbus unit ids 1..D
on one Modbus TCP simulator, R holding registers each, polled every
`interval` seconds) and the same broker, and turns it into:

- `setup(run_dir)`: the gateway's config files, written into `run_dir`;
- `command(run_dir)`: the argv that runs it (the process measured);
- `topics`: what the subscriber subscribes to;
- `values(topic, payload)`: the (device, tag, value) triples of one message.

The gateways are configured as their documentation shows for polling
holding registers and publishing every read (not only changes), with their
defaults otherwise; where a default would throttle the load (a peer's
built-in rate limits) the adapter says so in `NOTES`.
"""

import csv
import json
import os
import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    """What every gateway is asked to do."""

    devices: int
    registers: int
    interval: float  # seconds between polls of one device
    modbus_port: int
    mqtt_port: int

    @property
    def expected_values_per_second(self) -> float:
        return self.devices * self.registers / self.interval


def tag(r: int) -> str:
    return f"r{r:03}"


def device(d: int) -> str:
    return f"dev-{d:03}"


class Fieldgate:
    """fieldgate (this repository's release binary)."""

    name = "fieldgate"
    NOTES = "release build of this checkout; QoS 0, JSON state per device per poll"

    def __init__(self, load: Load, binary: str):
        self.load = load
        self.binary = binary
        self.topics = ["fieldgate/bench/+"]

    def setup(self, run_dir: str) -> None:
        ld = self.load
        ms = max(1, round(ld.interval * 1000))
        y = [
            "gateway:",
            "  namespace: bench",
            f'  stateDirectory: "{run_dir}/state"',
            '  metrics: { listen: "" }',
            "  log: { level: warn, format: text }",
            "mqtt:",
            "  client:",
            f"    server: tcp://127.0.0.1:{ld.mqtt_port}",
            "  message:",
            "    topic: { prefix: fieldgate, with: nn }",
            "    qos: 0",
            "devices:",
        ]
        for d in range(1, ld.devices + 1):
            y += [
                f"  - name: {device(d)}",
                "    driver: modbus",
                f"    syncInterval: {ms}ms",
                "    timeout: 1s",
                "    protocol:",
                f'      tcp: {{ endpoint: "127.0.0.1:{ld.modbus_port}" }}',
                f"      unitId: {d}",
                "    properties:",
            ]
            for r in range(ld.registers):
                y.append(f"      - {{ name: {tag(r)}, register: holding, address: {r}, type: uint16 }}")
        os.makedirs(f"{run_dir}/state", exist_ok=True)
        with open(f"{run_dir}/config.yaml", "w") as f:
            f.write("\n".join(y) + "\n")

    def command(self, run_dir: str) -> list:
        return [self.binary, "run", "-c", f"{run_dir}/config.yaml"]

    def env(self, run_dir: str) -> dict:
        return {"RUST_LOG": os.environ.get("RUST_LOG", "warn")}

    def values(self, topic: str, payload: bytes):
        dev = topic.rsplit("/", 1)[-1]
        if dev.startswith("$"):
            return ()
        try:
            props = json.loads(payload).get("properties") or {}
        except (ValueError, AttributeError):
            return ()
        return ((dev, k, v) for k, v in props.items() if isinstance(v, int))


class ThingsBoard:
    """ThingsBoard IoT Gateway (PyPI `thingsboard-gateway`), Modbus connector."""

    name = "thingsboard-gateway"
    NOTES = (
        "PyPI thingsboard-gateway with pymodbus 3.9.2 (the version its Modbus connector "
        "pins); memory storage; reportStrategy ON_RECEIVED; statistics and remote "
        "configuration off; QoS 1 as shipped; publishes v1/gateway/telemetry"
    )

    def __init__(self, load: Load, venv: str):
        self.load = load
        self.venv = venv
        self.topics = ["v1/gateway/telemetry"]

    def setup(self, run_dir: str) -> None:
        ld = self.load
        cfg = f"{run_dir}/config"
        os.makedirs(f"{cfg}/logs", exist_ok=True)
        os.makedirs(f"{run_dir}/data", exist_ok=True)
        slaves = []
        for d in range(1, ld.devices + 1):
            slaves.append(
                {
                    "host": "127.0.0.1",
                    "port": ld.modbus_port,
                    "type": "tcp",
                    "method": "socket",
                    "unitId": d,
                    "deviceName": device(d),
                    "deviceType": "default",
                    "timeout": 35,
                    "byteOrder": "BIG",
                    "wordOrder": "BIG",
                    "retries": 3,
                    "retryOnEmpty": True,
                    "retryOnInvalid": True,
                    "pollPeriod": max(1, round(ld.interval * 1000)),
                    "connectAttemptTimeMs": 5000,
                    "connectAttemptCount": 5,
                    "waitAfterFailedAttemptsMs": 300000,
                    "attributes": [],
                    "timeseries": [
                        {
                            "tag": tag(r),
                            "type": "16uint",
                            "functionCode": 3,
                            "objectsCount": 1,
                            "address": r,
                        }
                        for r in range(ld.registers)
                    ],
                    "attributeUpdates": [],
                    "rpc": [],
                }
            )
        with open(f"{cfg}/modbus.json", "w") as f:
            json.dump({"master": {"slaves": slaves}}, f)
        main = {
            "thingsboard": {
                "host": "127.0.0.1",
                "port": ld.mqtt_port,
                "remoteShell": False,
                "remoteConfiguration": False,
                "latencyDebugMode": False,
                "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
                "deviceFiltering": {"enable": False},
                "maxPayloadSizeBytes": 8196,
                "minPackSendDelayMS": 50,
                "minPackSizeToSend": 500,
                "checkConnectorsConfigurationInSeconds": 3600,
                "handleDeviceRenaming": False,
                "security": {"type": "accessToken", "accessToken": "bench"},
                "qos": 1,
                "reportStrategy": {"type": "ON_RECEIVED"},
                "checkingDeviceActivity": {"checkDeviceInactivity": False},
            },
            "storage": {
                "type": "memory",
                "read_records_count": 100,
                "max_records_count": 100000,
            },
            "grpc": {"enabled": False},
            "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
        }
        with open(f"{cfg}/tb_gateway.json", "w") as f:
            json.dump(main, f)
        src = os.path.join(
            self.venv,
            "lib/python3.11/site-packages/thingsboard_gateway/config/logs.json",
        )
        with open(src) as f:
            logs = f.read()
        # Its shipped logging config writes DEBUG/INFO files under ./logs;
        # the run directory's logs at WARNING keep the disk out of the figure.
        logs = logs.replace("./logs/", f"{cfg}/logs/").replace('"INFO"', '"WARNING"').replace(
            '"DEBUG"', '"WARNING"'
        )
        with open(f"{cfg}/logs.json", "w") as f:
            f.write(logs)

    def command(self, run_dir: str) -> list:
        return [f"{self.venv}/bin/thingsboard-gateway"]

    def env(self, run_dir: str) -> dict:
        # Its `thingsboard-gateway` entry point reads the config directory
        # from this variable only.
        return {"TB_GW_CONFIG_DIR": f"{run_dir}/config/"}

    def values(self, topic: str, payload: bytes):
        try:
            msg = json.loads(payload)
        except ValueError:
            return ()
        out = []
        if not isinstance(msg, dict):
            return out
        for dev, entries in msg.items():
            for e in entries if isinstance(entries, list) else [entries]:
                vals = e.get("values", e) if isinstance(e, dict) else {}
                for k, v in vals.items():
                    if isinstance(v, int):
                        out.append((dev, k, v))
        return out


class Modbus2Mqtt:
    """modbus2mqtt (PyPI `modbus2mqtt`, "spicierModbus2mqtt")."""

    name = "modbus2mqtt"
    NOTES = (
        "PyPI modbus2mqtt 0.73 with pymodbus 3.9.2 (newer pymodbus renamed the `slave=` "
        "argument it passes); one poller per device, --always-publish, "
        "--set-loop-break 0.001 (default 0.01 caps it near 80 reads/s); one "
        "MQTT message per register"
    )

    def __init__(self, load: Load, venv: str):
        self.load = load
        self.venv = venv
        self.topics = ["modbus/+/state/+"]

    def setup(self, run_dir: str) -> None:
        ld = self.load
        with open(f"{run_dir}/registers.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["type", "topic", "col2", "col3", "col4", "col5", "col6"])
            for d in range(1, ld.devices + 1):
                w.writerow(["poll", device(d), d, 0, ld.registers, "holding_register", ld.interval])
                for r in range(ld.registers):
                    w.writerow(["ref", tag(r), r, "r", "uint16", "", ""])

    def command(self, run_dir: str) -> list:
        return [
            f"{self.venv}/bin/modbus2mqtt",
            "--mqtt-host", "127.0.0.1",
            "--mqtt-port", str(self.load.mqtt_port),
            "--tcp", "127.0.0.1",
            "--tcp-port", str(self.load.modbus_port),
            "--config", f"{run_dir}/registers.csv",
            "--always-publish",
            "--set-loop-break", "0.001",
            "--verbosity", "1",
        ]

    def env(self, run_dir: str) -> dict:
        return {}

    def values(self, topic: str, payload: bytes):
        parts = topic.split("/")
        if len(parts) != 4:
            return ()
        try:
            v = int(payload)
        except ValueError:
            return ()
        return ((parts[1], parts[3], v),)


def available(venv_root: str, fieldgate: str):
    """(adapter class, its argument) of every gateway that is installed."""
    out = []
    if os.access(fieldgate, os.X_OK):
        out.append((Fieldgate, fieldgate))
    for cls, sub, exe in (
        (ThingsBoard, "tb", "thingsboard-gateway"),
        (Modbus2Mqtt, "m2m", "modbus2mqtt"),
    ):
        venv = os.path.join(venv_root, sub)
        if shutil.which(exe, path=os.path.join(venv, "bin")):
            out.append((cls, venv))
    return out
