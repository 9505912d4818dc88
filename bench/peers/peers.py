#!/usr/bin/env python3
"""fieldgate next to other Modbus-to-MQTT gateways, in one run.

One Modbus TCP simulator (unit ids 1..D, R holding registers each) and one
private Mosquitto serve every gateway in turn. Every register of every unit
holds the same counter, which advances every `--change` seconds at known
instants (t0 + k * change), so the subscriber can tell, for each value it
receives, when that value appeared in the register: the end-to-end latency
(register changed -> message at the subscriber) is the receive time minus
that instant, taken on the first message that carries the new value. The
counter is 15 bits wide: it wraps after 32768 changes (27 minutes at the
default 50 ms), and a value is unwrapped against the receive time.

For each gateway and each load level (devices x registers at `--interval`):
warm-up, then a measurement window. Printed per level, then one table:

- delivered values/s (values in messages received during the window);
- CPU-seconds per 1 000 values (the gateway's process tree, /proc stat);
- RssAnon and VmRSS (highest sampled, process tree summed);
- latency p50/p99;
- highest load sustained: the largest level with >= 95 % delivered and
  p99 <= 1 s (levels run in increasing order; a gateway stops at its
  first failing level). The registers change every 50 ms (`--change`),
  more often than any gateway polls them (0.5 s): each poll reads a value
  at most 50 ms old, so the latency is the gateway's own read -> publish ->
  broker path plus at most 50 ms, whatever the phase of its polls.

Run by bench/peers/run.sh, which creates the venvs this needs.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adapters  # noqa: E402

MASK = 0x7FFF  # values stay positive in a signed 16-bit interpretation too


# --- Modbus simulator (its own process: it must not share our GIL) -------


def simulate(port: int, t0: float, change: float, units: int, registers: int) -> None:
    from pymodbus.datastore import (
        ModbusSequentialDataBlock,
        ModbusServerContext,
        ModbusSlaveContext,
    )
    from pymodbus.server import StartTcpServer

    class Clock(ModbusSequentialDataBlock):
        """Every register reads the counter of the current change period."""

        def __init__(self):
            super().__init__(0, [0] * (registers + 2))

        def validate(self, address, count=1):
            return 0 <= address and address + count <= registers + 1

        def getValues(self, address, count=1):
            v = int((time.time() - t0) / change) & MASK
            return [v] * count

    block = Clock()
    # pymodbus 3.9 keeps `hr` only when `di` is given too.
    di = ModbusSequentialDataBlock(0, [0] * 2)
    slaves = {u: ModbusSlaveContext(di=di, hr=block) for u in range(1, units + 1)}
    ctx = ModbusServerContext(slaves=slaves, single=False)
    StartTcpServer(context=ctx, address=("127.0.0.1", port))


# --- process measurement ----------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list:
    """`pid` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the tree (dead children's time included)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime stime cutime cstime are fields 14..17 (1-based)
            total += sum(int(x) for x in fields[11:15])
        except (OSError, IndexError, ValueError):
            pass
    return total / TICKS


def memory(pid: int) -> tuple:
    """(RssAnon, VmRSS) of the tree, bytes."""
    anon = rss = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
                    elif line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
    return anon, rss


# --- subscriber ---------------------------------------------------------------


class Subscriber:
    """Counts values and measures latency of the messages one gateway sends."""

    def __init__(self, port: int, t0: float, change: float):
        import paho.mqtt.client as mqtt

        self.t0, self.change = t0, change
        self.lock = threading.Lock()
        self.adapter = None
        self.values = 0
        self.latencies = []
        self.last_seq = {}
        self.counting = False
        self.first_at = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"peers-{os.getpid()}")
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        # ThingsBoard's gateway asks its platform for the session limits
        # (an RPC `getSessionLimits`) and sends nothing until it has them:
        # answer as a ThingsBoard server without limits does.
        self.client.message_callback_add("v1/devices/me/rpc/request/+", self.on_tb_rpc)
        self.client.subscribe("v1/devices/me/rpc/request/+", qos=1)
        self.client.loop_start()

    def on_tb_rpc(self, client, _userdata, msg) -> None:
        try:
            req = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(req, dict) and req.get("method") == "getSessionLimits":
            rid = msg.topic.rsplit("/", 1)[-1]
            limits = {
                "maxPayloadSize": 65536,
                "maxInflightMessages": 100,
                "rateLimits": {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""},
            }
            client.publish(f"v1/devices/me/rpc/response/{rid}", json.dumps(limits), qos=1)

    def follow(self, adapter) -> None:
        with self.lock:
            self.adapter = adapter
            self.values = 0
            self.latencies = []
            self.last_seq = {}
            self.counting = False
            self.first_at = None
        for t in adapter.topics:
            self.client.subscribe(t, qos=1)

    def unfollow(self, adapter) -> None:
        for t in adapter.topics:
            self.client.unsubscribe(t)
        with self.lock:
            self.adapter = None

    def seq_of(self, value: int, now: float) -> int:
        cur = int((now - self.t0) / self.change)
        s = cur - ((cur - value) & MASK)
        return s

    def on_message(self, _client, _userdata, msg) -> None:
        now = time.time()
        with self.lock:
            a = self.adapter
            if a is None or msg.retain:
                return
            n = 0
            for dev, key, value in a.values(msg.topic, msg.payload):
                n += 1
                s = self.seq_of(value & MASK, now)
                k = (dev, key)
                last = self.last_seq.get(k)
                if last is None or s > last:
                    self.last_seq[k] = s
                    # The first sighting of each key only says it is polled.
                    if last is not None and self.counting:
                        self.latencies.append(now - (self.t0 + s * self.change))
            if n and self.first_at is None:
                self.first_at = now
            if self.counting:
                self.values += n

    def window(self, counting: bool) -> tuple:
        with self.lock:
            v, lat = self.values, self.latencies
            self.counting = counting
            self.values, self.latencies = 0, []
        return v, lat


