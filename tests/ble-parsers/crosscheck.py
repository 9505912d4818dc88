"""Generates BLE advertisements and decodes them with the parsers Home
Assistant uses (bthome-ble, atc-ble, ruuvitag-ble), for
gateway/tests/ble_parsers.rs, which decodes the same bytes with fieldgate's
decoders and compares every field.

Prints a JSON list of cases: {format, address, key, service_data |
manufacturer_data (hex), fields: {"<kind>:<python key>": {kind, value, unit,
steps}}} (sensors, binary sensors and events are keyed apart, as in Home
Assistant).
"""

import json
import random
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from habluetooth import BluetoothServiceInfoBleak

from atc_ble import ATCBluetoothDeviceData
from bthome_ble import BTHomeBluetoothDeviceData
from bthome_ble.const import MEAS_TYPES
from bthome_ble.event import EventDeviceKeys
from ruuvitag_ble import RuuvitagBluetoothDeviceData

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
ESS_UUID = "0000181a-0000-1000-8000-00805f9b34fb"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")

rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 22)


def mac():
    return ":".join(f"{rng.randrange(256):02X}" for _ in range(6))


def info(address, service_data=None, manufacturer_data=None):
    return BluetoothServiceInfoBleak(
        name=address,
        address=address,
        rssi=-60,
        manufacturer_data=manufacturer_data or {},
        service_data=service_data or {},
        service_uuids=[],
        source="local",
        device=None,
        advertisement=None,
        connectable=False,
        time=0.0,
        tx_power=None,
    )


def jsonable(v):
    if hasattr(v, "timestamp"):
        return int(v.timestamp())
    return v


def fields_of(update):
    out = {}
    for k, v in update.entity_values.items():
        if k.key == "signal_strength":
            continue
        unit = update.entity_descriptions[k].native_unit_of_measurement
        out["sensor:" + k.key] = {
            "kind": "sensor",
            "value": jsonable(v.native_value),
            "unit": str(unit.value) if hasattr(unit, "value") else unit,
        }
    for k, v in update.binary_entity_values.items():
        out["binary:" + k.key] = {"kind": "binary", "value": v.native_value}
    for k, v in update.events.items():
        props = v.event_properties or {}
        out["event:" + k.key] = {"kind": "event", "value": v.event_type, "steps": props.get("steps")}
    return out


def object_bytes(oid):
    """One BTHome object with a random value."""
    m = MEAS_TYPES[oid]
    fmt = m.data_format
    if fmt == "string":
        text = "".join(rng.choice("abcdefghij XYZ0123") for _ in range(rng.randrange(1, 12)))
        b = text.encode()
        return bytes([oid, len(b)]) + b
    if fmt == "raw":
        b = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 10)))
        return bytes([oid, len(b)]) + b
    if m.meas_format == EventDeviceKeys.BUTTON:
        return bytes([oid, rng.choice([1, 2, 3, 4, 5, 6, 0x80, 0x81])])
    if m.meas_format == EventDeviceKeys.DIMMER:
        return bytes([oid, rng.choice([1, 2]), rng.randrange(1, 256)])
    n = m.data_length
    if oid == 0x50:
        return bytes([oid]) + rng.randrange(10**9, 2 * 10**9).to_bytes(4, "little")
    if fmt == "signed_integer":
        v = rng.randrange(-(2 ** (8 * n - 1)), 2 ** (8 * n - 1))
        return bytes([oid]) + v.to_bytes(n, "little", signed=True)
    if m.meas_format is not None and type(m.meas_format).__name__ == "BaseBinarySensorDescription":
        return bytes([oid, rng.choice([0, 1])])
    return bytes([oid]) + rng.randrange(256**n).to_bytes(n, "little")


SKIP = {0x3B, 0xF0, 0xF1, 0xF2}  # command events and device-information metadata


def python_key(oid):
    m = MEAS_TYPES[oid].meas_format
    if isinstance(m, EventDeviceKeys):
        return str(m)
    # Home Assistant keys entities by device class (kg and lb mass are both
    # `mass`), separately for sensors and binary sensors.
    return (type(m).__name__, str(m.device_class))


