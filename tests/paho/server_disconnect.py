"""A server DISCONNECT seen by paho (MQTT 5.0 §3.14): when another connection takes the client
identifier over, on whichever shard either lands, the first gets a DISCONNECT packet (not just
a closed socket) and the second gets the session.

paho-mqtt 2.1 reads the reason code of a DISCONNECT only when its Remaining Length is more
than 2 (eclipse-paho/paho.mqtt.python#860), so the broker's DISCONNECT carries a Reason String
(the client did not turn problem information off): paho must see 0x8E.
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
        check(rc.value == 0x8E, f"round {round}: reason {rc.value:#x} ({rc})")
        first.stop()
        second.disconnect()


run(test)