def pct(xs: list, p: float):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


# --- one run ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def measure(adapter, sub, run_dir, warmup, duration, start_timeout) -> dict:
    os.makedirs(run_dir, exist_ok=True)
    adapter.setup(run_dir)
    sub.follow(adapter)
    log = open(f"{run_dir}/gateway.log", "wb")
    env = dict(os.environ, **adapter.env(run_dir))
    t_start = time.time()
    proc = subprocess.Popen(
        adapter.command(run_dir), stdout=log, stderr=subprocess.STDOUT, cwd=run_dir, env=env,
        start_new_session=True,
    )
    try:
        end = time.time() + start_timeout
        while sub.first_at is None:
            if proc.poll() is not None:
                raise RuntimeError(f"{adapter.name} exited ({proc.returncode}); see {run_dir}/gateway.log")
            if time.time() > end:
                raise RuntimeError(f"{adapter.name}: no value within {start_timeout}s; see {run_dir}/gateway.log")
            time.sleep(0.05)
        first = sub.first_at - t_start
        time.sleep(warmup)
        sub.window(True)
        c0, w0 = cpu_seconds(proc.pid), time.time()
        anon = rss = 0
        while time.time() - w0 < duration:
            if proc.poll() is not None:
                raise RuntimeError(f"{adapter.name} exited during the window; see {run_dir}/gateway.log")
            a, r = memory(proc.pid)
            anon, rss = max(anon, a), max(rss, r)
            time.sleep(0.5)
        c1, w1 = cpu_seconds(proc.pid), time.time()
        values, lat = sub.window(False)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        sub.unfollow(adapter)
        log.close()
    secs = w1 - w0
    expected = adapter.load.expected_values_per_second
    delivered = values / secs
    cpu = c1 - c0
    p50, p99 = pct(lat, 50), pct(lat, 99)
    return {
        "gateway": adapter.name,
        "devices": adapter.load.devices,
        "registers": adapter.load.registers,
        "interval_s": adapter.load.interval,
        "expected_values_per_s": expected,
        "delivered_values_per_s": delivered,
        "delivered_percent": 100.0 * delivered / expected,
        "cpu_percent_of_one_core": 100.0 * cpu / secs,
        "cpu_s_per_1000_values": 1000.0 * cpu / values if values else None,
        "rss_anon_mib": anon / 2**20,
        "vm_rss_mib": rss / 2**20,
        "latency_p50_ms": p50 * 1000 if p50 is not None else None,
        "latency_p99_ms": p99 * 1000 if p99 is not None else None,
        "latency_samples": len(lat),
        "first_value_s": first,
    }


def passes(r: dict) -> bool:
    return r["delivered_percent"] >= 95.0 and r["latency_p99_ms"] is not None and r["latency_p99_ms"] <= 1000.0


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def line(r: dict) -> str:
    return (
        f"{r['gateway']:<20} {r['devices']:>4}x{r['registers']:<3} @{r['interval_s']:g}s "
        f"expected {r['expected_values_per_s']:>8.0f}/s delivered {r['delivered_values_per_s']:>8.0f}/s "
        f"({r['delivered_percent']:5.1f}%) cpu {r['cpu_percent_of_one_core']:5.1f}% "
        f"{fmt(r['cpu_s_per_1000_values'], '.4f')} CPU-s/1000 values, RssAnon {r['rss_anon_mib']:.1f} MiB "
        f"VmRSS {r['vm_rss_mib']:.1f} MiB, latency p50 {fmt(r['latency_p50_ms'], '.0f')} ms "
        f"p99 {fmt(r['latency_p99_ms'], '.0f')} ms"
    )


