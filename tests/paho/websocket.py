"""MQTT over WebSocket, checked with paho-mqtt 2.x (transport="websockets", path /mqtt) against
plain-TCP paho clients of the same broker:

  (a) MQTT 3.1.1: QoS 1 from a TCP publisher reaches a WebSocket subscriber, and back;
  (b) MQTT 5.0: QoS 2 both ways, subscribed at QoS 2, a User Property kept (§3.3.2.3.7);
  (c) a large payload (--big-bytes, 1 MiB unless told) both ways, byte for byte.

    python3 tests/paho/websocket.py --host 127.0.0.1 --ws-port P --tcp-port Q

Prints "ok ..." per check and exits 0 when all pass; exits 1 printing "FAIL websocket.py: ..."
and the traceback otherwise, or when still running after --limit-seconds (a watchdog thread).
Topics and client ids carry a random suffix. The broker's maximum packet size must leave room
for --big-bytes plus the PUBLISH header.
"""

import argparse
import os
import queue
import sys
import threading
import time
import traceback

import paho.mqtt.client as mqtt

# No __pycache__ left in the source tree by importing _mq.
sys.dont_write_bytecode = True
import _mq  # noqa: E402
from _mq import Failure, PacketTypes, check, prop, props  # noqa: E402

NAME = os.path.basename(sys.argv[0])
RUN = os.urandom(4).hex()


def topic(name):
    return f"shardmq-ws-test/{RUN}/{name}"


class Client(_mq.Client):
    """`_mq.Client` over TCP or WebSocket, at MQTT 3.1.1 or 5.0, on any host."""

    def __init__(self, host, port, name, *, ws, version, wait):
        self.id = f"paho-{name}-{RUN}"
        self.wait = wait
        self.version = version
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.id,
            protocol=mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311,
            transport="websockets" if ws else "tcp",
            reconnect_on_failure=False,
        )
        if ws:
            self.c.ws_set_options(path="/mqtt")
        self.c.connect_timeout = wait
        self.q = {k: queue.Queue() for k in ("connack", "message", "suback", "disconnect")}
        self.c.on_connect = lambda c, u, flags, rc, p: self.q["connack"].put((flags, rc, p))
        self.c.on_message = lambda c, u, m: self.q["message"].put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.q["suback"].put((mid, rcs, p))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.q["disconnect"].put((rc, p, f))
        where = f"{'ws' if ws else 'tcp'}://{host}:{port}{'/mqtt' if ws else ''}"
        extra = {"clean_start": True} if version == 5 else {}
        try:
            self.c.connect(host, port, 30, **extra)
        except Exception as e:  # noqa: BLE001 - refused, reset, bad handshake: all say the same
            raise Failure(f"{self.id}: cannot connect to {where}: {type(e).__name__}: {e}") from None
        self.c.loop_start()
        _flags, rc, _p = self.get("connack", f"CONNACK from {where}")
        check(not rc.is_failure, f"{self.id}: CONNACK from {where}: {rc}")

    def subscribe(self, topic, qos=1, properties=None, **options):
        if self.version == 5:
            return super().subscribe(topic, qos, properties, **options)
        # paho takes SubscribeOptions at MQTT 5.0 only; at 3.1.1 they would subscribe at QoS 0.
        rc, _mid = self.c.subscribe(topic, qos=qos)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.id}: subscribe {topic}: {rc}")
        _mid, rcs, _p = self.get("suback", f"SUBACK for {topic}")
        return rcs

    def get(self, kind, what, timeout=None):
        return super().get(kind, what, self.wait if timeout is None else timeout)

    def message(self, what="a message", timeout=None):
        return self.get("message", what, timeout)


def v311(host, ws_port, tcp_port, wait):
    ws = Client(host, ws_port, "ws-v311", ws=True, version=4, wait=wait)
    tcp = Client(host, tcp_port, "tcp-v311", ws=False, version=4, wait=wait)
    down, up = topic("v311/to-ws"), topic("v311/to-tcp")
    ws.subscribed(down, qos=1)
    tcp.subscribed(up, qos=1)
    for src, dst, t, label in ((tcp, ws, down, "tcp -> ws"), (ws, tcp, up, "ws -> tcp")):
        body = f"{label} {RUN}".encode()
        src.publish(t, body, qos=1)
        m = dst.message(f"the QoS 1 message {label}")
        check(m.topic == t and m.payload == body, f"{label}: got {m.topic!r} {m.payload!r}")
        check(m.qos == 1, f"{label}: delivered at QoS {m.qos}")
    for c in (ws, tcp):
        c.disconnect()
    print("ok paho MQTT 3.1.1 over ws: QoS 1 tcp -> ws and ws -> tcp", flush=True)


