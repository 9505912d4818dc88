"""A Sparkplug B host application built on pysparkplug (not on fieldgate's
code), driven by gateway/tests/sparkplug_e2e.rs over stdin/stdout: one JSON
command per line in, one JSON answer per line out.

It subscribes to spBv1.0/<group>/#, decodes every message with pysparkplug
(aliases resolved through the births it has seen) and keeps them in order.
Commands:
  {"cmd": "wait", "type": "DBIRTH", "device": "fan", "after": 3, "timeout": 20,
   "historical": true}       -> the first such message with index > after
  {"cmd": "rebirth"}          -> publishes NCMD Node Control/Rebirth = true
  {"cmd": "dcmd", "device": "fan", "metrics": [{"name": "gear", "datatype": "STRING", "value": "fast"}]}
  {"cmd": "state", "online": true}   -> publishes the retained STATE of this host
  {"cmd": "check"}            -> checks seq / bdSeq / alias rules over everything seen
  {"cmd": "count"}            -> how many messages were seen
"""

import json
import sys
import threading
import time

import pysparkplug as psp
from pysparkplug import _protobuf as pb

port = int(sys.argv[1])
group = sys.argv[2]
node = sys.argv[3]
host_id = sys.argv[4] if len(sys.argv) > 4 else "fieldgate-test-host"
# As the primary host: STATE online (retained) after every connect, STATE
# offline as the will, as a Sparkplug 3.0 primary host application does.
primary = len(sys.argv) > 5 and sys.argv[5] == "primary"

lock = threading.Condition()


def now_ms():
    return int(time.time() * 1000)

seen = []  # dicts, in arrival order


def describe(metric, raw):
    out = {
        "name": metric.name,
        "alias": metric.alias,
        "datatype": psp.DataType(metric.datatype).name,
        "value": metric.value.hex() if isinstance(metric.value, bytes) else metric.value,
        "is_historical": metric.is_historical,
        "is_null": metric.is_null,
        "timestamp": metric.timestamp,
    }
    if raw is not None and raw.HasField("properties"):
        props = {}
        for k, v in zip(raw.properties.keys, raw.properties.values):
            which = v.WhichOneof("value")
            props[k] = getattr(v, which) if which else None
        out["properties"] = props
    return out


def on_message(client, _userdata, mqtt_message):
    entry = {"topic": mqtt_message.topic, "qos": mqtt_message.qos, "retain": bool(mqtt_message.retain)}
    try:
        topic = psp.Topic.from_str(mqtt_message.topic)
        entry["type"] = str(topic.message_type)
        entry["device"] = topic.device_id
        if topic.message_type != psp.MessageType.STATE:
            raw = pb.Payload.FromString(mqtt_message.payload)
            entry["seq"] = raw.seq if raw.HasField("seq") else None
            entry["timestamp"] = raw.timestamp if raw.HasField("timestamp") else None
        message = sparkplug._handle_message(mqtt_message)
        payload = message.payload
        if isinstance(payload, psp.NDeath):
            entry["metrics"] = [describe(payload.bd_seq_metric, raw.metrics[0])]
        elif hasattr(payload, "metrics"):
            entry["metrics"] = [describe(m, r) for m, r in zip(payload.metrics, raw.metrics)]
        else:
            entry["metrics"] = []
    except Exception as e:  # a message pysparkplug cannot decode is a finding
        entry["error"] = f"{type(e).__name__}: {e}"
    with lock:
        entry["index"] = len(seen)
        seen.append(entry)
        lock.notify_all()


sparkplug = psp.Client(client_id=f"fieldgate-test-host-{port}")
topic = psp.Topic.from_str(f"spBv1.0/{group}/#")
sparkplug.subscribe(topic, psp.QoS.AT_LEAST_ONCE, lambda c, m: None)
# Decode ourselves so that a payload pysparkplug rejects is recorded, not fatal.
sparkplug._client.message_callback_add(str(topic), on_message)


def state_message(online):
    return psp.Message(
        topic=psp.Topic(message_type=psp.MessageType.STATE, sparkplug_host_id=host_id),
        payload=psp.State(timestamp=now_ms(), online=online),
        qos=psp.QoS.AT_LEAST_ONCE, retain=True)


def on_connect(client):
    if primary:
        client.publish(state_message(True))


if primary:
    sparkplug.set_will(state_message(False))
sparkplug.connect("127.0.0.1", port=port, blocking=False, callback=on_connect)


def wait(req):
    deadline = time.time() + float(req.get("timeout", 30))
    after = int(req.get("after", -1))
    with lock:
        while True:
            for e in seen[after + 1:]:
                if e.get("type") != req["type"]:
                    continue
                if "device" in req and e.get("device") != req["device"]:
                    continue
                if req.get("historical") and not any(m.get("is_historical") for m in e.get("metrics", [])):
                    continue
                if "metric" in req:
                    want = req["metric"]
                    if not any(m.get("name") == want["name"] and ("value" not in want or m.get("value") == want["value"])
                               for m in e.get("metrics", [])):
                        continue
                return e
            left = deadline - time.time()
            if left <= 0:
                return {"timeout": True, "seen": len(seen)}
            lock.wait(left)


