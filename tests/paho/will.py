"""The will and DISCONNECT reason codes (MQTT 5.0 §3.14.2.1): 0x04 (Disconnect with Will
Message) publishes the will, with its properties; 0x00 discards it, even with a session."""

from _mq import Client, PacketTypes, check, prop, props, run


def will(topic, **properties):
    p = props(PacketTypes.WILLMESSAGE, **properties) if properties else None
    return dict(topic=topic, payload=b"last words", qos=1, retain=False, properties=p)


def test(port):
    w = Client(port, "pw-watch")
    w.subscribed("pw/#")

    c = Client(
        port,
        "pw-04",
        will=will(
            "pw/04",
            ContentType="text/plain",
            UserProperty=[("why", "asked"), ("why", "twice")],
        ),
    )
    c.disconnect(reason=0x04)
    m = w.message("the will after DISCONNECT 0x04")
    check((m.topic, m.payload) == ("pw/04", b"last words"), f"{(m.topic, m.payload)}")
    check(prop(m.properties, "ContentType") == "text/plain", f"{m.properties}")
    check(
        prop(m.properties, "UserProperty") == [("why", "asked"), ("why", "twice")],
        f"will user properties: {prop(m.properties, 'UserProperty')}",
    )

    c = Client(
        port,
        "pw-00",
        will=will("pw/00"),
        properties=props(PacketTypes.CONNECT, SessionExpiryInterval=30),
    )
    c.disconnect(reason=0x00)
    w.quiet(1.5, "will published after DISCONNECT 0x00")
    w.disconnect()


run(test)
