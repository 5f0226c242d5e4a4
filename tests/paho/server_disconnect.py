"""A server DISCONNECT seen by paho (MQTT 5.0 §3.14): when another connection takes the client
identifier over, on whichever shard either lands, the first gets a DISCONNECT packet (not just
a closed socket) and the second gets the session.

The reason code itself (0x8E) is checked byte-exactly in tests/v5.rs
(takeover_is_reported_with_session_taken_over): paho-mqtt 2.1 reads the reason code of a
DISCONNECT only when its Remaining Length is more than 2 (eclipse-paho/paho.mqtt.python#860),
and the broker, like mosquitto, sends the short form `e0 01 8e` that §3.14.2.2.1 allows. Once
paho reads it, it must be 0x8E.
"""

from _mq import Client, PacketTypes, check, props, run


def test(port):
    for round in range(3):
        expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
        first = Client(port, "psd-twin", clean_start=False, properties=expiry)
        first.subscribed("psd/t")
        second = Client(port, "psd-twin", clean_start=False, properties=expiry)
        check(second.session_present, f"round {round}: the session did not move")
        rc, _p, flags = first.get("disconnect", f"round {round}: end of the first connection")
        check(
            flags.is_disconnect_packet_from_server,
            f"round {round}: closed without a DISCONNECT packet ({rc})",
        )
        check(rc.value in (0x8E, 0x00), f"round {round}: reason {rc.value:#x} ({rc})")
        first.stop()
        second.disconnect()


run(test)