def check():
    errors = []
    counts = {}
    bd_seq = None
    expect = None  # next seq, None before an NBIRTH
    aliases = {}  # alias -> (device, name) within the current birth
    births = {}  # device -> {alias: datatype}
    for e in seen:
        t = e.get("type")
        counts[t] = counts.get(t, 0) + 1
        if t == "STATE" or t in ("NCMD", "DCMD"):
            continue
        if "error" in e:
            errors.append(f"#{e['index']} {e['topic']}: pysparkplug cannot decode it: {e['error']}")
            if t not in ("NBIRTH", "NDEATH") and expect is not None and e.get("seq") is not None:
                if e["seq"] != expect:
                    errors.append(f"#{e['index']} {t} {e.get('device')} seq {e['seq']} != expected {expect}")
                expect = (expect + 1) % 256
            continue
        if t == "NDEATH":
            m = e["metrics"][0]
            if m["name"] != "bdSeq":
                errors.append(f"#{e['index']} NDEATH without bdSeq")
            elif bd_seq is not None and m["value"] != bd_seq:
                errors.append(f"#{e['index']} NDEATH bdSeq {m['value']} != NBIRTH bdSeq {bd_seq}")
            expect = None
            continue
        if t == "NBIRTH":
            names = {m["name"]: m for m in e["metrics"]}
            if e["seq"] != 0:
                errors.append(f"#{e['index']} NBIRTH seq {e['seq']} != 0")
            if "bdSeq" not in names:
                errors.append(f"#{e['index']} NBIRTH without bdSeq")
            else:
                bd_seq = names["bdSeq"]["value"]
            if "Node Control/Rebirth" not in names:
                errors.append(f"#{e['index']} NBIRTH without Node Control/Rebirth")
            expect = 1
            aliases = {m["alias"]: (None, m["name"]) for m in e["metrics"] if m["alias"] is not None}
            births = {}
            continue
        if expect is None:
            errors.append(f"#{e['index']} {t} before any NBIRTH of this connection")
            continue
        if e["seq"] != expect:
            errors.append(f"#{e['index']} {t} {e.get('device')} seq {e['seq']} != expected {expect}")
        expect = (expect + 1) % 256
        if t == "DBIRTH":
            d = e["device"]
            births[d] = {}
            for m in e["metrics"]:
                if m["alias"] in aliases and aliases[m["alias"]] != (d, m["name"]):
                    errors.append(f"#{e['index']} alias {m['alias']} of {d}/{m['name']} already used by {aliases[m['alias']]}")
                aliases[m["alias"]] = (d, m["name"])
                births[d][m["alias"]] = m["datatype"]
        elif t == "DDATA":
            d = e["device"]
            if d not in births:
                errors.append(f"#{e['index']} DDATA for {d} without a DBIRTH")
                continue
            for m in e["metrics"]:
                if m["alias"] not in births[d]:
                    errors.append(f"#{e['index']} DDATA alias {m['alias']} not born for {d}")
                elif births[d][m["alias"]] != m["datatype"]:
                    errors.append(f"#{e['index']} DDATA {d} alias {m['alias']} datatype {m['datatype']} != birth {births[d][m['alias']]}")
                if m["name"] is None:
                    errors.append(f"#{e['index']} pysparkplug did not resolve alias {m['alias']}")
        elif t == "DDEATH":
            births.pop(e["device"], None)
    return {"ok": not errors, "errors": errors[:50], "counts": counts}


def handle(req):
    cmd = req["cmd"]
    if cmd == "wait":
        return wait(req)
    if cmd == "count":
        with lock:
            return {"count": len(seen)}
    if cmd == "check":
        with lock:
            return check()
    if cmd == "rebirth":
        metric = psp.Metric(timestamp=now_ms(), name="Node Control/Rebirth",
                            datatype=psp.DataType.BOOLEAN, value=True)
        msg = psp.Message(
            topic=psp.Topic(group_id=group, message_type=psp.MessageType.NCMD, edge_node_id=node),
            payload=psp.NCmd(timestamp=now_ms(), metrics=(metric,)),
            qos=psp.QoS.AT_MOST_ONCE, retain=False)
        sparkplug.publish(msg, include_dtypes=True)
        return {"ok": True}
    if cmd == "dcmd":
        metrics = tuple(
            psp.Metric(timestamp=now_ms(), name=m.get("name"), alias=m.get("alias"),
                       datatype=psp.DataType[m["datatype"]], value=m["value"])
            for m in req["metrics"])
        msg = psp.Message(
            topic=psp.Topic(group_id=group, message_type=psp.MessageType.DCMD,
                            edge_node_id=node, device_id=req["device"]),
            payload=psp.DCmd(timestamp=now_ms(), metrics=metrics),
            qos=psp.QoS.AT_MOST_ONCE, retain=False)
        sparkplug.publish(msg, include_dtypes=True)
        return {"ok": True}
    if cmd == "state":
        sparkplug.publish(state_message(bool(req["online"])))
        return {"ok": True}
    return {"error": f"unknown command {cmd}"}


print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        answer = handle(json.loads(line))
    except Exception as e:
        answer = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(answer), flush=True)