def v5(host, ws_port, tcp_port, wait):
    ws = Client(host, ws_port, "ws-v5", ws=True, version=5, wait=wait)
    tcp = Client(host, tcp_port, "tcp-v5", ws=False, version=5, wait=wait)
    down, up = topic("v5/to-ws"), topic("v5/to-tcp")
    ws.subscribed(down, qos=2)
    tcp.subscribed(up, qos=2)
    for src, dst, t, label in ((ws, tcp, up, "ws -> tcp"), (tcp, ws, down, "tcp -> ws")):
        body = f"{label} {RUN}".encode()
        user = [("origin", label), ("run", RUN)]
        src.publish(t, body, qos=2, properties=props(PacketTypes.PUBLISH, UserProperty=list(user)))
        m = dst.message(f"the QoS 2 message {label}")
        check(m.topic == t and m.payload == body, f"{label}: got {m.topic!r} {m.payload!r}")
        check(m.qos == 2, f"{label}: delivered at QoS {m.qos}")
        got = prop(m.properties, "UserProperty")
        check(got == user, f"{label}: user properties {got}, sent {user}")
    for c in (ws, tcp):
        c.disconnect()
    print("ok paho MQTT 5.0 over ws: QoS 2 ws -> tcp and tcp -> ws, user property kept", flush=True)


def big(host, ws_port, tcp_port, wait, size):
    ws = Client(host, ws_port, "ws-big", ws=True, version=5, wait=wait)
    tcp = Client(host, tcp_port, "tcp-big", ws=False, version=5, wait=wait)
    down, up = topic("big/to-ws"), topic("big/to-tcp")
    ws.subscribed(down, qos=1)
    tcp.subscribed(up, qos=1)
    for src, dst, t, label in ((ws, tcp, up, "ws -> tcp"), (tcp, ws, down, "tcp -> ws")):
        body = os.urandom(size)
        src.publish(t, body, qos=1)
        m = dst.message(f"the {size}-byte message {label}")
        if m.payload != body:
            at = next(
                (i for i, (a, b) in enumerate(zip(m.payload, body)) if a != b),
                min(len(m.payload), size),
            )
            raise Failure(
                f"{label}: {len(m.payload)} bytes received, {size} sent, first difference at byte {at}"
            )
    for c in (ws, tcp):
        c.disconnect()
    print(f"ok paho {size}-byte payload intact ws -> tcp and tcp -> ws", flush=True)


def main():
    ap = argparse.ArgumentParser(prog=NAME, description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--ws-port", type=int, required=True)
    ap.add_argument("--tcp-port", type=int, required=True)
    ap.add_argument("--big-bytes", type=int, default=1024 * 1024)
    ap.add_argument("--wait-seconds", type=float, default=8.0, help="bound of each wait")
    ap.add_argument("--limit-seconds", type=float, default=30.0, help="bound of the whole run")
    a = ap.parse_args()
    # _mq.Client.publish bounds its PUBACK/PUBCOMP wait with _mq.WAIT.
    _mq.WAIT = a.wait_seconds
    started = time.monotonic()

    def expire():
        print(f"FAIL {NAME}: still running after {a.limit_seconds:.0f} s", flush=True)
        os._exit(1)

    watchdog = threading.Timer(a.limit_seconds, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        v311(a.host, a.ws_port, a.tcp_port, a.wait_seconds)
        v5(a.host, a.ws_port, a.tcp_port, a.wait_seconds)
        big(a.host, a.ws_port, a.tcp_port, a.wait_seconds, a.big_bytes)
    except BaseException as e:  # noqa: BLE001 - every failure must end the script
        print(f"FAIL {NAME}: {e}", flush=True)
        if not isinstance(e, Failure):
            traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    print(f"ok {NAME} ({time.monotonic() - started:.1f} s)", flush=True)
    # paho's network threads must not keep the process alive.
    os._exit(0)


if __name__ == "__main__":
    main()
