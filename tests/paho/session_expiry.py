"""DISCONNECT changes the Session Expiry Interval (MQTT 5.0 §3.14.2.2.2): to 0 ends a session
CONNECT asked to keep; shortened, the session ends sooner; lengthened, it lives longer."""

import time

from _mq import Client, PacketTypes, check, props, run

CONNECT, DISCONNECT = PacketTypes.CONNECT, PacketTypes.DISCONNECT


def expiry(packet_type, secs):
    return props(packet_type, SessionExpiryInterval=secs)


def test(port):
    # CONNECT 10, DISCONNECT 0: gone at once.
    c = Client(port, "pse-zero", properties=expiry(CONNECT, 10))
    c.subscribed("pse/zero")
    c.disconnect(properties=expiry(DISCONNECT, 0))
    c = Client(port, "pse-zero", clean_start=False, properties=expiry(CONNECT, 10))
    check(not c.session_present, "DISCONNECT with expiry 0 did not end the session")
    c.disconnect(properties=expiry(DISCONNECT, 0))

    # CONNECT 60, DISCONNECT 1: gone after 3 s.
    c = Client(port, "pse-short", properties=expiry(CONNECT, 60))
    c.subscribed("pse/short")
    c.disconnect(properties=expiry(DISCONNECT, 1))
    time.sleep(3)
    c = Client(port, "pse-short", clean_start=False, properties=expiry(CONNECT, 60))
    check(not c.session_present, "DISCONNECT shortened the expiry to 1 s; present after 3 s")
    c.disconnect(properties=expiry(DISCONNECT, 0))

    # CONNECT 1, DISCONNECT 60: still there after 3 s, subscription and queue included.
    c = Client(port, "pse-long", properties=expiry(CONNECT, 1))
    c.subscribed("pse/long")
    c.disconnect(properties=expiry(DISCONNECT, 60))
    p = Client(port, "pse-pub")
    p.publish("pse/long", b"kept for you", qos=1)
    time.sleep(3)
    c = Client(port, "pse-long", clean_start=False, properties=expiry(CONNECT, 60))
    check(c.session_present, "DISCONNECT lengthened the expiry to 60 s; gone after 3 s")
    m = c.message("the message queued while away")
    check(m.payload == b"kept for you", f"queued message: {m.payload!r}")
    c.disconnect(properties=expiry(DISCONNECT, 0))
    p.disconnect()


run(test)