def parse_levels(text: str) -> list:
    out = []
    for part in text.split(","):
        d, r = part.lower().split("x")
        out.append((int(d), int(r)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub_ap = ap.add_subparsers(dest="cmd")
    sim = sub_ap.add_parser("simulate", help="(internal) the Modbus simulator")
    sim.add_argument("--port", type=int, required=True)
    sim.add_argument("--t0", type=float, required=True)
    sim.add_argument("--change", type=float, required=True)
    sim.add_argument("--units", type=int, required=True)
    sim.add_argument("--registers", type=int, required=True)
    ap.add_argument("--fieldgate", default="target/release/fieldgate")
    ap.add_argument("--venvs", default="/var/cache/fieldgate-bench/peers")
    ap.add_argument("--levels", default="10x10,50x10,100x20,200x25,200x50,200x100,240x120",
                    help="load levels DEVICESxREGISTERS, increasing (devices <= 247)")
    ap.add_argument("--interval", type=float, default=0.5, help="poll interval, seconds")
    ap.add_argument("--change", type=float, default=0.05,
                    help="register change period, seconds (short: the wait for the next poll is at most this)")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--only", default="", help="comma-separated gateway names")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    ap.add_argument("--dir", default="", help="run directory (default: a temporary one, removed)")
    args = ap.parse_args()

    if args.cmd == "simulate":
        simulate(args.port, args.t0, args.change, args.units, args.registers)
        return 0

    levels = parse_levels(args.levels)
    max_units = max(d for d, _ in levels)
    max_regs = max(r for _, r in levels)
    if max_units > 247:
        print("at most 247 Modbus unit ids", file=sys.stderr)
        return 2
    base = args.dir or f"/tmp/fieldgate-peers-{os.getpid()}"
    os.makedirs(base, exist_ok=True)
    t0 = float(int(time.time()))
    mqtt_port, modbus_port = free_port(), free_port()
    with open(f"{base}/mosquitto.conf", "w") as f:
        f.write(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 100000\n")
    children = []
    try:
        children.append(subprocess.Popen(["mosquitto", "-c", f"{base}/mosquitto.conf"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        children.append(subprocess.Popen([sys.executable, __file__, "simulate", "--port", str(modbus_port),
                                          "--t0", str(t0), "--change", str(args.change),
                                          "--units", str(max_units), "--registers", str(max_regs)],
                                         stdout=open(f"{base}/simulator.log", "wb"), stderr=subprocess.STDOUT))
        if not (wait_port(mqtt_port, 10) and wait_port(modbus_port, 10)):
            print("mosquitto or the simulator did not start", file=sys.stderr)
            return 1
        sub = Subscriber(mqtt_port, t0, args.change)
        gateways = adapters.available(args.venvs, os.path.abspath(args.fieldgate))
        if args.only:
            keep = set(args.only.split(","))
            gateways = [g for g in gateways if g[0].name in keep]
        results, best = [], {}
        for cls, arg in gateways:
            best[cls.name] = None
            for d, r in levels:
                load = adapters.Load(d, r, args.interval, modbus_port, mqtt_port)
                a = cls(load, arg)
                run_dir = f"{base}/{a.name}-{d}x{r}"
                try:
                    res = measure(a, sub, run_dir, args.warmup, args.duration, 60)
                except RuntimeError as e:
                    print(f"{a.name} {d}x{r}: {e}", file=sys.stderr)
                    break
                res["notes"] = a.NOTES
                results.append(res)
                print(line(res), flush=True)
                if not passes(res):
                    break
                best[a.name] = res
        print()
        print("| gateway | load (devices x registers @ interval) | values/s delivered | CPU-s per 1000 values "
              "| RssAnon MiB | VmRSS MiB | latency p50 / p99 ms | highest load sustained (values/s) |")
        print("|---|---|---|---|---|---|---|---|")
        for res in results:
            b = best.get(res["gateway"])
            print(
                f"| {res['gateway']} | {res['devices']} x {res['registers']} @ {res['interval_s']:g}s "
                f"({res['expected_values_per_s']:.0f}/s) | {res['delivered_values_per_s']:.0f} "
                f"({res['delivered_percent']:.1f} %) | {fmt(res['cpu_s_per_1000_values'], '.4f')} "
                f"| {res['rss_anon_mib']:.1f} | {res['vm_rss_mib']:.1f} "
                f"| {fmt(res['latency_p50_ms'], '.0f')} / {fmt(res['latency_p99_ms'], '.0f')} "
                f"| {'%.0f' % b['expected_values_per_s'] if b else 'none'} |"
            )
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"t0": t0, "args": vars(args), "results": results}, f, indent=1)
    finally:
        for c in children:
            c.terminate()
            try:
                c.wait(timeout=5)
            except subprocess.TimeoutExpired:
                c.kill()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
