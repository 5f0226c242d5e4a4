"""Shared helpers of the paho-mqtt (MQTT 5.0) scripts that tests/paho_v5.rs runs against a
shardmq broker on 127.0.0.1.

Each script calls `run(test)`: the port is argv[1]; the script exits 0 and prints "ok NAME" on
success, and exits 1 printing "FAIL NAME: ..." and the traceback otherwise, or when it is still
running after its overall timeout (a watchdog thread, so no wait can hang it).

`Client` wraps a paho client (protocol MQTTv5, callback API 2, no automatic reconnect) whose
network loop runs on paho's thread; callbacks land in queues the script reads with bounded
waits.
"""

import os
import queue
import sys
import threading
import time
import traceback

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = "127.0.0.1"
# Bound for every wait.
WAIT = 10.0

__all__ = [
    "Client",
    "Failure",
    "PacketTypes",
    "check",
    "props",
    "run",
    "WAIT",
]


class Failure(Exception):
    """A check failed."""


def check(cond, what):
    if not cond:
        raise Failure(what)


def props(packet_type, **values):
    """A Properties object for `packet_type` (PacketTypes.CONNECT, .PUBLISH, ...)."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def prop(properties, name, default=None):
    """A property of a received packet, or `default` when absent."""
    if properties is None:
        return default
    return getattr(properties, name, default)


class Client:
    def __init__(
        self,
        port,
        client_id,
        *,
        clean_start=True,
        keepalive=30,
        manual_ack=False,
        properties=None,
        will=None,
    ):
        self.id = client_id
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
            reconnect_on_failure=False,
        )
        self.q = {
            k: queue.Queue() for k in ("connack", "message", "suback", "disconnect")
        }
        self.c.on_connect = lambda c, u, flags, rc, p: self.q["connack"].put((flags, rc, p))
        self.c.on_message = lambda c, u, m: self.q["message"].put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.q["suback"].put((mid, rcs, p))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.q["disconnect"].put((rc, p, f))
        if will is not None:
            self.c.will_set(**will)
        self.c.connect(
            HOST, port, keepalive, clean_start=clean_start, properties=properties
        )
        self.c.loop_start()
        flags, rc, p = self.get("connack", "CONNACK")
        self.reason = rc
        self.session_present = bool(flags.session_present)
        self.connack = p

    def get(self, kind, what, timeout=WAIT):
        try:
            return self.q[kind].get(timeout=timeout)
        except queue.Empty:
            raise Failure(f"{self.id}: no {what} within {timeout} s") from None

    def within(self, kind, seconds):
        """Everything of `kind` that arrives within `seconds`."""
        out = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.q[kind].get(timeout=left))
            except queue.Empty:
                return out

    def subscribe(self, topic, qos=1, properties=None, **options):
        """Subscribes; returns the SUBACK's reason codes (paho ReasonCode objects)."""
        rc, _mid = self.c.subscribe(
            topic, options=SubscribeOptions(qos=qos, **options), properties=properties
        )
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.id}: subscribe {topic}: {rc}")
        _mid, rcs, _p = self.get("suback", f"SUBACK for {topic}")
        return rcs

    def subscribed(self, topic, qos=1, **kw):
        rcs = self.subscribe(topic, qos, **kw)
        check(
            [r.value for r in rcs] == [qos],
            f"{self.id}: SUBACK for {topic}: {[str(r) for r in rcs]}",
        )

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        """Publishes and waits for the flow to complete (PUBACK / PUBCOMP)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(WAIT)
        check(info.is_published(), f"{self.id}: publish to {topic!r} not completed")

    def message(self, what="a message", timeout=WAIT):
        return self.get("message", what, timeout)

    def quiet(self, seconds, what):
        extra = self.within("message", seconds)
        check(not extra, f"{self.id}: {what}: {[(m.topic, m.payload) for m in extra]}")

    def disconnect(self, reason=0, properties=None):
        """Sends DISCONNECT with `reason` (and `properties`) and waits for the close."""
        self.c.disconnect(
            reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=reason),
            properties=properties,
        )
        self.get("disconnect", "end of the connection after DISCONNECT")
        self.c.loop_stop()

    def stop(self):
        """Stops the network loop (the connection is already over)."""
        self.c.loop_stop()


def run(test, timeout=20.0):
    """Runs `test(port)` under a watchdog; exits 0 on success, 1 on any failure."""
    name = os.path.basename(sys.argv[0])
    if len(sys.argv) != 2:
        print(f"usage: {name} PORT", flush=True)
        sys.exit(2)
    port = int(sys.argv[1])

    def expire():
        print(f"FAIL {name}: still running after {timeout:.0f} s", flush=True)
        os._exit(1)

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        test(port)
    except BaseException as e:  # noqa: BLE001 - every failure must end the script
        print(f"FAIL {name}: {e}", flush=True)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    print(f"ok {name}", flush=True)
    # paho's network threads must not keep the process alive.
    os._exit(0)