def bthome_case(objects, encrypt=False):
    address = mac()
    payload = b"".join(objects)
    if encrypt:
        counter = rng.randrange(2**32).to_bytes(4, "little")
        nonce = bytes.fromhex(address.replace(":", "")) + b"\xd2\xfc\x41" + counter
        sealed = AESCCM(KEY, tag_length=4).encrypt(nonce, payload, None)
        data = b"\x41" + sealed[:-4] + counter + sealed[-4:]
    else:
        data = b"\x40" + payload
    parser = BTHomeBluetoothDeviceData(bindkey=KEY if encrypt else None)
    update = parser.update(info(address, service_data={BTHOME_UUID: data}))
    return {
        "format": "bthome",
        "address": address,
        "key": KEY.hex() if encrypt else None,
        "service_data": {"fcd2": data.hex()},
        "fields": fields_of(update),
    }


def bthome_cases():
    ids = [i for i in sorted(MEAS_TYPES) if i not in SKIP]
    cases = []
    for oid in ids:
        for _ in range(3):
            cases.append(bthome_case([object_bytes(oid)]))
    # Several objects per packet (distinct Home Assistant keys), ascending.
    for _ in range(60):
        chosen, keys = [], set()
        for oid in rng.sample(ids, 8):
            k = python_key(oid)
            if k not in keys and len(chosen) < 5:
                keys.add(k)
                chosen.append(oid)
        cases.append(bthome_case([object_bytes(o) for o in sorted(chosen)], encrypt=rng.random() < 0.5))
    # The same object more than once (numbered fields).
    for oid in [0x02, 0x03, 0x3A, 0x0C, 0x2D]:
        cases.append(bthome_case([object_bytes(oid) for _ in range(rng.randrange(2, 4))]))
    return cases


def pvvx_cases():
    cases = []
    for _ in range(40):
        address = mac()
        m = bytes.fromhex(address.replace(":", ""))[::-1]
        data = m + struct.pack(
            "<hHHBBB",
            rng.randrange(-4000, 8000),
            rng.randrange(0, 10000),
            rng.randrange(2000, 3300),
            rng.randrange(0, 101),
            rng.randrange(256),
            rng.randrange(256),
        )
        update = ATCBluetoothDeviceData().update(info(address, service_data={ESS_UUID: data}))
        cases.append({"format": "pvvx", "address": address, "key": None,
                      "service_data": {"181a": data.hex()}, "fields": fields_of(update)})
    return cases


def atc_cases():
    cases = []
    for _ in range(40):
        address = mac()
        data = bytes.fromhex(address.replace(":", "")) + struct.pack(
            ">hBBHB",
            rng.randrange(-400, 800),
            rng.randrange(0, 101),
            rng.randrange(0, 101),
            rng.randrange(2000, 3300),
            rng.randrange(256),
        )
        update = ATCBluetoothDeviceData().update(info(address, service_data={ESS_UUID: data}))
        cases.append({"format": "atc1441", "address": address, "key": None,
                      "service_data": {"181a": data.hex()}, "fields": fields_of(update)})
    return cases


def ruuvi_cases():
    cases = []
    for _ in range(40):
        address = mac()
        data = struct.pack(
            ">BhHHhhhHBH",
            5,
            rng.randrange(-32767, 32768),
            rng.randrange(0, 40001),
            rng.randrange(0, 65535),
            rng.randrange(-2000, 2001),
            rng.randrange(-2000, 2001),
            rng.randrange(-2000, 2001),
            (rng.randrange(0, 2047) << 5) | rng.randrange(0, 31),
            rng.randrange(0, 255),
            rng.randrange(0, 65535),
        ) + bytes.fromhex(address.replace(":", ""))
        update = RuuvitagBluetoothDeviceData().update(info(address, manufacturer_data={0x0499: data}))
        cases.append({"format": "ruuvi", "address": address, "key": None,
                      "manufacturer_data": {"1177": data.hex()}, "fields": fields_of(update)})
    return cases


print(json.dumps(bthome_cases() + pvvx_cases() + atc_cases() + ruuvi_cases()))
